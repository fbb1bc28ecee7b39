//! Publishing the firstboot binary where nodes fetch it: Ignition fetches
//! `{base_url}/{object_name}` and checks its sha512, so the bytes behind
//! that URL must be exactly this builder's firstboot.
//!
//! - `publish.spaces` (`spaces`): the bucket is created (private) if
//!   absent and the object uploaded `public-read`, its sha512 in its
//!   metadata; signed with SigV4 (`sigv4`), keys from the environment
//!   (`credentials`).
//! - `publish.base_url` (`base_url`): the operator's own server; nothing
//!   is uploaded, the URL is fetched and its sha512 checked.
//!
//! Object names are content-addressed (`firstboot-<sha512 prefix>`, see
//! `Firstboot::object_name`), so `destroy --all` finds every one a site
//! published by listing `firstboot-*`, with no binary at hand.

// `PublishError` carries what its message names (bucket, URL, code,
// hashes): ~150 bytes, returned once per network-bound call. Boxing it
// would buy nothing measurable.
#![allow(clippy::result_large_err)]

mod base_url;
mod credentials;
mod error;
mod sigv4;
mod spaces;

use std::fmt;

use sha2::{Digest, Sha512};

use crate::artifact::Firstboot;
use crate::net::{self, RetryPolicy};
use crate::site::Publish;
use base_url::Served;
pub use credentials::{SpacesCredentials, KEY_ENVS, SECRET_ENVS};
pub use error::PublishError;
pub use spaces::error_code;
use spaces::Spaces;

/// Overrides the Spaces endpoint `https://{region}.digitaloceanspaces.com`.
pub const ENDPOINT_ENV: &str = "BUILDER_SPACES_ENDPOINT";
/// Where the object's sha512 (hex) is kept, as S3 user metadata.
pub const SHA512_HEADER: &str = "x-amz-meta-sha512";
/// What every published object's name starts with.
pub const OBJECT_PREFIX: &str = "firstboot-";

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

/// The firstboot objects where the site publishes, as `destroy --all`
/// finds them (with no firstboot binary at hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftovers {
    /// Every `firstboot-*` object in the site's bucket, older builds'
    /// included: the bucket is the site's.
    InBucket {
        bucket: String,
        objects: Vec<String>,
    },
    /// `publish.base_url` is the operator's own server: nothing there is
    /// touched.
    OwnServer { base: String },
    /// Spaces with no key to list or delete with.
    NoKey { bucket: String, why: String },
}

/// Publishes firstboot where the site file says.
pub struct Publisher {
    target: Target,
}

enum Target {
    BaseUrl(Served),
    Spaces(Spaces),
}

impl Publisher {
    /// As `launch` and `destroy` need it: the key from the environment
    /// (see `SpacesCredentials::from_env`), the endpoint from
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
            RetryPolicy::transfer(),
        )
    }

    /// Explicit settings, no environment (tests): `endpoint` overrides the
    /// Spaces one; `credentials` are needed for `publish.spaces` only.
    pub fn with_settings(
        publish: &Publish,
        credentials: Option<SpacesCredentials>,
        endpoint: Option<&str>,
        policy: RetryPolicy,
    ) -> Result<Publisher, PublishError> {
        Self::build(publish, credentials.map(Ok), endpoint, policy)
    }

    fn build(
        publish: &Publish,
        credentials: Option<Result<SpacesCredentials, PublishError>>,
        endpoint: Option<&str>,
        policy: RetryPolicy,
    ) -> Result<Publisher, PublishError> {
        let http = net::client(policy.request_timeout)
            .map_err(|e| PublishError::Config(format!("cannot set up HTTP: {e}")))?;
        let target = match publish {
            Publish::BaseUrl(base) => Target::BaseUrl(Served {
                base: base.clone(),
                http,
                policy,
            }),
            Publish::Spaces { bucket, region } => {
                let region = region.as_str().to_owned();
                let (endpoint, real) = match endpoint {
                    Some(e) => (e.trim().to_owned(), false),
                    None => (format!("https://{region}.digitaloceanspaces.com"), true),
                };
                let endpoint = spaces::parse_endpoint(&endpoint)?;
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
                    http,
                    policy,
                })
            }
        };
        Ok(Publisher { target })
    }

    /// Where `object_name` is published: the URL nodes fetch, except with
    /// `BUILDER_SPACES_ENDPOINT`, where it is the address at that endpoint
    /// (nodes still fetch `Publish::base_url()`).
    pub fn public_url(&self, object_name: &str) -> String {
        match &self.target {
            Target::BaseUrl(served) => served.url(object_name),
            Target::Spaces(s) => s.object_url(object_name).to_string(),
        }
    }

    /// What `publish` would do, one line each, for `--dry-run`. No
    /// network, and no artifact: the object is named by its hash.
    pub fn plan(&self) -> Vec<String> {
        let url = self
            .public_url("firstboot-HASH")
            .replace("HASH", "<sha512 prefix>");
        match &self.target {
            Target::BaseUrl(served) => vec![
                format!(
                    "upload nothing: {} (publish.base_url) is your own server",
                    served.base
                ),
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

    /// Make `artifact` available where nodes fetch it (see the module doc).
    pub async fn publish(&self, artifact: &Firstboot) -> Result<Published, PublishError> {
        check_object_name(&artifact.object_name())?;
        match &self.target {
            Target::BaseUrl(served) => served.check(artifact).await,
            Target::Spaces(s) => {
                s.credentials()?;
                s.upload(artifact, &read_artifact(artifact)?).await
            }
        }
    }

    /// Every firstboot object published for the site, found by listing
    /// (`destroy --all`).
    pub async fn leftovers(&self) -> Result<Leftovers, PublishError> {
        match &self.target {
            Target::BaseUrl(served) => Ok(Leftovers::OwnServer {
                base: served.base.to_string(),
            }),
            Target::Spaces(s) => match &s.credentials {
                Err(why) => Ok(Leftovers::NoKey {
                    bucket: s.bucket.to_string(),
                    why: why.clone(),
                }),
                Ok(_) => Ok(Leftovers::InBucket {
                    bucket: s.bucket.to_string(),
                    objects: s.list(OBJECT_PREFIX).await?,
                }),
            },
        }
    }

    /// Remove a published object by name (`builder destroy --all`);
    /// deleting what is not there is fine. For `base_url`, nothing is done.
    pub async fn unpublish_object(&self, object_name: &str) -> Result<Unpublished, PublishError> {
        check_object_name(object_name)?;
        match &self.target {
            Target::BaseUrl(_) => Ok(Unpublished::LeftInPlace {
                url: self.public_url(object_name),
            }),
            Target::Spaces(s) => Ok(Unpublished::Deleted {
                url: s.delete(object_name).await?.to_string(),
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::{BaseUrl, BucketName, Slug};

    fn site_spaces() -> Publish {
        Publish::Spaces {
            bucket: BucketName::parse("my-site").unwrap(),
            region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
        }
    }

    fn spaces(endpoint: Option<&str>) -> Publisher {
        let credentials = SpacesCredentials::new("KEY", "SECRET");
        Publisher::with_settings(
            &site_spaces(),
            Some(credentials),
            endpoint,
            RetryPolicy::transfer(),
        )
        .unwrap()
    }

    fn spaces_target(p: &Publisher) -> &Spaces {
        match &p.target {
            Target::Spaces(s) => s,
            Target::BaseUrl(_) => unreachable!(),
        }
    }

    fn base_url(url: &str) -> Publisher {
        let base = Publish::BaseUrl(BaseUrl::parse(url).unwrap());
        Publisher::with_settings(&base, None, None, RetryPolicy::transfer()).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        net::runtime().unwrap()
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
        assert_eq!(
            p.public_url("x"),
            format!("{}/x", site_spaces().base_url()),
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
        for endpoint in ["nyc3.digitaloceanspaces.com", "ftp://x", "http://x/?a=b"] {
            let err = Publisher::with_settings(
                &site_spaces(),
                None,
                Some(endpoint),
                RetryPolicy::transfer(),
            )
            .err()
            .unwrap();
            assert!(err.to_string().contains(ENDPOINT_ENV), "{err}");
        }
        assert!(check_object_name("firstboot-0123abcd").is_ok());
        assert!(check_object_name("a/b").is_err());
        assert!(check_object_name("a b").is_err());
        assert!(check_object_name("").is_err());
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

        let no_key =
            Publisher::with_settings(&site_spaces(), None, None, RetryPolicy::transfer()).unwrap();
        let lines = no_key.plan();
        assert!(lines[2].contains("SPACES_ACCESS_KEY_ID"), "{lines:#?}");

        let p = base_url("https://dl.example.com/fb/");
        let lines = p.plan();
        assert!(lines[0].starts_with("upload nothing"), "{lines:#?}");
        assert!(
            lines[1].contains("GET https://dl.example.com/fb/firstboot-<sha512 prefix>"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_base_url_is_left_alone() {
        let p = base_url("https://dl.example.com");
        let runtime = runtime();
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
        assert_eq!(
            runtime.block_on(p.leftovers()).unwrap(),
            Leftovers::OwnServer {
                base: "https://dl.example.com".into()
            }
        );
    }

    #[test]
    fn spaces_without_a_key_has_leftovers_it_cannot_list() {
        let p =
            Publisher::with_settings(&site_spaces(), None, None, RetryPolicy::transfer()).unwrap();
        match runtime().block_on(p.leftovers()).unwrap() {
            Leftovers::NoKey { bucket, why } => {
                assert_eq!(bucket, "my-site");
                assert!(why.contains("SPACES_ACCESS_KEY_ID"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}
