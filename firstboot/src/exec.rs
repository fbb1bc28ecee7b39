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
        Service::Podman { image, command } => {
            // Only the service's own state directory is shared (and
            // relabelled for SELinux): never all of /var/lib.
            let state = format!("/var/lib/{service}");
            std::fs::create_dir_all(&state).with_context(|| format!("cannot create {state}"))?;
            let mut c = std::process::Command::new("podman");
            c.args(["run", "--rm", "--replace", "--name", service, "--net=host"])
                .args(["-v", "/etc/firstboot:/etc/firstboot:ro,z"])
                .args(["-v", &format!("{state}:{state}:Z")])
                .arg(image)
                .args(command);
            c
        }
    };
    command.args(&args);
    let error = command.exec();
    bail!("cannot start {service}: {error}")
}
