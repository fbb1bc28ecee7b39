//! Where a node's certificate requests to FreeIPA run, and how that
//! certmonger sees the files it writes.
//!
//! A core host's FreeIPA server runs in the official container on Fedora
//! CoreOS, and the host itself is not an enrolled client: the host
//! keytab, `krb5.conf` and `/etc/ipa` are the container's, under its data
//! volume (FreeIPA's container platform puts them under `/data`: freeipa
//! `ipaplatform/*container*/paths.py`, and freeipa-container's
//! `volume-data-list`). So the request runs in the server's container,
//! whose certmonger authenticates with that keytab
//! (certmonger-ipa-submit(8)): `podman exec freeipa-server getcert
//! request ...`, with the key and certificate files on the data volume,
//! which the host sees under the server's state directory. firstboot puts
//! the slot's key there first and copies each certificate certmonger
//! writes into the slot, checked, replaced whole: the slot's directory
//! stays the one directory etcd sees, with the labels firstboot gives it
//! (files firstboot creates in the volume take the volume's label, so
//! the container reads them).
//!
//! In the lab the server (the simulator) runs on the host and keeps a
//! certmonger of its own at a private socket under its state directory
//! (`freeipa::site::HOST_SERVER_CERTMONGER`); the paths are then the
//! host's, and everything else is the same code.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use node_contract::{NodeConfig, Service};

use crate::certmonger::Certmonger;
use crate::certs::Slot;
use crate::paths::Paths;

/// Where a worker's certmonger keeps the certificates it tracks.
pub const HOST_STAGING: &str = "/etc/pki/firstboot";

/// The certmonger that certifies this node's keys from FreeIPA, and how
/// it sees the files it writes.
#[derive(Debug, Clone)]
pub struct RequestSite {
    pub certmonger: Certmonger,
    /// Where its files are, as this host sees them.
    host: PathBuf,
    /// The same directory as certmonger sees it.
    inside: PathBuf,
}

/// A slot's files where certmonger writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub host_key: PathBuf,
    pub host_cert: PathBuf,
    pub inside_key: PathBuf,
    pub inside_cert: PathBuf,
}

impl RequestSite {
    pub fn new(certmonger: Certmonger, host: PathBuf, inside: PathBuf) -> RequestSite {
        RequestSite {
            certmonger,
            host,
            inside,
        }
    }

    /// A core host's: its FreeIPA server's certmonger, as the image's
    /// catalog runs the server.
    pub fn freeipa_server(paths: &Paths, config: &NodeConfig) -> Result<RequestSite> {
        let service = crate::freeipa::site::SERVER;
        let state = paths.service_state_dir(config, service)?;
        let files = state.join("firstboot");
        match config.catalog.get(service) {
            Some(Service::Podman { data, .. }) => {
                // Where `exec::podman_command` mounts the state directory.
                let inside = data
                    .clone()
                    .unwrap_or_else(|| format!("/var/lib/{service}"));
                Ok(RequestSite::new(
                    Certmonger::in_container(service),
                    files,
                    Path::new(&inside).join("firstboot"),
                ))
            }
            Some(Service::Host { .. }) => {
                let socket = state.join(crate::freeipa::site::HOST_SERVER_CERTMONGER);
                Ok(RequestSite::new(
                    Certmonger::private(&format!("unix:path={}", socket.display())),
                    files.clone(),
                    files,
                ))
            }
            None => bail!("the image's catalog has no `{service}`: this is no core host's image"),
        }
    }

    /// A worker's: its own certmonger, on the system bus, which
    /// authenticates with the keytab `ipa-client-install` left it
    /// (certmonger-ipa-submit(8)). Its files live under `/etc/pki`, whose
    /// label (`cert_t`) certmonger may write on Fedora CoreOS
    /// (selinux-policy `certmonger.te`: `miscfiles_manage_generic_cert_files`).
    pub fn enrolled_host(paths: &Paths) -> RequestSite {
        RequestSite::new(
            Certmonger::system(),
            paths.under_root(HOST_STAGING),
            PathBuf::from(HOST_STAGING),
        )
    }

    pub fn staged(&self, slot: &Slot) -> Staged {
        let name = |path: &Path| path.file_name().map(PathBuf::from).unwrap_or_default();
        let dir = PathBuf::from(slot.purpose.to_string());
        Staged {
            host_key: self.host.join(&dir).join(name(&slot.key)),
            host_cert: self.host.join(&dir).join(name(&slot.cert)),
            inside_key: self.inside.join(&dir).join(name(&slot.key)),
            inside_cert: self.inside.join(&dir).join(name(&slot.cert)),
        }
    }

    /// The slot's key where certmonger reads it (0600), so it certifies
    /// that key instead of making one.
    pub fn stage_key(&self, slot: &Slot) -> Result<Staged> {
        let key = slot.key()?.serialize_pem();
        let staged = self.staged(slot);
        if std::fs::read_to_string(&staged.host_key).ok().as_deref() != Some(key.as_str()) {
            crate::fsutil::write_atomic(&staged.host_key, key.as_bytes(), 0o600)?;
        }
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::plan;

    #[test]
    fn requests_run_in_the_servers_container_with_its_paths_or_at_the_labs_socket() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        let mut config = crate::phases::tests::lab_config("node1");
        let slot = plan::ETCD.slot(&paths);
        config.catalog.insert(
            crate::freeipa::site::SERVER.to_owned(),
            Service::Podman {
                image: "quay.io/freeipa/freeipa-server:fedora-41".into(),
                command: Vec::new(),
                data: Some("/data".into()),
            },
        );
        let site = RequestSite::freeipa_server(&paths, &config).unwrap();
        let args: Vec<String> = site
            .certmonger
            .command(&["list"])
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["exec", "freeipa-server", "getcert", "list"]);
        let staged = site.staged(&slot);
        assert_eq!(
            staged.inside_key,
            Path::new("/data/firstboot/etcd/member.key")
        );
        assert_eq!(
            staged.host_cert,
            root.path()
                .join("var/lib/freeipa-server/firstboot/etcd/member.crt")
        );

        config.catalog.insert(
            crate::freeipa::site::SERVER.to_owned(),
            Service::Host {
                command: vec!["/usr/local/bin/ipa-sim".into(), "server".into()],
            },
        );
        let site = RequestSite::freeipa_server(&paths, &config).unwrap();
        let staged = site.staged(&slot);
        assert_eq!(staged.inside_key, staged.host_key);
        let command = site.certmonger.command(&["list"]);
        let env: Vec<_> = command.as_std().get_envs().collect();
        assert!(
            env.iter().any(|(k, v)| *k == "CERTMONGER_PVT_ADDRESS"
                && v.unwrap().to_string_lossy().ends_with("private.sock")),
            "{env:?}"
        );
        // The staged key is the slot's own, private.
        let staged = site.stage_key(&slot).unwrap();
        assert_eq!(
            std::fs::read_to_string(&staged.host_key).unwrap(),
            std::fs::read_to_string(&slot.key).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&staged.host_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
