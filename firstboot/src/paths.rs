//! Where firstboot keeps things on a node. One root so tests can point
//! everything at a scratch directory (`FIRSTBOOT_ROOT`).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// The real node layout, or one under `$FIRSTBOOT_ROOT` (tests).
    pub fn from_env() -> Paths {
        Paths {
            root: std::env::var_os("FIRSTBOOT_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }

    pub fn under(root: &Path) -> Paths {
        Paths {
            root: root.to_owned(),
        }
    }

    fn at(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn node_json(&self) -> PathBuf {
        self.at(node_contract::NODE_JSON_PATH)
    }
    /// Phase state: survives reboots.
    pub fn state_dir(&self) -> PathBuf {
        self.at("/var/lib/firstboot")
    }
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }
    /// Written after the last phase; the unit's condition skips the node then.
    pub fn done_marker(&self) -> PathBuf {
        self.state_dir().join("done")
    }
    /// The temporary CA (bootstrap host only).
    pub fn ca_dir(&self) -> PathBuf {
        self.state_dir().join("ca")
    }
    /// The temporary CA sealed under the site secret (core peers).
    pub fn ca_backup(&self) -> PathBuf {
        self.state_dir().join("ca-backup")
    }
    /// Who has joined (bootstrap host only).
    pub fn registry_file(&self) -> PathBuf {
        self.state_dir().join("registry.json")
    }
    /// Progress for operators and `builder status`: gone at reboot.
    pub fn status_file(&self) -> PathBuf {
        self.at("/run/firstboot/status.json")
    }
    /// This node's TLS identity, CA and key.
    pub fn tls_dir(&self) -> PathBuf {
        self.at("/etc/firstboot/tls")
    }
    /// Arguments for services started through `firstboot exec`.
    pub fn service_args(&self, service: &str) -> PathBuf {
        self.at(&format!("/etc/firstboot/{service}.args"))
    }
    pub fn etc_hosts(&self) -> PathBuf {
        self.at("/etc/hosts")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.at("/etc/resolv.conf")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.at("/var/lib/etcd/site")
    }
}
