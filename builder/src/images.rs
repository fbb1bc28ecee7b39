//! Node images (`images/<name>/image.json`), built into this binary so a
//! rendered config always matches the catalog it was rendered with.

use anyhow::{Context, Result};
use node_contract::Catalog;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    pub description: String,
    pub base: Base,
    pub services: Catalog,
}

/// The operating system an image starts from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub os: String,
    pub stream: String,
    pub release: String,
    pub artifact: String,
    pub sha256: String,
    pub source: String,
}

const DEFINITIONS: &[(&str, &str)] = &[(
    "fedora-coreos",
    include_str!("../../images/fedora-coreos/image.json"),
)];

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
            assert_eq!(image.base.sha256.len(), 64);
            assert!(image.base.artifact.starts_with("https://"));
        }
    }
}
