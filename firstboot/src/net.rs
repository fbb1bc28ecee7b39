//! Addresses: the site's VPC range and this node's address in it.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

/// An IPv4 range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr> {
        let (addr, prefix) = text
            .split_once('/')
            .with_context(|| format!("`{text}` is not CIDR"))?;
        let network: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("`{text}` is not CIDR"))?;
        let prefix: u8 = prefix
            .parse()
            .with_context(|| format!("`{text}` is not CIDR"))?;
        if !(8..=30).contains(&prefix) {
            bail!("`{text}`: prefix /{prefix} is not a usable VPC range");
        }
        Ok(Cidr { network, prefix })
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network) & self.mask()
    }

    /// Every host address (not network or broadcast), in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network) & self.mask();
        let size = 1u32 << (32 - self.prefix);
        (1..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

/// This machine's IPv4 addresses inside `range`.
pub fn own_addresses(range: &Cidr) -> Result<Vec<Ipv4Addr>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership_and_hosts() {
        let c = Cidr::parse("198.18.0.0/24").unwrap();
        assert!(c.contains(Ipv4Addr::new(198, 18, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(198, 18, 1, 1)));
        let hosts: Vec<_> = c.hosts().collect();
        assert_eq!(hosts.len(), 254);
        assert_eq!(hosts[0], Ipv4Addr::new(198, 18, 0, 1));
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/31").is_err());
    }

    #[test]
    fn loopback_is_found_in_its_range() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(own_addresses(&lo).unwrap().contains(&Ipv4Addr::LOCALHOST));
    }
}
