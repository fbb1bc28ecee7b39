//! Phase 6: handoff (ARCHITECTURE §5), on every node, its first steps so
//! far: FreeIPA is given the site's names and service CAs, and every node
//! asks FreeIPA's servers for the site's names. The rest of the handoff
//! (etcd re-certified from its sub-CA, the temporary services and CA
//! ended) follows the plan in `crate::handoff`.
//!
//! 1. **records** (the bootstrap host, FreeIPA's first server and the one
//!    node with the admin password): `handoff::prepare` ensures every
//!    registered node's A and PTR records and the etcd SRV records in
//!    FreeIPA's zone, the service sub-CAs with their CA ACLs, and the
//!    core hosts' `etcd/<fqdn>` principals. Idempotent.
//! 2. **dns** (every node): once each FreeIPA server (every core host)
//!    answers this node's own name with its address from its own DNS
//!    (port 53), the site domain is routed to all of them, the temporary
//!    DNS last. systemd-resolved moves to the next server when one fails,
//!    so one server down changes nothing; an answer that is wrong is not a
//!    failure to resolved, so no server is listed before it answers right.
//!
//! No node decides anything from silence: a server that does not answer
//! keeps the phase waiting (bounded, then retried by the engine), it is
//! never left out of the list.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::HostName;

use super::Context;
use crate::resolver::SiteDns;

/// How long the bootstrap host waits, within one attempt, for a new
/// sub-CA's key to reach the server it asks (FreeIPA's 13031 "not yet").
const SUB_CA_WAIT: Duration = Duration::from_secs(120);
/// How long one attempt waits for every FreeIPA server to answer right.
const DNS_WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);
/// FreeIPA's DNS (BIND) listens on the standard port.
const FREEIPA_DNS_PORT: u16 = 53;

pub async fn run(cx: &mut Context) -> Result<()> {
    let own = cx.own_address()?;
    if cx.config.is_bootstrap() {
        cx.reporter
            .detail("records: FreeIPA takes the site's names and service CAs".into());
        prepare(cx, own).await?;
    }
    let temporary = crate::state::bootstrap_address(&cx.paths, &cx.state)
        .context("join did not record the temporary DNS")?;
    let servers = freeipa_servers(cx, temporary).await?;
    let fqdn = cx.config.fqdn(&cx.config.node);
    cx.reporter.detail(format!(
        "dns: waiting for FreeIPA's DNS on {} to answer {fqdn}",
        list(&servers)
    ));
    wait_for_answers(&servers, &fqdn, own, DNS_WAIT).await?;
    let addresses: Vec<Ipv4Addr> = servers.values().copied().collect();
    crate::resolver::route_site_domain(
        &cx.paths,
        &SiteDns::Freeipa {
            servers: addresses,
            fallback: Some(temporary),
        },
        &cx.config.site.domain,
    )
    .await?;
    tracing::info!(
        phase = "handoff",
        "the site's names come from FreeIPA ({}), the temporary DNS last",
        list(&servers)
    );
    Ok(())
}

/// Step 1, on the bootstrap host: its FreeIPA server running, its admin
/// session, and everything the nodes will ask FreeIPA for.
async fn prepare(cx: &mut Context, own: Ipv4Addr) -> Result<()> {
    // After a restart the enrollment service comes back first: nodes
    // still enrolling must not wait for this phase.
    super::freeipa::resume(cx).await?;
    let state = cx.paths.service_state_dir(&cx.config, crate::freeipa::site::SERVER)?;
    let client = super::freeipa::admin_client(cx, own, &state).await?;
    let registered = cx
        .services
        .as_ref()
        .context("the join service is not running")?
        .peers()
        .await;
    let prepared =
        crate::handoff::prepare::prepare(&client, &cx.config, &registered, SUB_CA_WAIT).await?;
    tracing::info!(
        phase = "handoff",
        "FreeIPA holds the site's records for {} hosts and {} service CAs",
        registered.len(),
        prepared.sub_cas.len()
    );
    Ok(())
}

/// Every FreeIPA server of the site (the core hosts) at its VPC address:
/// from what join gave this node, else from the temporary DNS.
async fn freeipa_servers(
    cx: &Context,
    temporary: Ipv4Addr,
) -> Result<BTreeMap<HostName, Ipv4Addr>> {
    let dns = SocketAddr::new(temporary.into(), crate::dns::DNS_PORT);
    let vpc = &cx.config.site.vpc_range;
    let mut servers = BTreeMap::new();
    for core in &cx.config.site.core {
        let address = match cx.state.peers.get(core) {
            Some(a) => *a,
            None => crate::dnsquery::lookup_a(dns, &cx.config.fqdn(core))
                .await?
                .into_iter()
                .find(|a| vpc.contains(*a))
                .with_context(|| format!("FreeIPA server {core} has no address in the VPC yet"))?,
        };
        servers.insert(core.clone(), address);
    }
    Ok(servers)
}

/// Wait until every server's DNS answers `fqdn` with `own`.
async fn wait_for_answers(
    servers: &BTreeMap<HostName, Ipv4Addr>,
    fqdn: &str,
    own: Ipv4Addr,
    within: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    for (name, address) in servers {
        let server = SocketAddr::new((*address).into(), FREEIPA_DNS_PORT);
        loop {
            let said = match crate::dnsquery::lookup_a(server, fqdn).await {
                Ok(found) if found.contains(&own) => break,
                Ok(found) => format!("it answers {found:?}"),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "FreeIPA's DNS on {name} ({server}) does not answer {fqdn} with {own} \
                     after {}s: {said}",
                    within.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

fn list(servers: &BTreeMap<HostName, Ipv4Addr>) -> String {
    servers
        .iter()
        .map(|(n, a)| format!("{n} ({a})"))
        .collect::<Vec<_>>()
        .join(", ")
}
