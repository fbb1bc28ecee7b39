//! The phase state on disk: versioned, written atomically, an API like any
//! other. A reader of a newer version refuses it; older versions load.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use node_contract::{HostName, Phase};
use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Phases done, in order.
    pub completed: Vec<Phase>,
    /// This node's VPC address, found by `identify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The bootstrap host's address, found by `join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_address: Option<Ipv4Addr>,
    /// Peers known at join time: name to address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<HostName, Ipv4Addr>,
    /// Whether this node creates the etcd cluster or joins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cluster_state: Option<ClusterState>,
    /// This node joined after the handoff had ended the temporary DNS and
    /// CA (the join answer named FreeIPA's DNS servers, or, on a rebuilt
    /// bootstrap host, its handoff record said so): there is no temporary
    /// DNS to ask or fall back to. Recorded at join, since the route the
    /// handoff writes later no longer tells.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined_after_handoff: bool,
}

/// etcd's `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

impl State {
    pub fn new() -> State {
        State {
            version: STATE_VERSION,
            ..State::default()
        }
    }

    pub fn is_done(&self, phase: Phase) -> bool {
        self.completed.contains(&phase)
    }

    pub fn mark_done(&mut self, phase: Phase) {
        if !self.is_done(phase) {
            self.completed.push(phase);
        }
    }

    /// Load, or a fresh state when there is none yet.
    pub fn load(path: &Path) -> Result<State> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; remove it to start this node's phases over",
                path.display()
            )
        })?;
        if v.version > STATE_VERSION {
            bail!(
                "{} has state version {}, newer than this firstboot ({STATE_VERSION}); \
                 was the node downgraded?",
                path.display(),
                v.version
            );
        }
        let mut state: State = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged", path.display()))?;
        state.version = STATE_VERSION;
        Ok(state)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json(path, self, 0o600)
    }
}

/// Where a rebuilt bootstrap host is now. The peer service writes it
/// (it alone hears the bootstrap host) from a request the bootstrap host
/// signed, made from that address, newer than the last one followed;
/// the phases read the bootstrap host's address through
/// [`bootstrap_address`], so the move reaches them without the peer
/// service touching their state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapMoved {
    /// See [`RECORD_VERSION`].
    #[serde(default = "first_version")]
    pub version: u32,
    pub node: HostName,
    pub address: Ipv4Addr,
    /// The signed request's timestamp: an older request never moves it
    /// back.
    pub since: u64,
}

impl BootstrapMoved {
    /// The record, if any; a damaged or newer one counts as none, said in
    /// the journal (the next signed request writes it again; until then
    /// the address join found stands).
    pub fn load(path: &Path) -> Option<BootstrapMoved> {
        read_record(path).unwrap_or_else(|e| {
            tracing::warn!("{e:#}; the address join found stands until the next news");
            None
        })
    }

    pub fn new(node: HostName, address: Ipv4Addr, since: u64) -> BootstrapMoved {
        BootstrapMoved {
            version: RECORD_VERSION,
            node,
            address,
            since,
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json(path, self, 0o644)
    }
}

/// Where rebuilt peers are now, as the bootstrap host passed it on (see
/// [`crate::join::peer`]): each name's newest news wins, an older one
/// never moves it back. Applied over what join learnt when /etc/hosts is
/// written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersMoved {
    /// See [`RECORD_VERSION`].
    #[serde(default = "first_version")]
    pub version: u32,
    pub peers: BTreeMap<HostName, MovedTo>,
}

impl Default for PeersMoved {
    fn default() -> PeersMoved {
        PeersMoved {
            version: RECORD_VERSION,
            peers: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovedTo {
    pub address: Ipv4Addr,
    /// The news' timestamp.
    pub since: u64,
}

impl PeersMoved {
    /// The record; a missing, damaged or newer one counts as empty, said
    /// in the journal (the next news writes it again).
    pub fn load(path: &Path) -> PeersMoved {
        read_record(path)
            .unwrap_or_else(|e| {
                tracing::warn!("{e:#}; taken as no news of moved peers");
                None
            })
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json(path, self, 0o644)
    }

    /// Take news of `node` at `address` from `since`: whether it is news.
    pub fn take(&mut self, node: &HostName, address: Ipv4Addr, since: u64) -> bool {
        match self.peers.get(node) {
            Some(known) if known.since >= since || known.address == address => false,
            _ => {
                self.peers.insert(node.clone(), MovedTo { address, since });
                true
            }
        }
    }
}

/// The newest credential generation this node has seen of each name that
/// talks to it with a ticket (the bootstrap host, in its join, enrollment
/// and peer messages): an older one is retired and refused (see
/// `node_contract::Generation`). Raised only by a message the site's key
/// vouched for, so nothing but the operator can retire a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownGenerations {
    pub version: u32,
    pub hosts: BTreeMap<HostName, node_contract::Generation>,
}

impl KnownGenerations {
    pub const VERSION: u32 = 1;

    /// The record; a missing one is empty. A damaged or newer one is an
    /// error: read as empty it would let a retired credential back in.
    pub fn load(path: &Path) -> Result<KnownGenerations> {
        let known: Option<KnownGenerations> = crate::fsutil::read_json(path)?;
        match known {
            None => Ok(KnownGenerations {
                version: KnownGenerations::VERSION,
                hosts: BTreeMap::new(),
            }),
            Some(k) if k.version > KnownGenerations::VERSION => bail!(
                "{} has version {}, but this firstboot reads up to version {}",
                path.display(),
                k.version,
                KnownGenerations::VERSION
            ),
            Some(k) => Ok(k),
        }
    }

    /// Take a verified `ticket`: refused if its generation is retired;
    /// a newer generation is recorded (on disk before it counts).
    pub fn admit(path: &Path, ticket: &node_contract::Ticket) -> Result<()> {
        let mut known = KnownGenerations::load(path)?;
        let seen = known.hosts.get(&ticket.node).copied();
        crate::join::protocol::check_generation(ticket, seen)
            .map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
        if seen.is_none_or(|g| ticket.generation > g) {
            known.hosts.insert(ticket.node.clone(), ticket.generation);
            crate::fsutil::write_json(path, &known, 0o600)?;
        }
        Ok(())
    }
}

/// What a rebuilt first server found of the site's FreeIPA among its
/// peers (from their signed answers): it joins that deployment as a
/// replica rather than installing a second one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeipaRejoin {
    /// See [`RECORD_VERSION`].
    #[serde(default = "first_version")]
    pub version: u32,
    pub servers: Vec<FreeipaPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeipaPeer {
    pub node: HostName,
    pub address: Ipv4Addr,
    /// Its IPA CA certificate (PEM).
    pub ca_pem: String,
}

impl FreeipaRejoin {
    pub fn new(servers: Vec<FreeipaPeer>) -> FreeipaRejoin {
        FreeipaRejoin {
            version: RECORD_VERSION,
            servers,
        }
    }

    /// The record, if any; a damaged or newer one is an error (read as
    /// none, a rebuilt first server would install a second FreeIPA).
    pub fn load(path: &Path) -> Result<Option<FreeipaRejoin>> {
        read_record(path)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json(path, self, 0o644)
    }
}

/// The version the small records (`BootstrapMoved`, `PeersMoved`,
/// `FreeipaRejoin`) are written at. They had none at first: a file
/// without one was written in version 1's format, and reads as such.
pub const RECORD_VERSION: u32 = 1;

fn first_version() -> u32 {
    1
}

/// A small record: `None` when missing; an error naming the file when it
/// is damaged or newer than this firstboot reads.
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default = "first_version")]
        version: u32,
    }
    let Some(v) = crate::fsutil::read_json::<Version>(path)? else {
        return Ok(None);
    };
    if v.version > RECORD_VERSION {
        bail!(
            "{} has version {}, but this firstboot reads up to version {RECORD_VERSION}; was \
             the node downgraded?",
            path.display(),
            v.version
        );
    }
    crate::fsutil::read_json(path)
}

/// The bootstrap host's address: where it moved, else where join found it.
pub fn bootstrap_address(paths: &crate::paths::Paths, state: &State) -> Option<Ipv4Addr> {
    BootstrapMoved::load(&paths.bootstrap_moved())
        .map(|m| m.address)
        .or(state.bootstrap_address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_state_is_fresh_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = State::load(&path).unwrap();
        assert_eq!(state, State::new());
        state.mark_done(Phase::Identify);
        state.mark_done(Phase::Identify);
        state.address = Some(Ipv4Addr::new(198, 18, 0, 10));
        state.save(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.completed, [Phase::Identify]);
    }

    #[test]
    fn version_1_files_as_written_load() {
        // A state file exactly as firstboot wrote it at version 1: kept
        // here so a later version must keep loading it.
        let v1 = r#"{"version": 1, "completed": ["identify", "storage"], "address": "198.18.0.11",
            "peers": {"node1": "198.18.0.10"}, "etcd_cluster_state": "existing"}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, v1).unwrap();
        let state = State::load(&path).unwrap();
        assert!(state.is_done(Phase::Storage) && !state.is_done(Phase::Join));
        assert_eq!(state.etcd_cluster_state, Some(ClusterState::Existing));
        assert_eq!(state.address, Some(Ipv4Addr::new(198, 18, 0, 11)));
    }

    #[test]
    fn newer_or_damaged_state_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, r#"{"version": 9, "completed": []}"#).unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .to_string()
            .contains("newer than this firstboot"));
        std::fs::write(&path, "{garbage").unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
    }

    #[test]
    fn known_generations_only_rise_and_a_damaged_record_refuses() {
        use node_contract::{DomainName, Generation, Role, Seed, SigningKey};
        let site = SigningKey::from_seed(&Seed::from_bytes([9; 32]));
        let node1 = HostName::parse("node1").unwrap();
        let ticket = |g: Generation| {
            site.ticket(
                &DomainName::parse("lab.example.org").unwrap(),
                &node1,
                Role::Core,
                g,
                SigningKey::from_seed(&Seed::from_bytes([1; 32])).public_key(),
            )
        };
        let (g1, g2) = (Generation::FIRST, Generation::FIRST.next());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-generations.json");
        KnownGenerations::admit(&path, &ticket(g1)).unwrap();
        KnownGenerations::admit(&path, &ticket(g2)).unwrap();
        let err = KnownGenerations::admit(&path, &ticket(g1)).unwrap_err();
        assert!(err.to_string().contains("retired"), "{err:#}");
        KnownGenerations::admit(&path, &ticket(g2)).unwrap();
        assert_eq!(KnownGenerations::load(&path).unwrap().hosts[&node1], g2);
        // Read as empty, a damaged record would let generation 1 back in.
        std::fs::write(&path, "{garbage").unwrap();
        assert!(KnownGenerations::admit(&path, &ticket(g1)).is_err());
        std::fs::write(&path, r#"{"version": 9, "hosts": {}}"#).unwrap();
        assert!(KnownGenerations::load(&path).is_err());
    }

    /// The small records as firstboot wrote them before they had a
    /// version: kept here so every later version keeps loading them.
    #[test]
    fn unversioned_records_as_written_load_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let moved = dir.path().join("bootstrap-moved.json");
        std::fs::write(
            &moved,
            r#"{"node": "node1", "address": "198.18.0.31", "since": 1700000000}"#,
        )
        .unwrap();
        let loaded = BootstrapMoved::load(&moved).unwrap();
        assert_eq!(
            loaded,
            BootstrapMoved::new(
                HostName::parse("node1").unwrap(),
                Ipv4Addr::new(198, 18, 0, 31),
                1_700_000_000
            )
        );
        loaded.save(&moved).unwrap();
        assert!(std::fs::read_to_string(&moved)
            .unwrap()
            .contains(r#""version": 1"#));

        let peers = dir.path().join("peers-moved.json");
        std::fs::write(
            &peers,
            r#"{"peers": {"node2": {"address": "198.18.0.32", "since": 1700000001}}}"#,
        )
        .unwrap();
        let loaded = PeersMoved::load(&peers);
        assert_eq!(loaded.version, RECORD_VERSION);
        assert_eq!(
            loaded.peers[&HostName::parse("node2").unwrap()].address,
            Ipv4Addr::new(198, 18, 0, 32)
        );

        let rejoin = dir.path().join("freeipa-rejoin.json");
        std::fs::write(
            &rejoin,
            r#"{"servers": [{"node": "node2", "address": "198.18.0.32", "ca_pem": "PEM"}]}"#,
        )
        .unwrap();
        let loaded = FreeipaRejoin::load(&rejoin).unwrap().unwrap();
        assert_eq!(loaded.version, RECORD_VERSION);
        assert_eq!(loaded.servers[0].ca_pem, "PEM");

        // A newer record: an error for what must not be forgotten, none
        // (said in the journal) for news that comes again.
        std::fs::write(&rejoin, r#"{"version": 2, "servers": [], "more": 1}"#).unwrap();
        let err = FreeipaRejoin::load(&rejoin).unwrap_err().to_string();
        assert!(
            err.contains("version 2") && err.contains("freeipa-rejoin.json"),
            "{err}"
        );
        std::fs::write(&moved, r#"{"version": 2, "node": "node1"}"#).unwrap();
        assert_eq!(BootstrapMoved::load(&moved), None);
        std::fs::write(&peers, r#"{"version": 2, "peers": {}}"#).unwrap();
        assert_eq!(PeersMoved::load(&peers), PeersMoved::default());
        // Damaged: the same.
        std::fs::write(&rejoin, "{").unwrap();
        assert!(FreeipaRejoin::load(&rejoin)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
    }
}
