//! The one HTTPS server and client of firstboot's services (the join
//! service, the peer service). Trust never comes from TLS here: every
//! request and answer is signed by a node key the site vouched for (see
//! `node_contract::identity`), and TLS keeps the talk private. So the
//! client accepts any server certificate but hands it to the caller, who
//! checks it once the answer's signature has told it which CA and name to
//! expect.
//!
//! The server caps connections in flight, and each source address's share
//! of them, so that one address (anything on one node of the site) holding
//! idle connections cannot shut the service for the others; it bounds the
//! TLS handshake, every read and the whole exchange in time, and refuses
//! bodies over its limit unread.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How much a server takes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections handled at once; more are closed at accept.
    pub connections: usize,
    /// Connections handled at once from one source address; more from it
    /// are closed at accept, while other sources are still served.
    pub per_source: usize,
    /// A connection's whole life, TLS handshake included.
    pub timeout: Duration,
    /// Request bodies above this are refused unread (413).
    pub body: usize,
}

pub const LIMITS: Limits = Limits {
    connections: 256,
    per_source: 8,
    timeout: Duration::from_secs(15),
    body: 64 * 1024,
};

/// A connection that does not finish its TLS handshake within this is
/// closed: an honest client's handshake takes milliseconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections in flight per source address.
#[derive(Default)]
struct Shares(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

/// One source's connection, counted until dropped.
struct Share {
    shares: Arc<Shares>,
    source: IpAddr,
}

impl Shares {
    fn take(self: &Arc<Shares>, source: IpAddr, limit: usize) -> Option<Share> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(source).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: self.clone(),
            source,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// A request as a handler sees it: whole, and from whom.
#[derive(Debug)]
pub struct Request {
    pub method: hyper::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The TCP peer's IPv4 address.
    pub source: Ipv4Addr,
    /// The client's certificate, verified during the handshake: only
    /// with [`Identity::FilesWithClients`], None otherwise.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// An answer: status, extra headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(body: Vec<u8>) -> Response {
        Response {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body,
        }
    }

    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: format!("{text}\n").into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server TLS configuration from PEM.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the service certificate is not PEM")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the service key is not PEM")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Where a server's certificate comes from. Read again for every
/// connection, so a renewed certificate is served without a restart.
#[derive(Clone)]
pub enum Identity {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Fixed(Arc<ServerConfig>),
    /// As `Files`, and every client must present a certificate that
    /// chains to `clients_ca` (read again per connection too), for
    /// client authentication (its extended key usage says so).
    FilesWithClients {
        cert: PathBuf,
        key: PathBuf,
        clients_ca: PathBuf,
    },
}

impl Identity {
    fn config(&self) -> Result<Arc<ServerConfig>> {
        match self {
            Identity::Fixed(config) => Ok(config.clone()),
            Identity::Files { cert, key } => server_config(
                &std::fs::read_to_string(cert)
                    .with_context(|| format!("cannot read {}", cert.display()))?,
                &std::fs::read_to_string(key)
                    .with_context(|| format!("cannot read {}", key.display()))?,
            ),
            Identity::FilesWithClients {
                cert,
                key,
                clients_ca,
            } => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
                };
                let mut roots = rustls::RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(&read(clients_ca)?) {
                    roots
                        .add(ca.context("the clients' CA is not PEM")?)
                        .context("the clients' CA is not usable")?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .context("the clients' CA")?;
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&read(cert)?)
                        .collect::<Result<_, _>>()
                        .context("the service certificate is not PEM")?;
                let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .context("the service key is not PEM")?;
                let config = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)?;
                Ok(Arc::new(config))
            }
        }
    }
}

/// Serve until the task is dropped; each connection on its own task, so
/// one slow client never blocks the others. `handler` sees only requests
/// whose body fits the limit.
pub async fn serve<H, F>(listener: TcpListener, identity: Identity, limits: Limits, handler: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    let shares = Arc::new(Shares::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(share) = shares.take(peer.ip(), limits.per_source) else {
            tracing::debug!(peer = %peer, "too many connections from {}: closed at once", peer.ip());
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = %peer, "too many connections: closed at once");
            continue;
        };
        let config = match identity.config() {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("cannot serve TLS: {e:#}");
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = (slot, share);
            let exchange = async {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                // Probing joiners connect and hang up: not worth a log line.
                let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                else {
                    return;
                };
                let source = match peer.ip() {
                    IpAddr::V4(v4) => v4,
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                // Verified by the handshake when the identity asks for it.
                let client_certificate = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.clone().into_owned());
                let service = hyper::service::service_fn(move |request| {
                    let handler = handler.clone();
                    let client_certificate = client_certificate.clone();
                    async move {
                        let response =
                            respond(request, source, client_certificate, limits, handler).await;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.timeout)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            };
            let _ = tokio::time::timeout(limits.timeout, exchange).await;
        });
    }
}

async fn respond<H, F>(
    request: hyper::Request<hyper::body::Incoming>,
    source: Ipv4Addr,
    client_certificate: Option<CertificateDer<'static>>,
    limits: Limits,
    handler: H,
) -> hyper::Response<Full<Bytes>>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let (parts, body) = request.into_parts();
    let response = match Limited::new(body, limits.body).collect().await {
        Ok(collected) => {
            handler(Request {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                headers: parts.headers,
                body: collected.to_bytes(),
                source,
                client_certificate,
            })
            .await
        }
        Err(_) => Response::text(
            413,
            &format!("the request is larger than {} bytes", limits.body),
        ),
    };
    let mut builder = hyper::Response::builder()
        .status(StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name),
            HeaderValue::try_from(value.as_str()),
        ) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .expect("a valid response")
}

/// What came back from a firstboot service.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The certificate the server presented, for the caller to check.
    pub server_certificate: Option<CertificateDer<'static>>,
}

/// Answers larger than this are not read.
const MAX_ANSWER: usize = 1024 * 1024;

/// One POST to a firstboot service over TLS, bounded by `timeout`. The
/// server's certificate is not checked here (see [`Answer`]).
pub async fn post(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer> {
    post_from(None, address, path, headers, body, timeout).await
}

/// [`post`] from the local address `source` (the benchmark's joiners,
/// each from its own address).
pub async fn post_from(
    source: Option<IpAddr>,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer> {
    let name = ServerName::IpAddress(address.ip().into());
    let exchange = post_unbounded(source, address, client_config()?, name, path, headers, body);
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{address} did not answer within {}s", timeout.as_secs()))?
}

/// One POST over TLS whose server must present a certificate for `name`
/// under `ca_pem`, checked during the handshake: for what must not be
/// sent to anyone else (a one-time password).
pub async fn post_verified(
    address: SocketAddr,
    ca_pem: &str,
    name: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the CA is not PEM")?)
            .context("the CA is not usable")?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = ServerName::try_from(name.to_owned())
        .map_err(|_| anyhow!("`{name}` is not a server name"))?;
    let exchange = post_unbounded(None, address, Arc::new(config), server, path, headers, body);
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{address} did not answer within {}s", timeout.as_secs()))?
}

/// A client configuration that checks the server against `ca_pem` (one
/// or more CA certificates) and presents `cert_pem` (with its chain) and
/// `key_pem`: mutual TLS, as etcd asks of its clients.
pub fn mtls_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the CA is not PEM")?)
            .context("the CA is not usable")?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the client certificate is not PEM")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the client key is not PEM")?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the client certificate does not fit its key")?;
    Ok(Arc::new(config))
}

/// One POST over TLS with `config` to `address`, whose certificate must
/// name `name`, bounded by `timeout`.
pub async fn post_with(
    config: Arc<ClientConfig>,
    address: SocketAddr,
    name: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer> {
    let server = ServerName::try_from(name.to_owned())
        .map_err(|_| anyhow!("`{name}` is not a server name"))?;
    let exchange = post_unbounded(None, address, config, server, path, &[], body);
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{address} did not answer within {}s", timeout.as_secs()))?
}

async fn post_unbounded(
    source: Option<IpAddr>,
    address: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Answer> {
    let stream = match source {
        None => TcpStream::connect(address).await,
        Some(source) => {
            let socket = match source {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket
                .bind(SocketAddr::new(source, 0))
                .with_context(|| format!("cannot send from {source}"))?;
            socket.connect(address).await
        }
    }
    .with_context(|| format!("cannot connect to {address}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(name, stream)
        .await
        .context("TLS handshake failed")?;
    let server_certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned());
    let mut request = hyper::Request::post(path)
        .header("host", address.ip().to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    let (status, headers, body) = exchange(TokioIo::new(tls), request, MAX_ANSWER).await?;
    Ok(Answer {
        status,
        headers,
        body,
        server_certificate,
    })
}

/// One HTTP/1.1 exchange on a connection made by the caller (plain or
/// TLS): the status, headers and a body of at most `limit` bytes.
pub async fn exchange<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, HeaderMap, Vec<u8>)>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| anyhow!("cannot read the answer: {e}"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, headers, body))
}

/// A TLS client that checks servers against `slot`'s CA and their names,
/// and presents `slot`'s certificate (read now: renewal replaces it).
pub fn client_config_from(slot: &crate::certs::Slot) -> Result<Arc<ClientConfig>> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&slot.ca)?) {
        roots
            .add(cert.with_context(|| format!("{} is not PEM", slot.ca.display()))?)
            .with_context(|| format!("{} is not a usable CA", slot.ca.display()))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&slot.cert)?)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not PEM", slot.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&slot.key)?)
        .with_context(|| format!("{} is not PEM", slot.key.display()))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Whether a TLS server at `address` answers a handshake within `limit`
/// (whatever it then thinks of us: etcd refuses a client without a
/// certificate, and that is an answer). A port that is bound but not yet
/// served never answers.
pub async fn answers_tls(address: SocketAddr, limit: Duration) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(address).await?;
        let connector =
            tokio_rustls::TlsConnector::from(client_config().map_err(std::io::Error::other)?);
        let name = ServerName::IpAddress(address.ip().into());
        connector.connect(name, stream).await.map(|_| ())
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(())) => true,
        // A TLS alert is an answer; a refused or reset connection is not.
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::InvalidData,
        Err(_) => false,
    }
}

fn client_config() -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CheckedByTheCaller(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any server certificate at the handshake (still checking the
/// handshake's signatures): the answer is authenticated by its signature,
/// and the caller checks the certificate against the CA that answer names.
#[derive(Debug)]
struct CheckedByTheCaller(Arc<CryptoProvider>);

impl ServerCertVerifier for CheckedByTheCaller {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The PEM of a DER certificate.
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `/hold` exchanges inside the handler until the test lets them
    /// go, and counts those that got there: a test waits on what the
    /// server did, not on a clock.
    struct Gate {
        entered: tokio::sync::Semaphore,
        release: tokio::sync::Semaphore,
    }

    /// How long a test waits for something the server must do at once
    /// before it fails (a bound, never a pause).
    const BOUND: Duration = Duration::from_secs(20);

    async fn server(limits: Limits) -> (SocketAddr, Arc<Gate>) {
        let cert = crate::pki::self_signed("svc.lab.example.org").unwrap();
        let identity = Identity::Fixed(server_config(&cert.cert_pem, &cert.key_pem).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Arc::new(Gate {
            entered: tokio::sync::Semaphore::new(0),
            release: tokio::sync::Semaphore::new(0),
        });
        let held = gate.clone();
        tokio::spawn(serve(
            listener,
            identity,
            limits,
            move |request: Request| {
                let gate = held.clone();
                async move {
                    if request.path == "/hold" {
                        gate.entered.add_permits(1);
                        gate.release.acquire().await.unwrap().forget();
                    }
                    Response::json(
                        format!("{} {}", request.body.len(), request.source).into_bytes(),
                    )
                    .with_header("x-test", "yes".into())
                }
            },
        ));
        (address, gate)
    }

    /// Waits until the server closes `stream` (end of file or an error),
    /// within [`BOUND`].
    async fn closed_by_server(stream: &mut TcpStream) {
        use tokio::io::AsyncReadExt as _;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(BOUND, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("the server sent bytes on a connection that sent none"),
            Err(_) => panic!("the server did not close the connection within {BOUND:?}"),
        }
    }

    #[tokio::test]
    async fn serves_whole_bodies_and_refuses_large_ones_unread() {
        let limits = Limits {
            connections: 4,
            per_source: 4,
            timeout: Duration::from_secs(5),
            body: 1000,
        };
        let (address, _) = server(limits).await;
        let answer = post(address, "/", &[], vec![b'x'; 1000], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"1000 127.0.0.1");
        assert_eq!(answer.headers["x-test"], "yes");
        let cert = answer.server_certificate.expect("the server's certificate");
        assert!(to_pem(&cert).starts_with("-----BEGIN CERTIFICATE-----"));
        let answer = post(address, "/", &[], vec![b'x'; 1001], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 413);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let limits = Limits {
            connections: 2,
            per_source: 2,
            timeout: Duration::from_secs(10),
            body: 1000,
        };
        let (address, gate) = server(limits).await;
        // Two exchanges held in the handler take both slots; a third is
        // closed, and once they end a new one is served again.
        let hold = move |_| post(address, "/hold", &[], vec![], BOUND);
        let held = tokio::spawn(async move { tokio::join!(hold(0), hold(1)) });
        tokio::time::timeout(BOUND, gate.entered.acquire_many(2))
            .await
            .expect("both held exchanges reach the handler")
            .unwrap()
            .forget();
        let refused = post(address, "/", &[], vec![], Duration::from_secs(5)).await;
        assert!(refused.is_err(), "{refused:?}");
        gate.release.add_permits(2);
        let (a, b) = held.await.unwrap();
        assert_eq!((a.unwrap().status, b.unwrap().status), (200, 200));
        let again = post(address, "/", &[], vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(again.status, 200);
    }

    #[tokio::test]
    async fn one_source_holding_its_share_leaves_the_others_served() {
        let limits = Limits {
            connections: 16,
            per_source: 3,
            timeout: Duration::from_secs(10),
            body: 1000,
        };
        let (address, _) = server(limits).await;
        // 127.0.0.2 holds idle connections (no TLS), as many as it can.
        let flooder = std::net::SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), 0);
        let mut held = Vec::new();
        for _ in 0..10 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(flooder).unwrap();
            held.push(socket.connect(address).await.unwrap());
        }
        // Beyond its share, the flooder's connections are closed at accept:
        // wait for 7 of them to see end of file (the 3 it keeps stay open
        // until the handshake times out).
        let (closed, mut closes) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for (i, mut stream) in held.into_iter().enumerate() {
            let closed = closed.clone();
            readers.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut byte = [0u8; 1];
                if let Ok(0) | Err(_) = stream.read(&mut byte).await {
                    let _ = closed.send(i);
                }
            }));
        }
        for _ in 0..7 {
            tokio::time::timeout(BOUND, closes.recv())
                .await
                .expect("the flooder's connections beyond its share are closed")
                .unwrap();
        }
        // All ten were accepted by now (in order); the flooder's share is
        // full, so one more of its connections is closed at once: the
        // three left are held, not merely unaccepted.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(flooder).unwrap();
        let mut one_more = socket.connect(address).await.unwrap();
        closed_by_server(&mut one_more).await;
        assert!(
            closes.try_recv().is_err(),
            "the flooder kept fewer than its share"
        );
        // Another source is served at once.
        let answer = post(address, "/", &[], vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        readers.iter().for_each(|r| r.abort());
    }

    #[tokio::test]
    async fn a_handshake_that_never_comes_frees_its_slot() {
        let limits = Limits {
            connections: 1,
            per_source: 1,
            timeout: Duration::from_secs(60),
            body: 1000,
        };
        let (address, _) = server(limits).await;
        // The idle connection, accepted first, holds the one slot: another
        // is closed at accept; once the handshake times out (the exchange's
        // own 60 s are far off), the server closes it and serves again.
        let mut idle = TcpStream::connect(address).await.unwrap();
        let refused = post(address, "/", &[], vec![], Duration::from_secs(5)).await;
        assert!(refused.is_err(), "{refused:?}");
        closed_by_server(&mut idle).await;
        let answer = post(address, "/", &[], vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }

    #[tokio::test]
    async fn a_bound_port_that_nobody_serves_does_not_answer_tls() {
        let (served, _) = server(LIMITS).await;
        assert!(answers_tls(served, Duration::from_secs(2)).await);
        // Bound and listening, but nothing accepts: the kernel completes
        // the TCP handshake, TLS never answers.
        let bound = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = bound.local_addr().unwrap();
        assert!(!answers_tls(silent, Duration::from_millis(300)).await);
        drop(bound);
        assert!(!answers_tls(silent, Duration::from_millis(300)).await);
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        let limits = Limits {
            connections: 1,
            per_source: 1,
            timeout: Duration::from_millis(300),
            body: 1000,
        };
        let (address, _) = server(limits).await;
        let mut silent = TcpStream::connect(address).await.unwrap();
        closed_by_server(&mut silent).await;
        let answer = post(address, "/", &[], vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }
}
