//! This node's addresses in the site VPC, and finding who listens there.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use node_contract::VpcRange;
use tokio::net::TcpStream;

/// This machine's IPv4 addresses inside `range`.
pub fn own_addresses(range: &VpcRange) -> Result<Vec<Ipv4Addr>> {
    let mut found = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().context("cannot list network interfaces")? {
        let Some(addr) = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in().map(|s| s.ip()))
        else {
            continue;
        };
        if range.contains(addr) && !found.contains(&addr) {
            found.push(addr);
        }
    }
    Ok(found)
}

/// This node's first address in `range`, waiting up to `limit` for an
/// interface to come up with one.
pub async fn wait_for_address(range: &VpcRange, limit: Duration) -> Result<Ipv4Addr> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(&address) = own_addresses(range)?.first() {
            return Ok(address);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no address in the site VPC {range} on any interface");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Connects in flight at once while probing: a /24 is probed in one wave.
const PROBE_WIDTH: usize = 256;

/// Addresses in `range` with something listening on `port`, probed
/// concurrently, in address order; `own` is skipped.
pub async fn probe(range: &VpcRange, port: u16, own: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let candidates: Vec<Ipv4Addr> = range.hosts().filter(|a| !own.contains(a)).collect();
    let mut open = Vec::new();
    for wave in candidates.chunks(PROBE_WIDTH) {
        let mut tasks = tokio::task::JoinSet::new();
        for &address in wave {
            tasks.spawn(async move {
                let target = SocketAddr::new(address.into(), port);
                let ok = matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await,
                    Ok(Ok(_))
                );
                ok.then_some(address)
            });
        }
        while let Some(result) = tasks.join_next().await {
            if let Ok(Some(address)) = result {
                open.push(address);
            }
        }
    }
    open.sort();
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_a_vpc_address() {
        let lab = VpcRange::parse("198.18.0.0/24").unwrap();
        assert!(!own_addresses(&lab).unwrap().contains(&Ipv4Addr::LOCALHOST));
    }
}
