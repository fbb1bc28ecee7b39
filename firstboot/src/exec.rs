//! `firstboot exec SERVICE`: the one command every service unit runs. It
//! takes how the service runs on this image from the catalog in node.json
//! and the arguments its phase wrote, so unit files are the same on every
//! image (a host binary in the lab, a podman container on Fedora CoreOS).

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context, Result};
use node_contract::Service;

use crate::paths::Paths;

/// Replace this process with the service. Returns only on failure.
pub fn exec(paths: &Paths, service: &str) -> Result<()> {
    let config = crate::check::load(&paths.node_json())?;
    let entry = config
        .catalog
        .get(service)
        .with_context(|| format!("the image's catalog has no service `{service}`"))?;
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
            let state = state_dir(paths, &config, service)?;
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

/// A service's state directory, `/var/lib/<service>`: on the data
/// volume when the node has one (the directory is then a link to
/// `<data volume>/<service>`), so what a service keeps survives a rebuilt
/// droplet whose volume is attached again.
pub fn state_dir(
    paths: &Paths,
    config: &node_contract::NodeConfig,
    service: &str,
) -> Result<std::path::PathBuf> {
    let dir = paths.service_state(service);
    if dir.exists() {
        return Ok(dir);
    }
    match &config.storage.data_mount {
        Some(mount) => {
            let target = paths.under_root(mount).join(service);
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink(&target, &dir).with_context(|| {
                format!("cannot link {} to {}", dir.display(), target.display())
            })?;
        }
        None => std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?,
    }
    Ok(dir)
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
