//! Against a real etcd (Debian's etcd-server, 3.4: what the lab's nodes
//! run), one member on a loopback address of its own, over mutual TLS
//! with certificates from the temporary CAs, as on a node.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};

use super::*;
use crate::certs::plan::tests::{etcd_ca, WITH_TEST_ONLY};
use crate::certs::plan::ETCD;
use crate::pki::TempCa;

const NAME: &str = "node1.lab.example.org";

/// An etcd child process, ended (by its PID) when dropped.
pub(crate) struct Etcd {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loopback() -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 92, (pid >> 8) as u8, (pid as u8).max(2))
}

/// etcd serving clients at `client` and its peer at `peer`, with `ca`'s
/// etcd CA for its certificate (naming [`NAME`]) and trust, or None
/// (skipped) when etcd is not installed.
pub(crate) fn start_etcd(client: SocketAddr, peer: SocketAddr, ca: &TempCa) -> Option<Etcd> {
    let data = tempfile::tempdir().unwrap();
    let member = etcd_ca(ca).issue(NAME).unwrap();
    let write = |name: &str, text: &str| {
        let path = data.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, trust) = (
        write("member.crt", &member.cert_pem),
        write("member.key", &member.key_pem),
        write("ca.crt", etcd_ca(ca).cert_pem()),
    );
    let peer = format!("https://{peer}");
    let spawned = Command::new("etcd")
        .args([
            "--name=node1".to_owned(),
            format!("--data-dir={}", data.path().join("data").display()),
            format!("--listen-client-urls=https://{client}"),
            format!("--advertise-client-urls=https://{client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=node1={peer}"),
            "--client-cert-auth=true".to_owned(),
            format!("--trusted-ca-file={trust}"),
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            "--peer-client-cert-auth=true".to_owned(),
            format!("--peer-trusted-ca-file={trust}"),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(Etcd { child, _data: data }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            site_test_skip::skip("skipping: etcd is not installed (apt-get install etcd-server)");
            None
        }
        Err(e) => panic!("starting etcd: {e}"),
    }
}

fn endpoint(address: Ipv4Addr) -> Endpoint {
    Endpoint {
        name: NAME.to_owned(),
        address: SocketAddr::new(IpAddr::V4(address), 2379),
    }
}

/// A client of the member at `address`, with an etcd certificate of its
/// own, as a core host has.
pub(crate) fn client_of(ca: &TempCa, address: SocketAddr) -> Client {
    let mine = etcd_ca(ca).issue("node2.lab.example.org").unwrap();
    let endpoint = Endpoint {
        name: NAME.to_owned(),
        address,
    };
    Client::new(
        etcd_ca(ca).cert_pem(),
        &mine.cert_pem,
        &mine.key_pem,
        vec![endpoint],
    )
    .unwrap()
}

/// Until the member answers its status with itself as leader; bounded.
pub(crate) async fn wait_ready(client: &Client) -> Status {
    let mut last = String::new();
    for _ in 0..300 {
        match client.status(&client.endpoints()[0]).await {
            Ok(status) if status.leader != 0 => return status,
            Ok(status) => last = format!("{status:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not become ready: {last}");
}

#[tokio::test]
async fn the_client_speaks_etcd_s_json_gateway() {
    let ca = TempCa::create("lab.example.org", &WITH_TEST_ONLY.intermediates()).unwrap();
    let address = loopback();
    let at = |port| SocketAddr::new(IpAddr::V4(address), port);
    let Some(_etcd) = start_etcd(at(2379), at(2380), &ca) else {
        return;
    };
    let client = client_of(&ca, at(2379));
    let status = wait_ready(&client).await;
    assert_eq!(status.leader, status.member_id);
    assert!(status.raft_index > 0 && status.raft_term > 0, "{status:?}");
    assert!(status.version.starts_with("3."), "{status:?}");

    // Reads and writes.
    assert_eq!(client.get(b"/site/a").await.unwrap(), None);
    let revision = client.put(b"/site/a", b"one").await.unwrap();
    let a = client.get(b"/site/a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.mod_revision),
        (&b"one"[..], revision)
    );
    assert_eq!(a.version, 1);
    client.put(b"/site/b", b"two").await.unwrap();
    client.put(b"/sitf", b"outside").await.unwrap();
    let listed: Vec<_> = client
        .get_prefix(b"/site/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(listed, [b"/site/a".to_vec(), b"/site/b".to_vec()]);

    // Compare-and-swap: only the first creator wins; only the holder of
    // the current revision replaces or deletes.
    assert!(client.compare_and_swap(b"/lock", 0, b"me").await.unwrap());
    assert!(!client.compare_and_swap(b"/lock", 0, b"you").await.unwrap());
    let lock = client.get(b"/lock").await.unwrap().unwrap();
    assert_eq!(lock.value, b"me");
    assert!(!client
        .compare_and_swap(b"/lock", lock.mod_revision - 1, b"you")
        .await
        .unwrap());
    assert!(client
        .compare_and_swap(b"/lock", lock.mod_revision, b"me again")
        .await
        .unwrap());
    let lock = client.get(b"/lock").await.unwrap().unwrap();
    assert!(!client
        .delete_if(b"/lock", lock.mod_revision - 1)
        .await
        .unwrap());
    assert!(client.delete_if(b"/lock", lock.mod_revision).await.unwrap());
    assert_eq!(client.get(b"/lock").await.unwrap(), None);

    // Membership.
    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "node1");
    assert_eq!(members[0].id, status.member_id);
    assert_eq!(members[0].peer_urls, [format!("https://{address}:2380")]);
    assert!(!members[0].is_learner);

    // A certificate from another CA of the site (any other row of the
    // plan's: a node's identity, from the temporary root, or the test-only
    // kind's, from its own intermediate) opens nothing; nor does a server
    // whose certificate is not under the CA the client trusts.
    for row in WITH_TEST_ONLY.rows().iter().filter(|r| **r != ETCD) {
        let other_row = row.temporary_ca(&ca).unwrap();
        let stranger = other_row.issue("node4.lab.example.org").unwrap();
        let stranger = Client::new(
            etcd_ca(&ca).cert_pem(),
            &stranger.cert_pem,
            &stranger.key_pem,
            vec![endpoint(address)],
        )
        .unwrap();
        let refused = format!("{:#}", stranger.get(b"/site/a").await.unwrap_err());
        assert!(
            refused.contains("no etcd member answered"),
            "{}: {refused}",
            row.purpose
        );
    }
    let other = TempCa::create("lab.example.org", &crate::certs::PLAN.intermediates()).unwrap();
    let mine = etcd_ca(&ca).issue("node2.lab.example.org").unwrap();
    let wary = Client::new(
        etcd_ca(&other).cert_pem(),
        &mine.cert_pem,
        &mine.key_pem,
        vec![endpoint(address)],
    )
    .unwrap();
    let refused = format!("{:#}", wary.get(b"/site/a").await.unwrap_err());
    assert!(refused.contains("TLS handshake failed"), "{refused}");
}

#[test]
fn a_prefix_ends_where_etcd_ends_it() {
    assert_eq!(prefix_end(b"/a/"), b"/a0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), [0]);
}

/// Answers captured from etcd 3.4.23's gateway (`curl -X POST` on a
/// scratch member), read as the client reads them: 64-bit integers as
/// strings, the proto's own field names (`raftIndex` is spelled so in
/// rpc.proto), defaults left out (`succeeded` when false).
#[test]
fn answers_are_read_as_the_gateway_writes_them() {
    let status: StatusResponse = serde_json::from_str(
        r#"{"header":{"cluster_id":"16265247707434780025","member_id":"18069310859697006591","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"24576","leader":"18069310859697006591","raftIndex":"4","raftTerm":"2","raftAppliedIndex":"4","dbSizeInUse":"16384"}"#,
    )
    .unwrap();
    assert_eq!(status.header.member_id, 18069310859697006591);
    assert_eq!(status.leader, 18069310859697006591);
    assert_eq!(
        (
            status.raft_index,
            status.raft_term,
            status.raft_applied_index
        ),
        (4, 2, 4)
    );
    let range: RangeResponse = serde_json::from_str(
        r#"{"header":{"cluster_id":"16265247707434780025","member_id":"18069310859697006591","revision":"2","raft_term":"2"},"kvs":[{"key":"YQ==","create_revision":"2","mod_revision":"2","version":"1","value":"Yg=="}],"count":"1"}"#,
    )
    .unwrap();
    let kv = Kv::try_from(range.kvs.into_iter().next().unwrap()).unwrap();
    assert_eq!(
        (kv.key, kv.value, kv.mod_revision),
        (b"a".to_vec(), b"b".to_vec(), 2)
    );
    let failed: TxnResponse = serde_json::from_str(
        r#"{"header":{"cluster_id":"16265247707434780025","member_id":"18069310859697006591","revision":"2","raft_term":"2"}}"#,
    )
    .unwrap();
    assert!(!failed.succeeded);
    let added: MemberAddResponse = serde_json::from_str(
        r#"{"header":{"raft_term":"2"},"member":{"ID":"8655541017273529120","peerURLs":["https://x:2380"]},"members":[]}"#,
    )
    .unwrap();
    assert_eq!(added.member.id, 8655541017273529120);
    assert!(added.member.name.is_empty());
    // A key that is not base64 is an error, not an empty key.
    let bad: RangeResponse =
        serde_json::from_str(r#"{"kvs":[{"key":"!!","mod_revision":"2"}]}"#).unwrap();
    assert!(Kv::try_from(bad.kvs.into_iter().next().unwrap()).is_err());
}
