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

    /// An absolute node path under this root.
    pub fn under_root(&self, abs: &str) -> PathBuf {
        self.at(abs)
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
    /// The temporary CAs sealed under the bootstrap host's key (core peers).
    pub fn ca_backup(&self) -> PathBuf {
        self.state_dir().join("ca-backup")
    }
    /// Who has joined (bootstrap host only).
    pub fn registry_file(&self) -> PathBuf {
        self.state_dir().join("registry.json")
    }

    /// Each node's handoff step, as the join service keeps them
    /// (`join::server::HandoffBook`).
    pub fn handoff_book(&self) -> PathBuf {
        self.state_dir().join("handoff-book.json")
    }
    /// Join requests' nonces still inside the clock window (bootstrap host
    /// only): a restart of the join service must not forget them.
    pub fn nonces_file(&self) -> PathBuf {
        self.state_dir().join("join-nonces.log")
    }
    /// The same as one JSON document, as firstboot kept it before the log
    /// (`join::replay` takes it over).
    pub fn legacy_nonces_file(&self) -> PathBuf {
        self.state_dir().join("join-nonces.json")
    }
    /// Where the bootstrap host moved to, as its own signed request said
    /// (every other node): newer than what join recorded.
    pub fn bootstrap_moved(&self) -> PathBuf {
        self.state_dir().join("bootstrap-moved.json")
    }
    /// The site's FreeIPA, as a rebuilt first server found it
    /// (`state::FreeipaRejoin`).
    /// The address of the FreeIPA server a replica installs from, whose
    /// DNS the installing container resolves through.
    pub fn freeipa_install_server(&self) -> PathBuf {
        self.state_dir().join("freeipa-install-server")
    }
    pub fn freeipa_rejoin(&self) -> PathBuf {
        self.state_dir().join("freeipa-rejoin.json")
    }
    /// The newest credential generation this node has seen of each name
    /// (`state::KnownGenerations`).
    pub fn known_generations(&self) -> PathBuf {
        self.state_dir().join("known-generations.json")
    }
    /// Rebuilt peers' new addresses (`state::PeersMoved`).
    pub fn peers_moved(&self) -> PathBuf {
        self.state_dir().join("peers-moved.json")
    }
    /// Progress for operators and `builder status`: gone at reboot.
    pub fn status_file(&self) -> PathBuf {
        self.at(node_contract::status::STATUS_PATH)
    }
    /// The lock servers' last answer to Zincati (the FleetLock relay's).
    pub fn updates_file(&self) -> PathBuf {
        self.at(node_contract::fleetlock::UPDATES_PATH)
    }
    /// This node's identity: certificate (temporary root), key, the root.
    pub fn tls_dir(&self) -> PathBuf {
        self.at("/etc/firstboot/tls")
    }
    /// This core host's etcd certificate, key and the etcd CA: all the
    /// etcd container sees of /etc/firstboot.
    pub fn etcd_dir(&self) -> PathBuf {
        self.service_files("etcd")
    }
    /// A service's state (`firstboot exec` links it to the data volume when
    /// there is one).
    pub fn service_state(&self, service: &str) -> PathBuf {
        self.at(&format!("/var/lib/{service}"))
    }

    /// A service's state directory, `/var/lib/<service>`, made if absent:
    /// on the data volume when the node has one (the directory is then a
    /// link to `<data volume>/<service>`), so what a service keeps survives
    /// a rebuilt droplet whose volume is attached again.
    pub fn service_state_dir(
        &self,
        config: &node_contract::NodeConfig,
        service: &str,
    ) -> anyhow::Result<PathBuf> {
        use anyhow::Context as _;
        let dir = self.service_state(service);
        if dir.exists() {
            return Ok(dir);
        }
        match &config.storage.data_mount {
            Some(mount) => {
                let target = self.under_root(mount).join(service);
                std::fs::create_dir_all(&target)
                    .with_context(|| format!("cannot create {}", target.display()))?;
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::os::unix::fs::symlink(&target, &dir).with_context(|| {
                    format!("cannot link {} to {}", dir.display(), target.display())
                })?;
            }
            None => std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?,
        }
        Ok(dir)
    }
    /// A service's own files, all its container sees of /etc/firstboot.
    pub fn service_files(&self, service: &str) -> PathBuf {
        self.at(&format!("/etc/firstboot/{service}"))
    }
    /// The systemd-resolved DNS delegate (systemd 258 and later) routing
    /// the site domain to the temporary DNS.
    pub fn dns_delegate(&self) -> PathBuf {
        self.at("/etc/systemd/dns-delegate.d/firstboot-site.dns-delegate")
    }
    /// The site's DNS route as firstboot last set it (`resolver::saved`).
    pub fn site_dns(&self) -> PathBuf {
        self.state_dir().join("site-dns.json")
    }
    /// The same for older systemd-resolved: a drop-in of its global scope.
    pub fn resolved_dropin(&self) -> PathBuf {
        self.at("/etc/systemd/resolved.conf.d/firstboot-site.conf")
    }
    /// Arguments for services started through `firstboot exec`.
    pub fn service_args(&self, service: &str) -> PathBuf {
        self.at(&format!("/etc/firstboot/{service}.args"))
    }
    pub fn etc_hosts(&self) -> PathBuf {
        self.at("/etc/hosts")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.at("/var/lib/etcd/site")
    }
}
