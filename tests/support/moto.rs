//! moto (PyPI `moto[server]`, installed by `make test-deps` into
//! `target/tools/moto`): a local S3 and IAM server that checks SigV4
//! signatures, so the Spaces publisher is tested against a real
//! S3-compatible implementation, wrong keys included.
//!
//! How moto 5.2 authenticates (found by experiment, and in its source,
//! `moto/core/authorization.py` and `moto/iam/access_control.py`):
//! - It starts with authentication off (`INITIAL_NO_AUTH_ACTION_COUNT`
//!   unset means infinity): any request is served, signed or not.
//! - `POST /moto-api/reset-auth` with a body such as `0` sets that count
//!   and zeroes the counter of unauthenticated actions: the next N actions
//!   (of any service, IAM and S3 alike) pass unchecked, every later one is
//!   checked. `0` enforces at once; `inf` turns authentication off again.
//!   The `/moto-api/` endpoints themselves are never checked or counted.
//! - Checked means: the `Authorization` header's key must be an IAM access
//!   key (else 403 `InvalidAccessKeyId`), the SigV4 signature is recomputed
//!   with botocore from the signed headers (else 403
//!   `SignatureDoesNotMatch`), and the user's policies must allow the
//!   action (else 403 `AccessDenied`).
//! - A request without an `Authorization` header while authentication is
//!   on, such as a node's plain GET or a presigned URL (query-string
//!   signature), fails with 500: moto reads the missing header (KeyError).
//!   So public objects are fetched with authentication off.
//! - With authentication off, an unsigned request is treated as anonymous
//!   for object ACLs: a `public-read` object is served (200), a private
//!   one is refused (403). Bucket ACLs are not enforced that way (an
//!   anonymous listing of a private bucket is served), but `?acl` shows
//!   them.
//! - Unsigned IAM calls are routed to IAM by the credential scope of an
//!   `Authorization` header (`…/us-east-1/iam/aws4_request`); a form POST
//!   without one is taken for S3. The signature itself is not checked
//!   while authentication is off.
//! - `MOTO_ENABLE_RECORDING` makes moto append every request to
//!   `MOTO_RECORDER_FILEPATH`; `/moto-api/recorder/reset-recording` and
//!   `download-recording` clear and read it, which tests use to see which
//!   requests reached the server.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::child::{spawn_announcing, Announced};

/// moto's server: `$MOTO_SERVER_BIN`, else where `make test-deps` puts it.
pub fn moto_bin() -> PathBuf {
    std::env::var_os("MOTO_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::site::repo().join("target/tools/moto/bin/moto_server"))
}

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    let bin = moto_bin();
    (!bin.is_file()).then(|| {
        format!(
            "skipping: moto_server is not at {} (run `make test-deps`, or set MOTO_SERVER_BIN)",
            bin.display()
        )
    })
}

/// One HTTP answer.
pub use super::http::Response as Answer;

pub struct Moto {
    /// `http://127.0.0.1:PORT`, the endpoint for the publisher.
    pub base: String,
    /// Ends moto when dropped; declared first so it goes before `dir`.
    server: Announced,
    /// Holds the recording file.
    dir: tempfile::TempDir,
}

impl Moto {
    /// Start moto on a loopback port it picks, authentication off,
    /// recording requests; wait (at most 60 s) until it says it is
    /// listening.
    pub fn start() -> Moto {
        Self::start_in(None)
    }

    /// As `start`, inside the network namespace `netns` when given (its
    /// loopback: only what runs there reaches it).
    pub fn start_in(netns: Option<&str>) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(moto_bin());
        command
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .current_dir(dir.path());
        if let Some(netns) = netns {
            command = super::child::in_netns(netns, &command);
        }
        // werkzeug's " * Running on http://127.0.0.1:PORT", once bound.
        let server = spawn_announcing(
            command,
            "moto_server",
            "Running on http://127.0.0.1:",
            Duration::from_secs(60),
        );
        Moto {
            base: server.base(),
            server,
            dir,
        }
    }

    /// What moto printed, for failure messages.
    pub fn log(&self) -> String {
        self.server.output()
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// One request, unsigned.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        super::http::request(
            &format!("127.0.0.1:{}", self.server.port),
            method,
            path,
            headers,
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {path} to moto: {e}\n{}", self.log()))
    }

    /// An anonymous GET, as a node fetches a public object.
    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], b"")
    }

    /// One IAM query-API action (`Action=…&Version=2010-05-08`), unsigned:
    /// only while authentication is off. Panics unless moto says 200.
    pub fn iam(&self, action: &str, params: &[(&str, &str)]) -> String {
        let mut form = format!("Action={action}&Version=2010-05-08");
        for (k, v) in params {
            form.push_str(&format!("&{k}={}", form_encode(v)));
        }
        // Routes the request to IAM; not checked while auth is off.
        let scope = "AWS4-HMAC-SHA256 Credential=setup/20250101/us-east-1/iam/aws4_request, \
                     SignedHeaders=host, Signature=0";
        let answer = self.request(
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", scope),
            ],
            form.as_bytes(),
        );
        assert_eq!(answer.status, 200, "IAM {action}: {}", answer.text());
        answer.text()
    }

    /// An IAM user allowed `s3:*` on everything, and its access key:
    /// `(key id, secret)`. Authentication must be off.
    pub fn create_user_with_s3_access(&self, user: &str) -> (String, String) {
        self.iam("CreateUser", &[("UserName", user)]);
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(
            "PutUserPolicy",
            &[
                ("UserName", user),
                ("PolicyName", "s3-all"),
                ("PolicyDocument", policy),
            ],
        );
        let answer = self.iam("CreateAccessKey", &[("UserName", user)]);
        let key = xml_text(&answer, "AccessKeyId").expect("an access key id");
        let secret = xml_text(&answer, "SecretAccessKey").expect("a secret");
        (key, secret)
    }

    /// Check every request from now on (signature, key, policy).
    pub fn enforce_auth(&self) {
        self.reset_auth("0");
    }

    /// Serve every request unchecked again (anonymous reads need this).
    pub fn disable_auth(&self) {
        self.reset_auth("inf");
    }

    fn reset_auth(&self, count: &str) {
        let answer = self.request(
            "POST",
            "/moto-api/reset-auth",
            &[("Content-Type", "text/plain")],
            count.as_bytes(),
        );
        assert_eq!(answer.status, 200, "reset-auth: {}", answer.text());
    }

    /// Forget the requests recorded so far.
    pub fn reset_recording(&self) {
        let answer = self.request("POST", "/moto-api/recorder/reset-recording", &[], b"");
        assert_eq!(answer.status, 200, "reset-recording: {}", answer.text());
    }

    /// The requests moto served since the last reset, as `METHOD /path`
    /// (query strings kept), `/moto-api/` ones left out.
    pub fn recorded(&self) -> Vec<String> {
        let answer = self.get("/moto-api/recorder/download-recording");
        assert_eq!(answer.status, 200, "download-recording: {}", answer.text());
        answer
            .text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).unwrap();
                let url = entry["url"].as_str().unwrap_or_default();
                let path = url
                    .strip_prefix(&self.base)
                    .unwrap_or(url)
                    .trim_end_matches('/');
                let path = if path.is_empty() { "/" } else { path };
                format!("{} {path}", entry["method"].as_str().unwrap_or("?"))
            })
            .filter(|call| !call.contains(" /moto-api/"))
            .collect()
    }
}

/// `application/x-www-form-urlencoded` escaping.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].to_owned())
}
