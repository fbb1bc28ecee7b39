//! DigitalOcean's cloud firewalls as nftables rules for the lab's edge:
//! what the rules open between the Internet and a droplet's public
//! address is open, everything else to it is dropped, as DigitalOcean
//! drops it (silently: a closed port does not answer).
//!
//! Input is the API's own shapes: firewalls as `GET /v2/firewalls` shows
//! them, droplets as `{"id", "tags", "private_ipv4", "public_ipv4"}`.
//! Semantics, from DigitalOcean's firewall documentation and API:
//! - a firewall applies to the droplets it names (`droplet_ids`) and to
//!   every droplet with one of its `tags`; a droplet no firewall applies
//!   to is open;
//! - a droplet's traffic is allowed if any rule of any firewall applying
//!   to it allows it (inbound by source, outbound by destination);
//! - sources and destinations are addresses (CIDR), droplet ids and tags
//!   (each droplet's addresses, public and private);
//! - ports are one port, a range `a-b`, or `0`/`all`/absent for all; ICMP
//!   has none;
//! - stateful: answers to allowed traffic are allowed.
//!
//! Only IPv4 is enforced (the lab has no IPv6); IPv6 addresses are
//! ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde_json::Value;

struct Droplet {
    id: u64,
    tags: Vec<String>,
    addresses: Vec<Ipv4Addr>,
    public: Option<Ipv4Addr>,
}

/// The body of the edge table: chains for every protected droplet.
pub fn render(firewalls: &[Value], droplets: &[Value]) -> Result<String> {
    let droplets: Vec<Droplet> = droplets
        .iter()
        .map(|d| {
            let id = d["id"].as_u64().context("a droplet without an id")?;
            let address = |key: &str| -> Result<Option<Ipv4Addr>> {
                d[key]
                    .as_str()
                    .map(|a| {
                        a.parse()
                            .with_context(|| format!("droplet {id}: {key} `{a}`"))
                    })
                    .transpose()
            };
            let public = address("public_ipv4")?;
            let addresses = public.into_iter().chain(address("private_ipv4")?).collect();
            Ok(Droplet {
                id,
                tags: strings(&d["tags"]),
                addresses,
                public,
            })
        })
        .collect::<Result<_>>()?;
    let mut chains = String::new();
    let mut jumps = String::new();
    for droplet in &droplets {
        let Some(public) = droplet.public else {
            continue;
        };
        let applying: Vec<&Value> = firewalls
            .iter()
            .filter(|f| {
                f["droplet_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i.as_u64() == Some(droplet.id)))
                    || strings(&f["tags"]).iter().any(|t| droplet.tags.contains(t))
            })
            .collect();
        if applying.is_empty() {
            continue;
        }
        let (inbound, outbound) = (format!("in_{}", droplet.id), format!("out_{}", droplet.id));
        writeln!(jumps, "    ip saddr {public} jump {outbound}")?;
        writeln!(jumps, "    ip daddr {public} jump {inbound}")?;
        // Outbound rules `return` to the base chain, so that traffic from
        // one droplet to another passes the other's inbound rules too.
        for (name, key, side, verdict) in [
            (&inbound, "inbound_rules", "sources", "accept"),
            (&outbound, "outbound_rules", "destinations", "return"),
        ] {
            writeln!(chains, "  chain {name} {{")?;
            for firewall in &applying {
                for rule in firewall[key].as_array().into_iter().flatten() {
                    if let Some(line) = rule_line(rule, side, &droplets, verdict)? {
                        writeln!(chains, "    {line}")?;
                    }
                }
            }
            writeln!(chains, "    drop\n  }}")?;
        }
    }
    if jumps.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "{chains}  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
         ct state established,related accept\n{jumps}  }}"
    ))
}

/// One rule as an nftables rule, or `None` if it can match nothing here
/// (IPv6 only, or tags no droplet has).
fn rule_line(
    rule: &Value,
    side: &str,
    droplets: &[Droplet],
    verdict: &str,
) -> Result<Option<String>> {
    let direction = if side == "sources" { "saddr" } else { "daddr" };
    let peers = &rule[side];
    let mut any = false;
    let mut networks = BTreeSet::new();
    for address in strings(&peers["addresses"]) {
        if address.contains(':') {
            continue;
        }
        if address == "0.0.0.0/0" {
            any = true;
        } else {
            networks.insert(address);
        }
    }
    let tags = strings(&peers["tags"]);
    let ids: Vec<u64> = peers["droplet_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    for droplet in droplets {
        if ids.contains(&droplet.id) || droplet.tags.iter().any(|t| tags.contains(t)) {
            networks.extend(droplet.addresses.iter().map(Ipv4Addr::to_string));
        }
    }
    let peer = match (any, networks.is_empty()) {
        (true, _) => String::new(),
        (false, true) => return Ok(None),
        (false, false) => format!(
            "ip {direction} {{ {} }} ",
            networks.into_iter().collect::<Vec<_>>().join(", ")
        ),
    };
    let protocol = rule["protocol"].as_str().unwrap_or("");
    let ports = match rule["ports"].as_str().unwrap_or("0") {
        "" | "0" | "all" => None,
        p if p.split('-').all(|n| n.parse::<u16>().is_ok()) && p.split('-').count() <= 2 => {
            Some(p.to_owned())
        }
        other => bail!("firewall rule with ports `{other}`"),
    };
    let matcher = match (protocol, ports) {
        ("tcp" | "udp", Some(ports)) => format!("{protocol} dport {ports} "),
        ("tcp" | "udp", None) => format!("meta l4proto {protocol} "),
        ("icmp", _) => "meta l4proto icmp ".to_owned(),
        (other, _) => bail!("firewall rule with protocol `{other}`"),
    };
    Ok(Some(format!("{peer}{matcher}{verdict}")))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Which droplets' public addresses the rules guard: id → address.
pub fn guarded(rules: &str) -> BTreeMap<String, String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ip daddr "))
        .filter_map(|l| l.split_once(" jump in_"))
        .map(|(address, id)| (id.to_owned(), address.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn firewall() -> Value {
        json!({
            "name": "site", "tags": ["site:x"], "droplet_ids": [],
            "inbound_rules": [
                {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["0.0.0.0/0", "::/0"]}},
                {"protocol": "udp", "ports": "10000-20000", "sources": {"addresses": ["0.0.0.0/0"]}},
                {"protocol": "icmp", "ports": "0", "sources": {"addresses": ["0.0.0.0/0"]}},
                {"protocol": "tcp", "ports": "0", "sources": {"tags": ["site:x"]}},
                {"protocol": "tcp", "ports": "7443", "sources": {"tags": ["nobody"]}},
                {"protocol": "tcp", "ports": "8080", "sources": {"addresses": ["::/0"]}}
            ],
            "outbound_rules": [
                {"protocol": "tcp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}}
            ]
        })
    }

    fn droplets() -> Vec<Value> {
        vec![
            json!({"id": 1, "tags": ["site:x"], "private_ipv4": "198.18.0.2", "public_ipv4": "198.19.100.10"}),
            json!({"id": 2, "tags": ["site:x"], "private_ipv4": "198.18.0.3", "public_ipv4": "198.19.100.11"}),
            json!({"id": 3, "tags": [], "private_ipv4": "198.18.0.4", "public_ipv4": "198.19.100.12"}),
        ]
    }

    #[test]
    fn rules_open_what_the_firewall_opens_and_drop_the_rest() {
        let rules = render(&[firewall()], &droplets()).unwrap();
        let in1: Vec<&str> = rules
            .split("chain in_1 {")
            .nth(1)
            .unwrap()
            .split("\n  }")
            .next()
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            in1,
            [
                "tcp dport 22 accept",
                "udp dport 10000-20000 accept",
                "meta l4proto icmp accept",
                "ip saddr { 198.18.0.2, 198.18.0.3, 198.19.100.10, 198.19.100.11 } meta l4proto tcp accept",
                "drop",
            ],
            "{rules}"
        );
        assert!(
            rules.contains("chain out_1 {\n    meta l4proto tcp return\n    drop\n  }"),
            "{rules}"
        );
        // The untagged droplet is no firewall's: not guarded.
        let guarded = guarded(&rules);
        assert_eq!(guarded.len(), 2, "{rules}");
        assert_eq!(guarded["1"], "198.19.100.10");
        assert!(rules.contains("ct state established,related accept"));
    }

    #[test]
    fn no_firewall_means_no_rules_and_nonsense_is_refused() {
        assert_eq!(render(&[], &droplets()).unwrap(), "");
        let mut bad = firewall();
        bad["inbound_rules"][0]["ports"] = json!("22,23");
        assert!(render(&[bad], &droplets()).is_err());
    }

    /// The rules as nft reads them: they load (when nft and a namespace
    /// can be had here, as root).
    #[test]
    fn rules_load_into_nftables() {
        if let Some(reason) = crate::skip_reason() {
            return site_test_skip::skip(&reason);
        }
        let rules = render(&[firewall()], &droplets()).unwrap();
        let ns = format!("sitelab-fwtest-{}", std::process::id());
        let add = std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        assert!(add.success());
        let script = format!("table inet t {{\n{rules}\n}}\n");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
