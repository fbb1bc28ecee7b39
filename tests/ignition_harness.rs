//! Proves the test harness in `support/` works: a hand-written Ignition 3.3.0
//! config is applied by the real Ignition binary to a scratch root, fetching
//! one file from the loopback file server.
//!
//! Also pins down where Ignition 2.14 puts things, which the real tests rely
//! on: SSH keys go to `~/.ssh/authorized_keys.d/ignition` (not
//! `authorized_keys`), and an enabled unit is recorded as a systemd preset,
//! not as a `.wants/` symlink.

mod support;

use std::os::unix::fs::MetadataExt;

use serde_json::json;
use sha2::{Digest, Sha512};

use support::http::{self, FileServer};
use support::ignition::{self, data_url, ScratchRoot};

const PAYLOAD: &[u8] = b"#!/bin/sh\necho payload from the file server\n";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqI0Jw0sXgqDZbiLvK1Cq6WfB3xE3x0Zf6zYHmX7Qy9 harness@test";
const HOSTNAME: &str = "node-under-test";
const SECRET: &str = r#"{"token":"s3cr3t"}"#;
const UNIT: &str = "[Unit]\nDescription=Demo\n\n[Service]\nExecStart=/usr/local/bin/payload\n\n\
                    [Install]\nWantedBy=multi-user.target\n";

fn sha512_hash(bytes: &[u8]) -> String {
    format!("sha512-{}", hex::encode(Sha512::digest(bytes)))
}

/// The config under test; only the payload's verification hash varies.
fn config(payload_url: &str, payload_hash: &str) -> serde_json::Value {
    json!({
        "ignition": { "version": "3.3.0" },
        "passwd": {
            "users": [{ "name": "core", "sshAuthorizedKeys": [SSH_KEY] }]
        },
        "storage": {
            "files": [
                {
                    "path": "/etc/hostname",
                    "mode": 0o644,
                    "contents": { "source": data_url(HOSTNAME.as_bytes()) }
                },
                {
                    "path": "/usr/local/bin/payload",
                    "mode": 0o755,
                    "contents": {
                        "source": payload_url,
                        "verification": { "hash": payload_hash }
                    }
                },
                {
                    "path": "/etc/secret.json",
                    "mode": 0o600,
                    "contents": { "source": data_url(SECRET.as_bytes()) }
                }
            ]
        },
        "systemd": {
            "units": [{ "name": "demo.service", "enabled": true, "contents": UNIT }]
        }
    })
}

/// Serves the payload, writes `config` into a fresh root and applies it.
fn apply(config: &serde_json::Value) -> (ScratchRoot, ignition::ApplyOutcome) {
    let root = ScratchRoot::new().expect("create scratch root");
    let path = root
        .write_config(serde_json::to_vec_pretty(config).unwrap())
        .expect("write config");
    // Catch config typos here rather than as a confusing Ignition failure.
    let validated = ignition::validate(&path);
    assert!(validated.success, "config invalid:\n{}", validated.log);
    let outcome = ignition::apply(&path, &root);
    (root, outcome)
}

#[test]
fn applies_files_users_and_units() {
    if let Some(reason) = ignition::skip_reason() {
        return support::skip(&reason);
    }
    let server = FileServer::start(vec![("/payload".into(), PAYLOAD.to_vec())]).unwrap();
    let (root, outcome) = apply(&config(&server.url("/payload"), &sha512_hash(PAYLOAD)));
    assert!(outcome.success, "Ignition failed:\n{}", outcome.log);

    // Plain files, with exact contents and modes.
    assert_eq!(root.read("/etc/hostname"), HOSTNAME);
    assert_eq!(root.mode("/etc/hostname"), 0o644);
    assert_eq!(
        std::fs::read(root.path("/usr/local/bin/payload")).unwrap(),
        PAYLOAD
    );
    assert_eq!(root.mode("/usr/local/bin/payload"), 0o755);
    assert_eq!(server.hits("/payload"), 1, "payload fetched exactly once");
    assert_eq!(root.read("/etc/secret.json"), SECRET);
    assert_eq!(root.mode("/etc/secret.json"), 0o600);
    let secret = std::fs::metadata(root.path("/etc/secret.json")).unwrap();
    assert_eq!((secret.uid(), secret.gid()), (0, 0), "secret owned by root");

    // The user was created in the root's own passwd, not the host's.
    let passwd = root.read("/etc/passwd");
    let core = passwd
        .lines()
        .find(|l| l.starts_with("core:"))
        .unwrap_or_else(|| panic!("no core user in /etc/passwd:\n{passwd}"));
    let uid: u32 = core.split(':').nth(2).unwrap().parse().unwrap();
    assert!(core.ends_with(":/home/core:/bin/bash"), "{core}");
    assert!(root.read("/etc/shadow").contains("core:*:"));

    // Ignition 2.14 writes keys to a drop-in for ssh-key-dir; the classic
    // authorized_keys file is left alone (here: never created).
    let keys = "/home/core/.ssh/authorized_keys.d/ignition";
    assert_eq!(root.read(keys), format!("{SSH_KEY}\n"));
    assert_eq!(root.mode(keys), 0o600);
    assert_eq!(root.mode("/home/core/.ssh"), 0o700);
    assert_eq!(std::fs::metadata(root.path(keys)).unwrap().uid(), uid);
    assert!(!root.path("/home/core/.ssh/authorized_keys").exists());

    // The unit lands in /etc/systemd/system; "enabled" becomes a preset that
    // systemd applies on first boot, not a .wants/ symlink.
    assert_eq!(root.read("/etc/systemd/system/demo.service"), UNIT);
    let preset = root.read("/etc/systemd/system-preset/20-ignition.preset");
    assert!(
        preset.lines().any(|l| l == "enable demo.service"),
        "preset file:\n{preset}"
    );
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/demo.service");
    assert!(wants.symlink_metadata().is_err(), "unexpected {wants:?}");

    // Ignition's marker that the files stage completed.
    assert!(root.path("/etc/.ignition-result.json").is_file());
}

#[test]
fn wrong_payload_hash_fails_without_writing_payload() {
    if let Some(reason) = ignition::skip_reason() {
        return support::skip(&reason);
    }
    let server = FileServer::start(vec![("/payload".into(), PAYLOAD.to_vec())]).unwrap();
    let wrong = sha512_hash(b"not the payload");
    let (root, outcome) = apply(&config(&server.url("/payload"), &wrong));

    assert!(
        !outcome.success,
        "Ignition accepted a bad hash:\n{}",
        outcome.log
    );
    assert!(
        outcome.log.contains("hash verification failed"),
        "failed for another reason:\n{}",
        outcome.log
    );
    assert_eq!(server.hits("/payload"), 1, "payload was fetched");
    assert!(!root.path("/usr/local/bin/payload").exists());
    // The files stage stopped before writing its completion marker.
    assert!(!root.path("/etc/.ignition-result.json").exists());
}

#[test]
fn file_server_serves_counts_and_404s() {
    let server = FileServer::start(vec![("/a".into(), b"alpha".to_vec())]).unwrap();
    let address = server.url("/");
    let address = address.trim_start_matches("http://").trim_end_matches('/');
    let get = |method: &str, path: &str| http::request(address, method, path, &[], b"").unwrap();
    let ok = get("GET", "/a?query=ignored");
    assert_eq!(
        (ok.status, ok.body.as_slice()),
        (200, &b"alpha"[..]),
        "{ok:?}"
    );
    assert_eq!(ok.header("content-length"), Some("5"));
    let head = get("HEAD", "/a");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("5"))
    );
    assert_eq!(get("GET", "/b").status, 404);
    assert_eq!(get("POST", "/a").status, 405);
    assert_eq!(
        (server.hits("/a"), server.hits("/b"), server.hits("/c")),
        (3, 1, 0)
    );
}
