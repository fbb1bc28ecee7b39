//! The lab's "upstream" DNS: in a namespace of its own, standing in for
//! the resolvers a droplet has outside its site. It serves names outside
//! any lab site, so a test can prove that a node still resolves the world
//! after its site's domain was routed to the temporary DNS. It is
//! firstboot's own authoritative server (hickory) with a fixed zone.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use firstboot::dns::{DnsServer, ZoneData};
use node_contract::{DomainName, HostName};

/// The zone the upstream serves, and its one name for tests.
pub const ZONE: &str = "example.net";
pub const NAME: &str = "www.example.net";
pub const NAME_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);

pub struct UpstreamDns {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl UpstreamDns {
    /// Serve the zone on `addr` (port 53) inside the namespace at `netns`.
    pub fn start_in(netns: &Path, addr: Ipv4Addr) -> Result<UpstreamDns> {
        let ns = std::fs::File::open(netns)
            .with_context(|| format!("cannot open {}", netns.display()))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let run = || -> Result<(tokio::runtime::Runtime, DnsServer)> {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let zone = ZoneData {
                    domain: DomainName::parse(ZONE).expect("a valid zone"),
                    ns_host: HostName::parse("ns").expect("a valid name"),
                    hosts: BTreeMap::from([
                        (HostName::parse("ns").expect("valid"), addr),
                        (HostName::parse("www").expect("valid"), NAME_ADDRESS),
                    ]),
                    etcd_members: Vec::new(),
                };
                let server =
                    runtime.block_on(DnsServer::start(SocketAddr::new(addr.into(), 53), zone))?;
                Ok((runtime, server))
            };
            match run() {
                Ok((runtime, server)) => {
                    let _ = ready_tx.send(Ok(()));
                    runtime.block_on(async move {
                        let _ = stopped.await;
                        server.shutdown().await;
                    });
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx
            .recv()
            .context("the upstream DNS thread ended before starting")?
            .context("cannot start the upstream DNS")?;
        Ok(UpstreamDns {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for UpstreamDns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
