//! The lock server against a real etcd (Debian's etcd-server, on
//! loopback, one per test, over mutual TLS) and the gates on every shape
//! of cluster.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use node_contract::{HostName, Role};

use super::gates::{self, MemberView, Probes};
use super::protocol::{kind, ClientParams, LockRequest, Operation};
use super::server::{Caller, LockServer, Site};
use super::store::{self, Holder};
use crate::etcd::{Client, Member, Status};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member on loopback (one per test) over mutual TLS, as on a
/// core host, and a client of it; None (the test skips) when there is no
/// etcd here.
async fn etcd() -> Option<(crate::etcd::tests::Etcd, Client)> {
    let ca =
        crate::pki::TempCa::create("lab.example.org", &crate::certs::PLAN.intermediates()).unwrap();
    let at = |port| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let (client, peer) = (at(free_port()), at(free_port()));
    let server = crate::etcd::tests::start_etcd(client, peer, &ca)?;
    let etcd = crate::etcd::tests::client_of(&ca, client);
    crate::etcd::tests::wait_ready(&etcd).await;
    Some((server, etcd))
}

fn host(name: &str) -> HostName {
    HostName::parse(name).unwrap()
}

fn holder(name: &str) -> Holder {
    Holder {
        node: host(name),
        id: format!("{name}-id"),
        since: 1,
    }
}

async fn open() -> Result<(), super::protocol::Refusal> {
    Ok(())
}

#[test]
fn zincati_id_is_systemds_app_specific_id() {
    // `systemd-id128 machine-id --app-specific=de35106b6ec24688b63afddaa156679b`
    // (systemd 252) on a machine whose /etc/machine-id is the first.
    assert_eq!(
        super::zincati_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap(),
        "975228d46dc94622b9bbe16671e2b58d"
    );
    assert!(super::zincati_id("").is_err());
    assert!(super::zincati_id("00000000000000000000000000000000").is_err());
    assert!(super::zincati_id("3d1219c7-c4c5-404a-aa1f-6d2a48adfda4").is_err());
}

#[test]
fn client_urls_are_parsed_strictly() {
    assert_eq!(
        gates::client_url("https://node1.lab.example.org:2379").unwrap(),
        ("node1.lab.example.org", 2379)
    );
    for bad in [
        "node1:2379",
        "https://node1",
        "ftp://a:1",
        "https://:1",
        "http://node1:2379",
    ] {
        assert!(gates::client_url(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn compare_and_swap_lets_one_writer_win() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    // Revision 0 names a key that does not exist: only one creates it.
    assert!(etcd.compare_and_swap(b"/k", 0, b"a").await.unwrap());
    assert!(
        !etcd.compare_and_swap(b"/k", 0, b"b").await.unwrap(),
        "created twice"
    );
    let v = etcd.get(b"/k").await.unwrap().unwrap();
    assert_eq!(v.value, b"a");
    assert!(!etcd
        .compare_and_swap(b"/k", v.mod_revision + 1, b"c")
        .await
        .unwrap());
    assert!(etcd
        .compare_and_swap(b"/k", v.mod_revision, b"d")
        .await
        .unwrap());
    assert_eq!(etcd.get(b"/k").await.unwrap().unwrap().value, b"d");
    assert_eq!(etcd.get(b"/absent").await.unwrap(), None);
    let members = etcd.member_list().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "node1");
    let status = etcd.status(&etcd.endpoints()[0]).await.unwrap();
    assert_eq!(status.leader, members[0].id);
}

#[tokio::test]
async fn locks_are_owned_recursive_and_counted() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    store::lock(&etcd, "workers", 2, holder("w1"), open)
        .await
        .unwrap();
    // Recursive: locking again changes nothing.
    store::lock(&etcd, "workers", 2, holder("w1"), open)
        .await
        .unwrap();
    store::lock(&etcd, "workers", 2, holder("w2"), open)
        .await
        .unwrap();
    let full = store::lock(&etcd, "workers", 2, holder("w3"), open)
        .await
        .unwrap_err();
    assert_eq!(full.kind, kind::SEMAPHORE_FULL);
    assert!(full.value.contains("w1, w2"), "{full:?}");
    // Another group has its own slots.
    store::lock(&etcd, "core", 1, holder("c1"), open)
        .await
        .unwrap();
    // Owned: w3 (holding nothing) unlocking frees nobody's slot.
    store::unlock(&etcd, "workers", &host("w3"), open)
        .await
        .unwrap();
    assert_eq!(store::holders(&etcd, "workers").await.unwrap().len(), 2);
    // Unbalanced unlocks are allowed.
    store::unlock(&etcd, "workers", &host("w1"), open)
        .await
        .unwrap();
    store::unlock(&etcd, "workers", &host("w1"), open)
        .await
        .unwrap();
    store::lock(&etcd, "workers", 2, holder("w3"), open)
        .await
        .unwrap();
    let names: Vec<String> = store::holders(&etcd, "workers")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.node.to_string())
        .collect();
    assert_eq!(names, ["w2", "w3"]);
}

#[tokio::test]
async fn concurrent_lockers_get_one_slot_between_them() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    // Sixteen lock servers race for a single slot, each through its own
    // client: exactly one wins, the others are told who holds it.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..16 {
        let etcd = etcd.clone();
        tasks.spawn(
            async move { store::lock(&etcd, "core", 1, holder(&format!("c{n}")), open).await },
        );
    }
    let mut granted = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => granted += 1,
            Err(refusal) => assert!(
                [kind::SEMAPHORE_FULL, kind::STORE_UNAVAILABLE].contains(&refusal.kind.as_str()),
                "{refusal:?}"
            ),
        }
    }
    assert_eq!(granted, 1);
    assert_eq!(store::holders(&etcd, "core").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_closed_gate_takes_no_slot_and_keeps_a_held_one() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    let closed = || async {
        Err(super::protocol::Refusal::new(
            503,
            kind::ETCD_UNHEALTHY,
            "no",
        ))
    };
    let refused = store::lock(&etcd, "core", 1, holder("c1"), closed)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, kind::ETCD_UNHEALTHY);
    assert!(store::holders(&etcd, "core").await.unwrap().is_empty());
    store::lock(&etcd, "core", 1, holder("c1"), open)
        .await
        .unwrap();
    let kept = store::unlock(&etcd, "core", &host("c1"), closed)
        .await
        .unwrap_err();
    assert_eq!(kept.kind, kind::ETCD_UNHEALTHY);
    assert_eq!(store::holders(&etcd, "core").await.unwrap().len(), 1);
}

/// Probes with canned answers: the gates' judgement is tested below on
/// built views, and here only its wiring.
#[derive(Default)]
struct Canned {
    etcd: Mutex<Option<Result<Vec<MemberView>, String>>>,
    freeipa: Mutex<HashMap<String, Result<(), String>>>,
}

impl Probes for Canned {
    /// The members of the canned views, else node1 to node3.
    async fn members(&self) -> Result<Vec<Member>, String> {
        match self.etcd.lock().unwrap().clone() {
            Some(Ok(views)) => Ok(views.into_iter().map(|v| v.member).collect()),
            Some(Err(e)) => Err(e),
            None => Ok(three_healthy().into_iter().map(|v| v.member).collect()),
        }
    }
    async fn etcd(&self) -> Result<Vec<MemberView>, String> {
        self.etcd.lock().unwrap().clone().expect("etcd probed")
    }
    async fn freeipa(&self, host: &HostName) -> Result<(), String> {
        self.freeipa
            .lock()
            .unwrap()
            .get(host.as_str())
            .cloned()
            .unwrap_or_else(|| Err(format!("{host} unknown")))
    }
}

fn member(id: u64, name: &str) -> Member {
    Member {
        id,
        name: name.into(),
        peer_urls: vec![format!("https://{name}.lab.example.org:2380")],
        client_urls: vec![format!("https://{name}.lab.example.org:2379")],
        is_learner: false,
    }
}

fn healthy(id: u64, leader: u64, index: u64) -> Result<Status, String> {
    Ok(Status {
        member_id: id,
        leader,
        raft_term: 2,
        raft_index: index,
        raft_applied_index: index,
        version: "3.4.23".into(),
        errors: vec![],
    })
}

fn three_healthy() -> Vec<MemberView> {
    (1..=3)
        .map(|n| MemberView {
            member: member(n, &format!("node{n}")),
            status: healthy(n, 1, 500),
        })
        .collect()
}

#[test]
fn etcd_spares_a_member_only_when_all_are_healthy_and_caught_up() {
    assert_eq!(gates::etcd_can_spare_one(&three_healthy()), Ok(()));
    let broken = |change: &dyn Fn(&mut Vec<MemberView>)| {
        let mut views = three_healthy();
        change(&mut views);
        gates::etcd_can_spare_one(&views).unwrap_err()
    };
    assert!(broken(&|v| v[2].status = Err("connection refused".into()))
        .contains("node3 does not answer"));
    assert!(
        broken(&|v| v[1].status = healthy(2, 1, 500 - gates::MAX_LAG - 1))
            .contains("node2 is 101 entries behind")
    );
    assert!(broken(&|v| v[0].status = healthy(1, 2, 500)).contains("disagree"));
    assert!(broken(&|v| {
        for (n, view) in v.iter_mut().enumerate() {
            view.status = healthy(n as u64 + 1, 0, 500);
        }
    })
    .contains("no leader"));
    assert!(broken(&|v| v[2].member.is_learner = true).contains("learner"));
    assert!(broken(&|v| {
        v.pop();
    })
    .contains("2 voting member(s)"));
    assert!(broken(&|v| {
        if let Ok(s) = &mut v[0].status {
            s.errors.push("NOSPACE".into());
        }
    })
    .contains("NOSPACE"));
    // A follower just behind is caught up.
    let mut close = three_healthy();
    close[2].status = healthy(3, 1, 500 - gates::MAX_LAG);
    assert_eq!(gates::etcd_can_spare_one(&close), Ok(()));
}

#[test]
fn a_member_is_back_once_it_answers_and_caught_up() {
    let node3 = host("node3");
    assert_eq!(gates::member_is_back(&three_healthy(), &node3), Ok(()));
    let mut views = three_healthy();
    views[2].status = Err("connection refused".into());
    assert!(gates::member_is_back(&views, &node3)
        .unwrap_err()
        .contains("does not answer"));
    // Another member down does not hold node3 back.
    let mut views = three_healthy();
    views[1].status = Err("connection refused".into());
    assert_eq!(gates::member_is_back(&views, &node3), Ok(()));
    views[2].status = healthy(3, 1, 10);
    assert!(gates::member_is_back(&views, &node3)
        .unwrap_err()
        .contains("490 entries behind"));
    assert!(gates::member_is_back(&three_healthy(), &host("node9")).is_err());
}

fn site_server(etcd: Client) -> LockServer<Canned> {
    LockServer {
        etcd,
        site: Site {
            core: vec![host("node1"), host("node2"), host("node3")],
            host_count: 4,
        },
        probes: Canned::default(),
    }
}

fn app_id(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

fn request(operation: Operation, id: &str, group: &str) -> LockRequest {
    LockRequest {
        operation,
        params: ClientParams {
            id: id.into(),
            group: group.into(),
        },
    }
}

#[tokio::test]
async fn the_server_binds_ids_refuses_during_assembly_and_gates_core_hosts() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    let server = site_server(etcd);
    let core = |n: u8| Caller {
        node: host(&format!("node{n}")),
        role: if n <= 3 { Role::Core } else { Role::Worker },
        address: std::net::Ipv4Addr::new(198, 18, 0, 10 + n),
    };
    let pre = |n: u8| {
        request(
            Operation::PreReboot,
            &app_id(n),
            if n <= 3 { "core" } else { "workers" },
        )
    };
    let steady = |n: u8| {
        request(
            Operation::SteadyState,
            &app_id(n),
            if n <= 3 { "core" } else { "workers" },
        )
    };

    // Unregistered: refused whatever it asks.
    let refused = server.decide(&core(1), &pre(1)).await.unwrap_err();
    assert_eq!(refused.kind, kind::FORBIDDEN);
    assert!(refused.value.contains("not registered"), "{refused:?}");

    for n in 1..=4 {
        server.register(&core(n), &app_id(n), n != 4).await.unwrap();
    }
    assert_eq!(
        server
            .register(&core(1), "NOT-HEX", true)
            .await
            .unwrap_err()
            .kind,
        kind::BAD_REQUEST
    );
    // Another node's id, or another group, is refused.
    let other = server
        .decide(&core(1), &request(Operation::PreReboot, &app_id(2), "core"))
        .await
        .unwrap_err();
    assert_eq!(other.kind, kind::FORBIDDEN);
    // node1's own id from another address: refused.
    let mut elsewhere = core(1);
    elsewhere.address = std::net::Ipv4Addr::new(198, 18, 0, 99);
    let moved = server.decide(&elsewhere, &pre(1)).await.unwrap_err();
    assert_eq!(moved.kind, kind::FORBIDDEN);
    assert!(moved.value.contains("198.18.0.99"), "{moved:?}");
    let group = server
        .decide(&core(4), &request(Operation::PreReboot, &app_id(4), "core"))
        .await
        .unwrap_err();
    assert_eq!(group.kind, kind::WRONG_GROUP);
    // node4 still assembles: every reboot is refused, steady-state is fine.
    let assembling = server.decide(&core(1), &pre(1)).await.unwrap_err();
    assert_eq!(assembling.kind, kind::SITE_ASSEMBLING);
    assert!(assembling.value.contains("3 of 4") && assembling.value.contains("node4"));
    server.decide(&core(1), &steady(1)).await.unwrap();
    server.register(&core(4), &app_id(4), true).await.unwrap();

    // etcd down a member: refused, with the reason.
    let mut views = three_healthy();
    views[1].status = Err("connection refused".into());
    *server.probes.etcd.lock().unwrap() = Some(Ok(views));
    let refused = server.decide(&core(1), &pre(1)).await.unwrap_err();
    assert_eq!(refused.kind, kind::ETCD_UNHEALTHY);
    assert!(refused.value.contains("node2 does not answer"));
    // etcd healthy, but no other FreeIPA server: refused.
    *server.probes.etcd.lock().unwrap() = Some(Ok(three_healthy()));
    let refused = server.decide(&core(1), &pre(1)).await.unwrap_err();
    assert_eq!(refused.kind, kind::FREEIPA_UNHEALTHY);
    server
        .probes
        .freeipa
        .lock()
        .unwrap()
        .insert("node3".into(), Ok(()));
    server.decide(&core(1), &pre(1)).await.unwrap();
    // Recursive for the holder; a second core host is refused.
    server.decide(&core(1), &pre(1)).await.unwrap();
    let second = server.decide(&core(2), &pre(2)).await.unwrap_err();
    assert_eq!(second.kind, kind::SEMAPHORE_FULL);
    assert!(second.value.contains("node1"));
    // A worker has its own slot.
    server.decide(&core(4), &pre(4)).await.unwrap();

    // node1 is back but its member is not caught up: it keeps the lock.
    let mut views = three_healthy();
    views[0].status = healthy(1, 2, 3);
    views[1].status = healthy(2, 2, 900);
    views[2].status = healthy(3, 2, 900);
    *server.probes.etcd.lock().unwrap() = Some(Ok(views));
    server
        .probes
        .freeipa
        .lock()
        .unwrap()
        .insert("node1".into(), Ok(()));
    let kept = server.decide(&core(1), &steady(1)).await.unwrap_err();
    assert_eq!(kept.kind, kind::NODE_UNHEALTHY);
    assert_eq!(store::holders(&server.etcd, "core").await.unwrap().len(), 1);
    // Another node's steady-state does not release it.
    server.decide(&core(2), &steady(2)).await.unwrap();
    assert_eq!(store::holders(&server.etcd, "core").await.unwrap().len(), 1);
    // Healthy again: released, and node2 may go.
    *server.probes.etcd.lock().unwrap() = Some(Ok(three_healthy()));
    server.decide(&core(1), &steady(1)).await.unwrap();
    assert!(store::holders(&server.etcd, "core")
        .await
        .unwrap()
        .is_empty());
    server.decide(&core(2), &pre(2)).await.unwrap();
}

/// A core host added after this lock server's node was launched is not
/// in its config: it is known as core by its etcd membership, so it asks
/// in the core group and waits behind a core host that holds the lock
/// (never a worker's slot beside it); when etcd cannot list its members,
/// nothing is decided.
#[tokio::test]
async fn a_core_host_added_later_is_core_by_its_etcd_membership() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    let server = site_server(etcd);
    let caller = |n: u8| Caller {
        node: host(&format!("node{n}")),
        // As the certificate alone tells this server's config: node7 is
        // not among its core hosts.
        role: if n <= 3 { Role::Core } else { Role::Worker },
        address: std::net::Ipv4Addr::new(198, 18, 0, 10 + n),
    };
    for n in [1, 2, 3, 7] {
        server.register(&caller(n), &app_id(n), true).await.unwrap();
    }
    let mut four = three_healthy();
    four.push(MemberView {
        member: member(7, "node7"),
        status: healthy(7, 1, 500),
    });
    *server.probes.etcd.lock().unwrap() = Some(Ok(four));
    server
        .probes
        .freeipa
        .lock()
        .unwrap()
        .insert("node2".into(), Ok(()));
    let ask = |n: u8, group: &str| request(Operation::PreReboot, &app_id(n), group);
    let as_worker = server
        .decide(&caller(7), &ask(7, "workers"))
        .await
        .unwrap_err();
    assert_eq!(as_worker.kind, kind::WRONG_GROUP);
    assert!(as_worker.value.contains("group `core`"), "{as_worker:?}");
    server.decide(&caller(1), &ask(1, "core")).await.unwrap();
    let behind = server
        .decide(&caller(7), &ask(7, "core"))
        .await
        .unwrap_err();
    assert_eq!(behind.kind, kind::SEMAPHORE_FULL);
    assert!(behind.value.contains("node1"), "{behind:?}");
    // etcd cannot list its members: whether node7 is core is unknown.
    *server.probes.etcd.lock().unwrap() = Some(Err("connection refused".into()));
    let unknown = server
        .decide(&caller(7), &ask(7, "core"))
        .await
        .unwrap_err();
    assert_eq!(unknown.kind, kind::ETCD_UNHEALTHY);
    assert!(
        unknown.value.contains("whether node7 is an etcd member"),
        "{unknown:?}"
    );
}

/// A node's identity files under `root`, as join leaves them.
fn identity_files(root: &std::path::Path, ca: &crate::pki::TempCa, fqdn: &str) {
    let paths = crate::paths::Paths::under(root);
    let slot = crate::certs::plan::IDENTITY.slot(&paths);
    let cert = ca.root.issue(fqdn).unwrap();
    std::fs::create_dir_all(paths.tls_dir()).unwrap();
    std::fs::write(&slot.cert, &cert.cert_pem).unwrap();
    std::fs::write(&slot.key, &cert.key_pem).unwrap();
    std::fs::write(&slot.ca, ca.root.cert_pem()).unwrap();
}

/// One plain-HTTP POST to the relay, as Zincati makes it (the header and
/// body written here from the protocol document).
async fn zincati(relay: std::net::SocketAddr, path: &str, id: &str, group: &str) -> (u16, String) {
    let body = format!(r#"{{"client_params": {{"id": "{id}", "group": "{group}"}}}}"#);
    post_plain(relay, path, Some("true"), body).await
}

/// One plain-HTTP POST, with the protocol's header when given.
async fn post_plain(
    relay: std::net::SocketAddr,
    path: &str,
    header: Option<&str>,
    body: String,
) -> (u16, String) {
    let mut request = hyper::Request::post(path).header("host", "127.0.0.1");
    if let Some(value) = header {
        request = request.header("fleet-lock-protocol", value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let stream = tokio::net::TcpStream::connect(relay).await.unwrap();
    let (status, _, body) =
        crate::https::exchange(hyper_util::rt::TokioIo::new(stream), request, 1 << 16)
            .await
            .unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn a_worker_reaches_the_lock_server_through_its_relay_with_its_certificate() {
    let Some((_server, etcd)) = etcd().await else {
        return;
    };
    let ca =
        crate::pki::TempCa::create("lab.example.org", &crate::certs::PLAN.intermediates()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let (server_root, worker_root, stranger_root) = (
        root.path().join("node2"),
        root.path().join("node4"),
        root.path().join("x"),
    );
    identity_files(&server_root, &ca, "node2.lab.example.org");
    identity_files(&worker_root, &ca, "node4.lab.example.org");
    // A certificate for node4 from another CA: refused at the handshake.
    let other_ca =
        crate::pki::TempCa::create("lab.example.org", &crate::certs::PLAN.intermediates()).unwrap();
    identity_files(&stranger_root, &other_ca, "node4.lab.example.org");
    for dir in [&worker_root, &stranger_root] {
        std::fs::write(
            dir.join("etc/machine-id"),
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        )
        .unwrap();
    }
    let own_id = "975228d46dc94622b9bbe16671e2b58d";

    // node2's lock server on loopback, its TLS asking for client
    // certificates under the site's CA.
    let server_paths = crate::paths::Paths::under(&server_root);
    let slot = crate::certs::plan::IDENTITY.slot(&server_paths);
    let lock = std::sync::Arc::new(site_server(etcd.clone()));
    let config = std::sync::Arc::new(crate::phases::tests::lab_config("node2"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lock_address = listener.local_addr().unwrap();
    let tls = crate::https::Identity::FilesWithClients {
        cert: slot.cert.clone(),
        key: slot.key.clone(),
        clients_ca: slot.ca.clone(),
    };
    let (served, served_config) = (lock.clone(), config.clone());
    tokio::spawn(crate::https::serve(
        listener,
        tls,
        crate::https::LIMITS,
        move |request| {
            let (lock, config) = (served.clone(), served_config.clone());
            async move {
                super::service::respond(
                    &lock,
                    &config,
                    super::service::Addresses::Unchecked,
                    request,
                )
                .await
            }
        },
    ));

    // node4's relay: node1 is down (nothing listens at its address), node2
    // answers, so the relay finds the lock server on the second try.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let relay_for = |root: &std::path::Path| {
        let relay = super::relay::Relay::new(
            crate::paths::Paths::under(root),
            std::sync::Arc::new(crate::phases::tests::lab_config("node4")),
        )
        .with_address("node1.lab.example.org", down)
        .with_address("node2.lab.example.org", lock_address)
        .with_address("node3.lab.example.org", down);
        std::sync::Arc::new(relay)
    };
    let relay = relay_for(&worker_root);
    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_address = relay_listener.local_addr().unwrap();
    tokio::spawn(super::relay::serve(relay_listener, relay.clone()));

    // Not registered yet: the lock server says so, through the relay.
    let (status, body) = zincati(relay_address, "/v1/steady-state", own_id, "workers").await;
    assert_eq!(status, 403, "{body}");
    let refusal: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["kind"], "forbidden");
    assert!(refusal["value"]
        .as_str()
        .unwrap()
        .contains("node4 has not registered"));

    let register = |relay: std::sync::Arc<super::relay::Relay>| async move {
        let body = serde_json::json!({"id": own_id, "assembled": true}).to_string();
        relay
            .forward(super::service::REGISTER_PATH, body.into_bytes())
            .await
    };
    assert_eq!(register(relay.clone()).await.unwrap().0, 200);
    let record = store::node(&etcd, &host("node4")).await.unwrap().unwrap();
    assert_eq!(record.id, own_id);
    assert!(record.assembled);

    // The stranger's certificate opens nothing: no TLS session at all.
    let stranger = relay_for(&stranger_root);
    let refused = register(stranger).await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("no lock server answered"),
        "{refused:#}"
    );

    // Another node's id is refused by the relay already.
    let (status, body) = zincati(relay_address, "/v1/pre-reboot", &app_id(2), "workers").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("speaks for node4 only"), "{body}");
    // The site is still assembling (one of four nodes registered).
    let (status, body) = zincati(relay_address, "/v1/pre-reboot", own_id, "workers").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("site_assembling"), "{body}");
    for n in 1..=3 {
        let caller = Caller {
            node: host(&format!("node{n}")),
            role: Role::Core,
            address: std::net::Ipv4Addr::LOCALHOST,
        };
        lock.register(&caller, &app_id(n), true).await.unwrap();
    }
    let (status, body) = zincati(relay_address, "/v1/pre-reboot", own_id, "workers").await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(
        store::holders(&etcd, "workers").await.unwrap()[0]
            .node
            .as_str(),
        "node4"
    );
    let (status, _) = zincati(relay_address, "/v1/steady-state", own_id, "workers").await;
    assert_eq!(status, 200);
    assert!(store::holders(&etcd, "workers").await.unwrap().is_empty());
    // Without the header the relay refuses, as the document asks.
    let body = format!(r#"{{"client_params": {{"id": "{own_id}", "group": "workers"}}}}"#);
    let (status, _) = post_plain(relay_address, "/v1/pre-reboot", None, body).await;
    assert_eq!(status, 400);
}
