//! Which Fedora CoreOS release `builder launch` imports, run as the
//! operator runs it (the real binary): the stream's current release, read
//! from its metadata on a loopback server (`BUILDER_FCOS_STREAMS_URL`),
//! unless the site file pins one; a document that is not right, or a
//! server that does not answer, stops the launch before any call to
//! DigitalOcean (here the stateful fake, without Prism: what is checked is
//! what builder sends, not the API's shapes, which tests/do_launch.rs
//! checks).

mod support;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::do_fake::FakeDo;
use support::fcos_streams::{self, StreamServer, LAST_MODIFIED, RELEASE, SHA256};
use support::site;

/// A three-host site (its firstboot served for launch's check of the
/// base_url), its vault, and the DigitalOcean fake.
struct World {
    dir: tempfile::TempDir,
    fake: FakeDo,
    files: site_lab::http::FileServer,
}

impl World {
    fn new() -> World {
        let files = site::firstboot_server();
        let dir = tempfile::tempdir().unwrap();
        let vault =
            builder::vault::seal(&site::test_secrets(), "test passphrase", Some(2), false).unwrap();
        std::fs::write(dir.path().join("hosts.vault"), vault).unwrap();
        let world = World {
            dir,
            fake: FakeDo::start(),
            files,
        };
        world.write_site(None);
        world
    }

    fn site(&self) -> PathBuf {
        self.dir.path().join("hosts.yaml")
    }

    /// The site file, with `defaults.release` when `pin` is given.
    fn write_site(&self, pin: Option<&str>) {
        let mut text = site::generated_site(3, &self.files.url("/fb"));
        if let Some(release) = pin {
            text = text.replace("defaults:\n", &format!("defaults:\n  release: {release}\n"));
        }
        std::fs::write(self.site(), text).unwrap();
    }

    /// `builder launch SITE ARGS…` with the stream metadata at `streams`.
    fn launch(&self, streams: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_builder"))
            .arg("launch")
            .arg(self.site())
            .args(args)
            .env("BUILDER_FCOS_STREAMS_URL", streams)
            .env("DIGITALOCEAN_API_URL", &self.fake.base)
            .env("DIGITALOCEAN_ACCESS_TOKEN", "test-token")
            .env("BUILDER_VAULT_PASSPHRASE", "test passphrase")
            .env("BUILDER_FIRSTBOOT", site::tiny_firstboot_path())
            .env("BUILDER_POLL_MS", "20")
            .env("BUILDER_API_TIMEOUT_MS", "500")
            .env("BUILDER_API_BACKOFF_MS", "50")
            .env_remove("DIGITALOCEAN_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.success(), transcript(&out))
    }

    /// The site's custom images as DigitalOcean lists them.
    fn images(&self) -> Vec<Value> {
        let policy = builder::digitalocean::RetryPolicy::digitalocean();
        let client =
            builder::digitalocean::Client::new(&self.fake.base, "test-token", policy).unwrap();
        builder::net::runtime()
            .unwrap()
            .block_on(client.list("/v2/images?private=true", "images"))
            .unwrap()
    }
}

fn transcript(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The dry run names the current release, why it is the one, where
/// DigitalOcean downloads it from, and that the published checksum is
/// recorded, not verified; the document is read once and DigitalOcean
/// not at all.
#[test]
fn the_dry_run_names_the_current_release_and_why() {
    let w = World::new();
    let streams = StreamServer::start(&fcos_streams::document(RELEASE));
    let (ok, text) = w.launch(&streams.base(), &["--dry-run"]);
    assert!(ok, "{text}");
    assert_eq!(streams.hits(), 1, "{text}");
    assert!(w.fake.calls().is_empty(), "{:?}", w.fake.calls());
    for said in [
        format!(
            "POST /v2/images fedora-coreos-{RELEASE} from {} if absent",
            fcos_streams::location(RELEASE)
        ),
        format!(
            "release: the current release of stream `stable` (metadata last modified \
             {LAST_MODIFIED}, read from {}stable.json)",
            streams.base()
        ),
        format!(
            "DigitalOcean downloads the image itself; the sha256 the stream metadata published \
             ({SHA256}) is recorded in the image's description, not verified by DigitalOcean"
        ),
    ] {
        assert!(text.contains(&said), "`{said}` not in:\n{text}");
    }
}

/// A release pinned in the site file is the one imported, and the stream
/// metadata is not read at all.
#[test]
fn a_pinned_release_wins_and_nothing_is_read() {
    let w = World::new();
    let pin = "44.20260707.3.1";
    w.write_site(Some(pin));
    let streams = StreamServer::start(&fcos_streams::document(RELEASE));
    let (ok, text) = w.launch(&streams.base(), &["--dry-run"]);
    assert!(ok, "{text}");
    assert_eq!(streams.hits(), 0, "the metadata was read:\n{text}");
    assert!(
        text.contains(&format!(
            "POST /v2/images fedora-coreos-{pin} from {} if absent",
            fcos_streams::location(pin)
        )) && text.contains("release: pinned in the site file (`defaults.release`)")
            && !text.contains(RELEASE),
        "{text}"
    );
}

/// A lab site never reads the stream metadata: its image is the lab's.
#[test]
fn a_lab_site_reads_no_stream_metadata() {
    let w = World::new();
    std::fs::write(w.site(), support::lab::lab_site(3)).unwrap();
    let streams = StreamServer::start(&fcos_streams::document(RELEASE));
    let (ok, text) = w.launch(&streams.base(), &["--dry-run"]);
    assert!(ok, "{text}");
    assert_eq!(streams.hits(), 0, "{text}");
    assert!(
        text.contains("POST /v2/images lab-bookworm from https://lab.invalid/"),
        "{text}"
    );
}

/// A launch imports the current release as an image named after it, with
/// the published checksum in its description; the same release again is
/// adopted; a newer one is a new image; destroy takes both.
#[test]
fn each_release_is_its_own_image_and_an_existing_one_is_adopted() {
    let w = World::new();
    let streams = StreamServer::start(&fcos_streams::document(RELEASE));
    let (ok, text) = w.launch(&streams.base(), &[]);
    assert!(ok, "{text}");
    let images = w.images();
    assert_eq!(images.len(), 1, "{images:#?}");
    assert_eq!(images[0]["name"], format!("fedora-coreos-{RELEASE}"));
    let description = images[0]["description"].as_str().unwrap();
    assert!(
        description.contains(RELEASE) && description.contains(SHA256),
        "{description}"
    );
    let creates = |calls: &[String]| {
        calls
            .iter()
            .filter(|c| c.starts_with("POST /v2/images"))
            .count()
    };
    assert_eq!(creates(&w.fake.calls()), 1);

    let before = w.fake.mutations();
    let (ok, again) = w.launch(&streams.base(), &[]);
    assert!(ok && again.contains("nothing changed"), "{again}");
    assert_eq!(w.fake.mutations(), before, "{again}");

    let newer = "44.20261115.3.0";
    let streams = StreamServer::start(&fcos_streams::document(newer));
    let (ok, text) = w.launch(&streams.base(), &[]);
    assert!(ok, "{text}");
    let mut names: Vec<String> = w
        .images()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("fedora-coreos-{RELEASE}"),
            format!("fedora-coreos-{newer}")
        ]
    );

    let out = Command::new(env!("CARGO_BIN_EXE_builder"))
        .args(["destroy", w.site().to_str().unwrap(), "--all", "--yes"])
        .env("DIGITALOCEAN_API_URL", &w.fake.base)
        .env("DIGITALOCEAN_ACCESS_TOKEN", "test-token")
        .env("BUILDER_VAULT_PASSPHRASE", "test passphrase")
        .env("BUILDER_POLL_MS", "20")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = transcript(&out);
    assert!(out.status.success(), "{text}");
    assert!(w.images().is_empty(), "{text}");
}

/// Each malformation of the document is refused with where and why, and
/// the launch stops before its first call to DigitalOcean.
#[test]
fn a_malformed_document_is_refused_and_nothing_is_created() {
    let w = World::new();
    let good = fcos_streams::document(RELEASE);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut document = good.clone();
        change(&mut document);
        document
    };
    let other = "44.20261025.3.0";
    fn disk(document: &mut Value) -> &mut Value {
        &mut document["architectures"]["x86_64"]["artifacts"]["digitalocean"]["formats"]["qcow2.gz"]
            ["disk"]
    }
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|d| d["stream"] = json!("testing")),
            "at `stream`: the document is of stream `testing`, but `stable` was asked for",
        ),
        (
            with(&|d| {
                d["architectures"]["x86_64"]["artifacts"]
                    .as_object_mut()
                    .unwrap()
                    .remove("digitalocean");
            }),
            "the document has no `digitalocean` artifact for x86_64",
        ),
        (
            with(&|d| {
                d["architectures"].as_object_mut().unwrap().remove("x86_64");
            }),
            "the document has no `x86_64` architecture",
        ),
        (
            with(&|d| {
                disk(d)["location"] =
                    json!(fcos_streams::location(RELEASE).replace("https://", "http://"))
            }),
            "is not an https URL",
        ),
        (
            with(&|d| {
                disk(d)["location"] = json!(
                    fcos_streams::location(RELEASE).replace("fedoraproject.org", "example.org")
                )
            }),
            "is not on builds.coreos.fedoraproject.org",
        ),
        (
            with(&|d| disk(d)["sha256"] = json!(&SHA256[..63])),
            "is not a SHA-256 (64 hexadecimal digits)",
        ),
        (
            with(&|d| disk(d)["location"] = json!(fcos_streams::location(other))),
            "the directory of release 44.20261101.3.0",
        ),
    ];
    for (document, why) in cases {
        let streams = StreamServer::start(&document);
        for args in [&["--dry-run"][..], &[]] {
            let (ok, text) = w.launch(&streams.base(), args);
            assert!(!ok, "{why}: {args:?} succeeded:\n{text}");
            assert!(
                text.contains("the stream metadata at") && text.contains(why),
                "{why}:\n{text}"
            );
            assert!(
                text.contains("pin a release of `stable` in the site file"),
                "{text}"
            );
            assert!(!text.contains("panicked"), "{text}");
        }
        assert_eq!(streams.hits(), 2, "{why}: a refused document was retried");
        assert!(
            w.fake.calls().is_empty(),
            "{why}: DigitalOcean was called: {:?}",
            w.fake.calls()
        );
    }
    // Not JSON at all: the same.
    let streams = StreamServer::serving(b"<html>Service Unavailable</html>".to_vec());
    let (ok, text) = w.launch(&streams.base(), &[]);
    assert!(!ok && text.contains("not JSON"), "{text}");
    assert!(w.fake.calls().is_empty());
}

/// A server that answers 500, or never answers, is tried a bounded number
/// of times (4, the stream client's attempts) and the launch stops with
/// what went wrong and how to pin a release, having created nothing.
#[test]
fn a_failing_server_is_given_up_on_within_bounded_retries() {
    let w = World::new();
    for (server, said) in [
        (
            Failing::start(Behaviour::ServerError),
            "500 Internal Server Error",
        ),
        (Failing::start(Behaviour::Silent), "no answer within 500ms"),
    ] {
        let started = Instant::now();
        let (ok, text) = w.launch(&server.base, &[]);
        let took = started.elapsed();
        assert!(!ok, "{text}");
        assert!(
            text.contains("cannot learn the current Fedora CoreOS release of stream `stable`")
                && text.contains("no usable answer after 4 attempts")
                && text.contains(said)
                && text.contains("pin a release of `stable` in the site file"),
            "{text}"
        );
        assert_eq!(server.requests(), 4, "{text}");
        // Four tries of at most half a second, 50 + 100 + 200 ms apart,
        // and the render before them: far below this however loaded the
        // machine.
        assert!(took < Duration::from_secs(30), "took {took:?}:\n{text}");
        assert!(w.fake.calls().is_empty(), "{:?}", w.fake.calls());
    }
    // A 404 is not retried: the stream is not there.
    let streams = StreamServer::start(&fcos_streams::document(RELEASE));
    let missing = streams.base().replace("/streams/", "/nowhere/");
    let (ok, text) = w.launch(&missing, &["--dry-run"]);
    assert!(!ok && text.contains("404 Not Found"), "{text}");
}

enum Behaviour {
    /// Answers every request with a 500.
    ServerError,
    /// Accepts connections and never answers.
    Silent,
}

/// A loopback server that fails every request, counting them.
struct Failing {
    base: String,
    requests: Arc<AtomicUsize>,
}

impl Failing {
    fn start(behaviour: Behaviour) -> Failing {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/streams/", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                match behaviour {
                    Behaviour::ServerError => {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let Ok(mut writer) = stream.try_clone() else {
                            continue;
                        };
                        if let Ok(Some(_)) =
                            site_lab::http::read_request(&mut BufReader::new(stream))
                        {
                            count.fetch_add(1, Ordering::SeqCst);
                            let _ = site_lab::http::Response::new(500)
                                .with_header("connection", "close")
                                .with_body("down")
                                .write_to(&mut writer, true);
                            let _ = writer.flush();
                        }
                    }
                    Behaviour::Silent => {
                        count.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                }
            }
        });
        Failing { base, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
