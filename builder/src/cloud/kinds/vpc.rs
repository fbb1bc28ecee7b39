//! The site's VPC: its private network, in the site's region with the
//! site file's range. A VPC cannot carry a tag, so one is the site's when
//! it has the site's VPC name and the description builder gave it.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::{Doomed, Kind};
use crate::cloud::launch::{Launch, Outcome, Pace};
use crate::cloud::plan::Plan;
use crate::digitalocean::Client;
use crate::log::{elapsed, Waiting};

#[derive(Debug, Clone)]
pub struct VpcPlan {
    pub name: String,
    pub ip_range: String,
    pub description: String,
}

/// A VPC as DigitalOcean shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub region: String,
    pub ip_range: String,
    #[serde(default)]
    pub description: Option<String>,
}

impl Kind for Vpc {
    const NOUN: &'static str = "vpc";
    const COLLECTION: &'static str = "/v2/vpcs";
    const MANY: &'static str = "vpcs";
    const ONE: &'static str = "vpc";

    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> String {
        self.id.clone()
    }
    fn planned(plan: &Plan, _hosts: &[&str], name: &str) -> bool {
        name == plan.vpc.name
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        if self.name != plan.vpc.name {
            Some("not the site's VPC".into())
        } else if self.description.as_deref() != Some(plan.vpc.description.as_str()) {
            Some(format!(
                "its description is not the site's (`{}`)",
                plan.vpc.description
            ))
        } else {
            None
        }
    }
}

/// Launch: the VPC exists, where and as wide as the site wants; its id.
pub async fn ensure(launch: &Launch<'_>, outcome: &mut Outcome) -> Result<String> {
    let plan = launch.plan;
    let wanted = &plan.vpc;
    let find = || super::find::<Vpc>(launch.client, plan, &wanted.name);
    let vpc = match find().await? {
        Some(vpc) => {
            let vpc = super::adopt(vpc, plan)?;
            if vpc.region != plan.region || vpc.ip_range != wanted.ip_range {
                bail!(
                    "a VPC named `{}` exists in {} with range {}, but the site wants {} in {}; \
                     fix `vpc_range`/`region` in the site file or delete that VPC",
                    wanted.name,
                    vpc.region,
                    vpc.ip_range,
                    wanted.ip_range,
                    plan.region
                );
            }
            info!("{} {}: exists", wanted.name, wanted.ip_range);
            vpc
        }
        None => {
            let created = launch
                .create::<Vpc, _, _>(
                    &json!({"name": wanted.name, "region": plan.region,
                            "ip_range": wanted.ip_range, "description": wanted.description}),
                    find,
                )
                .await?;
            outcome.created.push(format!("vpc {}", wanted.name));
            info!("{} {}: created", wanted.name, wanted.ip_range);
            created
        }
    };
    Ok(vpc.id)
}

/// What launch does, for `--dry-run`.
pub fn describe(plan: &Plan) -> Vec<String> {
    vec![format!(
        "GET {0}; POST {0} {1} {2} in {3} if absent",
        Vpc::COLLECTION,
        plan.vpc.name,
        plan.vpc.ip_range,
        plan.region
    )]
}

/// Delete the VPC once its droplets are gone, which takes DigitalOcean a
/// little while after their deletes are accepted.
pub async fn delete(client: &Client, vpc: &Doomed, pace: &Pace) -> Result<()> {
    let mut waiting = Waiting::start(format!("vpc {}: waiting for its members to go", vpc.name));
    loop {
        let members = client
            .list(&format!("{}/members", vpc.path), "members")
            .await;
        let empty = match members {
            Ok(m) => m.is_empty(),
            Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if empty {
            return super::gone(client.delete(&vpc.path).await)
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
