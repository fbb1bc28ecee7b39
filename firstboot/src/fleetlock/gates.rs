//! The health gates: whether the site can spare a core host now, and
//! whether a core host that rebooted is healthy again. The public lock
//! servers (airlock, poseidon/fleetlock) are semaphores and check no
//! health; here a slot is only the last of the conditions.
//!
//! The judgement is a pure function of what the probes saw, so it is
//! tested on every shape of cluster; the probes ask etcd and FreeIPA.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use node_contract::{DomainName, HostName};

use crate::etcd::{Client, Endpoint, Member, Status};

/// A follower this many raft entries behind its leader is not caught up.
/// On a healthy cluster on one LAN followers trail by a few entries at
/// most (they apply a batch as it commits); a member that restarted and
/// is replaying its log, or one cut off, is thousands behind.
pub const MAX_LAG: u64 = 100;

/// One member and what it said of itself (or why it said nothing).
#[derive(Debug, Clone)]
pub struct MemberView {
    pub member: Member,
    pub status: Result<Status, String>,
}

/// etcd can lose one voting member now: at least three voting members (so
/// that the rest still have a quorum), none a learner still catching up,
/// every one answering with no alarm, all following the same leader, which
/// is one of them, and none more than [`MAX_LAG`] entries behind it.
pub fn etcd_can_spare_one(views: &[MemberView]) -> Result<(), String> {
    if let Some(learner) = views.iter().find(|v| v.member.is_learner) {
        return Err(format!(
            "etcd member {} is a learner still catching up",
            learner.member.name
        ));
    }
    if views.len() < 3 {
        return Err(format!(
            "etcd has {} voting member(s): losing one would lose the quorum",
            views.len()
        ));
    }
    let mut statuses = Vec::new();
    for view in views {
        let status = view
            .status
            .as_ref()
            .map_err(|e| format!("etcd member {} does not answer: {e}", view.member.name))?;
        statuses.push((&view.member, status));
    }
    leader_and_lag(&statuses)?;
    Ok(())
}

/// The node's own member is healthy again: it is a voting member, answers
/// with no alarm, follows the cluster's leader, and is caught up.
pub fn member_is_back(views: &[MemberView], node: &HostName) -> Result<(), String> {
    let own = views
        .iter()
        .find(|v| v.member.name == node.as_str())
        .ok_or_else(|| format!("{node} is not an etcd member"))?;
    if own.member.is_learner {
        return Err(format!(
            "{node}'s etcd member is a learner still catching up"
        ));
    }
    let own_status = own
        .status
        .as_ref()
        .map_err(|e| format!("{node}'s etcd member does not answer: {e}"))?;
    // The others that answer tell the leader and its index.
    let statuses: Vec<(&Member, &Status)> = views
        .iter()
        .filter_map(|v| v.status.as_ref().ok().map(|s| (&v.member, s)))
        .collect();
    let (_, leader_index) = leader_and_lag(&statuses)?;
    if own_status.raft_index + MAX_LAG < leader_index {
        return Err(format!(
            "{node}'s etcd member is {} entries behind its leader",
            leader_index - own_status.raft_index
        ));
    }
    Ok(())
}

/// The leader every answering member follows and its raft index; an
/// error when there is none, they disagree, one reports an alarm, or one
/// lags.
fn leader_and_lag(statuses: &[(&Member, &Status)]) -> Result<(u64, u64), String> {
    for (member, status) in statuses {
        if !status.errors.is_empty() {
            return Err(format!(
                "etcd member {} reports: {}",
                member.name,
                status.errors.join("; ")
            ));
        }
    }
    let leader = statuses.first().map(|(_, s)| s.leader).unwrap_or(0);
    if leader == 0 {
        return Err("etcd has no leader".into());
    }
    if let Some((member, status)) = statuses.iter().find(|(_, s)| s.leader != leader) {
        return Err(format!(
            "etcd members disagree on the leader ({} follows {:x}, others {leader:x})",
            member.name, status.leader
        ));
    }
    let leader_index = statuses
        .iter()
        .find(|(m, _)| m.id == leader)
        .map(|(_, s)| s.raft_index)
        .ok_or_else(|| format!("etcd's leader {leader:x} does not answer"))?;
    for (member, status) in statuses {
        if status.raft_index + MAX_LAG < leader_index {
            return Err(format!(
                "etcd member {} is {} entries behind its leader",
                member.name,
                leader_index - status.raft_index
            ));
        }
    }
    Ok((leader, leader_index))
}

/// What the gates ask of the site.
pub trait Probes: Send + Sync {
    /// Every etcd member and its status.
    fn etcd(&self) -> impl Future<Output = Result<Vec<MemberView>, String>> + Send;
    /// Every etcd member, as the cluster lists it (no status asked).
    fn members(&self) -> impl Future<Output = Result<Vec<Member>, String>> + Send;
    /// Whether `host`'s FreeIPA server answers.
    fn freeipa(&self, host: &HostName) -> impl Future<Output = Result<(), String>> + Send;
}

/// The probes of a running site: etcd through the client (each member
/// asked at its own client URL), FreeIPA by its API's answer.
pub struct SiteProbes {
    pub etcd: Client,
    pub domain: DomainName,
}

/// The host and port of a member's client URL (`https://host:port`, as
/// the etcd phase advertises it; etcd speaks TLS only here).
pub fn client_url(url: &str) -> Result<(&str, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("etcd client URL `{url}` is not https://"))?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .with_context(|| format!("etcd client URL `{url}` has no port"))?;
    let port = port
        .parse()
        .with_context(|| format!("etcd client URL `{url}`: bad port"))?;
    if host.is_empty() || host.contains('/') {
        bail!("etcd client URL `{url}` has no host");
    }
    Ok((host, port))
}

/// A member's own status, asked at its client URL: the server's
/// certificate must name the URL's host.
async fn status_at(etcd: &Client, url: &str) -> Result<Status> {
    let (host, port) = client_url(url)?;
    let lookup = tokio::net::lookup_host((host, port));
    let address = tokio::time::timeout(super::relay::LOOKUP_TIMEOUT, lookup)
        .await
        .map_err(|_| anyhow!("cannot resolve {host}: the DNS did not answer"))?
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let endpoint = Endpoint {
        name: host.to_owned(),
        address,
    };
    etcd.status(&endpoint).await
}

/// How long a FreeIPA server has to answer.
const FREEIPA_TIMEOUT: Duration = Duration::from_secs(5);

impl Probes for SiteProbes {
    async fn members(&self) -> Result<Vec<Member>, String> {
        self.etcd.member_list().await.map_err(|e| format!("{e:#}"))
    }

    async fn etcd(&self) -> Result<Vec<MemberView>, String> {
        let members = self
            .etcd
            .member_list()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let mut tasks = tokio::task::JoinSet::new();
        for (index, member) in members.iter().enumerate() {
            let url = member.client_urls.first().cloned();
            let etcd = self.etcd.clone();
            tasks.spawn(async move {
                let status = match url {
                    Some(url) => status_at(&etcd, &url).await.map_err(|e| format!("{e:#}")),
                    None => Err("it has no client URL".to_owned()),
                };
                (index, status)
            });
        }
        let mut statuses = vec![Err("not asked".to_owned()); members.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((index, status)) = done {
                statuses[index] = status;
            }
        }
        Ok(members
            .into_iter()
            .zip(statuses)
            .map(|(member, status)| MemberView { member, status })
            .collect())
    }

    /// FreeIPA's JSON-RPC endpoint answers an anonymous call with 401 (it
    /// wants a session) once its web server and API are up
    /// (`ipaserver/rpcserver.py`): anything else, or no answer, is down.
    async fn freeipa(&self, host: &HostName) -> Result<(), String> {
        let fqdn = self.domain.fqdn(host);
        let address: SocketAddr = tokio::net::lookup_host((fqdn.as_str(), 443))
            .await
            .map_err(|e| format!("cannot resolve {fqdn}: {e}"))?
            .next()
            .ok_or_else(|| format!("{fqdn} has no address"))?;
        let headers = [("referer", format!("https://{fqdn}/ipa"))];
        let answer = crate::https::post(
            address,
            "/ipa/session/json",
            &headers,
            b"{}".to_vec(),
            FREEIPA_TIMEOUT,
        )
        .await
        .map_err(|e| format!("FreeIPA on {host}: {e:#}"))?;
        match answer.status {
            200 | 401 => Ok(()),
            other => Err(format!("FreeIPA on {host} answers HTTP {other}")),
        }
    }
}
