//! systemd units: the ones shipped in `units/`, and the mount and swap
//! units generated for each host's volumes.

use crate::site::{Host, Site};

/// The units in `units/`, built in. `enabled` ones start at boot; the rest
/// are started by firstboot when their phase comes. `bootstrap_only` ones
/// are enabled on the bootstrap host alone (its join service's and DNS's
/// sockets).
pub struct ShippedUnit {
    pub name: &'static str,
    pub contents: &'static str,
    pub enabled: bool,
    pub bootstrap_only: bool,
}

/// What the bootstrap host's firstboot.service gets besides: the sockets
/// systemd holds for its join service and temporary DNS.
pub const BOOTSTRAP_DROPIN_PATH: &str =
    "/etc/systemd/system/firstboot.service.d/50-bootstrap-sockets.conf";
pub const BOOTSTRAP_DROPIN: &str =
    "# Written by builder: the bootstrap host's join service and DNS take\n\
                                    # their ports from the sockets systemd holds.\n\
                                    [Unit]\n\
                                    Requires=firstboot-join.socket firstboot-dns.socket\n\
                                    [Service]\n\
                                    Sockets=firstboot-join.socket firstboot-dns.socket\n";

pub const SHIPPED: &[ShippedUnit] = &[
    ShippedUnit {
        name: "firstboot-peer.socket",
        contents: include_str!("../../../units/firstboot-peer.socket"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot-join.socket",
        contents: include_str!("../../../units/firstboot-join.socket"),
        enabled: true,
        bootstrap_only: true,
    },
    ShippedUnit {
        name: "firstboot-dns.socket",
        contents: include_str!("../../../units/firstboot-dns.socket"),
        enabled: true,
        bootstrap_only: true,
    },
    ShippedUnit {
        name: "firstboot-guard.service",
        contents: include_str!("../../../units/firstboot-guard.service"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot.service",
        contents: include_str!("../../../units/firstboot.service"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot-peer.service",
        contents: include_str!("../../../units/firstboot-peer.service"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot-fleetlock.socket",
        contents: include_str!("../../../units/firstboot-fleetlock.socket"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot-fleetlock.service",
        contents: include_str!("../../../units/firstboot-fleetlock.service"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot-renew.service",
        contents: include_str!("../../../units/firstboot-renew.service"),
        enabled: false,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "firstboot-renew.timer",
        contents: include_str!("../../../units/firstboot-renew.timer"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "etcd.service",
        contents: include_str!("../../../units/etcd.service"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "freeipa-server.service",
        contents: include_str!("../../../units/freeipa-server.service"),
        enabled: true,
        bootstrap_only: false,
    },
    ShippedUnit {
        name: "freeipa-client.service",
        contents: include_str!("../../../units/freeipa-client.service"),
        enabled: true,
        bootstrap_only: false,
    },
];

/// Where a host's data volume is mounted.
pub const DATA_MOUNT_POINT: &str = "/var/lib/data";

/// The stable device path DigitalOcean gives an attached volume.
pub fn volume_device(volume_name: &str) -> String {
    format!("/dev/disk/by-id/scsi-0DO_Volume_{volume_name}")
}

/// A generated unit: name and contents.
pub struct GeneratedUnit {
    pub name: String,
    pub contents: String,
}

/// Mount unit for the data volume and swap unit for the swap volume.
pub fn volume_units(site: &Site, host: &Host) -> Vec<GeneratedUnit> {
    let mut units = Vec::new();
    if host.volumes.data_gib > 0 {
        let device = volume_device(&site.resource_name(host, "data"));
        units.push(GeneratedUnit {
            name: format!("{}.mount", escape_path(DATA_MOUNT_POINT)),
            contents: format!(
                "[Unit]\nDescription=Data volume ({} GiB)\nBefore=local-fs.target\n\n\
                 [Mount]\nWhat={device}\nWhere={DATA_MOUNT_POINT}\nType=xfs\nOptions=defaults,discard\n\n\
                 [Install]\nRequiredBy=local-fs.target\n",
                host.volumes.data_gib
            ),
        });
    }
    if host.volumes.swap_gib > 0 {
        let device = volume_device(&site.resource_name(host, "swap"));
        units.push(GeneratedUnit {
            name: format!("{}.swap", escape_path(&device)),
            contents: format!(
                "[Unit]\nDescription=Swap volume ({} GiB)\n\n[Swap]\nWhat={device}\n\n\
                 [Install]\nWantedBy=swap.target\n",
                host.volumes.swap_gib
            ),
        });
    }
    units
}

/// `systemd-escape --path`: the unit name systemd expects for a path.
pub fn escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, byte) in trimmed.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_systemd_escape() {
        // Expected values from `systemd-escape --path`.
        assert_eq!(escape_path("/var/lib/data"), "var-lib-data");
        assert_eq!(
            escape_path("/dev/disk/by-id/scsi-0DO_Volume_ns1-example-com-swap"),
            "dev-disk-by\\x2did-scsi\\x2d0DO_Volume_ns1\\x2dexample\\x2dcom\\x2dswap"
        );
        assert_eq!(escape_path("/"), "-");
        assert_eq!(escape_path("/.hidden/a b"), "\\x2ehidden-a\\x20b");
    }

    #[test]
    fn shipped_units_have_install_sections_when_enabled() {
        for unit in SHIPPED.iter().filter(|u| u.enabled) {
            assert!(unit.contents.contains("[Install]"), "{}", unit.name);
        }
    }
}
