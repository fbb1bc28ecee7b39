//! Phase 6: handoff (ARCHITECTURE §5), on every node, its steps so far:
//! FreeIPA is given the site's names and service CAs, every node asks
//! FreeIPA's servers for the site's names, the core hosts re-certify etcd
//! from its sub-CA, and every node's identity moves to the `firstboot`
//! sub-CA. The rest of the handoff (the temporary services and CA ended,
//! a later host joining through FreeIPA) follows the plan in
//! `crate::handoff`.
//!
//! 1. **records** (the bootstrap host, FreeIPA's first server and the one
//!    node with the admin password): `handoff::prepare` ensures every
//!    registered node's A and PTR records and the etcd SRV records in
//!    FreeIPA's zone, the service sub-CAs with their CA ACLs, and each
//!    node's principals for them. Idempotent.
//! 2. **dns** (every node): once each FreeIPA server (every core host)
//!    answers this node's own name with its address from its own DNS
//!    (port 53), the site domain is routed to all of them, the temporary
//!    DNS last. systemd-resolved moves to the next server when one fails,
//!    so one server down changes nothing; an answer that is wrong is not a
//!    failure to resolved, so no server is listed before it answers right.
//! 3. **etcd** (core hosts): each member is re-certified from the `etcd`
//!    sub-CA, one at a time, agreed through etcd (`handoff::recertify`),
//!    its certificate requested from and renewed by its FreeIPA server's
//!    certmonger (`handoff::request`, `certs::moved`). The sub-CA's certificate comes from
//!    etcd, where the bootstrap host put it in step 1: only a member
//!    writes there, and every certificate issued is checked against it.
//! 4. **identity** (every node): its identity certificate (firstboot's
//!    own services' TLS) moves to the `firstboot` sub-CA in the same
//!    three steps, across every registered node, each reporting its step
//!    to the join service (`handoff::identity`); the sub-CA comes from
//!    there too, signed by the bootstrap host, who put it there in step 1.
//! 5. **end** (every node): once every node has moved, the bootstrap host
//!    ends the temporary services (`temporary::Services::end_temporary`);
//!    the others hear it from the join service, drop the temporary DNS
//!    from their route, and a core host replaces its sealed copy of the
//!    temporary CA by one with the registry alone.
//!
//! No node decides anything from silence: a server that does not answer
//! keeps the phase waiting (bounded, then retried by the engine), it is
//! never left out of the list.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::HostName;

use node_contract::Role;

use super::etcd::CLIENT_PORT;
use super::Context;
use crate::certs::plan;
use crate::etcd::Endpoint;
use crate::freeipa::ServiceCa;
use crate::handoff::identity;
use crate::handoff::recertify::{self, FromFreeipa, Roll, SystemdEtcd};
use crate::resolver::SiteDns;
use crate::{certs::moved::Moved, handoff::request::RequestSite};

/// How long the bootstrap host waits, within one attempt, for a new
/// sub-CA's key to reach the server it asks (FreeIPA's 13031 "not yet").
const SUB_CA_WAIT: Duration = Duration::from_secs(120);
/// How long one attempt waits for every FreeIPA server to answer right.
const DNS_WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);
/// How long certmonger may take to bring a certificate, within one
/// attempt (a replica may not hold the sub-CA's key yet).
const CERTMONGER_WAIT: Duration = Duration::from_secs(300);
/// Where step 1 puts each sub-CA's certificate in etcd, by its name.
pub const SUB_CA_PREFIX: &str = "/firstboot/handoff/sub-ca/";
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
    let addresses_known = servers.clone();
    let addresses: Vec<Ipv4Addr> = servers.values().copied().collect();
    crate::resolver::route_site_domain(
        &cx.paths,
        &SiteDns::Freeipa {
            servers: addresses,
            // Ended before this node joined: nothing to fall back to.
            fallback: (!cx.state.joined_after_handoff).then_some(temporary),
        },
        &cx.config.site.domain,
    )
    .await?;
    tracing::info!(
        phase = "handoff",
        "the site's names come from FreeIPA ({}){}",
        list(&servers),
        if cx.state.joined_after_handoff {
            " (the temporary DNS had ended when this node joined)"
        } else {
            ", the temporary DNS last"
        }
    );
    if cx.config.role() == Role::Core {
        recertify_etcd(cx, own, &addresses_known).await?;
    }
    move_identity(cx, temporary).await?;
    // Step 5: the temporary services end, and nothing routes to them.
    crate::resolver::route_site_domain(
        &cx.paths,
        &SiteDns::Freeipa {
            servers: addresses_known.values().copied().collect(),
            fallback: None,
        },
        &cx.config.site.domain,
    )
    .await?;
    tracing::info!(
        phase = "handoff",
        "the site's names come from FreeIPA alone ({})",
        list(&addresses_known)
    );
    Ok(())
}

/// Step 4, on every node: its identity moved to the `firstboot` sub-CA
/// (`handoff::identity`), agreed through the join service at `join`.
async fn move_identity(cx: &mut Context, join: Ipv4Addr) -> Result<()> {
    let slot = plan::IDENTITY.slot(&cx.paths);
    let site = match cx.config.role() {
        Role::Core => RequestSite::freeipa_server(&cx.paths, &cx.config)?,
        Role::Worker => RequestSite::enrolled_host(&cx.paths),
    };
    let staged = site.staged(&slot);
    let fqdn = cx.config.fqdn(&cx.config.node);
    let principal = ServiceCa::Firstboot.principal(&fqdn, cx.config.site.realm.as_str())?;
    let issuer = |sub_ca_pem: &str| FromFreeipa {
        site: site.clone(),
        sub_ca: ServiceCa::Firstboot.name().to_owned(),
        sub_ca_pem: sub_ca_pem.to_owned(),
        principal: principal.clone(),
        patience: CERTMONGER_WAIT,
    };
    let roll = identity::Roll {
        paths: &cx.paths,
        me: cx.config.node.clone(),
        fqdn,
        slot,
        staged_cert: staged.host_cert,
        staged_key: staged.host_key,
        book: identity::JoinService {
            paths: &cx.paths,
            config: &cx.config,
            address: join,
        },
        issuer: &issuer,
        patience: identity::PATIENCE,
    };
    let reporter = &cx.reporter;
    roll.run(&mut |step| {
        reporter.detail(format!(
            "identity: {} (every node in turn, {})",
            step.as_str(),
            step.waiting_for()
        ))
    })
    .await?;
    tracing::info!(
        phase = "handoff",
        "this node's identity is from FreeIPA's firstboot sub-CA alone; certmonger renews it"
    );
    // Step 5: once every node has moved, the bootstrap host ends the
    // temporary services; the others wait to hear it.
    if cx.config.is_bootstrap() {
        cx.reporter
            .detail("end: waiting for every node's identity to move".into());
        every_node_moved(cx, &roll).await?;
        services_of(cx)?.end_temporary().await?;
    } else {
        cx.reporter
            .detail("end: waiting for the bootstrap host to end the temporary services".into());
        let answer = roll.temporary_ended().await?;
        if cx.config.role() == Role::Core {
            // The copy with the temporary CA's keys goes, for the one with
            // the registry alone (which a rebuilt bootstrap host needs).
            let sealed = answer
                .ca_backup
                .context("the bootstrap host sent no sealed copy without the temporary CA")?;
            crate::fsutil::replace_shredding(&cx.paths.ca_backup(), sealed.as_bytes(), 0o600)?;
            tracing::info!(
                phase = "handoff",
                "this host's sealed copy of the temporary CA is destroyed; it keeps the registry's"
            );
        }
    }
    Ok(())
}

/// Step 1, on the bootstrap host: its FreeIPA server running, its admin
/// session, and everything the nodes will ask FreeIPA for.
async fn prepare(cx: &mut Context, own: Ipv4Addr) -> Result<()> {
    // After a restart the enrollment service comes back first: nodes
    // still enrolling must not wait for this phase.
    super::freeipa::resume(cx).await?;
    let state = cx
        .paths
        .service_state_dir(&cx.config, crate::freeipa::site::SERVER)?;
    let client = super::freeipa::admin_client(cx, own, &state).await?;
    let registered = services_of(cx)?.peers().await;
    let added_core = services_of(cx)?.added_core().await;
    let prepared = crate::handoff::prepare::prepare(
        &client,
        &cx.config,
        &registered,
        &added_core,
        SUB_CA_WAIT,
    )
    .await?;
    // Nodes that joined while the sub-CAs were made: read again now that
    // they exist (`ensure_principals` says why).
    let registered = services_of(cx)?.peers().await;
    let added_core = services_of(cx)?.added_core().await;
    crate::handoff::prepare::ensure_principals(&client, &cx.config, &registered, &added_core)
        .await?;
    // Every node takes the identity sub-CA from the join service.
    let identity_ca = prepared
        .sub_ca(ServiceCa::Firstboot)
        .context("FreeIPA gave no firstboot sub-CA")?;
    services_of(cx)?.set_identity_ca(identity_ca).await?;
    // The core hosts take each sub-CA's certificate from etcd.
    let etcd = etcd_client(cx, own, &cx.state.peers)?;
    for info in &prepared.sub_cas {
        etcd.put(
            format!("{SUB_CA_PREFIX}{}", info.ca.name()).as_bytes(),
            info.cert_pem.as_bytes(),
        )
        .await
        .with_context(|| format!("publishing the {} sub-CA in etcd", info.ca.name()))?;
    }
    tracing::info!(
        phase = "handoff",
        "FreeIPA holds the site's records for {} hosts and {} service CAs",
        registered.len(),
        prepared.sub_cas.len()
    );
    Ok(())
}

/// On the bootstrap host: until every registered node has finished its
/// identity's move, as each reported it, or (a node that reports no more,
/// to a bootstrap host rebuilt since) as its peer service says; bounded.
async fn every_node_moved<B: identity::Book, I: recertify::Issue>(
    cx: &Context,
    roll: &identity::Roll<'_, B, I>,
) -> Result<()> {
    use crate::certs::moved::Step;
    let deadline = tokio::time::Instant::now() + identity::PATIENCE.barrier;
    loop {
        services_of(cx)?.learn_identity_steps().await?;
        let behind = roll.behind(Some(Step::Dropped), Step::Dropped).await?;
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "waiting for {} to finish moving their identity to FreeIPA before the temporary \
                 services end",
                behind.join(", ")
            );
        }
        tokio::time::sleep(identity::PATIENCE.poll).await;
    }
}

fn services_of(cx: &Context) -> Result<&crate::temporary::Services> {
    cx.services
        .as_ref()
        .context("the join service is not running")
}

/// Step 3, on a core host: its etcd member moved to the `etcd` sub-CA.
async fn recertify_etcd(
    cx: &mut Context,
    own: Ipv4Addr,
    core: &BTreeMap<HostName, Ipv4Addr>,
) -> Result<()> {
    let slot = plan::ETCD.slot(&cx.paths);
    let site = RequestSite::freeipa_server(&cx.paths, &cx.config)?;
    let moved = match Moved::load(&cx.paths, slot.purpose)? {
        Some(moved) if moved.done => return Ok(()),
        Some(moved) => moved,
        None => {
            cx.reporter
                .detail("etcd: waiting for the etcd sub-CA's certificate in etcd".into());
            let new_ca = sub_ca_from_etcd(cx, own, core, ServiceCa::Etcd).await?;
            // What the member trusts now is the temporary CA: recorded
            // before anything changes, as the roll's "old" from here on.
            let old_ca = std::fs::read_to_string(&slot.ca)
                .with_context(|| format!("reading {}", slot.ca.display()))?;
            let staged = site.staged(&slot);
            let moved = Moved {
                old_ca,
                new_ca,
                staged_cert: staged.host_cert,
                staged_key: staged.host_key,
                done: false,
                step: None,
            };
            moved.save(&cx.paths, slot.purpose)?;
            moved
        }
    };
    let fqdn = cx.config.fqdn(&cx.config.node);
    let endpoints = endpoints(cx, own, core);
    let roll = Roll {
        me: cx.config.node.to_string(),
        members: cx.config.site.core.iter().map(|c| c.to_string()).collect(),
        own: endpoints[0].clone(),
        endpoints,
        slot: slot.clone(),
        old_ca: moved.old_ca.clone(),
        new_ca: moved.new_ca.clone(),
        prefix: recertify::ROLL_PREFIX.to_owned(),
        restart: SystemdEtcd,
        issuer: FromFreeipa {
            site,
            sub_ca: ServiceCa::Etcd.name().to_owned(),
            sub_ca_pem: moved.new_ca.clone(),
            principal: ServiceCa::Etcd.principal(&fqdn, cx.config.site.realm.as_str())?,
            patience: CERTMONGER_WAIT,
        },
        patience: recertify::PATIENCE,
    };
    let reporter = &cx.reporter;
    roll.run(&mut |step| {
        reporter.detail(format!(
            "etcd: {} (every member in turn, {})",
            step.as_str(),
            step.waiting_for()
        ))
    })
    .await?;
    Moved {
        done: true,
        ..moved
    }
    .save(&cx.paths, slot.purpose)?;
    tracing::info!(
        phase = "handoff",
        "etcd presents and trusts certificates of FreeIPA's etcd sub-CA alone; certmonger renews them"
    );
    Ok(())
}

/// Every core member's client endpoint, this node's first (on its own
/// address: it answers as long as this node does).
fn endpoints(cx: &Context, own: Ipv4Addr, core: &BTreeMap<HostName, Ipv4Addr>) -> Vec<Endpoint> {
    let endpoint = |node: &HostName, address: Ipv4Addr| Endpoint {
        name: cx.config.fqdn(node),
        address: SocketAddr::new(address.into(), CLIENT_PORT),
    };
    let me = &cx.config.node;
    std::iter::once(endpoint(me, own))
        .chain(
            core.iter()
                .filter(|(node, _)| *node != me && cx.config.site.core.contains(node))
                .map(|(node, address)| endpoint(node, *address)),
        )
        .collect()
}

fn etcd_client(
    cx: &Context,
    own: Ipv4Addr,
    core: &BTreeMap<HostName, Ipv4Addr>,
) -> Result<crate::etcd::Client> {
    crate::etcd::Client::for_node(&cx.paths, endpoints(cx, own, core))
}

/// A sub-CA's certificate, as the bootstrap host put it in etcd; bounded.
async fn sub_ca_from_etcd(
    cx: &Context,
    own: Ipv4Addr,
    core: &BTreeMap<HostName, Ipv4Addr>,
    ca: ServiceCa,
) -> Result<String> {
    let key = format!("{SUB_CA_PREFIX}{}", ca.name());
    let deadline = tokio::time::Instant::now() + SUB_CA_WAIT;
    loop {
        let said = match etcd_client(cx, own, core)?.get(key.as_bytes()).await {
            Ok(Some(kv)) => {
                let pem = String::from_utf8(kv.value)
                    .with_context(|| format!("etcd's {key} is not text"))?;
                crate::pki::inspect(&pem)
                    .with_context(|| format!("etcd's {key} is not a certificate"))?;
                return Ok(pem);
            }
            Ok(None) => "the bootstrap host has not put it there yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no {} sub-CA certificate in etcd ({key}) after {}s: {said}",
                ca.name(),
                SUB_CA_WAIT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every FreeIPA server of the site (the core hosts) at its VPC address:
/// from what join gave this node, else from the temporary DNS. A node that
/// joined after the handoff (the temporary DNS had ended) knows every core
/// host that had joined then; one its config names that had not is a core
/// host added to the site with it, with no FreeIPA server yet to ask.
async fn freeipa_servers(
    cx: &Context,
    temporary: Ipv4Addr,
) -> Result<BTreeMap<HostName, Ipv4Addr>> {
    let dns = SocketAddr::new(temporary.into(), crate::dns::DNS_PORT);
    let vpc = &cx.config.site.vpc_range;
    let joined_after = cx.state.joined_after_handoff;
    let mut servers = BTreeMap::new();
    for core in &cx.config.site.core {
        let address = match cx.state.peers.get(core) {
            Some(a) => *a,
            None if joined_after => {
                tracing::info!(
                    phase = "handoff",
                    "{core} had not joined when this node did: not among its FreeIPA servers"
                );
                continue;
            }
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
