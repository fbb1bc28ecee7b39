//! The bootstrap host's temporary services: the CA (its key made here,
//! never in user data), the DNS for the site zone, the join service.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use node_contract::Role;
use tokio::sync::Mutex;

use crate::ca::TempCa;
use crate::dns::{DnsServer, ZoneData};
use crate::join::server::{self, Registrar};
use crate::phases::Context;

pub const DNS_PORT: u16 = 53;

pub struct Services {
    registrar: Arc<Mutex<Registrar>>,
    join_task: tokio::task::JoinHandle<()>,
}

impl Services {
    pub async fn peers(&self) -> BTreeMap<String, Ipv4Addr> {
        self.registrar.lock().await.registry.clone()
    }

    /// Until the join service stops (it does not, short of a crash).
    pub async fn wait(self) {
        let _ = self.join_task.await;
    }
}

/// Start (or, after a restart, resume) the temporary CA, DNS and join
/// service. Everything they need to survive a restart is on disk.
pub async fn start(cx: &mut Context) -> Result<Services> {
    let address = cx
        .state
        .address
        .context("identify did not record this node's address")?;
    let config = cx.config.clone();
    let config = &config;
    let site_secret = config
        .join
        .site_secret
        .clone()
        .context("the bootstrap host lacks the site secret")?;
    let domain = config.site.domain.clone();

    let ca = match TempCa::load(&cx.paths.ca_dir())? {
        Some(ca) => ca,
        None => match recover(cx, &site_secret, address).await? {
            Some(ca) => ca,
            None => {
                let ca = TempCa::create(&domain)?;
                ca.save(&cx.paths.ca_dir())?;
                log::info!("created the temporary CA for {domain}");
                ca
            }
        },
    };
    let fqdn = cx.fqdn(&config.node);
    let tls = cx.paths.tls_dir();
    let (cert_path, key_path) = (tls.join("node.crt"), tls.join("node.key"));
    if !(cert_path.is_file()
        && key_path.is_file()
        && crate::ca::issued_by(&std::fs::read_to_string(&cert_path)?, ca.cert_pem())?)
    {
        let own = ca.issue(&fqdn)?;
        crate::fsutil::write_atomic(&key_path, own.key_pem.as_bytes(), 0o600)?;
        crate::fsutil::write_atomic(&cert_path, own.cert_pem.as_bytes(), 0o644)?;
    }
    crate::fsutil::write_atomic(&tls.join("ca.crt"), ca.cert_pem().as_bytes(), 0o644)?;

    let mut registry = server::load_registry(&cx.paths.registry_file())?;
    registry.insert(config.node.clone(), address);
    let hosts: Vec<(String, Role)> = config
        .site
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.role))
        .collect();
    let zone = ZoneData {
        domain: domain.clone(),
        ns_host: config.node.clone(),
        hosts: registry.clone(),
        etcd_members: hosts
            .iter()
            .filter(|(_, r)| *r == Role::Core)
            .map(|(n, _)| n.clone())
            .collect(),
    };
    let dns = Arc::new(DnsServer::start(SocketAddr::new(address.into(), DNS_PORT), zone).await?);
    let mut registrar = Registrar {
        domain,
        site_secret,
        hosts,
        vpc: cx.vpc,
        ca,
        dns,
        dns_address: address,
        registry: BTreeMap::new(),
        registry_file: cx.paths.registry_file(),
        replay: Default::default(),
    };
    for (node, addr) in registry {
        registrar.register(&node, addr).await?;
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(address.into(), config.join.port))
        .await
        .with_context(|| format!("cannot listen on {address}:{}", config.join.port))?;
    let tls_config = crate::join::tls_server_config(
        &std::fs::read_to_string(&cert_path)?,
        &std::fs::read_to_string(&key_path)?,
    )?;
    let registrar = Arc::new(Mutex::new(registrar));
    let join_task = tokio::spawn(server::serve(listener, tls_config, registrar.clone()));
    log::info!(
        "serving the join service on {address}:{} and DNS for {} on {address}:{DNS_PORT}",
        config.join.port,
        config.site.domain
    );
    Ok(Services {
        registrar,
        join_task,
    })
}

/// The split-brain guard: a bootstrap host with no CA on disk (a first
/// boot, or a rebuilt host) first asks the peers it can reach whether a
/// cluster exists. If one does, it restores the CA and registry from
/// their sealed backup and marks etcd to rejoin, never to start a second
/// cluster. Backups that do not open under the site secret are ignored.
async fn recover(cx: &mut Context, site_secret: &str, own: Ipv4Addr) -> Result<Option<TempCa>> {
    use crate::join::peer;
    let candidates = crate::join::client::probe(&cx.vpc, peer::PEER_PORT, &[own]).await;
    let mut restored: Option<crate::backup::CaBackup> = None;
    let mut registry = BTreeMap::new();
    let mut cluster_exists = false;
    for candidate in candidates {
        let info = match peer::ask(candidate).await {
            Ok(info) => info,
            Err(e) => {
                log::warn!("peer {candidate}: {e:#}");
                continue;
            }
        };
        let Some(sealed) = info.ca_backup else {
            continue;
        };
        match crate::backup::open(site_secret, &sealed) {
            Ok(backup) => {
                cluster_exists |= info.etcd_data;
                registry.extend(backup.registry.clone());
                registry.insert(info.node.clone(), candidate);
                restored.get_or_insert(backup);
            }
            Err(e) => log::warn!(
                "peer {candidate} ({}) offered a CA backup that was refused: {e:#}",
                info.node
            ),
        }
    }
    let Some(backup) = restored else {
        return Ok(None);
    };
    let ca = TempCa::from_pems(&backup.ca_cert_pem, &backup.ca_key_pem)?;
    ca.save(&cx.paths.ca_dir())?;
    registry.remove(&cx.config.node);
    crate::fsutil::write_atomic(
        &cx.paths.registry_file(),
        &serde_json::to_vec_pretty(&registry)?,
        0o644,
    )?;
    if cluster_exists {
        cx.state.etcd_cluster_state = Some("existing".into());
        cx.state.save(&cx.paths.state_file())?;
    }
    log::warn!(
        "a cluster already exists (peers {:?}): rejoining it with the recovered temporary CA, not starting a second one",
        registry.keys().collect::<Vec<_>>()
    );
    Ok(Some(ca))
}
