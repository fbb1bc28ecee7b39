//! The metadata guard (ARCHITECTURE §1, phase 0): nftables rules that let
//! only the units that need it reach the platform's metadata service,
//! which serves this droplet's user data (its node key) to any process
//! that asks, for the droplet's whole life. Who may is decided by the
//! systemd unit a socket belongs to (nftables' `socket cgroupv2` match),
//! not by its uid: etcd and the FreeIPA server run as root with the host's
//! network, and root in a container is still a container. Forwarded
//! traffic (containers with a network of their own, later pods) is
//! dropped.
//!
//! The rules hold one empty chain per allowed unit; the unit fills its
//! own chain when it starts (`firstboot guard-allow` in `ExecStartPre`),
//! as a cgroup's identity exists only once the unit runs and is new at
//! every start. Everything else to the metadata address is rejected.
//!
//! Generated here and nowhere else; `firstboot-guard.service` loads it
//! before any other service starts.

use std::net::Ipv4Addr;

use node_contract::guard::{chain_for, TABLE};

/// Where the rules are written on every node.
pub const RULES_PATH: &str = "/etc/firstboot/guard.nft";

/// The unit that is ours: it calls `guard-allow` in its own unit file.
const FIRSTBOOT: &str = "firstboot.service";

/// What an allowed unit that is not ours runs before it starts: a
/// drop-in (a failure is tolerated: without its chain filled, the unit
/// is refused the metadata service and says so, nothing else breaks).
pub const DROPIN: &str = "# Written by builder: let this unit through the metadata guard\n\
                          [Service]\n\
                          ExecStartPre=-/usr/local/bin/firstboot guard-allow\n";

/// The drop-ins for the platform's own metadata readers (`clients`
/// without firstboot's): their paths.
pub fn dropin_paths(clients: &[String]) -> Vec<String> {
    clients
        .iter()
        .filter(|c| *c != FIRSTBOOT)
        .map(|c| format!("/etc/systemd/system/{c}.d/50-firstboot-guard.conf"))
        .collect()
}

/// The ruleset for a platform whose metadata service is at `metadata`,
/// reachable by the units `clients`. Loading it twice is harmless: the
/// table is replaced whole (and the units' chains emptied until they
/// start again).
pub fn rules(metadata: Ipv4Addr, clients: &[String]) -> String {
    let mut chains = String::new();
    let mut jumps = String::new();
    for client in clients {
        let chain = chain_for(client);
        chains.push_str(&format!(
            "\t# {client}: filled by `firstboot guard-allow` when it starts\n\
             \tchain {chain} {{\n\t}}\n"
        ));
        jumps.push_str(&format!("\t\tip daddr {metadata} jump {chain}\n"));
    }
    format!(
        "# Written by builder: only the units named below may reach the metadata\n\
         # service at {metadata}, which serves this node's user data. Loaded by\n\
         # firstboot-guard.service before any other service starts.\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         {chains}\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         {jumps}\
         \t\tip daddr {metadata} counter reject\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip daddr {metadata} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Vec<String> {
        vec![
            "firstboot.service".into(),
            "afterburn-sshkeys@core.service".into(),
        ]
    }

    #[test]
    fn rules_name_the_address_and_a_chain_per_unit_and_no_uid() {
        let text = rules(Ipv4Addr::new(198, 19, 169, 254), &clients());
        assert_eq!(text.matches("ip daddr 198.19.169.254").count(), 4);
        assert!(text.contains("chain allow_firstboot_service {"));
        assert!(text.contains("jump allow_afterburn_sshkeys_core_service"));
        assert!(!text.contains("skuid"), "a uid decides nothing");
        assert!(text.contains("hook forward"));
        assert!(!text.contains("169.254.169.254"));
        // The last word on the output chain is a refusal.
        let output = &text[text.find("chain output").unwrap()..];
        let reject = output.find("counter reject").unwrap();
        assert!(output[..reject].matches("jump").count() == 2);
    }

    /// A failed guard must keep every other shipped unit from starting:
    /// each requires it and starts after it.
    #[test]
    fn every_shipped_unit_requires_the_guard() {
        for unit in crate::render::units::SHIPPED {
            if unit.name == "firstboot-guard.service" || unit.name.ends_with(".timer") {
                continue;
            }
            let lines: Vec<&str> = unit.contents.lines().collect();
            assert!(
                lines.iter().any(|l| l.starts_with("Requires=")
                    && l.split_whitespace()
                        .any(|u| u.ends_with("firstboot-guard.service"))),
                "{} does not require the guard",
                unit.name
            );
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("After=") && l.contains("firstboot-guard.service")),
                "{} may start before the guard",
                unit.name
            );
        }
    }

    #[test]
    fn only_units_not_ours_get_a_dropin() {
        assert_eq!(
            dropin_paths(&clients()),
            ["/etc/systemd/system/afterburn-sshkeys@core.service.d/50-firstboot-guard.conf"]
        );
    }
}
