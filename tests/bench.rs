//! `make bench`: render time and config sizes. Measured, never asserted:
//! run with `--ignored --nocapture` in release mode; figures go into
//! BENCHMARKS.md.

mod support;

use std::time::{Duration, Instant};

use builder::artifact::Firstboot;
use builder::render;
use builder::site::Site;
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
        println!(
            "{hosts:>5} hosts: parse {:?}, parse+render {:?} ({:?} per host), largest config {largest} bytes ({:.1}% of 64 KiB)",
            median(parse),
            full,
            full / hosts as u32,
            100.0 * largest as f64 / 65536.0
        );
    }
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
        "ETCDCTL_API=3 etcdctl --endpoints={endpoint} --cacert=/etc/firstboot/tls/ca.crt \
         --cert=/etc/firstboot/tls/node.crt --key=/etc/firstboot/tls/node.key \
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

fn wait_healthy(lab: &site_lab::Lab, node: &str, endpoint: &str, members: usize) -> Duration {
    let start = Instant::now();
    while healthy(lab, node, endpoint) < members {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no healthy cluster in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
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
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        for (name, _) in &configs {
            lab.boot(name).unwrap();
        }
        let last_boot = Instant::now();
        let formed = wait_healthy(&lab, "node1", "https://node1.lab.example.org:2379", 3);
        for (name, _) in &configs {
            lab.wait_booted(name, Duration::from_secs(300)).unwrap();
        }
        let all_done = last_boot.elapsed();
        let peak = lab
            .sh("node1", "grep VmHWM /proc/$(pidof firstboot)/status")
            .unwrap_or_default();

        // The floor, in the same lab: a bare etcd on the same three core
        // hosts, same certificates, static peers, started at once.
        let core: Vec<String> = site
            .hosts
            .iter()
            .take(3)
            .map(|h| h.name.to_string())
            .collect();
        let cluster: Vec<String> = core
            .iter()
            .map(|c| format!("{c}=https://{c}.lab.example.org:12380"))
            .collect();
        for (i, name) in core.iter().enumerate() {
            let address = format!("198.18.0.{}", 10 + i);
            let tls = "/etc/firstboot/tls";
            let command = format!(
                "systemd-run --unit=bare-etcd /usr/bin/etcd --name={name} --data-dir=/var/tmp/bare-etcd \
                 --initial-advertise-peer-urls=https://{name}.lab.example.org:12380 \
                 --listen-peer-urls=https://{address}:12380 --listen-client-urls=https://{address}:12379 \
                 --advertise-client-urls=https://{name}.lab.example.org:12379 \
                 --initial-cluster={} --initial-cluster-state=new --initial-cluster-token=bare \
                 --client-cert-auth --trusted-ca-file={tls}/ca.crt --cert-file={tls}/node.crt --key-file={tls}/node.key \
                 --peer-client-cert-auth --peer-trusted-ca-file={tls}/ca.crt --peer-cert-file={tls}/node.crt \
                 --peer-key-file={tls}/node.key",
                cluster.join(",")
            );
            lab.sh(name, &command).unwrap();
        }
        let floor = wait_healthy(&lab, "node1", "https://node1.lab.example.org:12379", 3);
        println!(
            "{n} nodes: etcd healthy {:.2?} after the last boot (every node `running`: {:.2?}); \
             bare etcd with static peers {:.2?}; ratio {:.1}; firstboot on the bootstrap host: {}",
            formed,
            all_done,
            floor,
            formed.as_secs_f64() / floor.as_secs_f64(),
            peak.trim()
        );
        lab.teardown();
    }
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
    let firstboot = tiny_firstboot();
    let bytes = std::fs::read(support::site::tiny_firstboot_path()).unwrap();
    let files = site_lab::http::FileServer::start(vec![(
        format!("/fb/{}", firstboot.object_name()),
        bytes,
    )])
    .unwrap();
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
