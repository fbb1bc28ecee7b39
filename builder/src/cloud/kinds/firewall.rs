//! Firewalls: one for every host of the site (SSH and ICMP from
//! anywhere, everything between the site's droplets, every way out) and
//! one for the hosts that serve the public (the workers: web, mail and
//! phone). Each applies to a tag, so it covers a droplet from the moment
//! the droplet exists. A firewall cannot carry a tag of its own: one is
//! the site's when it has a site firewall's name and applies to exactly
//! that firewall's tag.

use anyhow::Result;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::Kind;
use crate::cloud::launch::{Launch, Outcome};
use crate::cloud::plan::Plan;

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
    pub(crate) fn every_host(name: String, tag: &str, hosts: Vec<String>) -> FirewallPlan {
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
    pub(crate) fn public(name: String, public_tag: &str, hosts: Vec<String>) -> FirewallPlan {
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
}

/// A firewall as DigitalOcean shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Firewall {
    pub id: String,
    pub name: String,
    /// The tags it applies to.
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub tags: Vec<String>,
    /// The droplets it applies to by id (the site's apply by tag only).
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub droplet_ids: Vec<u64>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub inbound_rules: Vec<FoundRule>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub outbound_rules: Vec<FoundRule>,
}

/// One rule of an existing firewall.
#[derive(Debug, Clone, Deserialize)]
pub struct FoundRule {
    pub protocol: String,
    /// A port, a range, `0` or `all` (both mean every port); ICMP has none.
    #[serde(default)]
    pub ports: Option<String>,
    #[serde(default)]
    pub sources: Option<Targets>,
    #[serde(default)]
    pub destinations: Option<Targets>,
}

/// Whom a rule admits, as the API spells it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Targets {
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub droplet_ids: Vec<u64>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub load_balancer_uids: Vec<String>,
    #[serde(default, deserialize_with = "super::list_or_null")]
    pub kubernetes_ids: Vec<String>,
}

/// One rule in a form that compares equal however the API orders or
/// spells it.
fn canonical(protocol: &str, ports: Option<&str>, targets: &Targets) -> String {
    let ports = match ports {
        Some("all") | Some("0") | Some("") | None => "0",
        Some(p) => p,
    };
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    let mut droplets = targets.droplet_ids.clone();
    droplets.sort_unstable();
    format!(
        "{protocol} {ports} addresses {:?} tags {:?} droplets {droplets:?} load balancers {:?} \
         kubernetes {:?}",
        sorted(&targets.addresses),
        sorted(&targets.tags),
        sorted(&targets.load_balancer_uids),
        sorted(&targets.kubernetes_ids),
    )
}

impl Rule {
    fn canonical(&self, site_tag: &str) -> String {
        let targets = match self.peers {
            Peers::Anywhere => Targets {
                addresses: ANYWHERE.iter().map(|a| (*a).to_owned()).collect(),
                ..Targets::default()
            },
            Peers::Site => Targets {
                tags: vec![site_tag.to_owned()],
                ..Targets::default()
            },
        };
        canonical(self.protocol, Some(self.ports), &targets)
    }
}

impl FirewallPlan {
    /// Whether an existing firewall has exactly these rules and applies
    /// to exactly this firewall's tag (and to no droplet by id).
    pub fn matches(&self, existing: &Firewall, site_tag: &str) -> bool {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let found = |rules: &[FoundRule], inbound: bool| {
            sorted(
                rules
                    .iter()
                    .map(|r| {
                        let side = if inbound { &r.sources } else { &r.destinations };
                        canonical(
                            &r.protocol,
                            r.ports.as_deref(),
                            side.as_ref().unwrap_or(&Targets::default()),
                        )
                    })
                    .collect(),
            )
        };
        let wanted = |rules: &[Rule]| sorted(rules.iter().map(|r| r.canonical(site_tag)).collect());
        found(&existing.inbound_rules, true) == wanted(&self.inbound)
            && found(&existing.outbound_rules, false) == wanted(&self.outbound)
            && existing.tags == [self.tag.clone()]
            && existing.droplet_ids.is_empty()
    }
}

impl Kind for Firewall {
    const NOUN: &'static str = "firewall";
    const COLLECTION: &'static str = "/v2/firewalls";
    const MANY: &'static str = "firewalls";
    const ONE: &'static str = "firewall";

    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> String {
        self.id.clone()
    }
    fn planned(plan: &Plan, _hosts: &[&str], name: &str) -> bool {
        plan.firewalls.iter().any(|f| f.name == name)
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        match plan.firewalls.iter().find(|f| f.name == self.name) {
            None => Some("not a firewall of the site".into()),
            Some(wanted) if self.tags != [wanted.tag.clone()] => Some(format!(
                "it does not apply to exactly the tag {}",
                wanted.tag
            )),
            Some(_) => None,
        }
    }
}

/// Launch: each firewall exists with exactly the site's rules (one
/// listing for all; a firewall whose rules drifted gets them back).
pub async fn ensure(launch: &Launch<'_>, outcome: &mut Outcome) -> Result<()> {
    let plan = launch.plan;
    let existing = super::list::<Firewall>(launch.client, plan).await?;
    for wanted in &plan.firewalls {
        let body = wanted.body(&plan.tag);
        match existing.iter().find(|f| f.name == wanted.name) {
            Some(found) => {
                let found = super::adopt(found.clone(), plan)?;
                if wanted.matches(&found, &plan.tag) {
                    info!("{}: exists with the site's rules", wanted.name);
                    continue;
                }
                launch.client.put(&found.path(), &body).await?;
                outcome
                    .created
                    .push(format!("firewall rules of {}", wanted.name));
                info!("{}: rules brought back to the site's", wanted.name);
            }
            None => {
                launch
                    .create::<Firewall, _, _>(&body, || {
                        super::find::<Firewall>(launch.client, plan, &wanted.name)
                    })
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
    }
    Ok(())
}

/// What launch does, for `--dry-run`: which host gets which rule.
pub fn describe(plan: &Plan) -> Vec<String> {
    let mut lines = vec![format!(
        "GET {0}; POST {0} for each absent, PUT where its rules differ (before any droplet \
         exists, so none boots unprotected):",
        Firewall::COLLECTION
    )];
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
                Peers::Anywhere => "anywhere",
                Peers::Site => "the site",
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
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(value: Value) -> Firewall {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn matching_ignores_order_and_spelling_of_all_ports() {
        let tag = "site:example-com";
        let plan = FirewallPlan::every_host("example-com-site".into(), tag, vec![]);
        let mut existing = plan.body(tag);
        existing["id"] = json!("fw-1");
        assert!(plan.matches(&found(existing.clone()), tag));
        existing["inbound_rules"].as_array_mut().unwrap().reverse();
        existing["outbound_rules"][0]["ports"] = json!("all");
        assert!(plan.matches(&found(existing.clone()), tag));
        let mut other_port = existing.clone();
        other_port["inbound_rules"][0]["ports"] = json!("2222");
        assert!(!plan.matches(&found(other_port), tag));
        assert!(!plan.matches(&found(existing.clone()), "site:other"));
        // Applying to another tag, or to a droplet by id, is another
        // firewall; so is a rule admitting a droplet by id.
        let mut elsewhere = existing.clone();
        elsewhere["tags"] = json!(["site:example-com:public"]);
        assert!(!plan.matches(&found(elsewhere), tag));
        let mut by_id = existing.clone();
        by_id["droplet_ids"] = json!([7]);
        assert!(!plan.matches(&found(by_id), tag));
        let mut wider = existing;
        wider["inbound_rules"][0]["sources"]["droplet_ids"] = json!([7]);
        assert!(!plan.matches(&found(wider), tag));
    }

    #[test]
    fn a_listing_without_an_id_is_an_error_naming_the_firewall() {
        let err = super::super::decode::<Firewall>(
            "GET /v2/firewalls",
            json!({"name": "example-com-site", "tags": null}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("firewall `example-com-site`") && err.contains("id"),
            "{err}"
        );
    }
}
