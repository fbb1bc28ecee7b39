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

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Result};
use hmac::{Hmac, Mac};
use node_contract::{Generation, HostName, Seed};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What the sealed copy holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaBackup {
    pub generation: u64,
    pub root_cert_pem: String,
    pub root_key_pem: String,
    pub etcd_cert_pem: String,
    pub etcd_key_pem: String,
    pub registry: BTreeMap<HostName, Ipv4Addr>,
    /// The hosts' newest credential generations (registry version 2):
    /// a restored join service keeps refusing the retired ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<HostName, Generation>,
    /// When admission of hosts that never joined ends (Unix seconds).
    pub admission_deadline: u64,
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

    fn backup(generation: u64) -> CaBackup {
        CaBackup {
            generation,
            root_cert_pem: "cert".into(),
            root_key_pem: "key".into(),
            etcd_cert_pem: "etcd cert".into(),
            etcd_key_pem: "etcd key".into(),
            registry: [(
                HostName::parse("node2").unwrap(),
                Ipv4Addr::new(198, 18, 0, 11),
            )]
            .into(),
            generations: BTreeMap::new(),
            admission_deadline: 9,
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
}
