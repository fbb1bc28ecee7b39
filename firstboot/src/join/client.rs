//! Joining: find the bootstrap host's join service and ask it in.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::protocol::{
    self, JoinRequest, JoinResponse, AUTH_HEADER, JOIN_PATH, MAX_BODY, PROOF_HEADER,
};
use super::server::bytes_body::full;
use crate::net::Cidr;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connects in flight at once while probing: a /24 is probed in one wave.
const PROBE_WIDTH: usize = 256;

/// Addresses in `range` with something listening on `port`, probed
/// concurrently; `own` is skipped.
pub async fn probe(range: &Cidr, port: u16, own: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let candidates: Vec<Ipv4Addr> = range.hosts().filter(|a| !own.contains(a)).collect();
    let mut open = Vec::new();
    for wave in candidates.chunks(PROBE_WIDTH) {
        let mut tasks = tokio::task::JoinSet::new();
        for &address in wave {
            tasks.spawn(async move {
                let target = SocketAddr::new(address.into(), port);
                let ok = matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await,
                    Ok(Ok(_))
                );
                ok.then_some(address)
            });
        }
        while let Some(result) = tasks.join_next().await {
            if let Ok(Some(address)) = result {
                open.push(address);
            }
        }
    }
    open.sort();
    open
}

/// Ask the join service at `address` to admit this node. The answer is
/// accepted only with a valid proof under this node's credential.
pub async fn join(
    address: Ipv4Addr,
    port: u16,
    node: &str,
    credential: &str,
    addresses: &[Ipv4Addr],
    csr_pem: &str,
) -> Result<JoinResponse> {
    let request = JoinRequest {
        node: node.to_owned(),
        addresses: addresses.to_vec(),
        csr_pem: csr_pem.to_owned(),
        timestamp: crate::status::now(),
        nonce: hex::encode(rand::random::<[u8; 16]>()),
    };
    let body = serde_json::to_vec(&request)?;
    let auth = protocol::request_mac(credential, &body);
    let (status, proof, answer) =
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(address, port, body, auth))
            .await
            .with_context(|| {
                format!(
                    "the join service at {address} did not answer within {}s",
                    EXCHANGE_TIMEOUT.as_secs()
                )
            })??;
    if status != 200 {
        bail!(
            "the join service at {address} refused: {} {}",
            status,
            String::from_utf8_lossy(&answer).trim()
        );
    }
    if !proof.is_some_and(|p| protocol::verify_response(credential, &request.nonce, &answer, &p)) {
        bail!("the answer from {address} does not prove knowledge of the site secret; it is not our bootstrap host");
    }
    serde_json::from_slice(&answer)
        .with_context(|| format!("the answer from {address} is malformed"))
}

/// One POST to the join service: status, proof header, body. Public for the
/// tests that send it forged and malformed requests.
pub async fn exchange(
    address: Ipv4Addr,
    port: u16,
    body: Vec<u8>,
    auth: String,
) -> Result<(u16, Option<String>, Vec<u8>)> {
    let request = Request::post(JOIN_PATH)
        .header("host", address.to_string())
        .header("content-type", "application/json")
        .header(AUTH_HEADER, auth)
        .body(full(body))?;
    let (status, headers, answer) = send(address, port, request).await?;
    let proof = headers
        .get(PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, proof, answer))
}

/// One HTTPS request to a firstboot service (join or peer), whose answer
/// the caller authenticates: status, headers, body (at most 256 KiB).
pub async fn send(
    address: Ipv4Addr,
    port: u16,
    request: Request<super::server::bytes_body::Body>,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>)> {
    let stream = TcpStream::connect(SocketAddr::new(address.into(), port)).await?;
    let connector = tokio_rustls::TlsConnector::from(super::tls::client_config()?);
    let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(address).into());
    let tls = connector
        .connect(name, stream)
        .await
        .context("TLS handshake failed")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let answer = http_body_util::Limited::new(response.into_body(), MAX_BODY * 4)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the answer: {e}"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, headers, answer))
}
