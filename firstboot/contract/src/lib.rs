//! The node contract: what `builder` writes to `/etc/firstboot/node.json`
//! and `firstboot` reads back, and `/run/firstboot/status.json`, which
//! firstboot writes and `builder status` reads. Defined once, here, for
//! both sides, in validated types.
//!
//! The files are versioned. A reader refuses a schema it does not know
//! rather than guessing, because a node that half-understands its own
//! configuration could join the wrong cluster or leak a secret.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

pub mod files;
pub mod fleetlock;
pub mod guard;
pub mod identity;
pub mod names;
pub mod status;

use serde::{Deserialize, Serialize};

pub use identity::{Admission, Generation, PublicKey, Seed, Signature, SigningKey, Ticket};
pub use names::{DomainName, HostName, Realm, Refusal, VpcRange};
pub use status::Phase;

/// Where Ignition writes the contract on every node.
pub const NODE_JSON_PATH: &str = "/etc/firstboot/node.json";

/// The schema version this build writes and reads. Version 2 replaced the
/// site join secret (version 1) with per-node keys and tickets; version 3
/// signs a generation into each ticket (a retired credential is refused
/// everywhere) and gives the bootstrap host a CA-copy key of its own.
pub const SCHEMA_VERSION: u32 = 3;

/// TCP port of the join service on the bootstrap host.
pub const JOIN_PORT: u16 = 7443;
/// TCP port of the peer service on every node.
pub const PEER_PORT: u16 = 7444;

/// Everything a node needs to know at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema: u32,
    pub site: SiteInfo,
    /// This node's host name (a single DNS label, not the FQDN).
    pub node: HostName,
    /// This node's own key and the site's ticket for it.
    pub identity: Identity,
    pub join: JoinConfig,
    pub platform: Platform,
    /// How each service runs on this node's image.
    pub catalog: Catalog,
    /// The FreeIPA passwords: on the bootstrap host (the first FreeIPA
    /// server) only; replicas and clients enroll with one-time passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeipa: Option<FreeIpaSecrets>,
    /// The volumes Ignition prepared, which the storage phase checks.
    #[serde(default, skip_serializing_if = "Storage::is_empty")]
    pub storage: Storage,
}

/// Block storage a node should find in place at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Where the data volume is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_mount: Option<String>,
    /// The swap volume's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_device: Option<String>,
}

impl Storage {
    pub fn is_empty(&self) -> bool {
        self.data_mount.is_none() && self.swap_device.is_none()
    }
}

/// The site as every node sees it. It names the core hosts but not the
/// workers: no node needs the whole host list (the join service learns
/// each joiner's name and role from its ticket), so every config stays
/// the same size however many workers the site has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInfo {
    pub domain: DomainName,
    pub realm: Realm,
    pub vpc_range: VpcRange,
    /// The core hosts, in site-file order. The first is the bootstrap
    /// host; all are etcd members.
    pub core: Vec<HostName>,
    /// How many hosts the site has, core and workers.
    pub host_count: u32,
    /// The site's public key: it signed every node's ticket.
    pub site_key: PublicKey,
}

/// What a host does in the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// FreeIPA server or replica, etcd member, Kubernetes control plane.
    Core,
    /// FreeIPA client and Kubernetes worker.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Core => "core",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This node's identity: its private key (made by builder for this node
/// and generation alone) and the site key's signature over its ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub key: Seed,
    /// Which issue of this host's credential this is (see
    /// [`Generation`]).
    pub generation: Generation,
    pub ticket_signature: Signature,
    /// The bootstrap host only: the key its temporary CAs' sealed copy is
    /// sealed under (`firstboot::backup`). Not the node key, which changes
    /// with each generation: a rebuilt bootstrap host must open the copy
    /// its predecessor sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_backup_key: Option<Seed>,
    /// The site's admission of this credential, when `builder launch`
    /// gave one (see [`Admission`]): it admits a host added after the
    /// bootstrap host's own window closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    pub port: u16,
    /// The join service's address when it is known at launch time;
    /// otherwise nodes probe the VPC range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// What the node's platform provides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// The metadata service's address (169.254.169.254 on DigitalOcean;
    /// a lab address in the lab). The guard closes it to all but root.
    pub metadata: Ipv4Addr,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeIpaSecrets {
    pub admin_password: String,
    pub directory_manager_password: String,
}

/// Which FreeIPA password a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeIpaPassword {
    Admin,
    DirectoryManager,
}

impl FreeIpaPassword {
    pub fn describe(self) -> &'static str {
        match self {
            FreeIpaPassword::Admin => "the FreeIPA admin password",
            FreeIpaPassword::DirectoryManager => "the Directory Manager password",
        }
    }
}

/// Why `ipa-server-install` would refuse `password`, if it would: its
/// knob validators `validate_admin_password` and `validate_dm_password`
/// (freeipa `ipaserver/install/server/install.py`): at least 8
/// characters, printable ASCII, no backslash (pkisilent mishandles it),
/// and for the Directory Manager no leading or trailing whitespace.
/// Spaces, quotes and `$` are fine: the options file quotes them.
pub fn freeipa_password_problem(which: FreeIpaPassword, password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < 8 {
        return Some(format!(
            "it has {chars} characters; FreeIPA needs at least 8"
        ));
    }
    if password.chars().any(|c| (c as u32) < 0x20) {
        return Some(
            "it holds a control character (a tab or a line break), which FreeIPA refuses".into(),
        );
    }
    if password.chars().any(|c| (c as u32) >= 0x7f) {
        return Some("it holds a character outside printable ASCII, which FreeIPA refuses".into());
    }
    if password.contains('\\') {
        return Some(
            "it holds a backslash, which FreeIPA refuses (its CA installer mishandles it)".into(),
        );
    }
    if which == FreeIpaPassword::DirectoryManager && password.trim() != password {
        return Some(
            "it starts or ends with a space, which FreeIPA refuses for the Directory Manager"
                .into(),
        );
    }
    None
}

impl FreeIpaSecrets {
    /// What FreeIPA would refuse in these passwords, one line each.
    pub fn problems(&self) -> Vec<String> {
        [
            (FreeIpaPassword::Admin, &self.admin_password),
            (
                FreeIpaPassword::DirectoryManager,
                &self.directory_manager_password,
            ),
        ]
        .into_iter()
        .filter_map(|(which, p)| {
            freeipa_password_problem(which, p).map(|why| format!("{}: {why}", which.describe()))
        })
        .collect()
    }
}

impl fmt::Debug for FreeIpaSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FreeIpaSecrets { .. }")
    }
}

/// The services of an image, by name (`etcd`, `freeipa-server`, ...).
pub type Catalog = BTreeMap<String, Service>;

/// How one service runs on an image. The units in `units/` take their
/// command from here, so the same unit file serves every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runs", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Service {
    /// A podman container pinned by digest; `command` runs inside it. The
    /// service's state directory (`/var/lib/<service>` on the host) is
    /// mounted at `data` in the container, or at the same path.
    Podman {
        image: String,
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    /// A binary installed on the host image.
    Host { command: Vec<String> },
}

/// Why a node.json could not be read.
#[derive(Debug)]
pub enum ContractError {
    /// Not JSON, or JSON of the wrong shape or with an invalid value.
    Malformed(serde_json::Error),
    /// A schema this build does not know.
    UnknownSchema(u64),
    /// Well-formed but inconsistent (e.g. this node is not in the site).
    Invalid(String),
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractError::Malformed(e) => write!(f, "node.json is malformed: {e}"),
            ContractError::UnknownSchema(v) => write!(
                f,
                "node.json has schema version {v}, but this firstboot reads only version \
                 {SCHEMA_VERSION}; render the site with a builder matching this firstboot"
            ),
            ContractError::Invalid(why) => write!(f, "node.json is inconsistent: {why}"),
        }
    }
}

impl std::error::Error for ContractError {}

impl NodeConfig {
    /// Parse and check a node.json. The schema version is read first, so a
    /// newer file is refused as such rather than as "unknown field".
    pub fn from_json(bytes: &[u8]) -> Result<NodeConfig, ContractError> {
        #[derive(Deserialize)]
        struct Version {
            schema: u64,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(ContractError::Malformed)?;
        if version.schema != u64::from(SCHEMA_VERSION) {
            return Err(ContractError::UnknownSchema(version.schema));
        }
        let config: NodeConfig = serde_json::from_slice(bytes).map_err(ContractError::Malformed)?;
        config.check()?;
        Ok(config)
    }

    /// The canonical bytes of this config: pretty JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("NodeConfig serialises");
        out.push(b'\n');
        out
    }

    /// This node's role: core if the site names it so.
    pub fn role(&self) -> Role {
        if self.site.core.contains(&self.node) {
            Role::Core
        } else {
            Role::Worker
        }
    }

    /// The bootstrap host: the first core host.
    pub fn bootstrap_host(&self) -> &HostName {
        &self.site.core[0]
    }

    pub fn is_bootstrap(&self) -> bool {
        *self.bootstrap_host() == self.node
    }

    /// `name.domain`.
    pub fn fqdn(&self, name: &HostName) -> String {
        self.site.domain.fqdn(name)
    }

    /// This node's signing key.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_seed(&self.identity.key)
    }

    /// This node's ticket, as it shows it to others.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            node: self.node.clone(),
            role: self.role(),
            generation: self.identity.generation,
            public_key: self.signing_key().public_key(),
            signature: self.identity.ticket_signature,
        }
    }

    fn check(&self) -> Result<(), ContractError> {
        let invalid = |why: String| Err(ContractError::Invalid(why));
        if self.site.core.is_empty() {
            return invalid("the site has no core host".into());
        }
        let mut names = self.site.core.clone();
        names.sort();
        names.dedup();
        if names.len() != self.site.core.len() {
            return invalid("a core host is listed twice".into());
        }
        if (self.site.host_count as usize) < self.site.core.len() {
            return invalid(format!(
                "the site counts {} hosts but names {} core hosts",
                self.site.host_count,
                self.site.core.len()
            ));
        }
        if self
            .ticket()
            .verify(&self.site.site_key, &self.site.domain)
            .is_err()
        {
            return invalid(format!(
                "the site key did not sign `{}`'s key as a {} host (the identity belongs to \
                 another node, role or site)",
                self.node,
                self.role()
            ));
        }
        if self.is_bootstrap() != self.identity.ca_backup_key.is_some() {
            return invalid(format!(
                "`{}` {} the CA-copy key, which the bootstrap host alone holds",
                self.node,
                if self.is_bootstrap() {
                    "lacks"
                } else {
                    "holds"
                }
            ));
        }
        match (self.is_bootstrap(), &self.freeipa) {
            (true, None) => invalid(format!(
                "the bootstrap host `{}` lacks the FreeIPA passwords",
                self.node
            )),
            (false, Some(_)) => invalid(format!(
                "`{}` is not the bootstrap host but holds FreeIPA passwords",
                self.node
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&Seed::from_bytes([n; 32]))
    }

    fn name(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    /// A config for `node` of a 4-host site (ns1-ns3 core, www worker);
    /// node keys are [n; 32] for the n-th host, the site key [100; 32].
    fn config(node: &str) -> NodeConfig {
        let hosts = ["ns1", "ns2", "ns3", "www"];
        let index = hosts.iter().position(|h| *h == node).unwrap_or(9) as u8;
        let domain = DomainName::parse("example.com").unwrap();
        let role = if node == "www" {
            Role::Worker
        } else {
            Role::Core
        };
        let ticket = key(100).ticket(
            &domain,
            &name(node),
            role,
            Generation::FIRST,
            key(index).public_key(),
        );
        NodeConfig {
            schema: SCHEMA_VERSION,
            site: SiteInfo {
                domain,
                realm: Realm::parse("EXAMPLE.COM").unwrap(),
                vpc_range: VpcRange::parse("172.30.0.0/24").unwrap(),
                core: vec![name("ns1"), name("ns2"), name("ns3")],
                host_count: 4,
                site_key: key(100).public_key(),
            },
            node: name(node),
            identity: Identity {
                key: Seed::from_bytes([index; 32]),
                generation: Generation::FIRST,
                ticket_signature: ticket.signature,
                ca_backup_key: (node == "ns1").then(|| Seed::from_bytes([99; 32])),
                admission: None,
            },
            join: JoinConfig {
                port: JOIN_PORT,
                address: None,
            },
            platform: Platform {
                metadata: Ipv4Addr::new(169, 254, 169, 254),
            },
            catalog: Catalog::new(),
            freeipa: (node == "ns1").then(|| FreeIpaSecrets {
                admin_password: "a".repeat(12),
                directory_manager_password: "d".repeat(12),
            }),
            storage: Storage::default(),
        }
    }

    #[test]
    fn round_trips_for_every_kind_of_node() {
        for node in ["ns1", "ns2", "www"] {
            let c = config(node);
            assert_eq!(NodeConfig::from_json(&c.to_json()).unwrap(), c);
        }
        assert!(config("ns1").is_bootstrap());
        assert!(!config("ns2").is_bootstrap());
        assert_eq!(config("www").role(), Role::Worker);
        assert_eq!(config("ns3").role(), Role::Core);
    }

    /// A node.json exactly as builder wrote it at schema 3, frozen: a
    /// later firstboot must keep reading it (or bump the schema).
    const FROZEN_V3: &str = include_str!("../tests/node-v3.json");

    #[test]
    fn the_frozen_version_3_file_loads() {
        let c = NodeConfig::from_json(FROZEN_V3.as_bytes()).unwrap();
        assert_eq!(c.node, "node2");
        assert_eq!(c.role(), Role::Core);
        assert_eq!(c.bootstrap_host().as_str(), "node1");
        assert_eq!(c.site.host_count, 4);
        assert!(c.freeipa.is_none());
        assert_eq!(c.identity.generation, Generation::FIRST);
        assert_eq!(c.ticket().verify(&c.site.site_key, &c.site.domain), Ok(()));
    }

    #[test]
    fn version_2_files_are_refused_as_such() {
        // Version 2 tickets carry no generation: their signatures would
        // not verify under version 3's rules, so the schema says it first.
        let v2 = include_str!("../tests/node-v2.json");
        let err = NodeConfig::from_json(v2.as_bytes()).unwrap_err();
        assert!(matches!(err, ContractError::UnknownSchema(2)), "{err}");
    }

    #[test]
    fn unknown_schemas_are_refused_by_version_first() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&config("ns2").to_json()).unwrap();
        value["schema"] = 4.into();
        value["a_field_from_the_future"] = true.into();
        let err = NodeConfig::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ContractError::UnknownSchema(4)), "{err}");
        assert!(err.to_string().contains("reads only version 3"));
        // Version 1 (the site join secret) is refused the same way.
        let v1 = br#"{"schema": 1, "join": {"credential": "00", "site_secret": "s"}}"#;
        assert!(matches!(
            NodeConfig::from_json(v1),
            Err(ContractError::UnknownSchema(1))
        ));
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let refused = |c: &NodeConfig, why: &str| {
            let err = NodeConfig::from_json(&c.to_json()).unwrap_err();
            assert!(matches!(err, ContractError::Invalid(_)), "{why}: {err}");
        };

        let mut c = config("ns2");
        c.identity.key = Seed::from_bytes([3; 32]);
        refused(&c, "another node's key");

        let mut c = config("www");
        c.site.core.push(name("www"));
        refused(&c, "a worker's ticket presented as core");

        let mut c = config("ns2");
        c.site.site_key = key(101).public_key();
        refused(&c, "another site's key");

        let mut c = config("www");
        c.node = name("stranger");
        refused(&c, "a node the site key never vouched for");

        let mut c = config("ns2");
        c.freeipa = config("ns1").freeipa;
        refused(&c, "a replica with FreeIPA passwords");

        let mut c = config("ns1");
        c.freeipa = None;
        refused(&c, "the bootstrap host without FreeIPA passwords");

        let mut c = config("ns2");
        c.identity.generation = Generation::FIRST.next();
        refused(&c, "a generation the site key did not sign");

        let mut c = config("ns2");
        c.identity.ca_backup_key = config("ns1").identity.ca_backup_key;
        refused(&c, "a replica with the CA-copy key");

        let mut c = config("ns1");
        c.identity.ca_backup_key = None;
        refused(&c, "the bootstrap host without the CA-copy key");

        let mut c = config("ns1");
        c.site.host_count = 2;
        refused(&c, "fewer hosts than core hosts");

        for bad in [
            br#"{]"#.as_slice(),
            br#"{"schema": 3, "node": "NS1"}"#.as_slice(),
        ] {
            assert!(matches!(
                NodeConfig::from_json(bad),
                Err(ContractError::Malformed(_))
            ));
        }
    }
}
