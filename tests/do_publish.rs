//! Publishing firstboot: to an S3-compatible server (moto, with signature
//! checks on) as to Spaces, and checking an operator's own base URL
//! against a loopback file server.

mod support;

use std::time::Duration;

use builder::artifact::Firstboot;
use builder::net::RetryPolicy;
use builder::publish::{
    Leftovers, PublishError, Published, Publisher, SpacesCredentials, Unpublished,
};
use builder::site::{BaseUrl, BucketName, Publish, Slug};
use sha2::{Digest, Sha512};
use support::http::FileServer;
use support::moto::{self, Moto};

const BUCKET: &str = "site-firstboot";

fn runtime() -> tokio::runtime::Runtime {
    builder::net::runtime().unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        deadline: Duration::from_secs(30),
        request_timeout: Duration::from_secs(20),
    }
}

fn spaces() -> Publish {
    Publish::Spaces {
        bucket: BucketName::parse(BUCKET).unwrap(),
        region: Slug::parse("nyc3", "region", "nyc3").unwrap(),
    }
}

fn publisher(moto: &Moto, key: &str, secret: &str) -> Publisher {
    let credentials = SpacesCredentials::new(key, secret);
    Publisher::with_settings(&spaces(), Some(credentials), Some(&moto.base), policy()).unwrap()
}

/// The requests that wrote something.
fn writes(calls: &[String]) -> Vec<&String> {
    calls
        .iter()
        .filter(|c| !c.starts_with("GET ") && !c.starts_with("HEAD "))
        .collect()
}

#[test]
fn spaces_publishing_is_signed_idempotent_and_public() {
    if let Some(reason) = moto::skip_reason() {
        return support::skip(&reason);
    }
    let moto = Moto::start();
    let (key, secret) = moto.create_user_with_s3_access("builder");
    let firstboot = support::site::tiny_firstboot();
    let bytes = std::fs::read(&firstboot.path).unwrap();
    let object = firstboot.object_name();
    let object_path = format!("/{BUCKET}/{object}");
    let url = format!("{}{object_path}", moto.base);

    let good = publisher(&moto, &key, &secret);
    let wrong_secret = publisher(&moto, &key, "not-the-secret");
    let unknown_key = publisher(&moto, "AKIAUNKNOWNKEY000000", &secret);
    assert_eq!(good.public_url(&object), url);

    moto.enforce_auth();
    let runtime = runtime();
    runtime.block_on(async {
        // A wrong secret is refused before anything is written, and the
        // error says which key to check.
        moto.reset_recording();
        let err = wrong_secret.publish(&firstboot).await.unwrap_err();
        assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err}");
        let text = err.to_string();
        for part in [
            BUCKET,
            "SignatureDoesNotMatch",
            "SPACES_ACCESS_KEY_ID",
            "SPACES_SECRET_ACCESS_KEY",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        let calls = moto.recorded();
        assert!(writes(&calls).is_empty(), "{calls:#?}");

        let err = unknown_key.publish(&firstboot).await.unwrap_err();
        assert_eq!(err.code(), Some("InvalidAccessKeyId"), "{err}");
        assert!(err.to_string().contains("unknown to Spaces"), "{err}");

        // The right key: the bucket is created, the object uploaded.
        moto.reset_recording();
        let published = good.publish(&firstboot).await.unwrap();
        assert_eq!(
            published,
            Published::Uploaded {
                url: url.clone(),
                bytes: bytes.len() as u64,
                created_bucket: true,
            }
        );
        assert!(published.changed());
        let calls = moto.recorded();
        assert_eq!(
            writes(&calls),
            [&format!("PUT /{BUCKET}"), &format!("PUT {object_path}")],
            "{calls:#?}"
        );

        // Again: the object is there with its sha512, so nothing is sent.
        moto.reset_recording();
        let again = good.publish(&firstboot).await.unwrap();
        assert_eq!(again, Published::AlreadyThere { url: url.clone() });
        assert!(!again.changed());
        assert_eq!(
            moto.recorded(),
            [format!("HEAD /{BUCKET}"), format!("HEAD {object_path}")]
        );

        // Once the bucket exists a wrong secret still changes nothing.
        moto.reset_recording();
        let err = wrong_secret.publish(&firstboot).await.unwrap_err();
        assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err}");
        assert!(writes(&moto.recorded()).is_empty());
    });

    // As a node fetches it: no credentials at all.
    moto.disable_auth();
    let fetched = moto.get(&object_path);
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert!(fetched.body == bytes, "the served bytes differ");
    assert_eq!(hex::encode(Sha512::digest(&fetched.body)), firstboot.sha512);
    assert_eq!(
        fetched.header("x-amz-meta-sha512"),
        Some(firstboot.sha512.as_str())
    );
    // The object is readable by all, the bucket by its owner only. (moto
    // does not refuse anonymous listings of private buckets, so the ACLs
    // themselves are read.)
    let all_users = "http://acs.amazonaws.com/groups/global/AllUsers";
    let object_acl = moto.get(&format!("{object_path}?acl")).text();
    assert!(
        object_acl.contains(all_users) && object_acl.contains("<Permission>READ</Permission>"),
        "{object_acl}"
    );
    let bucket_acl = moto.get(&format!("/{BUCKET}?acl")).text();
    assert!(
        bucket_acl.contains("FULL_CONTROL") && !bucket_acl.contains(all_users),
        "{bucket_acl}"
    );

    // An object of the same name but other content (a broken upload) is
    // replaced.
    let put = moto.request("PUT", &object_path, &[], b"truncated");
    assert_eq!(put.status, 200, "{}", put.text());
    moto.enforce_auth();
    runtime.block_on(async {
        let replaced = good.publish(&firstboot).await.unwrap();
        assert!(
            matches!(
                replaced,
                Published::Uploaded {
                    created_bucket: false,
                    ..
                }
            ),
            "{replaced:?}"
        );

        // destroy --all finds every firstboot object by listing, older
        // builds' included, with no binary at hand; deletes them, and
        // deleting again is fine.
        moto.disable_auth();
        let older = format!("/{BUCKET}/firstboot-0123456789abcdef");
        assert_eq!(moto.request("PUT", &older, &[], b"old build").status, 200);
        let unrelated = format!("/{BUCKET}/notes.txt");
        assert_eq!(moto.request("PUT", &unrelated, &[], b"mine").status, 200);
        moto.enforce_auth();
        let found = good.leftovers().await.unwrap();
        assert_eq!(
            found,
            Leftovers::InBucket {
                bucket: BUCKET.into(),
                objects: vec!["firstboot-0123456789abcdef".into(), object.clone()],
            }
        );
        for name in ["firstboot-0123456789abcdef", object.as_str()] {
            let done = good.unpublish_object(name).await.unwrap();
            assert!(matches!(done, Unpublished::Deleted { .. }), "{done:?}");
        }
        let again = good.unpublish_object(&object).await.unwrap();
        assert_eq!(again, Unpublished::Deleted { url: url.clone() });
        let none = good.leftovers().await.unwrap();
        assert_eq!(
            none,
            Leftovers::InBucket {
                bucket: BUCKET.into(),
                objects: vec![],
            }
        );
        // A wrong secret cannot list either, and says which key to check.
        let err = wrong_secret.leftovers().await.unwrap_err();
        assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err}");
    });
    moto.disable_auth();
    assert_eq!(moto.get(&object_path).status, 404);
    // The bucket's other objects are not firstboot's: still there (403,
    // private, rather than 404).
    assert_eq!(moto.get(&format!("/{BUCKET}/notes.txt")).status, 403);
}

#[test]
fn spaces_without_a_key_is_refused_with_the_variable_names() {
    let publisher =
        Publisher::with_settings(&spaces(), None, Some("http://127.0.0.1:9"), policy()).unwrap();
    let firstboot = support::site::tiny_firstboot();
    let err = runtime()
        .block_on(publisher.publish(&firstboot))
        .unwrap_err();
    assert!(matches!(err, PublishError::Credentials(_)), "{err:?}");
    assert!(err.to_string().contains("SPACES_ACCESS_KEY_ID"), "{err}");
}

fn base_url(server: &FileServer) -> Publisher {
    let base = BaseUrl::parse(&server.url("/fb")).unwrap();
    Publisher::with_settings(&Publish::BaseUrl(base), None, None, policy()).unwrap()
}

#[test]
fn a_base_url_serving_the_right_bytes_is_checked() {
    let firstboot = support::site::tiny_firstboot();
    let path = format!("/fb/{}", firstboot.object_name());
    let bytes = std::fs::read(&firstboot.path).unwrap();
    let server = FileServer::start(vec![(path.clone(), bytes)]).unwrap();
    let published = runtime()
        .block_on(base_url(&server).publish(&firstboot))
        .unwrap();
    assert_eq!(
        published,
        Published::Checked {
            url: server.url(&path)
        }
    );
    assert!(!published.changed());
    assert_eq!(server.hits(&path), 1);
}

#[test]
fn a_base_url_serving_other_bytes_is_a_clear_error() {
    let firstboot = support::site::tiny_firstboot();
    let path = format!("/fb/{}", firstboot.object_name());
    let server = FileServer::start(vec![(path.clone(), b"an old build".to_vec())]).unwrap();
    let err = runtime()
        .block_on(base_url(&server).publish(&firstboot))
        .unwrap_err();
    assert!(matches!(err, PublishError::Mismatch { .. }), "{err:?}");
    let text = err.to_string();
    let other = hex::encode(Sha512::digest(b"an old build"));
    for part in [
        server.url(&path).as_str(),
        &format!("expected sha512 {}", firstboot.sha512),
        &format!("found sha512 {other} (12 bytes)"),
        "tiny-static.elf",
        &format!("under the name {}", firstboot.object_name()),
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[test]
fn a_base_url_serving_nothing_is_a_clear_error() {
    let firstboot = support::site::tiny_firstboot();
    let server = FileServer::start(vec![]).unwrap();
    let err = runtime()
        .block_on(base_url(&server).publish(&firstboot))
        .unwrap_err();
    assert!(matches!(err, PublishError::Missing { .. }), "{err:?}");
    let text = err.to_string();
    let url = server.url(&format!("/fb/{}", firstboot.object_name()));
    for part in [url.as_str(), "404", "copy", "tiny-static.elf"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // 404 is an answer, not a failure: asked once.
    assert_eq!(server.hits(&format!("/fb/{}", firstboot.object_name())), 1);
}

#[test]
fn an_unreachable_base_url_is_retried_then_given_up() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let publish = Publish::BaseUrl(BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    let publisher = Publisher::with_settings(&publish, None, None, policy()).unwrap();
    let firstboot: Firstboot = support::site::tiny_firstboot();
    let err = runtime()
        .block_on(publisher.publish(&firstboot))
        .unwrap_err();
    match &err {
        PublishError::GaveUp { gave_up, .. } => {
            assert_eq!(gave_up.attempts, 2);
            let refused = format!("connection refused by 127.0.0.1:{port}");
            assert_eq!(gave_up.last, refused);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_base_url_serving_a_longer_file_is_cut_off_and_refused() {
    let firstboot = support::site::tiny_firstboot();
    let path = format!("/fb/{}", firstboot.object_name());
    let mut bytes = std::fs::read(&firstboot.path).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    let server = FileServer::start(vec![(path, bytes)]).unwrap();
    let err = runtime()
        .block_on(base_url(&server).publish(&firstboot))
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Mismatch { found: None, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    let expected = format!("found more than {} bytes", firstboot.size);
    assert!(text.contains(&expected), "{text}");
}

#[test]
fn an_unreachable_spaces_endpoint_is_retried_then_given_up() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let credentials = SpacesCredentials::new("KEY", "SECRET");
    let endpoint = format!("http://127.0.0.1:{port}");
    let publisher =
        Publisher::with_settings(&spaces(), Some(credentials), Some(&endpoint), policy()).unwrap();
    let firstboot = support::site::tiny_firstboot();
    let err = runtime()
        .block_on(publisher.publish(&firstboot))
        .unwrap_err();
    match &err {
        PublishError::GaveUp {
            operation,
            gave_up,
            url,
        } => {
            assert_eq!((*operation, gave_up.attempts), ("HEAD bucket", 2));
            assert_eq!(url, &format!("{endpoint}/{BUCKET}"));
            assert_eq!(
                gave_up.last,
                format!("connection refused by 127.0.0.1:{port}")
            );
        }
        other => panic!("{other:?}"),
    }
    // Said once: what failed, where, and what to check.
    let text = err.to_string();
    assert_eq!(text.matches("connection refused").count(), 1, "{text}");
    assert!(text.contains("check this machine's network"), "{text}");
    assert!(!text.contains("error sending request"), "{text}");
}
