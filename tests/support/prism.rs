//! Prism (the OpenAPI tool) in proxy mode with `--errors`, in front of a
//! server of ours: every request and answer is checked against the
//! official DigitalOcean specification in `../shared/specs`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::child::{spawn_announcing, Announced};

/// The specs: `$SITE_SPECS`, else `../shared/specs` beside the checkout.
pub fn specs_dir() -> PathBuf {
    std::env::var_os("SITE_SPECS")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::site::repo().join("../shared/specs"))
}

/// Prism's command: `$PRISM_BIN`, else where `make test-deps` installs it.
pub fn prism_bin() -> PathBuf {
    std::env::var_os("PRISM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::site::repo().join("target/tools/prism/node_modules/.bin/prism"))
}

/// Why these tests cannot run here, if they cannot: one line saying what
/// is missing and how to get it, for `support::skip`. (Both reasons name
/// Prism: callers that pass on only Prism's reasons to `skip`, which fails
/// in CI, pass on a missing spec too.)
pub fn skip_reason() -> Option<String> {
    let spec = specs_dir().join("digitalocean/DigitalOcean-public.v2.yaml");
    if !spec.is_file() {
        return Some(format!(
            "skipping: the DigitalOcean spec Prism checks against is not at {} (set \
             SITE_SPECS to the specs folder; the default is ../shared/specs beside the checkout)",
            spec.display()
        ));
    }
    if !prism_bin().is_file() {
        return Some(format!(
            "skipping: Prism is not at {} (run `make test-deps`, or set PRISM_BIN)",
            prism_bin().display()
        ));
    }
    None
}

pub struct Prism {
    pub base: String,
    /// Ends Prism when dropped.
    server: Announced,
}

impl Prism {
    /// Start Prism proxying to `upstream` on a port it picks, and wait (at
    /// most 90 s) until it says it is listening; it needs about 15 s to
    /// load the spec.
    pub fn start(upstream: &str) -> Prism {
        Self::start_in(upstream, None)
    }

    /// As `start`, inside the network namespace `netns` when given (its
    /// loopback, where `upstream` must be too).
    pub fn start_in(upstream: &str, netns: Option<&str>) -> Prism {
        let spec = specs_dir().join("digitalocean/DigitalOcean-public.v2.yaml");
        let mut command = Command::new(prism_bin());
        command.args(["proxy"]).arg(&spec).arg(upstream).args([
            "--errors",
            "-h",
            "127.0.0.1",
            "-p",
            "0",
        ]);
        if let Some(netns) = netns {
            command = super::child::in_netns(netns, &command);
        }
        let server = spawn_announcing(
            command,
            "Prism",
            "is listening on http://127.0.0.1:",
            Duration::from_secs(90),
        );
        Prism {
            base: server.base(),
            server,
        }
    }

    /// What Prism printed so far (every request it checked, and why it
    /// refused one), for failure messages.
    pub fn log(&self) -> String {
        self.server.output()
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}
