//! `ipa-server-install`, `ipa-replica-install` and `ipa-client-install` as
//! the simulator does them: the same option files the official container
//! reads (one option per line), the same signals (`FreeIPA server
//! configured.` on stdout, `volume-version`, `/etc/ipa/ca.crt`).
//!
//! Enrollment: the real tools authenticate the host with its one-time
//! password through Kerberos (kinit with the OTP, then `ipa-join` over
//! XML-RPC, which returns a keytab; a replica then promotes itself over
//! LDAP and Kerberos). The simulator stands in with one HTTPS call,
//! `POST /ipa-sim/enroll` (see [`crate::server`]): the answer carries the
//! IPA CA certificate and the host's key, with an HMAC under the one-time
//! password proving that the server knows it, as the Kerberos exchange
//! would; the host then checks that the server's TLS certificate chains to
//! that CA and names the server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ca;
use crate::commands::{self, add_record_values, Ctx};
use crate::server::{prove, random_token, sha256_hex};
use crate::state::{self, Kind, State};

/// An options file: `--name=value` or `--flag` per argument, the
/// arguments as `xargs` makes them of the file (see [`crate::xargs`]).
#[derive(Debug, Clone, Default)]
pub struct InstallOptions(pub BTreeMap<String, Option<String>>);

impl InstallOptions {
    pub fn read(path: &Path) -> anyhow::Result<InstallOptions> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (the install options, as xargs reads them)",
                path.display()
            )
        })?;
        InstallOptions::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The options in an options file, split as `xargs` splits it.
    pub fn parse(text: &str) -> anyhow::Result<InstallOptions> {
        let args = crate::xargs::split(text).map_err(|e| anyhow!("xargs runs nothing: {e}"))?;
        InstallOptions::from_args(&args)
    }

    /// Options from a command line. An argument that is not an option
    /// (what a password with a blank becomes in an unquoted options file)
    /// is refused without showing it: it may be part of a password.
    pub fn from_args(args: &[String]) -> anyhow::Result<InstallOptions> {
        let mut map = BTreeMap::new();
        let mut previous = "the start";
        for arg in args {
            let option = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .ok_or_else(|| {
                    anyhow!(
                        "an argument after {previous} is not an option (write `--name=value`; \
                         a value with blanks or quotes must be quoted as xargs reads it)"
                    )
                })?;
            let name = match option.split_once('=') {
                Some((name, value)) => {
                    map.insert(name.to_owned(), Some(value.to_owned()));
                    name
                }
                None => {
                    map.insert(option.to_owned(), None);
                    option
                }
            };
            previous = name;
        }
        Ok(InstallOptions(map))
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.as_deref())
    }

    pub fn required(&self, name: &str) -> anyhow::Result<&str> {
        self.value(name)
            .ok_or_else(|| anyhow!("the install options lack --{name}=..."))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn hostname(&self) -> anyhow::Result<String> {
        Ok(self
            .required("hostname")?
            .trim_end_matches('.')
            .to_ascii_lowercase())
    }

    pub fn domain(&self) -> anyhow::Result<String> {
        Ok(self
            .required("domain")?
            .trim_end_matches('.')
            .to_ascii_lowercase())
    }

    pub fn realm(&self) -> anyhow::Result<String> {
        match self.value("realm") {
            Some(realm) => Ok(realm.to_owned()),
            None => Ok(self.domain()?.to_ascii_uppercase()),
        }
    }
}

/// The node's address: `--ip-address`, else what the host name resolves to
/// (the lab writes peers into /etc/hosts).
pub fn node_address(options: &InstallOptions) -> anyhow::Result<IpAddr> {
    if let Some(ip) = options.value("ip-address") {
        return ip
            .parse()
            .map_err(|_| anyhow!("--ip-address={ip} is not an address"));
    }
    let host = options.hostname()?;
    (host.as_str(), 0)
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve {host}; give --ip-address= in the install options")
        })?
        .map(|a| a.ip())
        .find(|ip| !ip.is_loopback())
        .ok_or_else(|| anyhow!("{host} resolves to loopback only; give --ip-address="))
}

/// A fresh deployment, as `ipa-server-install` leaves it: the IPA CA, the
/// default profile and CA ACL, `admin`, this server (enrolled, in
/// `ipaservers`), and with `--setup-dns` the domain zone with the
/// server's records.
pub fn new_deployment(
    options: &InstallOptions,
    fqdn: &str,
    address: SocketAddr,
) -> anyhow::Result<(State, String)> {
    let fqdn = fqdn.to_owned();
    let domain = options.domain()?;
    let realm = options.realm()?;
    let admin_password = options.required("admin-password")?;
    check_password("admin-password", admin_password, false)?;
    let ds_password = options.value("ds-password").ok_or_else(|| {
        anyhow!("the install options lack --ds-password=... (the Directory Manager password)")
    })?;
    check_password("ds-password", ds_password, true)?;
    if !fqdn.ends_with(&format!(".{domain}")) {
        bail!("--hostname={fqdn} is not inside --domain={domain}");
    }
    let mut state = State::new(&realm, &domain);
    let root = ca::create_root(&realm)?;
    state.put(
        &fqdn,
        Kind::Ca,
        "ipa",
        Some(commands::ca_entry("ipa", &root, Some("IPA CA"))?),
    );
    state.put(
        &fqdn,
        Kind::CertProfile,
        commands::DEFAULT_PROFILE,
        Some(state::entry(&[("cn", &[commands::DEFAULT_PROFILE])])),
    );
    state.put(
        &fqdn,
        Kind::CaAcl,
        "hosts_services_caIPAserviceCert",
        Some(state::entry(&[
            ("cn", &["hosts_services_caIPAserviceCert"]),
            ("ipaenabledflag", &["TRUE"]),
            ("hostcategory", &["all"]),
            ("servicecategory", &["all"]),
            (
                "ipamembercertprofile_certprofile",
                &[commands::DEFAULT_PROFILE],
            ),
        ])),
    );
    state.put(
        &fqdn,
        Kind::User,
        "admin",
        Some(state::entry(&[
            ("uid", &["admin"]),
            ("_password_sha256", &[sha256_hex(admin_password).as_str()]),
        ])),
    );
    let keytab = random_token();
    let principal = format!("host/{fqdn}@{realm}");
    let mut host = state::entry(&[
        ("fqdn", &[fqdn.as_str()]),
        ("krbprincipalname", &[principal.as_str()]),
        ("krbcanonicalname", &[principal.as_str()]),
    ]);
    host.insert("_keytab".into(), json!(sha256_hex(&keytab)));
    state.put(&fqdn, Kind::Host, &fqdn, Some(host));
    commands::add_server(&mut state, &fqdn, &fqdn, &address.to_string(), true, None);
    if options.flag("setup-dns") {
        add_server_records(&mut state, &fqdn, address.ip(), true)?;
    }
    Ok((state, keytab))
}

/// What the container refuses in a server's or replica's options:
/// `--hostname`. Its README says "Do not use the ipa-server-install
/// --hostname ... argument" (freeipa-container `README`): podman's
/// `--hostname` names the container, and given the option the installers
/// set the host name themselves (`set_hostname` in freeipa
/// `ipaserver/install/server/install.py`; the client install inside
/// `ipaserver/install/server/replicainstall.py` runs hostnamectl,
/// `ipaclient/install/client.py`), which an unprivileged container
/// cannot do.
pub fn check_container_options(options: &InstallOptions) -> anyhow::Result<()> {
    if options.0.contains_key("hostname") {
        bail!(
            "--hostname: the containerised installers must not be given it (podman's \
             --hostname names the container; the installer would run hostnamectl)"
        );
    }
    Ok(())
}

/// `ipa-server-install`'s knob validators for its passwords (freeipa
/// `ipaserver/install/server/install.py`, `validate_admin_password` and,
/// `dm`, `validate_dm_password`): the install stops before it changes
/// anything. The value is never shown.
pub fn check_password(option: &str, password: &str, dm: bool) -> anyhow::Result<()> {
    let refuse = |why: &str| Err(anyhow!("--{option}: {why}"));
    if password.chars().count() < 8 {
        return refuse("Password must be at least 8 characters long");
    }
    if password.chars().any(|c| (c as u32) < 0x20) {
        return refuse("Password must not contain control characters");
    }
    if password.chars().any(|c| (c as u32) >= 0x7f) {
        return refuse("Password must only contain ASCII characters");
    }
    if password.contains('\\') {
        return refuse("Password must not contain these characters: \"\\\"");
    }
    if dm && password.trim() != password {
        return refuse("Password must not start or end with whitespace.");
    }
    Ok(())
}

/// The domain zone (created if missing) with a server's A record and the
/// service records clients look for.
pub fn add_server_records(
    state: &mut State,
    fqdn: &str,
    ip: IpAddr,
    create_zone: bool,
) -> anyhow::Result<()> {
    let zone = format!("{}.", state.domain);
    let ctx = Ctx {
        server: fqdn,
        dns_name_objects: false,
        resolution: commands::Resolution::OwnZones,
        unready_cas: &Default::default(),
        caller: &commands::Caller::Admin,
    };
    if create_zone && !state.exists(Kind::DnsZone, &zone) {
        let serial = "1".to_owned();
        let rname = format!("hostmaster.{zone}");
        let mname = format!("{fqdn}.");
        let entry = state::entry(&[
            ("idnsname", &[zone.as_str()]),
            ("idnszoneactive", &["TRUE"]),
            ("idnssoamname", &[mname.as_str()]),
            ("idnssoarname", &[rname.as_str()]),
            ("idnssoaserial", &[serial.as_str()]),
        ]);
        state.put(fqdn, Kind::DnsZone, &zone, Some(entry));
    }
    if !state.exists(Kind::DnsZone, &zone) {
        return Ok(());
    }
    let short = fqdn
        .strip_suffix(&format!(".{}", state.domain))
        .ok_or_else(|| anyhow!("{fqdn} is not in {}", state.domain))?
        .to_owned();
    add_record_values(state, &ctx, &zone, "@", "nsrecord", &[format!("{fqdn}.")]);
    if let IpAddr::V4(v4) = ip {
        add_record_values(state, &ctx, &zone, &short, "arecord", &[v4.to_string()]);
        add_record_values(state, &ctx, &zone, "ipa-ca", "arecord", &[v4.to_string()]);
    }
    for (service, port) in [
        ("_ldap._tcp", 389),
        ("_kerberos._tcp", 88),
        ("_kerberos._udp", 88),
        ("_kpasswd._tcp", 464),
        ("_kerberos-master._tcp", 88),
    ] {
        add_record_values(
            state,
            &ctx,
            &zone,
            service,
            "srvrecord",
            &[format!("0 100 {port} {fqdn}.")],
        );
    }
    Ok(())
}

/// What an enrollment gives a host.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub ca_pem: String,
    pub keytab: String,
    pub server: String,
    /// A replica's copy of the deployment.
    pub state: Option<State>,
}

/// Enroll `fqdn` at `server` (reached at `address`) with its one-time
/// password. `role`: `client` or `replica`.
pub async fn enroll(
    server: &str,
    address: SocketAddr,
    fqdn: &str,
    password: &str,
    role: &str,
    setup_ca: bool,
    own_address: Option<SocketAddr>,
) -> anyhow::Result<Enrolled> {
    let body = json!({
        "fqdn": fqdn,
        "password": password,
        "role": role,
        "setup_ca": setup_ca,
        "address": own_address.map(|a| a.to_string()),
    });
    let answer = ask(server, address, "enroll", fqdn, &body).await?;
    let outer: Value =
        serde_json::from_slice(&answer.body).context("the enrollment answer is not JSON")?;
    let payload = outer["payload"].as_str().unwrap_or_default();
    let proof = outer["proof"].as_str().unwrap_or_default();
    if prove(password, payload) != proof {
        bail!("the enrollment answer from {address} is not proved with {fqdn}'s one-time password: not {server}?");
    }
    let inner: Value =
        serde_json::from_str(payload).context("the enrollment payload is not JSON")?;
    let ca_pem = inner["ca_cert"].as_str().unwrap_or_default().to_owned();
    let presented = answer
        .server_certificate
        .as_ref()
        .map(firstboot::https::to_pem)
        .ok_or_else(|| anyhow!("{server} presented no certificate"))?;
    firstboot::pki::verify(&presented, &ca_pem, Some(server), firstboot::status::now())
        .map_err(|e| anyhow!("{server}'s TLS certificate is not from the IPA CA it sent: {e}"))?;
    let state = match inner.get("state") {
        Some(Value::Null) | None => None,
        Some(state) => {
            Some(serde_json::from_value(state.clone()).context("the replica state is damaged")?)
        }
    };
    Ok(Enrolled {
        ca_pem,
        keytab: inner["keytab"].as_str().unwrap_or_default().to_owned(),
        server: server.to_owned(),
        state,
    })
}

/// Where the first server is: an explicit address, else DNS on 443.
pub fn server_address(server: &str, explicit: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    if let Some(address) = explicit {
        return Ok(address);
    }
    (server, 443)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {server}"))?
        .next()
        .ok_or_else(|| anyhow!("{server} has no address"))
}

/// Where the IPA CA certificate is under a data directory: the official
/// container keeps the node's /etc under /data/etc, so its /etc/ipa/ca.crt
/// is `<data>/etc/ipa/ca.crt` on the host.
pub fn ca_path(data: &Path) -> std::path::PathBuf {
    data.join("etc/ipa/ca.crt")
}

/// Write the files an enrolled host has: the IPA CA (see [`ca_path`]),
/// `keytab` (0600).
pub fn save_enrollment(data: &Path, enrolled: &Enrolled) -> anyhow::Result<()> {
    firstboot::fsutil::write_atomic(&ca_path(data), enrolled.ca_pem.as_bytes(), 0o644)?;
    firstboot::fsutil::write_atomic(&data.join("keytab"), enrolled.keytab.as_bytes(), 0o600)?;
    Ok(())
}

/// `/etc/ipa/default.conf` as the installer writes it for a server
/// itself (freeipa `ipaserver/install/server/install.py`, "Create the
/// management framework config file"; a replica's is the same
/// (`create_ipa_conf` in `ipaserver/install/server/replicainstall.py`,
/// written last pointing at itself), with `ca_host` naming a CA server
/// when the replica has no CA of its own). Unlike a client's
/// (`configure_ipa_conf` in `ipaclient/install/client.py`, which the
/// server's own `ipa-client-install --on-master` skips) it names no
/// `server`: certmonger's `ipa-submit` finds the server through
/// `xmlrpc_uri` (certmonger-ipa-submit(8), FILES). The simulator has no
/// LDAP; `ldap_uri` is written as FreeIPA writes it
/// (`ipapython.ipaldap.realm_to_ldapi_uri`) and read by no one.
pub fn server_default_conf(fqdn: &str, realm: &str, domain: &str, ca_host: Option<&str>) -> String {
    let basedn = realm
        .split('.')
        .map(|label| format!("dc={}", label.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let ldapi = format!("ldapi://%2Frun%2Fslapd-{}.socket", realm.replace('.', "-"));
    let mut conf = format!(
        "[global]\nhost = {fqdn}\nbasedn = {basedn}\nrealm = {realm}\ndomain = {domain}\n\
         xmlrpc_uri = https://{fqdn}/ipa/xml\nldap_uri = {ldapi}\nmode = production\n\
         enable_ra = True\nra_plugin = dogtag\ndogtag_version = 10\n"
    );
    if let Some(ca_host) = ca_host {
        conf.push_str(&format!("ca_host = {ca_host}\n"));
    }
    conf.push('\n');
    conf
}

/// Write what the container's `/etc` holds for the server's own tools
/// under `data/etc` (the container keeps `/etc/ipa/` and
/// `/etc/krb5.keytab` on its volume: freeipa-container `volume-data-list`;
/// freeipa `ipaplatform/fedora_container/paths.py` puts `KRB5_KEYTAB`
/// under `/data`): the IPA CA, the host keytab (0600; here the
/// simulator's key, the same as `data/keytab`) and `ipa/default.conf`
/// ([`server_default_conf`]). What certmonger's IPA helper reads when the
/// server's own certmonger asks for a certificate. Written on every start,
/// so a volume made before these files existed gets them too.
pub fn save_server_etc(data: &Path, fqdn: &str, state: &State, keytab: &str) -> anyhow::Result<()> {
    let ca_pem = commands::ca_pems(state, "ipa")
        .map(|c| c.cert_pem)
        .ok_or_else(|| anyhow!("the state has no IPA CA"))?;
    let has_ca = |server: &str| {
        state.get(Kind::Server, server).is_some_and(|entry| {
            state::values(entry, "iparepltopomanagedsuffix_topologysuffix")
                .iter()
                .any(|suffix| suffix == "ca")
        })
    };
    let ca_host = if has_ca(fqdn) {
        None
    } else {
        state
            .all(Kind::Server)
            .into_iter()
            .map(|(name, _)| name)
            .find(|name| has_ca(name))
    };
    let conf = server_default_conf(fqdn, &state.realm, &state.domain, ca_host);
    let write = firstboot::fsutil::write_atomic;
    write(&ca_path(data), ca_pem.as_bytes(), 0o644)?;
    write(&data.join("etc/krb5.keytab"), keytab.as_bytes(), 0o600)?;
    write(&data.join("etc/ipa/default.conf"), conf.as_bytes(), 0o644)
}

/// A fault a test asks of the next installs on a host: each install that
/// finds one fails once after `ipa-join` enrolled the host, as a real
/// install that fails later does: it rolls the enrollment back
/// (`ipa-join --unenroll`, freeipa `client/ipa-join.c`; the rollback in
/// `ipaclient/install/client.py`, and `preserve_enrollment_state` in
/// `ipaserver/install/server/replicainstall.py` for a replica) and the
/// one-time password stays spent. The first server, which has no
/// password to spend, fails half-way instead: its data directory keeps
/// the IPA CA and state, as a real `/data` keeps what the installer
/// wrote before it failed.
#[derive(Debug, Serialize, Deserialize)]
pub struct InstallFaults {
    pub after_join: u32,
}

/// Where a host's install faults are kept, under its root.
pub const INSTALL_FAULTS: &str = "var/lib/ipa-sim/install-faults.json";

/// Make the next `count` installs on the host whose root is `root` fail
/// after `ipa-join`.
pub fn inject_install_faults(root: &Path, count: u32) -> anyhow::Result<()> {
    let text = serde_json::to_vec(&InstallFaults { after_join: count })?;
    firstboot::fsutil::write_atomic(&root.join(INSTALL_FAULTS), &text, 0o600)
}

/// Whether this install takes one of the host's faults.
pub fn take_install_fault(root: &Path) -> anyhow::Result<bool> {
    let path = root.join(INSTALL_FAULTS);
    let Some(mut faults) = firstboot::fsutil::read_json::<InstallFaults>(&path)? else {
        return Ok(false);
    };
    if faults.after_join == 0 {
        return Ok(false);
    }
    faults.after_join -= 1;
    firstboot::fsutil::write_atomic(&path, &serde_json::to_vec(&faults)?, 0o600)?;
    Ok(true)
}

/// `ipa-join --unenroll`: the host's keys go from its entry, proved with
/// the keytab it got (freeipa `client/ipa-join.c`, `unenroll_host`).
pub async fn unenroll(
    server: &str,
    address: SocketAddr,
    fqdn: &str,
    keytab: &str,
) -> anyhow::Result<()> {
    let body = json!({"fqdn": fqdn, "keytab": keytab});
    ask(server, address, "unenroll", fqdn, &body).await?;
    Ok(())
}

/// One of the simulator's own endpoints (`/ipa-sim/<what>`) at `server`,
/// for host `fqdn`: its answer when it is 200.
async fn ask(
    server: &str,
    address: SocketAddr,
    what: &str,
    fqdn: &str,
    body: &Value,
) -> anyhow::Result<firstboot::https::Answer> {
    let answer = firstboot::https::post(
        address,
        &format!("/ipa-sim/{what}"),
        &[],
        body.to_string().into_bytes(),
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("cannot reach {server} at {address} to {what}"))?;
    if answer.status != 200 {
        bail!(
            "{server} refused to {what} {fqdn}: {}",
            String::from_utf8_lossy(&answer.body).trim()
        );
    }
    Ok(answer)
}

/// The container's own exit status for a refusal, with its message.
#[derive(Debug)]
pub struct ContainerExit(pub u8, pub String);

impl std::fmt::Display for ContainerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ContainerExit {}

/// Whether the data volume holds a configured server (`volume-version`),
/// or none yet; a volume an install wrote into but never finished is
/// refused as the container refuses it: `init-data` drops the configure
/// step once `/etc/ipa/ca.crt` is there, and `ipa-server-configure-first`
/// exits 11, "The FreeIPA server was already configured." (freeipa-
/// container); stricter here, any state left counts.
pub fn volume_configured(data: &Path) -> anyhow::Result<bool> {
    if data.join("volume-version").exists() {
        return Ok(true);
    }
    if crate::server::state_path(data).exists() || ca_path(data).exists() {
        return Err(ContainerExit(
            11,
            format!(
                "The FreeIPA server was already configured. ({} holds what an install that \
                 did not finish left; it is never configured again: remove it or set it aside)",
                data.display()
            ),
        )
        .into());
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_installed_volume_is_never_configured_again() {
        let data = tempfile::tempdir().unwrap();
        assert!(!volume_configured(data.path()).unwrap());
        std::fs::create_dir_all(data.path().join("etc/ipa")).unwrap();
        std::fs::write(ca_path(data.path()), "half").unwrap();
        let e = volume_configured(data.path()).unwrap_err();
        assert_eq!(e.downcast_ref::<ContainerExit>().map(|x| x.0), Some(11));
        std::fs::write(data.path().join("volume-version"), "1\n").unwrap();
        assert!(volume_configured(data.path()).unwrap());
    }

    #[test]
    fn a_server_s_etc_is_its_own_and_a_replica_without_a_ca_names_one() {
        let options = InstallOptions::parse(
            "--domain=lab.example.org\n--ds-password=Secret123-dm\n\
             --admin-password=Secret123-admin\n",
        )
        .unwrap();
        let (ipa1, ipa2) = ("ipa1.lab.example.org", "ipa2.lab.example.org");
        let (mut state, _) =
            new_deployment(&options, ipa1, "127.0.0.1:443".parse().unwrap()).unwrap();
        commands::add_server(&mut state, ipa1, ipa2, "127.0.0.2:443", false, Some(ipa1));
        let data = tempfile::tempdir().unwrap();
        let data = data.path();
        save_server_etc(data, ipa2, &state, "the keytab").unwrap();
        let conf = std::fs::read_to_string(data.join("etc/ipa/default.conf")).unwrap();
        assert!(
            conf.starts_with("[global]\nhost = ipa2.lab.example.org\n"),
            "{conf}"
        );
        assert!(
            conf.contains("\nxmlrpc_uri = https://ipa2.lab.example.org/ipa/xml\n"),
            "{conf}"
        );
        assert!(!conf.contains("\nserver = "), "{conf}");
        assert!(
            conf.ends_with("\nca_host = ipa1.lab.example.org\n\n"),
            "{conf}"
        );
        let keytab = data.join("etc/krb5.keytab");
        assert_eq!(std::fs::read_to_string(&keytab).unwrap(), "the keytab");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keytab).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(ca_path(data))
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        // With its own CA clone it names none.
        commands::add_ca_clone(&mut state, ipa2, ipa1);
        save_server_etc(data, ipa2, &state, "the keytab").unwrap();
        let conf = std::fs::read_to_string(data.join("etc/ipa/default.conf")).unwrap();
        assert!(!conf.contains("ca_host"), "{conf}");
    }

    #[test]
    fn installs_take_faults_only_as_many_times_as_asked() {
        let root = tempfile::tempdir().unwrap();
        assert!(!take_install_fault(root.path()).unwrap());
        inject_install_faults(root.path(), 2).unwrap();
        assert!(take_install_fault(root.path()).unwrap());
        assert!(take_install_fault(root.path()).unwrap());
        assert!(!take_install_fault(root.path()).unwrap());
    }

    #[test]
    fn the_installer_refuses_what_freeipa_refuses() {
        for (password, dm) in [
            ("short", false),
            ("back\\slash pw", false),
            ("tab\there pw", false),
        ] {
            assert!(
                check_password("admin-password", password, dm).is_err(),
                "{password:?}"
            );
        }
        assert!(check_password("ds-password", " leading blank", true).is_err());
        assert!(check_password("admin-password", " leading blank", false).is_ok());
        assert!(check_password("admin-password", "it's a \"fine\" pa$$", false).is_ok());
        let options = InstallOptions::parse("--hostname=a.b.c\n--domain=b.c\n").unwrap();
        assert!(check_container_options(&options).is_err());
        // An unquoted password with a blank splits: refused, not shown.
        let e = InstallOptions::parse("--admin-password=secret words\n").unwrap_err();
        assert!(!format!("{e:#}").contains("words"), "{e:#}");
    }
}
