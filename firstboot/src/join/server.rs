//! The join service on the bootstrap host: HTTPS on its VPC address. It
//! admits nodes (signing their certificates) while admission is open,
//! renews the certificates of registered nodes until handoff, and lets a
//! rebuilt node take its name back only with a newer credential generation
//! than the registered one (never because the old address is silent),
//! refusing the older credential from then on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use node_contract::identity::Purpose;
use node_contract::status::Admission;
use node_contract::{Generation, HostName, Role};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::protocol::{
    self, check_generation, AdmissionRule, Decision, EnrollAnswer, HandoffAnswer, JoinAnswer,
    Moved, Refusal, Site, Verified, ENROLL_PATH, HANDOFF_PATH, JOIN_PATH, SIGNATURE_HEADER,
};
use super::Credentials;
use crate::backup::CaBackup;
use crate::certs::{CertPurpose, Plan};
use crate::dns::DnsServer;
use crate::freeipa::site::Enroller;
use crate::https::{Request, Response};
use crate::paths::Paths;
use crate::pki::{CaPems, TempCa};
use crate::status::Reporter;

/// Who has joined, as the bootstrap host keeps it on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// The file's format: [`Registry::VERSION`] when written by this
    /// build; files without it (version 1) load as they are.
    #[serde(default = "Registry::first_version")]
    pub version: u32,
    /// Raised at every change: the CA copy with the highest wins.
    pub generation: u64,
    pub hosts: BTreeMap<HostName, Ipv4Addr>,
    /// The newest credential generation seen for each host (version 2;
    /// a host missing here is at its first): older ones are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<HostName, Generation>,
    /// Unix seconds after which no host that never joined is admitted.
    pub admission_deadline: u64,
    /// Core hosts the site was not launched with, admitted since (version
    /// 3): FreeIPA servers and etcd members as the first ones are, which
    /// no node's config names.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub added_core: BTreeSet<HostName>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            version: Registry::VERSION,
            generation: 0,
            hosts: BTreeMap::new(),
            generations: BTreeMap::new(),
            admission_deadline: 0,
            added_core: BTreeSet::new(),
        }
    }
}

impl Registry {
    /// Version 2 added the hosts' credential generations, version 3 the
    /// core hosts added later.
    pub const VERSION: u32 = 3;

    fn first_version() -> u32 {
        1
    }

    pub fn load(path: &Path) -> Result<Option<Registry>> {
        let registry: Option<Registry> = crate::fsutil::read_json(path)?;
        if let Some(r) = &registry {
            if r.version > Registry::VERSION {
                anyhow::bail!(
                    "{} has registry version {}, but this firstboot reads up to version {}",
                    path.display(),
                    r.version,
                    Registry::VERSION
                );
            }
        }
        Ok(registry)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let current = Registry {
            version: Registry::VERSION,
            ..self.clone()
        };
        crate::fsutil::write_json(path, &current, 0o600)
    }

    /// The newest generation known for `node`.
    pub fn known_generation(&self, node: &HostName) -> Option<Generation> {
        protocol::known_generation(&self.hosts, &self.generations, node)
    }

    /// The site's core hosts: those it was launched with (`core`, every
    /// node's config), then those added later.
    pub fn core_hosts(&self, core: &[HostName]) -> Vec<HostName> {
        let mut all = core.to_vec();
        all.extend(
            self.added_core
                .iter()
                .filter(|h| !core.contains(h))
                .cloned(),
        );
        all
    }
}

/// What the service holds between requests.
pub struct Registrar {
    pub paths: Paths,
    pub site: Site,
    pub me: Credentials,
    /// What it signs: `certs::PLAN`, or a test's plan.
    pub plan: Plan,
    /// Holds an intermediate for each the plan names; none once the
    /// handoff ended the temporary CA.
    pub ca: Option<TempCa>,
    /// The temporary DNS, until `temporary::Services::end_temporary` (or
    /// `stop`) takes it.
    pub dns: Option<DnsServer>,
    pub dns_address: Ipv4Addr,
    pub registry: Registry,
    pub registry_file: PathBuf,
    /// The nonces seen, on disk before anything is answered: a request
    /// captured now is refused after a restart too.
    pub replay: super::replay::ReplayLog,
    pub rule: AdmissionRule,
    pub reporter: Reporter,
    /// FreeIPA enrollment, once this host's FreeIPA server is configured.
    pub enroller: Option<Arc<Enroller>>,
    /// Where each node's identity move stands (phase handoff).
    pub handoff: HandoffBook,
}

/// Each node's last reported step of its identity's move to FreeIPA, and
/// the sub-CA it moves to, as the bootstrap host keeps them on disk. Lost
/// with a rebuilt bootstrap host, and then rebuilt from the nodes: those
/// still moving report their step each time they ask, those done say it
/// at their peer service (`temporary::Services::learn_identity_steps`).
/// A step is what the node said last, never the highest it ever said: a
/// rebuilt node starts again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffBook {
    #[serde(default)]
    pub identity_ca: Option<String>,
    #[serde(default)]
    pub identity: BTreeMap<HostName, crate::certs::moved::Step>,
    /// Every node moved, and the temporary services ended (handoff's last
    /// step): the join service signs nothing from the temporary CA and
    /// the temporary DNS does not start again.
    #[serde(default)]
    pub temporary_ended: bool,
}

impl HandoffBook {
    pub fn load(paths: &Paths) -> Result<HandoffBook> {
        Ok(crate::fsutil::read_json(&paths.handoff_book())?.unwrap_or_default())
    }

    pub fn save(&self, paths: &Paths) -> Result<()> {
        crate::fsutil::write_json(&paths.handoff_book(), self, 0o600)
    }

    /// Whether this host's handoff ended the temporary CA and DNS, as its
    /// book on disk says.
    pub fn temporary_ended_at(paths: &Paths) -> Result<bool> {
        Ok(HandoffBook::load(paths)?.temporary_ended)
    }
}

impl Registrar {
    /// Where `ticket`'s node joined from, if it asks as registered: its
    /// registered generation (a retired one is refused as retired, a newer
    /// one joins first, which retires the registered one), and from its
    /// registered address (a copy of its user data elsewhere could sign).
    /// `asks` names what it asks for, in the refusal.
    fn registered_caller(
        &self,
        ticket: &node_contract::Ticket,
        source: Ipv4Addr,
        asks: &str,
    ) -> Result<Ipv4Addr, Refusal> {
        let node = &ticket.node;
        let Some(&address) = self.registry.hosts.get(node) else {
            return Err(Refusal::NotAllowed(format!(
                "{node} has not joined; it {asks} once it has"
            )));
        };
        let known = self.registry.known_generation(node);
        check_generation(ticket, known)?;
        if Some(ticket.generation) != known {
            return Err(Refusal::NotAllowed(format!(
                "{node} joined with credential generation {}; generation {} joins before it {asks}",
                known.map_or_else(|| "?".into(), |g| g.to_string()),
                ticket.generation
            )));
        }
        if source != address {
            return Err(Refusal::NotAllowed(format!(
                "{node} joined from {address}; it {asks} from there, not from {source}"
            )));
        }
        Ok(address)
    }

    /// The temporary CAs (while they last) and registry sealed under this
    /// host's key.
    pub fn sealed_backup(&self) -> String {
        crate::backup::seal(
            self.me
                .backup_key
                .as_ref()
                .expect("the join service runs on the bootstrap host, which has the CA-copy key"),
            &CaBackup {
                generation: self.registry.generation,
                root: self.ca.as_ref().map(|ca| CaPems {
                    cert_pem: ca.root.cert_pem().to_owned(),
                    key_pem: ca.root.key_pem(),
                }),
                intermediates: self
                    .ca
                    .as_ref()
                    .map(TempCa::intermediate_pems)
                    .unwrap_or_default(),
                registry: self.registry.hosts.clone(),
                generations: self.registry.generations.clone(),
                admission_deadline: self.registry.admission_deadline,
                added_core: self.registry.added_core.clone(),
            },
        )
    }

    /// Record a node's address and credential generation: on disk first,
    /// then in DNS.
    pub async fn register(
        &mut self,
        node: &HostName,
        address: Ipv4Addr,
        generation: Generation,
        added_core: bool,
    ) -> Result<()> {
        let known = self.registry.known_generation(node);
        if self.registry.hosts.get(node) != Some(&address)
            || known != Some(generation)
            || added_core && !self.registry.added_core.contains(node)
        {
            let mut next = self.registry.clone();
            next.hosts.insert(node.clone(), address);
            if generation > Generation::FIRST || next.generations.contains_key(node) {
                next.generations.insert(node.clone(), generation);
            }
            if added_core {
                next.added_core.insert(node.clone());
            }
            next.generation += 1;
            next.save(&self.registry_file)?;
            self.registry = next;
        }
        if let Some(dns) = &self.dns {
            dns.set_host(node, address).await?;
        }
        self.report();
        Ok(())
    }

    /// `node` was rebuilt and moved to `address`: this host pins it there
    /// (its own /etc/hosts), and every other registered node hears it
    /// through its peer service, in the background.
    fn pass_on_move(&self, node: &HostName, address: Ipv4Addr) {
        let mut record = crate::state::PeersMoved::load(&self.paths.peers_moved());
        if record.take(node, address, crate::status::now()) {
            let written = record.save(&self.paths.peers_moved()).and_then(|()| {
                crate::resolver::write_hosts(&self.paths, &self.site.domain, &self.registry.hosts)
            });
            if let Err(e) = written {
                tracing::warn!("join service: cannot pin {node} to {address}: {e:#}");
            }
        }
        tokio::spawn(super::peer::announce(
            self.site.clone(),
            self.me.clone(),
            self.dns_address,
            self.registry.hosts.clone(),
            Some(Moved {
                node: node.clone(),
                address,
            }),
        ));
    }

    /// The CAs issued again once they have lived two thirds of their life
    /// (see `pki::TempCa::renewed_if_due`), on disk before they sign: the
    /// join service runs for as long as the temporary CAs do.
    fn refresh_ca(&mut self) {
        let domain = self.site.domain.as_str();
        let Some(ca) = &self.ca else {
            return;
        };
        match ca.renewed_if_due(domain, time::OffsetDateTime::now_utc()) {
            Ok(None) => {}
            Ok(Some(renewed)) => match renewed.save(&self.paths.ca_dir()) {
                Ok(()) => {
                    tracing::warn!(
                        "join service: the temporary CAs were issued again, until {}",
                        renewed.root.not_after()
                    );
                    self.ca = Some(renewed);
                }
                Err(e) => tracing::error!("join service: cannot save the renewed CAs: {e:#}"),
            },
            Err(e) => tracing::error!("join service: cannot renew the temporary CAs: {e:#}"),
        }
    }

    /// The admission state, into the status file.
    pub fn report(&self) {
        let now = crate::status::now();
        let closed = self.rule.closed_because(self.registry.hosts.len(), now);
        self.reporter.set_admission(Admission {
            open: closed.is_none(),
            closed_because: closed,
            joined: self.registry.hosts.len() as u32,
            hosts: self.rule.hosts,
            deadline: self.rule.deadline,
        });
    }

    fn verify(&mut self, request: &Request) -> Result<(Verified, Decision), Refusal> {
        let signature = request
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let now = crate::status::now();
        let verified = self.site.verify_join(
            self.plan,
            request.source,
            signature,
            &request.body,
            &mut self.replay,
            now,
        )?;
        let decision = self.rule.decide(
            &self.registry.hosts,
            &self.registry.generations,
            &verified.request.ticket,
            verified.address,
            verified.admitted_until,
            now,
        )?;
        Ok((verified, decision))
    }

    /// Certificates, registration and the signed answer; `rebuilt`: the
    /// node came back with a newer credential generation.
    async fn admit(&mut self, verified: &Verified, rebuilt: bool) -> Response {
        // A new name past this host's own rule came in by its admission
        // (`AdmissionRule::decide` let it).
        let by_own_admission = !self.registry.hosts.contains_key(verified.node())
            && self
                .rule
                .closed_because(self.registry.hosts.len(), crate::status::now())
                .is_some();
        self.refresh_ca();
        let certified = match &self.ca {
            Some(ca) if !self.handoff.temporary_ended => {
                let mut certificates =
                    match protocol::certify(ca, self.plan, &self.site.domain, verified) {
                        Ok(certificates) => certificates,
                        Err(refusal) => return refuse(verified.address, &refusal),
                    };
                self.certify_moved_rows(verified, &mut certificates)
                    .await
                    .map(|()| certificates)
            }
            _ => self.certify_through_freeipa(verified).await,
        };
        let certificates = match certified {
            Ok(certificates) => certificates,
            Err(e) => {
                tracing::warn!(peer = %verified.node(), "join service: {e:#}");
                return Response::text(
                    503,
                    &format!(
                        "the bootstrap host cannot certify this node through FreeIPA yet: {e:#}"
                    ),
                );
            }
        };
        let generation = verified.request.ticket.generation;
        if let Err(e) = self
            .register(
                verified.node(),
                verified.address,
                generation,
                verified.added_core,
            )
            .await
        {
            tracing::error!("join service: cannot register {}: {e:#}", verified.node());
            return Response::text(503, "the bootstrap host cannot record the join; retry");
        }
        // A core host added after the handoff made the site's records has
        // its etcd SRV records made now (before it, the handoff's own
        // step makes them for every registered core host).
        if verified.added_core && self.handoff.temporary_ended {
            let made = match &self.enroller {
                Some(enroller) => {
                    enroller
                        .ensure_member_records(verified.node(), verified.address)
                        .await
                }
                None => Err(anyhow::anyhow!("its FreeIPA session is not up")),
            };
            if let Err(e) = made {
                tracing::warn!(peer = %verified.node(), "join service: {e:#}");
                return Response::text(
                    503,
                    &format!(
                        "the bootstrap host cannot record this core host in FreeIPA yet: {e:#}"
                    ),
                );
            }
        }
        // A rebuilt node moves its identity again, from its first step:
        // its old life's steps must not let the others past a barrier.
        if rebuilt && self.handoff.identity.remove(verified.node()).is_some() {
            if let Err(e) = self.handoff.save(&self.paths) {
                tracing::error!("join service: cannot record the handoff steps: {e:#}");
                return Response::text(503, "the bootstrap host cannot record the join; retry");
            }
        }
        let core = verified.request.ticket.role == Role::Core;
        let answer = JoinAnswer {
            bootstrap: self.me.ticket.clone(),
            certificates,
            peers: self.registry.hosts.clone(),
            dns: self.dns_address,
            freeipa_dns: if self.handoff.temporary_ended {
                // FreeIPA's servers: the core hosts, those added later too.
                self.registry
                    .core_hosts(&self.site.core)
                    .iter()
                    .filter_map(|node| self.registry.hosts.get(node).copied())
                    .collect()
            } else {
                Vec::new()
            },
            ca_backup: core.then(|| self.sealed_backup()),
            rebuilt,
            added_core: verified.added_core,
        };
        let body = serde_json::to_vec(&answer).expect("serialises");
        let proof = protocol::sign_answer(
            &self.me.key,
            Purpose::JoinAnswer,
            &verified.request.nonce,
            &body,
        );
        let issuer = if self.handoff.temporary_ended {
            "every certificate from FreeIPA's sub-CAs"
        } else {
            "certificates from the temporary CA"
        };
        let by = match (by_own_admission, verified.added_core) {
            (_, true) => ", a core host added later, by the site's admission of its own",
            (true, false) => ", by the site's admission of its own",
            (false, false) => "",
        };
        tracing::info!(peer = %verified.node(), address = %verified.address, "join service: admitted {} at {} ({issuer}{by})", verified.node(), verified.address);
        Response::json(body).with_header(SIGNATURE_HEADER, proof)
    }
}

impl Registrar {
    /// Rows this host has moved to a FreeIPA sub-CA (the handoff's record
    /// on this host) are certified there, not by the temporary CA: a core
    /// host that joins after etcd moved (rebuilt, or added) must present
    /// what the members now trust, and trust what they present. The
    /// answer's trust is the sub-CA (the sub-CA and the temporary CA while
    /// this host's own move is under way). Asked as the admin, for the
    /// node's own CSR.
    async fn certify_moved_rows(
        &self,
        verified: &Verified,
        certificates: &mut BTreeMap<CertPurpose, protocol::Issued>,
    ) -> anyhow::Result<()> {
        for (purpose, issued) in certificates.iter_mut() {
            if let Some(from_freeipa) = self
                .certified_by_freeipa(verified, *purpose, Some(&issued.ca_pem))
                .await?
            {
                *issued = from_freeipa;
            }
        }
        Ok(())
    }

    /// Once the temporary services ended (handoff's last step), every
    /// certificate a node asks for comes from FreeIPA: nothing is signed
    /// by the temporary CA any more.
    async fn certify_through_freeipa(
        &self,
        verified: &Verified,
    ) -> anyhow::Result<BTreeMap<CertPurpose, protocol::Issued>> {
        let mut certificates = BTreeMap::new();
        for purpose in verified.request.csrs.keys() {
            let issued = self
                .certified_by_freeipa(verified, *purpose, None)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the temporary CA has ended, and this host's {purpose} certificate has \
                         not moved to FreeIPA"
                    )
                })?;
            certificates.insert(*purpose, issued);
        }
        Ok(certificates)
    }

    /// `purpose`'s certificate for the node from the row's sub-CA, if
    /// this host moved that row; its trust is the sub-CA, with
    /// `temporary_ca` while this host's own move is under way.
    async fn certified_by_freeipa(
        &self,
        verified: &Verified,
        purpose: CertPurpose,
        temporary_ca: Option<&str>,
    ) -> anyhow::Result<Option<protocol::Issued>> {
        let Some(row) = self.plan.row(purpose) else {
            return Ok(None);
        };
        let crate::certs::plan::FreeipaIssuer::SubCa(sub_ca) = row.issuer.freeipa;
        let Some(moved) = crate::certs::moved::Moved::load(&self.paths, purpose)? else {
            return Ok(None);
        };
        let enroller = self.enroller.as_ref().ok_or_else(|| {
            anyhow::anyhow!("its FreeIPA session is not up (the {purpose} row has moved)")
        })?;
        let csr = &verified.request.csrs[&purpose];
        let certificate = enroller
            .certify_service(sub_ca, verified.node(), verified.address, csr)
            .await?;
        let ca_pem = match temporary_ca {
            Some(temporary) if !moved.done => {
                format!("{}\n{}", moved.new_ca.trim_end(), temporary.trim_end())
            }
            _ => moved.new_ca.clone(),
        };
        Ok(Some(protocol::Issued {
            certificate_pem: certificate,
            ca_pem,
        }))
    }
}

/// Handle one request.
pub async fn handle(request: Request, registrar: Arc<Mutex<Registrar>>) -> Response {
    if request.method == hyper::Method::POST && request.path == ENROLL_PATH {
        return enroll(request, registrar).await;
    }
    if request.method == hyper::Method::POST && request.path == HANDOFF_PATH {
        return handoff(request, registrar).await;
    }
    if protocol::EARLIER_JOIN_PATHS.contains(&request.path.as_str()) {
        return Response::text(
            404,
            &format!(
                "this join service speaks {JOIN_PATH}; the node asking runs an older firstboot \
                 (render its config with the same builder as the bootstrap host's)"
            ),
        );
    }
    if request.path != JOIN_PATH || request.method != hyper::Method::POST {
        return Response::text(
            404,
            &format!("only POST {JOIN_PATH}, {ENROLL_PATH} and {HANDOFF_PATH} are served here"),
        );
    }
    let source = request.source;
    // One lock from the decision to the registration: two requests for
    // one name cannot both pass a decision made on the same registry.
    let mut r = registrar.lock().await;
    let (verified, decision) = match r.verify(&request) {
        Ok(v) => v,
        Err(refusal) => return refuse(source, &refusal),
    };
    let (rebuilt, moved) = match decision {
        Decision::Rebuilt { from } => {
            tracing::warn!(
                peer = %verified.node(),
                "join service: {} comes back with credential generation {} (was at {from}, now {source}); the older generation is refused from now on",
                verified.node(),
                verified.request.ticket.generation
            );
            (true, from != source)
        }
        Decision::New | Decision::Renew => (false, false),
    };
    let response = r.admit(&verified, rebuilt).await;
    if moved && response.status == 200 {
        r.pass_on_move(verified.node(), verified.address);
    }
    response
}

/// A joined node's FreeIPA enrollment: a host entry with a one-time
/// password (in `ipaservers` for a core host), answered signed.
async fn enroll(request: Request, registrar: Arc<Mutex<Registrar>>) -> Response {
    let source = request.source;
    let (asked, address, enroller, me) = {
        let mut r = registrar.lock().await;
        let signature = request
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let now = crate::status::now();
        let r = &mut *r;
        let asked = match r
            .site
            .verify_enroll(signature, &request.body, &mut r.replay, now)
        {
            Ok(asked) => asked,
            Err(refusal) => return refuse(source, &refusal),
        };
        // Only from where it joined: a copy of its user data elsewhere
        // (which could sign) must not get a password for the name, or, for
        // a rebuilt client, disable the keytab of the node that runs.
        let address = match r.registered_caller(&asked.ticket, source, "asks for its enrollment") {
            Ok(address) => address,
            Err(refusal) => return refuse(source, &refusal),
        };
        let Some(enroller) = r.enroller.clone() else {
            return Response::text(503, "FreeIPA is not configured on the bootstrap host yet");
        };
        (asked, address, enroller, r.me.clone())
    };
    let node = &asked.ticket.node;
    let password = match enroller.enroll(node, asked.ticket.role, address).await {
        Ok(password) => password,
        Err(e) => {
            tracing::warn!(peer = %node, "join service: cannot enroll {node} in FreeIPA: {e:#}");
            return Response::text(503, &format!("cannot enroll {node} in FreeIPA yet: {e:#}"));
        }
    };
    let answer = EnrollAnswer {
        bootstrap: me.ticket.clone(),
        server: enroller.server().to_owned(),
        one_time_password: Some(password),
    };
    let body = serde_json::to_vec(&answer).expect("serialises");
    let proof = protocol::sign_answer(&me.key, Purpose::EnrollAnswer, &asked.nonce, &body);
    tracing::info!(peer = %node, "join service: {node} may enroll in FreeIPA");
    Response::json(body).with_header(SIGNATURE_HEADER, proof)
}

/// A registered node's handoff report: its step recorded (on disk
/// before the answer), and every registered node's step answered, signed.
/// Only the registered generation, from its registered address: a copy
/// of a node's user data elsewhere must not move the barrier for it.
async fn handoff(request: Request, registrar: Arc<Mutex<Registrar>>) -> Response {
    let source = request.source;
    let mut r = registrar.lock().await;
    let r = &mut *r;
    let signature = request
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let now = crate::status::now();
    let report = match r
        .site
        .verify_handoff(signature, &request.body, &mut r.replay, now)
    {
        Ok(report) => report,
        Err(refusal) => return refuse(source, &refusal),
    };
    let node = &report.ticket.node;
    if let Err(refusal) = r.registered_caller(&report.ticket, source, "reports") {
        return refuse(source, &refusal);
    }
    let before = r.handoff.identity.get(node).copied();
    if before != report.identity {
        match report.identity {
            Some(step) => r.handoff.identity.insert(node.clone(), step),
            None => r.handoff.identity.remove(node),
        };
        if let Err(e) = r.handoff.save(&r.paths) {
            tracing::error!("join service: cannot record the handoff steps: {e:#}");
            return Response::text(503, "the bootstrap host cannot record the step; retry");
        }
        tracing::info!(
            peer = %node,
            "join service: {node}'s identity is at {}",
            report.identity.map_or("its start", |s| s.as_str())
        );
    }
    let answer = HandoffAnswer {
        bootstrap: r.me.ticket.clone(),
        temporary_ended: r.handoff.temporary_ended,
        identity_ca: r.handoff.identity_ca.clone(),
        identity: r
            .registry
            .hosts
            .keys()
            .map(|host| (host.clone(), r.handoff.identity.get(host).copied()))
            .collect(),
        ca_backup: (r.handoff.temporary_ended && report.ticket.role == Role::Core)
            .then(|| r.sealed_backup()),
    };
    let body = serde_json::to_vec(&answer).expect("serialises");
    let proof = protocol::sign_answer(&r.me.key, Purpose::HandoffAnswer, &report.nonce, &body);
    Response::json(body).with_header(SIGNATURE_HEADER, proof)
}

fn refuse(source: Ipv4Addr, refusal: &Refusal) -> Response {
    tracing::warn!(source = %source, "join service: refused a request from {source}: {refusal}");
    Response::text(refusal.http_status(), &refusal.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_registries_as_written_load_and_save_as_version_2() {
        // A registry exactly as firstboot wrote it before generations.
        let v1 = r#"{"generation": 4, "hosts": {"node1": "198.18.0.10", "node2": "198.18.0.11"},
            "admission_deadline": 1700000000}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        std::fs::write(&path, v1).unwrap();
        let registry = Registry::load(&path).unwrap().unwrap();
        assert_eq!(registry.version, 1);
        let node2 = HostName::parse("node2").unwrap();
        assert_eq!(registry.known_generation(&node2), Some(Generation::FIRST));
        assert_eq!(
            registry.known_generation(&HostName::parse("node9").unwrap()),
            None
        );
        registry.save(&path).unwrap();
        let again = Registry::load(&path).unwrap().unwrap();
        assert_eq!(again.version, Registry::VERSION);
        assert_eq!(again.hosts, registry.hosts);
        std::fs::write(
            &path,
            r#"{"version": 9, "generation": 0, "hosts": {}, "admission_deadline": 0}"#,
        )
        .unwrap();
        assert!(Registry::load(&path)
            .unwrap_err()
            .to_string()
            .contains("registry version 9"));
    }
}
