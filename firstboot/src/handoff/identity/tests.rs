//! The identity roll on four nodes at once, each on its own files, with
//! an in-memory join service as their book: while they roll, a watcher
//! reads every node's files again and again and checks that each node's
//! certificate chains to what every other node trusts at that moment (so
//! every handshake between any two would succeed); a silent node holds
//! every barrier; a node whose request fails resumes at its step.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::anyhow;

use super::*;
use crate::certs::plan;
use crate::pki::{Ca, TempCa};

const DOMAIN: &str = "site.test";
const NODES: [&str; 4] = ["node1", "node2", "node3", "node4"];

/// The join service's book, shared by every node.
#[derive(Default)]
struct Shared {
    steps: BTreeMap<HostName, Option<Step>>,
    identity_ca: Option<String>,
    ended: bool,
}

struct InMemory {
    me: HostName,
    shared: Arc<Mutex<Shared>>,
}

impl Book for InMemory {
    async fn report(&self, step: Option<Step>) -> Result<HandoffAnswer> {
        let mut shared = self.shared.lock().unwrap();
        shared.steps.insert(self.me.clone(), step);
        let bootstrap = crate::phases::tests::lab_config("node1").ticket();
        Ok(HandoffAnswer {
            bootstrap,
            temporary_ended: shared.ended,
            identity_ca: shared.identity_ca.clone(),
            identity: shared.steps.clone(),
            ca_backup: None,
        })
    }
}

/// Signs with the new CA; fails the first `failures` times. Slow, as
/// certmonger asking FreeIPA is, so that the watcher sees the files
/// between every step.
struct SignedBy {
    ca: Arc<Ca>,
    failures: Arc<AtomicU32>,
}

const SIGNING: Duration = Duration::from_millis(40);

impl Issue for SignedBy {
    async fn certify(&self, slot: &Slot, fqdn: &str) -> Result<()> {
        tokio::time::sleep(SIGNING).await;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            bail!("FreeIPA did not answer (a failure the test makes)");
        }
        let cert = self
            .ca
            .sign_csr(&slot.csr(fqdn)?, fqdn)
            .map_err(|e| anyhow!("{e}"))?;
        slot.install_leaf(&cert, self.ca.cert_pem(), fqdn)
    }
}

struct Node {
    _dir: tempfile::TempDir,
    paths: Paths,
    name: HostName,
    fqdn: String,
}

/// Each node with an identity from `old`'s root, as join gives it.
fn nodes(old: &TempCa) -> Vec<Node> {
    NODES
        .iter()
        .map(|name| {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            let fqdn = format!("{name}.{DOMAIN}");
            let slot = plan::IDENTITY.slot(&paths);
            let cert = old.root.sign_csr(&slot.csr(&fqdn).unwrap(), &fqdn).unwrap();
            slot.install(&cert, old.root.cert_pem(), &fqdn).unwrap();
            Node {
                _dir: dir,
                paths,
                name: HostName::parse(name).unwrap(),
                fqdn,
            }
        })
        .collect()
}

const QUICK: Patience = Patience {
    barrier: Duration::from_secs(60),
    poll: Duration::from_millis(5),
};

async fn roll(
    node: &Node,
    shared: &Arc<Mutex<Shared>>,
    new: &Arc<Ca>,
    failures: &Arc<AtomicU32>,
    patience: Patience,
) -> Result<()> {
    let issuer = |pem: &str| {
        assert_eq!(pem, new.cert_pem(), "the sub-CA the book gave");
        SignedBy {
            ca: new.clone(),
            failures: failures.clone(),
        }
    };
    let roll = Roll {
        paths: &node.paths,
        me: node.name.clone(),
        fqdn: node.fqdn.clone(),
        slot: plan::IDENTITY.slot(&node.paths),
        staged_cert: node.paths.under_root("/staged.crt"),
        staged_key: node.paths.under_root("/staged.key"),
        book: InMemory {
            me: node.name.clone(),
            shared: shared.clone(),
        },
        issuer: &issuer,
        patience,
    };
    roll.run(&mut |_| {}).await
}

/// Whether every node's certificate chains to every node's trust file
/// now; the pairs that do not.
fn handshakes(nodes: &[Node]) -> Vec<String> {
    let read = |node: &Node| {
        let slot = plan::IDENTITY.slot(&node.paths);
        (
            std::fs::read_to_string(&slot.cert).unwrap(),
            std::fs::read_to_string(&slot.ca).unwrap(),
        )
    };
    let files: Vec<_> = nodes.iter().map(read).collect();
    let mut failing = Vec::new();
    for (a, (cert, _)) in nodes.iter().zip(&files) {
        for (b, (_, trust)) in nodes.iter().zip(&files) {
            let trusted = trust_anchors(trust)
                .iter()
                .any(|ca| crate::pki::issued_by(cert, ca));
            if !trusted {
                failing.push(format!("{} -> {}", a.name, b.name));
            }
        }
    }
    failing
}

fn trust_anchors(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(|pem| pem.trim().to_owned())
        .filter(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----"))
        .collect()
}

#[tokio::test]
async fn every_node_moves_and_every_handshake_works_throughout() {
    let old = TempCa::create(DOMAIN, &[]).unwrap();
    let new = Arc::new(TempCa::create(DOMAIN, &[]).unwrap().root);
    let nodes = Arc::new(nodes(&old));
    let shared = Arc::new(Mutex::new(Shared {
        steps: nodes.iter().map(|n| (n.name.clone(), None)).collect(),
        identity_ca: Some(new.cert_pem().to_owned()),
        ended: false,
    }));
    // One node's request fails twice: it resumes, the others wait.
    let failures: Vec<_> = (0..NODES.len())
        .map(|i| Arc::new(AtomicU32::new(if i == 2 { 2 } else { 0 })))
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (nodes, done) = (nodes.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            let (mut samples, mut broken) = (0u32, Vec::new());
            while !done.load(Ordering::SeqCst) {
                broken.extend(handshakes(&nodes));
                samples += 1;
            }
            (samples, broken)
        })
    };
    let run = |i: usize| {
        let (node, shared, new, failures) = (&nodes[i], &shared, &new, &failures[i]);
        async move {
            // node4 comes late to its handoff, as a worker still
            // enrolling does.
            if i == 3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                match roll(node, shared, new, failures, QUICK).await {
                    Ok(()) => return attempts,
                    Err(e) if attempts < 5 => {
                        assert!(format!("{e:#}").contains("did not answer"), "{e:#}")
                    }
                    Err(e) => panic!("{}: {e:#}", node.name),
                }
            }
        }
    };
    let (a, b, c, d) = tokio::join!(run(0), run(1), run(2), run(3));
    let attempts = [a, b, c, d];
    done.store(true, Ordering::SeqCst);
    let (samples, broken) = watcher.await.unwrap();
    assert!(samples > 10, "the watcher read the files {samples} times");
    assert!(broken.is_empty(), "handshakes that would fail: {broken:?}");
    assert_eq!(attempts, [1, 1, 3, 1]);

    for node in nodes.iter() {
        let slot = plan::IDENTITY.slot(&node.paths);
        let trust = std::fs::read_to_string(&slot.ca).unwrap();
        assert_eq!(trust.trim(), new.cert_pem().trim(), "{}", node.name);
        let cert = std::fs::read_to_string(&slot.cert).unwrap();
        assert!(crate::pki::issued_by(&cert, new.cert_pem()));
        assert!(!crate::pki::issued_by(&cert, old.root.cert_pem()));
        let moved = Moved::load(&node.paths, slot.purpose).unwrap().unwrap();
        assert!(moved.done);
        assert_eq!(moved.step, Some(Step::Dropped));
        assert_eq!(moved.old_ca.trim(), old.root.cert_pem().trim());
    }
    // Done is done: a run again changes nothing and asks nothing.
    let before = shared.lock().unwrap().steps.clone();
    let none = Arc::new(AtomicU32::new(0));
    roll(&nodes[0], &shared, &new, &none, QUICK).await.unwrap();
    assert_eq!(shared.lock().unwrap().steps, before);
}

#[tokio::test]
async fn a_silent_node_holds_every_barrier_and_nothing_is_presented_early() {
    let old = TempCa::create(DOMAIN, &[]).unwrap();
    let new = Arc::new(TempCa::create(DOMAIN, &[]).unwrap().root);
    let nodes = nodes(&old);
    // node4 is registered and never reports.
    let shared = Arc::new(Mutex::new(Shared {
        steps: nodes.iter().map(|n| (n.name.clone(), None)).collect(),
        identity_ca: Some(new.cert_pem().to_owned()),
        ended: false,
    }));
    let none = Arc::new(AtomicU32::new(0));
    let patience = Patience {
        barrier: Duration::from_millis(300),
        poll: Duration::from_millis(20),
    };
    let e = roll(&nodes[0], &shared, &new, &none, patience)
        .await
        .unwrap_err();
    let said = format!("{e:#}");
    assert!(said.contains("node4"), "{said}");
    assert!(said.contains("to trust the old and the new CA"), "{said}");
    assert!(!said.contains("node1"), "{said}");
    // It trusts both, and still presents the old CA's certificate.
    let slot = plan::IDENTITY.slot(&nodes[0].paths);
    let cert = std::fs::read_to_string(&slot.cert).unwrap();
    assert!(crate::pki::issued_by(&cert, old.root.cert_pem()));
    assert_eq!(
        trust_anchors(&std::fs::read_to_string(&slot.ca).unwrap()).len(),
        2
    );
    let moved = Moved::load(&nodes[0].paths, slot.purpose).unwrap().unwrap();
    assert_eq!(moved.step, Some(Step::Bundle));
    assert!(!moved.done);
}

#[tokio::test]
async fn no_sub_ca_yet_is_waited_for_then_an_error_that_says_so() {
    let old = TempCa::create(DOMAIN, &[]).unwrap();
    let new = Arc::new(TempCa::create(DOMAIN, &[]).unwrap().root);
    let nodes = nodes(&old);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let none = Arc::new(AtomicU32::new(0));
    let patience = Patience {
        barrier: Duration::from_millis(100),
        poll: Duration::from_millis(20),
    };
    let e = roll(&nodes[1], &shared, &new, &none, patience)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no identity sub-CA"), "{e:#}");
    // Nothing changed, nothing recorded.
    let slot = plan::IDENTITY.slot(&nodes[1].paths);
    assert_eq!(
        std::fs::read_to_string(&slot.ca).unwrap().trim(),
        old.root.cert_pem().trim()
    );
    assert!(Moved::load(&nodes[1].paths, slot.purpose)
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_node_that_came_with_the_sub_ca_waits_for_no_one() {
    // A host that joined (or a bootstrap host rebuilt) once the move was
    // done: its identity is from the sub-CA and it trusts that alone.
    let new = Arc::new(TempCa::create(DOMAIN, &[]).unwrap().root);
    let dir = tempfile::tempdir().unwrap();
    let node = Node {
        paths: Paths::under(dir.path()),
        _dir: dir,
        name: HostName::parse("node6").unwrap(),
        fqdn: format!("node6.{DOMAIN}"),
    };
    let slot = plan::IDENTITY.slot(&node.paths);
    let cert = new
        .sign_csr(&slot.csr(&node.fqdn).unwrap(), &node.fqdn)
        .unwrap();
    slot.install(&cert, new.cert_pem(), &node.fqdn).unwrap();
    // Every other node is done and reports no more; node5 never did.
    let mut steps: BTreeMap<HostName, Option<Step>> = NODES
        .iter()
        .map(|n| (HostName::parse(n).unwrap(), Some(Step::Dropped)))
        .collect();
    steps.insert(HostName::parse("node5").unwrap(), None);
    let shared = Arc::new(Mutex::new(Shared {
        steps,
        identity_ca: Some(new.cert_pem().to_owned()),
        ended: false,
    }));
    let none = Arc::new(AtomicU32::new(0));
    let patience = Patience {
        barrier: Duration::from_millis(100),
        poll: Duration::from_millis(20),
    };
    roll(&node, &shared, &new, &none, patience).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&slot.ca).unwrap().trim(),
        new.cert_pem().trim(),
        "the old CA it never had is not added"
    );
    let moved = Moved::load(&node.paths, slot.purpose).unwrap().unwrap();
    assert!(moved.done);
    assert_eq!(
        shared.lock().unwrap().steps[&node.name],
        Some(Step::Dropped)
    );
}
