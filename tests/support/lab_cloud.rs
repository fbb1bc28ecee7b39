//! The lab cloud: DigitalOcean's API as the stateful fake behind Prism
//! (`--errors`, the official spec), whose droplets are lab nodes. One
//! place for each job: the fake keeps the API's state and says what
//! changed (`do_fake::Change`); the controller here turns each change into
//! the lab driver's (`site_lab`) acts; the lab does them for real.
//!
//! - A droplet created is a lab node booted from exactly its `user_data`
//!   by the real Ignition (fetch, disks, files), with its public address
//!   on the lab's Internet bridge and its VPC interface on the VPC bridge
//!   (the address the API reports, which the node must get from the
//!   metadata stand-in: no DHCP there); it is `active` once booted. A
//!   droplet deleted is a node stopped and its root removed.
//! - A volume is a sparse file behind a loop device, attached under
//!   DigitalOcean's device name; attach and detach act on the node.
//! - The firewalls, as the API holds them, are nftables rules between the
//!   Internet bridge and the nodes (`site_lab::edge_firewall`).
//! - The metadata stand-in answers each droplet about itself (by source
//!   address): its id, name, user data and interfaces.
//! - Spaces is moto (the S3 server of the publish tests) behind an HTTPS
//!   front at `<bucket>.<region>.digitaloceanspaces.com` on the Internet,
//!   with a certificate from a lab CA that Ignition is told to trust
//!   (`SSL_CERT_FILE`), and that name in Ignition's /etc/hosts.
//! - The operator's machine is a namespace on the Internet: the fake,
//!   Prism and moto listen on its loopback, and `builder` runs there, with
//!   a home of its own (its `~/.ssh` holds the site's key and the
//!   known hosts), so `builder status` logs in to the nodes over real SSH.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use site_lab::cloud::{DropletSpec, INTERNET, INTERNET_GATEWAY, VPC_GATEWAY};
use site_lab::Lab;

use super::do_fake::{Change, DropletView, FakeDo};
use super::moto::Moto;
use super::prism::Prism;

/// The operator's machine on the Internet.
pub const OPERATOR: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 2);
/// The Spaces front, an address of the lab namespace on the Internet.
pub const SPACES: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 3);
/// Where a test attacks from: another host on the Internet.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 4);
/// The lab image's name as `builder launch` imports it.
pub const LAB_IMAGE: &str = "lab-bookworm";
/// The VPC ranges the lab cloud allows (its VPC bridge is 198.18.0.0/24).
pub const VPC_RANGES: &[(Ipv4Addr, u8)] = &[(Ipv4Addr::new(198, 18, 0, 0), 16)];

/// Why the lab cloud cannot run here, if it cannot; else the lab image
/// and the static firstboot (`BUILDER_TEST_FIRSTBOOT`). Skips (failing in
/// CI) print why.
pub fn ready() -> Option<(PathBuf, PathBuf)> {
    if let Some(reason) = site_lab::skip_reason() {
        super::skip(&reason);
        return None;
    }
    super::lab::freeipa_simulator()?;
    if let Some(reason) = super::prism::skip_reason() {
        super::skip(&reason);
        return None;
    }
    if let Some(reason) = super::moto::skip_reason() {
        super::skip(&reason);
        return None;
    }
    for (tool, package) in [
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("losetup", "mount"),
        ("mkfs.xfs", "xfsprogs"),
        ("ping", "iputils-ping"),
    ] {
        if site_lab::proc::which(tool).is_none() {
            super::skip(&format!(
                "skipping: the lab cloud needs `{tool}` (install Debian package `{package}`)"
            ));
            return None;
        }
    }
    let Some(firstboot) = std::env::var_os("BUILDER_TEST_FIRSTBOOT") else {
        super::skip(
            "skipping: the lab cloud's nodes run the real static firstboot: set \
             BUILDER_TEST_FIRSTBOOT (`make e2e` does)",
        );
        return None;
    };
    let image = site_lab::image::ensure(&site_lab::image::definition_path(), &mut |m| {
        eprintln!("{m}")
    })
    .unwrap();
    Some((image, PathBuf::from(firstboot)))
}

/// When a droplet reached each stage, for the benchmark.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub host: String,
    pub id: u64,
    /// The create reached the fake.
    pub created: Instant,
    /// Ignition done, nspawn started, the droplet `active`.
    pub booted: Instant,
}

#[derive(Default)]
struct Record {
    failures: Vec<String>,
    /// Droplet id → host name of its node.
    hosts: BTreeMap<u64, String>,
    /// Droplet id → its addresses, for the metadata stand-in.
    addresses: BTreeMap<u64, [Ipv4Addr; 2]>,
    provisioned: Vec<Provisioned>,
    /// Every change handled, in order.
    log: Vec<String>,
}

pub struct LabCloud {
    lab: Arc<Mutex<Lab>>,
    pub fake: Arc<FakeDo>,
    prism: Option<Prism>,
    moto: Option<Moto>,
    /// The operator's namespace.
    pub operator: String,
    spaces: Option<SpacesFront>,
    stop: Arc<AtomicBool>,
    controller: Option<JoinHandle<()>>,
    record: Arc<Mutex<Record>>,
    paths: Paths,
    /// Files the nodes' Ignition reads (hosts, CA bundle, user data).
    pub dir: tempfile::TempDir,
}

impl LabCloud {
    /// Start a lab cloud on `image` serving the Spaces `buckets` (name,
    /// region). Needs root, the lab's tools, Prism and moto (the caller
    /// checks, see `support::lab_cloud::skip_reason`).
    pub fn start(image: &Path, buckets: &[(&str, &str)]) -> LabCloud {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::create(image).unwrap();
        // Droplets on the lab image run the FreeIPA simulator where
        // Fedora CoreOS runs the freeipa-server container.
        let (sim, api) = super::lab::freeipa_simulator().expect("ready() checked it");
        lab.bind_into_nodes(&sim, super::lab::IPA_SIM_IN_NODE);
        lab.bind_into_nodes(&sim, super::lab::IPA_CLIENT_INSTALL_IN_NODE);
        lab.bind_into_nodes(&sim, super::lab::IPA_SUBMIT_IN_NODE);
        lab.bind_into_nodes(&api, super::lab::API_TXT_IN_NODE);
        lab.enable_internet().unwrap();
        let operator = lab.add_internet_host(OPERATOR).unwrap();
        lab.add_edge_address(SPACES).unwrap();
        let fake = Arc::new(FakeDo::start_in(&Path::new("/run/netns").join(&operator)));
        let prism = Prism::start_in(&fake.base, Some(&operator));
        lab.record_helper(prism.pid()).unwrap();
        let moto = Moto::start_in(Some(&operator));
        lab.record_helper(moto.pid()).unwrap();

        // Spaces: a lab CA for the Internet's names, trusted by Ignition.
        let ca = firstboot::pki::TempCa::create("digitaloceanspaces.com", &[]).unwrap();
        let ca_bundle = dir.path().join("ca-bundle.pem");
        std::fs::write(&ca_bundle, ca.root.cert_pem()).unwrap();
        let mut hosts = String::from("127.0.0.1 localhost\n");
        let mut identities = BTreeMap::new();
        for (bucket, region) in buckets {
            let name = format!("{bucket}.{region}.digitaloceanspaces.com");
            hosts.push_str(&format!("{SPACES} {name}\n"));
            let cert = ca.root.issue(&name).unwrap();
            identities.insert(name, cert);
        }
        std::fs::write(dir.path().join("hosts"), hosts).unwrap();
        let spaces = SpacesFront::start(&lab.netns(), &operator, moto.port(), identities);

        let paths = Paths {
            configs: dir.path().join("droplets"),
            hosts: dir.path().join("hosts"),
            ca_bundle,
        };
        let (changes, received) = mpsc::channel();
        fake.back_with(
            changes,
            VPC_RANGES,
            ((INTERNET.0, INTERNET.1), INTERNET_GATEWAY),
        );
        let lab = Arc::new(Mutex::new(lab));
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let controller = {
            let controller = Controller {
                lab: lab.clone(),
                fake: fake.clone(),
                record: record.clone(),
                paths: paths.clone(),
            };
            let stop = stop.clone();
            thread::Builder::new()
                .name("lab-cloud".into())
                .spawn(move || controller.run(&received, &stop))
                .unwrap()
        };
        LabCloud {
            lab,
            fake,
            prism: Some(prism),
            moto: Some(moto),
            operator,
            spaces: Some(spaces),
            stop,
            controller: Some(controller),
            record,
            paths,
            dir,
        }
    }

    /// The lab, locked: hold it briefly (the controller needs it too).
    pub fn lab(&self) -> MutexGuard<'_, Lab> {
        self.lab.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn prism(&self) -> &Prism {
        self.prism.as_ref().expect("running")
    }

    pub fn moto(&self) -> &Moto {
        self.moto.as_ref().expect("running")
    }

    /// What went wrong in the controller so far (a droplet that could
    /// not boot, a firewall that could not load).
    pub fn failures(&self) -> Vec<String> {
        self.lock_record().failures.clone()
    }

    /// Panics with the controller's failures, if any.
    pub fn check(&self) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "the lab cloud failed:\n{}",
            failures.join("\n")
        );
    }

    pub fn provisioned(&self) -> Vec<Provisioned> {
        self.lock_record().provisioned.clone()
    }

    /// The changes handled so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.lock_record().log.clone()
    }

    /// How many requests the Spaces front forwarded for `path`.
    pub fn spaces_hits(&self, path: &str) -> usize {
        self.spaces.as_ref().map_or(0, |s| s.hits(path))
    }

    fn lock_record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the controller has handled every change the fake sent
    /// so far (at most `limit`).
    pub fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (sent, handled) = (self.fake.changes_sent(), self.lock_record().log.len());
            if handled >= sent {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the lab cloud handled {handled} of {sent} changes within {limit:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The floor of a benchmark: `droplet` booted as the lab cloud boots
    /// it, straight from the lab driver (no API, no controller), with new
    /// volumes of its own (name, GiB) attached.
    pub fn boot_direct(&self, droplet: &DropletView, volumes: &[(String, u64)]) -> Result<()> {
        for (name, size) in volumes {
            self.lab().create_volume(name, *size)?;
        }
        let names = volumes.iter().map(|(n, _)| n.clone()).collect();
        boot_droplet(&self.lab, &self.paths, droplet, names)
    }

    /// Undo [`boot_direct`](Self::boot_direct): the node, its volumes,
    /// its metadata.
    pub fn remove_direct(&self, droplet: &DropletView, volumes: &[(String, u64)]) -> Result<()> {
        let mut lab = self.lab();
        lab.metadata()
            .unregister(&[droplet.private_ip, droplet.public_ip]);
        lab.remove_node(&host_of(&droplet.name))?;
        for (name, _) in volumes {
            lab.delete_volume(name)?;
        }
        Ok(())
    }

    /// `builder` (`program`) with `args`, as the operator runs it: in the
    /// operator's namespace, with `home` as the home directory ssh reads
    /// (bound over the user's home in a mount namespace of its own, which
    /// `ip netns exec` makes), and the lab cloud's endpoints.
    pub fn builder(&self, program: &Path, home: &Path, args: &[&str]) -> Command {
        let real_home = home_dir();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.operator, "/bin/sh", "-c"])
            .arg("set -e; mount --bind \"$1\" \"$2\"; shift 2; exec \"$@\"")
            .arg("sh")
            .arg(home)
            .arg(real_home)
            .arg(program)
            .args(args)
            .env("DIGITALOCEAN_API_URL", &self.prism().base)
            .env("DIGITALOCEAN_ACCESS_TOKEN", "lab-cloud-token")
            .env("BUILDER_SPACES_ENDPOINT", &self.moto().base)
            .env("SPACES_ACCESS_KEY_ID", "LABCLOUDKEY")
            .env("SPACES_SECRET_ACCESS_KEY", "lab-cloud-secret")
            .env("HOME", home)
            .env_remove("DIGITALOCEAN_TOKEN")
            .env_remove("BUILDER_SSH")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null());
        command
    }
}

impl Drop for LabCloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(controller) = self.controller.take() {
            let _ = controller.join();
        }
        self.spaces = None;
        self.prism = None;
        self.moto = None;
        self.lab().teardown();
    }
}

/// The user's home as ssh finds it (the password database, not $HOME).
fn home_dir() -> PathBuf {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The MACs the cloud gives a droplet's interfaces (locally administered).
pub fn macs(id: u64) -> (String, String) {
    let b = id.to_be_bytes();
    let mac = |last: u8| {
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{last:02x}",
            b[4], b[5], b[6], b[7]
        )
    };
    (mac(1), mac(2))
}

/// What the metadata stand-in answers a droplet, as DigitalOcean's does
/// (`/metadata/v1/...`, plain text, directory indexes included).
pub fn metadata_files(droplet: &DropletView) -> site_lab::metadata::Files {
    let (public_mac, private_mac) = macs(droplet.id);
    let mask = |prefix: u8| {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)).to_string()
    };
    let mut files = BTreeMap::new();
    let mut put = |path: &str, value: String| {
        files.insert(format!("/metadata/v1/{path}"), value.into_bytes());
    };
    put("id", droplet.id.to_string());
    put("hostname", droplet.name.clone());
    put("region", droplet.region.clone());
    put("user-data", droplet.user_data.clone().unwrap_or_default());
    put("interfaces/", "private/\npublic/".into());
    for (kind, mac, address, prefix, gateway) in [
        (
            "private",
            private_mac,
            droplet.private_ip,
            droplet.private_prefix,
            droplet.private_gateway,
        ),
        (
            "public",
            public_mac,
            droplet.public_ip,
            droplet.public_prefix,
            droplet.public_gateway,
        ),
    ] {
        put(&format!("interfaces/{kind}/"), "0/".into());
        put(&format!("interfaces/{kind}/0/"), "mac\ntype\nipv4/".into());
        put(&format!("interfaces/{kind}/0/mac"), mac);
        put(&format!("interfaces/{kind}/0/type"), kind.into());
        put(
            &format!("interfaces/{kind}/0/ipv4/"),
            "address\nnetmask\ngateway".into(),
        );
        put(
            &format!("interfaces/{kind}/0/ipv4/address"),
            address.to_string(),
        );
        put(&format!("interfaces/{kind}/0/ipv4/netmask"), mask(prefix));
        put(
            &format!("interfaces/{kind}/0/ipv4/gateway"),
            gateway.to_string(),
        );
    }
    files
}

/// Turns the fake's changes into the lab's acts, one at a time, in order.
struct Controller {
    lab: Arc<Mutex<Lab>>,
    fake: Arc<FakeDo>,
    record: Arc<Mutex<Record>>,
    paths: Paths,
}

impl Controller {
    fn run(&self, changes: &mpsc::Receiver<Change>, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let change = match changes.recv_timeout(Duration::from_millis(50)) {
                Ok(change) => change,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let line = format!("{change:?}");
            let result = self.handle(change);
            let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = result {
                record.failures.push(format!("{line}: {e:#}"));
            }
            record.log.push(line);
        }
    }

    fn lab(&self) -> MutexGuard<'_, Lab> {
        self.lab.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn host(&self, id: u64) -> Option<String> {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.hosts.get(&id).cloned()
    }

    fn handle(&self, change: Change) -> Result<()> {
        match change {
            Change::VolumeCreated { name, size_gib } => {
                self.lab().create_volume(&name, size_gib)?;
            }
            Change::VolumeDeleted { name } => self.lab().delete_volume(&name)?,
            Change::VolumeAttached { name, droplet } => {
                if let Some(host) = self.host(droplet) {
                    self.lab().attach_volume(&name, &host)?;
                }
            }
            Change::VolumeDetached { name, .. } => self.lab().detach_volume(&name)?,
            Change::DropletCreated { id, name, volumes } => {
                let created = Instant::now();
                if let Err(e) = self.create(id, &name, volumes) {
                    // Leave no half-made node behind.
                    if let Some(host) = self.host(id) {
                        let _ = self.lab().remove_node(&host);
                    }
                    return Err(e);
                }
                let host = self.host(id).unwrap_or_default();
                let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
                record.provisioned.push(Provisioned {
                    host,
                    id,
                    created,
                    booted: Instant::now(),
                });
            }
            Change::DropletDeleted { id, name } => {
                let host = self
                    .host(id)
                    .with_context(|| format!("droplet {id} ({name}) has no node"))?;
                let addresses = {
                    let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
                    record.hosts.remove(&id);
                    record.addresses.remove(&id)
                };
                let mut lab = self.lab();
                if let Some(addresses) = addresses {
                    lab.metadata().unregister(&addresses);
                }
                lab.remove_node(&host)?;
            }
            Change::FirewallsChanged => {
                let (firewalls, droplets) = self.fake.firewall_view();
                let rules = site_lab::edge_firewall::render(&firewalls, &droplets)?;
                self.lab().set_edge_firewall(&rules)?;
            }
        }
        Ok(())
    }

    /// Boot droplet `id` as a lab node from its user data; `active` once
    /// nspawn runs it.
    fn create(&self, id: u64, name: &str, volumes: Vec<String>) -> Result<()> {
        let droplet = self
            .fake
            .droplet(id)
            .with_context(|| format!("droplet {id} ({name}) is gone"))?;
        {
            let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
            record.hosts.insert(id, host_of(name));
            record
                .addresses
                .insert(id, [droplet.private_ip, droplet.public_ip]);
        }
        boot_droplet(&self.lab, &self.paths, &droplet, volumes)?;
        self.fake.activate(id);
        Ok(())
    }
}

/// A droplet's node: the first label of its name.
fn host_of(name: &str) -> String {
    name.split('.').next().unwrap_or(name).to_owned()
}

/// Where droplets' Ignition reads from: their user data (one file each),
/// the Internet's names, the CAs to trust.
#[derive(Clone)]
struct Paths {
    configs: PathBuf,
    hosts: PathBuf,
    ca_bundle: PathBuf,
}

/// A droplet as a lab node: its user data applied by the real Ignition
/// with `volumes` attached, the metadata stand-in answering it, booted.
fn boot_droplet(
    lab: &Mutex<Lab>,
    paths: &Paths,
    droplet: &DropletView,
    volumes: Vec<String>,
) -> Result<()> {
    let name = &droplet.name;
    if droplet.image != LAB_IMAGE {
        bail!(
            "droplet {name} is to boot `{}`; the lab cloud boots only `{LAB_IMAGE}`",
            droplet.image
        );
    }
    if droplet.private_gateway != VPC_GATEWAY {
        bail!(
            "droplet {name}'s VPC gateway is {}; the lab's VPC bridge is {VPC_GATEWAY}",
            droplet.private_gateway
        );
    }
    let user_data = droplet
        .user_data
        .as_deref()
        .with_context(|| format!("droplet {name} has no user data to boot from"))?;
    std::fs::create_dir_all(&paths.configs)?;
    let config = paths.configs.join(format!("{}.ign", droplet.id));
    std::fs::write(&config, user_data)?;
    let (public_mac, private_mac) = macs(droplet.id);
    let spec = DropletSpec {
        public: droplet.public_ip,
        private: (droplet.private_ip, droplet.private_prefix),
        public_mac,
        private_mac,
        volumes,
        hosts: Some(paths.hosts.clone()),
        ca_bundle: Some(paths.ca_bundle.clone()),
    };
    let host = host_of(name);
    let mut lab = lab.lock().unwrap_or_else(|e| e.into_inner());
    lab.metadata().register(
        &[droplet.private_ip, droplet.public_ip],
        metadata_files(droplet),
    );
    lab.add_droplet(&host, &config, &spec)?;
    lab.boot(&host)?;
    Ok(())
}

/// Spaces on the Internet: HTTPS at [`SPACES`] (in the lab namespace),
/// each request for `<bucket>.<region>.digitaloceanspaces.com/<key>`
/// passed to moto (on the operator's loopback) as `/<bucket>/<key>`.
struct SpacesFront {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl SpacesFront {
    fn start(
        lab_netns: &str,
        operator_netns: &str,
        moto_port: u16,
        identities: BTreeMap<String, firstboot::pki::NodeCert>,
    ) -> SpacesFront {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let configs: BTreeMap<String, Arc<rustls::ServerConfig>> = identities
            .into_iter()
            .map(|(name, cert)| {
                let config =
                    firstboot::https::server_config(&cert.cert_pem, &cert.key_pem).unwrap();
                (name, config)
            })
            .collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            let (lab_ns, operator_ns) = (
                format!("/run/netns/{lab_netns}"),
                format!("/run/netns/{operator_netns}"),
            );
            thread::spawn(move || {
                let enter = |path: &str| {
                    let ns = std::fs::File::open(path).unwrap();
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                };
                enter(&lab_ns);
                let listener = TcpListener::bind(SocketAddr::new(SPACES.into(), 443)).unwrap();
                // Sockets keep the namespace they were made in: from here
                // on this thread (and those it starts) reach moto.
                enter(&operator_ns);
                listener.set_nonblocking(true).unwrap();
                let _ = ready_tx.send(());
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (configs, hits) = (configs.clone(), hits.clone());
                            thread::spawn(move || {
                                let _ = serve_spaces(stream, &configs, moto_port, &hits);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the Spaces front did not start");
        SpacesFront {
            stop,
            thread: Some(thread),
            hits,
        }
    }

    fn hits(&self, path: &str) -> usize {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        hits.get(path).copied().unwrap_or(0)
    }
}

impl Drop for SpacesFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One HTTPS request: TLS with the certificate of the name asked for
/// (SNI), then the request passed on to moto and its answer back.
fn serve_spaces(
    stream: std::net::TcpStream,
    configs: &BTreeMap<String, Arc<rustls::ServerConfig>>,
    moto_port: u16,
    hits: &Mutex<BTreeMap<String, usize>>,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // A droplet's Ignition may read slowly on a loaded machine (five of
    // them write their disks at once): a real front keeps a slow reader,
    // so the answer is not cut off after a few seconds' stall.
    stream.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut stream = stream;
    let mut acceptor = rustls::server::Acceptor::default();
    let accepted = loop {
        acceptor.read_tls(&mut stream)?;
        if let Some(accepted) = acceptor.accept().map_err(|(e, _)| e)? {
            break accepted;
        }
    };
    let name = accepted
        .client_hello()
        .server_name()
        .unwrap_or_default()
        .to_owned();
    let config = configs
        .get(&name)
        .with_context(|| format!("no Spaces bucket answers to `{name}`"))?
        .clone();
    let connection = accepted.into_connection(config).map_err(|(e, _)| e)?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let request =
        site_lab::http::read_request(&mut BufReader::new(&mut tls))?.context("no request")?;
    let bucket = name.split('.').next().unwrap_or_default();
    *hits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(request.path().to_owned())
        .or_default() += 1;
    let answer = site_lab::http::request(
        &format!("127.0.0.1:{moto_port}"),
        &request.method,
        &format!("/{bucket}{}", request.target),
        &[],
        &request.body,
    )?;
    let mut response = site_lab::http::Response::new(answer.status)
        .with_header("Connection", "close")
        .with_body(answer.body);
    for (key, value) in &answer.headers {
        let key_lower = key.to_ascii_lowercase();
        if !matches!(
            key_lower.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            response = response.with_header(key, value);
        }
    }
    response.write_to(&mut tls, request.method != "HEAD")?;
    tls.conn.send_close_notify();
    tls.flush()?;
    // Not a plain close: anything the client sent that is still unread
    // would make it a reset, which drops the end of the answer the client
    // is still reading (Ignition does not fetch again once the headers
    // came: coreos/ignition internal/resource/http.go, url.go).
    site_lab::http::close_gracefully(&tls.sock);
    Ok(())
}
