use super::*;
use crate::certs::plan::tests::etcd_ca;
use crate::pki;
use node_contract::Seed;

const DOMAIN: &str = "lab.example.org";
const NOW: u64 = 1_000_000;
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

fn name(s: &str) -> HostName {
    HostName::parse(s).unwrap()
}

fn domain() -> DomainName {
    DomainName::parse(DOMAIN).unwrap()
}

fn site_key() -> SigningKey {
    SigningKey::from_seed(&Seed::from_bytes([100; 32]))
}

fn node_key(n: u8) -> SigningKey {
    SigningKey::from_seed(&Seed::from_bytes([n; 32]))
}

/// The site's ticket for node `n` (key [n; 32]), first generation.
fn ticket(node: &str, n: u8, role: Role) -> Ticket {
    ticket_of(node, n, role, Generation::FIRST)
}

fn ticket_of(node: &str, n: u8, role: Role, generation: Generation) -> Ticket {
    site_key().ticket(
        &domain(),
        &name(node),
        role,
        generation,
        node_key(n).public_key(),
    )
}

fn site() -> Site {
    Site {
        domain: domain(),
        site_key: site_key().public_key(),
        vpc: VpcRange::parse("198.18.0.0/24").unwrap(),
        bootstrap: name("node1"),
        core: vec![name("node1"), name("node2"), name("node3")],
    }
}

struct Req {
    ticket: Ticket,
    csr_for: String,
    etcd: bool,
    nonce: String,
    timestamp: u64,
    addresses: Vec<Ipv4Addr>,
    admission: Option<Admission>,
}

fn req(node: &str, n: u8, role: Role) -> Req {
    Req {
        ticket: ticket(node, n, role),
        csr_for: node.into(),
        etcd: role == Role::Core,
        nonce: nonce(),
        timestamp: NOW,
        addresses: vec![SOURCE],
        admission: None,
    }
}

impl Req {
    fn body(&self) -> Vec<u8> {
        let fqdn = format!("{}.{DOMAIN}", self.csr_for);
        let (_, csr) = pki::new_key_and_csr(&fqdn).unwrap();
        let mut csrs = BTreeMap::from([(CertPurpose::Identity, csr.clone())]);
        if self.etcd {
            csrs.insert(CertPurpose::Etcd, csr);
        }
        serde_json::to_vec(&JoinRequest {
            ticket: self.ticket.clone(),
            addresses: self.addresses.clone(),
            csrs,
            timestamp: self.timestamp,
            nonce: self.nonce.clone(),
            admission: self.admission.clone(),
        })
        .unwrap()
    }
}

/// Judge `body` signed with key `signer`.
fn judge(body: &[u8], signer: u8, replay: &mut ReplayGuard) -> Result<Verified, Refusal> {
    let signature = sign_request(&node_key(signer), Purpose::JoinRequest, body);
    site().verify_join(
        crate::certs::PLAN,
        SOURCE,
        Some(&signature),
        body,
        replay,
        NOW,
    )
}

#[test]
fn an_honest_request_is_verified_once() {
    let mut replay = ReplayGuard::default();
    let body = req("node2", 2, Role::Core).body();
    let verified = judge(&body, 2, &mut replay).unwrap();
    assert_eq!(verified.node().as_str(), "node2");
    assert_eq!(verified.address, SOURCE);
    assert_eq!(judge(&body, 2, &mut replay), Err(Refusal::Replayed));
}

#[test]
fn the_replay_guard_survives_being_written_and_read_back() {
    let mut replay = ReplayGuard::default();
    let body = req("node2", 2, Role::Core).body();
    judge(&body, 2, &mut replay).unwrap();
    let saved = serde_json::to_vec(&replay).unwrap();
    let mut restored: ReplayGuard = serde_json::from_slice(&saved).unwrap();
    assert_eq!(judge(&body, 2, &mut restored), Err(Refusal::Replayed));
}

#[test]
fn forged_requests_are_refused() {
    let mut replay = ReplayGuard::default();
    // node3's key signing a request that shows node2's ticket.
    let body = req("node2", 2, Role::Core).body();
    assert!(matches!(
        judge(&body, 3, &mut replay),
        Err(Refusal::Forged(Forgery::Message(_)))
    ));
    // A ticket the site never signed: node3's key presented as node2's.
    let mut forged = req("node2", 2, Role::Core);
    forged.ticket.public_key = node_key(3).public_key();
    assert!(matches!(
        judge(&forged.body(), 3, &mut replay),
        Err(Refusal::Forged(Forgery::Ticket(_)))
    ));
    // A worker's ticket promoted to core.
    let mut promoted = req("node4", 4, Role::Worker);
    promoted.ticket.role = Role::Core;
    assert!(matches!(
        judge(&promoted.body(), 4, &mut replay),
        Err(Refusal::Forged(Forgery::Ticket(_)))
    ));
    // A ticket from another site's key.
    let mut stranger = req("node2", 2, Role::Core);
    stranger.ticket = SigningKey::from_seed(&Seed::from_bytes([101; 32])).ticket(
        &domain(),
        &name("node2"),
        Role::Core,
        Generation::FIRST,
        node_key(2).public_key(),
    );
    assert!(matches!(
        judge(&stranger.body(), 2, &mut replay),
        Err(Refusal::Forged(Forgery::Ticket(_)))
    ));
    // No or garbled signature.
    let body = req("node2", 2, Role::Core).body();
    for header in [None, Some("zz"), Some("00")] {
        assert!(matches!(
            site().verify_join(crate::certs::PLAN, SOURCE, header, &body, &mut replay, NOW),
            Err(Refusal::Forged(_))
        ));
    }
}

#[test]
fn clocks_nonces_sizes_and_shapes_are_checked() {
    let mut replay = ReplayGuard::default();
    let mut old = req("node2", 2, Role::Core);
    old.timestamp = NOW - MAX_SKEW - 1;
    assert!(matches!(
        judge(&old.body(), 2, &mut replay),
        Err(Refusal::Stale { .. })
    ));
    let mut bad_nonce = req("node2", 2, Role::Core);
    bad_nonce.nonce = "short".into();
    assert!(matches!(
        judge(&bad_nonce.body(), 2, &mut replay),
        Err(Refusal::Malformed(_))
    ));
    assert!(matches!(
        judge(b"\x00\xffnot json", 2, &mut replay),
        Err(Refusal::Malformed(_))
    ));
    assert_eq!(
        judge(&vec![b' '; MAX_BODY + 1], 2, &mut replay),
        Err(Refusal::TooLarge)
    );
}

#[test]
fn addresses_must_be_the_source_and_inside_the_vpc() {
    let mut replay = ReplayGuard::default();
    let mut elsewhere = req("node2", 2, Role::Core);
    elsewhere.addresses = vec![Ipv4Addr::new(198, 18, 0, 99)];
    assert!(matches!(
        judge(&elsewhere.body(), 2, &mut replay),
        Err(Refusal::Address(_))
    ));
    let mut outside = req("node2", 2, Role::Core);
    outside.addresses = vec![SOURCE, Ipv4Addr::new(10, 0, 0, 1)];
    assert!(matches!(
        judge(&outside.body(), 2, &mut replay),
        Err(Refusal::Address(_))
    ));
}

#[test]
fn a_worker_gets_no_etcd_certificate() {
    let mut replay = ReplayGuard::default();
    let mut greedy = req("node4", 4, Role::Worker);
    greedy.etcd = true;
    assert!(matches!(
        judge(&greedy.body(), 4, &mut replay),
        Err(Refusal::NotAllowed(_))
    ));
    // An honest worker: identity only.
    let ca = TempCa::create(DOMAIN, &crate::certs::PLAN.intermediates()).unwrap();
    let verified = judge(&req("node4", 4, Role::Worker).body(), 4, &mut replay).unwrap();
    let issued = certify(&ca, crate::certs::PLAN, &domain(), &verified).unwrap();
    assert_eq!(issued.keys().collect::<Vec<_>>(), [&CertPurpose::Identity]);
    let identity = &issued[&CertPurpose::Identity];
    assert!(pki::issued_by(
        &identity.certificate_pem,
        ca.root.cert_pem()
    ));
    assert!(!pki::issued_by(
        &identity.certificate_pem,
        etcd_ca(&ca).cert_pem()
    ));
    assert_eq!(identity.ca_pem, ca.root.cert_pem());
    // A core host: both, each from its own CA, with that CA to trust.
    let verified = judge(&req("node2", 2, Role::Core).body(), 2, &mut replay).unwrap();
    let issued = certify(&ca, crate::certs::PLAN, &domain(), &verified).unwrap();
    let etcd = &issued[&CertPurpose::Etcd];
    assert!(pki::issued_by(
        &etcd.certificate_pem,
        etcd_ca(&ca).cert_pem()
    ));
    assert!(!pki::issued_by(&etcd.certificate_pem, ca.root.cert_pem()));
    assert_eq!(etcd.ca_pem, etcd_ca(&ca).cert_pem());
}

#[test]
fn a_request_for_no_certificate_is_refused() {
    let mut replay = ReplayGuard::default();
    let mut empty = req("node2", 2, Role::Core);
    empty.etcd = false;
    let body: serde_json::Value = serde_json::from_slice(&empty.body()).unwrap();
    let mut body = body;
    body["csrs"] = serde_json::json!({});
    let body = serde_json::to_vec(&body).unwrap();
    assert!(matches!(
        judge(&body, 2, &mut replay),
        Err(Refusal::NotAllowed(why)) if why.contains("no certificate")
    ));
    // A purpose the plan does not know is not read at all.
    let mut unknown: serde_json::Value = serde_json::from_slice(&empty.body()).unwrap();
    unknown["csrs"]["kubernetes"] = serde_json::json!("CSR");
    assert!(matches!(
        judge(&serde_json::to_vec(&unknown).unwrap(), 2, &mut replay),
        Err(Refusal::Malformed(_))
    ));
}

#[test]
fn a_csr_for_another_name_is_refused() {
    let mut replay = ReplayGuard::default();
    let ca = TempCa::create(DOMAIN, &crate::certs::PLAN.intermediates()).unwrap();
    let mut other = req("node2", 2, Role::Core);
    other.csr_for = "node3".into();
    let verified = judge(&other.body(), 2, &mut replay).unwrap();
    assert!(matches!(
        certify(&ca, crate::certs::PLAN, &domain(), &verified),
        Err(Refusal::Csr(_))
    ));
}

#[test]
fn admission_closes_when_every_host_joined_or_the_deadline_passed() {
    let rule = AdmissionRule {
        hosts: 3,
        deadline: NOW + 100,
    };
    let at = |o| Ipv4Addr::new(198, 18, 0, o);
    let generations = BTreeMap::new();
    let node = |n: &str| ticket(n, 2, Role::Core);
    let mut registry = BTreeMap::new();
    registry.insert(name("node1"), at(10));
    assert_eq!(
        rule.decide(&registry, &generations, &node("node2"), at(11), None, NOW),
        Ok(Decision::New)
    );
    registry.insert(name("node2"), at(11));
    registry.insert(name("node3"), at(12));
    // Everyone is in: no new host, but renewals go on.
    assert!(matches!(
        rule.decide(&registry, &generations, &node("node4"), at(13), None, NOW),
        Err(Refusal::Closed(why)) if why.contains("every host")
    ));
    assert_eq!(
        rule.decide(&registry, &generations, &node("node2"), at(11), None, NOW),
        Ok(Decision::Renew)
    );
    // Past the deadline, even with hosts missing.
    registry.remove(&name("node3"));
    assert!(matches!(
        rule.decide(&registry, &generations, &node("node3"), at(12), None, NOW + 100),
        Err(Refusal::Closed(why)) if why.contains("deadline")
    ));
    assert_eq!(rule.closed_because(1, NOW), None);
}

/// A host added to the site after the bootstrap host's own rule closed
/// joins by the site's admission of its credential, within that
/// admission's window, and in no other way.
#[test]
fn a_host_added_later_joins_by_its_own_admission() {
    let rule = AdmissionRule {
        hosts: 3,
        deadline: NOW - 1,
    };
    let at = |o| Ipv4Addr::new(198, 18, 0, o);
    let registry: BTreeMap<_, _> = [
        (name("node1"), at(10)),
        (name("node2"), at(21)),
        (name("node3"), at(12)),
    ]
    .into();
    let generations = BTreeMap::new();
    let decide = |verified: &Verified, now| {
        rule.decide(
            &registry,
            &generations,
            &verified.request.ticket,
            verified.address,
            verified.admitted_until,
            now,
        )
    };
    let mut replay = ReplayGuard::default();
    let mut node6 = req("node6", 6, Role::Worker);
    node6.admission = Some(site_key().admission(&domain(), &node6.ticket, NOW + 100));
    let verified = judge(&node6.body(), 6, &mut replay).unwrap();
    assert_eq!(verified.admitted_until, Some(NOW + 100));
    assert_eq!(decide(&verified, NOW), Ok(Decision::New));
    // Its window closes as the first hosts' did.
    assert!(matches!(
        decide(&verified, NOW + 100),
        Err(Refusal::Closed(why)) if why.contains("node6's own admission closed")
    ));
    // Without one, the rule alone decides: closed.
    node6.admission = None;
    node6.nonce = nonce();
    let bare = judge(&node6.body(), 6, &mut replay).unwrap();
    assert!(matches!(
        decide(&bare, NOW),
        Err(Refusal::Closed(why)) if why.contains("shows no admission")
    ));
    // A window its holder extended, and another credential's admission
    // (node5's, or node6's for a key the site never gave it), are
    // forgeries: refused before anything is decided.
    let mut extended = site_key().admission(&domain(), &node6.ticket, NOW + 100);
    extended.not_after = NOW + 1_000_000;
    let node5 = ticket("node5", 5, Role::Worker);
    for admission in [
        extended,
        site_key().admission(&domain(), &node5, NOW + 100),
        node_key(6).admission(&domain(), &node6.ticket, NOW + 100),
    ] {
        node6.admission = Some(admission);
        node6.nonce = nonce();
        assert_eq!(
            judge(&node6.body(), 6, &mut replay),
            Err(Refusal::Forged(Forgery::Admission(name("node6"))))
        );
    }
    // An admission moves no registered name: node2's credential with
    // one, from another address than its registered one, is still
    // refused as taken.
    let mut node2 = req("node2", 2, Role::Core);
    node2.admission = Some(site_key().admission(&domain(), &node2.ticket, NOW + 100));
    let verified = judge(&node2.body(), 2, &mut replay).unwrap();
    assert!(matches!(
        decide(&verified, NOW),
        Err(Refusal::Taken { at: a, .. }) if a == at(21)
    ));
}

/// A core host the site was not launched with (no other node's config
/// names it) joins only by the site's admission of its credential: refused
/// without one, and marked as added (it joins the running etcd cluster)
/// with one; a core host of the config is not.
#[test]
fn a_core_host_added_later_joins_only_by_its_admission() {
    let mut replay = ReplayGuard::default();
    let mut node6 = req("node6", 6, Role::Core);
    assert!(matches!(
        judge(&node6.body(), 6, &mut replay),
        Err(Refusal::NotAllowed(why)) if why.contains("not launched with")
            && why.contains("node1, node2, node3")
            && why.contains("shows no admission")
    ));
    node6.admission = Some(site_key().admission(&domain(), &node6.ticket, NOW + 100));
    node6.nonce = nonce();
    let verified = judge(&node6.body(), 6, &mut replay).unwrap();
    assert!(verified.added_core);
    assert_eq!(verified.admitted_until, Some(NOW + 100));
    // Its admission is checked like any other: one signed by its own key
    // (not the site's) is a forgery.
    node6.admission = Some(node_key(6).admission(&domain(), &node6.ticket, NOW + 100));
    node6.nonce = nonce();
    assert_eq!(
        judge(&node6.body(), 6, &mut replay),
        Err(Refusal::Forged(Forgery::Admission(name("node6"))))
    );
    let mut node2 = req("node2", 2, Role::Core);
    node2.admission = Some(site_key().admission(&domain(), &node2.ticket, NOW + 100));
    assert!(!judge(&node2.body(), 2, &mut replay).unwrap().added_core);
}

#[test]
fn only_a_newer_generation_moves_a_name() {
    let rule = AdmissionRule {
        hosts: 3,
        deadline: NOW + 100,
    };
    let at = |o| Ipv4Addr::new(198, 18, 0, o);
    let g1 = Generation::FIRST;
    let g2 = g1.next();
    let registry: BTreeMap<_, _> = [(name("node2"), at(11))].into();
    let mut generations = BTreeMap::new();

    // The same credential from another address: taken, whether the old
    // address answers or not (this decision never asks it).
    assert!(matches!(
        rule.decide(&registry, &generations, &ticket_of("node2", 2, Role::Core, g1), at(21), None, NOW),
        Err(Refusal::Taken { at: a, generation, .. }) if a == at(11) && generation == g1
    ));
    // The next generation, from anywhere (even where the old one was),
    // takes the name back, also after admission closed.
    let late = NOW + 1000;
    for address in [at(21), at(11)] {
        assert_eq!(
            rule.decide(
                &registry,
                &generations,
                &ticket_of("node2", 2, Role::Core, g2),
                address,
                None,
                late
            ),
            Ok(Decision::Rebuilt { from: at(11) })
        );
    }
    // Once generation 2 is registered, generation 1 is refused from the
    // old address as from any other.
    generations.insert(name("node2"), g2);
    for address in [at(11), at(21)] {
        let refused = rule.decide(
            &registry,
            &generations,
            &ticket_of("node2", 2, Role::Core, g1),
            address,
            None,
            NOW,
        );
        assert!(
            matches!(refused, Err(Refusal::Retired { shown, known, .. }) if shown == g1 && known == g2),
            "{refused:?}"
        );
    }
    assert_eq!(
        rule.decide(
            &registry,
            &generations,
            &ticket_of("node2", 2, Role::Core, g2),
            at(11),
            None,
            NOW
        ),
        Ok(Decision::Renew)
    );
    // A retirement known for a host that is not registered holds too.
    let empty = BTreeMap::new();
    let retired: BTreeMap<_, _> = [(name("node3"), g2)].into();
    assert!(matches!(
        rule.decide(
            &empty,
            &retired,
            &ticket_of("node3", 3, Role::Core, g1),
            at(12),
            None,
            NOW
        ),
        Err(Refusal::Retired { .. })
    ));
    assert_eq!(
        Refusal::Retired {
            node: name("n"),
            shown: g1,
            known: g2
        }
        .http_status(),
        403
    );
}

#[test]
fn only_the_bootstrap_host_may_ask_peers() {
    let request = |from: Ticket, signer: u8, timestamp: u64| {
        let body = serde_json::to_vec(&PeerRequest {
            from,
            address: Ipv4Addr::new(198, 18, 0, 10),
            timestamp,
            nonce: nonce(),
            moved: None,
        })
        .unwrap();
        let signature = sign_request(&node_key(signer), Purpose::PeerRequest, &body);
        site().verify_peer_request(Some(&signature), &body, NOW)
    };
    assert!(request(ticket("node1", 1, Role::Core), 1, NOW).is_ok());
    assert!(matches!(
        request(ticket("node2", 2, Role::Core), 2, NOW),
        Err(Refusal::NotAllowed(_))
    ));
    assert!(matches!(
        request(ticket("node1", 1, Role::Core), 2, NOW),
        Err(Refusal::Forged(_))
    ));
    assert!(matches!(
        request(ticket("node1", 1, Role::Core), 1, NOW - MAX_SKEW - 1),
        Err(Refusal::Stale { .. })
    ));
}

#[test]
fn answers_are_bound_to_the_request_and_the_answerer() {
    let answer = PeerAnswer {
        node: ticket("node2", 2, Role::Core),
        addresses: vec![SOURCE],
        etcd_data: true,
        ca_backup: None,
        freeipa_ca: None,
        etcd_sub_ca: None,
        identity_sub_ca: None,
        identity_step: None,
    };
    let body = serde_json::to_vec(&answer).unwrap();
    let (n1, n2) = (nonce(), nonce());
    let proof = sign_answer(&node_key(2), Purpose::PeerAnswer, &n1, &body);
    let check = |body: &[u8], nonce: &str, proof: &str, purpose| {
        site().check_answer(body, Some(proof), nonce, purpose, |a: &PeerAnswer| &a.node)
    };
    assert_eq!(
        check(&body, &n1, &proof, Purpose::PeerAnswer),
        Ok(answer.clone())
    );
    assert!(
        check(&body, &n2, &proof, Purpose::PeerAnswer).is_err(),
        "another request"
    );
    assert!(
        check(&body, &n1, &proof, Purpose::JoinAnswer).is_err(),
        "another purpose"
    );
    // The answer names node3 but node2 signed it.
    let mut renamed = answer;
    renamed.node = ticket("node3", 3, Role::Core);
    let renamed = serde_json::to_vec(&renamed).unwrap();
    let proof = sign_answer(&node_key(2), Purpose::PeerAnswer, &n1, &renamed);
    assert!(check(&renamed, &n1, &proof, Purpose::PeerAnswer).is_err());
}
