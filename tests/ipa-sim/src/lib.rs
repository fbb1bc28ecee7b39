//! An API-exact FreeIPA simulator: every JSON-RPC call is checked against
//! FreeIPA's `API.txt` ([`api`]) and answered as the real server would
//! ([`commands`]), with its own CA ([`ca`]), DNS ([`dns`]), replicas and
//! enrollment ([`server`], [`install`]).
#![forbid(unsafe_code)]

pub mod api;
pub mod ca;
pub mod certmonger;
pub mod commands;
pub mod error;
pub mod state;

pub use error::IpaError;
pub mod dns;
pub mod install;
pub mod server;
pub mod xargs;
