//! `builder`: turns a site file into node configs and DigitalOcean resources.
//!
//! `main.rs` only parses arguments and dispatches; everything else lives
//! here, where tests reach it.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod digitalocean;
pub mod fsutil;
pub mod images;
pub mod log;
pub mod net;
pub mod publish;
pub mod render;
pub mod site;
pub mod vault;

/// An error already formatted for the operator (several lines, each with
/// its own `error:` prefix): printed as it is.
#[derive(Debug)]
pub struct Reported(pub String);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.trim_end())
    }
}

impl std::error::Error for Reported {}
