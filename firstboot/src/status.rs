//! Progress, where operators look: the journal (structured fields), the
//! status file, and systemd through sd_notify.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub phase: String,
    /// `running`, `waiting`, `failed`, `done` or `serving`.
    pub state: String,
    /// Unix seconds when this phase/state began.
    pub since: u64,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub struct Reporter {
    file: PathBuf,
    current: Option<Status>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Reporter {
    pub fn new(file: PathBuf) -> Reporter {
        Reporter {
            file,
            current: None,
        }
    }

    pub fn set(&mut self, phase: &str, state: &str, attempt: u32, error: Option<String>) {
        let since = match &self.current {
            Some(s) if s.phase == phase && s.state == state => s.since,
            _ => now(),
        };
        let status = Status {
            phase: phase.to_owned(),
            state: state.to_owned(),
            since,
            attempt,
            last_error: error.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec_pretty(&status) {
            // Best effort: progress reporting must never stop the work.
            let _ = crate::fsutil::write_atomic(&self.file, &bytes, 0o644);
        }
        let text = match &error {
            Some(e) => format!("STATUS={phase}: {state} (attempt {attempt}): {e}"),
            None => format!("STATUS={phase}: {state}"),
        };
        notify(&text);
        self.current = Some(status);
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
