//! One HTTPS exchange with a FreeIPA server, its certificate verified
//! against the IPA CA (the file `/etc/ipa/ca.crt` holds) and the server's
//! name. Unlike [`crate::https::post`], nothing is left for the caller to
//! check: a server that cannot prove its name under the IPA CA gets no
//! password and no request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::HeaderMap;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

/// Answers larger than this are not read (a `host_find` of a large site
/// stays far below it).
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// Where a FreeIPA server is: its name (for TLS and the `Referer`) and,
/// where DNS should not be asked, the address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub fqdn: String,
    /// None: resolve `fqdn` on port 443.
    pub address: Option<SocketAddr>,
}

impl Endpoint {
    pub fn new(fqdn: &str) -> Endpoint {
        Endpoint {
            fqdn: fqdn.to_owned(),
            address: None,
        }
    }

    pub fn at(fqdn: &str, address: SocketAddr) -> Endpoint {
        Endpoint {
            fqdn: fqdn.to_owned(),
            address: Some(address),
        }
    }

    async fn socket_address(&self) -> Result<SocketAddr> {
        if let Some(address) = self.address {
            return Ok(address);
        }
        tokio::net::lookup_host((self.fqdn.as_str(), 443))
            .await
            .with_context(|| format!("cannot resolve {}", self.fqdn))?
            .next()
            .ok_or_else(|| anyhow!("{} has no address", self.fqdn))
    }
}

/// A TLS client configuration trusting only the CA certificates in
/// `ca_pem`.
pub fn verifying_config(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.context("the IPA CA file is not PEM")?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("the IPA CA certificate is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err(anyhow!("the IPA CA file holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// One POST, bounded by `timeout`, over a fresh verified connection.
pub async fn post(
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer> {
    tokio::time::timeout(timeout, post_unbounded(endpoint, tls, path, headers, body))
        .await
        .map_err(|_| {
            anyhow::Error::new(NoAnswer(format!(
                "{} did not answer within {} ms",
                endpoint.fqdn,
                timeout.as_millis()
            )))
        })?
}

/// The request may have reached the server, which did not answer in
/// time: whether it acted is not known.
#[derive(Debug)]
pub struct NoAnswer(pub String);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoAnswer {}

async fn post_unbounded(
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Answer> {
    let address = endpoint.socket_address().await?;
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {} at {address}", endpoint.fqdn))?;
    let name = ServerName::try_from(endpoint.fqdn.clone())
        .map_err(|_| anyhow!("`{}` is not a server name", endpoint.fqdn))?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .with_context(|| {
            format!(
                "TLS with {} at {address} failed (is its certificate from the IPA CA?)",
                endpoint.fqdn
            )
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::post(path).header("host", endpoint.fqdn.as_str());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await
        .with_context(|| format!("{} closed the connection", endpoint.fqdn))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow!("cannot read the answer of {}: {e}", endpoint.fqdn))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(Answer {
        status,
        headers,
        body,
    })
}
