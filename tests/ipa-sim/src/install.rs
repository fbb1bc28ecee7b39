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
use serde_json::{json, Value};

use crate::ca;
use crate::commands::{self, add_record_values, Ctx};
use crate::server::{prove, random_token, sha256_hex};
use crate::state::{self, Kind, State};

/// An options file: `--name=value` or `--flag` per line.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions(pub BTreeMap<String, Option<String>>);

impl InstallOptions {
    pub fn read(path: &Path) -> anyhow::Result<InstallOptions> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (one install option per line)",
                path.display()
            )
        })?;
        InstallOptions::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<InstallOptions> {
        let mut map = BTreeMap::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let option = line
                .strip_prefix("--")
                .or_else(|| line.strip_prefix('-'))
                .ok_or_else(|| anyhow!("`{line}` is not an option (write `--name=value`)"))?;
            match option.split_once('=') {
                Some((name, value)) => map.insert(name.to_owned(), Some(value.to_owned())),
                None => map.insert(option.to_owned(), None),
            };
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
    address: SocketAddr,
) -> anyhow::Result<(State, String)> {
    let fqdn = options.hostname()?;
    let domain = options.domain()?;
    let realm = options.realm()?;
    let admin_password = options.required("admin-password")?;
    if options.value("ds-password").is_none() {
        bail!("the install options lack --ds-password=... (the Directory Manager password)");
    }
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
    let answer = firstboot::https::post(
        address,
        "/ipa-sim/enroll",
        &[],
        body.to_string().into_bytes(),
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("cannot reach {server} at {address} to enroll"))?;
    if answer.status != 200 {
        bail!(
            "{server} refused to enroll {fqdn}: {}",
            String::from_utf8_lossy(&answer.body).trim()
        );
    }
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
