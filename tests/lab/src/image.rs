//! The lab image: Debian from debootstrap, built once into a cache outside
//! the source tree, keyed by the hash of its definition and of the recipe
//! below, so it is rebuilt only when either changes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Bump when the build steps below change: it is part of the cache key.
const RECIPE: &str = "lab-image recipe 6";
/// debootstrap here takes about two minutes; a stalled mirror must not hang.
const BUILD_LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Deserialize)]
struct Definition {
    base: Base,
    platform: Platform,
}

#[derive(Debug, Deserialize)]
struct Platform {
    metadata: std::net::Ipv4Addr,
}

/// The lab platform's metadata address (never the real one): what the
/// lab serves its stand-in on, and what the guard closes.
pub fn metadata_address() -> Result<std::net::Ipv4Addr> {
    let path = definition_path();
    let text = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let def: Definition = serde_json::from_slice(&text)
        .with_context(|| format!("{} is malformed", path.display()))?;
    Ok(def.platform.metadata)
}

#[derive(Debug, Deserialize)]
struct Base {
    os: String,
    suite: String,
    variant: String,
    packages: Vec<String>,
    disable: Vec<String>,
}

/// Where built images are kept.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SITE_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/site-lab"))
}

/// The repository's `images/lab/image.json`.
pub fn definition_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../images/lab/image.json"
    ))
}

/// The image's root directory for a definition, built if not cached.
/// Concurrent callers wait on a lock; one builds, the others reuse.
pub fn ensure(definition: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let text =
        fs::read(definition).with_context(|| format!("cannot read {}", definition.display()))?;
    let def: Definition = serde_json::from_slice(&text)
        .with_context(|| format!("{} is malformed", definition.display()))?;
    if def.base.os != "debian" {
        bail!(
            "{}: the lab image must be `\"os\": \"debian\"`",
            definition.display()
        );
    }
    // Only what the build uses is the key: the platform and the service
    // catalog (rendered into configs, not built into the image) may change
    // without a rebuild.
    let raw: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is malformed", definition.display()))?;
    let mut hasher = Sha256::new();
    hasher.update(RECIPE);
    hasher.update(serde_json::to_vec(&raw["base"])?);
    let key = hex::encode(&hasher.finalize()[..8]);

    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let lock = fs::File::create(cache.join("lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("cannot lock the lab image cache")?;

    let done = cache.join(format!("image-{key}"));
    let rootfs = done.join("rootfs");
    if done.join("complete").is_file() {
        // Marks it recently used: checkouts of other revisions sharing
        // this cache keep their images too.
        fs::write(done.join("complete"), format!("{key}\n"))?;
        return Ok(rootfs);
    }
    progress(&format!(
        "building the lab image {key} (debootstrap, a few minutes)"
    ));
    let building = cache.join(format!("building-{key}"));
    let _ = remove_tree(&building);
    let _ = remove_tree(&done);
    fs::create_dir_all(&building)?;
    build(&def.base, &building.join("rootfs"))?;
    fs::write(building.join("complete"), format!("{key}\n"))?;
    fs::rename(&building, &done)?;
    prune(&cache, &done)?;
    progress(&format!("lab image ready: {}", rootfs.display()));
    Ok(rootfs)
}

/// Images kept besides the current one (each is about 300 MB): the most
/// recently used, so that worktrees of different revisions sharing the
/// cache do not rebuild each other's. Never one that a running lab's
/// overlay still has as its lower layer.
const KEEP: usize = 2;

fn prune(cache: &Path, current: &Path) -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in fs::read_dir(cache)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path == current || mounts.contains(&format!("lowerdir={}/", path.display())) {
            continue;
        }
        if name.starts_with("building-") {
            // Another builder may be at work; only old leftovers go.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if old {
                let _ = remove_tree(&path);
            }
        } else if name.starts_with("image-") {
            let used = fs::metadata(path.join("complete"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            images.push((used, path));
        }
    }
    images.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, path) in images.into_iter().skip(KEEP) {
        let _ = remove_tree(&path);
    }
    Ok(())
}

fn build(base: &Base, rootfs: &Path) -> Result<()> {
    let mirror = mirror()?;
    crate::proc::check(
        Command::new("debootstrap")
            .arg(format!("--variant={}", base.variant))
            .arg(format!("--include={}", base.packages.join(",")))
            .arg(&base.suite)
            .arg(rootfs)
            .arg(&mirror),
        BUILD_LIMIT,
    )
    .context("debootstrap failed")?;
    // Each node's first boot must be a first boot, so that systemd applies
    // the presets Ignition wrote, as on Fedora CoreOS.
    fs::write(rootfs.join("etc/machine-id"), "uninitialized\n")?;
    // And each node's machine id its own, as on Fedora CoreOS: systemd
    // takes D-Bus's machine id first when it makes one (systemd
    // `src/shared/machine-id-setup.c`, `generate_machine_id`), and Debian's
    // dbus left the build machine's there, which every node would share
    // (and with it Zincati's node id). Fedora links it to /etc/machine-id,
    // which systemd skips: each node then gets nspawn's random one.
    let dbus = rootfs.join("var/lib/dbus/machine-id");
    let _ = fs::remove_file(&dbus);
    if dbus.parent().is_some_and(|d| d.is_dir()) {
        std::os::unix::fs::symlink("/etc/machine-id", &dbus)?;
    }
    // Ignition writes each node's own.
    let _ = fs::remove_file(rootfs.join("etc/hostname"));
    if !base.disable.is_empty() {
        crate::proc::check(
            Command::new("systemctl")
                .arg(format!("--root={}", rootfs.display()))
                .arg("disable")
                .args(&base.disable),
            Duration::from_secs(60),
        )?;
        // On first boot systemd applies every preset, and Debian's default
        // ("enable *") would enable them again. Ignition's presets
        // (20-ignition.preset) still come first.
        let presets: String = base
            .disable
            .iter()
            .map(|u| format!("disable {u}\n"))
            .collect();
        fs::create_dir_all(rootfs.join("etc/systemd/system-preset"))?;
        fs::write(
            rootfs.join("etc/systemd/system-preset/30-lab-image.preset"),
            presets,
        )?;
    }
    // As on Fedora CoreOS: systemd-resolved's stub is the resolver, and
    // the platform's network settings give it the link's DNS server (there
    // NetworkManager does, over the same D-Bus call `resolvectl dns`
    // makes; the lab configures addresses from outside, so a unit does).
    let _ = fs::remove_file(rootfs.join("etc/resolv.conf"));
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        rootfs.join("etc/resolv.conf"),
    )?;
    let units = rootfs.join("etc/systemd/system");
    fs::write(
        units.join("lab-upstream-dns.service"),
        format!(
            "[Unit]\nDescription=The link's DNS server, as a cloud's DHCP gives it (lab image)\n\
             After=systemd-resolved.service\nRequires=systemd-resolved.service\n\
             PartOf=systemd-resolved.service\nBefore=network-online.target\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/usr/bin/resolvectl dns eth0 {}\n\
             ExecStart=/usr/bin/resolvectl default-route eth0 yes\n\n\
             [Install]\nWantedBy=systemd-resolved.service network-online.target\n",
            crate::lab::UPSTREAM_DNS
        ),
    )?;
    crate::proc::check(
        Command::new("systemctl")
            .arg(format!("--root={}", rootfs.display()))
            .args([
                "enable",
                "systemd-resolved.service",
                "lab-upstream-dns.service",
            ]),
        Duration::from_secs(60),
    )?;
    // Every node gets host keys of its own at first boot, as Fedora
    // CoreOS's sshd-keygen does: none may be shared through the image.
    for entry in fs::read_dir(rootfs.join("etc/ssh"))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(entry.path())?;
        }
    }
    fs::write(
        units.join("lab-ssh-keygen.service"),
        "[Unit]\nDescription=SSH host keys of this node (lab image)\nBefore=ssh.service\n\
         ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\n\
         ExecStart=/usr/bin/ssh-keygen -A\n",
    )?;
    fs::create_dir_all(units.join("ssh.service.wants"))?;
    std::os::unix::fs::symlink(
        "../lab-ssh-keygen.service",
        units.join("ssh.service.wants/lab-ssh-keygen.service"),
    )?;
    // Ignition writes the `core` user's keys to a drop-in directory,
    // which Fedora CoreOS's sshd reads through ssh-key-dir; Debian's
    // sshd reads the file Ignition 2.14 writes once told where it is.
    fs::write(
        rootfs.join("etc/ssh/sshd_config.d/40-lab-key-dir.conf"),
        "# Keys Ignition wrote (ssh-key-dir's job on Fedora CoreOS).\n\
         AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys.d/ignition\n",
    )?;
    crate::ignition::prepare_root(rootfs)?;
    // The package cache is 100 MB nobody needs.
    for entry in fs::read_dir(rootfs.join("var/cache/apt/archives"))?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "deb") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The Debian mirror: `$LAB_DEBIAN_MIRROR`, else the one this machine's
/// apt uses (deb822 `URIs:` or a one-line `deb` entry).
fn mirror() -> Result<String> {
    if let Some(m) = std::env::var_os("LAB_DEBIAN_MIRROR") {
        return Ok(m.to_string_lossy().into_owned());
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut extra: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        extra.sort();
        files.extend(extra);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        for line in text.lines().map(str::trim) {
            let uri = if name.ends_with(".sources") {
                line.strip_prefix("URIs:")
                    .and_then(|rest| rest.split_whitespace().next())
            } else if name.ends_with(".list") {
                line.strip_prefix("deb ")
                    .and_then(|rest| rest.split_whitespace().find(|w| w.contains("://")))
            } else {
                None
            };
            if let Some(uri) = uri.filter(|u| u.trim_end_matches('/').ends_with("/debian")) {
                return Ok(uri.to_owned());
            }
        }
    }
    bail!("no Debian mirror found in /etc/apt/sources.list(.d); set LAB_DEBIAN_MIRROR")
}

/// Remove a directory tree that may hold files owned by anyone.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
