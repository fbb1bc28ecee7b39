//! `firstboot --check` as a node runs it: on a real node.json file (the
//! frozen schema-3 fixtures `builder render` wrote).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const CORE: &str = include_str!("../firstboot/contract/tests/node-v3.json");
const WORKER: &str = include_str!("../firstboot/contract/tests/node-v3-worker.json");

fn check(bytes: &[u8], mode: u32) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.json");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    firstboot(&["--check", "--config", path.to_str().unwrap()])
}

fn firstboot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firstboot"))
        .args(args)
        .output()
        .unwrap()
}

fn summary(config: &str) -> String {
    let out = check(config.as_bytes(), 0o600);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_valid_contract_is_summarised() {
    let stdout = summary(CORE);
    assert!(stdout.contains("(schema 3): valid"), "{stdout}");
    assert!(
        stdout.contains("hosts      4 (3 core: node1, node2, node3; 1 worker)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("this node  node2.lab.example.org (core, joins the bootstrap host)"),
        "{stdout}"
    );
    assert!(stdout.contains("join       port 7443 on node1"), "{stdout}");
    assert!(stdout.contains("(credential generation 1)"), "{stdout}");
    assert!(
        stdout.contains("guard      only root reaches the metadata service at 198.19.169.254"),
        "{stdout}"
    );
    assert!(
        stdout.contains("service    etcd: host /usr/bin/etcd"),
        "{stdout}"
    );
    // etcd runs on core hosts only: a worker's summary does not list it.
    let stdout = summary(WORKER);
    assert!(
        stdout.contains("(worker, joins the bootstrap host)"),
        "{stdout}"
    );
    assert!(!stdout.contains("etcd"), "{stdout}");
}

#[test]
fn refusals_are_clear_and_exit_nonzero() {
    let mut future: serde_json::Value = serde_json::from_str(CORE).unwrap();
    future["schema"] = 9.into();
    let future = future.to_string();
    // node2's key presented as node3's: the site key never vouched for it.
    let stolen = CORE.replace("\"node\": \"node2\"", "\"node\": \"node3\"");
    // A generation raised by hand: the site key signed generation 1.
    let raised = CORE.replace("\"generation\": 1", "\"generation\": 2");
    assert_ne!(raised, CORE);
    let cases: [(&[u8], u32, &str); 8] = [
        (CORE.as_bytes(), 0o644, "must be 0600"),
        (future.as_bytes(), 0o600, "schema version 9"),
        (b"not json", 0o600, "node.json is malformed"),
        (b"{\"schema\": 3}", 0o600, "node.json is malformed"),
        (b"{\"schema\": 2}", 0o600, "schema version 2"),
        (b"{\"schema\": 1}", 0o600, "schema version 1"),
        (
            stolen.as_bytes(),
            0o600,
            "the site key did not sign `node3`'s key",
        ),
        (
            raised.as_bytes(),
            0o600,
            "the site key did not sign `node2`'s key",
        ),
    ];
    for (bytes, mode, expected) in cases {
        let out = check(bytes, mode);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn with_no_arguments_every_command_is_named() {
    let out = firstboot(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for command in ["--check", "`run`", "`peer`", "`renew`", "`exec`"] {
        assert!(stderr.contains(command), "{command} missing: {stderr}");
    }
}

#[test]
fn a_missing_contract_says_where_it_looked() {
    let out = firstboot(&["--check", "--config", "/nonexistent/node.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/node.json; Ignition writes it"),
        "{stderr}"
    );
    assert!(!Path::new("/nonexistent").exists());
}

#[test]
fn help_fits_in_80_columns() {
    let out = firstboot(&["--help"]);
    assert!(out.status.success());
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line}");
    }
}
