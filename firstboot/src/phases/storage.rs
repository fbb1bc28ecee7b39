//! Phase 2: the volumes Ignition formatted are mounted, swap is on.

use anyhow::{bail, Result};

use super::Context;

pub async fn run(cx: &mut Context) -> Result<()> {
    let storage = &cx.config.storage;
    if let Some(mount) = &storage.data_mount {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(mount.as_str()))
        {
            bail!("the data volume is not mounted at {mount}");
        }
    }
    if let Some(device) = &storage.swap_device {
        let real = std::fs::canonicalize(device).unwrap_or_else(|_| device.into());
        let swaps = std::fs::read_to_string("/proc/swaps")?;
        if !swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next().map(std::path::Path::new) == Some(real.as_path()))
        {
            bail!("swap on {device} is not enabled");
        }
    }
    Ok(())
}
