//! `firstboot ipa-client`: this node's FreeIPA client on the host itself,
//! which is what the Fedora CoreOS catalog's `freeipa-client` runs.
//!
//! Fedora CoreOS already ships SSSD's IPA backend, authselect and the
//! Kerberos libraries. It lacks `ipa-client-install` and certmonger, which
//! the `freeipa-client` package brings. The package is layered with
//! rpm-ostree, applied live so the node does not reboot. Then the real
//! `ipa-client-install` enrolls the host with the one-time password that
//! the freeipa phase wrote into the options file. certmonger is enabled
//! on the host, so it renews the node's certificates. Why the host and
//! not a container: `images/fedora-coreos/README.md`.
//!
//! Every step can run again. A host enrolled earlier is left alone. A
//! failed `ipa-client-install` rolls itself back, and a later run starts
//! clean. The marker is written last, so a crash before it means that
//! the next run checks what the host holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::site::{Kind, CLIENT};

/// The package that brings `ipa-client-install` and certmonger.
pub const PACKAGE: &str = "freeipa-client";

/// `ipa-client-install`'s exit status when the host is enrolled already
/// (`CLIENT_ALREADY_CONFIGURED` in `ipaclient/install/client.py`).
const ALREADY_CONFIGURED: i32 = 3;

/// The host's programs and files that the client uses. On a node these
/// are the real paths ([`Host::system`]); tests use other paths.
#[derive(Debug, Clone)]
pub struct Host {
    pub installer: PathBuf,
    pub rpm_ostree: PathBuf,
    pub tmpfiles: PathBuf,
    pub systemctl: PathBuf,
    /// Asks the bus to reload its policy after a live apply.
    pub busctl: PathBuf,
    /// The IPA CA that `ipa-client-install` leaves.
    pub ipa_ca: PathBuf,
    /// The host keytab that `ipa-client-install` leaves.
    pub keytab: PathBuf,
}

impl Host {
    pub fn system() -> Host {
        Host {
            installer: "/usr/sbin/ipa-client-install".into(),
            rpm_ostree: "/usr/bin/rpm-ostree".into(),
            tmpfiles: "/usr/bin/systemd-tmpfiles".into(),
            systemctl: "/usr/bin/systemctl".into(),
            busctl: "/usr/bin/busctl".into(),
            ipa_ca: "/etc/ipa/ca.crt".into(),
            keytab: "/etc/krb5.keytab".into(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Enrolled by this run.
    Enrolled,
    /// The marker was there already: nothing was run.
    AlreadyEnrolled,
    /// `ipa-client-install` found this host enrolled, by a run that did
    /// not live to write the marker. The marker is now written.
    FoundEnrolled,
}

/// `firstboot ipa-client`: enroll this host in the site's FreeIPA, once.
pub fn main(paths: &crate::paths::Paths) -> Result<()> {
    let config = crate::check::load(&paths.node_json())?;
    let state = paths.service_state_dir(&config, CLIENT)?;
    let outcome = enroll(&Host::system(), &state)?;
    println!(
        "{}",
        match outcome {
            Outcome::Enrolled => "Client configuration complete.",
            Outcome::AlreadyEnrolled => "This host is already enrolled.",
            Outcome::FoundEnrolled => "This host was enrolled by an earlier run.",
        }
    );
    Ok(())
}

/// Enroll with the options in `state`, layering the client package first
/// when the host lacks it.
pub fn enroll(host: &Host, state: &Path) -> Result<Outcome> {
    let marker = state.join(Kind::Client.done_marker());
    if marker.exists() {
        return Ok(Outcome::AlreadyEnrolled);
    }
    let options_file = state.join(Kind::Client.options_file());
    let options = read_options(&options_file)?;
    let server = options
        .iter()
        .find_map(|o| o.strip_prefix("--server="))
        .with_context(|| format!("{} names no --server", options_file.display()))?
        .to_owned();
    if !host.installer.exists() {
        layer(host)?;
    }
    let outcome = match run(Command::new(&host.installer).args(&options)) {
        Ok(()) => Outcome::Enrolled,
        Err(Failure::Exit(ALREADY_CONFIGURED)) if host.keytab.exists() => Outcome::FoundEnrolled,
        Err(Failure::Exit(ALREADY_CONFIGURED)) => bail!(
            "ipa-client-install says this host is enrolled, but it has no {}: run \
             `ipa-client-install --uninstall -U` on it, disable the host in FreeIPA \
             (`ipa host-disable`), then restart firstboot",
            host.keytab.display()
        ),
        Err(failure) => bail!(
            "ipa-client-install {failure} (its log: /var/log/ipaclient-install.log; \
             it rolls back what it changed, so the unit tries again)"
        ),
    };
    // certmonger renews what is requested through it. ipa-client-install
    // only restarts it if it is running, so it is enabled here.
    run(Command::new(&host.systemctl).args(["enable", "--now", "certmonger.service"]))
        .map_err(|f| anyhow::anyhow!("systemctl enable --now certmonger.service {f}"))?;
    let ca = std::fs::read(&host.ipa_ca)
        .with_context(|| format!("ipa-client-install left no {}", host.ipa_ca.display()))?;
    crate::fsutil::write_atomic(&super::site::ca_path(state), &ca, 0o644)?;
    crate::fsutil::write_atomic(&marker, format!("{server}\n").as_bytes(), 0o644)?;
    Ok(outcome)
}

/// One option per line, as the freeipa phase writes them.
fn read_options(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read {}: the freeipa phase writes it before it starts this service",
            file.display()
        )
    })?;
    let options: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(odd) = options.iter().find(|o| !o.starts_with("--")) {
        bail!("{} holds `{odd}`, which is not an option", file.display());
    }
    Ok(options)
}

/// Whether this image's `freeipa-client` is this host client
/// (`firstboot ipa-client`), which layers its package when missing.
pub fn runs_in(catalog: &node_contract::Catalog) -> bool {
    matches!(
        catalog.get(CLIENT),
        Some(node_contract::Service::Host { command })
            if command.len() == 2
                && command[0].ends_with("/firstboot")
                && command[1] == "ipa-client"
    )
}

/// Layer the client package now, applied live, if the host lacks it: the
/// freeipa phase does this while it waits for the first server, so the
/// download does not come after that wait. Ok(true) when it layered.
/// Only the live apply is tried; the rest is left to [`enroll`].
pub fn prepare(host: &Host) -> Result<bool> {
    if host.installer.exists() {
        return Ok(false);
    }
    layer_live(host).map_err(|f| anyhow::anyhow!("rpm-ostree install --apply-live {f}"))?;
    finish_live(host)?;
    Ok(true)
}

fn install_package(host: &Host, live: bool) -> std::result::Result<(), Failure> {
    let mut c = Command::new(&host.rpm_ostree);
    c.args(["install", "-y", "--idempotent", "--allow-inactive"]);
    if live {
        c.arg("--apply-live");
    }
    c.arg(PACKAGE);
    run(&mut c)
}

fn layer_live(host: &Host) -> std::result::Result<(), Failure> {
    tracing::info!("layering {PACKAGE} with rpm-ostree, applied live");
    install_package(host, true)
}

/// The bus driver's own call to read its configuration (and policy) again.
const RELOAD_BUS: [&str; 5] = [
    "call",
    "org.freedesktop.DBus",
    "/org/freedesktop/DBus",
    "org.freedesktop.DBus",
    "ReloadConfig",
];

/// After a live apply: the new packages' tmpfiles.d entries, which
/// create their directories under /var (rpm-ostree keeps /var out of
/// deployments), are not run by the apply. ipa-client-install needs
/// /var/lib/ipa-client/sysrestore.
///
/// Nor does it make the bus read the new packages' D-Bus policy
/// (certmonger's, which lets it own its bus name): dbus-broker, Fedora's
/// bus, reads policy at start and on `ReloadConfig` only, never on a file
/// change (dbus-broker issue 69; rpm-ostree's live apply, `live.rs`,
/// restarts nothing). Without it certmonger cannot start in this boot.
fn finish_live(host: &Host) -> Result<()> {
    run(Command::new(&host.tmpfiles).arg("--create"))
        .map_err(|f| anyhow::anyhow!("systemd-tmpfiles --create {f}"))?;
    run(Command::new(&host.busctl).args(RELOAD_BUS))
        .map_err(|f| anyhow::anyhow!("busctl {} {f}", RELOAD_BUS.join(" ")))?;
    if !host.installer.exists() {
        bail!(
            "rpm-ostree applied {PACKAGE} live, but there is no {}",
            host.installer.display()
        );
    }
    Ok(())
}

/// Layer the client package, applied live. rpm-ostree refuses a live
/// apply when another deployment is pending, such as an update Zincati
/// has staged. The package then goes onto that deployment, and the node
/// reboots into it: the freeipa phase resumes after the reboot.
fn layer(host: &Host) -> Result<()> {
    if let Err(live) = layer_live(host) {
        tracing::warn!(
            "rpm-ostree could not apply {PACKAGE} live ({live}); layering it for the next boot"
        );
        install_package(host, false).map_err(|f| {
            anyhow::anyhow!(
                "rpm-ostree install {PACKAGE} {f} (applied live, it {live}); \
                 see `journalctl -u rpm-ostreed`"
            )
        })?;
        run(Command::new(&host.systemctl).args(["reboot"]))
            .map_err(|f| anyhow::anyhow!("systemctl reboot {f}"))?;
        bail!("{PACKAGE} is layered for the next boot; rebooting into it");
    }
    finish_live(host)
}

/// Why a program did not succeed, as the end of a sentence that starts
/// with its name.
#[derive(Debug)]
enum Failure {
    Start(std::io::Error),
    Exit(i32),
    Signal,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Start(e) => write!(f, "could not start: {e}"),
            Failure::Exit(code) => write!(f, "exited with status {code}"),
            Failure::Signal => write!(f, "was killed by a signal"),
        }
    }
}

/// Run a program with its output going where ours goes (the unit's
/// journal).
fn run(command: &mut Command) -> std::result::Result<(), Failure> {
    let status = command.status().map_err(Failure::Start)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(Failure::Exit(code)),
        None => Err(Failure::Signal),
    }
}

#[cfg(test)]
mod tests;
