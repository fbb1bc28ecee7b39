//! The peer service on core hosts: it answers a rebuilt bootstrap host
//! that asks whether a cluster already exists (the split-brain guard,
//! ARCHITECTURE §4), and hands it the sealed CA backup to rejoin with.
//! The answer needs no authentication of its own: the backup opens only
//! under the site secret, and an altered one does not open.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::server::bytes_body::{full, Body};
use crate::paths::Paths;

/// Beside the join service's port; probing joiners ignore it.
pub const PEER_PORT: u16 = 7444;
pub const CLUSTER_PATH: &str = "/v1/cluster";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    pub node: String,
    /// This host has etcd data: a cluster exists.
    pub etcd_data: bool,
    pub ca_backup: Option<String>,
}

fn info(paths: &Paths, node: &str) -> ClusterInfo {
    ClusterInfo {
        node: node.to_owned(),
        etcd_data: paths.etcd_data().join("member").is_dir(),
        ca_backup: std::fs::read_to_string(paths.ca_backup()).ok(),
    }
}

/// `firstboot peer`: serve until killed.
pub async fn main(paths: Paths) -> Result<()> {
    let config = crate::check::load(&paths.node_json())?;
    let vpc = crate::net::Cidr::parse(&config.site.vpc_range)?;
    let address = *crate::net::own_addresses(&vpc)?
        .first()
        .context("no address in the site VPC")?;
    let tls = paths.tls_dir();
    let server_config = super::tls_server_config(
        &std::fs::read_to_string(tls.join("node.crt"))
            .context("this node has no certificate yet")?,
        &std::fs::read_to_string(tls.join("node.key"))?,
    )?;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::new(address.into(), PEER_PORT)).await?;
    log::info!("peer service on {address}:{PEER_PORT}");
    crate::status::notify("READY=1");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let shared = Arc::new((paths, config.node));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let response = if request.method() == hyper::Method::GET
                            && request.uri().path() == CLUSTER_PATH
                        {
                            log::info!(peer = peer.to_string().as_str(); "peer service: {peer} asked whether a cluster exists");
                            let body = serde_json::to_vec(&info(&shared.0, &shared.1))
                                .expect("serialises");
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(full(body))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(full(b"not found\n".to_vec()))
                        };
                        Ok::<Response<Body>, std::convert::Infallible>(
                            response.expect("a valid response"),
                        )
                    }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, connection).await;
        });
    }
}

/// Ask the peer service at `address`.
pub async fn ask(address: Ipv4Addr) -> Result<ClusterInfo> {
    let request = Request::get(CLUSTER_PATH)
        .header("host", address.to_string())
        .body(full(Vec::new()))?;
    let (status, _, body) = tokio::time::timeout(
        CLIENT_TIMEOUT,
        super::client::send(address, PEER_PORT, request),
    )
    .await
    .context("no answer in time")??;
    if status != 200 {
        anyhow::bail!("answered {status}");
    }
    serde_json::from_slice(&body).context("malformed answer")
}
