//! `publish.base_url`: the operator's own server. Nothing is uploaded;
//! the object's URL is fetched and its sha512 checked, so a launch never
//! starts nodes that would fail to fetch firstboot.

use reqwest::StatusCode;
use sha2::{Digest, Sha512};

use super::{PublishError, Published};
use crate::artifact::Firstboot;
use crate::net::{self, Failure, Resend, RetryError, RetryPolicy, Step};
use crate::site::BaseUrl;

pub(super) struct Served {
    pub base: BaseUrl,
    pub http: reqwest::Client,
    pub policy: RetryPolicy,
}

enum Fetched {
    Body { sha512: String, size: u64 },
    Status(StatusCode),
}

impl Served {
    pub fn url(&self, object: &str) -> String {
        format!("{}/{object}", self.base)
    }

    /// GET the object and check its sha512, streaming it; a body longer
    /// than the artifact is cut off (it cannot match). Connection
    /// failures, 5xx and 429 are retried within the policy; any other
    /// answer is final.
    pub async fn check(&self, artifact: &Firstboot) -> Result<Published, PublishError> {
        let object = artifact.object_name();
        let url = self.url(&object);
        let url = &url;
        let result = net::retry(&self.policy, &format!("GET {url}"), || async move {
            self.attempt(url, artifact).await
        })
        .await;
        let failed = |e| match e {
            RetryError::Failed(e) => e,
            RetryError::GaveUp(gave_up) => PublishError::GaveUp {
                operation: "GET",
                url: url.clone(),
                gave_up,
            },
        };
        let (sha512, size) = result.map_err(failed)?;
        if sha512 == artifact.sha512 && size == artifact.size {
            return Ok(Published::Checked { url: url.clone() });
        }
        Err(PublishError::Mismatch {
            url: url.clone(),
            expected: artifact.sha512.clone(),
            expected_size: artifact.size,
            found: (size <= artifact.size).then_some(sha512),
            found_size: size,
            object,
            local: artifact.path.clone(),
        })
    }

    async fn attempt(&self, url: &str, artifact: &Firstboot) -> Step<(String, u64), PublishError> {
        let status = match self.fetch_digest(url, artifact.size).await {
            Ok(Fetched::Body { sha512, size }) => return Step::Done((sha512, size)),
            Ok(Fetched::Status(status)) => status,
            Err(failure) if Resend::Always.after_failure(&failure) => {
                return Step::Retry {
                    why: failure.to_string(),
                    wait: None,
                }
            }
            Err(failure) => {
                return Step::Fail(PublishError::Unreachable {
                    operation: "GET",
                    url: url.to_owned(),
                    failure,
                })
            }
        };
        if Resend::Always.after_status(status) {
            return Step::Retry {
                why: format!("server error {status}"),
                wait: None,
            };
        }
        let object = artifact.object_name();
        let local = artifact.path.clone();
        Step::Fail(if status == StatusCode::NOT_FOUND {
            PublishError::Missing {
                url: url.to_owned(),
                object,
                local,
            }
        } else {
            PublishError::Unavailable {
                url: url.to_owned(),
                status: status.as_u16(),
                object,
                local,
            }
        })
    }

    async fn fetch_digest(&self, url: &str, expected_size: u64) -> Result<Fetched, Failure> {
        let timeout = self.policy.request_timeout;
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Failure::of(&e, timeout))?;
        if !response.status().is_success() {
            return Ok(Fetched::Status(response.status()));
        }
        let mut hasher = Sha512::new();
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::of(&e, timeout))?
        {
            size += chunk.len() as u64;
            hasher.update(&chunk);
            if size > expected_size {
                break;
            }
        }
        Ok(Fetched::Body {
            sha512: hex::encode(hasher.finalize()),
            size,
        })
    }
}
