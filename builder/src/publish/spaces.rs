//! The Spaces client: the bucket is created (private) if absent and the
//! object uploaded `public-read` with its sha512 in `x-amz-meta-sha512`;
//! an object already there with the same sha512 is left alone.
//!
//! Addressing: virtual-host style
//! (`https://{bucket}.{region}.digitaloceanspaces.com/{object}`, the URL
//! nodes fetch, see `Publish::base_url`) for real Spaces; path style
//! (`{endpoint}/{bucket}/{object}`) when `BUILDER_SPACES_ENDPOINT` points
//! elsewhere (tests, other S3-compatible stores), since such endpoints are
//! usually a bare host or an IP address.

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};

use super::{sigv4, PublishError, Published, SpacesCredentials, ENDPOINT_ENV, SHA512_HEADER};
use crate::artifact::Firstboot;
use crate::net::{self, Failure, Resend, RetryError, RetryPolicy, Step};
use crate::site::BucketName;

/// Pages of a listing followed at most (1,000 keys a page).
const MAX_PAGES: usize = 100;

pub(super) struct Spaces {
    pub bucket: BucketName,
    pub region: String,
    /// Scheme, host, port and any path prefix.
    pub endpoint: Url,
    /// Real Spaces (virtual-host URLs), or an overridden endpoint (path style).
    pub real: bool,
    /// The key, or why there is none (reported when it is needed).
    pub credentials: Result<SpacesCredentials, String>,
    pub http: reqwest::Client,
    pub policy: RetryPolicy,
}

/// One HTTP answer, body read whole (S3 answers here are small).
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Spaces {
    pub fn credentials(&self) -> Result<&SpacesCredentials, PublishError> {
        self.credentials
            .as_ref()
            .map_err(|why| PublishError::Credentials(why.clone()))
    }

    /// Real Spaces: `https://{bucket}.{region}.digitaloceanspaces.com/`;
    /// an overridden endpoint: `{endpoint}/{bucket}`.
    pub fn bucket_url(&self) -> Url {
        self.url(None)
    }

    pub fn object_url(&self, object: &str) -> Url {
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
    pub fn create_bucket_body(&self) -> Option<String> {
        if self.real || self.region == "us-east-1" {
            return None;
        }
        Some(format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            self.region
        ))
    }

    pub async fn upload(
        &self,
        artifact: &Firstboot,
        bytes: &[u8],
    ) -> Result<Published, PublishError> {
        let credentials = self.credentials()?;
        let created_bucket = self.ensure_bucket(credentials).await?;

        let object = artifact.object_name();
        let url = self.object_url(&object);
        let target = format!("{}/{object}", self.bucket);
        let head = self
            .send(credentials, "HEAD object", Method::HEAD, &url, &[], None)
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
                    .explain(credentials, "HEAD object", &target, &url, &head)
                    .await)
            }
        }

        let headers = [
            ("content-type", "application/octet-stream".to_owned()),
            ("x-amz-acl", "public-read".to_owned()),
            (SHA512_HEADER, artifact.sha512.clone()),
        ];
        // Sent again freely: the name is the content's hash, so a second
        // PUT writes the same bytes.
        let put = self
            .send(
                credentials,
                "PUT object",
                Method::PUT,
                &url,
                &headers,
                Some(bytes),
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
    async fn ensure_bucket(&self, credentials: &SpacesCredentials) -> Result<bool, PublishError> {
        let url = self.bucket_url();
        let head = self
            .send(credentials, "HEAD bucket", Method::HEAD, &url, &[], None)
            .await?;
        match head.status.as_u16() {
            200..=299 => return Ok(false),
            404 => {}
            _ => {
                return Err(self
                    .explain(
                        credentials,
                        "HEAD bucket",
                        self.bucket.as_str(),
                        &url,
                        &head,
                    )
                    .await)
            }
        }
        let body = self.create_bucket_body();
        let headers = [("x-amz-acl", "private".to_owned())];
        let put = self
            .send(
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
            return Err(refused(
                "PUT bucket",
                self.bucket.as_str(),
                &url,
                &put,
                credentials,
            ));
        }
        // A new bucket can take a moment to answer everywhere; the upload
        // says clearly if it still does not.
        let url = &url;
        let visible = net::retry(&self.policy, "HEAD bucket", || async move {
            match self
                .send(credentials, "HEAD bucket", Method::HEAD, url, &[], None)
                .await
            {
                Ok(head) if head.status.is_success() => Step::Done(()),
                Ok(head) => Step::Retry {
                    why: format!("the new bucket answers {}", head.status),
                    wait: None,
                },
                Err(e) => Step::Fail(e),
            }
        })
        .await;
        match visible {
            Ok(()) | Err(RetryError::GaveUp(_)) => Ok(!ours),
            Err(RetryError::Failed(e)) => Err(e),
        }
    }

    /// The names of the objects whose names start with `prefix`
    /// (ListObjectsV2); none if the bucket does not exist.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, PublishError> {
        let credentials = self.credentials()?;
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.bucket_url();
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("list-type", "2");
                query.append_pair("prefix", prefix);
                if let Some(token) = &token {
                    query.append_pair("continuation-token", token);
                }
            }
            let answer = self
                .send(credentials, "LIST objects", Method::GET, &url, &[], None)
                .await?;
            match answer.status.as_u16() {
                200..=299 => {}
                404 if error_code(&answer.body).as_deref() == Some("NoSuchBucket") => {
                    return Ok(Vec::new())
                }
                _ => {
                    return Err(refused(
                        "LIST objects",
                        self.bucket.as_str(),
                        &url,
                        &answer,
                        credentials,
                    ))
                }
            }
            names.extend(xml_all(&answer.body, "Key"));
            if xml_text(&answer.body, "IsTruncated").as_deref() != Some("true") {
                return Ok(names);
            }
            token = Some(
                xml_text(&answer.body, "NextContinuationToken").ok_or_else(|| {
                    PublishError::Malformed {
                        operation: "LIST objects",
                        url: url.to_string(),
                        detail: "a truncated listing without a continuation token".into(),
                    }
                })?,
            );
        }
        Err(PublishError::Malformed {
            operation: "LIST objects",
            url: self.bucket_url().to_string(),
            detail: format!("more than {MAX_PAGES} pages of `{prefix}*` objects"),
        })
    }

    /// Delete one object; deleting what is not there is fine.
    pub async fn delete(&self, object: &str) -> Result<Url, PublishError> {
        let credentials = self.credentials()?;
        let url = self.object_url(object);
        let answer = self
            .send(
                credentials,
                "DELETE object",
                Method::DELETE,
                &url,
                &[],
                None,
            )
            .await?;
        match answer.status.as_u16() {
            200..=299 | 404 => Ok(url),
            _ => Err(refused(
                "DELETE object",
                &format!("{}/{object}", self.bucket),
                &url,
                &answer,
                credentials,
            )),
        }
    }

    /// A refusal of a HEAD request, whose answer has no body to name the
    /// error: the same resource is read with GET (`?location` for a bucket,
    /// the first byte for an object) to learn the S3 error code.
    async fn explain(
        &self,
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
            .send(credentials, operation, Method::GET, &probe, &headers, None)
            .await
        {
            if let PublishError::Refused { code, message, .. } = &mut error {
                *code = error_code(&answer.body);
                *message = xml_text(&answer.body, "Message");
            }
        }
        error
    }

    /// One signed request, retried within the policy on connection
    /// failures, timeouts, 5xx and 429; every other answer is returned.
    /// Every request to Spaces here may be sent again (see
    /// `Resend::Always`): HEAD, GET and DELETE are idempotent, a bucket
    /// PUT answers `BucketAlreadyOwnedByYou` the second time, and an
    /// object PUT writes a content-addressed name.
    async fn send(
        &self,
        credentials: &SpacesCredentials,
        operation: &'static str,
        method: Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Exchange, PublishError> {
        let payload_sha256 = match body {
            Some(b) => hex::encode(Sha256::digest(b)),
            None => sigv4::EMPTY_SHA256.to_owned(),
        };
        let what = format!("{operation} {url}");
        let result = net::retry(&self.policy, &what, || {
            self.attempt(credentials, &method, url, headers, body, &payload_sha256)
        })
        .await;
        result.map_err(|e| match e {
            RetryError::Failed(failure) => PublishError::Unreachable {
                operation,
                url: url.to_string(),
                failure,
            },
            RetryError::GaveUp(gave_up) => PublishError::GaveUp {
                operation,
                url: url.to_string(),
                gave_up,
            },
        })
    }

    async fn attempt(
        &self,
        credentials: &SpacesCredentials,
        method: &Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        payload_sha256: &str,
    ) -> Step<Exchange, Failure> {
        let resend = Resend::Always;
        let amz_date = sigv4::amz_date(SystemTime::now());
        let mut signed: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        signed.push(("x-amz-content-sha256".into(), payload_sha256.to_owned()));
        signed.push(("x-amz-date".into(), amz_date.clone()));
        let authorization = sigv4::sign(
            credentials,
            &self.region,
            method.as_str(),
            url,
            &signed,
            payload_sha256,
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
        let failed = |failure: Failure| match resend.after_failure(&failure) {
            true => Step::Retry {
                why: failure.to_string(),
                wait: None,
            },
            false => Step::Fail(failure),
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(Failure::of(&e, self.policy.request_timeout)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(e) => return failed(Failure::of(&e, self.policy.request_timeout)),
        };
        if resend.after_status(status) {
            let code = error_code(&body).unwrap_or_default();
            return Step::Retry {
                why: format!("server error {status} {code}")
                    .trim_end()
                    .to_owned(),
                wait: None,
            };
        }
        Step::Done(Exchange {
            status,
            headers,
            body,
        })
    }
}

/// The endpoint of `BUILDER_SPACES_ENDPOINT`, checked.
pub(super) fn parse_endpoint(endpoint: &str) -> Result<Url, PublishError> {
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

fn refused(
    operation: &'static str,
    target: &str,
    url: &Url,
    answer: &Exchange,
    credentials: &SpacesCredentials,
) -> PublishError {
    PublishError::Refused {
        key_vars: credentials.origin(),
        operation,
        target: target.to_owned(),
        url: url.to_string(),
        status: answer.status.as_u16(),
        code: error_code(&answer.body),
        message: xml_text(&answer.body, "Message"),
    }
}

/// The `<Code>` of an S3 XML error body.
pub fn error_code(body: &[u8]) -> Option<String> {
    xml_text(body, "Code")
}

/// The text of the first `<tag>…</tag>` in `body`, entities decoded. S3
/// error bodies and listings are flat; no XML parser is needed for them.
fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    xml_all(body, tag).into_iter().next()
}

/// The texts of every `<tag>…</tag>` in `body`, entities decoded, empty
/// ones left out.
fn xml_all(body: &[u8], tag: &str) -> Vec<String> {
    let Ok(mut rest) = std::str::from_utf8(body) else {
        return Vec::new();
    };
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut texts = Vec::new();
    while let Some(start) = rest.find(&open).map(|i| i + open.len()) {
        let Some(len) = rest[start..].find(&close) else {
            break;
        };
        let text = rest[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        if !text.trim().is_empty() {
            texts.push(text.trim().to_owned());
        }
        rest = &rest[start + len + close.len()..];
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn listings_give_every_key() {
        let body = br#"<ListBucketResult><Name>b</Name><Prefix>firstboot-</Prefix>
<Contents><Key>firstboot-aa</Key><Size>3</Size></Contents>
<Contents><Key>firstboot-b&amp;b</Key><Size>4</Size></Contents>
<IsTruncated>false</IsTruncated></ListBucketResult>"#;
        assert_eq!(xml_all(body, "Key"), ["firstboot-aa", "firstboot-b&b"]);
        assert_eq!(xml_text(body, "IsTruncated").as_deref(), Some("false"));
        assert!(xml_all(b"<ListBucketResult></ListBucketResult>", "Key").is_empty());
    }
}
