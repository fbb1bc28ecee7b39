//! The lab: a site's nodes booted for real on one machine.
//!
//! Each node is a copy-on-write root (overlayfs over the cached lab image)
//! that the real Ignition provisions from the node's rendered config,
//! booted by `systemd-nspawn --boot` in its own network namespace, cabled
//! by a veth pair to a bridge in the lab's namespace. The firstboot binary
//! is served to Ignition over HTTP from the lab namespace, by URL and
//! sha512, as on DigitalOcean. See `images/lab/` and ARCHITECTURE §7.

pub mod cloud;
pub mod devicebus;
pub mod edge_firewall;
pub mod http;
pub mod ignition;
pub mod image;
pub mod lab;
pub mod metadata;
pub mod proc;
pub mod upstream;
pub mod volumes;

pub use lab::{Lab, LAB_SERVER};

/// Why the lab cannot run here, if it cannot: one line for a test to print.
pub fn skip_reason() -> Option<String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("skipping: the lab needs root (network namespaces, mounts, nspawn)".into());
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        // The trust tests attack nodes from outside them.
        ("nft", "nftables"),
        ("curl", "curl"),
    ] {
        if proc::which(tool).is_none() {
            return Some(format!(
                "skipping: `{tool}` not found (install Debian package `{package}`)"
            ));
        }
    }
    if ignition::ignition_binary().is_none() {
        return Some("skipping: Ignition not found (install Debian package `ignition`)".into());
    }
    None
}
