//! Block storage volumes: each host's data and swap, carrying the site's
//! tag, attached to its droplet at creation (so Ignition finds its disks
//! on the first boot); launch's last step attaches what is not.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::{Doomed, Kind};
use crate::cloud::launch::{each, Created, Known, Launch, Outcome, Pace, CONCURRENCY};
use crate::cloud::plan::Plan;
use crate::digitalocean::Client;
use crate::log::{elapsed, Waiting};

#[derive(Debug, Clone)]
pub struct VolumePlan {
    pub name: String,
    pub host: String,
    pub size_gib: u32,
    pub description: String,
}

/// A volume as DigitalOcean shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    /// The droplets it is attached to (at most one).
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub droplet_ids: Vec<u64>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub tags: Vec<String>,
}

impl Kind for Volume {
    const NOUN: &'static str = "volume";
    const COLLECTION: &'static str = "/v2/volumes";
    const MANY: &'static str = "volumes";
    const ONE: &'static str = "volume";

    /// Every volume of the site's region: one listing (each carries its
    /// tags and the droplets it is attached to).
    fn listing(plan: &Plan) -> String {
        format!("{}?region={}", Self::COLLECTION, plan.region)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> String {
        self.id.clone()
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        (!super::tagged(&self.tags, &plan.tag)).then(|| format!("it lacks the tag {}", plan.tag))
    }
    fn planned(plan: &Plan, hosts: &[&str], name: &str) -> bool {
        plan.volumes
            .iter()
            .any(|v| v.name == name && hosts.contains(&v.host.as_str()))
    }
}

async fn by_name(client: &Client, plan: &Plan) -> Result<BTreeMap<String, Volume>> {
    Ok(super::list::<Volume>(client, plan)
        .await?
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect())
}

/// Launch: every volume of the plan exists (created `CONCURRENCY` at
/// once); their ids by name.
pub async fn ensure(
    launch: &Launch<'_>,
    outcome: &mut Outcome,
) -> Result<BTreeMap<String, String>> {
    let plan = launch.plan;
    let existing = by_name(launch.client, plan).await?;
    let mut known = BTreeMap::new();
    let mut missing = Vec::new();
    for volume in &plan.volumes {
        match existing.get(&volume.name) {
            Some(found) => {
                let found = super::adopt(found.clone(), plan)?;
                known.insert(volume.name.clone(), found.id);
            }
            None => missing.push(volume),
        }
    }
    if !known.is_empty() {
        info!("{} volume(s) exist", known.len());
    }
    let created = each(missing, |volume| async move {
        let created = launch
            .create::<Volume, _, _>(
                &json!({"size_gigabytes": volume.size_gib, "name": volume.name,
                        "region": plan.region, "description": volume.description,
                        "tags": [plan.tag]}),
                || super::find::<Volume>(launch.client, plan, &volume.name),
            )
            .await?;
        info!("{}: created, {} GiB", volume.name, volume.size_gib);
        Ok((volume.name.clone(), created.id))
    })
    .await?;
    for (name, id) in created {
        outcome.created.push(format!("volume {name}"));
        known.insert(name, id);
    }
    Ok(known)
}

/// Launch's last step: volumes are attached when their droplet is
/// created; this repairs what is not (a volume added to the site file
/// later). One listing of the region's volumes says what is attached
/// where.
pub async fn attach(launch: &Launch<'_>, outcome: &mut Outcome, known: &Known) -> Result<()> {
    let plan = launch.plan;
    let volumes = by_name(launch.client, plan).await?;
    let mut detached = Vec::new();
    for volume in &plan.volumes {
        let droplet = &plan
            .droplets
            .iter()
            .find(|d| d.host == volume.host)
            .context("a volume of no host")?
            .name;
        let droplet_id = *known.droplets.get(droplet).context("droplet not created")?;
        let volume_id = &known.volumes[&volume.name];
        let attached = volumes
            .get(&volume.name)
            .map(|v| v.droplet_ids.clone())
            .unwrap_or_default();
        if attached.contains(&droplet_id) {
            continue;
        }
        if let Some(other) = attached.first() {
            bail!(
                "volume {} is attached to droplet {other}, not to {droplet}; detach it by hand",
                volume.name
            );
        }
        detached.push((volume, droplet, droplet_id, volume_id));
    }
    if detached.is_empty() {
        info!("all {} volume(s) attached", plan.volumes.len());
        return Ok(());
    }
    let attached = each(
        detached,
        |(volume, droplet, droplet_id, volume_id)| async move {
            let path = format!("{}/{volume_id}", Volume::COLLECTION);
            let attached_now = || async {
                let answer = launch.client.get(&path).await?;
                let found: Volume =
                    super::decode(&format!("GET {path}"), answer["volume"].clone())?;
                Ok(found.droplet_ids.contains(&droplet_id).then_some(()))
            };
            let action = launch
                .create_raw(
                    "attach",
                    &format!("{path}/actions"),
                    &json!({"type": "attach", "droplet_id": droplet_id, "region": plan.region}),
                    "action",
                    attached_now,
                )
                .await?;
            // An attach whose answer was lost but that took effect has
            // nothing left to wait for.
            if let Created::Answered(action) = action {
                let action_id = action["id"]
                    .as_u64()
                    .context("DigitalOcean answered an attach without an action id")?;
                launch
                    .client
                    .wait_action(action_id, launch.pace.volume, launch.pace.poll)
                    .await?;
            }
            info!("{} attached to {droplet}", volume.name);
            Ok(format!("attachment {} to {droplet}", volume.name))
        },
    )
    .await?;
    outcome.created.extend(attached);
    Ok(())
}

/// What launch's volume step does, for `--dry-run`.
pub fn describe(plan: &Plan) -> Vec<String> {
    let mut lines = vec![format!(
        "GET {}; POST {} for each absent ({CONCURRENCY} at once):",
        Volume::listing(plan),
        Volume::COLLECTION
    )];
    for v in &plan.volumes {
        lines.push(format!(
            "      {} {} GiB (host {})",
            v.name, v.size_gib, v.host
        ));
    }
    lines
}

/// What launch's attachment step does, for `--dry-run`.
pub fn describe_attach(plan: &Plan) -> Vec<String> {
    vec![format!(
        "GET {}; POST {}/ID/actions attach for each volume not attached to its droplet",
        Volume::listing(plan),
        Volume::COLLECTION
    )]
}

/// Delete a volume once its droplet's deletion has detached it.
pub async fn delete(client: &Client, volume: &Doomed, pace: &Pace) -> Result<()> {
    let mut waiting = Waiting::start(format!("volume {}: detaching", volume.name));
    loop {
        let answer = match client.get(&volume.path).await {
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => return Ok(()),
            other => other?,
        };
        let found: Volume =
            super::decode(&format!("GET {}", volume.path), answer["volume"].clone())?;
        if found.droplet_ids.is_empty() {
            return super::delete(client, volume).await;
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
