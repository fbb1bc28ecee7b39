//! Commands firstboot runs on the node (systemctl, journalctl, etcdctl),
//! each bounded in time.

use std::path::PathBuf;
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

/// Whether `unit` failed: in the failed state, or waiting to be
/// restarted after a failure (`Restart=on-failure` keeps it out of
/// "failed" between attempts).
pub async fn is_failed(unit: &str) -> bool {
    let Ok(out) = bounded(tokio::process::Command::new("systemctl").args([
        "show",
        "-p",
        "ActiveState",
        "-p",
        "SubState",
        "--value",
        unit,
    ]))
    .await
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (active, sub) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    active == "failed" || sub == "auto-restart"
}

/// The last `n` lines `unit` logged, for an error message.
pub async fn last_lines(unit: &str, n: usize) -> String {
    let out = bounded(
        tokio::process::Command::new("journalctl")
            .args(["--no-pager", "-o", "cat", "-u", unit, "-n"])
            .arg(n.to_string()),
    )
    .await;
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
        Err(e) => format!("(cannot read the journal: {e:#})"),
    }
}

/// A unit's journal, read a piece at a time: each read returns only the
/// lines logged since the previous one (journalctl's cursor file), so a
/// line from an earlier boot or attempt is never read again.
pub struct JournalWatch {
    unit: String,
    cursor: PathBuf,
    since: u64,
}

impl JournalWatch {
    /// Watch `unit` from Unix second `since`, keeping the cursor in `cursor`.
    pub fn new(unit: &str, cursor: PathBuf, since: u64) -> JournalWatch {
        let _ = std::fs::remove_file(&cursor);
        JournalWatch {
            unit: unit.to_owned(),
            cursor,
            since,
        }
    }

    /// The lines logged since the last read (or since `since`).
    pub async fn new_lines(&self) -> Result<String> {
        if let Some(dir) = self.cursor.parent() {
            crate::fsutil::ensure_dir(dir, 0o755)?;
        }
        let out = bounded(
            tokio::process::Command::new("journalctl")
                .args(["--no-pager", "-o", "cat", "-u", &self.unit])
                .arg(format!("--since=@{}", self.since))
                .arg(format!("--cursor-file={}", self.cursor.display())),
        )
        .await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
