//! Tags: the site's, which every taggable resource of the site carries
//! and the site firewall applies to, and the public one, which the hosts
//! serving the public (the workers) carry and the public firewall applies
//! to.

use anyhow::Result;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::Kind;
use crate::cloud::launch::{Launch, Outcome};
use crate::cloud::plan::Plan;
use crate::digitalocean::Client;

/// A tag as DigitalOcean shows it (`tag` in the API).
#[derive(Debug, Clone, Deserialize)]
pub struct Tag {
    pub name: String,
}

impl Kind for Tag {
    const NOUN: &'static str = "tag";
    const COLLECTION: &'static str = "/v2/tags";
    const MANY: &'static str = "tags";
    const ONE: &'static str = "tag";

    fn name(&self) -> &str {
        &self.name
    }
    /// A tag is named by its name.
    fn id(&self) -> String {
        self.name.clone()
    }
    fn planned(plan: &Plan, _hosts: &[&str], name: &str) -> bool {
        wanted(plan).contains(&name)
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        (!wanted(plan).contains(&self.name.as_str())).then(|| "not one of the site's tags".into())
    }
}

/// The site's tags, the public one first (it goes first on destroy).
fn wanted(plan: &Plan) -> [&str; 2] {
    [&plan.public_tag, &plan.tag]
}

/// Launch: both tags exist (one listing for both).
pub async fn ensure(launch: &Launch<'_>, outcome: &mut Outcome) -> Result<()> {
    let existing = super::list::<Tag>(launch.client, launch.plan).await?;
    for tag in [&launch.plan.tag, &launch.plan.public_tag] {
        if existing.iter().any(|t| &t.name == tag) {
            info!("{tag}: exists");
            continue;
        }
        launch
            .create::<Tag, _, _>(&json!({"name": tag}), || {
                super::find::<Tag>(launch.client, launch.plan, tag)
            })
            .await?;
        outcome.created.push(format!("tag {tag}"));
        info!("{tag}: created");
    }
    Ok(())
}

/// What launch does, for `--dry-run`.
pub fn describe(plan: &Plan) -> Vec<String> {
    vec![format!(
        "GET {}; POST {} {{\"name\": \"{}\"}} and {{\"name\": \"{}\"}} if absent",
        Tag::COLLECTION,
        Tag::COLLECTION,
        plan.tag,
        plan.public_tag
    )]
}

/// Destroy (`--all`): the site's tags that exist, each looked up rather
/// than deleted blindly (a DELETE of a tag already gone is a 404 for
/// nothing).
pub async fn survey(client: &Client, plan: &Plan) -> Result<Vec<super::Doomed>> {
    let mut found = Vec::new();
    for name in wanted(plan) {
        match client.get(&format!("{}/{name}", Tag::COLLECTION)).await {
            Ok(answer) => {
                let tag: Tag =
                    super::decode(&format!("GET /v2/tags/{name}"), answer["tag"].clone())?;
                found.push(super::Doomed::of(&tag));
            }
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(found)
}
