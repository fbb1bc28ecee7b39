//! The DigitalOcean resource kinds of a site, one home each. A kind's
//! module holds what the site wants of it (computed by `Plan` from the
//! site file), what DigitalOcean shows of one (a typed record, read
//! strictly: a listing this builder cannot read is an error naming the
//! kind, never a silent default), when one is provably the site's, how
//! `launch` ensures it, what `launch --dry-run` says of it, and what
//! `destroy` removes. Launch, its dry run and destroy all go through
//! here, so a new kind is a new module and a line in each command.
//!
//! Ownership is one rule per kind, shared: what launch adopts is exactly
//! what destroy would delete. Droplets, volumes and images carry the
//! site's tag; VPCs and firewalls cannot carry tags, so their name and a
//! site-specific mark (a VPC's description, a firewall applying to
//! exactly its tag) prove them the site's.

pub mod droplet;
pub mod firewall;
pub mod image;
pub mod key;
pub mod tag;
pub mod volume;
pub mod vpc;

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::plan::Plan;
use crate::digitalocean::Client;

/// One kind of DigitalOcean resource a site has.
pub trait Kind: DeserializeOwned {
    /// The word in messages and in destroy's list.
    const NOUN: &'static str;
    /// Where creates are POSTed; one resource is at `COLLECTION/id`.
    const COLLECTION: &'static str;
    /// The key of the array in a listing's answer.
    const MANY: &'static str;
    /// The key of the one resource in a create's answer.
    const ONE: &'static str;

    /// The listing that shows every one the site may have, narrowed by
    /// region or tag where the API can.
    fn listing(_plan: &Plan) -> String {
        Self::COLLECTION.to_owned()
    }
    fn name(&self) -> &str;
    fn id(&self) -> String;
    /// `None` when it is provably the site's; else why it is not. Launch
    /// refuses to adopt such a resource and destroy leaves it alone.
    fn not_the_sites(&self, plan: &Plan) -> Option<String>;
    /// Where it is deleted.
    fn path(&self) -> String {
        format!("{}/{}", Self::COLLECTION, self.id())
    }
    /// Whether the site, limited to `hosts`, has one named `name`: destroy
    /// deletes those that are the site's and says why it leaves the rest.
    fn planned(plan: &Plan, hosts: &[&str], name: &str) -> bool;
    /// The listing destroy reads: by default launch's; wider where a
    /// resource with a site name but without the site's mark must be seen
    /// to be left alone.
    fn destroy_listing(plan: &Plan) -> String {
        Self::listing(plan)
    }
}

/// A resource launch found by name, if it is the site's; else an error
/// saying why not and what to do.
pub fn adopt<K: Kind>(found: K, plan: &Plan) -> Result<K> {
    match found.not_the_sites(plan) {
        None => Ok(found),
        Some(why) => Err(anyhow!(
            "a {} named `{}` exists (id {}) but {why}: it is not provably the site's; rename \
             or delete it, then run launch again",
            K::NOUN,
            found.name(),
            found.id()
        )),
    }
}

/// Destroy's survey of kind `K`: the site's resources of `hosts` (with
/// `all`, every one that is the site's), and those with a site name that
/// are not the site's, left alone with why.
pub async fn survey<K: Kind>(
    client: &Client,
    plan: &Plan,
    hosts: &[&str],
    all: bool,
    doomed: &mut Vec<Doomed>,
    left_alone: &mut Vec<String>,
) -> Result<()> {
    let found = list_at::<K>(client, &K::destroy_listing(plan)).await?;
    let named = |name: &str| K::planned(plan, hosts, name);
    sort_out(&found, plan, named, all, doomed, left_alone);
    Ok(())
}

/// Read one resource of kind `K` from an answer to `what`.
pub fn decode<K: Kind>(what: &str, value: Value) -> Result<K> {
    let name = value["name"].as_str().unwrap_or("?").to_owned();
    serde_json::from_value(value).map_err(|e| {
        anyhow!(
            "DigitalOcean's answer to {what}: {} `{name}` is not what its API documents ({e})",
            K::NOUN
        )
    })
}

/// Every resource of kind `K` the site may have: one listing.
pub async fn list<K: Kind>(client: &Client, plan: &Plan) -> Result<Vec<K>> {
    list_at(client, &K::listing(plan)).await
}

/// Every resource of kind `K` that the listing at `path` shows.
pub async fn list_at<K: Kind>(client: &Client, path: &str) -> Result<Vec<K>> {
    client
        .list(path, K::MANY)
        .await?
        .into_iter()
        .map(|v| decode(&format!("GET {path}"), v))
        .collect()
}

/// The resource of kind `K` named `name`, if there is one.
pub async fn find<K: Kind>(client: &Client, plan: &Plan, name: &str) -> Result<Option<K>> {
    Ok(list::<K>(client, plan)
        .await?
        .into_iter()
        .find(|k| k.name() == name))
}

/// The one resource a create answered with.
pub fn created<K: Kind>(answer: &Value) -> Result<K> {
    decode(&format!("POST {}", K::COLLECTION), answer[K::ONE].clone())
}

/// A resource destroy deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct Doomed {
    pub kind: &'static str,
    pub name: String,
    pub id: String,
    /// Where it is deleted.
    pub path: String,
}

impl Doomed {
    pub fn of<K: Kind>(resource: &K) -> Doomed {
        Doomed {
            kind: K::NOUN,
            name: resource.name().to_owned(),
            id: resource.id(),
            path: resource.path(),
        }
    }
}

/// What destroy does with the listed resources of one kind: those that
/// are provably the site's and either named by the scope (`named`) or,
/// with `every_one_of_the_sites`, any of the site's, are doomed; a named
/// one that is not the site's is left alone, with why.
pub fn sort_out<K: Kind>(
    found: &[K],
    plan: &Plan,
    named: impl Fn(&str) -> bool,
    every_one_of_the_sites: bool,
    doomed: &mut Vec<Doomed>,
    left_alone: &mut Vec<String>,
) {
    for resource in found {
        let is_named = named(resource.name());
        match resource.not_the_sites(plan) {
            None if is_named || every_one_of_the_sites => doomed.push(Doomed::of(resource)),
            Some(why) if is_named => left_alone.push(format!(
                "{:<8} {} (id {}): {why}",
                K::NOUN,
                resource.name(),
                resource.id()
            )),
            _ => {}
        }
    }
}

/// Whether a resource's tags include `tag`.
pub fn tagged(tags: &[String], tag: &str) -> bool {
    tags.iter().any(|t| t == tag)
}

/// A list that the API may give as `null` (an empty list, as it means).
pub fn list_or_null<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A 404 on delete means someone was faster: the goal is reached.
pub fn gone(result: Result<(), crate::digitalocean::ApiError>) -> Result<()> {
    match result {
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) => Ok(()),
        other => Ok(other?),
    }
}

/// Delete one doomed resource; a 404 counts as deleted.
pub async fn delete(client: &Client, doomed: &Doomed) -> Result<()> {
    gone(client.delete(&doomed.path).await)
        .map_err(|e| e.context(format!("deleting {} {}", doomed.kind, doomed.name)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cloud::plan::tests::site;

    fn plan() -> Plan {
        Plan::new(&site(4)).unwrap()
    }

    fn read<K: Kind>(value: Value) -> K {
        decode("a test", value).unwrap()
    }

    /// One rule per kind decides what is the site's; launch refuses what
    /// it rejects, destroy leaves it.
    #[test]
    fn each_kind_says_what_is_the_sites_and_why_not() {
        let plan = plan();
        let tag = plan.tag.clone();
        let ours = |k: Option<String>| assert_eq!(k, None);
        let not = |k: Option<String>, why: &str| {
            let k = k.expect("taken for the site's");
            assert!(k.contains(why), "{k}");
        };
        let droplet = |tags: Value| -> droplet::Droplet {
            read(json!({"id": 1, "name": "node1.example.com", "status": "active", "tags": tags}))
        };
        ours(droplet(json!([tag])).not_the_sites(&plan));
        not(droplet(json!([])).not_the_sites(&plan), "lacks the tag");
        not(droplet(Value::Null).not_the_sites(&plan), "lacks the tag");

        let volume = |tags: Value| -> volume::Volume {
            read(json!({"id": "v", "name": "x", "droplet_ids": null, "tags": tags}))
        };
        ours(volume(json!(["other", tag])).not_the_sites(&plan));
        not(
            volume(json!(["other"])).not_the_sites(&plan),
            "lacks the tag",
        );

        let image = |name: &str, tags: Value| -> image::Image {
            read(json!({"id": 3, "name": name, "status": "available", "tags": tags}))
        };
        // Every release the site imported is its own; a name that is not
        // `fedora-coreos-<release>` is not.
        for release in ["44.20260707.3.1", "44.20261101.3.0"] {
            let name = format!("fedora-coreos-{release}");
            ours(image(&name, json!([tag])).not_the_sites(&plan));
            not(
                image(&name, json!([])).not_the_sites(&plan),
                "lacks the tag",
            );
        }
        for name in [
            "other",
            "fedora-coreos-",
            "fedora-coreos-latest",
            "lab-bookworm",
        ] {
            not(
                image(name, json!([tag])).not_the_sites(&plan),
                "not the site's image",
            );
        }

        let vpc = |description: &str| -> vpc::Vpc {
            read(json!({"id": "u", "name": plan.vpc.name, "region": "ams3",
                        "ip_range": "10.0.0.0/24", "description": description}))
        };
        ours(vpc(&plan.vpc.description).not_the_sites(&plan));
        not(vpc("the operator's").not_the_sites(&plan), "description");

        let firewall = |name: &str, tags: Value| -> firewall::Firewall {
            read(json!({"id": "f", "name": name, "tags": tags}))
        };
        let public = &plan.firewalls[1];
        ours(firewall(&public.name, json!([public.tag])).not_the_sites(&plan));
        not(
            firewall(&public.name, json!([public.tag, "web"])).not_the_sites(&plan),
            "exactly the tag",
        );
        not(
            firewall(&public.name, json!([tag])).not_the_sites(&plan),
            "exactly the tag",
        );
        not(
            firewall("other", json!([public.tag])).not_the_sites(&plan),
            "not a firewall",
        );

        let t = |name: &str| -> tag::Tag { read(json!({"name": name})) };
        ours(t(&plan.public_tag).not_the_sites(&plan));
        not(
            t("site:other").not_the_sites(&plan),
            "not one of the site's tags",
        );
    }

    #[test]
    fn destroy_takes_the_named_and_with_all_every_one_of_the_sites() {
        let plan = plan();
        let droplets: Vec<droplet::Droplet> = [
            ("node1.example.com", true),
            ("node2.example.com", false),
            ("removed.example.com", true),
            ("elsewhere.example.com", false),
        ]
        .iter()
        .enumerate()
        .map(|(i, (name, tagged))| {
            let tags = if *tagged {
                json!([plan.tag])
            } else {
                json!([])
            };
            read(json!({"id": i, "name": name, "status": "active", "tags": tags}))
        })
        .collect();
        let named = |n: &str| n == "node1.example.com" || n == "node2.example.com";
        let (mut doomed, mut left) = (Vec::new(), Vec::new());
        sort_out(&droplets, &plan, named, false, &mut doomed, &mut left);
        let names = |d: &[Doomed]| d.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&doomed), ["node1.example.com"]);
        assert_eq!(doomed[0].path, "/v2/droplets/0");
        assert_eq!(left.len(), 1);
        assert!(left[0].contains("node2.example.com") && left[0].contains("lacks the tag"));

        let (mut doomed, mut left) = (Vec::new(), Vec::new());
        sort_out(&droplets, &plan, named, true, &mut doomed, &mut left);
        assert_eq!(names(&doomed), ["node1.example.com", "removed.example.com"]);
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn an_unreadable_listing_names_the_kind_and_the_call() {
        let err = decode::<volume::Volume>(
            "GET /v2/volumes?region=ams3",
            json!({"name": "data-1", "id": 7}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("GET /v2/volumes?region=ams3") && err.contains("volume `data-1`"),
            "{err}"
        );
    }
}
