//! The relay: Zincati's lock server as Zincati sees it, on 127.0.0.1 of
//! every node (Zincati's `base_url`). Zincati sends no credential; the
//! relay checks that a request speaks for this node (its id is this
//! node's app-specific id, its group this node's), then forwards it to a
//! core host's lock server over TLS, presenting this node's identity
//! certificate and checking the server's (a core host's name under the
//! site's CA). It tries the core hosts in turn, so any one of them down
//! (or its etcd member down) changes nothing for Zincati.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use node_contract::NodeConfig;
use rustls::pki_types::ServerName;

use super::protocol::{self, kind, Refusal};
use super::server::group_of;
use super::service::LOCK_PORT;
use crate::paths::Paths;

/// How long one core host has to answer before the next is tried.
const HOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A name lookup that takes longer than this is taken as unanswered (a
/// resolver waits for a dead server far longer).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Zincati's requests are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// A local connection's whole life.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Relay {
    paths: Paths,
    config: Arc<NodeConfig>,
    /// Lock servers at addresses other than their name's and the lock
    /// port (tests on loopback); empty on a node.
    addresses: BTreeMap<String, SocketAddr>,
    /// Each core host's address as the site's DNS last gave it: until the
    /// handoff to FreeIPA the temporary DNS runs on the bootstrap host
    /// alone, and with it down the others must still be found. (The
    /// server's certificate, not the address, says who answers.)
    resolved: std::sync::Mutex<BTreeMap<String, SocketAddr>>,
}

impl Relay {
    pub fn new(paths: Paths, config: Arc<NodeConfig>) -> Relay {
        Relay {
            paths,
            config,
            addresses: BTreeMap::new(),
            resolved: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The same relay, reaching the core host named `fqdn` at `address`.
    pub fn with_address(mut self, fqdn: &str, address: SocketAddr) -> Relay {
        self.addresses.insert(fqdn.to_owned(), address);
        self
    }

    /// This node's Zincati id, from its machine id (read each time: the
    /// first boot writes it).
    pub fn own_id(&self) -> Result<String> {
        let path = self.paths.under_root("/etc/machine-id");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        super::zincati_id(&text).with_context(|| format!("{}", path.display()))
    }

    /// TLS to a lock server: the site's CA, this node's certificate (read
    /// each time: it is renewed).
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        crate::https::client_config_from(&crate::certs::plan::IDENTITY.slot(&self.paths))
            .context("this node has no usable identity certificate (has it joined its site?)")
    }

    /// A core host's lock server address: from the DNS, else as it last
    /// gave it.
    async fn resolve(&self, fqdn: &str) -> Result<SocketAddr> {
        let lookup = tokio::net::lookup_host((fqdn, LOCK_PORT));
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(found) => found.map(|mut found| found.next()),
            Err(_) => Err(std::io::Error::other("the DNS did not answer")),
        };
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        match found {
            Ok(Some(address)) => {
                resolved.insert(fqdn.to_owned(), address);
                Ok(address)
            }
            Ok(None) => bail!("{fqdn} has no address"),
            Err(e) => resolved
                .get(fqdn)
                .copied()
                .with_context(|| format!("cannot resolve {fqdn}: {e}")),
        }
    }

    /// Look every core host up, so that each is known before the DNS
    /// goes down.
    pub async fn refresh_addresses(&self) {
        for host in &self.config.site.core {
            let _ = self.resolve(&self.config.fqdn(host)).await;
        }
    }

    /// POST `body` to `path` of the first core host whose lock server
    /// answers (this node's own first, on a core host). A server whose
    /// etcd it cannot reach answers 503 `lock_store_unavailable`: the next
    /// is asked then too.
    pub async fn forward(&self, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>)> {
        let tls = self.tls()?;
        let mut core = self.config.site.core.clone();
        core.sort_by_key(|c| *c != self.config.node);
        let mut errors = Vec::new();
        let mut unavailable = None;
        for host in &core {
            let fqdn = self.config.fqdn(host);
            let hop = self.hop(tls.clone(), &fqdn, path, body.clone());
            match tokio::time::timeout(HOP_TIMEOUT, hop).await {
                Ok(Ok((503, answer))) if is_store_unavailable(&answer) => {
                    errors.push(format!("{host}: its etcd is unavailable"));
                    unavailable = Some((503, answer));
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => errors.push(format!("{host}: {e:#}")),
                Err(_) => errors.push(format!("{host}: no answer within {HOP_TIMEOUT:?}")),
            }
        }
        match unavailable {
            Some(answer) => Ok(answer),
            None => bail!("no lock server answered ({})", errors.join("; ")),
        }
    }

    async fn hop(
        &self,
        tls: Arc<rustls::ClientConfig>,
        fqdn: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>)> {
        let address = match self.addresses.get(fqdn) {
            Some(address) => *address,
            None => self.resolve(fqdn).await?,
        };
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let name = ServerName::try_from(fqdn.to_owned())
            .map_err(|_| anyhow!("`{fqdn}` is not a server name"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .context("TLS handshake failed")?;
        let request = hyper::Request::post(path)
            .header("host", fqdn)
            .header("content-type", "application/json")
            .header(protocol::HEADER, "true")
            .body(Full::new(Bytes::from(body)))?;
        let (status, _, answer) =
            crate::https::exchange(TokioIo::new(stream), request, MAX_BODY).await?;
        Ok((status, answer))
    }

    /// Answer Zincati: check that the request speaks for this node, then
    /// forward it.
    async fn answer(&self, request: Local) -> (u16, Vec<u8>) {
        let checked = protocol::parse(
            &request.method,
            &request.path,
            request.header.as_deref(),
            &request.body,
        )
        .and_then(|lock| self.speaks_for_this_node(&lock.params).map(|()| lock));
        let lock = match checked {
            Ok(lock) => lock,
            Err(refusal) => return (refusal.status, refusal.body()),
        };
        let body = protocol::request_body(&lock.params);
        let (status, answer) = match self.forward(lock.operation.path(), body).await {
            Ok(answer) => answer,
            Err(e) => {
                let refusal = Refusal::new(503, kind::LOCK_SERVER_UNREACHABLE, format!("{e:#}"));
                (refusal.status, refusal.body())
            }
        };
        self.record(lock.operation, status, &answer);
        (status, answer)
    }

    /// Keep the answer to this node's own request where `builder status`
    /// reads it (only requests that speak for this node: another local
    /// process cannot make the file say anything else). A file that
    /// cannot be written costs the report, never the answer.
    fn record(&self, operation: protocol::Operation, status: u16, answer: &[u8]) {
        // A refusal is the protocol's error body; anything else is kept
        // as its status and the start of what came.
        let (kind, reason) = match (status, serde_json::from_slice::<Refusal>(answer)) {
            (200, _) => (None, None),
            (_, Ok(refusal)) => (Some(refusal.kind), Some(refusal.value)),
            (_, Err(_)) => (
                Some(format!("status {status}")),
                Some(String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned()),
            ),
        };
        let last = node_contract::fleetlock::LastAnswer {
            at: crate::status::now(),
            request: operation.path().trim_start_matches("/v1/").to_owned(),
            granted: status == 200,
            kind,
            reason,
        };
        let path = self.paths.updates_file();
        let written = serde_json::to_vec(&last)
            .map_err(anyhow::Error::from)
            .and_then(|json| crate::fsutil::write_atomic(&path, &json, 0o644));
        if let Err(e) = written {
            tracing::warn!(
                "fleetlock relay: cannot record the answer in {}: {e:#}",
                path.display()
            );
        }
    }

    fn speaks_for_this_node(&self, params: &protocol::ClientParams) -> Result<(), Refusal> {
        let forbidden = |value: String| Refusal::new(403, kind::FORBIDDEN, value);
        let own = self
            .own_id()
            .map_err(|e| Refusal::new(503, kind::LOCK_SERVER_UNREACHABLE, format!("{e:#}")))?;
        if params.id != own {
            return Err(forbidden(format!(
                "this relay speaks for {} only, whose id is {own}",
                self.config.node
            )));
        }
        let group = group_of(self.config.role());
        if params.group != group {
            return Err(Refusal::new(
                403,
                kind::WRONG_GROUP,
                format!("{} is in group `{group}`", self.config.node),
            ));
        }
        Ok(())
    }
}

fn is_store_unavailable(body: &[u8]) -> bool {
    serde_json::from_slice::<Refusal>(body).is_ok_and(|r| r.kind == kind::STORE_UNAVAILABLE)
}

/// A local request, whole.
struct Local {
    method: hyper::Method,
    path: String,
    header: Option<Vec<u8>>,
    body: Bytes,
}

/// Serve Zincati on the loopback listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, relay: Arc<Relay>) -> Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("fleetlock relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let relay = relay.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let relay = relay.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let (status, answer) = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(body) => {
                            let local = Local {
                                header: parts
                                    .headers
                                    .get(protocol::HEADER)
                                    .map(|v| v.as_bytes().to_vec()),
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                body: body.to_bytes(),
                            };
                            relay.answer(local).await
                        }
                        Err(_) => {
                            let refusal =
                                Refusal::new(413, kind::BAD_REQUEST, "the request is too large");
                            (refusal.status, refusal.body())
                        }
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(answer)))
                        .map_err(|e| anyhow!("{e}"));
                    response
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CONNECTION_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}
