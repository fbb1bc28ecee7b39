//! The one module that knows the Ignition spec: it turns a plain
//! description of a node into spec 3.3.0 JSON through `ignition-config`.
//! Fedora CoreOS reads 3.x, Flatcar reads 3.3 and Debian's Ignition 2.14
//! (the lab) reads up to 3.3, so 3.3.0 is what every consumer accepts.

use std::io::Write;

use base64::Engine;
use ignition_config::v3_3 as spec;

/// The spec version every rendered config declares.
pub const SPEC_VERSION: &str = "3.3.0";

/// What one node gets, independent of the spec's shape.
#[derive(Debug, Default)]
pub struct NodeIgnition {
    pub hostname: String,
    pub user: String,
    pub ssh_keys: Vec<String>,
    pub files: Vec<FileEntry>,
    pub units: Vec<UnitEntry>,
    pub filesystems: Vec<FilesystemEntry>,
}

#[derive(Debug)]
pub struct FileEntry {
    pub path: String,
    pub mode: u32,
    pub contents: Contents,
}

#[derive(Debug)]
pub enum Contents {
    /// Small text, readable in the config.
    Text(String),
    /// Carried gzip-compressed: smaller user data for larger files.
    Compressed(Vec<u8>),
    /// Fetched by Ignition and checked against its sha512 (hex).
    Remote { url: String, sha512: String },
}

#[derive(Debug)]
pub struct UnitEntry {
    pub name: String,
    pub contents: String,
    pub enabled: bool,
}

#[derive(Debug)]
pub struct FilesystemEntry {
    pub device: String,
    pub format: String,
    pub label: String,
}

/// Render to compact JSON with a final newline. Fields the spec leaves
/// unset are omitted, not written as `null`: that keeps user data small
/// and the file readable.
pub fn render(node: &NodeIgnition) -> Vec<u8> {
    let config = build(node);
    let mut value = serde_json::to_value(&config).expect("an Ignition config serialises");
    strip_nulls(&mut value);
    let mut out = serde_json::to_vec(&value).expect("JSON serialises");
    out.push(b'\n');
    out
}

fn build(node: &NodeIgnition) -> spec::Config {
    let mut config = spec::Config::default();
    debug_assert_eq!(config.ignition.version.as_deref(), Some(SPEC_VERSION));

    let mut user = spec::User::new(node.user.clone());
    user.ssh_authorized_keys = Some(node.ssh_keys.clone());
    config.passwd = Some(spec::Passwd {
        groups: None,
        users: Some(vec![user]),
    });

    let mut files = vec![file(
        "/etc/hostname",
        0o644,
        &Contents::Text(format!("{}\n", node.hostname)),
    )];
    files.extend(
        node.files
            .iter()
            .map(|f| file(&f.path, f.mode, &f.contents)),
    );

    let filesystems: Vec<spec::Filesystem> = node
        .filesystems
        .iter()
        .map(|fs| {
            let mut entry = spec::Filesystem::new(fs.device.clone());
            entry.format = Some(fs.format.clone());
            entry.label = Some(fs.label.clone());
            // A rebuilt droplet keeps its volume's data.
            entry.wipe_filesystem = Some(false);
            entry
        })
        .collect();

    config.storage = Some(spec::Storage {
        files: Some(files),
        filesystems: (!filesystems.is_empty()).then_some(filesystems),
        ..Default::default()
    });

    let units = node
        .units
        .iter()
        .map(|u| {
            let mut unit = spec::Unit::new(u.name.clone());
            unit.contents = Some(u.contents.clone());
            unit.enabled = u.enabled.then_some(true);
            unit
        })
        .collect();
    config.systemd = Some(spec::Systemd { units: Some(units) });
    config
}

fn file(path: &str, mode: u32, contents: &Contents) -> spec::File {
    let mut entry = spec::File::new(path.to_owned());
    entry.mode = Some(i64::from(mode));
    entry.overwrite = Some(true);
    let mut resource = spec::Resource::default();
    match contents {
        Contents::Text(text) => resource.source = Some(data_url(text.as_bytes())),
        Contents::Compressed(bytes) => {
            resource.compression = Some("gzip".into());
            resource.source = Some(format!(
                "data:;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(gzip(bytes))
            ));
        }
        Contents::Remote { url, sha512 } => {
            resource.source = Some(url.clone());
            resource.verification = Some(spec::Verification {
                hash: Some(format!("sha512-{sha512}")),
            });
        }
    }
    entry.contents = Some(resource);
    entry
}

/// An RFC 2397 data URL with every byte outside the unreserved set
/// percent-encoded.
fn data_url(bytes: &[u8]) -> String {
    let mut out = String::from("data:,");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Deterministic gzip: no file name, modification time zero.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeIgnition {
        NodeIgnition {
            hostname: "ns1.example.com".into(),
            user: "core".into(),
            ssh_keys: vec!["ssh-ed25519 AAAA test".into()],
            files: vec![FileEntry {
                path: "/etc/x".into(),
                mode: 0o600,
                contents: Contents::Compressed(b"{\"a\": 1}\n".to_vec()),
            }],
            units: vec![UnitEntry {
                name: "a.service".into(),
                contents: "[Service]\n".into(),
                enabled: true,
            }],
            filesystems: vec![],
        }
    }

    #[test]
    fn output_parses_back_as_3_3_0_without_warnings() {
        let json = render(&sample());
        let (config, warnings) = ignition_config::Config::parse_slice(&json).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(matches!(config, ignition_config::Config::V3_3(_)));
        assert!(!String::from_utf8(json).unwrap().contains("null"));
    }

    #[test]
    fn data_urls_escape_everything_but_unreserved() {
        assert_eq!(data_url(b"a b/\n~"), "data:,a%20b%2F%0A~");
    }

    #[test]
    fn gzip_is_deterministic() {
        assert_eq!(gzip(b"same"), gzip(b"same"));
    }
}
