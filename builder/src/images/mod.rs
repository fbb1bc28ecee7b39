//! Node images (`images/<name>/image.json`), built into this binary so a
//! rendered config always matches the catalog it was rendered with; and
//! the Fedora CoreOS release a launch imports (`release`, `stream`,
//! `fcos_streams`).

pub mod fcos_streams;
pub mod release;
pub mod stream;

use anyhow::{Context, Result};
use node_contract::Catalog;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    pub description: String,
    pub base: Base,
    pub platform: Platform,
    pub services: Catalog,
}

/// What the platform the image runs on provides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// The metadata service's address: 169.254.169.254 on DigitalOcean, a
    /// lab address (never the real one) in the lab.
    pub metadata: std::net::Ipv4Addr,
    /// The systemd services that may reach it (the guard matches their
    /// cgroup): firstboot's, and the platform agent's that read it.
    pub metadata_clients: Vec<String>,
}

/// The operating system an image starts from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "os", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Base {
    /// A release of a Fedora CoreOS stream, imported into DigitalOcean as
    /// a custom image: the stream's current release, from its metadata,
    /// unless the site file pins one.
    FedoraCoreos {
        /// `stable`, `testing` or `next`.
        stream: String,
        /// Where the stream metadata is read: `<metadata><stream>.json`.
        metadata: String,
        /// Where every disk of the stream lies: a location the metadata
        /// gives elsewhere is refused, and a pinned release's disk is
        /// `<artifacts><stream>/builds/<release>/x86_64/…`.
        artifacts: String,
    },
    /// A debootstrapped Debian root: the lab's nodes.
    Debian {
        suite: String,
        variant: String,
        packages: Vec<String>,
        disable: Vec<String>,
    },
}

const DEFINITIONS: &[(&str, &str)] = &[
    (
        "fedora-coreos",
        include_str!("../../../images/fedora-coreos/image.json"),
    ),
    ("lab", include_str!("../../../images/lab/image.json")),
];

/// The image of lab nodes, which boot on one machine instead of DigitalOcean.
pub const LAB: &str = "lab";

/// Names of the images this builder knows.
pub fn names() -> Vec<&'static str> {
    DEFINITIONS.iter().map(|(name, _)| *name).collect()
}

pub fn load(name: &str) -> Result<Image> {
    let (_, text) = DEFINITIONS
        .iter()
        .find(|(n, _)| *n == name)
        .with_context(|| format!("no image named `{name}`"))?;
    serde_json::from_str(text).with_context(|| format!("images/{name}/image.json is malformed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_image_loads_and_matches_its_name() {
        for name in super::names() {
            let image = super::load(name).unwrap();
            assert_eq!(image.name, name);
            assert!(
                image
                    .platform
                    .metadata_clients
                    .iter()
                    .any(|c| c == "firstboot.service"),
                "{name}: firstboot reads the metadata service"
            );
            for client in &image.platform.metadata_clients {
                assert!(
                    node_contract::guard::is_service_name(client),
                    "{name}: `{client}` is not a service name"
                );
            }
            if let super::Base::FedoraCoreos {
                stream,
                metadata,
                artifacts,
            } = &image.base
            {
                for base in [metadata, artifacts] {
                    assert!(
                        base.starts_with("https://") && base.ends_with('/'),
                        "{name}: `{base}` is not an https base ending in /"
                    );
                    url::Url::parse(base).unwrap();
                }
                assert_eq!(stream, "stable", "{name}: production follows stable");
            }
        }
    }

    /// `launch --help` names the stream metadata's default where the
    /// image says it is.
    #[test]
    fn the_help_names_the_images_stream_metadata() {
        use clap::CommandFactory;
        let super::Base::FedoraCoreos { metadata, .. } = super::load("fedora-coreos").unwrap().base
        else {
            panic!("fedora-coreos is not a Fedora CoreOS image");
        };
        let launch = crate::cli::Cli::command();
        let help = launch
            .find_subcommand("launch")
            .and_then(|c| c.get_arguments().find(|a| a.get_id() == "fcos_streams_url"))
            .and_then(|a| a.get_help())
            .map(|h| h.to_string().replace('\n', " "))
            .unwrap_or_default();
        assert!(help.contains(&format!("[default: {metadata}]")), "{help}");
    }

    /// Every service a shipped unit starts (`firstboot exec SERVICE`) is
    /// in every image's catalog: a missing one would fail on the node,
    /// minutes into its first boot.
    #[test]
    fn every_image_runs_every_service_the_units_start() {
        let started: Vec<&str> = crate::render::units::SHIPPED
            .iter()
            .flat_map(|unit| unit.contents.lines())
            .filter_map(|line| line.strip_prefix("ExecStart=/usr/local/bin/firstboot exec "))
            .map(str::trim)
            .collect();
        assert!(started.len() >= 3, "{started:?}");
        for name in super::names() {
            let image = super::load(name).unwrap();
            for service in &started {
                assert!(
                    image.services.contains_key(*service),
                    "images/{name}/image.json has no `{service}`"
                );
            }
        }
    }
}
