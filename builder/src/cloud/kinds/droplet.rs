//! Droplets: one a host, named by its fully qualified name, carrying the
//! site's tag (and the public one on a worker), booted from the node
//! image with its rendered config as user data.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::Kind;
use crate::cloud::launch::{ambiguous, each, Known, Launch, Outcome, CONCURRENCY, CREATE_ATTEMPTS};
use crate::cloud::plan::{self, Plan};
use crate::digitalocean::Client;
use crate::log::{elapsed, Waiting};

#[derive(Debug, Clone)]
pub struct DropletPlan {
    /// The host's short name, as in the site file.
    pub host: String,
    /// The droplet's name: the host's fully qualified name.
    pub name: String,
    pub size: String,
    /// Names of the volumes attached at creation, so that Ignition finds
    /// its disks on the first boot.
    pub volumes: Vec<String>,
    /// Its tags: the site's, and the public one for a host that serves the
    /// public (a worker). The firewalls apply by tag.
    pub tags: Vec<String>,
}

/// A droplet as DigitalOcean shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    /// `new`, `active`, `off` or `archive`.
    pub status: String,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub networks: Networks,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Networks {
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub v4: Vec<Address>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Address {
    pub ip_address: String,
    /// `public` or `private`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Droplet {
    /// Its address of the kind `public` or `private`.
    pub fn address(&self, kind: &str) -> Option<String> {
        self.networks
            .v4
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| a.ip_address.clone())
    }
}

impl Kind for Droplet {
    const NOUN: &'static str = "droplet";
    const COLLECTION: &'static str = "/v2/droplets";
    const MANY: &'static str = "droplets";
    const ONE: &'static str = "droplet";

    /// The site's droplets: one listing by the site's tag.
    fn listing(plan: &Plan) -> String {
        format!("{}?tag_name={}", Self::COLLECTION, plan.tag)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> String {
        self.id.to_string()
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        (!super::tagged(&self.tags, &plan.tag)).then(|| format!("it lacks the tag {}", plan.tag))
    }
    fn planned(plan: &Plan, hosts: &[&str], name: &str) -> bool {
        plan.droplets
            .iter()
            .any(|d| d.name == name && hosts.contains(&d.host.as_str()))
    }
    /// Every droplet of the account: a host's name without the site's tag
    /// is seen, and left alone.
    fn destroy_listing(_plan: &Plan) -> String {
        Self::COLLECTION.to_owned()
    }
}

/// The site's droplets by name (only names of the plan): one listing.
pub async fn of_site(client: &Client, plan: &Plan) -> Result<BTreeMap<String, Droplet>> {
    Ok(super::list::<Droplet>(client, plan)
        .await?
        .into_iter()
        .filter(|d| plan.droplets.iter().any(|p| p.name == d.name))
        .map(|d| (d.name.clone(), d))
        .collect())
}

/// Launch: every host has its droplet, active; their ids by name.
/// Droplets are created `CONCURRENCY` calls at once; when an answer is
/// lost, one listing says which were created before anything is sent
/// again.
pub async fn ensure(
    launch: &Launch<'_>,
    outcome: &mut Outcome,
    known: &Known,
) -> Result<BTreeMap<String, u64>> {
    let plan = launch.plan;
    let mut droplets: BTreeMap<String, u64> = BTreeMap::new();
    let mut starting = BTreeSet::new();
    for (name, droplet) in of_site(launch.client, plan).await? {
        if droplet.status != "active" {
            starting.insert(name.clone());
        }
        retag(launch, &droplet, outcome).await?;
        droplets.insert(name, droplet.id);
    }
    if !droplets.is_empty() {
        info!("{} droplet(s) exist", droplets.len());
    }
    let mut bodies = Vec::new();
    for droplet in &plan.droplets {
        if droplets.contains_key(&droplet.name) {
            continue;
        }
        let volumes: Vec<&str> = droplet
            .volumes
            .iter()
            .filter_map(|v| known.volumes.get(v).map(String::as_str))
            .collect();
        let user_data = launch
            .user_data
            .get(&droplet.host)
            .with_context(|| format!("no rendered config for host {}", droplet.host))?;
        bodies.push((
            droplet.name.clone(),
            json!({
                "region": plan.region, "size": droplet.size, "image": known.image,
                "ssh_keys": known.keys, "vpc_uuid": known.vpc, "user_data": user_data,
                "tags": droplet.tags, "volumes": volumes,
                // The node image is a custom image, whose droplets
                // can have neither (DigitalOcean's Custom Images Limits).
                "monitoring": false, "ipv6": false,
            }),
        ));
    }
    let mut attempt = 1;
    while !bodies.is_empty() {
        let answers = each(plan::create_requests(&bodies)?, |request| async move {
            match launch.client.post(Droplet::COLLECTION, &request).await {
                Ok(answer) => Ok(Some(answer)),
                Err(e) if ambiguous(&e) && attempt < CREATE_ATTEMPTS => {
                    warn!("{e}; checking which droplets were created");
                    Ok(None)
                }
                Err(e) => Err(anyhow::Error::new(e)),
            }
        })
        .await?;
        let mut lost = false;
        for answer in answers {
            let Some(answer) = answer else {
                lost = true;
                continue;
            };
            let created: Vec<Value> = match answer.get("droplets").and_then(Value::as_array) {
                Some(list) => list.clone(),
                None => vec![answer[Droplet::ONE].clone()],
            };
            for droplet in created {
                let droplet: Droplet = super::decode("POST /v2/droplets", droplet)?;
                outcome.created.push(format!("droplet {}", droplet.name));
                info!("{}: created (id {})", droplet.name, droplet.id);
                starting.insert(droplet.name.clone());
                droplets.insert(droplet.name, droplet.id);
            }
        }
        if !lost {
            break;
        }
        // Some answers were lost: whatever exists now was created.
        for (name, droplet) in of_site(launch.client, plan).await? {
            if !droplets.contains_key(&name) {
                outcome.created.push(format!("droplet {name}"));
                info!("{name}: created (id {})", droplet.id);
                droplets.insert(name.clone(), droplet.id);
                starting.insert(name);
            }
        }
        bodies.retain(|(name, _)| !droplets.contains_key(name));
        tokio::time::sleep(launch.pace.poll * attempt).await;
        attempt += 1;
    }
    wait(launch, starting).await?;
    Ok(droplets)
}

/// An existing droplet gets the public tag its role wants (the public
/// firewall applies by it), or loses it: a droplet launched before the
/// firewall was split by role, or whose host changed role.
async fn retag(launch: &Launch<'_>, droplet: &Droplet, outcome: &mut Outcome) -> Result<()> {
    let plan = launch.plan;
    let Some(planned) = plan.droplets.iter().find(|d| d.name == droplet.name) else {
        return Ok(());
    };
    let public = &plan.public_tag;
    let wanted = planned.tags.contains(public);
    if wanted == super::tagged(&droplet.tags, public) {
        return Ok(());
    }
    let name = &droplet.name;
    let path = format!("/v2/tags/{public}/resources");
    let body =
        json!({"resources": [{"resource_id": droplet.id.to_string(), "resource_type": "droplet"}]});
    if wanted {
        launch.client.post_idempotent(&path, &body).await?;
        outcome.created.push(format!("tag {public} on {name}"));
        info!("{name}: tagged {public} (the public firewall applies)");
    } else {
        launch.client.delete_with_body(&path, &body).await?;
        outcome.created.push(format!("tag {public} off {name}"));
        info!("{name}: untagged {public} (it no longer serves the public)");
    }
    Ok(())
}

/// Poll the site's droplets with one listing a round until every one of
/// `starting` is active.
async fn wait(launch: &Launch<'_>, mut starting: BTreeSet<String>) -> Result<()> {
    if starting.is_empty() {
        return Ok(());
    }
    let mut waiting = Waiting::start("droplets starting");
    loop {
        tokio::time::sleep(launch.pace.poll).await;
        let listed = of_site(launch.client, launch.plan).await?;
        for name in starting.clone() {
            match listed.get(&name).map(|d| d.status.as_str()) {
                Some("active") => {
                    info!("{name}: active after {}", elapsed(waiting.elapsed()));
                    starting.remove(&name);
                }
                Some("new") => {}
                Some(other) => bail!(
                    "droplet {name} is {other} instead of starting; see it in the control panel"
                ),
                None => bail!(
                    "droplet {name} disappeared while starting; was it deleted? run launch \
                     again to create it"
                ),
            }
        }
        if starting.is_empty() {
            return Ok(());
        }
        if waiting.elapsed() > launch.pace.droplet {
            bail!(
                "{} droplet(s) still not active after {}; run launch again, it resumes",
                starting.len(),
                elapsed(launch.pace.droplet)
            );
        }
        waiting.update(&format!("{} still new", starting.len()));
    }
}

/// What launch does, for `--dry-run`.
pub fn describe(plan: &Plan, user_data: &BTreeMap<String, String>) -> Vec<String> {
    let mut lines = vec![format!(
        "GET {}; POST {} for each host not there ({CONCURRENCY} at once), then poll that \
         listing until all are active:",
        Droplet::listing(plan),
        Droplet::COLLECTION
    )];
    for d in &plan.droplets {
        let size = user_data.get(&d.host).map_or(0, String::len);
        lines.push(format!(
            "      {} {} user data {size} bytes, volumes [{}], tags [{}]",
            d.name,
            d.size,
            d.volumes.join(", "),
            d.tags.join(", ")
        ));
    }
    lines
}
