//! The one client of Fedora CoreOS's stream metadata
//! (`<base><stream>.json`, by default under
//! `https://builds.coreos.fedoraproject.org/streams/`): a GET with bounded
//! retries within a deadline (`net::retry`), a bounded body, and the
//! document read strictly (`stream::parse`). Tests swap the base for a
//! loopback server with `BUILDER_FCOS_STREAMS_URL`.

use std::fmt;

use reqwest::{StatusCode, Url};

use super::stream::{self, Current, Refused};
use crate::net::{self, Failure, GaveUp, Resend, RetryError, RetryPolicy, Step};

/// Where tests point the client instead of the image's own base.
pub const STREAMS_URL_ENV: &str = "BUILDER_FCOS_STREAMS_URL";

/// A stream document is about 40 KB; anything near this is not one.
const MAX_BODY: usize = 4 << 20;

/// Why the current release could not be learned.
#[derive(Debug)]
pub enum StreamsError {
    /// An answer that is not a stream document of the asked stream.
    Refused { url: String, refused: Refused },
    /// An HTTP answer that retrying will not change (404 and the like).
    Status { url: String, status: StatusCode },
    /// No usable answer in the attempts and time allowed.
    GaveUp { url: String, gave_up: GaveUp },
    /// The name does not resolve, or TLS fails: not retried.
    Unreachable { url: String, failure: Failure },
}

impl fmt::Display for StreamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamsError::Refused { url, refused } => {
                write!(f, "the stream metadata at {url} is refused: {refused}")
            }
            StreamsError::Status { url, status } => write!(
                f,
                "GET {url}: {} {}",
                status.as_str(),
                status.canonical_reason().unwrap_or("")
            ),
            StreamsError::GaveUp { url, gave_up } => write!(f, "GET {url}: {gave_up}"),
            StreamsError::Unreachable { url, failure } => {
                write!(f, "GET {url}: {failure}")?;
                if let Some(hint) = failure.hint() {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StreamsError {}

pub struct StreamsClient {
    http: reqwest::Client,
    /// Ends with `/`: `<base><stream>.json`.
    base: Url,
    policy: RetryPolicy,
}

impl StreamsClient {
    /// A client of the stream metadata under `base`, an http(s) URL.
    pub fn new(base: &str, policy: RetryPolicy) -> anyhow::Result<StreamsClient> {
        let mut url = Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the stream metadata URL `{base}` is not an http(s) URL (check \
                     {STREAMS_URL_ENV})"
                )
            })?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(StreamsClient {
            http: net::client(policy.request_timeout)?,
            base: url,
            policy,
        })
    }

    /// A small document from a CDN: a few quick tries, a minute at most.
    pub fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            first_backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(8),
            deadline: std::time::Duration::from_secs(60),
            request_timeout: std::time::Duration::from_secs(20),
        }
    }

    /// Where stream `stream`'s document is read.
    pub fn url(&self, stream: &str) -> String {
        format!("{}{stream}.json", self.base)
    }

    /// The DigitalOcean disk of `stream`'s current release, whose location
    /// must lie under `artifacts` (see `stream::parse`).
    pub async fn current(&self, stream: &str, artifacts: &str) -> Result<Current, StreamsError> {
        let url = self.url(stream);
        let body = net::retry(&self.policy, &format!("GET {url}"), || self.attempt(&url))
            .await
            .map_err(|e| match e {
                RetryError::Failed(error) => error,
                RetryError::GaveUp(gave_up) => StreamsError::GaveUp {
                    url: url.clone(),
                    gave_up,
                },
            })?;
        stream::parse(&body, stream, artifacts)
            .map_err(|refused| StreamsError::Refused { url, refused })
    }

    async fn attempt(&self, url: &str) -> Step<Vec<u8>, StreamsError> {
        let lost = |failure: Failure| {
            if Resend::Always.after_failure(&failure) {
                Step::Retry {
                    why: failure.to_string(),
                    wait: None,
                }
            } else {
                Step::Fail(StreamsError::Unreachable {
                    url: url.to_owned(),
                    failure,
                })
            }
        };
        let mut response = match self.http.get(url).send().await {
            Ok(response) => response,
            Err(e) => return lost(Failure::of(&e, self.policy.request_timeout)),
        };
        let status = response.status();
        if !status.is_success() {
            if Resend::Always.after_status(status) {
                return Step::Retry {
                    why: format!(
                        "{} {}",
                        status.as_str(),
                        status.canonical_reason().unwrap_or("")
                    ),
                    wait: None,
                };
            }
            return Step::Fail(StreamsError::Status {
                url: url.to_owned(),
                status,
            });
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Step::Fail(StreamsError::Refused {
                        url: url.to_owned(),
                        refused: Refused {
                            at: "(the document)".into(),
                            why: format!("longer than {} MiB", MAX_BODY >> 20),
                        },
                    })
                }
                Ok(None) => return Step::Done(body),
                Err(e) => return lost(Failure::of(&e, self.policy.request_timeout)),
            }
        }
    }
}
