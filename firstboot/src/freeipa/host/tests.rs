//! The host client's steps, run against stand-in programs that log how
//! they were called. rpm-ostree cannot run off an rpm-ostree system, and
//! ipa-client-install enrolls only against a real FreeIPA. Its option
//! names are checked against the real Debian `ipa-client-install` in
//! `tests/ipa_client_options.rs`.

use std::path::{Path, PathBuf};

use super::*;

/// A scratch host: stand-in programs under `bin/`, the host's files
/// under `etc/`, the service state under `state/`, and `calls.log`.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    host: Host,
    state: PathBuf,
}

const OPTIONS: &str = "--hostname=node4.example.org\n--domain=example.org\n\
                       --realm=EXAMPLE.ORG\n--no-ntp\n--unattended\n\
                       --server=node1.example.org\n--password=otp-1\n";

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        for d in ["bin", "etc/ipa", "state"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let host = Host {
            installer: root.join("bin/ipa-client-install"),
            rpm_ostree: root.join("bin/rpm-ostree"),
            tmpfiles: root.join("bin/systemd-tmpfiles"),
            systemctl: root.join("bin/systemctl"),
            busctl: root.join("bin/busctl"),
            ipa_ca: root.join("etc/ipa/ca.crt"),
            keytab: root.join("etc/krb5.keytab"),
        };
        let state = root.join("state");
        std::fs::write(state.join("ipa-client-install-options"), OPTIONS).unwrap();
        let s = Scratch {
            _dir: dir,
            root,
            host,
            state,
        };
        s.program("systemctl", "exit 0");
        s.program("systemd-tmpfiles", "exit 0");
        s.program("busctl", "exit 0");
        s
    }

    /// A stand-in that logs its name and arguments, then runs `body`.
    ///
    /// The executable is written by a child process (`install`), never
    /// through a file descriptor of this one: tests run in parallel, and a
    /// process another test forks while this one holds the file open for
    /// writing would keep it open, so running it would fail with "Text
    /// file busy" (ETXTBSY).
    fn program(&self, name: &str, body: &str) {
        let source = self.root.join(format!("{name}.sh"));
        let log = self.root.join("calls.log");
        std::fs::write(
            &source,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\nroot='{}'\n{body}\n",
                log.display(),
                self.root.display()
            ),
        )
        .unwrap();
        let status = std::process::Command::new("install")
            .arg("-m755")
            .arg(&source)
            .arg(self.root.join("bin").join(name))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// An installer that enrolls: the CA and keytab it leaves.
    fn working_installer(&self) {
        self.program(
            "ipa-client-install",
            "echo CA > \"$root/etc/ipa/ca.crt\"; echo KT > \"$root/etc/krb5.keytab\"",
        );
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn marker(&self) -> PathBuf {
        self.state.join("enrolled")
    }
}

/// What the live apply is followed by, so certmonger may own its bus name.
const RELOAD_BUS_CALL: &str =
    "busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig";

fn installer_call() -> String {
    format!(
        "ipa-client-install {}",
        OPTIONS.trim_end().replace('\n', " ")
    )
}

#[test]
fn a_host_with_the_client_enrolls_once_with_exactly_the_phases_options() {
    let s = Scratch::new();
    s.working_installer();
    assert_eq!(enroll(&s.host, &s.state).unwrap(), Outcome::Enrolled);
    assert_eq!(
        s.calls(),
        [
            installer_call(),
            "systemctl enable --now certmonger.service".to_owned()
        ]
    );
    assert_eq!(
        std::fs::read_to_string(s.marker()).unwrap(),
        "node1.example.org\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.state.join("etc/ipa/ca.crt")).unwrap(),
        "CA\n"
    );
    // Run again: the marker says enrolled, and nothing is run.
    assert_eq!(enroll(&s.host, &s.state).unwrap(), Outcome::AlreadyEnrolled);
    assert_eq!(s.calls().len(), 2);
}

#[test]
fn a_host_without_the_client_layers_it_live_then_enrolls() {
    let s = Scratch::new();
    // rpm-ostree brings the installer, as the package does.
    let installer = s.host.installer.clone();
    s.program(
        "rpm-ostree",
        &format!(
            "printf '#!/bin/sh\\necho \"ipa-client-install $*\" >> \"%s\"\\n\
             echo CA > \"%s\"; echo KT > \"%s\"\\n' \"$root/calls.log\" \
             \"$root/etc/ipa/ca.crt\" \"$root/etc/krb5.keytab\" > '{0}'; chmod 755 '{0}'",
            installer.display()
        ),
    );
    assert_eq!(enroll(&s.host, &s.state).unwrap(), Outcome::Enrolled);
    assert_eq!(
        s.calls(),
        [
            "rpm-ostree install -y --idempotent --allow-inactive --apply-live freeipa-client"
                .to_owned(),
            "systemd-tmpfiles --create".to_owned(),
            RELOAD_BUS_CALL.to_owned(),
            installer_call(),
            "systemctl enable --now certmonger.service".to_owned(),
        ]
    );
    assert!(s.marker().exists());
}

#[test]
fn a_refused_live_apply_layers_for_the_next_boot_and_reboots() {
    let s = Scratch::new();
    // Refuse only the live apply, as with a staged update pending.
    s.program(
        "rpm-ostree",
        "case \"$*\" in *--apply-live*) echo 'pending deployment' >&2; exit 1;; esac",
    );
    let error = enroll(&s.host, &s.state).unwrap_err().to_string();
    assert!(error.contains("rebooting"), "{error}");
    assert_eq!(
        s.calls(),
        [
            "rpm-ostree install -y --idempotent --allow-inactive --apply-live freeipa-client",
            "rpm-ostree install -y --idempotent --allow-inactive freeipa-client",
            "systemctl reboot",
        ]
    );
    assert!(!s.marker().exists());
}

#[test]
fn unreachable_mirrors_are_an_error_and_nothing_reboots() {
    let s = Scratch::new();
    s.program("rpm-ostree", "exit 1");
    let error = format!("{:#}", enroll(&s.host, &s.state).unwrap_err());
    assert!(
        error.contains("rpm-ostree install freeipa-client exited with status 1"),
        "{error}"
    );
    assert!(!s.calls().iter().any(|c| c.contains("reboot")));
    assert!(!s.marker().exists());
}

#[test]
fn a_failed_install_leaves_no_marker_and_certmonger_alone() {
    let s = Scratch::new();
    s.program("ipa-client-install", "exit 1");
    let error = enroll(&s.host, &s.state).unwrap_err().to_string();
    assert!(error.contains("exited with status 1"), "{error}");
    assert!(error.contains("/var/log/ipaclient-install.log"), "{error}");
    assert_eq!(s.calls(), [installer_call()]);
    assert!(!s.marker().exists());
    assert!(!s.state.join("etc/ipa/ca.crt").exists());
}

#[test]
fn a_host_enrolled_by_a_run_that_died_before_its_marker_is_recognised() {
    let s = Scratch::new();
    s.program("ipa-client-install", "exit 3");
    // No keytab: enrolled in name only, and the operator is told what to do.
    let error = enroll(&s.host, &s.state).unwrap_err().to_string();
    assert!(error.contains("--uninstall"), "{error}");
    assert!(!s.marker().exists());
    // With the keytab and CA the earlier run left: enrolled.
    std::fs::write(&s.host.keytab, "KT").unwrap();
    std::fs::write(&s.host.ipa_ca, "CA").unwrap();
    assert_eq!(enroll(&s.host, &s.state).unwrap(), Outcome::FoundEnrolled);
    assert!(s.marker().exists());
}

#[test]
fn options_that_are_missing_or_damaged_run_nothing() {
    let s = Scratch::new();
    s.working_installer();
    let file = s.state.join("ipa-client-install-options");
    std::fs::write(&file, "--server=node1.example.org\nrm -rf /\n").unwrap();
    let error = enroll(&s.host, &s.state).unwrap_err().to_string();
    assert!(
        error.contains("`rm -rf /`, which is not an option"),
        "{error}"
    );
    std::fs::write(&file, "--unattended\n").unwrap();
    let error = enroll(&s.host, &s.state).unwrap_err().to_string();
    assert!(error.contains("names no --server"), "{error}");
    std::fs::remove_file(&file).unwrap();
    let error = enroll(&s.host, &s.state).unwrap_err().to_string();
    assert!(error.contains("the freeipa phase writes it"), "{error}");
    assert!(s.calls().is_empty());
    assert!(!Path::new(&s.marker()).exists());
}

#[test]
fn both_images_run_this_host_client_and_nothing_else_is_taken_for_it() {
    let catalog = |json: &str| {
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        serde_json::from_value::<node_contract::Catalog>(json["services"].clone()).unwrap()
    };
    // The lab runs it too, with the simulator as ipa-client-install.
    for image in [
        include_str!("../../../../images/fedora-coreos/image.json"),
        include_str!("../../../../images/lab/image.json"),
    ] {
        assert!(runs_in(&catalog(image)));
    }
    for other in [
        r#"{"services": {}}"#,
        r#"{"services": {"freeipa-client": {"runs": "podman", "image": "x", "command": []}}}"#,
        r#"{"services": {"freeipa-client": {"runs": "host", "command": ["/usr/bin/ipa-client"]}}}"#,
    ] {
        assert!(!runs_in(&catalog(other)), "{other}");
    }
}

#[test]
fn preparing_layers_live_only_and_only_when_the_client_is_missing() {
    let s = Scratch::new();
    s.working_installer();
    assert!(!prepare(&s.host).unwrap());
    assert!(s.calls().is_empty());

    let s = Scratch::new();
    s.program(
        "rpm-ostree",
        &format!(
            "printf '#!/bin/sh\\n' > '{0}'; chmod 755 '{0}'",
            s.host.installer.display()
        ),
    );
    assert!(prepare(&s.host).unwrap());
    assert_eq!(
        s.calls(),
        [
            "rpm-ostree install -y --idempotent --allow-inactive --apply-live freeipa-client",
            "systemd-tmpfiles --create",
            RELOAD_BUS_CALL,
        ]
    );

    // A refused live apply is reported, and nothing else is tried: no
    // layering for the next boot, no reboot (enroll decides that).
    let s = Scratch::new();
    s.program("rpm-ostree", "exit 1");
    assert!(prepare(&s.host).is_err());
    assert_eq!(s.calls().len(), 1);
}
