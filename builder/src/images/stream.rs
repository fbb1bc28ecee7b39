//! Fedora CoreOS's stream metadata, read strictly: the DigitalOcean disk
//! of a stream's current release, or a refusal that says what is wrong
//! and where in the document.
//!
//! The format, as published at
//! `https://builds.coreos.fedoraproject.org/streams/<stream>.json` and kept
//! in coreos/fedora-coreos-streams (`streams/stable.json`; its types are
//! coreos/stream-metadata-go `stream/stream.go` and
//! coreos/stream-metadata-rust `src/lib.rs`): an object with `stream`,
//! `metadata.last-modified` and `architectures.<arch>.artifacts.<platform>`,
//! each platform with its `release` and `formats.<format>.disk`, a disk
//! with `location`, `sha256`, `signature` and, when compressed,
//! `uncompressed-sha256`. For DigitalOcean the platform is `digitalocean`
//! and the format `qcow2.gz`. Upstream promises this format to be stable
//! (coreos/fedora-coreos-tracker `Design.md`, "Bucket layout"); only the
//! fields read here are checked, so that a new platform or field does not
//! stop a launch.

use std::fmt;

use serde_json::Value;

use super::release::Release;

/// The architecture of every droplet.
pub const ARCH: &str = "x86_64";
pub const PLATFORM: &str = "digitalocean";
pub const FORMAT: &str = "qcow2.gz";

/// The DigitalOcean disk of a stream's current release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub stream: String,
    /// When the document was last changed, as it says (RFC 3339).
    pub last_modified: String,
    pub release: Release,
    /// The compressed disk's URL, under the image's artifact base.
    pub location: String,
    /// The SHA-256 of the compressed disk, as downloaded, in lower-case hex.
    pub sha256: String,
}

/// A document refused: `at` is the field (a dotted path into the JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub at: String,
    pub why: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at `{}`: {}", self.at, self.why)
    }
}

impl std::error::Error for Refused {}

fn refused(at: &str, why: impl Into<String>) -> Refused {
    Refused {
        at: at.to_owned(),
        why: why.into(),
    }
}

/// Read the document `text` of stream `stream`, whose disks must lie
/// under `artifacts` (an https base ending in `/`, such as
/// `https://builds.coreos.fedoraproject.org/prod/streams/`), each in its
/// stream's and release's directory: `<artifacts><stream>/builds/<release>/`.
pub fn parse(text: &[u8], stream: &str, artifacts: &str) -> Result<Current, Refused> {
    let document: Value = serde_json::from_slice(text)
        .map_err(|e| refused("(the document)", format!("not JSON: {e}")))?;
    if !document.is_object() {
        return Err(refused(
            "(the document)",
            format!("a JSON object was expected, not {}", kind(&document)),
        ));
    }
    let named = string(&document, &["stream"])?;
    if named != stream {
        return Err(refused(
            "stream",
            format!("the document is of stream `{named}`, but `{stream}` was asked for"),
        ));
    }
    let last_modified = string(&document, &["metadata", "last-modified"])?;
    if !is_timestamp(last_modified) {
        return Err(refused(
            "metadata.last-modified",
            format!("`{}` is not a timestamp", shown(last_modified)),
        ));
    }
    let platform = ["architectures", ARCH, "artifacts", PLATFORM];
    let release_path = [&platform[..], &["release"]].concat();
    let release = Release::parse(string(&document, &release_path)?)
        .map_err(|r| refused(&release_path.join("."), r.message))?;
    let disk = [&platform[..], &["formats", FORMAT, "disk"]].concat();
    let at = |field: &'static str| [&disk[..], &[field]].concat();

    let location = string(&document, &at("location"))?;
    let location = check_location(location, stream, &release, artifacts)
        .map_err(|why| refused(&at("location").join("."), why))?;
    let sha256 = string(&document, &at("sha256"))?;
    if !is_sha256(sha256) {
        return Err(refused(
            &at("sha256").join("."),
            format!(
                "`{}` is not a SHA-256 (64 hexadecimal digits)",
                shown(sha256)
            ),
        ));
    }
    Ok(Current {
        stream: stream.to_owned(),
        last_modified: last_modified.to_owned(),
        release,
        location,
        sha256: sha256.to_ascii_lowercase(),
    })
}

/// The string at `path`, or a refusal naming the first step that is
/// missing or of another type.
fn string<'v>(document: &'v Value, path: &[&str]) -> Result<&'v str, Refused> {
    let mut value = document;
    for (depth, key) in path.iter().enumerate() {
        let at = path[..=depth].join(".");
        value = match value {
            Value::Object(map) => map.get(*key).ok_or_else(|| {
                refused(
                    &at,
                    match depth {
                        // The platforms and formats are the usual absences:
                        // say what was looked for in words.
                        1 if path[0] == "architectures" => {
                            format!("the document has no `{key}` architecture")
                        }
                        3 if path[2] == "artifacts" => {
                            format!("the document has no `{key}` artifact for {}", path[1])
                        }
                        5 if path[4] == "formats" => {
                            format!("the `{}` artifact has no `{key}` format", path[3])
                        }
                        _ => "missing".to_owned(),
                    },
                )
            })?,
            other => {
                let parent = if depth == 0 {
                    "(the document)".to_owned()
                } else {
                    path[..depth].join(".")
                };
                return Err(refused(
                    &parent,
                    format!("an object was expected, not {}", kind(other)),
                ));
            }
        };
    }
    value.as_str().ok_or_else(|| {
        refused(
            &path.join("."),
            format!("a string was expected, not {}", kind(value)),
        )
    })
}

/// The location as a URL, if it is an https URL of a file in the
/// directory of this stream's `release` under `artifacts`. The directory
/// carries both names (`<artifacts><stream>/builds/<release>/x86_64/`), as
/// every disk of the published documents does: a location elsewhere would
/// import another release than the one the image is named after.
fn check_location(
    location: &str,
    stream: &str,
    release: &Release,
    artifacts: &str,
) -> Result<String, String> {
    let url = url::Url::parse(location)
        .map_err(|e| format!("`{}` is not a URL ({e})", shown(location)))?;
    if url.scheme() != "https" {
        return Err(format!(
            "`{}` is not an https URL: DigitalOcean would download the disk unprotected",
            shown(location)
        ));
    }
    let base = url::Url::parse(artifacts).map_err(|e| format!("the image's base: {e}"))?;
    if url.host_str() != base.host_str() || url.port().is_some() {
        return Err(format!(
            "`{}` is not on {}, where Fedora CoreOS publishes its disks",
            shown(location),
            base.host_str().unwrap_or(artifacts)
        ));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!(
            "`{}` carries a user, a query or a fragment, which no published disk's URL has",
            shown(location)
        ));
    }
    // The URL as parsed: dot segments resolved and escapes normalised, so
    // `…/builds/<release>/../<other>/` does not pass for the release's.
    let directory = format!("{artifacts}{stream}/builds/{release}/{ARCH}/");
    let file = url.as_str().strip_prefix(&directory);
    if !file.is_some_and(|file| !file.is_empty() && !file.contains('/')) {
        return Err(format!(
            "`{}` is not a file in {directory}, the directory of release {release}",
            shown(location)
        ));
    }
    Ok(url.to_string())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `2026-11-20T12:00:00Z` and its kin: digits, `-`, `:`, `.`, `+`, `T`,
/// `Z`, starting with a date. Shown to the operator, so nothing else.
fn is_timestamp(s: &str) -> bool {
    let bytes = s.as_bytes();
    (10..=40).contains(&bytes.len())
        && bytes[..10].iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && bytes[10..]
            .iter()
            .all(|b| b.is_ascii_digit() || b"-:.+TZ".contains(b))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value from the document as it may be shown: at most 120 characters,
/// control characters escaped.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(120).flat_map(char::escape_debug).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARTIFACTS: &str = "https://builds.coreos.fedoraproject.org/prod/streams/";
    /// The fixture's current release and the checksum it publishes.
    const RELEASE: &str = "44.20261101.3.0";
    const SHA: &str = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c0b2d4f6e8a1c3e5b7d9f0a2c4e6b8d0f";

    /// A document of the published shape, written for the tests (see
    /// tests/fixtures/README.md), with another platform and another
    /// architecture beside the one read.
    fn document() -> Value {
        serde_json::from_str(include_str!(
            "../../../tests/fixtures/fcos-stream-stable.json"
        ))
        .unwrap()
    }

    fn read(document: &Value) -> Result<Current, Refused> {
        parse(document.to_string().as_bytes(), "stable", ARTIFACTS)
    }

    const DISK: &str = "architectures.x86_64.artifacts.digitalocean.formats.qcow2.gz.disk";

    #[test]
    fn the_current_disk_is_read() {
        let current = read(&document()).unwrap();
        assert_eq!(current.release.as_str(), RELEASE);
        assert_eq!(current.last_modified, "2026-11-20T12:34:56Z");
        assert_eq!(current.sha256, SHA);
        assert_eq!(
            current.location,
            format!(
                "{ARTIFACTS}stable/builds/{RELEASE}/x86_64/fedora-coreos-{RELEASE}-digitalocean.x86_64.qcow2.gz"
            )
        );
        // Upper-case hex is the same digest.
        let mut upper = document();
        upper["architectures"]["x86_64"]["artifacts"]["digitalocean"]["formats"]["qcow2.gz"]
            ["disk"]["sha256"] = json!(SHA.to_uppercase());
        assert_eq!(read(&upper).unwrap().sha256, SHA);
    }

    /// Each malformation, the field it is refused at and a word of why.
    #[test]
    fn every_malformation_is_refused_where_it_is() {
        let disk_field = |field: &str| format!("{DISK}.{field}");
        let set = |path: &[&str], value: Value| {
            let mut d = document();
            let mut at = &mut d;
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            at[path[path.len() - 1]] = value;
            d
        };
        let remove = |path: &[&str]| {
            let mut d = document();
            let mut at = &mut d;
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            at.as_object_mut().unwrap().remove(path[path.len() - 1]);
            d
        };
        let platform = ["architectures", "x86_64", "artifacts", "digitalocean"];
        let disk = |field: &'static str| -> Vec<&'static str> {
            let mut p = platform.to_vec();
            p.extend(["formats", "qcow2.gz", "disk", field]);
            p
        };
        let elsewhere = |url: &str| set(&disk("location"), json!(url));
        let other_release = "44.20261025.3.0";
        let cases: Vec<(Value, String, &str)> = vec![
            (
                set(&["stream"], json!("testing")),
                "stream".into(),
                "of stream `testing`, but `stable` was asked",
            ),
            (remove(&["stream"]), "stream".into(), "missing"),
            (
                set(&["stream"], json!(3)),
                "stream".into(),
                "a string was expected, not a number",
            ),
            (
                remove(&["architectures", "x86_64"]),
                "architectures.x86_64".into(),
                "no `x86_64` architecture",
            ),
            (
                remove(&["architectures", "x86_64", "artifacts", "digitalocean"]),
                "architectures.x86_64.artifacts.digitalocean".into(),
                "no `digitalocean` artifact for x86_64",
            ),
            (
                remove(&[
                    "architectures",
                    "x86_64",
                    "artifacts",
                    "digitalocean",
                    "formats",
                    "qcow2.gz",
                ]),
                "architectures.x86_64.artifacts.digitalocean.formats.qcow2.gz".into(),
                "no `qcow2.gz` format",
            ),
            (
                set(&["architectures", "x86_64", "artifacts"], json!([])),
                "architectures.x86_64.artifacts".into(),
                "an object was expected, not an array",
            ),
            (
                set(&["metadata", "last-modified"], json!("yesterday\u{1b}[31m")),
                "metadata.last-modified".into(),
                "not a timestamp",
            ),
            (
                elsewhere(&format!(
                    "http://builds.coreos.fedoraproject.org/prod/streams/stable/builds/{RELEASE}/x86_64/d.qcow2.gz"
                )),
                disk_field("location"),
                "not an https URL",
            ),
            (
                elsewhere(&format!(
                    "https://builds.coreos.example.org/prod/streams/stable/builds/{RELEASE}/x86_64/d.qcow2.gz"
                )),
                disk_field("location"),
                "not on builds.coreos.fedoraproject.org",
            ),
            (
                elsewhere(&format!(
                    "https://builds.coreos.fedoraproject.org.example.org/prod/streams/stable/builds/{RELEASE}/d"
                )),
                disk_field("location"),
                "not on builds.coreos.fedoraproject.org",
            ),
            (
                elsewhere(&format!(
                    "https://user@builds.coreos.fedoraproject.org/prod/streams/stable/builds/{RELEASE}/x86_64/d"
                )),
                disk_field("location"),
                "carries a user, a query or a fragment",
            ),
            (
                elsewhere(&format!(
                    "https://builds.coreos.fedoraproject.org/prod/streams/stable/builds/{RELEASE}/x86_64/d?x=1"
                )),
                disk_field("location"),
                "carries a user, a query or a fragment",
            ),
            (
                elsewhere(&format!(
                    "https://builds.coreos.fedoraproject.org:8443/prod/streams/stable/builds/{RELEASE}/x86_64/d"
                )),
                disk_field("location"),
                "not on builds.coreos.fedoraproject.org",
            ),
            (
                elsewhere(&format!("{ARTIFACTS}stable/builds/{RELEASE}/aarch64/d.qcow2.gz")),
                disk_field("location"),
                "not a file in",
            ),
            (
                elsewhere(&format!(
                    "{ARTIFACTS}stable/builds/{other_release}/x86_64/fedora-coreos-{other_release}-digitalocean.x86_64.qcow2.gz"
                )),
                disk_field("location"),
                "directory of release 44.20261101.3.0",
            ),
            (
                elsewhere(&format!(
                    "{ARTIFACTS}stable/builds/{RELEASE}/../{other_release}/x86_64/d.qcow2.gz"
                )),
                disk_field("location"),
                "directory of release",
            ),
            (
                elsewhere(&format!("{ARTIFACTS}testing/builds/{RELEASE}/x86_64/d.qcow2.gz")),
                disk_field("location"),
                "directory of release",
            ),
            (
                elsewhere(&format!("{ARTIFACTS}stable/builds/{RELEASE}/x86_64/")),
                disk_field("location"),
                "not a file in",
            ),
            (
                elsewhere("builds.coreos.fedoraproject.org/prod/streams"),
                disk_field("location"),
                "not a URL",
            ),
            (
                set(&disk("sha256"), json!(&SHA[1..])),
                disk_field("sha256"),
                "not a SHA-256",
            ),
            (
                set(&disk("sha256"), json!(format!("{}g", &SHA[1..]))),
                disk_field("sha256"),
                "not a SHA-256",
            ),
            (remove(&disk("sha256")), disk_field("sha256"), "missing"),
            (
                set(
                    &["architectures", "x86_64", "artifacts", "digitalocean", "release"],
                    json!("44.2026.3.0"),
                ),
                "architectures.x86_64.artifacts.digitalocean.release".into(),
                "not a Fedora CoreOS release",
            ),
        ];
        for (document, at, why) in cases {
            let refusal = read(&document).expect_err(why);
            assert_eq!(refusal.at, at, "{refusal}");
            assert!(refusal.why.contains(why), "{why}: {refusal}");
        }
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        for (text, why) in [
            (&b""[..], "not JSON"),
            (b"{\"stream\": ", "not JSON"),
            (b"\xff\xfe", "not JSON"),
            (b"[1, 2]", "not an array"),
            (b"null", "not null"),
        ] {
            let refusal = parse(text, "stable", ARTIFACTS).unwrap_err();
            assert_eq!(refusal.at, "(the document)");
            assert!(refusal.why.contains(why), "{refusal}");
        }
    }

    /// Bad input never panics: every prefix of a good document, and the
    /// document with each byte replaced, is read or refused.
    #[test]
    fn no_truncation_or_corruption_panics() {
        let text = serde_json::to_vec_pretty(&document()).unwrap();
        for end in 0..text.len() {
            assert!(parse(&text[..end], "stable", ARTIFACTS).is_err(), "{end}");
        }
        for (i, replacement) in (0..text.len())
            .step_by(7)
            .zip([b'"', b'0', b'/', 0xff].iter().cycle())
        {
            let mut corrupt = text.clone();
            corrupt[i] = *replacement;
            let _ = parse(&corrupt, "stable", ARTIFACTS);
        }
    }

    /// What the operator is shown of a value is bounded and printable.
    #[test]
    fn shown_values_are_short_and_escaped() {
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), 121);
        assert_eq!(shown("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
