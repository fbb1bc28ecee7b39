//! Block storage volumes: each a sparse file behind a loop device, shown
//! to the node it is attached to under DigitalOcean's stable name
//! (`/dev/disk/by-id/scsi-0DO_Volume_<name>`). The files live under the
//! lab's directory, so a lab cleared after a crash finds its loop devices
//! by their backing files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::proc;

const STEP: Duration = Duration::from_secs(30);

/// DigitalOcean's stable path of an attached volume.
pub fn by_id(volume: &str) -> String {
    format!("/dev/disk/by-id/scsi-0DO_Volume_{volume}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub size_gib: u64,
    /// The sparse backing file.
    pub file: PathBuf,
    /// The loop device, such as `/dev/loop3`.
    pub device: PathBuf,
    /// The loop device's minor number (its major is 7).
    pub minor: u32,
}

impl Volume {
    /// A new volume: a sparse file of `size_gib` GiB in `dir` and a loop
    /// device over it.
    pub fn create(dir: &Path, name: &str, size_gib: u64) -> Result<Volume> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("volume name `{name}` is not a DigitalOcean volume name");
        }
        fs::create_dir_all(dir)?;
        let file = dir.join(format!("{name}.img"));
        let backing = fs::File::create_new(&file)
            .with_context(|| format!("cannot create {}", file.display()))?;
        backing.set_len(size_gib << 30)?;
        drop(backing);
        let out = proc::check(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&file),
            STEP,
        )
        .with_context(|| format!("cannot give {} a loop device", file.display()));
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let _ = fs::remove_file(&file);
                return Err(e);
            }
        };
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let minor = device
            .to_str()
            .and_then(|d| d.strip_prefix("/dev/loop"))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("losetup named {} for {name}", device.display()))?;
        Ok(Volume {
            name: name.to_owned(),
            size_gib,
            file,
            device,
            minor,
        })
    }

    /// Detach the loop device and remove the file: the volume is gone.
    pub fn delete(&self) -> Result<()> {
        detach(&self.device, &self.file)?;
        match fs::remove_file(&self.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Detach `device` if it is still backed by `file` (a loop device freed
/// and reused by someone else is left alone).
fn detach(device: &Path, file: &Path) -> Result<()> {
    let name = device
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let backing =
        fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap_or_default();
    if Path::new(backing.trim().trim_end_matches(" (deleted)")) != file {
        return Ok(());
    }
    proc::check(Command::new("losetup").arg("--detach").arg(device), STEP)?;
    Ok(())
}

/// Detach every loop device whose backing file is under `dir`.
pub fn detach_all_under(dir: &Path) {
    for (device, file) in loops() {
        if file.starts_with(dir) {
            let _ = detach(&device, &file);
        }
    }
}

/// Every loop device in use: (device, backing file). A deleted backing
/// file reads as `<path> (deleted)`; the path is kept.
pub fn loops() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim().trim_end_matches(" (deleted)");
            name.starts_with("loop")
                .then(|| (Path::new("/dev").join(&name), PathBuf::from(backing)))
        })
        .collect()
}
