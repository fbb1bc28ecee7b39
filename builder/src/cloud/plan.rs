//! What a site needs on DigitalOcean, computed from the site file alone:
//! no network, no secrets. `launch` ensures it (adding each droplet's
//! rendered config as its user data), `--dry-run` prints it, `status` and
//! `destroy` find resources by the same names.

use anyhow::{bail, Result};
use serde_json::{json, Value};

pub use super::kinds::droplet::DropletPlan;
pub use super::kinds::firewall::{FirewallPlan, Peers, Rule};
pub use super::kinds::image::ImagePlan;
pub use super::kinds::key::{key_material, KeyPlan};
pub use super::kinds::volume::VolumePlan;
pub use super::kinds::vpc::VpcPlan;
use crate::render::USER_DATA_LIMIT;
use crate::site::Site;

/// DigitalOcean creates at most this many droplets in one call.
pub const MAX_NAMES_PER_CREATE: usize = 10;

#[derive(Debug, Clone)]
pub struct Plan {
    /// The tag every taggable resource of the site carries; destroy only
    /// touches what carries it.
    pub tag: String,
    pub region: String,
    pub keys: Vec<KeyPlan>,
    pub image: ImagePlan,
    pub vpc: VpcPlan,
    pub volumes: Vec<VolumePlan>,
    pub droplets: Vec<DropletPlan>,
    /// The site's firewalls: one for every host, one for the hosts that
    /// serve the public (the workers), each applying to a tag.
    pub firewalls: Vec<FirewallPlan>,
    /// The tag of the hosts that serve the public: the public firewall
    /// applies to it.
    pub public_tag: String,
}

impl Plan {
    /// The plan of a whole site.
    pub fn new(site: &Site) -> Result<Plan> {
        let slug = site.domain.as_str().replace('.', "-");
        let tag = format!("site:{slug}");
        let public_tag = format!("{tag}:public");
        let region = site.region.as_str().to_owned();
        let keys = site
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, key)| KeyPlan {
                name: format!("{slug}-{}", i + 1),
                public_key: key.as_str().to_owned(),
            })
            .collect();

        let image = ImagePlan::for_site(site)?;

        let vpc = VpcPlan {
            name: format!("{slug}-site"),
            ip_range: site.vpc_range.to_string(),
            description: format!("site {} (builder)", site.domain),
        };

        let mut volumes = Vec::new();
        let mut droplets = Vec::new();
        for host in &site.hosts {
            let name = host.name.as_str();
            let mut attached = Vec::new();
            for (what, size) in [
                ("data", host.volumes.data_gib),
                ("swap", host.volumes.swap_gib),
            ] {
                if size > 0 {
                    let volume = site.resource_name(host, what);
                    attached.push(volume.clone());
                    volumes.push(VolumePlan {
                        name: volume,
                        host: name.to_owned(),
                        size_gib: size,
                        description: format!("{what} of {name}.{} (builder)", site.domain),
                    });
                }
            }
            let mut tags = vec![tag.clone()];
            if host.role == node_contract::Role::Worker {
                tags.push(public_tag.clone());
            }
            droplets.push(DropletPlan {
                host: name.to_owned(),
                name: format!("{name}.{}", site.domain),
                size: host.size.as_str().to_owned(),
                volumes: attached,
                tags,
            });
        }
        let carrying = |t: &str| -> Vec<String> {
            droplets
                .iter()
                .filter(|d| d.tags.iter().any(|x| x == t))
                .map(|d| d.host.clone())
                .collect()
        };
        let firewalls = vec![
            FirewallPlan::every_host(format!("{slug}-site"), &tag, carrying(&tag)),
            FirewallPlan::public(format!("{slug}-public"), &public_tag, carrying(&public_tag)),
        ];

        Ok(Plan {
            firewalls,
            public_tag,
            tag,
            region,
            keys,
            image,
            vpc,
            volumes,
            droplets,
        })
    }
}

/// The create requests for droplets, each given everything but its name
/// (`common`): droplets whose bodies are identical share one call of at
/// most ten `names`, the rest get one call each. Rendered configs are
/// per host (each carries its own node.json and join credential), so on
/// a real site every droplet has its own call: DigitalOcean gives every
/// droplet of a multi-create the same user data.
pub fn create_requests(droplets: &[(String, Value)]) -> Result<Vec<Value>> {
    let mut groups: Vec<(Value, Vec<String>)> = Vec::new();
    for (name, common) in droplets {
        if let Some(data) = common["user_data"].as_str() {
            if data.len() > USER_DATA_LIMIT {
                bail!(
                    "droplet {name}: user data of {} bytes exceeds DigitalOcean's limit ({USER_DATA_LIMIT}); not sent",
                    data.len()
                );
            }
        }
        match groups
            .iter_mut()
            .find(|(c, names)| c == common && names.len() < MAX_NAMES_PER_CREATE)
        {
            Some((_, names)) => names.push(name.clone()),
            None => groups.push((common.clone(), vec![name.clone()])),
        }
    }
    Ok(groups
        .into_iter()
        .map(|(mut body, names)| {
            if names.len() == 1 {
                body["name"] = json!(names[0]);
            } else {
                body["names"] = json!(names);
            }
            body
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn bodies(n: usize, shared: bool) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| {
                let data = if shared {
                    "{}".to_owned()
                } else {
                    format!("{{\"host\":{i}}}")
                };
                (
                    format!("h{i}.example.com"),
                    json!({"region": "ams3", "size": "s-1vcpu-1gb", "image": 1, "user_data": data}),
                )
            })
            .collect()
    }

    #[test]
    fn identical_droplets_share_calls_of_at_most_ten_names() {
        for n in [1, 3, 10, 11, 25] {
            let requests = create_requests(&bodies(n, true)).unwrap();
            assert_eq!(
                requests.len(),
                n.div_ceil(MAX_NAMES_PER_CREATE),
                "{n} hosts"
            );
            let mut named = 0;
            for r in &requests {
                let count = match r["names"].as_array() {
                    Some(names) => names.len(),
                    None => usize::from(r["name"].is_string()),
                };
                assert!((1..=MAX_NAMES_PER_CREATE).contains(&count));
                assert!(r.get("name").is_none() || r.get("names").is_none());
                named += count;
            }
            assert_eq!(named, n);
        }
    }

    #[test]
    fn per_host_user_data_means_one_call_per_droplet() {
        let requests = create_requests(&bodies(12, false)).unwrap();
        assert_eq!(requests.len(), 12);
        assert!(requests.iter().all(|r| r["name"].is_string()));
    }

    #[test]
    fn user_data_above_64_kib_is_never_sent() {
        let mut droplets = bodies(2, false);
        droplets[1].1["user_data"] = json!("x".repeat(USER_DATA_LIMIT + 1));
        let err = create_requests(&droplets).unwrap_err().to_string();
        assert!(
            err.contains("h1.example.com") && err.contains("not sent"),
            "{err}"
        );
        let mut at_limit = bodies(1, false);
        at_limit[0].1["user_data"] = json!("x".repeat(USER_DATA_LIMIT));
        assert_eq!(create_requests(&at_limit).unwrap().len(), 1);
    }

    /// A site of `hosts` hosts (three core hosts, then workers).
    pub(crate) fn site(hosts: usize) -> Site {
        let mut text = String::from(
            "domain_name: example.com\nssh_keys:\n  - ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAIBdn1ZXuEs9c6tnGpQUc3YXUDBklgj/+6uuPBcm7fkBn op@example\n\
             publish:\n  base_url: https://dl.example.com/fb\ndefaults:\n  region: ams3\nhosts:\n",
        );
        for i in 1..=hosts {
            text.push_str(&format!("  - node{i}\n"));
        }
        Site::parse("hosts.yaml", &text).unwrap()
    }

    /// What the Internet reaches on each host: SSH and ICMP on every
    /// host; the web, mail and phone ports on the workers only; nothing
    /// of FreeIPA (443 and the rest on core hosts) anywhere.
    #[test]
    fn the_internet_reaches_on_each_host_only_what_it_serves() {
        let plan = Plan::new(&site(5)).unwrap();
        for rule in plan
            .firewalls
            .iter()
            .flat_map(|f| f.inbound.iter().chain(&f.outbound))
        {
            assert!(rule.reason.len() > 10, "{rule:?}");
        }
        let open_on = |host: &str| -> Vec<&str> {
            let droplet = plan.droplets.iter().find(|d| d.host == host).unwrap();
            let mut ports: Vec<&str> = plan
                .firewalls
                .iter()
                .filter(|f| droplet.tags.contains(&f.tag))
                .flat_map(|f| &f.inbound)
                .filter(|r| r.peers == Peers::Anywhere)
                .map(|r| r.ports)
                .collect();
            ports.sort_unstable();
            ports
        };
        let core: Vec<&str> = plan.droplets[..3].iter().map(|d| d.host.as_str()).collect();
        for host in &core {
            assert_eq!(open_on(host), ["0", "22"], "{host}: ICMP and SSH only");
        }
        let worker = &plan.droplets[3].host;
        assert_eq!(
            open_on(worker),
            [
                "0",
                "10000-20000",
                "22",
                "25",
                "443",
                "465",
                "5060",
                "5061",
                "587",
                "80",
                "993"
            ]
        );
        assert_eq!(
            plan.firewalls[1].hosts,
            [plan.droplets[3].host.clone(), plan.droplets[4].host.clone()]
        );
        assert_eq!(plan.firewalls[0].hosts.len(), 5);
    }
}
