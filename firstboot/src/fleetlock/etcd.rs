//! A small etcd v3 client over etcd's JSON gateway (the gRPC gateway that
//! etcd 3.4 and later serve under `/v3/` on the client port: etcd
//! `Documentation/dev-guide/api_grpc_gateway.md`): keys and values travel
//! base64-encoded, 64-bit numbers as strings, and fields at their zero
//! value are left out (proto3 JSON), so a missing `succeeded` means false.
//!
//! Why not etcdctl, as the etcd phase runs it: Fedora CoreOS runs etcd in
//! a container and has no etcdctl on the host, and the lock server asks
//! etcd several questions per request. The client tries each endpoint in
//! turn, so one member down changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::certs::Slot;

/// How long one call to one member may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers above this are not read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// One member's client URL, `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            bail!("etcd endpoint `{url}` is neither http:// nor https://");
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("etcd endpoint `{url}` has no port"))?;
        let port = port
            .parse()
            .with_context(|| format!("etcd endpoint `{url}`: bad port"))?;
        if host.is_empty() || host.contains('/') {
            bail!("etcd endpoint `{url}` has no host");
        }
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// A client of one etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A key's value and the revision that last changed it (the version a
/// compare-and-swap names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A member, as `member list` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// One member's own view (`maintenance/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// The leader this member follows; 0 when it knows none.
    pub leader: u64,
    pub raft_term: u64,
    /// The last raft entry this member has.
    pub raft_index: u64,
    /// Alarms and errors the member reports (such as NOSPACE).
    pub errors: Vec<String>,
}

impl Etcd {
    /// A client over plain HTTP (a test's etcd on loopback).
    pub fn plain(endpoints: Vec<Endpoint>) -> Etcd {
        Etcd {
            endpoints,
            tls: None,
        }
    }

    /// A client over TLS: etcd's server certificates checked against the
    /// etcd CA and their names, this node's etcd certificate as client
    /// certificate (etcd trusts its members and clients only).
    pub fn tls(endpoints: Vec<Endpoint>, slot: &Slot) -> Result<Etcd> {
        let config = crate::https::client_config_from(slot)?;
        Ok(Etcd {
            endpoints,
            tls: Some(config),
        })
    }

    /// The same client, asking only `endpoint` (a member's own status).
    pub fn only(&self, endpoint: Endpoint) -> Etcd {
        Etcd {
            endpoints: vec![endpoint],
            tls: self.tls.clone(),
        }
    }

    /// One call, to each endpoint in turn until one answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value> {
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            let attempt = tokio::time::timeout(CALL_TIMEOUT, self.call_one(endpoint, path, &body));
            match attempt.await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => errors.push(format!("{endpoint}: {e:#}")),
                Err(_) => errors.push(format!(
                    "{endpoint}: no answer within {}s",
                    CALL_TIMEOUT.as_secs()
                )),
            }
        }
        bail!("etcd {path}: no member answered ({})", errors.join("; "))
    }

    async fn call_one(&self, endpoint: &Endpoint, path: &str, body: &Value) -> Result<Value> {
        let address: SocketAddr = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .with_context(|| format!("cannot resolve {}", endpoint.host))?
            .next()
            .with_context(|| format!("{} has no address", endpoint.host))?;
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let request = hyper::Request::post(path)
            .header("host", endpoint.host.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = match (&self.tls, endpoint.tls) {
            (Some(config), true) => {
                let name = ServerName::try_from(endpoint.host.clone())
                    .map_err(|_| anyhow!("`{}` is not a server name", endpoint.host))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .context("TLS handshake failed")?;
                crate::https::exchange(TokioIo::new(tls), request, MAX_ANSWER).await?
            }
            (None, false) => {
                crate::https::exchange(TokioIo::new(stream), request, MAX_ANSWER).await?
            }
            (None, true) => bail!("{endpoint} needs TLS, and this client has no certificate"),
            (Some(_), false) => bail!("{endpoint} is plain HTTP: refused, etcd speaks TLS here"),
        };
        let (status, _, bytes) = response;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("answer {status} is not JSON"))?;
        if status != 200 {
            let message = value["message"]
                .as_str()
                .or(value["error"].as_str())
                .unwrap_or("(no message)");
            bail!("HTTP {status}: {message}");
        }
        Ok(value)
    }

    /// A key's value and revision, or None.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let answer = self.call("/v3/kv/range", json!({"key": b64(key)})).await?;
        answer["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(versioned)
            .transpose()
    }

    /// Every key under `prefix`, with its value.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let answer = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix), "range_end": b64_bytes(&prefix_end(prefix))}),
            )
            .await?;
        let mut out = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let key = String::from_utf8(unb64(&kv["key"])?).context("a key is not UTF-8")?;
            out.push((key, versioned(kv)?));
        }
        Ok(out)
    }

    /// Put `value` at `key` only if the key is still at `expected` (its
    /// mod revision, or absent for None): etcd's compare-and-swap, one
    /// transaction. False when someone else changed it first.
    pub async fn put_if(&self, key: &str, value: &[u8], expected: Option<i64>) -> Result<bool> {
        let compare = match expected {
            Some(revision) => json!({
                "key": b64(key), "target": "MOD", "result": "EQUAL",
                "mod_revision": revision.to_string()
            }),
            None => json!({
                "key": b64(key), "target": "CREATE", "result": "EQUAL",
                "create_revision": "0"
            }),
        };
        let answer = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [compare],
                    "success": [{"request_put": {"key": b64(key), "value": b64_bytes(value)}}],
                }),
            )
            .await?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false))
    }

    /// The cluster's members.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let answer = self.call("/v3/cluster/member/list", json!({})).await?;
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "ID")]
            id: Option<String>,
            #[serde(default)]
            name: String,
            #[serde(default, rename = "clientURLs")]
            client_urls: Vec<String>,
            #[serde(default, rename = "isLearner")]
            is_learner: bool,
        }
        let raw: Vec<Raw> = serde_json::from_value(answer["members"].clone())
            .context("member list: unexpected members")?;
        raw.into_iter()
            .map(|m| {
                Ok(Member {
                    id: number(m.id.as_deref())?,
                    name: m.name,
                    client_urls: m.client_urls,
                    is_learner: m.is_learner,
                })
            })
            .collect()
    }

    /// The first endpoint's own status (use with [`Etcd::only`]).
    pub async fn status(&self) -> Result<MemberStatus> {
        let answer = self.call("/v3/maintenance/status", json!({})).await?;
        let field = |name: &str| number(answer[name].as_str());
        Ok(MemberStatus {
            member_id: number(answer["header"]["member_id"].as_str())?,
            leader: field("leader")?,
            raft_term: field("raftTerm")?,
            raft_index: field("raftIndex")?,
            errors: answer["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// A proto3 JSON 64-bit number: a string, absent when zero.
fn number(text: Option<&str>) -> Result<u64> {
    match text {
        None => Ok(0),
        Some(t) => t.parse().with_context(|| format!("`{t}` is not a number")),
    }
}

fn versioned(kv: &Value) -> Result<Versioned> {
    Ok(Versioned {
        value: unb64(&kv["value"])?,
        mod_revision: kv["mod_revision"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .context("mod_revision is not a number")?,
    })
}

fn b64(text: &str) -> String {
    b64_bytes(text.as_bytes())
}

fn b64_bytes(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Result<Vec<u8>> {
    // An empty value is left out.
    let text = value.as_str().unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("etcd sent a value that is not base64")
}

/// The end of a prefix range: the prefix with its last byte raised
/// (etcd's `clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
