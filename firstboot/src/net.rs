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

/// How long a probe waits for one address to accept. On a VPC a live host
/// answers in a millisecond; this bounds how long the absent ones hold a
/// round open.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Connects in flight at once while probing.
const PROBE_WIDTH: usize = 256;

/// One probing round over `range` for listeners on `port` (`own`
/// skipped), every address at once: each address that accepts is sent on
/// the returned channel as soon as it does; the channel closes when the
/// round is over (every address answered or timed out).
pub fn probe(
    range: &VpcRange,
    port: u16,
    own: &[Ipv4Addr],
) -> tokio::sync::mpsc::Receiver<Ipv4Addr> {
    let candidates: Vec<Ipv4Addr> = range.hosts().filter(|a| !own.contains(a)).collect();
    let (found, receiver) = tokio::sync::mpsc::channel(PROBE_WIDTH);
    // A /24 goes in one wave; a larger range in waves of this many.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PROBE_WIDTH));
    tokio::spawn(async move {
        for address in candidates {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let found = found.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let target = SocketAddr::new(address.into(), port);
                let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target));
                if let Ok(Ok(_)) = connect.await {
                    let _ = found.send(address).await;
                }
            });
        }
    });
    receiver
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
