//! The temporary CAs' sealed copy. Until FreeIPA takes over, the CA keys
//! live on the bootstrap host only; if that host's disk is lost, a rebuilt
//! host must rejoin the cluster its peers still run, which needs those
//! CAs. So every core peer keeps a copy sealed (ChaCha20-Poly1305) under a
//! key derived from the **bootstrap host's CA-copy key** (its node.json
//! alone holds it, and it outlives the node key's generations): the peers
//! cannot open it, only the bootstrap host (whose config a rebuild gives
//! back) can, and a forged or altered copy does not open. Peers hand it only to
//! the bootstrap host, proven by its signature (see `join::peer`).
//!
//! Each copy carries a generation, raised whenever the registry changes,
//! so a rebuilt host restores the newest one its peers hold.
//!
//! Once the handoff ends the temporary services, the copy carries no CA
//! (version 3, `root` none): the registry alone, which a rebuilt
//! bootstrap host still needs (who joined, and which credential
//! generations are retired). Each core host's copy with the CA keys is
//! then replaced by one without (`phases::handoff`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Result};
use hmac::{Hmac, Mac};
use node_contract::{Generation, HostName, Seed};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::pki::{CaPems, TempCa};

/// What the sealed copy holds (as [`Sealed`] on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Sealed", into = "Sealed")]
pub struct CaBackup {
    pub generation: u64,
    /// The temporary root; none once the temporary CA has ended (then
    /// there are no intermediates either).
    pub root: Option<CaPems>,
    /// The temporary intermediates, by name (`pki::Signer::Intermediate`).
    pub intermediates: BTreeMap<String, CaPems>,
    pub registry: BTreeMap<HostName, Ipv4Addr>,
    /// The hosts' newest credential generations (registry version 2):
    /// a restored join service keeps refusing the retired ones.
    pub generations: BTreeMap<HostName, Generation>,
    /// When admission of hosts that never joined ends (Unix seconds).
    pub admission_deadline: u64,
    /// The core hosts added since the site's launch (registry version 3).
    pub added_core: BTreeSet<HostName>,
}

impl CaBackup {
    /// Version 4 carries the core hosts added since the launch; version 3
    /// may carry no CA (the temporary CA ended); version 2
    /// carries the intermediates as a map by name; version 1 (no
    /// `version` field) carried its one intermediate, etcd's, in fields of
    /// its own, and opens as version 2 with that one entry.
    pub const VERSION: u32 = 4;

    /// The CAs it carries, checked (`pki::TempCa::from_pems`); none once
    /// the temporary CA has ended.
    pub fn ca(&self) -> Result<Option<TempCa>> {
        self.root
            .as_ref()
            .map(|root| TempCa::from_pems(root, &self.intermediates))
            .transpose()
    }
}

/// The only intermediate version 1 knew: its fields are frozen history,
/// not the plan's (which may name more).
const VERSION_1_INTERMEDIATE: &str = "etcd";

/// The copy as sealed: every version's fields, so older copies still open.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    #[serde(default = "first_version")]
    version: u32,
    generation: u64,
    /// Required before version 3; absent once the temporary CA ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    intermediates: BTreeMap<String, CaPems>,
    /// Version 1's etcd CA; never written.
    #[serde(default, skip_serializing)]
    etcd_cert_pem: Option<String>,
    #[serde(default, skip_serializing)]
    etcd_key_pem: Option<String>,
    registry: BTreeMap<HostName, Ipv4Addr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    generations: BTreeMap<HostName, Generation>,
    admission_deadline: u64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    added_core: BTreeSet<HostName>,
}

fn first_version() -> u32 {
    1
}

impl TryFrom<Sealed> for CaBackup {
    type Error = String;

    fn try_from(sealed: Sealed) -> Result<CaBackup, String> {
        if sealed.version > CaBackup::VERSION {
            return Err(format!(
                "the CA copy has version {}, but this firstboot reads up to version {}",
                sealed.version,
                CaBackup::VERSION
            ));
        }
        let mut intermediates = sealed.intermediates;
        match (sealed.etcd_cert_pem, sealed.etcd_key_pem) {
            (None, None) => {}
            (Some(cert_pem), Some(key_pem)) if sealed.version == 1 => {
                intermediates.insert(
                    VERSION_1_INTERMEDIATE.to_owned(),
                    CaPems { cert_pem, key_pem },
                );
            }
            _ => {
                return Err(format!(
                    "the CA copy (version {}) holds a damaged or misplaced version 1 etcd CA",
                    sealed.version
                ))
            }
        }
        let root = match (sealed.root_cert_pem, sealed.root_key_pem) {
            (Some(cert_pem), Some(key_pem)) => Some(CaPems { cert_pem, key_pem }),
            (None, None) if sealed.version >= 3 && intermediates.is_empty() => None,
            _ => {
                return Err(format!(
                    "the CA copy (version {}) holds half a root CA, or intermediates without one",
                    sealed.version
                ))
            }
        };
        Ok(CaBackup {
            generation: sealed.generation,
            root,
            intermediates,
            registry: sealed.registry,
            generations: sealed.generations,
            admission_deadline: sealed.admission_deadline,
            added_core: sealed.added_core,
        })
    }
}

impl From<CaBackup> for Sealed {
    fn from(backup: CaBackup) -> Sealed {
        Sealed {
            version: CaBackup::VERSION,
            generation: backup.generation,
            root_cert_pem: backup.root.as_ref().map(|r| r.cert_pem.clone()),
            root_key_pem: backup.root.map(|r| r.key_pem),
            intermediates: backup.intermediates,
            etcd_cert_pem: None,
            etcd_key_pem: None,
            registry: backup.registry,
            generations: backup.generations,
            admission_deadline: backup.admission_deadline,
            added_core: backup.added_core,
        }
    }
}

const CONTEXT: &[u8] = b"firstboot ca backup v2";

fn key(seed: &Seed) -> LessSafeKey {
    let mut mac = Hmac::<Sha256>::new_from_slice(seed.as_bytes()).expect("any key length");
    mac.update(CONTEXT);
    let bytes = mac.finalize().into_bytes();
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key"))
}

/// Seal under the bootstrap host's key seed: a random nonce, then the
/// ciphertext with its tag; hex.
pub fn seal(seed: &Seed, backup: &CaBackup) -> String {
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let mut data = serde_json::to_vec(backup).expect("serialises");
    key(seed)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(CONTEXT),
            &mut data,
        )
        .expect("sealing in memory");
    let mut out = nonce_bytes.to_vec();
    out.extend(data);
    hex::encode(out)
}

/// Open a sealed copy; an error unless it was sealed under this seed and
/// is unaltered.
pub fn open(seed: &Seed, sealed: &str) -> Result<CaBackup> {
    let bytes = hex::decode(sealed.trim()).map_err(|_| anyhow!("the CA copy is not hex"))?;
    if bytes.len() < NONCE_LEN + 16 {
        bail!("the CA copy is truncated");
    }
    let (nonce, data) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow!("bad nonce"))?;
    let mut data = data.to_vec();
    let plain = key(seed)
        .open_in_place(nonce, Aad::from(CONTEXT), &mut data)
        .map_err(|_| {
            anyhow!(
                "the CA copy does not open under this host's key (forged, altered, or another site's)"
            )
        })?;
    Ok(serde_json::from_slice(plain)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pems(cert: &str, key: &str) -> CaPems {
        CaPems {
            cert_pem: cert.into(),
            key_pem: key.into(),
        }
    }

    fn backup(generation: u64) -> CaBackup {
        CaBackup {
            generation,
            root: Some(pems("cert", "key")),
            intermediates: [("etcd".to_owned(), pems("etcd cert", "etcd key"))].into(),
            registry: [(
                HostName::parse("node2").unwrap(),
                Ipv4Addr::new(198, 18, 0, 11),
            )]
            .into(),
            generations: BTreeMap::new(),
            admission_deadline: 9,
            added_core: BTreeSet::new(),
        }
    }

    #[test]
    fn seals_and_opens_under_the_bootstrap_hosts_key_only() {
        let mine = Seed::from_bytes([1; 32]);
        let other = Seed::from_bytes([2; 32]);
        let sealed = seal(&mine, &backup(3));
        assert!(!sealed.contains(&hex::encode("key")), "the key is in clear");
        assert_eq!(open(&mine, &sealed).unwrap(), backup(3));
        assert!(open(&other, &sealed).is_err());
        let mut altered = hex::decode(&sealed).unwrap();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(open(&mine, &hex::encode(altered)).is_err());
        assert!(open(&mine, "zz").is_err());
        assert!(open(&mine, "00").is_err());
        assert_ne!(seal(&mine, &backup(3)), sealed, "nonces repeat");
    }

    /// A copy exactly as firstboot sealed it before the intermediates were
    /// a map (version 1): it opens, with the etcd CA as the one
    /// intermediate, and is sealed again as version 2.
    #[test]
    fn version_1_copies_open_with_their_etcd_ca() {
        let v1 = r#"{"generation": 3, "root_cert_pem": "cert", "root_key_pem": "key",
            "etcd_cert_pem": "etcd cert", "etcd_key_pem": "etcd key",
            "registry": {"node2": "198.18.0.11"}, "admission_deadline": 9}"#;
        let opened: CaBackup = serde_json::from_str(v1).unwrap();
        assert_eq!(opened, backup(3));
        let again = serde_json::to_value(&opened).unwrap();
        assert_eq!(again["version"], CaBackup::VERSION);
        assert_eq!(again["intermediates"]["etcd"]["key_pem"], "etcd key");
        assert!(again.get("etcd_cert_pem").is_none());
        let reopened: CaBackup = serde_json::from_value(again).unwrap();
        assert_eq!(reopened, opened);
        // Half a version 1 CA, one in a version 2 copy, or a newer
        // version: refused, not guessed at.
        for bad in [
            v1.replace(r#""etcd_key_pem": "etcd key","#, ""),
            v1.replace(r#""generation""#, r#""version": 2, "generation""#),
            v1.replace(r#""generation""#, r#""version": 4, "generation""#),
        ] {
            assert!(serde_json::from_str::<CaBackup>(&bad).is_err(), "{bad}");
        }
    }

    /// Once the temporary CA ends, the copy carries the registry alone:
    /// it seals and opens without a CA, and a copy with half a CA, or an
    /// older version without one, is refused.
    #[test]
    fn a_copy_without_the_ended_temporary_ca_carries_the_registry() {
        let seed = Seed::from_bytes([1; 32]);
        let ended = CaBackup {
            root: None,
            intermediates: BTreeMap::new(),
            ..backup(4)
        };
        let sealed = seal(&seed, &ended);
        let opened = open(&seed, &sealed).unwrap();
        assert_eq!(opened, ended);
        assert!(opened.ca().unwrap().is_none());
        let wire = serde_json::to_value(&ended).unwrap();
        assert!(wire.get("root_key_pem").is_none(), "{wire}");
        // The core hosts added later travel with the registry.
        let grown = CaBackup {
            added_core: [HostName::parse("node7").unwrap()].into(),
            ..ended.clone()
        };
        let opened = open(&seed, &seal(&seed, &grown)).unwrap();
        assert_eq!(opened.added_core, grown.added_core);
        for bad in [
            r#"{"version": 3, "generation": 1, "root_cert_pem": "cert",
                "registry": {}, "admission_deadline": 9}"#,
            r#"{"version": 2, "generation": 1, "registry": {}, "admission_deadline": 9}"#,
            r#"{"version": 3, "generation": 1, "registry": {}, "admission_deadline": 9,
                "intermediates": {"etcd": {"cert_pem": "c", "key_pem": "k"}}}"#,
        ] {
            assert!(serde_json::from_str::<CaBackup>(bad).is_err(), "{bad}");
        }
    }
}
