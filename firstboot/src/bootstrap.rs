//! The bootstrap host's temporary CAs (their keys made here, never in
//! user data), settled by the split-brain guard that decides, before any
//! CA exists, whether this is the site's first boot or a rebuild of a
//! host whose cluster lives on. The services that sign with them are
//! `temporary`'s.
//!
//! Nothing here knows the phase engine: it takes the pieces it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use node_contract::{HostName, NodeConfig, Role, PEER_PORT};
use tokio::time::Instant;

use crate::backup::CaBackup;
use crate::certs::PLAN;
use crate::join::peer::ask;
use crate::join::protocol::{PeerAnswer, Site, ADMISSION_WINDOW};
use crate::join::server::Registry;
use crate::join::Credentials;
use crate::paths::Paths;
use crate::pki::TempCa;
use crate::state::ClusterState;

/// How long a majority of core hosts must have said "no cluster here"
/// before the bootstrap host starts one without hearing from the rest: a
/// dead core host does not block a new site forever, and a late one has
/// two minutes to speak up.
pub const GRACE: Duration = Duration::from_secs(120);

/// What the peers' answers amount to.
#[derive(Debug)]
pub enum Verdict {
    /// No cluster exists: make the CAs.
    Fresh,
    /// A cluster exists: restore the newest sealed copy.
    Restore {
        backup: Box<CaBackup>,
        cluster_exists: bool,
        /// Where the peers that answered are (authenticated).
        peers: BTreeMap<HostName, Ipv4Addr>,
        /// The peers that run a FreeIPA server, with its CA.
        freeipa: Vec<crate::state::FreeipaPeer>,
        /// The `etcd` sub-CA the peers' etcd moved to, if it has.
        etcd_sub_ca: Option<String>,
        /// Likewise for the nodes' identities (`firstboot` sub-CA).
        identity_sub_ca: Option<String>,
    },
}

/// Each name's authenticated answers, by the address each came from: a
/// copy of a node's user data answers as well as the node, from elsewhere,
/// and neither answer hides the other.
pub type Answers = BTreeMap<HostName, BTreeMap<Ipv4Addr, PeerAnswer>>;

/// The answers gathered so far, and since when a fresh majority holds.
#[derive(Debug, Default)]
pub struct Discovery {
    answers: Answers,
    backups: Vec<CaBackup>,
    fresh_majority_since: Option<Instant>,
    /// Since when every core host the newest copy does not know has said
    /// it holds no copy of its own.
    unknown_copyless_since: Option<Instant>,
    rounds_with_backup: u32,
}

impl Discovery {
    /// One probing round: ask every peer service in the VPC, keep what is
    /// authenticated. Sealed copies that do not open under this host's key
    /// are reported and ignored.
    pub async fn round(&mut self, config: &NodeConfig, me: &Credentials, own: Ipv4Addr) {
        let site = Site::of(config);
        let others: BTreeSet<&HostName> = config
            .site
            .core
            .iter()
            .filter(|c| **c != config.node)
            .collect();
        let mut found = crate::net::probe(&config.site.vpc_range, PEER_PORT, &[own]);
        let mut asks = tokio::task::JoinSet::new();
        let mut probing = true;
        // Ask each peer as soon as it accepts; end the round once every
        // other core host has answered beyond doubt, or nothing more is
        // coming.
        while probing || !asks.is_empty() {
            tokio::select! {
                next = found.recv(), if probing => match next {
                    Some(address) => {
                        let site = site.clone();
                        let me = me.clone();
                        asks.spawn(async move { (address, ask(&site, &me, own, address, None).await) });
                    }
                    None => probing = false,
                },
                Some(Ok((address, result))) = asks.join_next() => {
                    self.record(me, address, result);
                    if others.iter().all(|c| self.settled(c)) {
                        break;
                    }
                }
            }
        }
    }

    fn record(&mut self, me: &Credentials, address: Ipv4Addr, result: Result<PeerAnswer>) {
        match result {
            Ok(answer) => {
                if let Some(sealed) = &answer.ca_backup {
                    let Some(key) = &me.backup_key else {
                        return;
                    };
                    match crate::backup::open(key, sealed) {
                        Ok(backup) => self.backups.push(backup),
                        Err(e) => {
                            tracing::warn!(peer = %answer.node.node, "a CA copy from {address} was refused: {e:#}")
                        }
                    }
                }
                let node = answer.node.node.clone();
                let heard = self.answers.entry(node.clone()).or_default();
                if heard.insert(address, answer).is_none() && heard.len() > 1 {
                    tracing::warn!(peer = %node, "{node} answered from {:?}", heard.keys().collect::<Vec<_>>());
                }
            }
            Err(e) => tracing::debug!("peer {address}: {e:#}"),
        }
    }

    /// The newest sealed copy heard.
    fn newest(&self) -> Option<&CaBackup> {
        self.backups.iter().max_by_key(|b| b.generation)
    }

    /// Whether core host `node` has answered beyond doubt: from the address
    /// the newest copy registers for it; before any copy, from a single
    /// address. Until every core host has, a round asks every address that
    /// accepts, so the genuine node is heard beside a copy of its user data
    /// answering elsewhere.
    fn settled(&self, node: &HostName) -> bool {
        let Some(heard) = self.answers.get(node) else {
            return false;
        };
        match self.newest() {
            Some(newest) => newest
                .registry
                .get(node)
                .is_some_and(|at| heard.contains_key(at)),
            None => heard.len() == 1,
        }
    }

    /// Whether to wait for core hosts the newest copy does not know (they
    /// joined after it was sealed): each one's own copy knows it, and a
    /// copy of its user data answers as well as it does, from anywhere.
    /// One that says it holds no copy (it has not joined, or lost its disk
    /// as well) is waited for `GRACE`, then the rest goes ahead without
    /// it: it joins through the join service like a new host, and is never
    /// taken from what it answered here.
    fn waiting_for_unknown_core(
        &mut self,
        others: &BTreeSet<&HostName>,
        newest: &CaBackup,
        now: Instant,
    ) -> bool {
        let unknown: Vec<&&HostName> = others
            .iter()
            .filter(|node| !newest.registry.contains_key(**node))
            .collect();
        if unknown.is_empty() {
            self.unknown_copyless_since = None;
            return false;
        }
        let copyless = unknown.iter().all(|node| {
            self.answers.get(**node).is_some_and(|heard| {
                heard
                    .values()
                    .any(|a| a.node.role == Role::Core && a.ca_backup.is_none())
            })
        });
        if !copyless {
            self.unknown_copyless_since = None;
            return true;
        }
        let since = *self.unknown_copyless_since.get_or_insert(now);
        now.duration_since(since) < GRACE
    }

    /// Decide, if the answers allow it. `core` are the site's core hosts.
    pub fn verdict(&mut self, core: &[HostName], me: &HostName, now: Instant) -> Option<Verdict> {
        let others: BTreeSet<&HostName> = core.iter().filter(|c| *c != me).collect();
        // Each other core host that answered, with all it said.
        let answered_core: Vec<Vec<&PeerAnswer>> = self
            .answers
            .iter()
            .filter(|(node, _)| others.contains(node))
            .map(|(_, heard)| {
                heard
                    .values()
                    .filter(|a| a.node.role == Role::Core)
                    .collect::<Vec<_>>()
            })
            .filter(|said| !said.is_empty())
            .collect();
        let answered = answered_core.len();
        let cluster_exists = answered_core.iter().flatten().any(|a| a.etcd_data);
        // Fresh only if all it said, from wherever, was fresh.
        let fresh = answered_core
            .iter()
            .filter(|said| said.iter().all(|a| !a.etcd_data && a.ca_backup.is_none()))
            .count();
        if !self.backups.is_empty() {
            // Give the others a round or two to answer too: the newest
            // copy wins, and every copy holds the same CAs.
            self.rounds_with_backup += 1;
            if answered < others.len() && self.rounds_with_backup < 3 {
                return None;
            }
            let newest = self.newest().cloned().expect("not empty");
            if self.waiting_for_unknown_core(&others, &newest, now) {
                return None;
            }
            let vouched = vouched_for(&self.answers, &newest);
            let freeipa = vouched
                .iter()
                .filter(|(node, _)| others.contains(node))
                .filter_map(|(node, address)| {
                    let a = &self.answers[node][address];
                    (a.node.role == Role::Core).then_some(())?;
                    Some(crate::state::FreeipaPeer {
                        node: node.clone(),
                        address: *address,
                        ca_pem: a.freeipa_ca.clone()?,
                    })
                })
                .collect();
            let etcd_sub_ca = vouched
                .iter()
                .filter(|(node, _)| others.contains(node))
                .find_map(|(node, address)| self.answers[node][address].etcd_sub_ca.clone());
            let identity_sub_ca = vouched
                .iter()
                .filter(|(node, _)| others.contains(node))
                .find_map(|(node, address)| self.answers[node][address].identity_sub_ca.clone());
            return Some(Verdict::Restore {
                freeipa,
                etcd_sub_ca,
                identity_sub_ca,
                cluster_exists,
                peers: vouched,
                backup: Box::new(newest),
            });
        }
        if fresh == others.len() {
            return Some(Verdict::Fresh);
        }
        // This host counts as fresh too.
        if (fresh + 1) * 2 > core.len() {
            let since = *self.fresh_majority_since.get_or_insert(now);
            if now.duration_since(since) >= GRACE {
                return Some(Verdict::Fresh);
            }
        } else {
            self.fresh_majority_since = None;
        }
        None
    }

    /// For progress lines: who answered.
    pub fn summary(&self, core: &[HostName]) -> String {
        let answered: Vec<&str> = core
            .iter()
            .filter(|c| self.answers.contains_key(*c))
            .map(|c| c.as_str())
            .collect();
        let mut line = format!(
            "{} of {} other core hosts answered ({})",
            answered.len(),
            core.len() - 1,
            answered.join(", ")
        );
        if let Some(newest) = self.newest() {
            let unknown: Vec<&str> = core
                .iter()
                .filter(|c| !newest.registry.contains_key(*c))
                .map(|c| c.as_str())
                .collect();
            if !unknown.is_empty() {
                line.push_str(&format!(
                    "; the newest CA copy (generation {}) does not know {}: waiting for their own",
                    newest.generation,
                    unknown.join(", ")
                ));
            }
        }
        line
    }
}

/// The answering peers a rebuilt bootstrap host may take for what they
/// say they are, by where they answered from: a host the sealed copy
/// registers counts only at its sealed address, and with a credential no
/// older than the sealed generation (a stranger holding a copy of its
/// user data answers from elsewhere, or with a retired credential); a
/// worker the copy does not know (it joined after the copy was sealed)
/// only if it answered from a single address; a core host the copy does
/// not know never (it joins through the join service). Silence changes
/// nothing: a sealed host that did not answer keeps its sealed address.
pub fn vouched_for(answers: &Answers, sealed: &CaBackup) -> BTreeMap<HostName, Ipv4Addr> {
    let mut vouched = BTreeMap::new();
    for (node, heard) in answers {
        let known =
            crate::join::protocol::known_generation(&sealed.registry, &sealed.generations, node);
        let current: BTreeMap<Ipv4Addr, &PeerAnswer> = heard
            .iter()
            .filter(|(address, answer)| {
                let ok = crate::join::protocol::check_generation(&answer.node, known).is_ok();
                if !ok {
                    tracing::warn!(peer = %node, "{node} answered from {address} with a retired credential: ignored");
                }
                ok
            })
            .map(|(address, answer)| (*address, answer))
            .collect();
        match sealed.registry.get(node) {
            Some(at) => {
                for address in current.keys().filter(|a| *a != at) {
                    tracing::warn!(
                        peer = %node,
                        "{node} answered from {address}, but the sealed registry has it at {at}: ignored"
                    );
                }
                if current.contains_key(at) {
                    vouched.insert(node.clone(), *at);
                }
            }
            None if current.values().any(|a| a.node.role == Role::Core) => tracing::warn!(
                peer = %node,
                "{node} is a core host the sealed registry does not know: ignored"
            ),
            None if current.len() > 1 => tracing::warn!(
                peer = %node,
                "{node} answered from more than one address and the sealed registry does not know it: ignored"
            ),
            None => {
                if let Some(address) = current.keys().next() {
                    vouched.insert(node.clone(), *address);
                }
            }
        }
    }
    vouched
}

/// What `ensure_ca` settled.
pub struct Settled {
    /// None once the handoff ended the temporary CA.
    pub ca: Option<TempCa>,
    pub registry: Registry,
    /// Set when a rebuilt bootstrap host found a cluster to rejoin.
    pub cluster_state: Option<ClusterState>,
    /// Restored from the peers' sealed copies: this host was rebuilt.
    pub restored: bool,
}

/// The CAs: from disk, else from the peers' sealed copies, else new, but
/// only once the peers have said no cluster exists. Probes for at most
/// `patience`; then an error, and the phase engine tries again.
pub async fn ensure_ca(
    paths: &Paths,
    config: &NodeConfig,
    own: Ipv4Addr,
    discovery: &mut Discovery,
    patience: Duration,
) -> Result<Settled> {
    let domain = config.site.domain.as_str();
    if crate::join::server::HandoffBook::temporary_ended_at(paths)? {
        // The handoff ended the temporary CA: there is none to find, here
        // or with the peers, and none is made.
        let registry = Registry::load(&paths.registry_file())?
            .context("the temporary CA ended, and this host's registry is gone")?;
        return Ok(Settled {
            ca: None,
            registry,
            cluster_state: None,
            restored: false,
        });
    }
    if let Some(ca) = TempCa::load_current(&paths.ca_dir(), domain, &PLAN.intermediates())? {
        let registry = Registry::load(&paths.registry_file())?.unwrap_or_else(|| Registry {
            admission_deadline: crate::status::now() + ADMISSION_WINDOW,
            ..Registry::default()
        });
        return Ok(Settled {
            ca: Some(ca),
            registry,
            cluster_state: None,
            restored: false,
        });
    }
    let me = Credentials::of(config);
    let deadline = Instant::now() + patience;
    let verdict = loop {
        discovery.round(config, &me, own).await;
        if let Some(verdict) = discovery.verdict(&config.site.core, &config.node, Instant::now()) {
            break verdict;
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "waiting for the core hosts to say whether a cluster exists: {}",
                discovery.summary(&config.site.core)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let settled = match verdict {
        Verdict::Fresh => {
            let ca = TempCa::create(domain, &PLAN.intermediates())?;
            tracing::info!(
                "no cluster exists: created the temporary CAs for {}",
                config.site.domain
            );
            Settled {
                ca: Some(ca),
                registry: Registry {
                    admission_deadline: crate::status::now() + ADMISSION_WINDOW,
                    ..Registry::default()
                },
                cluster_state: None,
                restored: false,
            }
        }
        Verdict::Restore {
            backup,
            cluster_exists,
            peers,
            freeipa,
            etcd_sub_ca,
            identity_sub_ca,
        } => {
            if let Some(sub_ca) = &etcd_sub_ca {
                crate::handoff::rejoin::etcd_from_freeipa(paths, config, &freeipa, sub_ca).await?;
            }
            if let Some(sub_ca) = &identity_sub_ca {
                crate::handoff::rejoin::identity_from_freeipa(paths, config, &freeipa, sub_ca)
                    .await?;
            }
            if !freeipa.is_empty() {
                tracing::warn!(
                    "the site's FreeIPA runs on {:?}: this host joins it as a replica",
                    freeipa.iter().map(|p| p.node.as_str()).collect::<Vec<_>>()
                );
                crate::state::FreeipaRejoin::new(freeipa).save(&paths.freeipa_rejoin())?;
            }
            let mut ca = backup.ca().context("the peers' CA copy")?;
            match &mut ca {
                // A copy sealed before a row of the plan was added lacks
                // its intermediate: made now, under the restored root.
                Some(ca) => {
                    ca.complete(config.site.domain.as_str(), &PLAN.intermediates())?;
                }
                // The site's handoff ended the temporary CA: this host
                // serves no temporary service again, and its join
                // service certifies through FreeIPA.
                None => {
                    tracing::warn!(
                        "the site's temporary CA ended with its handoff: this host restores its \
                         registry only"
                    );
                    crate::join::server::HandoffBook {
                        temporary_ended: true,
                        ..Default::default()
                    }
                    .save(paths)?;
                }
            }
            let mut hosts = backup.registry.clone();
            hosts.extend(peers);
            hosts.remove(&config.node);
            tracing::warn!(
                "a cluster already exists (CA copy generation {}, peers {:?}): rejoining it with the \
                 restored CAs, not starting a second one",
                backup.generation,
                hosts.keys().map(|h| h.as_str()).collect::<Vec<_>>()
            );
            Settled {
                ca,
                registry: Registry {
                    generation: backup.generation + 1,
                    hosts,
                    generations: backup.generations.clone(),
                    admission_deadline: backup.admission_deadline,
                    added_core: backup.added_core.clone(),
                    ..Registry::default()
                },
                cluster_state: cluster_exists.then_some(ClusterState::Existing),
                restored: true,
            }
        }
    };
    // The registry first: a crash before the CA is saved starts over
    // cleanly (no CA on disk), never with a CA and no registry.
    settled.registry.save(&paths.registry_file())?;
    if let Some(ca) = &settled.ca {
        ca.save(&paths.ca_dir())?;
    }
    Ok(settled)
}

#[cfg(test)]
mod tests;
