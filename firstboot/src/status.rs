//! Progress, where operators look: the journal (structured fields), the
//! status file (`node_contract::status`, which `builder status` reads), and
//! systemd through sd_notify.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use node_contract::status::{Admission, Phase, State, Status, STATUS_VERSION};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes the status file; cheap to clone (the join service reports the
/// admission state through a clone).
#[derive(Clone)]
pub struct Reporter {
    file: PathBuf,
    current: Arc<Mutex<Option<Status>>>,
}

impl Reporter {
    pub fn new(file: PathBuf) -> Reporter {
        Reporter {
            file,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// A phase's state; the time it began is kept while phase and state
    /// stay the same.
    pub fn set(&self, phase: Option<Phase>, state: State, attempt: u32, error: Option<String>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let since = match current.as_ref() {
            Some(s) if s.phase == phase && s.state == state => s.since,
            _ => now(),
        };
        let status = Status {
            version: STATUS_VERSION,
            phase,
            state,
            since,
            attempt,
            last_error: error.clone(),
            detail: None,
            admission: current.as_ref().and_then(|s| s.admission.clone()),
        };
        self.write(&status);
        let what = phase.map(|p| p.as_str()).unwrap_or("firstboot");
        notify(&match &error {
            Some(e) => format!("STATUS={what}: {state} (attempt {attempt}): {e}"),
            None => format!("STATUS={what}: {state}"),
        });
        *current = Some(status);
    }

    /// What the running phase waits for (see `Status::detail`): in the
    /// status file and systemd's status line, until the phase or its state
    /// changes. Nothing is written before a phase has been set.
    pub fn detail(&self, detail: String) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(status) = current.as_mut() else {
            return;
        };
        let what = status.phase.map(|p| p.as_str()).unwrap_or("firstboot");
        notify(&format!("STATUS={what}: {}: {detail}", status.state));
        status.detail = Some(detail);
        let copy = status.clone();
        self.write(&copy);
    }

    /// The join service's admission state (bootstrap host).
    pub fn set_admission(&self, admission: Admission) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let status = current.get_or_insert_with(|| Status {
            version: STATUS_VERSION,
            phase: None,
            state: State::Running,
            since: now(),
            attempt: 1,
            last_error: None,
            detail: None,
            admission: None,
        });
        if status.admission.as_ref() == Some(&admission) {
            return;
        }
        status.admission = Some(admission);
        let copy = status.clone();
        self.write(&copy);
    }

    fn write(&self, status: &Status) {
        if let Ok(mut bytes) = serde_json::to_vec_pretty(status) {
            bytes.push(b'\n');
            // Best effort: progress reporting must never stop the work.
            let _ = crate::fsutil::write_atomic(&self.file, &bytes, 0o644);
        }
    }
}

/// Send one sd_notify message if systemd asked for them (`NOTIFY_SOCKET`).
pub fn notify(message: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let path = socket.to_string_lossy().into_owned();
    let _ = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), &path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_what_builder_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("status.json");
        let reporter = Reporter::new(file.clone());
        reporter.set(
            Some(Phase::Join),
            State::Waiting,
            2,
            Some("no answer".into()),
        );
        reporter.set_admission(Admission {
            open: true,
            closed_because: None,
            joined: 1,
            hosts: 3,
            deadline: 99,
        });
        let status = Status::from_json(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(status.phase, Some(Phase::Join));
        assert_eq!(status.state, State::Waiting);
        assert_eq!(status.last_error.as_deref(), Some("no answer"));
        assert_eq!(status.admission.as_ref().unwrap().joined, 1);
        // Later phases keep the admission state.
        reporter.set(Some(Phase::Etcd), State::Running, 1, None);
        let status = Status::from_json(&std::fs::read(&file).unwrap()).unwrap();
        assert!(status.admission.is_some() && status.last_error.is_none());
    }

    #[test]
    fn a_detail_says_what_a_phase_waits_for_until_the_phase_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("status.json");
        let reporter = Reporter::new(file.clone());
        // Before any phase there is nothing to qualify: nothing is written.
        reporter.detail("early".into());
        assert!(!file.exists());
        let read = || Status::from_json(&std::fs::read(&file).unwrap()).unwrap();
        reporter.set(Some(Phase::Freeipa), State::Running, 1, None);
        let since = read().since;
        reporter.detail("freeipa-server.service installing, 30 s".into());
        let status = read();
        assert_eq!(
            status.detail.as_deref(),
            Some("freeipa-server.service installing, 30 s")
        );
        assert_eq!((status.phase, status.since), (Some(Phase::Freeipa), since));
        reporter.set(Some(Phase::Freeipa), State::Done, 1, None);
        assert_eq!(read().detail, None);
    }
}
