//! The site file, `hosts.yaml`: parsed once into validated types.

mod error;
mod names;
mod parse;
pub mod yaml;

use std::path::Path;

pub use error::{SiteError, SiteErrors};
pub use names::{
    BaseUrl, BucketName, DomainName, HostName, Realm, Refusal, Slug, SshKey, VpcRange,
};
pub use node_contract::Role;

/// A whole site, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub domain: DomainName,
    pub realm: Realm,
    pub ssh_keys: Vec<SshKey>,
    pub vpc_range: VpcRange,
    pub region: Slug,
    /// The Fedora CoreOS release the site file pins (`defaults.release`);
    /// without one, `launch` imports the stream's current release.
    pub release: Option<crate::images::release::Release>,
    pub publish: Publish,
    /// In site-file order; the first core host is the bootstrap host.
    pub hosts: Vec<Host>,
}

/// One host with the defaults already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: HostName,
    pub role: Role,
    pub size: Slug,
    pub image: String,
    pub volumes: Volumes,
}

/// Block storage of one host, in GiB; 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volumes {
    pub data_gib: u32,
    pub swap_gib: u32,
}

/// Where the firstboot binary is published for nodes to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// An HTTP(S) base URL the operator serves.
    BaseUrl(BaseUrl),
    /// A DigitalOcean Spaces bucket.
    Spaces { bucket: BucketName, region: Slug },
}

impl Publish {
    /// The base URL nodes fetch from.
    pub fn base_url(&self) -> String {
        match self {
            Publish::BaseUrl(url) => url.as_str().to_owned(),
            Publish::Spaces { bucket, region } => {
                format!("https://{bucket}.{region}.digitaloceanspaces.com")
            }
        }
    }
}

/// The error for bytes that are not text, at the first that is not.
fn not_text(file: &str, bytes: &[u8], offset: usize) -> SiteErrors {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    let byte = bytes.get(offset).copied().unwrap_or(0);
    SiteErrors(vec![SiteError {
        file: file.to_owned(),
        pos: yaml::Pos { line, col },
        message: format!("the site file is not text (byte {offset} is 0x{byte:02x})"),
        help: Some(
            "is this the right file? a site file is YAML text, such as examples/hosts.yaml".into(),
        ),
    }])
}

impl Site {
    /// Parse a site file's text. `file` names it in errors.
    pub fn parse(file: &str, source: &str) -> Result<Site, SiteErrors> {
        parse::site(file, source)
    }

    /// Parse a site file's bytes: anything but text (not UTF-8, or with
    /// a NUL byte) is refused at the first byte that is not.
    pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Site, SiteErrors> {
        let valid = match std::str::from_utf8(bytes) {
            Ok(_) => bytes.len(),
            Err(e) => e.valid_up_to(),
        };
        // The first byte that text does not hold: a NUL, or one that is
        // not UTF-8.
        let nul = bytes[..valid].iter().position(|b| *b == 0);
        if let Some(offset) = nul.or((valid < bytes.len()).then_some(valid)) {
            return Err(not_text(file, bytes, offset));
        }
        let text = std::str::from_utf8(bytes).expect("checked to be UTF-8");
        Site::parse(file, text)
    }

    /// Read and parse a site file.
    pub fn load(path: &Path) -> anyhow::Result<(Site, String)> {
        use anyhow::Context;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the site file {}", path.display()))?;
        let source = String::from_utf8_lossy(&bytes).into_owned();
        let site = Site::parse_bytes(&path.display().to_string(), &bytes)
            .map_err(|e| crate::Reported(e.render(&source)))?;
        Ok((site, source))
    }

    pub fn fqdn(&self, host: &Host) -> String {
        format!("{}.{}", host.name, self.domain)
    }

    /// The bootstrap host: the first core host.
    pub fn bootstrap(&self) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == Role::Core)
            .expect("a parsed site has core hosts")
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name.as_str() == name)
    }

    /// A DigitalOcean resource name unique to this site: `<host>-<domain
    /// with dashes>-<what>`, which volume names need (they are unique per
    /// region across the whole account).
    pub fn resource_name(&self, host: &Host, what: &str) -> String {
        format!(
            "{}-{}-{what}",
            host.name,
            self.domain.as_str().replace('.', "-")
        )
    }
}
