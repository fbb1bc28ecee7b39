//! `lab`: bring a site up in the lab by hand, and clean up after labs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha512};
use site_lab::{image, lab, Lab, LAB_SERVER};

/// The lab: a site's nodes booted for real on this machine (root only)
#[derive(Debug, Parser)]
#[command(name = "lab", term_width = 80)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab image if it is not cached; print its root
    Image,
    /// Boot every <host>.ign of DIR as a lab node, wait, then tear down
    ///
    /// Render a site on the `lab` image first (see examples/lab.yaml). The
    /// lab serves FIRSTBOOT where the configs fetch it. Once the nodes are
    /// up, enter one with the printed nsenter command; press Enter here to
    /// tear everything down. If this process dies instead, the next `lab`
    /// run (or `lab clean`) clears what it left.
    Up {
        /// Directory of rendered configs
        dir: PathBuf,
        /// The static firstboot binary the configs pin
        #[arg(long)]
        firstboot: PathBuf,
    },
    /// Remove what labs whose process is gone left behind
    Clean,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("lab: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(reason) = site_lab::skip_reason() {
        bail!("{}", reason.trim_start_matches("skipping: "));
    }
    match cli.command {
        Cmd::Image => {
            let root = image::ensure(&image::definition_path(), &mut |m| eprintln!("{m}"))?;
            println!("{}", root.display());
        }
        Cmd::Clean => {
            lab::clear_stale(&lab::labs_dir());
            eprintln!("cleared stale labs under {}", lab::labs_dir().display());
        }
        Cmd::Up { dir, firstboot } => up(&dir, &firstboot)?,
    }
    Ok(())
}

fn up(dir: &Path, firstboot: &Path) -> Result<()> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ign"))
        .collect();
    configs.sort();
    if configs.is_empty() {
        bail!(
            "{} holds no .ign files; run `builder render` on a lab site first",
            dir.display()
        );
    }
    let bytes =
        std::fs::read(firstboot).with_context(|| format!("cannot read {}", firstboot.display()))?;
    let hash = format!("sha512-{}", hex::encode(Sha512::digest(&bytes)));
    let path = served_path(&configs[0], &hash)?;

    let image = image::ensure(&image::definition_path(), &mut |m| eprintln!("{m}"))?;
    let mut lab = Lab::create(&image)?;
    // The lab image's catalog runs the FreeIPA simulator where Fedora
    // CoreOS runs the FreeIPA container.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sim = std::env::var_os("BUILDER_TEST_IPA_SIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/debug/ipa-sim"));
    let api = std::env::var_os("FREEIPA_API_TXT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/specs/freeipa/API.txt"));
    for (file, what) in [
        (&sim, "`cargo build -p ipa-sim`"),
        (&api, "../shared/specs/freeipa"),
    ] {
        if !file.is_file() {
            bail!("{} is missing ({what})", file.display());
        }
    }
    lab.bind_into_nodes(&sim, "/usr/local/bin/ipa-sim");
    lab.bind_into_nodes(&sim, "/usr/sbin/ipa-client-install");
    lab.bind_into_nodes(&sim, "/usr/lib/certmonger/ipa-submit");
    lab.bind_into_nodes(&api, "/usr/local/share/ipa-sim/API.txt");
    lab.serve(vec![(path, bytes)])?;
    for config in &configs {
        let name = config
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        eprintln!("provisioning {name} with Ignition");
        lab.add_node(&name, config)?;
    }
    let names: Vec<String> = lab.nodes().map(|n| n.name.clone()).collect();
    for name in &names {
        lab.boot(name)?;
    }
    for name in &names {
        let state = lab.wait_booted(name, Duration::from_secs(180))?;
        let node = lab.node(name)?;
        println!(
            "{name:<12} {:<14} {state:<10} nsenter -t {} -a bash",
            node.address,
            lab.leader(name)?
        );
    }
    eprintln!("lab {} is up; press Enter to tear it down", lab.id());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    lab.teardown();
    Ok(())
}

/// The path under the lab server where a config fetches the binary with
/// `hash`; refuses configs that pin another binary or another server.
fn served_path(config: &Path, hash: &str) -> Result<String> {
    let text = std::fs::read_to_string(config)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config.display()))?;
    let files = value["storage"]["files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let remote = files
        .iter()
        .find(|f| f["contents"]["verification"]["hash"].is_string())
        .with_context(|| format!("{} fetches no file by hash", config.display()))?;
    let pinned = remote["contents"]["verification"]["hash"]
        .as_str()
        .unwrap_or_default();
    if pinned != hash {
        bail!(
            "{} pins firstboot {pinned}, not the given binary's {hash}; render again",
            config.display()
        );
    }
    let source = remote["contents"]["source"].as_str().unwrap_or_default();
    let prefix = format!("http://{LAB_SERVER}");
    match source.strip_prefix(&prefix) {
        Some(path) if path.starts_with('/') => Ok(path.to_owned()),
        _ => bail!(
            "{} fetches firstboot from {source}, not from the lab server {prefix}",
            config.display()
        ),
    }
}
