//! Bringing rendered sites up in the lab, for the lab tests and benchmarks.

use std::path::{Path, PathBuf};

use builder::artifact::Firstboot;
use builder::render;
use builder::site::Site;
use site_lab::{image, Lab};

use super::site::{test_secrets, SSH_KEY};

/// What a lab test needs: root, the tools, the image, the real firstboot
/// (its path and bytes). `None` after printing why not (failing in CI).
pub fn ready() -> Option<(PathBuf, Firstboot, Vec<u8>)> {
    if let Some(reason) = site_lab::skip_reason() {
        super::skip(&reason);
        return None;
    }
    let Some(path) = std::env::var_os("BUILDER_TEST_FIRSTBOOT") else {
        super::skip(
            "skipping: the lab runs the real static firstboot: set BUILDER_TEST_FIRSTBOOT \
             (`make test` does)",
        );
        return None;
    };
    let bytes = std::fs::read(&path).unwrap();
    let firstboot = Firstboot::from_bytes(PathBuf::from(path), &bytes).unwrap();
    let image = image::ensure(&image::definition_path(), &mut |m| eprintln!("{m}")).unwrap();
    Some((image, firstboot, bytes))
}

/// A lab site of `n` hosts (`node1`...), like examples/lab.yaml.
pub fn lab_site(n: usize) -> String {
    let hosts: String = (1..=n).map(|i| format!("  - node{i}\n")).collect();
    format!(
        "domain_name: lab.example.org\nssh_keys:\n  - {SSH_KEY}\nvpc_range: 198.18.0.0/24\n\
         publish:\n  base_url: http://{}\ndefaults:\n  region: ams3\n  image: lab\nhosts:\n{hosts}",
        site_lab::LAB_SERVER
    )
}

/// Render a site into `dir`; the site and each host's config path.
pub fn render_into(
    dir: &Path,
    text: &str,
    firstboot: &Firstboot,
) -> (Site, Vec<(String, PathBuf)>) {
    let site = Site::parse("lab site", text).unwrap();
    let configs = render::render_site(&site, &test_secrets(), firstboot, None).unwrap();
    let paths = configs
        .iter()
        .map(|c| {
            let path = dir.join(c.file_name());
            std::fs::write(&path, &c.bytes).unwrap();
            (c.host.clone(), path)
        })
        .collect();
    (site, paths)
}

/// A lab serving firstboot, with every config provisioned by Ignition.
pub fn provision(
    image: &Path,
    firstboot: &Firstboot,
    bytes: &[u8],
    configs: &[(String, PathBuf)],
) -> Lab {
    let mut lab = Lab::create(image).unwrap();
    lab.serve(vec![(
        format!("/{}", firstboot.object_name()),
        bytes.to_vec(),
    )])
    .unwrap();
    for (name, config) in configs {
        lab.add_node(name, config).unwrap();
    }
    lab
}

/// [`provision`], then boot every node (without waiting).
pub fn start(
    image: &Path,
    firstboot: &Firstboot,
    bytes: &[u8],
    configs: &[(String, PathBuf)],
) -> Lab {
    let mut lab = provision(image, firstboot, bytes, configs);
    for (name, _) in configs {
        lab.boot(name).unwrap();
    }
    lab
}

/// Labs in one test binary run one at a time: several at once on a
/// 2-core machine starve each other's timeouts, and that would test the
/// machine, not the code.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
