//! Against the real certmonger (Debian's, as the lab image carries it):
//! a private daemon of the test's own (`certmonger -n -L -P`, its state
//! in a scratch directory), whose built-in `IPA` CA gets a helper that
//! signs with a scratch CA (certmonger's helper protocol: the CSR in
//! `CERTMONGER_CSR`, the certificate on stdout and exit 0, exit 2 for a
//! refusal with its reason on stdout; certmonger-ipa-submit(8)), as the
//! lab will stand in for FreeIPA's `ipa-submit`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::*;

/// The daemon, ended by its PID when dropped.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("sock").display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the helper was asked, one line per SUBMIT.
    fn submits(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("submits.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The helper: signs with `ca.crt`/`ca.key` beside it, with the usages
/// FreeIPA's caIPAserviceCert profile gives whatever the CSR asks
/// (digitalSignature, keyEncipherment; serverAuth, clientAuth), or
/// refuses when `refuse` exists beside it, saying what that file says.
const HELPER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$CERTMONGER_OPERATION" in SUBMIT|POLL) ;; *) exit 6;; esac
echo "principal=$CERTMONGER_REQ_PRINCIPAL issuer=$CERTMONGER_CA_ISSUER profile=$CERTMONGER_CA_PROFILE" >> "$dir/submits.log"
if [ -f "$dir/refuse" ]; then cat "$dir/refuse"; exit 2; fi
printf '%s\n' "$CERTMONGER_CSR" > "$dir/req.csr"
printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' > "$dir/profile.ext"
exec openssl x509 -req -in "$dir/req.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -days 1 -copy_extensions copy -extfile "$dir/profile.ext" 2>>"$dir/helper.err"
"#;

fn tool_missing(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}

/// A private certmonger whose `IPA` CA signs with a scratch CA; None
/// (skipped) without certmonger or openssl.
async fn daemon() -> Option<Daemon> {
    for (tool, package) in [
        ("certmonger", "certmonger"),
        ("getcert", "certmonger"),
        ("openssl", "openssl"),
    ] {
        if tool_missing(tool) {
            site_test_skip::skip(&format!(
                "skipping: {tool} is not installed (apt-get install {package})"
            ));
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["cas", "requests", "tmp"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(dir.path().join("ca.key"))
        .arg("-out")
        .arg(dir.path().join("ca.crt"))
        .args(["-days", "2", "-subj", "/CN=etcd CA/O=LAB.EXAMPLE.ORG"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl could not make the scratch CA");
    let helper = dir.path().join("helper");
    std::fs::write(&helper, HELPER).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new("certmonger")
        .args(["-n", "-L", "-P"])
        .arg(dir.path().join("sock"))
        .env("CERTMONGER_CAS_DIR", dir.path().join("cas"))
        .env("CERTMONGER_REQUESTS_DIR", dir.path().join("requests"))
        .env("CERTMONGER_TMPDIR", dir.path().join("tmp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, dir };
    let certmonger = Certmonger::private(&daemon.address());
    // Until it listens (bounded), then the built-in IPA CA gets the helper.
    let mut listening = false;
    for _ in 0..100 {
        if certmonger
            .getcert(&["list-cas"])
            .await
            .is_ok_and(|o| o.status.success())
        {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listening, "certmonger did not start");
    set_ipa_helper(&certmonger, &helper.display().to_string()).await;
    Some(daemon)
}

/// certmonger's built-in `IPA` CA runs `helper` from now on.
async fn set_ipa_helper(certmonger: &Certmonger, helper: &str) {
    certmonger
        .set_helper(IPA, helper)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn request(dir: &Path, id: &str) -> Request {
    Request {
        id: id.to_owned(),
        ca: IPA.to_owned(),
        issuer: Some("etcd".to_owned()),
        profile: Some("caIPAserviceCert".to_owned()),
        principal: "etcd/node1.lab.example.org@LAB.EXAMPLE.ORG".to_owned(),
        dns: "node1.lab.example.org".to_owned(),
        subject: "CN=node1.lab.example.org".to_owned(),
        key: dir.join("member.key"),
        cert: dir.join("member.crt"),
    }
}

const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

#[tokio::test]
async fn certmonger_certifies_the_slot_s_own_key_once_and_tracks_it() {
    let Some(daemon) = daemon().await else {
        return;
    };
    let certmonger = Certmonger::private(&daemon.address());
    let files = tempfile::tempdir().unwrap();
    // The slot's key, made as firstboot makes it.
    let slot = crate::certs::Slot {
        purpose: crate::certs::CertPurpose::Etcd,
        key: files.path().join("member.key"),
        cert: files.path().join("member.crt"),
        ca: files.path().join("ca.crt"),
    };
    let key = slot.key().unwrap();
    let key_pem = std::fs::read_to_string(&slot.key).unwrap();
    let wanted = request(files.path(), "etcd");

    let tracked = certmonger.ensure(&wanted, PATIENCE, POLL).await.unwrap();
    assert!(tracked.issued(), "{tracked:?}");
    assert_eq!(tracked.ca, IPA);
    assert!(tracked.issuer.contains("CN=etcd CA"), "{tracked:?}");
    // FreeIPA hears the sub-CA, the profile and the principal.
    assert_eq!(
        daemon.submits(),
        ["principal=etcd/node1.lab.example.org@LAB.EXAMPLE.ORG issuer=etcd profile=caIPAserviceCert"]
    );
    // The certificate is for the slot's key, which certmonger kept.
    let cert = std::fs::read_to_string(&slot.cert).unwrap();
    use rcgen::PublicKeyData;
    assert_eq!(
        crate::pki::inspect(&cert).unwrap().spki,
        key.subject_public_key_info()
    );
    assert_eq!(std::fs::read_to_string(&slot.key).unwrap(), key_pem);
    let ca = std::fs::read_to_string(daemon.path("ca.crt")).unwrap();
    assert!(crate::pki::issued_by(&cert, &ca));
    // No trust file: handoff writes that itself.
    assert!(!slot.ca.exists());

    // Asked again: it is tracked, nothing is sent.
    let again = certmonger.ensure(&wanted, PATIENCE, POLL).await.unwrap();
    assert!(again.issued());
    assert_eq!(daemon.submits().len(), 1);
}

#[tokio::test]
async fn a_refusal_is_asked_again_once_and_then_reported_with_the_ca_s_reason() {
    let Some(daemon) = daemon().await else {
        return;
    };
    let certmonger = Certmonger::private(&daemon.address());
    std::fs::write(
        daemon.path("refuse"),
        "Insufficient access: principal etcd/node1 is not allowed by CA ACL etcd\n",
    )
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    let wanted = request(files.path(), "etcd");
    // The key is made first, as the slot's: a refusal and a resubmission
    // must not trade it for one of certmonger's making.
    let slot = crate::certs::Slot {
        purpose: crate::certs::CertPurpose::Etcd,
        key: wanted.key.clone(),
        cert: wanted.cert.clone(),
        ca: files.path().join("ca.crt"),
    };
    let key = slot.key().unwrap().serialize_pem();
    let err = format!(
        "{:#}",
        certmonger
            .ensure(&wanted, PATIENCE, POLL)
            .await
            .unwrap_err()
    );
    assert!(err.contains("CA_REJECTED"), "{err}");
    assert!(err.contains("not allowed by CA ACL etcd"), "{err}");
    assert_eq!(daemon.submits().len(), 2, "{:?}", daemon.submits());

    // Mended: the next ensure resubmits and gets it.
    std::fs::remove_file(daemon.path("refuse")).unwrap();
    let tracked = certmonger.ensure(&wanted, PATIENCE, POLL).await.unwrap();
    assert!(tracked.issued(), "{tracked:?}");
    assert_eq!(daemon.submits().len(), 3);
    assert_eq!(std::fs::read_to_string(&wanted.key).unwrap(), key);
    let cert = std::fs::read_to_string(&wanted.cert).unwrap();
    let ca = std::fs::read_to_string(daemon.path("ca.crt")).unwrap();
    slot.check(&cert, &ca, "node1.lab.example.org")
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn the_request_is_the_one_freeipa_documents() {
    let r = request(Path::new("/etc/firstboot/etcd"), "firstboot-etcd");
    assert_eq!(
        r.args().join(" "),
        "request -I firstboot-etcd -c IPA -X etcd -T caIPAserviceCert \
         -K etcd/node1.lab.example.org@LAB.EXAMPLE.ORG -D node1.lab.example.org \
         -N CN=node1.lab.example.org -k /etc/firstboot/etcd/member.key \
         -f /etc/firstboot/etcd/member.crt -r"
    );
}

/// `getcert list -i ID` as Debian's certmonger 0.79 wrote it.
#[test]
fn getcert_list_is_read_as_certmonger_writes_it() {
    let issued = "Number of certificates and requests being tracked: 1.\n\
        Request ID 'etcd':\n\tstatus: MONITORING\n\tstuck: no\n\
        \tkey pair storage: type=FILE,location='/tmp/cm/out/member.key'\n\
        \tcertificate: type=FILE,location='/tmp/cm/out/member.crt'\n\tCA: IPA\n\
        \tissuer: CN=test CA\n\tsubject: CN=node1.lab.example.org\n\
        \tissued: 2026-12-05 02:31:49 UTC\n\texpires: 2026-12-06 02:31:49 UTC\n\
        \tdns: node1.lab.example.org\n\tprincipal name: etcd/node1.lab.example.org@LAB.EXAMPLE.ORG\n\
        \ttrack: yes\n\tauto-renew: yes\n";
    let tracked = parse_list(issued).unwrap();
    assert_eq!(
        (
            tracked.status.as_str(),
            tracked.ca.as_str(),
            tracked.issuer.as_str()
        ),
        ("MONITORING", "IPA", "CN=test CA")
    );
    assert!(tracked.issued() && !tracked.needs_resubmit());
    let refused = "Number of certificates and requests being tracked: 2.\n\
        Request ID 'rej':\n\tstatus: CA_REJECTED\n\
        \tca-error: the etcd CA ACL does not allow this principal\n\tstuck: yes\n\
        \tCA: REJ\n\tissuer: \n";
    let tracked = parse_list(refused).unwrap();
    assert_eq!(
        tracked.ca_error.as_deref(),
        Some("the etcd CA ACL does not allow this principal")
    );
    assert!(tracked.needs_resubmit() && !tracked.issued());
    assert_eq!(
        parse_list("No request found with specified nickname.\n"),
        None
    );
}

/// Handoff's issuer for etcd asks certmonger for the slot's key under
/// the `etcd` sub-CA, as the service's principal, and leaves the trust
/// file to the roll.
#[tokio::test]
async fn handoff_asks_certmonger_for_the_etcd_slot() {
    use crate::handoff::recertify::{FromFreeipa, Issue};
    use crate::handoff::request::RequestSite;
    let Some(daemon) = daemon().await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let slot = crate::certs::plan::ETCD.slot(&crate::paths::Paths::under(root.path()));
    let ca = std::fs::read_to_string(daemon.path("ca.crt")).unwrap();
    let staging = root.path().join("server/firstboot");
    let issue = FromFreeipa {
        site: RequestSite::new(
            Certmonger::private(&daemon.address()),
            staging.clone(),
            staging.clone(),
        ),
        sub_ca: "etcd".to_owned(),
        sub_ca_pem: ca.clone(),
        principal: "etcd/node2.lab.example.org@LAB.EXAMPLE.ORG".to_owned(),
        patience: PATIENCE,
    };
    issue.certify(&slot, "node2.lab.example.org").await.unwrap();
    let cert = std::fs::read_to_string(&slot.cert).unwrap();
    slot.check(&cert, &ca, "node2.lab.example.org").unwrap();
    assert!(!slot.ca.exists());
    // certmonger wrote its copy where it was told, for the slot's key.
    assert_eq!(
        std::fs::read_to_string(staging.join("etcd/member.crt")).unwrap(),
        cert
    );
    assert_eq!(
        std::fs::read_to_string(staging.join("etcd/member.key")).unwrap(),
        std::fs::read_to_string(&slot.key).unwrap()
    );
    assert_eq!(
        daemon.submits(),
        ["principal=etcd/node2.lab.example.org@LAB.EXAMPLE.ORG issuer=etcd profile=caIPAserviceCert"]
    );
}

/// The production path end to end, as far as this machine can run it:
/// firstboot's request to the real certmonger, whose `IPA` CA runs the
/// simulator's stand-in for `ipa-submit` (the lab binds it there), which
/// logs in as the enrolled host with the keytab the simulator gave it and
/// asks for the certificate, which FreeIPA's rules then allow or refuse.
#[tokio::test]
async fn certmonger_gets_the_etcd_certificate_from_the_simulator_as_the_host() {
    use crate::freeipa::tests::{add_host, first_server_and_client, IPA1};
    use crate::freeipa::ServiceCa;
    use crate::handoff::recertify::{FromFreeipa, Issue};
    use crate::handoff::request::RequestSite;
    let Some(helper) = std::env::var_os("BUILDER_TEST_IPA_SIM").map(PathBuf::from) else {
        site_test_skip::skip(
            "skipping: BUILDER_TEST_IPA_SIM is not set (cargo build -p ipa-sim; make test sets it)",
        );
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(scratch.path()).await else {
        return;
    };
    let root = scratch.path().join("node1");
    let Some(daemon) = daemon().await else {
        return;
    };
    let node1 = "node1.lab.example.org";
    let node2 = "node2.lab.example.org";
    let realm = "LAB.EXAMPLE.ORG";
    // node1 enrolled with its one-time password: it has a keytab.
    add_host(&client, node1, [198, 18, 0, 11], Some("otp-node1")).await;
    let running = sim.running.as_ref().unwrap();
    let enrolled = ipa_sim::install::enroll(
        IPA1,
        running.address,
        node1,
        "otp-node1",
        "client",
        false,
        None,
    )
    .await
    .unwrap();
    let write = |path: &str, text: &str| {
        crate::fsutil::write_atomic(&root.join(path), text.as_bytes(), 0o600).unwrap()
    };
    write("etc/ipa/ca.crt", &enrolled.ca_pem);
    write("etc/krb5.keytab", &enrolled.keytab);
    write(
        "etc/ipa/default.conf",
        &format!(
            "[global]\nhost = {node1}\nserver = {IPA1}\nrealm = {realm}\n\
             xmlrpc_uri = https://{}/ipa/xml\n",
            running.address
        ),
    );
    // Handoff's first step gave FreeIPA the sub-CA and node1's principal.
    let etcd = client
        .ensure_service_ca(ServiceCa::Etcd, realm, Duration::from_secs(30))
        .await
        .unwrap();
    add_host(&client, node2, [198, 18, 0, 12], None).await;
    for node in [node1, node2] {
        client
            .ensure_service_principal(ServiceCa::Etcd, node, realm)
            .await
            .unwrap();
    }
    // certmonger's IPA helper is the simulator's ipa-submit, in node1's root.
    let submit = daemon.path("ipa-submit");
    std::os::unix::fs::symlink(&helper, &submit).unwrap();
    let certmonger = Certmonger::private(&daemon.address());
    set_ipa_helper(
        &certmonger,
        &format!("{} --root {}", submit.display(), root.display()),
    )
    .await;

    let slot = crate::certs::plan::ETCD.slot(&crate::paths::Paths::under(&root));
    let staging = root.join("var/lib/freeipa-server/firstboot");
    let issue = FromFreeipa {
        site: RequestSite::new(certmonger.clone(), staging.clone(), staging),
        sub_ca: "etcd".to_owned(),
        sub_ca_pem: etcd.cert_pem.clone(),
        principal: format!("etcd/{node1}@{realm}"),
        patience: PATIENCE,
    };
    issue.certify(&slot, node1).await.unwrap();
    let cert = std::fs::read_to_string(&slot.cert).unwrap();
    slot.check(&cert, &etcd.cert_pem, node1).unwrap();
    assert!(!crate::pki::issued_by(&cert, &sim.ca_pem));
    // The simulator saw node1's host log in, not the admin.
    let calls = crate::freeipa::tests::log_lines(&sim.calls);
    assert!(
        calls.iter().any(|c| c["method"] == "login_kerberos"
            && c["params"]["host"] == node1
            && c["error"].is_null()),
        "{calls:?}"
    );

    // node1 asking for node2's principal, which it does not manage, is
    // refused, and certmonger says why.
    let other = Request {
        id: "other".into(),
        principal: format!("etcd/{node2}@{realm}"),
        dns: node2.into(),
        subject: format!("CN={node2}"),
        key: root.join("other.key"),
        cert: root.join("other.crt"),
        ..request(&root, "other")
    };
    let refused = format!(
        "{:#}",
        certmonger.ensure(&other, PATIENCE, POLL).await.unwrap_err()
    );
    assert!(refused.contains("CA_REJECTED"), "{refused}");
    assert!(
        refused.contains("may not write the certificate"),
        "{refused}"
    );
}
