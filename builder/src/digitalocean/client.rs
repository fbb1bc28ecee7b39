//! One client for the DigitalOcean API: bounded retries with backoff on
//! 5xx, timeouts and 429 (honouring `ratelimit-reset` and `retry-after`),
//! pagination through `links.pages.next` with a loop guard, action polling
//! with a deadline, and errors that name the call and say what to do.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One request's whole exchange; a silent server is given up on.
    pub request_timeout: Duration,
    /// The longest wait a rate limit may impose before we give up instead.
    pub max_rate_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
            max_rate_wait: Duration::from_secs(120),
        }
    }
}

/// Pages followed at most by one listing: 200 items a page, so far more
/// than any site has, and a server that keeps answering "next" is stopped.
const MAX_PAGES: usize = 100;

#[derive(Debug)]
pub enum ApiError {
    /// The API answered with an error.
    Refused {
        method: Method,
        path: String,
        status: StatusCode,
        id: String,
        message: String,
    },
    /// No usable answer after every attempt (connection, timeout, 5xx, 429).
    GaveUp {
        method: Method,
        path: String,
        attempts: u32,
        last: String,
    },
    /// An answer that is not what the API specification promises.
    Malformed {
        method: Method,
        path: String,
        detail: String,
    },
}

impl ApiError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            ApiError::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                "check the token: `builder init` stores it in the vault, or set DIGITALOCEAN_ACCESS_TOKEN"
            }
            ApiError::Refused { status, .. } if *status == StatusCode::FORBIDDEN => {
                "the token lacks write access, or the account is locked"
            }
            ApiError::Refused { status, .. } if *status == StatusCode::NOT_FOUND => {
                "it may have been deleted by hand; run the command again"
            }
            ApiError::Refused { status, .. } if *status == StatusCode::UNPROCESSABLE_ENTITY => {
                "the request was refused as invalid; check the site file's slugs and names"
            }
            ApiError::Refused { .. } => "see the message above",
            ApiError::GaveUp { .. } => "DigitalOcean is unreachable or overloaded; run the command again, it resumes",
            ApiError::Malformed { .. } => "the API answered unexpectedly; run the command again",
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Refused {
                method,
                path,
                status,
                id,
                message,
            } => write!(
                f,
                "DigitalOcean refused {method} {path}: {status} {id}: {message}"
            )?,
            ApiError::GaveUp {
                method,
                path,
                attempts,
                last,
            } => write!(
                f,
                "{method} {path} failed {attempts} times; the last: {last}"
            )?,
            ApiError::Malformed {
                method,
                path,
                detail,
            } => write!(f, "{method} {path}: malformed answer: {detail}")?,
        }
        write!(f, " ({})", self.hint())
    }
}

impl std::error::Error for ApiError {}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    policy: RetryPolicy,
    /// Requests sent, and of them POST/PUT/DELETE (retries included).
    sent: AtomicUsize,
    mutating: AtomicUsize,
}

/// How many requests a client has sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub requests: usize,
    pub mutating: usize,
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    Retry { why: String, wait: Option<Duration> },
    Fail(ApiError),
}

impl Client {
    pub fn new(base: &str, token: &str, policy: RetryPolicy) -> Result<Client, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("site-builder/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            policy,
            sent: AtomicUsize::new(0),
            mutating: AtomicUsize::new(0),
        })
    }

    /// The API's base URL, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn sent(&self) -> Sent {
        Sent {
            requests: self.sent.load(Ordering::Relaxed),
            mutating: self.mutating.load(Ordering::Relaxed),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.call(Method::DELETE, path, None).await.map(|_| ())
    }

    /// Every item of a paginated listing (`key` is the array's name, such
    /// as `droplets`), following `links.pages.next`.
    pub async fn list(&self, path: &str, key: &str) -> Result<Vec<Value>, ApiError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{separator}per_page=200"));
        let mut seen = HashSet::new();
        let mut items = Vec::new();
        while let Some(page) = next.take() {
            if !seen.insert(page.clone()) || seen.len() > MAX_PAGES {
                return Err(ApiError::Malformed {
                    method: Method::GET,
                    path: path.to_owned(),
                    detail: format!("pagination loops or exceeds {MAX_PAGES} pages (at {page})"),
                });
            }
            let answer = self.get(&page).await?;
            let Some(batch) = answer.get(key).and_then(Value::as_array) else {
                return Err(ApiError::Malformed {
                    method: Method::GET,
                    path: page,
                    detail: format!("no `{key}` list"),
                });
            };
            items.extend(batch.iter().cloned());
            next = answer["links"]["pages"]["next"]
                .as_str()
                .map(|url| self.relative(url));
        }
        Ok(items)
    }

    /// Poll an action until it completes; an error if it errors or the
    /// deadline passes.
    pub async fn wait_action(
        &self,
        id: u64,
        deadline: Duration,
        poll: Duration,
    ) -> Result<Value, ApiError> {
        let path = format!("/v2/actions/{id}");
        let start = tokio::time::Instant::now();
        loop {
            let answer = self.get(&path).await?;
            match answer["action"]["status"].as_str() {
                Some("completed") => return Ok(answer["action"].clone()),
                Some("errored") => {
                    return Err(ApiError::Refused {
                        method: Method::GET,
                        path,
                        status: StatusCode::OK,
                        id: "action_errored".into(),
                        message: format!(
                            "action {id} ({}) errored",
                            answer["action"]["type"].as_str().unwrap_or("?")
                        ),
                    })
                }
                Some("in-progress") if start.elapsed() < deadline => tokio::time::sleep(poll).await,
                Some("in-progress") => {
                    return Err(ApiError::GaveUp {
                        method: Method::GET,
                        path,
                        attempts: 1,
                        last: format!(
                            "action {id} still in progress after {}s",
                            deadline.as_secs()
                        ),
                    })
                }
                other => {
                    return Err(ApiError::Malformed {
                        method: Method::GET,
                        path,
                        detail: format!("action status {other:?}"),
                    })
                }
            }
        }
    }

    /// `next` links are absolute; calls are made against our base URL
    /// (which tests point elsewhere), so only the path and query are kept.
    fn relative(&self, url: &str) -> String {
        match url.find("/v2/") {
            Some(i) => url[i..].to_owned(),
            None => url.to_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut backoff = self.policy.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.policy.attempts {
            match self.attempt(&method, path, body).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry { why, wait } => {
                    last = why;
                    if attempt == self.policy.attempts {
                        break;
                    }
                    let pause = match wait {
                        Some(w) if w > self.policy.max_rate_wait => break,
                        Some(w) => w,
                        None => backoff,
                    };
                    eprintln!(
                        "  {method} {path}: {last}; retrying in {:.1}s",
                        pause.as_secs_f32()
                    );
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
            }
        }
        Err(ApiError::GaveUp {
            method,
            path: path.to_owned(),
            attempts: self.policy.attempts,
            last,
        })
    }

    async fn attempt(&self, method: &Method, path: &str, body: Option<&Value>) -> Attempt {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if *method != Method::GET {
            self.mutating.fetch_add(1, Ordering::Relaxed);
        }
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            // A POST that may have reached the server is not sent again:
            // the caller finds what it created by name on the next run.
            Err(e) if *method == Method::POST && !e.is_connect() => {
                return Attempt::Fail(ApiError::GaveUp {
                    method: method.clone(),
                    path: path.to_owned(),
                    attempts: 1,
                    last: e.to_string(),
                })
            }
            Err(e) => {
                return Attempt::Retry {
                    why: describe(&e),
                    wait: None,
                }
            }
        };
        let status = response.status();
        let wait = rate_wait(response.headers());
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    why: describe(&e),
                    wait: None,
                }
            }
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry {
                why: "rate limited (429)".into(),
                wait: Some(wait.unwrap_or(self.policy.first_backoff)),
            };
        }
        let retriable_5xx = status.is_server_error()
            && (*method != Method::POST || status == StatusCode::SERVICE_UNAVAILABLE);
        if retriable_5xx {
            return Attempt::Retry {
                why: format!("server error {status}"),
                wait: None,
            };
        }
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    return Attempt::Fail(ApiError::Malformed {
                        method: method.clone(),
                        path: path.to_owned(),
                        detail: format!("not JSON ({e})"),
                    })
                }
            }
        };
        if status.is_success() {
            return Attempt::Done(value);
        }
        Attempt::Fail(ApiError::Refused {
            method: method.clone(),
            path: path.to_owned(),
            status,
            id: value["id"].as_str().unwrap_or("").to_owned(),
            message: value["message"].as_str().unwrap_or(text.trim()).to_owned(),
        })
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect ({e})")
    } else {
        e.to_string()
    }
}

/// How long a 429 asks us to wait: `retry-after` (seconds) or
/// `ratelimit-reset` (Unix time when the window resets).
fn rate_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    let reset = number("ratelimit-reset")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}
