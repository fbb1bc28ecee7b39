//! `firstboot fleetlock` (firstboot-fleetlock.service, on every node): the
//! relay Zincati talks to on 127.0.0.1, the node's registration, and on
//! core hosts the lock server itself, on the VPC, for nodes presenting
//! their identity certificate.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use node_contract::{HostName, NodeConfig, Role};
use serde::Deserialize;

use super::gates::{Probes, SiteProbes};
use super::protocol::{self, kind, Refusal};
use super::relay::Relay;
use super::server::{Caller, LockServer, Site};
use crate::etcd::{Client, Endpoint};
use crate::https::{self, Identity, Response};
use crate::paths::Paths;
use crate::phases::ETCD_CLIENT_PORT as CLIENT_PORT;

pub use node_contract::fleetlock::{LOCK_PORT, RELAY_PORT};
/// Where a node registers its Zincati id and whether it is assembled.
pub const REGISTER_PATH: &str = "/firstboot/v1/register";
/// How often the relay looks whether what it registered still holds.
const REGISTER_EVERY: Duration = Duration::from_secs(10);
/// How often the service looks for the files it waits for (the identity
/// certificate; on core hosts the etcd certificate).
const FILES_POLL: Duration = Duration::from_secs(5);
/// How long one etcd member has to answer the lock server, which must
/// answer the relay within its hop (`relay::HOP_TIMEOUT`).
const ETCD_EXCHANGE: Duration = Duration::from_secs(3);

/// The node a verified client certificate names: its one DNS name, a
/// host of the site's domain. Its role comes from the site's core list.
pub fn caller_of(
    config: &NodeConfig,
    certificate: Option<&rustls::pki_types::CertificateDer<'_>>,
    address: Ipv4Addr,
) -> Result<Caller, Refusal> {
    let forbidden = |why: String| Refusal::new(403, kind::FORBIDDEN, why);
    let certificate =
        certificate.ok_or_else(|| forbidden("no client certificate was presented".into()))?;
    let info = crate::pki::inspect(&https::to_pem(certificate))
        .map_err(|e| forbidden(format!("the client certificate: {e:#}")))?;
    let suffix = format!(".{}", config.site.domain);
    let [name] = info.dns_names.as_slice() else {
        return Err(forbidden(format!(
            "a node's certificate names one host; this one names {:?}",
            info.dns_names
        )));
    };
    let node = name
        .strip_suffix(&suffix)
        .and_then(|label| HostName::parse(label).ok())
        .ok_or_else(|| forbidden(format!("`{name}` is not a host of {}", config.site.domain)))?;
    let role = if config.site.core.contains(&node) {
        Role::Core
    } else {
        Role::Worker
    };
    Ok(Caller {
        node,
        role,
        address,
    })
}

fn refused(refusal: &Refusal) -> Response {
    Response {
        status: refusal.status,
        headers: vec![("content-type", "application/json".into())],
        body: refusal.body(),
    }
}

/// Whether a request from `caller` comes from the address the site has on
/// record for it: its name's A record in the site's DNS, which only join
/// moves (for a newer credential). Who holds a node's certificate and key
/// elsewhere gets nothing.
///
/// A registration needs the DNS's word. A lock request whose name the DNS
/// does not answer for now (until the handoff to FreeIPA, the temporary
/// DNS runs on the bootstrap host alone, which may be the core host that
/// is down) is held to the address the node registered from, which the
/// DNS vouched for then: silence moves nothing.
async fn on_record(config: &NodeConfig, caller: &Caller, registering: bool) -> Result<(), Refusal> {
    let fqdn = config.fqdn(&caller.node);
    let lookup = tokio::net::lookup_host((fqdn.as_str(), 0));
    let found = match tokio::time::timeout(super::relay::LOOKUP_TIMEOUT, lookup).await {
        Ok(found) => found,
        Err(_) => Err(std::io::Error::other("the DNS did not answer")),
    };
    let addresses: Vec<std::net::IpAddr> = match found {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(e) if !registering => {
            tracing::debug!(
                "fleetlock: {fqdn} does not resolve now ({e}): its registered address decides"
            );
            return Ok(());
        }
        Err(_) => Vec::new(),
    };
    if addresses.contains(&caller.address.into()) {
        return Ok(());
    }
    Err(Refusal::new(
        403,
        kind::FORBIDDEN,
        format!(
            "{} is at {addresses:?} on record, and this request comes from {}",
            caller.node, caller.address
        ),
    ))
}

/// Where the caller's address is checked: against the site's records on a
/// node, not at all in tests on loopback (where no name resolves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    OnRecord,
    Unchecked,
}

/// Answer one request to the lock server.
pub async fn respond<P: Probes>(
    server: &LockServer<P>,
    config: &NodeConfig,
    addresses: Addresses,
    request: https::Request,
) -> Response {
    let caller = caller_of(config, request.client_certificate.as_ref(), request.source);
    let caller = match caller {
        Ok(caller) if addresses == Addresses::OnRecord => {
            let registering = request.path == REGISTER_PATH;
            on_record(config, &caller, registering)
                .await
                .map(|()| caller)
        }
        other => other,
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(refusal) => {
            tracing::warn!(source = %request.source, "fleetlock: refused: {}", refusal.value);
            return refused(&refusal);
        }
    };
    let outcome = if request.path == REGISTER_PATH && request.method == hyper::Method::POST {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Registration {
            id: String,
            assembled: bool,
        }
        match serde_json::from_slice::<Registration>(&request.body) {
            Ok(r) => server.register(&caller, &r.id, r.assembled).await,
            Err(e) => Err(Refusal::new(
                400,
                kind::BAD_REQUEST,
                format!("not a registration: {e}"),
            )),
        }
    } else {
        let header = request.headers.get(protocol::HEADER).map(|v| v.as_bytes());
        match protocol::parse(&request.method, &request.path, header, &request.body) {
            Ok(lock) => server.decide(&caller, &lock).await,
            Err(refusal) => Err(refusal),
        }
    };
    match outcome {
        Ok(()) => {
            tracing::info!(
                node = %caller.node,
                "fleetlock: {} granted to {}",
                request.path,
                caller.node
            );
            Response::json(b"{}".to_vec())
        }
        Err(refusal) => {
            tracing::info!(
                node = %caller.node,
                "fleetlock: {} refused to {} ({}): {}",
                request.path,
                caller.node,
                refusal.kind,
                refusal.value
            );
            refused(&refusal)
        }
    }
}

/// `firstboot fleetlock`: serve until killed.
pub async fn main(paths: Paths) -> Result<()> {
    let config = Arc::new(crate::check::load(&paths.node_json())?);
    let mut passed = crate::sockets::Passed::from_env();
    let relay_listener = crate::sockets::tcp_or_bind(
        &mut passed,
        "relay",
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), RELAY_PORT),
    )
    .await?;
    let relay = Arc::new(Relay::new(paths.clone(), config.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(super::relay::serve(relay_listener, relay.clone()));
    tasks.spawn(register_loop(paths.clone(), relay));
    if config.role() == Role::Core {
        tasks.spawn(lock_server(paths, config));
    }
    crate::status::notify("READY=1");
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("a fleetlock task failed: {e}")),
        _ => Ok(()),
    }
}

/// Whether every phase is done on this node (the bootstrap host, which
/// then serves the join service until handoff, writes no done marker: the
/// phase state says it). A state that cannot be read says no.
pub fn assembled(paths: &Paths) -> bool {
    crate::state::State::load(&paths.state_file())
        .is_ok_and(|state| node_contract::Phase::ALL.iter().all(|p| state.is_done(*p)))
}

/// Register this node's Zincati id and whether it is assembled, again
/// whenever either changes, until a lock server has taken it.
async fn register_loop(paths: Paths, relay: Arc<Relay>) -> Result<()> {
    let mut registered: Option<(String, bool)> = None;
    loop {
        relay.refresh_addresses().await;
        match relay.own_id() {
            Ok(id) => {
                let assembled = assembled(&paths);
                let now = Some((id.clone(), assembled));
                if now != registered {
                    let body = serde_json::json!({"id": id, "assembled": assembled});
                    match relay
                        .forward(REGISTER_PATH, body.to_string().into_bytes())
                        .await
                    {
                        Ok((200, _)) => {
                            tracing::info!("fleetlock: registered (assembled: {assembled})");
                            registered = now;
                        }
                        Ok((status, body)) => tracing::warn!(
                            "fleetlock: registration refused ({status}): {}",
                            String::from_utf8_lossy(&body)
                        ),
                        Err(e) => tracing::warn!("fleetlock: cannot register yet: {e:#}"),
                    }
                }
            }
            Err(e) => tracing::warn!("fleetlock: {e:#}"),
        }
        tokio::time::sleep(REGISTER_EVERY).await;
    }
}

/// The lock server, once this core host has its identity and etcd
/// certificates and its VPC address.
async fn lock_server(paths: Paths, config: Arc<NodeConfig>) -> Result<()> {
    let identity = crate::certs::plan::IDENTITY.slot(&paths);
    let etcd_slot = crate::certs::plan::ETCD.slot(&paths);
    while !(identity.cert.is_file() && etcd_slot.cert.is_file()) {
        tokio::time::sleep(FILES_POLL).await;
    }
    let address =
        crate::net::wait_for_address(&config.site.vpc_range, Duration::from_secs(60)).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(address.into(), LOCK_PORT))
        .await
        .with_context(|| format!("cannot listen on {address}:{LOCK_PORT}"))?;
    tracing::info!("fleetlock: lock server on {address}:{LOCK_PORT}");
    let tls = Identity::FilesWithClients {
        cert: identity.cert.clone(),
        key: identity.key.clone(),
        clients_ca: identity.ca.clone(),
    };
    https::serve(listener, tls, https::LIMITS, move |request| {
        let (config, etcd_slot) = (config.clone(), etcd_slot.clone());
        async move {
            match lock_server_now(&config, &etcd_slot).await {
                Ok(server) => respond(&server, &config, Addresses::OnRecord, request).await,
                Err(e) => refused(&Refusal::new(
                    503,
                    kind::STORE_UNAVAILABLE,
                    format!("{e:#}"),
                )),
            }
        }
    })
    .await;
    Ok(())
}

/// The lock server for one request: its etcd client is made anew, so
/// that a renewed etcd certificate and a core host's new address are
/// used from the next request on.
async fn lock_server_now(
    config: &NodeConfig,
    etcd_slot: &crate::certs::Slot,
) -> Result<LockServer<SiteProbes>> {
    let etcd = Client::for_slot(etcd_slot, etcd_endpoints(config).await)?
        .with_exchange_limit(ETCD_EXCHANGE);
    Ok(LockServer {
        etcd: etcd.clone(),
        site: Site {
            core: config.site.core.clone(),
            host_count: config.site.host_count,
        },
        probes: SiteProbes {
            etcd,
            domain: config.site.domain.clone(),
        },
    })
}

/// Every etcd member the lock server may ask, any one answering: this
/// node's own first, on loopback (where etcd listens too, so no DNS is
/// needed), then the other core hosts where the DNS has them now (one it
/// does not answer for is left out this time).
async fn etcd_endpoints(config: &NodeConfig) -> Vec<Endpoint> {
    let mut endpoints = vec![Endpoint {
        name: config.fqdn(&config.node),
        address: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), CLIENT_PORT),
    }];
    for host in config.site.core.iter().filter(|c| **c != config.node) {
        let fqdn = config.fqdn(host);
        let lookup = tokio::net::lookup_host((fqdn.as_str(), CLIENT_PORT));
        let found = match tokio::time::timeout(super::relay::LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(mut found)) => found.next(),
            Ok(Err(e)) => {
                tracing::debug!("fleetlock: cannot resolve {fqdn}: {e}");
                None
            }
            Err(_) => None,
        };
        match found {
            Some(address) => endpoints.push(Endpoint {
                name: fqdn,
                address,
            }),
            None => tracing::debug!("fleetlock: {fqdn} has no address now: its etcd is not asked"),
        }
    }
    endpoints
}
