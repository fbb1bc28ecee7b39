//! How this node resolves the site's names while the temporary DNS serves
//! them (ARCHITECTURE §4, §8).
//!
//! On Fedora CoreOS `/etc/resolv.conf` is systemd-resolved's stub; replacing
//! it would break every name outside the site (and with it image pulls).
//! So only the site domain is routed to the temporary DNS; every other name
//! resolves as before:
//! - systemd 258 and later (Fedora CoreOS 42+): a DNS delegate, a scope of
//!   its own that takes the site domain and nothing else;
//! - older systemd (the lab's Debian has 252): a drop-in giving the global
//!   scope the temporary DNS with a routing-only domain (`~domain`). That
//!   scope stays a default route there (resolved's rule for the global
//!   scope), so other names are asked of the temporary DNS too, which
//!   refuses them, and the link's own servers answer them.
//!
//! Peer names also go into a marked block of `/etc/hosts`, because etcd
//! resolves a peer's certificate names on every incoming connection and
//! that must keep working if DNS blinks.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use node_contract::{DomainName, HostName};

use crate::paths::Paths;

/// The first systemd-resolved with DNS delegates.
pub const DELEGATES_SINCE: u32 = 258;

/// Where the site's names are asked, in order: systemd-resolved asks the
/// first and moves on to the next when one fails, so one server down
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SiteDns {
    /// The bootstrap host's temporary DNS, until handoff.
    Temporary(Ipv4Addr),
    /// FreeIPA's servers (port 53), with the temporary DNS last while it
    /// still serves: handoff's first step, until FreeIPA answers for
    /// every name; then FreeIPA's alone.
    Freeipa {
        servers: Vec<Ipv4Addr>,
        fallback: Option<Ipv4Addr>,
    },
}

impl SiteDns {
    pub fn servers(&self) -> Vec<SocketAddr> {
        match self {
            SiteDns::Temporary(dns) => vec![SocketAddr::new((*dns).into(), crate::dns::DNS_PORT)],
            SiteDns::Freeipa { servers, fallback } => servers
                .iter()
                .map(|a| SocketAddr::new((*a).into(), 53))
                .chain(fallback.map(|a| SocketAddr::new(a.into(), crate::dns::DNS_PORT)))
                .collect(),
        }
    }

    /// The same route with the temporary DNS at `temporary` (a rebuilt
    /// bootstrap host's new address): FreeIPA's servers stay first, and a
    /// route without the temporary DNS (it ended) stays without.
    pub fn with_temporary(&self, temporary: Ipv4Addr) -> SiteDns {
        match self {
            SiteDns::Temporary(_) => SiteDns::Temporary(temporary),
            SiteDns::Freeipa {
                servers,
                fallback: Some(_),
            } => SiteDns::Freeipa {
                servers: servers.clone(),
                fallback: Some(temporary),
            },
            SiteDns::Freeipa { fallback: None, .. } => self.clone(),
        }
    }

    fn says(&self) -> &'static str {
        match self {
            SiteDns::Temporary(_) => "its temporary DNS",
            SiteDns::Freeipa {
                fallback: Some(_), ..
            } => "its FreeIPA servers, the temporary DNS last",
            SiteDns::Freeipa { fallback: None, .. } => "its FreeIPA servers",
        }
    }

    fn line(&self) -> String {
        let servers: Vec<String> = self.servers().iter().map(|s| s.to_string()).collect();
        format!("DNS={}", servers.join(" "))
    }
}

/// The delegate's text (systemd 258 and later).
pub fn delegate(dns: &SiteDns, domain: &DomainName) -> String {
    format!(
        "# Written by firstboot: the site's names go to {},\n\
         # and no other name does.\n\
         [Delegate]\n\
         {}\n\
         Domains={domain}\n\
         DefaultRoute=no\n",
        dns.says(),
        dns.line()
    )
}

/// The drop-in's text (older systemd).
pub fn dropin(dns: &SiteDns, domain: &DomainName) -> String {
    format!(
        "# Written by firstboot: the site's names go to {},\n\
         # every other name to the resolvers this node had before.\n\
         [Resolve]\n\
         {}\n\
         Domains=~{domain}\n",
        dns.says(),
        dns.line()
    )
}

/// The running systemd's version (`systemctl --version`).
async fn systemd_version() -> Result<u32> {
    let out =
        crate::system::bounded(tokio::process::Command::new("systemctl").arg("--version")).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("cannot read systemd's version from `{}`", text.trim()))
}

/// The route [`route_site_domain`] last set on this node, if any (a file
/// that cannot be read counts as none: the caller then routes to the
/// temporary DNS, as before handoff).
pub fn saved(paths: &Paths) -> Option<SiteDns> {
    let bytes = std::fs::read(paths.site_dns()).ok()?;
    serde_json::from_slice(&bytes)
        .map_err(|e| tracing::warn!("{}: {e}", paths.site_dns().display()))
        .ok()
}

/// Route `domain` to `dns`; systemd-resolved rereads its configuration.
/// Changing nothing when it is already in place. The route is kept
/// ([`saved`]) so that what changes one part of it keeps the rest.
pub async fn route_site_domain(paths: &Paths, dns: &SiteDns, domain: &DomainName) -> Result<()> {
    route(paths, dns, domain).await?;
    let json = serde_json::to_vec(dns).context("the route as JSON")?;
    crate::fsutil::write_atomic(&paths.site_dns(), &json, 0o644)
}

async fn route(paths: &Paths, dns: &SiteDns, domain: &DomainName) -> Result<()> {
    let (path, text, other) = if systemd_version().await? >= DELEGATES_SINCE {
        (
            paths.dns_delegate(),
            delegate(dns, domain),
            paths.resolved_dropin(),
        )
    } else {
        (
            paths.resolved_dropin(),
            dropin(dns, domain),
            paths.dns_delegate(),
        )
    };
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(other);
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
    // resolved reads drop-ins at start; a restart also flushes its cache,
    // so a name looked up before this node joined is not cached as absent.
    crate::system::systemctl(&["restart", "systemd-resolved.service"])
        .await
        .context("systemd-resolved must run: firstboot routes the site domain through it")?;
    tracing::info!(
        "resolving {domain} through {}; every other name as before",
        dns.line()
    );
    Ok(())
}

const HOSTS_BEGIN: &str = "# firstboot peers: begin";
const HOSTS_END: &str = "# firstboot peers: end";

/// Rewrite firstboot's block of /etc/hosts, keeping every other line.
pub fn write_hosts(
    paths: &Paths,
    domain: &DomainName,
    peers: &BTreeMap<HostName, Ipv4Addr>,
) -> Result<()> {
    let path = paths.etc_hosts();
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "127.0.0.1 localhost\n".into());
    let mut kept = Vec::new();
    let mut inside = false;
    for line in old.lines() {
        match line {
            HOSTS_BEGIN => inside = true,
            HOSTS_END => inside = false,
            _ if !inside => kept.push(line.to_owned()),
            _ => {}
        }
    }
    kept.push(HOSTS_BEGIN.into());
    // Rebuilt peers' new addresses, and the bootstrap host's, win over
    // what a phase learnt before they moved.
    let mut peers = peers.clone();
    for (node, moved) in crate::state::PeersMoved::load(&paths.peers_moved()).peers {
        peers.insert(node, moved.address);
    }
    if let Some(moved) = crate::state::BootstrapMoved::load(&paths.bootstrap_moved()) {
        peers.insert(moved.node, moved.address);
    }
    for (name, address) in &peers {
        kept.push(format!("{address} {} {name}", domain.fqdn(name)));
    }
    kept.push(HOSTS_END.into());
    let text = kept.join("\n") + "\n";
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route kept and read back; a rebuilt bootstrap host's new address
    /// replaces the temporary DNS and leaves FreeIPA's servers first.
    #[test]
    fn the_route_is_kept_and_a_moved_temporary_dns_keeps_freeipa_first() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert_eq!(saved(&paths), None);
        let ip = |last| Ipv4Addr::new(198, 18, 0, last);
        let route = SiteDns::Freeipa {
            servers: vec![ip(10), ip(11), ip(12)],
            fallback: Some(ip(10)),
        };
        crate::fsutil::write_atomic(
            &paths.site_dns(),
            &serde_json::to_vec(&route).unwrap(),
            0o644,
        )
        .unwrap();
        assert_eq!(saved(&paths), Some(route.clone()));
        assert_eq!(
            route.with_temporary(ip(20)),
            SiteDns::Freeipa {
                servers: vec![ip(10), ip(11), ip(12)],
                fallback: Some(ip(20)),
            }
        );
        assert_eq!(
            SiteDns::Temporary(ip(10)).with_temporary(ip(20)),
            SiteDns::Temporary(ip(20))
        );
        // A damaged file is no route (the caller falls back to the
        // temporary DNS, as before handoff), never a panic.
        std::fs::write(paths.site_dns(), b"{\"freeipa\":").unwrap();
        assert_eq!(saved(&paths), None);
    }

    #[test]
    fn both_forms_route_only_the_site_domain() {
        let domain = DomainName::parse("lab.example.org").unwrap();
        let dns = SiteDns::Temporary(Ipv4Addr::new(198, 18, 0, 10));
        let text = dropin(&dns, &domain);
        assert!(text.contains("[Resolve]\nDNS=198.18.0.10:5300\n"));
        assert!(text.contains("Domains=~lab.example.org\n"));
        assert!(
            !text.contains("~.\n"),
            "a default route would take every name"
        );
        let text = delegate(&dns, &domain);
        assert!(text.contains("[Delegate]\nDNS=198.18.0.10:5300\nDomains=lab.example.org\n"));
        assert!(text.contains("DefaultRoute=no\n"));
    }

    #[test]
    fn after_handoff_every_freeipa_server_is_asked_and_the_temporary_dns_last() {
        let domain = DomainName::parse("lab.example.org").unwrap();
        let at = |o| Ipv4Addr::new(198, 18, 0, o);
        let both = SiteDns::Freeipa {
            servers: vec![at(10), at(11), at(12)],
            fallback: Some(at(10)),
        };
        let text = delegate(&both, &domain);
        assert!(
            text.contains("\nDNS=198.18.0.10:53 198.18.0.11:53 198.18.0.12:53 198.18.0.10:5300\n"),
            "{text}"
        );
        assert!(text.contains("temporary DNS last"), "{text}");
        let alone = SiteDns::Freeipa {
            servers: vec![at(10), at(11), at(12)],
            fallback: None,
        };
        let text = dropin(&alone, &domain);
        assert!(
            text.contains(
                "\nDNS=198.18.0.10:53 198.18.0.11:53 198.18.0.12:53\nDomains=~lab.example.org\n"
            ),
            "{text}"
        );
        assert!(!text.contains("5300"), "{text}");
    }

    #[test]
    fn the_hosts_block_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let domain = DomainName::parse("lab.example.org").unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(paths.etc_hosts(), "127.0.0.1 localhost\n10.0.0.9 mine\n").unwrap();
        let peer = |n: &str, o: u8| (HostName::parse(n).unwrap(), Ipv4Addr::new(198, 18, 0, o));
        write_hosts(&paths, &domain, &[peer("node1", 10)].into()).unwrap();
        write_hosts(
            &paths,
            &domain,
            &[peer("node1", 10), peer("node2", 11)].into(),
        )
        .unwrap();
        let text = std::fs::read_to_string(paths.etc_hosts()).unwrap();
        assert_eq!(
            text,
            "127.0.0.1 localhost\n10.0.0.9 mine\n# firstboot peers: begin\n\
             198.18.0.10 node1.lab.example.org node1\n198.18.0.11 node2.lab.example.org node2\n\
             # firstboot peers: end\n"
        );
    }
}
