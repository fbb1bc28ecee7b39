//! ipa-sim: a FreeIPA server, replica or client for the lab. See the
//! library's documentation for the wire and what is simulated.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use ipa_sim::api::{api_txt_path, Api};
use ipa_sim::certmonger::ServerCertmonger;
use ipa_sim::install::{self, InstallOptions};
use ipa_sim::server::{self, Fault, Options};

mod client_install;
mod submit;

/// A FreeIPA simulator: JSON-RPC checked against API.txt, its own CA and
/// DNS, replicas and enrollment with one-time passwords.
#[derive(Debug, Parser)]
#[command(name = "ipa-sim", version, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a server listens and logs.
#[derive(Debug, clap::Args)]
struct Serve {
    /// The data directory (the container's /data)
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// HTTPS address [default: the node's address, port 443]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// DNS address with --setup-dns [default: the node's address, port 53]
    #[arg(long, value_name = "ADDR:PORT")]
    dns_listen: Option<SocketAddr>,
    /// Where every call is logged, one JSON object per line
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/log/ipa-sim/calls.jsonl"
    )]
    calls: PathBuf,
    /// The resolver FreeIPA's own checks use, as podman's --dns gives
    /// the container: loopback is its own DNS (firstboot starts the
    /// container so; the lab's catalog cannot say it), another address a
    /// resolver elsewhere
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    dns: std::net::IpAddr,
    /// FreeIPA's API.txt [default: $FREEIPA_API_TXT or ../shared/specs/freeipa/API.txt]
    #[arg(long, value_name = "PATH")]
    api_txt: Option<PathBuf>,
    /// How long a sub-CA made on another server stays unusable here
    /// (its key replicating): ca_show answers message 13031, cert_request
    /// 4301
    #[arg(long, value_name = "MS", default_value_t = server::DEFAULT_LWCA_KEY_DELAY.as_millis() as u64)]
    lwca_key_delay_ms: u64,
    /// The helper the server's own certmonger runs for its IPA CA, given
    /// `--root DIR` (the lab binds ipa-sim there)
    #[arg(long, value_name = "PATH", default_value = ipa_sim::certmonger::DEFAULT_HELPER)]
    certmonger_helper: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install (or resume) the first server from DIR/ipa-server-install-options,
    /// or, as the official container does, a replica when DIR holds
    /// ipa-replica-install-options instead
    Server(Serve),
    /// Enroll and promote a replica from DIR/ipa-replica-install-options
    Replica {
        #[command(flatten)]
        serve: Serve,
        /// Reach --server here instead of asking DNS
        #[arg(long, value_name = "ADDR:PORT")]
        server_address: Option<SocketAddr>,
    },
    /// Make the next COUNT JSON-RPC answers of the server in DIR faulty
    Fault {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(value_enum)]
        fault: FaultArg,
        count: u32,
        /// How late a `slow` answer comes
        #[arg(long, value_name = "MS", default_value_t = 0)]
        delay_ms: u64,
    },
    /// Make the next COUNT installs on this host (server, replica or
    /// client) fail once after ipa-join, rolled back, the password spent
    InstallFault {
        /// The host's root
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        count: u32,
    },
    /// Check one call against API.txt: prints the error the server gives, or ok
    Check {
        method: String,
        /// `[args, options]` as JSON
        params: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FaultArg {
    Garbage,
    Http500,
    Unauthorized,
    ExpireSession,
    Slow,
}

fn main() -> ExitCode {
    firstboot::logging::init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipa-sim: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Called as ipa-client-install (the lab binds this binary there), it
    // is that program: what `firstboot ipa-client` runs on a worker.
    let mut args = std::env::args_os();
    let called = args.next().map(PathBuf::from);
    let name = called.as_deref().and_then(Path::file_name);
    if name == Some("ipa-client-install".as_ref()) {
        let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
        return ExitCode::from(runtime.block_on(client_install::run(&args, Path::new("/"))));
    }
    // Called as certmonger's ipa-submit (bound there in the lab's nodes),
    // it is that helper: what certmonger runs for `getcert -c IPA`.
    if name == Some("ipa-submit".as_ref()) {
        let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
        return ExitCode::from(runtime.block_on(submit::run(&submit::root(&args))));
    }
    let cli = Cli::parse();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipa-sim: {e:#}");
            match e.downcast_ref::<Exit>() {
                Some(exit) => ExitCode::from(exit.0),
                None => ExitCode::FAILURE,
            }
        }
    }
}

use install::ContainerExit as Exit;

fn load_api(path: Option<PathBuf>) -> anyhow::Result<Arc<Api>> {
    Ok(Arc::new(Api::load(&path.unwrap_or_else(api_txt_path))?))
}

fn addresses(
    serve: &Serve,
    options: &InstallOptions,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    let node = || install::node_address(options);
    let listen = match serve.listen {
        Some(a) => a,
        None => SocketAddr::new(node()?, 443),
    };
    let dns = if options.flag("setup-dns") {
        Some(match serve.dns_listen {
            Some(a) => a,
            None => SocketAddr::new(node()?, 53),
        })
    } else {
        None
    };
    Ok((listen, dns))
}

/// Serve until SIGINT or SIGTERM (systemd's stop), with the server's own
/// certmonger beside it (see [`ipa_sim::certmonger`]) and the files its
/// IPA helper reads under `data/etc`, as the container has them.
async fn serve_until_stopped(
    options: Options,
    api: Arc<Api>,
    state: ipa_sim::state::State,
    keytab: String,
    certmonger_helper: &Path,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let data = options.data.clone();
    install::save_server_etc(&data, &options.fqdn, &state, &keytab)?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot take SIGTERM")?;
    let running = server::start(options, api, state, keytab).await?;
    let certmonger = match ServerCertmonger::start(&data, certmonger_helper).await {
        Ok(certmonger) => certmonger,
        Err(e) => {
            running.stop().await;
            return Err(e.context("the server's own certmonger did not start"));
        }
    };
    std::fs::write(data.join("volume-version"), "1\n").context("cannot write volume-version")?;
    println!("FreeIPA server configured.");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let stopped = certmonger.stop().await;
    running.stop().await;
    stopped
}

fn read_keytab(data: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(data.join("keytab"))
        .with_context(|| format!("cannot read {}/keytab", data.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(serve) => container(serve, None, false).await,
        Command::Replica {
            serve,
            server_address,
        } => container(serve, server_address, true).await,
        Command::Fault {
            data,
            fault,
            count,
            delay_ms,
        } => {
            let fault = match fault {
                FaultArg::Garbage => Fault::Garbage,
                FaultArg::Http500 => Fault::Http500,
                FaultArg::Unauthorized => Fault::Unauthorized,
                FaultArg::ExpireSession => Fault::ExpireSession,
                FaultArg::Slow => Fault::Slow,
            };
            server::inject_with_delay(&data, fault, count, delay_ms)
        }
        Command::InstallFault { root, count } => install::inject_install_faults(&root, count),
        Command::Check { method, params } => {
            let api = load_api(None)?;
            let params: serde_json::Value =
                serde_json::from_str(&params).context("params are not JSON")?;
            match api.check(&method, &params) {
                Ok(()) => println!("ok"),
                Err(e) => println!("{}", e.to_json()),
            }
            Ok(())
        }
    }
}

/// What an installed server keeps in its data directory for its restarts,
/// as the real one keeps its configuration under `/data`: its name, where
/// it serves, whether it serves DNS. Its install options are not read
/// again (the first server's are gone once it is configured).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Installed {
    fqdn: String,
    listen: SocketAddr,
    dns_listen: Option<SocketAddr>,
}

const INSTALLED: &str = "ipa-sim-installed.json";
const SERVER_OPTIONS: &str = "ipa-server-install-options";
const REPLICA_OPTIONS: &str = "ipa-replica-install-options";

/// The official container's start (freeipa-container `init-data`, then
/// `ipa-server-configure-first`): a configured volume (`volume-version`)
/// starts its server; a volume the installer wrote into but never
/// finished is not configured again (`init-data` drops the configure
/// step once `/etc/ipa/ca.crt` is there, and the configure script exits
/// 11 "already configured"; stricter here: any state left counts);
/// otherwise the install from the options file, a replica's when there
/// is one (`replica`: only that).
async fn container(
    serve: Serve,
    server_address: Option<SocketAddr>,
    replica: bool,
) -> anyhow::Result<()> {
    // Before anything is installed: a server without its certmonger
    // does not start, and must not leave a half-configured volume.
    ipa_sim::certmonger::check_installed(&serve.certmonger_helper)?;
    if install::volume_configured(&serve.data)? {
        return resume(serve).await;
    }
    let result = configure(serve, server_address, replica).await;
    if result.is_err() {
        // What ipa-server-configure-first prints when the installer fails.
        println!("FreeIPA server configuration failed.");
    }
    result
}

async fn configure(
    serve: Serve,
    server_address: Option<SocketAddr>,
    replica_only: bool,
) -> anyhow::Result<()> {
    let data = serve.data.clone();
    let replica = data.join(REPLICA_OPTIONS).exists();
    if replica && data.join(SERVER_OPTIONS).exists() {
        anyhow::bail!("Too many install options files.");
    }
    if replica_only && !replica {
        anyhow::bail!("{} has no {REPLICA_OPTIONS}", data.display());
    }
    let file = data.join(if replica {
        REPLICA_OPTIONS
    } else {
        SERVER_OPTIONS
    });
    let options = InstallOptions::read(&file)?;
    install::check_container_options(&options).with_context(|| format!("in {}", file.display()))?;
    let fqdn = container_hostname(&data)?;
    let (listen, dns_listen) = addresses(&serve, &options)?;
    let api = load_api(serve.api_txt.clone())?;
    let fault = install::take_install_fault(Path::new("/"))?;
    let (state, keytab) = if replica {
        let first = options.required("server")?.to_owned();
        let address = install::server_address(&first, server_address)?;
        let password = options.required("password")?;
        if fault {
            // ipa-replica-install enrolls the host first (ipa-join), then
            // fails; its client rolls back, unenrolling.
            let enrolled =
                install::enroll(&first, address, &fqdn, password, "client", false, None).await?;
            install::save_enrollment(&data, &enrolled)?;
            install::unenroll(&first, address, &fqdn, &enrolled.keytab).await?;
            anyhow::bail!(
                "the replica install failed after ipa-join (a fault the lab asked for); the \
                 host is unenrolled and its one-time password spent"
            );
        }
        let enrolled = install::enroll(
            &first,
            address,
            &fqdn,
            password,
            "replica",
            options.flag("setup-ca"),
            Some(listen),
        )
        .await?;
        install::save_enrollment(&data, &enrolled)?;
        let mut state = enrolled
            .state
            .ok_or_else(|| anyhow!("{first} sent no state to replicate"))?;
        if options.flag("setup-ca") {
            ipa_sim::commands::add_ca_clone(&mut state, &fqdn, &first);
        }
        if options.flag("setup-dns") {
            install::add_server_records(&mut state, &fqdn, listen.ip(), false)?;
        }
        server::save_state(&data, &state)?;
        (state, enrolled.keytab)
    } else {
        let (state, keytab) = install::new_deployment(&options, &fqdn, listen)?;
        server::save_state(&data, &state)?;
        let ca_pem = ipa_sim::commands::ca_pems(&state, "ipa")
            .map(|c| c.cert_pem)
            .unwrap_or_default();
        install::save_enrollment(
            &data,
            &install::Enrolled {
                ca_pem,
                keytab: keytab.clone(),
                server: fqdn.clone(),
                state: None,
            },
        )?;
        if fault {
            anyhow::bail!(
                "the server install failed half-way (a fault the lab asked for): {} keeps \
                 the IPA CA and the state written so far",
                data.display()
            );
        }
        (state, keytab)
    };
    let installed = Installed {
        fqdn: fqdn.clone(),
        listen,
        dns_listen,
    };
    firstboot::fsutil::write_atomic(
        &data.join(INSTALLED),
        &serde_json::to_vec(&installed)?,
        0o600,
    )?;
    let options = Options {
        fqdn,
        listen,
        dns_listen,
        data,
        calls_log: serve.calls,
        peers: Default::default(),
        resolver: resolver(serve.dns),
        lwca_key_delay: std::time::Duration::from_millis(serve.lwca_key_delay_ms),
    };
    serve_until_stopped(options, api, state, keytab, &serve.certmonger_helper).await
}

/// What `--dns` makes of the server's resolver.
fn resolver(dns: std::net::IpAddr) -> server::Resolver {
    if dns.is_loopback() {
        server::Resolver::OwnZones
    } else {
        server::Resolver::Nameservers(vec![SocketAddr::new(dns, 53)])
    }
}

/// A configured server starting again.
async fn resume(serve: Serve) -> anyhow::Result<()> {
    let data = serve.data.clone();
    let installed: Installed = firstboot::fsutil::read_json(&data.join(INSTALLED))?
        .with_context(|| format!("{} is configured but has no {INSTALLED}", data.display()))?;
    let state = server::load_state(&data)?
        .with_context(|| format!("{} is configured but holds no state", data.display()))?;
    let keytab = read_keytab(&data)?;
    let api = load_api(serve.api_txt.clone())?;
    let options = Options {
        fqdn: installed.fqdn,
        listen: serve.listen.unwrap_or(installed.listen),
        dns_listen: installed.dns_listen.map(|d| serve.dns_listen.unwrap_or(d)),
        data,
        calls_log: serve.calls,
        peers: Default::default(),
        resolver: resolver(serve.dns),
        lwca_key_delay: std::time::Duration::from_millis(serve.lwca_key_delay_ms),
    };
    serve_until_stopped(options, api, state, keytab, &serve.certmonger_helper).await
}

/// The server's name as the container takes it (freeipa-container
/// `init-data`): the one stored in `/data/hostname` by an earlier start,
/// else `IPA_SERVER_HOSTNAME`, else the host name podman gave the
/// container (here: the node's); it must be fully qualified (exit 15).
fn container_hostname(data: &Path) -> anyhow::Result<String> {
    let stored = data.join("hostname");
    if let Ok(name) = std::fs::read_to_string(&stored) {
        return Ok(name.trim().to_ascii_lowercase());
    }
    let name = match std::env::var("IPA_SERVER_HOSTNAME") {
        Ok(name) if !name.is_empty() => name,
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("cannot read the host name")?
            .trim()
            .to_owned(),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if !name.contains('.') {
        return Err(Exit(
            15,
            format!(
                "Container invoked without fully-qualified hostname ({name}) and without \
                 specifying hostname to use."
            ),
        )
        .into());
    }
    std::fs::write(&stored, format!("{name}\n"))
        .with_context(|| format!("cannot write {}", stored.display()))?;
    Ok(name)
}
