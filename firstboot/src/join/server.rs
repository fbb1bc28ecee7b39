//! The join service on the bootstrap host: HTTPS on its VPC address. It
//! admits nodes (signing their certificates) while admission is open,
//! renews the certificates of registered nodes until handoff, and lets a
//! rebuilt node take its name back only once its old address is silent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use node_contract::identity::Purpose;
use node_contract::status::Admission;
use node_contract::{HostName, Role};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::protocol::{
    self, AdmissionRule, Decision, EnrollAnswer, EtcdCerts, JoinAnswer, Moved, Refusal,
    ReplayGuard, Site, Verified, ENROLL_PATH, JOIN_PATH, SIGNATURE_HEADER,
};
use super::Credentials;
use crate::backup::CaBackup;
use crate::dns::DnsServer;
use crate::freeipa::site::Enroller;
use crate::https::{Request, Response};
use crate::paths::Paths;
use crate::pki::TempCa;
use crate::status::Reporter;

/// Who has joined, as the bootstrap host keeps it on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Raised at every change: the CA copy with the highest wins.
    pub generation: u64,
    pub hosts: BTreeMap<HostName, Ipv4Addr>,
    /// Unix seconds after which no host that never joined is admitted.
    pub admission_deadline: u64,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Option<Registry>> {
        crate::fsutil::read_json(path)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json(path, self, 0o600)
    }
}

/// What the service holds between requests.
pub struct Registrar {
    pub paths: Paths,
    pub site: Site,
    pub me: Credentials,
    pub ca: TempCa,
    pub dns: Arc<DnsServer>,
    pub dns_address: Ipv4Addr,
    pub registry: Registry,
    pub registry_file: PathBuf,
    pub replay: ReplayGuard,
    pub replay_file: PathBuf,
    pub rule: AdmissionRule,
    pub reporter: Reporter,
    /// FreeIPA enrollment, once this host's FreeIPA server is configured.
    pub enroller: Option<Arc<Enroller>>,
}

impl Registrar {
    /// The temporary CAs and registry sealed under this host's key.
    pub fn sealed_backup(&self) -> String {
        crate::backup::seal(
            &self.me.seed,
            &CaBackup {
                generation: self.registry.generation,
                root_cert_pem: self.ca.root.cert_pem().to_owned(),
                root_key_pem: self.ca.root.key_pem(),
                etcd_cert_pem: self.ca.etcd.cert_pem().to_owned(),
                etcd_key_pem: self.ca.etcd.key_pem(),
                registry: self.registry.hosts.clone(),
                admission_deadline: self.registry.admission_deadline,
            },
        )
    }

    /// Record a node's address: on disk first, then in DNS.
    pub async fn register(&mut self, node: &HostName, address: Ipv4Addr) -> Result<()> {
        if self.registry.hosts.get(node) != Some(&address) {
            self.registry.hosts.insert(node.clone(), address);
            self.registry.generation += 1;
            self.registry.save(&self.registry_file)?;
        }
        self.dns.set_host(node, address).await?;
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
        tokio::spawn(crate::bootstrap::announce(
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

    /// The nonces seen, on disk before anything is answered: a request
    /// captured now is refused after a restart too.
    fn record_nonces(&self) -> Result<(), Refusal> {
        crate::fsutil::write_atomic(
            &self.replay_file,
            &serde_json::to_vec(&self.replay).expect("serialises"),
            0o600,
        )
        .map_err(|e| {
            tracing::error!("join service: cannot record a nonce: {e:#}");
            Refusal::Malformed("the bootstrap host cannot record the request; retry".into())
        })
    }

    fn verify(&mut self, request: &Request) -> Result<(Verified, Decision), Refusal> {
        let signature = request
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let now = crate::status::now();
        let verified = self.site.verify_join(
            request.source,
            signature,
            &request.body,
            &mut self.replay,
            now,
        )?;
        self.record_nonces()?;
        let decision =
            self.rule
                .decide(&self.registry.hosts, verified.node(), verified.address, now)?;
        Ok((verified, decision))
    }

    /// Certificates, registration and the signed answer; `rebuilt`: the
    /// node moved here from a registered address that no longer answers.
    async fn admit(&mut self, verified: &Verified, rebuilt: bool) -> Response {
        let (certificate_pem, etcd_pem) =
            match protocol::certify(&self.ca, &self.site.domain, verified) {
                Ok(certs) => certs,
                Err(refusal) => return refuse(verified.address, &refusal),
            };
        if let Err(e) = self.register(verified.node(), verified.address).await {
            tracing::error!("join service: cannot register {}: {e:#}", verified.node());
            return Response::text(503, "the bootstrap host cannot record the join; retry");
        }
        let core = verified.request.ticket.role == Role::Core;
        let answer = JoinAnswer {
            bootstrap: self.me.ticket.clone(),
            certificate_pem,
            ca_pem: self.ca.root.cert_pem().to_owned(),
            etcd: etcd_pem.map(|certificate_pem| EtcdCerts {
                certificate_pem,
                ca_pem: self.ca.etcd.cert_pem().to_owned(),
            }),
            peers: self.registry.hosts.clone(),
            dns: self.dns_address,
            ca_backup: core.then(|| self.sealed_backup()),
            rebuilt,
        };
        let body = serde_json::to_vec(&answer).expect("serialises");
        let proof = protocol::sign_answer(
            &self.me.key,
            Purpose::JoinAnswer,
            &verified.request.nonce,
            &body,
        );
        tracing::info!(peer = %verified.node(), address = %verified.address, "join service: admitted {} at {}", verified.node(), verified.address);
        Response::json(body).with_header(SIGNATURE_HEADER, proof)
    }
}

/// Handle one request.
pub async fn handle(request: Request, registrar: Arc<Mutex<Registrar>>) -> Response {
    if request.method == hyper::Method::POST && request.path == ENROLL_PATH {
        return enroll(request, registrar).await;
    }
    if request.path != JOIN_PATH || request.method != hyper::Method::POST {
        return Response::text(
            404,
            &format!("only POST {JOIN_PATH} and {ENROLL_PATH} are served here"),
        );
    }
    let source = request.source;
    let (verified, decision) = match registrar.lock().await.verify(&request) {
        Ok(v) => v,
        Err(refusal) => return refuse(source, &refusal),
    };
    let moved = if let Decision::Move { from } = decision {
        // Outside the lock: asking the old address takes a moment.
        let (site, me, own) = {
            let r = registrar.lock().await;
            (r.site.clone(), r.me.clone(), r.dns_address)
        };
        if let Ok(answer) = super::peer::ask(&site, &me, own, from, None).await {
            if answer.node.node == *verified.node() {
                let refusal = Refusal::Taken {
                    node: verified.node().clone(),
                    at: from,
                };
                return refuse(source, &refusal);
            }
        }
        tracing::info!(peer = %verified.node(), "join service: {} moves from {from} (silent there) to {source}", verified.node());
        true
    } else {
        false
    };
    let mut r = registrar.lock().await;
    let response = r.admit(&verified, moved).await;
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
        if let Err(refusal) = r.record_nonces() {
            return refuse(source, &refusal);
        }
        let Some(&address) = r.registry.hosts.get(&asked.ticket.node) else {
            let refusal = Refusal::NotAllowed(format!(
                "{} has not joined; it enrolls in FreeIPA once it has",
                asked.ticket.node
            ));
            return refuse(source, &refusal);
        };
        // Only from where it joined: a copy of its user data elsewhere
        // (which could sign) must not get a password for the name, or, for
        // a rebuilt client, disable the keytab of the node that runs.
        if source != address {
            let refusal = Refusal::NotAllowed(format!(
                "{} joined from {address}; it asks for its enrollment from there, not from {source}",
                asked.ticket.node
            ));
            return refuse(source, &refusal);
        }
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

fn refuse(source: Ipv4Addr, refusal: &Refusal) -> Response {
    tracing::warn!(source = %source, "join service: refused a request from {source}: {refusal}");
    Response::text(refusal.http_status(), &refusal.to_string())
}
