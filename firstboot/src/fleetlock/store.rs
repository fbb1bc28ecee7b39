//! The lock server's state in etcd: one semaphore per reboot group and one
//! record per node, each changed only by compare-and-swap on its mod
//! revision. Any core host's lock server may answer any request; two that
//! race on the same group both read, one write wins, the other reads again
//! and decides on what the winner wrote. No lock server is ever the only
//! one that knows.

use std::future::Future;

use anyhow::{Context, Result};
use node_contract::HostName;
use serde::{Deserialize, Serialize};

use super::protocol::{kind, Refusal};
use crate::etcd::Client;

/// Where the state lives in etcd.
pub const PREFIX: &str = "/firstboot/fleetlock/v1/";
/// A compare-and-swap lost this many times in a row is given up: the
/// caller is refused and Zincati asks again later.
const CAS_ATTEMPTS: usize = 8;

/// A reboot group's slots and who holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Semaphore {
    pub holders: Vec<Holder>,
}

/// One held slot. The owner is the node (proved by its certificate); the
/// id is Zincati's, bound to the node at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    pub node: HostName,
    pub id: String,
    /// When the slot was taken (seconds since the epoch).
    pub since: u64,
}

/// What a node told the lock servers about itself, over its own identity
/// certificate (the relay registers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Zincati's app-specific machine id of this node (32 hex digits).
    pub id: String,
    /// Whether every firstboot phase is done on the node.
    pub assembled: bool,
    /// The address it registered from: its lock requests must come from
    /// there too.
    pub address: std::net::Ipv4Addr,
}

fn semaphore_key(group: &str) -> String {
    format!("{PREFIX}semaphore/{group}")
}

fn node_key(node: &HostName) -> String {
    format!("{PREFIX}nodes/{node}")
}

fn store_error(e: anyhow::Error) -> Refusal {
    Refusal::new(503, kind::STORE_UNAVAILABLE, format!("{e:#}"))
}

/// A group's semaphore and its mod revision (0 while there is none: the
/// revision a compare-and-swap names to create it).
async fn read_semaphore(etcd: &Client, group: &str) -> Result<(Semaphore, i64)> {
    let key = semaphore_key(group);
    match etcd.get(key.as_bytes()).await? {
        None => Ok((Semaphore::default(), 0)),
        Some(kv) => {
            let semaphore = serde_json::from_slice(&kv.value)
                .with_context(|| format!("{key} in etcd is damaged"))?;
            Ok((semaphore, kv.mod_revision))
        }
    }
}

/// The holders of a group (for status and tests).
pub async fn holders(etcd: &Client, group: &str) -> Result<Vec<Holder>> {
    Ok(read_semaphore(etcd, group).await?.0.holders)
}

/// RecursiveLock: a holder keeps its slot (locking again is allowed); a
/// newcomer gets one if the group has a free slot and `gate` (the health
/// gates, asked once and only when a slot is free) lets it.
pub async fn lock<G, F>(
    etcd: &Client,
    group: &str,
    slots: usize,
    holder: Holder,
    gate: G,
) -> Result<(), Refusal>
where
    G: FnOnce() -> F,
    F: Future<Output = Result<(), Refusal>>,
{
    update(etcd, group, gate, |semaphore| {
        if semaphore.holders.iter().any(|h| h.node == holder.node) {
            return Ok(false);
        }
        if semaphore.holders.len() >= slots {
            let names: Vec<&str> = semaphore.holders.iter().map(|h| h.node.as_str()).collect();
            return Err(Refusal::new(
                409,
                kind::SEMAPHORE_FULL,
                format!(
                    "group `{group}` allows {slots} reboot(s) at a time, held by {}",
                    names.join(", ")
                ),
            ));
        }
        semaphore.holders.push(holder.clone());
        Ok(true)
    })
    .await
}

/// UnlockIfHeld: a node that holds no slot is answered yes at once; a
/// holder's slot is freed once `gate` (its health is back) lets it, and
/// kept otherwise.
pub async fn unlock<G, F>(
    etcd: &Client,
    group: &str,
    node: &HostName,
    gate: G,
) -> Result<(), Refusal>
where
    G: FnOnce() -> F,
    F: Future<Output = Result<(), Refusal>>,
{
    update(etcd, group, gate, |semaphore| {
        let before = semaphore.holders.len();
        semaphore.holders.retain(|h| &h.node != node);
        Ok(semaphore.holders.len() != before)
    })
    .await
}

/// Read a group's semaphore, let `change` decide (false: nothing to
/// change, the answer is yes), ask `gate` once before the first write,
/// and write by compare-and-swap, reading again after a lost race.
async fn update<G, F>(
    etcd: &Client,
    group: &str,
    gate: G,
    mut change: impl FnMut(&mut Semaphore) -> Result<bool, Refusal>,
) -> Result<(), Refusal>
where
    G: FnOnce() -> F,
    F: Future<Output = Result<(), Refusal>>,
{
    let mut gate = Some(gate);
    for _ in 0..CAS_ATTEMPTS {
        let (mut semaphore, revision) = read_semaphore(etcd, group).await.map_err(store_error)?;
        if !change(&mut semaphore)? {
            return Ok(());
        }
        if let Some(gate) = gate.take() {
            gate().await?;
        }
        let bytes = serde_json::to_vec(&semaphore).expect("a semaphore serialises");
        if etcd
            .compare_and_swap(semaphore_key(group).as_bytes(), revision, &bytes)
            .await
            .map_err(store_error)?
        {
            return Ok(());
        }
    }
    Err(Refusal::new(
        503,
        kind::STORE_UNAVAILABLE,
        format!("group `{group}` changed under {CAS_ATTEMPTS} attempts in a row; ask again"),
    ))
}

/// A node's record, as it registered it.
pub async fn node(etcd: &Client, node: &HostName) -> Result<Option<NodeRecord>> {
    let key = node_key(node);
    etcd.get(key.as_bytes())
        .await?
        .map(|kv| serde_json::from_slice(&kv.value).with_context(|| format!("{key} is damaged")))
        .transpose()
}

/// Every registered node's record.
pub async fn nodes(etcd: &Client) -> Result<Vec<(HostName, NodeRecord)>> {
    let prefix = format!("{PREFIX}nodes/");
    let mut out = Vec::new();
    for kv in etcd.get_prefix(prefix.as_bytes()).await? {
        let key = std::str::from_utf8(&kv.key).context("a key in etcd is not UTF-8")?;
        let name = key.strip_prefix(&prefix).unwrap_or_default();
        let name = HostName::parse(name).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        let record = serde_json::from_slice(&kv.value)
            .with_context(|| format!("{key} in etcd is damaged"))?;
        out.push((name, record));
    }
    Ok(out)
}

/// Record what a node says of itself. Only the node itself gets here
/// (the server takes the name from its certificate), so the last word is
/// its own.
pub async fn register(etcd: &Client, node: &HostName, record: &NodeRecord) -> Result<()> {
    let key = node_key(node);
    for _ in 0..CAS_ATTEMPTS {
        let current = etcd.get(key.as_bytes()).await?;
        let bytes = serde_json::to_vec(record).expect("a record serialises");
        if current.as_ref().map(|c| &c.value) == Some(&bytes) {
            return Ok(());
        }
        let revision = current.map_or(0, |c| c.mod_revision);
        if etcd
            .compare_and_swap(key.as_bytes(), revision, &bytes)
            .await?
        {
            return Ok(());
        }
    }
    anyhow::bail!("{key} changed under {CAS_ATTEMPTS} attempts in a row")
}

/// Whether the site is assembled: at least `host_count` nodes registered
/// as done, and none registered as still assembling (a node rebuilt
/// registers again as assembling, and holds every reboot until it is
/// done). A node that never registered counts as assembling: silence is
/// not "done".
pub async fn assembled(etcd: &Client, host_count: u32) -> Result<(), Refusal> {
    let nodes = nodes(etcd).await.map_err(store_error)?;
    let waiting: Vec<&str> = nodes
        .iter()
        .filter(|(_, r)| !r.assembled)
        .map(|(n, _)| n.as_str())
        .collect();
    let done = nodes.len() - waiting.len();
    if !waiting.is_empty() || done < host_count as usize {
        let mut value = format!("the site is assembling: {done} of {host_count} nodes are done");
        if !waiting.is_empty() {
            value.push_str(&format!("; still assembling: {}", waiting.join(", ")));
        }
        return Err(Refusal::new(503, kind::SITE_ASSEMBLING, value));
    }
    Ok(())
}
