//! Phase 3: join. The bootstrap host settles its CAs (from disk, from its
//! peers' sealed copies, or new once the peers say no cluster exists) and
//! starts the join service and DNS. The others find it, prove themselves,
//! and install what it answers: certificates, peers, name resolution.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};
use node_contract::Role;

use super::Context;
use crate::certs::PLAN;
use crate::join::client::enroll;
use crate::state::ClusterState;
use crate::temporary::Services;

/// How long one attempt probes: the engine retries beyond that.
const ATTEMPT: Duration = Duration::from_secs(30);
/// Between probing rounds for the join service (a round itself lasts as
/// long as the absent addresses take to time out).
const PROBE_PAUSE: Duration = Duration::from_millis(20);

pub async fn run(cx: &mut Context) -> Result<()> {
    let own = cx.own_address()?;
    if cx.config.is_bootstrap() {
        return bootstrap(cx, own).await;
    }
    // Candidates in order; UNSPECIFIED stands for "probe the VPC now",
    // after the known address (see `find_join_service`).
    let mut queue: std::collections::VecDeque<Ipv4Addr> = find_join_service(cx, own).await?.into();
    let mut errors = Vec::new();
    while let Some(candidate) = queue.pop_front() {
        if candidate.is_unspecified() {
            let tried = known_bootstrap(cx);
            let probed = probe_join_service(cx, own).await?;
            queue.extend(probed.into_iter().filter(|a| Some(*a) != tried));
            continue;
        }
        match enroll(&cx.paths, &cx.config, PLAN, candidate, own).await {
            Ok(answer) => {
                let route = if answer.freeipa_dns.is_empty() {
                    crate::resolver::SiteDns::Temporary(answer.dns)
                } else {
                    // The site handed off before this node joined.
                    crate::resolver::SiteDns::Freeipa {
                        servers: answer.freeipa_dns.clone(),
                        fallback: None,
                    }
                };
                crate::resolver::route_site_domain(&cx.paths, &route, &cx.config.site.domain)
                    .await?;
                crate::resolver::write_hosts(&cx.paths, &cx.config.site.domain, &answer.peers)?;
                tracing::info!(phase = "join", peer = %candidate, "joined through {candidate}; {} peers known", answer.peers.len());
                cx.state.bootstrap_address = Some(candidate);
                cx.state.peers = answer.peers;
                cx.state.joined_after_handoff = !answer.freeipa_dns.is_empty();
                let member = cx.paths.etcd_data().join("member").is_dir();
                if (answer.rebuilt || answer.added_core)
                    && cx.config.role() == Role::Core
                    && !member
                {
                    // A member that lost its data takes its place in the
                    // cluster its peers still run, and a core host added
                    // later joins it (see `phases::etcd`).
                    tracing::info!(
                        phase = "join",
                        "{}: it joins the existing etcd cluster",
                        if answer.rebuilt {
                            "this node was rebuilt"
                        } else {
                            "this core host was added to a running site"
                        }
                    );
                    cx.state.etcd_cluster_state = Some(ClusterState::Existing);
                }
                return Ok(());
            }
            Err(e) => errors.push(format!("{candidate}: {e:#}")),
        }
    }
    bail!("no join service admitted this node: {}", errors.join("; "))
}

/// How long the bootstrap host this node knows of has to answer a TLS
/// handshake before the VPC is probed.
const KNOWN_WAIT: Duration = Duration::from_secs(2);

/// Where the join service may be: the address given at launch, else where
/// this node knows the bootstrap host to be (where it joined, or where the
/// bootstrap host said it moved) if it answers there, else the first
/// address in the VPC that accepts on its port. Trying the known address
/// first spares a joiner a stranger's listener on the port elsewhere in
/// the VPC (it would be found out, but only after the exchange times out).
async fn find_join_service(cx: &Context, own: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
    if let Some(given) = cx.config.join.address {
        return Ok(vec![given]);
    }
    let port = cx.config.join.port;
    if let Some(known) = known_bootstrap(cx) {
        let service = std::net::SocketAddr::new(known.into(), port);
        if crate::https::answers_tls(service, KNOWN_WAIT).await {
            // The VPC is probed after it, should it fail.
            return Ok(vec![known, Ipv4Addr::UNSPECIFIED]);
        }
        tracing::info!(
            phase = "join",
            "the bootstrap host does not answer at {known}: probing the VPC"
        );
    }
    probe_join_service(cx, own).await
}

/// Where this node knows the bootstrap host to be, if anywhere.
fn known_bootstrap(cx: &Context) -> Option<Ipv4Addr> {
    crate::state::bootstrap_address(&cx.paths, &cx.state)
}

/// The first address in the VPC that accepts on the join port (where the
/// bootstrap host was last time first, if it answers in the same round).
async fn probe_join_service(cx: &Context, own: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
    let port = cx.config.join.port;
    let deadline = tokio::time::Instant::now() + ATTEMPT;
    loop {
        let mut round = crate::net::probe(&cx.config.site.vpc_range, port, &[own]);
        let mut found = Vec::new();
        // The first to accept is tried at once; others accepting in the
        // same moment are kept as fallbacks.
        if let Some(first) = round.recv().await {
            found.push(first);
            while let Ok(Some(more)) =
                tokio::time::timeout(Duration::from_millis(20), round.recv()).await
            {
                found.push(more);
            }
            if let Some(previous) = cx.state.bootstrap_address {
                found.sort_by_key(|a| *a != previous);
            }
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no join service answers on port {port} in {}",
                cx.config.site.vpc_range
            );
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

async fn bootstrap(cx: &mut Context, own: Ipv4Addr) -> Result<()> {
    if cx.services.is_none() {
        start_services(cx, own).await?;
    }
    let peers = cx.services.as_ref().expect("started above").peers().await;
    let ended = crate::join::server::HandoffBook::temporary_ended_at(&cx.paths)?;
    let route = if ended {
        // Rebuilt after the site's handoff ended the temporary DNS: the
        // site's names are FreeIPA's, on the other core hosts first (this
        // host's own server comes back later, in phase freeipa).
        let mut servers: Vec<Ipv4Addr> = cx
            .config
            .site
            .core
            .iter()
            .filter(|core| **core != cx.config.node)
            .filter_map(|core| peers.get(core).copied())
            .collect();
        servers.push(own);
        crate::resolver::SiteDns::Freeipa {
            servers,
            fallback: None,
        }
    } else {
        crate::resolver::SiteDns::Temporary(own)
    };
    crate::resolver::route_site_domain(&cx.paths, &route, &cx.config.site.domain).await?;
    crate::resolver::write_hosts(&cx.paths, &cx.config.site.domain, &peers)?;
    cx.state.bootstrap_address = Some(own);
    cx.state.peers = peers;
    cx.state.joined_after_handoff = ended;
    Ok(())
}

/// The temporary services, started with the CAs settled; a rebuilt
/// bootstrap host that found a cluster to rejoin records so first.
async fn start_services(cx: &mut Context, own: Ipv4Addr) -> Result<()> {
    let (services, cluster_state) = Services::settle_and_start(
        &cx.paths,
        &cx.config,
        own,
        &mut cx.discovery,
        ATTEMPT,
        cx.reporter.clone(),
    )
    .await?;
    if let Some(cluster_state) = cluster_state {
        cx.state.etcd_cluster_state = Some(cluster_state);
        cx.state.save(&cx.paths.state_file())?;
    }
    cx.services = Some(services);
    Ok(())
}

/// After a reboot of a bootstrap host whose join phase is done: serve
/// again, from the CAs on disk (none once the handoff ended them).
pub async fn resume_services(cx: &mut Context) -> Result<()> {
    if !cx.config.is_bootstrap() || cx.services.is_some() {
        return Ok(());
    }
    let own = cx.own_address()?;
    let ended = crate::join::server::HandoffBook::temporary_ended_at(&cx.paths)?;
    if !ended && crate::pki::TempCa::load(&cx.paths.ca_dir(), &PLAN.intermediates())?.is_none() {
        bail!(
            "the join phase is done but the temporary CA is gone from {}",
            cx.paths.ca_dir().display()
        );
    }
    start_services(cx, own).await
}
