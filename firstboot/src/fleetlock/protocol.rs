//! FleetLock on the wire, as Zincati speaks it (coreos/zincati
//! `docs/development/fleetlock/protocol.md`; the client side is
//! `src/fleet_lock/mod.rs`, which joins `v1/pre-reboot` and
//! `v1/steady-state` to its base URL, sends the `fleet-lock-protocol: true`
//! header and reads a refusal's body as `{kind, value}`).
//!
//! Parsing is strict where the document says MUST (the header, a POST, a
//! JSON body whose `client_params` has a non-empty `id` and a non-empty
//! `group` matching `^[a-zA-Z0-9.-]+$`); keys the document does not name
//! are ignored, so a newer Zincati that sends more still gets its lock.

use serde::{Deserialize, Serialize};

/// The protocol's two operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `/v1/pre-reboot`: RecursiveLock, reserve a reboot slot.
    PreReboot,
    /// `/v1/steady-state`: UnlockIfHeld, release the slot if held.
    SteadyState,
}

impl Operation {
    pub fn path(self) -> &'static str {
        match self {
            Operation::PreReboot => "/v1/pre-reboot",
            Operation::SteadyState => "/v1/steady-state",
        }
    }

    fn from_path(path: &str) -> Option<Operation> {
        [Operation::PreReboot, Operation::SteadyState]
            .into_iter()
            .find(|op| op.path() == path)
    }
}

/// A checked `client_params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// Zincati's node id: case-sensitive, non-empty (the document's words;
    /// Zincati sends its app-specific machine id in lower-case hex).
    pub id: String,
    /// A reboot group, `^[a-zA-Z0-9.-]+$`.
    pub group: String,
}

/// One checked lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    pub operation: Operation,
    pub params: ClientParams,
}

/// A refusal: the HTTP status and the document's error body. `kind` is one
/// of the fixed set below (the document asks for a small, bounded set, as
/// Zincati counts it in metrics); `value` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    #[serde(skip)]
    pub status: u16,
    pub kind: String,
    pub value: String,
}

/// Every `kind` the lock server answers with.
pub mod kind {
    /// Not a FleetLock request (no header, wrong method, bad body).
    pub const BAD_REQUEST: &str = "bad_request";
    /// Neither endpoint.
    pub const NOT_FOUND: &str = "not_found";
    /// The caller is not a node of the site, or asks about another.
    pub const FORBIDDEN: &str = "forbidden";
    /// The group is not the caller's own.
    pub const WRONG_GROUP: &str = "wrong_group";
    /// The site is still assembling: no reboot at all.
    pub const SITE_ASSEMBLING: &str = "site_assembling";
    /// Every slot of the group is held (the document's own example).
    pub const SEMAPHORE_FULL: &str = "failed_lock_semaphore_full";
    /// etcd cannot spare a member now.
    pub const ETCD_UNHEALTHY: &str = "etcd_unhealthy";
    /// No other FreeIPA server is healthy.
    pub const FREEIPA_UNHEALTHY: &str = "freeipa_unhealthy";
    /// The holder is back but not healthy yet: it keeps the lock.
    pub const NODE_UNHEALTHY: &str = "node_unhealthy";
    /// The lock's state could not be read or written.
    pub const STORE_UNAVAILABLE: &str = "lock_store_unavailable";
    /// The relay reached no lock server (or the node has not joined yet).
    pub const LOCK_SERVER_UNREACHABLE: &str = "lock_server_unreachable";
}

impl Refusal {
    pub fn new(status: u16, kind: &str, value: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind: kind.to_owned(),
            value: value.into(),
        }
    }

    /// The error body the document defines.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("two strings serialise")
    }
}

/// The header whose fixed value guards against a request redirected by
/// accident (the document's "Headers").
pub const HEADER: &str = "fleet-lock-protocol";

/// Check a request: method, path, header, body. The path is the request's
/// path with the server's base stripped.
pub fn parse(
    method: &hyper::Method,
    path: &str,
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<LockRequest, Refusal> {
    let operation = Operation::from_path(path).ok_or_else(|| {
        Refusal::new(
            404,
            kind::NOT_FOUND,
            format!("no FleetLock endpoint at {path}: /v1/pre-reboot or /v1/steady-state"),
        )
    })?;
    if method != hyper::Method::POST {
        return Err(Refusal::new(
            405,
            kind::BAD_REQUEST,
            format!("{} takes POST, not {method}", operation.path()),
        ));
    }
    if header != Some(b"true".as_slice()) {
        return Err(Refusal::new(
            400,
            kind::BAD_REQUEST,
            format!("the `{HEADER}: true` header is missing or has another value"),
        ));
    }
    #[derive(Deserialize)]
    struct Body {
        client_params: Params,
    }
    #[derive(Deserialize)]
    struct Params {
        id: Option<serde_json::Value>,
        group: Option<serde_json::Value>,
    }
    let bad = |what: String| Refusal::new(400, kind::BAD_REQUEST, what);
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not {{\"client_params\": {{\"id\", \"group\"}}}}: {e}"
        ))
    })?;
    let text = |value: Option<serde_json::Value>, name: &str| match value {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
        Some(serde_json::Value::String(_)) => Err(bad(format!("client_params.{name} is empty"))),
        Some(_) => Err(bad(format!("client_params.{name} is not a string"))),
        None => Err(bad(format!("client_params.{name} is missing"))),
    };
    let id = text(body.client_params.id, "id")?;
    let group = text(body.client_params.group, "group")?;
    if !group
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(bad(format!(
            "client_params.group `{}` does not match ^[a-zA-Z0-9.-]+$",
            group.escape_debug()
        )));
    }
    Ok(LockRequest {
        operation,
        params: ClientParams { id, group },
    })
}

/// The body a client sends (the relay and the tests' own client build
/// theirs from the document, not from this).
pub fn request_body(params: &ClientParams) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "client_params": {"id": params.id, "group": params.group}
    }))
    .expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    fn body(id: &str, group: &str) -> Vec<u8> {
        format!(r#"{{"client_params": {{"id": "{id}", "group": "{group}"}}}}"#).into_bytes()
    }

    fn ok(path: &str, body: &[u8]) -> Result<LockRequest, Refusal> {
        parse(&Method::POST, path, Some(b"true"), body)
    }

    #[test]
    fn the_documents_example_parses() {
        // The example of protocol.md, byte for byte in its structure.
        let example = br#"
{
  "client_params": {
    "group": "default",
    "id": "c988d2509fdf5cdcbed39037c56406fb"
  }
}
"#;
        let request = ok("/v1/pre-reboot", example).unwrap();
        assert_eq!(request.operation, Operation::PreReboot);
        assert_eq!(request.params.id, "c988d2509fdf5cdcbed39037c56406fb");
        assert_eq!(request.params.group, "default");
        let release = ok("/v1/steady-state", example).unwrap();
        assert_eq!(release.operation, Operation::SteadyState);
    }

    #[test]
    fn the_header_must_say_true() {
        let b = body("a", "default");
        for header in [None, Some(b"false".as_slice()), Some(b"True"), Some(b"")] {
            let refusal = parse(&Method::POST, "/v1/pre-reboot", header, &b).unwrap_err();
            assert_eq!(
                (refusal.status, refusal.kind.as_str()),
                (400, "bad_request")
            );
        }
    }

    #[test]
    fn only_post_to_the_two_endpoints() {
        let b = body("a", "default");
        let refusal = parse(&Method::GET, "/v1/pre-reboot", Some(b"true"), &b).unwrap_err();
        assert_eq!(refusal.status, 405);
        for path in ["/v1/pre-reboot/", "/v2/pre-reboot", "/pre-reboot", "/"] {
            assert_eq!(ok(path, &b).unwrap_err().status, 404, "{path}");
        }
    }

    #[test]
    fn id_and_group_are_checked() {
        let refused = |b: &[u8]| ok("/v1/pre-reboot", b).unwrap_err();
        assert!(refused(&body("", "default")).value.contains("id is empty"));
        assert!(refused(&body("a", "")).value.contains("group is empty"));
        for group in ["a b", "a/b", "a_b", "é", "a\\nb"] {
            let r = refused(&body("a", group));
            assert!(r.value.contains("does not match"), "{group}: {r:?}");
        }
        // Older Zincati named the id `node_uuid`; the document says `id`.
        let old = br#"{"client_params": {"node_uuid": "ab", "group": "default"}}"#;
        assert!(refused(old).value.contains("id is missing"));
        assert!(refused(br#"{"client_params": {"id": 7, "group": "g"}}"#)
            .value
            .contains("id is not a string"));
        assert!(refused(b"not json").value.contains("not {"));
        assert!(refused(b"{}").value.contains("client_params"));
        // Groups of the allowed alphabet, and keys the document does not
        // name, pass.
        let fine = br#"{"client_params": {"id": "A", "group": "a.B-9", "extra": 1}, "x": 2}"#;
        assert_eq!(ok("/v1/pre-reboot", fine).unwrap().params.group, "a.B-9");
    }

    #[test]
    fn a_refusal_is_the_documents_error_body() {
        let refusal = Refusal::new(409, kind::SEMAPHORE_FULL, "all slots are held");
        let value: serde_json::Value = serde_json::from_slice(&refusal.body()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"kind": "failed_lock_semaphore_full", "value": "all slots are held"})
        );
    }

    #[test]
    fn request_body_round_trips() {
        let params = ClientParams {
            id: "0123".into(),
            group: "core".into(),
        };
        let parsed = ok("/v1/steady-state", &request_body(&params)).unwrap();
        assert_eq!(parsed.params, params);
    }
}
