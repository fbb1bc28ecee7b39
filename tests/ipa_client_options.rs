//! The options the freeipa phase writes for a worker's
//! `ipa-client-install` are checked by the real program: Debian's
//! `freeipa-client`, the same FreeIPA client code that Fedora CoreOS
//! layers (4.9 here, 4.12 or later there; the options used exist in
//! both). ipa-client-install parses its options before it checks that it
//! runs as root. So, run as `nobody`, it refuses an unknown option or a
//! bad value with "no such option"/"invalid", and it reaches "Must be
//! root" only when every option parsed. It never runs as root here, so
//! it never touches this machine.

mod support;

use std::process::{Command, Output};

use builder::site::Site;
use support::site::{generated_site, test_secrets};

const INSTALLER: &str = "/usr/sbin/ipa-client-install";

fn skip_reason() -> Option<String> {
    (!std::path::Path::new(INSTALLER).exists())
        .then(|| format!("skipping: there is no {INSTALLER} (apt-get install freeipa-client)"))
}

/// Run the installer as `nobody` (dropped with setpriv when we are root).
fn as_nobody(args: &[String]) -> Output {
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            INSTALLER,
        ]);
        c
    } else {
        Command::new(INSTALLER)
    };
    command.args(args).output().expect("run ipa-client-install")
}

/// Whether the installer got past option parsing, and what it said.
fn parsed(args: &[String]) -> (bool, String) {
    let out = as_nobody(args);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let refused_options = out.status.code() == Some(2) || said.contains("error:");
    let reached_root_check = said.contains("Must be root");
    assert!(
        refused_options != reached_root_check,
        "neither refused nor at the root check: {said}"
    );
    (reached_root_check, said)
}

#[test]
fn the_real_ipa_client_install_accepts_the_options_a_worker_gets() {
    if let Some(reason) = skip_reason() {
        return support::skip(&reason);
    }
    // The check can fail: an option that does not exist, and a value of
    // the wrong type, are refused before the root check.
    let (ok, said) = parsed(&["--no-such-option".to_owned()]);
    assert!(!ok && said.contains("no such option"), "{said}");
    let (ok, said) = parsed(&["--ip-address=not-an-address".to_owned()]);
    assert!(!ok, "{said}");

    let site = Site::parse("site", &generated_site(5, "https://dl.example.org/fb")).unwrap();
    let worker = site
        .hosts
        .iter()
        .find(|h| h.role == node_contract::Role::Worker)
        .expect("a worker in a 5-host site");
    let config = builder::render::node_config(&site, &test_secrets(), worker).unwrap();
    let options = firstboot::freeipa::site::client_options(
        &config,
        "node001.lab.example.org",
        "one-time-password",
    );
    let (ok, said) = parsed(&options);
    assert!(ok, "ipa-client-install refused {options:?}: {said}");

    // What the host client tells an operator to run.
    let (ok, said) = parsed(&["--uninstall".to_owned(), "-U".to_owned()]);
    assert!(ok, "{said}");
}
