//! `builder launch`, `status` and `destroy`, run as the operator runs
//! them (the real binary, as a child process), with every request going
//! through Prism (proxy mode, `--errors`, the official DigitalOcean spec)
//! to the stateful fake. A 422 from Prism (a request off the spec) or a
//! 500 (an answer off the spec) fails the command and so the test.
//!
//! Prism takes ~15 s to load the spec, so one test function owns one
//! Prism and walks through the scenarios in order, resetting the fake
//! between them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::do_fake::{FakeDo, Fault};
use support::fcos_streams::{self, StreamServer};
use support::prism::{self, Prism};
use support::site;

const DOMAIN: &str = "lab.example.org";

struct World {
    fake: FakeDo,
    prism: Prism,
    dir: tempfile::TempDir,
    site: PathBuf,
    _files: site_lab::http::FileServer,
    /// The stream metadata launch reads its release from.
    streams: StreamServer,
}

impl World {
    /// The builder binary with the site's environment; `args` after the
    /// sub-command name.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_builder"));
        command
            .args(args)
            .env("DIGITALOCEAN_API_URL", &self.prism.base)
            .env("BUILDER_FCOS_STREAMS_URL", self.streams.base())
            .env("DIGITALOCEAN_ACCESS_TOKEN", "test-token")
            .env("BUILDER_VAULT_PASSPHRASE", "test passphrase")
            .env("BUILDER_FIRSTBOOT", site::tiny_firstboot_path())
            .env("BUILDER_POLL_MS", "20")
            .env("BUILDER_API_TIMEOUT_MS", "2000")
            .env("BUILDER_API_BACKOFF_MS", "50")
            .env_remove("BUILDER_SSH")
            .env_remove("DIGITALOCEAN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut full = vec![args[0], self.site.to_str().unwrap()];
        full.extend_from_slice(&args[1..]);
        self.command(&full).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = transcript(&out);
        assert!(out.status.success(), "builder {args:?} failed:\n{text}");
        text
    }

    /// As `run`, with nothing but the site file and the token: no
    /// firstboot binary, no vault passphrase, and a vault path where
    /// there is none.
    fn run_token_only(&self, args: &[&str]) -> Output {
        let absent = self.dir.path().join("absent.vault");
        let mut full = vec![args[0], self.site.to_str().unwrap()];
        full.extend_from_slice(&args[1..]);
        full.extend_from_slice(&["--vault", absent.to_str().unwrap()]);
        self.command(&full)
            .env_remove("BUILDER_FIRSTBOOT")
            .env_remove("BUILDER_VAULT_PASSPHRASE")
            .output()
            .unwrap()
    }

    fn ok_token_only(&self, args: &[&str]) -> String {
        let out = self.run_token_only(args);
        let text = transcript(&out);
        assert!(out.status.success(), "builder {args:?} failed:\n{text}");
        text
    }
}

fn transcript(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A three-host site whose firstboot is served (for the base_url check)
/// by a loopback server, and its vault.
fn world() -> Option<World> {
    if let Some(reason) = prism::skip_reason() {
        if reason.contains("Prism") {
            support::skip(&reason);
        } else {
            eprintln!("{reason}");
        }
        return None;
    }
    let fake = FakeDo::start();
    let prism = Prism::start(&fake.base);
    let files = site::firstboot_server();
    let dir = tempfile::tempdir().unwrap();
    let site_text = site::generated_site(3, &files.url("/fb"));
    let site = dir.path().join("hosts.yaml");
    std::fs::write(&site, site_text).unwrap();
    let vault =
        builder::vault::seal(&site::test_secrets(), "test passphrase", Some(2), false).unwrap();
    std::fs::write(dir.path().join("hosts.vault"), vault).unwrap();
    Some(World {
        fake,
        prism,
        dir,
        site,
        _files: files,
        streams: StreamServer::start(&fcos_streams::document(fcos_streams::RELEASE)),
    })
}

#[test]
fn launch_status_and_destroy_through_prism() {
    let Some(w) = world() else { return };

    let t = std::time::Instant::now();
    init_checks_the_region_against_the_account(&w);
    dry_run_sends_nothing(&w);
    let clean = clean_launch_then_nothing(&w);
    status_reports_every_host(&w);
    eprintln!("launch, status: {:?}", t.elapsed());
    killed_after_each_mutation_then_resumed(&w, &clean);
    eprintln!("kills: {:?}", t.elapsed());
    faults_on_every_endpoint_converge(&w, &clean);
    a_lost_answer_is_looked_for_not_sent_again(&w, &clean);
    eprintln!("faults: {:?}", t.elapsed());
    a_25_host_site(&w);
    eprintln!("25 hosts: {:?}", t.elapsed());
    a_worker_gets_the_public_firewall(&w);
    eprintln!("roles: {:?}", t.elapsed());
    // Last: destroying hosts retires their credentials in the vault, so
    // every launch after it renders other user data than `clean` holds.
    destroy_host_and_all_leave_foreign_resources(&w);
    a_foreign_vpc_is_neither_adopted_nor_deleted(&w);
    eprintln!("destroy: {:?}", t.elapsed());
}

/// With a token at hand, `builder init` checks the region against the
/// account's (`GET /v2/regions`): a documented region the account does not
/// offer is refused, with the ones it does.
fn init_checks_the_region_against_the_account(w: &World) {
    w.fake.reset();
    let key = w.dir.path().join("init.pub");
    std::fs::write(&key, format!("{}\n", site::SSH_KEY)).unwrap();
    let init = |region: &str| {
        let target = w.dir.path().join(format!("init-{region}"));
        let out = w
            .command(&[
                "init",
                target.to_str().unwrap(),
                "--non-interactive",
                "--domain",
                "example.org",
                "--region",
                region,
                "--ssh-key",
                key.to_str().unwrap(),
                "--publish-url",
                "https://dl.example.org/fb",
            ])
            .output()
            .unwrap();
        (out.status.success(), transcript(&out), target)
    };
    // atl1 is documented, but the fake's account does not offer it.
    let (ok, text, target) = init("atl1");
    assert!(!ok, "{text}");
    assert!(
        text.contains("--region `atl1`: not a DigitalOcean region")
            && text
                .contains("the regions your DigitalOcean account offers (GET /v2/regions): ams3,"),
        "{text}"
    );
    assert!(!target.exists());
    let (ok, text, target) = init("fra1");
    assert!(ok, "{text}");
    assert!(target.join("hosts.yaml").exists());
    assert!(
        w.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("GET /v2/regions")),
        "{:?}",
        w.fake.calls()
    );
}

fn dry_run_sends_nothing(w: &World) {
    w.fake.reset();
    let read = w.streams.hits();
    let text = w.ok(&["launch", "--dry-run"]);
    assert!(w.fake.calls().is_empty(), "{:?}", w.fake.calls());
    assert!(
        text.contains("POST /v2/droplets") && text.contains("no call was made"),
        "{text}"
    );
    // The image is the current release of the stream metadata, read once.
    assert!(
        text.contains(&format!(
            "POST /v2/images fedora-coreos-{}",
            fcos_streams::RELEASE
        )),
        "{text}"
    );
    assert_eq!(w.streams.hits(), read + 1, "{text}");
    for host in ["node001", "node002", "node003"] {
        assert!(text.contains(&format!("{host}.{DOMAIN}")), "{text}");
    }
}

/// A clean launch, checked in detail; then a second run changes nothing.
fn clean_launch_then_nothing(w: &World) -> Value {
    w.fake.reset();
    let text = w.ok(&["launch"]);
    let snapshot = w.fake.snapshot();
    let calls = w.fake.calls();
    let creates = calls
        .iter()
        .filter(|c| c.starts_with("POST /v2/droplets"))
        .count();
    assert_eq!(
        creates, 3,
        "one create per host (per-host user data):\n{calls:#?}"
    );
    // Each droplet carries exactly its rendered config.
    let rendered = w.dir.path().join("rendered");
    w.ok_render(&rendered);
    for host in ["node001", "node002", "node003"] {
        let expected = std::fs::read_to_string(rendered.join(format!("{host}.ign"))).unwrap();
        let got = w
            .fake
            .user_data(&format!("{host}.{DOMAIN}"))
            .expect("droplet exists");
        assert_eq!(got, expected, "{host}'s user data");
    }
    // The firewall exists before any droplet: none boots unprotected.
    assert!(
        text.contains(
            "[3/10] firewall: lab-example-org-site: created for the tag site:lab-example-org"
        ),
        "{text}"
    );
    let firewall = calls.iter().position(|c| c == "POST /v2/firewalls");
    let droplet = calls.iter().position(|c| c == "POST /v2/droplets");
    assert!(
        firewall.is_some() && firewall < droplet,
        "firewall after a droplet:\n{calls:#?}"
    );
    assert!(text.contains("[10/10] attachments:"), "{text}");

    let before = w.fake.mutations();
    let again = w.ok(&["launch"]);
    assert_eq!(
        w.fake.mutations(),
        before,
        "a second launch mutated:\n{again}"
    );
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(w.fake.snapshot(), snapshot);
    // A rerun reads with listings: one a step, not one a resource.
    let rerun = w.fake.calls().len() - calls.len();
    assert_eq!(rerun, 9, "a rerun made {rerun} calls (README: 9):\n{again}");
    snapshot
}

impl World {
    fn ok_render(&self, out: &Path) {
        let out = self
            .command(&[
                "render",
                self.site.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", transcript(&out));
    }
}

/// The droplets' state and addresses; the nodes' phases need SSH to real
/// nodes, which the lab cloud's end-to-end test logs in to (tests/e2e.rs):
/// these droplets are rows in memory, their addresses nobody's.
fn status_reports_every_host(w: &World) {
    let before = w.fake.mutations();
    let json = w.ok_token_only(&["status", "--output", "json", "--no-ssh"]);
    let start = json.find('[').unwrap();
    let end = json.rfind(']').unwrap();
    let rows: Vec<Value> = serde_json::from_str(&json[start..=end]).unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row["status"], "active", "{row}");
        assert!(
            row["public_ipv4"].is_string() && row["private_ipv4"].is_string(),
            "{row}"
        );
        assert!(row["phase"].is_null(), "{row}");
    }
    let private = rows[0]["private_ipv4"].as_str().unwrap();
    assert!(
        private.starts_with("10.20.0."),
        "private address {private} outside the VPC"
    );
    let table = w.ok_token_only(&["status", "--no-ssh"]);
    assert!(table.lines().next().unwrap().starts_with("HOST"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("active")).count(),
        3,
        "{table}"
    );
    assert_eq!(w.fake.mutations(), before, "status changed something");

    // Without the token in the environment, the vault is needed for it.
    let out = w
        .command(&["status", w.site.to_str().unwrap(), "--no-ssh"])
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .env_remove("BUILDER_VAULT_PASSPHRASE")
        .output()
        .unwrap();
    let text = transcript(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("BUILDER_VAULT_PASSPHRASE"), "{text}");
}

/// A fourth host, a worker: the dry run shows the public firewall on it
/// alone and FreeIPA on no host; launch creates it with the public tag;
/// a worker droplet that lost the tag (launched before the firewall was
/// split by role) gets it back from the next launch. The site file is
/// three hosts again afterwards.
fn a_worker_gets_the_public_firewall(w: &World) {
    let three = std::fs::read_to_string(&w.site).unwrap();
    std::fs::write(&w.site, format!("{three}  - node004\n")).unwrap();
    let text = w.ok(&["launch", "--dry-run"]);
    let public_tag = "site:lab-example-org:public";
    assert!(
        text.contains(&format!(
            "lab-example-org-public for the tag {public_tag}: node004"
        )),
        "{text}"
    );
    assert!(
        text.contains("lab-example-org-site for the tag site:lab-example-org: node001, node002, node003, node004"),
        "{text}"
    );
    assert!(
        text.contains("FreeIPA (its web UI and API on 443 of the core hosts"),
        "{text}"
    );
    w.fake.reset();
    w.ok(&["launch"]);
    let snapshot = w.fake.snapshot();
    let tags_of = |snapshot: &Value, name: &str| -> Vec<String> {
        snapshot["droplets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == format!("{name}.{DOMAIN}"))
            .map(|d| serde_json::from_value(d["tags"].clone()).unwrap())
            .unwrap()
    };
    assert_eq!(
        tags_of(&snapshot, "node004"),
        ["site:lab-example-org", public_tag]
    );
    assert_eq!(tags_of(&snapshot, "node001"), ["site:lab-example-org"]);
    let firewalls = snapshot["firewalls"].as_array().unwrap();
    assert_eq!(firewalls.len(), 2, "{firewalls:#?}");

    // node004 loses the tag behind builder's back; the next launch puts
    // it back, and changes nothing else.
    let id = w.fake.droplet_id(&format!("node004.{DOMAIN}")).unwrap();
    let body = serde_json::json!({"resources": [{"resource_id": id.to_string(), "resource_type": "droplet"}]});
    let policy = builder::digitalocean::RetryPolicy {
        attempts: 2,
        first_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
        deadline: std::time::Duration::from_secs(10),
        request_timeout: std::time::Duration::from_secs(2),
    };
    let client = builder::digitalocean::Client::new(&w.fake.base, "test-token", policy).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.delete_with_body(&format!("/v2/tags/{public_tag}/resources"), &body))
        .unwrap();
    assert_eq!(
        tags_of(&w.fake.snapshot(), "node004"),
        ["site:lab-example-org"]
    );
    let text = w.ok(&["launch"]);
    assert!(
        text.contains(&format!("node004.{DOMAIN}: tagged {public_tag}")),
        "{text}"
    );
    assert_eq!(w.fake.snapshot(), snapshot);
    std::fs::write(&w.site, three).unwrap();
}

fn destroy_host_and_all_leave_foreign_resources(w: &World) {
    // A clean site, with no fault left armed by the phases before.
    w.fake.reset();
    w.ok(&["launch"]);
    // Someone else's droplet and volume with this site's names.
    w.fake
        .seed_droplet(&format!("node003.{DOMAIN}"), &["other"]);
    w.fake.seed_volume("node003-lab-example-org-data", &[]);

    // Without --yes and with no terminal, nothing is deleted.
    let before = w.fake.mutations();
    let out = w.run_token_only(&["destroy", "--host", "node003"]);
    assert!(!out.status.success());
    assert!(transcript(&out).contains("--yes"), "{}", transcript(&out));
    assert_eq!(w.fake.mutations(), before);

    // Deleting a droplet retires its host's credential in the vault: with
    // no vault, nothing is deleted, and the error says why.
    let out = w.run_token_only(&["destroy", "--host", "node003", "--yes"]);
    assert!(!out.status.success());
    assert!(
        transcript(&out).contains("nothing was deleted: destroy retires"),
        "{}",
        transcript(&out)
    );
    assert_eq!(w.fake.mutations(), before);

    let vault = || {
        let text = std::fs::read_to_string(w.dir.path().join("hosts.vault")).unwrap();
        builder::vault::open(&text, "test passphrase", "hosts.vault").unwrap()
    };
    let node003 = node_contract::HostName::parse("node003").unwrap();
    assert_eq!(
        vault().generation(&node003),
        node_contract::Generation::FIRST
    );
    let text = w.ok(&["destroy", "--host", "node003", "--yes"]);
    assert!(text.contains("leave  droplet"), "{text}");
    assert!(text.contains("retire   credential of node003"), "{text}");
    let retired = vault();
    assert_eq!(
        retired.generation(&node003),
        node_contract::Generation::FIRST.next()
    );
    assert_eq!(
        retired.generations.len(),
        1,
        "only node003's droplet went: {:?}",
        retired.generations
    );
    let snapshot = w.fake.snapshot().to_string();
    assert!(
        !snapshot.contains("node003-lab-example-org-swap"),
        "{snapshot}"
    );
    assert!(
        snapshot.contains(&format!("node001.{DOMAIN}")),
        "{snapshot}"
    );
    let deletes: Vec<String> = w
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("DELETE"))
        .collect();
    assert_eq!(
        deletes.len(),
        3,
        "the droplet and its two volumes: {deletes:?}"
    );

    let text = w.ok(&["destroy", "--all", "--yes"]);
    assert!(text.contains("deleted vpc"), "{text}");
    // The operator's own server is left alone, and says so.
    assert!(!text.contains("delete object"), "{text}");
    assert!(
        text.contains("leave  objects  http://127.0.0.1:")
            && text.contains("/fb/firstboot-*: publish.base_url is your own server"),
        "{text}"
    );
    assert!(
        text.contains("delete tag      site:lab-example-org"),
        "{text}"
    );
    let left = w.fake.snapshot();
    // Only the foreign droplet and volume remain.
    let left_text = left.to_string();
    assert!(left_text.contains("other"), "{left_text}");
    assert!(!left_text.contains("site:lab-example-org"), "{left_text}");
    assert!(
        !left_text.contains(&format!("node001.{DOMAIN}")),
        "{left_text}"
    );

    // Again: nothing of the site is left, so nothing is deleted; the tag
    // is looked up, not deleted blindly.
    let calls = w.fake.calls().len();
    let text = w.ok_token_only(&["destroy", "--all", "--yes"]);
    assert!(
        text.contains(&format!("nothing of {DOMAIN} to delete")),
        "{text}"
    );
    let again: Vec<String> = w.fake.calls()[calls..].to_vec();
    assert!(again.iter().all(|c| c.starts_with("GET ")), "{again:#?}");
    assert!(
        again.contains(&"GET /v2/tags/site:lab-example-org".to_owned()),
        "{again:#?}"
    );
}

/// A VPC with the site's VPC name that builder did not make (another
/// description) is the operator's: launch refuses to put the site in it,
/// and destroy leaves it. One rule, the VPC kind's, decides both.
fn a_foreign_vpc_is_neither_adopted_nor_deleted(w: &World) {
    w.fake.reset();
    let site = std::fs::read_to_string(&w.site).unwrap();
    let range = site
        .lines()
        .find_map(|l| l.strip_prefix("vpc_range: "))
        .expect("the site file names its VPC range");
    let id = w.fake.seed_vpc("lab-example-org-site", range);
    let out = w.run(&["launch"]);
    let text = transcript(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "a vpc named `lab-example-org-site` exists (id {id})"
        )) && text.contains("its description is not the site's"),
        "{text}"
    );
    assert!(
        !w.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("POST /v2/droplets")),
        "{text}"
    );
    let text = w.ok(&["destroy", "--all", "--yes"]);
    assert!(
        text.contains(&format!(
            "leave  vpc      lab-example-org-site (id {id}): its description"
        )),
        "{text}"
    );
    assert!(!text.contains("deleted vpc"), "{text}");
    let deleted = format!("DELETE /v2/vpcs/{id}");
    assert!(!w.fake.calls().contains(&deleted), "{text}");
}

/// Kill launch right after its k-th mutation reached the fake, for every
/// k of a clean launch; the rerun converges on the clean state.
fn killed_after_each_mutation_then_resumed(w: &World, clean: &Value) {
    w.fake.reset();
    w.ok(&["launch"]);
    let total = w.fake.mutations();
    assert!(total >= 10, "a clean launch made only {total} mutations");
    for k in 1..=total {
        w.fake.reset();
        let child = w
            .command(&["launch", w.site.to_str().unwrap()])
            .spawn()
            .unwrap();
        w.fake.kill_after_mutation(k, child.id());
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "launch survived its kill at mutation {k}"
        );
        let resumed = w.ok(&["launch"]);
        assert_eq!(
            &w.fake.snapshot(),
            clean,
            "killed after mutation {k}; resumed:\n{resumed}"
        );
        let before = w.fake.mutations();
        w.ok(&["launch"]);
        assert_eq!(w.fake.mutations(), before, "killed after mutation {k}");
    }
}

/// Each fault on the first call of every kind of endpoint: launch
/// converges within its retries, or stops clearly and a rerun converges.
fn faults_on_every_endpoint_converge(w: &World, clean: &Value) {
    let faults = [
        ("429", Fault::TooMany { reset_in: 1 }),
        ("500", Fault::Status500),
        ("503", Fault::Status503),
        ("reset", Fault::Reset),
        ("timeout", Fault::Stall(Duration::from_secs(3))),
    ];
    for (name, fault) in faults {
        w.fake.reset();
        w.fake.fault_every_kind_once(fault);
        let started = std::time::Instant::now();
        let first = w.run(&["launch"]);
        eprintln!("fault {name}: {:?}", started.elapsed());
        let text = transcript(&first);
        assert!(!text.contains("panicked"), "{name}: {text}");
        if !first.status.success() {
            assert!(
                text.contains("run it again"),
                "{name}: unclear failure:\n{text}"
            );
            w.ok(&["launch"]);
        }
        assert_eq!(&w.fake.snapshot(), clean, "{name}:\n{text}");
    }
}

/// Every create, as `METHOD kind` (ids as `{id}`), sorted.
fn creates(calls: &[String]) -> Vec<String> {
    let mut creates: Vec<String> = calls
        .iter()
        .filter(|c| c.starts_with("POST "))
        .map(|c| {
            let (method, target) = c.split_once(' ').unwrap();
            support::do_fake::kind_of(method, target.split('?').next().unwrap())
        })
        .collect();
    creates.sort();
    creates
}

/// "When a create's answer is lost it looks before it sends it again"
/// (README): each kind of request once does its work and then loses its
/// answer (the fake acts, then closes the connection; Prism answers 500).
/// Launch finds what its lost creates made instead of making a second:
/// no create is sent more often than in a clean launch, and the site is
/// the clean one.
fn a_lost_answer_is_looked_for_not_sent_again(w: &World, clean: &Value) {
    w.fake.reset();
    w.ok(&["launch"]);
    let once = creates(&w.fake.calls());
    w.fake.reset();
    w.fake.fault_every_kind_once(Fault::LoseAnswer);
    // In the same run: a failure and a rerun, which lists first, would
    // not show that launch looks.
    let text = w.ok(&["launch"]);
    let lost = creates(&w.fake.calls());
    assert!(
        lost.len() >= 10,
        "too few creates to show anything: {lost:?}"
    );
    assert_eq!(
        lost, once,
        "a create was sent again after its answer was lost:\n{text}"
    );
    assert_eq!(&w.fake.snapshot(), clean, "{text}");
}

/// README's figures for launch, at DigitalOcean's droplet limit (25
/// hosts, 25 droplets and 50 volumes): creates run at most eight at once
/// (and do reach eight: every answer takes 50 ms here), and a second run
/// reads each kind of resource with one listing, 9 calls in all, whatever
/// the size of the site.
fn a_25_host_site(w: &World) {
    let dir = w.dir.path().join("site25");
    std::fs::create_dir_all(&dir).unwrap();
    let site = dir.join("hosts.yaml");
    std::fs::write(
        &site,
        site::generated_site(support::do_fake::DROPLET_LIMIT, &w._files.url("/fb")),
    )
    .unwrap();
    std::fs::copy(w.dir.path().join("hosts.vault"), dir.join("hosts.vault")).unwrap();
    let launch = || {
        let out = w
            .command(&["launch", site.to_str().unwrap()])
            .output()
            .unwrap();
        let text = transcript(&out);
        assert!(out.status.success(), "25 hosts: launch failed:\n{text}");
        text
    };
    w.fake.reset();
    w.fake.latency(Duration::from_millis(50));
    launch();
    w.fake.latency(Duration::ZERO);
    let droplets = creates(&w.fake.calls())
        .iter()
        .filter(|c| *c == "POST /v2/droplets")
        .count();
    assert_eq!(droplets, 25, "one create per host");
    assert_eq!(
        w.fake.most_mutations_at_once(),
        8,
        "creates in flight at once (README: at most eight)"
    );
    let before = w.fake.calls().len();
    let again = launch();
    let rerun = &w.fake.calls()[before..];
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(
        rerun.len(),
        9,
        "a second run of 25 hosts (README: 9 calls):\n{rerun:#?}"
    );
}

/// A site on the lab image boots only in the lab cloud: against
/// DigitalOcean's own API, launch, status and destroy refuse it before
/// any request (no network here: the refusal comes first).
#[test]
fn a_lab_site_is_refused_against_digitalocean() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("hosts.yaml");
    std::fs::write(&site, support::lab::lab_site(3)).unwrap();
    let vault =
        builder::vault::seal(&site::test_secrets(), "test passphrase", Some(2), false).unwrap();
    std::fs::write(dir.path().join("hosts.vault"), vault).unwrap();
    for args in [
        vec!["launch"],
        vec!["status", "--no-ssh"],
        vec!["destroy", "--all", "--yes"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_builder"))
            .arg(args[0])
            .arg(&site)
            .args(&args[1..])
            .env_remove("DIGITALOCEAN_API_URL")
            .env("DIGITALOCEAN_ACCESS_TOKEN", "test-token")
            .env("BUILDER_VAULT_PASSPHRASE", "test passphrase")
            .env("BUILDER_FIRSTBOOT", site::tiny_firstboot_path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = transcript(&out);
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(
            text.contains("boots only in a lab cloud") && text.contains("image: fedora-coreos"),
            "{args:?}: {text}"
        );
    }
}

/// README: "the demo vault is refused against the real API". Against
/// DigitalOcean's own URL (no `DIGITALOCEAN_API_URL`), launch with the
/// token from the environment or from the vault, and status and destroy
/// with the vault's token, refuse a demo vault before any request. Each
/// runs in a network namespace of its own with no network at all, so a
/// broken refusal fails to connect (and the test, on the message) rather
/// than reaching DigitalOcean.
#[test]
fn the_demo_vault_is_refused_against_digitalocean() {
    use std::os::unix::process::CommandExt as _;
    let isolated = |command: &mut Command| {
        // SAFETY: between fork and exec only the unshare system call runs.
        unsafe {
            command.pre_exec(|| {
                let mut flags = nix::sched::CloneFlags::CLONE_NEWNET;
                if !nix::unistd::geteuid().is_root() {
                    flags |= nix::sched::CloneFlags::CLONE_NEWUSER;
                }
                nix::sched::unshare(flags).map_err(std::io::Error::from)
            });
        }
    };
    let probe = {
        let mut probe = Command::new("true");
        isolated(&mut probe);
        probe.status()
    };
    if !probe.is_ok_and(|s| s.success()) {
        support::skip(
            "skipping: no network namespace of its own for the test (root, or unprivileged \
             user namespaces: sysctl kernel.unprivileged_userns_clone=1)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("hosts.yaml");
    std::fs::write(&site, site::generated_site(3, "https://dl.example.org/fb")).unwrap();
    let vault = builder::vault::seal(
        &site::test_secrets(),
        builder::vault::DEMO_PASSPHRASE,
        Some(10),
        true,
    )
    .unwrap();
    assert!(builder::vault::is_demo(&String::from_utf8_lossy(&vault)));
    std::fs::write(dir.path().join("hosts.vault"), vault).unwrap();
    for (args, env_token) in [
        (vec!["launch"], true),
        (vec!["launch"], false),
        (vec!["status", "--no-ssh"], false),
        (vec!["destroy", "--all", "--yes"], false),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_builder"));
        command
            .arg(args[0])
            .arg(&site)
            .args(&args[1..])
            .env_remove("DIGITALOCEAN_API_URL")
            .env_remove("DIGITALOCEAN_TOKEN")
            .env("BUILDER_VAULT_PASSPHRASE", builder::vault::DEMO_PASSPHRASE)
            .env("BUILDER_FIRSTBOOT", site::tiny_firstboot_path())
            .stdin(Stdio::null());
        if env_token {
            command.env("DIGITALOCEAN_ACCESS_TOKEN", "test-token");
        } else {
            command.env_remove("DIGITALOCEAN_ACCESS_TOKEN");
        }
        isolated(&mut command);
        let out = command.output().unwrap();
        let text = transcript(&out);
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(
            text.contains("refusing to use the public demo vault against DigitalOcean"),
            "{args:?} (token from the {}): {text}",
            if env_token { "environment" } else { "vault" }
        );
    }
}
