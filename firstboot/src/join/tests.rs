//! A kind of certificate the plan gains travels through join with no
//! change outside the plan: the test-only row of `certs::plan::tests`,
//! asked for, signed by the join service under its own temporary
//! intermediate, installed, sealed into the core hosts' CA copy, and
//! renewed, by the same code that serves the production plan.

use std::net::Ipv4Addr;
use std::sync::Arc;

use hyper::header::HeaderMap;
use node_contract::identity::Purpose;
use node_contract::{Generation, NodeConfig, Seed, SigningKey};
use tokio::sync::Mutex;

use super::client;
use super::protocol::{self, AdmissionRule, JoinAnswer, JoinRequest, Site};
use super::protocol::{JOIN_PATH, SIGNATURE_HEADER};
use super::server::{handle, Registrar, Registry};
use super::Credentials;
use crate::certs::plan::tests::{etcd_ca, TEST_ONLY, WITH_TEST_ONLY};
use crate::certs::{self, CertPurpose, PLAN};
use crate::https::Request;
use crate::paths::Paths;
use crate::pki::{self, TempCa};
use crate::status::Reporter;

const PLAN_UNDER_TEST: certs::Plan = WITH_TEST_ONLY;

fn at(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, octet)
}

/// `node`'s config in the lab site (`phases::tests::lab_config`), with
/// the site's ticket for its own role and, on the bootstrap host, the
/// CA-copy key.
fn config(node: &str) -> NodeConfig {
    let mut config = crate::phases::tests::lab_config(node);
    let site = SigningKey::from_seed(&Seed::from_bytes([9; 32]));
    assert_eq!(
        site.public_key(),
        config.site.site_key,
        "lab_config's site key"
    );
    config.identity.ticket_signature = site
        .ticket(
            &config.site.domain,
            &config.node,
            config.role(),
            Generation::FIRST,
            config.signing_key().public_key(),
        )
        .signature;
    if config.is_bootstrap() {
        config.identity.ca_backup_key = Some(Seed::from_bytes([7; 32]));
    }
    config
}

/// The bootstrap host's join service over `paths`, signing `plan`, with
/// its own certificates of the plan in place.
fn join_service(paths: &Paths, boot: &NodeConfig, ca: TempCa) -> Arc<Mutex<Registrar>> {
    certs::ensure_from_temporary(paths, boot, PLAN_UNDER_TEST, &ca).unwrap();
    let now = crate::status::now();
    let registrar = Registrar {
        paths: paths.clone(),
        site: Site::of(boot),
        me: Credentials::of(boot),
        plan: PLAN_UNDER_TEST,
        ca: Some(ca),
        dns: None,
        dns_address: at(10),
        registry: Registry {
            admission_deadline: now + 3600,
            ..Registry::default()
        },
        registry_file: paths.registry_file(),
        replay: super::replay::ReplayLog::open(
            &paths.nonces_file(),
            &paths.legacy_nonces_file(),
            now,
        )
        .unwrap(),
        rule: AdmissionRule {
            hosts: boot.site.host_count,
            deadline: now + 3600,
        },
        reporter: Reporter::new(paths.status_file()),
        enroller: None,
        handoff: Default::default(),
    };
    Arc::new(Mutex::new(registrar))
}

/// A signed join request from `config` at `from`, with the node's CSRs
/// of the plan, as the join service answers it; and the request's nonce.
async fn ask_to_join(
    service: &Arc<Mutex<Registrar>>,
    paths: &Paths,
    config: &NodeConfig,
    from: Ipv4Addr,
) -> (crate::https::Response, String) {
    let request = JoinRequest {
        ticket: config.ticket(),
        addresses: vec![from],
        csrs: client::csrs(paths, config, PLAN_UNDER_TEST).unwrap(),
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
        admission: config.identity.admission.clone(),
    };
    let body = serde_json::to_vec(&request).unwrap();
    let signature = protocol::sign_request(&config.signing_key(), Purpose::JoinRequest, &body);
    let mut headers = HeaderMap::new();
    headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
    let response = handle(
        Request {
            method: hyper::Method::POST,
            path: JOIN_PATH.to_owned(),
            headers,
            body: body.into(),
            source: from,
            client_certificate: None,
        },
        service.clone(),
    )
    .await;
    (response, request.nonce)
}

/// What `client::enroll` does, minus the network: the node's CSRs of the
/// plan, a signed request from `from`, the join service's answer
/// checked as the bootstrap host's, and installed.
async fn join(
    service: &Arc<Mutex<Registrar>>,
    paths: &Paths,
    config: &NodeConfig,
    from: Ipv4Addr,
) -> JoinAnswer {
    let csrs = client::csrs(paths, config, PLAN_UNDER_TEST).unwrap();
    assert!(csrs.contains_key(&CertPurpose::TestOnly), "{csrs:?}");
    let (response, request_nonce) = ask_to_join(service, paths, config, from).await;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert_eq!(response.status, 200, "{text}");
    let proof = response
        .headers
        .iter()
        .find(|(name, _)| *name == SIGNATURE_HEADER)
        .map(|(_, value)| value.as_str());
    let answer: JoinAnswer = Site::of(config)
        .check_answer(
            &response.body,
            proof,
            &request_nonce,
            Purpose::JoinAnswer,
            |a: &JoinAnswer| &a.bootstrap,
        )
        .unwrap();
    client::install(paths, config, PLAN_UNDER_TEST, &answer).unwrap();
    answer
}

#[tokio::test]
async fn a_kind_added_to_the_plan_is_held_signed_sealed_and_renewed() {
    let boot = config("node1");
    let (core, worker) = (config("node2"), config("node4"));
    let roots: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [boot_paths, core_paths, worker_paths] = [0, 1, 2].map(|i| Paths::under(roots[i].path()));
    let domain = boot.site.domain.as_str();
    let ca = TempCa::create(domain, &PLAN_UNDER_TEST.intermediates()).unwrap();
    let test_only_ca = TEST_ONLY.temporary_ca(&ca).unwrap().cert_pem().to_owned();
    let root_ca = ca.root.cert_pem().to_owned();
    let etcd_ca_pem = etcd_ca(&ca).cert_pem().to_owned();
    let service = join_service(&boot_paths, &boot, ca);

    // The bootstrap host certified itself for the new row too.
    let fqdn = |c: &NodeConfig| c.fqdn(&c.node);
    assert!(!TEST_ONLY.slot(&boot_paths).due(&fqdn(&boot)));

    // A worker: its identity and the new kind (held by every node),
    // nothing of etcd; the new kind under its own intermediate only.
    let answer = join(&service, &worker_paths, &worker, at(14)).await;
    assert_eq!(
        answer.certificates.keys().copied().collect::<Vec<_>>(),
        [CertPurpose::Identity, CertPurpose::TestOnly]
    );
    let slot = TEST_ONLY.slot(&worker_paths);
    assert!(!slot.due(&fqdn(&worker)));
    let cert = std::fs::read_to_string(&slot.cert).unwrap();
    assert_eq!(std::fs::read_to_string(&slot.ca).unwrap(), test_only_ca);
    assert!(pki::issued_by(&cert, &test_only_ca));
    assert!(!pki::issued_by(&cert, &root_ca));
    assert!(!pki::issued_by(&cert, &etcd_ca_pem));
    assert!(answer.ca_backup.is_none());

    // A core host: all three, and a CA copy that carries the new
    // intermediate, by name, for a rebuilt bootstrap host.
    let answer = join(&service, &core_paths, &core, at(11)).await;
    assert_eq!(
        answer.certificates.keys().copied().collect::<Vec<_>>(),
        [
            CertPurpose::Identity,
            CertPurpose::Etcd,
            CertPurpose::TestOnly
        ]
    );
    let sealed = std::fs::read_to_string(core_paths.ca_backup()).unwrap();
    let copy = crate::backup::open(boot.identity.ca_backup_key.as_ref().unwrap(), &sealed).unwrap();
    assert_eq!(
        copy.intermediates.keys().collect::<Vec<_>>(),
        ["etcd", "test-only"]
    );
    let restored = copy.ca().unwrap().expect("the copy carries the CAs");
    assert_eq!(
        TEST_ONLY.temporary_ca(&restored).unwrap().cert_pem(),
        test_only_ca
    );

    // Renewal: the worker's certificate of the new kind, past two thirds
    // of its life, is due (for the plan that has the row; the production
    // plan does not see it), and the next exchange renews it with the
    // same key.
    let key = std::fs::read_to_string(&slot.key).unwrap();
    let spki = pki::inspect(&cert).unwrap().spki;
    let now = time::OffsetDateTime::now_utc();
    let due = {
        let r = service.lock().await;
        TEST_ONLY
            .temporary_ca(r.ca.as_ref().unwrap())
            .unwrap()
            .certify_key(
                &spki,
                &fqdn(&worker),
                now - time::Duration::hours(2),
                now + time::Duration::minutes(30),
            )
            .unwrap()
    };
    std::fs::write(&slot.cert, &due).unwrap();
    assert!(certs::any_due(&worker_paths, &worker, PLAN_UNDER_TEST));
    assert!(!certs::any_due(&worker_paths, &worker, PLAN));
    join(&service, &worker_paths, &worker, at(14)).await;
    assert!(!certs::any_due(&worker_paths, &worker, PLAN_UNDER_TEST));
    let renewed = std::fs::read_to_string(&slot.cert).unwrap();
    assert_ne!(renewed, due);
    assert_eq!(std::fs::read_to_string(&slot.key).unwrap(), key);
    assert_eq!(pki::inspect(&renewed).unwrap().spki, spki);

    // The bootstrap host renews its own from its CAs the same way.
    let boot_slot = TEST_ONLY.slot(&boot_paths);
    std::fs::write(&boot_slot.cert, &due).unwrap();
    assert!(certs::any_due(&boot_paths, &boot, PLAN_UNDER_TEST));
    let r = service.lock().await;
    certs::ensure_from_temporary(&boot_paths, &boot, PLAN_UNDER_TEST, r.ca.as_ref().unwrap())
        .unwrap();
    assert!(!certs::any_due(&boot_paths, &boot, PLAN_UNDER_TEST));
}

/// A join service of the production plan refuses the new kind: a purpose
/// is signed only where the plan has its row.
#[test]
fn a_kind_the_plan_lacks_is_refused() {
    let boot = config("node1");
    let worker = config("node4");
    let root = tempfile::tempdir().unwrap();
    let worker_paths = Paths::under(root.path());
    let request = JoinRequest {
        ticket: worker.ticket(),
        addresses: vec![at(14)],
        csrs: client::csrs(&worker_paths, &worker, PLAN_UNDER_TEST).unwrap(),
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
        admission: None,
    };
    let body = serde_json::to_vec(&request).unwrap();
    let signature = protocol::sign_request(&worker.signing_key(), Purpose::JoinRequest, &body);
    let mut replay = protocol::ReplayGuard::default();
    let refusal = Site::of(&boot)
        .verify_join(
            PLAN,
            at(14),
            Some(&signature),
            &body,
            &mut replay,
            request.timestamp,
        )
        .unwrap_err();
    assert!(
        matches!(&refusal, protocol::Refusal::NotAllowed(why) if why.contains("test-only")),
        "{refusal}"
    );
}

/// One signed handoff report from `config` at `from`, as
/// `client::handoff_report` sends it; the answer checked as the
/// bootstrap host's when it is a 200.
async fn report(
    service: &Arc<Mutex<Registrar>>,
    config: &NodeConfig,
    from: Ipv4Addr,
    identity: Option<certs::moved::Step>,
) -> Result<protocol::HandoffAnswer, (u16, String)> {
    let request = protocol::HandoffReport {
        ticket: config.ticket(),
        identity,
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
    };
    let body = serde_json::to_vec(&request).unwrap();
    let signature = protocol::sign_request(&config.signing_key(), Purpose::HandoffReport, &body);
    let response = send_handoff(service, body, signature, from).await;
    if response.status != 200 {
        return Err((
            response.status,
            String::from_utf8_lossy(&response.body).into_owned(),
        ));
    }
    let proof = response
        .headers
        .iter()
        .find(|(name, _)| *name == SIGNATURE_HEADER)
        .map(|(_, value)| value.as_str());
    Ok(Site::of(config)
        .check_answer(
            &response.body,
            proof,
            &request.nonce,
            Purpose::HandoffAnswer,
            |a: &protocol::HandoffAnswer| &a.bootstrap,
        )
        .unwrap())
}

async fn send_handoff(
    service: &Arc<Mutex<Registrar>>,
    body: Vec<u8>,
    signature: String,
    from: Ipv4Addr,
) -> crate::https::Response {
    let mut headers = HeaderMap::new();
    headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
    handle(
        Request {
            method: hyper::Method::POST,
            path: protocol::HANDOFF_PATH.to_owned(),
            headers,
            body: body.into(),
            source: from,
            client_certificate: None,
        },
        service.clone(),
    )
    .await
}

#[tokio::test]
async fn handoff_reports_are_recorded_for_registered_nodes_only_and_answered_with_every_step() {
    use certs::moved::Step;
    let boot = config("node1");
    let (core, worker) = (config("node2"), config("node4"));
    let roots: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [boot_paths, core_paths, worker_paths] = [0, 1, 2].map(|i| Paths::under(roots[i].path()));
    let ca = TempCa::create(boot.site.domain.as_str(), &PLAN_UNDER_TEST.intermediates()).unwrap();
    let service = join_service(&boot_paths, &boot, ca);
    service
        .lock()
        .await
        .register(&boot.node, at(10), Generation::FIRST, false)
        .await
        .unwrap();

    // Not joined yet: refused, nothing recorded.
    let (status, said) = report(&service, &worker, at(14), Some(Step::Bundle))
        .await
        .unwrap_err();
    assert_eq!(status, 403, "{said}");
    assert!(said.contains("has not joined"), "{said}");
    join(&service, &worker_paths, &worker, at(14)).await;
    join(&service, &core_paths, &core, at(11)).await;

    // From elsewhere than where it joined: refused.
    let (status, said) = report(&service, &worker, at(99), Some(Step::Bundle))
        .await
        .unwrap_err();
    assert_eq!(status, 403, "{said}");
    assert!(said.contains("reports from there"), "{said}");

    // Recorded, and every registered node answered; no sub-CA yet.
    let answer = report(&service, &worker, at(14), Some(Step::Bundle))
        .await
        .unwrap();
    assert_eq!(answer.identity_ca, None);
    let steps: Vec<_> = answer
        .identity
        .iter()
        .map(|(n, s)| (n.as_str(), *s))
        .collect();
    assert_eq!(
        steps,
        [
            ("node1", None),
            ("node2", None),
            ("node4", Some(Step::Bundle))
        ]
    );
    {
        let r = service.lock().await;
        let kept = super::server::HandoffBook::load(&r.paths).unwrap();
        assert_eq!(kept.identity.len(), 1, "on disk before the answer");
    }

    // The last step said counts, not the highest.
    report(&service, &worker, at(14), Some(Step::Leaf))
        .await
        .unwrap();
    let answer = report(&service, &worker, at(14), None).await.unwrap();
    assert_eq!(answer.identity[&worker.node], None);

    // A replayed report, a forged signature and a signature of another
    // purpose change nothing.
    let request = protocol::HandoffReport {
        ticket: worker.ticket(),
        identity: Some(Step::Dropped),
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
    };
    let body = serde_json::to_vec(&request).unwrap();
    let signed = protocol::sign_request(&worker.signing_key(), Purpose::HandoffReport, &body);
    assert_eq!(
        send_handoff(&service, body.clone(), signed.clone(), at(14))
            .await
            .status,
        200
    );
    assert_ne!(
        send_handoff(&service, body.clone(), signed, at(14))
            .await
            .status,
        200,
        "a replay"
    );
    let other = protocol::HandoffReport {
        nonce: protocol::nonce(),
        identity: Some(Step::Bundle),
        ..request
    };
    let body = serde_json::to_vec(&other).unwrap();
    let enroll_signed =
        protocol::sign_request(&worker.signing_key(), Purpose::EnrollRequest, &body);
    assert_ne!(
        send_handoff(&service, body.clone(), enroll_signed, at(14))
            .await
            .status,
        200
    );
    // (lab_config's nodes share one key: another one forges.)
    let thief = SigningKey::from_seed(&Seed::from_bytes([5; 32]));
    let forged = protocol::sign_request(&thief, Purpose::HandoffReport, &body);
    assert_ne!(
        send_handoff(&service, body, forged, at(14)).await.status,
        200
    );
    let answer = report(&service, &core, at(11), None).await.unwrap();
    assert_eq!(answer.identity[&worker.node], Some(Step::Dropped));

    // The sub-CA, once handoff's first step gave it, goes to every node.
    service.lock().await.handoff.identity_ca = Some("PEM".into());
    let answer = report(&service, &core, at(11), None).await.unwrap();
    assert_eq!(answer.identity_ca.as_deref(), Some("PEM"));
}

#[tokio::test]
async fn once_the_temporary_services_ended_nothing_is_signed_by_the_temporary_ca() {
    let boot = config("node1");
    let worker = config("node4");
    let roots: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let [boot_paths, worker_paths] = [0, 1].map(|i| Paths::under(roots[i].path()));
    let ca = TempCa::create(boot.site.domain.as_str(), &PLAN_UNDER_TEST.intermediates()).unwrap();
    let service = join_service(&boot_paths, &boot, ca);
    service.lock().await.handoff.temporary_ended = true;
    let (response, _) = ask_to_join(&service, &worker_paths, &worker, at(14)).await;
    let said = String::from_utf8_lossy(&response.body).into_owned();
    // This bootstrap host moved nothing to FreeIPA (a test's), so there
    // is nothing it may sign with: refused, and nothing registered.
    assert_eq!(response.status, 503, "{said}");
    assert!(said.contains("the temporary CA has ended"), "{said}");
    assert!(!service
        .lock()
        .await
        .registry
        .hosts
        .contains_key(&worker.node));
}
