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

/// Overwrite `path` with zeros, synced, then remove it: what a secret
/// left behind needs more than an unlink, which frees its blocks with the
/// secret still in them. What a journalling or copy-on-write filesystem
/// kept elsewhere of earlier writes is beyond a file's reach (the
/// volume's encryption covers that). Gone already is done.
pub fn shred(path: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])
            .with_context(|| format!("cannot overwrite {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    drop(file);
    fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Replace `path` with `bytes` (mode `mode`) so that its old content is
/// shredded, not merely unlinked: the new file is written beside it, the
/// old one overwritten and removed, then the new one renamed in place.
/// Run again after a crash, it ends the same.
pub fn replace_shredding(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut name = path.file_name().context("no file name")?.to_owned();
    name.push(".new");
    let new = path.with_file_name(name);
    write_atomic(&new, bytes, mode)?;
    shred(path)?;
    fs::rename(&new, path)
        .with_context(|| format!("cannot rename {} to {}", new.display(), path.display()))
}

/// [`shred`] every file under `dir`, then remove it. Gone already is done.
pub fn shred_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            shred_dir(&path)?;
        } else {
            shred(&path)?;
        }
    }
    fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

#[cfg(test)]
mod shred_tests {
    use super::*;

    #[test]
    fn a_shredded_file_is_zeroed_before_it_goes_and_a_directory_goes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("ca/root.key");
        write_atomic(&secret, b"-----BEGIN PRIVATE KEY-----", 0o600).unwrap();
        write_atomic(&dir.path().join("ca/etcd/ca.key"), b"key", 0o600).unwrap();
        // A second link keeps the inode readable after the unlink: what
        // it reads is what the blocks held when the name went.
        let kept = dir.path().join("kept");
        fs::hard_link(&secret, &kept).unwrap();
        shred_dir(&dir.path().join("ca")).unwrap();
        assert!(!dir.path().join("ca").exists());
        let left = fs::read(&kept).unwrap();
        assert_eq!(left.len(), 27);
        assert!(left.iter().all(|b| *b == 0), "{left:?}");
        // Gone already is done.
        shred_dir(&dir.path().join("ca")).unwrap();
        shred(&secret).unwrap();
    }
}
