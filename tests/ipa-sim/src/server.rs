//! One simulated FreeIPA server: HTTPS (login, JSON-RPC, the simulator's
//! enrollment and replication endpoints), DNS, and replication with every
//! other server it knows.
//!
//! Wire, as FreeIPA's `rpcserver.py`:
//! - `POST /ipa/session/login_password`, form `user=admin&password=...`:
//!   200 with `Set-Cookie: ipa_session=...`; a wrong password is 401 with
//!   `X-IPA-Rejection-Reason: invalid-password`.
//! - `POST /ipa/session/json`: without a valid session cookie 401 with an
//!   HTML body; without `Referer: https://<fqdn>/ipa` error 911; otherwise
//!   `{"result", "error", "id", "principal", "version"}` with HTTP 200 for
//!   every command error.
//!
//! The simulator's own endpoints (stand-ins, see [`crate::install`]):
//! - `POST /ipa-sim/enroll` `{"fqdn", "password", "role", "setup_ca",
//!   "address"}`: a host's one-time password enrolls it once; answered
//!   `{"payload": "<json>", "proof": hex HMAC-SHA256(password, payload)}`.
//! - `POST /ipa-sim/replicate` `{"fqdn", "keytab"}`: an enrolled IPA server
//!   (member of `ipaservers`, proving its host key) gets the whole state.
//!
//! Every call is appended to the calls log as one JSON object per line:
//! `{"time", "server", "method", "params", "error", "mutated"}` (and
//! `"fault"` when a fault answered it). Faults come from `<data>/faults.json`
//! (`{"fault": "garbage"|"http500"|"unauthorized"|"expire_session",
//! "count": N}`), each JSON-RPC call taking one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use firstboot::freeipa::transport::{self, Endpoint};
use firstboot::https::{self, Identity, Request, Response, LIMITS};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::Api;
use base64::Engine as _;

use crate::commands::{self, Caller, Ctx};
use crate::error::IpaError;
use crate::state::{self, first, values, Kind, State};
use crate::{ca, dns};

/// The product version FreeIPA reports in every answer.
pub const PRODUCT_VERSION: &str = "4.13.0";
/// How often a server pulls every other server's state.
pub const REPLICATION_INTERVAL: Duration = Duration::from_millis(500);
/// A session lasts this long without use (FreeIPA's default: 20 minutes).
const SESSION_IDLE: Duration = Duration::from_secs(20 * 60);

/// The faults a test can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// 200 with a body that is not JSON.
    Garbage,
    /// HTTP 500.
    Http500,
    /// 401 once, the session itself kept.
    Unauthorized,
    /// Every session ends, then 401.
    ExpireSession,
    /// The call runs, and its answer comes `delay_ms` later: a real
    /// `server_del` waits for replication to remove the agreements, up
    /// to some 180 s (freeipa `ipaserver/plugins/server.py`,
    /// `wait_for_segment_removal`, 90 rounds of 2 s), and any call can
    /// meet a busy server.
    Slow,
}

#[derive(Debug, Serialize, Deserialize)]
struct FaultFile {
    fault: Fault,
    count: u32,
    #[serde(default)]
    delay_ms: u64,
}

/// Make the next `count` JSON-RPC answers of the server whose data
/// directory is `data` be `fault`.
pub fn inject(data: &Path, fault: Fault, count: u32) -> anyhow::Result<()> {
    inject_with_delay(data, fault, count, 0)
}

/// As [`inject`], with the delay a [`Fault::Slow`] answer takes.
pub fn inject_with_delay(
    data: &Path,
    fault: Fault,
    count: u32,
    delay_ms: u64,
) -> anyhow::Result<()> {
    let text = serde_json::to_vec(&FaultFile {
        fault,
        count,
        delay_ms,
    })?;
    firstboot::fsutil::write_atomic(&data.join("faults.json"), &text, 0o600)
}

/// What a server needs to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub fqdn: String,
    /// HTTPS (443 in the lab).
    pub listen: SocketAddr,
    /// DNS (53 in the lab); None: no DNS.
    pub dns_listen: Option<SocketAddr>,
    pub data: PathBuf,
    pub calls_log: PathBuf,
    /// Where to reach servers by name, where DNS should not be asked.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Where the server resolves names for FreeIPA's checks.
    pub resolver: Resolver,
    /// How long a lightweight CA made on another server stays unusable
    /// here after its entry arrived: its key follows the entry on its
    /// own (Dogtag's `AuthorityMonitor` sees the entry, then its key
    /// retriever, FreeIPA's `ipa-pki-retrieve-key`, fetches the key
    /// through Custodia; freeipa `ipaserver/plugins/ca.py`,
    /// `set_certificate_attrs`: "lightweight CA key replication delay").
    /// Until then `ca_show` answers without its certificate and with
    /// message 13031, and `cert_request` with 4301.
    pub lwca_key_delay: Duration,
}

/// The key delay a server has unless told otherwise: long enough that
/// a client asking a replica right after `ca_add` meets it.
pub const DEFAULT_LWCA_KEY_DELAY: Duration = Duration::from_secs(5);

/// The resolver a server's checks go through: what the container's
/// resolv.conf names. Its own DNS when podman gave it `--dns=127.0.0.1`
/// (firstboot does, `exec::podman_command`), else the host's resolver,
/// which on a node sends the site domain to the temporary DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    OwnZones,
    Nameservers(Vec<SocketAddr>),
}

/// The names `method` checks through the resolver (host_add's host,
/// service_add's host), each with whether the first nameserver that
/// answers has an A record for it; a nameserver that does not answer
/// counts as no record (FreeIPA's check fails the same way).
async fn look_up(servers: &[SocketAddr], method: &str, params: &Value) -> BTreeMap<String, bool> {
    let arg = params[0][0].as_str().unwrap_or_default();
    let host = match method {
        "host_add" => arg,
        "service_add" => arg
            .split_once('/')
            .map(|(_, rest)| rest.split('@').next().unwrap_or_default())
            .unwrap_or_default(),
        _ => return BTreeMap::new(),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut found = false;
    for server in servers {
        if let Ok(addresses) = firstboot::dnsquery::resolve_a(*server, &host).await {
            found = !addresses.is_empty();
            break;
        }
    }
    BTreeMap::from([(host, found)])
}

struct Inner {
    options: Options,
    api: Arc<Api>,
    state: Mutex<State>,
    /// Session tokens: when each was last used, and whose it is.
    sessions: Mutex<HashMap<String, (Instant, Caller)>>,
    /// This server's host key (its "keytab").
    keytab: String,
    zones: Mutex<Option<dns::Zones>>,
    /// When each lightweight CA made elsewhere (by `ipacaid`) has its
    /// key here.
    lwca_keys: Mutex<HashMap<String, Instant>>,
}

/// A running server; dropping it stops nothing, [`Running::stop`] does.
pub struct Running {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    dns: Option<hickory_server::Server<dns::Zones>>,
    pub address: SocketAddr,
    pub dns_address: Option<SocketAddr>,
}

impl Running {
    pub fn ca_pem(&self) -> String {
        lock(&self.inner.state)
            .get(Kind::Ca, "ipa")
            .and_then(|e| e.get("_cert_pem"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    pub fn state(&self) -> State {
        lock(&self.inner.state).clone()
    }

    pub fn fqdn(&self) -> &str {
        &self.inner.options.fqdn
    }

    /// Stop serving (the process of a stopped server, as far as its peers
    /// can tell).
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if let Some(mut server) = self.dns.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), server.shutdown_gracefully()).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The state file in a data directory.
pub fn state_path(data: &Path) -> PathBuf {
    data.join("state.json")
}

pub fn load_state(data: &Path) -> anyhow::Result<Option<State>> {
    let path = state_path(data);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; remove the data directory to install again",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn save_state(data: &Path, state: &State) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(state)?;
    firstboot::fsutil::write_atomic(&state_path(data), &bytes, 0o600)
}

/// Serve `state` as `options.fqdn`, with `keytab` as this server's key.
pub async fn start(
    options: Options,
    api: Arc<Api>,
    state: State,
    keytab: String,
) -> anyhow::Result<Running> {
    let root =
        commands::ca_pems(&state, "ipa").ok_or_else(|| anyhow!("the state has no IPA CA"))?;
    let tls = ca::server_certificate(&root, &options.fqdn)?;
    let identity = Identity::Fixed(https::server_config(&tls.cert_pem, &tls.key_pem)?);
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    // Peers reach this server at the address it really serves on.
    let mut state = state;
    if let Some(mut entry) = state.get(Kind::Server, &options.fqdn).cloned() {
        if first(&entry, "_address").as_deref() != Some(address.to_string().as_str()) {
            entry.insert("_address".into(), json!(address.to_string()));
            let fqdn = options.fqdn.clone();
            state.put(&fqdn, Kind::Server, &fqdn, Some(entry));
            save_state(&options.data, &state)?;
        }
    }
    let (dns, dns_address, zones) = match options.dns_listen {
        Some(at) => {
            let (zones, server, bound) = dns::serve(at, &state).await?;
            (Some(server), Some(bound), Some(zones))
        }
        None => (None, None, None),
    };
    if let Some(parent) = options.calls_log.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let inner = Arc::new(Inner {
        options,
        api,
        state: Mutex::new(state),
        sessions: Mutex::new(HashMap::new()),
        keytab,
        zones: Mutex::new(zones),
        lwca_keys: Mutex::new(HashMap::new()),
    });
    let handler_inner = inner.clone();
    let serving = tokio::spawn(https::serve(listener, identity, LIMITS, move |request| {
        let inner = handler_inner.clone();
        async move { inner.handle(request).await }
    }));
    let replicating = tokio::spawn(replicate_forever(inner.clone()));
    tracing::info!("ipa-sim: {} serving on {address}", inner.options.fqdn);
    Ok(Running {
        inner,
        tasks: vec![serving, replicating],
        dns,
        address,
        dns_address,
    })
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| url_decode(v))
    })
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unauthorized() -> Response {
    Response {
        status: 401,
        headers: vec![
            ("content-type", "text/html; charset=utf-8".into()),
            ("www-authenticate", "Negotiate".into()),
        ],
        body:
            b"<html><head><title>401 Unauthorized</title></head><body>Unauthorized</body></html>\n"
                .to_vec(),
    }
}

/// Passwords never reach the calls log.
fn masked(params: &Value) -> Value {
    let mut copy = params.clone();
    if let Some(options) = copy.get_mut(1).and_then(Value::as_object_mut) {
        for key in ["userpassword", "password"] {
            if options.contains_key(key) {
                options.insert(key.into(), json!("********"));
            }
        }
    }
    copy
}

impl Inner {
    fn log(&self, line: Value) {
        let mut line = line;
        line["time"] = json!(firstboot::status::now());
        line["server"] = json!(self.options.fqdn);
        let text = format!("{line}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.options.calls_log)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("cannot append to {}: {e}", self.options.calls_log.display());
        }
    }

    fn persist(&self, state: &State) {
        if let Err(e) = save_state(&self.options.data, state) {
            tracing::error!("ipa-sim: {e:#}");
        }
    }

    async fn refresh_dns(&self) {
        let zones = lock(&self.zones).clone();
        if let Some(zones) = zones {
            let state = lock(&self.state).clone();
            zones.update(&state).await;
        }
    }

    async fn handle(self: Arc<Self>, request: Request) -> Response {
        if request.method.as_str() != "POST" {
            return Response::text(405, "POST only");
        }
        match request.path.as_str() {
            "/ipa/session/login_password" => self.login(&request),
            "/ipa/session/login_kerberos" => self.login_kerberos(&request),
            "/ipa/session/json" => self.json(&request).await,
            "/ipa-sim/enroll" => self.enroll(&request).await,
            "/ipa-sim/unenroll" => self.unenroll(&request),
            "/ipa-sim/replicate" => {
                let (response, changed) = self.replicate(&request);
                // A push can bring what this server's own pulls then find
                // nothing new in: its DNS must follow either way.
                if changed {
                    self.unready_cas();
                    self.refresh_dns().await;
                }
                response
            }
            other => Response::text(
                404,
                &format!("URL fragment \"{other}\" does not have a handler"),
            ),
        }
    }

    fn login(&self, request: &Request) -> Response {
        let body = String::from_utf8_lossy(&request.body);
        let user = form_value(&body, "user").unwrap_or_default();
        let password = form_value(&body, "password").unwrap_or_default();
        let expected = lock(&self.state)
            .get(Kind::User, &user)
            .and_then(|e| first(e, "_password_sha256"));
        let ok = expected.is_some_and(|hash| hash == sha256_hex(&password));
        self.log(json!({"method": "login_password", "params": {"user": user}, "error": if ok { Value::Null } else { json!(1201) }, "mutated": false}));
        if !ok {
            let mut response = Response::text(401, "Unauthorized");
            response
                .headers
                .push(("x-ipa-rejection-reason", "invalid-password".into()));
            return response;
        }
        self.open_session(Caller::Admin)
    }

    /// `/ipa/session/login_kerberos`, the stand-in for Kerberos: FreeIPA
    /// takes a GSSAPI `Negotiate` token there (mod_auth_gssapi) from a
    /// host holding its keytab; the simulator has no KDC, so the token is
    /// the host's name and the keytab secret it wrote at enrollment
    /// (`Negotiate base64({"host": fqdn, "keytab": secret})`), checked
    /// against the host entry as the KDC checks the key. A host without a
    /// keytab (never enrolled, or disabled) gets nothing.
    fn login_kerberos(&self, request: &Request) -> Response {
        let asked: Option<(String, String)> = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Negotiate "))
            .and_then(|token| {
                base64::engine::general_purpose::STANDARD
                    .decode(token.trim())
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| {
                Some((
                    v["host"]
                        .as_str()?
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                    v["keytab"].as_str()?.to_owned(),
                ))
            });
        let host = asked.as_ref().map(|(h, _)| h.clone()).unwrap_or_default();
        let ok = asked.as_ref().is_some_and(|(host, keytab)| {
            lock(&self.state)
                .get(Kind::Host, host)
                .and_then(|e| first(e, "_keytab"))
                .is_some_and(|hash| hash == sha256_hex(keytab))
        });
        self.log(json!({"method": "login_kerberos", "params": {"host": host}, "error": if ok { Value::Null } else { json!(1201) }, "mutated": false}));
        if !ok {
            let mut response = Response::text(401, "Unauthorized");
            response
                .headers
                .push(("www-authenticate", "Negotiate".into()));
            return response;
        }
        self.open_session(Caller::Host(host))
    }

    /// A session for `caller`, in its cookie.
    fn open_session(&self, caller: Caller) -> Response {
        let token = random_token();
        lock(&self.sessions).insert(token.clone(), (Instant::now(), caller));
        Response {
            status: 200,
            headers: vec![(
                "set-cookie",
                format!("ipa_session=MagBearerToken={token};path=/ipa;httponly;secure;"),
            )],
            body: Vec::new(),
        }
    }

    /// The lightweight CAs whose key is not here yet: those whose entry
    /// another server wrote, for [`Options::lwca_key_delay`] after this
    /// server first saw them (a restarted server waits again, which is
    /// stricter than Dogtag, whose database keeps a key it has).
    fn unready_cas(&self) -> std::collections::BTreeSet<String> {
        let cas: Vec<(String, String, bool)> = {
            let state = lock(&self.state);
            state
                .all(Kind::Ca)
                .into_iter()
                .filter(|(name, _)| *name != "ipa")
                .map(|(name, entry)| {
                    let id = first(entry, "ipacaid").unwrap_or_else(|| name.to_owned());
                    let here = state.writer(Kind::Ca, name) == Some(self.options.fqdn.as_str());
                    (name.to_owned(), id, here)
                })
                .collect()
        };
        let now = Instant::now();
        let mut keys = lock(&self.lwca_keys);
        cas.into_iter()
            .filter(|(_, id, here)| {
                let ready_at = *keys.entry(id.clone()).or_insert(if *here {
                    now
                } else {
                    now + self.options.lwca_key_delay
                });
                now < ready_at
            })
            .map(|(name, _, _)| name)
            .collect()
    }

    /// Take one fault from the control file, if any.
    fn next_fault(&self) -> Option<(Fault, Duration)> {
        let path = self.options.data.join("faults.json");
        let bytes = std::fs::read(&path).ok()?;
        let mut file: FaultFile = serde_json::from_slice(&bytes).ok()?;
        if file.count == 0 {
            return None;
        }
        file.count -= 1;
        let _ = firstboot::fsutil::write_atomic(&path, &serde_json::to_vec(&file).ok()?, 0o600);
        Some((file.fault, Duration::from_millis(file.delay_ms)))
    }

    fn session_caller(&self, request: &Request) -> Option<Caller> {
        let cookies = request
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())?;
        let token = cookies.split(';').find_map(|c| {
            c.trim()
                .strip_prefix("ipa_session=")
                .map(|v| v.strip_prefix("MagBearerToken=").unwrap_or(v).to_owned())
        });
        let token = token?;
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(&token) {
            Some((used, caller)) if used.elapsed() < SESSION_IDLE => {
                *used = Instant::now();
                Some(caller.clone())
            }
            _ => None,
        }
    }

    fn answer(
        &self,
        result: Value,
        error: Option<&IpaError>,
        id: Value,
        caller: &Caller,
    ) -> Response {
        let realm = lock(&self.state).realm.clone();
        let body = json!({
            "result": if error.is_some() { Value::Null } else { result },
            "error": error.map(IpaError::to_json),
            "id": id,
            "principal": caller.principal(&realm),
            "version": PRODUCT_VERSION,
        });
        Response::json(ca::encode_json(&body))
    }

    async fn json(&self, request: &Request) -> Response {
        let mut slow = None;
        if let Some((fault, delay)) = self.next_fault() {
            if fault == Fault::Slow {
                slow = Some(delay);
            } else {
                return self.faulty(request, fault);
            }
        }
        let answer = self.json_call(request).await;
        if let Some(delay) = slow {
            self.log(json!({"method": null, "params": null, "error": null, "mutated": false, "fault": Fault::Slow, "delay_ms": delay.as_millis() as u64}));
            tokio::time::sleep(delay).await;
        }
        answer
    }

    fn faulty(&self, request: &Request, fault: Fault) -> Response {
        let method = serde_json::from_slice::<Value>(&request.body)
            .ok()
            .and_then(|v| v.get("method").cloned())
            .unwrap_or(Value::Null);
        self.log(json!({"method": method, "params": null, "error": null, "mutated": false, "fault": fault}));
        match fault {
            // (A slow call is run and answered late, never here.)
            Fault::Garbage | Fault::Slow => Response::text(200, "<html>Service Unavailable</html>"),
            Fault::Http500 => Response::text(500, "Internal Server Error"),
            Fault::Unauthorized => unauthorized(),
            Fault::ExpireSession => {
                lock(&self.sessions).clear();
                unauthorized()
            }
        }
    }

    async fn json_call(&self, request: &Request) -> Response {
        // The Referer first, answered 400 whatever the session: freeipa
        // `ipaserver/rpcserver.py`, `jsonserver_session.__call__` calls
        // `check_referer` (scheme https, this server's name, a path under
        // /ipa) before it looks for credentials, and `bad_request`
        // answers "400 Bad Request" with an HTML page.
        let referer = request
            .headers
            .get("referer")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !referer
            .as_deref()
            .is_some_and(|r| referer_ok(r, &self.options.fqdn))
        {
            self.log(json!({"method": null, "params": null, "error": 400, "mutated": false}));
            return Response::text(
                400,
                "<html><head><title>400 Bad Request</title></head><body><h1>Bad Request</h1>\
                 <p><strong>denied</strong></p></body></html>",
            );
        }
        let Some(caller) = self.session_caller(request) else {
            self.log(json!({"method": null, "params": null, "error": 401, "mutated": false}));
            return unauthorized();
        };
        let (method, params, id) = match envelope(&request.body) {
            Ok(parts) => parts,
            Err(error) => {
                self.log(
                    json!({"method": null, "params": null, "error": error.code, "mutated": false}),
                );
                return self.answer(Value::Null, Some(&error), Value::Null, &caller);
            }
        };
        let (result, error, mutated) = self.execute(&method, &params, &caller).await;
        self.log(json!({
            "method": method,
            "params": masked(&params),
            "error": error.as_ref().map(|e| e.code),
            "mutated": mutated,
        }));
        self.answer(result, error.as_ref(), id, &caller)
    }

    /// Check, then run; the answer, its error, whether it changed state.
    async fn execute(
        &self,
        method: &str,
        params: &Value,
        caller: &Caller,
    ) -> (Value, Option<IpaError>, bool) {
        let checked = match self.api.validate(method, params) {
            Ok(checked) => checked,
            Err(e) => return (Value::Null, Some(e), false),
        };
        let version = checked.str("version").map(str::to_owned);
        let minor = version
            .as_deref()
            .and_then(|v| v.split_once('.'))
            .and_then(|(_, minor)| minor.parse::<u32>().ok())
            .unwrap_or(257);
        let looked = match &self.options.resolver {
            Resolver::OwnZones => None,
            Resolver::Nameservers(servers) => Some(look_up(servers, method, params).await),
        };
        let unready_cas = self.unready_cas();
        let ctx = Ctx {
            server: &self.options.fqdn,
            dns_name_objects: minor >= 88,
            resolution: looked
                .as_ref()
                .map_or(commands::Resolution::OwnZones, commands::Resolution::Looked),
            unready_cas: &unready_cas,
            caller,
        };
        let outcome = {
            let mut state = lock(&self.state);
            let before = state.clone();
            let outcome = commands::run(&mut state, &ctx, &checked);
            // A command may change entries and still fail, as FreeIPA's
            // `server_del` does for a host that is not a server: what it
            // changed stays.
            if matches!(&outcome, Ok(o) if o.mutated) || (outcome.is_err() && *state != before) {
                self.persist(&state);
            }
            outcome
        };
        match outcome {
            Ok(outcome) => {
                if outcome.mutated {
                    self.refresh_dns().await;
                }
                let mut result = outcome.result;
                if version.is_none() {
                    let mut messages = result["messages"].as_array().cloned().unwrap_or_default();
                    messages.push(json!({
                        "type": "warning",
                        "name": "VersionMissing",
                        "message": format!("API Version number was not sent, forward compatibility not guaranteed. Assuming server's API version, {}", crate::api::SERVER_API_VERSION),
                        "code": 13001,
                        "data": {"server_version": crate::api::SERVER_API_VERSION},
                    }));
                    result["messages"] = Value::Array(messages);
                }
                (result, None, outcome.mutated)
            }
            Err(e) => (Value::Null, Some(e), false),
        }
    }

    async fn enroll(&self, request: &Request) -> Response {
        #[derive(Deserialize)]
        struct Ask {
            fqdn: String,
            password: String,
            role: String,
            #[serde(default)]
            setup_ca: bool,
            #[serde(default)]
            address: Option<String>,
        }
        let Ok(ask) = serde_json::from_slice::<Ask>(&request.body) else {
            return Response::text(400, "the enrollment request is not {fqdn, password, role}");
        };
        let host = ask.fqdn.trim_end_matches('.').to_ascii_lowercase();
        let replica = ask.role == "replica";
        let outcome = {
            let mut state = lock(&self.state);
            let outcome = enroll_host(
                &mut state,
                &self.options.fqdn,
                &host,
                &ask.password,
                replica,
                ask.setup_ca,
                ask.address.as_deref(),
            );
            if outcome.is_ok() {
                self.persist(&state);
            }
            outcome.map(|keytab| (keytab, state.clone()))
        };
        self.log(json!({"method": "enroll", "params": {"fqdn": host, "role": ask.role}, "error": outcome.as_ref().err().map(|_| 1201), "mutated": outcome.is_ok()}));
        match outcome {
            Err(why) => Response::text(401, &why),
            Ok((keytab, state)) => {
                self.refresh_dns().await;
                let ca_pem = state
                    .get(Kind::Ca, "ipa")
                    .and_then(|e| e.get("_cert_pem"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let payload = json!({
                    "ca_cert": ca_pem,
                    "keytab": keytab,
                    "realm": state.realm,
                    "domain": state.domain,
                    "server": self.options.fqdn,
                    "state": if replica { serde_json::to_value(&state).unwrap_or(Value::Null) } else { Value::Null },
                })
                .to_string();
                let proof = prove(&ask.password, &payload);
                Response::json(
                    json!({"payload": payload, "proof": proof})
                        .to_string()
                        .into_bytes(),
                )
            }
        }
    }

    /// `ipa-join --unenroll` (freeipa `client/ipa-join.c`): the host,
    /// proving its key, has its keys removed; its one-time password,
    /// spent, does not come back.
    fn unenroll(&self, request: &Request) -> Response {
        let ask: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let host = ask["fqdn"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let keytab = ask["keytab"].as_str().unwrap_or_default();
        let done = {
            let mut state = lock(&self.state);
            match state.get(Kind::Host, &host).cloned() {
                Some(mut entry)
                    if first(&entry, "_keytab").is_some_and(|h| h == sha256_hex(keytab)) =>
                {
                    entry.remove("_keytab");
                    state.put(&self.options.fqdn, Kind::Host, &host, Some(entry));
                    self.persist(&state);
                    true
                }
                _ => false,
            }
        };
        self.log(json!({"method": "unenroll", "params": {"fqdn": host}, "error": if done { Value::Null } else { json!(1201) }, "mutated": done}));
        if done {
            Response::text(200, "unenrolled")
        } else {
            Response::text(
                401,
                "only an enrolled host unenrolls itself, with its own key",
            )
        }
    }

    /// The answer, and whether the asker's state changed ours.
    fn replicate(&self, request: &Request) -> (Response, bool) {
        let ask: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let host = ask["fqdn"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let keytab = ask["keytab"].as_str().unwrap_or_default();
        let state = lock(&self.state).clone();
        let known = state
            .get(Kind::Host, &host)
            .and_then(|e| first(e, "_keytab"))
            .is_some_and(|hash| hash == sha256_hex(keytab));
        let server = state
            .get(Kind::HostGroup, commands::IPASERVERS)
            .is_some_and(|g| values(g, "member_host").contains(&host));
        if !(known && server) {
            return (
                Response::text(403, "only enrolled IPA servers replicate"),
                false,
            );
        }
        let mut changed = false;
        if let Some(theirs) = ask
            .get("state")
            .and_then(|s| serde_json::from_value::<State>(s.clone()).ok())
        {
            let mut ours = lock(&self.state);
            if ours.merge(&theirs) {
                self.persist(&ours);
                changed = true;
            }
        }
        let ours = lock(&self.state).clone();
        (
            Response::json(serde_json::to_vec(&ours).unwrap_or_default()),
            changed,
        )
    }
}

/// `check_referer` (freeipa `ipaserver/rpcserver.py`): one URL, https,
/// naming this server, with the path /ipa or under /ipa/.
fn referer_ok(referer: &str, fqdn: &str) -> bool {
    if referer.matches("://").count() != 1 {
        return false;
    }
    let Some(rest) = referer.strip_prefix("https://") else {
        return false;
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .split(':')
        .next()
        .unwrap_or_default();
    host.eq_ignore_ascii_case(fqdn) && (path == "/ipa" || path.starts_with("/ipa/"))
}

/// HMAC-SHA256 of `payload` under the one-time password: the answer comes
/// from a server that knows the password (what Kerberos gives a real
/// enrollment), so the host can trust the CA certificate inside.
pub fn prove(password: &str, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(password.as_bytes()).expect("HMAC takes any key");
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The host enrolls with its one-time password, which then stops working.
/// A replica must also be in `ipaservers`. Returns the host's new key.
pub fn enroll_host(
    state: &mut State,
    writer: &str,
    host: &str,
    password: &str,
    replica: bool,
    setup_ca: bool,
    address: Option<&str>,
) -> Result<String, String> {
    let mut entry = state
        .get(Kind::Host, host)
        .cloned()
        .ok_or_else(|| format!("{host} is not an IPA host (host_add it first)"))?;
    let expected = entry.get("_password").and_then(Value::as_str);
    if expected != Some(password) {
        return Err(format!(
            "the one-time password of {host} is wrong or already used (host_mod --password sets a new one)"
        ));
    }
    if replica {
        let member = state
            .get(Kind::HostGroup, commands::IPASERVERS)
            .is_some_and(|g| values(g, "member_host").iter().any(|h| h == host));
        if !member {
            return Err(format!(
                "{host} is not in the ipaservers host group, so it cannot be promoted to a replica"
            ));
        }
    }
    let keytab = random_token();
    entry.remove("_password");
    entry.insert("_keytab".into(), json!(sha256_hex(&keytab)));
    let principal = format!("host/{host}@{}", state.realm);
    state::set(&mut entry, "krbprincipalname", vec![principal.clone()]);
    state::set(&mut entry, "krbcanonicalname", vec![principal]);
    state.put(writer, Kind::Host, host, Some(entry));
    if replica {
        // The `ca` suffix only once the replica's CA clone is done
        // (`commands::add_ca_clone`, which the replica does).
        let _ = setup_ca;
        commands::add_server(
            state,
            writer,
            host,
            address.unwrap_or_default(),
            false,
            Some(writer),
        );
    }
    Ok(keytab)
}

/// `{"method", "params", "id"}` as `jsonserver.unmarshal` takes it.
fn envelope(body: &[u8]) -> Result<(String, Value, Value), IpaError> {
    let json_error = |why: String| {
        IpaError::new(
            909,
            "JSONError",
            format!("Invalid JSON-RPC request: {why}"),
            json!({ "error": why }),
        )
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| json_error(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(json_error("Request must be a dict".into()));
    };
    let method = map
        .get("method")
        .ok_or_else(|| json_error("Request is missing \"method\"".into()))?;
    let params = map
        .get("params")
        .ok_or_else(|| json_error("Request is missing \"params\"".into()))?
        .clone();
    let method = match method {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok((
        method,
        params,
        map.get("id").cloned().unwrap_or(Value::Null),
    ))
}

/// Pull every other server's state (and push ours) forever.
async fn replicate_forever(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(REPLICATION_INTERVAL).await;
        let (peers, ca_pem, ours) = {
            let state = lock(&inner.state);
            let mut peers: BTreeMap<String, Option<SocketAddr>> = BTreeMap::new();
            for (name, entry) in state.all(Kind::Server) {
                if name == inner.options.fqdn {
                    continue;
                }
                let address = first(entry, "_address").and_then(|a| a.parse().ok());
                peers.insert(name.to_owned(), address);
            }
            let ca_pem = state
                .get(Kind::Ca, "ipa")
                .and_then(|e| e.get("_cert_pem"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (peers, ca_pem, state.clone())
        };
        let Ok(tls) = transport::verifying_config(&ca_pem) else {
            continue;
        };
        let mut changed = false;
        for (peer, address) in peers {
            let address = inner.options.peers.get(&peer).copied().or(address);
            let endpoint = Endpoint {
                fqdn: peer.clone(),
                address,
            };
            let body = json!({"fqdn": inner.options.fqdn, "keytab": inner.keytab, "state": ours})
                .to_string();
            let answer = transport::post(
                &endpoint,
                tls.clone(),
                "/ipa-sim/replicate",
                &[("content-type", "application/json".into())],
                body.into_bytes(),
                Duration::from_secs(2),
            )
            .await;
            match answer {
                Ok(answer) if answer.status == 200 => {
                    if let Ok(theirs) = serde_json::from_slice::<State>(&answer.body) {
                        let mut state = lock(&inner.state);
                        if state.merge(&theirs) {
                            inner.persist(&state);
                            changed = true;
                        }
                    }
                }
                Ok(answer) => tracing::debug!("replication from {peer}: HTTP {}", answer.status),
                Err(e) => tracing::debug!("replication from {peer}: {e:#}"),
            }
        }
        if changed {
            // The clock of a sub-CA's key starts when its entry arrives.
            inner.unready_cas();
            inner.refresh_dns().await;
        }
    }
}
