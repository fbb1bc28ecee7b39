//! `firstboot --check`: read node.json, validate it, summarise it.

use std::fmt::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use node_contract::{NodeConfig, Role, Service};

/// Read and validate the contract at `path`; the summary on success.
pub fn run(path: &Path) -> Result<String> {
    let config = load(path)?;
    Ok(summary(path, &config))
}

/// Read the contract, refusing one that others can read: it holds the
/// node's join credential and, on core hosts, FreeIPA passwords.
pub fn load(path: &Path) -> Result<NodeConfig> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read {}; Ignition writes it at first boot",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} holds secrets but has mode {mode:04o}; it must be 0600 (chmod 0600 {})",
            path.display(),
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    NodeConfig::from_json(&bytes).with_context(|| format!("{} was refused", path.display()))
}

pub fn summary(path: &Path, config: &NodeConfig) -> String {
    let mut out = String::new();
    let site = &config.site;
    let me = config.me().expect("a validated config contains this node");
    let core = site.hosts.iter().filter(|h| h.role == Role::Core).count();
    let _ = writeln!(
        out,
        "node.json  {} (schema {}): valid",
        path.display(),
        config.schema
    );
    let _ = writeln!(
        out,
        "site       {} (realm {}), VPC {}",
        site.domain, site.realm, site.vpc_range
    );
    let _ = writeln!(
        out,
        "hosts      {} ({core} core, {} worker): {}",
        site.hosts.len(),
        site.hosts.len() - core,
        site.hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let duty = if config.is_bootstrap() {
        "bootstrap host: serves the join service, temporary DNS and CA"
    } else {
        "joins the bootstrap host"
    };
    let bootstrap = config
        .bootstrap_host()
        .map(|h| h.name.as_str())
        .unwrap_or("?");
    let _ = writeln!(
        out,
        "this node  {}.{} ({}, {duty})",
        config.node, site.domain, me.role
    );
    let _ = writeln!(
        out,
        "join       port {} on {bootstrap}{}",
        config.join.port,
        config
            .join
            .address
            .as_deref()
            .map(|a| format!(" at {a}"))
            .unwrap_or_default()
    );
    let freeipa = if config.freeipa.is_some() {
        "passwords present"
    } else {
        "client only"
    };
    let _ = writeln!(out, "freeipa    {freeipa}");
    for (name, service) in &config.catalog {
        let how = match service {
            Service::Podman { image, .. } => format!("podman {image}"),
            Service::Host { command } => format!("host {}", command.join(" ")),
        };
        let _ = writeln!(out, "service    {name}: {how}");
    }
    out
}
