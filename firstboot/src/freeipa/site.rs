//! What the site does with FreeIPA around the JSON-RPC client: the install
//! options each kind of node writes for the official tools, how a node
//! knows its server, replica or client is configured, the one-time
//! passwords the bootstrap host hands out over the join channel, and the
//! replication topology.
//!
//! The options files are what the official `freeipa-server` container
//! reads from `/data` (`ipa-server-install-options`, or
//! `ipa-replica-install-options` for a replica) and what our client
//! container reads (`ipa-client-install-options`), one option per line;
//! the lab's simulator reads the same files. A service's `/data` is its
//! state directory, `/var/lib/<service>` on the node (on the data volume
//! when there is one), so the IPA CA it writes to its `/etc/ipa/ca.crt` is
//! `<state>/etc/ipa/ca.crt` here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use node_contract::{HostName, NodeConfig, Role};
use tokio::sync::Mutex;

use super::{Client, HostSpec, Suffix};

/// The catalog's services.
pub const SERVER: &str = "freeipa-server";
pub const CLIENT: &str = "freeipa-client";

/// The host group whose members may become replicas.
pub const SERVERS_GROUP: &str = "ipaservers";

/// What a node installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Replica,
    Client,
}

impl Kind {
    pub fn of(config: &NodeConfig) -> Kind {
        match (config.is_bootstrap(), config.role()) {
            (true, _) => Kind::Server,
            (false, Role::Core) => Kind::Replica,
            (false, Role::Worker) => Kind::Client,
        }
    }

    /// The catalog service that installs and runs it.
    pub fn service(self) -> &'static str {
        match self {
            Kind::Server | Kind::Replica => SERVER,
            Kind::Client => CLIENT,
        }
    }

    pub fn options_file(self) -> &'static str {
        match self {
            Kind::Server => "ipa-server-install-options",
            Kind::Replica => "ipa-replica-install-options",
            Kind::Client => "ipa-client-install-options",
        }
    }

    /// The file the installed service leaves behind: the server
    /// container's volume version, the host client's marker
    /// (`freeipa::host`).
    pub fn done_marker(self) -> &'static str {
        match self {
            Kind::Server | Kind::Replica => "volume-version",
            Kind::Client => "enrolled",
        }
    }
}

/// Options every kind of install shares: the site's domain and realm,
/// unattended, no NTP (the platform keeps time). Not `--hostname` for
/// the server and its replicas: the container's README says not to pass
/// it (podman's `--hostname` names the container), and with it
/// `ipa-server-install` and the client install inside
/// `ipa-replica-install` set the host name themselves (`set_hostname`,
/// `hostnamectl`), which a container may not do (freeipa
/// `ipaserver/install/server/install.py`, `ipaclient/install/client.py`;
/// freeipa-container `README`). The host client takes it.
fn common(config: &NodeConfig) -> Vec<String> {
    vec![
        format!("--domain={}", config.site.domain),
        format!("--realm={}", config.site.realm),
        "--no-ntp".into(),
        "--unattended".into(),
    ]
}

/// The FreeIPA passwords, which only the bootstrap host's config holds.
pub fn secrets(config: &NodeConfig) -> Result<&node_contract::FreeIpaSecrets> {
    config
        .freeipa
        .as_ref()
        .context("the bootstrap host's node.json holds no FreeIPA passwords")
}

/// The first server's options: DNS for the site zone (its records move
/// over from the temporary DNS at handoff, so an overlap is expected now),
/// no forwarders yet (recursion comes at handoff, for the VPC only), and
/// the passwords only this host's config holds.
pub fn server_options(config: &NodeConfig, own: Ipv4Addr) -> Result<Vec<String>> {
    let secrets = secrets(config)?;
    let problems = secrets.problems();
    if !problems.is_empty() {
        bail!(
            "ipa-server-install would refuse this node's FreeIPA passwords: {} \
             (builder init and render refuse them too: render the site again)",
            problems.join("; ")
        );
    }
    let mut options = common(config);
    options.extend([
        format!("--ip-address={own}"),
        format!("--ds-password={}", secrets.directory_manager_password),
        format!("--admin-password={}", secrets.admin_password),
        "--setup-dns".into(),
        "--no-forwarders".into(),
        "--allow-zone-overlap".into(),
        "--no-host-dns".into(),
    ]);
    Ok(options)
}

/// A replica's options: enrolled and promoted with a one-time password,
/// with its own CA and DNS so that no server is a single point of failure.
pub fn replica_options(config: &NodeConfig, own: Ipv4Addr, server: &str, otp: &str) -> Vec<String> {
    let mut options = common(config);
    options.extend([
        format!("--server={server}"),
        format!("--ip-address={own}"),
        format!("--password={otp}"),
        "--setup-ca".into(),
        "--setup-dns".into(),
        "--no-forwarders".into(),
        "--no-host-dns".into(),
    ]);
    options
}

/// A client's options: enrolled with a one-time password.
pub fn client_options(config: &NodeConfig, server: &str, otp: &str) -> Vec<String> {
    let mut options = vec![format!("--hostname={}", config.fqdn(&config.node))];
    options.extend(common(config));
    options.extend([format!("--server={server}"), format!("--password={otp}")]);
    options
}

/// Write an options file (0600: it holds a password), one option per
/// line. The container hands the server's and a replica's to the
/// installer through `xargs` (freeipa-container
/// `ipa-server-configure-first`), which splits on blanks and reads
/// quotes and backslashes: each option is quoted so that `xargs` gives it
/// back whole ([`xargs_quote`]). The host client (`freeipa::host`) reads
/// its own file line by line, which needs no quoting; a line break inside
/// an option is refused for it.
pub fn write_options(state: &Path, kind: Kind, options: &[String]) -> Result<()> {
    let lines: Vec<String> = match kind {
        Kind::Server | Kind::Replica => options.iter().map(|o| xargs_quote(o)).collect(),
        Kind::Client => {
            if let Some(odd) = options.iter().find(|o| o.contains('\n')) {
                bail!(
                    "an install option holds a line break: {:?}",
                    odd.split('=').next()
                );
            }
            options.to_vec()
        }
    };
    let text = lines.join("\n") + "\n";
    crate::fsutil::write_atomic(&state.join(kind.options_file()), text.as_bytes(), 0o600)
}

/// `arg` as GNU `xargs` (without `-0` or `-d`) reads it back as one
/// argument: a backslash before each character it would take as a
/// separator or a quote (blanks, line breaks, `'`, `"`, `\`). Outside
/// quotes, `xargs` keeps the character after a backslash, whatever it is
/// (findutils `xargs/xargs.c`, `read_line`).
pub fn xargs_quote(arg: &str) -> String {
    let mut quoted = String::with_capacity(arg.len());
    for c in arg.chars() {
        if c.is_ascii_whitespace() || matches!(c, '\'' | '"' | '\\' | '\u{b}') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted
}

/// Remove an options file whose one-time password enrollment spent.
pub fn forget_options(state: &Path, kind: Kind) -> Result<()> {
    let file = state.join(kind.options_file());
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// Set a half-installed state directory aside, whole but for its install
/// options, and leave an empty one in its place (with the same mode): the
/// directory it points to when it is a link onto the data volume. Only
/// the last failed attempt is kept, so failures do not fill the volume.
/// The options hold the site's passwords (or a spent one-time password):
/// the next attempt writes its own, and a copy kept for diagnosis would
/// outlive its purpose. Where it went.
pub fn set_aside(state: &Path) -> Result<PathBuf> {
    let real = std::fs::canonicalize(state)
        .with_context(|| format!("cannot resolve {}", state.display()))?;
    let name = real
        .file_name()
        .with_context(|| format!("{} has no name", real.display()))?
        .to_string_lossy()
        .into_owned();
    let aside = real.with_file_name(format!("{name}.failed-install"));
    let mode = std::fs::metadata(&real)
        .with_context(|| format!("cannot read {}", real.display()))?
        .permissions();
    if aside.exists() {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("cannot remove the earlier {}", aside.display()))?;
    }
    std::fs::rename(&real, &aside)
        .with_context(|| format!("cannot move {} to {}", real.display(), aside.display()))?;
    for kind in [Kind::Server, Kind::Replica] {
        forget_options(&aside, kind)?;
    }
    std::fs::create_dir(&real).with_context(|| format!("cannot create {}", real.display()))?;
    std::fs::set_permissions(&real, mode)
        .with_context(|| format!("cannot set the mode of {}", real.display()))?;
    Ok(aside)
}

/// Note where a replica installs from: its container resolves through
/// that server's DNS until its own runs ([`container_dns`]).
pub fn record_install_server(paths: &crate::paths::Paths, address: Ipv4Addr) -> Result<()> {
    crate::fsutil::write_atomic(
        &paths.freeipa_install_server(),
        format!("{address}\n").as_bytes(),
        0o644,
    )
}

/// The resolver the server container gets (podman's `--dns`): FreeIPA
/// resolves its own names, so its own DNS, `127.0.0.1`, as the
/// container's README and CI run the first server; a replica still
/// installing has no DNS of its own yet and resolves through the server
/// it installs from, as the container's CI runs replicas. Without it the
/// container resolves through the host's stub, which sends the site
/// domain to the temporary DNS, which lacks what FreeIPA adds (freeipa-
/// container `README`, `ipa-server-configure-first`: "Is --dns=127.0.0.1
/// set for the container?").
pub fn container_dns(paths: &crate::paths::Paths, state: &Path) -> Result<String> {
    let installing_replica = state.join(Kind::Replica.options_file()).exists()
        && !state.join(Kind::Replica.done_marker()).exists();
    if !installing_replica {
        return Ok("127.0.0.1".into());
    }
    let file = paths.freeipa_install_server();
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read {}, the server this replica installs from",
            file.display()
        )
    })?;
    let address: Ipv4Addr = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no address", file.display()))?;
    Ok(address.to_string())
}

/// The IPA CA as the installed service left it.
pub fn ca_path(state: &Path) -> PathBuf {
    state.join("etc/ipa/ca.crt")
}

/// Where a FreeIPA server run on the host (the lab's simulator) keeps its
/// own certmonger's private socket, under its state directory, as the
/// official container keeps a certmonger of its own (its state in
/// `/data/var/lib/certmonger`: freeipa-container `volume-data-list`).
/// firstboot reaches it with `CERTMONGER_PVT_ADDRESS=unix:path=<state>/<this>`
/// where it would `podman exec` the container's `getcert`
/// (`handoff::request::RequestSite`).
pub const HOST_SERVER_CERTMONGER: &str = "var/lib/certmonger/private.sock";

/// One-time passwords the bootstrap host hands out, kept (0600) so that a
/// node asking again gets the one FreeIPA holds for it.
pub struct Enroller {
    client: Client,
    server: String,
    file: PathBuf,
    passwords: Mutex<BTreeMap<HostName, String>>,
    domain: node_contract::DomainName,
    realm: String,
    core_hosts: usize,
}

impl Enroller {
    pub fn new(
        client: Client,
        server: String,
        file: PathBuf,
        config: &NodeConfig,
    ) -> Result<Enroller> {
        let passwords = crate::fsutil::read_json(&file)?.unwrap_or_default();
        Ok(Enroller {
            client,
            server,
            file,
            passwords: Mutex::new(passwords),
            domain: config.site.domain.clone(),
            realm: config.site.realm.as_str().to_owned(),
            core_hosts: config.site.core.len(),
        })
    }

    /// A certificate for `node`'s service `service` from the sub-CA of the
    /// same name, for the CSR the node made (its key stays on the node),
    /// asked as the admin: how a node that joins after the handoff moved
    /// a row gets that certificate before it can ask certmonger itself
    /// (a core host's etcd certificate, any node's identity). A node new
    /// to FreeIPA is added first (at `address`, where it joined from, with
    /// the one-time password its enrollment will give it: `host_add`
    /// with none would draw a random one, which no one keeps, and the
    /// enrollment would then find a password set and never learn it)
    /// with its principal. FreeIPA checks the CSR against the principal
    /// and the CA ACL.
    pub async fn certify_service(
        &self,
        service: &str,
        node: &HostName,
        address: Ipv4Addr,
        csr_pem: &str,
    ) -> Result<String> {
        let fqdn = self.domain.fqdn(node);
        let principal = format!("{service}/{fqdn}@{}", self.realm);
        let ca = super::ServiceCa::named(service)
            .with_context(|| format!("FreeIPA has no sub-CA `{service}` of the site's"))?;
        if !self.client.host_exists(&fqdn).await? {
            let password = self.password(node, false).await?;
            self.client
                .ensure_host(&HostSpec {
                    fqdn: fqdn.clone(),
                    address: Some(address),
                    one_time_password: Some(password),
                })
                .await
                .with_context(|| format!("cannot add {fqdn} to FreeIPA"))?;
        }
        self.client
            .ensure_service_principal(ca, &fqdn, &self.realm)
            .await
            .with_context(|| format!("the principal {principal}"))?;
        let issued = self
            .client
            .request_certificate(&principal, csr_pem, service, super::ensure::SERVICE_PROFILE)
            .await
            .with_context(|| format!("FreeIPA's {service} sub-CA, for {principal}"))?;
        Ok(issued.cert_pem)
    }

    /// A core host added to the site since its handoff made the site's
    /// records: its address (A and PTR) and its etcd SRV records in
    /// FreeIPA's zone, as the handoff gave the first core hosts'.
    pub async fn ensure_member_records(&self, node: &HostName, address: Ipv4Addr) -> Result<()> {
        let fqdn = self.domain.fqdn(node);
        self.client
            .ensure_site_records(
                self.domain.as_str(),
                &[super::NodeAddress {
                    fqdn: fqdn.clone(),
                    address,
                }],
                std::slice::from_ref(&fqdn),
            )
            .await
            .with_context(|| format!("the etcd SRV records of {fqdn} in FreeIPA's DNS"))?;
        Ok(())
    }

    /// The server nodes enroll with.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `node` (at `address`) as a FreeIPA host with a one-time password;
    /// a core host also in `ipaservers`, so it may become a replica. A node
    /// enrolled already asks only when it was rebuilt: it enrolls again
    /// with a new password (a server leaves the deployment first).
    pub async fn enroll(&self, node: &HostName, role: Role, address: Ipv4Addr) -> Result<String> {
        let fqdn = self.domain.fqdn(node);
        let mut password = self.password(node, false).await?;
        let host = self
            .client
            .ensure_host(&HostSpec {
                fqdn: fqdn.clone(),
                address: Some(address),
                one_time_password: Some(password.clone()),
            })
            .await
            .with_context(|| format!("cannot add {fqdn} to FreeIPA"))?;
        if host.enrolled {
            // FreeIPA holds a keytab for this name, yet the node asks: it
            // has none (only a node without an enrollment asks), so it was
            // rebuilt. The join service registered it at `address` only
            // with a newer credential generation than the one it held
            // (which the operator issues when relaunching a destroyed
            // host), asks it to come from there, and refuses the retired
            // generation: a copy of a running node's user data cannot get
            // here from anywhere but that node.
            password = self.password(node, true).await?;
            readmit(&self.client, &fqdn, address, &password, role).await?;
            self.service_principals(&fqdn, role).await?;
            tracing::info!(host = %fqdn, "freeipa: {fqdn} was rebuilt; it enrolls again");
            return Ok(password);
        }
        if let Some(chosen) = host.one_time_password {
            password = chosen;
        }
        if role == Role::Core {
            ensure_server_member(&self.client, &fqdn).await?;
        }
        self.service_principals(&fqdn, role).await?;
        Ok(password)
    }

    /// The service principals `fqdn`'s certmonger asks as, once the
    /// handoff made their sub-CAs: a host enrolled after it began, and a
    /// rebuilt one (`server_del` removed a server's services with its old
    /// entry), has them before its own handoff asks.
    async fn service_principals(&self, fqdn: &str, role: Role) -> Result<()> {
        let restored = self
            .client
            .restore_service_principals(fqdn, role, &self.realm)
            .await
            .with_context(|| format!("the service principals of {fqdn}"))?;
        for ca in restored {
            tracing::info!(host = %fqdn, "freeipa: {}/{fqdn} is there for it", ca.name());
        }
        Ok(())
    }

    /// `node`'s one-time password: the one kept for it, or (`fresh`, or
    /// none kept) a new one, kept (0600) before FreeIPA hears of it, so a
    /// node asking again after a lost answer gets the one FreeIPA holds.
    async fn password(&self, node: &HostName, fresh: bool) -> Result<String> {
        let mut passwords = self.passwords.lock().await;
        if let (false, Some(kept)) = (fresh, passwords.get(node)) {
            return Ok(kept.clone());
        }
        let password = one_time_password();
        passwords.insert(node.clone(), password.clone());
        let bytes = serde_json::to_vec(&*passwords)?;
        crate::fsutil::write_atomic(&self.file, &bytes, 0o600)?;
        Ok(password)
    }

    /// Replication agreements so that every server has two (when there
    /// are three or more) and losing any one leaves the rest connected: a
    /// ring over the servers in name order, for both suffixes. Three
    /// listings when nothing is missing.
    pub async fn ensure_topology(&self) -> Result<Topology> {
        let servers = self.client.topology_servers().await?;
        let count = servers.len();
        let added = connect_ring(&self.client, servers).await?;
        Ok(Topology {
            servers: count,
            added,
        })
    }

    /// How many servers the site should have: its core hosts.
    pub fn expected_servers(&self) -> usize {
        self.core_hosts
    }
}

/// For each suffix, the servers that manage it in a ring (in name
/// order): how many segments had to be added. A replica whose CA clone
/// is not done yet is in no `ca` ring until it is (FreeIPA would refuse
/// the segment, 3009), so a pass adds what it can and never fails on it.
pub async fn connect_ring(client: &Client, servers: Vec<super::TopologyServer>) -> Result<usize> {
    let mut added = 0;
    for suffix in [Suffix::Domain, Suffix::Ca] {
        let mut names: Vec<String> = servers
            .iter()
            .filter(|s| s.suffixes.iter().any(|x| x == suffix.name()))
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        added += client
            .ensure_segments(suffix, &ring(&names))
            .await
            .with_context(|| format!("cannot connect the servers ({} suffix)", suffix.name()))?;
    }
    Ok(added)
}

/// Let a rebuilt node (`fqdn` at `address`) enroll again with `password`,
/// whatever FreeIPA still holds of it: a server (a core host) first
/// leaves the deployment (`server_del` takes its agreements and its
/// principals, its host entry with them, and refuses when that would cut
/// the other servers apart or leave no CA); then the host is there with
/// this password and no keytab, and a core host is in `ipaservers`.
/// Safe to repeat.
pub async fn readmit(
    client: &Client,
    fqdn: &str,
    address: Ipv4Addr,
    password: &str,
    role: Role,
) -> Result<()> {
    if role == Role::Core {
        client
            .ensure_no_server(fqdn)
            .await
            .with_context(|| format!("cannot remove the old FreeIPA server {fqdn}"))?;
    }
    let host = client
        .ensure_host(&HostSpec {
            fqdn: fqdn.to_owned(),
            address: Some(address),
            one_time_password: Some(password.to_owned()),
        })
        .await
        .with_context(|| format!("cannot add {fqdn} to FreeIPA again"))?;
    // An existing entry keeps its keytab or an earlier password: this
    // password, no keytab. (A host just added has both already.)
    if host.change != super::Change::Created {
        client
            .reenroll_host(fqdn, password)
            .await
            .with_context(|| format!("cannot let {fqdn} enroll again"))?;
    }
    if role == Role::Core {
        ensure_server_member(client, fqdn).await?;
    }
    Ok(())
}

/// `fqdn` in `ipaservers`, so that it may become a replica.
async fn ensure_server_member(client: &Client, fqdn: &str) -> Result<()> {
    client
        .ensure_hostgroup_members(SERVERS_GROUP, &[fqdn.to_owned()])
        .await
        .with_context(|| format!("cannot add {fqdn} to {SERVERS_GROUP}"))?;
    Ok(())
}

/// What one pass over the topology found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub servers: usize,
    pub added: usize,
}

/// The ring over `servers` (each to the next, the last to the first);
/// two servers are one segment, one server none.
pub fn ring(servers: &[String]) -> Vec<(String, String)> {
    match servers.len() {
        0 | 1 => Vec::new(),
        2 => vec![(servers[0].clone(), servers[1].clone())],
        n => (0..n)
            .map(|i| (servers[i].clone(), servers[(i + 1) % n].clone()))
            .collect(),
    }
}

/// A one-time password: 24 characters from an alphabet safe in options
/// files and shells.
pub fn one_time_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Refuse to go on when an earlier run's options are for another kind of
/// install (a node cannot be both a replica and a client).
pub fn check_kind(state: &Path, kind: Kind) -> Result<()> {
    for other in [Kind::Server, Kind::Replica, Kind::Client] {
        if other != kind && state.join(other.options_file()).exists() {
            bail!(
                "{} holds {}, but this node installs as {kind:?}",
                state.display(),
                other.options_file()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_gives_every_server_two_agreements_from_three_up() {
        let names = |n: usize| (1..=n).map(|i| format!("ns{i}")).collect::<Vec<_>>();
        assert!(ring(&names(1)).is_empty());
        assert_eq!(ring(&names(2)).len(), 1);
        for n in 3..7 {
            let segments = ring(&names(n));
            assert_eq!(segments.len(), n);
            for server in names(n) {
                let agreements = segments
                    .iter()
                    .filter(|(l, r)| *l == server || *r == server)
                    .count();
                assert_eq!(agreements, 2, "{server} in a ring of {n}");
            }
            // Losing any one server leaves the rest connected.
            for lost in names(n) {
                let left: Vec<&(String, String)> = segments
                    .iter()
                    .filter(|(l, r)| *l != lost && *r != lost)
                    .collect();
                let mut reached = vec![names(n).into_iter().find(|s| *s != lost).unwrap()];
                loop {
                    let before = reached.len();
                    for (l, r) in &left {
                        if reached.contains(l) && !reached.contains(r) {
                            reached.push(r.clone());
                        } else if reached.contains(r) && !reached.contains(l) {
                            reached.push(l.clone());
                        }
                    }
                    if reached.len() == before {
                        break;
                    }
                }
                assert_eq!(reached.len(), n - 1, "losing {lost} of {n} splits the rest");
            }
        }
    }

    #[test]
    fn freeipa_resolves_through_its_own_dns_once_it_has_one() {
        let root = tempfile::tempdir().unwrap();
        let paths = crate::paths::Paths::under(root.path());
        let state = root.path().join("freeipa-server");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(paths.state_dir()).unwrap();
        // The first server: its own DNS from the start.
        std::fs::write(state.join(Kind::Server.options_file()), "--setup-dns\n").unwrap();
        assert_eq!(container_dns(&paths, &state).unwrap(), "127.0.0.1");
        std::fs::remove_file(state.join(Kind::Server.options_file())).unwrap();
        // A replica installing: the server it installs from, which must
        // be on record.
        std::fs::write(state.join(Kind::Replica.options_file()), "--setup-dns\n").unwrap();
        assert!(container_dns(&paths, &state).is_err());
        record_install_server(&paths, "198.18.0.11".parse().unwrap()).unwrap();
        assert_eq!(container_dns(&paths, &state).unwrap(), "198.18.0.11");
        // Configured: its own.
        std::fs::write(state.join(Kind::Replica.done_marker()), "1\n").unwrap();
        assert_eq!(container_dns(&paths, &state).unwrap(), "127.0.0.1");
    }

    #[test]
    fn one_time_passwords_are_long_and_distinct() {
        let a = one_time_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, one_time_password());
    }
}
