//! The client's requests against FreeIPA's API.txt, and the client against
//! the simulator (in-process, on loopback, with the simulator's own CA).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipa_sim::api::{load_for_tests, Api};
use ipa_sim::install::{self, InstallOptions};
use ipa_sim::server::{self, Fault, Options, Running};
use serde_json::{json, Value};

use super::*;

const DOMAIN: &str = "lab.example.org";
const REALM: &str = "LAB.EXAMPLE.ORG";
pub(crate) const IPA1: &str = "ipa1.lab.example.org";
const IPA2: &str = "ipa2.lab.example.org";
const PASSWORD: &str = "Secret123-admin";

#[test]
fn every_request_the_client_builds_passes_api_txt() {
    let Some(api) = load_for_tests() else { return };
    let (_, csr) = crate::pki::new_key_and_csr("node1.lab.example.org").unwrap();
    let examples = calls::examples(&csr);
    for call in &examples {
        api.check(call.method, &call.params())
            .unwrap_or_else(|e| panic!("{} {}: {e}", call.method, call.params()));
        assert_eq!(call.options["version"], json!(API_VERSION));
    }
    // Every builder in calls.rs has an example.
    let source = include_str!("calls.rs");
    let builders: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub fn "))
        .filter_map(|l| l.split('(').next())
        .filter(|name| *name != "examples")
        .collect();
    for builder in &builders {
        let method = match *builder {
            "host_mod_password" => "host_mod",
            other => other,
        };
        assert!(
            examples.iter().any(|c| c.method == method),
            "calls::{builder} has no example in calls::examples"
        );
    }
    assert!(builders.len() >= 26, "{builders:?}");
}

#[test]
fn answers_are_parsed_without_trusting_them() {
    let parse = client::parse_for_tests;
    assert!(parse("ping", b"<html>")
        .unwrap_err()
        .starts_with("transient"));
    assert!(parse("ping", b"[]").unwrap_err().starts_with("transient"));
    assert!(parse("ping", br#"{"result": null, "error": null}"#)
        .unwrap_err()
        .starts_with("transient"));
    let e = parse(
        "host_add",
        br#"{"result": null, "error": {"code": 4002, "name": "DuplicateEntry", "message": "x"}}"#,
    )
    .unwrap_err();
    assert!(e.contains("DuplicateEntry 4002"), "{e}");
    assert_eq!(
        parse("ping", br#"{"result": {"summary": "ok"}, "error": null}"#).unwrap(),
        json!({"summary": "ok"})
    );
    let members = json!({"completed": 0, "failed": {"member": {"host": [["a", "This entry is already a member"]]}}});
    assert_eq!(
        ensure::check_members_for_tests(&members).unwrap(),
        Change::Unchanged
    );
    let refused = json!({"completed": 0, "failed": {"member": {"host": [["a", "no such entry"]]}}});
    assert!(matches!(
        ensure::check_members_for_tests(&refused),
        Err(Error::MemberRefused { .. })
    ));
}

pub(crate) struct Sim {
    pub(crate) running: Option<Running>,
    data: PathBuf,
    pub(crate) calls: PathBuf,
    pub(crate) ca_pem: String,
}

fn options_text(lines: &[&str]) -> InstallOptions {
    InstallOptions::parse(&lines.join("\n")).unwrap()
}

async fn first_server(dir: &Path, api: Arc<Api>) -> Sim {
    first_server_resolving(dir, api, server::Resolver::OwnZones).await
}

async fn first_server_resolving(dir: &Path, api: Arc<Api>, resolver: server::Resolver) -> Sim {
    let data = dir.join("ipa1");
    std::fs::create_dir_all(&data).unwrap();
    let options = options_text(&[
        "--realm=LAB.EXAMPLE.ORG",
        "--domain=lab.example.org",
        "--ds-password=Secret123-dm",
        &format!("--admin-password={PASSWORD}"),
        "--setup-dns",
        "--no-forwarders",
        "-U",
    ]);
    let (state, keytab) =
        install::new_deployment(&options, IPA1, "127.0.0.1:443".parse().unwrap()).unwrap();
    let calls = dir.join("calls.jsonl");
    let running = server::start(
        Options {
            fqdn: IPA1.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            dns_listen: None,
            data: data.clone(),
            calls_log: calls.clone(),
            peers: Default::default(),
            resolver,
            lwca_key_delay: server::DEFAULT_LWCA_KEY_DELAY,
        },
        api,
        state,
        keytab,
    )
    .await
    .unwrap();
    let ca_pem = running.ca_pem();
    Sim {
        running: Some(running),
        data,
        calls,
        ca_pem,
    }
}

/// A first server and its admin's client; None when API.txt is missing
/// (the skip is recorded).
pub(crate) async fn first_server_and_client(dir: &Path) -> Option<(Sim, Client)> {
    let api = load_for_tests()?;
    let sim = first_server(dir, Arc::new(api)).await;
    let client = client_for(sim.running.as_ref().unwrap(), &sim.ca_pem);
    Some((sim, client))
}

fn client_for(running: &Running, ca_pem: &str) -> Client {
    let mut config = Config::admin(
        Endpoint::at(running.fqdn(), running.address),
        ca_pem,
        PASSWORD,
    );
    config.deadline = Duration::from_secs(20);
    config.attempt_timeout = Duration::from_secs(5);
    Client::new(config).unwrap()
}

/// `fqdn` at `address` as a FreeIPA host, with `otp` to enroll with.
pub(crate) async fn add_host(
    client: &Client,
    fqdn: &str,
    address: [u8; 4],
    otp: Option<&str>,
) -> HostState {
    client
        .ensure_host(&HostSpec {
            fqdn: fqdn.into(),
            address: Some(Ipv4Addr::from(address)),
            one_time_password: otp.map(str::to_owned),
        })
        .await
        .unwrap()
}

/// No call of `calls` changed the simulator's state.
pub(crate) fn assert_nothing_mutated(calls: &[Value]) {
    let mutated: Vec<&Value> = calls
        .iter()
        .filter(|l| l["mutated"] == json!(true))
        .collect();
    assert!(
        mutated.is_empty(),
        "the second run changed state: {mutated:?}"
    );
}

pub(crate) fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn host(name: &str) -> String {
    format!("{name}.{DOMAIN}")
}

/// Everything a site asks of FreeIPA, once.
async fn ensure_site(client: &Client) -> Vec<Change> {
    let mut changes = Vec::new();
    let node1 = host("node1");
    let ip = Ipv4Addr::new(198, 18, 0, 11);
    changes.push(
        client
            .ensure_dns_zone("0.18.198.in-addr.arpa", true)
            .await
            .unwrap(),
    );
    let state = client
        .ensure_host(&HostSpec {
            fqdn: node1.clone(),
            address: Some(ip),
            one_time_password: Some("otp-node1".into()),
        })
        .await
        .unwrap();
    assert_eq!(state.one_time_password.as_deref(), Some("otp-node1"));
    assert!(!state.enrolled);
    changes.push(state.change);
    changes.push(
        client
            .ensure_dns_record("0.18.198.in-addr.arpa", "11", &Record::Ptr(node1.clone()))
            .await
            .unwrap(),
    );
    changes.push(
        client
            .ensure_dns_record(
                DOMAIN,
                "_etcd-server-ssl._tcp",
                &Record::Srv {
                    priority: 0,
                    weight: 0,
                    port: 2380,
                    target: node1.clone(),
                },
            )
            .await
            .unwrap(),
    );
    changes.push(
        client
            .ensure_hostgroup("etcd", "etcd members")
            .await
            .unwrap(),
    );
    changes.push(
        client
            .ensure_hostgroup_members("etcd", std::slice::from_ref(&node1))
            .await
            .unwrap(),
    );
    let service = format!("etcd/{node1}@{REALM}");
    changes.push(client.ensure_service(&service).await.unwrap());
    let ca = client
        .ensure_sub_ca("etcd", &format!("CN=etcd CA,O={REALM}"), "etcd sub-CA")
        .await
        .unwrap();
    changes.push(ca.change);
    changes.push(
        client
            .ensure_ca_acl(&CaAclSpec {
                name: "etcd".into(),
                description: "etcd members use the etcd CA".into(),
                cas: vec!["etcd".into()],
                profiles: vec![SERVICE_PROFILE.into()],
                hostgroups: vec!["etcd".into()],
                services: vec![service.clone()],
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    changes
}

#[tokio::test]
async fn every_ensure_twice_the_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    client.ping().await.unwrap();
    let first = ensure_site(&client).await;
    assert!(first.iter().all(|c| *c == Change::Created), "{first:?}");
    let mark = log_lines(&sim.calls).len();
    let second = ensure_site(&client).await;
    assert!(second.iter().all(|c| *c == Change::Unchanged), "{second:?}");
    let later = &log_lines(&sim.calls)[mark..];
    assert!(later.len() >= 9, "{later:?}");
    assert_nothing_mutated(later);
    // And it never needed an error to get there.
    let errors: Vec<&Value> = later
        .iter()
        .filter(|l| !l["error"].is_null() && l["error"] != json!(4001))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The segment between the server and itself is refused; with the
    // only server there is nothing to join yet.
    assert_eq!(client.servers().await.unwrap(), vec![IPA1.to_owned()]);
    sim.running.unwrap().stop().await;
}

#[tokio::test]
async fn faults_are_retried_and_the_call_completes() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let running = sim.running.as_ref().unwrap();
    client.ping().await.unwrap();
    for (fault, count) in [
        (Fault::Garbage, 2),
        (Fault::Http500, 2),
        (Fault::Unauthorized, 1),
        (Fault::ExpireSession, 1),
    ] {
        server::inject(&sim.data, fault, count).unwrap();
        let before = log_lines(&sim.calls).len();
        let change = client
            .ensure_hostgroup(&format!("g-{fault:?}").to_lowercase(), "x")
            .await;
        assert_eq!(change.unwrap(), Change::Created, "{fault:?}");
        let lines = log_lines(&sim.calls);
        let faulted = lines[before..]
            .iter()
            .filter(|l| !l["fault"].is_null())
            .count();
        assert_eq!(faulted, count as usize, "{fault:?}: {:?}", &lines[before..]);
    }
    // A wrong password is an error at once, not a retry loop.
    let mut config = Config::admin(Endpoint::at(IPA1, running.address), &sim.ca_pem, "wrong");
    config.deadline = Duration::from_secs(20);
    let wrong = Client::new(config).unwrap();
    assert!(matches!(wrong.ping().await, Err(Error::Auth { .. })));
    // A server whose certificate is not from the IPA CA gets nothing.
    let other_ca = ipa_sim::ca::create_root("OTHER.EXAMPLE").unwrap();
    let mut config = Config::admin(
        Endpoint::at(IPA1, running.address),
        &other_ca.cert_pem,
        PASSWORD,
    );
    config.deadline = Duration::from_millis(500);
    let distrusting = Client::new(config).unwrap();
    assert!(matches!(
        distrusting.ping().await,
        Err(Error::Unavailable { .. })
    ));
    sim.running.unwrap().stop().await;
}

#[tokio::test]
async fn certificates_need_a_ca_acl() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let node1 = host("node1");
    client
        .ensure_host(&HostSpec {
            fqdn: node1.clone(),
            address: Some(Ipv4Addr::new(198, 18, 0, 11)),
            one_time_password: Some("otp".into()),
        })
        .await
        .unwrap();
    let ca = client
        .ensure_sub_ca("etcd", &format!("CN=etcd CA,O={REALM}"), "etcd")
        .await
        .unwrap();
    assert!(crate::pki::inspect(&ca.cert_pem).is_ok());
    let principal = format!("host/{node1}@{REALM}");
    let (_, csr) = crate::pki::new_key_and_csr(&node1).unwrap();
    let refused = client
        .request_certificate(&principal, &csr, "etcd", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(refused.is(error::code::ACI), "{refused}");
    // A CSR for another name is refused whatever the ACL says.
    let (_, foreign) = crate::pki::new_key_and_csr(&host("node2")).unwrap();
    let wrong = client
        .request_certificate(&principal, &foreign, "ipa", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(wrong.is(3009), "{wrong}");
    client
        .ensure_ca_acl(&CaAclSpec {
            name: "etcd".into(),
            description: "etcd".into(),
            cas: vec!["etcd".into()],
            profiles: vec![SERVICE_PROFILE.into()],
            hosts: vec![node1.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let issued = client
        .request_certificate(&principal, &csr, "etcd", SERVICE_PROFILE)
        .await
        .unwrap();
    crate::pki::verify(
        &issued.cert_pem,
        &ca.cert_pem,
        Some(&node1),
        crate::status::now(),
    )
    .unwrap();
    let shown = client
        .show_certificate(&issued.serial_hex, "etcd")
        .await
        .unwrap();
    assert_eq!(shown.cert_pem, issued.cert_pem);
    // The existing certificate is kept; no new one is asked for.
    let (kept, change) = client
        .ensure_certificate(&principal, &node1, "etcd", Some(&issued.cert_pem), &csr)
        .await
        .unwrap();
    assert_eq!(
        (kept.cert_pem, change),
        (issued.cert_pem, Change::Unchanged)
    );
    sim.running.unwrap().stop().await;
}

/// IPA2 serving as a replica of IPA1, from what its enrollment brought,
/// with its CA clone done; sub-CAs made elsewhere reach it `lwca_key_delay`
/// after their entries.
async fn start_replica(
    dir: &Path,
    api: Arc<Api>,
    enrolled: install::Enrolled,
    lwca_key_delay: Duration,
) -> Running {
    let data2 = dir.join("ipa2");
    std::fs::create_dir_all(&data2).unwrap();
    server::start(
        Options {
            fqdn: IPA2.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            dns_listen: None,
            data: data2,
            calls_log: dir.join("calls2.jsonl"),
            peers: Default::default(),
            resolver: server::Resolver::OwnZones,
            lwca_key_delay,
        },
        api,
        {
            // What the replica's install does once its CA clone is done.
            let mut state = enrolled.state.unwrap();
            ipa_sim::commands::add_ca_clone(&mut state, IPA2, IPA1);
            state
        },
        enrolled.keytab,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_replica_answers_and_issues_when_the_first_server_is_gone() {
    let Some(api) = load_for_tests() else { return };
    let api = Arc::new(api);
    let dir = tempfile::tempdir().unwrap();
    let mut sim = first_server(dir.path(), api.clone()).await;
    let first = sim.running.as_ref().unwrap();
    let client = client_for(first, &sim.ca_pem);
    let state = add_host(&client, IPA2, [198, 18, 0, 12], Some("otp-ipa2")).await;
    let otp = state.one_time_password.unwrap();
    // Not yet in ipaservers: promotion is refused.
    let refused = install::enroll(IPA1, first.address, IPA2, &otp, "replica", true, None).await;
    assert!(format!("{:#}", refused.unwrap_err()).contains("ipaservers"));
    client
        .ensure_hostgroup_members("ipaservers", &[IPA2.to_owned()])
        .await
        .unwrap();
    let enrolled = install::enroll(IPA1, first.address, IPA2, &otp, "replica", true, None)
        .await
        .unwrap();
    assert_eq!(enrolled.ca_pem, sim.ca_pem);
    // The one-time password worked once.
    assert!(
        install::enroll(IPA1, first.address, IPA2, &otp, "replica", true, None)
            .await
            .is_err()
    );
    let replica = start_replica(dir.path(), api, enrolled, server::DEFAULT_LWCA_KEY_DELAY).await;
    // Written on the first server, seen on the replica.
    client
        .ensure_hostgroup("late", "made after the replica")
        .await
        .unwrap();
    let on_replica = client_for(&replica, &sim.ca_pem);
    let mut seen = false;
    for _ in 0..40 {
        if on_replica.ensure_hostgroup("late", "x").await.unwrap() == Change::Unchanged {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(seen, "the replica never saw the host group");
    let servers = on_replica.servers().await.unwrap();
    assert_eq!(servers, vec![IPA1.to_owned(), IPA2.to_owned()]);
    assert_eq!(
        on_replica
            .ensure_segment(Suffix::Ca, IPA1, IPA2)
            .await
            .unwrap(),
        Change::Unchanged,
        "the replica install joined the CA suffix"
    );
    // The first server goes away; the replica serves and issues.
    sim.running.take().unwrap().stop().await;
    assert!(client.ping().await.is_err());
    on_replica.ping().await.unwrap();
    let node3 = host("node3");
    on_replica
        .ensure_host(&HostSpec {
            fqdn: node3.clone(),
            address: Some(Ipv4Addr::new(198, 18, 0, 13)),
            one_time_password: Some("otp3".into()),
        })
        .await
        .unwrap();
    let (_, csr) = crate::pki::new_key_and_csr(&node3).unwrap();
    let issued = on_replica
        .request_certificate(
            &format!("host/{node3}@{REALM}"),
            &csr,
            "ipa",
            SERVICE_PROFILE,
        )
        .await
        .unwrap();
    crate::pki::verify(
        &issued.cert_pem,
        &sim.ca_pem,
        Some(&node3),
        crate::status::now(),
    )
    .unwrap();
    replica.stop().await;
}

#[tokio::test]
async fn a_rebuilt_client_enrolls_again_and_its_address_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let server = sim.running.as_ref().unwrap().address;
    let node4 = host("node4");
    let (old, new) = (Ipv4Addr::new(198, 18, 0, 14), Ipv4Addr::new(198, 18, 0, 24));
    let spec = |address, otp: &str| HostSpec {
        fqdn: node4.clone(),
        address: Some(address),
        one_time_password: Some(otp.into()),
    };
    let addresses = || async {
        let shown = client
            .call(&calls::dnsrecord_show(&format!("{DOMAIN}."), "node4"))
            .await
            .unwrap();
        let mut found = ensure::values_for_tests(&shown["result"], "arecord");
        found.sort();
        found
    };
    client.ensure_host(&spec(old, "otp-1")).await.unwrap();
    install::enroll(IPA1, server, &node4, "otp-1", "client", false, None)
        .await
        .unwrap();

    // Rebuilt at a new address: FreeIPA still holds the old keytab, and
    // the name now resolves to the new address only.
    let state = client.ensure_host(&spec(new, "otp-1")).await.unwrap();
    assert!(state.enrolled);
    assert_eq!(addresses().await, [new.to_string()]);
    // The old password was used up: no second enrollment with it.
    assert!(
        install::enroll(IPA1, server, &node4, "otp-1", "client", false, None)
            .await
            .is_err()
    );
    client.reenroll_host(&node4, "otp-2").await.unwrap();
    let state = client.ensure_host(&spec(new, "otp-2")).await.unwrap();
    assert!(!state.enrolled);
    assert_eq!(state.one_time_password.as_deref(), Some("otp-2"));
    install::enroll(IPA1, server, &node4, "otp-2", "client", false, None)
        .await
        .unwrap();
    assert!(
        client
            .ensure_host(&spec(new, "otp-2"))
            .await
            .unwrap()
            .enrolled
    );

    // Repeated (an answer lost on the way): the second disable finds the
    // keytab gone already (4010) and is no error.
    let mark = log_lines(&sim.calls).len();
    client.reenroll_host(&node4, "otp-3").await.unwrap();
    client.reenroll_host(&node4, "otp-3").await.unwrap();
    let disables: Vec<Value> = log_lines(&sim.calls)[mark..]
        .iter()
        .filter(|l| l["method"] == json!("host_disable"))
        .map(|l| l["error"].clone())
        .collect();
    assert_eq!(disables, [Value::Null, json!(4010)]);
    install::enroll(IPA1, server, &node4, "otp-3", "client", false, None)
        .await
        .unwrap();
    sim.running.unwrap().stop().await;
}

#[tokio::test]
async fn a_server_leaves_only_when_the_rest_stay_connected_and_keep_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let server = sim.running.as_ref().unwrap().address;
    // The only server is the only CA: FreeIPA keeps it.
    let refused = client.ensure_no_server(IPA1).await.unwrap_err();
    assert!(refused.is(4033), "{refused}");
    // Two replicas, each joined to the first server only.
    let ipa3 = host("ipa3");
    for (fqdn, last) in [(IPA2, 12), (ipa3.as_str(), 13)] {
        let otp = format!("otp-{last}");
        client
            .ensure_host(&HostSpec {
                fqdn: fqdn.to_owned(),
                address: Some(Ipv4Addr::new(198, 18, 0, last)),
                one_time_password: Some(otp.clone()),
            })
            .await
            .unwrap();
        client
            .ensure_hostgroup_members("ipaservers", &[fqdn.to_owned()])
            .await
            .unwrap();
        install::enroll(IPA1, server, fqdn, &otp, "replica", true, None)
            .await
            .unwrap();
    }
    // Without the first server the replicas would be cut apart.
    let refused = client.ensure_no_server(IPA1).await.unwrap_err();
    assert!(refused.is(4033), "{refused}");
    assert!(refused.to_string().contains("disconnected"), "{refused}");
    // A replica at the edge goes, with its agreements and its host entry
    // (so it enrolls again from scratch); the second time there is nothing
    // to remove.
    assert_eq!(
        client.ensure_no_server(IPA2).await.unwrap(),
        Change::Created
    );
    let mut servers = client.servers().await.unwrap();
    servers.sort();
    assert_eq!(servers, [IPA1.to_owned(), ipa3.clone()]);
    assert!(client
        .call(&calls::host_show(IPA2))
        .await
        .unwrap_err()
        .is(4001));
    for suffix in [Suffix::Domain, Suffix::Ca] {
        let segments = client
            .call(&calls::topologysegment_find(suffix))
            .await
            .unwrap()
            .to_string();
        assert!(!segments.contains(IPA2), "{segments}");
    }
    assert_eq!(
        client.ensure_no_server(IPA2).await.unwrap(),
        Change::Unchanged
    );
    sim.running.unwrap().stop().await;
}

/// node1's config holding `admin` and `dm` as its FreeIPA passwords.
fn bootstrap_config(admin: &str, dm: &str) -> node_contract::NodeConfig {
    let mut config = crate::phases::tests::lab_config("node1");
    config.freeipa = Some(node_contract::FreeIpaSecrets {
        admin_password: admin.into(),
        directory_manager_password: dm.into(),
    });
    config
}

#[test]
fn options_files_carry_every_password_freeipa_takes_through_xargs() {
    // Blanks, both quotes and `$`: what the container's xargs splits or
    // strips when an options file holds them raw.
    let admin = "it's a \"good\"  pa$$word";
    let dm = "dm 'pass\" $HOME\ttab".replace('\t', " ");
    let config = bootstrap_config(admin, &dm);
    let own: Ipv4Addr = "198.18.0.11".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = site::server_options(&config, own).unwrap();
    site::write_options(dir.path(), site::Kind::Server, &options).unwrap();
    let file = dir.path().join(site::Kind::Server.options_file());
    // The simulator reads it as xargs does, and the container takes it.
    let read = InstallOptions::read(&file).unwrap();
    assert_eq!(read.value("admin-password"), Some(admin));
    assert_eq!(read.value("ds-password"), Some(dm.as_str()));
    install::check_container_options(&read).unwrap();
    install::check_password("admin-password", admin, false).unwrap();
    // So does the real xargs, where this machine has it: the very
    // arguments firstboot meant, in order.
    if let Ok(out) = std::process::Command::new("xargs")
        .arg("-a")
        .arg(&file)
        .args(["printf", "%s\\0"])
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect();
        assert_eq!(args, options);
    }
    // A replica's options, with its one-time password, the same way.
    let replica = site::replica_options(&config, own, IPA1, "Abc23def");
    site::write_options(dir.path(), site::Kind::Replica, &replica).unwrap();
    let read = InstallOptions::read(&dir.path().join(site::Kind::Replica.options_file())).unwrap();
    install::check_container_options(&read).unwrap();
    assert_eq!(read.value("password"), Some("Abc23def"));
}

#[test]
fn passwords_freeipa_refuses_are_refused_before_any_install() {
    let own: Ipv4Addr = "198.18.0.11".parse().unwrap();
    for (admin, dm, why) in [
        ("back\\slash-admin", "good dm pass", "backslash"),
        ("good admin pass", " leading-space", "space"),
        ("short", "good dm pass", "at least 8"),
        ("tab\there-admin", "good dm pass", "control"),
    ] {
        let e = site::server_options(&bootstrap_config(admin, dm), own).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{admin:?}/{dm:?}: {e:#}");
        // The simulator's installer refuses them as ipa-server-install.
        let refused = install::check_password("admin-password", admin, false)
            .and_then(|()| install::check_password("ds-password", dm, true));
        assert!(refused.is_err(), "{admin:?}/{dm:?}");
    }
}

#[test]
fn a_set_aside_volume_leaves_an_empty_one_and_only_the_last_failure() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume/freeipa-server");
    std::fs::create_dir_all(volume.join("etc/ipa")).unwrap();
    std::fs::write(volume.join("etc/ipa/ca.crt"), "half").unwrap();
    std::fs::write(
        volume.join("ipa-server-install-options"),
        "--ds-password=x\n",
    )
    .unwrap();
    let link = dir.path().join("freeipa-server");
    std::os::unix::fs::symlink(&volume, &link).unwrap();
    let aside = site::set_aside(&link).unwrap();
    // Kept for diagnosis, but not the passwords.
    assert!(!aside.join("ipa-server-install-options").exists());
    assert_eq!(
        std::fs::read_to_string(aside.join("etc/ipa/ca.crt")).unwrap(),
        "half"
    );
    assert!(link.is_dir());
    assert_eq!(std::fs::read_dir(&link).unwrap().count(), 0);
    std::fs::write(link.join("state.json"), "second").unwrap();
    let again = site::set_aside(&link).unwrap();
    assert_eq!(again, aside);
    assert!(again.join("state.json").exists());
    assert!(!again.join("etc/ipa/ca.crt").exists());
}

#[tokio::test]
async fn the_referer_is_checked_before_the_session_with_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, _client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let running = sim.running.as_ref().unwrap();
    let body = json!({"method": "ping", "params": [[], {}], "id": 0}).to_string();
    for referer in [
        None,
        Some("https://elsewhere.example.org/ipa".to_owned()),
        Some(format!("http://{IPA1}/ipa")),
        Some(format!("https://{IPA1}/other")),
    ] {
        let headers: Vec<(&str, String)> = referer.iter().map(|r| ("referer", r.clone())).collect();
        // No session either: FreeIPA answers the Referer first.
        let answer = crate::https::post(
            running.address,
            "/ipa/session/json",
            &headers,
            body.clone().into_bytes(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 400, "{referer:?}");
    }
    let good = crate::https::post(
        running.address,
        "/ipa/session/json",
        &[("referer", format!("https://{IPA1}/ipa/ui"))],
        body.into_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(good.status, 401, "a good Referer, no session");
}

#[tokio::test]
async fn server_del_of_a_host_that_is_no_server_still_removes_its_principals() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let fqdn = host("node4");
    add_host(&client, &fqdn, [198, 18, 0, 14], None).await;
    let principal = format!("HTTP/{fqdn}@{REALM}");
    client.ensure_service(&principal).await.unwrap();
    client
        .ensure_hostgroup_members(site::SERVERS_GROUP, std::slice::from_ref(&fqdn))
        .await
        .unwrap();
    let e = client.call(&calls::server_del(&fqdn)).await.unwrap_err();
    assert!(e.is(error::code::NOT_FOUND), "{e}");
    for call in [calls::host_show(&fqdn), calls::service_show(&principal)] {
        let e = client.call(&call).await.unwrap_err();
        assert!(e.is(error::code::NOT_FOUND), "{e}");
    }
    // Nothing refers to the host any more (389-ds referential integrity).
    let group = client
        .call(&calls::hostgroup_show(site::SERVERS_GROUP))
        .await
        .unwrap();
    assert!(!group.to_string().contains(&fqdn), "{group}");
}

#[tokio::test]
async fn a_replica_joins_the_ca_ring_only_once_its_ca_clone_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let first = sim.running.as_ref().unwrap();
    add_host(&client, IPA2, [198, 18, 0, 12], Some("otp-ipa2")).await;
    client
        .ensure_hostgroup_members(site::SERVERS_GROUP, &[IPA2.to_owned()])
        .await
        .unwrap();
    install::enroll(IPA1, first.address, IPA2, "otp-ipa2", "replica", true, None)
        .await
        .unwrap();
    // Promoted, listed, but no CA yet: FreeIPA refuses a `ca` segment to
    // it (3009), which a ring over every listed server asked for.
    let servers = client.topology_servers().await.unwrap();
    let ipa2 = servers.iter().find(|s| s.name == IPA2).unwrap();
    assert_eq!(ipa2.suffixes, ["domain"]);
    let e = client
        .call(&calls::topologysegment_add(Suffix::Ca, "x", IPA1, IPA2))
        .await
        .unwrap_err();
    assert!(e.is(3009), "{e}");
    // The ring is kept over those that manage each suffix: nothing fails.
    let added = site::connect_ring(&client, servers).await.unwrap();
    assert_eq!(added, 0, "the install joined the domain suffix already");
    // The same pair under another name: the topology plugin's 4203, not
    // 4002, which only a name already taken gets; ensure_segment finds
    // the pair joined either way.
    let e = client
        .call(&calls::topologysegment_add(
            Suffix::Domain,
            "other-name",
            IPA2,
            IPA1,
        ))
        .await
        .unwrap_err();
    assert!(e.is(error::code::DATABASE_ERROR), "{e}");
    assert_eq!(
        client
            .ensure_segment(Suffix::Domain, IPA2, IPA1)
            .await
            .unwrap(),
        Change::Unchanged
    );
}

#[tokio::test]
async fn a_host_whose_record_was_just_added_is_added_whatever_the_server_resolves() {
    let Some(api) = load_for_tests() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The server resolves through a resolver that knows nothing (as a
    // FreeIPA container without --dns=127.0.0.1 asks the host's stub,
    // which sends the site domain to the temporary DNS): it never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = server::Resolver::Nameservers(vec![silent.local_addr().unwrap()]);
    let sim = first_server_resolving(dir.path(), Arc::new(api), resolver).await;
    let client = client_for(sim.running.as_ref().unwrap(), &sim.ca_pem);
    let fqdn = host("node4");
    client
        .ensure_address(DOMAIN, "node4", Ipv4Addr::new(198, 18, 0, 14))
        .await
        .unwrap();
    // Its record is in FreeIPA's DNS, yet host_add without `force` asks
    // the resolver and fails (verify_host_resolvable, 4019): what the
    // previous ensure_host sent.
    let e = client
        .call(&calls::host_add(&fqdn, Some("otp-4"), None, false))
        .await
        .unwrap_err();
    assert!(e.is(4019), "{e}");
    // ensure_host, which has just put the record there, sends `force`.
    let added = add_host(&client, &fqdn, [198, 18, 0, 14], Some("otp-4")).await;
    assert_eq!(added.change, Change::Created);
}

#[tokio::test]
async fn a_slow_call_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let sent = |method: &str| {
        log_lines(&sim.calls)
            .iter()
            .filter(|c| c["method"] == method)
            .count()
    };
    // The server answers 6 s late, past the client's 5 s exchange: a
    // server_del, which FreeIPA lets take minutes, is waited for, and
    // sent once (the previous client sent it again after 5 s).
    server::inject_with_delay(&sim.data, Fault::Slow, 1, 6000).unwrap();
    let change = client.ensure_no_server(&host("node9")).await.unwrap();
    assert_eq!(change, Change::Unchanged);
    assert_eq!(sent("server_del"), 1);
    // Another change that is not answered in time is not sent again: the
    // caller hears that it may have taken effect (here it did).
    server::inject_with_delay(&sim.data, Fault::Slow, 1, 6000).unwrap();
    let e = client
        .call(&calls::hostgroup_add("slow", "answered late"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsettled { .. }), "{e}");
    assert_eq!(sent("hostgroup_add"), 1);
    assert_eq!(
        client
            .ensure_hostgroup("slow", "answered late")
            .await
            .unwrap(),
        Change::Unchanged
    );
}

/// A CSR for a fresh key with common name `cn` and these subject
/// alternative names: what a node asking for more than its own name sends.
fn csr_naming(cn: &str, dns: &[String], ips: &[Ipv4Addr]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = subject;
    params.subject_alt_names = dns
        .iter()
        .map(|d| rcgen::SanType::DnsName(d.as_str().try_into().unwrap()))
        .chain(ips.iter().map(|ip| rcgen::SanType::IpAddress((*ip).into())))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// The nodes of the CA tests, in FreeIPA with their records.
async fn add_nodes(client: &Client, names: &[(&str, [u8; 4])]) -> Vec<NodeAddress> {
    let nodes: Vec<NodeAddress> = names
        .iter()
        .map(|(name, ip)| NodeAddress {
            fqdn: host(name),
            address: Ipv4Addr::from(*ip),
        })
        .collect();
    let members: Vec<String> = nodes.iter().map(|n| n.fqdn.clone()).collect();
    client
        .ensure_site_records(DOMAIN, &nodes, &members)
        .await
        .unwrap();
    for node in &nodes {
        add_host(client, &node.fqdn, node.address.octets(), Some("otp")).await;
    }
    nodes
}

const WITHIN: Duration = Duration::from_secs(30);

/// Whether `cert_pem` chains to `ca_pem` (trusted alone, as etcd trusts
/// its CA file) and names `fqdn`, now.
fn certifies(ca_pem: &str, cert_pem: &str, fqdn: &str) -> bool {
    crate::pki::verify(cert_pem, ca_pem, Some(fqdn), crate::status::now()).is_ok()
}

#[tokio::test]
async fn each_service_ca_issues_to_its_own_service_principals_only() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let (node1, node2) = (host("node1"), host("node2"));
    add_nodes(
        &client,
        &[("node1", [198, 18, 0, 11]), ("node2", [198, 18, 0, 12])],
    )
    .await;
    // An ACL someone made for everyone is not taken over.
    client
        .call(&calls::raw_for_tests(
            "caacl_add",
            vec![json!(ServiceCa::Containers.acl())],
            json!({"hostcategory": "all"}),
        ))
        .await
        .unwrap();
    let taken = client
        .ensure_service_ca(ServiceCa::Containers, REALM, WITHIN)
        .await
        .unwrap_err();
    assert!(taken.to_string().contains("hostcategory=all"), "{taken}");
    // And FreeIPA itself refuses hosts in it (4303).
    let mixed = client
        .call(&calls::caacl_add_host(
            &ServiceCa::Containers.acl(),
            std::slice::from_ref(&node1),
            &[],
        ))
        .await
        .unwrap_err();
    assert!(mixed.is(4303), "{mixed}");
    let mut cas = Vec::new();
    for ca in [ServiceCa::Etcd, ServiceCa::Kubernetes] {
        let info = client.ensure_service_ca(ca, REALM, WITHIN).await.unwrap();
        assert_eq!(info.change, Change::Created);
        let again = client.ensure_service_ca(ca, REALM, WITHIN).await.unwrap();
        assert_eq!(
            (again.change, &again.cert_pem),
            (Change::Unchanged, &info.cert_pem)
        );
        cas.push(info);
    }
    let (etcd_ca, kubernetes_ca) = (&cas[0].cert_pem, &cas[1].cert_pem);
    for node in [&node1, &node2] {
        assert_eq!(
            client
                .ensure_service_principal(ServiceCa::Etcd, node, REALM)
                .await
                .unwrap(),
            Change::Created
        );
    }
    client
        .ensure_service_principal(ServiceCa::Kubernetes, &node1, REALM)
        .await
        .unwrap();
    // `cert_request --add` makes the service principal first, as
    // `lookup_or_add_principal` does; the CA ACL then refuses it all the
    // same.
    let (_, csr2) = crate::pki::new_key_and_csr(&node2).unwrap();
    let added = format!("kubernetes/{node2}@{REALM}");
    let refused = client
        .call(&calls::raw_for_tests(
            "cert_request",
            vec![json!(csr2)],
            json!({"principal": added, "cacn": "kubernetes", "add": true}),
        ))
        .await
        .unwrap_err();
    assert!(refused.is(error::code::ACI), "{refused}");
    client.call(&calls::service_show(&added)).await.unwrap();
    // A host FreeIPA does not have gets no principal.
    let stranger = client
        .ensure_service_principal(ServiceCa::Etcd, &host("node9"), REALM)
        .await
        .unwrap_err();
    assert!(matches!(stranger, Error::Invalid(_)), "{stranger}");
    // Nor one whose name does not resolve (FreeIPA's own check, 4019).
    let unresolved = host("node8");
    client
        .call(&calls::host_add(&unresolved, Some("otp"), None, true))
        .await
        .unwrap();
    let refused = client
        .ensure_service_principal(ServiceCa::Etcd, &unresolved, REALM)
        .await
        .unwrap_err();
    assert!(refused.is(4019), "{refused}");
    // The ACL lets exactly the etcd principals use the etcd CA; the
    // default ACL was not touched.
    let acl = client
        .call(&calls::caacl_show(&ServiceCa::Etcd.acl()))
        .await
        .unwrap();
    let acl = &acl["result"];
    let mut services = ensure::values_for_tests(acl, "memberservice_service");
    services.sort();
    assert_eq!(
        services,
        vec![
            format!("etcd/{node1}@{REALM}"),
            format!("etcd/{node2}@{REALM}")
        ]
    );
    for attribute in ["hostcategory", "servicecategory", "memberhost_host"] {
        assert!(acl.get(attribute).is_none(), "{attribute} in {acl}");
    }
    let default = client
        .call(&calls::caacl_show("hosts_services_caIPAserviceCert"))
        .await
        .unwrap();
    assert!(
        default["result"].get("ipamemberca_ca").is_none(),
        "{default}"
    );

    let (_, csr) = crate::pki::new_key_and_csr(&node1).unwrap();
    let issued = client
        .request_service_certificate(ServiceCa::Etcd, &node1, REALM, &csr, WITHIN)
        .await
        .unwrap();
    assert!(certifies(etcd_ca, &issued.cert_pem, &node1));
    assert_eq!(issued.ca_pem, *etcd_ca);
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    // Not from the IPA root directly, and not from the kubernetes CA.
    assert!(!certifies(&sim.ca_pem, &issued.cert_pem, &node1));
    assert!(!certifies(kubernetes_ca, &issued.cert_pem, &node1));
    let kubernetes = client
        .request_service_certificate(ServiceCa::Kubernetes, &node1, REALM, &csr, WITHIN)
        .await
        .unwrap();
    assert!(certifies(kubernetes_ca, &kubernetes.cert_pem, &node1));
    assert!(
        !certifies(etcd_ca, &kubernetes.cert_pem, &node1),
        "a kubernetes certificate must not pass for an etcd one"
    );

    // The host's own principal, and another service's principal, may not
    // use the etcd CA.
    for principal in [
        format!("host/{node1}@{REALM}"),
        format!("kubernetes/{node1}@{REALM}"),
    ] {
        let refused = client
            .request_certificate(&principal, &csr, "etcd", SERVICE_PROFILE)
            .await
            .unwrap_err();
        assert!(refused.is(error::code::ACI), "{principal}: {refused}");
        assert!(refused
            .to_string()
            .contains("not permitted to use CA 'etcd'"));
    }
    // A name of another host in the request: refused, whether that host
    // has an etcd principal (not managed by node1) or none at all.
    let principal = format!("etcd/{node1}@{REALM}");
    let with_node2 = csr_naming(&node1, &[node1.clone(), node2.clone()], &[]);
    let refused = client
        .request_certificate(&principal, &with_node2, "etcd", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(refused.is(error::code::ACI), "{refused}");
    assert!(
        refused.to_string().contains("subject alt name"),
        "{refused}"
    );
    let with_node9 = csr_naming(&node1, &[node1.clone(), host("node9")], &[]);
    let refused = client
        .request_certificate(&principal, &with_node9, "etcd", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(refused.is(error::code::NOT_FOUND), "{refused}");
    // A common name that is not the principal's host.
    let other_cn = csr_naming(&node2, std::slice::from_ref(&node1), &[]);
    let refused = client
        .request_certificate(&principal, &other_cn, "etcd", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(refused.is(3009), "{refused}");
    // An address is taken only where DNS loops back to the name: node1's
    // own (A and PTR) passes, node2's does not.
    let own_ip = csr_naming(
        &node1,
        std::slice::from_ref(&node1),
        &[Ipv4Addr::new(198, 18, 0, 11)],
    );
    client
        .request_certificate(&principal, &own_ip, "etcd", SERVICE_PROFILE)
        .await
        .unwrap();
    let other_ip = csr_naming(
        &node1,
        std::slice::from_ref(&node1),
        &[Ipv4Addr::new(198, 18, 0, 12)],
    );
    let refused = client
        .request_certificate(&principal, &other_ip, "etcd", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("unreachable from DNS names"),
        "{refused}"
    );
    sim.running.unwrap().stop().await;
}

#[tokio::test]
async fn a_replica_says_not_yet_until_the_sub_ca_key_arrives_then_issues() {
    let Some(api) = load_for_tests() else { return };
    let api = Arc::new(api);
    let dir = tempfile::tempdir().unwrap();
    let sim = first_server(dir.path(), api.clone()).await;
    let first = sim.running.as_ref().unwrap();
    let client = client_for(first, &sim.ca_pem);
    let otp = add_host(&client, IPA2, [198, 18, 0, 2], Some("otp-ipa2"))
        .await
        .one_time_password
        .unwrap();
    client
        .ensure_hostgroup_members("ipaservers", &[IPA2.to_owned()])
        .await
        .unwrap();
    let enrolled = install::enroll(IPA1, first.address, IPA2, &otp, "replica", true, None)
        .await
        .unwrap();
    let replica = start_replica(dir.path(), api, enrolled, Duration::from_secs(3)).await;
    let on_replica = client_for(&replica, &sim.ca_pem);
    let node1 = host("node1");
    add_nodes(&client, &[("node1", [198, 18, 0, 11])]).await;
    let etcd = client
        .ensure_service_ca(ServiceCa::Etcd, REALM, WITHIN)
        .await
        .unwrap();
    client
        .ensure_service_principal(ServiceCa::Etcd, &node1, REALM)
        .await
        .unwrap();
    // Wait for the entries (not the key) to reach the replica.
    let principal = format!("etcd/{node1}@{REALM}");
    let mut arrived = false;
    for _ in 0..100 {
        if on_replica
            .call(&calls::service_show(&principal))
            .await
            .is_ok()
        {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(arrived, "the principal never reached the replica");
    // The CA is there, its key is not: 13031 from ca_show, 4301 from
    // cert_request.
    let shown = on_replica.call(&calls::ca_show("etcd")).await.unwrap();
    assert_eq!(shown["messages"][0]["code"], json!(13031), "{shown}");
    assert!(shown["result"].get("certificate").is_none(), "{shown}");
    let listed = on_replica
        .call(&calls::raw_for_tests(
            "ca_find",
            vec![],
            json!({"all": true}),
        ))
        .await
        .unwrap();
    assert_eq!(
        listed["messages"][0]["data"]["ca"],
        json!("etcd"),
        "{listed}"
    );
    let (_, csr) = crate::pki::new_key_and_csr(&node1).unwrap();
    let refused = on_replica
        .request_certificate(&principal, &csr, "etcd", SERVICE_PROFILE)
        .await
        .unwrap_err();
    assert!(refused.is(error::code::CERTIFICATE_OPERATION), "{refused}");
    // With no time to wait it is a clear "not yet".
    let not_yet = on_replica
        .request_service_certificate(ServiceCa::Etcd, &node1, REALM, &csr, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(not_yet, Error::NotYet { .. }), "{not_yet}");
    assert!(not_yet.to_string().contains("13031"), "{not_yet}");
    // With time, it is retried until the key is there.
    let issued = on_replica
        .request_service_certificate(ServiceCa::Etcd, &node1, REALM, &csr, WITHIN)
        .await
        .unwrap();
    assert!(certifies(&etcd.cert_pem, &issued.cert_pem, &node1));
    let replica_calls = log_lines(&dir.path().join("calls2.jsonl"));
    let requests: Vec<Value> = replica_calls
        .iter()
        .filter(|l| l["method"] == json!("cert_request"))
        .map(|l| l["error"].clone())
        .collect();
    assert!(
        requests.len() >= 3 && requests.last() == Some(&Value::Null),
        "{requests:?}"
    );
    assert!(
        requests[..requests.len() - 1]
            .iter()
            .all(|e| *e == json!(4301)),
        "{requests:?}"
    );
    replica.stop().await;
    sim.running.unwrap().stop().await;
}

#[tokio::test]
async fn the_site_records_are_in_freeipa_dns_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let nodes = vec![
        NodeAddress {
            fqdn: host("node1"),
            address: Ipv4Addr::new(198, 18, 0, 11),
        },
        NodeAddress {
            fqdn: host("node2"),
            address: Ipv4Addr::new(198, 18, 1, 12),
        },
    ];
    let members = vec![host("node1"), host("node2")];
    assert_eq!(
        client
            .ensure_site_records(DOMAIN, &nodes, &members)
            .await
            .unwrap(),
        Change::Created
    );
    let mark = log_lines(&sim.calls).len();
    assert_eq!(
        client
            .ensure_site_records(DOMAIN, &nodes, &members)
            .await
            .unwrap(),
        Change::Unchanged
    );
    let later = &log_lines(&sim.calls)[mark..];
    assert!(
        later.iter().all(|l| l["mutated"] == json!(false)),
        "{later:?}"
    );
    for (owner, port) in site_records::ETCD_SRV {
        let shown = client
            .call(&calls::dnsrecord_show(DOMAIN, owner))
            .await
            .unwrap();
        let mut srv = ensure::values_for_tests(&shown["result"], "srvrecord");
        srv.sort();
        assert_eq!(
            srv,
            vec![
                format!("0 0 {port} {}.", host("node1")),
                format!("0 0 {port} {}.", host("node2"))
            ]
        );
    }
    // Each address in its own /24 reverse zone.
    let ptr = client
        .call(&calls::dnsrecord_show("1.18.198.in-addr.arpa.", "12"))
        .await
        .unwrap();
    assert_eq!(
        ensure::values_for_tests(&ptr["result"], "ptrrecord"),
        vec![format!("{}.", host("node2"))]
    );
    // A member that is not among the nodes changes nothing.
    let before = log_lines(&sim.calls).len();
    let stray = client
        .ensure_site_records(DOMAIN, &nodes, &[host("node3")])
        .await
        .unwrap_err();
    assert!(matches!(stray, Error::Invalid(_)), "{stray}");
    assert_eq!(log_lines(&sim.calls).len(), before);
    // FreeIPA refuses a malformed SRV value and a PTR name that is not
    // the rest of an address.
    let short = client
        .call(&calls::raw_for_tests(
            "dnsrecord_add",
            vec![json!(format!("{DOMAIN}.")), json!("_etcd-server-ssl._tcp")],
            json!({"srvrecord": ["0 0 2380"]}),
        ))
        .await
        .unwrap_err();
    assert!(short.is(3009), "{short}");
    let wide = client
        .call(&calls::raw_for_tests(
            "dnsrecord_add",
            vec![json!(format!("{DOMAIN}.")), json!("_etcd-server-ssl._tcp")],
            json!({"srvrecord": [format!("0 0 70000 {}.", host("node1"))]}),
        ))
        .await
        .unwrap_err();
    assert!(wide.is(3009), "{wide}");
    let ptr_name = client
        .call(&calls::raw_for_tests(
            "dnsrecord_add",
            vec![json!("1.18.198.in-addr.arpa."), json!("12.5")],
            json!({"ptrrecord": [format!("{}.", host("node2"))]}),
        ))
        .await
        .unwrap_err();
    assert!(ptr_name.is(3009), "{ptr_name}");
    sim.running.unwrap().stop().await;
}

#[test]
fn an_acl_that_allows_more_than_its_service_is_refused() {
    let check = |acl: Value| service_ca::check_acl_for_tests(ServiceCa::Etcd, &acl);
    let principal = format!("etcd/node1.{DOMAIN}@{REALM}");
    assert!(
        check(json!({"ipamemberca_ca": ["etcd"], "memberservice_service": [principal]})).is_ok()
    );
    for bad in [
        json!({"servicecategory": ["all"]}),
        json!({"hostcategory": ["all"]}),
        json!({"ipacacategory": ["all"]}),
        json!({"memberhost_hostgroup": ["etcd"]}),
        json!({"memberhost_host": [format!("node1.{DOMAIN}")]}),
        json!({"ipamemberca_ca": ["etcd", "ipa"]}),
        json!({"memberservice_service": [format!("kubernetes/node1.{DOMAIN}@{REALM}")]}),
    ] {
        assert!(check(bad.clone()).is_err(), "{bad}");
    }
}

/// certmonger's own request (`getcert request -K etcd/node1...@REALM`,
/// made by certmonger 0.79 on this project's machine) carries the
/// principal as a UPN and a KRB5PrincipalName: FreeIPA issues it for that
/// principal and refuses it for another (cert.py).
#[tokio::test]
async fn certmonger_s_request_is_issued_for_its_own_principal_only() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let node1 = host("node1");
    add_nodes(&client, &[("node1", [198, 18, 0, 11])]).await;
    for ca in [ServiceCa::Etcd, ServiceCa::Kubernetes] {
        client.ensure_service_ca(ca, REALM, WITHIN).await.unwrap();
        client
            .ensure_service_principal(ca, &node1, REALM)
            .await
            .unwrap();
    }
    let csr = include_str!("../../../tests/ipa-sim/testdata/certmonger-etcd-node1.csr");
    let issued = client
        .request_service_certificate(ServiceCa::Etcd, &node1, REALM, csr, WITHIN)
        .await
        .unwrap();
    assert!(certifies(&issued.ca_pem, &issued.cert_pem, &node1));
    // The same request for kubernetes/node1: its principal names are
    // etcd's, so it is refused, though the CA ACL would allow it.
    let refused = client
        .request_service_certificate(ServiceCa::Kubernetes, &node1, REALM, csr, WITHIN)
        .await
        .unwrap_err();
    assert!(refused.is(2100), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("does not match requested principal"),
        "{refused}"
    );
}

/// One POST to the simulator's `path`, over TLS checked against its CA.
async fn post_to_sim(
    sim: &Sim,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> crate::https::Answer {
    let running = sim.running.as_ref().unwrap();
    crate::https::post_verified(
        running.address,
        &sim.ca_pem,
        IPA1,
        path,
        headers,
        body,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// The stand-in for Kerberos: a host logs in with the keytab the
/// simulator gave it at enrollment, and nothing else does; its session
/// may only do what certmonger's helper does.
#[tokio::test]
async fn a_host_logs_in_with_its_keytab_and_may_only_ask_for_certificates() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let node1 = host("node1");
    add_host(&client, &node1, [198, 18, 0, 11], Some("otp-node1")).await;
    let address = sim.running.as_ref().unwrap().address;
    let enrolled =
        ipa_sim::install::enroll(IPA1, address, &node1, "otp-node1", "client", false, None)
            .await
            .unwrap();
    let negotiate = |keytab: &str| {
        let token = base64::engine::general_purpose::STANDARD
            .encode(json!({"host": node1, "keytab": keytab}).to_string());
        [("authorization", format!("Negotiate {token}"))]
    };
    let login = "/ipa/session/login_kerberos";
    let refused = post_to_sim(&sim, login, &negotiate("not the keytab"), Vec::new()).await;
    assert_eq!(refused.status, 401);
    let answer = post_to_sim(&sim, login, &negotiate(&enrolled.keytab), Vec::new()).await;
    assert_eq!(answer.status, 200);
    let cookie = answer.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let session = [
        ("cookie", cookie),
        ("referer", format!("https://{IPA1}/ipa")),
    ];
    let version = crate::freeipa::API_VERSION;
    let call = |method: &str, params: Value| {
        json!({"method": method, "params": params, "id": 0})
            .to_string()
            .into_bytes()
    };
    let json_path = "/ipa/session/json";
    let ping = post_to_sim(
        &sim,
        json_path,
        &session,
        call("ping", json!([[], {"version": version}])),
    )
    .await;
    let ping: Value = serde_json::from_slice(&ping.body).unwrap();
    assert!(ping["error"].is_null(), "{ping}");
    assert_eq!(ping["principal"], json!(format!("host/{node1}@{REALM}")));
    let add = call(
        "host_add",
        json!([["node9.lab.example.org"], {"force": true, "version": version}]),
    );
    let add: Value =
        serde_json::from_slice(&post_to_sim(&sim, json_path, &session, add).await.body).unwrap();
    assert_eq!(add["error"]["code"], json!(2100), "{add}");
}

/// THREATS: "only core hosts (by their ticket's role) are put in
/// `ipaservers`" and each node's one-time password is "for that node's own
/// host entry". Through the bootstrap host's enroller, against the
/// simulator (which refuses as FreeIPA's ipa-join and replica install
/// do): a core host and two workers get three different passwords; a
/// worker is in no `ipaservers`, first time or rebuilt, so its password
/// cannot make it a replica; each password opens only its own host entry
/// (tried on the others first, then on its own, which it opens).
#[tokio::test]
async fn a_worker_is_never_a_server_and_each_password_opens_only_its_host() {
    use node_contract::{HostName, Role};
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let server = sim.running.as_ref().unwrap().address;
    let config = crate::phases::tests::lab_config("node1");
    let enroller = site::Enroller::new(
        client_for(sim.running.as_ref().unwrap(), &sim.ca_pem),
        IPA1.into(),
        dir.path().join("passwords.json"),
        &config,
    )
    .unwrap();
    let nodes = [
        ("node2", Role::Core, 12),
        ("node4", Role::Worker, 14),
        ("node5", Role::Worker, 15),
    ];
    let mut passwords = Vec::new();
    for (name, role, octet) in nodes {
        let node = HostName::parse(name).unwrap();
        let password = enroller
            .enroll(&node, role, Ipv4Addr::new(198, 18, 0, octet))
            .await
            .unwrap();
        passwords.push(password);
    }
    let members = || async {
        let shown = client
            .call(&calls::hostgroup_show("ipaservers"))
            .await
            .unwrap();
        ensure::values_for_tests(&shown["result"], "member_host")
    };
    let servers = members().await;
    assert!(servers.contains(&host("node2")), "{servers:?}");
    assert!(
        !servers.contains(&host("node4")) && !servers.contains(&host("node5")),
        "a worker in ipaservers: {servers:?}"
    );
    let mut distinct = passwords.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "passwords shared between nodes");

    // Each password on every other node's entry: refused, whichever way
    // it asks; then on its own: opened, as the node's role allows.
    for (i, (name, role, _)) in nodes.iter().enumerate() {
        for (j, (other, _, _)) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            for (kind, promote) in [("client", false), ("replica", true)] {
                let opened = install::enroll(
                    IPA1,
                    server,
                    &host(other),
                    &passwords[i],
                    kind,
                    promote,
                    None,
                )
                .await;
                assert!(
                    opened.is_err(),
                    "{name}'s password opened {other}'s entry as a {kind}"
                );
            }
        }
        if *role == Role::Worker {
            // A worker's own password does not make it a replica.
            let promoted = install::enroll(
                IPA1,
                server,
                &host(name),
                &passwords[i],
                "replica",
                true,
                None,
            )
            .await;
            let refused = format!("{:#}", promoted.unwrap_err());
            assert!(refused.contains("ipaservers"), "{name}: {refused}");
        }
        let (kind, promote) = match role {
            Role::Core => ("replica", true),
            Role::Worker => ("client", false),
        };
        install::enroll(
            IPA1,
            server,
            &host(name),
            &passwords[i],
            kind,
            promote,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}'s own password: {e:#}"));
    }

    // node4 rebuilt: it enrolls again, with a new password, and is still
    // no server.
    let again = enroller
        .enroll(
            &HostName::parse("node4").unwrap(),
            Role::Worker,
            Ipv4Addr::new(198, 18, 0, 24),
        )
        .await
        .unwrap();
    assert!(!passwords.contains(&again));
    let servers = members().await;
    assert!(
        !servers.contains(&host("node4")),
        "a rebuilt worker in ipaservers: {servers:?}"
    );
    sim.running.unwrap().stop().await;
}

/// A host that joins after the handoff is certified through FreeIPA
/// before it enrolls (`certify_service` adds its entry): the password its
/// enrollment then gives opens that entry, once, and the certificate is
/// the sub-CA's for its name.
#[tokio::test]
async fn a_host_certified_before_it_enrolls_opens_its_entry_with_the_password_given() {
    use node_contract::{HostName, Role};
    let dir = tempfile::tempdir().unwrap();
    let Some((sim, client)) = first_server_and_client(dir.path()).await else {
        return;
    };
    let server = sim.running.as_ref().unwrap().address;
    let firstboot = client
        .ensure_service_ca(ServiceCa::Firstboot, REALM, WITHIN)
        .await
        .unwrap();
    let enroller = site::Enroller::new(
        client_for(sim.running.as_ref().unwrap(), &sim.ca_pem),
        IPA1.into(),
        dir.path().join("passwords.json"),
        &crate::phases::tests::lab_config("node1"),
    )
    .unwrap();
    let (node, address) = (
        HostName::parse("node6").unwrap(),
        Ipv4Addr::new(198, 18, 0, 16),
    );
    let (_, csr) = crate::pki::new_key_and_csr(&host("node6")).unwrap();
    let cert = enroller
        .certify_service("firstboot", &node, address, &csr)
        .await
        .unwrap();
    assert!(certifies(&firstboot.cert_pem, &cert, &host("node6")));
    let password = enroller.enroll(&node, Role::Worker, address).await.unwrap();
    install::enroll(
        IPA1,
        server,
        &host("node6"),
        &password,
        "client",
        false,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("the password given does not open node6's entry: {e:#}"));
    let again = install::enroll(
        IPA1,
        server,
        &host("node6"),
        &password,
        "client",
        false,
        None,
    )
    .await;
    assert!(again.is_err(), "a one-time password opened the entry twice");
}
