//! The peer service, on every node from boot (`firstboot peer`). It
//! answers the bootstrap host, and only it (its requests carry its ticket
//! and its signature):
//! - "who are you, and at which addresses": so the join service never
//!   moves a registered node whose old address still answers as it;
//! - "does a cluster exist": a core host says whether it has etcd data and
//!   hands back the sealed CA copy it keeps, so a rebuilt bootstrap host
//!   rejoins the cluster instead of starting a second one.
//!
//! Every answer is signed with this node's key over the request's nonce.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use node_contract::identity::Purpose;
use node_contract::{NodeConfig, Role, PEER_PORT};

use super::protocol::{self, PeerAnswer, PeerRequest, Refusal, Site, PEER_PATH, SIGNATURE_HEADER};
use super::Credentials;
use crate::https::{self, Identity, Response};
use crate::paths::Paths;

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What this node says of itself.
fn answer(paths: &Paths, config: &NodeConfig, vpc_addresses: Vec<Ipv4Addr>) -> PeerAnswer {
    let core = config.role() == Role::Core;
    PeerAnswer {
        node: config.ticket(),
        addresses: vpc_addresses,
        etcd_data: paths.etcd_data().join("member").is_dir(),
        ca_backup: core
            .then(|| std::fs::read_to_string(paths.ca_backup()).ok())
            .flatten(),
    }
}

/// `firstboot peer`: serve until killed.
pub async fn main(paths: Paths) -> Result<()> {
    let config = crate::check::load(&paths.node_json())?;
    let vpc = config.site.vpc_range;
    let address = crate::net::wait_for_address(&vpc, Duration::from_secs(60)).await?;
    let tls = paths.tls_dir();
    let identity = if tls.join("node.crt").is_file() && tls.join("node.key").is_file() {
        Identity::Files {
            cert: tls.join("node.crt"),
            key: tls.join("node.key"),
        }
    } else {
        // Before the node has joined: answers are signed, so a throwaway
        // certificate serves to keep the talk private.
        let own = crate::pki::self_signed(&config.fqdn(&config.node))?;
        Identity::Fixed(https::server_config(&own.cert_pem, &own.key_pem)?)
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(address.into(), PEER_PORT))
        .await
        .with_context(|| format!("cannot listen on {address}:{PEER_PORT}"))?;
    tracing::info!("peer service on {address}:{PEER_PORT}");
    crate::status::notify("READY=1");
    let shared = std::sync::Arc::new((paths, config));
    https::serve(listener, identity, https::LIMITS, move |request| {
        let shared = shared.clone();
        async move {
            let (paths, config) = &*shared;
            if request.method != hyper::Method::POST || request.path != PEER_PATH {
                return Response::text(404, &format!("only POST {PEER_PATH} is served here"));
            }
            let signature = request
                .headers
                .get(SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok());
            let site = Site::of(config);
            let asked = match site.verify_peer_request(
                signature,
                &request.body,
                crate::status::now(),
            ) {
                Ok(asked) => asked,
                Err(refusal) => {
                    tracing::warn!(source = %request.source, "peer service: refused: {refusal}");
                    return Response::text(refusal.http_status(), &refusal.to_string());
                }
            };
            let addresses = crate::net::own_addresses(&config.site.vpc_range).unwrap_or_default();
            tracing::info!(peer = %asked.from.node, "peer service: answered {}", asked.from.node);
            let body = serde_json::to_vec(&answer(paths, config, addresses)).expect("serialises");
            let proof = protocol::sign_answer(
                &config.signing_key(),
                Purpose::PeerAnswer,
                &asked.nonce,
                &body,
            );
            Response::json(body).with_header(SIGNATURE_HEADER, proof)
        }
    })
    .await;
    bail!("the peer service stopped")
}

/// Ask the peer service at `address` (as the bootstrap host). The answer
/// counts only if the node its ticket names signed it and claims `address`.
pub async fn ask(site: &Site, me: &Credentials, address: Ipv4Addr) -> Result<PeerAnswer> {
    let nonce = protocol::nonce();
    let body = serde_json::to_vec(&PeerRequest {
        from: me.ticket.clone(),
        timestamp: crate::status::now(),
        nonce: nonce.clone(),
    })?;
    let signature = protocol::sign_request(&me.key, Purpose::PeerRequest, &body);
    let reply = https::post(
        SocketAddr::new(address.into(), PEER_PORT),
        PEER_PATH,
        &[(SIGNATURE_HEADER, signature)],
        body,
        ASK_TIMEOUT,
    )
    .await?;
    if reply.status != 200 {
        bail!(
            "answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        );
    }
    let proof = reply
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let answer: PeerAnswer = site
        .check_answer(
            &reply.body,
            proof,
            &nonce,
            Purpose::PeerAnswer,
            |a: &PeerAnswer| &a.node,
        )
        .map_err(|r: Refusal| anyhow::anyhow!("{r}"))?;
    if !answer.addresses.contains(&address) {
        bail!(
            "{} answered from {address}, which it does not claim ({:?})",
            answer.node.node,
            answer.addresses
        );
    }
    Ok(answer)
}
