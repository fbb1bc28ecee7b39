//! `builder`: turns a site file into node configs and DigitalOcean resources.
//!
//! `main.rs` only parses arguments and dispatches; everything else lives
//! here, where tests reach it.

pub mod artifact;
pub mod cli;
pub mod commands;
pub mod fsutil;
pub mod images;
pub mod render;
pub mod site;
pub mod vault;
