//! Lab nodes as a cloud's droplets: what a lab cloud (a fake cloud API
//! whose droplets boot as lab nodes) asks of the lab.
//!
//! - The **Internet**: a second bridge in the lab namespace, where every
//!   droplet has its public address and where hosts of the Internet (the
//!   operator's machine, an attacker) are cabled in ([`Lab::add_internet_host`]).
//!   The lab namespace routes it to the upstream DNS and the metadata
//!   stand-in.
//! - **Droplets** ([`Lab::add_droplet`]): a public interface (`eth0`, on
//!   the Internet, configured as the platform's DHCP would) and a private
//!   one (`eth1`, on the VPC bridge, link up but *no address*: the node
//!   must find its VPC address itself, as on a platform without DHCP
//!   there), each with the MAC the cloud reports; the real Ignition
//!   applies the droplet's user data in its fetch, disks and files stages
//!   with its volumes attached.
//! - **Volumes** ([`Lab::create_volume`]): sparse files behind loop
//!   devices, under DigitalOcean's device names in the node they are
//!   attached to; attach and detach act on a running node.
//! - The **edge firewall** ([`Lab::set_edge_firewall`]): an nftables table
//!   in the lab namespace, which sees every packet between the Internet
//!   bridge's ports (bridged IPv4 goes through netfilter there).

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::ignition::{Droplet, Stages};
use crate::lab::{
    append_line, bridge, configure, ip, new_netns, sysctl, Lab, Node, NS_PREFIX, STEP,
};
use crate::proc::{self, ProcessId};
use crate::volumes::{self, Volume};

/// The Internet bridge's network and the lab namespace's address on it,
/// every droplet's default gateway.
pub const INTERNET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 100, 0), 24);
pub const INTERNET_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 1);
/// The VPC bridge's gateway (the lab namespace).
pub const VPC_GATEWAY: Ipv4Addr = crate::lab::GATEWAY;
/// The nftables table of the edge firewall, in the lab namespace.
pub const EDGE_TABLE: &str = "sitelab_edge";

/// How a droplet is cabled and what Ignition sees, as the cloud says.
#[derive(Debug, Clone)]
pub struct DropletSpec {
    /// Its public address on the Internet bridge (a /24 of [`INTERNET`]).
    pub public: Ipv4Addr,
    /// Its VPC address and the VPC's prefix length: known to the cloud,
    /// never configured by the lab.
    pub private: (Ipv4Addr, u8),
    pub public_mac: String,
    pub private_mac: String,
    /// Names of lab volumes attached at creation.
    pub volumes: Vec<String>,
    /// Bound over Ignition's /etc/hosts: names on the Internet.
    pub hosts: Option<PathBuf>,
    /// The CAs Ignition trusts for HTTPS fetches.
    pub ca_bundle: Option<PathBuf>,
}

impl Lab {
    /// The Internet bridge (`br1`), once: the lab namespace at
    /// [`INTERNET_GATEWAY`], bridged IPv4 through its netfilter hooks.
    pub fn enable_internet(&mut self) -> Result<()> {
        if self.internet {
            return Ok(());
        }
        let ns = self.netns();
        bridge(&ns, "br1", &format!("{INTERNET_GATEWAY}/{}", INTERNET.1))?;
        // The edge firewall filters bridged traffic (br_netfilter), with
        // connection tracking: a cloud firewall is stateful.
        sysctl(&ns, "net.bridge.bridge-nf-call-iptables=1")?;
        self.internet = true;
        Ok(())
    }

    /// A host on the Internet at `address` (in [`INTERNET`]): a namespace
    /// cabled to the Internet bridge, routed through the lab namespace.
    /// Its namespace (under /run/netns) is returned; teardown removes it.
    pub fn add_internet_host(&mut self, address: Ipv4Addr) -> Result<String> {
        self.enable_internet()?;
        let index = self.strangers;
        self.strangers += 1;
        let ns = format!("{NS_PREFIX}{}-i{index}", self.id);
        let cable = format!("sl{}i{index}", self.id);
        new_netns(&ns)?;
        self.cable(&ns, &cable, "eth0", None, "br1")?;
        configure(
            &ns,
            "eth0",
            &format!("{address}/{}", INTERNET.1),
            Some(INTERNET_GATEWAY),
        )?;
        Ok(ns)
    }

    /// Another address of the lab namespace on the Internet bridge, for a
    /// service of the Internet the lab stands in for (a test binds it).
    pub fn add_edge_address(&mut self, address: Ipv4Addr) -> Result<()> {
        self.enable_internet()?;
        ip(&[
            "-n",
            &self.netns(),
            "addr",
            "add",
            &format!("{address}/{}", INTERNET.1),
            "dev",
            "br1",
        ])
    }

    /// Record a helper process (the leader of its own process group) run
    /// for this lab, so that a lab cleared after its owner died ends it.
    pub fn record_helper(&self, pid: u32) -> Result<()> {
        let id = ProcessId::of(pid as i32).context("the helper has already exited")?;
        append_line(&self.dir.join("helpers"), &id.encode())
    }

    /// The lab's directory (overlays, volumes, recorded processes).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A droplet: its namespace and two cables (public `eth0`, private
    /// `eth1`), its root, and its user data (`config`) applied by the real
    /// Ignition (fetch, disks, files) with its volumes attached. Boot it
    /// next.
    pub fn add_droplet(
        &mut self,
        name: &str,
        config: &std::path::Path,
        spec: &DropletSpec,
    ) -> Result<&Node> {
        self.enable_internet()?;
        let mut attached = Vec::new();
        for volume in &spec.volumes {
            let v = self.volume(volume)?;
            if self.nodes.iter().any(|n| {
                n.volumes
                    .as_ref()
                    .is_some_and(|vs| vs.iter().any(|(v, _)| v == volume))
            }) {
                bail!("volume {volume} is already attached");
            }
            attached.push((v.name.clone(), v.minor));
        }
        let index = self.next_index(name)?;
        let node_dir = self.dir.join("nodes").join(format!("{name}-{index}"));
        self.nodes.push(Node {
            name: name.to_owned(),
            address: spec.private.0,
            public: Some(spec.public),
            index,
            netns: format!("{NS_PREFIX}{}-{index}", self.id),
            dir: node_dir.clone(),
            nspawn: None,
            volumes: Some(attached.clone()),
        });
        let node = self.nodes.last().expect("just pushed");
        let (ns, cable) = (node.netns.clone(), node.cable(&self.id));
        new_netns(&ns)?;
        self.cable(
            &ns,
            &format!("{cable}p"),
            "eth0",
            Some(&spec.public_mac),
            "br1",
        )?;
        self.cable(&ns, &cable, "eth1", Some(&spec.private_mac), "br0")?;
        // The public side as the platform's DHCP gives it; the VPC side
        // gets nothing (the node asks the metadata service).
        configure(
            &ns,
            "eth0",
            &format!("{}/{}", spec.public, INTERNET.1),
            Some(INTERNET_GATEWAY),
        )?;

        self.mount_root(&node_dir)
            .with_context(|| format!("cannot prepare {name}'s root for Ignition"))?;
        self.publish_devices(name)?;
        let node = self.node(name)?;
        let stages = Stages::new(node_dir.join("ignition"))
            .with_context(|| format!("cannot set up Ignition's state for {name}"))?;
        let droplet = Droplet {
            netns: ns,
            hosts: spec.hosts.clone(),
            ca_bundle: spec.ca_bundle.clone(),
            volumes: attached,
        };
        let outcome = stages.apply_droplet(&node.merged(), config, &droplet);
        fs::write(node_dir.join("ignition.log"), &outcome.log)?;
        if !outcome.success {
            bail!("Ignition failed on {name}:\n{}", outcome.log);
        }
        Ok(node)
    }

    /// Stop a node and remove it: its processes, root, namespace and
    /// files. Its volumes are detached (a deleted droplet's volumes stay).
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        self.kill(name)?;
        let position = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node `{name}` in the lab"))?;
        let node = self.nodes.remove(position);
        let merged = node.merged();
        let mounted = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == merged.to_str());
        if mounted {
            proc::check(Command::new("umount").arg(&merged), STEP)
                .with_context(|| format!("cannot unmount {name}'s root"))?;
        }
        if std::path::Path::new("/run/netns")
            .join(&node.netns)
            .exists()
        {
            ip(&["netns", "del", &node.netns])?;
        }
        crate::lab::remove_node_cgroups(&self.id, node.index);
        crate::image::remove_tree(&node.dir)
            .with_context(|| format!("cannot remove {}", node.dir.display()))?;
        Ok(())
    }

    /// A new volume of `size_gib` GiB (a sparse file and a loop device).
    pub fn create_volume(&mut self, name: &str, size_gib: u64) -> Result<&Volume> {
        if self.volumes.iter().any(|v| v.name == name) {
            bail!("the lab already has a volume `{name}`");
        }
        let volume = Volume::create(&self.dir.join("volumes"), name, size_gib)?;
        self.volumes.push(volume);
        Ok(self.volumes.last().expect("just pushed"))
    }

    pub fn volume(&self, name: &str) -> Result<&Volume> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .with_context(|| format!("no volume `{name}` in the lab"))
    }

    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.iter()
    }

    /// The node a volume is attached to, if any.
    pub fn attached_to(&self, volume: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| {
                n.volumes
                    .as_ref()
                    .is_some_and(|vs| vs.iter().any(|(v, _)| v == volume))
            })
            .map(|n| n.name.as_str())
    }

    /// Attach a volume to a droplet: it appears under its DigitalOcean
    /// name in the node (at once if the node runs, else at its boot).
    pub fn attach_volume(&mut self, volume: &str, node: &str) -> Result<()> {
        if let Some(other) = self.attached_to(volume) {
            bail!("volume {volume} is attached to {other}");
        }
        let minor = self.volume(volume)?.minor;
        let entry = self.node_mut(node)?;
        let Some(volumes) = entry.volumes.as_mut() else {
            bail!("{node} is no droplet: it has no volumes");
        };
        volumes.push((volume.to_owned(), minor));
        self.publish_devices(node)?;
        if self.node(node)?.nspawn.is_some() {
            self.in_node_dev(
                node,
                &format!("[ -b /dev/loop{minor} ] || mknod /dev/loop{minor} b 7 {minor}"),
            )?;
        }
        Ok(())
    }

    /// Detach a volume from whatever node has it: its name disappears
    /// there (and its device, unless something in the node holds it).
    pub fn detach_volume(&mut self, volume: &str) -> Result<()> {
        let Some(node) = self.attached_to(volume).map(str::to_owned) else {
            return Ok(());
        };
        let minor = self.volume(volume)?.minor;
        if let Some(volumes) = self.node_mut(&node)?.volumes.as_mut() {
            volumes.retain(|(v, _)| v != volume);
        }
        self.publish_devices(&node)?;
        if self.node(&node)?.nspawn.is_some() {
            // A volume still mounted in the node keeps its device there,
            // as a kernel keeps a vanished disk's mounts.
            let leader = self.leader(&node)?;
            let mounted = fs::read_to_string(format!("/proc/{leader}/mountinfo"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(&format!("7:{minor}")));
            if !mounted {
                self.in_node_dev(&node, &format!("rm -f /dev/loop{minor}"))?;
            }
        }
        Ok(())
    }

    /// Delete a detached volume: its loop device and file.
    pub fn delete_volume(&mut self, volume: &str) -> Result<()> {
        if let Some(node) = self.attached_to(volume) {
            bail!("volume {volume} is attached to {node}; detach it first");
        }
        let position = self
            .volumes
            .iter()
            .position(|v| v.name == volume)
            .with_context(|| format!("no volume `{volume}` in the lab"))?;
        self.volumes[position].delete()?;
        self.volumes.remove(position);
        Ok(())
    }

    /// Load (or replace) the edge firewall: `rules` is the body of the
    /// table [`EDGE_TABLE`] (family inet) in the lab namespace; empty
    /// removes the table. Replaced atomically.
    pub fn set_edge_firewall(&self, rules: &str) -> Result<()> {
        let mut script = format!("table inet {EDGE_TABLE} {{}}\ndelete table inet {EDGE_TABLE}\n");
        if !rules.trim().is_empty() {
            script.push_str(&format!("table inet {EDGE_TABLE} {{\n{rules}\n}}\n"));
        }
        let file = self.dir.join("edge.nft");
        fs::write(&file, &script)?;
        proc::check(
            Command::new("ip")
                .args(["netns", "exec", &self.netns(), "nft", "-f"])
                .arg(&file),
            STEP,
        )
        .with_context(|| format!("cannot load the edge firewall:\n{script}"))?;
        Ok(())
    }

    /// Write the node's `/dev/disk` as the lab keeps it for a droplet:
    /// `by-id/scsi-0DO_Volume_<name>` → its loop device, per attached
    /// volume. The directory is bound into the running node, so this is
    /// what it sees.
    fn publish_devices(&self, name: &str) -> Result<()> {
        let node = self.node(name)?;
        let Some(volumes) = &node.volumes else {
            return Ok(());
        };
        let by_id = node.dir.join("disk/by-id");
        fs::create_dir_all(&by_id)?;
        for entry in fs::read_dir(&by_id)?.flatten() {
            fs::remove_file(entry.path())?;
        }
        for (volume, minor) in volumes {
            let link = volumes::by_id(volume);
            let file = link.rsplit('/').next().unwrap_or_default();
            std::os::unix::fs::symlink(format!("../../loop{minor}"), by_id.join(file))?;
        }
        Ok(())
    }

    /// A shell command in a running node's mount namespace (its `/dev`).
    fn in_node_dev(&self, name: &str, script: &str) -> Result<()> {
        let leader = self.leader(name)?;
        proc::check(
            Command::new("nsenter").args([
                "-t",
                &leader.to_string(),
                "-m",
                "--",
                "/bin/sh",
                "-c",
                script,
            ]),
            STEP,
        )
        .with_context(|| format!("{name}: `{script}`"))?;
        Ok(())
    }
}
