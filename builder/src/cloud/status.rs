//! `builder status`: one row per host: its droplet, addresses, and where
//! firstboot is.
//!
//! The phase is read over SSH as `core` from /run/firstboot/status.json,
//! the file firstboot keeps current. SSH is the channel the site already
//! has: DigitalOcean requires a key, the firewall opens port 22 for the
//! operator, and nothing new listens on the Internet for it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use node_contract::status::Status;

use super::kinds::droplet;
use super::plan::Plan;
use crate::digitalocean::Client;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub host: String,
    pub droplet: Option<u64>,
    /// `new`, `active`, `off`, `archive`, or `absent` when not created.
    pub status: String,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    /// firstboot's phase and state, when read.
    pub phase: Option<String>,
    pub state: Option<String>,
    /// Why the phase is unknown, or firstboot's last error.
    pub note: Option<String>,
    /// The lock servers' last answer to the node's Zincati (an OS update's
    /// reboot granted, or refused and why), when it asked.
    pub updates: Option<String>,
}

impl Row {
    /// A host with no droplet.
    fn absent(host: &str) -> Row {
        Row {
            host: host.to_owned(),
            droplet: None,
            status: "absent".into(),
            public_ipv4: None,
            private_ipv4: None,
            phase: None,
            state: None,
            note: Some("not launched".into()),
            updates: None,
        }
    }
}

/// The droplets of the site, in site-file order.
pub async fn rows(client: &Client, plan: &Plan) -> Result<Vec<Row>> {
    let droplets = droplet::of_site(client, plan).await?;
    Ok(plan
        .droplets
        .iter()
        .map(|wanted| match droplets.get(&wanted.name) {
            Some(d) => Row {
                host: wanted.host.clone(),
                droplet: Some(d.id),
                status: d.status.clone(),
                public_ipv4: d.address("public"),
                private_ipv4: d.address("private"),
                phase: None,
                state: None,
                note: None,
                updates: None,
            },
            None => Row::absent(&wanted.host),
        })
        .collect())
}

/// The command run on each node: the status file, else a word saying
/// whether firstboot finished (the status file lives in /run, gone after
/// a reboot; the done marker stays), is not on the node at all (Ignition
/// did not write it), or never started; then, after the line
/// [`UPDATES_MARK`], the lock servers' last answer to Zincati, if any.
const REMOTE: &str = "if cat /run/firstboot/status.json 2>/dev/null; then :; \
     elif test -e /var/lib/firstboot/done; then echo firstboot-done; \
     elif ! test -x /usr/local/bin/firstboot; then echo firstboot-missing; \
     else echo firstboot-not-started; fi; \
     echo; echo firstboot-updates; cat /run/firstboot/updates.json 2>/dev/null; true";

/// The line between the two parts of [`REMOTE`]'s answer.
const UPDATES_MARK: &str = "\nfirstboot-updates\n";

/// A node's whole answer to [`REMOTE`].
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub report: NodeReport,
    pub updates: Option<node_contract::fleetlock::LastAnswer>,
}

impl Remote {
    /// Both parts; either unreadable is an error saying which.
    pub fn parse(text: &str) -> Result<Remote, String> {
        let (report, updates) = text.split_once(UPDATES_MARK).ok_or_else(|| {
            "its answer lacks the updates part (the command was cut short?)".to_owned()
        })?;
        let updates = match updates.trim() {
            "" => None,
            json => Some(
                node_contract::fleetlock::LastAnswer::from_json(json.as_bytes())
                    .map_err(|e| format!("unreadable updates file ({e})"))?,
            ),
        };
        Ok(Remote {
            report: NodeReport::parse(report)?,
            updates,
        })
    }
}

/// What an active droplet that does not answer SSH means, said plainly:
/// Ignition runs before the OS starts and stops the boot when it fails,
/// and it does not fetch a file again once the server's headers came
/// (coreos/ignition internal/resource/http.go retries only until the
/// headers, url.go's FetchFromHTTP copies the body once), so a download
/// of firstboot cut off leaves a droplet that never boots and never runs
/// firstboot.
const NO_SSH: &str = "its OS is not up; if this lasts minutes after the droplet \
     became active, Ignition failed before boot (such as firstboot's download cut off) and \
     firstboot never runs: see the droplet's console, then destroy and launch the host again";

/// What a node said of firstboot.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeReport {
    /// Its status file, as firstboot wrote it.
    Status(Status),
    /// No status file (rebooted since), but every phase is done.
    Done,
    /// firstboot has not written anything yet.
    NotStarted,
    /// The node runs, but its firstboot binary is not there: Ignition
    /// did not write it, so firstboot never runs.
    Missing,
}

impl NodeReport {
    /// Read the node's answer to [`REMOTE`]; what is neither a word it
    /// prints nor a status file this builder reads is an error saying so.
    pub fn parse(text: &str) -> Result<NodeReport, String> {
        match text.trim() {
            "firstboot-done" => Ok(NodeReport::Done),
            "firstboot-not-started" => Ok(NodeReport::NotStarted),
            "firstboot-missing" => Ok(NodeReport::Missing),
            json => Status::from_json(json.as_bytes())
                .map(NodeReport::Status)
                .map_err(|e| format!("unreadable status file ({e})")),
        }
    }

    /// Phase, state and note for a row.
    fn cells(&self) -> (Option<String>, Option<String>, Option<String>) {
        match self {
            NodeReport::Status(s) => {
                let mut note = match (&s.detail, &s.last_error) {
                    (Some(d), Some(e)) => Some(format!("{d}; {e}")),
                    (d, e) => d.clone().or_else(|| e.clone()),
                };
                if let Some(a) = &s.admission {
                    let admission = match (a.open, a.joined.checked_sub(a.hosts)) {
                        (true, _) => format!("joining open: {} of {} joined", a.joined, a.hosts),
                        // Hosts added later join by their own admissions.
                        (false, Some(added)) if added > 0 => {
                            format!("{} joined, {} added since launch", a.joined, added)
                        }
                        (false, _) => format!("{} of {} joined", a.joined, a.hosts),
                    };
                    note = Some(match note {
                        Some(n) => format!("{admission}; {n}"),
                        None => admission,
                    });
                }
                (
                    Some(s.phase.map_or("starting", |p| p.as_str()).to_owned()),
                    Some(s.state.as_str().to_owned()),
                    note,
                )
            }
            NodeReport::Done => (Some("all".into()), Some("done".into()), None),
            NodeReport::NotStarted => (Some("none".into()), Some("not started".into()), None),
            NodeReport::Missing => (
                Some("none".into()),
                Some("never runs".into()),
                Some(format!(
                    "{} is not on this node: its Ignition did not write it (see `journalctl \
                     -t ignition` there); destroy and launch the host again",
                    crate::render::FIRSTBOOT_PATH
                )),
            ),
        }
    }
}

/// How long one node may take to answer over SSH.
const SSH_LIMIT: Duration = Duration::from_secs(20);

/// Fill in every active droplet's phase, all nodes at once. `ssh` is the
/// program (`$BUILDER_SSH` or `ssh`).
pub fn read_phases(rows: &mut [Row], ssh: &str) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .iter()
            .map(|row| {
                let address = match (&row.public_ipv4, row.status.as_str()) {
                    (Some(a), "active") => Some(a.clone()),
                    _ => None,
                };
                scope.spawn(move || address.map(|a| phase_of(ssh, &a)))
            })
            .collect();
        for (row, handle) in rows.iter_mut().zip(handles) {
            match handle.join().ok().flatten() {
                Some(Ok(remote)) => {
                    (row.phase, row.state, row.note) = remote.report.cells();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    row.updates = remote.updates.map(|u| u.summary(now));
                }
                Some(Err(why)) => row.note = Some(format!("{why}: {NO_SSH}")),
                None => {}
            }
        }
    });
}

fn phase_of(ssh: &str, address: &str) -> Result<Remote, String> {
    let mut child = Command::new(ssh)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=8",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=2",
            &format!("core@{address}"),
            REMOTE,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {ssh}: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < SSH_LIMIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "ssh core@{address}: no answer within {SSH_LIMIT:?}"
                ));
            }
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        let last = err.lines().last().unwrap_or("").trim();
        return Err(format!("ssh core@{address} failed: {last}"));
    }
    Remote::parse(&out).map_err(|e| format!("core@{address}: {e}"))
}

/// The table for a terminal.
pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![[
        "HOST".to_owned(),
        "DROPLET".into(),
        "STATUS".into(),
        "PUBLIC".into(),
        "PRIVATE".into(),
        "FIRSTBOOT".into(),
    ]];
    let dash = || "-".to_owned();
    for row in rows {
        let phase = match (&row.phase, &row.state, &row.note) {
            (Some(p), Some(s), None) => format!("{p}: {s}"),
            (Some(p), Some(s), Some(n)) => format!("{p}: {s} ({n})"),
            (_, _, Some(n)) => n.clone(),
            _ => dash(),
        };
        let phase = match &row.updates {
            Some(u) => format!("{phase}; {u}"),
            None => phase,
        };
        lines.push([
            row.host.clone(),
            row.droplet.map_or_else(dash, |d| d.to_string()),
            row.status.clone(),
            row.public_ipv4.clone().unwrap_or_else(dash),
            row.private_ipv4.clone().unwrap_or_else(dash),
            phase,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|l| {
            let mut line = String::new();
            for (i, cell) in l.iter().enumerate() {
                if i == 5 {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            line.trim_end().to_owned() + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_report_is_read_typed_and_a_bad_one_said_so() {
        let serving = r#"{"version":1,"phase":"freeipa","state":"serving","since":1,"attempt":1,
            "admission":{"open":true,"joined":3,"hosts":5,"deadline":99}}"#;
        let report = NodeReport::parse(serving).unwrap();
        assert_eq!(
            report.cells(),
            (
                Some("freeipa".into()),
                Some("serving".into()),
                Some("joining open: 3 of 5 joined".into())
            )
        );
        let grown = r#"{"version":1,"phase":"handoff","state":"serving","since":1,"attempt":1,
            "admission":{"open":false,"joined":8,"hosts":5,"deadline":99}}"#;
        assert_eq!(
            NodeReport::parse(grown).unwrap().cells().2.as_deref(),
            Some("8 joined, 3 added since launch")
        );
        let failed = r#"{"phase":"etcd","state":"waiting","since":1,"attempt":2,
            "last_error":"no quorum"}"#;
        assert_eq!(
            NodeReport::parse(failed).unwrap().cells().2.as_deref(),
            Some("no quorum")
        );
        let installing = r#"{"version":2,"phase":"freeipa","state":"running","since":1,
            "attempt":1,"detail":"freeipa-server.service installing, 90 s"}"#;
        assert_eq!(
            NodeReport::parse(installing).unwrap().cells().2.as_deref(),
            Some("freeipa-server.service installing, 90 s")
        );
        assert_eq!(
            NodeReport::parse("firstboot-done\n").unwrap(),
            NodeReport::Done
        );
        assert_eq!(
            NodeReport::parse("firstboot-not-started").unwrap(),
            NodeReport::NotStarted
        );
        let missing = NodeReport::parse("firstboot-missing\n").unwrap();
        assert_eq!(missing, NodeReport::Missing);
        let (phase, state, note) = missing.cells();
        assert_eq!(
            (phase.as_deref(), state.as_deref()),
            (Some("none"), Some("never runs"))
        );
        assert!(note
            .unwrap()
            .contains("/usr/local/bin/firstboot is not on this node"));
        for bad in [
            "",
            "{}",
            "<html>",
            r#"{"phase":"warp","state":"done","since":1,"attempt":1}"#,
        ] {
            let error = NodeReport::parse(bad).unwrap_err();
            assert!(
                error.starts_with("unreadable status file"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn the_table_aligns_and_says_what_is_unknown() {
        let rows = vec![
            Row {
                host: "ns1".into(),
                droplet: Some(42),
                status: "active".into(),
                public_ipv4: Some("203.0.113.10".into()),
                private_ipv4: Some("172.30.0.2".into()),
                phase: Some("etcd".into()),
                state: Some("running".into()),
                note: None,
                updates: None,
            },
            Row::absent("mail"),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("ns1   42       active  203.0.113.10  172.30.0.2  etcd: running")
        );
        assert!(lines[2].ends_with("not launched"));
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[2][col..col + 6], "absent");
    }

    /// The words [`REMOTE`] prints, run by a real shell over a node's
    /// root: a node whose Ignition never wrote firstboot says so, one
    /// that has it but has not started says that.
    #[test]
    fn the_remote_command_tells_a_missing_firstboot_from_one_not_started() {
        let root = tempfile::tempdir().unwrap();
        let remote = |root: &std::path::Path| {
            let command = REMOTE
                .replace("/run/", &format!("{}/run/", root.display()))
                .replace("/var/", &format!("{}/var/", root.display()))
                .replace("/usr/", &format!("{}/usr/", root.display()));
            let out = Command::new("sh").args(["-c", &command]).output().unwrap();
            Remote::parse(&String::from_utf8(out.stdout).unwrap()).unwrap()
        };
        assert_eq!(remote(root.path()).report, NodeReport::Missing);
        let bin = root.path().join("usr/local/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("firstboot"), "").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            bin.join("firstboot"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(remote(root.path()).report, NodeReport::NotStarted);
        let done = root.path().join("var/lib/firstboot");
        std::fs::create_dir_all(&done).unwrap();
        std::fs::write(done.join("done"), "").unwrap();
        assert_eq!(remote(root.path()).report, NodeReport::Done);
        assert_eq!(remote(root.path()).updates, None);

        // The relay's record of the last answer comes after the status,
        // refusal reason and all, and reaches the table.
        let run = root.path().join("run/firstboot");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("status.json"),
            r#"{"version":2,"phase":"freeipa","state":"done","since":1,"attempt":1}"#,
        )
        .unwrap();
        std::fs::write(
            run.join("updates.json"),
            r#"{"at":1000,"request":"pre-reboot","granted":false,"kind":"site_assembling","reason":"the site is still assembling: 4 of 5 nodes"}"#,
        )
        .unwrap();
        let answer = remote(root.path());
        assert_eq!(answer.report.cells().0.as_deref(), Some("freeipa"));
        let updates = answer.updates.unwrap();
        assert_eq!(updates.kind.as_deref(), Some("site_assembling"));
        let mut row = Row::absent("ns1");
        row.note = None;
        row.updates = Some(updates.summary(1010));
        assert!(
            table(&[row]).contains(
                "update: reboot for an update refused 10 s ago \
                 (site_assembling): the site is still assembling: 4 of 5 nodes"
            ),
            "{}",
            table(&[])
        );
        // A broken record is said to be one.
        std::fs::write(run.join("updates.json"), "{\"at\":").unwrap();
        let command = REMOTE.replace("/run/", &format!("{}/run/", root.path().display()));
        let out = Command::new("sh").args(["-c", &command]).output().unwrap();
        let error = Remote::parse(&String::from_utf8(out.stdout).unwrap()).unwrap_err();
        assert!(error.starts_with("unreadable updates file"), "{error}");
        // And an answer cut short before the updates part says what is
        // missing.
        let error = Remote::parse("firstboot-done\n").unwrap_err();
        assert!(error.contains("lacks the updates part"), "{error}");
    }

    /// An active droplet whose SSH does not answer (here an `ssh` that
    /// fails as a refused connection does) is said plainly to be a node
    /// whose OS is not up, and what that means if it lasts.
    #[test]
    fn an_active_droplet_without_ssh_says_firstboot_may_never_run() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        std::fs::write(
            &ssh,
            "#!/bin/sh\necho 'ssh: connect to host 203.0.113.10 port 22: Connection refused' >&2\n\
             exit 255\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut rows = vec![Row {
            host: "ns1".into(),
            droplet: Some(42),
            status: "active".into(),
            public_ipv4: Some("203.0.113.10".into()),
            private_ipv4: None,
            phase: None,
            state: None,
            note: None,
            updates: None,
        }];
        read_phases(&mut rows, ssh.to_str().unwrap());
        let note = rows[0].note.clone().unwrap();
        assert!(note.contains("Connection refused"), "{note}");
        assert!(
            note.contains("Ignition failed before boot") && note.contains("firstboot never runs"),
            "{note}"
        );
    }
}
