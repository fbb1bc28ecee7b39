//! Fedora CoreOS stream metadata for tests: the hand-written document of
//! tests/fixtures/fcos-stream-stable.json (the published shape, made-up
//! values), with its release replaced where a test wants another, and a
//! loopback server for it. `builder launch` reads it there through
//! `BUILDER_FCOS_STREAMS_URL`, so no test reaches Fedora's servers.

use serde_json::Value;

/// The fixture's current release.
pub const RELEASE: &str = "44.20261101.3.0";
/// The SHA-256 the fixture publishes for its disks.
pub const SHA256: &str = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c0b2d4f6e8a1c3e5b7d9f0a2c4e6b8d0f";
pub const LAST_MODIFIED: &str = "2026-11-20T12:34:56Z";
/// Where every published disk lies.
pub const ARTIFACTS: &str = "https://builds.coreos.fedoraproject.org/prod/streams/";

/// The disk's URL of `release` of the stable stream.
pub fn location(release: &str) -> String {
    format!(
        "{ARTIFACTS}stable/builds/{release}/x86_64/fedora-coreos-{release}-digitalocean.x86_64.qcow2.gz"
    )
}

/// The stable stream's document with `release` current.
pub fn document(release: &str) -> Value {
    let text =
        std::fs::read_to_string(super::site::repo().join("tests/fixtures/fcos-stream-stable.json"))
            .unwrap();
    serde_json::from_str(&text.replace(RELEASE, release)).unwrap()
}

/// Serves `document` as the stable stream's metadata on loopback, and
/// counts the requests for it.
pub struct StreamServer {
    files: site_lab::http::FileServer,
}

pub const PATH: &str = "/streams/stable.json";

impl StreamServer {
    pub fn start(document: &Value) -> StreamServer {
        StreamServer::serving(document.to_string().into_bytes())
    }

    /// Serves these bytes, whatever they are.
    pub fn serving(body: Vec<u8>) -> StreamServer {
        let files = site_lab::http::FileServer::start(vec![(PATH.to_owned(), body)]).unwrap();
        StreamServer { files }
    }

    /// What `BUILDER_FCOS_STREAMS_URL` is set to.
    pub fn base(&self) -> String {
        self.files.url("/streams/")
    }

    /// Requests for the stable stream's document so far.
    pub fn hits(&self) -> usize {
        self.files.hits(PATH)
    }
}
