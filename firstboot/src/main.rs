//! firstboot: started by systemd on every node of a site.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Assemble this node into its site, peer to peer.
///
/// At this stage firstboot checks the node contract that Ignition wrote:
/// `firstboot --check` reads node.json, validates it and prints a summary.
#[derive(Debug, Parser)]
#[command(name = "firstboot", version, term_width = 80)]
struct Cli {
    /// Validate node.json and print a summary of this node
    #[arg(long, required = true)]
    check: bool,

    /// The node contract to read
    #[arg(long, value_name = "PATH", default_value = node_contract::NODE_JSON_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match firstboot::check::run(&cli.config) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("firstboot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
