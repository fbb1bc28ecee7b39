//! Phase 3: join. The bootstrap host already serves (see `bootstrap`); it
//! only installs its own identity. The others find it, prove themselves,
//! and install what it answers: certificate, CA, peers, resolver.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Context as _, Result};

use super::Context;

/// Probing rounds per attempt: about half a minute.
const PROBE_ROUNDS: usize = 60;
use crate::join::client;

pub async fn run(cx: &mut Context) -> Result<()> {
    let address = cx
        .state
        .address
        .context("identify did not record this node's address")?;
    if cx.config.is_bootstrap() {
        let services = cx
            .services
            .as_ref()
            .context("the join service is not running")?;
        let peers = services.peers().await;
        install_resolution(cx, address, &peers)?;
        cx.state.bootstrap_address = Some(address);
        cx.state.peers = peers;
        return Ok(());
    }

    let fqdn = cx.fqdn(&cx.config.node);
    let tls = cx.paths.tls_dir();
    // A key made on an earlier attempt is kept: it never left this node.
    let key_path = tls.join("node.key");
    let csr_path = tls.join("node.csr");
    let csr = match (key_path.is_file(), std::fs::read_to_string(&csr_path)) {
        (true, Ok(csr)) => csr,
        _ => {
            let (key, csr) = crate::ca::new_key_and_csr(&fqdn)?;
            crate::fsutil::write_atomic(&key_path, key.as_bytes(), 0o600)?;
            crate::fsutil::write_atomic(&csr_path, csr.as_bytes(), 0o644)?;
            csr
        }
    };
    let port = cx.config.join.port;
    let candidates = match cx.config.join.address.as_deref() {
        Some(given) => vec![given
            .parse::<Ipv4Addr>()
            .with_context(|| format!("join.address `{given}` is not an IPv4 address"))?],
        None => {
            // Peers boot in any order: keep probing a while (cheap, every
            // half second) before this attempt counts as failed.
            let mut found = Vec::new();
            for _ in 0..PROBE_ROUNDS {
                found = client::probe(&cx.vpc, port, &[address]).await;
                if !found.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            // Where it was last time first: a restart finds it at once.
            if let Some(previous) = cx.state.bootstrap_address {
                found.sort_by_key(|a| *a != previous);
            }
            found
        }
    };
    if candidates.is_empty() {
        bail!(
            "no join service answers on port {port} in {}",
            cx.config.site.vpc_range
        );
    }
    let mut errors = Vec::new();
    for candidate in candidates {
        match client::join(
            candidate,
            port,
            &cx.config.node,
            &cx.config.join.credential,
            &[address],
            &csr,
        )
        .await
        {
            Ok(answer) => {
                if !crate::ca::issued_by(&answer.certificate_pem, &answer.ca_pem)? {
                    errors.push(format!(
                        "{candidate}: the certificate is not from the CA it sent"
                    ));
                    continue;
                }
                crate::fsutil::write_atomic(&tls.join("ca.crt"), answer.ca_pem.as_bytes(), 0o644)?;
                crate::fsutil::write_atomic(
                    &tls.join("node.crt"),
                    answer.certificate_pem.as_bytes(),
                    0o644,
                )?;
                install_resolution(cx, answer.dns, &answer.peers)?;
                if cx
                    .config
                    .me()
                    .is_some_and(|m| m.role == node_contract::Role::Core)
                {
                    crate::fsutil::write_atomic(
                        &cx.paths.ca_backup(),
                        answer.ca_backup.as_bytes(),
                        0o644,
                    )?;
                    crate::system::systemctl(&["enable", "--now", "firstboot-peer.service"])
                        .await?;
                }
                log::info!(phase = "join", peer = candidate.to_string().as_str(); "joined through {candidate}; {} peers known", answer.peers.len());
                cx.state.bootstrap_address = Some(candidate);
                cx.state.peers = answer.peers;
                return Ok(());
            }
            Err(e) => errors.push(format!("{candidate}: {e:#}")),
        }
    }
    bail!("no join service admitted this node: {}", errors.join("; "))
}

/// Point the resolver at the temporary DNS and put the peers known so far
/// into /etc/hosts (etcd resolves a peer's certificate names on every
/// incoming connection; the file keeps that working if DNS blinks).
pub fn install_resolution(
    cx: &Context,
    dns: Ipv4Addr,
    peers: &BTreeMap<String, Ipv4Addr>,
) -> Result<()> {
    let domain = &cx.config.site.domain;
    let resolv = format!(
        "# written by firstboot: the site's temporary DNS\nnameserver {dns}\nsearch {domain}\n"
    );
    crate::fsutil::write_atomic(&cx.paths.resolv_conf(), resolv.as_bytes(), 0o644)?;
    write_hosts(cx, peers)
}

const HOSTS_BEGIN: &str = "# firstboot peers: begin";
const HOSTS_END: &str = "# firstboot peers: end";

/// Rewrite firstboot's block of /etc/hosts, keeping every other line.
pub fn write_hosts(cx: &Context, peers: &BTreeMap<String, Ipv4Addr>) -> Result<()> {
    let path = cx.paths.etc_hosts();
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "127.0.0.1 localhost\n".into());
    let mut kept = Vec::new();
    let mut inside = false;
    for line in old.lines() {
        match line {
            HOSTS_BEGIN => inside = true,
            HOSTS_END => inside = false,
            _ if !inside => kept.push(line.to_owned()),
            _ => {}
        }
    }
    kept.push(HOSTS_BEGIN.into());
    for (name, address) in peers {
        kept.push(format!("{address} {} {name}", cx.fqdn(name)));
    }
    kept.push(HOSTS_END.into());
    let text = kept.join("\n") + "\n";
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
}
