//! The join protocol, pure: messages, their authentication, the checks
//! the bootstrap host makes. No I/O here, so every refusal is unit-tested.
//!
//! Trust comes from the credentials, not from TLS or addresses: a request
//! carries an HMAC under the joiner's credential (HMAC of its name under
//! the site secret, which only the bootstrap host holds), and the answer
//! an HMAC under the same credential over the request's nonce and the
//! answer's bytes. So the bootstrap host knows who asks, the joiner knows
//! who answers, and neither trusts on first use. TLS only hides the talk.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use hmac::{Hmac, Mac};
use node_contract::Role;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ca::{CsrRefusal, TempCa};
use crate::net::Cidr;

pub const JOIN_PATH: &str = "/v1/join";
/// Header carrying the request's HMAC (hex).
pub const AUTH_HEADER: &str = "x-firstboot-auth";
/// Header carrying the answer's HMAC (hex).
pub const PROOF_HEADER: &str = "x-firstboot-proof";
/// Requests are small JSON; anything bigger is refused unread.
pub const MAX_BODY: usize = 64 * 1024;
/// How far a request's clock may be from ours, in seconds.
pub const MAX_SKEW: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub node: String,
    pub addresses: Vec<Ipv4Addr>,
    pub csr_pem: String,
    /// Unix seconds.
    pub timestamp: u64,
    /// 32 hex digits, fresh for every request.
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponse {
    pub certificate_pem: String,
    pub ca_pem: String,
    /// Every node joined so far, this one included.
    pub peers: BTreeMap<String, Ipv4Addr>,
    /// The temporary DNS server.
    pub dns: Ipv4Addr,
    /// The temporary CA and registry, sealed under the site secret: core
    /// hosts keep it for a rebuilt bootstrap host (see `backup`).
    pub ca_backup: String,
}

/// Why a request was refused: logged on the bootstrap host, sent back as
/// the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooLarge,
    Malformed(String),
    UnknownNode(String),
    BadCredential(String),
    Stale { skew: u64 },
    Replayed,
    Address(String),
    Csr(CsrRefusal),
}

impl Refusal {
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::TooLarge => 413,
            Refusal::Malformed(_) => 400,
            Refusal::UnknownNode(_)
            | Refusal::BadCredential(_)
            | Refusal::Stale { .. }
            | Refusal::Replayed => 403,
            Refusal::Address(_) | Refusal::Csr(_) => 422,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge => write!(f, "the request is larger than {MAX_BODY} bytes"),
            Refusal::Malformed(why) => write!(f, "malformed request: {why}"),
            Refusal::UnknownNode(n) => write!(f, "`{n}` is not a host of this site"),
            Refusal::BadCredential(n) => write!(f, "the credential for `{n}` does not verify"),
            Refusal::Stale { skew } => write!(
                f,
                "the request's clock is {skew} s off (at most {MAX_SKEW})"
            ),
            Refusal::Replayed => write!(f, "this request was seen before (replay)"),
            Refusal::Address(why) => write!(f, "address refused: {why}"),
            Refusal::Csr(why) => write!(f, "CSR refused: {why}"),
        }
    }
}

fn mac(credential_hex: &str, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // The credential is the key; its hex spelling is what both sides hold.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(credential_hex.as_bytes()).expect("any key length");
    mac.update(label);
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The request's HMAC, hex.
pub fn request_mac(credential: &str, body: &[u8]) -> String {
    hex::encode(
        mac(credential, b"firstboot join request v1\0", &[body])
            .finalize()
            .into_bytes(),
    )
}

/// The answer's HMAC over the request's nonce and the answer's bytes, hex.
pub fn response_mac(credential: &str, nonce: &str, body: &[u8]) -> String {
    hex::encode(
        mac(
            credential,
            b"firstboot join response v1\0",
            &[nonce.as_bytes(), body],
        )
        .finalize()
        .into_bytes(),
    )
}

/// Constant-time check of a hex HMAC against the expected message.
fn verify(mac: Hmac<Sha256>, given_hex: &str) -> bool {
    match hex::decode(given_hex) {
        Ok(given) => mac.verify_slice(&given).is_ok(),
        Err(_) => false,
    }
}

pub fn verify_request(credential: &str, body: &[u8], given: &str) -> bool {
    verify(
        mac(credential, b"firstboot join request v1\0", &[body]),
        given,
    )
}

pub fn verify_response(credential: &str, nonce: &str, body: &[u8], given: &str) -> bool {
    verify(
        mac(
            credential,
            b"firstboot join response v1\0",
            &[nonce.as_bytes(), body],
        ),
        given,
    )
}

/// Nonces seen within the clock window: a captured request cannot be
/// played again while its timestamp is still acceptable.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<String, u64>,
}

impl ReplayGuard {
    fn check(&mut self, nonce: &str, timestamp: u64, now: u64) -> Result<(), Refusal> {
        let skew = now.abs_diff(timestamp);
        if skew > MAX_SKEW {
            return Err(Refusal::Stale { skew });
        }
        self.seen.retain(|_, t| now.abs_diff(*t) <= MAX_SKEW);
        if self.seen.insert(nonce.to_owned(), timestamp).is_some() {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }
}

/// What the bootstrap host knows to judge a request.
pub struct Authority<'a> {
    pub domain: &'a str,
    pub site_secret: &'a str,
    pub hosts: &'a [(String, Role)],
    pub vpc: Cidr,
    pub ca: &'a TempCa,
}

/// A request that passed every check: who, where, and its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub node: String,
    pub address: Ipv4Addr,
    pub certificate_pem: String,
    pub nonce: String,
}

impl Authority<'_> {
    /// Judge one request: `source` is the TCP peer's address, `auth` the
    /// HMAC header. Checks run cheapest first; nothing is signed, stored
    /// or answered unless all pass.
    pub fn admit(
        &self,
        source: Ipv4Addr,
        auth: Option<&str>,
        body: &[u8],
        replay: &mut ReplayGuard,
        now: u64,
    ) -> Result<Admitted, Refusal> {
        if body.len() > MAX_BODY {
            return Err(Refusal::TooLarge);
        }
        let request: JoinRequest =
            serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if !self.hosts.iter().any(|(name, _)| *name == request.node) {
            return Err(Refusal::UnknownNode(request.node));
        }
        let credential = node_contract::join_credential(self.site_secret, &request.node);
        if !auth.is_some_and(|given| verify_request(&credential, body, given)) {
            return Err(Refusal::BadCredential(request.node));
        }
        if request.nonce.len() != 32 || hex::decode(&request.nonce).is_err() {
            return Err(Refusal::Malformed("the nonce is not 32 hex digits".into()));
        }
        replay.check(&request.nonce, request.timestamp, now)?;
        if !request.addresses.contains(&source) {
            return Err(Refusal::Address(format!(
                "the request comes from {source}, which is not among the addresses it claims"
            )));
        }
        if let Some(outside) = request.addresses.iter().find(|a| !self.vpc.contains(**a)) {
            return Err(Refusal::Address(format!(
                "{outside} is outside the site VPC"
            )));
        }
        let fqdn = format!("{}.{}", request.node, self.domain);
        let certificate_pem = self
            .ca
            .sign_csr(&request.csr_pem, &fqdn)
            .map_err(Refusal::Csr)?;
        Ok(Admitted {
            node: request.node,
            address: source,
            certificate_pem,
            nonce: request.nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca;

    const SECRET: &str = "site-secret";
    const DOMAIN: &str = "lab.example.org";

    fn hosts() -> Vec<(String, Role)> {
        ["node1", "node2", "node3"]
            .iter()
            .map(|n| (n.to_string(), Role::Core))
            .collect()
    }

    fn request(node: &str, csr_for: &str, nonce: &str, timestamp: u64) -> Vec<u8> {
        let (_, csr) = ca::new_key_and_csr(&format!("{csr_for}.{DOMAIN}")).unwrap();
        serde_json::to_vec(&JoinRequest {
            node: node.into(),
            addresses: vec![Ipv4Addr::new(198, 18, 0, 11)],
            csr_pem: csr,
            timestamp,
            nonce: nonce.into(),
        })
        .unwrap()
    }

    fn judge(
        auth_as: &str,
        body: &[u8],
        replay: &mut ReplayGuard,
        ca: &TempCa,
    ) -> Result<Admitted, Refusal> {
        let hosts = hosts();
        let authority = authority(&hosts, ca);
        let credential = node_contract::join_credential(SECRET, auth_as);
        let auth = request_mac(&credential, body);
        authority.admit(
            Ipv4Addr::new(198, 18, 0, 11),
            Some(&auth),
            body,
            replay,
            1_000_000,
        )
    }

    fn authority<'a>(hosts: &'a [(String, Role)], ca: &'a TempCa) -> Authority<'a> {
        Authority {
            domain: DOMAIN,
            site_secret: SECRET,
            hosts,
            vpc: Cidr::parse("198.18.0.0/24").unwrap(),
            ca,
        }
    }

    const N1: &str = "0123456789abcdef0123456789abcdef";
    const N2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn an_honest_request_is_admitted_once() {
        let ca = TempCa::create(DOMAIN).unwrap();
        let mut replay = ReplayGuard::default();
        let body = request("node2", "node2", N1, 1_000_000);
        let admitted = judge("node2", &body, &mut replay, &ca).unwrap();
        assert_eq!(admitted.node, "node2");
        let (names, ip) = ca::cert_names(&admitted.certificate_pem).unwrap();
        assert_eq!((names, ip), (vec![format!("node2.{DOMAIN}")], false));
        assert_eq!(
            judge("node2", &body, &mut replay, &ca),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn forged_and_foreign_requests_are_refused() {
        let ca = TempCa::create(DOMAIN).unwrap();
        let mut replay = ReplayGuard::default();
        // Signed with node3's credential, claiming to be node2.
        let body = request("node2", "node2", N1, 1_000_000);
        assert_eq!(
            judge("node3", &body, &mut replay, &ca),
            Err(Refusal::BadCredential("node2".into()))
        );
        // node2's own credential, but a CSR for node3's name.
        let body = request("node2", "node3", N2, 1_000_000);
        assert!(matches!(
            judge("node2", &body, &mut replay, &ca),
            Err(Refusal::Csr(_))
        ));
        // Not a host of the site.
        let body = request("intruder", "intruder", N1, 1_000_000);
        assert_eq!(
            judge("intruder", &body, &mut replay, &ca),
            Err(Refusal::UnknownNode("intruder".into()))
        );
        // Too old.
        let body = request("node2", "node2", N1, 1_000_000 - MAX_SKEW - 1);
        assert!(matches!(
            judge("node2", &body, &mut replay, &ca),
            Err(Refusal::Stale { .. })
        ));
        // Garbage and oversized bodies.
        assert!(matches!(
            judge("node2", b"\x00\xffnot json", &mut replay, &ca),
            Err(Refusal::Malformed(_))
        ));
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            judge("node2", &big, &mut replay, &ca),
            Err(Refusal::TooLarge)
        );
    }

    #[test]
    fn a_missing_or_garbled_header_is_a_bad_credential() {
        let ca = TempCa::create(DOMAIN).unwrap();
        let hosts = hosts();
        let authority = authority(&hosts, &ca);
        let body = request("node2", "node2", N1, 1_000_000);
        let mut replay = ReplayGuard::default();
        let source = Ipv4Addr::new(198, 18, 0, 11);
        for auth in [None, Some("zz"), Some("00")] {
            let got = authority.admit(source, auth, &body, &mut replay, 1_000_000);
            assert_eq!(got, Err(Refusal::BadCredential("node2".into())));
        }
    }

    #[test]
    fn a_source_address_it_does_not_claim_is_refused() {
        let ca = TempCa::create(DOMAIN).unwrap();
        let hosts = hosts();
        let authority = authority(&hosts, &ca);
        let body = request("node2", "node2", N1, 1_000_000);
        let auth = request_mac(&node_contract::join_credential(SECRET, "node2"), &body);
        let got = authority.admit(
            Ipv4Addr::new(198, 18, 0, 99),
            Some(&auth),
            &body,
            &mut ReplayGuard::default(),
            1_000_000,
        );
        assert!(matches!(got, Err(Refusal::Address(_))), "{got:?}");
    }

    #[test]
    fn answers_are_bound_to_the_request_and_the_credential() {
        let credential = node_contract::join_credential(SECRET, "node2");
        let proof = response_mac(&credential, N1, b"answer");
        assert!(verify_response(&credential, N1, b"answer", &proof));
        assert!(
            !verify_response(&credential, N2, b"answer", &proof),
            "another request's answer"
        );
        assert!(
            !verify_response(&credential, N1, b"answer!", &proof),
            "a changed answer"
        );
        let other = node_contract::join_credential(SECRET, "node3");
        assert!(
            !verify_response(&other, N1, b"answer", &proof),
            "another node's credential"
        );
    }
}
