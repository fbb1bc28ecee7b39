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

/// Runs one phase's work; the engine around it handles order, retries and
/// records. A trait so the engine is tested with scripted phases.
#[allow(async_fn_in_trait)]
pub trait Phases {
    async fn run(&mut self, cx: &mut Context, phase: &str) -> Result<()>;
}

/// The real phases.
pub struct NodePhases;

impl Phases for NodePhases {
    async fn run(&mut self, cx: &mut Context, phase: &str) -> Result<()> {
        run_phase(cx, phase).await
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
pub async fn run_all(
    cx: &mut Context,
    patience: &Patience,
    phases: &mut impl Phases,
) -> Result<()> {
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
            match phases.run(cx, phase).await {
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
    run_all(&mut cx, &PATIENCE, &mut NodePhases).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use node_contract::{HostEntry, JoinConfig, Role, SiteInfo};

    /// A worker's context under a scratch root (no bootstrap services).
    fn context(root: &std::path::Path) -> Context {
        let config = NodeConfig {
            schema: node_contract::SCHEMA_VERSION,
            site: SiteInfo {
                domain: "lab.example.org".into(),
                realm: "LAB.EXAMPLE.ORG".into(),
                vpc_range: "198.18.0.0/24".into(),
                hosts: ["node1", "node2", "node3", "node4"]
                    .iter()
                    .map(|n| HostEntry {
                        name: (*n).into(),
                        role: if *n == "node4" {
                            Role::Worker
                        } else {
                            Role::Core
                        },
                    })
                    .collect(),
            },
            node: "node4".into(),
            join: JoinConfig {
                port: 7443,
                credential: node_contract::join_credential("s", "node4"),
                site_secret: None,
                address: None,
            },
            catalog: Default::default(),
            freeipa: None,
            storage: Default::default(),
        };
        let paths = Paths::under(root);
        Context {
            reporter: Reporter::new(paths.status_file()),
            state: State::load(&paths.state_file()).unwrap(),
            vpc: Cidr::parse("198.18.0.0/24").unwrap(),
            paths,
            config,
            services: None,
        }
    }

    /// Phases that succeed, except those in `failures`, which fail that
    /// many times first; every call is recorded.
    struct Script {
        calls: Vec<String>,
        failures: std::collections::HashMap<&'static str, u32>,
    }

    impl Phases for Script {
        async fn run(&mut self, _cx: &mut Context, phase: &str) -> Result<()> {
            self.calls.push(phase.to_owned());
            if let Some(left) = self.failures.get_mut(phase) {
                if *left > 0 {
                    *left -= 1;
                    bail!("{phase} not ready");
                }
            }
            Ok(())
        }
    }

    const QUICK: Patience = Patience {
        attempts: 3,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };

    #[tokio::test]
    async fn phases_run_in_order_and_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut cx = context(dir.path());
        let mut script = Script {
            calls: vec![],
            failures: [("join", 2)].into(),
        };
        run_all(&mut cx, &QUICK, &mut script).await.unwrap();
        assert_eq!(
            script.calls,
            ["identify", "storage", "join", "join", "join", "etcd"]
        );
        let saved = State::load(&cx.paths.state_file()).unwrap();
        assert_eq!(saved.completed, PHASES);
        let status = std::fs::read_to_string(cx.paths.status_file()).unwrap();
        assert!(status.contains("\"phase\": \"etcd\""), "{status}");
    }

    #[tokio::test]
    async fn a_restart_resumes_at_the_first_phase_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut cx = context(dir.path());
        // join never succeeds within its patience: the run stops there.
        let mut script = Script {
            calls: vec![],
            failures: [("join", 99)].into(),
        };
        let err = run_all(&mut cx, &QUICK, &mut script)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("phase join failed after 3 attempts") && err.contains("bootstrap host"),
            "{err}"
        );
        let status = std::fs::read_to_string(cx.paths.status_file()).unwrap();
        assert!(status.contains("\"state\": \"failed\""), "{status}");

        // The next run (systemd restarts the unit) starts at join.
        let mut cx = context(dir.path());
        let mut script = Script {
            calls: vec![],
            failures: Default::default(),
        };
        run_all(&mut cx, &QUICK, &mut script).await.unwrap();
        assert_eq!(script.calls, ["join", "etcd"]);
    }
}
