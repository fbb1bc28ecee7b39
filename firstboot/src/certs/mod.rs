//! This node's certificates on disk: making keys and CSRs, installing
//! what the CA signed, and knowing when to renew. Which certificates a
//! node holds, and where, is the certificate plan ([`plan`]); a [`Slot`]
//! is one row's files on this node.
//!
//! A key is made once and kept: renewal certifies the same key again, so
//! a certificate file is always replaced whole and never disagrees with
//! its key, even for a reader (etcd) that reads both at every handshake.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rcgen::{KeyPair, PublicKeyData};

use node_contract::NodeConfig;

use crate::paths::Paths;
use crate::pki::{self, Ca, TempCa};

pub mod moved;
pub mod plan;

pub use plan::{CertPurpose, Plan, PLAN};

/// One certificate's files (a plan row's, on this node).
#[derive(Debug, Clone)]
pub struct Slot {
    pub purpose: CertPurpose,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
}

/// Whether any certificate of `plan` this node holds from the temporary
/// CA (not moved to FreeIPA) is due (see [`Slot::due`]).
pub fn any_due(paths: &Paths, config: &NodeConfig, plan: Plan) -> bool {
    let fqdn = config.fqdn(&config.node);
    moved::temporary_rows(paths, plan, config.role())
        .into_iter()
        .any(|row| row.slot(paths).due(&fqdn))
}

/// The bootstrap host's own certificates, every row of `plan` it holds
/// that has not moved to FreeIPA, each from its row's temporary CA, where
/// due.
pub fn ensure_from_temporary(
    paths: &Paths,
    config: &NodeConfig,
    plan: Plan,
    ca: &TempCa,
) -> Result<()> {
    let fqdn = config.fqdn(&config.node);
    for row in moved::temporary_rows(paths, plan, config.role()) {
        row.slot(paths).ensure_from(row.temporary_ca(ca)?, &fqdn)?;
    }
    Ok(())
}

impl Slot {
    /// This slot's key, made (0600) if there is none yet.
    pub fn key(&self) -> Result<KeyPair> {
        if let Ok(pem) = std::fs::read_to_string(&self.key) {
            if let Ok(key) = KeyPair::from_pem(&pem) {
                return Ok(key);
            }
            tracing::warn!("{} is damaged: making a new key", self.key.display());
        }
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")?;
        crate::fsutil::write_atomic(&self.key, key.serialize_pem().as_bytes(), 0o600)?;
        Ok(key)
    }

    /// A CSR for `fqdn` with this slot's key (SAN DNS=fqdn, CN=fqdn).
    pub fn csr(&self, fqdn: &str) -> Result<String> {
        pki::csr_for(&self.key()?, fqdn)
    }

    /// Install a certificate the CA signed, after checking that it is good
    /// now under `ca_pem`, names `fqdn`, and certifies this slot's key;
    /// `ca_pem` becomes what the slot trusts.
    pub fn install(&self, cert_pem: &str, ca_pem: &str, fqdn: &str) -> Result<()> {
        self.check(cert_pem, ca_pem, fqdn)?;
        crate::fsutil::write_atomic(&self.ca, ca_pem.as_bytes(), 0o644)?;
        crate::fsutil::write_atomic(&self.cert, cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The same checks, for a certificate from a new issuer (`issuer_pem`)
    /// while the trust file stays as it is: handoff's middle step, when
    /// the slot trusts the old and the new issuer together.
    pub fn install_leaf(&self, cert_pem: &str, issuer_pem: &str, fqdn: &str) -> Result<()> {
        self.check(cert_pem, issuer_pem, fqdn)?;
        crate::fsutil::write_atomic(&self.cert, cert_pem.as_bytes(), 0o644)
    }

    /// Whether `cert_pem` is good now under `ca_pem`, names `fqdn`, and
    /// certifies this slot's key.
    pub fn check(&self, cert_pem: &str, ca_pem: &str, fqdn: &str) -> Result<()> {
        pki::verify(cert_pem, ca_pem, Some(fqdn), crate::status::now()).with_context(|| {
            format!("the {} certificate for {fqdn} is not usable", self.purpose)
        })?;
        let key = self.key()?;
        if pki::inspect(cert_pem)?.spki != key.subject_public_key_info() {
            bail!(
                "the {} certificate for {fqdn} is not for this node's key",
                self.purpose
            );
        }
        Ok(())
    }

    /// Whether this slot needs a certificate now: none, unusable under
    /// its CA (expired, foreign, misnamed), or past two thirds of its life.
    pub fn due(&self, fqdn: &str) -> bool {
        let (Ok(cert), Ok(ca)) = (
            std::fs::read_to_string(&self.cert),
            std::fs::read_to_string(&self.ca),
        ) else {
            return true;
        };
        let now = crate::status::now();
        pki::verify(&cert, &ca, Some(fqdn), now).is_err() || pki::renewal_due(&cert, now)
    }

    /// Certify this slot's key with a CA at hand (the bootstrap host's own
    /// certificates), when due.
    pub fn ensure_from(&self, ca: &Ca, fqdn: &str) -> Result<bool> {
        let current_ca = std::fs::read_to_string(&self.ca).unwrap_or_default();
        if current_ca == ca.cert_pem() && !self.due(fqdn) {
            return Ok(false);
        }
        let key = self.key()?;
        let now = time::OffsetDateTime::now_utc();
        let cert = ca.certify_key(
            &key.subject_public_key_info(),
            fqdn,
            now - time::Duration::hours(1),
            now + pki::LEAF_LIFETIME,
        )?;
        self.install(&cert, ca.cert_pem(), fqdn)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_its_key_and_renews_only_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let ca = pki::TempCa::create("lab.example.org", &PLAN.intermediates()).unwrap();
        let etcd = plan::ETCD.temporary_ca(&ca).unwrap();
        let slot = plan::ETCD.slot(&paths);
        let fqdn = "node1.lab.example.org";
        assert!(slot.due(fqdn));
        assert!(slot.ensure_from(etcd, fqdn).unwrap());
        let key = std::fs::read_to_string(&slot.key).unwrap();
        let cert = std::fs::read_to_string(&slot.cert).unwrap();
        assert!(!slot.due(fqdn));
        assert!(
            !slot.ensure_from(etcd, fqdn).unwrap(),
            "renewed when not due"
        );
        // Another CA: the certificate is not usable under it, so renewed,
        // with the same key.
        let other = pki::TempCa::create("lab.example.org", &PLAN.intermediates()).unwrap();
        let other = plan::ETCD.temporary_ca(&other).unwrap();
        assert!(slot.ensure_from(other, fqdn).unwrap());
        assert_eq!(std::fs::read_to_string(&slot.key).unwrap(), key);
        assert_ne!(std::fs::read_to_string(&slot.cert).unwrap(), cert);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&slot.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A certificate for another key is refused.
        let stranger = ca.root.issue(fqdn).unwrap();
        assert!(plan::IDENTITY
            .slot(&paths)
            .install(&stranger.cert_pem, ca.root.cert_pem(), fqdn)
            .is_err());
    }
}
