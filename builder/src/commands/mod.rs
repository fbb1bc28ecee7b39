//! One function per sub-command.

pub mod init;
pub mod render;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Render(args) => render::run(args),
    }
}
