//! The phase engine: an ordered list of idempotent phases, each "check,
//! act, wait until healthy", recorded atomically once done. A crash or
//! reboot resumes at the first phase not done.

mod etcd;
mod freeipa;
mod handoff;
mod identify;
mod join;
mod storage;

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::status::State as Progress;
use node_contract::{NodeConfig, Phase};
use tracing::Instrument;

use crate::bootstrap::Discovery;
use crate::paths::Paths;
use crate::state::State;
use crate::status::{notify, Reporter};
use crate::temporary::Services;

pub use etcd::{etcd_args, member_health, CLIENT_PORT as ETCD_CLIENT_PORT};

/// Everything a phase reads and writes.
pub struct Context {
    pub paths: Paths,
    pub config: NodeConfig,
    pub state: State,
    pub reporter: Reporter,
    /// The bootstrap host's join service and DNS, once started.
    pub services: Option<Services>,
    /// The bootstrap host's split-brain guard, across attempts.
    pub discovery: Discovery,
}

impl Context {
    /// This node's VPC address, as phase identify recorded it.
    pub fn own_address(&self) -> Result<std::net::Ipv4Addr> {
        self.state
            .address
            .context("identify did not record this node's address")
    }
}

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
fn hint(phase: Phase) -> &'static str {
    match phase {
        Phase::Identify => "does the node have an address in the site's VPC range?",
        Phase::Storage => {
            "are the volumes attached? see `systemctl status local-fs.target swap.target`"
        }
        Phase::Join => {
            "is the bootstrap host up and reachable on the VPC (port 7443)? see its \
             `journalctl -u firstboot`; on the bootstrap host, are the core hosts' peer \
             services (port 7444) reachable?"
        }
        Phase::Etcd => "see `journalctl -u etcd` on this node and `etcdctl member list` on a peer",
        Phase::Freeipa => {
            "see `journalctl -u freeipa-server -u freeipa-client` on this node; other nodes \
             enroll once the bootstrap host's FreeIPA server is configured"
        }
        Phase::Handoff => {
            "does every core host's FreeIPA DNS answer on port 53 (`dig @<core host> \
             <this node's name>`)? on the bootstrap host, see `journalctl -u firstboot` for \
             FreeIPA's answers to the records and sub-CAs"
        }
    }
}

/// Runs one phase's work; the engine around it handles order, retries and
/// records. A trait so the engine is tested with scripted phases.
#[allow(async_fn_in_trait)]
pub trait Phases {
    async fn run(&mut self, cx: &mut Context, phase: Phase) -> Result<()>;
}

/// The real phases.
pub struct NodePhases;

impl Phases for NodePhases {
    async fn run(&mut self, cx: &mut Context, phase: Phase) -> Result<()> {
        match phase {
            Phase::Identify => identify::run(cx).await,
            Phase::Storage => storage::run(cx).await,
            Phase::Join => join::run(cx).await,
            Phase::Etcd => etcd::run(cx).await,
            Phase::Freeipa => freeipa::run(cx).await,
            Phase::Handoff => handoff::run(cx).await,
        }
    }
}

/// Run every phase not yet done, in order.
pub async fn run_all(
    cx: &mut Context,
    patience: &Patience,
    phases: &mut impl Phases,
) -> Result<()> {
    for phase in Phase::ALL {
        // The bootstrap host serves joiners on every run, not only the
        // first: after a reboot its peers may still be joining or renewing.
        if phase == Phase::Join && cx.state.is_done(Phase::Join) {
            join::resume_services(cx)
                .await
                .context("cannot start the join service and DNS")?;
        }
        if cx.state.is_done(phase) {
            tracing::info!(phase = %phase, "phase {phase}: already done");
            continue;
        }
        let mut backoff = patience.first_backoff;
        let mut attempt = 1;
        loop {
            cx.reporter
                .set(Some(phase), Progress::Running, attempt, None);
            tracing::info!(phase = %phase, attempt, "phase {phase}: attempt {attempt}");
            let span = tracing::info_span!("phase", phase = %phase, attempt);
            match phases.run(cx, phase).instrument(span).await {
                Ok(()) => {
                    cx.state.mark_done(phase);
                    cx.state.save(&cx.paths.state_file())?;
                    tracing::info!(phase = %phase, attempt, "phase {phase}: done");
                    break;
                }
                Err(e) if attempt < patience.attempts => {
                    tracing::warn!(phase = %phase, attempt, "phase {phase}: attempt {attempt} failed: {e:#}; retrying in {}s", backoff.as_secs_f32());
                    cx.reporter.set(
                        Some(phase),
                        Progress::Waiting,
                        attempt,
                        Some(format!("{e:#}")),
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(patience.max_backoff);
                    attempt += 1;
                }
                Err(e) => {
                    let message = format!(
                        "phase {phase} failed after {attempt} attempts: {e:#}; {}",
                        hint(phase)
                    );
                    cx.reporter.set(
                        Some(phase),
                        Progress::Failed,
                        attempt,
                        Some(message.clone()),
                    );
                    tracing::error!(phase = %phase, attempt, "{message}");
                    bail!(message);
                }
            }
        }
    }
    Ok(())
}

/// The whole run: phases, then the done marker (or, on the bootstrap
/// host, serving the join service).
pub async fn main(paths: Paths) -> Result<()> {
    let config = crate::check::load(&paths.node_json())?;
    let state = State::load(&paths.state_file())?;
    let reporter = Reporter::new(paths.status_file());
    let mut cx = Context {
        paths,
        config,
        state,
        reporter,
        services: None,
        discovery: Discovery::default(),
    };
    run_all(&mut cx, &PATIENCE, &mut NodePhases).await?;
    if cx.config.is_bootstrap() && cx.state.is_done(Phase::Freeipa) {
        // After a restart the phase is done but the join service is new:
        // it serves FreeIPA enrollment again.
        freeipa::resume(&mut cx).await?;
    }
    let last = Phase::ALL.last().copied();
    if let Some(services) = cx.services.take() {
        // The join service serves for as long as the site lives (later
        // hosts, rebuilt ones, the handoff's reports), the temporary DNS
        // and CA until the handoff ends them: no done marker, so a
        // reboot serves again.
        let ended = crate::join::server::HandoffBook::temporary_ended_at(&cx.paths)?;
        let serving = if ended {
            "the join service (certificates from FreeIPA)"
        } else {
            "the join service and temporary DNS"
        };
        cx.reporter.set(last, Progress::Serving, 1, None);
        notify(&format!("READY=1\nSTATUS=serving {serving}"));
        tracing::info!("all phases done; serving {serving}");
        let mut services = services;
        services.wait().await;
        bail!("the join service stopped");
    }
    crate::fsutil::write_atomic(
        &cx.paths.done_marker(),
        format!("{}\n", crate::status::now()).as_bytes(),
        0o644,
    )?;
    cx.reporter.set(last, Progress::Done, 1, None);
    notify("READY=1\nSTATUS=done");
    tracing::info!("all phases done");
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
