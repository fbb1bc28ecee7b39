//! firstboot's library: everything but argument parsing, so tests reach it.
#![forbid(unsafe_code)]

pub mod backup;
pub mod bootstrap;
pub mod certmonger;
pub mod certs;
pub mod check;
pub mod dns;
pub mod dnsquery;
pub mod etcd;
pub mod exec;
pub mod fleetlock;
pub mod freeipa;
pub mod fsutil;
pub mod guard;
pub mod handoff;
pub mod https;
pub mod join;
pub mod logging;
pub mod metadata;
pub mod net;
pub mod paths;
pub mod phases;
pub mod pki;
pub mod renew;
pub mod resolver;
pub mod sockets;
pub mod state;
pub mod status;
pub mod system;
pub mod temporary;
