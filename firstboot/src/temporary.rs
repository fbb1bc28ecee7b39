//! The temporary services' one owner: the bootstrap host's join service
//! (which signs with the temporary CAs) and its DNS for the site zone.
//! They start here, once the CAs are settled (`bootstrap::ensure_ca`),
//! and stop here: [`Services::stop`] is what handoff calls once FreeIPA
//! serves the site's names and certificates (ARCHITECTURE §4: temporary
//! means temporary).
//!
//! Nothing here knows the phase engine: it takes the pieces it needs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use node_contract::{HostName, NodeConfig};
use tokio::sync::Mutex;

use crate::bootstrap::{Discovery, Settled};
use crate::certs::{plan, PLAN};
use crate::dns::{DnsServer, ZoneData, DNS_PORT};
use crate::join::protocol::{AdmissionRule, Site};
use crate::join::server::Registrar;
use crate::join::Credentials;
use crate::paths::Paths;
use crate::state::ClusterState;
use crate::status::Reporter;

/// How long [`Services::stop`] waits for the join service's task to end
/// once told to.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The temporary services, running.
pub struct Services {
    registrar: Arc<Mutex<Registrar>>,
    join_task: tokio::task::JoinHandle<()>,
}

impl Services {
    /// Settle the CAs (from disk, from the peers' sealed copies, or new
    /// once the peers say no cluster exists; see `bootstrap::ensure_ca`)
    /// and start serving on `own`. Also what a restarted bootstrap host
    /// runs, whose join phase is done. The cluster state is set when a
    /// rebuilt bootstrap host found a cluster to rejoin.
    pub async fn settle_and_start(
        paths: &Paths,
        config: &NodeConfig,
        own: Ipv4Addr,
        discovery: &mut Discovery,
        patience: Duration,
        reporter: Reporter,
    ) -> Result<(Services, Option<ClusterState>)> {
        let settled = crate::bootstrap::ensure_ca(paths, config, own, discovery, patience).await?;
        let cluster_state = settled.cluster_state;
        let services = Services::start(paths, config, own, settled, reporter).await?;
        Ok((services, cluster_state))
    }

    /// Start the DNS and the join service on `own`, with the CAs settled:
    /// this host's own certificates first (every row of the plan it
    /// holds), since the join service presents its identity.
    pub async fn start(
        paths: &Paths,
        config: &NodeConfig,
        own: Ipv4Addr,
        settled: Settled,
        reporter: Reporter,
    ) -> Result<Services> {
        if let Some(ca) = &settled.ca {
            crate::certs::ensure_from_temporary(paths, config, PLAN, ca)?;
        }
        let restored = settled.restored;
        let zone = ZoneData {
            domain: config.site.domain.clone(),
            ns_host: config.node.clone(),
            hosts: settled.registry.hosts.clone(),
            etcd_members: config.site.core.clone(),
        };
        let handoff = crate::join::server::HandoffBook::load(paths)?;
        let ended = handoff.temporary_ended;
        // The sockets systemd holds (see `sockets`), else bound here.
        let mut passed = crate::sockets::Passed::from_env();
        let dns = if ended {
            None
        } else {
            Some(match (passed.udp("dns")?, passed.tcp("dns")?) {
                (Some(udp), Some(tcp)) => DnsServer::start_on(udp, tcp, zone)?,
                _ => DnsServer::start(SocketAddr::new(own.into(), DNS_PORT), zone).await?,
            })
        };
        let replay = crate::join::replay::ReplayLog::open(
            &paths.nonces_file(),
            &paths.legacy_nonces_file(),
            crate::status::now(),
        )?;
        let rule = AdmissionRule {
            hosts: config.site.host_count,
            deadline: settled.registry.admission_deadline,
        };
        let mut registrar = Registrar {
            paths: paths.clone(),
            site: Site::of(config),
            me: Credentials::of(config),
            plan: PLAN,
            ca: settled.ca,
            dns,
            dns_address: own,
            registry: settled.registry,
            registry_file: paths.registry_file(),
            replay,
            rule,
            reporter,
            enroller: None,
            handoff,
        };
        registrar
            .register(&config.node, own, config.identity.generation, false)
            .await?;
        if restored {
            tokio::spawn(crate::join::peer::announce(
                Site::of(config),
                Credentials::of(config),
                own,
                registrar.registry.hosts.clone(),
                None,
            ));
        }
        let listener = crate::sockets::tcp_or_bind(
            &mut passed,
            "join",
            SocketAddr::new(own.into(), config.join.port),
        )
        .await?;
        let slot = plan::IDENTITY.slot(paths);
        let identity = crate::https::Identity::Files {
            cert: slot.cert,
            key: slot.key,
        };
        let registrar = Arc::new(Mutex::new(registrar));
        let shared = registrar.clone();
        let join_task = tokio::spawn(crate::https::serve(
            listener,
            identity,
            crate::https::LIMITS,
            move |request| crate::join::server::handle(request, shared.clone()),
        ));
        let dns = if ended {
            "(the temporary DNS ended with the handoff)".to_owned()
        } else {
            format!("and DNS for {} on {own}:{DNS_PORT}", config.site.domain)
        };
        tracing::info!(
            "serving the join service on {own}:{} {dns}",
            config.join.port
        );
        Ok(Services {
            registrar,
            join_task,
        })
    }

    pub async fn peers(&self) -> BTreeMap<HostName, Ipv4Addr> {
        self.registrar.lock().await.registry.hosts.clone()
    }

    /// The core hosts admitted since the site's launch.
    pub async fn added_core(&self) -> std::collections::BTreeSet<HostName> {
        self.registrar.lock().await.registry.added_core.clone()
    }

    /// Let joined nodes enroll in FreeIPA through the join service.
    pub async fn set_enroller(&self, enroller: Arc<crate::freeipa::site::Enroller>) {
        self.registrar.lock().await.enroller = Some(enroller);
    }

    /// Handoff's last step, once every node has moved: the join service
    /// signs nothing from the temporary CA any more (every certificate
    /// comes from FreeIPA, `join::server`), and the temporary DNS stops
    /// (every node asks FreeIPA's servers). Recorded first, so that a
    /// restart starts neither again. The join service itself keeps
    /// serving: a host added later joins through it.
    pub async fn end_temporary(&self) -> Result<()> {
        let mut r = self.registrar.lock().await;
        if !r.handoff.temporary_ended {
            // The sealed copies without the CA are newer than every copy
            // with it: a rebuilt bootstrap host restores the newest.
            r.registry.generation += 1;
            r.registry.save(&r.registry_file)?;
            r.handoff.temporary_ended = true;
            r.handoff.save(&r.paths)?;
            tracing::info!("the temporary CA signs nothing more: every certificate is FreeIPA's");
        }
        if let Some(dns) = r.dns.take() {
            dns.shutdown().await;
            tracing::info!("the temporary DNS stopped: the site's names are FreeIPA's alone");
        }
        // Its keys go: from memory, then from disk, overwritten first.
        r.ca = None;
        let dir = r.paths.ca_dir();
        if dir.exists() {
            crate::fsutil::shred_dir(&dir)?;
            tracing::info!("the temporary CA's keys are destroyed ({})", dir.display());
        }
        Ok(())
    }

    /// Ask each registered node that has no step in the join service's
    /// record for its identity step, at its peer service (signed by it),
    /// and record what it says: a rebuilt bootstrap host lost the record
    /// of nodes that finished their move and report no more. A node that
    /// does not answer stays unrecorded (silence is not a step).
    pub async fn learn_identity_steps(&self) -> Result<()> {
        let (site, me, own, silent) = {
            let r = self.registrar.lock().await;
            let silent: Vec<(HostName, Ipv4Addr, Option<node_contract::Generation>)> = r
                .registry
                .hosts
                .iter()
                .filter(|(node, _)| **node != r.me.ticket.node)
                .filter(|(node, _)| !r.handoff.identity.contains_key(*node))
                .map(|(node, address)| (node.clone(), *address, r.registry.known_generation(node)))
                .collect();
            (r.site.clone(), r.me.clone(), r.dns_address, silent)
        };
        let mut asks = tokio::task::JoinSet::new();
        for (node, address, generation) in silent {
            let (site, me) = (site.clone(), me.clone());
            asks.spawn(async move {
                let answer = crate::join::peer::ask(&site, &me, own, address, None).await;
                (node, generation, answer)
            });
        }
        let mut learnt = Vec::new();
        while let Some(Ok((node, generation, answer))) = asks.join_next().await {
            match answer {
                // Only the registered generation speaks for the node: a
                // retired credential's step is not the node's.
                Ok(answer)
                    if answer.node.node == node && Some(answer.node.generation) == generation =>
                {
                    if let Some(step) = answer.identity_step {
                        learnt.push((node, step));
                    }
                }
                Ok(answer) => tracing::warn!(
                    "{} (credential generation {}) answered at {node}'s registered address: \
                     not taken",
                    answer.node.node,
                    answer.node.generation
                ),
                Err(e) => tracing::debug!("{node}'s identity step: {e:#}"),
            }
        }
        if learnt.is_empty() {
            return Ok(());
        }
        let mut r = self.registrar.lock().await;
        for (node, step) in learnt {
            // A report that came meanwhile is newer than the answer.
            r.handoff.identity.entry(node).or_insert(step);
        }
        r.handoff.save(&r.paths)
    }

    /// The sub-CA every node's identity moves to, as handoff's first step
    /// took it from FreeIPA: the join service hands it to the nodes.
    pub async fn set_identity_ca(&self, pem: &str) -> Result<()> {
        let mut r = self.registrar.lock().await;
        if r.handoff.identity_ca.as_deref() != Some(pem) {
            r.handoff.identity_ca = Some(pem.to_owned());
            r.handoff.save(&r.paths)?;
        }
        Ok(())
    }

    pub async fn enroller(&self) -> Option<Arc<crate::freeipa::site::Enroller>> {
        self.registrar.lock().await.enroller.clone()
    }

    /// Until the join service stops (it does not, short of a crash or
    /// [`Services::stop`]).
    pub async fn wait(&mut self) {
        let _ = (&mut self.join_task).await;
    }

    /// Stop both: the join service takes no more connections (requests
    /// being answered end with their task), and the DNS stops answering.
    /// What systemd holds (the socket units) and what is on disk (the CA
    /// keys, the sealed copies) are handoff's to end.
    pub async fn stop(self) {
        self.join_task.abort();
        if tokio::time::timeout(STOP_WAIT, self.join_task)
            .await
            .is_err()
        {
            tracing::warn!("the join service did not stop within {STOP_WAIT:?}");
        }
        let dns = self.registrar.lock().await.dns.take();
        if let Some(dns) = dns {
            dns.shutdown().await;
        }
        tracing::info!("the temporary join service and DNS stopped");
    }
}

#[cfg(test)]
mod tests;
