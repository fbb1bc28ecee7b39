//! Temporary authoritative DNS for the site zone.
//!
//! etcd's members reach each other by name (hostname peer URLs) and present
//! certificates that carry names only, so they must resolve each other by
//! name before FreeIPA (the zone's real, long-term server) exists; clients
//! find them through the SRV records. The
//! bootstrap host answers for the site zone until then. It is authoritative
//! only: anything outside the zone is REFUSED rather than recursed, so nobody
//! comes to depend on it as a resolver.
//!
//! Nodes join while the server runs, so the zone is rebuilt from [`ZoneData`]
//! on every change and swapped into hickory's in-memory zone handler in one
//! step; what is served is always exactly [`ZoneData::records`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use hickory_proto::rr::rdata::{A, NS, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use node_contract::{DomainName, HostName};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Mutex;

/// The temporary DNS's port. Not 53: FreeIPA's own DNS takes that on the
/// same host (the first server is the bootstrap host) before handoff
/// moves the site's names to it; nodes reach the temporary one through
/// systemd-resolved, which takes a port with a server's address.
pub const DNS_PORT: u16 = 5300;

/// Short, because records change while the site assembles: a node that joins
/// (or gets a new address) must become visible to caches within seconds.
pub const TTL: u32 = 30;

/// etcd's well-known peer port, as published by `_etcd-server-ssl._tcp`.
pub const ETCD_PEER_PORT: u16 = 2380;

/// etcd's well-known client port, as published by `_etcd-client-ssl._tcp`.
pub const ETCD_CLIENT_PORT: u16 = 2379;

/// SOA timers. Nothing transfers this zone (FreeIPA is set up fresh rather
/// than as a secondary), so refresh/retry/expire only need to be sane; the
/// minimum is the negative-caching TTL (RFC 2308), kept as short as [`TTL`] so
/// that a name looked up just before its node joined is not cached as absent.
const SOA_REFRESH: i32 = 300;
const SOA_RETRY: i32 = 60;
const SOA_EXPIRE: i32 = 3600;
const SOA_MINIMUM: u32 = TTL;

/// A TCP client that goes quiet is dropped after this, so idle connections
/// can't pile up on the bootstrap host.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses queued per TCP connection (hickory's own tests use 32).
const TCP_RESPONSE_BUFFER: usize = 32;

/// With port 0 the UDP port is chosen first and TCP must then get the same
/// number; that can collide, so a few fresh ports are tried.
const BIND_ATTEMPTS: usize = 16;

/// Keeps `shutdown` bounded even if a connection task misbehaves; whatever is
/// left is aborted when the server is dropped.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone's records as data (pure; unit-testable): what the server serves.
///
/// Names are host names (one label, checked by their type) below
/// `domain`, so nothing can be placed outside the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneData {
    /// The site zone, e.g. `lab.example.org`.
    pub domain: DomainName,
    /// The bootstrap host: the zone's NS and SOA primary. It should also be
    /// in `hosts`, or the NS target has no address.
    pub ns_host: HostName,
    /// Every node that has joined, and its address.
    pub hosts: BTreeMap<HostName, Ipv4Addr>,
    /// The etcd members. A member may be listed before it has joined: its
    /// SRV records are served at once, its A record once it joins.
    pub etcd_members: Vec<HostName>,
}

impl ZoneData {
    /// Every record of the zone (SOA serial given), as hickory-proto Records.
    ///
    /// Records whose names are invalid are left out (with a warning) rather
    /// than failing, so this stays infallible; [`DnsServer::start`] and
    /// [`DnsServer::set_host`] reject such names before they get here.
    pub fn records(&self, serial: u32) -> Vec<Record> {
        let origin = self.origin();
        let fqdn = |short: &HostName| host_name(&origin, short);
        let mut records = Vec::new();

        let ns = fqdn(&self.ns_host);
        let soa = SOA::new(
            ns.clone(),
            Name::from_ascii("hostmaster")
                .and_then(|n| n.append_domain(&origin))
                .unwrap_or_else(|_| origin.clone()),
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            SOA_MINIMUM,
        );
        records.push(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)));
        records.push(Record::from_rdata(origin.clone(), TTL, RData::NS(NS(ns))));

        for (short, addr) in &self.hosts {
            records.push(Record::from_rdata(fqdn(short), TTL, RData::A(A(*addr))));
        }

        let mut seen = BTreeSet::new();
        let members: Vec<Name> = self
            .etcd_members
            .iter()
            .filter(|m| seen.insert((*m).clone()))
            .map(fqdn)
            .collect();
        for (service, port) in [
            ("_etcd-server-ssl._tcp", ETCD_PEER_PORT),
            ("_etcd-client-ssl._tcp", ETCD_CLIENT_PORT),
        ] {
            let owner = Name::from_ascii(service)
                .and_then(|n| n.append_domain(&origin))
                .expect("a service label below a valid domain is a valid name");
            for target in &members {
                let srv = SRV::new(0, 0, port, target.clone());
                records.push(Record::from_rdata(owner.clone(), TTL, RData::SRV(srv)));
            }
        }
        records
    }

    /// The zone apex as a fully qualified name.
    fn origin(&self) -> Name {
        Name::from_ascii(format!("{}.", self.domain)).expect("a checked domain name is a DNS name")
    }
}

/// A host's name in the zone: one label below the origin, by its type.
fn host_name(origin: &Name, short: &HostName) -> Name {
    Name::from_ascii(short.as_str())
        .and_then(|n| n.append_domain(origin))
        .expect("a checked host name below a checked domain is a DNS name")
}

/// Groups records the way hickory's in-memory store keeps them.
fn record_sets(records: Vec<Record>, serial: u32) -> BTreeMap<RrKey, RecordSet> {
    let mut sets = BTreeMap::new();
    for record in records {
        let key = RrKey::new(LowerName::new(&record.name), record.record_type());
        sets.entry(key)
            .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), serial))
            .insert(record, serial);
    }
    sets
}

/// A restarted bootstrap server then never shows a lower serial than the
/// previous run did (unless it made more than one change per second), which
/// keeps anyone comparing serials, human or cache, from seeing time go back.
fn initial_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u32::try_from(d.as_secs()).ok())
        .unwrap_or(1)
}

/// What is being served, kept beside hickory's copy so that updates are
/// computed from data rather than read back out of the DNS store.
struct Served {
    zone: ZoneData,
    serial: u32,
}

/// The running server. Dropping it stops serving too (hickory's tasks live in
/// a `JoinSet` that aborts them); [`DnsServer::shutdown`] does so gracefully.
pub struct DnsServer {
    local_addr: SocketAddr,
    handler: Arc<InMemoryZoneHandler>,
    served: Mutex<Served>,
    server: Server<Catalog>,
}

impl DnsServer {
    /// Serve `zone` authoritatively on UDP and TCP at `addr` (port may be 0 in
    /// tests: then report the actual port). Runs on the current tokio runtime.
    ///
    /// TCP is served as well as UDP because resolvers fall back to it for
    /// truncated answers, and a large site's SRV sets can get there.
    /// Names are lower-cased; an invalid name fails here rather than being
    /// silently left out of the zone.
    pub async fn start(addr: SocketAddr, zone: ZoneData) -> anyhow::Result<DnsServer> {
        let (udp, tcp) = bind(addr).await?;
        DnsServer::start_on(udp, tcp, zone)
    }

    /// The same on sockets bound already (the ones systemd holds).
    pub fn start_on(udp: UdpSocket, tcp: TcpListener, zone: ZoneData) -> anyhow::Result<DnsServer> {
        let origin = zone.origin();
        let serial = initial_serial();
        let sets = record_sets(zone.records(serial), serial);
        // Zone transfers are denied: nothing replicates from this server.
        let handler: InMemoryZoneHandler =
            InMemoryZoneHandler::new(origin.clone(), sets, ZoneType::Primary, AxfrPolicy::Deny)
                .map_err(|e| anyhow!("building zone {origin}: {e}"))?;
        let handler = Arc::new(handler);

        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![handler.clone() as Arc<dyn ZoneHandler>],
        );

        let local_addr = udp.local_addr().context("DNS UDP socket address")?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::info!("dns: serving {origin} on {local_addr} (udp+tcp), serial {serial}");

        Ok(DnsServer {
            local_addr,
            handler,
            served: Mutex::new(Served { zone, serial }),
            server,
        })
    }

    /// UDP and TCP on the same port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Add or move a host's A record; the SOA serial increases.
    ///
    /// Setting the address a host already has changes nothing, serial
    /// included, so callers may re-announce freely.
    pub async fn set_host(&self, name: &HostName, addr: Ipv4Addr) -> anyhow::Result<()> {
        let mut served = self.served.lock().await;
        if served.zone.hosts.get(name) == Some(&addr) {
            return Ok(());
        }
        let mut zone = served.zone.clone();
        zone.hosts.insert(name.clone(), addr);
        let serial = served.serial.wrapping_add(1);
        let sets = record_sets(zone.records(serial), serial)
            .into_iter()
            .map(|(key, set)| (key, Arc::new(set)))
            .collect();
        // The whole zone is swapped under hickory's write lock, so a query
        // sees either the old zone or the new one, never a mix. `upsert`
        // would not do: it appends to an A RRset (a moved host would answer
        // with both addresses) and has no removal counterpart short of
        // `records_mut` anyway.
        *self.handler.records_mut().await = sets;
        served.zone = zone;
        served.serial = serial;
        tracing::info!("dns: {name} -> {addr}, serial {serial}");
        Ok(())
    }

    /// A snapshot of the current zone data.
    pub async fn zone(&self) -> ZoneData {
        self.served.lock().await.zone.clone()
    }

    /// Stops accepting queries and waits (bounded) for hickory's tasks to end.
    pub async fn shutdown(mut self) {
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.server.shutdown_gracefully()).await {
            Ok(Ok(())) => tracing::info!("dns: stopped serving on {}", self.local_addr),
            Ok(Err(e)) => tracing::warn!("dns: server on {} ended with: {e}", self.local_addr),
            Err(_) => tracing::warn!(
                "dns: server on {} did not stop within {SHUTDOWN_TIMEOUT:?}; aborting it",
                self.local_addr
            ),
        }
    }
}

/// UDP and TCP must share one port: resolvers retry a truncated UDP answer
/// over TCP at the same address.
async fn bind(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS UDP {addr}"))?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding DNS TCP {addr}"))?;
        return Ok((udp, tcp));
    }
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS UDP {addr}"))?;
        let chosen = udp.local_addr().context("DNS UDP socket address")?;
        match TcpListener::bind(chosen).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding DNS TCP {chosen}")),
        }
    }
    bail!("no port free for both UDP and TCP at {addr} after {BIND_ATTEMPTS} attempts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;
    use std::process::Stdio;

    const DOMAIN: &str = "lab.example.org";

    fn host(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    fn sample() -> ZoneData {
        ZoneData {
            domain: DomainName::parse(DOMAIN).unwrap(),
            ns_host: host("node1"),
            hosts: [
                (host("node1"), Ipv4Addr::new(198, 18, 0, 10)),
                (host("node2"), Ipv4Addr::new(198, 18, 0, 11)),
            ]
            .into_iter()
            .collect(),
            etcd_members: vec![host("node1"), host("node2"), host("node3")],
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn of_type(records: &[Record], owner: &str, rtype: RecordType) -> Vec<RData> {
        records
            .iter()
            .filter(|r| r.name == name(owner) && r.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect()
    }

    #[test]
    fn records_hold_soa_ns_a_and_srv() {
        let records = sample().records(7);
        assert!(records.iter().all(|r| r.ttl == TTL), "{records:?}");

        let soa = of_type(&records, "lab.example.org.", RecordType::SOA);
        let [RData::SOA(soa)] = soa.as_slice() else {
            panic!("one SOA expected: {soa:?}")
        };
        assert_eq!(soa.serial, 7);
        assert_eq!(soa.mname, name("node1.lab.example.org."));
        assert_eq!(soa.rname, name("hostmaster.lab.example.org."));
        assert_eq!(soa.minimum, TTL);

        assert_eq!(
            of_type(&records, "lab.example.org.", RecordType::NS),
            vec![RData::NS(NS(name("node1.lab.example.org.")))]
        );
        assert_eq!(
            of_type(&records, "node2.lab.example.org.", RecordType::A),
            vec![RData::A(A(Ipv4Addr::new(198, 18, 0, 11)))]
        );
        assert_eq!(
            of_type(&records, "node1.lab.example.org.", RecordType::A),
            vec![RData::A(A(Ipv4Addr::new(198, 18, 0, 10)))]
        );
        assert!(of_type(&records, "node3.lab.example.org.", RecordType::A).is_empty());

        for (owner, port) in [
            ("_etcd-server-ssl._tcp.lab.example.org.", 2380),
            ("_etcd-client-ssl._tcp.lab.example.org.", 2379),
        ] {
            let want: Vec<RData> = ["node1", "node2", "node3"]
                .iter()
                .map(|m| {
                    let target = name(&format!("{m}.lab.example.org."));
                    RData::SRV(SRV::new(0, 0, port, target))
                })
                .collect();
            assert_eq!(of_type(&records, owner, RecordType::SRV), want, "{owner}");
        }
        // SOA + NS + 2 A + 2 × 3 SRV
        assert_eq!(records.len(), 10, "{records:?}");
    }

    /// Runs the real `dig` against the server; `None` when dig isn't installed.
    async fn dig(port: u16, args: &[&str]) -> Option<String> {
        let mut cmd = tokio::process::Command::new("dig");
        cmd.arg("@127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .args(["+time=2", "+tries=1"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(Duration::from_secs(15), cmd.output()).await {
            Err(_) => panic!("dig {args:?} did not finish within 15 s"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Ok(Err(e)) => panic!("running dig: {e}"),
            Ok(Ok(out)) => out,
        };
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Outside CI a missing dig skips the test with a line saying how to
    /// get it; under CI (which installs it) that is a failure.
    fn no_dig() {
        site_test_skip::skip("skipping: dig is not installed (apt-get install bind9-dnsutils)");
    }

    fn sorted_lines(s: &str) -> Vec<String> {
        let mut lines: Vec<String> = s.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    async fn soa_serial(port: u16) -> u32 {
        let out = dig(port, &["+short", DOMAIN, "SOA"]).await.unwrap();
        out.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no SOA serial in {out:?}"))
    }

    async fn start_sample() -> DnsServer {
        DnsServer::start("127.0.0.1:0".parse().unwrap(), sample())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn answers_on_the_wire_over_udp_and_tcp() {
        let server = start_sample().await;
        let port = server.local_addr().port();
        assert_ne!(port, 0);
        let Some(out) = dig(port, &["+short", "node2.lab.example.org", "A"]).await else {
            return no_dig();
        };
        assert_eq!(out.trim(), "198.18.0.11");

        // Case-insensitive, as DNS names are.
        let out = dig(port, &["+short", "NODE1.Lab.Example.Org", "A"])
            .await
            .unwrap();
        assert_eq!(out.trim(), "198.18.0.10");

        let out = dig(
            port,
            &["+short", "_etcd-server-ssl._tcp.lab.example.org", "SRV"],
        )
        .await
        .unwrap();
        assert_eq!(
            sorted_lines(&out),
            [
                "0 0 2380 node1.lab.example.org.",
                "0 0 2380 node2.lab.example.org.",
                "0 0 2380 node3.lab.example.org.",
            ]
        );
        let out = dig(
            port,
            &["+short", "_etcd-client-ssl._tcp.lab.example.org", "SRV"],
        )
        .await
        .unwrap();
        assert_eq!(
            sorted_lines(&out),
            [
                "0 0 2379 node1.lab.example.org.",
                "0 0 2379 node2.lab.example.org.",
                "0 0 2379 node3.lab.example.org.",
            ]
        );

        let out = dig(port, &["+short", DOMAIN, "NS"]).await.unwrap();
        assert_eq!(out.trim(), "node1.lab.example.org.");

        // Authoritative answers, NXDOMAIN inside the zone, REFUSED outside it.
        let out = dig(port, &["node2.lab.example.org", "A"]).await.unwrap();
        assert!(out.contains("status: NOERROR"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.contains(";; flags:") && l.contains(" aa")),
            "{out}"
        );
        let out = dig(port, &["nosuch.lab.example.org", "A"]).await.unwrap();
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        for outside in ["example.com", "example.org", "a.root-servers.net"] {
            let out = dig(port, &[outside, "A"]).await.unwrap();
            assert!(out.contains("status: REFUSED"), "{outside}: {out}");
        }

        // TCP on the same port.
        let out = dig(port, &["+tcp", "+short", "node2.lab.example.org", "A"])
            .await
            .unwrap();
        assert_eq!(out.trim(), "198.18.0.11");
        let out = dig(port, &["+tcp", "example.com", "A"]).await.unwrap();
        assert!(out.contains("status: REFUSED"), "{out}");

        server.shutdown().await;
    }

    #[tokio::test]
    async fn set_host_updates_the_served_zone() {
        let server = start_sample().await;
        let port = server.local_addr().port();
        let Some(out) = dig(port, &["+short", "node3.lab.example.org", "A"]).await else {
            return no_dig();
        };
        assert_eq!(out.trim(), "", "node3 has not joined yet");
        let serial0 = soa_serial(port).await;

        // A new host joins.
        server
            .set_host(&host("node3"), Ipv4Addr::new(198, 18, 0, 12))
            .await
            .unwrap();
        let out = dig(port, &["+short", "node3.lab.example.org", "A"])
            .await
            .unwrap();
        assert_eq!(out.trim(), "198.18.0.12");
        let serial1 = soa_serial(port).await;
        assert_eq!(serial1, serial0.wrapping_add(1));

        // A host moves: only the new address is served.
        server
            .set_host(&host("node2"), Ipv4Addr::new(198, 18, 0, 21))
            .await
            .unwrap();
        let out = dig(port, &["+short", "node2.lab.example.org", "A"])
            .await
            .unwrap();
        assert_eq!(out.trim(), "198.18.0.21");
        let out = dig(port, &["+tcp", "+short", "node2.lab.example.org", "A"])
            .await
            .unwrap();
        assert_eq!(out.trim(), "198.18.0.21");
        let serial2 = soa_serial(port).await;
        assert_eq!(serial2, serial1.wrapping_add(1));

        // Re-announcing the same address changes nothing.
        server
            .set_host(&host("node2"), Ipv4Addr::new(198, 18, 0, 21))
            .await
            .unwrap();
        assert_eq!(soa_serial(port).await, serial2);

        let zone = server.zone().await;
        let mut want = sample();
        want.hosts
            .insert(host("node2"), Ipv4Addr::new(198, 18, 0, 21));
        want.hosts
            .insert(host("node3"), Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(zone, want);

        // The untouched records are still served after the swaps.
        let out = dig(
            port,
            &["+short", "_etcd-server-ssl._tcp.lab.example.org", "SRV"],
        )
        .await
        .unwrap();
        assert_eq!(sorted_lines(&out).len(), 3, "{out}");

        server.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let server = start_sample().await;
        let addr = server.local_addr();
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .expect("shutdown is bounded");
        // The port is free again for both protocols.
        let _udp = UdpSocket::bind(addr).await.unwrap();
        let _tcp = TcpListener::bind(addr).await.unwrap();
    }
}
