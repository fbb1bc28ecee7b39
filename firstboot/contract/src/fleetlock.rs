//! What `builder render` tells Zincati and firstboot serves: the relay's
//! port (Zincati's `fleet_lock` base URL on every node) and the reboot
//! group of each role. Defined once for both sides.

use crate::Role;

/// The FleetLock relay's port on 127.0.0.1 of every node.
pub const RELAY_PORT: u16 = 7446;
/// The lock server's port on the core hosts' VPC addresses.
pub const LOCK_PORT: u16 = 7445;
/// Where `builder render` writes Zincati's configuration (a drop-in of
/// the administrator's directory: coreos/zincati docs/usage/configuration.md).
pub const ZINCATI_DROPIN_PATH: &str = "/etc/zincati/config.d/55-updates-strategy.toml";

/// Zincati's base URL: the relay. It ends with `/` because Zincati joins
/// `v1/pre-reboot` to it with `Url::join`, which would drop a last path
/// segment without one (coreos/zincati `src/fleet_lock/mod.rs`).
pub fn base_url() -> String {
    format!("http://127.0.0.1:{RELAY_PORT}/")
}

/// A role's reboot group (the protocol's `group`, `^[a-zA-Z0-9.-]+$`).
pub fn group(role: Role) -> &'static str {
    match role {
        Role::Core => "core",
        Role::Worker => "workers",
    }
}

/// Where the relay keeps the lock servers' last answer to this node's
/// Zincati, which `builder status` reads over SSH.
pub const UPDATES_PATH: &str = "/run/firstboot/updates.json";

/// The lock servers' last answer to this node's Zincati: the reboot it
/// asked for (or the release it reported) and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastAnswer {
    /// Unix seconds of the answer.
    pub at: u64,
    /// `pre-reboot` or `steady-state`.
    pub request: String,
    pub granted: bool,
    /// The refusal's `kind` and `value` (the protocol's error body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LastAnswer {
    /// Parse the file; anything else is an error saying so.
    pub fn from_json(bytes: &[u8]) -> Result<LastAnswer, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the updates file is malformed: {e}"))
    }

    /// One line for `builder status`, `now` in Unix seconds.
    pub fn summary(&self, now: u64) -> String {
        let ago = now.saturating_sub(self.at);
        let what = match self.request.as_str() {
            "pre-reboot" => "reboot for an update",
            "steady-state" => "release of the reboot lock",
            other => other,
        };
        match (self.granted, &self.kind, &self.reason) {
            (true, _, _) => format!("update: {what} granted {ago} s ago"),
            (false, kind, reason) => format!(
                "update: {what} refused {ago} s ago ({}): {}",
                kind.as_deref().unwrap_or("no kind given"),
                reason.as_deref().unwrap_or("no reason given")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_back_with_its_reason() {
        let refused = LastAnswer {
            at: 100,
            request: "pre-reboot".into(),
            granted: false,
            kind: Some("site_assembling".into()),
            reason: Some("3 of 5 nodes assembled".into()),
        };
        let json = serde_json::to_vec(&refused).unwrap();
        let back = LastAnswer::from_json(&json).unwrap();
        assert_eq!(back, refused);
        assert_eq!(
            back.summary(112),
            "update: reboot for an update refused 12 s ago (site_assembling): \
             3 of 5 nodes assembled"
        );
        let err = LastAnswer::from_json(br#"{"at": 1, "request": "pre-reboot"}"#).unwrap_err();
        assert!(err.contains("granted"), "{err}");
        let err =
            LastAnswer::from_json(br#"{"at": 1, "request": "x", "granted": true, "extra": 1}"#)
                .unwrap_err();
        assert!(err.contains("extra"), "{err}");
    }
}
