//! The node contract: what `builder` writes to `/etc/firstboot/node.json`
//! and `firstboot` reads back. Defined once, here, for both sides.
//!
//! The file is versioned. A reader refuses a schema it does not know
//! rather than guessing, because a node that half-understands its own
//! configuration could join the wrong cluster or leak a secret.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

pub mod files;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where Ignition writes the contract on every node.
pub const NODE_JSON_PATH: &str = "/etc/firstboot/node.json";

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// TCP port of the join service on the bootstrap host.
pub const JOIN_PORT: u16 = 7443;

/// Everything a node needs to know at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema: u32,
    pub site: SiteInfo,
    /// This node's host name (a single DNS label, not the FQDN).
    pub node: String,
    pub join: JoinConfig,
    /// How each service runs on this node's image.
    pub catalog: Catalog,
    /// Passwords FreeIPA servers and replicas need; absent on other nodes.
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

/// The site as every node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInfo {
    pub domain: String,
    pub realm: String,
    /// The site VPC range in CIDR notation, e.g. `10.118.0.0/24`.
    pub vpc_range: String,
    /// Every host, in site-file order. The first is the bootstrap host.
    pub hosts: Vec<HostEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub role: Role,
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

/// How this node proves itself to the join service, or, on the bootstrap
/// host, how it checks the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    pub port: u16,
    /// Hex HMAC-SHA256 of this node's name under the site join secret.
    pub credential: String,
    /// The site join secret itself: only on the bootstrap host, which must
    /// derive every other node's credential to check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_secret: Option<String>,
    /// The join service's address when it is known at launch time;
    /// otherwise nodes probe the VPC range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeIpaSecrets {
    pub admin_password: String,
    pub directory_manager_password: String,
}

/// The services of an image, by name (`etcd`, `freeipa-server`, ...).
pub type Catalog = BTreeMap<String, Service>;

/// How one service runs on an image. The units in `units/` take their
/// command from here, so the same unit file serves every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runs", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Service {
    /// A podman container pinned by digest; `command` runs inside it.
    Podman { image: String, command: Vec<String> },
    /// A binary installed on the host image.
    Host { command: Vec<String> },
}

/// Derive a node's join credential from the site secret and its name.
///
/// Domain-separated so the same secret can key other derivations later.
pub fn join_credential(site_secret: &str, node: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(site_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"firstboot join credential v1\0");
    mac.update(node.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why a node.json could not be read.
#[derive(Debug)]
pub enum ContractError {
    /// Not JSON, or JSON of the wrong shape.
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

    /// This node's entry in the site.
    pub fn me(&self) -> Option<&HostEntry> {
        self.site.hosts.iter().find(|h| h.name == self.node)
    }

    /// The bootstrap host: the first core host of the site.
    pub fn bootstrap_host(&self) -> Option<&HostEntry> {
        self.site.hosts.iter().find(|h| h.role == Role::Core)
    }

    pub fn is_bootstrap(&self) -> bool {
        self.bootstrap_host().is_some_and(|h| h.name == self.node)
    }

    fn check(&self) -> Result<(), ContractError> {
        let invalid = |why: String| Err(ContractError::Invalid(why));
        let Some(me) = self.me() else {
            return invalid(format!(
                "this node `{}` is not among the site's hosts",
                self.node
            ));
        };
        if self.bootstrap_host().is_none() {
            return invalid("the site has no core host".into());
        }
        let bootstrap = self.is_bootstrap();
        match (&self.join.site_secret, bootstrap) {
            (None, true) => return invalid("the bootstrap host lacks the site join secret".into()),
            (Some(_), false) => {
                return invalid(format!(
                    "`{}` is not the bootstrap host but holds the site join secret",
                    self.node
                ))
            }
            (Some(secret), true) if join_credential(secret, &self.node) != self.join.credential => {
                return invalid("the join credential does not match the site secret".into())
            }
            _ => {}
        }
        if self.join.credential.len() != 64 || hex::decode(&self.join.credential).is_err() {
            return invalid("the join credential is not 64 hex digits".into());
        }
        if me.role == Role::Core && self.freeipa.is_none() {
            return invalid(format!(
                "core host `{}` lacks the FreeIPA passwords",
                self.node
            ));
        }
        if me.role == Role::Worker && self.freeipa.is_some() {
            return invalid(format!(
                "worker `{}` must not hold FreeIPA passwords",
                self.node
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-join-secret";

    fn config(node: &str) -> NodeConfig {
        let hosts = ["ns1", "ns2", "ns3", "www"];
        let role = |n: &str| if n == "www" { Role::Worker } else { Role::Core };
        NodeConfig {
            schema: SCHEMA_VERSION,
            site: SiteInfo {
                domain: "example.com".into(),
                realm: "EXAMPLE.COM".into(),
                vpc_range: "172.30.0.0/24".into(),
                hosts: hosts
                    .iter()
                    .map(|h| HostEntry {
                        name: (*h).into(),
                        role: role(h),
                    })
                    .collect(),
            },
            node: node.into(),
            join: JoinConfig {
                port: JOIN_PORT,
                credential: join_credential(SECRET, node),
                site_secret: (node == "ns1").then(|| SECRET.into()),
                address: None,
            },
            catalog: Catalog::new(),
            freeipa: (role(node) == Role::Core).then(|| FreeIpaSecrets {
                admin_password: "a".repeat(12),
                directory_manager_password: "d".repeat(12),
            }),
            storage: Storage::default(),
        }
    }

    #[test]
    fn credentials_match_an_independent_hmac() {
        // Python: hmac.new(b"test-join-secret",
        //   b"firstboot join credential v1\x00ns2", hashlib.sha256).hexdigest()
        assert_eq!(
            join_credential(SECRET, "ns2"),
            "8e5512b0ae42bb06caae42d28b5fe83c7fc06281927cb47960b1a6645dc9a7e0"
        );
        assert_ne!(
            join_credential(SECRET, "ns2"),
            join_credential(SECRET, "ns3")
        );
    }

    #[test]
    fn round_trips_for_every_kind_of_node() {
        for node in ["ns1", "ns2", "www"] {
            let c = config(node);
            assert_eq!(NodeConfig::from_json(&c.to_json()).unwrap(), c);
        }
        assert!(config("ns1").is_bootstrap());
        assert!(!config("ns2").is_bootstrap());
    }

    #[test]
    fn unknown_schemas_are_refused_by_version_first() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&config("ns2").to_json()).unwrap();
        value["schema"] = 2.into();
        value["a_field_from_the_future"] = true.into();
        let err = NodeConfig::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ContractError::UnknownSchema(2)), "{err}");
        assert!(err.to_string().contains("reads only version 1"));
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let mut c = config("ns2");
        c.join.site_secret = Some(SECRET.into());
        assert!(
            NodeConfig::from_json(&c.to_json()).is_err(),
            "non-bootstrap with the secret"
        );

        let mut c = config("ns1");
        c.join.credential = join_credential(SECRET, "ns2");
        assert!(
            NodeConfig::from_json(&c.to_json()).is_err(),
            "credential of another node"
        );

        let mut c = config("www");
        c.node = "stranger".into();
        assert!(
            NodeConfig::from_json(&c.to_json()).is_err(),
            "node not in the site"
        );

        let mut c = config("www");
        c.freeipa = config("ns2").freeipa;
        assert!(
            NodeConfig::from_json(&c.to_json()).is_err(),
            "worker with passwords"
        );

        assert!(matches!(
            NodeConfig::from_json(b"{]"),
            Err(ContractError::Malformed(_))
        ));
    }
}
