//! The one FreeIPA client: password login, the `ipa_session` cookie, the
//! `Referer` FreeIPA insists on, bounded retries under an overall deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::calls::Call;
use super::error::Error;
use super::transport::{self, Endpoint};

/// How a client talks to one server.
#[derive(Clone)]
pub struct Config {
    pub server: Endpoint,
    /// The IPA CA certificate(s), PEM: the only trust for the server.
    pub ca_pem: String,
    pub user: String,
    pub password: String,
    /// The most one call (retries and a fresh login included) may take.
    pub deadline: Duration,
    /// The most one HTTP exchange may take.
    pub attempt_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("password", &"[private]")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Config {
    /// `admin` with its password, a minute per call, 15 s per exchange.
    pub fn admin(server: Endpoint, ca_pem: &str, password: &str) -> Config {
        Config {
            server,
            ca_pem: ca_pem.to_owned(),
            user: "admin".into(),
            password: password.to_owned(),
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

/// First wait between attempts; doubles up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Client {
    config: Config,
    tls: Arc<ClientConfig>,
    session: Mutex<Option<String>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish()
    }
}

/// Why one attempt failed, and whether to try again.
enum Attempt {
    /// Try again after a pause.
    Transient(String),
    /// A command that changes things got no answer in time: not sent
    /// again (see [`Error::Unsettled`]).
    Unsettled(String),
    /// The session is gone: log in again (once per call).
    Unauthorized,
    Fatal(Error),
}

impl Client {
    pub fn new(config: Config) -> Result<Client, Error> {
        let tls = transport::verifying_config(&config.ca_pem)
            .map_err(|e| Error::Invalid(format!("cannot trust the IPA CA: {e:#}")))?;
        Ok(Client {
            config,
            tls,
            session: Mutex::new(None),
            next_id: AtomicU64::new(0),
        })
    }

    pub fn server(&self) -> &str {
        &self.config.server.fqdn
    }

    fn referer(&self) -> String {
        format!("https://{}/ipa", self.config.server.fqdn)
    }

    /// Log in with the password; the session cookie is kept for the calls.
    pub async fn login(&self) -> Result<(), Error> {
        let started = Instant::now();
        let mut attempts = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            attempts += 1;
            match self.login_once().await {
                Ok(cookie) => {
                    *self.session.lock().await = Some(cookie);
                    return Ok(());
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Unauthorized) => {
                    return Err(Error::Auth {
                        server: self.server().to_owned(),
                        why: "the server answered 401".into(),
                    })
                }
                Err(Attempt::Transient(why) | Attempt::Unsettled(why)) => {
                    if started.elapsed() + backoff >= self.config.deadline {
                        return Err(Error::Unavailable {
                            server: self.server().to_owned(),
                            method: "login".into(),
                            attempts,
                            last: why,
                        });
                    }
                    tracing::warn!(server = %self.server(), attempt = attempts, "freeipa: login failed: {why}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn login_once(&self) -> Result<String, Attempt> {
        let body = format!(
            "user={}&password={}",
            form_encode(&self.config.user),
            form_encode(&self.config.password)
        );
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("accept", "text/plain".to_owned()),
            ("referer", self.referer()),
        ];
        let answer = transport::post(
            &self.config.server,
            self.tls.clone(),
            "/ipa/session/login_password",
            &headers,
            body.into_bytes(),
            self.config.attempt_timeout,
        )
        .await
        .map_err(|e| Attempt::Transient(format!("{e:#}")))?;
        match answer.status {
            200 => session_cookie(&answer.headers).ok_or_else(|| {
                Attempt::Transient("the login answer set no ipa_session cookie".into())
            }),
            401 => {
                let reason = answer
                    .headers
                    .get("x-ipa-rejection-reason")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("invalid password")
                    .to_owned();
                Err(Attempt::Fatal(Error::Auth {
                    server: self.server().to_owned(),
                    why: reason,
                }))
            }
            status if status >= 500 => Err(Attempt::Transient(format!("HTTP {status}"))),
            status => Err(Attempt::Fatal(Error::Auth {
                server: self.server().to_owned(),
                why: format!("the login answered HTTP {status}"),
            })),
        }
    }

    /// Run one command: its `result` on success, the server's error typed.
    /// Transient failures are retried until the deadline; a 401 means one
    /// fresh login.
    pub async fn call(&self, call: &Call) -> Result<Value, Error> {
        let started = Instant::now();
        // A command that waits on the server's side gets the exchange it
        // needs, and the call room for one more after it.
        let exchange = call.timeout.unwrap_or(self.config.attempt_timeout);
        let deadline = self
            .config
            .deadline
            .max(exchange + self.config.attempt_timeout);
        let mut attempts = 0;
        let mut relogged = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            attempts += 1;
            if self.session.lock().await.is_none() {
                self.login().await?;
            }
            let outcome = self.call_once(call, exchange).await;
            match outcome {
                Ok(result) => return Ok(result),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Unsettled(why)) => {
                    return Err(Error::Unsettled {
                        server: self.server().to_owned(),
                        method: call.method.to_owned(),
                        why,
                    })
                }
                Err(Attempt::Unauthorized) => {
                    *self.session.lock().await = None;
                    if relogged {
                        return Err(Error::Auth {
                            server: self.server().to_owned(),
                            why: format!("{} answered 401 again after a fresh login", call.method),
                        });
                    }
                    relogged = true;
                    tracing::info!(server = %self.server(), method = call.method, "freeipa: session ended; logging in again");
                }
                Err(Attempt::Transient(why)) => {
                    if started.elapsed() + backoff >= deadline {
                        return Err(Error::Unavailable {
                            server: self.server().to_owned(),
                            method: call.method.to_owned(),
                            attempts,
                            last: why,
                        });
                    }
                    tracing::warn!(server = %self.server(), method = call.method, attempt = attempts, "freeipa: {why}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn call_once(&self, call: &Call, exchange: Duration) -> Result<Value, Attempt> {
        let cookie = self.session.lock().await.clone().unwrap_or_default();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("accept", "application/json".to_owned()),
            ("referer", self.referer()),
            ("cookie", format!("ipa_session={cookie}")),
        ];
        let answer = transport::post(
            &self.config.server,
            self.tls.clone(),
            "/ipa/session/json",
            &headers,
            call.body(id),
            exchange,
        )
        .await
        .map_err(|e| match e.downcast_ref::<transport::NoAnswer>() {
            // Sent, perhaps acted on: a command that changes things is
            // not sent again before a look at whether it took effect.
            Some(_) if call.mutating => Attempt::Unsettled(format!("{e:#}")),
            _ => Attempt::Transient(format!("{e:#}")),
        })?;
        match answer.status {
            200 => {}
            401 => return Err(Attempt::Unauthorized),
            status if status >= 500 || status == 429 => {
                return Err(Attempt::Transient(format!("HTTP {status}")))
            }
            status => {
                return Err(Attempt::Fatal(Error::Malformed {
                    method: call.method.to_owned(),
                    why: format!("HTTP {status}"),
                }))
            }
        }
        parse_answer(call.method, &answer.body)
    }
}

/// A JSON-RPC answer: `result` or the typed `error`. Anything else is
/// garbage, which a proxy or a restarting server can produce: transient.
fn parse_answer(method: &str, body: &[u8]) -> Result<Value, Attempt> {
    let garbage = |why: &str| Attempt::Transient(format!("the answer to {method} {why}"));
    let value: Value = serde_json::from_slice(body).map_err(|_| garbage("is not JSON"))?;
    let Value::Object(mut map) = value else {
        return Err(garbage("is not a JSON object"));
    };
    match map.remove("error") {
        Some(Value::Null) | None => {}
        Some(Value::Object(error)) => {
            let code = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| garbage("has an error without a code"))?;
            let text = |key: &str| {
                error
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            return Err(Attempt::Fatal(Error::Ipa {
                method: method.to_owned(),
                code,
                name: text("name"),
                message: text("message"),
            }));
        }
        Some(_) => return Err(garbage("has an error that is not an object")),
    }
    match map.remove("result") {
        Some(Value::Null) | None => Err(garbage("has neither result nor error")),
        Some(result) => Ok(result),
    }
}

/// The `ipa_session` value from `Set-Cookie`.
fn session_cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|cookie| cookie.split(';').next())
        .filter_map(|pair| pair.trim().strip_prefix("ipa_session="))
        .map(str::to_owned)
        .find(|value| !value.is_empty())
}

/// `application/x-www-form-urlencoded`.
fn form_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
pub(super) fn parse_for_tests(method: &str, body: &[u8]) -> Result<Value, String> {
    parse_answer(method, body).map_err(|e| match e {
        Attempt::Transient(why) => format!("transient: {why}"),
        Attempt::Unsettled(why) => format!("unsettled: {why}"),
        Attempt::Unauthorized => "unauthorized".into(),
        Attempt::Fatal(e) => format!("fatal: {e}"),
    })
}
