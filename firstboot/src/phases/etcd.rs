//! Phase 4: etcd on the core hosts, over TLS with name-only certificates
//! (ARCHITECTURE §8: hostname peer URLs, peer and client certificate auth;
//! a member's name resolves to its own address).
//!
//! The initial cluster is the site file's core list, given whole
//! (`--initial-cluster`), not found by SRV discovery: etcd's discovery
//! skips, without a word, every SRV target that does not resolve at that
//! moment and forms a cluster of those that did (etcd-io/etcd
//! `pkg/srv/srv.go`, `GetCluster`: `if terr != nil { continue }`). One
//! name missing from a resolver's cache for a second (the lab saw a
//! negative answer cached from before the peer joined) made the bootstrap
//! host a cluster of one beside its peers' cluster of two. Which members
//! the cluster has is the site's decision; DNS only says where they are.
//! The SRV records stay, for clients (`_etcd-client-ssl`).
//!
//! etcd trusts the etcd CA alone, which signs for core hosts only: a
//! worker's identity certificate is refused as client and as peer. The
//! Debian 3.4 build and the pinned 3.5 both take `--peer-cert-allowed-cn`
//! and `--peer-cert-allowed-hostname`, but each takes a single value, so
//! they cannot list the core hosts; restricting who gets an etcd
//! certificate does that instead.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::{HostName, Role};

use super::Context;
use crate::certs::plan;
use crate::etcd;
use crate::paths::Paths;
use crate::state::ClusterState;
use crate::system::JournalWatch;

pub const PEER_PORT: u16 = 2380;
pub const CLIENT_PORT: u16 = 2379;
/// etcd logs this when a peer's source address matches no name in its
/// certificate, and refuses that peer, while `endpoint health` can still
/// say healthy: it is treated as unhealthy.
const NAME_MISMATCH: &str = "does not match any of DNSNames";
const HEALTH_WAIT: Duration = Duration::from_secs(180);
/// How long one attempt waits for every core host to be in DNS.
const PEERS_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// etcd's arguments for this node, a member of `members` (the site's
/// core hosts); the command itself comes from the image catalog: a host
/// binary in the lab, a container on Fedora CoreOS.
pub fn etcd_args(
    paths: &Paths,
    domain: &str,
    node: &str,
    members: &[HostName],
    address: Ipv4Addr,
    cluster_state: ClusterState,
) -> Vec<String> {
    let fqdn = format!("{node}.{domain}");
    let initial_cluster: Vec<String> = members
        .iter()
        .map(|m| format!("{m}=https://{m}.{domain}:{PEER_PORT}"))
        .collect();
    let slot = plan::ETCD.slot(paths);
    let file = |path: &std::path::Path| path.display().to_string();
    let args: Vec<(&str, String)> = vec![
        ("--name", node.to_owned()),
        ("--data-dir", paths.etcd_data().display().to_string()),
        ("--initial-cluster", initial_cluster.join(",")),
        (
            "--initial-advertise-peer-urls",
            format!("https://{fqdn}:{PEER_PORT}"),
        ),
        (
            "--listen-peer-urls",
            format!("https://{address}:{PEER_PORT}"),
        ),
        (
            "--listen-client-urls",
            format!("https://{address}:{CLIENT_PORT},https://127.0.0.1:{CLIENT_PORT}"),
        ),
        (
            "--advertise-client-urls",
            format!("https://{fqdn}:{CLIENT_PORT}"),
        ),
        ("--initial-cluster-token", format!("{domain}-etcd")),
        ("--initial-cluster-state", cluster_state.as_str().to_owned()),
        ("--client-cert-auth", "true".into()),
        ("--trusted-ca-file", file(&slot.ca)),
        ("--cert-file", file(&slot.cert)),
        ("--key-file", file(&slot.key)),
        ("--peer-client-cert-auth", "true".into()),
        ("--peer-trusted-ca-file", file(&slot.ca)),
        ("--peer-cert-file", file(&slot.cert)),
        ("--peer-key-file", file(&slot.key)),
    ];
    args.into_iter()
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect()
}

pub async fn run(cx: &mut Context) -> Result<()> {
    if cx.config.role() != Role::Core {
        return Ok(());
    }
    let address = cx.own_address()?;
    let dns = SocketAddr::new(
        crate::state::bootstrap_address(&cx.paths, &cx.state)
            .context("join did not record the DNS server")?
            .into(),
        crate::dns::DNS_PORT,
    );
    let fqdn = cx.config.fqdn(&cx.config.node);
    // Already healthy (a resumed run)? Only ask when something listens:
    // against a closed port the exchange waits out its whole timeout.
    let client = SocketAddr::new(address.into(), CLIENT_PORT);
    let connect = tokio::net::TcpStream::connect(client);
    let listening = matches!(
        tokio::time::timeout(Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    );
    if listening && member_health(&cx.paths, &fqdn, address).await.is_ok() {
        release_join_lock(cx, address).await?;
        return Ok(());
    }

    // etcd resolves every member's name as it starts and at every peer
    // connection: wait until all core hosts have joined and resolve, then
    // pin them in /etc/hosts too.
    let peers = if cx.state.joined_after_handoff {
        // The site handed off before this node joined (a core host rebuilt
        // or added since): the temporary DNS has ended, and FreeIPA's may
        // still hold this host's old address (its enrollment, next, moves
        // it). The join answer gave the registered core hosts' addresses.
        registered_core(cx)?
    } else {
        core_addresses(cx, dns).await?
    };
    cx.state.peers.extend(peers.clone());
    crate::resolver::write_hosts(&cx.paths, &cx.config.site.domain, &cx.state.peers)?;

    let cluster_state = cx.state.etcd_cluster_state.unwrap_or(ClusterState::New);
    let members = if cluster_state == ClusterState::Existing {
        rejoin(cx, &peers).await?
    } else {
        wait_for_earlier_members(cx, &peers).await;
        cx.config.site.core.clone()
    };
    let args = etcd_args(
        &cx.paths,
        cx.config.site.domain.as_str(),
        cx.config.node.as_str(),
        &members,
        address,
        cluster_state,
    );
    crate::fsutil::write_atomic(
        &cx.paths.service_args("etcd"),
        (args.join("\n") + "\n").as_bytes(),
        0o644,
    )?;
    let journal = JournalWatch::new(
        "etcd.service",
        cx.paths.state_dir().join("etcd.journal-cursor"),
        crate::status::now(),
    );
    // Enabled by Ignition (its condition, the arguments file, holds it
    // back until now), so starting it needs no daemon-reload.
    crate::system::systemctl(&["start", "etcd.service"]).await?;

    let deadline = tokio::time::Instant::now() + HEALTH_WAIT;
    loop {
        let health = member_health(&cx.paths, &fqdn, address).await;
        // Only lines logged since the last look: one refusal while a peer
        // was still coming up does not fail every later check.
        let mismatch = journal
            .new_lines()
            .await
            .map(|lines| lines.contains(NAME_MISMATCH))
            .unwrap_or(false);
        match (health, mismatch) {
            (Ok(()), false) => return release_join_lock(cx, address).await,
            (_, true) if tokio::time::Instant::now() >= deadline => bail!(
                "etcd refuses a peer whose address matches no name in its certificate \
                 (`{NAME_MISMATCH}`); check /etc/hosts and the DNS A records"
            ),
            (Err(e), false) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "etcd is not healthy after {}s: {e:#}",
                    HEALTH_WAIT.as_secs()
                )
            }
            _ => tokio::time::sleep(HEALTH_POLL).await,
        }
    }
}

/// How long a new member waits for the members before it to serve.
const STAGGER_WAIT: Duration = Duration::from_secs(3);

/// A new etcd member first asks its peers whether the cluster already
/// started, and a peer whose port is bound but not yet serving holds that
/// question for etcd's whole bootstrap timeout (a second). Members that
/// all start at once all wait it out; so each core host starts etcd once
/// the core hosts before it (in site order) serve TLS on their peer port,
/// or after a few seconds whatever they do.
async fn wait_for_earlier_members(cx: &Context, peers: &BTreeMap<HostName, Ipv4Addr>) {
    let earlier: Vec<Ipv4Addr> = cx
        .config
        .site
        .core
        .iter()
        .take_while(|c| **c != cx.config.node)
        .filter_map(|c| peers.get(c).copied())
        .collect();
    let deadline = tokio::time::Instant::now() + STAGGER_WAIT;
    for address in earlier {
        let peer = SocketAddr::new(address.into(), PEER_PORT);
        while !crate::https::answers_tls(peer, Duration::from_millis(300)).await {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Every core host's address as the join answer gave it (the registry).
/// A core host of this node's config that is not registered is one added
/// to the site with this one and not joined yet: no member yet either
/// (it joins through the others, as this node does), so it is left out;
/// at least one other core host must be there.
fn registered_core(cx: &Context) -> Result<BTreeMap<HostName, Ipv4Addr>> {
    let me = &cx.config.node;
    let registered: BTreeMap<HostName, Ipv4Addr> = cx
        .config
        .site
        .core
        .iter()
        .filter_map(|host| cx.state.peers.get(host).map(|a| (host.clone(), *a)))
        .collect();
    let missing: Vec<&str> = cx
        .config
        .site
        .core
        .iter()
        .filter(|host| !registered.contains_key(*host))
        .map(HostName::as_str)
        .collect();
    if !registered.keys().any(|host| host != me) {
        bail!(
            "the join service listed no other core host ({} missing): there is no etcd \
             member to join through",
            missing.join(", ")
        );
    }
    if !missing.is_empty() {
        tracing::info!(
            phase = "etcd",
            "core hosts not joined yet, left out: {}",
            missing.join(", ")
        );
    }
    Ok(registered)
}

/// Every core host's address from the temporary DNS, polling while peers
/// are still joining.
async fn core_addresses(cx: &Context, dns: SocketAddr) -> Result<BTreeMap<HostName, Ipv4Addr>> {
    let deadline = tokio::time::Instant::now() + PEERS_WAIT;
    let mut peers = BTreeMap::new();
    for host in &cx.config.site.core {
        loop {
            let found = crate::dnsquery::lookup_a(dns, &cx.config.fqdn(host)).await?;
            // Only an address in the site's VPC goes to /etc/hosts: the
            // answer is checked against the question (see `dnsquery`), and
            // a core host is never elsewhere.
            let vpc = &cx.config.site.vpc_range;
            if let Some(outside) = found.iter().find(|a| !vpc.contains(**a)) {
                tracing::warn!("the temporary DNS gave {host} the address {outside}, outside the VPC {vpc}: ignored");
            }
            if let Some(&a) = found.iter().find(|a| vpc.contains(**a)) {
                peers.insert(host.clone(), a);
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("waiting for core host {host} to join (no address in DNS yet)");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(peers)
}

/// This node's own member is healthy: a linearizable read through it
/// succeeds (so it has a leader and a quorum), as `etcdctl endpoint
/// health` checks, over TLS with this node's etcd certificate.
pub async fn member_health(paths: &Paths, fqdn: &str, address: Ipv4Addr) -> Result<()> {
    let client = etcd::Client::for_node(
        paths,
        vec![etcd::Endpoint {
            name: fqdn.to_owned(),
            address: SocketAddr::new(address.into(), CLIENT_PORT),
        }],
    )?;
    client.get(b"health").await.map(|_| ())
}

/// What the handoff's roll recorded for this member in its last life:
/// its step, and the restart lock if it died holding it. The rebuilt
/// member's own handoff runs the roll's steps again (on certificates it
/// got from the sub-CA already, if the roll had moved its peers), and a
/// lock it held must not keep its peers waiting for a member that is gone.
async fn forget_roll(client: &etcd::Client, me: &HostName) -> Result<()> {
    use crate::handoff::recertify::ROLL_PREFIX;
    let step = format!("{ROLL_PREFIX}step/{me}");
    if let Some(kv) = client.get(step.as_bytes()).await? {
        client.delete_if(step.as_bytes(), kv.mod_revision).await?;
    }
    let lock = format!("{ROLL_PREFIX}restart-lock");
    if let Some(kv) = client.get(lock.as_bytes()).await? {
        if kv.value == me.as_str().as_bytes() {
            client.delete_if(lock.as_bytes(), kv.mod_revision).await?;
            tracing::info!(
                phase = "etcd",
                "released the roll's restart lock this node's last life held"
            );
        }
    }
    Ok(())
}

/// A rebuilt member rejoins the cluster its peers still run, and a core
/// host added later joins it: its old membership (if any) is replaced
/// through a healthy peer (with this node's new certificate as client
/// certificate), and its data comes from the peers. The members it starts
/// with are the cluster's own list once it is added (what `etcdctl member
/// add` prints as `ETCD_INITIAL_CLUSTER`), not its config's core hosts:
/// etcd refuses to join when the two differ (etcd-io/etcd
/// `ValidateClusterAndAssignIDs`: `etcdserver/cluster_util.go` in 3.4,
/// `server/etcdserver/api/membership/cluster.go` since 3.5). A `member
/// add` in the seconds after another member joined is refused ("unhealthy
/// cluster": the member asked must have been connected to every voting
/// member for 5 s, `mayAddMember` in `etcdserver/server.go`); the phase's
/// next attempt asks again.
async fn rejoin(cx: &Context, peers: &BTreeMap<HostName, Ipv4Addr>) -> Result<Vec<HostName>> {
    let me = &cx.config.node;
    let endpoints = peers
        .iter()
        .filter(|(n, _)| *n != me)
        .map(|(n, a)| etcd::Endpoint {
            name: cx.config.fqdn(n),
            address: SocketAddr::new((*a).into(), CLIENT_PORT),
        })
        .collect();
    let client = etcd::Client::for_node(&cx.paths, endpoints)?;
    take_join_lock(&client, me, JOIN_LOCK_WAIT).await?;
    forget_roll(&client, me).await?;
    let peer_url = format!("https://{}:{PEER_PORT}", cx.config.fqdn(me));
    for member in client.member_list().await? {
        let stale = member.name == me.as_str() || member.peer_urls.contains(&peer_url);
        if stale {
            client.member_remove(member.id).await?;
            tracing::info!(
                phase = "etcd",
                "removed this node's old etcd membership {:x}",
                member.id
            );
        }
    }
    client.member_add(&peer_url).await?;
    let members = member_names(&client.member_list().await?, cx.config.site.domain.as_str())?;
    let data = cx.paths.etcd_data();
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot clear {}", data.display()))?;
    }
    tracing::info!(
        phase = "etcd",
        "joining the existing etcd cluster as a new member, one of {}",
        members
            .iter()
            .map(HostName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(members)
}

/// Where the member that is joining the running cluster holds its turn.
const JOIN_LOCK: &str = "/firstboot/etcd/join-lock";
/// How long a member waits for another to finish joining: that one's
/// whole start ([`HEALTH_WAIT`]) and some.
const JOIN_LOCK_WAIT: Duration = Duration::from_secs(HEALTH_WAIT.as_secs() + 60);

/// One member joins the running cluster at a time, from its `member add`
/// to its member healthy: a member starts with the cluster's list as it is
/// after its own add, and etcd refuses the start if another was added
/// meanwhile ("member count is unequal", `ValidateClusterAndAssignIDs`,
/// see [`rejoin`]). Two core hosts added together (the site
/// file wants an odd count) take turns. A lock this member's last life
/// held is its own; another's is waited for (bounded), never broken:
/// that it is silent does not say its member is not starting.
async fn take_join_lock(client: &etcd::Client, me: &HostName, wait: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match client.get(JOIN_LOCK.as_bytes()).await? {
            Some(held) if held.value == me.as_str().as_bytes() => return Ok(()),
            Some(held) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "waiting {} s for {} to finish joining the etcd cluster (it holds {JOIN_LOCK})",
                        wait.as_secs(),
                        String::from_utf8_lossy(&held.value)
                    );
                }
            }
            None => {
                if client
                    .compare_and_swap(JOIN_LOCK.as_bytes(), 0, me.as_str().as_bytes())
                    .await?
                {
                    continue; // read back: it is this member's now
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// This member is healthy in the cluster: its turn to join ends, if it
/// held one (through its own member, which answers now).
async fn release_join_lock(cx: &Context, address: Ipv4Addr) -> Result<()> {
    if cx.state.etcd_cluster_state != Some(ClusterState::Existing) {
        return Ok(());
    }
    let client = etcd::Client::for_node(
        &cx.paths,
        vec![etcd::Endpoint {
            name: cx.config.fqdn(&cx.config.node),
            address: SocketAddr::new(address.into(), CLIENT_PORT),
        }],
    )?;
    if give_back_join_lock(&client, &cx.config.node).await? {
        tracing::info!(phase = "etcd", "this member has joined: the next may join");
    }
    Ok(())
}

/// The join lock deleted if `me` holds it (and only as `me` left it);
/// whether it was.
async fn give_back_join_lock(client: &etcd::Client, me: &HostName) -> Result<bool> {
    match client.get(JOIN_LOCK.as_bytes()).await? {
        Some(held) if held.value == me.as_str().as_bytes() => {
            client
                .delete_if(JOIN_LOCK.as_bytes(), held.mod_revision)
                .await
        }
        _ => Ok(false),
    }
}

/// Each member's host name, from its name, or for a member added but not
/// started yet (it has none) from its peer URL, which is always
/// `https://<host>.<domain>:2380`: anything else is not this site's.
fn member_names(members: &[etcd::Member], domain: &str) -> Result<Vec<HostName>> {
    let suffix = format!(".{domain}:{PEER_PORT}");
    members
        .iter()
        .map(|member| {
            let from_url = || {
                let [url] = member.peer_urls.as_slice() else {
                    return None;
                };
                url.strip_prefix("https://")?.strip_suffix(&suffix)
            };
            let label = if member.name.is_empty() {
                from_url()
            } else {
                Some(member.name.as_str())
            };
            label
                .and_then(|l| HostName::parse(l).ok())
                .with_context(|| {
                    format!(
                        "etcd member {:x} ({:?}, peer URLs {:?}) is no host of {domain}",
                        member.id, member.name, member.peer_urls
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.iter()
            .filter_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
            .collect()
    }

    /// The members come from the site, every one of them, whatever DNS
    /// answers when etcd starts; the member's own URL is among them.
    #[test]
    fn the_initial_cluster_is_every_core_host_of_the_site() {
        let members: Vec<HostName> = ["ns1", "ns2", "ns3"]
            .iter()
            .map(|n| HostName::parse(n).unwrap())
            .collect();
        let args = etcd_args(
            &Paths::under(std::path::Path::new("/")),
            "example.org",
            "ns2",
            &members,
            Ipv4Addr::new(10, 0, 0, 2),
            ClusterState::New,
        );
        assert_eq!(
            arg(&args, "--initial-cluster"),
            [
                "ns1=https://ns1.example.org:2380,ns2=https://ns2.example.org:2380,\
              ns3=https://ns3.example.org:2380"
            ]
        );
        assert_eq!(
            arg(&args, "--initial-advertise-peer-urls"),
            ["https://ns2.example.org:2380"]
        );
        assert!(arg(&args, "--discovery-srv").is_empty(), "{args:?}");
        assert_eq!(arg(&args, "--initial-cluster-state"), ["new"]);
    }

    /// The members a joining member starts with are the cluster's own
    /// list: a member added but not started yet is named from its peer
    /// URL, and a member that is no host of the site is an error, not a
    /// name made up.
    #[test]
    fn a_joining_member_starts_with_the_clusters_own_members() {
        let member = |id, name: &str, url: &str| etcd::Member {
            id,
            name: name.into(),
            peer_urls: vec![url.into()],
            client_urls: Vec::new(),
            is_learner: false,
        };
        let members = [
            member(1, "ns1", "https://ns1.example.org:2380"),
            member(2, "ns2", "https://ns2.example.org:2380"),
            member(7, "", "https://ns7.example.org:2380"),
        ];
        let names = member_names(&members, "example.org").unwrap();
        assert_eq!(
            names.iter().map(HostName::as_str).collect::<Vec<_>>(),
            ["ns1", "ns2", "ns7"]
        );
        let args = etcd_args(
            &Paths::under(std::path::Path::new("/")),
            "example.org",
            "ns7",
            &names,
            Ipv4Addr::new(10, 0, 0, 7),
            ClusterState::Existing,
        );
        assert_eq!(
            arg(&args, "--initial-cluster"),
            [
                "ns1=https://ns1.example.org:2380,ns2=https://ns2.example.org:2380,\
              ns7=https://ns7.example.org:2380"
            ]
        );
        assert_eq!(arg(&args, "--initial-cluster-state"), ["existing"]);
        for stranger in [
            member(9, "", "https://ns9.example.com:2380"),
            member(9, "", "http://ns9.example.org:2380"),
            member(9, "not a name!", "https://ns9.example.org:2380"),
        ] {
            let err = member_names(&[stranger], "example.org").unwrap_err();
            assert!(
                format!("{err:#}").contains("is no host of example.org"),
                "{err:#}"
            );
        }
    }

    /// One member joins at a time: the lock is its holder's (again after
    /// a restart), another waits for it, bounded, and never takes it from
    /// a silent holder; once given back, the next takes it. Against a real
    /// etcd.
    #[tokio::test]
    async fn members_join_one_at_a_time() {
        let ca = crate::pki::TempCa::create("lab.example.org", &crate::certs::PLAN.intermediates())
            .unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (client_at, peer_at) = (port(), port());
        let Some(_server) = crate::etcd::tests::start_etcd(client_at, peer_at, &ca) else {
            return;
        };
        let client = crate::etcd::tests::client_of(&ca, client_at);
        crate::etcd::tests::wait_ready(&client).await;
        let (node7, node8) = (
            HostName::parse("node7").unwrap(),
            HostName::parse("node8").unwrap(),
        );
        let short = Duration::from_millis(1200);
        take_join_lock(&client, &node7, short).await.unwrap();
        // Its own lock, after a restart: taken again at once.
        take_join_lock(&client, &node7, short).await.unwrap();
        let waited = take_join_lock(&client, &node8, short).await.unwrap_err();
        assert!(
            format!("{waited:#}").contains("for node7 to finish joining"),
            "{waited:#}"
        );
        // Only its holder gives it back.
        assert!(!give_back_join_lock(&client, &node8).await.unwrap());
        assert!(give_back_join_lock(&client, &node7).await.unwrap());
        take_join_lock(&client, &node8, short).await.unwrap();
        let held = client.get(JOIN_LOCK.as_bytes()).await.unwrap().unwrap();
        assert_eq!(held.value, b"node8");
    }
}
