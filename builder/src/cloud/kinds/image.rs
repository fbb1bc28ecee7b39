//! The node image: a custom image imported from its release's artifact
//! URL, carrying the site's tag. Launch first chooses the release (the
//! site file's pin, else the stream's current one from its metadata),
//! then waits for the import (slow: DigitalOcean downloads and converts
//! about 700 MB); destroy (`--all`) deletes every release of it the site
//! has imported.
//!
//! DigitalOcean's create-custom-image call takes a URL and nothing to
//! check the download against (`image_new_custom` in its OpenAPI spec:
//! name, url, region, distribution, description, tags): DigitalOcean
//! downloads the disk itself. The SHA-256 the stream metadata publishes is
//! therefore recorded in the image's description, where an operator can
//! compare it, and is not verified by DigitalOcean.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::Kind;
use crate::cloud::launch::{Launch, Outcome};
use crate::cloud::plan::Plan;
use crate::images::fcos_streams::StreamsClient;
use crate::images::release::Release;
use crate::images::stream::{ARCH, FORMAT, PLATFORM};
use crate::images::{self, Base};
use crate::log::{elapsed, Waiting};
use crate::site::Site;

/// The image the site's droplets boot, as far as the site file says.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// The image of the site file (`fedora-coreos`, or `lab`).
    pub image: String,
    pub base: BasePlan,
}

/// Where the image's release comes from.
#[derive(Debug, Clone)]
pub enum BasePlan {
    /// A Fedora CoreOS stream: `pinned` in the site file, else the
    /// current release of the stream's metadata at `metadata`.
    FedoraCoreos {
        stream: String,
        metadata: String,
        artifacts: String,
        pinned: Option<Release>,
    },
    /// The lab image, which boots only in a lab cloud (tests/support/
    /// lab_cloud.rs): that cloud has it and imports nothing, so nothing is
    /// read to choose it.
    Lab { suite: String },
}

/// The image launch imports (or adopts, by name), its release chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub name: String,
    pub url: String,
    pub distribution: String,
    pub description: String,
    /// Which release, and why, for the operator.
    pub why: String,
    /// The SHA-256 of the disk the metadata published, if it was read.
    pub sha256: Option<String>,
}

impl ImagePlan {
    /// The one image every host of the site boots.
    pub fn for_site(site: &Site) -> Result<ImagePlan> {
        let mut image_names = site.hosts.iter().map(|h| h.image.as_str());
        let image_name = image_names.next().unwrap_or("fedora-coreos");
        if let Some(other) = image_names.find(|n| *n != image_name) {
            bail!(
                "hosts use two images ({image_name} and {other}); a launch imports one: \
                 give every host the same `image`"
            );
        }
        let base = match images::load(image_name)?.base {
            Base::FedoraCoreos {
                stream,
                metadata,
                artifacts,
            } => BasePlan::FedoraCoreos {
                stream,
                metadata,
                artifacts,
                pinned: site.release.clone(),
            },
            Base::Debian { suite, .. } => BasePlan::Lab { suite },
        };
        Ok(ImagePlan {
            image: image_name.to_owned(),
            base,
        })
    }

    /// Whether `name` is one of this image's names: `<image>-<release>`
    /// for any release (a site keeps each release it imported until
    /// destroy), the lab image's one name.
    pub fn names(&self, name: &str) -> bool {
        match &self.base {
            BasePlan::FedoraCoreos { .. } => name
                .strip_prefix(&format!("{}-", self.image))
                .is_some_and(|release| Release::parse(release).is_ok()),
            BasePlan::Lab { suite } => name == format!("{}-{suite}", self.image),
        }
    }

    /// What the site file says of the image to import: all of it for a
    /// pinned release and the lab image, or which stream's metadata to
    /// read.
    pub fn choice(&self) -> Choice<'_> {
        match &self.base {
            BasePlan::FedoraCoreos {
                stream,
                artifacts,
                pinned: Some(release),
                ..
            } => Choice::Known(self.fedora_coreos(
                release,
                // Fedora CoreOS's own layout, as every published location
                // has it (`stream::parse` refuses one elsewhere). Upstream
                // keeps the right to change it, which a pin accepts: a
                // missing disk fails DigitalOcean's import, which says so.
                format!(
                    "{artifacts}{stream}/builds/{release}/{ARCH}/fedora-coreos-{release}-{PLATFORM}.{ARCH}.{FORMAT}",
                ),
                None,
                "pinned in the site file (`defaults.release`); the stream metadata was not read"
                    .into(),
            )),
            BasePlan::FedoraCoreos {
                stream,
                metadata,
                artifacts,
                pinned: None,
            } => Choice::Current {
                stream,
                metadata,
                artifacts,
            },
            // The URL names the lab image in the `.invalid` domain, which
            // resolves nowhere, and `launch` refuses the lab image against
            // DigitalOcean's API.
            BasePlan::Lab { suite } => Choice::Known(Import {
                name: format!("{}-{suite}", self.image),
                url: format!("https://{0}.invalid/{0}-{suite}.img", self.image),
                distribution: "Debian".into(),
                description: format!("the lab image (Debian {suite}), for a lab cloud only"),
                why: "the lab image, which a lab cloud has; nothing is read to choose it".into(),
                sha256: None,
            }),
        }
    }

    /// The image to import: as the site file says (`choice`), else the
    /// current release of the stream, read through `streams`.
    pub async fn choose(&self, streams: &StreamsClient) -> Result<Import> {
        let (stream, artifacts) = match self.choice() {
            Choice::Known(import) => return Ok(import),
            Choice::Current {
                stream, artifacts, ..
            } => (stream, artifacts),
        };
        let url = streams.url(stream);
        info!("Fedora CoreOS: reading the current release of stream `{stream}` from {url}");
        let current = streams.current(stream, artifacts).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot learn the current Fedora CoreOS release of stream `{stream}`: {e}. \
                 Nothing was created. To launch without the stream metadata, pin a release of \
                 `{stream}` in the site file (`release: X.YYYYMMDD.N.N` under `defaults:`; \
                 images/fedora-coreos/README.md says how to choose one)"
            )
        })?;
        let why = format!(
            "the current release of stream `{stream}` (metadata last modified {}, read from {url})",
            current.last_modified
        );
        info!("Fedora CoreOS: {} is {why}", current.release);
        Ok(self.fedora_coreos(
            &current.release,
            current.location,
            Some(current.sha256),
            why,
        ))
    }

    /// The import of Fedora CoreOS `release` from `url`.
    fn fedora_coreos(
        &self,
        release: &Release,
        url: String,
        sha256: Option<String>,
        why: String,
    ) -> Import {
        let stream = match &self.base {
            BasePlan::FedoraCoreos { stream, .. } => stream.as_str(),
            BasePlan::Lab { .. } => "",
        };
        let checksum = match &sha256 {
            Some(sha) => format!(
                "sha256 {sha} as the stream metadata published it (recorded here, not \
                 verified by DigitalOcean)"
            ),
            None => "no sha256 recorded: the release was pinned".into(),
        };
        Import {
            name: format!("{}-{release}", self.image),
            url,
            distribution: "Fedora".into(),
            description: format!(
                "Fedora CoreOS {release} (stream {stream}), imported by builder; {checksum}"
            ),
            why,
            sha256,
        }
    }
}

/// What the site file says of the image a launch imports.
pub enum Choice<'p> {
    /// Everything: a pinned release, or the lab image.
    Known(Import),
    /// The current release of `stream`, whose disks lie under `artifacts`:
    /// the stream's metadata must be read, by default under `metadata`.
    Current {
        stream: &'p str,
        metadata: &'p str,
        artifacts: &'p str,
    },
}

/// A private image as DigitalOcean shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: u64,
    pub name: String,
    /// `NEW`, `available`, `pending`, `deleted`, `retired`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub tags: Vec<String>,
    /// Why an import failed, when it did.
    #[serde(default)]
    pub error_message: Option<String>,
}

impl Kind for Image {
    const NOUN: &'static str = "image";
    const COLLECTION: &'static str = "/v2/images";
    const MANY: &'static str = "images";
    const ONE: &'static str = "image";

    fn listing(_plan: &Plan) -> String {
        format!("{}?private=true", Self::COLLECTION)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> String {
        self.id.to_string()
    }
    fn planned(plan: &Plan, _hosts: &[&str], name: &str) -> bool {
        plan.image.names(name)
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        if !plan.image.names(&self.name) {
            Some("not the site's image".into())
        } else if !super::tagged(&self.tags, &plan.tag) {
            Some(format!("it lacks the tag {}", plan.tag))
        } else {
            None
        }
    }
}

/// Launch: the image exists and is available; its id.
pub async fn ensure(launch: &Launch<'_>, outcome: &mut Outcome) -> Result<u64> {
    let plan = launch.plan;
    let wanted = launch.image;
    info!("{}: {}", wanted.name, wanted.why);
    let find = || super::find::<Image>(launch.client, plan, &wanted.name);
    let (id, available) = match find().await? {
        Some(image) => {
            let image = super::adopt(image, plan)?;
            info!("{}: exists (id {})", wanted.name, image.id);
            (image.id, image.status.as_deref() == Some("available"))
        }
        None => {
            let created = launch
                .create::<Image, _, _>(
                    &json!({
                        "name": wanted.name, "url": wanted.url, "region": plan.region,
                        "distribution": wanted.distribution, "description": wanted.description,
                        "tags": [plan.tag],
                    }),
                    find,
                )
                .await?;
            outcome.created.push(format!("image {}", wanted.name));
            info!(
                "{}: importing from {} (DigitalOcean downloads it; {})",
                wanted.name,
                wanted.url,
                checksum_note(wanted)
            );
            (created.id, false)
        }
    };
    if !available {
        wait(launch, id).await?;
    }
    Ok(id)
}

async fn wait(launch: &Launch<'_>, id: u64) -> Result<()> {
    let wanted = launch.image;
    let path = format!("{}/{id}", Image::COLLECTION);
    let mut waiting = Waiting::start(format!("{}: importing", wanted.name));
    loop {
        let answer = launch.client.get(&path).await?;
        let image: Image = super::decode(&format!("GET {path}"), answer[Image::ONE].clone())?;
        match image.status.as_deref() {
            Some("available") => {
                let after = elapsed(waiting.elapsed());
                drop(waiting);
                info!("{}: available after {after}", wanted.name);
                return Ok(());
            }
            Some("deleted") => bail!("image {id} was deleted while importing"),
            _ => {}
        }
        if let Some(message) = image.error_message.as_deref().filter(|m| !m.is_empty()) {
            bail!(
                "DigitalOcean could not import image {id}: {message}; check that {} is reachable",
                wanted.url
            );
        }
        if waiting.elapsed() > launch.pace.image {
            bail!(
                "image {id} still not available after {}; run launch again later, it resumes",
                elapsed(launch.pace.image)
            );
        }
        waiting.update(&format!(
            "status {}",
            image.status.as_deref().unwrap_or("unknown")
        ));
        tokio::time::sleep(launch.pace.poll).await;
    }
}

/// What launch does, for `--dry-run`: which release and why, where
/// DigitalOcean downloads it from, and what becomes of its checksum.
pub fn describe(plan: &Plan, import: &Import) -> Vec<String> {
    vec![
        format!(
            "GET {}; POST {} {} from {} if absent; poll GET {}/ID until available",
            Image::listing(plan),
            Image::COLLECTION,
            import.name,
            import.url,
            Image::COLLECTION
        ),
        format!("      release: {}", import.why),
        format!(
            "      DigitalOcean downloads the image itself; {}",
            checksum_note(import)
        ),
    ]
}

/// What becomes of the published checksum: DigitalOcean's import takes a
/// URL only.
fn checksum_note(import: &Import) -> String {
    match &import.sha256 {
        Some(sha) => format!(
            "the sha256 the stream metadata published ({sha}) is recorded in the image's \
             description, not verified by DigitalOcean"
        ),
        None => "no checksum is recorded (none was read)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::plan::tests::site;

    fn pinned(release: &str) -> ImagePlan {
        let mut site = site(3);
        site.release = Some(Release::parse_for_stream(release, "stable").unwrap());
        ImagePlan::for_site(&site).unwrap()
    }

    /// A pin reads nothing: its import is known from the site file, named
    /// after the release, from the release's directory, with no checksum
    /// claimed.
    #[test]
    fn a_pinned_release_is_known_without_the_metadata() {
        let Choice::Known(import) = pinned("44.20260707.3.1").choice() else {
            panic!("a pin needs the metadata");
        };
        assert_eq!(import.name, "fedora-coreos-44.20260707.3.1");
        assert_eq!(
            import.url,
            "https://builds.coreos.fedoraproject.org/prod/streams/stable/builds/44.20260707.3.1/\
             x86_64/fedora-coreos-44.20260707.3.1-digitalocean.x86_64.qcow2.gz"
        );
        assert!(
            import.why.contains("pinned in the site file"),
            "{}",
            import.why
        );
        assert_eq!(import.sha256, None);
        assert!(
            import.description.contains("no sha256 recorded"),
            "{}",
            import.description
        );
        let lines = describe(&Plan::new(&site(3)).unwrap(), &import);
        assert!(lines[0].contains(&import.url), "{lines:?}");
        assert!(lines[2].contains("DigitalOcean downloads the image itself"));
    }

    /// Without a pin the stream is named, with where its metadata is.
    #[test]
    fn without_a_pin_the_stream_metadata_is_read() {
        let plan = ImagePlan::for_site(&site(3)).unwrap();
        match plan.choice() {
            Choice::Current {
                stream,
                metadata,
                artifacts,
            } => {
                assert_eq!(stream, "stable");
                assert_eq!(metadata, "https://builds.coreos.fedoraproject.org/streams/");
                assert_eq!(
                    artifacts,
                    "https://builds.coreos.fedoraproject.org/prod/streams/"
                );
            }
            Choice::Known(import) => panic!("chosen without the metadata: {import:?}"),
        }
        assert!(plan.names("fedora-coreos-44.20261101.3.0"));
        assert!(!plan.names("fedora-coreos-44.20261101.3"));
        assert!(!plan.names("flatcar-44.20261101.3.0"));
    }

    /// The checksum read is recorded in the description and the dry run
    /// says DigitalOcean does not verify it.
    #[test]
    fn a_published_checksum_is_recorded_not_verified() {
        let plan = ImagePlan::for_site(&site(3)).unwrap();
        let release = Release::parse("44.20261101.3.0").unwrap();
        let sha = "ab".repeat(32);
        let import = plan.fedora_coreos(
            &release,
            "https://example.invalid/d".into(),
            Some(sha.clone()),
            "a test".into(),
        );
        assert!(
            import.description.contains(&sha)
                && import.description.contains("not verified by DigitalOcean"),
            "{}",
            import.description
        );
        let lines = describe(&Plan::new(&site(3)).unwrap(), &import);
        assert!(
            lines[2].contains(&sha) && lines[2].contains("not verified by DigitalOcean"),
            "{lines:?}"
        );
    }
}
