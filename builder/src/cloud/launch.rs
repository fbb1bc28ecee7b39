//! `builder launch`: ensure, step by step, that every resource of the plan
//! exists. Each step first finds its resources by name (and the site's
//! tag, where DigitalOcean has tags) and creates only what is missing, so
//! a second run changes nothing and an interrupted run, run again,
//! completes without duplicates.
//!
//! The cloud firewall comes before anything that boots: it applies to the
//! site's tag, so every droplet is covered from its creation on. Creates
//! of one step run concurrently (at most `CONCURRENCY` at once; the
//! client keeps every minute within DigitalOcean's rate limit), and a
//! step reads what exists with one region- or tag-wide listing, not one
//! call per resource.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tracing::{info, warn, Instrument};

use super::plan::{self, Plan};
use crate::artifact::Firstboot;
use crate::digitalocean::{ApiError, Client};
use crate::log::{elapsed, Waiting};
use crate::publish::Publisher;

/// How often to poll, and how long to wait, for DigitalOcean's slow work.
#[derive(Debug, Clone)]
pub struct Pace {
    pub poll: Duration,
    /// A custom image import (downloads and converts ~700 MB).
    pub image: Duration,
    /// A droplet from `new` to `active`.
    pub droplet: Duration,
    /// A volume attach action; a deleted droplet's volumes to detach.
    pub volume: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            poll: Duration::from_secs(5),
            image: Duration::from_secs(45 * 60),
            droplet: Duration::from_secs(10 * 60),
            volume: Duration::from_secs(5 * 60),
        }
    }
}

impl Pace {
    /// The default pace, with the poll interval from `BUILDER_POLL_MS`
    /// when set (tests poll a fake every few milliseconds).
    pub fn from_env() -> Pace {
        let mut pace = Pace::default();
        if let Some(ms) = std::env::var("BUILDER_POLL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            pace.poll = Duration::from_millis(ms);
        }
        pace
    }
}

/// The steps of a launch, in order; each is a `step` span, so its lines
/// read `[n/10] name: …`.
pub const STEPS: &[&str] = &[
    "account",
    "tag",
    "firewall",
    "ssh keys",
    "image",
    "vpc",
    "firstboot",
    "volumes",
    "droplets",
    "attachments",
];

/// Creates of one step in flight at once. Eight keep a 25-host launch
/// short while a site of any size stays far from DigitalOcean's 250
/// requests a minute in bursts (the client holds every minute to it).
pub const CONCURRENCY: usize = 8;

/// Every step's answer to "did you change anything".
#[derive(Debug, Default)]
pub struct Outcome {
    pub created: Vec<String>,
}

/// The ids launch learns, handed from step to step.
#[derive(Default)]
struct Known {
    keys: Vec<u64>,
    image: u64,
    vpc: String,
    /// Volume name → id.
    volumes: BTreeMap<String, String>,
    /// Droplet name → id.
    droplets: BTreeMap<String, u64>,
}

pub struct Launch<'a> {
    pub client: &'a Client,
    pub plan: &'a Plan,
    /// Each host's user data: its rendered config, exactly as `render`
    /// writes it.
    pub user_data: &'a BTreeMap<String, String>,
    pub publisher: &'a Publisher,
    pub firstboot: &'a Firstboot,
    pub pace: Pace,
}

/// Run `work` under the span of step `n` (1-based).
async fn step<T>(n: usize, work: impl Future<Output = Result<T>>) -> Result<T> {
    let span = tracing::info_span!("step", n, of = STEPS.len(), name = STEPS[n - 1]);
    work.instrument(span).await
}

/// Run `work` on every item, at most `CONCURRENCY` at once. Every item is
/// tried, so a rerun has less left to do; then the first error, if any,
/// is returned.
async fn each<T, R, F, Fut>(items: Vec<T>, work: F) -> Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R>>,
{
    let total = items.len();
    let results: Vec<Result<R>> = futures_util::stream::iter(items)
        .map(work)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut done = Vec::with_capacity(total);
    let mut failed = 0;
    let mut first = None;
    for result in results {
        match result {
            Ok(value) => done.push(value),
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    match first {
        None => Ok(done),
        Some(e) if failed == 1 => Err(e),
        Some(e) => Err(e.context(format!("{failed} of {total} failed; the first"))),
    }
}

impl Launch<'_> {
    pub async fn run(&self) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        let mut known = Known::default();

        step(1, self.account()).await?;
        step(2, self.tag(&mut outcome)).await?;
        step(3, self.firewall(&mut outcome)).await?;
        known.keys = step(4, self.keys(&mut outcome)).await?;
        known.image = step(5, self.image(&mut outcome)).await?;
        known.vpc = step(6, self.vpc(&mut outcome)).await?;
        step(7, self.publish(&mut outcome)).await?;
        known.volumes = step(8, self.volumes(&mut outcome)).await?;
        known.droplets = step(9, self.droplets(&mut outcome, &known)).await?;
        step(10, self.attachments(&mut outcome, &known)).await?;
        Ok(outcome)
    }

    /// POST a create. When the answer is lost or a server error (it may
    /// or may not have happened), look with `find` before sending it
    /// again: a create is never repeated for something that exists.
    async fn create<F, Fut>(
        &self,
        what: &str,
        path: &str,
        body: &Value,
        key: &str,
        find: F,
    ) -> Result<Value>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<Value>>>,
    {
        let mut attempt = 1;
        loop {
            match self.client.post(path, body).await {
                Ok(answer) => return Ok(answer[key].clone()),
                Err(e) if ambiguous(&e) && attempt < CREATE_ATTEMPTS => {
                    warn!("{what}: {e}; checking whether it was created");
                    if let Some(found) = find().await? {
                        return Ok(found);
                    }
                    tokio::time::sleep(self.pace.poll * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn find_tag(&self, tag: &str) -> Result<Option<Value>> {
        let tags = self.client.list("/v2/tags", "tags").await?;
        Ok(tags.into_iter().find(|t| t["name"] == json!(tag)))
    }

    async fn find_image(&self) -> Result<Option<Value>> {
        let images = self
            .client
            .list("/v2/images?private=true", "images")
            .await?;
        Ok(images
            .into_iter()
            .find(|i| i["name"] == json!(self.plan.image.name)))
    }

    async fn find_vpc(&self) -> Result<Option<Value>> {
        let vpcs = self.client.list("/v2/vpcs", "vpcs").await?;
        Ok(vpcs
            .into_iter()
            .find(|v| v["name"] == json!(self.plan.vpc.name)))
    }

    /// Every volume of the site's region, by name: one listing (each
    /// volume carries its tags and the droplets it is attached to).
    async fn region_volumes(&self) -> Result<BTreeMap<String, Value>> {
        let volumes = self
            .client
            .list(
                &format!("/v2/volumes?region={}", self.plan.region),
                "volumes",
            )
            .await?;
        Ok(volumes
            .into_iter()
            .filter_map(|v| Some((v["name"].as_str()?.to_owned(), v)))
            .collect())
    }

    async fn find_volume(&self, name: &str) -> Result<Option<Value>> {
        let found = self
            .client
            .list(
                &format!("/v2/volumes?name={name}&region={}", self.plan.region),
                "volumes",
            )
            .await?;
        Ok(found.into_iter().find(|v| v["name"] == json!(name)))
    }

    async fn find_firewall(&self, name: &str) -> Result<Option<Value>> {
        let firewalls = self.client.list("/v2/firewalls", "firewalls").await?;
        Ok(firewalls.into_iter().find(|f| f["name"] == json!(name)))
    }

    /// The site's droplets by name (only names of the plan): one listing
    /// by the site's tag.
    async fn find_droplets(&self) -> Result<BTreeMap<String, Value>> {
        let existing = self
            .client
            .list(
                &format!("/v2/droplets?tag_name={}", self.plan.tag),
                "droplets",
            )
            .await?;
        Ok(existing
            .into_iter()
            .filter_map(|d| {
                let name = d["name"].as_str()?.to_owned();
                self.plan
                    .droplets
                    .iter()
                    .any(|p| p.name == name)
                    .then_some((name, d))
            })
            .collect())
    }

    async fn account(&self) -> Result<()> {
        let answer = self.client.get("/v2/account").await?;
        let account = &answer["account"];
        let status = account["status"].as_str().unwrap_or("unknown");
        if status != "active" {
            bail!(
                "the DigitalOcean account is `{status}`: {}; resolve it in the control panel first",
                account["status_message"]
                    .as_str()
                    .unwrap_or("no reason given")
            );
        }
        let limit = account["droplet_limit"].as_u64().unwrap_or(u64::MAX);
        let wanted = self.plan.droplets.len() as u64;
        if wanted > limit {
            bail!(
                "the site has {wanted} hosts but the account may create only {limit} droplets; \
                 ask DigitalOcean support to raise the droplet limit"
            );
        }
        info!(
            "{} ({}), droplet limit {limit}",
            account["email"].as_str().unwrap_or("?"),
            status
        );
        Ok(())
    }

    /// The site's tag and the public one (the firewalls apply to them).
    async fn tag(&self, outcome: &mut Outcome) -> Result<()> {
        // One listing for both.
        let existing = self.client.list("/v2/tags", "tags").await?;
        for tag in [&self.plan.tag, &self.plan.public_tag] {
            if existing.iter().any(|t| t["name"] == json!(tag)) {
                info!("{tag}: exists");
            } else {
                self.create("tag", "/v2/tags", &json!({"name": tag}), "tag", || {
                    self.find_tag(tag)
                })
                .await?;
                outcome.created.push(format!("tag {tag}"));
                info!("{tag}: created");
            }
        }
        Ok(())
    }

    /// Each firewall applies to a tag, so it protects every droplet with
    /// that tag from the moment the droplet exists.
    async fn firewall(&self, outcome: &mut Outcome) -> Result<()> {
        // One listing for all.
        let existing = self.client.list("/v2/firewalls", "firewalls").await?;
        for wanted in &self.plan.firewalls {
            let found = existing.iter().find(|f| f["name"] == json!(wanted.name));
            self.one_firewall(wanted, found.cloned(), outcome).await?;
        }
        Ok(())
    }

    async fn one_firewall(
        &self,
        wanted: &plan::FirewallPlan,
        found: Option<Value>,
        outcome: &mut Outcome,
    ) -> Result<()> {
        let tag = &self.plan.tag;
        match found {
            Some(existing) if wanted.matches(&existing, tag) => {
                info!("{}: exists with the site's rules", wanted.name);
            }
            Some(existing) => {
                let id = existing["id"]
                    .as_str()
                    .context("a firewall without an id")?;
                self.client
                    .put(&format!("/v2/firewalls/{id}"), &wanted.body(tag))
                    .await?;
                outcome
                    .created
                    .push(format!("firewall rules of {}", wanted.name));
                info!("{}: rules brought back to the site's", wanted.name);
            }
            None => {
                self.create(
                    "firewall",
                    "/v2/firewalls",
                    &wanted.body(tag),
                    "firewall",
                    || self.find_firewall(&wanted.name),
                )
                .await?;
                outcome.created.push(format!("firewall {}", wanted.name));
                info!(
                    "{}: created for the tag {} ({} inbound, {} outbound rules)",
                    wanted.name,
                    wanted.tag,
                    wanted.inbound.len(),
                    wanted.outbound.len()
                );
            }
        }
        Ok(())
    }

    async fn keys(&self, outcome: &mut Outcome) -> Result<Vec<u64>> {
        let on_account = self.client.list("/v2/account/keys", "ssh_keys").await?;
        let mut ids = Vec::new();
        for key in &self.plan.keys {
            let material = key.material();
            let id = match key_with(&on_account, &material) {
                Some(k) => {
                    info!(
                        "{}: on the account as `{}`",
                        short_key(&material),
                        k["name"].as_str().unwrap_or("?")
                    );
                    k["id"].as_u64()
                }
                None => {
                    let created = self
                        .create(
                            "ssh key",
                            "/v2/account/keys",
                            &json!({"name": key.name, "public_key": key.public_key}),
                            "ssh_key",
                            || self.find_key(&material),
                        )
                        .await?;
                    outcome.created.push(format!("ssh key {}", key.name));
                    info!("{}: added as `{}`", short_key(&material), key.name);
                    created["id"].as_u64()
                }
            };
            ids.push(id.context("an SSH key without an id in DigitalOcean's answer")?);
        }
        Ok(ids)
    }

    async fn find_key(&self, material: &str) -> Result<Option<Value>> {
        let keys = self.client.list("/v2/account/keys", "ssh_keys").await?;
        Ok(key_with(&keys, material))
    }

    async fn image(&self, outcome: &mut Outcome) -> Result<u64> {
        let wanted = &self.plan.image;
        let (id, available) = match self.find_image().await? {
            Some(image) => {
                if !has_tag(&image, &self.plan.tag) {
                    bail!(
                        "a custom image named `{}` exists (id {}) without the tag {}: it is not this \
                         site's; rename or delete it, then run launch again",
                        wanted.name,
                        image["id"],
                        self.plan.tag
                    );
                }
                info!("{}: exists (id {})", wanted.name, image["id"]);
                (image["id"].as_u64(), image["status"] == json!("available"))
            }
            None => {
                let created = self
                    .create(
                        "image",
                        "/v2/images",
                        &json!({
                            "name": wanted.name, "url": wanted.url, "region": self.plan.region,
                            "distribution": wanted.distribution, "description": wanted.description,
                            "tags": [self.plan.tag],
                        }),
                        "image",
                        || self.find_image(),
                    )
                    .await?;
                outcome.created.push(format!("image {}", wanted.name));
                info!("{}: importing from {}", wanted.name, wanted.url);
                (created["id"].as_u64(), false)
            }
        };
        let id = id.context("an image without an id in DigitalOcean's answer")?;
        if !available {
            self.wait_image(id).await?;
        }
        Ok(id)
    }

    async fn wait_image(&self, id: u64) -> Result<()> {
        let mut waiting = Waiting::start(format!("{}: importing", self.plan.image.name));
        loop {
            let answer = self.client.get(&format!("/v2/images/{id}")).await?;
            let image = &answer["image"];
            match image["status"].as_str() {
                Some("available") => {
                    let after = elapsed(waiting.elapsed());
                    drop(waiting);
                    info!("{}: available after {after}", self.plan.image.name);
                    return Ok(());
                }
                Some("deleted") => bail!("image {id} was deleted while importing"),
                _ => {}
            }
            if let Some(message) = image["error_message"].as_str().filter(|m| !m.is_empty()) {
                bail!(
                    "DigitalOcean could not import image {id}: {message}; check that {} is reachable",
                    self.plan.image.url
                );
            }
            if waiting.elapsed() > self.pace.image {
                bail!(
                    "image {id} still not available after {}; run launch again later, it resumes",
                    elapsed(self.pace.image)
                );
            }
            waiting.update(&format!(
                "status {}",
                image["status"].as_str().unwrap_or("unknown")
            ));
            tokio::time::sleep(self.pace.poll).await;
        }
    }

    async fn vpc(&self, outcome: &mut Outcome) -> Result<String> {
        let wanted = &self.plan.vpc;
        let id = match self.find_vpc().await? {
            Some(vpc) => {
                if vpc["region"] != json!(self.plan.region)
                    || vpc["ip_range"] != json!(wanted.ip_range)
                {
                    bail!(
                        "a VPC named `{}` exists in {} with range {}, but the site wants {} in {}; \
                         fix `vpc_range`/`region` in the site file or delete that VPC",
                        wanted.name,
                        vpc["region"],
                        vpc["ip_range"],
                        wanted.ip_range,
                        self.plan.region
                    );
                }
                info!("{} {}: exists", wanted.name, wanted.ip_range);
                vpc["id"].as_str().map(str::to_owned)
            }
            None => {
                let created = self
                    .create(
                        "vpc",
                        "/v2/vpcs",
                        &json!({"name": wanted.name, "region": self.plan.region,
                                "ip_range": wanted.ip_range, "description": wanted.description}),
                        "vpc",
                        || self.find_vpc(),
                    )
                    .await?;
                outcome.created.push(format!("vpc {}", wanted.name));
                info!("{} {}: created", wanted.name, wanted.ip_range);
                created["id"].as_str().map(str::to_owned)
            }
        };
        id.context("a VPC without an id in DigitalOcean's answer")
    }

    async fn publish(&self, outcome: &mut Outcome) -> Result<()> {
        let published = self
            .publisher
            .publish(self.firstboot)
            .await
            .map_err(anyhow::Error::new)?;
        info!("{published}");
        if published.changed() {
            outcome
                .created
                .push(format!("object {}", self.firstboot.object_name()));
        }
        Ok(())
    }

    async fn volumes(&self, outcome: &mut Outcome) -> Result<BTreeMap<String, String>> {
        let existing = self.region_volumes().await?;
        let mut known = BTreeMap::new();
        let mut missing = Vec::new();
        for volume in &self.plan.volumes {
            match existing.get(&volume.name) {
                Some(found) if !has_tag(found, &self.plan.tag) => bail!(
                    "a volume named `{}` exists in {} without the tag {}: it is not this site's; \
                     rename or delete it",
                    volume.name,
                    self.plan.region,
                    self.plan.tag
                ),
                Some(found) => {
                    let id = found["id"]
                        .as_str()
                        .context("a volume without an id in DigitalOcean's answer")?;
                    known.insert(volume.name.clone(), id.to_owned());
                }
                None => missing.push(volume),
            }
        }
        if !known.is_empty() {
            info!("{} volume(s) exist", known.len());
        }
        let created = each(missing, |volume| async move {
            let created = self
                .create(
                    "volume",
                    "/v2/volumes",
                    &json!({"size_gigabytes": volume.size_gib, "name": volume.name,
                            "region": self.plan.region, "description": volume.description,
                            "tags": [self.plan.tag]}),
                    "volume",
                    || self.find_volume(&volume.name),
                )
                .await?;
            let id = created["id"]
                .as_str()
                .context("a volume without an id in DigitalOcean's answer")?;
            info!("{}: created, {} GiB", volume.name, volume.size_gib);
            Ok((volume.name.clone(), id.to_owned()))
        })
        .await?;
        for (name, id) in created {
            outcome.created.push(format!("volume {name}"));
            known.insert(name, id);
        }
        Ok(known)
    }

    async fn droplets(
        &self,
        outcome: &mut Outcome,
        known: &Known,
    ) -> Result<BTreeMap<String, u64>> {
        let mut droplets: BTreeMap<String, u64> = BTreeMap::new();
        let mut starting = BTreeSet::new();
        for (name, droplet) in self.find_droplets().await? {
            if let Some(id) = droplet["id"].as_u64() {
                if droplet["status"] != json!("active") {
                    starting.insert(name.clone());
                }
                self.retag(&name, id, &droplet, outcome).await?;
                droplets.insert(name, id);
            }
        }
        if !droplets.is_empty() {
            info!("{} droplet(s) exist", droplets.len());
        }
        let mut bodies = Vec::new();
        for droplet in &self.plan.droplets {
            if droplets.contains_key(&droplet.name) {
                continue;
            }
            let volumes: Vec<&str> = droplet
                .volumes
                .iter()
                .filter_map(|v| known.volumes.get(v).map(String::as_str))
                .collect();
            let user_data = self
                .user_data
                .get(&droplet.host)
                .with_context(|| format!("no rendered config for host {}", droplet.host))?;
            bodies.push((
                droplet.name.clone(),
                json!({
                    "region": self.plan.region, "size": droplet.size, "image": known.image,
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
                match self.client.post("/v2/droplets", &request).await {
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
                let created: Vec<&Value> = match answer.get("droplets").and_then(Value::as_array) {
                    Some(list) => list.iter().collect(),
                    None => vec![&answer["droplet"]],
                };
                for droplet in created {
                    let (Some(name), Some(id)) = (droplet["name"].as_str(), droplet["id"].as_u64())
                    else {
                        bail!("DigitalOcean answered a droplet create without a name or id");
                    };
                    outcome.created.push(format!("droplet {name}"));
                    info!("{name}: created (id {id})");
                    droplets.insert(name.to_owned(), id);
                    starting.insert(name.to_owned());
                }
            }
            if !lost {
                break;
            }
            // Some answers were lost: whatever exists now was created.
            for (name, droplet) in self.find_droplets().await? {
                if let (false, Some(id)) = (droplets.contains_key(&name), droplet["id"].as_u64()) {
                    outcome.created.push(format!("droplet {name}"));
                    info!("{name}: created (id {id})");
                    droplets.insert(name.clone(), id);
                    starting.insert(name);
                }
            }
            bodies.retain(|(name, _)| !droplets.contains_key(name));
            tokio::time::sleep(self.pace.poll * attempt).await;
            attempt += 1;
        }
        self.wait_droplets(starting).await?;
        Ok(droplets)
    }

    /// An existing droplet gets the public tag its role wants (the public
    /// firewall applies by it), or loses it: a droplet launched before the
    /// firewall was split by role, or whose host changed role.
    async fn retag(
        &self,
        name: &str,
        id: u64,
        droplet: &Value,
        outcome: &mut Outcome,
    ) -> Result<()> {
        let Some(planned) = self.plan.droplets.iter().find(|d| d.name == name) else {
            return Ok(());
        };
        let public = &self.plan.public_tag;
        let wanted = planned.tags.contains(public);
        if wanted == has_tag(droplet, public) {
            return Ok(());
        }
        let path = format!("/v2/tags/{public}/resources");
        let body =
            json!({"resources": [{"resource_id": id.to_string(), "resource_type": "droplet"}]});
        if wanted {
            self.client.post_idempotent(&path, &body).await?;
            outcome.created.push(format!("tag {public} on {name}"));
            info!("{name}: tagged {public} (the public firewall applies)");
        } else {
            self.client.delete_with_body(&path, &body).await?;
            outcome.created.push(format!("tag {public} off {name}"));
            info!("{name}: untagged {public} (it no longer serves the public)");
        }
        Ok(())
    }

    /// Poll the site's droplets with one listing a round until every one
    /// of `starting` is active.
    async fn wait_droplets(&self, mut starting: BTreeSet<String>) -> Result<()> {
        if starting.is_empty() {
            return Ok(());
        }
        let mut waiting = Waiting::start("droplets starting");
        loop {
            tokio::time::sleep(self.pace.poll).await;
            let listed = self.find_droplets().await?;
            for name in starting.clone() {
                match listed.get(&name).map(|d| d["status"].as_str()) {
                    Some(Some("active")) => {
                        info!("{name}: active after {}", elapsed(waiting.elapsed()));
                        starting.remove(&name);
                    }
                    Some(Some("new")) => {}
                    Some(other) => bail!(
                        "droplet {name} is {} instead of starting; see it in the control panel",
                        other.unwrap_or("in an unknown state")
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
            if waiting.elapsed() > self.pace.droplet {
                bail!(
                    "{} droplet(s) still not active after {}; run launch again, it resumes",
                    starting.len(),
                    elapsed(self.pace.droplet)
                );
            }
            waiting.update(&format!("{} still new", starting.len()));
        }
    }

    /// Volumes are attached when their droplet is created; this repairs
    /// what is not (a volume added to the site file later). One listing
    /// of the region's volumes says what is attached where.
    async fn attachments(&self, outcome: &mut Outcome, known: &Known) -> Result<()> {
        let volumes = self.region_volumes().await?;
        let mut detached = Vec::new();
        for volume in &self.plan.volumes {
            let droplet = &self
                .plan
                .droplets
                .iter()
                .find(|d| d.host == volume.host)
                .context("a volume of no host")?
                .name;
            let droplet_id = *known.droplets.get(droplet).context("droplet not created")?;
            let volume_id = &known.volumes[&volume.name];
            let attached = volumes
                .get(&volume.name)
                .map(|v| ids(&v["droplet_ids"]))
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
            info!("all {} volume(s) attached", self.plan.volumes.len());
            return Ok(());
        }
        let attached = each(detached, |(volume, droplet, droplet_id, volume_id)| async move {
            let attached_now = || async {
                let answer = self.client.get(&format!("/v2/volumes/{volume_id}")).await?;
                let attached = ids(&answer["volume"]["droplet_ids"]).contains(&droplet_id);
                Ok(attached.then(|| json!({"status": "completed"})))
            };
            let action = self
                .create(
                    "attach",
                    &format!("/v2/volumes/{volume_id}/actions"),
                    &json!({"type": "attach", "droplet_id": droplet_id, "region": self.plan.region}),
                    "action",
                    attached_now,
                )
                .await?;
            if let Some(action_id) = action["id"].as_u64() {
                self.client
                    .wait_action(action_id, self.pace.volume, self.pace.poll)
                    .await?;
            }
            info!("{} attached to {droplet}", volume.name);
            Ok(format!("attachment {} to {droplet}", volume.name))
        })
        .await?;
        outcome.created.extend(attached);
        Ok(())
    }
}

/// The calls a launch would make, for `--dry-run`: nothing is sent.
pub fn dry_run(
    plan: &Plan,
    user_data: &BTreeMap<String, String>,
    publisher: &Publisher,
    api: &str,
) -> Vec<String> {
    let tag = &plan.tag;
    let region = &plan.region;
    let mut lines = vec![
        format!("API: {api}"),
        "[1] GET /v2/account: check the token and the droplet limit".into(),
        format!(
            "[2] GET /v2/tags; POST /v2/tags {{\"name\": \"{tag}\"}} and {{\"name\": \"{}\"}} if absent",
            plan.public_tag
        ),
        "[3] GET /v2/firewalls; POST /v2/firewalls for each absent, PUT where its rules differ \
         (before any droplet exists, so none boots unprotected):"
            .into(),
    ];
    for firewall in &plan.firewalls {
        let hosts = if firewall.hosts.is_empty() {
            "no host yet".to_owned()
        } else {
            firewall.hosts.join(", ")
        };
        lines.push(format!(
            "    {} for the tag {}: {hosts}",
            firewall.name, firewall.tag
        ));
        for rule in &firewall.inbound {
            let from = match rule.peers {
                plan::Peers::Anywhere => "anywhere",
                plan::Peers::Site => "the site",
            };
            lines.push(format!(
                "      in  {:<4} {:<11} from {from:<8} {}",
                rule.protocol,
                if rule.ports == "0" { "all" } else { rule.ports },
                rule.reason
            ));
        }
        for rule in &firewall.outbound {
            lines.push(format!(
                "      out {:<4} {:<11} {}",
                rule.protocol, "all", rule.reason
            ));
        }
    }
    lines.push(
        "    FreeIPA (its web UI and API on 443 of the core hosts, LDAP, Kerberos, DNS) \
         reaches the Internet on no host: it serves the site's nodes only"
            .into(),
    );
    lines.push("[4] GET /v2/account/keys; for each key not on the account:".into());
    for key in &plan.keys {
        lines.push(format!(
            "      POST /v2/account/keys {} ({})",
            key.name,
            short_key(&key.material())
        ));
    }
    lines.push(format!(
        "[5] GET /v2/images?private=true; POST /v2/images {} from {} if absent; poll GET /v2/images/ID until available",
        plan.image.name, plan.image.url
    ));
    lines.push(format!(
        "[6] GET /v2/vpcs; POST /v2/vpcs {} {} in {region} if absent",
        plan.vpc.name, plan.vpc.ip_range
    ));
    lines.push("[7] firstboot:".into());
    lines.extend(publisher.plan().into_iter().map(|l| format!("      {l}")));
    lines.push(format!(
        "[8] GET /v2/volumes?region={region}; POST /v2/volumes for each absent ({CONCURRENCY} at once):"
    ));
    for v in &plan.volumes {
        lines.push(format!(
            "      {} {} GiB (host {})",
            v.name, v.size_gib, v.host
        ));
    }
    lines.push(format!(
        "[9] GET /v2/droplets?tag_name={tag}; POST /v2/droplets for each host not there ({CONCURRENCY} at once), then poll that listing until all are active:"
    ));
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
    lines.push(format!(
        "[10] GET /v2/volumes?region={region}; POST /v2/volumes/ID/actions attach for each volume not attached to its droplet"
    ));
    lines
}

/// Attempts at one create, counting those whose answer was lost.
const CREATE_ATTEMPTS: u32 = 4;

/// Whether a failed call may have taken effect: its answer was lost
/// (timeout, reset) or was a server error.
fn ambiguous(e: &ApiError) -> bool {
    match e {
        ApiError::GaveUp { .. } => true,
        ApiError::Refused { status, .. } => status.is_server_error(),
        ApiError::Unreachable { .. } | ApiError::Malformed { .. } => false,
    }
}

pub fn has_tag(resource: &Value, tag: &str) -> bool {
    resource["tags"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t == tag))
}

/// The key of a listing with this key material (whatever its comment).
fn key_with(keys: &[Value], material: &str) -> Option<Value> {
    keys.iter()
        .find(|k| {
            k["public_key"]
                .as_str()
                .is_some_and(|p| plan::key_material(p) == material)
        })
        .cloned()
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect()
}

fn short_key(material: &str) -> String {
    let (kind, blob) = material.split_once(' ').unwrap_or((material, ""));
    let tail = &blob[blob.len().saturating_sub(12)..];
    format!("{kind} …{tail}")
}
