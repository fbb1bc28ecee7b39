//! What a site needs on DigitalOcean, computed from the site file alone:
//! no network, no secrets. `launch` ensures it (adding each droplet's
//! rendered config as its user data), `--dry-run` prints it, `status` and
//! `destroy` find resources by the same names.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::images::{self, Base};
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

#[derive(Debug, Clone)]
pub struct KeyPlan {
    pub name: String,
    /// The whole `.pub` line.
    pub public_key: String,
}

impl KeyPlan {
    /// The key material (type and base64 blob), which identifies a key
    /// whatever its comment.
    pub fn material(&self) -> String {
        key_material(&self.public_key)
    }
}

/// The type and blob of an OpenSSH public key line, without the comment.
pub fn key_material(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// The image of the site file (`fedora-coreos`, or `lab`).
    pub image: String,
    pub name: String,
    pub url: String,
    pub distribution: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct VpcPlan {
    pub name: String,
    pub ip_range: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct VolumePlan {
    pub name: String,
    pub host: String,
    pub size_gib: u32,
    pub description: String,
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct FirewallPlan {
    pub name: String,
    /// The tag it applies to.
    pub tag: String,
    /// Which hosts carry that tag, for `--dry-run`.
    pub hosts: Vec<String>,
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
}

/// One firewall rule and why the site needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub protocol: &'static str,
    /// A port, a range `a-b`, or `0` for all (DigitalOcean's spelling).
    pub ports: &'static str,
    pub peers: Peers,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Peers {
    /// Anyone on the Internet.
    Anywhere,
    /// Droplets carrying the site's tag (over the VPC and public addresses).
    Site,
}

const ANYWHERE: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// Inbound on every host: what the operator and the site's nodes need.
/// Nothing of FreeIPA (its web UI and JSON-RPC API on 443 of every core
/// host, LDAP, Kerberos, DNS) is here: it serves the site's nodes only.
const EVERY_HOST_INBOUND: &[(&str, &str, &str)] = &[
    (
        "tcp",
        "22",
        "SSH as `core`: the operator, and `builder status` reading firstboot's progress",
    ),
    (
        "icmp",
        "0",
        "ICMP: path MTU discovery and diagnostics (ping, traceroute)",
    ),
];

/// Inbound on the hosts that serve the public (the workers, where the
/// site's web, mail and phone services run): each line says why. Core
/// hosts never get these: FreeIPA holds 443 there.
const PUBLIC_INBOUND: &[(&str, &str, &str)] = &[
    (
        "tcp",
        "80",
        "HTTP: the web service, and ACME HTTP-01 challenges for public certificates",
    ),
    ("tcp", "443", "HTTPS: the web service"),
    ("tcp", "25", "SMTP: mail from other servers"),
    ("tcp", "465", "SMTP submission over TLS: mail from users"),
    (
        "tcp",
        "587",
        "SMTP submission with STARTTLS: mail from users",
    ),
    ("tcp", "993", "IMAP over TLS: users reading mail"),
    ("udp", "5060", "SIP signalling: the phone service"),
    ("tcp", "5061", "SIP over TLS: the phone service"),
    ("udp", "10000-20000", "RTP media of phone calls"),
];

const SITE_INBOUND: &[(&str, &str)] = &[
    ("tcp", "between the site's nodes: the join service (7443), the peer service (7444), etcd (2379-2380), FreeIPA (DNS, Kerberos, LDAP, CA) and Kubernetes; each is authenticated by TLS or Kerberos"),
    ("udp", "between the site's nodes: DNS, Kerberos and the Kubernetes overlay network"),
    ("icmp", "between the site's nodes: reachability checks"),
];

const OUTBOUND: &[(&str, &str)] = &[
    (
        "tcp",
        "to anywhere: container images, Fedora packages (the FreeIPA client workers layer), the firstboot binary, ACME, mail delivery",
    ),
    ("udp", "to anywhere: DNS and NTP"),
    ("icmp", "to anywhere: path MTU discovery and diagnostics"),
];

fn anywhere(rules: &[(&'static str, &'static str, &'static str)]) -> Vec<Rule> {
    rules
        .iter()
        .map(|&(protocol, ports, reason)| Rule {
            protocol,
            ports,
            peers: Peers::Anywhere,
            reason,
        })
        .collect()
}

/// Every way out, as each firewall carries it.
fn outbound() -> Vec<Rule> {
    OUTBOUND
        .iter()
        .map(|&(protocol, reason)| Rule {
            protocol,
            ports: "0",
            peers: Peers::Anywhere,
            reason,
        })
        .collect()
}

impl FirewallPlan {
    /// Every host of the site: SSH and ICMP from anywhere, everything
    /// between the site's droplets, every way out.
    fn every_host(name: String, tag: &str, hosts: Vec<String>) -> FirewallPlan {
        let site = SITE_INBOUND.iter().map(|&(protocol, reason)| Rule {
            protocol,
            ports: "0",
            peers: Peers::Site,
            reason,
        });
        FirewallPlan {
            name,
            tag: tag.to_owned(),
            hosts,
            inbound: anywhere(EVERY_HOST_INBOUND)
                .into_iter()
                .chain(site)
                .collect(),
            outbound: outbound(),
        }
    }

    /// The hosts that serve the public: their services' ports from
    /// anywhere. Its outbound rules are the site firewall's (DigitalOcean
    /// allows what any firewall of a droplet allows); it repeats them,
    /// as the API wants a rule on both sides.
    fn public(name: String, public_tag: &str, hosts: Vec<String>) -> FirewallPlan {
        FirewallPlan {
            name,
            tag: public_tag.to_owned(),
            hosts,
            inbound: anywhere(PUBLIC_INBOUND),
            outbound: outbound(),
        }
    }

    /// The request body of a create or update: the rules apply to the
    /// droplets with this firewall's tag; `Peers::Site` is the droplets
    /// with the site's tag (`site_tag`).
    pub fn body(&self, site_tag: &str) -> Value {
        let target = |peers: &Peers| match peers {
            Peers::Anywhere => json!({"addresses": ANYWHERE}),
            Peers::Site => json!({"tags": [site_tag]}),
        };
        let inbound: Vec<Value> = self
            .inbound
            .iter()
            .map(|r| json!({"protocol": r.protocol, "ports": r.ports, "sources": target(&r.peers)}))
            .collect();
        let outbound: Vec<Value> = self
            .outbound
            .iter()
            .map(|r| json!({"protocol": r.protocol, "ports": r.ports, "destinations": target(&r.peers)}))
            .collect();
        json!({"name": self.name, "inbound_rules": inbound, "outbound_rules": outbound,
               "tags": [self.tag]})
    }

    /// Whether an existing firewall (as the API shows it) already has
    /// exactly these rules and applies to exactly this firewall's tag.
    pub fn matches(&self, existing: &Value, site_tag: &str) -> bool {
        let wanted = self.body(site_tag);
        let rules = |v: &Value, key: &str, side: &str| -> Vec<String> {
            let mut rules: Vec<String> = v[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let ports = match r["ports"].as_str() {
                        Some("all") | None => "0",
                        Some(p) => p,
                    };
                    let mut addresses: Vec<&str> = r[side]["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    addresses.sort_unstable();
                    let mut tags: Vec<&str> = r[side]["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    tags.sort_unstable();
                    format!("{} {ports} {addresses:?} {tags:?}", r["protocol"])
                })
                .collect();
            rules.sort();
            rules
        };
        rules(existing, "inbound_rules", "sources") == rules(&wanted, "inbound_rules", "sources")
            && rules(existing, "outbound_rules", "destinations")
                == rules(&wanted, "outbound_rules", "destinations")
            && existing["tags"] == json!([self.tag])
    }
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

        let mut image_names = site.hosts.iter().map(|h| h.image.as_str());
        let image_name = image_names.next().unwrap_or("fedora-coreos");
        if let Some(other) = image_names.find(|n| *n != image_name) {
            bail!(
                "hosts use two images ({image_name} and {other}); a launch imports one: \
                 give every host the same `image`"
            );
        }
        let image = match images::load(image_name)?.base {
            Base::FedoraCoreos {
                release, artifact, ..
            } => ImagePlan {
                image: image_name.to_owned(),
                name: format!("{image_name}-{release}"),
                url: artifact,
                distribution: "Fedora".into(),
                description: format!("Fedora CoreOS {release}, imported by builder"),
            },
            // The lab image boots only in a lab cloud (tests/support/
            // lab_cloud.rs), which has it and imports nothing; the URL
            // names it in the `.invalid` domain, which resolves nowhere,
            // and `launch` refuses it against DigitalOcean's API.
            Base::Debian { suite, .. } => ImagePlan {
                image: image_name.to_owned(),
                name: format!("{image_name}-{suite}"),
                url: format!("https://{image_name}.invalid/{image_name}-{suite}.img"),
                distribution: "Debian".into(),
                description: format!("the lab image (Debian {suite}), for a lab cloud only"),
            },
        };

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
mod tests {
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

    #[test]
    fn firewall_matching_ignores_order_and_spelling_of_all_ports() {
        let tag = "site:example-com";
        let plan = FirewallPlan::every_host("example-com-site".into(), tag, vec![]);
        let mut existing = plan.body(tag);
        assert!(plan.matches(&existing, tag));
        existing["inbound_rules"].as_array_mut().unwrap().reverse();
        existing["outbound_rules"][0]["ports"] = json!("all");
        assert!(plan.matches(&existing, tag));
        existing["inbound_rules"][0]["ports"] = json!("2222");
        assert!(!plan.matches(&existing, tag));
        assert!(!plan.matches(&plan.body(tag), "site:other"));
        // Applying to another tag is another firewall.
        let mut elsewhere = plan.body(tag);
        elsewhere["tags"] = json!(["site:example-com:public"]);
        assert!(!plan.matches(&elsewhere, tag));
    }

    fn site(hosts: usize) -> Site {
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
