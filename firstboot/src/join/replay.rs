//! The join service's replay record on disk: every nonce it accepts is
//! appended (one line, `<timestamp> <nonce>`) and synced before the
//! request is answered, so a request captured now is refused after a
//! restart too. An append costs the same whatever the number of nonces
//! (the record it replaced rewrote and synced the whole set for every
//! request, under the join service's one lock); the file is rewritten,
//! with the nonces still inside the clock window only, once it holds more
//! than twice as many lines as that.
//!
//! The record begins with the line `version 1` (records written before
//! it have no such line, and read as version 1); a newer version is not
//! guessed at, but treated as damage.
//!
//! A damaged record is never read as "no nonce seen": it is set aside and
//! a fresh window begins, refusing every request stamped before it (the
//! line `window <timestamp>` first in the new record, so a restart keeps
//! it), until such stamps could no longer pass the clock check anyway.
//! An honest node's next request passes.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::protocol::{Refusal, Replay, ReplayGuard};

/// The record's format, on its first line.
const VERSION: u32 = 1;

/// Below this many lines the record is never compacted.
const COMPACT_AT: usize = 1024;

/// The replay guard and its record on disk.
pub struct ReplayLog {
    guard: ReplayGuard,
    path: PathBuf,
    file: File,
    lines: usize,
}

/// What was read from a record.
enum Read {
    Good(ReplayGuard),
    Damaged(String),
}

fn read(text: &str) -> Read {
    let mut guard = ReplayGuard::default();
    let complete = text.ends_with('\n');
    let mut all: Vec<&str> = text.split('\n').collect();
    // The part after the last newline: empty, or an append a crash cut
    // short (its request was never answered).
    let torn = all.pop().filter(|l| !l.is_empty());
    if let Some(torn) = torn {
        tracing::warn!(
            "join service: the replay record ends in a cut line ({} bytes), ignored",
            torn.len()
        );
    }
    debug_assert!(complete || torn.is_some() || text.is_empty());
    // The version line, if any (records written before it have none).
    let mut header = 0;
    if let Some(first) = all.first().and_then(|l| l.strip_prefix("version ")) {
        match first.parse::<u32>() {
            Ok(v) if (1..=VERSION).contains(&v) => header = 1,
            _ => {
                return Read::Damaged(format!(
                    "line 1: {:?}: this firstboot reads version {VERSION}",
                    all[0]
                ))
            }
        }
    }
    for (n, line) in all.iter().enumerate().skip(header) {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("window"), Some(since), None) if n == header => match since.parse() {
                Ok(since) => {
                    let seen = std::mem::take(&mut guard);
                    guard = ReplayGuard::fresh_window(since);
                    debug_assert!(seen.is_empty());
                }
                Err(_) => return Read::Damaged(format!("line {}: {line:?}", n + 1)),
            },
            (Some(timestamp), Some(nonce), None)
                if nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                match timestamp.parse() {
                    Ok(t) => guard.remember(nonce, t),
                    Err(_) => return Read::Damaged(format!("line {}: {line:?}", n + 1)),
                }
            }
            _ => return Read::Damaged(format!("line {}: {line:?}", n + 1)),
        }
    }
    Read::Good(guard)
}

impl ReplayLog {
    /// The record at `path`, or a new one. `legacy`: the JSON record
    /// earlier versions wrote, taken over (and removed) when there is no
    /// log yet.
    pub fn open(path: &Path, legacy: &Path, now: u64) -> Result<ReplayLog> {
        let guard = match std::fs::read(path) {
            Ok(bytes) => match read(&String::from_utf8_lossy(&bytes)) {
                Read::Good(guard) => guard,
                Read::Damaged(why) => fresh_window(path, &why, now)?,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read(legacy) {
                Ok(bytes) => match serde_json::from_slice::<ReplayGuard>(&bytes) {
                    Ok(guard) => guard,
                    Err(e) => fresh_window(legacy, &e.to_string(), now)?,
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ReplayGuard::default(),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", legacy.display()))
                }
            },
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut log = ReplayLog {
            file: File::open("/dev/null")?,
            guard,
            path: path.to_owned(),
            lines: 0,
        };
        log.compact(now)?;
        if legacy.exists() {
            std::fs::remove_file(legacy)
                .with_context(|| format!("cannot remove {}", legacy.display()))?;
        }
        Ok(log)
    }

    /// The nonces the record holds (tests).
    pub fn guard(&self) -> &ReplayGuard {
        &self.guard
    }

    /// Rewrite the record whole with what is still inside the window, and
    /// append from there.
    fn compact(&mut self, now: u64) -> Result<()> {
        let mut text = format!("version {VERSION}\n");
        if self.guard.not_before() > 0 {
            text.push_str(&format!("window {}\n", self.guard.not_before()));
        }
        let mut live: Vec<(&str, u64)> = self.guard.live(now).collect();
        live.sort_by_key(|(_, t)| *t);
        for (nonce, t) in &live {
            text.push_str(&format!("{t} {nonce}\n"));
        }
        self.lines = live.len();
        crate::fsutil::write_atomic(&self.path, text.as_bytes(), 0o600)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        Ok(())
    }

    /// Append a nonce the guard has just taken.
    fn append(&mut self, nonce: &str, timestamp: u64, now: u64) -> Result<()> {
        if self.lines >= COMPACT_AT && self.lines > 2 * self.guard.len() {
            // The rewrite holds this nonce already.
            return self.compact(now);
        }
        self.file
            .write_all(format!("{timestamp} {nonce}\n").as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot append to {}", self.path.display()))?;
        self.lines += 1;
        Ok(())
    }
}

/// Set a damaged record aside and begin a fresh window at `now`.
fn fresh_window(path: &Path, why: &str, now: u64) -> Result<ReplayGuard> {
    let aside = path.with_extension(format!("damaged-{now}"));
    std::fs::rename(path, &aside)
        .with_context(|| format!("cannot set the damaged {} aside", path.display()))?;
    tracing::error!(
        "join service: the replay record {} is damaged ({why}); kept as {}. A fresh window \
         begins: requests stamped before {now} are refused",
        path.display(),
        aside.display()
    );
    Ok(ReplayGuard::fresh_window(now))
}

impl Replay for ReplayLog {
    fn check(&mut self, nonce: &str, timestamp: u64, now: u64) -> Result<(), Refusal> {
        self.guard.check(nonce, timestamp, now)?;
        self.append(nonce, timestamp, now).map_err(|e| {
            tracing::error!("join service: cannot record a nonce: {e:#}");
            Refusal::Malformed("the bootstrap host cannot record the request; retry".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::protocol::MAX_SKEW;

    const NOW: u64 = 1_700_000_000;

    fn nonce(n: u8) -> String {
        format!("{n:032x}")
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("join-nonces.log"), dir.join("join-nonces.json"))
    }

    #[test]
    fn a_nonce_seen_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = paths(dir.path());
        let mut log = ReplayLog::open(&path, &legacy, NOW).unwrap();
        log.check(&nonce(1), NOW, NOW).unwrap();
        log.check(&nonce(2), NOW, NOW).unwrap();
        assert_eq!(log.check(&nonce(1), NOW, NOW), Err(Refusal::Replayed));
        drop(log);
        let mut log = ReplayLog::open(&path, &legacy, NOW + 1).unwrap();
        assert_eq!(log.check(&nonce(2), NOW, NOW + 1), Err(Refusal::Replayed));
        log.check(&nonce(3), NOW + 1, NOW + 1).unwrap();
    }

    #[test]
    fn a_clock_that_goes_back_forgets_nothing() {
        let mut guard = ReplayGuard::default();
        guard.check(&nonce(1), NOW, NOW).unwrap();
        // Our clock jumps back by more than the window, then forward.
        guard.check(&nonce(2), NOW - 600, NOW - 600).unwrap();
        assert_eq!(
            guard.check(&nonce(1), NOW, NOW - 100),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn a_cut_last_line_is_ignored_and_other_damage_opens_a_fresh_window() {
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = paths(dir.path());
        std::fs::write(&path, format!("{NOW} {}\n{NOW} 0123", nonce(1))).unwrap();
        let mut log = ReplayLog::open(&path, &legacy, NOW).unwrap();
        assert_eq!(log.check(&nonce(1), NOW, NOW), Err(Refusal::Replayed));
        assert_eq!(log.guard().not_before(), 0);
        drop(log);

        std::fs::write(&path, format!("{NOW} {}\ngarbage here\n", nonce(1))).unwrap();
        let mut log = ReplayLog::open(&path, &legacy, NOW + 5).unwrap();
        assert!(dir
            .path()
            .join(format!("join-nonces.damaged-{}", NOW + 5))
            .exists());
        // A request captured before the damage (stamped earlier) is
        // refused though its nonce is forgotten; a new one passes.
        assert_eq!(
            log.check(&nonce(1), NOW, NOW + 5),
            Err(Refusal::FreshWindow { since: NOW + 5 })
        );
        log.check(&nonce(9), NOW + 5, NOW + 5).unwrap();
        drop(log);
        // The window survives a restart.
        let mut log = ReplayLog::open(&path, &legacy, NOW + 6).unwrap();
        assert_eq!(log.guard().not_before(), NOW + 5);
        assert!(log.check(&nonce(2), NOW + 4, NOW + 6).is_err());
        assert_eq!(
            log.check(&nonce(9), NOW + 5, NOW + 6),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn the_json_record_of_earlier_versions_is_taken_over() {
        // As firstboot wrote it before the log.
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = paths(dir.path());
        std::fs::write(&legacy, format!(r#"{{"seen": {{"{}": {NOW}}}}}"#, nonce(7))).unwrap();
        let mut log = ReplayLog::open(&path, &legacy, NOW).unwrap();
        assert!(!legacy.exists());
        assert_eq!(log.check(&nonce(7), NOW, NOW), Err(Refusal::Replayed));
        // A damaged one opens a fresh window as well.
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = paths(dir.path());
        std::fs::write(&legacy, "{").unwrap();
        let log = ReplayLog::open(&path, &legacy, NOW).unwrap();
        assert_eq!(log.guard().not_before(), NOW);
    }

    #[test]
    fn the_record_is_compacted_to_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = paths(dir.path());
        let mut log = ReplayLog::open(&path, &legacy, NOW).unwrap();
        for i in 0..COMPACT_AT as u64 {
            log.check(&format!("{i:032x}"), NOW, NOW).unwrap();
        }
        let later = NOW + MAX_SKEW + 1;
        log.check(&format!("{:032x}", 1u64 << 60), later, later)
            .unwrap();
        log.check(&format!("{:032x}", 1u64 << 61), later, later)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{}", &text[..200.min(text.len())]);
        assert!(text.starts_with("version 1\n"), "{text}");
    }

    /// A record as firstboot wrote it before the version line (nonces,
    /// after a fresh window) loads; one of a newer version is damage.
    #[test]
    fn a_record_without_a_version_line_loads_and_a_newer_one_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = paths(dir.path());
        std::fs::write(&path, format!("window {NOW}\n{NOW} {}\n", nonce(3))).unwrap();
        let mut log = ReplayLog::open(&path, &legacy, NOW + 1).unwrap();
        assert_eq!(log.guard().not_before(), NOW);
        assert_eq!(log.check(&nonce(3), NOW, NOW + 1), Err(Refusal::Replayed));
        drop(log);
        // Rewritten with its version line, the window kept.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("version 1\nwindow {NOW}\n")),
            "{text}"
        );
        let log = ReplayLog::open(&path, &legacy, NOW + 2).unwrap();
        assert_eq!(log.guard().not_before(), NOW);
        drop(log);

        std::fs::write(&path, format!("version 2\n{NOW} {}\n", nonce(4))).unwrap();
        let mut log = ReplayLog::open(&path, &legacy, NOW + 3).unwrap();
        assert_eq!(
            log.check(&nonce(4), NOW, NOW + 3),
            Err(Refusal::FreshWindow { since: NOW + 3 })
        );
    }
}
