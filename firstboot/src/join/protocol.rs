//! The join and peer protocols, pure: messages, their signatures, the
//! checks the bootstrap host makes and the admission rules. No I/O here,
//! so every refusal is unit-tested.
//!
//! Trust comes from node keys, not from TLS or addresses (ARCHITECTURE §4):
//! every request carries the sender's ticket (the site key's signature
//! over its name, role and public key) and is signed with the sender's own
//! key; every answer carries the answerer's ticket and is signed over the
//! request's nonce and the answer's bytes. So the bootstrap host knows who
//! asks, the asker knows who answers, and neither trusts on first use.
//! No node holds anything from which another node's key can be made.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use node_contract::identity::{Forgery, Purpose};
use node_contract::{
    Admission, DomainName, Generation, HostName, PublicKey, Role, Signature, SigningKey, Ticket,
    VpcRange,
};
use serde::{Deserialize, Serialize};

use crate::certs::moved::Step;
use crate::certs::plan::{CertPurpose, Plan};
use crate::pki::{CsrRefusal, TempCa};

/// v3: CSRs and certificates keyed by the certificate plan's purposes.
pub const JOIN_PATH: &str = "/v3/join";
/// The join paths of earlier firstboot releases, refused with a reason.
pub const EARLIER_JOIN_PATHS: &[&str] = &["/v2/join", "/v1/join"];
pub const PEER_PATH: &str = "/v2/peer";
pub const ENROLL_PATH: &str = "/v2/enroll";
/// Where a node reports its handoff steps and learns every node's.
pub const HANDOFF_PATH: &str = "/v1/handoff";
/// Header carrying a message's signature (hex).
pub const SIGNATURE_HEADER: &str = "x-firstboot-signature";
/// Requests are small JSON; anything bigger is refused unread.
pub const MAX_BODY: usize = 64 * 1024;
/// How far a request's clock may be from ours, in seconds.
pub const MAX_SKEW: u64 = 300;
/// How long after the temporary CA is made a host that never joined may
/// still join: the site assembles in minutes; a rebuilt host (a newer
/// generation) comes back through [`Decision::Rebuilt`] whatever the hour,
/// and a host added later through its own [`Admission`].
pub const ADMISSION_WINDOW: u64 = node_contract::identity::ADMISSION_WINDOW;

/// A node asking to be admitted, or to have its certificates renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub ticket: Ticket,
    pub addresses: Vec<Ipv4Addr>,
    /// A CSR for each certificate of the plan the node holds
    /// (`certs::plan::held_by` its role), keyed by purpose.
    pub csrs: BTreeMap<CertPurpose, String>,
    /// Unix seconds.
    pub timestamp: u64,
    /// 32 hex digits, fresh for every request.
    pub nonce: String,
    /// The site's admission of this credential, when its config has one
    /// (a host added after the bootstrap host's own window closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

/// A certificate the join service signed, and its issuer's certificate
/// (what the plan row's trust file holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// The bootstrap host's answer, signed over the request's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinAnswer {
    /// Who answers: must be the site's bootstrap host.
    pub bootstrap: Ticket,
    /// One for each CSR of the request.
    pub certificates: BTreeMap<CertPurpose, Issued>,
    /// Every node registered so far, this one included.
    pub peers: BTreeMap<HostName, Ipv4Addr>,
    /// The temporary DNS server.
    pub dns: Ipv4Addr,
    /// FreeIPA's DNS servers (port 53), once the temporary DNS has ended
    /// (handoff): a host that joins later asks them, and them alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeipa_dns: Vec<Ipv4Addr>,
    /// The temporary CAs sealed under the bootstrap host's own key: core
    /// hosts keep it for a rebuilt bootstrap host (see `backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_backup: Option<String>,
    /// This node was registered before under an older generation of its
    /// credential: it was rebuilt, and a core host rejoins the etcd
    /// cluster it was a member of rather than forming one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebuilt: bool,
    /// This node is a core host the site was not launched with: it joins
    /// the etcd cluster the others run (a member added through them)
    /// rather than forming one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added_core: bool,
}

impl JoinAnswer {
    /// The certificate issued for `purpose`, or an error saying it is
    /// missing.
    pub fn issued(&self, purpose: CertPurpose) -> Result<&Issued, String> {
        self.certificates
            .get(&purpose)
            .ok_or_else(|| format!("the answer holds no {purpose} certificate"))
    }
}

/// The bootstrap host asking a peer about itself and its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    pub from: Ticket,
    /// The bootstrap host's VPC address, which the request must come
    /// from: peers follow a rebuilt bootstrap host there, and a request
    /// replayed from elsewhere is refused.
    pub address: Ipv4Addr,
    pub timestamp: u64,
    pub nonce: String,
    /// News the bootstrap host passes on: a node rebuilt elsewhere (the
    /// join service moved it), so that peers pin its name to its new
    /// address (etcd checks a peer's certificate against it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
}

/// A registered node now at another address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moved {
    pub node: HostName,
    pub address: Ipv4Addr,
}

/// A peer's answer, signed over the request's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAnswer {
    pub node: Ticket,
    /// The peer's addresses in the site VPC.
    pub addresses: Vec<Ipv4Addr>,
    /// The peer has etcd data: a cluster exists.
    pub etcd_data: bool,
    /// The sealed copy of the temporary CAs this core peer keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_backup: Option<String>,
    /// The IPA CA certificate, when this core peer runs a configured
    /// FreeIPA server: a rebuilt first server joins that deployment as a
    /// replica instead of installing a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeipa_ca: Option<String>,
    /// The `etcd` sub-CA's certificate, once this core peer's etcd has
    /// begun to move to it (handoff): a rebuilt bootstrap host then gets
    /// its own etcd certificate from that sub-CA, since the members would
    /// refuse a temporary one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_sub_ca: Option<String>,
    /// The `firstboot` sub-CA's certificate, once this core peer's
    /// identity has begun to move to it: a rebuilt bootstrap host then
    /// gets its identity from that sub-CA, which the nodes trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_sub_ca: Option<String>,
    /// The last step of this node's identity move (handoff): a rebuilt
    /// bootstrap host, whose record of every node's step was lost with
    /// it, learns here the steps of nodes that finished and report no
    /// more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_step: Option<Step>,
}

/// A joined node asking for its FreeIPA enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub ticket: Ticket,
    pub timestamp: u64,
    pub nonce: String,
}

/// How a node enrolls in FreeIPA: which server, with which one-time
/// password. Sent only over TLS the node verified against the temporary
/// CA (it has it since it joined), so the password is never in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollAnswer {
    pub bootstrap: Ticket,
    /// The FreeIPA server to enroll with (the first server).
    pub server: String,
    /// Always there from this version on (a rebuilt node enrolls again);
    /// older bootstrap hosts left it out for a host enrolled already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<String>,
}

/// A joined node saying where its identity's move to FreeIPA stands
/// (phase handoff, `handoff::identity`), and asking where every node's
/// does: the roll's barriers span every node, and workers cannot read
/// etcd, so every node reports here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffReport {
    pub ticket: Ticket,
    /// The last step this node finished; none before the first.
    pub identity: Option<Step>,
    pub timestamp: u64,
    pub nonce: String,
}

/// The bootstrap host's answer, signed over the report's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffAnswer {
    pub bootstrap: Ticket,
    /// The bootstrap host ended the temporary services (every node had
    /// moved): the temporary DNS is stopped and the temporary CA signs
    /// nothing more.
    #[serde(default)]
    pub temporary_ended: bool,
    /// The certificate of the sub-CA identities move to, once the
    /// handoff's first step has made it (the bootstrap host took it from
    /// FreeIPA).
    pub identity_ca: Option<String>,
    /// Every registered node, this one included, with the last step it
    /// reported (none yet: not reported, or rebuilt since).
    pub identity: BTreeMap<HostName, Option<Step>>,
    /// To a core host once the temporary services ended: the sealed copy
    /// with the registry alone, which replaces its copy with the CA keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_backup: Option<String>,
}

/// Why a request was refused: logged by the refuser, sent back as the
/// error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooLarge,
    Malformed(String),
    Forged(Forgery),
    /// A valid ticket, but not one this service answers.
    NotAllowed(String),
    Stale {
        skew: u64,
    },
    Replayed,
    /// The nonces seen were lost: requests stamped before `since` are
    /// refused until they could no longer pass the clock check.
    FreshWindow {
        since: u64,
    },
    Address(String),
    /// No more hosts that never joined are admitted.
    Closed(String),
    /// The node is registered at another address with this same
    /// credential: only a newer generation moves a name.
    Taken {
        node: HostName,
        at: Ipv4Addr,
        generation: Generation,
    },
    /// The credential is older than one the site has seen for this name:
    /// the operator retired it.
    Retired {
        node: HostName,
        shown: Generation,
        known: Generation,
    },
    Csr(CsrRefusal),
    /// The join service cannot sign what was asked (its temporary CAs
    /// lack a signer its plan names): its fault, not the requester's.
    Unavailable(String),
}

impl Refusal {
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::TooLarge => 413,
            Refusal::Malformed(_) => 400,
            Refusal::Forged(_)
            | Refusal::NotAllowed(_)
            | Refusal::Stale { .. }
            | Refusal::Replayed
            | Refusal::FreshWindow { .. }
            | Refusal::Retired { .. }
            | Refusal::Closed(_) => 403,
            Refusal::Taken { .. } => 409,
            Refusal::Address(_) | Refusal::Csr(_) => 422,
            Refusal::Unavailable(_) => 503,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge => write!(f, "the request is larger than {MAX_BODY} bytes"),
            Refusal::Malformed(why) => write!(f, "malformed request: {why}"),
            Refusal::Forged(why) => write!(f, "forged request: {why}"),
            Refusal::NotAllowed(why) => write!(f, "not allowed: {why}"),
            Refusal::Stale { skew } => write!(
                f,
                "the request's clock is {skew} s off (at most {MAX_SKEW})"
            ),
            Refusal::Replayed => write!(f, "this request was seen before (replay)"),
            Refusal::FreshWindow { since } => write!(
                f,
                "the bootstrap host lost its record of the requests it saw and refuses any \
                 stamped before {since} (Unix seconds); a new request passes"
            ),
            Refusal::Address(why) => write!(f, "address refused: {why}"),
            Refusal::Closed(why) => write!(
                f,
                "the join service admits no new hosts ({why}); later hosts join through FreeIPA"
            ),
            Refusal::Taken {
                node,
                at,
                generation,
            } => write!(
                f,
                "{node} is registered at {at} with this credential (generation {generation}); \
                 a name moves only for a newer one, whether {at} answers or not: a rebuilt \
                 {node} is destroyed and launched again (`builder destroy --host {node}`, \
                 then `builder launch`), which issues the next generation"
            ),
            Refusal::Retired { node, shown, known } => write!(
                f,
                "{node}'s credential of generation {shown} is retired: the site knows \
                 generation {known}; this user data belongs to a destroyed droplet"
            ),
            Refusal::Csr(why) => write!(f, "CSR refused: {why}"),
            Refusal::Unavailable(why) => write!(f, "the join service cannot sign now: {why}"),
        }
    }
}

/// A fresh nonce: 32 hex digits.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn check_nonce(nonce: &str) -> Result<(), Refusal> {
    if nonce.len() != 32 || hex::decode(nonce).is_err() {
        return Err(Refusal::Malformed("the nonce is not 32 hex digits".into()));
    }
    Ok(())
}

fn check_clock(timestamp: u64, now: u64) -> Result<(), Refusal> {
    let skew = now.abs_diff(timestamp);
    if skew > MAX_SKEW {
        return Err(Refusal::Stale { skew });
    }
    Ok(())
}

/// The signature header's value.
pub fn signature_header(signature: &Signature) -> String {
    signature.to_hex()
}

fn parse_signature(header: Option<&str>) -> Option<Signature> {
    header.and_then(|h| Signature::from_hex(h).ok())
}

/// What a service knows to check tickets: the site.
#[derive(Debug, Clone)]
pub struct Site {
    pub domain: DomainName,
    pub site_key: PublicKey,
    pub vpc: VpcRange,
    /// The bootstrap host: the first core host.
    pub bootstrap: HostName,
    /// Every core host (FreeIPA's servers, etcd's members).
    pub core: Vec<HostName>,
}

impl Site {
    pub fn of(config: &node_contract::NodeConfig) -> Site {
        Site {
            domain: config.site.domain.clone(),
            site_key: config.site.site_key,
            vpc: config.site.vpc_range,
            bootstrap: config.bootstrap_host().clone(),
            core: config.site.core.clone(),
        }
    }

    /// Parse a signed request and check its sender: the ticket is the
    /// site's, the signature is the ticket's key's over `purpose`.
    fn signed<T: for<'de> Deserialize<'de>>(
        &self,
        body: &[u8],
        signature: Option<&str>,
        purpose: Purpose,
        ticket_of: impl Fn(&T) -> &Ticket,
    ) -> Result<T, Refusal> {
        if body.len() > MAX_BODY {
            return Err(Refusal::TooLarge);
        }
        self.verified(body, signature, purpose, &[body], ticket_of)
    }

    /// Check an answer signed over `nonce` by the node its ticket names.
    pub fn check_answer<T: for<'de> Deserialize<'de>>(
        &self,
        body: &[u8],
        signature: Option<&str>,
        nonce: &str,
        purpose: Purpose,
        ticket_of: impl Fn(&T) -> &Ticket,
    ) -> Result<T, Refusal> {
        self.verified(
            body,
            signature,
            purpose,
            &[nonce.as_bytes(), body],
            ticket_of,
        )
    }

    /// `body` parsed, once the site vouched for the ticket inside it and
    /// that ticket's key signed `parts` for `purpose`.
    fn verified<T: for<'de> Deserialize<'de>>(
        &self,
        body: &[u8],
        signature: Option<&str>,
        purpose: Purpose,
        parts: &[&[u8]],
        ticket_of: impl Fn(&T) -> &Ticket,
    ) -> Result<T, Refusal> {
        let message: T =
            serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let ticket = ticket_of(&message);
        let Some(signature) = parse_signature(signature) else {
            return Err(Refusal::Forged(Forgery::Message(ticket.node.clone())));
        };
        ticket
            .verify_message(&self.site_key, &self.domain, purpose, parts, &signature)
            .map_err(Refusal::Forged)?;
        Ok(message)
    }
}

/// Sign a request body with this node's key.
pub fn sign_request(key: &SigningKey, purpose: Purpose, body: &[u8]) -> String {
    signature_header(&key.sign(purpose, &[body]))
}

/// Sign an answer to the request with `nonce`.
pub fn sign_answer(key: &SigningKey, purpose: Purpose, nonce: &str, body: &[u8]) -> String {
    signature_header(&key.sign(purpose, &[nonce.as_bytes(), body]))
}

/// Nonces seen within the clock window: a captured request cannot be
/// played again while its timestamp is still acceptable. The join service
/// keeps it on disk (`join::replay`), so a restart forgets nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayGuard {
    seen: HashMap<String, u64>,
    /// A fresh window: requests stamped before this are refused (the
    /// record of the nonces seen was lost; see `join::replay`).
    #[serde(default, skip_serializing_if = "is_zero")]
    not_before: u64,
    /// When expired nonces were last dropped (our clock).
    #[serde(skip)]
    pruned_at: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a replay guard is kept: in memory (tests), or on disk as well.
pub trait Replay {
    /// Record `nonce`; a refusal if it was seen, or the clock is off.
    fn check(&mut self, nonce: &str, timestamp: u64, now: u64) -> Result<(), Refusal>;
}

impl ReplayGuard {
    /// A guard that refuses every request stamped before `since`.
    pub fn fresh_window(since: u64) -> ReplayGuard {
        ReplayGuard {
            not_before: since,
            ..ReplayGuard::default()
        }
    }

    /// Take a nonce seen before (from the record on disk).
    pub fn remember(&mut self, nonce: &str, timestamp: u64) {
        self.seen.insert(nonce.to_owned(), timestamp);
    }

    /// The nonces still inside the window at `now`, for a compacted record.
    pub fn live(&self, now: u64) -> impl Iterator<Item = (&str, u64)> {
        self.seen
            .iter()
            .filter(move |(_, t)| **t + MAX_SKEW >= now)
            .map(|(n, t)| (n.as_str(), *t))
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn not_before(&self) -> u64 {
        self.not_before
    }
}

impl Replay for ReplayGuard {
    fn check(&mut self, nonce: &str, timestamp: u64, now: u64) -> Result<(), Refusal> {
        check_clock(timestamp, now)?;
        if timestamp < self.not_before {
            return Err(Refusal::FreshWindow {
                since: self.not_before,
            });
        }
        // Drop a nonce only once its timestamp has left the window by our
        // clock, never because our clock went back (a first boot's clock
        // often jumps when time sync starts): what is dropped could no
        // longer pass the clock check. At most once a second: a flood of
        // requests does not rescan the set for each.
        if now > self.pruned_at {
            self.seen.retain(|_, t| *t + MAX_SKEW >= now);
            self.pruned_at = now;
        }
        if self.seen.insert(nonce.to_owned(), timestamp).is_some() {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }
}

/// A join request whose sender is proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub request: JoinRequest,
    /// The address it joins from (its TCP source, among those it claims).
    pub address: Ipv4Addr,
    /// Until when the site's own admission of this credential lets it
    /// join (Unix seconds), when it shows one: its signature is checked.
    pub admitted_until: Option<u64>,
    /// A core host the site was not launched with (its admission shown):
    /// it joins the etcd cluster and FreeIPA deployment the others run.
    pub added_core: bool,
}

impl Verified {
    pub fn node(&self) -> &HostName {
        &self.request.ticket.node
    }
}

impl Site {
    /// Check a join request, cheapest checks first: shape, ticket,
    /// signature, nonce, clock and replay, addresses, and that `plan`
    /// gives the requester's role every certificate it asks for.
    pub fn verify_join(
        &self,
        plan: Plan,
        source: Ipv4Addr,
        signature: Option<&str>,
        body: &[u8],
        replay: &mut impl Replay,
        now: u64,
    ) -> Result<Verified, Refusal> {
        let request: JoinRequest =
            self.signed(body, signature, Purpose::JoinRequest, |r: &JoinRequest| {
                &r.ticket
            })?;
        check_nonce(&request.nonce)?;
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
        let role = request.ticket.role;
        let added_core = role == Role::Core && !self.core.contains(&request.ticket.node);
        if added_core && request.admission.is_none() {
            // Every node's config names the core hosts the site was
            // launched with; one added since is known to the site only by
            // the admission `builder launch` signed for it (checked below).
            return Err(Refusal::NotAllowed(format!(
                "{} is a core host this site was not launched with (its core hosts are {}),                  and it shows no admission: a core host added later joins with the config                  `builder launch` gives it",
                request.ticket.node,
                self.core
                    .iter()
                    .map(HostName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(purpose) = request
            .csrs
            .keys()
            .find(|p| !plan.row(**p).is_some_and(|row| row.holders.include(role)))
        {
            return Err(Refusal::NotAllowed(format!(
                "{} is a {role}: {purpose} certificates are not for its role",
                request.ticket.node
            )));
        }
        if request.csrs.is_empty() {
            return Err(Refusal::NotAllowed(format!(
                "{} asks for no certificate",
                request.ticket.node
            )));
        }
        let admitted_until = match &request.admission {
            None => None,
            Some(admission) => {
                admission
                    .verify(&self.site_key, &self.domain, &request.ticket)
                    .map_err(Refusal::Forged)?;
                Some(admission.not_after)
            }
        };
        Ok(Verified {
            request,
            address: source,
            admitted_until,
            added_core,
        })
    }

    /// Check an enrollment request: a node the site vouches for, signing
    /// with its key, with a fresh nonce.
    pub fn verify_enroll(
        &self,
        signature: Option<&str>,
        body: &[u8],
        replay: &mut impl Replay,
        now: u64,
    ) -> Result<EnrollRequest, Refusal> {
        let request: EnrollRequest = self.signed(
            body,
            signature,
            Purpose::EnrollRequest,
            |r: &EnrollRequest| &r.ticket,
        )?;
        check_nonce(&request.nonce)?;
        replay.check(&request.nonce, request.timestamp, now)?;
        Ok(request)
    }

    /// Check a handoff report: signed by a node of the site, fresh, and
    /// never seen before.
    pub fn verify_handoff(
        &self,
        signature: Option<&str>,
        body: &[u8],
        replay: &mut impl Replay,
        now: u64,
    ) -> Result<HandoffReport, Refusal> {
        let request: HandoffReport = self.signed(
            body,
            signature,
            Purpose::HandoffReport,
            |r: &HandoffReport| &r.ticket,
        )?;
        check_nonce(&request.nonce)?;
        replay.check(&request.nonce, request.timestamp, now)?;
        Ok(request)
    }

    /// Check a peer request: only the bootstrap host may ask.
    pub fn verify_peer_request(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<PeerRequest, Refusal> {
        let request: PeerRequest =
            self.signed(body, signature, Purpose::PeerRequest, |r: &PeerRequest| {
                &r.from
            })?;
        check_nonce(&request.nonce)?;
        check_clock(request.timestamp, now)?;
        if request.from.node != self.bootstrap || request.from.role != Role::Core {
            return Err(Refusal::NotAllowed(format!(
                "only the bootstrap host {} asks peers; {} may not",
                self.bootstrap, request.from.node
            )));
        }
        Ok(request)
    }
}

/// Who may join, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionRule {
    /// Hosts in the site, core and workers.
    pub hosts: u32,
    /// Unix seconds after which no host that never joined is admitted.
    pub deadline: u64,
}

/// What a verified request amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A host joining for the first time.
    New,
    /// A registered host renewing its certificates from where it was.
    Renew,
    /// A registered host with a newer credential than the registered one
    /// (the operator destroyed and relaunched it): it takes its name back,
    /// at `from` or at a new address. Never decided by the old address's
    /// silence, which anything in the site can cause.
    Rebuilt { from: Ipv4Addr },
}

/// The newest credential generation known for `node`, from a registry
/// (`hosts`) and the generations recorded beside it: a registered host
/// with none recorded (a registry older than generations, or never
/// retired) is at its first; a host neither registered nor retired has
/// none.
pub fn known_generation(
    hosts: &BTreeMap<HostName, Ipv4Addr>,
    generations: &BTreeMap<HostName, Generation>,
    node: &HostName,
) -> Option<Generation> {
    generations
        .get(node)
        .copied()
        .or_else(|| hosts.contains_key(node).then_some(Generation::FIRST))
}

/// Whether `shown` may act for its name, given the newest generation
/// known for it: an older one is retired (refused everywhere).
pub fn check_generation(ticket: &Ticket, known: Option<Generation>) -> Result<(), Refusal> {
    match known {
        Some(known) if ticket.generation < known => Err(Refusal::Retired {
            node: ticket.node.clone(),
            shown: ticket.generation,
            known,
        }),
        _ => Ok(()),
    }
}

impl AdmissionRule {
    /// Why new hosts are no longer admitted, if they are not.
    pub fn closed_because(&self, joined: usize, now: u64) -> Option<String> {
        if joined as u64 >= u64::from(self.hosts) {
            Some("every host has joined".into())
        } else if now >= self.deadline {
            Some("its admission deadline has passed".into())
        } else {
            None
        }
    }

    /// `registry`: where each joined host is; `generations`: the newest
    /// credential generation seen for each (a host missing there, from a
    /// registry older than generations, is at its first);
    /// `admitted_until`: the end of the window the site's signed
    /// admission of this credential gives, if it shows one (checked by
    /// [`Site::verify_join`]). A name never registered is admitted while
    /// this rule is open, or else while its own admission is.
    pub fn decide(
        &self,
        registry: &BTreeMap<HostName, Ipv4Addr>,
        generations: &BTreeMap<HostName, Generation>,
        ticket: &Ticket,
        address: Ipv4Addr,
        admitted_until: Option<u64>,
        now: u64,
    ) -> Result<Decision, Refusal> {
        let node = &ticket.node;
        let Some(&at) = registry.get(node) else {
            // Never joined, or joined before a retirement it has not
            // heard of: a retired generation stays retired.
            check_generation(ticket, known_generation(registry, generations, node))?;
            let Some(why) = self.closed_because(registry.len(), now) else {
                return Ok(Decision::New);
            };
            return match admitted_until {
                Some(until) if now < until => Ok(Decision::New),
                Some(until) => Err(Refusal::Closed(format!(
                    "{why}, and {node}'s own admission closed {} s ago (`builder destroy \
                     --host {node}` then `builder launch` admits it again)",
                    now - until
                ))),
                None => Err(Refusal::Closed(format!(
                    "{why}, and {node} shows no admission of its own (a host added later \
                     needs the config `builder launch` gives it)"
                ))),
            };
        };
        let known = known_generation(registry, generations, node).unwrap_or(Generation::FIRST);
        check_generation(ticket, Some(known))?;
        if ticket.generation > known {
            Ok(Decision::Rebuilt { from: at })
        } else if at == address {
            Ok(Decision::Renew)
        } else {
            Err(Refusal::Taken {
                node: node.clone(),
                at,
                generation: known,
            })
        }
    }
}

/// Certificates for a verified request, one per CSR, each signed by its
/// `plan` row's temporary CA (`verify_join` refused purposes the
/// requester's role does not hold). Each CSR must name the requester and
/// only it.
pub fn certify(
    ca: &TempCa,
    plan: Plan,
    domain: &DomainName,
    verified: &Verified,
) -> Result<BTreeMap<CertPurpose, Issued>, Refusal> {
    let fqdn = domain.fqdn(verified.node());
    let mut issued = BTreeMap::new();
    for (purpose, csr) in &verified.request.csrs {
        let signer = plan
            .row(*purpose)
            .ok_or_else(|| format!("the plan has no {purpose} certificates"))
            .and_then(|row| row.temporary_ca(ca).map_err(|e| format!("{e:#}")))
            .map_err(Refusal::Unavailable)?;
        let certificate_pem = signer.sign_csr(csr, &fqdn).map_err(Refusal::Csr)?;
        issued.insert(
            *purpose,
            Issued {
                certificate_pem,
                ca_pem: signer.cert_pem().to_owned(),
            },
        );
    }
    Ok(issued)
}

#[cfg(test)]
mod tests;
