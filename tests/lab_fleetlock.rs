//! Issue 18 in the lab: Zincati's reboots go through the site's own
//! FleetLock server. A client written here from the protocol document
//! (coreos/zincati `docs/development/fleetlock/protocol.md`: a POST to
//! `v1/pre-reboot` or `v1/steady-state` under the base URL, the
//! `fleet-lock-protocol: true` header, `{"client_params": {"id", "group"}}`,
//! a refusal's body `{"kind", "value"}`), not from firstboot's types,
//! speaks to the relay on each node's 127.0.0.1:7446, as Zincati does with
//! the drop-in `builder render` wrote. The id is the node's app-specific
//! machine id as systemd's own `systemd-id128` computes it on the node.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use site_lab::Lab;
use support::lab::{self, assert_cluster, in_netns, ready};

/// Zincati's application id (coreos/zincati `src/identity/mod.rs`).
const ZINCATI_APP_ID: &str = "de35106b6ec24688b63afddaa156679b";

/// One HTTP/1.1 POST on `stream`, written out by hand: the status and the
/// body, or why there is none.
fn try_post(
    mut stream: impl Read + Write,
    path: &str,
    header: bool,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let protocol = if header {
        "fleet-lock-protocol: true\r\n"
    } else {
        ""
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{protocol}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    // A TLS peer may end without close_notify: what was read counts.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// [`try_post`], which must be answered.
fn post(stream: impl Read + Write, path: &str, header: bool, body: &str) -> (u16, String) {
    try_post(stream, path, header, body).unwrap()
}

fn client_params(id: &str, group: &str) -> String {
    format!(r#"{{"client_params": {{"id": "{id}", "group": "{group}"}}}}"#)
}

/// A FleetLock answer: 200, or a refusal whose body is the document's
/// error object (both keys non-empty strings).
#[derive(Debug)]
enum Answer {
    Granted,
    Refused { kind: String, value: String },
}

impl Answer {
    fn of(status: u16, body: &str) -> Answer {
        if status == 200 {
            return Answer::Granted;
        }
        let error: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{status}: the error body is not JSON ({e}): {body}"));
        let text = |key: &str| {
            let s = error[key].as_str().unwrap_or_default().to_owned();
            assert!(
                !s.is_empty(),
                "{status}: `{key}` is not a non-empty string: {body}"
            );
            s
        };
        assert!(
            (400..600).contains(&status),
            "a refusal is 4xx or 5xx: {status}"
        );
        Answer::Refused {
            kind: text("kind"),
            value: text("value"),
        }
    }

    fn kind(&self) -> &str {
        match self {
            Answer::Granted => "granted",
            Answer::Refused { kind, .. } => kind,
        }
    }

    fn value(&self) -> &str {
        match self {
            Answer::Granted => "",
            Answer::Refused { value, .. } => value,
        }
    }
}

/// Zincati on `node`: `operation` (`pre-reboot` or `steady-state`) to the
/// relay at the base URL the drop-in names.
fn zincati(lab: &Lab, node: &str, operation: &str, id: &str, group: &str) -> Answer {
    let netns = lab.node(node).unwrap().netns().to_owned();
    let path = format!("/v1/{operation}");
    let body = client_params(id, group);
    let answer = in_netns(&netns, move || {
        let stream = std::net::TcpStream::connect("127.0.0.1:7446")?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok::<_, std::io::Error>(post(stream, &path, true, &body))
    });
    match answer {
        Ok((status, body)) => Answer::of(status, &body),
        // A node still booting: nothing answers on the relay's port yet.
        Err(e) => Answer::Refused {
            kind: "no_relay".into(),
            value: e.to_string(),
        },
    }
}

/// Ask once; the answer must be a grant.
fn granted(lab: &Lab, node: &str, operation: &str, id: &str, group: &str) {
    let answer = zincati(lab, node, operation, id, group);
    assert!(
        matches!(answer, Answer::Granted),
        "{node} {operation}: {answer:?}"
    );
}

/// Ask until the answer is `want` (a kind, or "granted"), while it is
/// one of `meanwhile`; bounded by `limit`.
#[allow(clippy::too_many_arguments)]
fn until(
    lab: &Lab,
    node: &str,
    operation: &str,
    id: &str,
    group: &str,
    want: &str,
    meanwhile: &[&str],
    limit: Duration,
) -> Answer {
    let deadline = Instant::now() + limit;
    loop {
        let answer = zincati(lab, node, operation, id, group);
        if answer.kind() == want {
            return answer;
        }
        assert!(
            meanwhile.contains(&answer.kind()) && Instant::now() < deadline,
            "{node} {operation}: wanted {want}, got {answer:?}\n{}",
            lab.journal(node, Some("firstboot-fleetlock.service"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Once etcd is healthy again, core host `node` gets the lock (refused
/// meanwhile for etcd's health alone, within `limit`) and releases it.
fn once_healthy_takes_and_releases(lab: &Lab, node: &str, id: &str, limit: Duration) {
    let meanwhile = ["etcd_unhealthy"];
    until(
        lab,
        node,
        "pre-reboot",
        id,
        "core",
        "granted",
        &meanwhile,
        limit,
    );
    let meanwhile = ["node_unhealthy"];
    let back = Duration::from_secs(60);
    until(
        lab,
        node,
        "steady-state",
        id,
        "core",
        "granted",
        &meanwhile,
        back,
    );
}

/// Every phase done on `node` (the bootstrap host then serves on, with
/// no done marker): its phase state says so.
fn done(lab: &Lab, node: &str) -> bool {
    lab.root(node)
        .map(|root| {
            firstboot::fleetlock::service::assembled(&firstboot::paths::Paths::under(&root))
        })
        .unwrap_or(false)
}

/// Make `node`'s phase state say its last phase is (`true`) or is not
/// done, and have its FleetLock service register that at once.
fn set_assembled(lab: &Lab, node: &str, done: bool) {
    let path = lab.root(node).unwrap().join("var/lib/firstboot/state.json");
    let mut state = firstboot::state::State::load(&path).unwrap();
    if done {
        state.mark_done(node_contract::Phase::Freeipa);
    } else {
        state
            .completed
            .retain(|p| *p != node_contract::Phase::Freeipa);
    }
    state.save(&path).unwrap();
    lab.sh(node, "systemctl restart firstboot-fleetlock")
        .unwrap();
}

/// The core group's holders, as etcd on `node` has them.
fn holders(lab: &Lab, node: &str, group: &str) -> String {
    lab::etcdctl(
        lab,
        node,
        &format!("{node}.lab.example.org"),
        &format!("get --print-value-only /firstboot/fleetlock/v1/semaphore/{group}"),
    )
}

/// A lab site of `n` nodes (three core hosts, the rest workers), booted
/// and assembled, with each node's machine id and Zincati id.
fn assembled(
    image: &std::path::Path,
    firstboot: &builder::artifact::Firstboot,
    bytes: &[u8],
    n: usize,
) -> (tempfile::TempDir, Lab, BTreeMap<String, (String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let (site, configs) = lab::render_into(dir.path(), &lab::lab_site(n), firstboot);
    let lab = lab::start(image, firstboot, bytes, &configs);
    assert_cluster(&lab, &site);
    let nodes: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    for node in &nodes {
        while !done(&lab, node) {
            assert!(
                Instant::now() < deadline,
                "{node} did not finish:\n{}",
                lab.journal(node, Some("firstboot.service"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Item 4: every node has a machine id of its own, made at its first
    // boot (the image holds `uninitialized`), as Fedora CoreOS's are.
    let mut ids = BTreeMap::new();
    for node in &nodes {
        let machine_id = std::fs::read_to_string(lab.root(node).unwrap().join("etc/machine-id"))
            .unwrap()
            .trim()
            .to_owned();
        assert!(
            machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{node}: /etc/machine-id is {machine_id:?}"
        );
        let id = lab
            .sh(
                node,
                &format!("systemd-id128 machine-id --app-specific={ZINCATI_APP_ID}"),
            )
            .unwrap()
            .trim()
            .to_owned();
        assert_eq!(id.len(), 32, "{node}: {id}");
        ids.insert(node.clone(), (machine_id, id));
    }
    let distinct: std::collections::BTreeSet<&String> = ids.values().map(|(m, _)| m).collect();
    assert_eq!(
        distinct.len(),
        nodes.len(),
        "machine ids are shared: {ids:?}"
    );
    (dir, lab, ids)
}

#[test]
fn zincati_reboots_one_node_at_a_time_only_when_the_site_can_spare_it() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let (_dir, mut lab, ids) = assembled(&image, &firstboot, &bytes, 4);
    let id = |node: &str| ids[node].1.clone();

    // Every node registers once it is done; until all have, reboots wait.
    let waiting = ["forbidden", "site_assembling", "lock_server_unreachable"];
    until(
        &lab,
        "node4",
        "pre-reboot",
        &id("node4"),
        "workers",
        "granted",
        &waiting,
        Duration::from_secs(90),
    );
    granted(&lab, "node4", "steady-state", &id("node4"), "workers");

    // Assembling again (node3 says it is not done): every reboot refused,
    // with the reason.
    set_assembled(&lab, "node3", false);
    let assembling = until(
        &lab,
        "node1",
        "pre-reboot",
        &id("node1"),
        "core",
        "site_assembling",
        &["granted"],
        Duration::from_secs(30),
    );
    assert!(assembling.value().contains("node3"), "{assembling:?}");
    // The node keeps that answer where `builder status` reads it (its
    // status column shows it; builder's own tests show the reading).
    let kept = lab
        .sh(
            "node1",
            &format!("cat {}", node_contract::fleetlock::UPDATES_PATH),
        )
        .unwrap();
    let kept = node_contract::fleetlock::LastAnswer::from_json(kept.as_bytes()).unwrap();
    assert_eq!(
        (kept.request.as_str(), kept.granted, kept.kind.as_deref()),
        ("pre-reboot", false, Some("site_assembling")),
        "{kept:?}"
    );
    assert!(
        kept.reason.as_deref().is_some_and(|r| r.contains("node3")),
        "{kept:?}"
    );
    // (granted meanwhile: released again before going on)
    let _ = zincati(&lab, "node1", "steady-state", &id("node1"), "core");
    set_assembled(&lab, "node3", true);

    // A core host's lock, timed from the request to the grant.
    let asked = Instant::now();
    until(
        &lab,
        "node1",
        "pre-reboot",
        &id("node1"),
        "core",
        "granted",
        &["site_assembling"],
        Duration::from_secs(30),
    );
    println!(
        "pre-reboot to grant (node1, healthy site): {:?}",
        asked.elapsed()
    );
    let asked = Instant::now();
    granted(&lab, "node1", "pre-reboot", &id("node1"), "core");
    println!(
        "pre-reboot to grant (node1 again, recursive): {:?}",
        asked.elapsed()
    );
    // A second core host is refused while node1 holds it.
    let second = zincati(&lab, "node2", "pre-reboot", &id("node2"), "core");
    assert_eq!(second.kind(), "failed_lock_semaphore_full", "{second:?}");
    assert!(second.value().contains("node1"), "{second:?}");
    // Another node's id, or another group, is refused.
    let other = zincati(&lab, "node2", "steady-state", &id("node1"), "core");
    assert_eq!(other.kind(), "forbidden", "{other:?}");
    let group = zincati(&lab, "node2", "pre-reboot", &id("node2"), "workers");
    assert_eq!(group.kind(), "wrong_group", "{group:?}");

    // node1 "back" with its etcd member down: it keeps the lock.
    lab.sh("node1", "systemctl stop etcd").unwrap();
    let kept = zincati(&lab, "node1", "steady-state", &id("node1"), "core");
    assert_eq!(kept.kind(), "node_unhealthy", "{kept:?}");
    assert!(holders(&lab, "node2", "core").contains("node1"));
    lab.sh("node1", "systemctl start etcd").unwrap();
    until(
        &lab,
        "node1",
        "steady-state",
        &id("node1"),
        "core",
        "granted",
        &["node_unhealthy"],
        Duration::from_secs(60),
    );
    assert!(!holders(&lab, "node2", "core").contains("node1"));

    // An etcd member down: no core host may go.
    lab.sh("node3", "systemctl stop etcd").unwrap();
    let down = until(
        &lab,
        "node2",
        "pre-reboot",
        &id("node2"),
        "core",
        "etcd_unhealthy",
        &[],
        Duration::from_secs(5),
    );
    assert!(down.value().contains("node3"), "{down:?}");
    lab.sh("node3", "systemctl start etcd").unwrap();
    once_healthy_takes_and_releases(&lab, "node2", &id("node2"), Duration::from_secs(60));

    // An etcd member that answers but lags (its peer traffic slowed while
    // node1 writes as fast as it can): no core host may go, and the
    // refusal says which member is how far behind.
    lab.throttle("node3", 2380, Some("128kbit")).unwrap();
    let writing = std::sync::atomic::AtomicBool::new(true);
    let lagging = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let value = "x".repeat(1000);
            let mut written = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) && written < 3000 {
                lab::etcdctl(
                    &lab,
                    "node1",
                    "node1.lab.example.org",
                    &format!("put /lab/lag/{written} {value}"),
                );
                written += 1;
            }
            written
        });
        // Granted while node3 still keeps up (released at once, or, if
        // node3 fell behind meanwhile, refused with the lag), or refused
        // for another reason on the way (said): asked again.
        let deadline = Instant::now() + Duration::from_secs(120);
        let answer = loop {
            let answer = zincati(&lab, "node2", "pre-reboot", &id("node2"), "core");
            match answer.kind() {
                "etcd_unhealthy" if answer.value().contains("behind") => break answer,
                "granted" => {
                    let release = zincati(&lab, "node2", "steady-state", &id("node2"), "core");
                    match release.kind() {
                        "granted" => {}
                        // node3 fell behind between the grant and the
                        // release: node2 keeps the lock (released below,
                        // once node3 is back), and this refusal names the
                        // lagging member as the one sought does.
                        "node_unhealthy" if release.value().contains("behind") => break release,
                        _ => panic!("node2 steady-state with node3 lagging: {release:?}"),
                    }
                }
                "etcd_unhealthy" => println!("lagging member: meanwhile {answer:?}"),
                _ => panic!("node2 pre-reboot with node3 lagging: {answer:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "node3 never counted as lagging: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        println!(
            "lagging member: refused after {} writes: {}",
            writer.join().unwrap(),
            answer.value()
        );
        answer
    });
    assert!(lagging.value().contains("node3"), "{lagging:?}");
    lab.throttle("node3", 2380, None).unwrap();
    once_healthy_takes_and_releases(&lab, "node2", &id("node2"), Duration::from_secs(120));

    // node2's own certificate and key, from another address in the VPC,
    // straight to node1's lock server: refused.
    let stranger = lab.add_stranger("198.18.0.200".parse().unwrap()).unwrap();
    let (_keys, config) = stolen(&lab, "node2", firstboot::certs::CertPurpose::Identity);
    let node1 = lab.node("node1").unwrap().address;
    let body = client_params(&id("node2"), "core");
    let (status, answer) = in_netns(&stranger, move || {
        let tcp = std::net::TcpStream::connect((node1, 7445)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let name = "node1.lab.example.org".try_into().unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        post(
            rustls::StreamOwned::new(connection, tcp),
            "/v1/pre-reboot",
            true,
            &body,
        )
    });
    let elsewhere = Answer::of(status, &answer);
    assert_eq!(elsewhere.kind(), "forbidden", "{elsewhere:?}");
    assert!(elsewhere.value().contains("on record"), "{elsewhere:?}");

    // The lock survives the death of the core host that answered: node4's
    // relay asks node1 first; node1 dies; node2 answers the same.
    granted(&lab, "node4", "pre-reboot", &id("node4"), "workers");
    let answered = lab
        .journal("node1", Some("firstboot-fleetlock.service"))
        .unwrap();
    assert!(
        answered.contains("/v1/pre-reboot granted to node4"),
        "node1 did not answer node4: {answered}"
    );
    lab.kill("node1").unwrap();
    let asked = Instant::now();
    granted(&lab, "node4", "pre-reboot", &id("node4"), "workers");
    println!(
        "pre-reboot to grant with node1 dead (relay tries node1 first): {:?}",
        asked.elapsed()
    );
    assert!(holders(&lab, "node2", "workers").contains("node4"));
    // With node1's member gone, no other core host may go.
    let quorum = zincati(&lab, "node3", "pre-reboot", &id("node3"), "core");
    assert_eq!(quorum.kind(), "etcd_unhealthy", "{quorum:?}");
    granted(&lab, "node4", "steady-state", &id("node4"), "workers");
    assert!(!holders(&lab, "node2", "workers").contains("node4"));
}

/// A copy of `node`'s certificate, key and CA for `purpose` (identity or
/// etcd), taken out of the node, and a TLS client presenting them.
fn stolen(
    lab: &Lab,
    node: &str,
    purpose: firstboot::certs::CertPurpose,
) -> (tempfile::TempDir, std::sync::Arc<rustls::ClientConfig>) {
    // The node's files for that row of the certificate plan.
    let on_node = firstboot::certs::PLAN
        .row(purpose)
        .expect("a row of the plan")
        .slot(&firstboot::paths::Paths::under(&lab.root(node).unwrap()));
    let keys = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path| {
        let to = keys.path().join(from.file_name().unwrap());
        std::fs::copy(from, &to).unwrap();
        to
    };
    let slot = firstboot::certs::Slot {
        purpose,
        key: copy(&on_node.key),
        cert: copy(&on_node.cert),
        ca: copy(&on_node.ca),
    };
    let config = firstboot::https::client_config_from(&slot).unwrap();
    (keys, config)
}

/// How long a write may wait for an answer, retried across the members:
/// a leader election (a member killed) takes about a second; a lost
/// quorum would hold every write until the member is back.
const WRITE_PATIENCE: Duration = Duration::from_secs(5);

/// One etcd write through the JSON gateway, from outside the nodes, as an
/// etcd client makes it: to the member that answered last, else the next,
/// again until one acknowledges it or [`WRITE_PATIENCE`] has passed. How
/// long it waited, or None.
fn put(
    config: &std::sync::Arc<rustls::ClientConfig>,
    members: &[(String, std::net::Ipv4Addr)],
    last_good: &mut usize,
    key: &str,
) -> Option<Duration> {
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let body = format!(r#"{{"key": "{}", "value": "{}"}}"#, b64(key), b64(key));
    let attempt = |(fqdn, address): &(String, std::net::Ipv4Addr)| -> std::io::Result<u16> {
        let tcp = std::net::TcpStream::connect_timeout(
            &(*address, 2379).into(),
            Duration::from_millis(300),
        )?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
        let name = fqdn.clone().try_into().map_err(std::io::Error::other)?;
        let connection =
            rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
        Ok(try_post(
            rustls::StreamOwned::new(connection, tcp),
            "/v3/kv/put",
            false,
            &body,
        )?
        .0)
    };
    let start = Instant::now();
    while start.elapsed() < WRITE_PATIENCE {
        for step in 0..members.len() {
            let index = (*last_good + step) % members.len();
            if matches!(attempt(&members[index]), Ok(200)) {
                *last_good = index;
                return Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The reboot cycle: the core hosts ask for the lock, the one granted is
/// killed and booted again and releases it once healthy, then the next;
/// meanwhile a writer outside the nodes puts a key into etcd every 100 ms.
#[test]
fn core_hosts_reboot_in_the_order_the_lock_grants_and_no_write_is_lost() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let (_dir, mut lab, ids) = assembled(&image, &firstboot, &bytes, 3);
    let id = |node: &str| ids[node].1.clone();
    let core = ["node1", "node2", "node3"];
    let waiting = ["forbidden", "site_assembling", "lock_server_unreachable"];
    for node in core {
        until(
            &lab,
            node,
            "steady-state",
            &id(node),
            "core",
            "granted",
            &waiting,
            Duration::from_secs(90),
        );
    }

    // The writer: a stranger in the VPC holding node1's etcd client
    // certificate, writing to any member that answers.
    let stranger = lab.add_stranger("198.18.0.201".parse().unwrap()).unwrap();
    let (_keys, config) = stolen(&lab, "node1", firstboot::certs::CertPurpose::Etcd);
    let members: Vec<(String, std::net::Ipv4Addr)> = core
        .iter()
        .map(|n| (format!("{n}.lab.example.org"), lab.node(n).unwrap().address))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, stranger) = (stop.clone(), stranger.clone());
        std::thread::spawn(move || {
            in_netns(&stranger, move || {
                // When each write was sent and acknowledged, the longest
                // wait, and
                // what was never acknowledged.
                let (mut written, mut failed) = (Vec::new(), Vec::new());
                let (mut last_good, mut longest) = (0, Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("/lab/writer/{:06}", written.len() + failed.len());
                    let asked = Instant::now();
                    match put(&config, &members, &mut last_good, &key) {
                        Some(waited) => {
                            written.push((asked, Instant::now()));
                            longest = longest.max(waited);
                        }
                        None => failed.push(key),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (written, failed, longest)
            })
        })
    };

    let mut pending: Vec<&str> = core.to_vec();
    let mut order = Vec::new();
    let mut windows = Vec::new();
    while !pending.is_empty() {
        // Every core host not yet rebooted asks; one at most is granted.
        let deadline = Instant::now() + Duration::from_secs(120);
        let granted = loop {
            let mut granted = Vec::new();
            let mut refusals = Vec::new();
            for node in &pending {
                match zincati(&lab, node, "pre-reboot", &id(node), "core") {
                    Answer::Granted => granted.push(*node),
                    refused => refusals.push(format!("{node}: {refused:?}")),
                }
            }
            assert!(
                granted.len() <= 1,
                "two core hosts hold the lock: {granted:?}"
            );
            if let Some(node) = granted.first() {
                break *node;
            }
            assert!(
                Instant::now() < deadline,
                "no core host is granted the lock: {refusals:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        };
        let held = Instant::now();
        lab.kill(granted).unwrap();
        lab.boot(granted).unwrap();
        until(
            &lab,
            granted,
            "steady-state",
            &id(granted),
            "core",
            "granted",
            &[
                "no_relay",
                "node_unhealthy",
                "lock_server_unreachable",
                "lock_store_unavailable",
            ],
            Duration::from_secs(300),
        );
        println!(
            "{granted}: held the lock {:?} (killed, booted, healthy again)",
            held.elapsed()
        );
        windows.push((granted, held, Instant::now()));
        pending.retain(|n| *n != granted);
        order.push(granted);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, failed, longest) = writer.join().unwrap();
    println!(
        "reboot order {order:?}; {} writes, {} not acknowledged within {WRITE_PATIENCE:?}, \
         the longest wait {longest:?}",
        written.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "writes not acknowledged within {WRITE_PATIENCE:?} (quorum lost?): {failed:?}"
    );
    // The writer was writing while each core host was away: writes in
    // flight then were acknowledged too.
    for (node, from, to) in &windows {
        let during = written
            .iter()
            .filter(|(sent, acked)| sent <= to && acked >= from)
            .count();
        println!("{node} away: {during} writes in flight and acknowledged");
        assert!(during > 0, "no write while {node} was away");
    }
    let written = written.len();
    let keys = lab::etcdctl(
        &lab,
        "node2",
        "node2.lab.example.org",
        "get /lab/writer/ --prefix --keys-only",
    );
    let stored = keys
        .lines()
        .filter(|l| l.starts_with("/lab/writer/"))
        .count();
    assert_eq!(stored, written, "writes lost: {keys}");
}
