//! Issue 4 in the lab: nodes that find each other and form an etcd cluster
//! over name-only TLS with no central driver, whatever the boot order or
//! crash. (What the join and peer services refuse is in `lab_trust`.)

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use builder::artifact::Firstboot;
use builder::site::Site;
use site_lab::Lab;
use support::lab::{self, assert_cluster, ready, BOOT_LIMIT};

fn render(n: usize, firstboot: &Firstboot) -> (tempfile::TempDir, Site, Vec<(String, PathBuf)>) {
    let dir = tempfile::tempdir().unwrap();
    let (site, configs) = lab::render_into(dir.path(), &lab::lab_site(n), firstboot);
    (dir, site, configs)
}

#[test]
fn etcd_forms_over_name_only_tls_on_3_and_5_nodes() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    for n in [3, 5] {
        let (_dir, site, configs) = render(n, &firstboot);
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        let start = Instant::now();
        for (name, _) in &configs {
            lab.boot(name).unwrap();
        }
        assert_cluster(&lab, &site);
        println!(
            "{n} nodes: cluster healthy {:?} after boot",
            start.elapsed()
        );
    }
}

#[test]
fn every_boot_order_of_3_nodes_forms_the_cluster() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let (_dir, site, configs) = render(3, &firstboot);
        let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
        for &i in &order {
            lab.boot(&configs[i].0).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        }
        assert_cluster(&lab, &site);
        println!("boot order {order:?}: cluster formed");
    }
}

#[test]
fn the_lowest_host_booting_a_minute_late_still_forms_the_cluster() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    let (_dir, site, configs) = render(3, &firstboot);
    let mut lab = lab::provision(&image, &firstboot, &bytes, &configs);
    lab.boot(&configs[1].0).unwrap();
    lab.boot(&configs[2].0).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    lab.boot(&configs[0].0).unwrap();
    assert_cluster(&lab, &site);
}

/// Phases recorded in a node's state file, read from the host side.
fn completed(lab: &Lab, node: &str) -> Vec<String> {
    let path = lab.root(node).unwrap().join("var/lib/firstboot/state.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    value["completed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Tries per boundary: a node that finished every phase before the kill
/// landed (the done marker written) shows no resume, so it is killed again
/// in a fresh lab rather than counted.
const KILL_TRIES: usize = 3;

#[test]
fn a_node_killed_at_each_phase_boundary_resumes() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot, bytes)) = ready() else {
        return;
    };
    for boundary in ["identify", "storage", "join", "etcd"] {
        for victim in ["node1", "node2"] {
            let mut resumed = false;
            for attempt in 1..=KILL_TRIES {
                let (_dir, site, configs) = render(3, &firstboot);
                let mut lab = lab::start(&image, &firstboot, &bytes, &configs);
                let deadline = Instant::now() + BOOT_LIMIT;
                while !completed(&lab, victim).iter().any(|p| p == boundary) {
                    assert!(
                        Instant::now() < deadline,
                        "{victim} never finished {boundary}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                lab.kill(victim).unwrap();
                // The state file as the kill left it: every phase in it must
                // be skipped on the next boot, and none may run again.
                let done_before = completed(&lab, victim);
                let finished = lab
                    .root(victim)
                    .unwrap()
                    .join("var/lib/firstboot/done")
                    .exists();
                lab.boot(victim).unwrap();
                assert_cluster(&lab, &site);
                if finished {
                    println!(
                        "{victim} killed after {boundary} (try {attempt}): it had already \
                         finished every phase, so nothing resumed; again"
                    );
                    continue;
                }
                let journal = lab.journal(victim, Some("firstboot.service")).unwrap();
                for phase in &done_before {
                    assert!(
                        journal.contains(&format!("phase {phase}: already done")),
                        "{victim} killed with {done_before:?} done did not skip {phase} \
                         on its next boot:\n{journal}"
                    );
                }
                println!("{victim} killed after {done_before:?}: resumed, cluster formed");
                resumed = true;
                break;
            }
            assert!(
                resumed,
                "{victim} finished every phase before each of {KILL_TRIES} kills after \
                 {boundary}: no resume was shown"
            );
        }
    }
}
