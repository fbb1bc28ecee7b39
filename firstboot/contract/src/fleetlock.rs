//! What `builder render` tells Zincati and firstboot serves: the relay's
//! port (Zincati's `fleet_lock` base URL on every node) and the reboot
//! group of each role. Defined once for both sides.

use crate::Role;

/// The FleetLock relay's port on 127.0.0.1 of every node.
pub const RELAY_PORT: u16 = 7446;
/// The lock server's port on the core hosts' VPC addresses.
pub const LOCK_PORT: u16 = 7445;
/// Where `builder render` writes Zincati's configuration (a drop-in of
/// the administrator's directory: coreos/zincati docs/usage/configuration.md).
pub const ZINCATI_DROPIN_PATH: &str = "/etc/zincati/config.d/55-updates-strategy.toml";

/// Zincati's base URL: the relay. It ends with `/` because Zincati joins
/// `v1/pre-reboot` to it with `Url::join`, which would drop a last path
/// segment without one (coreos/zincati `src/fleet_lock/mod.rs`).
pub fn base_url() -> String {
    format!("http://127.0.0.1:{RELAY_PORT}/")
}

/// A role's reboot group (the protocol's `group`, `^[a-zA-Z0-9.-]+$`).
pub fn group(role: Role) -> &'static str {
    match role {
        Role::Core => "core",
        Role::Worker => "workers",
    }
}
