//! The peer service, on every node from boot (`firstboot peer`). It
//! answers the bootstrap host, and only it (its requests carry its ticket
//! and its signature):
//! - "who are you, and at which addresses": announcements after a move
//!   check that the node at a registered address is the one registered;
//! - "does a cluster exist": a core host says whether it has etcd data and
//!   hands back the sealed CA copy it keeps, so a rebuilt bootstrap host
//!   rejoins the cluster instead of starting a second one.
//!
//! Every request names the address the bootstrap host asks from, and must
//! come from it. A node that has joined follows a bootstrap host that
//! asks from a new address (it was rebuilt elsewhere): its name in
//! /etc/hosts and the site domain's DNS route move there. Only a request
//! the bootstrap host signed, made from that address and newer than the
//! last one followed, moves them: a replay from elsewhere fails the
//! address check, an old one the time check.
//!
//! The bootstrap host also passes on where a rebuilt node is now (the join
//! service moved it): a joined node pins that name to the new address in
//! /etc/hosts, newest news first, as etcd checks a member's certificate
//! against the address its name resolves to.
//!
//! A request from a retired generation of the bootstrap host's credential
//! (older than one this node has seen, in a join answer or a request) is
//! refused: a copy of its old user data asks nothing.
//!
//! Every answer is signed with this node's key over the request's nonce.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Result};
use node_contract::identity::Purpose;
use node_contract::{HostName, NodeConfig, Role, PEER_PORT};

use super::protocol::{
    self, Moved, PeerAnswer, PeerRequest, Refusal, Site, PEER_PATH, SIGNATURE_HEADER,
};
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
        freeipa_ca: core.then(|| freeipa_ca(paths)).flatten(),
        etcd_sub_ca: core
            .then(|| moved_to(paths, crate::certs::CertPurpose::Etcd))
            .flatten(),
        identity_sub_ca: core
            .then(|| moved_to(paths, crate::certs::CertPurpose::Identity))
            .flatten(),
        identity_step: crate::certs::moved::Moved::load(paths, crate::certs::CertPurpose::Identity)
            .ok()
            .flatten()
            .and_then(|moved| moved.step),
    }
}

/// The sub-CA this node's `purpose` row moves (or moved) to.
fn moved_to(paths: &Paths, purpose: crate::certs::CertPurpose) -> Option<String> {
    crate::certs::moved::Moved::load(paths, purpose)
        .ok()
        .flatten()
        .map(|moved| moved.new_ca)
}

/// The IPA CA of this node's FreeIPA server, once it is configured.
fn freeipa_ca(paths: &Paths) -> Option<String> {
    use crate::freeipa::site::{self, Kind};
    let state = paths.service_state(site::SERVER);
    if !state.join(Kind::Replica.done_marker()).exists() {
        return None;
    }
    std::fs::read_to_string(site::ca_path(&state)).ok()
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
    // The socket systemd holds from boot (see `sockets`), else bound here.
    let mut passed = crate::sockets::Passed::from_env();
    let listener = crate::sockets::tcp_or_bind(
        &mut passed,
        "peer",
        SocketAddr::new(address.into(), PEER_PORT),
    )
    .await?;
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
            if request.source != asked.address {
                let refusal = Refusal::NotAllowed(format!(
                    "the request says it comes from {}, but it came from {}",
                    asked.address, request.source
                ));
                tracing::warn!(source = %request.source, "peer service: refused: {refusal}");
                return Response::text(refusal.http_status(), &refusal.to_string());
            }
            // A retired bootstrap host (its old user data, wherever it
            // is used) is refused; a newer one retires the one known.
            if let Err(e) =
                crate::state::KnownGenerations::admit(&paths.known_generations(), &asked.from)
            {
                let refusal = Refusal::NotAllowed(format!("{e:#}"));
                tracing::warn!(source = %request.source, "peer service: refused: {refusal}");
                return Response::text(refusal.http_status(), &refusal.to_string());
            }
            if let Err(e) = follow_bootstrap(paths, config, &asked).await {
                tracing::warn!(
                    "peer service: cannot follow the bootstrap host to {}: {e:#}",
                    asked.address
                );
            }
            match record_peer_move(paths, config, &asked) {
                Ok(Some(moved)) => tracing::warn!(
                    "{} was rebuilt at {}: following it",
                    moved.node,
                    moved.address
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("peer service: cannot follow a rebuilt peer: {e:#}"),
            }
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

/// Follow the bootstrap host to the address it asked from, if this node
/// has joined and knew it elsewhere: /etc/hosts and the site domain's DNS
/// route move, and the phases read the new address from the record.
/// `asked` is verified and came from `asked.address`.
async fn follow_bootstrap(paths: &Paths, config: &NodeConfig, asked: &PeerRequest) -> Result<()> {
    if let Some(from) = record_move(paths, config, asked)? {
        // After handoff's DNS step, FreeIPA's servers stay first.
        let dns = crate::resolver::saved(paths)
            .unwrap_or(crate::resolver::SiteDns::Temporary(asked.address))
            .with_temporary(asked.address);
        crate::resolver::route_site_domain(paths, &dns, &config.site.domain).await?;
        tracing::warn!(
            "the bootstrap host {} moved from {from} to {}: following it",
            asked.from.node,
            asked.address
        );
    }
    Ok(())
}

/// The file half of [`follow_bootstrap`]: the record and /etc/hosts.
/// Where the bootstrap host was, when it moved.
pub fn record_move(
    paths: &Paths,
    config: &NodeConfig,
    asked: &PeerRequest,
) -> Result<Option<Ipv4Addr>> {
    let state = crate::state::State::load(&paths.state_file())?;
    let Some(known) = crate::state::bootstrap_address(paths, &state) else {
        // Not joined yet: join finds it wherever it is.
        return Ok(None);
    };
    let moved_file = paths.bootstrap_moved();
    let last = crate::state::BootstrapMoved::load(&moved_file).map_or(0, |m| m.since);
    if known == asked.address || asked.timestamp <= last {
        return Ok(None);
    }
    if !config.site.vpc_range.contains(asked.address) {
        bail!(
            "{} is outside the site's VPC {}",
            asked.address,
            config.site.vpc_range
        );
    }
    crate::state::BootstrapMoved::new(asked.from.node.clone(), asked.address, asked.timestamp)
        .save(&moved_file)?;
    crate::resolver::write_hosts(paths, &config.site.domain, &state.peers)?;
    Ok(Some(known))
}

/// Pin a rebuilt peer's name to the new address the bootstrap host
/// passed on (`asked` is verified and came from it), if this node has
/// joined and the news is newer than what it has: the record and
/// /etc/hosts. A node is not told where it is itself.
pub fn record_peer_move(
    paths: &Paths,
    config: &NodeConfig,
    asked: &PeerRequest,
) -> Result<Option<Moved>> {
    let Some(moved) = &asked.moved else {
        return Ok(None);
    };
    if moved.node == config.node {
        return Ok(None);
    }
    if !config.site.vpc_range.contains(moved.address) {
        bail!(
            "{} at {}: outside the site's VPC {}",
            moved.node,
            moved.address,
            config.site.vpc_range
        );
    }
    let state = crate::state::State::load(&paths.state_file())?;
    if crate::state::bootstrap_address(paths, &state).is_none() {
        // Not joined yet: join hands it every registered address.
        return Ok(None);
    }
    let mut record = crate::state::PeersMoved::load(&paths.peers_moved());
    if !record.take(&moved.node, moved.address, asked.timestamp) {
        return Ok(None);
    }
    record.save(&paths.peers_moved())?;
    crate::resolver::write_hosts(paths, &config.site.domain, &state.peers)?;
    Ok(Some(moved.clone()))
}

/// Ask the peer service at `address` (as the bootstrap host, from `own`),
/// passing on `moved` if given. The answer counts only if the node its
/// ticket names signed it and claims `address`.
pub async fn ask(
    site: &Site,
    me: &Credentials,
    own: Ipv4Addr,
    address: Ipv4Addr,
    moved: Option<Moved>,
) -> Result<PeerAnswer> {
    let nonce = protocol::nonce();
    let body = serde_json::to_vec(&PeerRequest {
        from: me.ticket.clone(),
        address: own,
        timestamp: crate::status::now(),
        nonce: nonce.clone(),
        moved,
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
    let answer: PeerAnswer = super::signed_answer(
        site,
        &reply,
        &nonce,
        Purpose::PeerAnswer,
        |a: &PeerAnswer| &a.node,
    )?;
    if !answer.addresses.contains(&address) {
        bail!(
            "{} answered from {address}, which it does not claim ({:?})",
            answer.node.node,
            answer.addresses
        );
    }
    Ok(answer)
}

/// How many times a rebuilt bootstrap host tells each registered node
/// where it is now, and the pause between rounds.
const ANNOUNCE_ROUNDS: u32 = 5;
const ANNOUNCE_PAUSE: Duration = Duration::from_secs(3);

/// After a rebuild: ask every registered node's peer service from the new
/// address, so each follows this host there (its /etc/hosts and DNS
/// route; see `join::peer`). The core hosts heard it during discovery;
/// the workers hear it here. With `moved` (a node rebuilt elsewhere and
/// moved by the join service), the others hear where it is now. Bounded:
/// a node that never answers keeps the old address until it next renews
/// through the join service.
pub async fn announce(
    site: Site,
    me: Credentials,
    own: Ipv4Addr,
    hosts: BTreeMap<HostName, Ipv4Addr>,
    moved: Option<Moved>,
) {
    let mut waiting: BTreeMap<HostName, Ipv4Addr> = hosts
        .into_iter()
        .filter(|(node, _)| *node != me.ticket.node)
        .filter(|(node, _)| moved.as_ref().is_none_or(|m| m.node != *node))
        .collect();
    for round in 0..ANNOUNCE_ROUNDS {
        if waiting.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(ANNOUNCE_PAUSE).await;
        }
        let mut asks = tokio::task::JoinSet::new();
        for (node, address) in &waiting {
            let (site, me, node, address) = (site.clone(), me.clone(), node.clone(), *address);
            let moved = moved.clone();
            asks.spawn(async move { (node, ask(&site, &me, own, address, moved).await) });
        }
        while let Some(Ok((node, result))) = asks.join_next().await {
            match result {
                Ok(answer) if answer.node.node == node => {
                    waiting.remove(&node);
                }
                Ok(answer) => tracing::warn!(
                    "{} answered at {node}'s registered address",
                    answer.node.node
                ),
                Err(e) => tracing::debug!("announce to {node}: {e:#}"),
            }
        }
    }
    if waiting.is_empty() {
        tracing::info!("every registered node knows this host at {own}");
    } else {
        tracing::warn!(
            "not told of this host's new address {own}: {:?}",
            waiting.keys().map(|h| h.as_str()).collect::<Vec<_>>()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BootstrapMoved, State};

    fn config() -> NodeConfig {
        let text = include_str!("../../contract/tests/node-v3.json");
        NodeConfig::from_json(text.as_bytes()).unwrap()
    }

    fn asked(config: &NodeConfig, address: [u8; 4], timestamp: u64) -> PeerRequest {
        PeerRequest {
            from: node_contract::Ticket {
                node: config.site.core[0].clone(),
                ..config.ticket()
            },
            address: address.into(),
            timestamp,
            nonce: protocol::nonce(),
            moved: None,
        }
    }

    fn hosts(paths: &Paths) -> String {
        std::fs::read_to_string(paths.etc_hosts()).unwrap_or_default()
    }

    #[test]
    fn a_joined_node_follows_the_bootstrap_host_only_forward_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let config = config();
        let bootstrap = config.site.core[0].clone();
        let old = std::net::Ipv4Addr::new(198, 18, 0, 10);

        // Not joined yet: nothing to follow.
        assert_eq!(
            record_move(&paths, &config, &asked(&config, [198, 18, 0, 50], 1000)).unwrap(),
            None
        );
        assert!(!paths.bootstrap_moved().exists());

        let mut state = State::new();
        state.bootstrap_address = Some(old);
        state.peers.insert(bootstrap.clone(), old);
        std::fs::create_dir_all(paths.state_dir()).unwrap();
        state.save(&paths.state_file()).unwrap();
        crate::resolver::write_hosts(&paths, &config.site.domain, &state.peers).unwrap();
        assert!(hosts(&paths).contains("198.18.0.10 "));

        // The same address: nothing moves.
        assert_eq!(
            record_move(&paths, &config, &asked(&config, [198, 18, 0, 10], 1000)).unwrap(),
            None
        );
        // A new address: followed, and /etc/hosts says so.
        assert_eq!(
            record_move(&paths, &config, &asked(&config, [198, 18, 0, 50], 2000)).unwrap(),
            Some(old)
        );
        let moved = BootstrapMoved::load(&paths.bootstrap_moved()).unwrap();
        assert_eq!(
            (moved.address, moved.since),
            ([198, 18, 0, 50].into(), 2000)
        );
        assert_eq!(
            crate::state::bootstrap_address(&paths, &state),
            Some([198, 18, 0, 50].into())
        );
        assert!(hosts(&paths).contains("198.18.0.50 "), "{}", hosts(&paths));
        assert!(!hosts(&paths).contains("198.18.0.10 "), "{}", hosts(&paths));
        // A phase rewriting /etc/hosts from its older view keeps the move.
        crate::resolver::write_hosts(&paths, &config.site.domain, &state.peers).unwrap();
        assert!(hosts(&paths).contains("198.18.0.50 "), "{}", hosts(&paths));

        // An older request (a replay from the old address) does not move
        // it back; neither does one outside the VPC.
        assert_eq!(
            record_move(&paths, &config, &asked(&config, [198, 18, 0, 10], 1500)).unwrap(),
            None
        );
        assert!(record_move(&paths, &config, &asked(&config, [10, 0, 0, 1], 3000)).is_err());
        assert_eq!(
            BootstrapMoved::load(&paths.bootstrap_moved())
                .unwrap()
                .address,
            std::net::Ipv4Addr::new(198, 18, 0, 50)
        );
    }

    #[test]
    fn a_joined_node_pins_a_rebuilt_peer_only_forward_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let config = config();
        // Another core host than the bootstrap host and this node.
        let peer = config
            .site
            .core
            .iter()
            .find(|n| **n != config.node && **n != config.site.core[0])
            .unwrap()
            .clone();
        let news = |node: &node_contract::HostName, address: [u8; 4], timestamp: u64| PeerRequest {
            moved: Some(Moved {
                node: node.clone(),
                address: address.into(),
            }),
            ..asked(&config, [198, 18, 0, 10], timestamp)
        };

        // Not joined yet: nothing to pin.
        assert_eq!(
            record_peer_move(&paths, &config, &news(&peer, [198, 18, 0, 60], 1000)).unwrap(),
            None
        );
        let mut state = State::new();
        state.bootstrap_address = Some([198, 18, 0, 10].into());
        state.peers.insert(peer.clone(), [198, 18, 0, 12].into());
        std::fs::create_dir_all(paths.state_dir()).unwrap();
        state.save(&paths.state_file()).unwrap();
        crate::resolver::write_hosts(&paths, &config.site.domain, &state.peers).unwrap();
        assert!(hosts(&paths).contains("198.18.0.12 "));

        // Joined: the peer's name moves, and stays moved when a phase
        // rewrites /etc/hosts from its older view.
        let pinned = record_peer_move(&paths, &config, &news(&peer, [198, 18, 0, 60], 2000))
            .unwrap()
            .unwrap();
        assert_eq!(pinned.address, std::net::Ipv4Addr::new(198, 18, 0, 60));
        crate::resolver::write_hosts(&paths, &config.site.domain, &state.peers).unwrap();
        let text = hosts(&paths);
        assert!(
            text.contains(&format!("198.18.0.60 {}", config.fqdn(&peer))),
            "{text}"
        );
        assert!(!text.contains("198.18.0.12 "), "{text}");

        // Older news (a replay), news about this node itself, and an
        // address outside the VPC change nothing.
        assert_eq!(
            record_peer_move(&paths, &config, &news(&peer, [198, 18, 0, 12], 1500)).unwrap(),
            None
        );
        assert_eq!(
            record_peer_move(&paths, &config, &news(&config.node, [198, 18, 0, 99], 3000)).unwrap(),
            None
        );
        assert!(record_peer_move(&paths, &config, &news(&peer, [10, 0, 0, 1], 4000)).is_err());
        let text = hosts(&paths);
        assert!(text.contains("198.18.0.60 "), "{text}");
        assert!(
            !text.contains("198.18.0.99 ") && !text.contains("10.0.0.1 "),
            "{text}"
        );
    }

    /// `ask` refuses an answer that claims another address, for that
    /// alone: the same genuine answer (signed by the node its ticket
    /// names, over the asker's nonce, under the site's key) is taken when
    /// it claims the address it came from.
    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_claiming_another_address_is_refused() {
        use node_contract::{Generation, HostName, Seed, SigningKey};
        let config = config();
        let site_key = SigningKey::from_seed(&Seed::from_bytes([3; 32]));
        let site = Site {
            site_key: site_key.public_key(),
            ..Site::of(&config)
        };
        let credentials = |node: &HostName, seed: u8| {
            let seed = Seed::from_bytes([seed; 32]);
            let key = SigningKey::from_seed(&seed);
            let ticket = site_key.ticket(
                &site.domain,
                node,
                Role::Core,
                Generation::FIRST,
                key.public_key(),
            );
            Credentials {
                key,
                ticket,
                seed,
                backup_key: None,
            }
        };
        let me = credentials(&site.bootstrap, 5);
        let peer = credentials(&HostName::parse("node2").unwrap(), 7);
        // A loopback address of its own for the peer service's fixed port:
        // a bind that fails says so, nothing is assumed free.
        let address = Ipv4Addr::new(127, 19, 44, 2);
        let listener = tokio::net::TcpListener::bind((address, PEER_PORT))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {address}:{PEER_PORT}: {e}"));
        let cert = crate::pki::self_signed("node2.lab.example.org").unwrap();
        let identity =
            Identity::Fixed(https::server_config(&cert.cert_pem, &cert.key_pem).unwrap());
        let claimed = std::sync::Arc::new(std::sync::Mutex::new(address));
        let claim = claimed.clone();
        let ticket = peer.ticket.clone();
        let key = std::sync::Arc::new(peer.key);
        tokio::spawn(https::serve(
            listener,
            identity,
            https::LIMITS,
            move |request| {
                let asked: PeerRequest = serde_json::from_slice(&request.body).unwrap();
                let body = serde_json::to_vec(&PeerAnswer {
                    node: ticket.clone(),
                    addresses: vec![*claim.lock().unwrap()],
                    etcd_data: true,
                    ca_backup: None,
                    freeipa_ca: None,
                    etcd_sub_ca: None,
                    identity_sub_ca: None,
                    identity_step: None,
                })
                .unwrap();
                let proof = protocol::sign_answer(&key, Purpose::PeerAnswer, &asked.nonce, &body);
                async move { Response::json(body).with_header(SIGNATURE_HEADER, proof) }
            },
        ));
        let own = Ipv4Addr::new(127, 19, 44, 1);
        let answer = ask(&site, &me, own, address, None).await.unwrap();
        assert_eq!(answer.addresses, vec![address]);
        *claimed.lock().unwrap() = Ipv4Addr::new(127, 19, 44, 3);
        let refused = ask(&site, &me, own, address, None).await.unwrap_err();
        assert_eq!(
            refused.to_string(),
            "node2 answered from 127.19.44.2, which it does not claim ([127.19.44.3])"
        );
    }
}
