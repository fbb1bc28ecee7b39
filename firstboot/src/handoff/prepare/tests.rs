//! Against the simulator (FreeIPA's CA and DNS side, as issue 17 taught
//! it: sub-CAs, CA ACLs checked as cert.py does, records validated as
//! dns.py does), with the lab site's three core hosts and a worker.

use serde_json::{json, Value};

use super::*;
use crate::freeipa::tests::{add_host, assert_nothing_mutated, first_server_and_client, log_lines};
use crate::freeipa::{calls, Change};

fn config() -> NodeConfig {
    let mut config = crate::phases::tests::lab_config("node1");
    config.site.realm = node_contract::Realm::parse("LAB.EXAMPLE.ORG").unwrap();
    config
}

fn registered(names: &[(&str, u8)]) -> BTreeMap<HostName, Ipv4Addr> {
    names
        .iter()
        .map(|(n, o)| (HostName::parse(n).unwrap(), Ipv4Addr::new(198, 18, 0, *o)))
        .collect()
}

/// `prepare` for `registered`, with no core host added since the launch.
async fn prepare_of(
    client: &Client,
    config: &NodeConfig,
    registered: &BTreeMap<HostName, Ipv4Addr>,
) -> Result<Prepared> {
    prepare(
        client,
        config,
        registered,
        &BTreeSet::new(),
        Duration::from_secs(30),
    )
    .await
}

#[tokio::test]
async fn freeipa_gets_the_site_s_names_and_one_sub_ca_per_service_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let config = config();
    let hosts = registered(&[("node1", 10), ("node2", 11), ("node3", 12), ("node4", 13)]);
    // A core host that has not joined: nothing is asked of FreeIPA.
    let before = log_lines(&sim.calls).len();
    let partial = registered(&[("node1", 10), ("node3", 12)]);
    let err = format!(
        "{:#}",
        prepare_of(&client, &config, &partial).await.unwrap_err()
    );
    assert!(err.contains("node2"), "{err}");
    assert_eq!(log_lines(&sim.calls).len(), before);

    // FreeIPA has the hosts (the freeipa phase enrolled them).
    for (node, address) in &hosts {
        add_host(&client, &config.fqdn(node), address.octets(), None).await;
    }
    let prepared = prepare_of(&client, &config, &hosts).await.unwrap();
    // One sub-CA per service, each its own certificate.
    let pems: Vec<&str> = ServiceCa::ALL
        .iter()
        .map(|ca| prepared.sub_ca(*ca).expect("every service has its sub-CA"))
        .collect();
    for (i, pem) in pems.iter().enumerate() {
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(!pems[i + 1..].contains(pem), "two services share a CA");
    }
    // The etcd ACL names the core hosts' etcd principals, and only them.
    let acl = client
        .call(&calls::caacl_show(&ServiceCa::Etcd.acl()))
        .await
        .unwrap();
    let mut allowed: Vec<String> = acl["result"]["memberservice_service"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    allowed.sort();
    assert_eq!(
        allowed,
        ["node1", "node2", "node3"].map(|n| format!("etcd/{n}.lab.example.org@LAB.EXAMPLE.ORG"))
    );
    assert!(acl["result"].get("hostcategory").is_none(), "{acl}");
    // The worker's address is in FreeIPA's DNS like every node's.
    let a = client
        .call(&calls::dnsrecord_show("lab.example.org", "node4"))
        .await
        .unwrap();
    assert_eq!(a["result"]["arecord"], json!(["198.18.0.13"]));

    // Again: found, nothing changed.
    let mark = log_lines(&sim.calls).len();
    let again = prepare_of(&client, &config, &hosts).await.unwrap();
    assert!(again
        .sub_cas
        .iter()
        .all(|info| info.change == Change::Unchanged));
    let later = &log_lines(&sim.calls)[mark..];
    assert!(!later.is_empty());
    assert_nothing_mutated(later);
}

/// A worker that joins and enrolls while the sub-CAs are being made
/// (after the registry prepare was given was read, before the sub-CAs
/// exist, so its enrollment saw none) has no `firstboot` principal after
/// `prepare`; `ensure_principals` with the registry read again gives it
/// one, as phase handoff does next, and changes nothing for the rest.
#[tokio::test]
async fn a_node_that_joined_while_the_sub_cas_were_made_gets_its_principals() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let config = config();
    let before = registered(&[("node1", 10), ("node2", 11), ("node3", 12)]);
    let after = registered(&[("node1", 10), ("node2", 11), ("node3", 12), ("node5", 15)]);
    for (node, address) in &after {
        add_host(&client, &config.fqdn(node), address.octets(), None).await;
    }
    prepare_of(&client, &config, &before).await.unwrap();
    let principal = |node: &str| format!("firstboot/{node}.lab.example.org@LAB.EXAMPLE.ORG");
    let shown = |name: String| {
        let client = &client;
        async move { client.call(&calls::service_show(&name)).await }
    };
    assert!(shown(principal("node1")).await.is_ok());
    assert!(
        shown(principal("node5")).await.is_err(),
        "node5 was not in the registry prepare read"
    );
    ensure_principals(&client, &config, &after, &BTreeSet::new())
        .await
        .unwrap();
    shown(principal("node5"))
        .await
        .unwrap_or_else(|e| panic!("node5 has no firstboot principal: {e}"));
    // A core host the site was not launched with (no config names it as
    // core) gets an etcd principal only as the registry's added core host.
    let etcd = |node: &str| format!("etcd/{node}.lab.example.org@LAB.EXAMPLE.ORG");
    assert!(shown(etcd("node5")).await.is_err(), "node5 is a worker");
    let node5 = [HostName::parse("node5").unwrap()].into();
    ensure_principals(&client, &config, &after, &node5)
        .await
        .unwrap();
    shown(etcd("node5"))
        .await
        .unwrap_or_else(|e| panic!("node5, a core host added later, has no etcd principal: {e}"));
}
