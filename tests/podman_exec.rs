//! The `podman run` command line `firstboot exec` builds for a Fedora
//! CoreOS catalog service, handed to the real podman: podman must accept
//! every flag, and the container it creates must have the network, name,
//! hostname, mounts and command firstboot meant.
//!
//! The pinned images cannot be pulled here (no registry), so each catalog
//! entry is tried with a one-file image imported from a tarball; what is
//! checked is the command line, which does not depend on the image. The
//! test creates rather than starts the container: starting needs crun to
//! set resource limits, which this sandbox denies (no CAP_SYS_RESOURCE).
//! podman keeps everything in a storage directory of the test's own, so
//! nothing is left in the machine's podman store.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use firstboot::paths::Paths;
use node_contract::Service;
use serde_json::Value;

const FCOS_IMAGE: &str = include_str!("../images/fedora-coreos/image.json");

fn skip_reason() -> Option<String> {
    let works = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (!works).then(|| "skipping: podman is not installed (apt-get install podman)".to_owned())
}

/// podman with a store of its own under `dir`.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn global_args(&self) -> Vec<String> {
        vec![
            format!("--root={}", self.dir.join("root").display()),
            format!("--runroot={}", self.dir.join("run").display()),
            "--storage-driver=vfs".to_owned(),
            "--events-backend=none".to_owned(),
        ]
    }

    fn run(&self, args: &[String]) -> String {
        let out = Command::new("podman")
            .args(self.global_args())
            .args(args)
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A one-file image, tagged `tag`, whose entrypoint is that file (the
    /// FreeIPA image has one of its own and the catalog gives no command).
    fn import_tiny_image(&self, tag: &str) {
        let rootfs = self.dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/marker"), b"not run by this test\n").unwrap();
        let tarball = self.dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        self.run(&[
            "import".to_owned(),
            "--change=ENTRYPOINT [\"/bin/marker\"]".to_owned(),
            tarball.display().to_string(),
            tag.to_owned(),
        ]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers only created, never started, hold no mounts; podman's
        // own reset clears its store before the directory goes.
        let _ = Command::new("podman")
            .args(self.global_args())
            .args(["system", "reset", "--force"])
            .output();
    }
}

/// The catalog entries of the production image that run under podman.
fn podman_services() -> Vec<(String, Service)> {
    let image: Value = serde_json::from_str(FCOS_IMAGE).unwrap();
    let services = image["services"].as_object().unwrap();
    let found: Vec<(String, Service)> = services
        .iter()
        .map(|(name, v)| (name.clone(), serde_json::from_value(v.clone()).unwrap()))
        .filter(|(_, s): &(String, Service)| matches!(s, Service::Podman { .. }))
        .collect();
    assert!(
        found.iter().any(|(n, _)| n == "etcd") && found.iter().any(|(n, _)| n == "freeipa-server"),
        "the Fedora CoreOS catalog should run etcd and freeipa-server under podman"
    );
    found
}

fn mount<'a>(inspect: &'a Value, destination: &str) -> Option<&'a Value> {
    inspect["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == destination)
}

#[test]
fn podman_accepts_the_command_line_of_every_catalog_service() {
    if let Some(reason) = skip_reason() {
        return support::skip(&reason);
    }
    let store = tempfile::tempdir().unwrap();
    let podman = Podman {
        dir: store.path().to_owned(),
    };
    let tiny = "localhost/firstboot-test/tiny:1";
    podman.import_tiny_image(tiny);

    let node = tempfile::tempdir().unwrap();
    let paths = Paths::under(node.path());
    let hostname = "node1.lab.example.org";
    for (service, entry) in podman_services() {
        let Service::Podman { command, data, .. } = &entry else {
            unreachable!()
        };
        let state = paths.service_state(&service);
        std::fs::create_dir_all(&state).unwrap();
        // etcd has files of its own (certificate, key, CA); FreeIPA none.
        let files = paths.service_files(&service);
        let has_files = service == "etcd";
        if has_files {
            std::fs::create_dir_all(&files).unwrap();
        }
        // FreeIPA resolves through its own DNS (`firstboot exec` gives
        // what `freeipa::site::container_dns` says); etcd as the host.
        let dns = (service == "freeipa-server").then_some("127.0.0.1");
        let mut cmd = firstboot::exec::podman_command(
            &paths,
            &service,
            tiny,
            command,
            &state,
            data.as_deref(),
            hostname,
            dns,
        );
        // What `firstboot exec` appends from the phase's argument file
        // (etcd's; FreeIPA reads its options from its state directory).
        let extra: &[&str] = if service == "etcd" {
            &["--name=node1", "--data-dir=/var/lib/etcd/data"]
        } else {
            &[]
        };
        cmd.args(extra);
        assert_eq!(cmd.get_program(), "podman");
        let mut args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "run", "{args:?}");
        // The same flags, creating instead of starting; twice, as a unit
        // restarted after a crash would (`--replace`).
        args[0] = "create".to_owned();
        podman.run(&args);
        // (The second prints the replaced container, then the new one.)
        let created = podman.run(&args);
        let id = created.lines().last().unwrap_or_default();
        let inspect: Value = serde_json::from_str(&podman.run(&[
            "container".to_owned(),
            "inspect".to_owned(),
            id.trim().to_owned(),
        ]))
        .unwrap();
        let inspect = &inspect[0];
        let listed = podman.run(&[
            "ps".to_owned(),
            "-a".to_owned(),
            "--format={{.Names}}".to_owned(),
        ]);
        assert_eq!(listed.trim(), service, "--replace left one container");

        assert_eq!(inspect["Name"], service.as_str());
        assert_eq!(inspect["HostConfig"]["NetworkMode"], "host", "{service}");
        assert_eq!(inspect["Config"]["Hostname"], hostname, "{service}");
        assert_eq!(inspect["HostConfig"]["AutoRemove"], true, "{service}");
        let resolvers: Vec<String> =
            serde_json::from_value(inspect["HostConfig"]["Dns"].clone()).unwrap_or_default();
        assert_eq!(resolvers, dns.into_iter().collect::<Vec<_>>(), "{service}");
        let inside = data
            .clone()
            .unwrap_or_else(|| format!("/var/lib/{service}"));
        let volume = mount(inspect, &inside)
            .unwrap_or_else(|| panic!("{service}: no mount at {inside}: {inspect:#}"));
        assert_eq!(Path::new(volume["Source"].as_str().unwrap()), state);
        assert_eq!(volume["RW"], true, "{service}");
        let etc = format!("/etc/firstboot/{service}");
        match mount(inspect, &etc) {
            Some(m) => {
                assert!(has_files, "{service} should not see {etc}");
                assert_eq!(Path::new(m["Source"].as_str().unwrap()), files);
                assert_eq!(m["RW"], false, "{service}: {etc} must be read-only");
            }
            None => assert!(!has_files, "{service}: {etc} not mounted"),
        }
        // Nothing else of the host: not node.json, not all of /var/lib.
        assert_eq!(
            inspect["Mounts"].as_array().unwrap().len(),
            1 + usize::from(has_files),
            "{service}: {inspect:#}"
        );
        // The catalog's command, then the phase's arguments, in order.
        let mut expected: Vec<String> = command.clone();
        expected.extend(extra.iter().map(|s| s.to_string()));
        let got: Vec<String> =
            serde_json::from_value(inspect["Config"]["Cmd"].clone()).unwrap_or_default();
        assert_eq!(got, expected, "{service}");
        // A container that runs systemd (the FreeIPA server's image
        // init) is in systemd mode, with the signal that halts systemd;
        // others keep podman's defaults.
        let systemd = firstboot::exec::runs_systemd(command);
        assert_eq!(systemd, service == "freeipa-server", "{service}");
        let stop_signal = inspect["Config"]["StopSignal"].as_u64();
        // SIGRTMIN+3 is 37 in podman's numbering (SIGRTMIN 34); SIGTERM 15.
        assert_eq!(
            stop_signal,
            Some(if systemd { 37 } else { 15 }),
            "{service}: {}",
            inspect["Config"]
        );
        assert_eq!(
            inspect["Config"]["SystemdMode"].as_bool().unwrap_or(false),
            systemd,
            "{service}: {}",
            inspect["Config"]
        );
        // What the unit's ExecStop runs (`firstboot stop`): podman takes it,
        // on the container as created and once it is gone (a unit whose
        // container already ended stops cleanly).
        let stop = firstboot::exec::stop_command(&service);
        assert_eq!(stop.get_program(), "podman");
        let stop_args: Vec<String> = stop
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        podman.run(&stop_args);
        podman.run(&["rm".to_owned(), service.clone()]);
        podman.run(&stop_args);
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/freeipa-server.service"),
    )
    .unwrap();
    assert!(
        unit.contains("\nExecStop=/usr/local/bin/firstboot stop freeipa-server\n"),
        "{unit}"
    );
}
