//! The zones the simulator holds, served authoritatively (as FreeIPA's
//! BIND with bind-dyndb-ldap does), with hickory-server as in
//! `firstboot/src/dns.rs`. Zones come and go with `dnszone_add`, so the
//! catalog sits behind a lock and is rebuilt whole from the state on every
//! change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::RwLock;

use crate::state::{first, values, Kind, State};

const TTL: u32 = 30;

/// The catalog, swapped whole when the zones change.
#[derive(Clone)]
pub struct Zones(Arc<RwLock<Catalog>>);

#[async_trait::async_trait]
impl RequestHandler for Zones {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let catalog = self.0.read().await;
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

impl Zones {
    /// Rebuild from `state`.
    pub async fn update(&self, state: &State) {
        match catalog(state) {
            Ok(catalog) => *self.0.write().await = catalog,
            Err(e) => tracing::error!("dns: cannot serve the zones: {e:#}"),
        }
    }
}

fn name(text: &str) -> anyhow::Result<Name> {
    Name::from_str(text).map_err(|e| anyhow!("`{text}` is not a DNS name: {e}"))
}

/// Every zone of the state as a catalog.
pub fn catalog(state: &State) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::new();
    let serial = u32::try_from(state.clock % u64::from(u32::MAX)).unwrap_or(1);
    for (zone, entry) in state.all(Kind::DnsZone) {
        let origin = name(zone)?;
        let mut records = Vec::new();
        let mname = first(entry, "idnssoamname").unwrap_or_else(|| zone.to_owned());
        let rname = first(entry, "idnssoarname").unwrap_or_else(|| format!("hostmaster.{zone}"));
        records.push(Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(
                name(&mname)?,
                name(&rname)?,
                serial,
                3600,
                900,
                1209600,
                TTL,
            )),
        ));
        let prefix = format!("{zone}|");
        for (key, record) in state.all(Kind::DnsRecord) {
            let Some(relative) = key.strip_prefix(&prefix) else {
                continue;
            };
            let owner = if relative == "@" {
                origin.clone()
            } else {
                name(relative)?.append_domain(&origin)?
            };
            for value in values(record, "arecord") {
                if let Ok(ip) = value.parse() {
                    records.push(Record::from_rdata(owner.clone(), TTL, RData::A(A(ip))));
                }
            }
            for value in values(record, "ptrrecord") {
                records.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::PTR(PTR(name(&value)?)),
                ));
            }
            for value in values(record, "nsrecord") {
                records.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::NS(NS(name(&value)?)),
                ));
            }
            for value in values(record, "cnamerecord") {
                records.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::CNAME(CNAME(name(&value)?)),
                ));
            }
            for value in values(record, "txtrecord") {
                records.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::TXT(TXT::new(vec![value])),
                ));
            }
            for value in values(record, "srvrecord") {
                let parts: Vec<&str> = value.split_whitespace().collect();
                if let [priority, weight, port, target] = parts.as_slice() {
                    let (Ok(p), Ok(w), Ok(port)) = (priority.parse(), weight.parse(), port.parse())
                    else {
                        continue;
                    };
                    records.push(Record::from_rdata(
                        owner.clone(),
                        TTL,
                        RData::SRV(SRV::new(p, w, port, name(target)?)),
                    ));
                }
            }
        }
        let mut sets: BTreeMap<RrKey, RecordSet> = BTreeMap::new();
        for record in records {
            let key = RrKey::new(LowerName::new(&record.name), record.record_type());
            sets.entry(key)
                .or_insert_with(|| {
                    RecordSet::new(record.name.clone(), record.record_type(), serial)
                })
                .insert(record, serial);
        }
        let handler: InMemoryZoneHandler =
            InMemoryZoneHandler::new(origin.clone(), sets, ZoneType::Primary, AxfrPolicy::Deny)
                .map_err(|e| anyhow!("building zone {origin}: {e}"))?;
        catalog.upsert(
            LowerName::new(&origin),
            vec![Arc::new(handler) as Arc<dyn ZoneHandler>],
        );
    }
    Ok(catalog)
}

/// Serve `state`'s zones on UDP and TCP at `address`; the returned
/// [`Zones`] takes updates. Runs until the server is dropped.
pub async fn serve(
    address: SocketAddr,
    state: &State,
) -> anyhow::Result<(Zones, Server<Zones>, SocketAddr)> {
    let zones = Zones(Arc::new(RwLock::new(catalog(state)?)));
    let udp = UdpSocket::bind(address)
        .await
        .with_context(|| format!("cannot bind DNS UDP {address}"))?;
    let bound = udp.local_addr()?;
    let tcp = TcpListener::bind(bound)
        .await
        .with_context(|| format!("cannot bind DNS TCP {bound}"))?;
    let mut server = Server::new(zones.clone());
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 32);
    tracing::info!("dns: serving the IPA zones on {bound}");
    Ok((zones, server, bound))
}
