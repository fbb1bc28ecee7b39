//! `make bench`: render time and config sizes. Measured, never asserted:
//! run with `--ignored --nocapture` in release mode; figures go into
//! BENCHMARKS.md.

mod support;

use std::time::{Duration, Instant};

use builder::artifact::Firstboot;
use builder::render;
use builder::site::Site;
use firstboot::certs::CertPurpose;
use support::site::{generated_site, test_secrets, tiny_firstboot};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
#[ignore = "a benchmark: run by `make bench`"]
fn bench_render() {
    let firstboot = match std::env::var_os("BUILDER_TEST_FIRSTBOOT") {
        Some(path) => Firstboot::locate(Some(path.as_ref())).unwrap(),
        None => tiny_firstboot(),
    };
    println!(
        "firstboot binary: {} bytes ({})",
        firstboot.size,
        firstboot.path.display()
    );
    let mut medians = Vec::new();
    for (hosts, runs) in [(100, 9), (1000, 3)] {
        let text = generated_site(hosts, "https://dl.example.org/fb");
        let mut parse = Vec::new();
        let mut full = Vec::new();
        let mut largest = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let site = Site::parse("bench", &text).unwrap();
            parse.push(start.elapsed());
            let configs = render::render_site(&site, &test_secrets(), &firstboot, None).unwrap();
            full.push(start.elapsed());
            largest = configs.iter().map(|c| c.bytes.len()).max().unwrap();
        }
        let full = median(full);
        medians.push(full);
        println!(
            "{hosts:>5} hosts: parse {:?}, parse+render {:?} ({:?} per host), largest config {largest} bytes ({:.1}% of 64 KiB)",
            median(parse),
            full,
            full / hosts as u32,
            100.0 * largest as f64 / 65536.0
        );
    }
    println!(
        "render time, 1,000 hosts over 100: {:.1} (linear would be 10)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
    let example = support::site::repo().join("examples/hosts.yaml");
    let site = Site::parse("example", &std::fs::read_to_string(&example).unwrap()).unwrap();
    let largest = render::render_site(&site, &test_secrets(), &firstboot, None)
        .unwrap()
        .iter()
        .map(|c| (c.bytes.len(), c.host.clone()))
        .max()
        .unwrap();
    println!(
        "examples/hosts.yaml: largest config {} bytes ({})",
        largest.0, largest.1
    );
    let demo = std::fs::read_to_string(support::site::repo().join("examples/hosts.vault")).unwrap();
    let start = Instant::now();
    builder::vault::open(&demo, "demo", "demo").unwrap();
    println!(
        "open the demo vault (scrypt log2 N = 10): {:?}",
        start.elapsed()
    );
}

#[test]
#[ignore = "a benchmark: run by `make bench`"]
fn bench_lab() {
    use support::lab;
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = lab::ready() else {
        return;
    };
    for n in [3, 5, 9] {
        let dir = tempfile::tempdir().unwrap();
        let (_, configs) = lab::render_into(dir.path(), &lab::lab_site(n), &firstboot);
        let start = Instant::now();
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        let provisioned = start.elapsed();
        let start = Instant::now();
        let mut booted = Vec::new();
        for (name, _) in &configs {
            lab.boot(name).unwrap();
        }
        for (name, _) in &configs {
            let state = lab.wait_booted(name, Duration::from_secs(180)).unwrap();
            assert_eq!(
                state,
                "running",
                "{name}:\n{}",
                lab.journal(name, None).unwrap_or_default()
            );
            booted.push(start.elapsed());
        }
        let rss: u64 = configs
            .iter()
            .map(|(name, _)| lab.rss_kib(name).unwrap())
            .sum();
        println!(
            "lab of {n}: Ignition {:?} per node; all booted to `running` in {:?} (booted together); \
             node processes' RSS {} MiB ({} MiB per node)",
            provisioned / n as u32,
            booted.iter().max().unwrap(),
            rss / 1024,
            rss / 1024 / n as u64
        );
        lab.teardown();
    }
}

/// Healthy members seen by `etcdctl endpoint health --cluster` from `node`.
fn healthy(lab: &site_lab::Lab, node: &str, endpoint: &str) -> usize {
    let script = format!(
        "ETCDCTL_API=3 etcdctl --endpoints={endpoint} --cacert=/etc/firstboot/etcd/ca.crt \
         --cert=/etc/firstboot/etcd/member.crt --key=/etc/firstboot/etcd/member.key \
         --command-timeout=2s endpoint health --cluster 2>&1"
    );
    let out = lab.exec(node, &["/bin/sh", "-c", &script], Duration::from_secs(10));
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .matches("is healthy")
            .count()
    })
    .unwrap_or(0)
}

/// Time from `start` until `node` sees `members` healthy members.
fn healthy_since(
    lab: &site_lab::Lab,
    node: &str,
    endpoint: &str,
    members: usize,
    start: Instant,
) -> Duration {
    while healthy(lab, node, endpoint) < members {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no healthy cluster in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Make a provisioned node boot straight into etcd with a static cluster:
/// certificates made here, peers in /etc/hosts, no firstboot (masked),
/// etcd enabled at boot. The floor firstboot is measured against.
fn static_etcd(
    root: &std::path::Path,
    node: &str,
    index: usize,
    core: &[String],
    ca: &firstboot::pki::TempCa,
) {
    let fqdn = format!("{node}.lab.example.org");
    let dir = root.join("etc/firstboot/etcd");
    std::fs::create_dir_all(&dir).unwrap();
    let etcd = firstboot::certs::plan::ETCD.temporary_ca(ca).unwrap();
    let own = etcd.issue(&fqdn).unwrap();
    std::fs::write(dir.join("ca.crt"), etcd.cert_pem()).unwrap();
    std::fs::write(dir.join("member.crt"), &own.cert_pem).unwrap();
    std::fs::write(dir.join("member.key"), &own.key_pem).unwrap();
    let mut hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
    for (i, c) in core.iter().enumerate() {
        hosts.push_str(&format!("198.18.0.{} {c}.lab.example.org {c}\n", 10 + i));
    }
    std::fs::write(root.join("etc/hosts"), hosts).unwrap();
    let cluster: Vec<String> = core
        .iter()
        .map(|c| format!("{c}=https://{c}.lab.example.org:2380"))
        .collect();
    let address = format!("198.18.0.{}", 10 + index);
    let args = [
        format!("--name={node}"),
        "--data-dir=/var/lib/etcd/site".into(),
        format!("--initial-advertise-peer-urls=https://{fqdn}:2380"),
        format!("--listen-peer-urls=https://{address}:2380"),
        format!("--listen-client-urls=https://{address}:2379,https://127.0.0.1:2379"),
        format!("--advertise-client-urls=https://{fqdn}:2379"),
        format!("--initial-cluster={}", cluster.join(",")),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=floor".into(),
        "--client-cert-auth=true".into(),
        "--trusted-ca-file=/etc/firstboot/etcd/ca.crt".into(),
        "--cert-file=/etc/firstboot/etcd/member.crt".into(),
        "--key-file=/etc/firstboot/etcd/member.key".into(),
        "--peer-client-cert-auth=true".into(),
        "--peer-trusted-ca-file=/etc/firstboot/etcd/ca.crt".into(),
        "--peer-cert-file=/etc/firstboot/etcd/member.crt".into(),
        "--peer-key-file=/etc/firstboot/etcd/member.key".into(),
    ];
    std::fs::write(root.join("etc/firstboot/etcd.args"), args.join("\n") + "\n").unwrap();
    let units = root.join("etc/systemd/system");
    for masked in [
        "firstboot.service",
        "firstboot-peer.service",
        "firstboot-renew.timer",
    ] {
        let _ = std::fs::remove_file(units.join(masked));
        std::os::unix::fs::symlink("/dev/null", units.join(masked)).unwrap();
    }
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    let _ = std::os::unix::fs::symlink("../etcd.service", wants.join("etcd.service"));
}

#[test]
#[ignore = "a benchmark: run by `make bench`"]
fn bench_etcd_formation() {
    use support::lab;
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = lab::ready() else {
        return;
    };
    for n in [3, 5, 9] {
        let dir = tempfile::tempdir().unwrap();
        let (site, configs) = lab::render_into(dir.path(), &lab::lab_site(n), &firstboot);
        let core: Vec<String> = site
            .hosts
            .iter()
            .take(3)
            .map(|h| h.name.to_string())
            .collect();

        // firstboot: from the first boot to a healthy 3-member cluster.
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        let start = Instant::now();
        for (name, _) in &configs {
            lab.boot(name).unwrap();
        }
        let formed = healthy_since(
            &lab,
            "node1",
            "https://node1.lab.example.org:2379",
            3,
            start,
        );
        for (name, _) in &configs {
            lab.wait_booted(name, Duration::from_secs(300)).unwrap();
        }
        let all_done = start.elapsed();
        let peak = lab
            .sh(
                "node1",
                "grep VmHWM /proc/$(systemctl show -p MainPID --value firstboot.service)/status",
            )
            .unwrap_or_default();
        let phases = phase_times(&lab, "node2");
        lab.teardown();

        // The floor, in the same run: the same nodes from the same
        // configs, booted straight into etcd with a static cluster, no
        // join, the same certificates' profile.
        let ca = firstboot::pki::TempCa::create(
            "lab.example.org",
            &firstboot::certs::PLAN.intermediates(),
        )
        .unwrap();
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        for (i, name) in core.iter().enumerate() {
            static_etcd(&lab.root(name).unwrap(), name, i, &core, &ca);
        }
        let start = Instant::now();
        for (name, _) in &configs {
            lab.boot(name).unwrap();
        }
        let floor = healthy_since(
            &lab,
            "node1",
            "https://node1.lab.example.org:2379",
            3,
            start,
        );
        lab.teardown();
        println!(
            "{n} nodes: etcd healthy {:.2?} after booting (every node `running`: {:.2?}); \
             floor (same nodes, static etcd, no join) {:.2?}; ratio {:.2}; \
             node2's phases: {phases}; firstboot on the bootstrap host: {}",
            formed,
            all_done,
            floor,
            formed.as_secs_f64() / floor.as_secs_f64(),
            peak.trim()
        );
    }
}

/// Each phase's duration on `node`, from firstboot's journal.
fn phase_times(lab: &site_lab::Lab, node: &str) -> String {
    let script = "journalctl -u firstboot -o short-unix --no-pager | \
                  grep -E 'phase [a-z]+: (attempt 1|done)$'";
    let out = lab.sh(node, script).unwrap_or_default();
    let mut started = std::collections::HashMap::new();
    let mut parts = Vec::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        let Some(at) = words.next().and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        let Some(rest) = line.split("phase ").nth(1) else {
            continue;
        };
        let (phase, what) = rest.split_once(": ").unwrap_or((rest, ""));
        if what.starts_with("attempt 1") {
            started.insert(phase.to_owned(), at);
        } else if let Some(begin) = started.get(phase) {
            parts.push(format!("{phase} {:.2}s", at - begin));
        }
    }
    parts.join(", ")
}

/// API calls and wall time of `builder launch` against the fake (no
/// Prism: its own overhead would swamp the figures) with 100 ms of
/// latency injected per call, for 3, 10 and 25 hosts; then a second run.
/// `BENCH_BUILDER` names another builder binary to measure (an older
/// build, for a before-and-after).
#[test]
#[ignore = "a benchmark: run by `make bench`"]
fn bench_launch() {
    let builder = std::env::var_os("BENCH_BUILDER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_builder").into());
    println!("builder: {}", builder.display());
    use support::do_fake::FakeDo;
    let fake = FakeDo::start();
    let files = support::site::firstboot_server();
    let streams = support::fcos_streams::StreamServer::start(&support::fcos_streams::document(
        support::fcos_streams::RELEASE,
    ));
    let dir = tempfile::tempdir().unwrap();
    let vault = builder::vault::seal(&test_secrets(), "bench passphrase", Some(2), false).unwrap();
    println!(
        "| hosts | calls | mutating | droplet creates | wall time | rerun calls | rerun mutating | rerun wall time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for hosts in [3, 10, 25] {
        fake.reset();
        fake.latency(Duration::from_millis(100));
        let site = dir.path().join(format!("site{hosts}.yaml"));
        std::fs::write(&site, generated_site(hosts, &files.url("/fb"))).unwrap();
        std::fs::write(dir.path().join(format!("site{hosts}.vault")), &vault).unwrap();
        let run = || {
            let start = Instant::now();
            let out = std::process::Command::new(&builder)
                .args(["launch", site.to_str().unwrap()])
                .env("DIGITALOCEAN_API_URL", &fake.base)
                .env("BUILDER_FCOS_STREAMS_URL", streams.base())
                .env("DIGITALOCEAN_ACCESS_TOKEN", "bench")
                .env("BUILDER_VAULT_PASSPHRASE", "bench passphrase")
                .env("BUILDER_FIRSTBOOT", support::site::tiny_firstboot_path())
                .env("BUILDER_POLL_MS", "100")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            start.elapsed()
        };
        let wall = run();
        let calls = fake.calls();
        let creates = calls
            .iter()
            .filter(|c| c.starts_with("POST /v2/droplets"))
            .count();
        let mutating = fake.mutations();
        let rerun_wall = run();
        let rerun = fake.calls().len() - calls.len();
        let rerun_mutating = fake.mutations() - mutating;
        println!(
            "| {hosts} | {} | {mutating} | {creates} | {:.1} s | {rerun} | {rerun_mutating} | {:.1} s |",
            calls.len(),
            wall.as_secs_f64(),
            rerun_wall.as_secs_f64()
        );
    }
}

/// Calls each method received, from a node's simulator log.
fn sim_calls(lab: &site_lab::Lab, node: &str) -> Vec<serde_json::Value> {
    let path = lab.root(node).unwrap().join("var/log/ipa-sim/calls.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Whether `node`'s firstboot reports its last phase finished (done, or
/// serving enrollment on the bootstrap host): freeipa and then handoff.
fn freeipa_done(lab: &site_lab::Lab, node: &str) -> bool {
    use node_contract::status::{State, Status};
    lab.sh(node, "cat /run/firstboot/status.json")
        .ok()
        .and_then(|s| Status::from_json(s.as_bytes()).ok())
        .is_some_and(|s| {
            s.phase == node_contract::Phase::ALL.last().copied()
                && matches!(s.state, State::Done | State::Serving)
        })
}

/// Phase freeipa in the lab (the simulator stands in for FreeIPA, so the
/// figures are firstboot's own work: options, enrollment over the join
/// service, waiting for the server's readiness, topology): time from the
/// first boot until every node finished the phase, each role's phase
/// time, the JSON-RPC calls each server received, the steady rate of the
/// topology loop afterwards, and firstboot's peak memory.
#[test]
#[ignore = "a benchmark: run by `make bench`"]
fn bench_freeipa() {
    use support::lab;
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = lab::ready() else {
        return;
    };
    for n in [3, 5, 9] {
        let dir = tempfile::tempdir().unwrap();
        let (_, configs) = lab::render_into(dir.path(), &lab::lab_site(n), &firstboot);
        let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        let start = Instant::now();
        for name in &names {
            lab.boot(name).unwrap();
        }
        let mut finished = Vec::new();
        for name in &names {
            while !freeipa_done(&lab, name) {
                assert!(
                    start.elapsed() < Duration::from_secs(600),
                    "{name} did not finish its last phase in 10 minutes:\n{}",
                    lab.journal(name, Some("firstboot.service"))
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            finished.push(start.elapsed());
        }
        let all = *finished.iter().max().unwrap();
        // Every call firstboot makes goes to the first server (replicas
        // receive none); by method, to see what each node costs.
        let received = sim_calls(&lab, "node1");
        let mut by_method = std::collections::BTreeMap::<String, usize>::new();
        for call in &received {
            let method = call["method"].as_str().unwrap_or("(none)").to_owned();
            *by_method.entry(method).or_default() += 1;
        }
        let calls: Vec<String> = std::iter::once(format!("{} in all", received.len()))
            .chain(by_method.iter().map(|(m, c)| format!("{m} {c}")))
            .collect();
        let replicas: usize = names[1..3.min(names.len())]
            .iter()
            .map(|name| sim_calls(&lab, name).len())
            .sum();
        // The steady state: what the bootstrap host's topology loop
        // costs its server per minute once everything has joined.
        let before = sim_calls(&lab, "node1").len();
        std::thread::sleep(Duration::from_secs(60));
        let per_minute = sim_calls(&lab, "node1").len() - before;
        let peak = lab
            .sh(
                "node1",
                "grep VmHWM /proc/$(systemctl show -p MainPID --value firstboot.service)/status",
            )
            .unwrap_or_default();
        let worker = names.get(3).map(|w| phase_times(&lab, w));
        println!(
            "{n} nodes: every node finished phase freeipa {all:.2?} after booting; \
             node1 (server): {}; node2 (replica): {}; node4 (client): {}; \
             node1's server received: {}; the replicas' servers: {replicas}; calls to node1 in the minute after: {per_minute}; \
             firstboot on node1: {}",
            phase_times(&lab, "node1"),
            phase_times(&lab, "node2"),
            worker.unwrap_or_else(|| "no worker".into()),
            calls.join(", "),
            peak.trim()
        );
        lab.teardown();
    }
}

/// The join service under a flood from inside the site (issue 15): 100
/// workers join at once, each from its own address in one namespace,
/// while one address holds as many idle connections to the join service
/// as it can; then the same without the flood, in the same run. Time
/// until all are admitted, p50/p99 of an answer, and the peak RSS of
/// this process (the bootstrap host's join service and DNS run in it,
/// with the joiners' clients). Root: it makes a network namespace.
#[test]
#[ignore = "a benchmark: run by `make bench`"]
fn bench_join_flood() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (a network namespace)");
        return;
    }
    let netns = format!("jbench-{}", std::process::id());
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["netns", "add", &netns]);
    // Gone however the bench ends.
    struct Namespace(String);
    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .output();
        }
    }
    let _gone = Namespace(netns.clone());
    ip(&["-n", &netns, "link", "set", "lo", "up"]);
    // Every address of 198.18.0.0/24 is this namespace's own (AnyIP).
    ip(&[
        "-n",
        &netns,
        "route",
        "add",
        "local",
        "198.18.0.0/24",
        "dev",
        "lo",
    ]);
    let mut lines = Vec::new();
    for flood in [false, true] {
        // The peak RSS counts from here (Linux: 5 into clear_refs).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let netns = netns.clone();
        lines.push(support::lab::in_netns(&netns, move || join_round(flood)));
    }
    println!("{}", lines.join("\n"));
}

/// One round: a bootstrap host's services at 198.18.0.1, 100 workers
/// joining from 198.18.0.10.., and (`flood`) 198.18.0.250 holding idle
/// connections. The figures, as a line.
fn join_round(flood: bool) -> String {
    use firstboot::join::protocol::{self, JoinRequest, SIGNATURE_HEADER};
    use node_contract::identity::Purpose;
    use std::net::{Ipv4Addr, SocketAddr};

    const JOINERS: usize = 100;
    // A lab site: its VPC range is the lab's test range, here all of it
    // this namespace's own.
    let site = Site::parse("bench", &support::lab::lab_site(JOINERS + 4)).unwrap();
    let secrets = test_secrets();
    let configs: Vec<node_contract::NodeConfig> = site
        .hosts
        .iter()
        .map(|h| builder::render::node_config(&site, &secrets, h).unwrap())
        .collect();
    let root = tempfile::tempdir().unwrap();
    let paths = firstboot::paths::Paths::under(root.path());
    let own = Ipv4Addr::new(198, 18, 0, 1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let settled = firstboot::bootstrap::Settled {
            ca: Some(
                firstboot::pki::TempCa::create(
                    site.domain.as_str(),
                    &firstboot::certs::PLAN.intermediates(),
                )
                .unwrap(),
            ),
            registry: firstboot::join::server::Registry {
                admission_deadline: firstboot::status::now() + 3600,
                ..Default::default()
            },
            cluster_state: None,
            restored: false,
        };
        let reporter = firstboot::status::Reporter::new(paths.status_file());
        let _services =
            firstboot::temporary::Services::start(&paths, &configs[0], own, settled, reporter)
                .await
                .unwrap();
        let service = SocketAddr::new(own.into(), 7443);

        // The flood: idle TCP connections from one address, as many as
        // the service lets stay open (it closes those beyond the share).
        let mut held = Vec::new();
        if flood {
            for _ in 0..2000 {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket
                    .bind(SocketAddr::new(Ipv4Addr::new(198, 18, 0, 250).into(), 0))
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(1), socket.connect(service)).await {
                    Ok(Ok(stream)) => held.push(stream),
                    _ => break,
                }
            }
        }
        let opened = held.len();

        // The joiners: the workers, each from its own address.
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, config) in configs.iter().skip(3).take(JOINERS).enumerate() {
            let config = config.clone();
            let from = Ipv4Addr::new(198, 18, 0, 10 + i as u8);
            tasks.spawn(async move {
                let fqdn = config.fqdn(&config.node);
                let (_, csr) = firstboot::pki::new_key_and_csr(&fqdn).unwrap();
                let body = serde_json::to_vec(&JoinRequest {
                    ticket: config.ticket(),
                    addresses: vec![from],
                    csrs: [(CertPurpose::Identity, csr)].into(),
                    timestamp: firstboot::status::now(),
                    nonce: protocol::nonce(),
                    admission: None,
                })
                .unwrap();
                let signature =
                    protocol::sign_request(&config.signing_key(), Purpose::JoinRequest, &body);
                // Retried as a joiner retries, bounded.
                for _ in 0..20 {
                    let asked = Instant::now();
                    let answer = firstboot::https::post_from(
                        Some(from.into()),
                        service,
                        protocol::JOIN_PATH,
                        &[(SIGNATURE_HEADER, signature.clone())],
                        body.clone(),
                        Duration::from_secs(20),
                    )
                    .await;
                    if let Ok(answer) = answer {
                        assert_eq!(
                            answer.status,
                            200,
                            "{}",
                            String::from_utf8_lossy(&answer.body)
                        );
                        return asked.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                panic!("{} was never admitted", config.node);
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            answers.push(done.unwrap());
        }
        let all = start.elapsed();
        answers.sort();
        // Of the flood, what the service kept open.
        let mut kept = 0;
        for stream in &mut held {
            let mut byte = [0u8; 1];
            use tokio::io::AsyncReadExt as _;
            if tokio::time::timeout(Duration::from_millis(5), stream.read(&mut byte))
                .await
                .is_err()
            {
                kept += 1;
            }
        }
        let peak = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
            .unwrap_or_default();
        format!(
            "join, {JOINERS} workers{}: all admitted in {all:.2?}; answer p50 {:.2?}, p99 {:.2?}; \
             process peak RSS {peak} kB",
            if flood {
                format!(
                    " while one address held {opened} connections ({kept} still open at the end)"
                )
            } else {
                String::from(", no flood")
            },
            answers[answers.len() / 2],
            answers[answers.len() * 99 / 100],
        )
    })
}
