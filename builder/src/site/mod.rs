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

impl Site {
    /// Parse a site file's text. `file` names it in errors.
    pub fn parse(file: &str, source: &str) -> Result<Site, SiteErrors> {
        parse::site(file, source)
    }

    /// Read and parse a site file.
    pub fn load(path: &Path) -> anyhow::Result<(Site, String)> {
        use anyhow::Context;
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the site file {}", path.display()))?;
        let site = Site::parse(&path.display().to_string(), &source)
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
