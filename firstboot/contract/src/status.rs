//! `/run/firstboot/status.json`: firstboot's progress as `builder status`
//! and operators read it. Versioned like every file that crosses a
//! boundary; a reader takes a file without `version` as version 1.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where firstboot writes its status on every node (gone at reboot).
pub const STATUS_PATH: &str = "/run/firstboot/status.json";

/// 2 added `detail`: what a running phase is waiting for; 3 the phase
/// `handoff` (a reader of 2 would call it malformed).
pub const STATUS_VERSION: u32 = 3;

/// The phases, in the order they run (ARCHITECTURE §5). Later issues add
/// the container engine and Kubernetes after `handoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Identify,
    Storage,
    Join,
    Etcd,
    Freeipa,
    Handoff,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Identify,
        Phase::Storage,
        Phase::Join,
        Phase::Etcd,
        Phase::Freeipa,
        Phase::Handoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Identify => "identify",
            Phase::Storage => "storage",
            Phase::Join => "join",
            Phase::Etcd => "etcd",
            Phase::Freeipa => "freeipa",
            Phase::Handoff => "handoff",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// A phase is being attempted.
    Running,
    /// A phase failed an attempt and waits to retry.
    Waiting,
    /// A phase gave up; systemd restarts firstboot, which resumes there.
    Failed,
    /// Every phase is done and the bootstrap host serves the join
    /// service and temporary DNS until handoff.
    Serving,
    /// Every phase is done.
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Waiting => "waiting",
            State::Failed => "failed",
            State::Serving => "serving",
            State::Done => "done",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the join service still admits hosts that never joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    pub open: bool,
    /// Why it closed: every host joined, or the deadline passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_because: Option<String>,
    /// Hosts admitted so far, and the site's size.
    pub joined: u32,
    pub hosts: u32,
    /// Unix seconds after which no host that never joined is admitted.
    pub deadline: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    #[serde(default = "version_1")]
    pub version: u32,
    /// The phase running, or the last one when all are done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    pub state: State,
    /// Unix seconds when this phase and state began.
    pub since: u64,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the phase is waiting for while it waits long, with the seconds
    /// so far ("freeipa-server.service installing, 120 s"); cleared when
    /// the phase or its state changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// On the bootstrap host, once its join service runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

fn version_1() -> u32 {
    1
}

impl Status {
    /// Parse a status file; a newer version is refused by name.
    pub fn from_json(bytes: &[u8]) -> Result<Status, String> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default = "version_1")]
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("firstboot's status is not JSON: {e}"))?;
        if v.version > STATUS_VERSION {
            return Err(format!(
                "firstboot's status has version {}; this builder reads up to {STATUS_VERSION}",
                v.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("firstboot's status is malformed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_files_as_written_load() {
        // A status file exactly as firstboot wrote it before `version`
        // existed: kept so that later readers keep loading it.
        let old = br#"{
  "phase": "etcd",
  "state": "waiting",
  "since": 1764370000,
  "attempt": 2,
  "last_error": "etcd is not healthy"
}"#;
        let status = Status::from_json(old).unwrap();
        assert_eq!(status.version, 1);
        assert_eq!(status.phase, Some(Phase::Etcd));
        assert_eq!(status.state, State::Waiting);
        assert_eq!(status.last_error.as_deref(), Some("etcd is not healthy"));

        let serving = br#"{"version": 1, "phase": "etcd", "state": "serving", "since": 1, "attempt": 1,
            "admission": {"open": false, "closed_because": "every host has joined", "joined": 5, "hosts": 5, "deadline": 9}}"#;
        let status = Status::from_json(serving).unwrap();
        assert!(!status.admission.unwrap().open);
    }

    #[test]
    fn version_2_says_what_a_phase_waits_for() {
        let waiting = br#"{"version": 2, "phase": "freeipa", "state": "running", "since": 1,
            "attempt": 1, "detail": "freeipa-server.service installing, 120 s"}"#;
        let status = Status::from_json(waiting).unwrap();
        assert_eq!(
            status.detail.as_deref(),
            Some("freeipa-server.service installing, 120 s")
        );
        // A version 1 reader's file has none.
        let old = br#"{"version": 1, "state": "done", "since": 1, "attempt": 1}"#;
        assert_eq!(Status::from_json(old).unwrap().detail, None);
    }

    #[test]
    fn newer_versions_are_refused_by_name() {
        let err = Status::from_json(br#"{"version": 4, "state": "done"}"#).unwrap_err();
        assert!(err.contains("version 4"), "{err}");
    }

    #[test]
    fn phases_keep_their_order_and_names() {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            ["identify", "storage", "join", "etcd", "freeipa", "handoff"]
        );
        for p in Phase::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
    }
}
