use super::*;
use node_contract::{DomainName, Generation, Seed, SigningKey};

fn name(s: &str) -> HostName {
    HostName::parse(s).unwrap()
}

fn core() -> Vec<HostName> {
    ["node1", "node2", "node3"]
        .iter()
        .map(|n| name(n))
        .collect()
}

fn at(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, octet)
}

/// A copy sealed once every core host had joined: node1 to node3 at .10
/// to .12.
fn backup(generation: u64) -> CaBackup {
    CaBackup {
        generation,
        root: Some(crate::pki::CaPems {
            cert_pem: String::new(),
            key_pem: String::new(),
        }),
        intermediates: BTreeMap::new(),
        registry: [
            (name("node1"), at(10)),
            (name("node2"), at(11)),
            (name("node3"), at(12)),
        ]
        .into(),
        generations: BTreeMap::new(),
        added_core: Default::default(),
        admission_deadline: 0,
    }
}

/// Record `node`'s answer (core unless named `node4`).
fn answer(d: &mut Discovery, node: &str, octet: u8, etcd_data: bool, backup: Option<u64>) {
    let address = Ipv4Addr::new(198, 18, 0, octet);
    let answer = peer_answer(node, octet, Generation::FIRST, address, etcd_data, backup);
    d.answers
        .entry(name(node))
        .or_default()
        .insert(address, answer);
    if let Some(g) = backup {
        d.backups.push(super::tests::backup(g));
    }
}

/// `node`'s signed answer (key [octet; 32]) from `address`.
fn peer_answer(
    node: &str,
    octet: u8,
    generation: Generation,
    address: Ipv4Addr,
    etcd_data: bool,
    backup: Option<u64>,
) -> PeerAnswer {
    let site = SigningKey::from_seed(&Seed::from_bytes([9; 32]));
    let role = if node == "node4" {
        Role::Worker
    } else {
        Role::Core
    };
    let ticket = site.ticket(
        &DomainName::parse("lab.example.org").unwrap(),
        &name(node),
        role,
        generation,
        SigningKey::from_seed(&Seed::from_bytes([octet; 32])).public_key(),
    );
    PeerAnswer {
        node: ticket,
        addresses: vec![address],
        etcd_data,
        ca_backup: backup.map(|g| format!("sealed {g}")),
        freeipa_ca: None,
        etcd_sub_ca: None,
        identity_sub_ca: None,
        identity_step: None,
    }
}

/// Answers as `vouched_for` reads them: (name, key octet, generation,
/// address) each.
fn heard(answers: &[(&str, u8, Generation, u8)]) -> Answers {
    let mut heard = Answers::new();
    for (node, key, generation, address) in answers {
        let answer = peer_answer(node, *key, *generation, at(*address), true, None);
        heard
            .entry(name(node))
            .or_default()
            .insert(at(*address), answer);
    }
    heard
}

#[test]
fn a_rebuilt_bootstrap_host_trusts_only_the_sealed_addresses() {
    let g1 = Generation::FIRST;
    let mut sealed = backup(4);
    sealed.registry = [(name("node2"), at(11)), (name("node3"), at(12))].into();
    sealed.generations = [(name("node3"), g1.next())].into();
    let answers = heard(&[
        // node2's genuine credential, answering from a stranger's address.
        ("node2", 2, g1, 50),
        // node3 with its retired credential, from its sealed address.
        ("node3", 3, g1, 12),
        // A worker the copy does not know, from one address.
        ("node4", 4, g1, 13),
        // A core host the copy does not know (it joined after the copy
        // was sealed), from one address: a copy of its user data could
        // answer from there as well as it.
        ("node6", 6, g1, 16),
    ]);
    let vouched = vouched_for(&answers, &sealed);
    assert_eq!(vouched, [(name("node4"), at(13))].into(), "{vouched:?}");

    // From their sealed addresses, with their current credentials: taken,
    // whatever else answered in their name from elsewhere.
    let answers = heard(&[
        ("node2", 2, g1, 11),
        ("node2", 2, g1, 50),
        ("node3", 3, g1.next(), 12),
        // Another worker the copy does not know, from two addresses.
        ("node4", 4, g1, 13),
        ("node4", 4, g1, 51),
    ]);
    let vouched = vouched_for(&answers, &sealed);
    assert_eq!(
        vouched,
        [(name("node2"), at(11)), (name("node3"), at(12))].into()
    );
}

/// A copy sealed when only `registered` (names, at .10 + their number)
/// had joined.
fn sealed_with(generation: u64, registered: &[u8]) -> CaBackup {
    CaBackup {
        registry: registered
            .iter()
            .map(|n| (name(&format!("node{n}")), at(9 + n)))
            .collect(),
        ..backup(generation)
    }
}

/// Record `node`'s answer (key `key`) from `address`, carrying `copy`
/// (opened) or, with `Some(None)`, a copy that does not open.
fn answer_with(
    d: &mut Discovery,
    node: &str,
    key: u8,
    address: u8,
    copy: Option<Option<CaBackup>>,
) {
    let mut answer = peer_answer(node, key, Generation::FIRST, at(address), true, None);
    if let Some(copy) = copy {
        answer.ca_backup = Some("sealed".into());
        d.backups.extend(copy);
    }
    answer.freeipa_ca = Some(format!("{node} CA at {address}"));
    d.answers
        .entry(name(node))
        .or_default()
        .insert(at(address), answer);
}

#[test]
fn a_core_host_the_copy_does_not_know_is_waited_for_never_taken_elsewhere() {
    let now = Instant::now();
    let me = name("node1");
    // node3 joined before node2: its copy does not know node2. A stranger
    // with node2's user data answers as node2 while node2 is silent.
    let impostor = |copy| {
        let mut d = Discovery::default();
        answer_with(&mut d, "node3", 3, 12, Some(Some(sealed_with(2, &[1, 3]))));
        answer_with(&mut d, "node2", 2, 50, copy);
        d
    };
    // With a copy of its own (which does not open): waited for, however long.
    let mut d = impostor(Some(None));
    for minutes in [0, 2, 60] {
        let later = now + Duration::from_secs(60 * minutes);
        assert!(d.verdict(&core(), &me, later).is_none());
    }
    // Saying it holds none (as a host that has not joined would): waited
    // for two minutes, then the restore goes ahead without it.
    let mut d = impostor(None);
    assert!(d.verdict(&core(), &me, now).is_none());
    assert!(d
        .verdict(&core(), &me, now + GRACE - Duration::from_secs(1))
        .is_none());
    let Some(Verdict::Restore { peers, freeipa, .. }) = d.verdict(&core(), &me, now + GRACE) else {
        panic!("a restore was expected");
    };
    assert_eq!(peers, [(name("node3"), at(12))].into());
    assert_eq!(
        freeipa.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(),
        ["node3"]
    );

    // The genuine node2 answers with its own copy, which knows it: at once,
    // node2 at its sealed address, and only there.
    let mut d = impostor(Some(None));
    assert!(d.verdict(&core(), &me, now).is_none());
    assert!(!d.settled(&name("node2")));
    answer_with(
        &mut d,
        "node2",
        2,
        11,
        Some(Some(sealed_with(3, &[1, 2, 3]))),
    );
    assert!(d.settled(&name("node2")));
    let Some(Verdict::Restore {
        peers,
        freeipa,
        backup,
        ..
    }) = d.verdict(&core(), &me, now)
    else {
        panic!("a restore was expected");
    };
    assert_eq!(backup.generation, 3);
    assert_eq!(
        peers,
        [(name("node2"), at(11)), (name("node3"), at(12))].into()
    );
    assert!(freeipa.iter().all(|p| p.address != at(50)), "{freeipa:?}");
}

#[test]
fn a_round_ends_early_only_once_each_core_host_answered_from_its_sealed_address() {
    let mut d = Discovery::default();
    // Before any copy: one address is enough, two are not.
    answer_with(&mut d, "node2", 2, 50, None);
    assert!(d.settled(&name("node2")));
    answer_with(&mut d, "node2", 2, 11, None);
    assert!(!d.settled(&name("node2")));
    // With a copy: its sealed address, whoever else answered.
    let mut d = Discovery::default();
    answer_with(&mut d, "node3", 3, 12, Some(Some(backup(3))));
    answer_with(&mut d, "node2", 2, 50, None);
    assert!(d.settled(&name("node3")));
    assert!(!d.settled(&name("node2")));
    answer_with(&mut d, "node2", 2, 11, None);
    assert!(d.settled(&name("node2")));
}

#[test]
fn silence_never_makes_a_new_ca() {
    let mut d = Discovery::default();
    let t0 = Instant::now();
    for minutes in [0, 1, 10, 60] {
        let now = t0 + Duration::from_secs(60 * minutes);
        assert!(d.verdict(&core(), &name("node1"), now).is_none());
    }
    // Workers saying "fresh" do not count: they hold no cluster.
    answer(&mut d, "node4", 13, false, None);
    assert!(d
        .verdict(&core(), &name("node1"), t0 + Duration::from_secs(3600))
        .is_none());
}

#[test]
fn every_core_peer_fresh_makes_a_new_ca_at_once() {
    let mut d = Discovery::default();
    answer(&mut d, "node2", 11, false, None);
    answer(&mut d, "node3", 12, false, None);
    assert!(matches!(
        d.verdict(&core(), &name("node1"), Instant::now()),
        Some(Verdict::Fresh)
    ));
}

#[test]
fn a_fresh_majority_waits_out_the_grace_for_the_rest() {
    let mut d = Discovery::default();
    let t0 = Instant::now();
    answer(&mut d, "node2", 11, false, None);
    assert!(d.verdict(&core(), &name("node1"), t0).is_none());
    assert!(d
        .verdict(&core(), &name("node1"), t0 + GRACE - Duration::from_secs(1))
        .is_none());
    assert!(matches!(
        d.verdict(&core(), &name("node1"), t0 + GRACE),
        Some(Verdict::Fresh)
    ));
}

#[test]
fn any_sealed_copy_means_restore_the_newest() {
    let mut d = Discovery::default();
    let now = Instant::now();
    // node2 answers with a copy while node3 is silent: wait a round or two
    // for node3's, which may be newer.
    answer(&mut d, "node2", 11, true, Some(3));
    assert!(d.verdict(&core(), &name("node1"), now).is_none());
    answer(&mut d, "node3", 12, true, Some(5));
    let Some(Verdict::Restore {
        backup,
        cluster_exists,
        peers,
        ..
    }) = d.verdict(&core(), &name("node1"), now)
    else {
        panic!("a restore was expected");
    };
    assert_eq!(backup.generation, 5);
    assert!(cluster_exists);
    assert_eq!(peers[&name("node3")], Ipv4Addr::new(198, 18, 0, 12));
    // Even a fresh majority never wins over an existing cluster.
    let mut d = Discovery::default();
    answer(&mut d, "node2", 11, false, None);
    answer(&mut d, "node3", 12, true, Some(1));
    assert!(matches!(
        d.verdict(&core(), &name("node1"), now + GRACE * 10),
        Some(Verdict::Restore { .. })
    ));
}

#[test]
fn a_copy_with_only_some_peers_answering_is_restored_after_a_few_rounds() {
    let mut d = Discovery::default();
    let now = Instant::now();
    answer(&mut d, "node2", 11, true, Some(2));
    assert!(d.verdict(&core(), &name("node1"), now).is_none());
    assert!(d.verdict(&core(), &name("node1"), now).is_none());
    assert!(matches!(
        d.verdict(&core(), &name("node1"), now),
        Some(Verdict::Restore { .. })
    ));
}

#[test]
fn a_restore_names_the_peers_that_run_freeipa_with_their_ca() {
    let mut d = Discovery::default();
    let now = Instant::now();
    answer(&mut d, "node2", 11, true, Some(3));
    answer(&mut d, "node3", 12, true, Some(3));
    answer(&mut d, "node4", 13, false, None);
    // node3 and the worker node4 say they run FreeIPA: only the core
    // host counts (a worker runs no server, whatever it says).
    for node in ["node3", "node4"] {
        for answer in d.answers.get_mut(&name(node)).unwrap().values_mut() {
            answer.freeipa_ca = Some(format!("{node} CA"));
        }
    }
    let Some(Verdict::Restore { freeipa, .. }) = d.verdict(&core(), &name("node1"), now) else {
        panic!("a restore was expected");
    };
    assert_eq!(
        freeipa,
        [crate::state::FreeipaPeer {
            node: name("node3"),
            address: Ipv4Addr::new(198, 18, 0, 12),
            ca_pem: "node3 CA".into(),
        }]
    );
}
