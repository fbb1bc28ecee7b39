//! A certificate that moves from the temporary CA to FreeIPA: where its
//! requests run on this node, and the record of the move that renewal
//! reads.
//!
//! **Where the request runs.** A core host's FreeIPA server runs in the
//! official container on Fedora CoreOS, and the host itself is not an
//! enrolled client: the host keytab, `krb5.conf` and `/etc/ipa` are the
//! container's, under its data volume (FreeIPA's container platform puts
//! them under `/data`: freeipa `ipaplatform/*container*/paths.py`, and
//! freeipa-container's `volume-data-list`). So the request runs in the
//! server's container, whose certmonger authenticates with that keytab
//! (certmonger-ipa-submit(8)): `podman exec freeipa-server getcert
//! request ...`, with the key and certificate files on the data volume,
//! which the host sees under the server's state directory. firstboot puts
//! the slot's key there first and copies each certificate certmonger
//! writes into the slot, checked, replaced whole: the slot's directory
//! stays the one directory etcd sees, with the labels firstboot gives it.
//! In the lab the server (the simulator) runs on the host and keeps a
//! certmonger of its own at a private socket under its state directory
//! (`freeipa::site::HOST_SERVER_CERTMONGER`); the paths are then the
//! host's, and everything else is the same code.
//!
//! **The record.** Once the handoff begins a row's move, `firstboot
//! renew` no longer signs it from the temporary CA (which would undo the
//! move); once the move is done, it copies certmonger's renewals into the
//! slot instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use node_contract::{NodeConfig, Role, Service};
use serde::{Deserialize, Serialize};

use crate::certmonger::Certmonger;
use crate::certs::plan::{self, Row};
use crate::certs::{CertPurpose, Slot};
use crate::paths::Paths;

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
        let state = crate::exec::state_dir(paths, config, service)?;
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

/// A row's move to FreeIPA, as this node records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// What the row trusted before (the temporary CA): the roll's "old"
    /// on every resumed run, whatever the trust file holds by then.
    pub old_ca: String,
    /// Its FreeIPA issuer's certificate.
    pub new_ca: String,
    /// Where certmonger keeps its certificate, as this host sees it.
    pub staged_cert: PathBuf,
    /// The move is over: the slot trusts `new_ca` alone and certmonger
    /// renews it.
    pub done: bool,
}

fn record_file(paths: &Paths, purpose: CertPurpose) -> PathBuf {
    paths
        .state_dir()
        .join("handoff")
        .join(format!("{purpose}.json"))
}

impl Moved {
    pub fn load(paths: &Paths, purpose: CertPurpose) -> Result<Option<Moved>> {
        crate::fsutil::read_json(&record_file(paths, purpose))
    }

    pub fn save(&self, paths: &Paths, purpose: CertPurpose) -> Result<()> {
        let file = record_file(paths, purpose);
        crate::fsutil::write_atomic(&file, &serde_json::to_vec_pretty(self)?, 0o644)
    }
}

/// The rows of the plan this node still gets from the temporary CA: those
/// its role holds whose move to FreeIPA has not begun. A record that
/// cannot be read counts as a move begun: signing from the temporary CA
/// could undo a move, leaving a certificate alone cannot.
pub fn temporary_rows(paths: &Paths, role: Role) -> Vec<&'static Row> {
    plan::held_by(role)
        .filter(|row| match Moved::load(paths, row.purpose) {
            Ok(None) => true,
            Ok(Some(_)) => false,
            Err(e) => {
                tracing::warn!("the handoff record of {}: {e:#}", row.purpose);
                false
            }
        })
        .collect()
}

/// What `firstboot renew` does for a row: sign it from the temporary CA
/// as before, leave it to the handoff in progress, or copy certmonger's
/// renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Temporary,
    Moving,
    Synced { copied: bool },
}

/// A moved row's renewal: certmonger's newer certificate, checked under
/// the row's FreeIPA issuer and for the slot's key, replaces the slot's
/// whole. A certificate that does not check is left where it is, with
/// the reason (the slot keeps its working one).
pub fn renewal(paths: &Paths, slot: &Slot, fqdn: &str) -> Result<Renewal> {
    let Some(moved) = Moved::load(paths, slot.purpose)? else {
        return Ok(Renewal::Temporary);
    };
    if !moved.done {
        return Ok(Renewal::Moving);
    }
    let staged = std::fs::read_to_string(&moved.staged_cert)
        .with_context(|| format!("certmonger's copy {}", moved.staged_cert.display()))?;
    let current = std::fs::read_to_string(&slot.cert).unwrap_or_default();
    if staged == current {
        return Ok(Renewal::Synced { copied: false });
    }
    slot.install_leaf(&staged, &moved.new_ca, fqdn)
        .with_context(|| format!("certmonger's renewal in {}", moved.staged_cert.display()))?;
    Ok(Renewal::Synced { copied: true })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Renewal leaves a moving row alone, and copies a moved row's renewal
    /// only when it checks under the new issuer for the slot's key.
    #[test]
    fn renewal_copies_only_a_good_certificate_from_certmonger() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        let slot = plan::ETCD.slot(&paths);
        let fqdn = "node1.lab.example.org";
        assert_eq!(renewal(&paths, &slot, fqdn).unwrap(), Renewal::Temporary);

        let old = crate::pki::TempCa::create("lab.example.org").unwrap();
        let new = crate::pki::TempCa::create("lab.example.org").unwrap();
        slot.ensure_from(&old.etcd, fqdn).unwrap();
        let staged_cert = root.path().join("staged/member.crt");
        let mut moved = Moved {
            old_ca: old.etcd.cert_pem().to_owned(),
            new_ca: new.etcd.cert_pem().to_owned(),
            staged_cert: staged_cert.clone(),
            done: false,
        };
        moved.save(&paths, slot.purpose).unwrap();
        assert_eq!(renewal(&paths, &slot, fqdn).unwrap(), Renewal::Moving);

        moved.done = true;
        moved.save(&paths, slot.purpose).unwrap();
        let key = slot.key().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let issue = |ca: &crate::pki::Ca| {
            ca.certify_key(
                &rcgen::PublicKeyData::subject_public_key_info(&key),
                fqdn,
                now - time::Duration::hours(1),
                now + time::Duration::hours(2),
            )
            .unwrap()
        };
        // From the wrong CA: refused, the slot unchanged.
        let before = std::fs::read_to_string(&slot.cert).unwrap();
        crate::fsutil::write_atomic(&staged_cert, issue(&old.etcd).as_bytes(), 0o644).unwrap();
        assert!(renewal(&paths, &slot, fqdn).is_err());
        assert_eq!(std::fs::read_to_string(&slot.cert).unwrap(), before);
        // From the new one: copied, once.
        let good = issue(&new.etcd);
        crate::fsutil::write_atomic(&staged_cert, good.as_bytes(), 0o644).unwrap();
        assert_eq!(
            renewal(&paths, &slot, fqdn).unwrap(),
            Renewal::Synced { copied: true }
        );
        assert_eq!(std::fs::read_to_string(&slot.cert).unwrap(), good);
        assert_eq!(
            renewal(&paths, &slot, fqdn).unwrap(),
            Renewal::Synced { copied: false }
        );
    }

    /// Once a row's move begins, nothing signs it from the temporary CA
    /// again: the bootstrap host's own certificates at every start and
    /// `firstboot renew` keep to the rows not moved.
    #[test]
    fn the_temporary_ca_no_longer_signs_a_row_being_moved() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        let config = crate::phases::tests::lab_config("node1");
        assert_eq!(config.role(), Role::Core);
        let ca = crate::pki::TempCa::create("lab.example.org").unwrap();
        crate::certs::ensure_from_temporary(&paths, &config, &ca).unwrap();
        let etcd = plan::ETCD.slot(&paths);
        let identity = plan::IDENTITY.slot(&paths);
        let before = std::fs::read_to_string(&etcd.cert).unwrap();
        Moved {
            old_ca: ca.etcd.cert_pem().to_owned(),
            new_ca: String::new(),
            staged_cert: root.path().join("staged.crt"),
            done: false,
        }
        .save(&paths, CertPurpose::Etcd)
        .unwrap();
        let rows: Vec<_> = temporary_rows(&paths, Role::Core)
            .iter()
            .map(|r| r.purpose)
            .collect();
        assert_eq!(rows, [CertPurpose::Identity]);
        // Another temporary CA: identity is re-signed, etcd left alone.
        let other = crate::pki::TempCa::create("lab.example.org").unwrap();
        let identity_before = std::fs::read_to_string(&identity.cert).unwrap();
        crate::certs::ensure_from_temporary(&paths, &config, &other).unwrap();
        assert_ne!(
            std::fs::read_to_string(&identity.cert).unwrap(),
            identity_before
        );
        assert_eq!(std::fs::read_to_string(&etcd.cert).unwrap(), before);
        // An unreadable record counts as a move begun.
        std::fs::write(paths.state_dir().join("handoff/etcd.json"), "{").unwrap();
        assert_eq!(temporary_rows(&paths, Role::Core).len(), 1);
    }
}
