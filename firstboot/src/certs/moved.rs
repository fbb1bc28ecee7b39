//! A certificate moving from the temporary CA to FreeIPA, as this node
//! records it (handoff's etcd step writes the record; `handoff::request`
//! says where certmonger runs).
//!
//! Once the handoff begins a row's move, nothing signs it from the
//! temporary CA again (which would undo the move): not the bootstrap
//! host's own certificates at a start, not `firstboot renew`, not a
//! renewal through the join service. Once the move is done, `firstboot
//! renew` copies certmonger's renewals into the slot instead, checked.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use node_contract::Role;
use serde::{Deserialize, Serialize};

use super::plan::{Plan, Row};
use super::{CertPurpose, Slot};
use crate::paths::Paths;

/// A row's move to FreeIPA, as this node records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// What the row trusted before (the temporary CA): the roll's "old"
    /// on every resumed run, whatever the trust file holds by then.
    pub old_ca: String,
    /// Its FreeIPA issuer's certificate.
    pub new_ca: String,
    /// Where certmonger keeps its certificate and key, as this host sees
    /// them.
    pub staged_cert: PathBuf,
    pub staged_key: PathBuf,
    /// The move is over: the slot trusts `new_ca` alone and certmonger
    /// renews it.
    pub done: bool,
    /// The last step of the roll this node finished, where the roll's
    /// steps are this node's to keep (the identity's; etcd's are in
    /// etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
}

/// A roll's progress on one holder, in order: trust the old and the
/// new CA, present a certificate from the new, trust the new alone
/// (etcd's members in `handoff::recertify`, every node's identity in
/// `handoff::identity`). kebab-case on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Bundle,
    Leaf,
    Dropped,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Bundle, Step::Leaf, Step::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Bundle => "bundle",
            Step::Leaf => "leaf",
            Step::Dropped => "dropped",
        }
    }

    pub fn parse(text: &[u8]) -> Option<Step> {
        Step::ALL
            .into_iter()
            .find(|s| s.as_str().as_bytes() == text)
    }

    pub fn previous(self) -> Option<Step> {
        match self {
            Step::Bundle => None,
            Step::Leaf => Some(Step::Bundle),
            Step::Dropped => Some(Step::Leaf),
        }
    }

    /// What waiting for it means, for errors and progress.
    pub fn waiting_for(self) -> &'static str {
        match self {
            Step::Bundle => "to trust the old and the new CA",
            Step::Leaf => "to present a certificate from the new CA",
            Step::Dropped => "to trust the new CA alone",
        }
    }
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
pub fn temporary_rows(paths: &Paths, plan: Plan, role: Role) -> Vec<&'static Row> {
    plan.held_by(role)
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
/// the row's FreeIPA issuer, replaces the slot's whole. If certmonger
/// renewed with a key of its own making (it may rekey on a resubmission),
/// its key goes in first, then the certificate: a reader between the two
/// renames (etcd, at a handshake) fails that handshake and the next one
/// succeeds. A certificate that checks for neither key is left where it
/// is, with the reason (the slot keeps its working one).
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
    let for_slot_key = match slot.install_leaf(&staged, &moved.new_ca, fqdn) {
        Ok(()) => return Ok(Renewal::Synced { copied: true }),
        Err(e) => e,
    };
    if let Some(key) = rekeyed(&staged, &moved.staged_key, &moved.new_ca, fqdn) {
        crate::fsutil::write_atomic(&slot.key, key.as_bytes(), 0o600)?;
        crate::fsutil::write_atomic(&slot.cert, staged.as_bytes(), 0o644)?;
        tracing::info!(
            "certmonger renewed the {} certificate with a new key: both in place",
            slot.purpose
        );
        return Ok(Renewal::Synced { copied: true });
    }
    Err(for_slot_key)
        .with_context(|| format!("certmonger's renewal in {}", moved.staged_cert.display()))
}

/// certmonger's own key (PEM), when `cert_pem` is good under `ca_pem`,
/// names `fqdn` and certifies the key in `key_file`. Read only: a key file
/// that does not parse is no match (never replaced, as `Slot::key` would).
fn rekeyed(cert_pem: &str, key_file: &std::path::Path, ca_pem: &str, fqdn: &str) -> Option<String> {
    use rcgen::PublicKeyData as _;
    let key_pem = std::fs::read_to_string(key_file).ok()?;
    let key = rcgen::KeyPair::from_pem(&key_pem).ok()?;
    crate::pki::verify(cert_pem, ca_pem, Some(fqdn), crate::status::now()).ok()?;
    (crate::pki::inspect(cert_pem).ok()?.spki == key.subject_public_key_info()).then_some(key_pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::plan;

    /// Renewal leaves a moving row alone, and copies a moved row's renewal
    /// only when it checks under the new issuer for the slot's key.
    #[test]
    fn renewal_copies_only_a_good_certificate_from_certmonger() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        let slot = plan::ETCD.slot(&paths);
        let fqdn = "node1.lab.example.org";
        assert_eq!(renewal(&paths, &slot, fqdn).unwrap(), Renewal::Temporary);

        let old =
            crate::pki::TempCa::create("lab.example.org", &plan::PLAN.intermediates()).unwrap();
        let new =
            crate::pki::TempCa::create("lab.example.org", &plan::PLAN.intermediates()).unwrap();
        slot.ensure_from(plan::ETCD.temporary_ca(&old).unwrap(), fqdn)
            .unwrap();
        let staged_cert = root.path().join("staged/member.crt");
        let mut moved = Moved {
            old_ca: plan::ETCD.temporary_ca(&old).unwrap().cert_pem().to_owned(),
            new_ca: plan::ETCD.temporary_ca(&new).unwrap().cert_pem().to_owned(),
            staged_cert: staged_cert.clone(),
            staged_key: root.path().join("staged/member.key"),
            done: false,
            step: None,
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
        crate::fsutil::write_atomic(
            &staged_cert,
            issue(plan::ETCD.temporary_ca(&old).unwrap()).as_bytes(),
            0o644,
        )
        .unwrap();
        assert!(renewal(&paths, &slot, fqdn).is_err());
        assert_eq!(std::fs::read_to_string(&slot.cert).unwrap(), before);
        // From the new one: copied, once.
        let good = issue(plan::ETCD.temporary_ca(&new).unwrap());
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
        // certmonger rekeyed, but its key file does not parse: no match,
        // and the file is left as it is (never replaced with a new key).
        let fresh_for_garbage =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let orphan = plan::ETCD
            .temporary_ca(&new)
            .unwrap()
            .certify_key(
                &rcgen::PublicKeyData::subject_public_key_info(&fresh_for_garbage),
                fqdn,
                now - time::Duration::hours(1),
                now + time::Duration::hours(2),
            )
            .unwrap();
        crate::fsutil::write_atomic(&moved.staged_key, b"not a key", 0o600).unwrap();
        crate::fsutil::write_atomic(&staged_cert, orphan.as_bytes(), 0o644).unwrap();
        assert!(renewal(&paths, &slot, fqdn).is_err());
        assert_eq!(std::fs::read(&moved.staged_key).unwrap(), b"not a key");
        assert_eq!(std::fs::read_to_string(&slot.cert).unwrap(), good);
        // certmonger rekeyed: its key and certificate go in together.
        let fresh = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        crate::fsutil::write_atomic(&moved.staged_key, fresh.serialize_pem().as_bytes(), 0o600)
            .unwrap();
        let rekeyed = plan::ETCD
            .temporary_ca(&new)
            .unwrap()
            .certify_key(
                &rcgen::PublicKeyData::subject_public_key_info(&fresh),
                fqdn,
                now - time::Duration::hours(1),
                now + time::Duration::hours(2),
            )
            .unwrap();
        crate::fsutil::write_atomic(&staged_cert, rekeyed.as_bytes(), 0o644).unwrap();
        assert_eq!(
            renewal(&paths, &slot, fqdn).unwrap(),
            Renewal::Synced { copied: true }
        );
        assert_eq!(std::fs::read_to_string(&slot.cert).unwrap(), rekeyed);
        assert_eq!(
            std::fs::read_to_string(&slot.key).unwrap(),
            fresh.serialize_pem()
        );
        slot.check(
            &rekeyed,
            plan::ETCD.temporary_ca(&new).unwrap().cert_pem(),
            fqdn,
        )
        .unwrap();
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
        let ca =
            crate::pki::TempCa::create("lab.example.org", &plan::PLAN.intermediates()).unwrap();
        crate::certs::ensure_from_temporary(&paths, &config, plan::PLAN, &ca).unwrap();
        let etcd = plan::ETCD.slot(&paths);
        let identity = plan::IDENTITY.slot(&paths);
        let before = std::fs::read_to_string(&etcd.cert).unwrap();
        Moved {
            old_ca: plan::ETCD.temporary_ca(&ca).unwrap().cert_pem().to_owned(),
            new_ca: String::new(),
            staged_cert: root.path().join("staged.crt"),
            staged_key: root.path().join("staged.key"),
            done: false,
            step: None,
        }
        .save(&paths, CertPurpose::Etcd)
        .unwrap();
        let rows: Vec<_> = temporary_rows(&paths, plan::PLAN, Role::Core)
            .iter()
            .map(|r| r.purpose)
            .collect();
        assert_eq!(rows, [CertPurpose::Identity]);
        // Another temporary CA: identity is re-signed, etcd left alone.
        let other =
            crate::pki::TempCa::create("lab.example.org", &plan::PLAN.intermediates()).unwrap();
        let identity_before = std::fs::read_to_string(&identity.cert).unwrap();
        crate::certs::ensure_from_temporary(&paths, &config, plan::PLAN, &other).unwrap();
        assert_ne!(
            std::fs::read_to_string(&identity.cert).unwrap(),
            identity_before
        );
        assert_eq!(std::fs::read_to_string(&etcd.cert).unwrap(), before);
        // An unreadable record counts as a move begun.
        std::fs::write(paths.state_dir().join("handoff/etcd.json"), "{").unwrap();
        assert_eq!(temporary_rows(&paths, plan::PLAN, Role::Core).len(), 1);
    }
}
