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

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::StreamExt;
use serde_json::Value;
use tracing::{info, warn, Instrument};

use super::kinds::{self, droplet, firewall, image, key, tag, volume, vpc, Kind};
use super::plan::Plan;
use crate::artifact::Firstboot;
use crate::digitalocean::{ApiError, Client};
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
pub struct Known {
    pub keys: Vec<u64>,
    pub image: u64,
    pub vpc: String,
    /// Volume name → id.
    pub volumes: BTreeMap<String, String>,
    /// Droplet name → id.
    pub droplets: BTreeMap<String, u64>,
}

pub struct Launch<'a> {
    pub client: &'a Client,
    pub plan: &'a Plan,
    /// The image to import, its release already chosen.
    pub image: &'a image::Import,
    /// Each host's user data: its rendered config, exactly as `render`
    /// writes it.
    pub user_data: &'a BTreeMap<String, String>,
    pub publisher: &'a Publisher,
    pub firstboot: &'a Firstboot,
    pub pace: Pace,
}

/// What a create came to: DigitalOcean's answer (the value under the
/// create's key), or, when an answer was lost, what was found to exist.
pub enum Created<T> {
    Answered(Value),
    Found(T),
}

/// Run `work` under the span of step `n` (1-based).
async fn step<T>(n: usize, work: impl Future<Output = Result<T>>) -> Result<T> {
    let span = tracing::info_span!("step", n, of = STEPS.len(), name = STEPS[n - 1]);
    work.instrument(span).await
}

/// Run `work` on every item, at most `CONCURRENCY` at once. Every item is
/// tried, so a rerun has less left to do; then the first error, if any,
/// is returned.
pub async fn each<T, R, F, Fut>(items: Vec<T>, work: F) -> Result<Vec<R>>
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
        step(2, tag::ensure(self, &mut outcome)).await?;
        step(3, firewall::ensure(self, &mut outcome)).await?;
        known.keys = step(4, key::ensure(self, &mut outcome)).await?;
        known.image = step(5, image::ensure(self, &mut outcome)).await?;
        known.vpc = step(6, vpc::ensure(self, &mut outcome)).await?;
        step(7, self.publish(&mut outcome)).await?;
        known.volumes = step(8, volume::ensure(self, &mut outcome)).await?;
        known.droplets = step(9, droplet::ensure(self, &mut outcome, &known)).await?;
        step(10, volume::attach(self, &mut outcome, &known)).await?;
        Ok(outcome)
    }

    /// Create a resource of kind `K` (POST to its collection) and read
    /// what DigitalOcean answered. When the answer is lost or a server
    /// error (it may or may not have happened), look with `find` before
    /// sending it again: a create is never repeated for something that
    /// exists.
    pub async fn create<K, F, Fut>(&self, body: &Value, find: F) -> Result<K>
    where
        K: Kind,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<K>>>,
    {
        match self
            .create_raw(K::NOUN, K::COLLECTION, body, K::ONE, find)
            .await?
        {
            Created::Answered(value) => kinds::decode(&format!("POST {}", K::COLLECTION), value),
            Created::Found(found) => Ok(found),
        }
    }

    /// POST a create whose answer is the value under `key`; `find` says
    /// whether an ambiguous attempt took effect after all.
    pub async fn create_raw<T, F, Fut>(
        &self,
        what: &str,
        path: &str,
        body: &Value,
        key: &str,
        find: F,
    ) -> Result<Created<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let mut attempt = 1;
        loop {
            match self.client.post(path, body).await {
                Ok(answer) => return Ok(Created::Answered(answer[key].clone())),
                Err(e) if ambiguous(&e) && attempt < CREATE_ATTEMPTS => {
                    warn!("{what}: {e}; checking whether it was created");
                    if let Some(found) = find().await? {
                        return Ok(Created::Found(found));
                    }
                    tokio::time::sleep(self.pace.poll * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
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
}

/// The calls a launch would make, for `--dry-run`: nothing is sent.
pub fn dry_run(
    plan: &Plan,
    image: &image::Import,
    user_data: &BTreeMap<String, String>,
    publisher: &Publisher,
    api: &str,
) -> Vec<String> {
    let mut firstboot = vec!["firstboot:".to_owned()];
    firstboot.extend(publisher.plan().into_iter().map(|l| format!("      {l}")));
    // One block a step: the array's length is the number of steps.
    let steps: [Vec<String>; STEPS.len()] = [
        vec!["GET /v2/account: check the token and the droplet limit".to_owned()],
        tag::describe(plan),
        firewall::describe(plan),
        key::describe(plan),
        image::describe(plan, image),
        vpc::describe(plan),
        firstboot,
        volume::describe(plan),
        droplet::describe(plan, user_data),
        volume::describe_attach(plan),
    ];
    let mut lines = vec![format!("API: {api}")];
    for (n, step) in steps.into_iter().enumerate() {
        for (i, line) in step.into_iter().enumerate() {
            lines.push(if i == 0 {
                format!("[{}] {line}", n + 1)
            } else {
                line
            });
        }
    }
    lines
}

/// Attempts at one create, counting those whose answer was lost.
pub const CREATE_ATTEMPTS: u32 = 4;

/// Whether a failed call may have taken effect: its answer was lost
/// (timeout, reset) or was a server error.
pub fn ambiguous(e: &ApiError) -> bool {
    match e {
        ApiError::GaveUp { .. } => true,
        ApiError::Refused { status, .. } => status.is_server_error(),
        ApiError::Unreachable { .. } | ApiError::Malformed { .. } => false,
    }
}
