//! The phase engine: an ordered list of idempotent phases, each "check,
//! act, wait until healthy", recorded atomically once done. A crash or
//! reboot resumes at the first phase not done.

mod etcd;
mod identify;
mod join;
mod storage;

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::NodeConfig;

use crate::bootstrap::Services;
use crate::net::Cidr;
use crate::paths::Paths;
use crate::state::State;
use crate::status::{notify, Reporter};

pub use etcd::{etcd_args, etcdctl_health};

/// Everything a phase reads and writes.
pub struct Context {
    pub paths: Paths,
    pub config: NodeConfig,
    pub vpc: Cidr,
    pub state: State,
    pub reporter: Reporter,
    /// The bootstrap host's join service and DNS, once started.
    pub services: Option<Services>,
}

impl Context {
    pub fn fqdn(&self, node: &str) -> String {
        format!("{node}.{}", self.config.site.domain)
    }
}

/// The phases in order. Later issues add network, FreeIPA, handoff,
/// container engine and Kubernetes after `etcd`.
pub const PHASES: &[&str] = &["identify", "storage", "join", "etcd"];

/// How often and how patiently a phase is retried before firstboot gives
/// up (and systemd restarts it, resuming here).
pub struct Patience {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

pub const PATIENCE: Patience = Patience {
    attempts: 40,
    first_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(15),
};

/// What to check when a phase cannot succeed.
fn hint(phase: &str) -> &'static str {
    match phase {
        "identify" => "does the node have an address in the site's VPC range?",
        "storage" => "are the volumes attached? see `systemctl status local-fs.target swap.target`",
        "join" => "is the bootstrap host up and reachable on the VPC (port 7443)? see its `journalctl -u firstboot`",
        "etcd" => "see `journalctl -u etcd` on this node and `etcdctl member list` on a peer",
        _ => "see `journalctl -u firstboot`",
    }
}

async fn run_phase(cx: &mut Context, phase: &str) -> Result<()> {
    match phase {
        "identify" => identify::run(cx).await,
        "storage" => storage::run(cx).await,
        "join" => join::run(cx).await,
        "etcd" => etcd::run(cx).await,
        other => bail!("unknown phase `{other}`"),
    }
}

/// Run every phase not yet done, in order.
pub async fn run_all(cx: &mut Context, patience: &Patience) -> Result<()> {
    for &phase in PHASES {
        // The bootstrap host serves joiners on every run, not only the first:
        // after a reboot its peers may still be joining.
        if phase == "join" && cx.config.is_bootstrap() && cx.services.is_none() {
            cx.services = Some(
                crate::bootstrap::start(cx)
                    .await
                    .context("cannot start the join service and DNS")?,
            );
        }
        if cx.state.is_done(phase) {
            log::info!(phase = phase; "phase {phase}: already done");
            continue;
        }
        let mut backoff = patience.first_backoff;
        let mut attempt = 1;
        loop {
            cx.reporter.set(phase, "running", attempt, None);
            log::info!(phase = phase, attempt = attempt; "phase {phase}: attempt {attempt}");
            match run_phase(cx, phase).await {
                Ok(()) => {
                    cx.state.mark_done(phase);
                    cx.state.save(&cx.paths.state_file())?;
                    log::info!(phase = phase, attempt = attempt; "phase {phase}: done");
                    break;
                }
                Err(e) if attempt < patience.attempts => {
                    log::warn!(phase = phase, attempt = attempt; "phase {phase}: attempt {attempt} failed: {e:#}; retrying in {}s", backoff.as_secs_f32());
                    cx.reporter
                        .set(phase, "waiting", attempt, Some(format!("{e:#}")));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(patience.max_backoff);
                    attempt += 1;
                }
                Err(e) => {
                    let message = format!(
                        "phase {phase} failed after {attempt} attempts: {e:#}; {}",
                        hint(phase)
                    );
                    cx.reporter
                        .set(phase, "failed", attempt, Some(message.clone()));
                    log::error!(phase = phase, attempt = attempt; "{message}");
                    bail!(message);
                }
            }
        }
    }
    Ok(())
}

/// The whole run: phases, then the done marker (or, on the bootstrap
/// host, serving until handoff).
pub async fn main(paths: Paths) -> Result<()> {
    let config = crate::check::load(&paths.node_json())?;
    let vpc = Cidr::parse(&config.site.vpc_range)?;
    let state = State::load(&paths.state_file())?;
    let reporter = Reporter::new(paths.status_file());
    let mut cx = Context {
        paths,
        config,
        vpc,
        state,
        reporter,
        services: None,
    };
    run_all(&mut cx, &PATIENCE).await?;
    if let Some(services) = cx.services.take() {
        // The temporary DNS and CA serve until FreeIPA takes over (handoff,
        // a later phase): no done marker yet, so a reboot serves again.
        cx.reporter.set("serving", "serving", 1, None);
        notify("READY=1\nSTATUS=serving the join service and temporary DNS");
        log::info!("all phases done; serving the join service and temporary DNS");
        services.wait().await;
        bail!("the join service stopped");
    }
    crate::fsutil::write_atomic(
        &cx.paths.done_marker(),
        format!("{}\n", crate::status::now()).as_bytes(),
        0o644,
    )?;
    cx.reporter.set("done", "done", 1, None);
    notify("READY=1\nSTATUS=done");
    log::info!("all phases done");
    Ok(())
}
