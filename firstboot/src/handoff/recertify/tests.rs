//! The roll against a real etcd cluster (Debian's etcd-server, 3.4, as
//! the lab runs): three members on this machine's loopback, each with
//! its own node files, re-certified from a second CA while a writer puts
//! a key every 100 ms. A restart here kills the member outright
//! (SIGKILL), harsher than systemd's stop.
//!
//! Names: every member's certificate names `localhost` (etcd matches an
//! incoming peer's source address against the names in its certificate,
//! ARCHITECTURE §8, and only `localhost` resolves here without
//! /etc/hosts), each on ports of its own.

use crate::certs::plan::tests::etcd_ca;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use super::*;
use crate::certs::plan;
use crate::paths::Paths;
use crate::pki::{Ca, TempCa};

const NAME: &str = "localhost";
const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];

fn ports(i: usize) -> (u16, u16) {
    // Ports of this process's own: one test here runs etcd on loopback.
    // Below Linux's ephemeral range (32768-60999 by default), where any
    // other test's outgoing connection may hold a port etcd then cannot
    // bind (CI saw it: a member at 53810 never started).
    let base = 20000 + (std::process::id() % 1500) as u16 * 8;
    (base + 2 * i as u16, base + 2 * i as u16 + 1)
}

/// One member: its node files and its etcd process.
struct Member {
    paths: Paths,
    args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl Member {
    fn spawn(&self) -> std::io::Result<()> {
        let child = Command::new("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Restarts by killing; notes how many writes were acknowledged then,
/// and whether the member is about to trust the new CA alone while
/// another member still presents an old certificate.
struct Killed {
    member: Arc<Member>,
    written: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<u32>>>,
    everyone: Vec<Paths>,
    new_ca: String,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Restart for Killed {
    async fn restart(&self) -> Result<()> {
        // Each restart waits for a write acknowledged since the last one
        // (bounded): writes going on through the roll are then shown by
        // the order of events, not by how fast this machine is (under
        // load a roll once finished between two of the writer's writes).
        // Writes that stall while members restart fail the test below.
        let last = self.seen.lock().unwrap().last().copied().unwrap_or(0);
        for _ in 0..1200 {
            if self.written.load(Ordering::SeqCst) > last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.seen
            .lock()
            .unwrap()
            .push(self.written.load(Ordering::SeqCst));
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
        let trust = read(plan::ETCD.slot(&self.member.paths).ca);
        if trust.trim_end() == self.new_ca.trim_end() {
            for paths in &self.everyone {
                let cert = read(plan::ETCD.slot(paths).cert);
                if !crate::pki::issued_by(&cert, &self.new_ca) {
                    self.violations.lock().unwrap().push(format!(
                        "{} trusts the new CA alone while {} presents an old certificate",
                        self.member.paths.under_root("/").display(),
                        paths.under_root("/").display()
                    ));
                }
            }
        }
        self.member.kill();
        self.member.spawn().context("starting etcd again")
    }
}

/// Signs with the new CA; one member's issuer is slow, as a FreeIPA
/// replica still waiting for the sub-CA's key is, so that a member that
/// did not wait for it would be seen.
struct SignedBy(Arc<Ca>, Duration);

impl Issue for SignedBy {
    async fn certify(&self, slot: &Slot, fqdn: &str) -> Result<()> {
        tokio::time::sleep(self.1).await;
        let cert = self
            .0
            .sign_csr(&slot.csr(fqdn)?, fqdn)
            .map_err(|e| anyhow!("{e}"))?;
        slot.install_leaf(&cert, self.0.cert_pem(), fqdn)
    }
}

fn endpoint(i: usize) -> Endpoint {
    Endpoint {
        name: NAME.to_owned(),
        address: SocketAddr::from(([127, 0, 0, 1], ports(i).0)),
    }
}

/// Three members under `old`, started; None (skipped) without etcd.
fn cluster(old: &TempCa, dirs: &[tempfile::TempDir]) -> Option<Vec<Arc<Member>>> {
    let initial = MEMBERS
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{m}=https://{NAME}:{}", ports(i).1))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, name) in MEMBERS.iter().enumerate() {
        let paths = Paths::under(dirs[i].path());
        let slot = plan::ETCD.slot(&paths);
        slot.ensure_from(etcd_ca(old), NAME).unwrap();
        let (client, peer) = ports(i);
        let file = |p: &std::path::Path| p.display().to_string();
        let args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", dirs[i].path().join("data").display()),
            format!("--listen-client-urls=https://127.0.0.1:{client}"),
            format!("--advertise-client-urls=https://{NAME}:{client}"),
            format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=https://{NAME}:{peer}"),
            format!("--initial-cluster={initial}"),
            "--initial-cluster-token=recertify-test".to_owned(),
            "--client-cert-auth=true".to_owned(),
            format!("--trusted-ca-file={}", file(&slot.ca)),
            format!("--cert-file={}", file(&slot.cert)),
            format!("--key-file={}", file(&slot.key)),
            "--peer-client-cert-auth=true".to_owned(),
            format!("--peer-trusted-ca-file={}", file(&slot.ca)),
            format!("--peer-cert-file={}", file(&slot.cert)),
            format!("--peer-key-file={}", file(&slot.key)),
        ];
        let member = Arc::new(Member {
            paths,
            args,
            child: Mutex::new(None),
        });
        match member.spawn() {
            Ok(()) => members.push(member),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                site_test_skip::skip(
                    "skipping: etcd is not installed (apt-get install etcd-server)",
                );
                return None;
            }
            Err(e) => panic!("starting etcd: {e}"),
        }
    }
    Some(members)
}

fn client_of(member: &Member) -> Result<Client> {
    Client::for_node(&member.paths, (0..MEMBERS.len()).map(endpoint).collect())
}

const TEST_PATIENCE: Patience = Patience {
    barrier: Duration::from_secs(180),
    lock: Duration::from_secs(180),
    back: Duration::from_secs(90),
    poll: Duration::from_millis(100),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_moves_to_the_new_ca_without_losing_a_write() {
    let old = TempCa::create(NAME, &crate::certs::PLAN.intermediates()).unwrap();
    let new = Arc::new(TempCa::create(NAME, &crate::certs::PLAN.intermediates()).unwrap());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let Some(members) = cluster(&old, &dirs) else {
        return;
    };
    // Formed: every member ready.
    let endpoints: Vec<_> = (0..3).map(endpoint).collect();
    let mut ready = Err(String::new());
    for _ in 0..600 {
        ready = Gate::check(&client_of(&members[0]).unwrap(), &endpoints).await;
        if ready.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ready.expect("the cluster did not form");

    // The writer: a key every 100 ms through m1's files, as firstboot on
    // that node writes (its client follows its member's steps); a write
    // no member acknowledged is sent again until one does.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let restarts_at = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, m1, count) = (stop.clone(), members[0].clone(), written.clone());
        tokio::spawn(async move {
            let mut retried = 0u32;
            // A few writes before any roll begins.
            while !stop.load(Ordering::SeqCst) {
                let key = format!("/writer/{:06}", count.load(Ordering::SeqCst));
                let mut attempts = 0;
                loop {
                    let put = async { client_of(&m1)?.put(key.as_bytes(), b"x").await };
                    match put.await {
                        Ok(_) => break,
                        Err(e) => {
                            attempts += 1;
                            retried += 1;
                            assert!(attempts < 300, "write {key} never acknowledged: {e:#}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            retried
        })
    };
    // The rolls start once the writer has written (bounded).
    for _ in 0..300 {
        if written.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every member's roll, at once, as on three nodes; each start of a
    // step is logged in order.
    let log = Arc::new(Mutex::new(Vec::<(String, Step)>::new()));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut rolls = members.iter().enumerate().map(|(i, member)| {
        let roll = Roll {
            me: MEMBERS[i].to_owned(),
            members: MEMBERS.iter().map(|m| m.to_string()).collect(),
            endpoints: endpoints.clone(),
            own: endpoint(i),
            slot: plan::ETCD.slot(&member.paths),
            old_ca: etcd_ca(&old).cert_pem().to_owned(),
            new_ca: etcd_ca(&new).cert_pem().to_owned(),
            prefix: "/firstboot/handoff/etcd/".to_owned(),
            restart: Killed {
                member: member.clone(),
                written: written.clone(),
                seen: restarts_at.clone(),
                everyone: members.iter().map(|m| m.paths.clone()).collect(),
                new_ca: etcd_ca(&new).cert_pem().to_owned(),
                violations: violations.clone(),
            },
            issuer: SignedBy(
                Arc::new(
                    Ca::from_pems(etcd_ca(&new).cert_pem(), &etcd_ca(&new).key_pem()).unwrap(),
                ),
                Duration::from_secs(if i == 2 { 3 } else { 0 }),
            ),
            patience: TEST_PATIENCE,
        };
        let log = log.clone();
        async move {
            let me = roll.me.clone();
            roll.run(&mut |step| log.lock().unwrap().push((me.clone(), step)))
                .await
        }
    });
    let mut next = || rolls.next().expect("three members");
    let (a, b, c) = tokio::join!(next(), next(), next());
    for (i, result) in [a, b, c].into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("{}: {e:#}", MEMBERS[i]));
    }
    // A few more writes after the last restart, then stop.
    let after = written.load(Ordering::SeqCst);
    for _ in 0..300 {
        if written.load(Ordering::SeqCst) >= after + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let retried = writer.await.unwrap();
    let written = written.load(Ordering::SeqCst);

    // Each step began once on every member, and no member restarted to
    // trust the new CA alone while another presented an old certificate.
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 9, "{log:?}");
    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");

    // Every member trusts the new CA alone and presents its certificate.
    for member in &members {
        let slot = plan::ETCD.slot(&member.paths);
        let trust = std::fs::read_to_string(&slot.ca).unwrap();
        assert_eq!(trust.trim_end(), etcd_ca(&new).cert_pem().trim_end());
        let cert = std::fs::read_to_string(&slot.cert).unwrap();
        assert!(crate::pki::issued_by(&cert, etcd_ca(&new).cert_pem()));
    }
    // Nothing was lost: what was written is what is there.
    let client = client_of(&members[1]).unwrap();
    let stored = client.get_prefix(b"/writer/").await.unwrap();
    // Six restarts (two per member), with writes before the first,
    // between them and after the last.
    let restarts_at = restarts_at.lock().unwrap().clone();
    eprintln!(
        "recertify: {written} writes ({retried} sent again), {} stored; restarts after writes {restarts_at:?}",
        stored.len()
    );
    assert_eq!(restarts_at.len(), 6, "{restarts_at:?}");
    assert!(restarts_at[0] > 0, "no write before the first restart");
    assert!(
        restarts_at.windows(2).all(|w| w[1] > w[0]),
        "no write between two restarts of the roll (in a minute): {restarts_at:?}"
    );
    assert!(written > restarts_at[5], "no write after the last restart");
    assert_eq!(stored.len(), written as usize);
    // The lock is free and every step recorded.
    assert_eq!(
        client
            .get(b"/firstboot/handoff/etcd/restart-lock")
            .await
            .unwrap(),
        None
    );
    for m in MEMBERS {
        let step = client
            .get(format!("/firstboot/handoff/etcd/step/{m}").as_bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(step.value, b"dropped");
    }
    // A client holding a certificate of the old CA is refused now.
    let stale = etcd_ca(&old).issue(NAME).unwrap();
    let refused = Client::new(
        etcd_ca(&new).cert_pem(),
        &stale.cert_pem,
        &stale.key_pem,
        endpoints.clone(),
    )
    .unwrap()
    .get(b"/writer/000000")
    .await;
    assert!(refused.is_err(), "an old-CA client still reads");
}
