//! The stateful DigitalOcean fake, exercised through Prism (proxy mode,
//! `--errors`) with the real client: every operation the harness uses,
//! pagination, each fault kind, the kill hook, seeding and snapshots. A
//! recording relay between the client and Prism sees every answer, so an
//! answer of the fake that breaks the spec (Prism's 500) or a request that
//! does (Prism's 422) fails the test even where the client would retry.
//!
//! Prism needs ~15 s to load the spec, so this is one test.

mod support;

use std::fmt::Debug;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use builder::digitalocean::{ApiError, Client, RetryPolicy};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::do_fake::{kind_of, FakeDo, Fault};
use support::http;
use support::prism::{self, Prism};

const KEY: &str = concat!(
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g",
    " operator@example"
);
/// `ssh-keygen -l -E md5` of `KEY`.
const KEY_MD5: &str = "05:6d:11:6f:aa:82:7f:17:e4:a2:92:09:ca:cf:9d:42";
const TAG: &str = "site:example-com";

#[test]
fn the_fake_stays_exact_to_the_spec() {
    if let Some(reason) = prism::skip_reason() {
        return support::skip(&reason);
    }
    let started = Instant::now();
    let fake = FakeDo::start();
    let prism = Prism::start(&fake.base);
    let relay = Relay::start(&prism.base);
    let policy = RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_secs(3),
        deadline: Duration::from_secs(10),
    };
    let client = Client::new(&relay.base, "test-token", policy.clone()).unwrap();
    // Straight to the fake, to see what Prism hides (a closed connection).
    let direct = Client::new(&fake.base, "test-token", policy).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        account_and_tags(&client, &fake).await;
        keys(&client, &fake).await;
        images(&client, &fake).await;
        vpcs_volumes_droplets(&client, &fake).await;
        firewalls(&client, &fake).await;
        tag_resources(&client, &fake).await;
        pagination(&client, &fake).await;
        faults(&client, &direct, &fake, &relay.base).await;
        kill_hook(&client, &fake).await;
        snapshots_and_seeds(&client, &fake).await;
    });
    // The client gives up on a stalled request before Prism answers it;
    // every exchange must be in the log before it is judged.
    let log = relay.settled(Duration::from_secs(30));
    let broken: Vec<String> = log
        .iter()
        .filter(|e| e.problem() && !e.body.contains("FetchError"))
        .map(|e| format!("{} -> {} {}", e.request, e.status, e.body))
        .collect();
    assert!(
        broken.is_empty(),
        "Prism refused requests or answers of the fake as off the spec:\n{}",
        broken.join("\n")
    );
    // Only the dropped connections (two resets, the kill, the stall).
    let dropped = log.iter().filter(|e| e.problem()).count();
    assert_eq!(dropped, 4, "{log:#?}");
    eprintln!(
        "{} exchanges through Prism in {:.1}s",
        log.len(),
        started.elapsed().as_secs_f32()
    );
}

async fn account_and_tags(client: &Client, fake: &FakeDo) {
    fake.reset();
    let account = client.get("/v2/account").await.unwrap();
    assert_eq!(account["account"]["status"], "active");
    assert_eq!(account["account"]["droplet_limit"], 25);

    let tag = client
        .post("/v2/tags", &json!({"name": TAG}))
        .await
        .unwrap();
    assert_eq!(tag["tag"]["name"], TAG);
    assert_eq!(tag["tag"]["resources"]["count"], 0);
    // Creating it again answers 201 with the same tag, as DigitalOcean does.
    let again = client
        .post("/v2/tags", &json!({"name": TAG}))
        .await
        .unwrap();
    assert_eq!(again, tag);
    let got = client.get(&format!("/v2/tags/{TAG}")).await.unwrap();
    assert_eq!(got["tag"]["name"], TAG);
    assert_eq!(
        refusal(client.get("/v2/tags/absent").await),
        (404, "not_found".into())
    );
    client
        .post("/v2/tags", &json!({"name": "other"}))
        .await
        .unwrap();
    let tags = client.list("/v2/tags", "tags").await.unwrap();
    assert_eq!(names(&tags), ["other", TAG]);
    client.delete(&format!("/v2/tags/{TAG}")).await.unwrap();
    assert_eq!(refusal(client.get(&format!("/v2/tags/{TAG}")).await).0, 404);
    assert_eq!(
        refusal(client.delete(&format!("/v2/tags/{TAG}")).await).0,
        404
    );
    // A route of the spec the fake does not know: its 404, not a mock.
    assert_eq!(
        refusal(client.get("/v2/domains").await),
        (404, "not_found".into())
    );
    assert_eq!(fake.mutations(), 5);
    assert_eq!(
        fake.calls()[..3],
        ["GET /v2/account", "POST /v2/tags", "POST /v2/tags"]
    );
}

async fn keys(client: &Client, fake: &FakeDo) {
    fake.reset();
    let key = client
        .post(
            "/v2/account/keys",
            &json!({"name": "operator", "public_key": KEY}),
        )
        .await
        .unwrap();
    assert_eq!(key["ssh_key"]["fingerprint"], KEY_MD5);
    assert!(key["ssh_key"]["id"].as_u64().is_some());
    let again = client
        .post(
            "/v2/account/keys",
            &json!({"name": "another name", "public_key": KEY}),
        )
        .await;
    match again {
        Err(ApiError::Refused {
            status,
            id,
            message,
            ..
        }) => {
            assert_eq!(status.as_u16(), 422);
            assert_eq!(id, "unprocessable_entity");
            assert_eq!(message, "SSH Key is already in use on your account");
        }
        other => panic!("a second upload of a key: {other:?}"),
    }
    assert_eq!(
        refusal(
            client
                .post(
                    "/v2/account/keys",
                    &json!({"name": "junk", "public_key": "not a key"})
                )
                .await
        ),
        (422, "unprocessable_entity".into())
    );
    let keys = client.list("/v2/account/keys", "ssh_keys").await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], "operator");
    // By id or by fingerprint, as DigitalOcean allows.
    let id = key["ssh_key"]["id"].as_u64().unwrap();
    let by_id = client.get(&format!("/v2/account/keys/{id}")).await.unwrap();
    assert_eq!(by_id["ssh_key"]["fingerprint"], KEY_MD5);
    let by_fingerprint = client
        .get(&format!("/v2/account/keys/{KEY_MD5}"))
        .await
        .unwrap();
    assert_eq!(by_fingerprint, by_id);
    client
        .delete(&format!("/v2/account/keys/{id}"))
        .await
        .unwrap();
    assert_eq!(
        refusal(client.get(&format!("/v2/account/keys/{id}")).await).0,
        404
    );
}

async fn images(client: &Client, fake: &FakeDo) {
    fake.reset();
    let image = client
        .post(
            "/v2/images",
            &json!({"name": "fedora-coreos-44", "url": "https://example.com/fcos.qcow2.gz",
                    "region": "ams3", "distribution": "Fedora",
                    "description": "Fedora CoreOS", "tags": [TAG]}),
        )
        .await
        .unwrap();
    assert_eq!(image["image"]["status"], "NEW");
    assert_eq!(image["image"]["type"], "custom");
    let id = image["image"]["id"].as_u64().unwrap();
    let path = format!("/v2/images/{id}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let got = client.get(&path).await.unwrap();
        statuses.push(got["image"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["NEW", "NEW", "available"]);
    let private = client
        .list("/v2/images?private=true", "images")
        .await
        .unwrap();
    assert_eq!(names(&private), ["fedora-coreos-44"]);
    let distributions = client
        .list("/v2/images?type=distribution", "images")
        .await
        .unwrap();
    assert_eq!(distributions.len(), 3);
    assert!(distributions.iter().all(|i| i["public"] == true));
    let tagged = client
        .list(&format!("/v2/images?tag_name={TAG}"), "images")
        .await
        .unwrap();
    assert_eq!(tagged.len(), 1);
    assert_eq!(client.list("/v2/images", "images").await.unwrap().len(), 4);
    let slug = client.get("/v2/images/ubuntu-24-04-x64").await.unwrap();
    assert_eq!(slug["image"]["slug"], "ubuntu-24-04-x64");
    let public = slug["image"]["id"].as_u64().unwrap();
    assert_eq!(
        refusal(client.delete(&format!("/v2/images/{public}")).await),
        (403, "forbidden".into())
    );
    let tag = client.get(&format!("/v2/tags/{TAG}")).await.unwrap();
    assert_eq!(tag["tag"]["resources"]["images"]["count"], 1);
    client.delete(&path).await.unwrap();
    assert_eq!(refusal(client.get(&path).await).0, 404);
    assert_eq!(refusal(client.delete(&path).await).0, 404);
}

async fn vpcs_volumes_droplets(client: &Client, fake: &FakeDo) {
    fake.reset();
    let key = client
        .post(
            "/v2/account/keys",
            &json!({"name": "operator", "public_key": KEY}),
        )
        .await
        .unwrap();
    let key_id = key["ssh_key"]["id"].as_u64().unwrap();
    fake.image_polls_until_available(0);
    let image = client
        .post(
            "/v2/images",
            &json!({"name": "fedora-coreos-44", "url": "https://example.com/fcos.qcow2.gz",
                    "region": "ams3", "distribution": "Fedora", "tags": [TAG]}),
        )
        .await
        .unwrap();
    let image_id = image["image"]["id"].as_u64().unwrap();
    let image_path = format!("/v2/images/{image_id}");
    assert_eq!(
        client.get(&image_path).await.unwrap()["image"]["status"],
        "available"
    );

    // VPCs: unique names, no overlapping ranges.
    let vpc = client
        .post(
            "/v2/vpcs",
            &json!({"name": "example-com-site", "region": "ams3",
                    "ip_range": "10.10.0.0/24", "description": TAG}),
        )
        .await
        .unwrap();
    assert_eq!(vpc["vpc"]["default"], false);
    assert_eq!(vpc["vpc"]["ip_range"], "10.10.0.0/24");
    let vpc_id = vpc["vpc"]["id"].as_str().unwrap().to_owned();
    for body in [
        json!({"name": "example-com-site", "region": "ams3", "ip_range": "10.11.0.0/24"}),
        json!({"name": "overlapping", "region": "ams3", "ip_range": "10.10.0.128/25"}),
        json!({"name": "public-range", "region": "ams3", "ip_range": "8.8.8.0/24"}),
    ] {
        assert_eq!(
            refusal(client.post("/v2/vpcs", &body).await),
            (422, "unprocessable_entity".into()),
            "{body}"
        );
    }
    let elsewhere = client
        .post(
            "/v2/vpcs",
            &json!({"name": "elsewhere", "region": "fra1", "ip_range": "10.20.0.0/24"}),
        )
        .await
        .unwrap();
    let vpcs = client.list("/v2/vpcs", "vpcs").await.unwrap();
    assert_eq!(
        names(&vpcs),
        [
            "default-ams3",
            "default-fra1",
            "elsewhere",
            "example-com-site"
        ]
    );
    let got = client.get(&format!("/v2/vpcs/{vpc_id}")).await.unwrap();
    assert_eq!(got["vpc"]["name"], "example-com-site");

    // Volumes: name unique per region.
    let mut volume_ids = Vec::new();
    for name in ["example-com-data", "example-com-extra"] {
        let volume = client
            .post(
                "/v2/volumes",
                &json!({"size_gigabytes": 10, "name": name, "region": "ams3",
                        "description": "data", "tags": [TAG]}),
            )
            .await
            .unwrap();
        assert_eq!(volume["volume"]["droplet_ids"], json!([]));
        volume_ids.push(volume["volume"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        refusal(
            client
                .post(
                    "/v2/volumes",
                    &json!({"size_gigabytes": 10, "name": "example-com-data", "region": "ams3"}),
                )
                .await
        ),
        (409, "conflict".into())
    );
    let found = client
        .list("/v2/volumes?name=example-com-data&region=ams3", "volumes")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], json!(volume_ids[0]));
    assert!(client
        .list("/v2/volumes?region=fra1", "volumes")
        .await
        .unwrap()
        .is_empty());

    // One droplet, with everything a custom image allows: not IPv6, not
    // monitoring (DigitalOcean's Custom Images Limits), which are refused.
    let user_data = "#cloud-config\n# the first node\n".repeat(40);
    let body = |ipv6: bool, monitoring: bool| {
        json!({"name": "example-com-1", "region": "ams3", "size": "s-2vcpu-4gb",
               "image": image_id, "ssh_keys": [key_id], "vpc_uuid": vpc_id,
               "user_data": user_data, "tags": [TAG], "volumes": [volume_ids[0]],
               "monitoring": monitoring, "ipv6": ipv6})
    };
    for (ipv6, monitoring) in [(true, false), (false, true)] {
        let refused = client
            .post("/v2/droplets", &body(ipv6, monitoring))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("custom image"), "{refused}");
    }
    let created = client
        .post("/v2/droplets", &body(false, false))
        .await
        .unwrap();
    let droplet = &created["droplet"];
    assert_eq!(droplet["status"], "new");
    let id = droplet["id"].as_u64().unwrap();
    let action = created["links"]["actions"][0]["id"].as_u64().unwrap();
    let action = client
        .wait_action(action, Duration::from_secs(5), Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(action["type"], "create");
    let path = format!("/v2/droplets/{id}");
    let first = client.get(&path).await.unwrap();
    assert_eq!(first["droplet"]["status"], "new");
    let active = client.get(&path).await.unwrap();
    let droplet = &active["droplet"];
    assert_eq!(droplet["status"], "active");
    assert_eq!(droplet["vpc_uuid"], json!(vpc_id));
    assert_eq!(droplet["volume_ids"], json!([volume_ids[0]]));
    assert_eq!(droplet["image"]["name"], "fedora-coreos-44");
    let v4 = droplet["networks"]["v4"].as_array().unwrap();
    let address = |kind: &str| {
        v4.iter().find(|n| n["type"] == kind).unwrap()["ip_address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(address("private").starts_with("10.10.0."), "{v4:?}");
    assert!(address("public").starts_with("203.0.113."), "{v4:?}");
    assert!(droplet["networks"]["v6"].as_array().unwrap().is_empty());
    assert_eq!(
        fake.user_data("example-com-1").as_deref(),
        Some(user_data.as_str())
    );
    let volume = client
        .get(&format!("/v2/volumes/{}", volume_ids[0]))
        .await
        .unwrap();
    assert_eq!(volume["volume"]["droplet_ids"], json!([id]));
    // One listing of the region says what is attached where.
    let region = client
        .list("/v2/volumes?region=ams3", "volumes")
        .await
        .unwrap();
    assert_eq!(names(&region), ["example-com-data", "example-com-extra"]);
    let attached: Vec<&Value> = region.iter().map(|v| &v["droplet_ids"]).collect();
    assert_eq!(attached, [&json!([id]), &json!([])]);

    // Refusals of droplet creation.
    let too_big = "x".repeat(64 * 1024 + 1);
    let base = json!({"region": "ams3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for body in [
        with(json!({"name": "too-much-data", "user_data": too_big})),
        with(json!({"name": "bad-size", "size": "s-99vcpu-1tb"})),
        with(json!({"name": "bad-image", "image": 42})),
        with(json!({"names": (1..=11).map(|i| format!("w{i}")).collect::<Vec<_>>()})),
    ] {
        assert_eq!(
            refusal(client.post("/v2/droplets", &body).await),
            (422, "unprocessable_entity".into()),
            "{}",
            body["name"]
        );
    }
    // Ten at once.
    let workers: Vec<String> = (1..=10).map(|i| format!("example-com-w{i}")).collect();
    let many = client
        .post(
            "/v2/droplets",
            &with(json!({"names": workers, "tags": [TAG, "role:worker"]})),
        )
        .await
        .unwrap();
    assert_eq!(many["droplets"].as_array().unwrap().len(), 10);
    assert_eq!(many["links"]["actions"].as_array().unwrap().len(), 10);
    let listed = client
        .list("/v2/droplets?tag_name=role:worker", "droplets")
        .await
        .unwrap();
    assert_eq!(listed.len(), 10);
    // A listing reads the droplets it shows: the first answers `new`,
    // the next `active`, so a client can poll one listing for many.
    assert!(listed.iter().all(|d| d["status"] == "new"), "{listed:?}");
    let site = client
        .list(&format!("/v2/droplets?tag_name={TAG}"), "droplets")
        .await
        .unwrap();
    assert_eq!(site.len(), 11);
    assert!(site.iter().all(|d| d["status"] == "active"), "{site:?}");
    let named = client
        .list("/v2/droplets?name=example-com-1", "droplets")
        .await
        .unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["id"], json!(id));
    let tag = client.get(&format!("/v2/tags/{TAG}")).await.unwrap();
    let resources = &tag["tag"]["resources"];
    assert_eq!(resources["droplets"]["count"], 11);
    assert_eq!(resources["volumes"]["count"], 2);
    assert_eq!(resources["images"]["count"], 1);
    assert_eq!(resources["count"], 14);

    // Members keep a VPC; attachments keep a volume.
    let members = client
        .list(&format!("/v2/vpcs/{vpc_id}/members"), "members")
        .await
        .unwrap();
    assert_eq!(names(&members), ["example-com-1"]);
    assert_eq!(
        refusal(client.delete(&format!("/v2/vpcs/{vpc_id}")).await),
        (403, "forbidden".into())
    );
    assert_eq!(
        refusal(
            client
                .delete(&format!("/v2/volumes/{}", volume_ids[0]))
                .await
        ),
        (409, "conflict".into())
    );

    // Attach and detach through actions.
    let actions = format!("/v2/volumes/{}/actions", volume_ids[1]);
    let attach = client
        .post(
            &actions,
            &json!({"type": "attach", "droplet_id": id, "region": "ams3"}),
        )
        .await
        .unwrap();
    assert_eq!(attach["action"]["status"], "in-progress");
    let done = client
        .wait_action(
            attach["action"]["id"].as_u64().unwrap(),
            Duration::from_secs(5),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert_eq!(done["type"], "attach_volume");
    let droplet = client.get(&path).await.unwrap();
    assert_eq!(droplet["droplet"]["volume_ids"], json!(volume_ids));
    assert_eq!(
        refusal(
            client
                .post(
                    &actions,
                    &json!({"type": "attach", "droplet_id": id, "region": "ams3"}),
                )
                .await
        ),
        (422, "unprocessable_entity".into())
    );
    client
        .post(
            &actions,
            &json!({"type": "detach", "droplet_id": id, "region": "ams3"}),
        )
        .await
        .unwrap();
    let resize = client
        .post(
            &actions,
            &json!({"type": "resize", "size_gigabytes": 20, "region": "ams3"}),
        )
        .await
        .unwrap();
    assert_eq!(resize["action"]["type"], "resize_volume");
    let volume = client
        .get(&format!("/v2/volumes/{}", volume_ids[1]))
        .await
        .unwrap();
    assert_eq!(volume["volume"]["size_gigabytes"], 20);
    assert_eq!(volume["volume"]["droplet_ids"], json!([]));
    client
        .delete(&format!("/v2/volumes/{}", volume_ids[1]))
        .await
        .unwrap();

    // Deleting the droplet detaches its volume and empties the VPC.
    client.delete(&path).await.unwrap();
    assert_eq!(refusal(client.get(&path).await).0, 404);
    let volume = client
        .get(&format!("/v2/volumes/{}", volume_ids[0]))
        .await
        .unwrap();
    assert_eq!(volume["volume"]["droplet_ids"], json!([]));
    client.delete(&format!("/v2/vpcs/{vpc_id}")).await.unwrap();
    client
        .delete(&format!(
            "/v2/vpcs/{}",
            elsewhere["vpc"]["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let default = vpcs.iter().find(|v| v["default"] == true).unwrap();
    assert_eq!(
        refusal(
            client
                .delete(&format!("/v2/vpcs/{}", default["id"].as_str().unwrap()))
                .await
        ),
        (403, "forbidden".into())
    );
    client
        .delete(&format!("/v2/volumes/{}", volume_ids[0]))
        .await
        .unwrap();
}

fn firewall_body(ports: &str) -> Value {
    json!({
        "name": "example-com-site",
        "inbound_rules": [
            {"protocol": "tcp", "ports": ports, "sources": {"addresses": ["0.0.0.0/0", "::/0"]}},
            {"protocol": "tcp", "ports": "all", "sources": {"tags": [TAG]}},
        ],
        "outbound_rules": [
            {"protocol": "udp", "ports": "all", "destinations": {"addresses": ["0.0.0.0/0"]}},
            {"protocol": "icmp", "ports": "0", "destinations": {"addresses": ["0.0.0.0/0"]}},
        ],
        "tags": [TAG],
    })
}

async fn firewalls(client: &Client, fake: &FakeDo) {
    fake.reset();
    let created = client
        .post("/v2/firewalls", &firewall_body("22"))
        .await
        .unwrap();
    assert_eq!(created["firewall"]["status"], "waiting");
    // "all" ports read back as "0", as DigitalOcean answers them.
    assert_eq!(created["firewall"]["inbound_rules"][1]["ports"], "0");
    let id = created["firewall"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v2/firewalls/{id}");
    let got = client.get(&path).await.unwrap();
    assert_eq!(got["firewall"]["status"], "succeeded");
    let updated = client.put(&path, &firewall_body("2222")).await.unwrap();
    assert_eq!(updated["firewall"]["inbound_rules"][0]["ports"], "2222");
    let listed = client.list("/v2/firewalls", "firewalls").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["inbound_rules"][0]["ports"], "2222");
    client.delete(&path).await.unwrap();
    assert_eq!(refusal(client.get(&path).await).0, 404);
    assert_eq!(
        refusal(client.put(&path, &firewall_body("22")).await).0,
        404
    );
}

/// Tagging and untagging a droplet (`tags_assign_resources`,
/// `tags_unassign_resources`): the tag shows on the droplet; an unknown
/// tag or droplet is 404 and tags nothing.
async fn tag_resources(client: &Client, fake: &FakeDo) {
    fake.reset();
    let id = fake.seed_droplet("node-1", &[TAG]);
    client
        .post("/v2/tags", &json!({"name": "public"}))
        .await
        .unwrap();
    let body = json!({"resources": [{"resource_id": id.to_string(), "resource_type": "droplet"}]});
    let tags = |droplet: Value| -> Vec<String> {
        droplet["droplet"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    client
        .post_idempotent("/v2/tags/public/resources", &body)
        .await
        .unwrap();
    let got = client.get(&format!("/v2/droplets/{id}")).await.unwrap();
    assert_eq!(tags(got), [TAG, "public"]);
    let listed = client
        .list("/v2/droplets?tag_name=public", "droplets")
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    client
        .delete_with_body("/v2/tags/public/resources", &body)
        .await
        .unwrap();
    let got = client.get(&format!("/v2/droplets/{id}")).await.unwrap();
    assert_eq!(tags(got), [TAG]);
    assert_eq!(
        refusal(
            client
                .post_idempotent("/v2/tags/absent/resources", &body)
                .await
        )
        .0,
        404
    );
    let stranger = json!({"resources": [{"resource_id": "999999", "resource_type": "droplet"}]});
    assert_eq!(
        refusal(
            client
                .post_idempotent("/v2/tags/public/resources", &stranger)
                .await
        )
        .0,
        404
    );
}

async fn pagination(client: &Client, fake: &FakeDo) {
    fake.reset();
    for i in 0..205 {
        let tags: &[&str] = if i % 2 == 0 {
            &["bulk", "even"]
        } else {
            &["bulk"]
        };
        fake.seed_droplet(&format!("node-{i:03}"), tags);
    }
    let all = client.list("/v2/droplets", "droplets").await.unwrap();
    assert_eq!(all.len(), 205);
    let even = client
        .list("/v2/droplets?tag_name=even", "droplets")
        .await
        .unwrap();
    assert_eq!(even.len(), 103);
    let bulk = client
        .list("/v2/droplets?tag_name=bulk", "droplets")
        .await
        .unwrap();
    assert_eq!(bulk.len(), 205);
    let calls = fake.calls();
    assert!(
        calls.contains(&"GET /v2/droplets?page=2&per_page=200".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"GET /v2/droplets?tag_name=bulk&page=2&per_page=200".to_owned()),
        "{calls:?}"
    );
    let first = client.get("/v2/droplets").await.unwrap();
    assert_eq!(first["droplets"].as_array().unwrap().len(), 20);
    assert_eq!(first["meta"]["total"], 205);
    let middle = client.get("/v2/droplets?per_page=50&page=2").await.unwrap();
    let pages = &middle["links"]["pages"];
    assert_eq!(middle["droplets"][0]["name"], "node-050");
    for (link, page) in [("first", 1), ("prev", 1), ("next", 3), ("last", 5)] {
        let url = pages[link].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(
            url.ends_with(&format!("/v2/droplets?page={page}&per_page=50")),
            "{link}: {url}"
        );
    }
    let last = client.get("/v2/droplets?per_page=50&page=5").await.unwrap();
    assert_eq!(last["droplets"].as_array().unwrap().len(), 5);
    assert!(last["links"]["pages"].get("next").is_none());
    let beyond = client.get("/v2/droplets?per_page=50&page=9").await.unwrap();
    assert_eq!(beyond["droplets"], json!([]));
}

async fn faults(client: &Client, direct: &Client, fake: &FakeDo, relay: &str) {
    fake.reset();
    assert_eq!(kind_of("GET", "/v2/droplets/42"), "GET /v2/droplets/{id}");
    assert_eq!(
        kind_of(
            "POST",
            "/v2/volumes/b10cb10c-0000-4000-8000-000000000001/actions"
        ),
        "POST /v2/volumes/{id}/actions"
    );
    assert_eq!(kind_of("DELETE", "/v2/tags/site:x"), "DELETE /v2/tags/{id}");
    assert_eq!(kind_of("GET", "/v2/droplets?page=2"), "GET /v2/droplets");
    let droplet = fake.seed_droplet("faulty-1", &[TAG]);
    let vpc = fake.seed_vpc("faulty-vpc", "10.40.0.0/24");
    let count = |call: &str| fake.calls().iter().filter(|c| *c == call).count();

    // 429: the client waits until `ratelimit-reset`, then succeeds.
    fake.fault("GET /v2/account", Fault::TooMany { reset_in: 1 }, 1);
    let start = Instant::now();
    client.get("/v2/account").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(count("GET /v2/account"), 2);
    // What Prism lets through of a 429: status, headers and body intact.
    fake.fault("GET /v2/account", Fault::TooMany { reset_in: 30 }, 1);
    let (status, headers, body) = raw(relay, "/v2/account");
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "ratelimit-limit"), "5000");
    assert_eq!(header(&headers, "ratelimit-remaining"), "0");
    let reset: u64 = header(&headers, "ratelimit-reset").parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 28..=now + 31).contains(&reset), "{reset} vs {now}");
    assert_eq!(body["id"], "too_many_requests");
    assert_eq!(body["message"], "API Rate limit exceeded.");
    assert!(body["request_id"].is_string());

    // 500 on a GET is retried; on a POST it is not, and nothing changed.
    let path = format!("/v2/droplets/{droplet}");
    fake.fault("GET /v2/droplets/{id}", Fault::Status500, 1);
    client.get(&path).await.unwrap();
    assert_eq!(count(&format!("GET {path}")), 2);
    fake.fault("GET /v2/droplets/{id}", Fault::Status500, 1);
    let (status, headers, body) = raw(relay, &path);
    assert_eq!((status, body["id"].as_str()), (500, Some("server_error")));
    assert!(header(&headers, "content-type").starts_with("application/json"));
    fake.fault("POST /v2/tags", Fault::Status500, 1);
    assert_eq!(
        refusal(client.post("/v2/tags", &json!({"name": "never"})).await),
        (500, "server_error".into())
    );
    assert_eq!(refusal(client.get("/v2/tags/never").await).0, 404);

    // 503 is retried even on a POST, which then happens once.
    fake.fault("POST /v2/tags", Fault::Status503, 1);
    client
        .post("/v2/tags", &json!({"name": "after-503"}))
        .await
        .unwrap();
    assert_eq!(count("POST /v2/tags"), 3);
    fake.fault("GET /v2/tags", Fault::Status503, 1);
    let (status, _, body) = raw(relay, "/v2/tags");
    assert_eq!(
        (status, body["id"].as_str()),
        (503, Some("service_unavailable"))
    );

    // A connection closed without an answer: the client retries a GET.
    // Through Prism it is Prism's 500 (`FetchError`); straight, a reset.
    fake.fault("GET /v2/vpcs/{id}", Fault::Reset, 1);
    let got = client.get(&format!("/v2/vpcs/{vpc}")).await.unwrap();
    assert_eq!(got["vpc"]["name"], "faulty-vpc");
    assert_eq!(count(&format!("GET /v2/vpcs/{vpc}")), 2);
    fake.fault("GET /v2/account", Fault::Reset, 1);
    let before = count("GET /v2/account");
    direct.get("/v2/account").await.unwrap();
    assert_eq!(count("GET /v2/account"), before + 2);
    // A POST is not sent again: the client cannot know what happened.
    fake.fault("POST /v2/tags", Fault::Reset, 1);
    assert_eq!(
        refusal(client.post("/v2/tags", &json!({"name": "never"})).await).0,
        500
    );
    assert_eq!(refusal(client.get("/v2/tags/never").await).0, 404);

    // A stall outlasts the client's 3 s timeout; the retry succeeds.
    fake.fault("GET /v2/vpcs/{id}", Fault::Stall(Duration::from_secs(4)), 1);
    let start = Instant::now();
    client.get(&format!("/v2/vpcs/{vpc}")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(3));

    // Once per kind: each first call fails with a 503 and is retried.
    fake.fault_every_kind_once(Fault::Status503);
    let before = fake.calls().len();
    client.get("/v2/account").await.unwrap();
    client.list("/v2/tags", "tags").await.unwrap();
    client
        .post("/v2/tags", &json!({"name": "every-kind"}))
        .await
        .unwrap();
    client.get("/v2/account").await.unwrap();
    client.get(&path).await.unwrap();
    client.get(&path).await.unwrap();
    // A queued fault is that kind's first fault: one failure, not two.
    fake.fault("GET /v2/vpcs/{id}", Fault::Status500, 1);
    client.get(&format!("/v2/vpcs/{vpc}")).await.unwrap();
    assert_eq!(fake.calls().len() - before, 2 + 2 + 2 + 1 + 2 + 1 + 2);

    fake.latency(Duration::from_millis(300));
    let start = Instant::now();
    client.get("/v2/account").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    fake.latency(Duration::ZERO);
}

async fn kill_hook(client: &Client, fake: &FakeDo) {
    fake.reset();
    let mut victim = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    fake.kill_after_mutation(2, victim.id());
    client
        .post("/v2/tags", &json!({"name": "first"}))
        .await
        .unwrap();
    // The second mutation is processed, then the victim dies and no
    // answer comes (Prism turns the closed connection into its 500).
    let second = client.post("/v2/tags", &json!({"name": "second"})).await;
    assert_eq!(refusal(second).0, 500);
    let status = victim.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert_eq!(fake.snapshot()["tags"], json!(["first", "second"]));
    client
        .post("/v2/tags", &json!({"name": "third"}))
        .await
        .unwrap();
    assert_eq!(fake.mutations(), 3);
}

/// What a launch leaves behind, made through the API.
async fn launch_like(client: &Client, fake: &FakeDo) {
    fake.image_polls_until_available(0);
    client
        .post("/v2/tags", &json!({"name": TAG}))
        .await
        .unwrap();
    let key = client
        .post(
            "/v2/account/keys",
            &json!({"name": "operator", "public_key": KEY}),
        )
        .await
        .unwrap();
    let image = client
        .post(
            "/v2/images",
            &json!({"name": "fedora-coreos-44", "url": "https://example.com/fcos.qcow2.gz",
                    "region": "ams3", "distribution": "Fedora", "tags": [TAG]}),
        )
        .await
        .unwrap();
    let image_id = image["image"]["id"].as_u64().unwrap();
    client.get(&format!("/v2/images/{image_id}")).await.unwrap();
    let vpc = client
        .post(
            "/v2/vpcs",
            &json!({"name": "example-com-site", "region": "ams3", "ip_range": "10.10.0.0/24"}),
        )
        .await
        .unwrap();
    let volume = client
        .post(
            "/v2/volumes",
            &json!({"size_gigabytes": 5, "name": "example-com-data", "region": "ams3",
                    "tags": [TAG]}),
        )
        .await
        .unwrap();
    client
        .post(
            "/v2/droplets",
            &json!({"name": "example-com-1", "region": "ams3", "size": "s-1vcpu-2gb",
                    "image": image_id, "ssh_keys": [key["ssh_key"]["fingerprint"]],
                    "vpc_uuid": vpc["vpc"]["id"], "user_data": "#cloud-config\n",
                    "tags": [TAG], "volumes": [volume["volume"]["id"]]}),
        )
        .await
        .unwrap();
    client
        .post("/v2/firewalls", &firewall_body("22"))
        .await
        .unwrap();
}

async fn snapshots_and_seeds(client: &Client, fake: &FakeDo) {
    fake.reset();
    launch_like(client, fake).await;
    let first = fake.snapshot();
    fake.reset();
    // Other ids and times: something made and deleted before.
    let junk = client
        .post(
            "/v2/volumes",
            &json!({"size_gigabytes": 1, "name": "junk", "region": "ams3"}),
        )
        .await
        .unwrap();
    client
        .delete(&format!(
            "/v2/volumes/{}",
            junk["volume"]["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    launch_like(client, fake).await;
    let second = fake.snapshot();
    assert_eq!(first, second);
    let droplet = &first["droplets"][0];
    assert_eq!(droplet["name"], "example-com-1");
    assert_eq!(droplet["image"], "fedora-coreos-44");
    assert_eq!(droplet["vpc"], "example-com-site");
    assert_eq!(droplet["volumes"], json!(["example-com-data"]));
    assert_eq!(
        droplet["user_data_sha256"],
        json!(hex::encode(Sha256::digest(b"#cloud-config\n")))
    );
    assert_eq!(first["volumes"][0]["attached_to"], json!(["example-com-1"]));
    assert_eq!(first["ssh_keys"][KEY_MD5], "operator");
    assert_eq!(first["firewalls"][0]["name"], "example-com-site");

    fake.reset();
    fake.seed_vpc("seeded-vpc", "10.30.0.0/24");
    fake.seed_volume("seeded-data", &["site:seeded"]);
    fake.seed_droplet("seeded-1", &["site:seeded"]);
    let vpcs = client.list("/v2/vpcs", "vpcs").await.unwrap();
    assert_eq!(names(&vpcs), ["default-ams3", "seeded-vpc"]);
    let volumes = client
        .list("/v2/volumes?name=seeded-data&region=ams3", "volumes")
        .await
        .unwrap();
    assert_eq!(volumes.len(), 1);
    let droplets = client
        .list("/v2/droplets?tag_name=site:seeded", "droplets")
        .await
        .unwrap();
    assert_eq!(droplets.len(), 1);
    assert_eq!(droplets[0]["status"], "active");
    let tag = client.get("/v2/tags/site:seeded").await.unwrap();
    assert_eq!(tag["tag"]["resources"]["droplets"]["count"], 1);
    assert_eq!(tag["tag"]["resources"]["volumes"]["count"], 1);
}

// ---------------------------------------------------------------- helpers

/// The status and error id of a call that must be refused.
fn refusal<T: Debug>(result: Result<T, ApiError>) -> (u16, String) {
    match result {
        Err(ApiError::Refused { status, id, .. }) => (status.as_u16(), id),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn names(items: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = items
        .iter()
        .map(|i| i["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    names.sort();
    names
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or("", |(_, v)| v.as_str())
}

/// One GET without the client (which hides statuses and headers it retries).
fn raw(base: &str, path: &str) -> (u16, Vec<(String, String)>, Value) {
    let answer = http::request(
        base.trim_start_matches("http://"),
        "GET",
        path,
        &[("Authorization", "Bearer test-token")],
        b"",
    )
    .unwrap();
    let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, answer.headers, body)
}

#[derive(Debug)]
struct Exchange {
    request: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Exchange {
    /// What came back for `request`; an answer that is not HTTP is logged
    /// as status 0, with the bytes as its body.
    fn parse(request: String, response: &[u8]) -> Exchange {
        match http::parse_response(response) {
            Ok(answer) => Exchange {
                request,
                status: answer.status,
                body: answer.text(),
                headers: answer.headers,
            },
            Err(e) => Exchange {
                request,
                status: 0,
                headers: Vec::new(),
                body: format!("{e}: {}", String::from_utf8_lossy(response)),
            },
        }
    }

    /// An answer Prism made itself (a refused request or answer, or a
    /// failed connection to the fake).
    fn problem(&self) -> bool {
        header(&self.headers, "content-type").starts_with("application/problem+json")
    }
}

/// A recording relay in front of Prism: one request per connection,
/// every answer logged.
struct Relay {
    base: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    in_flight: Arc<InFlight>,
}

/// Requests read whose exchange is not logged yet.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    changed: Condvar,
}

/// Counts one request in flight until dropped, however its relaying ends.
struct Pending(Arc<InFlight>);

impl Pending {
    fn new(in_flight: &Arc<InFlight>) -> Pending {
        *in_flight.count.lock().unwrap() += 1;
        Pending(in_flight.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        *self.0.count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.changed.notify_all();
    }
}

impl Relay {
    fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(InFlight::default());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let (shared, counted) = (log.clone(), in_flight.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (upstream, log, in_flight) =
                    (upstream.clone(), shared.clone(), counted.clone());
                thread::spawn(move || relay(stream, &upstream, &log, &in_flight));
            }
        });
        Relay {
            base,
            log,
            in_flight,
        }
    }

    /// The log, once every request read has its exchange in it (a client
    /// that gave up on a request does not wait for its answer; the relay
    /// does), or a failure after `within`.
    fn settled(&self, within: Duration) -> MutexGuard<'_, Vec<Exchange>> {
        let count = self.in_flight.count.lock().unwrap();
        let (count, waited) = self
            .in_flight
            .changed
            .wait_timeout_while(count, within, |n| *n > 0)
            .unwrap();
        assert!(
            !waited.timed_out(),
            "{} relayed requests still unanswered after {within:?}",
            *count
        );
        drop(count);
        self.log.lock().unwrap()
    }
}

fn relay(
    client: TcpStream,
    upstream: &str,
    log: &Mutex<Vec<Exchange>>,
    in_flight: &Arc<InFlight>,
) -> Option<()> {
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut request = http::read_request(&mut reader).ok()??;
    let _pending = Pending::new(in_flight);
    // One request per connection: Prism closes after answering.
    request
        .headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("connection"));
    request.headers.push(("Connection".into(), "close".into()));
    let mut up = TcpStream::connect(upstream).ok()?;
    request.write_to(&mut up).ok()?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).ok()?;
    let request = format!("{} {}", request.method, request.target);
    let exchange = Exchange::parse(request, &response);
    if exchange.problem() && !exchange.body.contains("FetchError") {
        // Said at once: the client may retry and fail later elsewhere.
        eprintln!(
            "Prism: {} -> {} {}",
            exchange.request, exchange.status, exchange.body
        );
    }
    log.lock().unwrap().push(exchange);
    let mut client = client;
    client.write_all(&response).ok()?;
    Some(())
}
