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
    let role = config.role();
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
    let core: Vec<&str> = site.core.iter().map(|h| h.as_str()).collect();
    let _ = writeln!(
        out,
        "hosts      {} ({} core: {}; {} worker)",
        site.host_count,
        core.len(),
        core.join(", "),
        site.host_count as usize - core.len()
    );
    let duty = if config.is_bootstrap() {
        "bootstrap host: serves the join service, temporary DNS and CA"
    } else {
        "joins the bootstrap host"
    };
    let _ = writeln!(
        out,
        "this node  {} ({role}, {duty})",
        config.fqdn(&config.node)
    );
    let _ = writeln!(
        out,
        "identity   key {} (credential generation {}), vouched for by the site key {}",
        short(&config.signing_key().public_key().to_hex()),
        config.identity.generation,
        short(&site.site_key.to_hex())
    );
    let _ = writeln!(
        out,
        "join       port {} on {}{}",
        config.join.port,
        config.bootstrap_host(),
        config
            .join
            .address
            .map(|a| format!(" at {a}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "guard      only root reaches the metadata service at {}",
        config.platform.metadata
    );
    let freeipa = if config.freeipa.is_some() {
        "passwords present (first server)"
    } else {
        "enrolls with a one-time password"
    };
    let _ = writeln!(out, "freeipa    {freeipa}");
    for (name, service) in &config.catalog {
        // etcd runs on core hosts only.
        if name == "etcd" && role != Role::Core {
            continue;
        }
        let how = match service {
            Service::Podman { image, .. } => format!("podman {image}"),
            Service::Host { command } => format!("host {}", command.join(" ")),
        };
        let _ = writeln!(out, "service    {name}: {how}");
    }
    out
}

fn short(hex: &str) -> String {
    format!("{}…", &hex[..16])
}
