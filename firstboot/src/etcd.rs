//! A small etcd v3 client over etcd's own JSON gateway (grpc-gateway,
//! served on the client port under `/v3/`, in etcd 3.4 and 3.5 alike),
//! with mutual TLS from the certificate plan's etcd row.
//!
//! Why not `etcdctl`: Fedora CoreOS has none on the host (etcd runs from
//! its container image), so what firstboot asks etcd it asks itself, in
//! production as in the lab. The lab's real etcd 3.4 is what the tests
//! run against.
//!
//! The wire, as etcd serves it: every call is a POST of the request
//! message as JSON; keys and values are base64; 64-bit integers are JSON
//! strings, and fields at their default value (zero, false, empty) are
//! left out of answers (protobuf's JSON mapping; etcd's gateway marshals
//! with the proto field names: `etcd/api/etcdserverpb/rpc.proto`, served
//! by `server/embed/serve.go`). An error is an HTTP status other than 200
//! with `{"error", "code", "message"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::paths::Paths;

/// One exchange with one member, unless the client is given its own
/// limit.
const EXCHANGE: Duration = Duration::from_secs(10);

/// A member to ask: the name its certificate carries, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub address: SocketAddr,
}

/// Asks the members it knows, in turn, until one answers.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    endpoints: Vec<Endpoint>,
    exchange: Duration,
}

/// A key and its value, with etcd's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// One member's own view (`maintenance/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub member_id: u64,
    /// The leader's member id, 0 when it knows none.
    pub leader: u64,
    pub raft_term: u64,
    /// The last raft entry it has, and the last it has applied.
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub version: String,
    /// What it reports as wrong (etcd 3.4 and later): `NOSPACE`, ...
    pub errors: Vec<String>,
}

/// A member of the cluster (`cluster/member/list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until a member added by `member add` has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Client {
    /// A client presenting this node's etcd certificate (the plan's etcd
    /// row; read now, so a renewed certificate is used from the next
    /// client on) and trusting what its trust file holds.
    pub fn for_node(paths: &Paths, endpoints: Vec<Endpoint>) -> Result<Client> {
        Client::for_slot(&crate::certs::plan::ETCD.slot(paths), endpoints)
    }

    /// A client on a slot's files as they are now.
    pub fn for_slot(slot: &crate::certs::Slot, endpoints: Vec<Endpoint>) -> Result<Client> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        Client::new(
            &read(&slot.ca)?,
            &read(&slot.cert)?,
            &read(&slot.key)?,
            endpoints,
        )
    }

    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<Client> {
        if endpoints.is_empty() {
            bail!("no etcd member to ask");
        }
        Ok(Client {
            config: crate::https::mtls_config(ca_pem, cert_pem, key_pem)?,
            endpoints,
            exchange: EXCHANGE,
        })
    }

    /// The same client, giving each member `limit` to answer (a caller
    /// that must itself answer within a few seconds, as the lock server
    /// must its relay).
    pub fn with_exchange_limit(mut self, limit: Duration) -> Client {
        self.exchange = limit;
        self
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// `path` at one member.
    pub async fn call_at<T: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        path: &str,
        request: serde_json::Value,
    ) -> Result<T> {
        let answer = crate::https::post_with(
            self.config.clone(),
            endpoint.address,
            &endpoint.name,
            path,
            serde_json::to_vec(&request)?,
            self.exchange,
        )
        .await
        .with_context(|| format!("etcd at {} ({})", endpoint.name, endpoint.address))?;
        if answer.status != 200 {
            let why = serde_json::from_slice::<GatewayError>(&answer.body)
                .map(|e| e.message.or(e.error).unwrap_or_default())
                .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).trim().to_owned());
            bail!(
                "etcd at {} answered {path} with {}: {why}",
                endpoint.name,
                answer.status
            );
        }
        serde_json::from_slice(&answer.body).with_context(|| {
            format!(
                "etcd at {}: {path}: an answer not as etcd writes it",
                endpoint.name
            )
        })
    }

    /// `path` at the first member that answers. A member's refusal (an
    /// HTTP error) is an answer too: the next is asked only when one
    /// cannot be reached.
    async fn call<T: DeserializeOwned>(&self, path: &str, request: serde_json::Value) -> Result<T> {
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            match self.call_at(endpoint, path, request.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        Err(anyhow!(
            "no etcd member answered {path}: {}",
            errors.join("; ")
        ))
    }

    /// The key's value, read through the leader (linearizable: it needs
    /// a quorum, which is what makes it a health check).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>> {
        let answer: RangeResponse = self
            .call("/v3/kv/range", json!({ "key": B64.encode(key) }))
            .await?;
        answer.kvs.into_iter().next().map(Kv::try_from).transpose()
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<Kv>> {
        let answer: RangeResponse = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            )
            .await?;
        answer.kvs.into_iter().map(Kv::try_from).collect()
    }

    /// Set the key; the store's revision after the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64> {
        let answer: PutResponse = self
            .call(
                "/v3/kv/put",
                json!({ "key": B64.encode(key), "value": B64.encode(value) }),
            )
            .await?;
        Ok(answer.header.revision)
    }

    /// Set the key only if its last change is `mod_revision` (0: only if
    /// it does not exist). Whether it was set.
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        mod_revision: i64,
        value: &[u8],
    ) -> Result<bool> {
        let put = json!({ "request_put": { "key": B64.encode(key), "value": B64.encode(value) } });
        self.if_unchanged(key, mod_revision, put).await
    }

    /// Delete the key only if its last change is `mod_revision`.
    pub async fn delete_if(&self, key: &[u8], mod_revision: i64) -> Result<bool> {
        let delete = json!({ "request_delete_range": { "key": B64.encode(key) } });
        self.if_unchanged(key, mod_revision, delete).await
    }

    /// `operation` in a transaction that runs it only if the key's last
    /// change is `mod_revision`; whether it ran.
    async fn if_unchanged(
        &self,
        key: &[u8],
        mod_revision: i64,
        operation: serde_json::Value,
    ) -> Result<bool> {
        let answer: TxnResponse = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{
                        "key": B64.encode(key),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": mod_revision.to_string(),
                    }],
                    "success": [operation],
                }),
            )
            .await?;
        Ok(answer.succeeded)
    }

    /// One member's own status.
    pub async fn status(&self, endpoint: &Endpoint) -> Result<Status> {
        let answer: StatusResponse = self
            .call_at(endpoint, "/v3/maintenance/status", json!({}))
            .await?;
        Ok(Status {
            member_id: answer.header.member_id,
            leader: answer.leader,
            raft_term: answer.raft_term,
            raft_index: answer.raft_index,
            raft_applied_index: answer.raft_applied_index,
            version: answer.version,
            errors: answer.errors,
        })
    }

    pub async fn member_list(&self) -> Result<Vec<Member>> {
        let answer: MemberListResponse = self.call("/v3/cluster/member/list", json!({})).await?;
        Ok(answer.members.into_iter().map(Member::from).collect())
    }

    /// Add a (voting) member by its peer URL; its id.
    pub async fn member_add(&self, peer_url: &str) -> Result<u64> {
        let answer: MemberAddResponse = self
            .call("/v3/cluster/member/add", json!({ "peerURLs": [peer_url] }))
            .await?;
        Ok(answer.member.id)
    }

    pub async fn member_remove(&self, id: u64) -> Result<()> {
        let _: serde_json::Value = self
            .call("/v3/cluster/member/remove", json!({ "ID": id.to_string() }))
            .await?;
        Ok(())
    }
}

/// The end of the range of keys under `prefix` (etcd's `GetPrefixRangeEnd`:
/// the prefix with its last byte below 0xff incremented, the rest cut).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

// The answers, as the gateway writes them.

#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A 64-bit integer as protobuf's JSON mapping writes it: a string (a
/// number is taken too, as the mapping's parsers do).
fn int64<'de, D: Deserializer<'de>, T: std::str::FromStr + TryFrom<u64> + TryFrom<i64>>(
    d: D,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    let bad = || serde::de::Error::custom("not a 64-bit integer");
    match Wire::deserialize(d)? {
        Wire::Text(text) => text.parse().map_err(|_| bad()),
        Wire::Unsigned(n) => T::try_from(n).map_err(|_| bad()),
        Wire::Signed(n) => T::try_from(n).map_err(|_| bad()),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    member_id: u64,
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct WireKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    version: i64,
}

impl TryFrom<WireKv> for Kv {
    type Error = anyhow::Error;
    fn try_from(kv: WireKv) -> Result<Kv> {
        Ok(Kv {
            key: B64.decode(&kv.key).context("etcd: a key not in base64")?,
            value: B64
                .decode(&kv.value)
                .context("etcd: a value not in base64")?,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        })
    }
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<WireKv>,
}

#[derive(Deserialize)]
struct PutResponse {
    header: Header,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct StatusResponse {
    header: Header,
    #[serde(default)]
    version: String,
    #[serde(default, deserialize_with = "int64")]
    leader: u64,
    // These three are spelled so in rpc.proto itself.
    #[serde(default, rename = "raftIndex", deserialize_with = "int64")]
    raft_index: u64,
    #[serde(default, rename = "raftTerm", deserialize_with = "int64")]
    raft_term: u64,
    #[serde(default, rename = "raftAppliedIndex", deserialize_with = "int64")]
    raft_applied_index: u64,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct WireMember {
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(default, rename = "clientURLs")]
    client_urls: Vec<String>,
    #[serde(default, rename = "isLearner")]
    is_learner: bool,
}

impl From<WireMember> for Member {
    fn from(m: WireMember) -> Member {
        Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

#[derive(Deserialize)]
struct MemberListResponse {
    #[serde(default)]
    members: Vec<WireMember>,
}

#[derive(Deserialize)]
struct MemberAddResponse {
    member: WireMember,
}

#[cfg(test)]
pub(crate) mod tests;
