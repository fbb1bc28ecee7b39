//! `builder launch`: ensure, step by step, that every resource of the plan
//! exists. Each step first finds its resources by name (and the site's
//! tag, where DigitalOcean has tags) and creates only what is missing, so
//! a second run changes nothing and an interrupted run, run again,
//! completes without duplicates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::plan::{self, Plan};
use crate::artifact::Firstboot;
use crate::digitalocean::{ApiError, Client};
use crate::log::elapsed;
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

/// The steps of a launch, in order; progress counts them.
pub const STEPS: &[&str] = &[
    "account",
    "tag",
    "ssh keys",
    "image",
    "vpc",
    "firstboot",
    "volumes",
    "droplets",
    "attachments",
    "firewall",
];

/// Progress lines on stderr: `[3/10] image: …`.
struct Progress {
    step: usize,
}

impl Progress {
    fn start(&mut self, name: &str) {
        self.step += 1;
        eprintln!("[{}/{}] {name}", self.step, STEPS.len());
    }

    fn say(&self, line: impl AsRef<str>) {
        eprintln!("      {}", line.as_ref());
    }
}

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

impl Launch<'_> {
    pub async fn run(&self) -> Result<Outcome> {
        let mut progress = Progress { step: 0 };
        let mut outcome = Outcome::default();
        let mut known = Known::default();

        progress.start("account");
        self.account(&progress).await?;
        progress.start("tag");
        self.tag(&progress, &mut outcome).await?;
        progress.start("ssh keys");
        known.keys = self.keys(&progress, &mut outcome).await?;
        progress.start("image");
        known.image = self.image(&progress, &mut outcome).await?;
        progress.start("vpc");
        known.vpc = self.vpc(&progress, &mut outcome).await?;
        progress.start("firstboot");
        let published = self
            .publisher
            .publish(self.firstboot)
            .await
            .map_err(anyhow::Error::new)?;
        progress.say(published.to_string());
        if published.changed() {
            outcome
                .created
                .push(format!("object {}", self.firstboot.object_name()));
        }
        progress.start("volumes");
        known.volumes = self.volumes(&progress, &mut outcome).await?;
        progress.start("droplets");
        known.droplets = self.droplets(&progress, &mut outcome, &known).await?;
        progress.start("attachments");
        self.attachments(&progress, &mut outcome, &known).await?;
        progress.start("firewall");
        self.firewall(&progress, &mut outcome).await?;
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
        Fut: std::future::Future<Output = Result<Option<Value>>>,
    {
        let mut attempt = 1;
        loop {
            match self.client.post(path, body).await {
                Ok(answer) => return Ok(answer[key].clone()),
                Err(e) if ambiguous(&e) && attempt < CREATE_ATTEMPTS => {
                    eprintln!("      {what}: {e}; checking whether it was created");
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

    async fn find_key(&self, material: &str) -> Result<Option<Value>> {
        let keys = self.client.list("/v2/account/keys", "ssh_keys").await?;
        Ok(keys.into_iter().find(|k| {
            k["public_key"]
                .as_str()
                .is_some_and(|p| plan::key_material(p) == material)
        }))
    }

    async fn find_tag(&self) -> Result<Option<Value>> {
        let tags = self.client.list("/v2/tags", "tags").await?;
        Ok(tags.into_iter().find(|t| t["name"] == json!(self.plan.tag)))
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

    async fn find_firewall(&self) -> Result<Option<Value>> {
        let firewalls = self.client.list("/v2/firewalls", "firewalls").await?;
        Ok(firewalls
            .into_iter()
            .find(|f| f["name"] == json!(self.plan.firewall.name)))
    }

    /// The site's droplets by name (only names of the plan).
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

    async fn account(&self, progress: &Progress) -> Result<()> {
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
        progress.say(format!(
            "{} ({}), droplet limit {limit}",
            account["email"].as_str().unwrap_or("?"),
            status
        ));
        Ok(())
    }

    async fn tag(&self, progress: &Progress, outcome: &mut Outcome) -> Result<()> {
        let tag = &self.plan.tag;
        if self.find_tag().await?.is_some() {
            progress.say(format!("{tag}: exists"));
        } else {
            self.create("tag", "/v2/tags", &json!({"name": tag}), "tag", || {
                self.find_tag()
            })
            .await?;
            outcome.created.push(format!("tag {tag}"));
            progress.say(format!("{tag}: created"));
        }
        Ok(())
    }

    async fn keys(&self, progress: &Progress, outcome: &mut Outcome) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for key in &self.plan.keys {
            let material = key.material();
            let id = match self.find_key(&material).await? {
                Some(k) => {
                    progress.say(format!(
                        "{}: on the account as `{}`",
                        short_key(&material),
                        k["name"].as_str().unwrap_or("?")
                    ));
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
                    progress.say(format!("{}: added as `{}`", short_key(&material), key.name));
                    created["id"].as_u64()
                }
            };
            ids.push(id.context("an SSH key without an id in DigitalOcean's answer")?);
        }
        Ok(ids)
    }

    async fn image(&self, progress: &Progress, outcome: &mut Outcome) -> Result<u64> {
        let wanted = &self.plan.image;
        let id = match self.find_image().await? {
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
                progress.say(format!("{}: exists (id {})", wanted.name, image["id"]));
                image["id"].as_u64()
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
                progress.say(format!("{}: importing from {}", wanted.name, wanted.url));
                created["id"].as_u64()
            }
        }
        .context("an image without an id in DigitalOcean's answer")?;
        self.wait_image(progress, id).await?;
        Ok(id)
    }

    async fn wait_image(&self, progress: &Progress, id: u64) -> Result<()> {
        let started = Instant::now();
        let mut told = Instant::now();
        loop {
            let answer = self.client.get(&format!("/v2/images/{id}")).await?;
            let image = &answer["image"];
            match image["status"].as_str() {
                Some("available") => {
                    progress.say(format!("available after {}", elapsed(started.elapsed())));
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
            if started.elapsed() > self.pace.image {
                bail!(
                    "image {id} still not available after {}; run launch again later, it resumes",
                    elapsed(self.pace.image)
                );
            }
            if told.elapsed() >= Duration::from_secs(30) {
                progress.say(format!(
                    "still importing ({}), status {}",
                    elapsed(started.elapsed()),
                    image["status"]
                ));
                told = Instant::now();
            }
            tokio::time::sleep(self.pace.poll).await;
        }
    }

    async fn vpc(&self, progress: &Progress, outcome: &mut Outcome) -> Result<String> {
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
                progress.say(format!("{} {}: exists", wanted.name, wanted.ip_range));
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
                progress.say(format!("{} {}: created", wanted.name, wanted.ip_range));
                created["id"].as_str().map(str::to_owned)
            }
        };
        id.context("a VPC without an id in DigitalOcean's answer")
    }

    async fn volumes(
        &self,
        progress: &Progress,
        outcome: &mut Outcome,
    ) -> Result<BTreeMap<String, String>> {
        let mut known = BTreeMap::new();
        for volume in &self.plan.volumes {
            let id = match self.find_volume(&volume.name).await? {
                Some(existing) => {
                    if !has_tag(&existing, &self.plan.tag) {
                        bail!(
                            "a volume named `{}` exists in {} without the tag {}: it is not this \
                             site's; rename or delete it",
                            volume.name,
                            self.plan.region,
                            self.plan.tag
                        );
                    }
                    progress.say(format!("{}: exists", volume.name));
                    existing["id"].as_str().map(str::to_owned)
                }
                None => {
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
                    outcome.created.push(format!("volume {}", volume.name));
                    progress.say(format!("{}: created, {} GiB", volume.name, volume.size_gib));
                    created["id"].as_str().map(str::to_owned)
                }
            };
            let id = id.context("a volume without an id in DigitalOcean's answer")?;
            known.insert(volume.name.clone(), id);
        }
        Ok(known)
    }

    async fn droplets(
        &self,
        progress: &Progress,
        outcome: &mut Outcome,
        known: &Known,
    ) -> Result<BTreeMap<String, u64>> {
        let mut droplets: BTreeMap<String, u64> = BTreeMap::new();
        let mut pending = Vec::new();
        for (name, droplet) in self.find_droplets().await? {
            if let Some(id) = droplet["id"].as_u64() {
                droplets.insert(name, id);
                if droplet["status"] != json!("active") {
                    pending.push(id);
                }
            }
        }
        let mut bodies = Vec::new();
        for droplet in &self.plan.droplets {
            if droplets.contains_key(&droplet.name) {
                progress.say(format!("{}: exists", droplet.name));
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
                    "tags": [self.plan.tag], "volumes": volumes, "monitoring": true, "ipv6": true,
                }),
            ));
        }
        let mut attempt = 1;
        while !bodies.is_empty() {
            let mut lost = false;
            for request in plan::create_requests(&bodies)? {
                let answer = match self.client.post("/v2/droplets", &request).await {
                    Ok(answer) => answer,
                    Err(e) if ambiguous(&e) && attempt < CREATE_ATTEMPTS => {
                        eprintln!("      droplets: {e}; checking which were created");
                        lost = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
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
                    progress.say(format!("{name}: created (id {id})"));
                    droplets.insert(name.to_owned(), id);
                    pending.push(id);
                }
            }
            if !lost {
                break;
            }
            // Some answers were lost: whatever exists now was created.
            for (name, droplet) in self.find_droplets().await? {
                if let (false, Some(id)) = (droplets.contains_key(&name), droplet["id"].as_u64()) {
                    outcome.created.push(format!("droplet {name}"));
                    progress.say(format!("{name}: created (id {id})"));
                    droplets.insert(name, id);
                    pending.push(id);
                }
            }
            bodies.retain(|(name, _)| !droplets.contains_key(name));
            tokio::time::sleep(self.pace.poll * attempt).await;
            attempt += 1;
        }
        self.wait_droplets(progress, &pending).await?;
        Ok(droplets)
    }

    async fn wait_droplets(&self, progress: &Progress, ids: &[u64]) -> Result<()> {
        let started = Instant::now();
        let mut told = Instant::now();
        let mut waiting: Vec<u64> = ids.to_vec();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for &id in &waiting {
                let answer = self.client.get(&format!("/v2/droplets/{id}")).await?;
                match answer["droplet"]["status"].as_str() {
                    Some("active") => progress.say(format!(
                        "{}: active after {}",
                        answer["droplet"]["name"].as_str().unwrap_or("?"),
                        elapsed(started.elapsed())
                    )),
                    Some("new") => still.push(id),
                    other => bail!(
                        "droplet {id} is {} instead of starting; see it in the control panel",
                        other.unwrap_or("in an unknown state")
                    ),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if started.elapsed() > self.pace.droplet {
                bail!(
                    "{} droplet(s) still not active after {}; run launch again, it resumes",
                    waiting.len(),
                    elapsed(self.pace.droplet)
                );
            }
            if told.elapsed() >= Duration::from_secs(30) {
                progress.say(format!(
                    "{} droplet(s) starting ({})",
                    waiting.len(),
                    elapsed(started.elapsed())
                ));
                told = Instant::now();
            }
            tokio::time::sleep(self.pace.poll).await;
        }
        Ok(())
    }

    /// Volumes are attached when their droplet is created; this repairs
    /// what is not (a volume added to the site file later).
    async fn attachments(
        &self,
        progress: &Progress,
        outcome: &mut Outcome,
        known: &Known,
    ) -> Result<()> {
        let mut repaired = 0;
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
            let answer = self.client.get(&format!("/v2/volumes/{volume_id}")).await?;
            let attached = ids(&answer["volume"]["droplet_ids"]);
            if attached.contains(&droplet_id) {
                continue;
            }
            if let Some(other) = attached.first() {
                bail!(
                    "volume {} is attached to droplet {other}, not to {droplet}; detach it by hand",
                    volume.name
                );
            }
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
            outcome
                .created
                .push(format!("attachment {} to {droplet}", volume.name));
            progress.say(format!("{} attached to {droplet}", volume.name));
            repaired += 1;
        }
        if repaired == 0 {
            progress.say(format!(
                "all {} volume(s) attached",
                self.plan.volumes.len()
            ));
        }
        Ok(())
    }

    async fn firewall(&self, progress: &Progress, outcome: &mut Outcome) -> Result<()> {
        let wanted = &self.plan.firewall;
        let tag = &self.plan.tag;
        match self.find_firewall().await? {
            Some(existing) if wanted.matches(&existing, tag) => {
                progress.say(format!("{}: exists with the site's rules", wanted.name));
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
                progress.say(format!("{}: rules brought back to the site's", wanted.name));
            }
            None => {
                self.create(
                    "firewall",
                    "/v2/firewalls",
                    &wanted.body(tag),
                    "firewall",
                    || self.find_firewall(),
                )
                .await?;
                outcome.created.push(format!("firewall {}", wanted.name));
                progress.say(format!(
                    "{}: created ({} inbound, {} outbound rules)",
                    wanted.name,
                    wanted.inbound.len(),
                    wanted.outbound.len()
                ));
            }
        }
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
        format!("[2] GET /v2/tags; POST /v2/tags {{\"name\": \"{tag}\"}} if absent"),
        "[3] GET /v2/account/keys; for each key not on the account:".into(),
    ];
    for key in &plan.keys {
        lines.push(format!(
            "      POST /v2/account/keys {} ({})",
            key.name,
            short_key(&key.material())
        ));
    }
    lines.push(format!(
        "[4] GET /v2/images?private=true; POST /v2/images {} from {} if absent; poll GET /v2/images/ID until available",
        plan.image.name, plan.image.url
    ));
    lines.push(format!(
        "[5] GET /v2/vpcs; POST /v2/vpcs {} {} in {region} if absent",
        plan.vpc.name, plan.vpc.ip_range
    ));
    lines.push("[6] firstboot:".into());
    lines.extend(publisher.plan().into_iter().map(|l| format!("      {l}")));
    lines.push("[7] for each volume, GET /v2/volumes?name=…; POST /v2/volumes if absent:".into());
    for v in &plan.volumes {
        lines.push(format!(
            "      {} {} GiB (host {})",
            v.name, v.size_gib, v.host
        ));
    }
    lines.push(format!(
        "[8] GET /v2/droplets?tag_name={tag}; POST /v2/droplets for each host not there, then poll until active:"
    ));
    for d in &plan.droplets {
        let size = user_data.get(&d.host).map_or(0, String::len);
        lines.push(format!(
            "      {} {} user data {size} bytes, volumes [{}]",
            d.name,
            d.size,
            d.volumes.join(", ")
        ));
    }
    lines.push(
        "[9] GET /v2/volumes/ID for each volume; POST /v2/volumes/ID/actions attach if not attached"
            .into(),
    );
    lines.push(format!(
        "[10] GET /v2/firewalls; POST /v2/firewalls {} if absent, PUT if its rules differ:",
        plan.firewall.name
    ));
    for rule in &plan.firewall.inbound {
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
    for rule in &plan.firewall.outbound {
        lines.push(format!(
            "      out {:<4} {:<11} {}",
            rule.protocol, "all", rule.reason
        ));
    }
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
