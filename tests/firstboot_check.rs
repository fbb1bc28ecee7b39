//! `firstboot --check` as a node runs it: on a real node.json file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use node_contract::{join_credential, HostEntry, JoinConfig, NodeConfig, Role, SiteInfo};

fn contract() -> NodeConfig {
    NodeConfig {
        schema: node_contract::SCHEMA_VERSION,
        site: SiteInfo {
            domain: "example.com".into(),
            realm: "EXAMPLE.COM".into(),
            vpc_range: "172.30.0.0/24".into(),
            hosts: ["ns1", "ns2", "ns3", "www"]
                .iter()
                .map(|n| HostEntry {
                    name: (*n).into(),
                    role: if *n == "www" {
                        Role::Worker
                    } else {
                        Role::Core
                    },
                })
                .collect(),
        },
        node: "www".into(),
        join: JoinConfig {
            port: node_contract::JOIN_PORT,
            credential: join_credential("s", "www"),
            site_secret: None,
            address: None,
        },
        catalog: Default::default(),
        freeipa: None,
        storage: Default::default(),
    }
}

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

#[test]
fn a_valid_contract_is_summarised() {
    let out = check(&contract().to_json(), 0o600);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(schema 1): valid"), "{stdout}");
    assert!(
        stdout.contains("hosts      4 (3 core, 1 worker): ns1, ns2, ns3, www"),
        "{stdout}"
    );
    assert!(stdout.contains("this node  www.example.com (worker, joins the bootstrap host)"));
    assert!(stdout.contains("join       port 7443 on ns1"), "{stdout}");
}

#[test]
fn refusals_are_clear_and_exit_nonzero() {
    let mut future: serde_json::Value = serde_json::from_slice(&contract().to_json()).unwrap();
    future["schema"] = 9.into();
    let (valid, future) = (contract().to_json(), future.to_string());
    let cases: [(&[u8], u32, &str); 4] = [
        (&valid, 0o644, "must be 0600"),
        (future.as_bytes(), 0o600, "schema version 9"),
        (b"not json", 0o600, "node.json is malformed"),
        (b"{\"schema\": 1}", 0o600, "node.json is malformed"),
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
