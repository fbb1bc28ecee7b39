//! `builder destroy`: find exactly what belongs to the site, say it, and
//! delete it. A resource is the site's only when it carries the site's tag
//! (droplets, volumes, images); VPCs and firewalls cannot carry tags, so
//! they are the site's when both the name and a site-specific mark match
//! (the VPC's description, the firewall applying to exactly the site's
//! tag). Anything else with a site name is listed as left alone.
//!
//! Nothing here needs the firstboot binary or the vault: the published
//! firstboot objects are found by listing `firstboot-*` in the site's
//! bucket (every build the site ever published), and the tag is looked up
//! before it is deleted.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tracing::info;

use super::launch::{has_tag, Pace};
use super::plan::Plan;
use crate::digitalocean::Client;
use crate::log::{elapsed, Waiting};
use crate::publish::{Leftovers, Publisher};

/// What to destroy.
#[derive(Debug, Clone)]
pub enum Scope {
    /// These hosts' droplets and volumes.
    Hosts(Vec<String>),
    /// Everything of the site.
    All,
}

/// One resource to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Doomed {
    pub kind: &'static str,
    pub name: String,
    pub id: String,
}

#[derive(Debug, Default)]
pub struct Survey {
    pub droplets: Vec<Doomed>,
    pub volumes: Vec<Doomed>,
    /// The site's firewalls, each applying to exactly its tag.
    pub firewalls: Vec<Doomed>,
    pub vpc: Option<Doomed>,
    pub image: Option<Doomed>,
    /// Published firstboot objects to delete: (name, URL).
    pub objects: Vec<(String, String)>,
    /// The site's tags that exist (deleted with `--all`).
    pub tags: Vec<String>,
    /// Resources with a site name that are not provably the site's, and
    /// what `destroy` cannot or must not touch.
    pub left_alone: Vec<String>,
}

impl Survey {
    pub fn is_empty(&self) -> bool {
        self.droplets.is_empty()
            && self.volumes.is_empty()
            && self.firewalls.is_empty()
            && self.vpc.is_none()
            && self.image.is_none()
            && self.objects.is_empty()
            && self.tags.is_empty()
    }

    /// The lines shown before the operator confirms.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let all = self
            .droplets
            .iter()
            .chain(&self.volumes)
            .chain(&self.firewalls)
            .chain(&self.vpc)
            .chain(&self.image);
        for d in all {
            lines.push(format!("delete {:<8} {} (id {})", d.kind, d.name, d.id));
        }
        for (_, url) in &self.objects {
            lines.push(format!("delete object   {url}"));
        }
        for tag in &self.tags {
            lines.push(format!("delete tag      {tag}"));
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
    let tag = &plan.tag;
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
    let mut survey = Survey::default();

    let droplet_names: Vec<&str> = plan
        .droplets
        .iter()
        .filter(|d| hosts.contains(&d.host.as_str()))
        .map(|d| d.name.as_str())
        .collect();
    // One listing of the account's droplets: the site's by its tag, and
    // anyone else's that bears a site name.
    let droplets = client.list("/v2/droplets", "droplets").await?;
    for d in &droplets {
        let name = d["name"].as_str().unwrap_or("");
        let named = droplet_names.contains(&name);
        if has_tag(d, tag) {
            // With --all, every droplet carrying the tag goes, also hosts
            // since removed from the site file.
            if all || named {
                survey.droplets.push(doomed("droplet", d));
            }
        } else if named {
            survey.left_alone.push(format!(
                "droplet  {name} (id {}): it lacks the tag {tag}",
                d["id"]
            ));
        }
    }

    let volume_names: Vec<&str> = plan
        .volumes
        .iter()
        .filter(|v| hosts.contains(&v.host.as_str()))
        .map(|v| v.name.as_str())
        .collect();
    let volumes = client
        .list(&format!("/v2/volumes?region={}", plan.region), "volumes")
        .await?;
    for v in &volumes {
        let name = v["name"].as_str().unwrap_or("");
        let ours = has_tag(v, tag);
        if ours && (all || volume_names.contains(&name)) {
            survey.volumes.push(doomed("volume", v));
        } else if !ours && volume_names.contains(&name) {
            survey.left_alone.push(format!(
                "volume   {name} (id {}): it lacks the tag {tag}",
                v["id"]
            ));
        }
    }

    if all {
        let firewalls = client.list("/v2/firewalls", "firewalls").await?;
        for wanted in &plan.firewalls {
            for f in firewalls.iter().filter(|f| f["name"] == json!(wanted.name)) {
                if f["tags"] == json!([wanted.tag]) {
                    survey.firewalls.push(doomed("firewall", f));
                } else {
                    survey.left_alone.push(format!(
                        "firewall {} (id {}): it does not apply to exactly the tag {}",
                        wanted.name, f["id"], wanted.tag
                    ));
                }
            }
        }
        let vpcs = client.list("/v2/vpcs", "vpcs").await?;
        for v in vpcs.iter().filter(|v| v["name"] == json!(plan.vpc.name)) {
            if v["description"] == json!(plan.vpc.description) {
                survey.vpc = Some(doomed("vpc", v));
            } else {
                survey.left_alone.push(format!(
                    "vpc      {} (id {}): its description is not the site's",
                    plan.vpc.name, v["id"]
                ));
            }
        }
        let images = client.list("/v2/images?private=true", "images").await?;
        for i in images
            .iter()
            .filter(|i| i["name"] == json!(plan.image.name))
        {
            if has_tag(i, tag) {
                survey.image = Some(doomed("image", i));
            } else {
                survey.left_alone.push(format!(
                    "image    {} (id {}): it lacks the tag {tag}",
                    plan.image.name, i["id"]
                ));
            }
        }
        match publisher.leftovers().await.map_err(anyhow::Error::new)? {
            Leftovers::InBucket { objects, .. } => {
                survey.objects = objects
                    .into_iter()
                    .map(|name| {
                        let url = publisher.public_url(&name);
                        (name, url)
                    })
                    .collect();
            }
            Leftovers::OwnServer { base } => survey.left_alone.push(format!(
                "objects  {base}/firstboot-*: publish.base_url is your own server; remove them \
                 there once no node needs them"
            )),
            Leftovers::NoKey { bucket, why } => survey.left_alone.push(format!(
                "objects  firstboot-* in the Spaces bucket `{bucket}`: they cannot be listed \
                 without a key ({why})"
            )),
        }
        // A tag is deleted only if it is there: a DELETE of a tag already
        // gone would be a 404 for nothing.
        for t in [&plan.public_tag, tag] {
            match client.get(&format!("/v2/tags/{t}")).await {
                Ok(_) => survey.tags.push(t.clone()),
                Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(survey)
}

fn doomed(kind: &'static str, resource: &Value) -> Doomed {
    Doomed {
        kind,
        name: resource["name"].as_str().unwrap_or("?").to_owned(),
        id: match &resource["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    }
}

/// Delete what the survey found: droplets, then (once detached) their
/// volumes, then the firewall, the VPC (once empty), the image, the
/// published objects and the tag.
pub async fn execute(
    client: &Client,
    survey: &Survey,
    publisher: &Publisher,
    pace: &Pace,
) -> Result<()> {
    for d in &survey.droplets {
        gone(client.delete(&format!("/v2/droplets/{}", d.id)).await)?;
        info!("deleted droplet {}", d.name);
    }
    for v in &survey.volumes {
        wait_detached(client, v, pace).await?;
        gone(client.delete(&format!("/v2/volumes/{}", v.id)).await)?;
        info!("deleted volume {}", v.name);
    }
    for f in &survey.firewalls {
        gone(client.delete(&format!("/v2/firewalls/{}", f.id)).await)?;
        info!("deleted firewall {}", f.name);
    }
    if let Some(v) = &survey.vpc {
        delete_vpc(client, v, pace).await?;
        info!("deleted vpc {}", v.name);
    }
    if let Some(i) = &survey.image {
        gone(client.delete(&format!("/v2/images/{}", i.id)).await)?;
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
        gone(client.delete(&format!("/v2/tags/{tag}")).await)?;
        info!("deleted tag {tag}");
    }
    Ok(())
}

/// A 404 on delete means someone was faster: the goal is reached.
fn gone(result: Result<(), crate::digitalocean::ApiError>) -> Result<()> {
    match result {
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => Ok(()),
        other => Ok(other?),
    }
}

async fn wait_detached(client: &Client, volume: &Doomed, pace: &Pace) -> Result<()> {
    let mut waiting = Waiting::start(format!("volume {}: detaching", volume.name));
    loop {
        let answer = match client.get(&format!("/v2/volumes/{}", volume.id)).await {
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => return Ok(()),
            other => other?,
        };
        let attached = answer["volume"]["droplet_ids"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if !attached {
            return Ok(());
        }
        if waiting.elapsed() > pace.volume {
            bail!(
                "volume {} is still attached after {}; is its droplet deleted? run destroy again",
                volume.name,
                elapsed(pace.volume)
            );
        }
        waiting.update("still attached");
        tokio::time::sleep(pace.poll).await;
    }
}

/// A VPC can be deleted only once its droplets are gone, which takes
/// DigitalOcean a little while after the deletes are accepted.
async fn delete_vpc(client: &Client, vpc: &Doomed, pace: &Pace) -> Result<()> {
    let mut waiting = Waiting::start(format!("vpc {}: waiting for its members to go", vpc.name));
    loop {
        let members = client
            .list(&format!("/v2/vpcs/{}/members", vpc.id), "members")
            .await;
        let empty = match members {
            Ok(m) => m.is_empty(),
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if empty {
            return gone(client.delete(&format!("/v2/vpcs/{}", vpc.id)).await)
                .with_context(|| format!("deleting vpc {}", vpc.name));
        }
        if waiting.elapsed() > pace.droplet {
            bail!(
                "vpc {} still has members after {}; delete them or run destroy again",
                vpc.name,
                elapsed(pace.droplet)
            );
        }
        waiting.update("members left");
        tokio::time::sleep(pace.poll).await;
    }
}
