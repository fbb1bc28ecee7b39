//! The metadata guard (ARCHITECTURE §1, phase 0): nftables rules that let
//! only root on the host reach the platform's metadata service, which
//! serves this droplet's user data (its node key) to any process that
//! asks, for the droplet's whole life. Non-root processes (their sockets
//! carry their uid, so root inside a user namespace counts as non-root)
//! and forwarded traffic (containers, later pods) are dropped.
//!
//! Generated here and nowhere else; `firstboot-guard.service` loads it
//! before any other service starts.

use std::net::Ipv4Addr;

/// Where the rules are written on every node.
pub const RULES_PATH: &str = "/etc/firstboot/guard.nft";

/// The nftables table holding the rules.
pub const TABLE: &str = "firstboot_guard";

/// The ruleset for a platform whose metadata service is at `metadata`.
/// Loading it twice is harmless: the table is replaced whole.
pub fn rules(metadata: Ipv4Addr) -> String {
    format!(
        "# Written by builder: only root on this host may reach the metadata service\n\
         # at {metadata}, which serves this node's user data. Loaded by\n\
         # firstboot-guard.service before any other service starts.\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tip daddr {metadata} meta skuid != 0 counter reject\n\
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

    #[test]
    fn rules_name_the_address_in_both_chains() {
        let text = rules(Ipv4Addr::new(198, 19, 169, 254));
        assert_eq!(text.matches("ip daddr 198.19.169.254").count(), 2);
        assert!(text.contains("meta skuid != 0"));
        assert!(text.contains("hook forward"));
        assert!(!text.contains("169.254.169.254"));
    }
}
