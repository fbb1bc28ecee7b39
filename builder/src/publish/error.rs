//! What can go wrong publishing firstboot, each with what to do.

use std::fmt;
use std::path::PathBuf;

use super::ENDPOINT_ENV;
use crate::net::{Failure, GaveUp};

#[derive(Debug)]
pub enum PublishError {
    /// No usable Spaces key in the environment.
    Credentials(String),
    /// The publish settings cannot be used (bad endpoint, bucket or name).
    Config(String),
    /// The local firstboot binary cannot be read, or changed since hashed.
    Local { path: PathBuf, detail: String },
    /// Spaces (or the S3-compatible store) refused a request.
    Refused {
        /// Such as "HEAD bucket" or "PUT object".
        operation: &'static str,
        /// `bucket` or `bucket/object`.
        target: String,
        url: String,
        status: u16,
        /// The S3 error code from the XML body, when there is one.
        code: Option<String>,
        message: Option<String>,
        /// The variables the key came from, as in "check A and B".
        key_vars: (&'static str, &'static str),
    },
    /// No usable answer after every attempt (connection, timeout, 5xx).
    GaveUp {
        operation: &'static str,
        url: String,
        gave_up: GaveUp,
    },
    /// Not reachable at all in this run (a name that does not resolve,
    /// TLS that fails): not retried.
    Unreachable {
        operation: &'static str,
        url: String,
        failure: Failure,
    },
    /// An answer that makes no sense (an S3 listing without its parts).
    Malformed {
        operation: &'static str,
        url: String,
        detail: String,
    },
    /// `base_url`: nothing at the URL.
    Missing {
        url: String,
        object: String,
        local: PathBuf,
    },
    /// `base_url`: the URL answered with an error other than 404.
    Unavailable {
        url: String,
        status: u16,
        object: String,
        local: PathBuf,
    },
    /// `base_url`: the URL serves other bytes.
    Mismatch {
        url: String,
        expected: String,
        expected_size: u64,
        /// None if the body ran past firstboot's size (reading stopped).
        found: Option<String>,
        /// Bytes read; past `expected_size`, reading stopped there.
        found_size: u64,
        object: String,
        local: PathBuf,
    },
}

impl PublishError {
    /// The S3 error code, if Spaces gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            PublishError::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    fn hint(&self) -> String {
        match self {
            PublishError::Credentials(_) | PublishError::Config(_) => String::new(),
            PublishError::Local { .. } => {
                "rebuild it with `make build`, then run the command again".into()
            }
            PublishError::Refused {
                status,
                code,
                target,
                key_vars,
                ..
            } => {
                let bucket = target.split('/').next().unwrap_or(target);
                refusal_hint(*status, code.as_deref(), bucket, *key_vars)
            }
            PublishError::GaveUp { .. } => {
                "the server is unreachable or failing; check this machine's network".into()
            }
            PublishError::Unreachable { failure, .. } => failure
                .hint()
                .unwrap_or("check the URL and this machine's network")
                .into(),
            PublishError::Malformed { .. } => "the server answered off the S3 API".into(),
            PublishError::Missing { url, object, local }
            | PublishError::Unavailable {
                url, object, local, ..
            }
            | PublishError::Mismatch {
                url, object, local, ..
            } => format!(
                "copy {} (this builder's firstboot) to your server so that it is served at {url}, \
                 under the name {object}, then run the command again",
                local.display()
            ),
        }
    }
}

/// What to do about an S3 error code (or, for answers without a body such
/// as HEAD's, about the status).
fn refusal_hint(
    status: u16,
    code: Option<&str>,
    bucket: &str,
    (key_var, secret_var): (&str, &str),
) -> String {
    let keys = format!("check {key_var} and {secret_var}");
    match (code, status) {
        (Some("SignatureDoesNotMatch"), _) => {
            format!("the secret does not match the key: {keys}")
        }
        (Some("InvalidAccessKeyId"), _) => {
            format!("the key is unknown to Spaces (deleted, or a typo): {keys}")
        }
        (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, 403) => format!(
            "the key may not do this, or the bucket `{bucket}` belongs to another account \
             (bucket names are shared by everyone in a region): {keys}, or pick another bucket \
             name in the site file"
        ),
        (Some("NoSuchBucket"), _) => format!(
            "the bucket `{bucket}` does not exist in this region; check publish.spaces in the \
             site file"
        ),
        (Some("BucketAlreadyExists"), _) => format!(
            "another account owns a bucket named `{bucket}`; pick another name in the site file"
        ),
        (Some("TooManyBuckets"), _) => {
            "the account has its maximum number of buckets; delete one or use an existing one"
                .into()
        }
        (Some("RequestTimeTooSkewed"), _) => {
            "this machine's clock is off; set it right (NTP) and run the command again".into()
        }
        (Some("InvalidBucketName"), _) => {
            format!("`{bucket}` is not a valid bucket name; pick another in the site file")
        }
        (Some("IllegalLocationConstraintException" | "InvalidLocationConstraint"), _) => format!(
            "the endpoint does not serve this region; check publish.spaces.region and {ENDPOINT_ENV}"
        ),
        (_, 301 | 307) => format!(
            "the bucket `{bucket}` is in another region; check publish.spaces.region"
        ),
        _ => "see the message above".into(),
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Credentials(message) | PublishError::Config(message) => {
                return f.write_str(message)
            }
            PublishError::Local { path, detail } => {
                write!(f, "the firstboot binary {}: {detail}", path.display())?
            }
            PublishError::Refused {
                operation,
                target,
                url,
                status,
                code,
                message,
                ..
            } => {
                write!(f, "Spaces refused {operation} `{target}` ({url}): {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if let Some(message) = message {
                    write!(f, ": {message}")?;
                }
            }
            PublishError::GaveUp {
                operation,
                url,
                gave_up,
            } => write!(f, "{operation} {url}: {gave_up}")?,
            PublishError::Unreachable {
                operation,
                url,
                failure,
            } => write!(f, "{operation} {url}: {failure}")?,
            PublishError::Malformed {
                operation,
                url,
                detail,
            } => write!(f, "{operation} {url}: {detail}")?,
            PublishError::Missing { url, .. } => write!(
                f,
                "nothing is served at {url} (404): nodes could not fetch firstboot from there"
            )?,
            PublishError::Unavailable { url, status, .. } => write!(
                f,
                "{url} answers {status}: nodes could not fetch firstboot from there"
            )?,
            PublishError::Mismatch {
                url,
                expected,
                expected_size,
                found,
                found_size,
                ..
            } => {
                write!(
                    f,
                    "{url} serves other bytes than this firstboot: expected sha512 {expected} \
                     ({expected_size} bytes), found "
                )?;
                match found {
                    Some(found) => write!(f, "sha512 {found} ({found_size} bytes)")?,
                    None => write!(f, "more than {expected_size} bytes")?,
                }
                write!(f, "; nodes would refuse it (Ignition checks the sha512)")?
            }
        }
        write!(f, " ({})", self.hint())
    }
}

impl std::error::Error for PublishError {}

#[cfg(test)]
mod tests {
    use super::super::{KEY_ENVS, SECRET_ENVS};
    use super::*;

    #[test]
    fn refusals_name_the_target_the_code_and_what_to_do() {
        let err = PublishError::Refused {
            operation: "PUT object",
            target: "my-site/firstboot-ab".into(),
            url: "https://my-site.nyc3.digitaloceanspaces.com/firstboot-ab".into(),
            status: 403,
            code: Some("SignatureDoesNotMatch".into()),
            message: Some("The request signature we calculated does not match".into()),
            key_vars: (KEY_ENVS[1], SECRET_ENVS[1]),
        };
        let text = err.to_string();
        for part in [
            "PUT object `my-site/firstboot-ab`",
            "https://my-site.nyc3.digitaloceanspaces.com/firstboot-ab",
            "403 SignatureDoesNotMatch",
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        let vars = (KEY_ENVS[0], SECRET_ENVS[0]);
        let hint = |status, code| refusal_hint(status, code, "b", vars);
        assert!(hint(404, Some("NoSuchBucket")).contains("`b` does not exist"));
        assert!(hint(403, None).contains("belongs to another account"));
        assert!(hint(409, Some("BucketAlreadyExists")).contains("another name"));
        assert!(hint(403, Some("InvalidAccessKeyId"))
            .contains("check SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY"));
    }
}
