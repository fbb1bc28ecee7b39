//! Join: how nodes find and trust each other with no central driver
//! (ARCHITECTURE §4). The bootstrap host serves; the others ask.

pub mod client;
pub mod peer;
pub mod protocol;
pub mod server;
mod tls;

pub use tls::server_config as tls_server_config;
