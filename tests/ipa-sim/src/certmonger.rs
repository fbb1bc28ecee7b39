//! The server's own certmonger. The official container runs a certmonger
//! of its own, its state on the data volume (`/var/lib/certmonger/cas/`,
//! `requests/`, `local/` in freeipa-container `volume-data-list`), whose
//! built-in `IPA` CA runs FreeIPA's `ipa-submit` with the container's
//! host keytab; firstboot asks it for the etcd member certificate with
//! `podman exec freeipa-server getcert request -c IPA ...`.
//!
//! The simulator runs on the node itself, with no container around it,
//! so it starts a private daemon as that certmonger (`certmonger -n -L
//! -P SOCKET`: no bus, one listening socket, certmonger(8)), with its
//! state under `<data>/var/lib/certmonger` and its socket at
//! [`HOST_SERVER_CERTMONGER`] under the data directory, where firstboot
//! reaches it with `CERTMONGER_PVT_ADDRESS`. Its `IPA` CA runs the
//! simulator's stand-in for `ipa-submit` (see `submit` in the binary)
//! with `--root <data>`, so the helper reads the server's own
//! `<data>/etc` (see [`crate::install::save_server_etc`]), as FreeIPA's
//! reads the container's `/etc`.
//!
//! What differs from the container: its certmonger is reached on the
//! container's D-Bus system bus through `podman exec`, this one on a
//! socket; and the container's `ipa-submit` speaks XML-RPC with
//! Kerberos, this one the simulator's login with the keytab's secret.

use std::os::fd::AsFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use firstboot::certmonger::IPA;
pub use firstboot::freeipa::site::HOST_SERVER_CERTMONGER;

/// Where Debian's certmonger has FreeIPA's helper, and where the lab
/// binds the simulator's stand-in.
pub const DEFAULT_HELPER: &str = "/usr/lib/certmonger/ipa-submit";

/// How long certmonger has to open its socket.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long it has to end when asked, before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Whether certmonger can run here, asked before anything is installed:
/// a server whose certmonger cannot start does not start at all, and a
/// volume must not be left half-configured for that.
pub fn check_installed(helper: &Path) -> anyhow::Result<()> {
    if let Some(tool) = missing_tool() {
        bail!(
            "certmonger is not installed (no `{tool}` on PATH): the FreeIPA server runs its \
             own certmonger, as the official container does; install it (Debian: apt-get \
             install certmonger)"
        );
    }
    if !helper.is_file() {
        bail!(
            "{} is not there: the server's certmonger would have no helper for its IPA CA \
             (the lab binds ipa-sim there; give --certmonger-helper PATH)",
            helper.display()
        );
    }
    Ok(())
}

/// The first of certmonger's programs (the daemon, `getcert`) not on
/// PATH, if any.
pub fn missing_tool() -> Option<&'static str> {
    ["certmonger", "getcert"]
        .into_iter()
        .find(|tool| find_on_path(tool).is_none())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The running daemon. Dropped, it is killed (SIGKILL);
/// [`ServerCertmonger::stop`] asks it to end first.
pub struct ServerCertmonger {
    child: tokio::process::Child,
    address: String,
}

impl ServerCertmonger {
    /// Start it for the server whose data directory is `data`, its `IPA`
    /// CA running `helper --root <data>`; returns once it answers.
    pub async fn start(data: &Path, helper: &Path) -> anyhow::Result<ServerCertmonger> {
        let data = std::path::absolute(data)
            .with_context(|| format!("cannot make {} absolute", data.display()))?;
        let state = data.join("var/lib/certmonger");
        for sub in ["cas", "requests", "tmp", "local"] {
            let dir = state.join(sub);
            firstboot::fsutil::ensure_dir(&dir, 0o700)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        }
        let socket = data.join(HOST_SERVER_CERTMONGER);
        // A socket left by an earlier run (certmonger leaves it when it
        // ends) would look like a daemon that is listening.
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot remove the stale socket {}", socket.display())
                })
            }
        }
        // Its messages go to the server's stderr (the journal in the lab),
        // never to stdout, where the server says it is configured.
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot duplicate stderr for certmonger")?;
        let child = tokio::process::Command::new("certmonger")
            .args(["-n", "-L", "-P"])
            .arg(&socket)
            .env("CERTMONGER_CAS_DIR", state.join("cas"))
            .env("CERTMONGER_REQUESTS_DIR", state.join("requests"))
            .env("CERTMONGER_TMPDIR", state.join("tmp"))
            .env("CERTMONGER_LOCAL_CA_DIR", state.join("local"))
            // Its own lock, not the node's /var/lib/certmonger/lock, which
            // the node's certmonger holds: the container's is its own too.
            .env("CERTMONGER_SYSTEM_LOCK_FILE", state.join("lock"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start certmonger (is it installed? apt-get install certmonger)")?;
        let mut running = ServerCertmonger {
            child,
            address: format!("unix:path={}", socket.display()),
        };
        running.wait_for(&socket).await?;
        let helper = format!("{} --root {}", helper.display(), data.display());
        running
            .client()
            .set_helper(IPA, &helper)
            .await
            .with_context(|| format!("the server's certmonger took no helper for {IPA}"))?;
        tracing::info!(
            "ipa-sim: the server's certmonger answers at {}, its {IPA} CA running {helper}",
            running.address
        );
        Ok(running)
    }

    /// Until the socket is there, bounded; an early end is an error.
    async fn wait_for(&mut self, socket: &Path) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot wait for certmonger")?
            {
                bail!(
                    "certmonger ended ({status}) before it opened {} (its messages are \
                     above)",
                    socket.display()
                );
            }
            if socket.exists() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "certmonger did not open {} within {} s",
                    socket.display(),
                    READY_WITHIN.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `CERTMONGER_PVT_ADDRESS` for it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A getcert client of this daemon.
    pub fn client(&self) -> firstboot::certmonger::Certmonger {
        firstboot::certmonger::Certmonger::private(&self.address)
    }

    /// Ask it to end (SIGTERM to its PID), killed if it has not within
    /// a few seconds; reaped either way.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(pid) = self.child.id() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(pid).map_err(|_| anyhow!("certmonger's PID {pid} is out of range"))?,
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("cannot signal certmonger ({pid})"))?;
        match tokio::time::timeout(STOP_WITHIN, self.child.wait()).await {
            Ok(status) => {
                status.context("cannot wait for certmonger")?;
            }
            Err(_) => {
                tracing::warn!(
                    "ipa-sim: certmonger ({pid}) did not end within {} s; killing it",
                    STOP_WITHIN.as_secs()
                );
                self.child
                    .kill()
                    .await
                    .with_context(|| format!("cannot kill certmonger ({pid})"))?;
            }
        }
        Ok(())
    }
}
