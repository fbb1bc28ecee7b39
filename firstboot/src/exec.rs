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
    let args_file = paths.service_args(service);
    let args: Vec<String> = std::fs::read_to_string(&args_file)
        .with_context(|| {
            format!(
                "cannot read {}; firstboot writes it before starting {service}",
                args_file.display()
            )
        })?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let mut command = match entry {
        Service::Host { command } => {
            let (program, rest) = command
                .split_first()
                .context("empty command in the catalog")?;
            let mut c = std::process::Command::new(program);
            c.args(rest);
            c
        }
        Service::Podman { image, command } => podman_command(paths, service, image, command)?,
    };
    command.args(&args);
    let error = command.exec();
    bail!("cannot start {service}: {error}")
}

/// `podman run` for a catalog service. The container sees only what the
/// service needs: its own files under /etc/firstboot (etcd: its
/// certificate, key and CA; never node.json, which holds this node's
/// key) read-only, and its own state directory (never all of /var/lib),
/// both relabelled for SELinux. Its arguments come on the command line.
pub fn podman_command(
    paths: &Paths,
    service: &str,
    image: &str,
    command: &[String],
) -> Result<std::process::Command> {
    let state = format!("/var/lib/{service}");
    std::fs::create_dir_all(&state).with_context(|| format!("cannot create {state}"))?;
    let mut c = std::process::Command::new("podman");
    c.args(["run", "--rm", "--replace", "--name", service, "--net=host"]);
    let files = paths.service_files(service);
    if files.is_dir() {
        let dir = format!("/etc/firstboot/{service}");
        c.args(["-v", &format!("{}:{dir}:ro,z", files.display())]);
    }
    c.args(["-v", &format!("{state}:{state}:Z")])
        .arg(image)
        .args(command);
    Ok(c)
}
