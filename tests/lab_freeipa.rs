//! Issue 11 in the lab: FreeIPA installed peer to peer. A site of three
//! core hosts and two workers assembles through phase `freeipa`: the
//! simulator (which checks every call against FreeIPA's API.txt) is the
//! first server on the bootstrap host, the other core hosts enroll with
//! one-time passwords from the join service and become replicas, the
//! workers enroll as clients; the topology connects every server to two.
//!
//! What the lab cannot show: the real `freeipa-server` container (no
//! registry, and it needs minutes and gigabytes); the simulator reads the
//! same install options and gives the same signals.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use firstboot::freeipa::{Client, Config, Endpoint};
use firstboot::handoff::recertify::ROLL_PREFIX;
use serde_json::Value;
use site_lab::Lab;
use support::lab::{self, assert_cluster, in_netns, ready, runtime};
use support::site::test_secrets;

const SIM_DATA: &str = "var/lib/freeipa-server";

/// Every call a node's simulator received, as it logged them (none when
/// it has logged nothing yet; any other failure to read is the test's).
fn calls(lab: &Lab, node: &str) -> Vec<Value> {
    let path = lab.root(node).unwrap().join("var/log/ipa-sim/calls.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("{node}: cannot read {}: {e}", path.display()),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many times `node`'s firstboot finished phase freeipa.
fn freeipa_runs(lab: &Lab, node: &str) -> usize {
    lab.journal(node, Some("firstboot.service"))
        .unwrap_or_default()
        .matches("phase freeipa: done")
        .count()
}

/// Wait until `node` finished phase freeipa more than `before` times.
fn wait_rerun(lab: &Lab, node: &str, before: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while freeipa_runs(lab, node) <= before {
        assert!(
            Instant::now() < deadline,
            "{node} did not run phase freeipa again:\n{}",
            lab.journal(node, Some("firstboot.service"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Make `node` run phase `freeipa` again: forget it in the state file,
/// remove `also` (paths under the node's root), restart firstboot. How
/// many runs it had finished before.
fn rerun_freeipa(lab: &Lab, node: &str, also: &[&str]) -> usize {
    let before = freeipa_runs(lab, node);
    let root = lab.root(node).unwrap();
    let path = root.join("var/lib/firstboot/state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["completed"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p != "freeipa");
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    for file in ["var/lib/firstboot/done"].iter().chain(also) {
        let _ = std::fs::remove_file(root.join(file));
    }
    lab.sh(node, "systemctl restart --no-block firstboot.service")
        .unwrap();
    before
}

/// The codes FreeIPA answers a call that does not fit its API with.
const API_ERRORS: &[i64] = &[901, 905, 909, 3004, 3005, 3007, 3008, 3009];

fn address(lab: &Lab, node: &str) -> Ipv4Addr {
    lab.node(node).unwrap().address
}

fn done(lab: &Lab, node: &str) -> bool {
    lab.sh(node, "cat /run/firstboot/status.json")
        .ok()
        .and_then(|s| node_contract::status::Status::from_json(s.as_bytes()).ok())
        .is_some_and(|s| {
            s.phase == node_contract::Phase::ALL.last().copied()
                && matches!(
                    s.state,
                    node_contract::status::State::Done | node_contract::status::State::Serving
                )
        })
}

fn wait_done(lab: &Lab, nodes: &[&str], limit: Duration) {
    let deadline = Instant::now() + limit;
    for node in nodes {
        while !done(lab, node) {
            assert!(
                Instant::now() < deadline,
                "{node} did not finish its last phase:\n{}",
                lab.journal(node, Some("firstboot.service"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The admin's client of the simulator on `node`, from the test's side
/// of the lab (inside that node's network namespace).
fn admin<T: Send + 'static>(
    lab: &Lab,
    node: &str,
    work: impl FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
) -> T {
    let ca = std::fs::read_to_string(
        lab.root(node)
            .unwrap()
            .join(SIM_DATA)
            .join("etc/ipa/ca.crt"),
    )
    .unwrap();
    let fqdn = format!("{node}.lab.example.org");
    let endpoint = Endpoint::at(&fqdn, SocketAddr::new(address(lab, node).into(), 443));
    let password = test_secrets().freeipa_admin_password;
    let netns = lab.node(node).unwrap().netns().to_owned();
    in_netns(&netns, move || {
        let client = Client::new(Config::admin(endpoint, &ca, &password)).unwrap();
        runtime().block_on(work(client))
    })
}

/// Each server's replication agreements for one suffix.
fn agreements(segments: &Value) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for segment in segments["result"].as_array().cloned().unwrap_or_default() {
        for side in ["iparepltoposegmentleftnode", "iparepltoposegmentrightnode"] {
            let name = segment[side][0].as_str().unwrap_or_default().to_owned();
            *count.entry(name).or_default() += 1;
        }
    }
    count
}

#[test]
fn freeipa_assembles_with_replicas_and_enrolled_workers() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (site, configs) = lab::render_into(dir.path(), &lab::lab_site(5), &firstboot);
    let lab = lab::start(&image, &firstboot, &bytes, &configs);
    // A writer from the start: its first write waits (retried) for etcd
    // to form; the handoff, which re-certifies etcd, comes after FreeIPA.
    let writer = Writer::start(&lab);
    let thief = Thief::start(&lab);
    // The first install on the first server fails half-way, and those of
    // a replica and a worker fail after ipa-join spent their one-time
    // passwords: each node tries again from clean, with no operator step.
    for node in ["node1", "node2", "node4"] {
        lab.sh(node, "/usr/local/bin/ipa-sim install-fault 1")
            .unwrap();
    }
    assert_cluster(&lab, &site);
    let nodes = ["node1", "node2", "node3", "node4", "node5"];
    wait_done(&lab, &nodes, Duration::from_secs(300));
    let writes = writer.stop();
    for node in ["node1", "node2", "node4"] {
        let faults = std::fs::read_to_string(
            lab.root(node)
                .unwrap()
                .join("var/lib/ipa-sim/install-faults.json"),
        )
        .unwrap();
        assert!(faults.contains("\"after_join\":0"), "{node}: {faults}");
        let journal = lab.journal(node, Some("firstboot.service")).unwrap();
        let said = if node == "node4" {
            "asks the bootstrap host for a one-time password again"
        } else {
            "set aside"
        };
        assert!(
            journal.contains(said),
            "{node} did not say `{said}`:\n{journal}"
        );
    }
    // node2 and node4 enrolled, unenrolled, and enrolled again.
    let unenrolled: Vec<String> = calls(&lab, "node1")
        .iter()
        .filter(|c| c["method"] == "unenroll" && c["error"].is_null())
        .map(|c| c["params"]["fqdn"].as_str().unwrap().to_owned())
        .collect();
    for host in ["node2.lab.example.org", "node4.lab.example.org"] {
        assert!(
            unenrolled.iter().any(|h| h == host),
            "{host} never unenrolled: {unenrolled:?}"
        );
    }

    // The first server forgot its options, which held the site's
    // passwords; replicas on the other core hosts and clients on the
    // workers installed from their own, with no --hostname for the
    // containerised installers.
    assert!(!lab
        .root("node1")
        .unwrap()
        .join("var/lib/freeipa-server/ipa-server-install-options")
        .exists());
    for (node, file) in [
        (
            "node2",
            "var/lib/freeipa-server/ipa-replica-install-options",
        ),
        (
            "node3",
            "var/lib/freeipa-server/ipa-replica-install-options",
        ),
    ] {
        let root = lab.root(node).unwrap();
        let options = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{node}: {file}: {e}"));
        let mode = lab.sh(node, &format!("stat -c %a /{file}")).unwrap();
        assert_eq!(mode.trim(), "600", "{node}: {file} holds a password");
        let secrets = test_secrets();
        // As written, or as the options file quotes them for xargs.
        let holds = |password: &str| {
            options.contains(password)
                || options.contains(&firstboot::freeipa::site::xargs_quote(password))
        };
        let holds_passwords =
            holds(&secrets.freeipa_admin_password) || holds(&secrets.directory_manager_password);
        assert!(!holds_passwords, "{node}: {options}");
        assert!(!options.contains("--hostname"), "{node}: {options}");
        assert!(options.contains("--password="), "{node}: {options}");
        assert!(
            options.contains("--server=node1.lab.example.org"),
            "{node}: {options}"
        );
    }
    // The workers enrolled with the first server, and their one-time
    // passwords, spent, are gone from their disks.
    for worker in ["node4", "node5"] {
        let state = lab.root(worker).unwrap().join("var/lib/freeipa-client");
        let enrolled = std::fs::read_to_string(state.join("enrolled"))
            .unwrap_or_else(|e| panic!("{worker} did not enroll: {e}"));
        assert_eq!(enrolled.trim(), "node1.lab.example.org", "{worker}");
        assert!(
            !state.join("ipa-client-install-options").exists(),
            "{worker} keeps its spent one-time password"
        );
        // Enrolled on the host, as on Fedora CoreOS (`firstboot
        // ipa-client`, with the simulator as ipa-client-install): the IPA
        // CA and a keytab only root reads, and certmonger running (real
        // certmonger, from Debian) to renew what is requested through it.
        let root = lab.root(worker).unwrap();
        let ca = std::fs::read_to_string(root.join("etc/ipa/ca.crt")).unwrap();
        assert_eq!(
            std::fs::read_to_string(state.join("etc/ipa/ca.crt")).unwrap(),
            ca,
            "{worker}"
        );
        let server_ca = lab
            .root("node1")
            .unwrap()
            .join("var/lib/freeipa-server/etc/ipa/ca.crt");
        assert_eq!(std::fs::read_to_string(server_ca).unwrap(), ca, "{worker}");
        let mode = lab.sh(worker, "stat -c %a /etc/krb5.keytab").unwrap();
        assert_eq!(mode.trim(), "600", "{worker}");
        let certmonger = lab
            .sh(
                worker,
                "systemctl is-active certmonger.service; systemctl is-enabled certmonger.service",
            )
            .unwrap();
        assert_eq!(
            certmonger.split_whitespace().collect::<Vec<_>>(),
            ["active", "enabled"],
            "{worker}"
        );
    }
    // The image ships certmonger disabled, as Fedora CoreOS ships none: the
    // host client enabled it on the workers, and nothing did on a replica.
    let replica = lab
        .exec(
            "node2",
            &["systemctl", "is-enabled", "certmonger.service"],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&replica.stdout).trim(), "disabled");

    // Every server has two agreements for both suffixes once the
    // bootstrap host's topology loop has run (every 15 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (domain, ca) = admin(&lab, "node1", |client| {
            Box::pin(async move {
                use firstboot::freeipa::{calls::topologysegment_find, Suffix};
                (
                    client
                        .call(&topologysegment_find(Suffix::Domain))
                        .await
                        .unwrap(),
                    client
                        .call(&topologysegment_find(Suffix::Ca))
                        .await
                        .unwrap(),
                )
            })
        });
        let (domain, ca) = (agreements(&domain), agreements(&ca));
        let servers = ["node1", "node2", "node3"].map(|n| format!("{n}.lab.example.org"));
        if servers
            .iter()
            .all(|s| domain.get(s) == Some(&2) && ca.get(s) == Some(&2))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the topology never connected: domain {domain:?}, ca {ca:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // Every call any node's firstboot made fits FreeIPA's API. firstboot
    // sends most to node1's simulator; the loop says how many it checked
    // where, so it cannot pass by checking nothing.
    let mut checked = Vec::new();
    for node in ["node1", "node2", "node3"] {
        let calls = calls(&lab, node);
        checked.push((node, calls.len()));
        for call in &calls {
            let code = call["error"].as_i64();
            assert!(
                !code.is_some_and(|c| API_ERRORS.contains(&c)),
                "{node}: a call that does not fit API.txt: {call}"
            );
        }
        if node == "node1" {
            assert!(
                calls.len() > 10,
                "node1's simulator saw only {} calls",
                calls.len()
            );
        }
    }

    eprintln!("calls checked against API.txt, by server: {checked:?}");
    assert!(
        checked.iter().map(|(_, n)| n).sum::<usize>() > 10,
        "{checked:?}"
    );

    // Running the phase again on every node makes no change.
    let before: BTreeMap<&str, usize> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| (*n, calls(&lab, n).len()))
        .collect();
    let runs: Vec<usize> = nodes.iter().map(|n| rerun_freeipa(&lab, n, &[])).collect();
    for (node, before) in nodes.iter().zip(runs) {
        wait_rerun(&lab, node, before, Duration::from_secs(180));
    }
    // The rerun asked FreeIPA something (it looks before it changes), so
    // "no change" below is about calls that were made.
    let fresh_total: usize = before
        .iter()
        .map(|(node, from)| calls(&lab, node).len() - from)
        .sum();
    assert!(
        fresh_total > 0,
        "the rerun made no call to any server: nothing was checked"
    );
    for (node, from) in &before {
        let fresh = &calls(&lab, node)[*from..];
        let mutated: Vec<&Value> = fresh
            .iter()
            .filter(|c| c["mutated"] == true && c["error"].is_null())
            .collect();
        assert!(
            mutated.is_empty(),
            "{node}: the rerun changed FreeIPA: {mutated:?}"
        );
        for call in fresh {
            assert!(
                !call["error"]
                    .as_i64()
                    .is_some_and(|c| API_ERRORS.contains(&c)),
                "{node}: {call}"
            );
        }
    }
    for node in nodes {
        let journal = lab.journal(node, Some("firstboot.service")).unwrap();
        assert!(journal.contains("phase freeipa: done"), "{node}: {journal}");
    }
    let (_copy, temporary) = thief.stolen();
    handoff_etcd_is_the_sub_cas(&lab, writes, &temporary);
    handoff_dns_is_freeipas(&lab, &nodes);
    handoff_identity_is_the_sub_ca(&lab, &nodes, &temporary);
    temporary_ca_is_gone(&lab, &nodes);
    drop(lab);
}

/// Handoff step 4: every node, workers included, presents an identity
/// from FreeIPA's `firstboot` sub-CA and trusts that sub-CA alone,
/// certmonger tracking it (a worker's own certmonger, a core host's in
/// its server); a core host's lock server then refuses a client
/// certificate from the temporary root and one from the etcd sub-CA,
/// and takes a worker's.
fn handoff_identity_is_the_sub_ca(lab: &Lab, nodes: &[&str], temporary: &firstboot::pki::TempCa) {
    use firstboot::certs::moved::{Moved, Step};
    use firstboot::certs::{plan, CertPurpose};
    use firstboot::paths::Paths;
    let fqdn = |n: &str| format!("{n}.lab.example.org");
    let paths = |n: &str| Paths::under(&lab.root(n).unwrap());
    let etcd = Moved::load(&paths("node1"), CertPurpose::Etcd)
        .unwrap()
        .unwrap();
    let mut sub_ca: Option<String> = None;
    for node in nodes {
        let moved = Moved::load(&paths(node), CertPurpose::Identity)
            .unwrap()
            .unwrap_or_else(|| panic!("{node} recorded no move of its identity"));
        assert!(moved.done, "{node}: {moved:?}");
        assert_eq!(moved.step, Some(Step::Dropped), "{node}");
        assert_eq!(
            moved.old_ca.trim(),
            temporary.root.cert_pem().trim(),
            "{node}: its identity did not move from the temporary root"
        );
        let sub = sub_ca.get_or_insert_with(|| moved.new_ca.clone());
        assert_eq!(&moved.new_ca, sub, "{node}: another sub-CA");
        in_place(
            lab,
            node,
            CertPurpose::Identity,
            &moved,
            "firstboot-identity",
        );
    }
    let sub = sub_ca.expect("no node");
    assert_ne!(
        sub.trim(),
        etcd.new_ca.trim(),
        "identity and etcd share a sub-CA"
    );
    assert!(!firstboot::pki::issued_by(&sub, &etcd.old_ca));

    // node2's lock server, from node4: node4's own identity is taken; the
    // same name certified by the temporary root, and node2's etcd
    // certificate (the etcd sub-CA), are refused at the handshake.
    let lock = SocketAddr::new(
        address(lab, "node2").into(),
        firstboot::fleetlock::service::LOCK_PORT,
    );
    let scratch = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, name: &str| {
        let to = scratch.path().join(name);
        std::fs::copy(from, &to).unwrap();
        to
    };
    let own = plan::IDENTITY.slot(&paths("node4"));
    let forged = firstboot::certs::Slot {
        purpose: CertPurpose::Identity,
        key: copy(&own.key, "forged.key"),
        cert: scratch.path().join("forged.crt"),
        ca: copy(&own.ca, "forged-ca.crt"),
    };
    let csr = forged.csr(&fqdn("node4")).unwrap();
    let signed = temporary.root.sign_csr(&csr, &fqdn("node4")).unwrap();
    std::fs::write(&forged.cert, signed).unwrap();
    let etcd_cert = plan::ETCD.slot(&paths("node2"));
    let other_ca = firstboot::certs::Slot {
        purpose: CertPurpose::Etcd,
        key: copy(&etcd_cert.key, "etcd.key"),
        cert: copy(&etcd_cert.cert, "etcd.crt"),
        ca: copy(&own.ca, "etcd-ca.crt"),
    };
    let netns = lab.node("node4").unwrap().netns().to_owned();
    let node2 = fqdn("node2");
    let outcomes: Vec<(String, Result<u16, String>)> = in_netns(&netns, move || {
        runtime().block_on(async move {
            let mut outcomes = Vec::new();
            for (what, slot) in [
                ("its own", own),
                ("temporary root", forged),
                ("etcd sub-CA", other_ca),
            ] {
                let config = firstboot::https::client_config_from(&slot).unwrap();
                let answer = firstboot::https::post_with(
                    config,
                    lock,
                    &node2,
                    "/v1/pre-reboot",
                    b"{}".to_vec(),
                    Duration::from_secs(10),
                )
                .await;
                outcomes.push((
                    what.to_owned(),
                    answer.map(|a| a.status).map_err(|e| format!("{e:#}")),
                ));
            }
            outcomes
        })
    });
    eprintln!("node2's lock server, from node4: {outcomes:?}");
    assert!(outcomes[0].1.is_ok(), "{outcomes:?}");
    assert!(outcomes[1].1.is_err(), "{outcomes:?}");
    assert!(outcomes[2].1.is_err(), "{outcomes:?}");
}

/// Handoff's end: node1's temporary CA is destroyed, every core host's
/// sealed copy is the one without it (it opens under node1's CA-copy key
/// to the registry alone), no node holds a temporary CA's key anywhere
/// under firstboot's state, and node1's join service says the temporary
/// services ended.
fn temporary_ca_is_gone(lab: &Lab, nodes: &[&str]) {
    let root1 = lab.root("node1").unwrap();
    assert!(
        !root1.join("var/lib/firstboot/ca").exists(),
        "node1's temporary CA is still on its disk"
    );
    let config = firstboot::check::load(&root1.join("etc/firstboot/node.json")).unwrap();
    let seed = config
        .identity
        .ca_backup_key
        .clone()
        .expect("node1's CA-copy key");
    for node in ["node2", "node3"] {
        let sealed =
            std::fs::read_to_string(lab.root(node).unwrap().join("var/lib/firstboot/ca-backup"))
                .unwrap();
        let copy = firstboot::backup::open(&seed, &sealed).unwrap();
        assert!(copy.root.is_none(), "{node} still holds the temporary CA");
        assert!(copy.intermediates.is_empty(), "{node}");
        assert!(copy.registry.contains_key(&config.node), "{node}: {copy:?}");
    }
    for node in nodes {
        // Any key file firstboot keeps is a node's own (its identity, its
        // etcd member's); a CA's would be under `ca/`.
        let found = lab
            .sh(
                node,
                "find /var/lib/firstboot /etc/firstboot -path '*/ca/*' -o -name 'ca-backup.new' | head",
            )
            .unwrap();
        assert!(found.trim().is_empty(), "{node}: {found}");
    }
    let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
    assert!(
        journal.contains("the temporary CA's keys are destroyed"),
        "{journal}"
    );
}

/// `node`'s certificate of `purpose` is from the sub-CA its move went to,
/// which it alone trusts, and is certmonger's copy, tracked (request
/// `id`), issued by that sub-CA.
fn in_place(
    lab: &Lab,
    node: &str,
    purpose: firstboot::certs::CertPurpose,
    moved: &firstboot::certs::moved::Moved,
    id: &str,
) {
    let paths = firstboot::paths::Paths::under(&lab.root(node).unwrap());
    let slot = firstboot::certs::PLAN.row(purpose).unwrap().slot(&paths);
    let trusted = std::fs::read_to_string(&slot.ca).unwrap();
    assert_eq!(
        trusted.trim(),
        moved.new_ca.trim(),
        "{node} trusts more than the sub-CA for {purpose}"
    );
    let cert = std::fs::read_to_string(&slot.cert).unwrap();
    slot.check(&cert, &moved.new_ca, &format!("{node}.lab.example.org"))
        .unwrap_or_else(|e| panic!("{node}: {e:#}"));
    let staged = lab
        .root(node)
        .unwrap()
        .join(moved.staged_cert.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(staged).unwrap(), cert, "{node}");
    let tracked = tracked_by_certmonger(lab, node, id);
    assert!(tracked.contains("status: MONITORING"), "{node}: {tracked}");
    let firstboot::certs::plan::FreeipaIssuer::SubCa(sub_ca) =
        firstboot::certs::PLAN.row(purpose).unwrap().issuer.freeipa;
    assert!(
        tracked.contains(&format!("issuer: CN={sub_ca} CA")),
        "{node}: {tracked}"
    );
}

/// What certmonger says of its request `id` on `node`: a core host's in
/// its FreeIPA server (the simulator's own, at its private socket), a
/// worker's on the host. That certmonger may be restarting (the freeipa
/// phase ran again above): asked again for up to 20 s.
fn tracked_by_certmonger(lab: &Lab, node: &str, id: &str) -> String {
    let every = if CORE.contains(&node) {
        format!(
            "CERTMONGER_PVT_ADDRESS=unix:path=/{SIM_DATA}/{} getcert list",
            firstboot::freeipa::site::HOST_SERVER_CERTMONGER
        )
    } else {
        "getcert list".to_owned()
    };
    let list = format!("{every} -i {id}");
    let mut tracked = Err(anyhow::anyhow!("not asked"));
    for _ in 0..20 {
        tracked = lab.sh(node, &list);
        if tracked.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    tracked.unwrap_or_else(|e| {
        let all = lab
            .sh(node, &format!("{every} 2>&1; true"))
            .unwrap_or_default();
        panic!("{node}: {e:#}\nevery request:\n{all}")
    })
}

const CORE: [&str; 3] = ["node1", "node2", "node3"];
const WRITES: &str = "/labtest/writes/";

/// Every core member's client endpoint.
fn etcd_endpoints(lab: &Lab) -> Vec<firstboot::etcd::Endpoint> {
    CORE.iter()
        .map(|n| firstboot::etcd::Endpoint {
            name: format!("{n}.lab.example.org"),
            address: SocketAddr::new(address(lab, n).into(), 2379),
        })
        .collect()
}

/// A writer acting as node1's own etcd client: a key every 100 ms, each
/// retried until acknowledged, on node1's certificate files as they are
/// at that moment (read again for every write: the handoff changes them
/// under it, as it does under firstboot's own client).
/// A copy of node1's temporary CA, taken from its disk as soon as it is
/// whole, as a thief of it would have kept it: after the handoff ends it,
/// nothing it signs may open anything of the site.
struct Thief {
    thread: std::thread::JoinHandle<Option<tempfile::TempDir>>,
}

impl Thief {
    fn start(lab: &Lab) -> Thief {
        let from = lab.root("node1").unwrap().join("var/lib/firstboot/ca");
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                let names = firstboot::certs::PLAN.intermediates();
                if let Ok(Some(_)) = firstboot::pki::TempCa::load(&from, &names) {
                    let copy = tempfile::tempdir().unwrap();
                    let copied = std::process::Command::new("cp")
                        .arg("-a")
                        .arg(format!("{}/.", from.display()))
                        .arg(copy.path())
                        .status()
                        .unwrap();
                    if copied.success()
                        && matches!(
                            firstboot::pki::TempCa::load(copy.path(), &names),
                            Ok(Some(_))
                        )
                    {
                        return Some(copy);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        });
        Thief { thread }
    }

    /// The copy, and the CA it holds.
    fn stolen(self) -> (tempfile::TempDir, firstboot::pki::TempCa) {
        let copy = self
            .thread
            .join()
            .unwrap()
            .expect("node1's temporary CA never appeared whole");
        let ca = firstboot::pki::TempCa::load(copy.path(), &firstboot::certs::PLAN.intermediates())
            .unwrap()
            .unwrap();
        (copy, ca)
    }
}

struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Writes>>,
}

/// What the writer did: each acknowledged write's revision and latency
/// (retries included), and how many attempts failed.
#[derive(Debug, Default)]
struct Writes {
    acknowledged: Vec<(i64, Duration)>,
    failed_attempts: u32,
    /// The first failure of each kind, for the report.
    failures: std::collections::BTreeSet<String>,
    given_up: Vec<String>,
}

impl Writer {
    fn start(lab: &Lab) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let paths = firstboot::paths::Paths::under(&lab.root("node1").unwrap());
        let slot = firstboot::certs::plan::ETCD.slot(&paths);
        let endpoints = etcd_endpoints(lab);
        let netns = lab.node("node1").unwrap().netns().to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            in_netns(&netns, move || {
                runtime().block_on(async move {
                    let mut writes = Writes::default();
                    let mut n = 0u32;
                    while !flag.load(Ordering::SeqCst) {
                        let key = format!("{WRITES}{n:06}");
                        let began = Instant::now();
                        let mut acknowledged = None;
                        let mut last = String::new();
                        // Bounded: 30 s of retries for one write (the
                        // first: 5 minutes, while the site assembles).
                        let tries = if writes.acknowledged.is_empty() {
                            3000
                        } else {
                            300
                        };
                        for _ in 0..tries {
                            let put = async {
                                firstboot::etcd::Client::for_slot(&slot, endpoints.clone())?
                                    .put(key.as_bytes(), b"x")
                                    .await
                            };
                            match put.await {
                                Ok(revision) => {
                                    acknowledged = Some(revision);
                                    break;
                                }
                                Err(_) if writes.acknowledged.is_empty() => {
                                    // etcd not formed yet.
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Err(e) => {
                                    writes.failed_attempts += 1;
                                    last = format!("{e:#}");
                                    if writes.failures.len() < 5 {
                                        writes.failures.insert(last.clone());
                                    }
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                        match acknowledged {
                            Some(revision) => writes.acknowledged.push((revision, began.elapsed())),
                            None => writes.given_up.push(format!("{key}: {last}")),
                        }
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    writes
                })
            })
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Writes {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort();
    let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
    latencies.get(i).copied().unwrap_or_default()
}

/// Handoff's etcd step (issue 17): every member presents and trusts the
/// `etcd` sub-CA's certificates alone, renewed by certmonger; a client
/// certificate from any other CA of the site is refused; and a writer
/// through the whole roll lost nothing.
fn handoff_etcd_is_the_sub_cas(lab: &Lab, writes: Writes, temp_ca: &firstboot::pki::TempCa) {
    use firstboot::certs::moved::Moved;
    let fqdn = |n: &str| format!("{n}.lab.example.org");
    let node1 = firstboot::paths::Paths::under(&lab.root("node1").unwrap());
    let record = Moved::load(&node1, firstboot::certs::CertPurpose::Etcd)
        .unwrap()
        .expect("node1 recorded no move of its etcd certificate");
    let sub_ca = record.new_ca.clone();
    let temporary = record.old_ca.clone();
    assert!(!firstboot::pki::issued_by(&sub_ca, &temporary));
    let ipa_ca = std::fs::read_to_string(
        lab.root("node1")
            .unwrap()
            .join(SIM_DATA)
            .join("etc/ipa/ca.crt"),
    )
    .unwrap();
    // The sub-CA is FreeIPA's: its certificate verifies under the IPA CA
    // (openssl, since firstboot's own check takes end-entity certificates).
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("ipa.pem"), &ipa_ca).unwrap();
    std::fs::write(scratch.path().join("sub.pem"), &sub_ca).unwrap();
    let verified = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(scratch.path().join("ipa.pem"))
        .arg(scratch.path().join("sub.pem"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "the etcd sub-CA is not FreeIPA's: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    for node in CORE {
        let paths = firstboot::paths::Paths::under(&lab.root(node).unwrap());
        let moved = Moved::load(&paths, firstboot::certs::CertPurpose::Etcd)
            .unwrap()
            .unwrap_or_else(|| panic!("{node} recorded no move"));
        assert!(moved.done, "{node}: {moved:?}");
        assert_eq!(moved.new_ca, sub_ca, "{node}");
        in_place(
            lab,
            node,
            firstboot::certs::CertPurpose::Etcd,
            &moved,
            "firstboot-etcd",
        );
    }

    // On the wire: each member answers a client that trusts the sub-CA
    // alone and shows node1's certificate; a client certificate from the
    // temporary CA, from FreeIPA's own CA (an ordinary host certificate)
    // or from the `kubernetes` sub-CA opens nothing, at any member.
    let slot = firstboot::certs::plan::ETCD.slot(&node1);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let (own_cert, own_key) = (read(&slot.cert), read(&slot.key));
    let from_temporary = firstboot::certs::plan::ETCD
        .temporary_ca(temp_ca)
        .unwrap()
        .issue(&fqdn("node1"))
        .unwrap();
    let realm = "LAB.EXAMPLE.ORG";
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key_pem = key.serialize_pem();
    let csr_node4 = firstboot::pki::csr_for(&key, &fqdn("node4")).unwrap();
    let csr_node1 = firstboot::pki::csr_for(&key, &fqdn("node1")).unwrap();
    let (host_cert, kubernetes_cert) = admin(lab, "node1", move |client| {
        Box::pin(async move {
            use firstboot::freeipa::ServiceCa;
            let host = client
                .request_certificate(
                    &format!("host/node4.lab.example.org@{realm}"),
                    &csr_node4,
                    "ipa",
                    "caIPAserviceCert",
                )
                .await
                .unwrap();
            client
                .ensure_service_principal(ServiceCa::Kubernetes, "node1.lab.example.org", realm)
                .await
                .unwrap();
            let kubernetes = client
                .request_certificate(
                    &format!("kubernetes/node1.lab.example.org@{realm}"),
                    &csr_node1,
                    "kubernetes",
                    "caIPAserviceCert",
                )
                .await
                .unwrap();
            (host.cert_pem, kubernetes.cert_pem)
        })
    });
    assert!(firstboot::pki::issued_by(&host_cert, &ipa_ca));
    assert!(!firstboot::pki::issued_by(&kubernetes_cert, &sub_ca));
    let strangers = vec![
        (
            "the temporary etcd CA",
            from_temporary.cert_pem,
            from_temporary.key_pem,
        ),
        (
            "FreeIPA's own CA (a host certificate)",
            host_cert,
            key_pem.clone(),
        ),
        ("the kubernetes sub-CA", kubernetes_cert, key_pem),
    ];
    let endpoints = etcd_endpoints(lab);
    let netns = lab.node("node1").unwrap().netns().to_owned();
    let trust = sub_ca.clone();
    let outcomes = in_netns(&netns, move || {
        runtime().block_on(async move {
            let mut outcomes = Vec::new();
            for endpoint in &endpoints {
                let one = vec![endpoint.clone()];
                let own = firstboot::etcd::Client::new(&trust, &own_cert, &own_key, one.clone())
                    .unwrap()
                    .get(b"health")
                    .await;
                outcomes.push((
                    endpoint.name.clone(),
                    "node1's own",
                    own.is_ok(),
                    format!("{own:?}"),
                ));
                for (what, cert, key) in &strangers {
                    let got = firstboot::etcd::Client::new(&trust, cert, key, one.clone())
                        .unwrap()
                        .put(b"/labtest/stranger", b"x")
                        .await;
                    outcomes.push((endpoint.name.clone(), what, got.is_ok(), format!("{got:?}")));
                }
            }
            outcomes
        })
    });
    for (member, what, opened, said) in outcomes {
        let expected = what == "node1's own";
        assert_eq!(
            opened, expected,
            "{member} with a client certificate from {what}: {said}"
        );
    }

    // The writer: every write acknowledged, each one there, and writes
    // went on across the whole roll (before its first step, after its
    // last).
    assert!(
        writes.given_up.is_empty(),
        "writes given up: {:?}",
        writes.given_up
    );
    let (count, steps) = {
        let endpoints = etcd_endpoints(lab);
        let slot = slot.clone();
        in_netns(&netns, move || {
            runtime().block_on(async move {
                let client = firstboot::etcd::Client::for_slot(&slot, endpoints).unwrap();
                let written = client.get_prefix(WRITES.as_bytes()).await.unwrap();
                let steps = client
                    .get_prefix(format!("{ROLL_PREFIX}step/").as_bytes())
                    .await
                    .unwrap();
                (written.len(), steps)
            })
        })
    };
    assert_eq!(count, writes.acknowledged.len(), "writes read back");
    assert_eq!(steps.len(), CORE.len(), "{steps:?}");
    let roll_began = steps.iter().map(|kv| kv.create_revision).min().unwrap();
    let roll_ended = steps.iter().map(|kv| kv.mod_revision).max().unwrap();
    let first = writes.acknowledged.first().unwrap().0;
    let last = writes.acknowledged.last().unwrap().0;
    assert!(
        first < roll_began && last > roll_ended,
        "the writer ({first}..{last}) did not span the roll ({roll_began}..{roll_ended}); \
         {} failed attempts: {:?}",
        writes.failed_attempts,
        writes.failures
    );
    let (mut before, mut during): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (revision, latency) in &writes.acknowledged {
        if *revision < roll_began {
            before.push(*latency);
        } else if *revision <= roll_ended {
            during.push(*latency);
        }
    }
    eprintln!(
        "bench: etcd writes {} acknowledged, {} failed attempts retried; \
         before the roll p50 {:?} p99 {:?} ({} writes); during it p50 {:?} p99 {:?} ({} writes)",
        writes.acknowledged.len(),
        writes.failed_attempts,
        percentile(&mut before, 0.5),
        percentile(&mut before, 0.99),
        before.len(),
        percentile(&mut during, 0.5),
        percentile(&mut during, 0.99),
        during.len(),
    );
}

/// Handoff's DNS step (issue 17): every node routes the site domain to
/// every FreeIPA server (the core hosts), the temporary DNS last; with
/// the temporary DNS unreachable and one FreeIPA server down, every node
/// still resolves every node's name through its own resolver.
fn handoff_dns_is_freeipas(lab: &Lab, nodes: &[&str]) {
    use firstboot::resolver::SiteDns;
    let servers: Vec<Ipv4Addr> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| address(lab, n))
        .collect();
    for node in nodes {
        let journal = lab.journal(node, Some("firstboot.service")).unwrap();
        assert!(journal.contains("phase handoff: done"), "{node}: {journal}");
        let paths = firstboot::paths::Paths::under(&lab.root(node).unwrap());
        assert_eq!(
            firstboot::resolver::saved(&paths),
            Some(SiteDns::Freeipa {
                servers: servers.clone(),
                fallback: None,
            }),
            "{node}'s route for the site domain: FreeIPA's servers, the temporary DNS ended"
        );
    }
    // The temporary DNS ended: it answers nothing (systemd still holds
    // its port, so nobody else can take it), and the join service says
    // so.
    let temporary = address(lab, "node1");
    let asked = lab
        .sh(
            "node4",
            &format!(
                "dig +short +time=2 +tries=1 -p 5300 @{temporary} node4.lab.example.org A; true"
            ),
        )
        .unwrap();
    assert!(
        asked.contains("timed out") || asked.contains("no servers could be reached"),
        "the temporary DNS still answers: {asked}"
    );
    let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
    assert!(
        journal.contains("the temporary DNS stopped"),
        "node1: {journal}"
    );
    // One FreeIPA server stopped: every node still resolves every node.
    lab.sh("node2", "systemctl stop freeipa-server").unwrap();
    for node in nodes {
        lab.sh(node, "resolvectl flush-caches").unwrap();
        for other in nodes {
            let fqdn = format!("{other}.lab.example.org");
            let answer = lab
                .sh(
                    node,
                    &format!("dig +short +time=3 +tries=2 @127.0.0.53 {fqdn} A"),
                )
                .unwrap();
            assert_eq!(
                answer.trim(),
                address(lab, other).to_string(),
                "{node} resolving {fqdn} with node2's FreeIPA down and the temporary DNS \
                 ended"
            );
        }
    }
    lab.sh("node2", "systemctl start freeipa-server").unwrap();
}

#[test]
fn faults_are_retried_and_a_replica_outlives_the_first_server() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (site, configs) = lab::render_into(dir.path(), &lab::lab_site(4), &firstboot);
    let mut lab = lab::start(&image, &firstboot, &bytes, &configs);
    assert_cluster(&lab, &site);
    let nodes = ["node1", "node2", "node3", "node4"];
    wait_done(&lab, &nodes, Duration::from_secs(240));

    // The first server answers garbage, a 500, a 401, or forgets the
    // session, while the bootstrap host's phase runs again (it logs in and
    // serves enrollment again): retried, logged, completed.
    for fault in ["garbage", "http500", "unauthorized", "expire-session"] {
        let before_calls = calls(&lab, "node1").len();
        lab.sh(
            "node1",
            &format!("/usr/local/bin/ipa-sim fault --data /var/lib/freeipa-server {fault} 2"),
        )
        .unwrap();
        let before = rerun_freeipa(&lab, "node1", &[]);
        wait_rerun(&lab, "node1", before, Duration::from_secs(120));
        let faulted = calls(&lab, "node1")[before_calls..]
            .iter()
            .filter(|c| c["fault"].is_string())
            .count();
        assert!(
            faulted > 0,
            "{fault}: the simulator never answered with a fault"
        );
    }
    let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
    for why in ["retrying", "logging in again"] {
        assert!(
            journal.contains(why),
            "the bootstrap host did not say why it retried (`{why}`):\n{journal}"
        );
    }

    // The first server gone: a replica still answers DNS for the site and
    // issues certificates. First wait until replication has brought node2
    // the last enrollment (node4's record), as with a real FreeIPA, whose
    // replicas lag their supplier by a moment.
    let node2_dns = |lab: &Lab| {
        lab.sh(
            "node3",
            &format!(
                "dig +short +time=2 +tries=1 @{} node4.lab.example.org A",
                address(lab, "node2")
            ),
        )
        .unwrap_or_default()
        .trim()
        .to_owned()
    };
    let node4 = address(&lab, "node4").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node2_dns(&lab) != node4 {
        assert!(
            Instant::now() < deadline,
            "node2 never replicated node4's record"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.kill("node1").unwrap();
    assert_eq!(node2_dns(&lab), node4, "node2's DNS with node1 gone");
    let issued = admin(&lab, "node2", |client| {
        Box::pin(async move {
            let principal = "HTTP/node4.lab.example.org@LAB.EXAMPLE.ORG";
            client.ensure_service(principal).await.unwrap();
            let (_, csr) = firstboot::pki::new_key_and_csr("node4.lab.example.org").unwrap();
            client
                .request_certificate(principal, &csr, "ipa", firstboot::freeipa::SERVICE_PROFILE)
                .await
        })
    });
    let issued = issued.expect("node2 issued no certificate with node1 gone");
    let names = firstboot::pki::inspect(&issued.cert_pem).unwrap().dns_names;
    assert_eq!(names, ["node4.lab.example.org"]);
    drop(lab);
}

/// Handoff's recovery (issue 17): node2 is killed in the middle of its
/// etcd member's restart during the roll (the whole node, firstboot and
/// etcd with it) and booted again. It resumes its own step (the restart
/// lock it held is still its own), the others wait for it rather than
/// take the lock, and the handoff completes; a writer through all of it
/// loses nothing (each write retried at most 30 s: quorum held).
#[test]
fn a_core_host_killed_mid_restart_resumes_the_handoff() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (site, configs) = lab::render_into(dir.path(), &lab::lab_site(3), &firstboot);
    let mut lab = lab::start(&image, &firstboot, &bytes, &configs);
    let writer = Writer::start(&lab);
    // The moment node2 restarts its member for the roll.
    let deadline = Instant::now() + lab::BOOT_LIMIT;
    loop {
        let journal = lab
            .journal("node2", Some("firstboot.service"))
            .unwrap_or_default();
        if journal.contains("etcd: restarting this member") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 never restarted its member for the roll:\n{journal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.kill("node2").unwrap();
    let paths2 = firstboot::paths::Paths::under(&lab.root("node2").unwrap());
    let moved = firstboot::certs::moved::Moved::load(&paths2, firstboot::certs::CertPurpose::Etcd)
        .unwrap()
        .expect("node2 was killed before its move began");
    assert!(!moved.done, "node2 was killed after its move: {moved:?}");
    lab.boot("node2").unwrap();
    assert_cluster(&lab, &site);
    let nodes = ["node1", "node2", "node3"];
    wait_done(&lab, &nodes, Duration::from_secs(300));
    let writes = writer.stop();

    let journal = lab.journal("node2", Some("firstboot.service")).unwrap();
    assert!(journal.contains("phase handoff: done"), "{journal}");
    let mut sub_ca = None;
    for node in nodes {
        let paths = firstboot::paths::Paths::under(&lab.root(node).unwrap());
        let moved =
            firstboot::certs::moved::Moved::load(&paths, firstboot::certs::CertPurpose::Etcd)
                .unwrap()
                .unwrap_or_else(|| panic!("{node} recorded no move"));
        assert!(moved.done, "{node}: {moved:?}");
        let sub = sub_ca.get_or_insert_with(|| moved.new_ca.clone());
        assert_eq!(&moved.new_ca, sub, "{node}");
        let slot = firstboot::certs::plan::ETCD.slot(&paths);
        assert_eq!(
            std::fs::read_to_string(&slot.ca).unwrap().trim(),
            sub.trim(),
            "{node}"
        );
    }
    assert!(writes.given_up.is_empty(), "{:?}", writes.given_up);
    let endpoints = etcd_endpoints(&lab);
    let slot = firstboot::certs::plan::ETCD
        .slot(&firstboot::paths::Paths::under(&lab.root("node1").unwrap()));
    let netns = lab.node("node1").unwrap().netns().to_owned();
    let (count, lock) = in_netns(&netns, move || {
        runtime().block_on(async move {
            let client = firstboot::etcd::Client::for_slot(&slot, endpoints).unwrap();
            let written = client.get_prefix(WRITES.as_bytes()).await.unwrap();
            let lock = client
                .get(format!("{ROLL_PREFIX}restart-lock").as_bytes())
                .await
                .unwrap();
            (written.len(), lock)
        })
    });
    assert_eq!(count, writes.acknowledged.len(), "writes read back");
    assert!(lock.is_none(), "the restart lock is still held: {lock:?}");
    eprintln!(
        "bench: node2 killed mid-restart: {} writes acknowledged, {} failed attempts retried",
        writes.acknowledged.len(),
        writes.failed_attempts
    );
    drop(lab);
}
