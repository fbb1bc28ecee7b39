//! One client for the DigitalOcean API: bounded retries within a deadline
//! (`net::retry`), honouring `ratelimit-reset` and `retry-after`; at most
//! 250 requests in any minute, DigitalOcean's limit, however many calls
//! run at once; pagination through `links.pages.next` with a loop guard;
//! action polling with a deadline; and errors that say what failed, once.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::net::{self, Failure, GaveUp, Resend, RetryError, RetryPolicy, Step};

/// Pages followed at most by one listing: 200 items a page, so far more
/// than any site has, and a server that keeps answering "next" is stopped.
const MAX_PAGES: usize = 100;

/// DigitalOcean allows 250 requests a minute (and 5,000 an hour, which a
/// 429 with `ratelimit-reset` tells).
pub const REQUESTS_PER_MINUTE: usize = 250;

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
    /// No usable answer after every attempt (connection, timeout, 5xx,
    /// 429), or a create whose answer was lost.
    GaveUp {
        method: Method,
        path: String,
        gave_up: GaveUp,
    },
    /// The API cannot be reached at all in this run (its name does not
    /// resolve, TLS fails): not retried.
    Unreachable {
        method: Method,
        url: String,
        failure: Failure,
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
            ApiError::Refused { status, .. } => match *status {
                StatusCode::UNAUTHORIZED => {
                    "check the token: set DIGITALOCEAN_ACCESS_TOKEN, or store one in the vault \
                     with `builder init`"
                }
                StatusCode::FORBIDDEN => "the token lacks write access, or the account is locked",
                StatusCode::NOT_FOUND => "it may have been deleted meanwhile",
                StatusCode::UNPROCESSABLE_ENTITY => {
                    "the request was refused as invalid; check the site file's slugs and names"
                }
                _ => "see DigitalOcean's message",
            },
            ApiError::GaveUp { .. } => {
                "DigitalOcean is unreachable or overloaded; check this machine's network and \
                 DigitalOcean's status page"
            }
            ApiError::Unreachable { failure, .. } => failure
                .hint()
                .unwrap_or("check the API URL and this machine's network"),
            ApiError::Malformed { .. } => "the API answered off its specification",
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
            } => {
                write!(
                    f,
                    "DigitalOcean refused {method} {path}: {}",
                    status.as_str()
                )?;
                let reason = status.canonical_reason().unwrap_or("");
                write!(f, " {reason}")?;
                // The id often repeats the reason (`unauthorized`,
                // `unprocessable_entity`); say it only when it adds.
                let same = id.replace('_', " ").eq_ignore_ascii_case(reason);
                if !id.is_empty() && !same {
                    write!(f, " ({id})")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
            }
            ApiError::GaveUp {
                method,
                path,
                gave_up,
            } => write!(f, "{method} {path}: {gave_up}")?,
            ApiError::Unreachable {
                method,
                url,
                failure,
            } => write!(f, "{method} {url}: {failure}")?,
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
    /// Scheme, host, port and any path prefix, without a trailing slash.
    base: String,
    token: String,
    policy: RetryPolicy,
    window: RateWindow,
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

impl Client {
    /// A client for the API at `base` (an http(s) URL).
    pub fn new(base: &str, token: &str, policy: RetryPolicy) -> anyhow::Result<Client> {
        let url = Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the API URL `{base}` is not an http(s) URL (check --api-url and \
                     {})",
                    super::API_URL_ENV
                )
            })?;
        let http = net::client(policy.request_timeout)?;
        Ok(Client {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            policy,
            window: RateWindow::new(REQUESTS_PER_MINUTE, Duration::from_secs(60)),
            sent: AtomicUsize::new(0),
            mutating: AtomicUsize::new(0),
        })
    }

    /// At most `requests` requests in any `per` (tests make it small).
    pub fn with_rate_limit(mut self, requests: usize, per: Duration) -> Client {
        self.window = RateWindow::new(requests, per);
        self
    }

    /// The API's base URL.
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
        self.call(Method::GET, path, None, Resend::Always).await
    }

    /// A create: sent again only if it provably did nothing (see
    /// `Resend::OnlyIfUnprocessed`); the caller looks for what it made.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(body), Resend::OnlyIfUnprocessed)
            .await
    }

    /// A whole replacement (a firewall's rules): safe to send again.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, Some(body), Resend::Always)
            .await
    }

    /// A POST that does the same however often it is sent (tagging a
    /// resource): safe to send again.
    pub async fn post_idempotent(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(body), Resend::Always)
            .await
    }

    /// A DELETE that names what it removes in its body (untagging).
    pub async fn delete_with_body(&self, path: &str, body: &Value) -> Result<(), ApiError> {
        self.call(Method::DELETE, path, Some(body), Resend::Always)
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.call(Method::DELETE, path, None, Resend::Always)
            .await
            .map(|_| ())
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
            next = match answer["links"]["pages"]["next"].as_str() {
                Some(link) => Some(relative(link).ok_or_else(|| ApiError::Malformed {
                    method: Method::GET,
                    path: page.clone(),
                    detail: format!("the next page's link `{link}` is not a URL"),
                })?),
                None => None,
            };
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
                        gave_up: GaveUp {
                            attempts: 1,
                            elapsed: start.elapsed(),
                            last: format!("action {id} still in progress"),
                        },
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

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        resend: Resend,
    ) -> Result<Value, ApiError> {
        let what = format!("{method} {path}");
        let result = net::retry(&self.policy, &what, || {
            self.attempt(&method, path, body, resend)
        })
        .await;
        result.map_err(|e| match e {
            RetryError::Failed(error) => error,
            RetryError::GaveUp(gave_up) => ApiError::GaveUp {
                method: method.clone(),
                path: path.to_owned(),
                gave_up,
            },
        })
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        resend: Resend,
    ) -> Step<Value, ApiError> {
        self.window.admit().await;
        self.sent.fetch_add(1, Ordering::Relaxed);
        if *method != Method::GET {
            self.mutating.fetch_add(1, Ordering::Relaxed);
        }
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let lost = |failure: Failure| {
            if resend.after_failure(&failure) {
                return Step::Retry {
                    why: failure.to_string(),
                    wait: None,
                };
            }
            if failure.is_permanent() {
                return Step::Fail(ApiError::Unreachable {
                    method: method.clone(),
                    url: url.clone(),
                    failure,
                });
            }
            // A create that may have reached the server is not sent
            // again: the caller finds what it created by name.
            Step::Fail(ApiError::GaveUp {
                method: method.clone(),
                path: path.to_owned(),
                gave_up: GaveUp {
                    attempts: 1,
                    elapsed: Duration::ZERO,
                    last: format!("{failure}; it may or may not have been done"),
                },
            })
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return lost(Failure::of(&e, self.policy.request_timeout)),
        };
        let status = response.status();
        let wait = rate_wait(response.headers());
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return lost(Failure::of(&e, self.policy.request_timeout)),
        };
        let value: Option<Value> = if text.trim().is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_str(&text).ok()
        };
        if resend.after_status(status) {
            let why = match value.as_ref().and_then(|v| v["message"].as_str()) {
                Some(message) => format!("{} ({message})", status_words(status)),
                None => status_words(status),
            };
            let wait = (status == StatusCode::TOO_MANY_REQUESTS)
                .then(|| wait.unwrap_or(self.policy.first_backoff));
            return Step::Retry { why, wait };
        }
        let Some(value) = value else {
            return Step::Fail(ApiError::Malformed {
                method: method.clone(),
                path: path.to_owned(),
                detail: format!("{} with a body that is not JSON", status_words(status)),
            });
        };
        if status.is_success() {
            return Step::Done(value);
        }
        Step::Fail(ApiError::Refused {
            method: method.clone(),
            path: path.to_owned(),
            status,
            id: value["id"].as_str().unwrap_or("").to_owned(),
            message: value["message"].as_str().unwrap_or(text.trim()).to_owned(),
        })
    }
}

/// `503 Service Unavailable`.
fn status_words(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// `next` links are absolute; calls are made against our base URL (which
/// tests point elsewhere), so only the path and query are kept.
fn relative(link: &str) -> Option<String> {
    let url = Url::parse(link).ok()?;
    Some(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    })
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

/// At most `limit` requests start in any window of `per`, however many
/// calls run at once.
struct RateWindow {
    limit: usize,
    per: Duration,
    started: Mutex<VecDeque<Instant>>,
}

impl RateWindow {
    fn new(limit: usize, per: Duration) -> RateWindow {
        RateWindow {
            limit: limit.max(1),
            per,
            started: Mutex::new(VecDeque::new()),
        }
    }

    /// Wait until one more request fits in the window, and count it.
    async fn admit(&self) {
        loop {
            let wait = {
                let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                while started
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.per)
                {
                    started.pop_front();
                }
                if started.len() < self.limit {
                    started.push_back(now);
                    return;
                }
                self.per - now.duration_since(started[0])
            };
            tracing::debug!(
                "{} requests in the last {}; waiting {}",
                self.limit,
                crate::log::elapsed(self.per),
                crate::log::elapsed(wait)
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_keep_path_and_query() {
        assert_eq!(
            relative("https://api.digitalocean.com/v2/tags?page=2&per_page=200").as_deref(),
            Some("/v2/tags?page=2&per_page=200")
        );
        assert_eq!(relative("not a url"), None);
    }

    #[test]
    fn refusals_say_the_status_once() {
        let refused = |status: u16, id: &str| ApiError::Refused {
            method: Method::GET,
            path: "/v2/account".into(),
            status: StatusCode::from_u16(status).unwrap(),
            id: id.into(),
            message: "Unable to authenticate you".into(),
        };
        let text = refused(401, "Unauthorized").to_string();
        assert!(
            text.starts_with(
                "DigitalOcean refused GET /v2/account: 401 Unauthorized: Unable to authenticate you"
            ),
            "{text}"
        );
        assert_eq!(text.matches("nauthorized").count(), 1, "{text}");
        let text = refused(422, "unprocessable_entity").to_string();
        assert!(!text.contains("unprocessable_entity"), "{text}");
        let text = refused(403, "account_locked").to_string();
        assert!(text.contains("403 Forbidden (account_locked):"), "{text}");
    }
}
