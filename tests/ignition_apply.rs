//! The real Ignition (Debian's 2.14, fetch then files stage, platform
//! `file`) applies what `builder render` wrote: the node comes out with its
//! host name, SSH keys, node contract, firstboot fetched by URL and sha512,
//! and its units. This is the consumer DigitalOcean droplets run.

mod support;

use std::path::PathBuf;

use builder::artifact::Firstboot;
use builder::render::{self, Rendered};
use builder::site::Site;
use node_contract::NodeConfig;
use support::http::FileServer;
use support::ignition::{apply, ScratchRoot};
use support::site::{repo, test_secrets, tiny_firstboot_path, SSH_KEY};

/// The firstboot under test: the real static build when `make test`
/// names it, else the tiny static fixture.
fn firstboot_binary() -> (PathBuf, Vec<u8>) {
    let path = std::env::var_os("BUILDER_TEST_FIRSTBOOT")
        .map(PathBuf::from)
        .unwrap_or_else(tiny_firstboot_path);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, bytes)
}

/// The example site, published at `base_url`, rendered for `host`.
fn render_example(base_url: &str, host: &str, firstboot: &Firstboot) -> Rendered {
    let text = std::fs::read_to_string(repo().join("examples/hosts.yaml"))
        .unwrap()
        .replace("https://downloads.example.com/site", base_url);
    let site = Site::parse("hosts.yaml", &text).unwrap();
    let mut rendered = render::render_site(&site, &test_secrets(), firstboot, Some(host)).unwrap();
    rendered.remove(0)
}

fn skip_unless_ready() -> bool {
    match support::ignition::skip_reason() {
        Some(reason) => {
            support::skip(&reason);
            false
        }
        None => true,
    }
}

#[test]
fn ignition_applies_a_rendered_config() {
    if !skip_unless_ready() {
        return;
    }
    let (path, bytes) = firstboot_binary();
    let firstboot = Firstboot::from_bytes(path, &bytes).unwrap();
    let server = FileServer::start(vec![(
        format!("/{}", firstboot.object_name()),
        bytes.clone(),
    )])
    .unwrap();
    let base = server.url("/").trim_end_matches('/').to_owned();
    let config = render_example(&base, "ns1", &firstboot);

    let root = ScratchRoot::new().unwrap();
    let config_path = root.write_config(&config.bytes).unwrap();
    let outcome = apply(&config_path, &root);
    assert!(outcome.success, "Ignition failed:\n{}", outcome.log);

    assert_eq!(root.read("/etc/hostname"), "ns1.example.com\n");
    let keys = root.read("/home/core/.ssh/authorized_keys.d/ignition");
    assert!(keys.lines().any(|l| l == SSH_KEY), "core's keys: {keys}");

    assert_eq!(root.mode("/etc/firstboot/node.json"), 0o600);
    let contract = NodeConfig::from_json(root.read("/etc/firstboot/node.json").as_bytes()).unwrap();
    assert_eq!(contract.node, "ns1");
    assert!(contract.is_bootstrap());
    assert_eq!(contract.site.host_count, 5);
    assert_eq!(contract.site.core.len(), 3);
    // The guard's rules, written for the platform's metadata address.
    let guard = root.read("/etc/firstboot/guard.nft");
    assert!(
        guard.contains("ip daddr 169.254.169.254 jump allow_firstboot_service")
            && guard.contains("ip daddr 169.254.169.254 counter reject"),
        "{guard}"
    );
    // The bootstrap host's firstboot takes its sockets from systemd; the
    // platform agent reading the metadata service fills its guard chain.
    assert!(root
        .read("/etc/systemd/system/firstboot.service.d/50-bootstrap-sockets.conf")
        .contains("Sockets=firstboot-join.socket firstboot-dns.socket"));
    assert!(root
        .read("/etc/systemd/system/afterburn-sshkeys@core.service.d/50-firstboot-guard.conf")
        .contains("ExecStartPre=-/usr/local/bin/firstboot guard-allow"));

    assert_eq!(
        std::fs::read(root.path(render::FIRSTBOOT_PATH)).unwrap(),
        bytes
    );
    assert_eq!(root.mode(render::FIRSTBOOT_PATH), 0o755);
    assert_eq!(server.hits(&format!("/{}", firstboot.object_name())), 1);

    let unit = root.read("/etc/systemd/system/firstboot.service");
    assert_eq!(unit, include_str!("../units/firstboot.service"));
    assert!(root
        .path("/etc/systemd/system/var-lib-data.mount")
        .is_file());
    let swap = r"dev-disk-by\x2did-scsi\x2d0DO_Volume_ns1\x2dexample\x2dcom\x2dswap.swap";
    assert!(root
        .read(&format!("/etc/systemd/system/{swap}"))
        .contains("[Swap]"));
    // Zincati's drop-in: the real Ignition writes it where Zincati reads.
    let zincati = root.read(node_contract::fleetlock::ZINCATI_DROPIN_PATH);
    assert!(zincati.contains("strategy = \"fleet_lock\""), "{zincati}");
    let presets = root.read("/etc/systemd/system-preset/20-ignition.preset");
    for enabled in [
        "firstboot-guard.service",
        "firstboot.service",
        "firstboot-peer.service",
        "firstboot-fleetlock.socket",
        "firstboot-fleetlock.service",
        "firstboot-renew.timer",
        "var-lib-data.mount",
        swap,
    ] {
        assert!(
            presets.lines().any(|l| l == format!("enable {enabled}")),
            "{enabled}: {presets}"
        );
    }

    // The fetched firstboot, when it is the real one, accepts the contract
    // Ignition wrote: builder and firstboot agree on node.json.
    if std::env::var_os("BUILDER_TEST_FIRSTBOOT").is_some() {
        let output = std::process::Command::new(root.path(render::FIRSTBOOT_PATH))
            .arg("--check")
            .arg("--config")
            .arg(root.path("/etc/firstboot/node.json"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("this node  ns1.example.com (core, bootstrap host"),
            "{stdout}"
        );
    }
}

#[test]
fn a_worker_gets_no_freeipa_passwords_and_no_site_secret() {
    if !skip_unless_ready() {
        return;
    }
    let firstboot = Firstboot::locate(Some(&tiny_firstboot_path())).unwrap();
    let bytes = std::fs::read(tiny_firstboot_path()).unwrap();
    let server = FileServer::start(vec![(format!("/{}", firstboot.object_name()), bytes)]).unwrap();
    let config = render_example(server.url("/").trim_end_matches('/'), "www", &firstboot);
    let root = ScratchRoot::new().unwrap();
    let outcome = apply(&root.write_config(&config.bytes).unwrap(), &root);
    assert!(outcome.success, "{}", outcome.log);
    let text = root.read("/etc/firstboot/node.json");
    let contract = NodeConfig::from_json(text.as_bytes()).unwrap();
    assert!(contract.freeipa.is_none());
    assert!(!text.contains(&test_secrets().join_secret));
    assert!(!text.contains(&test_secrets().freeipa_admin_password));
    // www sets swap_gib: 0, so it has a data volume and no swap unit.
    let presets = root.read("/etc/systemd/system-preset/20-ignition.preset");
    assert!(
        presets.contains("enable var-lib-data.mount") && !presets.contains(".swap"),
        "{presets}"
    );
}

#[test]
fn ignition_refuses_a_firstboot_with_the_wrong_hash() {
    if !skip_unless_ready() {
        return;
    }
    let firstboot = Firstboot::locate(Some(&tiny_firstboot_path())).unwrap();
    // The server hands out other bytes under the pinned name.
    let tampered = b"#!/bin/sh\necho not the binary the config pins\n".to_vec();
    let server =
        FileServer::start(vec![(format!("/{}", firstboot.object_name()), tampered)]).unwrap();
    let config = render_example(server.url("/").trim_end_matches('/'), "ns2", &firstboot);
    let root = ScratchRoot::new().unwrap();
    let outcome = apply(&root.write_config(&config.bytes).unwrap(), &root);
    assert!(
        !outcome.success,
        "Ignition accepted a binary with the wrong sha512"
    );
    assert!(
        outcome.log.contains("hash verification failed"),
        "{}",
        outcome.log
    );
    assert!(!root.path(render::FIRSTBOOT_PATH).exists());
}
