//! firstboot: started by systemd on every node of a site.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use firstboot::paths::Paths;

/// Assemble this node into its site, peer to peer.
///
/// `firstboot run` (what firstboot.service starts) runs the phases:
/// identify, storage, join, etcd, freeipa. The lowest (bootstrap) host serves the
/// join service, a temporary DNS and CA; the others join it, proving who
/// they are with their own key. Progress goes to the journal and
/// /run/firstboot/status.json; a crash or reboot resumes at the first
/// phase not done.
#[derive(Debug, Parser)]
#[command(
    name = "firstboot",
    version,
    term_width = 80,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Validate node.json and print a summary of this node
    #[arg(long)]
    check: bool,

    /// The node contract to read (with --check)
    #[arg(long, value_name = "PATH", default_value = node_contract::NODE_JSON_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the phases not yet done (what firstboot.service starts)
    Run,
    /// Answer the bootstrap host (what firstboot-peer.service starts)
    Peer,
    /// Zincati's lock server relay, and on core hosts the lock server
    /// (what firstboot-fleetlock.service starts)
    ///
    /// Every node: a relay on 127.0.0.1:7446 (Zincati's fleet_lock
    /// base_url) that forwards a request about this node to a core host's
    /// lock server over TLS with this node's identity certificate, and
    /// registers this node's Zincati id. Core hosts: the lock server on
    /// the VPC address, port 7445, its state in etcd.
    Fleetlock,
    /// Renew this node's certificates when due (firstboot-renew.timer)
    Renew,
    /// Start a service as this node's image runs it (what its unit starts)
    Exec {
        /// A service of the image catalog, such as `etcd`
        service: String,
    },
    /// Stop a service as its image expects (its unit's ExecStop)
    ///
    /// A container: `podman stop`, which sends the container's stop
    /// signal (SIGRTMIN+3 for one that runs systemd) and kills it after
    /// a while. A host binary: nothing (systemd's signal stops it).
    Stop {
        /// A service of the image catalog, such as `freeipa-server`
        service: String,
    },
    /// Enroll this host in the site's FreeIPA (the catalog's freeipa-client)
    ///
    /// Layers the `freeipa-client` package with rpm-ostree first where the
    /// host lacks it, runs ipa-client-install with the options the freeipa
    /// phase wrote (with this node's one-time password) to
    /// /var/lib/freeipa-client/ipa-client-install-options, and enables
    /// certmonger. Once enrolled, it does nothing.
    IpaClient,
    /// Let the calling unit through the metadata guard (its ExecStartPre)
    ///
    /// Fills the guard's chain for the systemd service this runs in with
    /// a match on that service's cgroup, so its sockets, and no other's,
    /// reach the metadata service. Fails for a unit the guard does not
    /// name, or outside a service.
    GuardAllow,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None if cli.check => firstboot::check::run(&cli.config).map(|summary| print!("{summary}")),
        None => Err(anyhow::anyhow!(
            "nothing to do: give --check, `run`, `peer`, `fleetlock`, `renew`, `exec`, `stop`, `ipa-client` or \
             `guard-allow` (see --help)"
        )),
        Some(Command::Run) => {
            firstboot::logging::init();
            run()
        }
        Some(Command::Peer) => {
            firstboot::logging::init();
            block_on(firstboot::join::peer::main(Paths::from_env()))
        }
        Some(Command::Fleetlock) => {
            firstboot::logging::init();
            block_on(firstboot::fleetlock::service::main(Paths::from_env()))
        }
        Some(Command::Renew) => {
            firstboot::logging::init();
            block_on(firstboot::renew::run(&Paths::from_env(), firstboot::certs::PLAN)).map(|renewed| {
                tracing::info!("certificates: {renewed:?}");
            })
        }
        Some(Command::Exec { service }) => firstboot::exec::exec(&Paths::from_env(), &service),
        Some(Command::Stop { service }) => firstboot::exec::stop(&Paths::from_env(), &service),
        Some(Command::IpaClient) => {
            firstboot::logging::init();
            firstboot::freeipa::host::main(&Paths::from_env())
        }
        Some(Command::GuardAllow) => {
            firstboot::logging::init();
            firstboot::guard::allow_self()
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("firstboot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    block_on(firstboot::phases::main(Paths::from_env()))
}

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
