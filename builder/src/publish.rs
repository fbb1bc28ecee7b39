//! Publishing the firstboot binary where nodes fetch it: Ignition fetches
//! `{base_url}/{object_name}` and checks its sha512, so the bytes behind
//! that URL must be exactly this builder's firstboot.
//!
//! - `publish.spaces`: the bucket is created (private) if absent and the
//!   object uploaded `public-read` with its sha512 in `x-amz-meta-sha512`;
//!   an object already there with the same sha512 is left alone.
//! - `publish.base_url`: the operator's own server; nothing is uploaded,
//!   the URL is fetched and its sha512 checked, so a launch never starts
//!   nodes that would fail to fetch firstboot.
//!
//! Requests to Spaces are signed with AWS Signature V4 in the
//! `Authorization` header (the form DigitalOcean documents for direct API
//! calls), computed here with `hmac` and `sha2`. rusty-s3 was tried first:
//! it signs only presigned URLs (query-string signatures), which the local
//! S3 server the tests use (moto) does not check at all: it answers 500 to
//! any request without an `Authorization` header once authentication is on,
//! so wrong keys could not be tested. The signer is checked against AWS's
//! published example and, in `tests/do_publish.rs`, by moto with
//! authentication enforced.
//!
//! Addressing: virtual-host style (`https://{bucket}.{region}.digitaloceanspaces.com/{object}`,
//! the URL nodes fetch, see `Publish::base_url`) for real Spaces; path
//! style (`{endpoint}/{bucket}/{object}`) when `BUILDER_SPACES_ENDPOINT`
//! points elsewhere (tests, other S3-compatible stores), since such
//! endpoints are usually a bare host or an IP address.

// `PublishError` carries what its message names (bucket, URL, code,
// hashes): ~150 bytes, returned once per network-bound call. Boxing it
// would buy nothing measurable.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256, Sha512};

use crate::artifact::Firstboot;
use crate::site::Publish;

/// Overrides the Spaces endpoint `https://{region}.digitaloceanspaces.com`.
pub const ENDPOINT_ENV: &str = "BUILDER_SPACES_ENDPOINT";
/// The variables doctl and the Terraform provider read, then AWS's.
pub const KEY_ENVS: [&str; 2] = ["SPACES_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"];
pub const SECRET_ENVS: [&str; 2] = ["SPACES_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"];
/// Where the object's sha512 (hex) is kept, as S3 user metadata.
pub const SHA512_HEADER: &str = "x-amz-meta-sha512";

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A Spaces access key. `Debug` shows the key id only, never the secret.
#[derive(Clone)]
pub struct SpacesCredentials {
    key: String,
    secret: String,
    /// The variables they came from, named in hints.
    origin: (&'static str, &'static str),
}

impl fmt::Debug for SpacesCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpacesCredentials")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("origin", &self.origin)
            .finish()
    }
}

impl SpacesCredentials {
    /// A key given directly; hints name the `SPACES_…` variables.
    pub fn new(key: impl Into<String>, secret: impl Into<String>) -> SpacesCredentials {
        SpacesCredentials {
            key: key.into(),
            secret: secret.into(),
            origin: (KEY_ENVS[0], SECRET_ENVS[0]),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// `SPACES_ACCESS_KEY_ID` and `SPACES_SECRET_ACCESS_KEY`, else
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; a pair is taken
    /// whole, never mixed with the other.
    pub fn from_env() -> Result<SpacesCredentials, PublishError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<SpacesCredentials, PublishError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        for (key_var, secret_var) in KEY_ENVS.iter().zip(SECRET_ENVS) {
            match (get(key_var), get(secret_var)) {
                (Some(key), Some(secret)) => {
                    return Ok(SpacesCredentials {
                        key: key.trim().to_owned(),
                        secret: secret.trim().to_owned(),
                        origin: (key_var, secret_var),
                    })
                }
                (None, None) => continue,
                (Some(_), None) => {
                    return Err(PublishError::Credentials(format!(
                        "{key_var} is set but {secret_var} is not; set both (a Spaces key and its \
                         secret, from the control panel: API, Spaces Keys)"
                    )))
                }
                (None, Some(_)) => {
                    return Err(PublishError::Credentials(format!(
                        "{secret_var} is set but {key_var} is not; set both (a Spaces key and its \
                         secret, from the control panel: API, Spaces Keys)"
                    )))
                }
            }
        }
        Err(PublishError::Credentials(format!(
            "no Spaces key: set {} and {} (or {} and {}); create a key in the control panel \
             under API, Spaces Keys",
            KEY_ENVS[0], SECRET_ENVS[0], KEY_ENVS[1], SECRET_ENVS[1]
        )))
    }
}

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct PublishPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One request's whole exchange, body included (firstboot is ~4 MB).
    pub request_timeout: Duration,
}

impl Default for PublishPolicy {
    fn default() -> PublishPolicy {
        PublishPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// What `publish` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Uploaded to Spaces; `created_bucket` if the bucket was made first.
    Uploaded {
        url: String,
        bytes: u64,
        created_bucket: bool,
    },
    /// The object was already there with the same sha512: nothing sent.
    AlreadyThere { url: String },
    /// The operator's URL serves exactly this firstboot.
    Checked { url: String },
}

impl Published {
    /// Whether anything was written (for the list of what a launch made).
    pub fn changed(&self) -> bool {
        matches!(self, Published::Uploaded { .. })
    }

    /// The URL nodes fetch.
    pub fn url(&self) -> &str {
        match self {
            Published::Uploaded { url, .. }
            | Published::AlreadyThere { url }
            | Published::Checked { url } => url,
        }
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Published::Uploaded {
                url,
                bytes,
                created_bucket,
            } => {
                write!(f, "uploaded firstboot ({bytes} bytes) to {url}")?;
                if *created_bucket {
                    write!(f, " (created the bucket, private)")?;
                }
                Ok(())
            }
            Published::AlreadyThere { url } => {
                write!(
                    f,
                    "{url} already holds this firstboot (same sha512); nothing uploaded"
                )
            }
            Published::Checked { url } => write!(f, "{url} serves this firstboot (sha512 matches)"),
        }
    }
}

/// What `unpublish` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpublished {
    /// The object is gone (it may have been gone already).
    Deleted { url: String },
    /// `publish.base_url`: the operator's server, not ours to change.
    LeftInPlace { url: String },
}

impl fmt::Display for Unpublished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unpublished::Deleted { url } => write!(f, "deleted {url}"),
            Unpublished::LeftInPlace { url } => write!(
                f,
                "left {url} in place: publish.base_url is your own server; remove the file \
                 there if no node needs it any more"
            ),
        }
    }
}

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
        attempts: u32,
        last: String,
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
                "Spaces is unreachable or failing; run the command again, it resumes".into()
            }
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
                attempts,
                last,
            } => write!(
                f,
                "{operation} {url} failed {attempts} times; the last: {last}"
            )?,
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

/// Publishes firstboot where the site file says.
pub struct Publisher {
    target: Target,
    http: reqwest::Client,
    policy: PublishPolicy,
}

enum Target {
    BaseUrl(String),
    Spaces(Spaces),
}

struct Spaces {
    bucket: String,
    region: String,
    /// Scheme, host, port and any path prefix.
    endpoint: Url,
    /// Real Spaces (virtual-host URLs), or an overridden endpoint (path style).
    real: bool,
    /// The key, or why there is none (reported by `publish`, noted by `plan`).
    credentials: Result<SpacesCredentials, String>,
}

/// One HTTP answer, body read whole (S3 answers here are small).
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Publisher {
    /// As `launch`, `status` and `destroy` need it: the key from the
    /// environment (see `SpacesCredentials::from_env`), the endpoint from
    /// `BUILDER_SPACES_ENDPOINT` if set. A missing key is not an error
    /// here, so `--dry-run` can still plan; `publish` reports it.
    pub fn new(publish: &Publish) -> Result<Publisher, PublishError> {
        let credentials = match publish {
            Publish::BaseUrl(_) => None,
            Publish::Spaces { .. } => Some(SpacesCredentials::from_env()),
        };
        let endpoint = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.trim().is_empty());
        Self::build(
            publish,
            credentials,
            endpoint.as_deref(),
            PublishPolicy::default(),
        )
    }

    /// Explicit settings, no environment (tests): `endpoint` overrides the
    /// Spaces one; `credentials` are needed for `publish.spaces` only.
    pub fn with_settings(
        publish: &Publish,
        credentials: Option<SpacesCredentials>,
        endpoint: Option<&str>,
        policy: PublishPolicy,
    ) -> Result<Publisher, PublishError> {
        Self::build(publish, credentials.map(Ok), endpoint, policy)
    }

    fn build(
        publish: &Publish,
        credentials: Option<Result<SpacesCredentials, PublishError>>,
        endpoint: Option<&str>,
        policy: PublishPolicy,
    ) -> Result<Publisher, PublishError> {
        let target = match publish {
            Publish::BaseUrl(base) => Target::BaseUrl(base.trim_end_matches('/').to_owned()),
            Publish::Spaces { bucket, region } => {
                check_bucket(bucket)?;
                let region = region.as_str().to_owned();
                let (endpoint, real) = match endpoint {
                    Some(e) => (e.trim().to_owned(), false),
                    None => (format!("https://{region}.digitaloceanspaces.com"), true),
                };
                let endpoint = parse_endpoint(&endpoint)?;
                let credentials = match credentials {
                    Some(Ok(c)) => Ok(c),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err(PublishError::Credentials(format!(
                        "no Spaces key was given: set {} and {}",
                        KEY_ENVS[0], SECRET_ENVS[0]
                    ))
                    .to_string()),
                };
                Target::Spaces(Spaces {
                    bucket: bucket.clone(),
                    region,
                    endpoint,
                    real,
                    credentials,
                })
            }
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("site-builder/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PublishError::Config(format!("cannot set up HTTP: {e}")))?;
        Ok(Publisher {
            target,
            http,
            policy,
        })
    }

    /// Where `object_name` is published: the URL nodes fetch, except with
    /// `BUILDER_SPACES_ENDPOINT`, where it is the address at that endpoint
    /// (nodes still fetch `Publish::base_url()`).
    pub fn public_url(&self, object_name: &str) -> String {
        match &self.target {
            Target::BaseUrl(base) => format!("{base}/{object_name}"),
            Target::Spaces(s) => s.object_url(object_name).to_string(),
        }
    }

    /// What `publish` would do, one line each, for `--dry-run`. No
    /// network, and no artifact: the object is named by its hash
    /// (`firstboot-<sha512 prefix>`, see `Firstboot::object_name`).
    pub fn plan(&self) -> Vec<String> {
        let url = self
            .public_url("firstboot-HASH")
            .replace("HASH", "<sha512 prefix>");
        match &self.target {
            Target::BaseUrl(base) => vec![
                format!("upload nothing: {base} (publish.base_url) is your own server"),
                format!(
                    "GET {url} and check its sha512; if it does not match, copy \
                     target/dist/firstboot there under that name"
                ),
            ],
            Target::Spaces(s) => {
                let mut lines = vec![
                    format!(
                        "HEAD the Spaces bucket `{}` in {} ({}); create it, private, if absent",
                        s.bucket,
                        s.region,
                        s.endpoint.as_str().trim_end_matches('/')
                    ),
                    format!(
                        "HEAD {url}; PUT firstboot there (public-read, {SHA512_HEADER}) unless \
                         it is there already with the same sha512"
                    ),
                ];
                if let Err(why) = &s.credentials {
                    lines.push(format!("but publishing would fail now: {why}"));
                }
                lines
            }
        }
    }

    /// The object `publish` makes for `artifact`, as `destroy` shows it.
    pub fn describe_object(&self, artifact: &Firstboot) -> String {
        let url = self.public_url(&artifact.object_name());
        match &self.target {
            Target::BaseUrl(_) => format!("{url} (left alone: your own server)"),
            Target::Spaces(_) => url,
        }
    }

    /// Make `artifact` available where nodes fetch it (see the module doc).
    pub async fn publish(&self, artifact: &Firstboot) -> Result<Published, PublishError> {
        check_object_name(&artifact.object_name())?;
        match &self.target {
            Target::BaseUrl(base) => self.check_served(base, artifact).await,
            Target::Spaces(s) => self.upload(s, artifact).await,
        }
    }

    /// Remove what `publish` made for `artifact` (`builder destroy --all`).
    /// Deleting what is not there is fine. For `base_url`, nothing is done.
    pub async fn unpublish(&self, artifact: &Firstboot) -> Result<Unpublished, PublishError> {
        self.unpublish_object(&artifact.object_name()).await
    }

    /// `unpublish` by object name (such as an older build's).
    pub async fn unpublish_object(&self, object_name: &str) -> Result<Unpublished, PublishError> {
        check_object_name(object_name)?;
        let s = match &self.target {
            Target::BaseUrl(_) => {
                return Ok(Unpublished::LeftInPlace {
                    url: self.public_url(object_name),
                })
            }
            Target::Spaces(s) => s,
        };
        let credentials = s.credentials()?;
        let url = s.object_url(object_name);
        let target = format!("{}/{object_name}", s.bucket);
        let answer = self
            .send(
                s,
                credentials,
                "DELETE object",
                Method::DELETE,
                &url,
                &[],
                None,
            )
            .await?;
        match answer.status.as_u16() {
            200..=299 | 404 => Ok(Unpublished::Deleted {
                url: url.to_string(),
            }),
            _ => Err(refused(
                "DELETE object",
                &target,
                &url,
                &answer,
                credentials,
            )),
        }
    }

    async fn upload(&self, s: &Spaces, artifact: &Firstboot) -> Result<Published, PublishError> {
        let credentials = s.credentials()?;
        let bytes = read_artifact(artifact)?;
        let created_bucket = self.ensure_bucket(s, credentials).await?;

        let object = artifact.object_name();
        let url = s.object_url(&object);
        let target = format!("{}/{object}", s.bucket);
        let head = self
            .send(s, credentials, "HEAD object", Method::HEAD, &url, &[], None)
            .await?;
        match head.status.as_u16() {
            200 => {
                let sha512 = head
                    .headers
                    .get(SHA512_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim);
                if sha512 == Some(artifact.sha512.as_str()) {
                    return Ok(Published::AlreadyThere {
                        url: url.to_string(),
                    });
                }
                // Same name, other or unknown content: a broken upload
                // (names are content-addressed). Replace it.
            }
            404 => {}
            _ => {
                return Err(self
                    .explain(s, credentials, "HEAD object", &target, &url, &head)
                    .await)
            }
        }

        let headers = [
            ("content-type", "application/octet-stream".to_owned()),
            ("x-amz-acl", "public-read".to_owned()),
            (SHA512_HEADER, artifact.sha512.clone()),
        ];
        let put = self
            .send(
                s,
                credentials,
                "PUT object",
                Method::PUT,
                &url,
                &headers,
                Some(&bytes),
            )
            .await?;
        if !put.status.is_success() {
            return Err(refused("PUT object", &target, &url, &put, credentials));
        }
        Ok(Published::Uploaded {
            url: url.to_string(),
            bytes: bytes.len() as u64,
            created_bucket,
        })
    }

    /// HEAD the bucket, create it if absent; true if created.
    async fn ensure_bucket(
        &self,
        s: &Spaces,
        credentials: &SpacesCredentials,
    ) -> Result<bool, PublishError> {
        let url = s.bucket_url();
        let head = self
            .send(s, credentials, "HEAD bucket", Method::HEAD, &url, &[], None)
            .await?;
        match head.status.as_u16() {
            200..=299 => return Ok(false),
            404 => {}
            _ => {
                return Err(self
                    .explain(s, credentials, "HEAD bucket", &s.bucket, &url, &head)
                    .await)
            }
        }
        let body = s.create_bucket_body();
        let headers = [("x-amz-acl", "private".to_owned())];
        let put = self
            .send(
                s,
                credentials,
                "PUT bucket",
                Method::PUT,
                &url,
                &headers,
                body.as_ref().map(|b| b.as_bytes()),
            )
            .await?;
        let code = error_code(&put.body);
        let ours = code.as_deref() == Some("BucketAlreadyOwnedByYou");
        if !put.status.is_success() && !ours {
            return Err(refused("PUT bucket", &s.bucket, &url, &put, credentials));
        }
        // A new bucket can take a moment to answer everywhere.
        let mut pause = self.policy.first_backoff;
        for _ in 1..self.policy.attempts {
            let head = self
                .send(s, credentials, "HEAD bucket", Method::HEAD, &url, &[], None)
                .await?;
            if head.status.is_success() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.policy.max_backoff);
        }
        Ok(!ours)
    }

    /// A refusal of a HEAD request, whose answer has no body to name the
    /// error: the same resource is read with GET (`?location` for a bucket,
    /// the first byte for an object) to learn the S3 error code.
    async fn explain(
        &self,
        s: &Spaces,
        credentials: &SpacesCredentials,
        operation: &'static str,
        target: &str,
        url: &Url,
        head: &Exchange,
    ) -> PublishError {
        let mut error = refused(operation, target, url, head, credentials);
        if !head.status.is_client_error() {
            return error;
        }
        let (probe, headers) = if target.contains('/') {
            (url.clone(), vec![("range", "bytes=0-0".to_owned())])
        } else {
            let mut probe = url.clone();
            probe.set_query(Some("location"));
            (probe, vec![])
        };
        if let Ok(answer) = self
            .send(
                s,
                credentials,
                operation,
                Method::GET,
                &probe,
                &headers,
                None,
            )
            .await
        {
            if let PublishError::Refused { code, message, .. } = &mut error {
                *code = error_code(&answer.body);
                *message = xml_text(&answer.body, "Message");
            }
        }
        error
    }

    /// One signed request to Spaces, with bounded retries on connection
    /// errors, timeouts, 5xx and 429. Every other answer is returned.
    /// Retrying a PUT is safe: the object name is its content's hash.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        s: &Spaces,
        credentials: &SpacesCredentials,
        operation: &'static str,
        method: Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Exchange, PublishError> {
        let payload_sha256 = match body {
            Some(b) => hex::encode(Sha256::digest(b)),
            None => EMPTY_SHA256.to_owned(),
        };
        let mut pause = self.policy.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.policy.attempts {
            let amz_date = amz_date(SystemTime::now());
            let mut signed: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            signed.push(("x-amz-content-sha256".into(), payload_sha256.clone()));
            signed.push(("x-amz-date".into(), amz_date.clone()));
            let authorization = sign_v4(
                credentials,
                &s.region,
                method.as_str(),
                url,
                &signed,
                &payload_sha256,
                &amz_date,
            );
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("authorization", authorization);
            for (name, value) in &signed {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(body) = body {
                request = request.body(body.to_vec());
            }
            let why = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) if !retriable(status) => {
                            return Ok(Exchange {
                                status,
                                headers,
                                body: body.to_vec(),
                            })
                        }
                        Ok(body) => {
                            let code = error_code(&body).unwrap_or_default();
                            format!("server error {status} {code}")
                                .trim_end()
                                .to_owned()
                        }
                        Err(e) => describe(&e),
                    }
                }
                Err(e) => describe(&e),
            };
            last = why;
            if attempt < self.policy.attempts {
                eprintln!(
                    "  {operation} {url}: {last}; retrying in {:.1}s",
                    pause.as_secs_f32()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.policy.max_backoff);
            }
        }
        Err(PublishError::GaveUp {
            operation,
            url: url.to_string(),
            attempts: self.policy.attempts,
            last,
        })
    }

    /// `base_url`: GET the object and check its sha512, streaming it; a
    /// body longer than the artifact is cut off (it cannot match).
    async fn check_served(
        &self,
        base: &str,
        artifact: &Firstboot,
    ) -> Result<Published, PublishError> {
        let object = artifact.object_name();
        let url = format!("{base}/{object}");
        let mut pause = self.policy.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.policy.attempts {
            match self.fetch_digest(&url, artifact.size).await {
                Ok(Fetched::Body { sha512, size }) => {
                    if sha512 == artifact.sha512 && size == artifact.size {
                        return Ok(Published::Checked { url });
                    }
                    return Err(PublishError::Mismatch {
                        url,
                        expected: artifact.sha512.clone(),
                        expected_size: artifact.size,
                        found: (size <= artifact.size).then_some(sha512),
                        found_size: size,
                        object,
                        local: artifact.path.clone(),
                    });
                }
                Ok(Fetched::Status(status)) if status == StatusCode::NOT_FOUND => {
                    return Err(PublishError::Missing {
                        url,
                        object,
                        local: artifact.path.clone(),
                    })
                }
                Ok(Fetched::Status(status)) if !retriable(status) => {
                    return Err(PublishError::Unavailable {
                        url,
                        status: status.as_u16(),
                        object,
                        local: artifact.path.clone(),
                    })
                }
                Ok(Fetched::Status(status)) => last = format!("server error {status}"),
                Err(why) => last = why,
            }
            if attempt < self.policy.attempts {
                eprintln!(
                    "  GET {url}: {last}; retrying in {:.1}s",
                    pause.as_secs_f32()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.policy.max_backoff);
            }
        }
        Err(PublishError::GaveUp {
            operation: "GET",
            url,
            attempts: self.policy.attempts,
            last,
        })
    }

    async fn fetch_digest(&self, url: &str, expected_size: u64) -> Result<Fetched, String> {
        let mut response = self.http.get(url).send().await.map_err(|e| describe(&e))?;
        if !response.status().is_success() {
            return Ok(Fetched::Status(response.status()));
        }
        let mut hasher = Sha512::new();
        let mut size = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
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

enum Fetched {
    Body { sha512: String, size: u64 },
    Status(StatusCode),
}

impl Spaces {
    fn credentials(&self) -> Result<&SpacesCredentials, PublishError> {
        self.credentials
            .as_ref()
            .map_err(|why| PublishError::Credentials(why.clone()))
    }

    /// Real Spaces: `https://{bucket}.{region}.digitaloceanspaces.com/`;
    /// an overridden endpoint: `{endpoint}/{bucket}`.
    fn bucket_url(&self) -> Url {
        self.url(None)
    }

    fn object_url(&self, object: &str) -> Url {
        self.url(Some(object))
    }

    fn url(&self, object: Option<&str>) -> Url {
        let mut url = self.endpoint.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        if self.real {
            let host = format!("{}.{}", self.bucket, url.host_str().unwrap_or_default());
            url.set_host(Some(&host))
                .expect("a bucket name is a valid host label");
            url.set_path(&format!("{prefix}/{}", object.unwrap_or("")));
        } else {
            match object {
                Some(object) => url.set_path(&format!("{prefix}/{}/{object}", self.bucket)),
                None => url.set_path(&format!("{prefix}/{}", self.bucket)),
            }
        }
        url
    }

    /// Real Spaces takes the region from the endpoint and needs no body
    /// (as DigitalOcean's Terraform provider does it); other S3 stores
    /// follow AWS, which requires a LocationConstraint outside us-east-1.
    fn create_bucket_body(&self) -> Option<String> {
        if self.real || self.region == "us-east-1" {
            return None;
        }
        Some(format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            self.region
        ))
    }
}

fn parse_endpoint(endpoint: &str) -> Result<Url, PublishError> {
    let bad = |why: &str| {
        PublishError::Config(format!(
            "the Spaces endpoint `{endpoint}` {why}; write it like https://nyc3.digitaloceanspaces.com \
             (check {ENDPOINT_ENV})"
        ))
    };
    let url = Url::parse(endpoint).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("is not an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must have no query or fragment"));
    }
    Ok(url)
}

/// As the site file checks it; `Publish` can also be built by hand.
fn check_bucket(bucket: &str) -> Result<(), PublishError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PublishError::Config(format!(
            "`{bucket}` is not a valid Spaces bucket name"
        )))
    }
}

/// Object names are used verbatim in URL paths and signatures, so only
/// characters that need no escaping are allowed (firstboot's always do).
fn check_object_name(name: &str) -> Result<(), PublishError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PublishError::Config(format!(
            "`{name}` cannot be published: object names here are made of a-z, A-Z, 0-9, `-`, \
             `_` and `.`"
        )))
    }
}

fn read_artifact(artifact: &Firstboot) -> Result<Vec<u8>, PublishError> {
    let bytes = std::fs::read(&artifact.path).map_err(|e| PublishError::Local {
        path: artifact.path.clone(),
        detail: format!("cannot be read: {e}"),
    })?;
    let sha512 = hex::encode(Sha512::digest(&bytes));
    if sha512 != artifact.sha512 {
        return Err(PublishError::Local {
            path: artifact.path.clone(),
            detail: "changed since it was hashed for the node configs".into(),
        });
    }
    Ok(bytes)
}

fn refused(
    operation: &'static str,
    target: &str,
    url: &Url,
    answer: &Exchange,
    credentials: &SpacesCredentials,
) -> PublishError {
    PublishError::Refused {
        key_vars: credentials.origin,
        operation,
        target: target.to_owned(),
        url: url.to_string(),
        status: answer.status.as_u16(),
        code: error_code(&answer.body),
        message: xml_text(&answer.body, "Message"),
    }
}

fn retriable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
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

/// The `<Code>` of an S3 XML error body.
pub fn error_code(body: &[u8]) -> Option<String> {
    xml_text(body, "Code")
}

/// The text of the first `<tag>…</tag>` in `body`, entities decoded. S3
/// error bodies are flat and small; no XML parser is needed for them.
fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    let text = body[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `YYYYMMDDTHHMMSSZ`, UTC.
fn amz_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// SigV4 for S3: the `Authorization` header for a request to `url` with
/// `headers` (lower-case names; `x-amz-date` and `x-amz-content-sha256`
/// among them) besides `host`, which is signed as reqwest sends it.
fn sign_v4(
    credentials: &SpacesCredentials,
    region: &str,
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    payload_sha256: &str,
    amz_date: &str,
) -> String {
    let canonical = canonical_request(method, url, headers, payload_sha256);
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.request.as_bytes()))
    );
    let key = [date, region, "s3", "aws4_request"].iter().fold(
        format!("AWS4{}", credentials.secret).into_bytes(),
        |key, part| hmac_sha256(&key, part),
    );
    let signature = hex::encode(hmac_sha256(&key, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        credentials.key, canonical.signed_headers
    )
}

struct Canonical {
    request: String,
    signed_headers: String,
}

fn canonical_request(
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    payload_sha256: &str,
) -> Canonical {
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    all.push(("host".into(), host));
    all.sort();
    let canonical_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = all
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut query: Vec<String> = url
        .query_pairs()
        .map(|(k, v)| format!("{}={}", uri_encode(&k), uri_encode(&v)))
        .collect();
    query.sort();
    // The path is used as the URL holds it: our bucket and object names
    // need no escaping (checked), so it is already in canonical form.
    let path = if url.path().is_empty() {
        "/"
    } else {
        url.path()
    };
    let request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}",
        query.join("&")
    );
    Canonical {
        request,
        signed_headers,
    }
}

/// RFC 3986 escaping as SigV4 wants it: all but unreserved characters.
fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::Slug;

    fn spaces(endpoint: Option<&str>) -> Publisher {
        let publish = Publish::Spaces {
            bucket: "my-site".into(),
            region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
        };
        let credentials = SpacesCredentials::new("KEY", "SECRET");
        Publisher::with_settings(
            &publish,
            Some(credentials),
            endpoint,
            PublishPolicy::default(),
        )
        .unwrap()
    }

    fn spaces_target(p: &Publisher) -> &Spaces {
        match &p.target {
            Target::Spaces(s) => s,
            Target::BaseUrl(_) => unreachable!(),
        }
    }

    fn fixture() -> Firstboot {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny-static.elf"
        );
        Firstboot::locate(Some(std::path::Path::new(path))).unwrap()
    }

    #[test]
    fn real_spaces_urls_are_virtual_host_style_and_match_the_site_base_url() {
        let p = spaces(None);
        let s = spaces_target(&p);
        assert_eq!(
            s.bucket_url().as_str(),
            "https://my-site.nyc3.digitaloceanspaces.com/"
        );
        assert_eq!(
            p.public_url("firstboot-ab"),
            "https://my-site.nyc3.digitaloceanspaces.com/firstboot-ab"
        );
        let publish = Publish::Spaces {
            bucket: "my-site".into(),
            region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
        };
        assert_eq!(
            p.public_url("x"),
            format!("{}/x", publish.base_url()),
            "nodes fetch what is uploaded"
        );
        assert_eq!(s.create_bucket_body(), None);
    }

    #[test]
    fn an_overridden_endpoint_is_path_style() {
        let p = spaces(Some("http://127.0.0.1:9000/"));
        let s = spaces_target(&p);
        assert_eq!(s.bucket_url().as_str(), "http://127.0.0.1:9000/my-site");
        assert_eq!(
            p.public_url("firstboot-ab"),
            "http://127.0.0.1:9000/my-site/firstboot-ab"
        );
        let body = s.create_bucket_body().unwrap();
        assert!(body.contains("<LocationConstraint>nyc3</LocationConstraint>"));

        let prefixed = spaces(Some("https://s3.example.net/store"));
        assert_eq!(
            prefixed.public_url("o"),
            "https://s3.example.net/store/my-site/o"
        );
    }

    #[test]
    fn bad_endpoints_and_names_are_refused() {
        let publish = Publish::Spaces {
            bucket: "my-site".into(),
            region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
        };
        for endpoint in ["nyc3.digitaloceanspaces.com", "ftp://x", "http://x/?a=b"] {
            let err =
                Publisher::with_settings(&publish, None, Some(endpoint), PublishPolicy::default())
                    .err()
                    .unwrap();
            assert!(err.to_string().contains(ENDPOINT_ENV), "{err}");
        }
        let bad_bucket = Publish::Spaces {
            bucket: "My_Site".into(),
            region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
        };
        assert!(
            Publisher::with_settings(&bad_bucket, None, None, PublishPolicy::default()).is_err()
        );
        assert!(check_object_name("firstboot-0123abcd").is_ok());
        assert!(check_object_name("a/b").is_err());
        assert!(check_object_name("a b").is_err());
        assert!(check_object_name("").is_err());
    }

    #[test]
    fn error_codes_come_from_the_xml_body() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match &amp; so on</Message><RequestId>tx1</RequestId></Error>"#;
        assert_eq!(error_code(body).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            xml_text(body, "Message").as_deref(),
            Some("The request signature we calculated does not match & so on")
        );
        assert_eq!(error_code(b""), None);
        assert_eq!(error_code(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(error_code(b"<Error><Code></Code></Error>"), None);
    }

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

    #[test]
    fn credentials_come_in_pairs_spaces_first_and_never_show_the_secret() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = SpacesCredentials::from_lookup(env(&[
            ("SPACES_ACCESS_KEY_ID", "DO-KEY"),
            ("SPACES_SECRET_ACCESS_KEY", "do-secret"),
            ("AWS_ACCESS_KEY_ID", "AWS-KEY"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .unwrap();
        assert_eq!(both.key(), "DO-KEY");
        let debug = format!("{both:?}");
        assert!(
            debug.contains("DO-KEY") && !debug.contains("do-secret"),
            "{debug}"
        );

        assert_eq!(both.origin, (KEY_ENVS[0], SECRET_ENVS[0]));
        let aws = SpacesCredentials::from_lookup(env(&[
            ("AWS_ACCESS_KEY_ID", "AWS-KEY"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .unwrap();
        assert_eq!(aws.key(), "AWS-KEY");
        assert_eq!(aws.origin, (KEY_ENVS[1], SECRET_ENVS[1]));

        let half = SpacesCredentials::from_lookup(env(&[
            ("SPACES_ACCESS_KEY_ID", "DO-KEY"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(half.contains("SPACES_SECRET_ACCESS_KEY is not"), "{half}");

        let none = SpacesCredentials::from_lookup(env(&[("SPACES_ACCESS_KEY_ID", " ")]))
            .unwrap_err()
            .to_string();
        for var in KEY_ENVS.iter().chain(&SECRET_ENVS) {
            assert!(none.contains(var), "{var} missing from {none}");
        }
    }

    #[test]
    fn dates_are_utc_in_sigv4_form() {
        let at = |secs: u64| amz_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(1_369_353_600), "20130524T000000Z");
        assert_eq!(at(951_782_400 + 3_661), "20000229T010101Z"); // leap day
        assert_eq!(at(1_735_689_599), "20241231T235959Z");
        assert_eq!(at(1_735_689_600), "20250101T000000Z");
    }

    #[test]
    fn signatures_match_the_aws_example() {
        // "Example: GET Object" in AWS's SigV4 documentation for S3.
        let credentials = SpacesCredentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let headers = vec![
            ("range".to_owned(), "bytes=0-9".to_owned()),
            ("x-amz-content-sha256".to_owned(), EMPTY_SHA256.to_owned()),
            ("x-amz-date".to_owned(), "20130524T000000Z".to_owned()),
        ];
        let authorization = sign_v4(
            &credentials,
            "us-east-1",
            "GET",
            &url,
            &headers,
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn signatures_match_botocore_for_a_path_style_put_with_a_port() {
        // Computed with botocore's S3SigV4Auth (what moto checks with).
        let credentials = SpacesCredentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let url = Url::parse("http://127.0.0.1:5078/my-bucket/firstboot-0123").unwrap();
        let payload = hex::encode(Sha256::digest(b"hello"));
        let headers = vec![
            ("x-amz-acl".to_owned(), "public-read".to_owned()),
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            ("x-amz-meta-sha512".to_owned(), "abc".to_owned()),
            ("x-amz-content-sha256".to_owned(), payload.clone()),
            ("x-amz-date".to_owned(), "20250102T030405Z".to_owned()),
        ];
        let canonical = canonical_request("PUT", &url, &headers, &payload);
        assert!(canonical.request.contains("\nhost:127.0.0.1:5078\n"));
        let authorization = sign_v4(
            &credentials,
            "nyc3",
            "PUT",
            &url,
            &headers,
            &payload,
            "20250102T030405Z",
        );
        assert!(
            authorization.ends_with(
                "SignedHeaders=content-type;host;x-amz-acl;x-amz-content-sha256;x-amz-date;\
                 x-amz-meta-sha512, \
                 Signature=e531d0ad8cf4295f572ec34c314950a9ae910913c8b7b40b551bad78a2cd7f96"
            ),
            "{authorization}"
        );
    }

    #[test]
    fn query_strings_are_canonical() {
        let url = Url::parse("http://h/b?location").unwrap();
        let c = canonical_request("GET", &url, &[], EMPTY_SHA256);
        assert!(
            c.request.starts_with("GET\n/b\nlocation=\nhost:h\n"),
            "{}",
            c.request
        );
        let url = Url::parse("http://h/b?prefix=a%20b&list-type=2").unwrap();
        let c = canonical_request("GET", &url, &[], EMPTY_SHA256);
        assert!(
            c.request.contains("\nlist-type=2&prefix=a%20b\n"),
            "{}",
            c.request
        );
    }

    #[test]
    fn plans_say_what_would_happen() {
        let lines = spaces(None).plan();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("bucket `my-site` in nyc3"), "{lines:#?}");
        assert!(lines[0].contains("private"), "{lines:#?}");
        assert!(
            lines[1].contains("https://my-site.nyc3.digitaloceanspaces.com/firstboot-<sha512")
                && lines[1].contains("public-read"),
            "{lines:#?}"
        );

        let publish = Publish::Spaces {
            bucket: "my-site".into(),
            region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
        };
        let no_key =
            Publisher::with_settings(&publish, None, None, PublishPolicy::default()).unwrap();
        let lines = no_key.plan();
        assert!(lines[2].contains("SPACES_ACCESS_KEY_ID"), "{lines:#?}");

        let base = Publish::BaseUrl("https://dl.example.com/fb/".into());
        let p = Publisher::with_settings(&base, None, None, PublishPolicy::default()).unwrap();
        let lines = p.plan();
        assert!(lines[0].starts_with("upload nothing"), "{lines:#?}");
        assert!(
            lines[1].contains("GET https://dl.example.com/fb/firstboot-<sha512 prefix>"),
            "{lines:#?}"
        );
        let fb = fixture();
        assert_eq!(
            p.describe_object(&fb),
            format!(
                "https://dl.example.com/fb/{} (left alone: your own server)",
                fb.object_name()
            )
        );
    }

    #[test]
    fn unpublishing_a_base_url_leaves_it_alone() {
        let base = Publish::BaseUrl("https://dl.example.com".into());
        let p = Publisher::with_settings(&base, None, None, PublishPolicy::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let done = runtime
            .block_on(p.unpublish_object("firstboot-ab"))
            .unwrap();
        assert_eq!(
            done,
            Unpublished::LeftInPlace {
                url: "https://dl.example.com/firstboot-ab".into()
            }
        );
        assert!(done.to_string().contains("your own server"));
    }
}
