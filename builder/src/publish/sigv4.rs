//! AWS Signature Version 4 for S3, in the `Authorization` header (the form
//! DigitalOcean documents for direct Spaces API calls), computed with
//! `hmac` and `sha2`.
//!
//! Ours rather than a crate's: the SigV4 crates need a newer Rust than
//! this workspace declares, and rusty-s3 signs only presigned URLs
//! (query-string signatures), which moto, the S3 server the tests use,
//! does not check at all, so wrong keys could not be tested. Checked
//! against AWS's published example and botocore's signer below, and by
//! moto with authentication enforced in `tests/do_publish.rs`.

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::SpacesCredentials;

/// The SHA-256 of an empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `YYYYMMDDTHHMMSSZ`, UTC, as `x-amz-date` wants it.
pub fn amz_date(at: SystemTime) -> String {
    let t = OffsetDateTime::from(at);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `Authorization` header for a request to `url` with `headers`
/// (lower-case names; `x-amz-date` and `x-amz-content-sha256` among them)
/// besides `host`, which is signed as reqwest sends it.
pub fn sign(
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
        format!("AWS4{}", credentials.secret()).into_bytes(),
        |key, part| hmac_sha256(&key, part),
    );
    let signature = hex::encode(hmac_sha256(&key, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        credentials.key(),
        canonical.signed_headers
    )
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
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
    // The path is used as the URL holds it: bucket and object names need
    // no escaping (checked where they are made), so it is already in
    // canonical form.
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
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

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
        let authorization = sign(
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
        let authorization = sign(
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
}
