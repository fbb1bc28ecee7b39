//! Phase 5: FreeIPA, peer to peer. The bootstrap host installs the first
//! server (the official container on Fedora CoreOS, the simulator in the
//! lab: the image catalog's `freeipa-server`) with the passwords only its
//! config holds, then hands out one-time passwords over the join service.
//! The other core hosts enroll with theirs and are promoted to replicas;
//! every other node enrolls as a client. No FreeIPA secret is in any other
//! node's user data.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::Context;
use crate::freeipa::site::{self, Enroller, Kind};
use crate::freeipa::{Client, Config, Endpoint};
use crate::system::JournalWatch;

/// How long an install may take: FreeIPA's own takes minutes (its CA the
/// longest); the engine retries beyond that.
const INSTALL_WAIT: Duration = Duration::from_secs(30 * 60);
/// How long a node waits, within one attempt, for the bootstrap host's
/// FreeIPA to be ready to enroll it: the first server's whole install
/// (which starts when this node's phase does, give or take the seconds
/// etcd takes), and some.
const ENROLL_WAIT: Duration = Duration::from_secs(INSTALL_WAIT.as_secs() + 5 * 60);
/// How often a long wait says it is still waiting.
const PROGRESS: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);
/// The longest pause between asks for enrollment: asks start at `POLL`
/// and double, so a server that is ready soon is noticed soon, and one
/// that installs for minutes is asked every few seconds, not hammered.
const ENROLL_POLL_MAX: Duration = Duration::from_secs(4);
/// The line the official container prints when the install is done.
pub const CONFIGURED: &str = "FreeIPA server configured.";

pub async fn run(cx: &mut Context) -> Result<()> {
    let own = cx.own_address()?;
    let kind = Kind::of(&cx.config);
    let state = cx.paths.service_state_dir(&cx.config, kind.service())?;
    // A rebuilt first server whose peers run the site's FreeIPA installs
    // as their replica, not a second deployment (see `rejoin_options`).
    let rejoin = match kind {
        Kind::Server => crate::state::FreeipaRejoin::load(&cx.paths.freeipa_rejoin())?,
        _ => None,
    };
    let fresh =
        |k: Kind| !state.join(k.done_marker()).exists() && !state.join(k.options_file()).exists();
    let install_kind = match kind {
        Kind::Server
            if state.join(Kind::Replica.options_file()).exists()
                || (rejoin.is_some() && fresh(Kind::Server)) =>
        {
            Kind::Replica
        }
        other => other,
    };
    site::check_kind(&state, install_kind)?;
    if !state.join(install_kind.done_marker()).exists() {
        if !state.join(install_kind.options_file()).exists() {
            let options = match (kind, &rejoin) {
                (Kind::Server, Some(rejoin)) => rejoin_options(cx, own, rejoin).await?,
                (Kind::Server, None) => site::server_options(&cx.config, own)?,
                (Kind::Replica | Kind::Client, _) => {
                    // Fedora CoreOS's host client layers its package: do
                    // that while the first server installs, not after.
                    let prepare = (kind == Kind::Client
                        && crate::freeipa::host::runs_in(&cx.config.catalog))
                    .then(|| {
                        tokio::task::spawn_blocking(|| {
                            crate::freeipa::host::prepare(&crate::freeipa::host::Host::system())
                        })
                    });
                    let answer = enrollment(cx).await?;
                    if let Some(prepare) = prepare {
                        // A failure here is only a missed head start: the
                        // client service layers (or reboots) itself.
                        match prepare.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(
                                phase = "freeipa",
                                "could not layer the FreeIPA client ahead: {e:#}"
                            ),
                            Err(e) => tracing::warn!(phase = "freeipa", "{e}"),
                        }
                    }
                    let otp = answer.one_time_password.with_context(|| {
                        format!(
                            "the bootstrap host sent no one-time password: FreeIPA has {} \
                             enrolled already (run `ipa host-disable` for a client, \
                             `ipa server-del` for a server, then restart firstboot)",
                            cx.config.fqdn(&cx.config.node)
                        )
                    })?;
                    if kind == Kind::Replica {
                        let from = crate::state::bootstrap_address(&cx.paths, &cx.state)
                            .context("join did not record the bootstrap host's address")?;
                        site::record_install_server(&cx.paths, from)?;
                        site::replica_options(&cx.config, own, &answer.server, &otp)
                    } else {
                        site::client_options(&cx.config, &answer.server, &otp)
                    }
                }
            };
            site::write_options(&state, install_kind, &options)?;
        }
        if let Err(failed) = install(cx, install_kind, &state).await {
            let next = start_clean(install_kind, &state).await?;
            return Err(failed.context(next));
        }
        if matches!(install_kind, Kind::Client | Kind::Server) {
            // A client's one-time password is spent; the server's options
            // hold the site's passwords, which the installed server no
            // longer reads: neither stays on disk.
            site::forget_options(&state, install_kind)?;
        }
    } else {
        // Installed on an earlier run: the service is enabled and held
        // back only by its condition, so it starts with the node.
        crate::system::systemctl(&["start", &format!("{}.service", kind.service())]).await?;
    }
    if kind == Kind::Server {
        serve_enrollment(cx, own, &state).await?;
    }
    Ok(())
}

/// A rebuilt first server's replica install: through the first of its
/// peers' FreeIPA servers that answers as admin (TLS checked against the
/// IPA CA that peer's signed answer carried), its old server entry goes
/// (`server_del`, with FreeIPA's own refusals), its host is added again
/// with a one-time password and put in `ipaservers`, and the options say
/// to install a replica of that server.
async fn rejoin_options(
    cx: &Context,
    own: Ipv4Addr,
    rejoin: &crate::state::FreeipaRejoin,
) -> Result<Vec<String>> {
    let secrets = site::secrets(&cx.config)?;
    let fqdn = cx.config.fqdn(&cx.config.node);
    let mut errors = Vec::new();
    for peer in &rejoin.servers {
        let server = cx.config.fqdn(&peer.node);
        let endpoint = Endpoint::at(&server, SocketAddr::new(peer.address.into(), 443));
        let client = Client::new(Config::admin(
            endpoint,
            &peer.ca_pem,
            &secrets.admin_password,
        ))?;
        if let Err(e) = client.login().await {
            errors.push(format!("{server}: {e}"));
            continue;
        }
        // The surviving servers in a ring first: if this host died before
        // the ring was whole, they replicated only through it, and FreeIPA
        // rightly refuses a removal that leaves them apart.
        let others = client
            .topology_servers()
            .await?
            .into_iter()
            .filter(|s| s.name != fqdn);
        site::connect_ring(&client, others.collect())
            .await
            .with_context(|| format!("{server} cannot join the other servers"))?;
        let otp = site::one_time_password();
        site::readmit(&client, &fqdn, own, &otp, node_contract::Role::Core)
            .await
            .with_context(|| format!("through {server}"))?;
        tracing::warn!(
            phase = "freeipa",
            "this host was rebuilt: it installs as a replica of {server}, in the site's FreeIPA"
        );
        site::record_install_server(&cx.paths, peer.address)?;
        return Ok(site::replica_options(&cx.config, own, &server, &otp));
    }
    bail!(
        "the site's FreeIPA servers do not answer as admin: {}",
        errors.join("; ")
    )
}

/// The bootstrap host's enrollment service after a restart.
pub async fn resume(cx: &mut Context) -> Result<()> {
    let own = cx.own_address()?;
    let state = cx.paths.service_state_dir(&cx.config, site::SERVER)?;
    crate::system::systemctl(&["start", &format!("{}.service", site::SERVER)]).await?;
    serve_enrollment(cx, own, &state).await
}

/// The bootstrap host's FreeIPA enrollment through its join service, and
/// the replication topology, from its admin login.
pub async fn serve_enrollment(cx: &mut Context, own: Ipv4Addr, state: &Path) -> Result<()> {
    let Some(services) = &cx.services else {
        bail!("the join service is not running");
    };
    if services.enroller().await.is_some() {
        return Ok(());
    }
    let client = admin_client(cx, own, state).await?;
    let fqdn = cx.config.fqdn(&cx.config.node);
    let enroller = Arc::new(Enroller::new(
        client,
        fqdn,
        cx.paths.state_dir().join("freeipa-enrollments.json"),
        &cx.config,
    )?);
    services.set_enroller(enroller.clone()).await;
    tokio::spawn(keep_topology(enroller));
    tracing::info!(
        phase = "freeipa",
        "FreeIPA enrollment served through the join service"
    );
    Ok(())
}

/// The bootstrap host's admin session with its own FreeIPA server (`state`
/// its data directory), logged in and answering: TLS checked against the
/// CA the server left there.
pub async fn admin_client(cx: &Context, own: Ipv4Addr, state: &Path) -> Result<Client> {
    let secrets = site::secrets(&cx.config)?;
    let fqdn = cx.config.fqdn(&cx.config.node);
    let ca = std::fs::read_to_string(site::ca_path(state)).with_context(|| {
        format!(
            "the FreeIPA server left no CA at {}",
            site::ca_path(state).display()
        )
    })?;
    let endpoint = Endpoint::at(&fqdn, SocketAddr::new(own.into(), 443));
    let client = Client::new(Config::admin(endpoint, &ca, &secrets.admin_password))?;
    client
        .login()
        .await
        .context("cannot log in to FreeIPA as admin")?;
    client
        .ping()
        .await
        .context("FreeIPA does not answer as admin")?;
    Ok(client)
}

/// How often the topology is checked while servers are still coming (or
/// the last pass had to add a segment), and once every core host is a
/// server and the ring is whole.
const TOPOLOGY_FORMING: Duration = Duration::from_secs(15);
const TOPOLOGY_STEADY: Duration = Duration::from_secs(5 * 60);

/// Keep every server connected to two others as replicas come and go.
async fn keep_topology(enroller: Arc<Enroller>) {
    loop {
        let wait = match enroller.ensure_topology().await {
            Ok(pass) => {
                if pass.added > 0 {
                    tracing::info!(
                        "freeipa: topology: {} segments added over {} servers",
                        pass.added,
                        pass.servers
                    );
                }
                topology_wait(pass, enroller.expected_servers())
            }
            Err(e) => {
                tracing::warn!("freeipa: topology: {e:#}");
                TOPOLOGY_FORMING
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The pause before the next topology pass.
fn topology_wait(pass: site::Topology, expected: usize) -> Duration {
    if pass.added == 0 && pass.servers >= expected {
        TOPOLOGY_STEADY
    } else {
        TOPOLOGY_FORMING
    }
}

/// This node's enrollment from the bootstrap host, waiting while its
/// FreeIPA is still installing.
async fn enrollment(cx: &Context) -> Result<crate::join::protocol::EnrollAnswer> {
    let started = tokio::time::Instant::now();
    let deadline = started + ENROLL_WAIT;
    let mut next_progress = started + PROGRESS;
    let mut pause = POLL;
    let waiting = |seconds: u64| {
        format!("waiting for the bootstrap host's FreeIPA to enroll this node, {seconds} s")
    };
    cx.reporter.detail(waiting(0));
    loop {
        // Read each time: a rebuilt bootstrap host may move meanwhile.
        let bootstrap = crate::state::bootstrap_address(&cx.paths, &cx.state)
            .context("join did not record the bootstrap host's address")?;
        if let Some(answer) =
            crate::join::client::enrollment(&cx.paths, &cx.config, bootstrap).await?
        {
            return Ok(answer);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the bootstrap host's FreeIPA is not ready to enroll this node after {} s",
                ENROLL_WAIT.as_secs()
            );
        }
        let now = tokio::time::Instant::now();
        if now >= next_progress {
            let detail = waiting(started.elapsed().as_secs());
            tracing::info!(phase = "freeipa", "{detail}");
            cx.reporter.detail(detail);
            next_progress = now + PROGRESS;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(ENROLL_POLL_MAX);
    }
}

/// After a failed install, make the next attempt start from clean, and
/// say how. The service is stopped first, so that systemd does not start
/// it again with what failed. A client or replica install that failed
/// after `ipa-join` rolled its enrollment back (`--unenroll`), and its
/// one-time password is spent (freeipa `ipaclient/install/client.py`,
/// the rollback; `ipaserver/install/server/replicainstall.py`,
/// `preserve_enrollment_state`): its options go, so the next attempt
/// asks the bootstrap host again, which arms the host with its password
/// again (`Enroller::enroll`: a host with neither keytab nor password). A server or replica that failed half-way leaves a `/data` on
/// which the container never runs its configure step again (freeipa-
/// container `init-data` drops it once `/etc/ipa/ca.crt` is there;
/// `ipa-server-configure-first` exits 11): that volume is set aside
/// whole (the options with it). A volume that was configured (its
/// `volume-version` is there) is never set aside.
async fn start_clean(kind: Kind, state: &Path) -> Result<String> {
    let unit = format!("{}.service", kind.service());
    crate::system::systemctl(&["stop", &unit]).await?;
    match kind {
        Kind::Client => {
            site::forget_options(state, kind)?;
            Ok("the next attempt asks the bootstrap host for a one-time password again".into())
        }
        Kind::Server | Kind::Replica if state.join(kind.done_marker()).exists() => Ok(format!(
            "{} is configured; the next attempt starts it again",
            state.display()
        )),
        Kind::Server | Kind::Replica => {
            let aside = site::set_aside(state)?;
            tracing::warn!(
                phase = "freeipa",
                "{unit} failed before it was configured: its half-installed data is set aside \
                 at {}",
                aside.display()
            );
            Ok(format!(
                "the half-installed data is set aside at {}; the next attempt installs \
                 from clean{}",
                aside.display(),
                if kind == Kind::Replica {
                    " and asks the bootstrap host for a one-time password again"
                } else {
                    ""
                }
            ))
        }
    }
}

/// Start the install and wait for its own signals: the server's
/// "configured" line and volume version, the client's marker.
async fn install(cx: &Context, kind: Kind, state: &Path) -> Result<()> {
    let unit = format!("{}.service", kind.service());
    let journal = JournalWatch::new(
        &unit,
        cx.paths
            .state_dir()
            .join(format!("{}.journal-cursor", kind.service())),
        crate::status::now(),
    );
    crate::system::systemctl(&["start", "--no-block", &unit]).await?;
    let started = tokio::time::Instant::now();
    let mut said = false;
    let mut next_progress = started + PROGRESS;
    let installing = |seconds: u64| format!("{unit} installing, {seconds} s");
    cx.reporter.detail(installing(0));
    loop {
        said |= journal
            .new_lines()
            .await
            .map(|lines| lines.contains(CONFIGURED))
            .unwrap_or(false);
        let marked = state.join(kind.done_marker()).exists();
        let done = match kind {
            Kind::Server | Kind::Replica => said && marked,
            Kind::Client => marked,
        };
        if done {
            tracing::info!(
                phase = "freeipa",
                "{unit}: configured after {} s",
                started.elapsed().as_secs()
            );
            return Ok(());
        }
        if crate::system::is_failed(&unit).await {
            bail!(
                "{unit} failed; its last lines:\n{}",
                crate::system::last_lines(&unit, 20).await
            );
        }
        let now = tokio::time::Instant::now();
        if now >= started + INSTALL_WAIT {
            bail!(
                "{unit} is not configured after {} s; its last lines:\n{}",
                INSTALL_WAIT.as_secs(),
                crate::system::last_lines(&unit, 20).await
            );
        }
        if now >= next_progress {
            let detail = installing(started.elapsed().as_secs());
            tracing::info!(phase = "freeipa", "{detail}");
            cx.reporter.detail(detail);
            next_progress = now + PROGRESS;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_checked_often_only_while_it_forms() {
        let pass = |servers, added| site::Topology { servers, added };
        // Replicas still missing, or a segment just added: soon again.
        assert_eq!(topology_wait(pass(2, 0), 3), TOPOLOGY_FORMING);
        assert_eq!(topology_wait(pass(3, 2), 3), TOPOLOGY_FORMING);
        // Every core host a server and nothing to add: rarely.
        assert_eq!(topology_wait(pass(3, 0), 3), TOPOLOGY_STEADY);
        assert!(TOPOLOGY_STEADY >= TOPOLOGY_FORMING * 10);
    }
}
