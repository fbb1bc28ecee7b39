//! A running lab: namespaces, a bridge, overlay roots, booted nodes.
//!
//! Everything a lab creates is recorded under its directory in
//! [`labs_dir`] (namespace names, mounts, PIDs with start times), so a lab
//! whose owner died, even by SIGKILL, is cleared by the next one that
//! starts. Only processes this code started are ever signalled, by PID
//! checked against its start time.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http::FileServer;
use crate::ignition::{self, Stages};
use crate::image::remove_tree;
use crate::metadata::MetadataServer;
use crate::proc::{self, ProcessId};
use crate::upstream::UpstreamDns;
use crate::volumes::Volume;

/// The lab's HTTP server, in the lab namespace: where nodes fetch firstboot.
pub const LAB_SERVER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 8080);
/// The nodes' gateway: the lab namespace, which routes to the upstream.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The upstream DNS, in a namespace of its own behind the lab namespace.
pub const UPSTREAM_DNS: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 53);
const UPSTREAM_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Node N (from 0) gets 198.18.0.(10 + N)/24.
const FIRST_NODE_OCTET: u8 = 10;
const MAX_NODES: usize = 200;
/// Prefix of every namespace a lab creates.
pub(crate) const NS_PREFIX: &str = "sitelab-";
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// Where labs keep their state (overlay layers, PIDs).
pub fn labs_dir() -> PathBuf {
    std::env::var_os("SITE_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/site-lab"))
}

pub struct Lab {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) nodes: Vec<Node>,
    server: Option<FileServer>,
    upstream: Option<UpstreamDns>,
    pub(crate) metadata: Option<MetadataServer>,
    pub(crate) strangers: usize,
    /// Nodes ever added: each gets the next index, never reused, so a
    /// removed node's names (namespace, cable) are never taken again.
    pub(crate) added: usize,
    /// Whether the Internet bridge exists (see `cloud`).
    pub(crate) internet: bool,
    /// Block storage volumes, attached or not.
    pub(crate) volumes: Vec<Volume>,
    /// Host files every node sees read-only (host path, node path).
    pub(crate) binds: Vec<(PathBuf, String)>,
}

pub struct Node {
    pub name: String,
    /// Its address in the VPC.
    pub address: Ipv4Addr,
    /// Its public address on the Internet bridge (droplets only).
    pub public: Option<Ipv4Addr>,
    pub(crate) index: usize,
    pub(crate) netns: String,
    pub(crate) dir: PathBuf,
    pub(crate) nspawn: Option<Child>,
    /// Volumes bound into the node at boot (droplets only): name and loop
    /// minor; `None` for a node that is no droplet.
    pub(crate) volumes: Option<Vec<(String, u32)>>,
}

impl Node {
    /// The node's network namespace (under /run/netns).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub(crate) fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    /// The host side of this node's cable, in the lab namespace.
    pub(crate) fn cable(&self, lab_id: &str) -> String {
        format!("sl{lab_id}{}", self.index)
    }
}

impl Lab {
    /// Start a lab on the image rooted at `image`: clear labs whose owner
    /// died, then create the lab namespace with its bridge.
    pub fn create(image: &Path) -> Result<Lab> {
        let root = labs_dir();
        fs::create_dir_all(&root)?;
        clear_stale(&root);
        // nspawn needs it and a bare machine may lack it.
        fs::create_dir_all("/run/systemd")?;
        let id = loop {
            let candidate = format!("{:06x}", rand_u32() & 0xff_ffff);
            if !root.join(&candidate).exists() {
                break candidate;
            }
        };
        // The owner is recorded before the directory appears under its
        // name: a lab starting in parallel must never see it ownerless
        // and clear it as stale.
        let dir = root.join(&id);
        let staging = root.join(format!(".{id}-new"));
        fs::create_dir(&staging)?;
        fs::write(staging.join("owner"), ProcessId::current().encode())?;
        fs::rename(&staging, &dir)?;
        let mut lab = Lab {
            id,
            dir,
            image: image.to_owned(),
            nodes: Vec::new(),
            server: None,
            upstream: None,
            metadata: None,
            strangers: 0,
            added: 0,
            internet: false,
            volumes: Vec::new(),
            binds: Vec::new(),
        };
        let ns = lab.netns();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        bridge(&ns, "br0", &format!("{}/24", LAB_SERVER.ip()))?;
        // The lab namespace is the nodes' router: to the upstream DNS, and
        // to the platform's metadata service (the stand-in address from
        // images/lab/image.json, on its loopback).
        sysctl(&ns, "net.ipv4.ip_forward=1")?;
        let metadata = crate::image::metadata_address()?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{metadata}/32"),
            "dev",
            "lo",
        ])?;
        let up = lab.upstream_netns();
        let cable = format!("sl{}up", lab.id);
        ip(&["netns", "add", &up])?;
        ip(&["-n", &up, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &cable, "netns", &ns, "type", "veth", "peer", "name", "eth0", "netns",
            &up,
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{UPSTREAM_GATEWAY}/24"),
            "dev",
            &cable,
        ])?;
        ip(&["-n", &ns, "link", "set", &cable, "up"])?;
        ip(&[
            "-n",
            &up,
            "addr",
            "add",
            &format!("{UPSTREAM_DNS}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &up, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &up,
            "route",
            "add",
            "default",
            "via",
            &UPSTREAM_GATEWAY.to_string(),
        ])?;
        lab.upstream = Some(
            UpstreamDns::start_in(&Path::new("/run/netns").join(&up), UPSTREAM_DNS)
                .context("cannot start the lab's upstream DNS")?,
        );
        lab.metadata = Some(
            MetadataServer::start_in(
                &Path::new("/run/netns").join(&ns),
                SocketAddr::new(metadata.into(), 80),
                [(
                    "/metadata/v1/user-data".to_owned(),
                    b"the lab's stand-in for a droplet's user data\n".to_vec(),
                )]
                .into(),
            )
            .context("cannot start the lab's metadata stand-in")?,
        );
        Ok(lab)
    }

    /// Let every node booted from now on see the host's `host` at `node`,
    /// read-only: how test tools the lab image lacks (the FreeIPA
    /// simulator) reach the nodes without a copy per node.
    pub fn bind_into_nodes(&mut self, host: &Path, node: &str) {
        self.binds.push((host.to_owned(), node.to_owned()));
    }

    /// The upstream's namespace, holding the upstream DNS.
    pub fn upstream_netns(&self) -> String {
        format!("{NS_PREFIX}{}-up", self.id)
    }

    /// The metadata stand-in: how many requests for user data reached it.
    pub fn metadata_hits(&self) -> usize {
        self.metadata
            .as_ref()
            .map_or(0, |m| m.hits("/metadata/v1/user-data"))
    }

    /// The metadata stand-in, which answers each droplet about itself.
    pub fn metadata(&self) -> &MetadataServer {
        self.metadata.as_ref().expect("started with the lab")
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lab namespace, holding the bridge and the HTTP server.
    pub fn netns(&self) -> String {
        format!("{NS_PREFIX}{}", self.id)
    }

    /// Serve `files` (path, bytes) at [`LAB_SERVER`] inside the lab namespace.
    pub fn serve(&mut self, files: Vec<(String, Vec<u8>)>) -> Result<()> {
        let ns = Path::new("/run/netns").join(self.netns());
        self.server = Some(
            FileServer::start_in(&ns, LAB_SERVER, files)
                .context("cannot start the lab HTTP server")?,
        );
        Ok(())
    }

    pub fn server(&self) -> Option<&FileServer> {
        self.server.as_ref()
    }

    /// Add a node: its namespace and cable, its copy-on-write root, and its
    /// rendered Ignition config applied there by the real Ignition, which
    /// fetches from the lab server across the bridge.
    pub fn add_node(&mut self, name: &str, config: &Path) -> Result<&Node> {
        let index = self.next_index(name)?;
        let node_dir = self.dir.join("nodes").join(name);
        let node = Node {
            name: name.to_owned(),
            address: Ipv4Addr::new(198, 18, 0, FIRST_NODE_OCTET + index as u8),
            public: None,
            index,
            netns: format!("{NS_PREFIX}{}-{index}", self.id),
            dir: node_dir.clone(),
            nspawn: None,
            volumes: None,
        };
        // Recorded before creating, so a crash in between is still cleaned.
        self.nodes.push(node);
        let node = self.nodes.last().expect("just pushed");
        let (ns, cable, address) = (node.netns.clone(), node.cable(&self.id), node.address);
        new_netns(&ns)?;
        self.cable(&ns, &cable, "eth0", None, "br0")?;
        // What a cloud's DHCP would give: the address and a gateway (the
        // lab namespace, routing to the upstream and the metadata
        // stand-in).
        configure(&ns, "eth0", &format!("{address}/24"), Some(GATEWAY))?;

        self.mount_root(&node_dir)
            .with_context(|| format!("cannot prepare {name}'s root for Ignition"))?;
        let node = self.nodes.last().expect("just pushed");
        let stages = Stages::new(node_dir.join("ignition"))
            .with_context(|| format!("cannot set up Ignition's state for {name}"))?;
        let outcome = stages.apply(&node.merged(), config, Some(&ns));
        fs::write(node_dir.join("ignition.log"), &outcome.log)?;
        if !outcome.success {
            bail!("Ignition failed on {name}:\n{}", outcome.log);
        }
        Ok(node)
    }

    /// A stranger in the VPC: a network namespace cabled to the bridge at
    /// `address`, running nothing of the site (a test acts from it). Its
    /// namespace (under /run/netns) is returned; teardown removes it.
    pub fn add_stranger(&mut self, address: Ipv4Addr) -> Result<String> {
        let index = self.strangers;
        self.strangers += 1;
        let ns = format!("{NS_PREFIX}{}-s{index}", self.id);
        let cable = format!("sl{}s{index}", self.id);
        new_netns(&ns)?;
        self.cable(&ns, &cable, "eth0", None, "br0")?;
        configure(&ns, "eth0", &format!("{address}/24"), Some(GATEWAY))?;
        Ok(ns)
    }

    /// Cable namespace `ns` to `bridge` of the lab namespace: a veth pair,
    /// `host_side` on the bridge, `inside` in `ns` (with `mac` if given);
    /// both up.
    pub(crate) fn cable(
        &self,
        ns: &str,
        host_side: &str,
        inside: &str,
        mac: Option<&str>,
        bridge: &str,
    ) -> Result<()> {
        let lab_ns = self.netns();
        let mut args = vec![
            "link", "add", host_side, "netns", &lab_ns, "type", "veth", "peer", "name", inside,
        ];
        if let Some(mac) = mac {
            args.extend(["address", mac]);
        }
        args.extend(["netns", ns]);
        ip(&args)?;
        ip(&[
            "-n", &lab_ns, "link", "set", host_side, "master", bridge, "up",
        ])?;
        ip(&["-n", ns, "link", "set", inside, "up"])
    }

    /// The index of a new node `name` (refused if the name is taken).
    pub(crate) fn next_index(&mut self, name: &str) -> Result<usize> {
        let index = self.added;
        if index >= MAX_NODES {
            bail!("a lab holds at most {MAX_NODES} nodes");
        }
        if self.nodes.iter().any(|n| n.name == name) {
            bail!("the lab already has a node `{name}`");
        }
        self.added += 1;
        Ok(index)
    }

    /// A node's copy-on-write root over the image, ready for Ignition.
    pub(crate) fn mount_root(&self, node_dir: &Path) -> Result<()> {
        for d in ["upper", "work", "merged"] {
            fs::create_dir_all(node_dir.join(d))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.image.display(),
            node_dir.join("upper").display(),
            node_dir.join("work").display()
        );
        proc::check(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(node_dir.join("merged")),
            STEP,
        )?;
        ignition::prepare_root(&node_dir.join("merged"))?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node `{name}` in the lab"))
    }

    pub(crate) fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("no node `{name}` in the lab"))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// Boot a node with `systemd-nspawn --boot` in its namespace. Console
    /// output goes to `console.log` in the node's directory.
    pub fn boot(&mut self, name: &str) -> Result<()> {
        let lab_dir = self.dir.clone();
        let lab_id = self.id.clone();
        let binds: Vec<String> = self
            .binds
            .iter()
            .map(|(host, node)| format!("--bind-ro={}:{node}", host.display()))
            .collect();
        let node = self.node_mut(name)?;
        if node.nspawn.is_some() {
            bail!("{name} is already running");
        }
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("console.log"))?;
        let mut command = Command::new("systemd-nspawn");
        command
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ])
            .args([
                "--link-journal=no",
                "--resolv-conf=off",
                "--timezone=off",
                "--quiet",
            ])
            // The node owns its network namespace, as a droplet owns its
            // network: networkd configures it, the guard loads nftables.
            .arg("--capability=CAP_NET_ADMIN")
            .args(&binds)
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                node.netns
            ))
            .arg(format!("--machine={}", node.name))
            .arg("--directory")
            .arg(node.merged());
        if let Some(volumes) = &node.volumes {
            // A droplet's attached volumes: the loop devices, and their
            // DigitalOcean names in a directory the lab keeps (`cloud`).
            for (_, minor) in volumes {
                command.arg(format!("--bind=/dev/loop{minor}"));
            }
            command.arg(format!(
                "--bind={}:/dev/disk",
                node.dir.join("disk").display()
            ));
        }
        command
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console);
        // The child joins cgroups of its own before nspawn runs, so each
        // node's systemd manages a tree of its own: nodes sharing one
        // (--keep-unit keeps the caller's) trample each other's slices.
        // After the fork only the prepared paths are used, no allocation.
        let procs = node_cgroups(&lab_id, node.index)?;
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                for path in &procs {
                    join_cgroup(path)?;
                }
                Ok(())
            });
        }
        let child = command.spawn().context("cannot start systemd-nspawn")?;
        let cable = node.cable(&lab_id);
        ip(&[
            "-n",
            &format!("{NS_PREFIX}{lab_id}"),
            "link",
            "set",
            &cable,
            "up",
        ])?;
        let id = ProcessId::of(child.id() as i32).context("nspawn exited at once")?;
        append_line(&lab_dir.join("pids"), &id.encode())?;
        node.nspawn = Some(child);
        Ok(())
    }

    /// The PID of a running node's init (systemd), for nsenter.
    pub fn leader(&self, name: &str) -> Result<i32> {
        let node = self.node(name)?;
        let nspawn = node
            .nspawn
            .as_ref()
            .with_context(|| format!("{name} is not running"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // nspawn forks helpers before the container's init exists;
            // the leader is the child that runs systemd.
            let init = proc::children(nspawn.id() as i32).into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            });
            if let Some(pid) = init {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name}: nspawn started no container within 10 s; see {}",
                    node.dir.join("console.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run a command inside a node, bounded by `limit`.
    pub fn exec(&self, name: &str, args: &[&str], limit: Duration) -> Result<Output> {
        let leader = self.leader(name)?;
        proc::run(
            Command::new("nsenter")
                .args(["-t", &leader.to_string(), "-a", "--"])
                .args(args),
            limit,
        )
    }

    /// Like [`exec`](Self::exec), requiring success; stdout as text.
    pub fn sh(&self, name: &str, script: &str) -> Result<String> {
        let out = self.exec(name, &["/bin/sh", "-c", script], STEP)?;
        if !out.status.success() {
            bail!(
                "{name}: `{script}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Wait until systemd in the node has finished starting up; its state
    /// (`running`, or `degraded` with the failed units listed).
    pub fn wait_booted(&self, name: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let state = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let out = self.exec(name, &["systemctl", "is-system-running", "--wait"], left)?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            // Empty or "offline": systemd does not answer on its bus yet.
            if !(state.is_empty() || state == "offline") || Instant::now() >= deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if state == "degraded" {
            let failed = self.exec(
                name,
                &["systemctl", "--failed", "--no-legend", "--plain"],
                STEP,
            )?;
            return Ok(format!(
                "degraded: {}",
                String::from_utf8_lossy(&failed.stdout).trim()
            ));
        }
        Ok(state)
    }

    /// Wait until systemd in the node answers (starting or later), without
    /// waiting for start-up to finish.
    pub fn wait_started(&self, name: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.exec(name, &["systemctl", "is-system-running"], STEP)?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !(state.is_empty() || state == "offline" || state == "initializing") {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                bail!("{name}: systemd did not start within {}s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node's journal, of one unit or all.
    pub fn journal(&self, name: &str, unit: Option<&str>) -> Result<String> {
        let mut args = vec!["journalctl", "--no-pager", "-o", "cat"];
        if let Some(unit) = unit {
            args.extend(["-u", unit]);
        }
        let out = self.exec(name, &args, STEP)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Crash a node: SIGKILL its init, which ends its whole PID namespace,
    /// and unplug its cable. Its root and disk state stay, as after a
    /// power cut; [`boot`](Self::boot) starts it again.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let leader = self.leader(name).ok();
        let node = self.node_mut(name)?;
        let Some(mut nspawn) = node.nspawn.take() else {
            return Ok(());
        };
        if let Some(pid) = leader.and_then(ProcessId::of) {
            pid.kill();
        }
        wait_or_kill(&mut nspawn, Duration::from_secs(20));
        // The namespace outlives the node and its kernel would still answer
        // on eth0; a powered-off machine does not. `boot` plugs it back.
        self.set_link(name, false)
    }

    /// A rebuilt droplet: the node is killed, its disk wiped back to the
    /// image, and the same config applied by Ignition again. Boot it next.
    pub fn rebuild(&mut self, name: &str, config: &Path) -> Result<()> {
        self.kill(name)?;
        let node = self.node(name)?;
        let (dir, merged, netns) = (node.dir.clone(), node.merged(), node.netns.clone());
        proc::check(Command::new("umount").arg(&merged), STEP)?;
        for layer in ["upper", "work", "ignition"] {
            remove_tree(&dir.join(layer))?;
            fs::create_dir_all(dir.join(layer))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.image.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        proc::check(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&merged),
            STEP,
        )?;
        ignition::prepare_root(&merged)?;
        // Ignition fetches over the node's cable, which the kill unplugged.
        self.set_link(name, true)?;
        let outcome = Stages::new(dir.join("ignition"))?.apply(&merged, config, Some(&netns));
        self.set_link(name, false)?;
        if !outcome.success {
            bail!("Ignition failed on rebuilt {name}:\n{}", outcome.log);
        }
        Ok(())
    }

    /// Unplug a node's cable (`up == false`) or plug it back in.
    pub fn set_link(&self, name: &str, up: bool) -> Result<()> {
        let node = self.node(name)?;
        ip(&[
            "-n",
            &self.netns(),
            "link",
            "set",
            &node.cable(&self.id),
            if up { "up" } else { "down" },
        ])
    }

    /// Slow down what reaches a node on one TCP port (as source or
    /// destination port: both directions of its connections), to `rate`
    /// (tc's units, such as `256kbit`); None lifts it. Everything else
    /// passes at full speed. On the host side of the node's cable, so the
    /// node itself sees nothing but a slow link: HTB with a u32 filter
    /// (this kernel has no netem).
    pub fn throttle(&self, name: &str, port: u16, rate: Option<&str>) -> Result<()> {
        let node = self.node(name)?;
        let (ns, cable) = (self.netns(), node.cable(&self.id));
        let tc = |args: &[&str]| {
            proc::check(Command::new("tc").args(["-n", &ns]).args(args), STEP).map(|_| ())
        };
        let Some(rate) = rate else {
            return tc(&["qdisc", "del", "dev", &cable, "root"]);
        };
        tc(&[
            "qdisc", "add", "dev", &cable, "root", "handle", "1:", "htb", "default", "10",
        ])?;
        tc(&[
            "class", "add", "dev", &cable, "parent", "1:", "classid", "1:10", "htb", "rate",
            "10gbit",
        ])?;
        tc(&[
            "class", "add", "dev", &cable, "parent", "1:", "classid", "1:20", "htb", "rate", rate,
            "ceil", rate,
        ])?;
        let port = port.to_string();
        for direction in ["sport", "dport"] {
            tc(&[
                "filter", "add", "dev", &cable, "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", direction, &port, "0xffff", "flowid", "1:20",
            ])?;
        }
        Ok(())
    }

    /// The node's root as seen from the host (its overlay).
    pub fn root(&self, name: &str) -> Result<PathBuf> {
        Ok(self.node(name)?.merged())
    }

    /// Memory in use by a running node's processes (cgroup-free: the sum of
    /// RSS over its PID namespace), in KiB.
    pub fn rss_kib(&self, name: &str) -> Result<u64> {
        let out = self.sh(
            name,
            "cat /proc/[0-9]*/status 2>/dev/null | grep '^VmRSS:' || true",
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum())
    }

    /// Stop everything and remove every trace. Also done on drop.
    pub fn teardown(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut nspawn) = node.nspawn.take() {
                if let Some(&leader) = proc::children(nspawn.id() as i32).first() {
                    if let Some(pid) = ProcessId::of(leader) {
                        pid.kill();
                    }
                }
                wait_or_kill(&mut nspawn, Duration::from_secs(20));
            }
        }
        self.server = None;
        self.metadata = None;
        self.upstream = None;
        // Loop devices go in `clear`, which finds them by backing file.
        self.volumes.clear();
        clear(&self.dir, &self.id);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn wait_or_kill(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Clear every lab whose owner process is gone.
pub fn clear_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = fs::read_to_string(entry.path().join("owner"))
            .ok()
            .and_then(|t| ProcessId::decode(&t));
        if owner.is_some_and(|o| o.alive()) {
            continue;
        }
        // No owner yet: a lab being created right now, unless it is old.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60));
        if owner.is_none() && young {
            continue;
        }
        // A staging directory (".ID-new") left by a crash names lab ID.
        let id = name
            .trim_start_matches('.')
            .trim_end_matches("-new")
            .to_owned();
        clear(&entry.path(), &id);
    }
}

/// Remove one lab's processes, mounts, loop devices, namespaces and files.
fn clear(dir: &Path, id: &str) {
    // Helpers the lab ran (servers in its namespaces): their groups.
    for line in fs::read_to_string(dir.join("helpers"))
        .unwrap_or_default()
        .lines()
    {
        if let Some(leader) = ProcessId::decode(line).filter(|p| p.alive()) {
            leader.kill_group();
        }
    }
    // Recorded nspawn PIDs: kill the container (its init) and nspawn.
    for line in fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
    {
        if let Some(nspawn) = ProcessId::decode(line).filter(|p| p.alive()) {
            for child in proc::children(nspawn.pid) {
                if let Some(c) = ProcessId::of(child) {
                    c.kill();
                }
            }
            nspawn.kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            while nspawn.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Mounts under the lab directory, deepest first.
    let dir_text = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(unescape_mount))
        .filter(|m| m.starts_with(&format!("{dir_text}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        let _ = proc::run(Command::new("umount").arg(&mount), STEP)
            .ok()
            .filter(|o| o.status.success())
            .map_or_else(
                || proc::run(Command::new("umount").arg("-l").arg(&mount), STEP).map(|_| ()),
                |_| Ok(()),
            );
    }
    // Volumes: loop devices over files under the lab directory.
    crate::volumes::detach_all_under(dir);
    // Namespaces: the lab's own, its nodes', the Internet's hosts'.
    if let Ok(entries) = fs::read_dir("/run/netns") {
        let own = format!("{NS_PREFIX}{id}");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == own || name.starts_with(&format!("{own}-")) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    remove_cgroups(id);
    let _ = remove_tree(dir);
}

/// The cgroup hierarchies nodes get their own group in: every mounted
/// one that systemd tracks processes with (`name=systemd` and the unified
/// one on a hybrid host; the root on a pure cgroup2 host).
fn cgroup_roots() -> Vec<PathBuf> {
    [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.join("cgroup.procs").is_file())
    .collect()
}

/// Create node `index`'s cgroups; their `cgroup.procs` files.
fn node_cgroups(lab_id: &str, index: usize) -> Result<Vec<std::ffi::CString>> {
    cgroup_roots()
        .into_iter()
        .map(|root| {
            let dir = root.join("site-lab").join(format!("{lab_id}-{index}"));
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
            let procs = dir.join("cgroup.procs");
            Ok(std::ffi::CString::new(
                procs.into_os_string().into_encoded_bytes(),
            )?)
        })
        .collect()
}

/// Move the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Async-signal-safe: open, write, close.
fn join_cgroup(procs: &std::ffi::CStr) -> std::io::Result<()> {
    use nix::fcntl::{open, OFlag};
    let fd = open(
        procs,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: fd was just opened and is closed below, after its last use.
    let written = nix::unistd::write(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, b"0");
    let _ = nix::unistd::close(fd);
    written?;
    Ok(())
}

/// Remove a lab's cgroups, deepest first (cgroups go by rmdir only).
fn remove_cgroups(lab_id: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&entry.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for root in cgroup_roots() {
        let Ok(entries) = fs::read_dir(root.join("site-lab")) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{lab_id}-"))
            {
                rmdir_tree(&entry.path());
            }
        }
    }
}

/// Remove one node's cgroups (they go once its processes have exited,
/// which a killed node's do within moments).
pub(crate) fn remove_node_cgroups(lab_id: &str, index: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for root in cgroup_roots() {
        let dir = root.join("site-lab").join(format!("{lab_id}-{index}"));
        while dir.exists() {
            remove_tree_of_cgroups(&dir);
            if !dir.exists() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn remove_tree_of_cgroups(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree_of_cgroups(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// /proc/mounts escapes spaces and other bytes as octal.
fn unescape_mount(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A bridge `name` in namespace `ns`, with the namespace's address on it.
pub(crate) fn bridge(ns: &str, name: &str, cidr: &str) -> Result<()> {
    ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
    ip(&["-n", ns, "addr", "add", cidr, "dev", name])?;
    ip(&["-n", ns, "link", "set", name, "up"])
}

/// `sysctl -w setting` inside namespace `ns`.
pub(crate) fn sysctl(ns: &str, setting: &str) -> Result<()> {
    proc::check(
        Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", setting]),
        STEP,
    )
    .map(|_| ())
}

/// A new network namespace with its loopback up.
pub(crate) fn new_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// An address on `dev` in namespace `ns`, and a default route via
/// `gateway` when given.
pub(crate) fn configure(ns: &str, dev: &str, cidr: &str, gateway: Option<Ipv4Addr>) -> Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    if let Some(gateway) = gateway {
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ])?;
    }
    Ok(())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    proc::check(Command::new("ip").args(args), STEP).map(|_| ())
}

pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")?;
    file.sync_all()?;
    Ok(())
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        return nanos ^ std::process::id();
    }
    u32::from_le_bytes(bytes)
}
