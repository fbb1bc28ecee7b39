//! A stateful fake of DigitalOcean's API, for Prism to stand in front of
//! in proxy mode: Prism checks every request against the official spec
//! before forwarding it, and every answer of this fake on the way back
//! (with `--errors`, a spec violation becomes a 500 that fails the test).
//!
//! It grows with `launch`, `status` and `destroy` (issue 5); today it
//! knows the account and tags. It never answers 501, which Prism's proxy
//! would replace with a mocked answer.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Default)]
pub struct State {
    pub tags: BTreeSet<String>,
    /// Every request as `METHOD /path`, in order.
    pub calls: Vec<String>,
}

pub struct FakeDo {
    pub base: String,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeDo {
    pub fn start() -> FakeDo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        thread::spawn(move || connection(stream, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeDo { base, state, stop }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
}

impl Drop for FakeDo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Requests on one keep-alive connection, until the peer closes it.
fn connection(stream: TcpStream, state: &Mutex<State>) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = target.split('?').next().unwrap_or("").to_owned();
        let (status, answer) = {
            let mut state = state.lock().unwrap();
            state.calls.push(format!("{method} {path}"));
            route(&mut state, &method, &path, &body)
        };
        let text = answer.map(|v| v.to_string()).unwrap_or_default();
        let reason = match status {
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            404 => "Not Found",
            _ => "Unprocessable Entity",
        };
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n",
            text.len()
        );
        if !text.is_empty() {
            head.push_str("content-type: application/json\r\n");
        }
        head.push_str("ratelimit-limit: 5000\r\nratelimit-remaining: 4999\r\nratelimit-reset: 1444931833\r\n\r\n");
        if writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(text.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

fn error(status: u16, id: &str, message: &str) -> (u16, Option<Value>) {
    (
        status,
        Some(json!({"id": id, "message": message, "request_id": "fake-request"})),
    )
}

fn tag(name: &str) -> Value {
    let none = json!({"count": 0});
    json!({"name": name, "resources": {"count": 0, "droplets": none, "images": none, "volumes": none,
        "volume_snapshots": none, "databases": none}})
}

fn route(state: &mut State, method: &str, path: &str, body: &[u8]) -> (u16, Option<Value>) {
    match (method, path) {
        ("GET", "/v2/account") => (
            200,
            Some(
                json!({"account": {"droplet_limit": 25, "floating_ip_limit": 5, "volume_limit": 100,
                "email": "operator@example.com", "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                "email_verified": true, "status": "active", "status_message": "",
                "team": {"uuid": "5df3e3004a17e242b7c20ca6c9fc25b701a47ece", "name": "My Team"}}}),
            ),
        ),
        ("GET", "/v2/tags") => {
            let tags: Vec<Value> = state.tags.iter().map(|t| tag(t)).collect();
            let total = tags.len();
            (
                200,
                Some(json!({"tags": tags, "links": {}, "meta": {"total": total}})),
            )
        }
        ("POST", "/v2/tags") => {
            let Some(name) = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_owned))
            else {
                return error(422, "unprocessable_entity", "name is required");
            };
            state.tags.insert(name.clone());
            (201, Some(json!({"tag": tag(&name)})))
        }
        _ => error(
            404,
            "not_found",
            "The resource you were accessing could not be found.",
        ),
    }
}
