//! The site's names in FreeIPA's DNS: what the temporary DNS serves
//! (`crate::dns`), ensured in FreeIPA before the temporary DNS stops:
//! each node's A record and its PTR, and etcd's SRV records.

use std::net::Ipv4Addr;

use super::calls::Record;
use super::client::Client;
use super::ensure::{zone_of, Change};
use super::error::Error;

/// A node's name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub fqdn: String,
    pub address: Ipv4Addr,
}

/// The etcd SRV records (owner below the site zone, port): the same names
/// and ports the temporary DNS publishes ([`crate::dns`]).
pub const ETCD_SRV: [(&str, u16); 2] = [
    ("_etcd-server-ssl._tcp", crate::dns::ETCD_PEER_PORT),
    ("_etcd-client-ssl._tcp", crate::dns::ETCD_CLIENT_PORT),
];

/// The reverse zone FreeIPA makes for an IPv4 address, its /24, and the
/// address's name in it: `10.0.18.198.in-addr.arpa.` is `10` in
/// `0.18.198.in-addr.arpa.` (freeipa `ipalib/util.py`,
/// `get_reverse_zone_default`).
pub fn reverse_zone(address: Ipv4Addr) -> (String, String) {
    let [a, b, c, d] = address.octets();
    (format!("{c}.{b}.{a}.in-addr.arpa."), d.to_string())
}

impl Client {
    /// Every node's A record in its zone (that address only: a rebuilt
    /// node's old one goes) and its PTR in its /24 reverse zone (made
    /// when missing); for each of `etcd_members` (which must be among
    /// `nodes`) the SRV records `_etcd-server-ssl._tcp` and
    /// `_etcd-client-ssl._tcp` in `domain`. Records already there stay:
    /// a member that left is removed by whoever removes it, not by a list
    /// that happens to be shorter.
    pub async fn ensure_site_records(
        &self,
        domain: &str,
        nodes: &[NodeAddress],
        etcd_members: &[String],
    ) -> Result<Change, Error> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        for member in etcd_members {
            let known = nodes.iter().any(|n| {
                n.fqdn
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(member.trim_end_matches('.'))
            });
            if !known {
                return Err(Error::Invalid(format!(
                    "etcd member {member} is not among the nodes whose addresses were given"
                )));
            }
        }
        let mut changes = Vec::new();
        for node in nodes {
            let (host, zone) = zone_of(&node.fqdn)?;
            changes.push(self.ensure_address(&zone, &host, node.address).await?);
            let (reverse, name) = reverse_zone(node.address);
            changes.push(self.ensure_dns_zone(&reverse, true).await?);
            let target = format!("{}.", node.fqdn.trim_end_matches('.').to_ascii_lowercase());
            changes.push(
                self.ensure_dns_record(&reverse, &name, &Record::Ptr(target))
                    .await?,
            );
        }
        for (owner, port) in ETCD_SRV {
            for member in etcd_members {
                let srv = Record::Srv {
                    priority: 0,
                    weight: 0,
                    port,
                    target: member.trim_end_matches('.').to_ascii_lowercase(),
                };
                changes.push(self.ensure_dns_record(&domain, owner, &srv).await?);
            }
        }
        Ok(if changes.contains(&Change::Created) {
            Change::Created
        } else {
            Change::Unchanged
        })
    }
}
