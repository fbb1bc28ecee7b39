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

fn backup(generation: u64) -> CaBackup {
    CaBackup {
        generation,
        root_cert_pem: String::new(),
        root_key_pem: String::new(),
        etcd_cert_pem: String::new(),
        etcd_key_pem: String::new(),
        registry: BTreeMap::new(),
        generations: BTreeMap::new(),
        admission_deadline: 0,
    }
}

/// Record `node`'s answer (core unless named `node4`).
fn answer(d: &mut Discovery, node: &str, octet: u8, etcd_data: bool, backup: Option<u64>) {
    let address = Ipv4Addr::new(198, 18, 0, octet);
    let answer = peer_answer(node, octet, Generation::FIRST, address, etcd_data, backup);
    d.answers.insert(name(node), (address, answer));
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
    }
}

#[test]
fn a_rebuilt_bootstrap_host_trusts_only_the_sealed_addresses() {
    let at = |o| Ipv4Addr::new(198, 18, 0, o);
    let g1 = Generation::FIRST;
    let mut sealed = backup(4);
    sealed.registry = [(name("node2"), at(11)), (name("node3"), at(12))].into();
    sealed.generations = [(name("node3"), g1.next())].into();
    let answers: BTreeMap<HostName, (Ipv4Addr, PeerAnswer)> = [
        // node2's genuine credential, answering from a stranger's address.
        (
            name("node2"),
            (at(50), peer_answer("node2", 2, g1, at(50), true, None)),
        ),
        // node3 with its retired credential, from its sealed address.
        (
            name("node3"),
            (at(12), peer_answer("node3", 3, g1, at(12), true, None)),
        ),
        // A worker the copy does not know, from one address.
        (
            name("node4"),
            (at(13), peer_answer("node4", 4, g1, at(13), false, None)),
        ),
        // Another unknown name, heard from two addresses.
        (
            name("node5"),
            (at(14), peer_answer("node5", 5, g1, at(14), false, None)),
        ),
    ]
    .into();
    let contested = [name("node5")].into();
    let vouched = vouched_for(&answers, &contested, &sealed);
    assert_eq!(vouched, [(name("node4"), at(13))].into(), "{vouched:?}");

    // From their sealed addresses, with their current credentials: taken.
    let answers: BTreeMap<HostName, (Ipv4Addr, PeerAnswer)> = [
        (
            name("node2"),
            (at(11), peer_answer("node2", 2, g1, at(11), true, None)),
        ),
        (
            name("node3"),
            (
                at(12),
                peer_answer("node3", 3, g1.next(), at(12), true, None),
            ),
        ),
    ]
    .into();
    let vouched = vouched_for(&answers, &BTreeSet::new(), &sealed);
    assert_eq!(
        vouched,
        [(name("node2"), at(11)), (name("node3"), at(12))].into()
    );
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
        d.answers.get_mut(&name(node)).unwrap().1.freeipa_ca = Some(format!("{node} CA"));
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
