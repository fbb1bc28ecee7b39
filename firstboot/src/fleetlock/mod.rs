//! The site's FleetLock server: Zincati reboots a node for an OS update
//! only once a lock server lets it (coreos/zincati
//! `docs/usage/updates-strategy.md`, strategy `fleet_lock`), and tells it
//! when the node is back. Every core host runs one; the state is in etcd
//! (compare-and-swap, see `store`), so any of them answers the same and
//! none drives the others. A lock is granted only when the site can spare
//! the node (`gates`) and never while the site is assembling.
//!
//! Zincati sends no credential, only an id and a group. So it talks to a
//! relay on its own node (127.0.0.1), which forwards to a core host's lock
//! server over TLS with the node's identity certificate: the server takes
//! the node's name from the verified certificate, never from the request,
//! and the id must be the one that node registered (see THREATS.md).

pub mod gates;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod service;
pub mod store;

#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};

/// Zincati's application id for `sd_id128_get_machine_app_specific`
/// (coreos/zincati `src/identity/mod.rs`).
pub const ZINCATI_APP_ID: [u8; 16] = [
    0xde, 0x35, 0x10, 0x6b, 0x6e, 0xc2, 0x46, 0x88, 0xb6, 0x3a, 0xfd, 0xda, 0xa1, 0x56, 0x67, 0x9b,
];

/// The id Zincati sends for a node with `machine_id` (the contents of
/// `/etc/machine-id`): systemd's app-specific machine id, HMAC-SHA256
/// keyed by the machine id over the application id, its first 16 bytes
/// made a version 4 UUID (systemd `src/libsystemd/sd-id128/sd-id128.c`,
/// `sd_id128_get_app_specific`), in lower-case hex without dashes.
pub fn zincati_id(machine_id: &str) -> Result<String> {
    let text = machine_id.trim();
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "`{}` is not a machine id (32 hex digits)",
            text.escape_debug()
        );
    }
    let key = hex::decode(text).context("a machine id is hex")?;
    if key.iter().all(|b| *b == 0) {
        bail!("the machine id is all zeros (systemd refuses it)");
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(&ZINCATI_APP_ID);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}
