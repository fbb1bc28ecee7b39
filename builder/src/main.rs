#![forbid(unsafe_code)]
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = builder::cli::Cli::parse();
    builder::log::init();
    match builder::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<builder::Reported>() => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
