//! `firstboot guard-allow`: a unit the metadata guard lets through (see
//! `builder/src/render/guard.rs`) fills its own chain when it starts, run
//! from its `ExecStartPre`, so inside its own cgroup. The chain then
//! accepts sockets of this cgroup only: nftables' `socket cgroupv2`
//! match, which resolves the path to the cgroup's identity when the rule
//! is loaded, so a cgroup made later under the same name (the unit
//! started again) needs the chain filled again, as this does each time.
//!
//! The match compares the socket's ancestor at a given depth of the whole
//! cgroup hierarchy; a unit sees its own cgroup relative to its cgroup
//! namespace (a container's, in the lab), so the depth is not known from
//! inside. The chain holds one rule per depth from what is seen to
//! [`EXTRA_DEPTH`] below it: a cgroup's identity is unique, so only the
//! true depth ever matches.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use node_contract::guard::{chain_for, TABLE};

/// How much deeper than it looks a unit's cgroup may be (nested
/// containers, slices of the lab's own).
const EXTRA_DEPTH: usize = 16;

/// Where this process's unified (v2) cgroup is, relative to
/// /sys/fs/cgroup as nftables resolves it, from `/proc/self/cgroup`'s
/// text; `unified`: a hybrid host (cgroup v1 controllers, v2 mounted at
/// /sys/fs/cgroup/unified), as the lab's may be; Fedora CoreOS is pure v2.
pub fn own_cgroup(proc_self_cgroup: &str, unified: bool) -> Result<(String, String)> {
    let path = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("this process has no cgroup v2 (no `0::` line in /proc/self/cgroup)")?
        .trim();
    let relative = path.trim_start_matches('/');
    let unit = relative.rsplit('/').next().unwrap_or_default();
    if !node_contract::guard::is_service_name(unit) {
        bail!("not run by a systemd service (its cgroup is `{path}`): run it from the unit's ExecStartPre");
    }
    let nft_path = if unified {
        format!("unified/{relative}")
    } else {
        relative.to_owned()
    };
    Ok((unit.to_owned(), nft_path))
}

/// The nft script that fills `unit`'s chain for the cgroup at `nft_path`.
pub fn script(unit: &str, nft_path: &str, seen_depth: usize) -> String {
    let chain = chain_for(unit);
    let mut out = format!("flush chain inet {TABLE} {chain}\n");
    for level in seen_depth..=seen_depth + EXTRA_DEPTH {
        out.push_str(&format!(
            "add rule inet {TABLE} {chain} socket cgroupv2 level {level} \"{nft_path}\" accept\n"
        ));
    }
    out
}

/// Fill this unit's chain.
pub fn allow_self() -> Result<()> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.procs").is_file();
    let (unit, nft_path) = own_cgroup(&text, unified)?;
    let depth = nft_path.split('/').count() - usize::from(unified);
    let script = script(&unit, &nft_path, depth);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .context("cannot feed nft")?;
    let out = child.wait_with_output().context("nft")?;
    if !out.status.success() {
        bail!(
            "the metadata guard does not let {unit} through (its chain {} is not in table {TABLE}, \
             or the guard is not loaded): {}",
            chain_for(&unit),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!("metadata guard: {unit} may reach the metadata service");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_units_cgroup_is_found_on_pure_and_hybrid_hosts() {
        let pure = "0::/system.slice/firstboot.service\n";
        assert_eq!(
            own_cgroup(pure, false).unwrap(),
            (
                "firstboot.service".into(),
                "system.slice/firstboot.service".into()
            )
        );
        let hybrid = "12:pids:/system.slice/firstboot.service\n1:name=systemd:/system.slice/firstboot.service\n0::/system.slice/firstboot.service\n";
        assert_eq!(
            own_cgroup(hybrid, true).unwrap().1,
            "unified/system.slice/firstboot.service"
        );
        // A shell's scope or a user session is no unit the guard names.
        assert!(own_cgroup("0::/user.slice/user-0.slice/session-1.scope\n", false).is_err());
        assert!(own_cgroup("1:name=systemd:/\n", false).is_err());
    }

    #[test]
    fn the_script_flushes_then_matches_every_depth_below() {
        let text = script("firstboot.service", "system.slice/firstboot.service", 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "flush chain inet firstboot_guard allow_firstboot_service"
        );
        assert_eq!(lines.len(), 2 + EXTRA_DEPTH);
        assert!(lines[1].ends_with("level 2 \"system.slice/firstboot.service\" accept"));
        assert!(lines
            .last()
            .unwrap()
            .contains(&format!("level {} ", 2 + EXTRA_DEPTH)));
    }
}
