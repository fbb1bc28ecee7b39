//! The join service on the bootstrap host: HTTPS on its VPC address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes_body::{full, Body};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use node_contract::Role;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use super::protocol::{
    self, Authority, JoinResponse, Refusal, ReplayGuard, AUTH_HEADER, JOIN_PATH, MAX_BODY,
    PROOF_HEADER,
};
use crate::ca::TempCa;
use crate::dns::DnsServer;
use crate::net::Cidr;

/// A slow or silent client is dropped after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the service holds between requests.
pub struct Registrar {
    pub domain: String,
    pub site_secret: String,
    pub hosts: Vec<(String, Role)>,
    pub vpc: Cidr,
    pub ca: TempCa,
    pub dns: Arc<DnsServer>,
    pub dns_address: Ipv4Addr,
    pub registry: BTreeMap<String, Ipv4Addr>,
    pub registry_file: PathBuf,
    pub replay: ReplayGuard,
}

impl Registrar {
    /// The CA and registry sealed under the site secret, for core peers.
    pub fn sealed_backup(&self) -> String {
        let (ca_cert_pem, ca_key_pem) = self.ca.to_pems();
        let backup = crate::backup::CaBackup {
            ca_cert_pem,
            ca_key_pem,
            registry: self.registry.clone(),
        };
        crate::backup::seal(&self.site_secret, &backup)
    }

    /// Record a node's address: on disk first, then in DNS.
    pub async fn register(&mut self, node: &str, address: Ipv4Addr) -> Result<()> {
        self.registry.insert(node.to_owned(), address);
        let bytes = serde_json::to_vec_pretty(&self.registry)?;
        crate::fsutil::write_atomic(&self.registry_file, &bytes, 0o644)?;
        self.dns.set_host(node, address).await
    }
}

/// Load the registry written by an earlier run (empty when none).
pub fn load_registry(path: &std::path::Path) -> Result<BTreeMap<String, Ipv4Addr>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Serve until the task is dropped. Each connection is handled on its own
/// task, so one bad client never blocks the others.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    registrar: Arc<Mutex<Registrar>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("join service: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, registrar) = (acceptor.clone(), registrar.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await
            else {
                // Probing joiners connect and hang up: not worth a log line.
                log::debug!(peer = peer.to_string().as_str(); "join service: no TLS handshake from {peer}");
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let registrar = registrar.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(request, peer, registrar).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, connection).await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    registrar: Arc<Mutex<Registrar>>,
) -> Response<Body> {
    let source = match peer.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    if request.uri().path() != JOIN_PATH || request.method() != hyper::Method::POST {
        return plain(StatusCode::NOT_FOUND, "only POST /v1/join is served here");
    }
    let auth = request
        .headers()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return refuse(source, &Refusal::TooLarge),
    };
    let mut registrar = registrar.lock().await;
    let verdict = {
        let r = &mut *registrar;
        let authority = Authority {
            domain: &r.domain,
            site_secret: &r.site_secret,
            hosts: &r.hosts,
            vpc: r.vpc,
            ca: &r.ca,
        };
        authority.admit(
            source,
            auth.as_deref(),
            &body,
            &mut r.replay,
            crate::status::now(),
        )
    };
    let admitted = match verdict {
        Ok(a) => a,
        Err(refusal) => return refuse(source, &refusal),
    };
    if let Err(e) = registrar.register(&admitted.node, admitted.address).await {
        log::error!("join service: cannot register {}: {e:#}", admitted.node);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bootstrap host cannot record the join; retry",
        );
    }
    let answer = JoinResponse {
        certificate_pem: admitted.certificate_pem,
        ca_pem: registrar.ca.cert_pem().to_owned(),
        peers: registrar.registry.clone(),
        dns: registrar.dns_address,
        ca_backup: registrar.sealed_backup(),
    };
    let bytes = serde_json::to_vec(&answer).expect("serialises");
    let credential = node_contract::join_credential(&registrar.site_secret, &admitted.node);
    let proof = protocol::response_mac(&credential, &admitted.nonce, &bytes);
    log::info!(peer = admitted.node.as_str(), address = admitted.address.to_string().as_str(); "join service: admitted {} at {}", admitted.node, admitted.address);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header(PROOF_HEADER, proof)
        .body(full(bytes))
        .expect("a valid response")
}

fn refuse(source: Ipv4Addr, refusal: &Refusal) -> Response<Body> {
    log::warn!(source = source.to_string().as_str(); "join service: refused a request from {source}: {refusal}");
    let status = StatusCode::from_u16(refusal.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    plain(status, &refusal.to_string())
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(format!("{text}\n").into_bytes()))
        .expect("a valid response")
}

/// Response bodies: whole byte buffers.
pub mod bytes_body {
    pub type Body = http_body_util::Full<hyper::body::Bytes>;

    pub fn full(bytes: Vec<u8>) -> Body {
        http_body_util::Full::new(hyper::body::Bytes::from(bytes))
    }
}
