//! The server binary as the lab runs it (`ipa-sim server --data DIR`),
//! installed from its options file in a scratch data directory on
//! loopback: it keeps what the official container's `/etc` holds under
//! `DIR/etc`, and runs its own certmonger, whose `IPA` CA runs the
//! simulator's `ipa-submit` with `--root DIR`, as the container's runs
//! FreeIPA's with the container's `/etc`.
//!
//! What the test cannot show: the server's name does not resolve here,
//! so for the round trip through the helper the test points the helper
//! at the loopback address (`server` and an address in `xmlrpc_uri`, as
//! `submit` allows for tests); in the lab the server's own name resolves.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use firstboot::certmonger::{Certmonger, Request, IPA};
use ipa_sim::certmonger::HOST_SERVER_CERTMONGER;
use ipa_sim::state::{first, Kind};

const FQDN: &str = "ipa1.lab.example.org";
const REALM: &str = "LAB.EXAMPLE.ORG";
const PATIENCE: Duration = Duration::from_secs(60);

/// `DIR/etc/ipa/default.conf` as ipa-server-install writes it for the
/// server itself (freeipa `ipaserver/install/server/install.py`).
const DEFAULT_CONF: &str = "[global]\nhost = ipa1.lab.example.org\n\
    basedn = dc=lab,dc=example,dc=org\nrealm = LAB.EXAMPLE.ORG\n\
    domain = lab.example.org\nxmlrpc_uri = https://ipa1.lab.example.org/ipa/xml\n\
    ldap_uri = ldapi://%2Frun%2Fslapd-LAB-EXAMPLE-ORG.socket\nmode = production\n\
    enable_ra = True\nra_plugin = dogtag\ndogtag_version = 10\n\n";

/// A running `ipa-sim server`, asked to end (SIGTERM to its PID) and then
/// killed if a test fails before it stops it; its certmonger too.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGTERM, as systemd stops it; its exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ipa-sim did not end on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let certmongers = children_named(self.child.id(), "certmonger");
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in certmongers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The processes whose parent is `parent` and whose name is `name`, from
/// /proc (`pid (comm) state ppid ...`, proc(5)).
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
            let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            comm == name && ppid == Some(parent)
        })
        .collect()
}

fn ipa_sim() -> &'static str {
    env!("CARGO_BIN_EXE_ipa-sim")
}

/// The first server's options file, as firstboot writes it (no
/// `--setup-dns`: the test binds no port 53).
fn write_options(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("ipa-server-install-options"),
        "--realm=LAB.EXAMPLE.ORG\n--domain=lab.example.org\n--ds-password=Secret123-dm\n\
         --admin-password=Secret123-admin\n--no-ntp\n-U\n",
    )
    .unwrap();
}

/// `ipa-sim server` on loopback with `helper` for its certmonger, once it
/// says it is configured (bounded).
fn start(scratch: &Path, data: &Path, helper: &Path, api_txt: &Path) -> Server {
    let log = scratch.join(format!(
        "server-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut child = Command::new(ipa_sim())
        .args(["server", "--listen", "127.0.0.1:0"])
        .arg("--data")
        .arg(data)
        .arg("--calls")
        .arg(scratch.join("calls.jsonl"))
        .arg("--api-txt")
        .arg(api_txt)
        .arg("--certmonger-helper")
        .arg(helper)
        .env("IPA_SERVER_HOSTNAME", FQDN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let server = Server { child, log };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok(line) if line == "FreeIPA server configured." => return server,
            Ok(_) => continue,
            Err(_) => panic!("ipa-sim did not say it is configured:\n{}", server.log()),
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_server_runs_its_own_certmonger_as_the_container_does() {
    if let Some(tool) = ipa_sim::certmonger::missing_tool() {
        site_test_skip::skip(&format!(
            "skipping: {tool} is not installed (apt-get install certmonger)"
        ));
        return;
    }
    if ipa_sim::api::load_for_tests().is_none() {
        return;
    }
    let api_txt = ipa_sim::api::api_txt_path();
    let scratch = tempfile::tempdir().unwrap();
    let scratch = scratch.path();
    let data = scratch.join("ipa1");
    write_options(&data);
    // certmonger runs the helper by this name, as the lab binds it.
    std::fs::create_dir(scratch.join("bin")).unwrap();
    let helper = scratch.join("bin/ipa-submit");
    std::os::unix::fs::symlink(ipa_sim(), &helper).unwrap();

    let mut server = start(scratch, &data, &helper, &api_txt);

    // The container's /etc, under the data directory.
    let state = ipa_sim::server::load_state(&data).unwrap().unwrap();
    let ca_pem = ipa_sim::commands::ca_pems(&state, "ipa").unwrap().cert_pem;
    assert_eq!(
        std::fs::read_to_string(data.join("etc/ipa/ca.crt")).unwrap(),
        ca_pem
    );
    let keytab = data.join("etc/krb5.keytab");
    assert_eq!(
        std::fs::read_to_string(&keytab).unwrap(),
        std::fs::read_to_string(data.join("keytab")).unwrap()
    );
    assert_eq!(mode(&keytab), 0o600);
    let conf = data.join("etc/ipa/default.conf");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), DEFAULT_CONF);
    assert_eq!(mode(&conf), 0o644);
    for sub in ["cas", "requests", "tmp"] {
        assert_eq!(mode(&data.join("var/lib/certmonger").join(sub)), 0o700);
    }

    // Its certmonger answers at the socket firstboot reaches, its IPA CA
    // running the helper with the data directory as the root.
    let socket = data.join(HOST_SERVER_CERTMONGER);
    let certmonger = Certmonger::private(&format!("unix:path={}", socket.display()));
    let described = certmonger.describe_ca(IPA).await.unwrap();
    let expected = format!(
        "helper-location: {} --root {}",
        helper.display(),
        data.display()
    );
    assert!(described.contains(&expected), "{described}");
    let pids = children_named(server.child.id(), "certmonger");
    assert_eq!(
        pids.len(),
        1,
        "one certmonger, the server's child: {pids:?}"
    );
    let certmonger_pid = pids[0];

    // A round trip: the server's host certificate from the IPA CA,
    // through certmonger and the helper, logged in with the host keytab.
    let address = first(state.get(Kind::Server, FQDN).unwrap(), "_address").unwrap();
    let reachable = DEFAULT_CONF.replace(
        &format!("xmlrpc_uri = https://{FQDN}/ipa/xml\n"),
        &format!("server = {FQDN}\nxmlrpc_uri = https://{address}/ipa/xml\n"),
    );
    std::fs::write(&conf, reachable).unwrap();
    let out = scratch.join("out");
    std::fs::create_dir(&out).unwrap();
    let request = Request {
        id: "host".into(),
        ca: IPA.into(),
        issuer: None,
        profile: None,
        principal: format!("host/{FQDN}@{REALM}"),
        dns: FQDN.into(),
        subject: format!("CN={FQDN}"),
        key: out.join("host.key"),
        cert: out.join("host.crt"),
    };
    let tracked = certmonger
        .ensure(&request, PATIENCE, Duration::from_millis(100))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    assert!(tracked.issued(), "{tracked:?}");
    let cert = std::fs::read_to_string(&request.cert).unwrap();
    firstboot::pki::verify(&cert, &ca_pem, Some(FQDN), firstboot::status::now()).unwrap();
    let calls = std::fs::read_to_string(scratch.join("calls.jsonl")).unwrap();
    assert!(
        calls
            .lines()
            .any(|l| l.contains("\"login_kerberos\"") && l.contains(FQDN)),
        "{calls}"
    );

    // Ended as systemd ends it, the server takes its certmonger along.
    assert!(server.stop().success(), "{}", server.log());
    assert!(
        !Path::new(&format!("/proc/{certmonger_pid}")).exists(),
        "certmonger ({certmonger_pid}) outlived the server"
    );
    assert!(socket.exists(), "certmonger leaves its socket behind");

    // Started again (resumed), the stale socket is no obstacle, the
    // files are the server's own again, and the helper is set again.
    let mut server = start(scratch, &data, &helper, &api_txt);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), DEFAULT_CONF);
    let described = certmonger.describe_ca(IPA).await.unwrap();
    assert!(described.contains(&expected), "{described}");
    let status = certmonger.status("host").await.unwrap().unwrap();
    assert!(status.issued(), "its requests are kept: {status:?}");
    assert!(server.stop().success(), "{}", server.log());
}

/// Without certmonger the server says so and does not start: nothing is
/// installed, so a later start with certmonger installs normally.
#[test]
fn without_certmonger_the_server_refuses_to_start() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("ipa1");
    write_options(&data);
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(ipa_sim())
        .args(["server", "--listen", "127.0.0.1:0"])
        .arg("--data")
        .arg(&data)
        .arg("--calls")
        .arg(scratch.path().join("calls.jsonl"))
        .env("IPA_SERVER_HOSTNAME", FQDN)
        .env("PATH", &empty)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certmonger is not installed"), "{stderr}");
    assert!(!ipa_sim::server::state_path(&data).exists());
    assert!(!data.join("etc/ipa/ca.crt").exists());
}
