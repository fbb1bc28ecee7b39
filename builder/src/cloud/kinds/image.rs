//! The node image: a custom image imported from the release's artifact
//! URL, carrying the site's tag. Launch waits for its import (slow:
//! DigitalOcean downloads and converts about 700 MB); destroy (`--all`)
//! deletes it.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::Kind;
use crate::cloud::launch::{Launch, Outcome};
use crate::cloud::plan::Plan;
use crate::images::{self, Base};
use crate::log::{elapsed, Waiting};
use crate::site::Site;

/// The image the site's droplets boot.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// The image of the site file (`fedora-coreos`, or `lab`).
    pub image: String,
    pub name: String,
    pub url: String,
    pub distribution: String,
    pub description: String,
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
        Ok(match images::load(image_name)?.base {
            Base::FedoraCoreos {
                release, artifact, ..
            } => ImagePlan {
                image: image_name.to_owned(),
                name: format!("{image_name}-{release}"),
                url: artifact,
                distribution: "Fedora".into(),
                description: format!("Fedora CoreOS {release}, imported by builder"),
            },
            // The lab image boots only in a lab cloud (tests/support/
            // lab_cloud.rs), which has it and imports nothing; the URL
            // names it in the `.invalid` domain, which resolves nowhere,
            // and `launch` refuses it against DigitalOcean's API.
            Base::Debian { suite, .. } => ImagePlan {
                image: image_name.to_owned(),
                name: format!("{image_name}-{suite}"),
                url: format!("https://{image_name}.invalid/{image_name}-{suite}.img"),
                distribution: "Debian".into(),
                description: format!("the lab image (Debian {suite}), for a lab cloud only"),
            },
        })
    }
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
        name == plan.image.name
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        if self.name != plan.image.name {
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
    let wanted = &plan.image;
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
            info!("{}: importing from {}", wanted.name, wanted.url);
            (created.id, false)
        }
    };
    if !available {
        wait(launch, id).await?;
    }
    Ok(id)
}

async fn wait(launch: &Launch<'_>, id: u64) -> Result<()> {
    let plan = launch.plan;
    let path = format!("{}/{id}", Image::COLLECTION);
    let mut waiting = Waiting::start(format!("{}: importing", plan.image.name));
    loop {
        let answer = launch.client.get(&path).await?;
        let image: Image = super::decode(&format!("GET {path}"), answer[Image::ONE].clone())?;
        match image.status.as_deref() {
            Some("available") => {
                let after = elapsed(waiting.elapsed());
                drop(waiting);
                info!("{}: available after {after}", plan.image.name);
                return Ok(());
            }
            Some("deleted") => bail!("image {id} was deleted while importing"),
            _ => {}
        }
        if let Some(message) = image.error_message.as_deref().filter(|m| !m.is_empty()) {
            bail!(
                "DigitalOcean could not import image {id}: {message}; check that {} is reachable",
                plan.image.url
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

/// What launch does, for `--dry-run`.
pub fn describe(plan: &Plan) -> Vec<String> {
    vec![format!(
        "GET {}; POST {} {} from {} if absent; poll GET {}/ID until available",
        Image::listing(plan),
        Image::COLLECTION,
        plan.image.name,
        plan.image.url,
        Image::COLLECTION
    )]
}
