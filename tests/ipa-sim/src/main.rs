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
use ipa_sim::install::{self, InstallOptions};
use ipa_sim::server::{self, Fault, Options};

mod client_install;

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
    /// FreeIPA's API.txt [default: $FREEIPA_API_TXT or ../shared/specs/freeipa/API.txt]
    #[arg(long, value_name = "PATH")]
    api_txt: Option<PathBuf>,
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
    if called.as_deref().and_then(Path::file_name) == Some("ipa-client-install".as_ref()) {
        let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
        return ExitCode::from(runtime.block_on(client_install::run(&args, Path::new("/"))));
    }
    let cli = Cli::parse();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipa-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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

async fn serve_until_stopped(
    options: Options,
    api: Arc<Api>,
    state: ipa_sim::state::State,
    keytab: String,
) -> anyhow::Result<()> {
    let data = options.data.clone();
    let running = server::start(options, api, state, keytab).await?;
    std::fs::write(data.join("volume-version"), "1\n").context("cannot write volume-version")?;
    println!("FreeIPA server configured.");
    tokio::signal::ctrl_c().await.ok();
    running.stop().await;
    Ok(())
}

fn read_keytab(data: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(data.join("keytab"))
        .with_context(|| format!("cannot read {}/keytab", data.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(serve)
            if !serve.data.join("ipa-server-install-options").exists()
                && serve.data.join("ipa-replica-install-options").exists() =>
        {
            replica(serve, None).await
        }
        Command::Server(serve) => {
            let options = InstallOptions::read(&serve.data.join("ipa-server-install-options"))?;
            let (listen, dns_listen) = addresses(&serve, &options)?;
            let api = load_api(serve.api_txt.clone())?;
            let (state, keytab) = match server::load_state(&serve.data)? {
                Some(state) => (state, read_keytab(&serve.data)?),
                None => {
                    let (state, keytab) = install::new_deployment(&options, listen)?;
                    server::save_state(&serve.data, &state)?;
                    let ca_pem = ipa_sim::commands::ca_pems(&state, "ipa")
                        .map(|c| c.cert_pem)
                        .unwrap_or_default();
                    install::save_enrollment(
                        &serve.data,
                        &install::Enrolled {
                            ca_pem,
                            keytab: keytab.clone(),
                            server: options.hostname()?,
                            state: None,
                        },
                    )?;
                    (state, keytab)
                }
            };
            let options = Options {
                fqdn: options.hostname()?,
                listen,
                dns_listen,
                data: serve.data,
                calls_log: serve.calls,
                peers: Default::default(),
            };
            serve_until_stopped(options, api, state, keytab).await
        }
        Command::Replica {
            serve,
            server_address,
        } => replica(serve, server_address).await,
        Command::Fault { data, fault, count } => {
            let fault = match fault {
                FaultArg::Garbage => Fault::Garbage,
                FaultArg::Http500 => Fault::Http500,
                FaultArg::Unauthorized => Fault::Unauthorized,
                FaultArg::ExpireSession => Fault::ExpireSession,
            };
            server::inject(&data, fault, count)
        }
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

/// Enroll (or resume) a replica from DIR/ipa-replica-install-options.
async fn replica(serve: Serve, server_address: Option<SocketAddr>) -> anyhow::Result<()> {
    let options = InstallOptions::read(&serve.data.join("ipa-replica-install-options"))?;
    let (listen, dns_listen) = addresses(&serve, &options)?;
    let api = load_api(serve.api_txt.clone())?;
    let fqdn = options.hostname()?;
    let (mut state, keytab) = match server::load_state(&serve.data)? {
        Some(state) => (state, read_keytab(&serve.data)?),
        None => {
            let first = options.required("server")?.to_owned();
            let address = install::server_address(&first, server_address)?;
            let password = options.required("password")?;
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
            install::save_enrollment(&serve.data, &enrolled)?;
            let state = enrolled
                .state
                .ok_or_else(|| anyhow!("{first} sent no state to replicate"))?;
            (state, enrolled.keytab)
        }
    };
    if options.flag("setup-dns") {
        install::add_server_records(&mut state, &fqdn, listen.ip(), false)?;
    }
    server::save_state(&serve.data, &state)?;
    let options = Options {
        fqdn,
        listen,
        dns_listen,
        data: serve.data,
        calls_log: serve.calls,
        peers: Default::default(),
    };
    serve_until_stopped(options, api, state, keytab).await
}
