//! `firstboot exec SERVICE`: the one command every service unit runs. It
//! takes how the service runs on this image from the catalog in node.json
//! and the arguments its phase wrote, so unit files are the same on every
//! image (a host binary in the lab, a podman container on Fedora CoreOS).

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context, Result};
use node_contract::Service;

use crate::paths::Paths;

/// This node's contract and how its image runs `service`.
fn catalog_entry(paths: &Paths, service: &str) -> Result<(node_contract::NodeConfig, Service)> {
    let config = crate::check::load(&paths.node_json())?;
    let entry = config
        .catalog
        .get(service)
        .cloned()
        .with_context(|| format!("the image's catalog has no service `{service}`"))?;
    Ok((config, entry))
}

/// Replace this process with the service. Returns only on failure.
pub fn exec(paths: &Paths, service: &str) -> Result<()> {
    let (config, entry) = catalog_entry(paths, service)?;
    let entry = &entry;
    // A service whose phase gives it arguments (etcd) has them in a file
    // its unit waits for; others (FreeIPA reads its options from its state
    // directory) have none.
    let args_file = paths.service_args(service);
    let args: Vec<String> = match std::fs::read_to_string(&args_file) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", args_file.display())),
    };
    let mut command = match entry {
        Service::Host { command } => {
            let (program, rest) = command
                .split_first()
                .context("empty command in the catalog")?;
            let mut c = std::process::Command::new(program);
            c.args(rest);
            c
        }
        Service::Podman {
            image,
            command,
            data,
        } => {
            if runs_systemd(command) {
                allow_cgroup_writes(paths)?;
            }
            let state = paths.service_state_dir(&config, service)?;
            let hostname = config.fqdn(&config.node);
            let dns = match service {
                crate::freeipa::site::SERVER => {
                    Some(crate::freeipa::site::container_dns(paths, &state)?)
                }
                _ => None,
            };
            podman_command(
                paths,
                service,
                image,
                command,
                &state,
                data.as_deref(),
                &hostname,
                dns.as_deref(),
            )
        }
    };
    command.args(&args);
    let error = command.exec();
    bail!("cannot start {service}: {error}")
}

/// Whether a catalog container runs systemd: one with no command of its
/// own runs its image's entrypoint, which for the only such entry, the
/// FreeIPA server, is the image's init (freeipa-container's Dockerfiles,
/// `ENTRYPOINT /usr/local/sbin/init`); podman runs such a container in
/// systemd mode.
pub fn runs_systemd(command: &[String]) -> bool {
    command.is_empty()
}

/// The SELinux boolean that lets a container write the cgroup file
/// system, which systemd in a container does: denied by default on an
/// SELinux system such as Fedora CoreOS (podman's
/// `docs/source/markdown/options/systemd.md`; freeipa-container's README
/// says the same).
pub const CGROUP_BOOLEAN: &str = "container_manage_cgroup";

/// What this node needs before a container that runs systemd starts:
/// `None` without SELinux (the lab's Debian), or with the boolean on.
pub fn cgroup_boolean_needed(paths: &Paths) -> Result<Option<&'static str>> {
    let selinuxfs = paths.under_root("/sys/fs/selinux");
    if !selinuxfs.join("enforce").exists() {
        return Ok(None);
    }
    let boolean = selinuxfs.join("booleans").join(CGROUP_BOOLEAN);
    let value = std::fs::read_to_string(&boolean).with_context(|| {
        format!(
            "SELinux is on, but {} cannot be read: the policy lacks {CGROUP_BOOLEAN} \
             (container-selinux), without which systemd in a container cannot run",
            boolean.display()
        )
    })?;
    // selinuxfs shows "<current> <pending>".
    Ok((!value.trim_start().starts_with('1')).then_some(CGROUP_BOOLEAN))
}

/// Turn the boolean on for this boot when it is off (each start of the
/// service does it again, so it need not persist); a failure stops the
/// start with the reason, rather than start a container whose systemd
/// cannot run.
fn allow_cgroup_writes(paths: &Paths) -> Result<()> {
    let Some(boolean) = cgroup_boolean_needed(paths)? else {
        return Ok(());
    };
    let status = std::process::Command::new("setsebool")
        .args([boolean, "on"])
        .status()
        .context("cannot run setsebool")?;
    if !status.success() {
        bail!("setsebool {boolean} on failed ({status}); systemd in the container needs it");
    }
    eprintln!("firstboot exec: SELinux boolean {boolean} turned on (systemd in a container writes its cgroups)");
    Ok(())
}

/// `firstboot stop SERVICE`, its unit's `ExecStop`: a container is
/// stopped the way its image expects. systemd's SIGTERM, forwarded by an
/// attached `podman run`, makes a container's systemd re-execute itself
/// rather than stop (systemd(1), SIGTERM), so the stop would wait out the
/// unit's whole timeout and leave the container behind; `podman stop`
/// sends the container's stop signal (SIGRTMIN+3 for one that runs
/// systemd, set by [`podman_command`]), waits, then kills. A host binary
/// needs nothing here: systemd's own signal stops it.
pub fn stop(paths: &Paths, service: &str) -> Result<()> {
    let (_, entry) = catalog_entry(paths, service)?;
    if let Service::Podman { .. } = &entry {
        let status = stop_command(service)
            .status()
            .context("cannot run podman")?;
        if !status.success() {
            bail!("podman stop {service} failed ({status})");
        }
    }
    Ok(())
}

/// Seconds `podman stop` waits for a container before killing it: inside
/// the units' `TimeoutStopSec` (5 min), so podman, not systemd, ends it.
pub const STOP_WAIT_SECS: u32 = 240;

/// `podman stop` for a catalog container (missing is no error: it ended).
pub fn stop_command(service: &str) -> std::process::Command {
    let mut c = std::process::Command::new("podman");
    c.args(["stop", "--ignore"])
        .arg(format!("--time={STOP_WAIT_SECS}"))
        .arg(service);
    c
}

/// `podman run` for a catalog service. The container sees only what the
/// service needs: its own files under /etc/firstboot (etcd: its
/// certificate, key and CA; never node.json, which holds this node's
/// key) read-only, and its own state directory (never all of /var/lib),
/// at `data` when the catalog says where, both relabelled for SELinux.
/// It shares the host's network and carries the node's name; `dns`, when
/// given, is the resolver its resolv.conf names (FreeIPA's, see
/// `freeipa::site::container_dns`). Its arguments come on the command
/// line.
#[allow(clippy::too_many_arguments)]
pub fn podman_command(
    paths: &Paths,
    service: &str,
    image: &str,
    command: &[String],
    state: &std::path::Path,
    data: Option<&str>,
    hostname: &str,
    dns: Option<&str>,
) -> std::process::Command {
    let mut c = std::process::Command::new("podman");
    c.args(["run", "--rm", "--replace", "--name", service, "--net=host"])
        .arg(format!("--hostname={hostname}"));
    if runs_systemd(command) {
        // Said, not left to podman's guess from the image's entrypoint:
        // systemd mode (tmpfs /run and /tmp, a writable cgroup tree) and
        // the signal that halts systemd (see `stop`).
        c.args(["--systemd=always", "--stop-signal=SIGRTMIN+3"]);
    }
    if let Some(dns) = dns {
        c.arg(format!("--dns={dns}"));
    }
    let files = paths.service_files(service);
    if files.is_dir() {
        let dir = format!("/etc/firstboot/{service}");
        c.args(["-v", &format!("{}:{dir}:ro,z", files.display())]);
    }
    let inside = data
        .map(str::to_owned)
        .unwrap_or_else(|| format!("/var/lib/{service}"));
    c.args(["-v", &format!("{}:{inside}:Z", state.display())])
        .arg(image)
        .args(command);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab's Debian has no SELinux; Fedora CoreOS enforces it, with
    /// the boolean off until a container that runs systemd starts. A
    /// policy without the boolean is an error, never a silent start.
    #[test]
    fn the_cgroup_boolean_is_needed_only_where_selinux_has_it_off() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        assert_eq!(cgroup_boolean_needed(&paths).unwrap(), None);

        let selinuxfs = root.path().join("sys/fs/selinux");
        std::fs::create_dir_all(selinuxfs.join("booleans")).unwrap();
        std::fs::write(selinuxfs.join("enforce"), "1").unwrap();
        let err = cgroup_boolean_needed(&paths).unwrap_err();
        assert!(format!("{err:#}").contains("container-selinux"), "{err:#}");

        let boolean = selinuxfs.join("booleans").join(CGROUP_BOOLEAN);
        std::fs::write(&boolean, "0 0").unwrap();
        assert_eq!(cgroup_boolean_needed(&paths).unwrap(), Some(CGROUP_BOOLEAN));
        std::fs::write(&boolean, "1 1").unwrap();
        assert_eq!(cgroup_boolean_needed(&paths).unwrap(), None);
    }

    #[test]
    fn a_container_without_a_command_of_its_own_runs_systemd_and_says_so() {
        let paths = Paths::under(std::path::Path::new("/nonexistent"));
        let args = |command: &[String]| -> Vec<String> {
            podman_command(
                &paths,
                "freeipa-server",
                "image",
                command,
                std::path::Path::new("/var/lib/freeipa-server"),
                Some("/data"),
                "node1.example.org",
                None,
            )
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
        };
        let systemd = args(&[]);
        assert!(
            systemd.contains(&"--systemd=always".to_owned()),
            "{systemd:?}"
        );
        assert!(
            systemd.contains(&"--stop-signal=SIGRTMIN+3".to_owned()),
            "{systemd:?}"
        );
        let etcd = args(&["etcd".to_owned()]);
        assert!(!etcd
            .iter()
            .any(|a| a.starts_with("--systemd") || a.starts_with("--stop-signal")));
        let stop: Vec<String> = stop_command("freeipa-server")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(stop, ["stop", "--ignore", "--time=240", "freeipa-server"]);
    }
}
