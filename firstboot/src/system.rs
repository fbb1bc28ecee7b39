//! Commands firstboot runs on the node (systemctl, journalctl, etcdctl),
//! each bounded in time.

use std::time::Duration;

use anyhow::{bail, Context, Result};

const LIMIT: Duration = Duration::from_secs(30);

pub async fn bounded(cmd: &mut tokio::process::Command) -> Result<std::process::Output> {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .context("command timed out")?
        .context("cannot run command")
}

pub async fn systemctl(args: &[&str]) -> Result<()> {
    let out = bounded(tokio::process::Command::new("systemctl").args(args)).await?;
    if !out.status.success() {
        bail!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub async fn journal_mentions(unit: &str, text: &str) -> bool {
    let Ok(out) = bounded(tokio::process::Command::new("journalctl").args([
        "--no-pager",
        "-o",
        "cat",
        "-u",
        unit,
    ]))
    .await
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).contains(text)
}
