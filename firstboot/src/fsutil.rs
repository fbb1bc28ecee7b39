//! Files written whole or not at all, on the node.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Write `bytes` to `path` atomically with `mode` (see
/// [`node_contract::files::write_atomic`]), creating its directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    ensure_dir(dir, 0o755)?;
    node_contract::files::write_atomic(path, bytes, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A JSON file read whole; None when there is none. A damaged one is an
/// error that names it.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `value` as pretty JSON with a final newline, written whole (see
/// [`write_atomic`]) with `mode`: the counterpart of [`read_json`].
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}
