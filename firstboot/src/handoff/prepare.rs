//! Handoff's first step, on the bootstrap host (FreeIPA's first server,
//! the one node with the admin password): FreeIPA is given everything the
//! temporary services give, before anything moves to it.
//! - DNS: every registered node's A and PTR records and the etcd SRV
//!   records, the names the temporary DNS serves (`crate::dns`);
//! - CAs: one lightweight sub-CA per service with a CA ACL of its own
//!   (`freeipa::ServiceCa`), and each node's principals for the sub-CAs
//!   its certificates move to (`firstboot/<fqdn>` for every node,
//!   `etcd/<fqdn>` for a core host), which the ACLs let use their own
//!   sub-CA and nothing else does.
//!
//! Idempotent: run again, it finds everything and changes nothing. It
//! waits for no absent host: a core host that has not joined (has no
//! address on record) is an error naming it, and the phase asks again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::{HostName, NodeConfig, Role};

use crate::freeipa::{Client, NodeAddress, ServiceCa, ServiceCaInfo};

/// What FreeIPA now holds that the nodes need: each sub-CA's
/// certificate, which its service's peers trust alone.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sub_cas: Vec<ServiceCaInfo>,
}

impl Prepared {
    /// The certificate of `ca`, PEM.
    pub fn sub_ca(&self, ca: ServiceCa) -> Option<&str> {
        self.sub_cas
            .iter()
            .find(|info| info.ca == ca)
            .map(|info| info.cert_pem.as_str())
    }
}

/// Ensure FreeIPA has the site's names and service CAs. `registered` is
/// the join service's registry: every node that joined, at its address;
/// `added_core`, the core hosts among them the site was not launched with.
pub async fn prepare(
    client: &Client,
    config: &NodeConfig,
    registered: &BTreeMap<HostName, Ipv4Addr>,
    added_core: &BTreeSet<HostName>,
    within: Duration,
) -> Result<Prepared> {
    let domain = config.site.domain.as_str();
    let realm = config.site.realm.as_str();
    let missing: Vec<&str> = config
        .site
        .core
        .iter()
        .filter(|core| !registered.contains_key(*core))
        .map(|core| core.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "core hosts {} have not joined: FreeIPA cannot have their records yet",
            missing.join(", ")
        );
    }
    let nodes: Vec<NodeAddress> = registered
        .iter()
        .map(|(node, address)| NodeAddress {
            fqdn: config.fqdn(node),
            address: *address,
        })
        .collect();
    let members: Vec<String> = config
        .site
        .core
        .iter()
        .chain(added_core.iter().filter(|h| registered.contains_key(*h)))
        .map(|c| config.fqdn(c))
        .collect();
    client
        .ensure_site_records(domain, &nodes, &members)
        .await
        .context("the site's records in FreeIPA's DNS")?;
    let mut sub_cas = Vec::new();
    for ca in ServiceCa::ALL {
        sub_cas.push(
            client
                .ensure_service_ca(ca, realm, within)
                .await
                .with_context(|| format!("FreeIPA's {} sub-CA", ca.name()))?,
        );
    }
    ensure_principals(client, config, registered, added_core).await?;
    Ok(Prepared { sub_cas })
}

/// Each registered node's service principals, for the sub-CAs that exist.
/// Called once the sub-CAs exist, with a registry read since: a node
/// whose host FreeIPA lacks enrolls later, and its enrollment, seeing the
/// sub-CAs, ensures its principals (`freeipa::site`); one enrolled before
/// is listed here. A registry read before the sub-CAs existed could miss
/// a node that joined and enrolled in between, whose enrollment saw no
/// sub-CA: it would never get a principal (the e2e saw it: certmonger's
/// request refused with 4001, the handoff held).
pub async fn ensure_principals(
    client: &Client,
    config: &NodeConfig,
    registered: &BTreeMap<HostName, Ipv4Addr>,
    added_core: &BTreeSet<HostName>,
) -> Result<()> {
    let realm = config.site.realm.as_str();
    for node in registered.keys() {
        let fqdn = config.fqdn(node);
        let role = if config.site.core.contains(node) || added_core.contains(node) {
            Role::Core
        } else {
            Role::Worker
        };
        if role == Role::Worker
            && !client
                .host_exists(&fqdn)
                .await
                .with_context(|| format!("looking up {fqdn} in FreeIPA"))?
        {
            continue;
        }
        for ca in ServiceCa::held_by(role) {
            client
                .ensure_service_principal(ca, &fqdn, realm)
                .await
                .with_context(|| format!("the {} principal of {node}", ca.name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
