//! The metadata guard's names, shared by `builder` (which renders the
//! ruleset) and `firstboot guard-allow` (which fills a unit's chain when
//! the unit starts): what may reach the metadata service is decided by
//! the systemd unit a socket belongs to (its cgroup), never by its uid,
//! since root in a container on the host's network is still root.

/// The nftables table holding the guard.
pub const TABLE: &str = "firstboot_guard";

/// The chain that lets `unit` (e.g. `firstboot.service`) through: its
/// name is derived from the unit's, so both sides agree without a list.
/// Every character nftables would not take in a chain name becomes `_`.
pub fn chain_for(unit: &str) -> String {
    let mut chain = String::from("allow_");
    chain.extend(
        unit.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    chain
}

/// Whether `unit` is a systemd service name the guard can name.
pub fn is_service_name(unit: &str) -> bool {
    unit.len() <= 200
        && unit.ends_with(".service")
        && unit.len() > ".service".len()
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_named_after_their_unit() {
        assert_eq!(chain_for("firstboot.service"), "allow_firstboot_service");
        assert_eq!(
            chain_for("afterburn-sshkeys@core.service"),
            "allow_afterburn_sshkeys_core_service"
        );
        assert!(is_service_name("afterburn-sshkeys@core.service"));
        assert!(!is_service_name("firstboot.socket"));
        assert!(!is_service_name(".service"));
        assert!(!is_service_name("a b.service"));
    }
}
