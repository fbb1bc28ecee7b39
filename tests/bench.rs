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
