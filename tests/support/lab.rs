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
    freeipa_simulator()?;
    let image = image::ensure(&image::definition_path(), &mut |m| eprintln!("{m}")).unwrap();
    Some((image, firstboot, bytes))
}

/// Where the lab image's catalog expects the FreeIPA simulator and the
/// API.txt it checks every call against.
pub const IPA_SIM_IN_NODE: &str = "/usr/local/bin/ipa-sim";
/// The simulator again, as the FreeIPA client's installer: `firstboot
/// ipa-client` runs it there, as on Fedora CoreOS.
pub const IPA_CLIENT_INSTALL_IN_NODE: &str = "/usr/sbin/ipa-client-install";
/// The simulator once more, as certmonger's helper for its `IPA` CA
/// (Debian's path; Fedora's is /usr/libexec/certmonger/ipa-submit):
/// firstboot's `getcert request -c IPA` reaches the simulator through
/// the real certmonger, as on Fedora CoreOS it reaches FreeIPA.
pub const IPA_SUBMIT_IN_NODE: &str = "/usr/lib/certmonger/ipa-submit";
pub const API_TXT_IN_NODE: &str = "/usr/local/share/ipa-sim/API.txt";

/// The FreeIPA simulator (`BUILDER_TEST_IPA_SIM`, else the workspace's
/// debug build) and FreeIPA's API.txt (`FREEIPA_API_TXT`, else in
/// `$SITE_SPECS` or ../shared/specs): what the lab's nodes run where Fedora CoreOS runs the
/// FreeIPA container. `None` after saying why not (failing in CI).
pub fn freeipa_simulator() -> Option<(PathBuf, PathBuf)> {
    let sim = std::env::var_os("BUILDER_TEST_IPA_SIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::site::repo().join("target/debug/ipa-sim"));
    if !sim.is_file() {
        super::skip(&format!(
            "skipping: the lab runs the FreeIPA simulator, not found at {} (`make test` builds \
             it, or `cargo build -p ipa-sim`; or set BUILDER_TEST_IPA_SIM)",
            sim.display()
        ));
        return None;
    }
    let api = ipa_sim::api::api_txt_path();
    if !api.is_file() {
        super::skip(&format!(
            "skipping: the FreeIPA simulator checks calls against API.txt, not found at {} \
             (it is in ../shared/specs/freeipa; or set FREEIPA_API_TXT or SITE_SPECS)",
            api.display()
        ));
        return None;
    }
    Some((sim, api))
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
    let (sim, api) = freeipa_simulator().expect("ready() checked it");
    lab.bind_into_nodes(&sim, IPA_SIM_IN_NODE);
    lab.bind_into_nodes(&sim, IPA_CLIENT_INSTALL_IN_NODE);
    lab.bind_into_nodes(&sim, IPA_SUBMIT_IN_NODE);
    lab.bind_into_nodes(&api, API_TXT_IN_NODE);
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

/// Labs run one at a time: several at once on a 2-core machine starve
/// each other's timeouts (that would test the machine, not the code), and
/// their nodes' machine names would clash. Within a test binary a mutex
/// says so; across processes (two `cargo test` runs, a bench beside a
/// test) a lock on a file does, waited for at most `LAB_WAIT`.
pub fn exclusive() -> Exclusive {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let one = ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // A lab that cannot run here (no root, a tool missing) takes no turn:
    // the test skips right after, without waiting for another process's
    // lab or failing on a lock file root made.
    if site_lab::skip_reason().is_some() {
        return Exclusive {
            _file: None,
            _one: one,
        };
    }
    let path = std::env::temp_dir().join("site-lab.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let start = std::time::Instant::now();
    let mut said = false;
    // flock(2) (std's File::try_lock is newer than the workspace's MSRV).
    let try_lock = || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns for its call.
        let rc =
            unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) };
        match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    loop {
        match try_lock() {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < LAB_WAIT => {
                if !said {
                    eprintln!(
                        "waiting for another process's lab to end (it holds {})",
                        path.display()
                    );
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => panic!(
                "no lab after {:?}: another process holds {} ({e})",
                start.elapsed(),
                path.display()
            ),
        }
    }
    Exclusive {
        _file: Some(file),
        _one: one,
    }
}

/// How long a lab waits for another process's lab to end.
const LAB_WAIT: std::time::Duration = std::time::Duration::from_secs(45 * 60);

/// This process's turn at the lab, until dropped (the file's lock ends
/// with it, or with the process).
pub struct Exclusive {
    _file: Option<std::fs::File>,
    _one: std::sync::MutexGuard<'static, ()>,
}

pub const BOOT_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `etcdctl` in `node` against `endpoint`, with the node's etcd
/// certificate (core hosts) as client certificate.
pub fn etcdctl(lab: &Lab, node: &str, endpoint: &str, args: &str) -> String {
    try_etcdctl(lab, node, endpoint, args).unwrap_or_else(|e| {
        panic!(
            "{node}: etcdctl {args}: {e}\n{}",
            lab.journal(node, Some("etcd.service")).unwrap_or_default()
        )
    })
}

/// The same, its failure (what it said) an `Err`.
pub fn try_etcdctl(lab: &Lab, node: &str, endpoint: &str, args: &str) -> Result<String, String> {
    lab.sh(
        node,
        &format!(
            "ETCDCTL_API=3 etcdctl --endpoints=https://{endpoint}:2379 \
             --cacert=/etc/firstboot/etcd/ca.crt --cert=/etc/firstboot/etcd/member.crt \
             --key=/etc/firstboot/etcd/member.key --command-timeout=10s {args} 2>&1"
        ),
    )
    .map_err(|e| format!("{e:#}"))
}

/// Every node done with its last phase (the bootstrap host serving on),
/// as its status file says; bounded by [`BOOT_LIMIT`].
pub fn wait_assembled(lab: &Lab, site: &Site) {
    let deadline = std::time::Instant::now() + BOOT_LIMIT;
    for host in &site.hosts {
        let name = host.name.as_str();
        loop {
            let status = lab
                .sh(name, "cat /run/firstboot/status.json")
                .ok()
                .and_then(|s| node_contract::status::Status::from_json(s.as_bytes()).ok());
            let done = status.as_ref().is_some_and(|s| {
                s.phase == node_contract::Phase::ALL.last().copied()
                    && matches!(
                        s.state,
                        node_contract::status::State::Done | node_contract::status::State::Serving
                    )
            });
            if done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not finish its last phase: {status:?}\n{}",
                lab.journal(name, Some("firstboot.service"))
                    .unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

/// Every node booted and `running`, the cluster healthy from every core
/// host, every core host a member, no certificate with an IP SAN, every
/// node's identity certificate for its own name.
pub fn assert_cluster(lab: &Lab, site: &Site) {
    use builder::site::Role;
    for host in &site.hosts {
        let name = host.name.as_str();
        let state = lab.wait_booted(name, BOOT_LIMIT).unwrap();
        assert_eq!(
            state,
            "running",
            "{name}: {state}\n{}",
            lab.journal(name, Some("firstboot.service"))
                .unwrap_or_default()
        );
    }
    let core: Vec<&str> = site
        .hosts
        .iter()
        .filter(|h| h.role == Role::Core)
        .map(|h| h.name.as_str())
        .collect();
    let first = site.fqdn(site.bootstrap());
    for host in &site.hosts {
        let name = host.name.as_str();
        let root = lab.root(name).unwrap();
        let cert = std::fs::read_to_string(root.join("etc/firstboot/tls/node.crt")).unwrap();
        let info = firstboot::pki::inspect(&cert).unwrap();
        assert_eq!(
            info.dns_names,
            [site.fqdn(host)],
            "{name}: certificate names"
        );
        assert!(!info.has_ip, "{name}: the certificate carries an IP SAN");
        if host.role != Role::Core {
            assert!(
                !root.join("etc/firstboot/etcd/member.crt").exists(),
                "{name}: a worker holds an etcd certificate"
            );
            continue;
        }
        // Healthy within a minute: the handoff may be restarting members
        // one at a time (each back in seconds) as this asks.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let health = match try_etcdctl(lab, name, &first, "endpoint health --cluster") {
                Ok(out) | Err(out) => out,
            };
            if health.matches("is healthy").count() == core.len() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: {health}");
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let members = etcdctl(lab, name, &first, "member list");
        for member in &core {
            assert!(
                members.contains(&format!("https://{member}.{}:2380", site.domain)),
                "{name}: {members}"
            );
        }
    }
    for member in &core {
        let journal = lab.journal(member, Some("etcd.service")).unwrap();
        assert!(
            !journal.contains("does not match any of DNSNames"),
            "{member}: {journal}"
        );
    }
}

/// Run `work` on a thread inside the network namespace `netns` (a name
/// under /run/netns), with a tokio runtime: how a test acts as a node, a
/// stranger or a relay on the lab's network.
pub fn in_netns<T: Send + 'static>(netns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        work()
    })
    .join()
    .unwrap()
}

/// A current-thread tokio runtime for a test thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Keep running `serve` (a server future) on a thread inside `netns`
/// until the returned guard is dropped.
pub struct Background(
    Option<tokio::sync::oneshot::Sender<()>>,
    Option<std::thread::JoinHandle<()>>,
);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

pub fn serve_in<F, Fut>(netns: &str, serve: F) -> Background
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let path = format!("/run/netns/{netns}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        rt.block_on(local.run_until(async move {
            let server = tokio::task::spawn_local(serve());
            let _ = ready_tx.send(());
            let _ = stopped.await;
            server.abort();
        }));
    });
    ready_rx.recv().unwrap();
    Background(Some(stop), Some(thread))
}

/// `etcdctl endpoint status --cluster` from `node` (core): each member's
/// cluster id.
pub fn cluster_ids(lab: &Lab, node: &str, fqdn: &str) -> Vec<u64> {
    let status = etcdctl(lab, node, fqdn, "endpoint status --cluster -w json");
    let value: serde_json::Value =
        serde_json::from_str(status.trim()).unwrap_or_else(|e| panic!("{e}: {status}"));
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Status"]["header"]["cluster_id"].as_u64().unwrap())
        .collect()
}

/// No namespace (`ns` and those named after it), mount, directory,
/// cgroup, loop device or process of lab `id` remains; nor any of the
/// `helpers` (process ids) it ran.
pub fn assert_nothing_left(id: &str, ns: &str, helpers: &[u32]) {
    use std::path::Path;
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaces = names(Path::new("/run/netns"));
    assert!(
        !namespaces.iter().any(|n| n.starts_with(ns)),
        "namespaces left: {namespaces:?}"
    );
    let dir = site_lab::lab::labs_dir().join(id);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&dir.to_string_lossy().into_owned()),
        "mounts left under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} left", dir.display());
    let loops: Vec<_> = site_lab::volumes::loops()
        .into_iter()
        .filter(|(_, file)| file.starts_with(&dir))
        .collect();
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    for root in [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let groups = names(&Path::new(root).join("site-lab"));
        assert!(
            !groups.iter().any(|g| g.starts_with(&format!("{id}-"))),
            "cgroups left in {root}: {groups:?}"
        );
    }
    let nspawns = std::process::Command::new("pgrep")
        .args(["-f", &format!("/{id}/nodes/")])
        .output()
        .unwrap();
    assert!(
        nspawns.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&nspawns.stdout)
    );
    for pid in helpers {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = !stat.is_empty() && !stat.contains(") Z ");
        assert!(!alive, "helper process {pid} is left: {stat}");
    }
}
