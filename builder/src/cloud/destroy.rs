//! `builder destroy`: find exactly what belongs to the site, say it, and
//! delete it. A resource is the site's only when it carries the site's tag
//! (droplets, volumes, images); VPCs and firewalls cannot carry tags, so
//! they are the site's when both the name and a site-specific mark match
//! (the VPC's description, the firewall applying to exactly the site's
//! tag). Anything else with a site name is listed as left alone. Each
//! kind's rule lives with the kind (`super::kinds`), where launch reads
//! it too: what launch adopts is exactly what destroy deletes.
//!
//! The survey needs neither the firstboot binary nor the vault: the published
//! firstboot objects are found by listing `firstboot-*` in the site's
//! bucket (every build the site ever published), and the tag is looked up
//! before it is deleted.

use anyhow::{bail, Result};
use tracing::info;

use super::kinds::droplet::Droplet;
use super::kinds::firewall::Firewall;
use super::kinds::image::Image;
use super::kinds::volume::{self, Volume};
use super::kinds::vpc::{self, Vpc};
use super::kinds::{self, tag, Doomed};
use super::launch::Pace;
use super::plan::Plan;
use crate::digitalocean::Client;
use crate::publish::{Leftovers, Publisher};

/// What to destroy.
#[derive(Debug, Clone)]
pub enum Scope {
    /// These hosts' droplets and volumes.
    Hosts(Vec<String>),
    /// Everything of the site.
    All,
}

/// What destroy found of the site, by kind, in the order it deletes.
#[derive(Debug, Default)]
pub struct Survey {
    pub droplets: Vec<Doomed>,
    pub volumes: Vec<Doomed>,
    /// The site's firewalls, each applying to exactly its tag.
    pub firewalls: Vec<Doomed>,
    pub vpcs: Vec<Doomed>,
    pub images: Vec<Doomed>,
    /// Published firstboot objects to delete: (name, URL).
    pub objects: Vec<(String, String)>,
    /// The site's tags that exist (deleted with `--all`).
    pub tags: Vec<Doomed>,
    /// Resources with a site name that are not provably the site's, and
    /// what `destroy` cannot or must not touch.
    pub left_alone: Vec<String>,
}

impl Survey {
    /// Every resource of DigitalOcean's to delete, in order.
    fn resources(&self) -> impl Iterator<Item = &Doomed> {
        self.droplets
            .iter()
            .chain(&self.volumes)
            .chain(&self.firewalls)
            .chain(&self.vpcs)
            .chain(&self.images)
    }

    pub fn is_empty(&self) -> bool {
        self.resources().next().is_none() && self.objects.is_empty() && self.tags.is_empty()
    }

    /// The lines shown before the operator confirms.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for d in self.resources() {
            lines.push(format!("delete {:<8} {} (id {})", d.kind, d.name, d.id));
        }
        for (_, url) in &self.objects {
            lines.push(format!("delete object   {url}"));
        }
        for tag in &self.tags {
            lines.push(format!("delete tag      {}", tag.name));
        }
        for l in &self.left_alone {
            lines.push(format!("leave  {l}"));
        }
        lines
    }
}

pub async fn survey(
    client: &Client,
    plan: &Plan,
    publisher: &Publisher,
    scope: &Scope,
) -> Result<Survey> {
    let hosts: Vec<&str> = match scope {
        Scope::All => plan.droplets.iter().map(|d| d.host.as_str()).collect(),
        Scope::Hosts(names) => {
            for name in names {
                if !plan.droplets.iter().any(|d| &d.host == name) {
                    bail!(
                        "no host `{name}` in the site file; hosts are: {}",
                        plan.droplets
                            .iter()
                            .map(|d| d.host.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            names.iter().map(String::as_str).collect()
        }
    };
    let all = matches!(scope, Scope::All);
    let mut s = Survey::default();
    let left = &mut s.left_alone;
    kinds::survey::<Droplet>(client, plan, &hosts, all, &mut s.droplets, left).await?;
    kinds::survey::<Volume>(client, plan, &hosts, all, &mut s.volumes, left).await?;
    if !all {
        return Ok(s);
    }
    // These are the site's by name and mark: never "every one".
    kinds::survey::<Firewall>(client, plan, &hosts, false, &mut s.firewalls, left).await?;
    kinds::survey::<Vpc>(client, plan, &hosts, false, &mut s.vpcs, left).await?;
    kinds::survey::<Image>(client, plan, &hosts, false, &mut s.images, left).await?;
    match publisher.leftovers().await.map_err(anyhow::Error::new)? {
        Leftovers::InBucket { objects, .. } => {
            s.objects = objects
                .into_iter()
                .map(|name| {
                    let url = publisher.public_url(&name);
                    (name, url)
                })
                .collect();
        }
        Leftovers::OwnServer { base } => s.left_alone.push(format!(
            "objects  {base}/firstboot-*: publish.base_url is your own server; remove them \
             there once no node needs them"
        )),
        Leftovers::NoKey { bucket, why } => s.left_alone.push(format!(
            "objects  firstboot-* in the Spaces bucket `{bucket}`: they cannot be listed \
             without a key ({why})"
        )),
    }
    s.tags = tag::survey(client, plan).await?;
    Ok(s)
}

/// Delete what the survey found: droplets, then (once detached) their
/// volumes, then the firewalls, the VPC (once empty), the image, the
/// published objects and the tags.
pub async fn execute(
    client: &Client,
    survey: &Survey,
    publisher: &Publisher,
    pace: &Pace,
) -> Result<()> {
    for d in &survey.droplets {
        kinds::delete(client, d).await?;
        info!("deleted droplet {}", d.name);
    }
    for v in &survey.volumes {
        volume::delete(client, v, pace).await?;
        info!("deleted volume {}", v.name);
    }
    for f in &survey.firewalls {
        kinds::delete(client, f).await?;
        info!("deleted firewall {}", f.name);
    }
    for v in &survey.vpcs {
        vpc::delete(client, v, pace).await?;
        info!("deleted vpc {}", v.name);
    }
    for i in &survey.images {
        kinds::delete(client, i).await?;
        info!("deleted image {}", i.name);
    }
    for (name, _) in &survey.objects {
        let said = publisher
            .unpublish_object(name)
            .await
            .map_err(anyhow::Error::new)?;
        info!("{said}");
    }
    for tag in &survey.tags {
        kinds::delete(client, tag).await?;
        info!("deleted tag {}", tag.name);
    }
    Ok(())
}
