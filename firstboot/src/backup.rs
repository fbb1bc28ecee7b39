//! The temporary CA's sealed backup. Until FreeIPA takes over, the CA key
//! lives on the bootstrap host only; if that host's disk is lost, a
//! rebuilt host must rejoin the cluster its peers still run, which needs
//! that CA. So every core peer keeps a copy sealed (ChaCha20-Poly1305)
//! under a key derived from the site secret: peers can hand it out freely,
//! only a holder of the site secret (a rebuilt bootstrap host) can open
//! it, and a forged or altered copy does not open.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Result};
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What the backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaBackup {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub registry: BTreeMap<String, Ipv4Addr>,
}

const CONTEXT: &[u8] = b"firstboot ca backup v1";

fn key(site_secret: &str) -> LessSafeKey {
    let mut mac = Hmac::<Sha256>::new_from_slice(site_secret.as_bytes()).expect("any key length");
    mac.update(CONTEXT);
    let bytes = mac.finalize().into_bytes();
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key"))
}

/// Seal: a random nonce, then the ciphertext with its tag; hex.
pub fn seal(site_secret: &str, backup: &CaBackup) -> String {
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let mut data = serde_json::to_vec(backup).expect("serialises");
    key(site_secret)
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

/// Open a sealed backup; an error unless it was sealed under this secret
/// and is unaltered.
pub fn open(site_secret: &str, sealed: &str) -> Result<CaBackup> {
    let bytes = hex::decode(sealed.trim()).map_err(|_| anyhow!("the CA backup is not hex"))?;
    if bytes.len() < NONCE_LEN + 16 {
        bail!("the CA backup is truncated");
    }
    let (nonce, data) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow!("bad nonce"))?;
    let mut data = data.to_vec();
    let plain = key(site_secret)
        .open_in_place(nonce, Aad::from(CONTEXT), &mut data)
        .map_err(|_| anyhow!("the CA backup does not open under this site's secret (forged, altered, or another site's)"))?;
    Ok(serde_json::from_slice(plain)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> CaBackup {
        CaBackup {
            ca_cert_pem: "cert".into(),
            ca_key_pem: "key".into(),
            registry: [("node2".to_string(), Ipv4Addr::new(198, 18, 0, 11))].into(),
        }
    }

    #[test]
    fn seals_and_opens_under_the_site_secret_only() {
        let sealed = seal("secret", &backup());
        assert!(!sealed.contains(&hex::encode("key")), "the key is in clear");
        assert_eq!(open("secret", &sealed).unwrap(), backup());
        assert!(open("another", &sealed).is_err());
        let mut altered = hex::decode(&sealed).unwrap();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(open("secret", &hex::encode(altered)).is_err());
        assert!(open("secret", "zz").is_err());
        assert!(open("secret", "00").is_err());
        assert_ne!(seal("secret", &backup()), sealed, "nonces repeat");
    }
}
