//! Phase 1: this node's own address in the site VPC.
//!
//! Whether DigitalOcean's DHCP configures a custom image's VPC interface
//! is not certain (images/fedora-coreos/README.md says what is known), so
//! an address already on an interface is taken as it is, and without one
//! the node asks the platform's metadata service for its private
//! interface (MAC, address, netmask) and configures that interface
//! itself: through NetworkManager where it runs (Fedora CoreOS), so that
//! the setting is NetworkManager's own and outlives a reboot; with `ip`
//! elsewhere (the lab image, which has no NetworkManager).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::VpcRange;

use super::Context;
use crate::metadata::{Metadata, PrivateInterface};
use crate::system::bounded;

/// Interfaces may come up a moment after boot: wait a little here, the
/// engine retries beyond that.
const WAIT: Duration = Duration::from_secs(10);
/// NetworkManager's name for the profile identify makes.
const PROFILE: &str = "firstboot-vpc";

pub async fn run(cx: &mut Context) -> Result<()> {
    let vpc = cx.config.site.vpc_range;
    let address = match crate::net::own_addresses(&vpc)?.first() {
        Some(&address) => address,
        None => match from_metadata(&vpc, &Metadata::at(cx.config.platform.metadata)).await {
            Ok(Some(address)) => address,
            Ok(None) => {
                tracing::info!(
                    phase = "identify",
                    "the metadata service knows no private interface; waiting for one"
                );
                crate::net::wait_for_address(&vpc, WAIT).await?
            }
            Err(e) => {
                tracing::warn!(
                    phase = "identify",
                    "no VPC address from the metadata service: {e:#}; waiting for DHCP"
                );
                crate::net::wait_for_address(&vpc, WAIT)
                    .await
                    .with_context(|| format!("and the metadata service did not help: {e:#}"))?
            }
        },
    };
    let all = crate::net::own_addresses(&vpc)?;
    if all.len() > 1 {
        tracing::warn!("several addresses in {vpc}: {all:?}; using {address}");
    }
    cx.state.address = Some(address);
    tracing::info!(phase = "identify", address = %address, "this node is {} at {address}", cx.config.node);
    Ok(())
}

/// The VPC address the metadata service gives this droplet, configured
/// on the interface with the MAC it names; `None` if it names none.
async fn from_metadata(vpc: &VpcRange, service: &Metadata) -> Result<Option<Ipv4Addr>> {
    let Some(interface) = service.private_interface().await? else {
        return Ok(None);
    };
    if !vpc.contains(interface.address) {
        bail!(
            "the metadata service gives this droplet the VPC address {}, outside the site's VPC \
             {vpc}: was it created in another VPC?",
            interface.address
        );
    }
    let link = link_with_mac(&interface.mac)?;
    tracing::info!(
        phase = "identify",
        "no address in {vpc} from DHCP; the metadata service says {}/{} on {link} ({})",
        interface.address,
        interface.prefix,
        interface.mac
    );
    configure(&link, &interface).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !crate::net::own_addresses(vpc)?.contains(&interface.address) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{}/{} was configured on {link} but did not appear within {}s",
                interface.address,
                interface.prefix,
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Some(interface.address))
}

/// The name of the interface whose MAC is `mac` (lower-case, colons).
fn link_with_mac(mac: &str) -> Result<String> {
    let interfaces = nix::ifaddrs::getifaddrs().context("cannot list network interfaces")?;
    for ifaddr in interfaces {
        let Some(bytes) = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_link_addr())
            .and_then(|l| l.addr())
        else {
            continue;
        };
        let text: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if text.join(":") == mac {
            return Ok(ifaddr.interface_name);
        }
    }
    bail!("no network interface has the MAC {mac} the metadata service gives the private interface")
}

/// Put the address on the interface: NetworkManager's profile where it
/// runs, else `ip`.
async fn configure(link: &str, interface: &PrivateInterface) -> Result<()> {
    let cidr = format!("{}/{}", interface.address, interface.prefix);
    if network_manager_runs().await {
        // A profile of our own, tied to this interface: NetworkManager
        // brings it up now and at every boot, and stops trying DHCP there.
        let _ = command("nmcli", &["connection", "delete", PROFILE]).await;
        command(
            "nmcli",
            &[
                "connection",
                "add",
                "type",
                "ethernet",
                "con-name",
                PROFILE,
                "ifname",
                link,
                "ipv4.method",
                "manual",
                "ipv4.addresses",
                &cidr,
                "ipv4.never-default",
                "yes",
                "ipv6.method",
                "disabled",
                "connection.autoconnect",
                "yes",
                "connection.autoconnect-priority",
                "100",
            ],
        )
        .await?;
        command("nmcli", &["connection", "up", PROFILE]).await
    } else {
        command("ip", &["link", "set", link, "up"]).await?;
        match command("ip", &["address", "add", &cidr, "dev", link]).await {
            // Already there (a retry, or DHCP came late): as wanted.
            Err(e) if format!("{e:#}").contains("File exists") => Ok(()),
            other => other,
        }
    }
}

async fn network_manager_runs() -> bool {
    let mut command = tokio::process::Command::new("nmcli");
    command.args(["-t", "-f", "RUNNING", "general"]);
    matches!(bounded(&mut command).await, Ok(out) if out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "running")
}

async fn command(program: &str, args: &[&str]) -> Result<()> {
    let out = bounded(tokio::process::Command::new(program).args(args)).await?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata service's answer for a private interface whose MAC no
    /// interface here has.
    async fn metadata_saying(address: &str) -> Metadata {
        crate::metadata::stub(&[
            ("interfaces/private/0/mac", "02:00:5e:10:19:01"),
            ("interfaces/private/0/ipv4/address", address),
            ("interfaces/private/0/ipv4/netmask", "255.255.255.0"),
        ])
        .await
    }

    /// An address outside the site's VPC is refused for that alone: the
    /// same answer with an address inside goes past the check (and stops
    /// only at the MAC, which no interface here has), so nothing else
    /// refused the first.
    #[tokio::test(flavor = "current_thread")]
    async fn a_metadata_address_outside_the_vpc_is_refused() {
        let vpc: VpcRange = "198.18.0.0/24".parse().unwrap();
        let mut refusals = Vec::new();
        for address in ["198.19.0.5", "198.18.0.5"] {
            let refused = from_metadata(&vpc, &metadata_saying(address).await).await;
            refusals.push(format!("{:#}", refused.unwrap_err()));
        }
        assert!(
            refusals[0].contains("198.19.0.5, outside the site's VPC 198.18.0.0/24"),
            "{}",
            refusals[0]
        );
        assert!(
            refusals[1].contains("no network interface has the MAC 02:00:5e:10:19:01"),
            "{}",
            refusals[1]
        );
    }
}
