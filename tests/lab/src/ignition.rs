//! Applies an Ignition config with the real Ignition binary (Debian's
//! `ignition` package, 2.14) to a scratch root directory.
//!
//! Ignition normally runs in the initramfs against `/sysroot`; here only its
//! `fetch` and `files` stages run, with `-platform file` and `-root` pointing
//! at a temporary directory, so tests can inspect exactly what Ignition would
//! write on a real node. Nothing is written outside temporary directories:
//! the config cache, state file and Go's temp files all go to a private
//! directory next to the root.
//!
//! Known leaks from the host that cannot be redirected by flags (harmless on
//! a build machine, but worth knowing when a result looks odd):
//! - the `fetch` stage reads `/proc/cmdline` and would honour an
//!   `ignition.config.url=` there;
//! - both stages merge host configs from `/usr/lib/ignition/base.d`,
//!   `/usr/lib/ignition/base.platform.d/file` and `/usr/lib/ignition/user.ign`
//!   if they exist (Debian's package ships none).

use std::fs;
use std::io::{self, Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's package puts the binary (it is meant for dracut, not PATH).
const FALLBACK_IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";
const FALLBACK_VALIDATE: &str = "/usr/bin/ignition-validate";

/// Upper bound for one Ignition invocation. Ignition retries some network
/// errors forever by default, so a broken test must not hang the suite.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The files `dpkg` says the `ignition` package installed (empty if dpkg or
/// the package is missing). Cached: every test asks.
fn dpkg_files() -> &'static [PathBuf] {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let Ok(out) = Command::new("dpkg")
            .args(["-L", "ignition"])
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect()
    })
}

/// Finds an installed file of the `ignition` package by file name, falling
/// back to the path Debian uses today.
fn find_installed(name: &str, fallback: &str) -> Option<PathBuf> {
    dpkg_files()
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name) && p.is_file())
        .cloned()
        .or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.is_file()))
}

/// The Ignition binary itself.
pub fn ignition_binary() -> Option<PathBuf> {
    find_installed("ignition", FALLBACK_IGNITION)
}

/// `ignition-validate`, the offline config checker.
pub fn ignition_validate() -> Option<PathBuf> {
    find_installed("ignition-validate", FALLBACK_VALIDATE)
}

/// The effective uid, from `/proc` so the harness needs no libc bindings.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Why Ignition tests cannot run here, if they cannot. Tests print this one
/// line and return early.
pub fn skip_reason() -> Option<String> {
    if ignition_binary().is_none() {
        return Some(format!(
            "skipping: Ignition binary not found (looked in `dpkg -L ignition` and \
             {FALLBACK_IGNITION}) (install Debian package `ignition`)"
        ));
    }
    if ignition_validate().is_none() {
        return Some(
            "skipping: ignition-validate not found (install Debian package `ignition`)".into(),
        );
    }
    // The files stage runs `useradd --root`, which chroot()s, and chowns what
    // it writes; both need root.
    if effective_uid() != Some(0) {
        return Some(
            "skipping: applying Ignition configs needs root (useradd --root chroots) \
             (run as root with Debian package `ignition` installed)"
                .into(),
        );
    }
    None
}

/// A no-op stand-in for SELinux's `setfiles`. Debian's Ignition 2.14 always
/// ends the files stage by relabelling what it wrote (even with
/// `SELINUX=disabled`) and fails if `setfiles` is missing. It feeds the
/// patterns on stdin, so drain them rather than risk an EPIPE.
const SETFILES_STUB: &str = "#!/bin/sh\n\
# Test stand-in for setfiles(8): the scratch root has no SELinux policy.\n\
exec cat >/dev/null\n";

/// A stand-in for `udevadm`: the disks stage ends with `udevadm settle`,
/// waiting for udev to process the new filesystems' events. The host runs
/// no udev, so there is nothing to wait for.
const UDEVADM_STUB: &str = "#!/bin/sh\n\
# Lab stand-in for udevadm(8): the host runs no udev, nothing to settle.\n\
exit 0\n";

/// A fresh, minimal root directory for Ignition to write into, plus private
/// state beside it.
///
/// Layout inside the temp dir: `root/` is what `-root` points at; `ignition/`
/// holds the config cache, state file, Go temp dir and the `setfiles` stub.
pub struct ScratchRoot {
    dir: TempDir,
    root: PathBuf,
    work: PathBuf,
    stages: Stages,
}

/// Ignition's private state for one root: config cache, state file, Go's
/// temp dir and the `setfiles` stand-in, all under `work`.
pub struct Stages {
    work: PathBuf,
}

impl ScratchRoot {
    /// Creates the root with just what the fetch and files stages need.
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ignition-root-")
            .tempdir()?;
        let root = dir.path().join("root");
        let work = dir.path().join("ignition");
        fs::create_dir(&root)?;
        let stages = Stages::new(work.clone())?;
        let scratch = ScratchRoot {
            dir,
            root,
            work,
            stages,
        };

        // User creation: Ignition runs `useradd --root <root>`, which chroots
        // and takes `/etc/.pwd.lock`, so strictly only `/etc` must exist
        // (without it: "cannot lock /etc/passwd"). Seed the shadow-suite
        // files anyway so the result looks like a real system: with no
        // /etc/shadow, useradd would put the password hash in /etc/passwd.
        // There is no login.defs or /etc/default/useradd, so useradd uses its
        // built-in defaults: uid from 1000, primary group 100 (hence the
        // `users` group), shell /bin/bash, and it creates /home itself.
        scratch.seed("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
        scratch.seed("/etc/group", "root:x:0:\nusers:x:100:\n", 0o644)?;
        scratch.seed("/etc/shadow", "root:*::0:99999:7:::\n", 0o600)?;
        scratch.seed("/etc/gshadow", "root:*::\nusers:*::\n", 0o600)?;

        // Relabelling: Ignition reads SELINUXTYPE from the root's config to
        // pick the policy's file_contexts for setfiles, and fails the stage
        // if the file is missing. Its SELINUX= value is ignored.
        prepare_root(&scratch.root)?;
        Ok(scratch)
    }

    /// The directory passed as Ignition's `-root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps an absolute node path (`/etc/hostname`) into the scratch root.
    pub fn path(&self, abs: &str) -> PathBuf {
        assert!(abs.starts_with('/'), "node path must be absolute: {abs}");
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Permission bits (including setuid/setgid/sticky) of a node path.
    /// Panics with the path if it does not exist, which is what a test wants.
    pub fn mode(&self, abs: &str) -> u32 {
        let p = self.path(abs);
        match fs::metadata(&p) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(e) => panic!("cannot stat {abs} ({}): {e}", p.display()),
        }
    }

    /// Contents of a node path as text; panics with the path if unreadable.
    pub fn read(&self, abs: &str) -> String {
        let p = self.path(abs);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("cannot read {abs} ({}): {e}", p.display()))
    }

    /// Writes a config next to (not inside) the root and returns its path,
    /// so a test needs no second temp dir.
    pub fn write_config(&self, config: impl AsRef<[u8]>) -> io::Result<PathBuf> {
        let p = self.work.join("config.ign");
        fs::write(&p, config)?;
        Ok(p)
    }

    /// The temp dir holding both the root and Ignition's private state.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    fn seed(&self, abs: &str, contents: &str, mode: u32) -> io::Result<()> {
        let p = self.path(abs);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, contents)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
    }
}

impl Stages {
    /// Make the private state directory.
    pub fn new(work: PathBuf) -> io::Result<Stages> {
        for d in [&work, &work.join("bin"), &work.join("tmp")] {
            fs::create_dir_all(d)?;
        }
        for (name, body) in [("setfiles", SETFILES_STUB), ("udevadm", UDEVADM_STUB)] {
            let stub = work.join("bin").join(name);
            fs::write(&stub, body)?;
            fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))?;
        }
        Ok(Stages { work })
    }

    /// Run the fetch stage then the files stage of `config` against `root`,
    /// inside network namespace `netns` when given, stopping at the first
    /// failing stage. Each stage is killed after [`TIMEOUT`].
    pub fn apply(&self, root: &Path, config: &Path, netns: Option<&str>) -> ApplyOutcome {
        let runner = match netns {
            Some(ns) => Runner::Netns(ns),
            None => Runner::Host,
        };
        self.run_stages(root, config, &["fetch", "files"], &runner)
    }

    /// Run the stages a droplet's first boot runs (fetch, disks, files) as
    /// if inside the droplet: in its network namespace and a private mount
    /// namespace that holds what the droplet's initramfs would (see
    /// [`Droplet`]). Each stage is killed after [`TIMEOUT`].
    pub fn apply_droplet(&self, root: &Path, config: &Path, droplet: &Droplet) -> ApplyOutcome {
        let script = self.work.join("droplet.sh");
        let bus_dir = self.work.join("bus");
        let plugged = droplet
            .volumes
            .iter()
            .map(|(name, _)| crate::volumes::by_id(name))
            .collect();
        if let Err(e) = fs::write(&script, droplet.script(&bus_dir)) {
            return ApplyOutcome {
                success: false,
                log: format!("cannot write {}: {e}\n", script.display()),
            };
        }
        // Ignition's disks stage waits on systemd for the devices; the lab
        // answers for the host, which has no systemd (see devicebus).
        let bus = match crate::devicebus::DeviceBus::start(&bus_dir, plugged) {
            Ok(bus) => bus,
            Err(e) => {
                return ApplyOutcome {
                    success: false,
                    log: format!(
                        "cannot start the device bus in {}: {e}\n",
                        bus_dir.display()
                    ),
                }
            }
        };
        let runner = Runner::Droplet {
            netns: &droplet.netns,
            script: &script,
            ca_bundle: droplet.ca_bundle.as_deref(),
        };
        let mut outcome = self.run_stages(root, config, &["fetch", "disks", "files"], &runner);
        let started = bus.started();
        drop(bus);
        if !started.is_empty() {
            outcome.log.push_str(&format!(
                "=== devices Ignition waited for: {}\n",
                started.join(", ")
            ));
        }
        outcome
    }

    fn run_stages(
        &self,
        root: &Path,
        config: &Path,
        stages: &[&str],
        runner: &Runner,
    ) -> ApplyOutcome {
        let mut log = String::new();
        let Some(ignition) = ignition_binary() else {
            log.push_str("Ignition binary not found (install Debian package `ignition`)\n");
            return ApplyOutcome {
                success: false,
                log,
            };
        };
        let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        // The fetch stage reuses an existing cache instead of reading the
        // config again, so a second apply would re-apply the first config.
        for stale in [self.cache_file(), self.state_file()] {
            if let Err(e) = fs::remove_file(&stale) {
                if e.kind() != io::ErrorKind::NotFound {
                    log.push_str(&format!("cannot remove {}: {e}\n", stale.display()));
                    return ApplyOutcome {
                        success: false,
                        log,
                    };
                }
            }
        }
        for stage in stages {
            let cmd = self.stage_command(root, &ignition, &config, stage, runner);
            if !run_bounded(cmd, &format!("ignition -stage {stage}"), &mut log) {
                return ApplyOutcome {
                    success: false,
                    log,
                };
            }
        }
        ApplyOutcome { success: true, log }
    }

    /// One Ignition stage against this root. Every path Ignition would
    /// otherwise write outside `-root` is pointed into the private dir, which
    /// is also what keeps parallel tests apart:
    /// - `-config-cache` (default /run/ignition.json): the fetch stage writes
    ///   the merged config there and the files stage reads it back;
    /// - `-state-file` (default /run/ignition/state);
    /// - `-neednet` (default /run/ignition/neednet; only fetch-offline
    ///   writes it, set for completeness);
    /// - `TMPDIR`: Go creates the cache's temp file in os.TempDir() and
    ///   renames it into place, which would fail across filesystems.
    fn stage_command(
        &self,
        root: &Path,
        ignition: &Path,
        config: &Path,
        stage: &str,
        runner: &Runner,
    ) -> Command {
        // In a network namespace, fetches go out as a node's would.
        let mut cmd = match runner {
            Runner::Netns(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(ignition);
                c
            }
            Runner::Droplet {
                netns,
                script,
                ca_bundle,
            } => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}"))
                    .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
                    .arg("/bin/sh")
                    .arg(script)
                    .arg(stage)
                    .arg(ignition);
                if let Some(bundle) = ca_bundle {
                    // Go reads the CAs it trusts from here.
                    c.env("SSL_CERT_FILE", bundle);
                }
                c
            }
            Runner::Host => Command::new(ignition),
        };
        cmd.arg("-platform")
            .arg("file")
            .arg("-stage")
            .arg(stage)
            .arg("-root")
            .arg(root)
            .arg("-config-cache")
            .arg(self.cache_file())
            .arg("-state-file")
            .arg(self.state_file())
            .arg("-neednet")
            .arg(self.work.join("neednet"))
            // Without this Ignition logs only to the (absent) journal.
            .arg("-log-to-stdout")
            .env("IGNITION_CONFIG_FILE", config)
            .env("TMPDIR", self.work.join("tmp"))
            .env("PATH", self.child_path())
            // Keep fetches hermetic: only the config's own proxy settings.
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        cmd
    }

    /// PATH for the child: the setfiles and udevadm stubs first, then the inherited PATH,
    /// then the sbin directories where useradd/usermod live (a non-login
    /// PATH may lack them). The test process's own environment is untouched.
    fn child_path(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.work.join("bin")];
        if let Some(inherited) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&inherited));
        }
        dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
        std::env::join_paths(dirs).expect("PATH entries contain no ':'")
    }

    /// The config as Ignition cached it in the fetch stage.
    pub fn cache_file(&self) -> PathBuf {
        self.work.join("cache.json")
    }

    fn state_file(&self) -> PathBuf {
        self.work.join("state")
    }
}

/// Where an Ignition stage runs.
enum Runner<'a> {
    Host,
    Netns(&'a str),
    Droplet {
        netns: &'a str,
        script: &'a Path,
        ca_bundle: Option<&'a Path>,
    },
}

/// What a droplet's Ignition sees that the host does not have: its
/// network (a namespace), the Internet's names (a hosts file bound over
/// `/etc/hosts`), the CAs it trusts, and its attached volumes under
/// DigitalOcean's names in a `/dev` of its own, with `/run` private (for
/// Ignition's device aliases and systemd's socket).
pub struct Droplet {
    pub netns: String,
    /// Bound over /etc/hosts for every stage.
    pub hosts: Option<PathBuf>,
    /// `SSL_CERT_FILE` for every stage.
    pub ca_bundle: Option<PathBuf>,
    /// Attached volumes: name and loop device minor.
    pub volumes: Vec<(String, u32)>,
}

impl Droplet {
    /// The shell that sets up a stage's mount namespace, then runs
    /// Ignition (`$2` and on); `$1` is the stage.
    fn script(&self, bus_dir: &Path) -> String {
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let mut s = String::from("set -eu\nstage=$1; shift\n");
        if let Some(hosts) = &self.hosts {
            s.push_str(&format!("mount --bind {} /etc/hosts\n", quote(hosts)));
        }
        s.push_str(&format!(
            "if [ \"$stage\" = disks ]; then\n\
             mount -t tmpfs -o mode=0755 lab-run /run\n\
             mkdir -p /run/systemd\n\
             mount --bind {} /run/systemd\n\
             mount -t tmpfs -o mode=0755 lab-dev /dev\n\
             mknod -m 666 /dev/null c 1 3\nmknod -m 666 /dev/zero c 1 5\n\
             mknod -m 666 /dev/full c 1 7\nmknod -m 666 /dev/random c 1 8\n\
             mknod -m 666 /dev/urandom c 1 9\nmkdir -p /dev/disk/by-id\n",
            quote(bus_dir)
        ));
        for (name, minor) in &self.volumes {
            s.push_str(&format!(
                "mknod -m 660 /dev/loop{minor} b 7 {minor}\n\
                 ln -s ../../loop{minor} {}\n",
                crate::volumes::by_id(name)
            ));
        }
        s.push_str("fi\nexec \"$@\"\n");
        s
    }
}

/// What a root needs before Ignition's files stage: Debian's Ignition 2.14
/// ends it by relabelling for SELinux, reading SELINUXTYPE from the root's
/// config (its SELINUX= value is ignored) and failing if the file is
/// missing. Lab and scratch roots carry no policy; `setfiles` is stubbed.
pub fn prepare_root(root: &Path) -> io::Result<()> {
    let config = root.join("etc/selinux/config");
    if !config.exists() {
        fs::create_dir_all(root.join("etc/selinux"))?;
        fs::write(&config, "SELINUX=disabled\nSELINUXTYPE=targeted\n")?;
    }
    Ok(())
}

/// Result of running Ignition (or ignition-validate).
#[derive(Debug)]
pub struct ApplyOutcome {
    /// Every stage run exited 0.
    pub success: bool,
    /// Combined stdout+stderr of every stage run, each under a header line.
    pub log: String,
}

/// Runs Ignition's fetch stage then its files stage for `config` against
/// `root`, stopping at the first failing stage.
///
/// Each stage is killed after [`TIMEOUT`]. Applying twice to the same root is
/// allowed (the second run sees the first run's files, like a re-provision).
pub fn apply(config: &Path, root: &ScratchRoot) -> ApplyOutcome {
    root.stages.apply(&root.root, config, None)
}

/// Checks `config` with `ignition-validate` (same bounds as [`apply`]).
pub fn validate(config: &Path) -> ApplyOutcome {
    let mut log = String::new();
    let success = match ignition_validate() {
        Some(bin) => {
            let mut cmd = Command::new(bin);
            cmd.arg(config);
            run_bounded(cmd, "ignition-validate", &mut log)
        }
        None => {
            log.push_str("ignition-validate not found (install Debian package `ignition`)\n");
            false
        }
    };
    ApplyOutcome { success, log }
}

/// Runs `cmd` with stdout and stderr going to one anonymous temp file (so
/// their lines stay in order, and no pipe can block us or the child), waits
/// at most [`TIMEOUT`], appends a header plus the output to `log`, and
/// reports whether it exited 0.
///
/// On timeout only the direct child is killed; its own children (useradd,
/// setfiles) are short-lived and exit on their own.
fn run_bounded(mut cmd: Command, what: &str, log: &mut String) -> bool {
    let mut output = match tempfile::tempfile() {
        Ok(f) => f,
        Err(e) => {
            log.push_str(&format!("=== {what}: cannot create output file: {e}\n"));
            return false;
        }
    };
    let stdio = |f: &fs::File| f.try_clone().map(Stdio::from);
    let (stdout, stderr) = match (stdio(&output), stdio(&output)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            log.push_str(&format!("=== {what}: cannot clone output file: {e}\n"));
            return false;
        }
    };
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            log.push_str(&format!("=== {what}: cannot start {cmd:?}: {e}\n"));
            return false;
        }
    };

    let deadline = Instant::now() + TIMEOUT;
    let verdict = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("killed after {}s", TIMEOUT.as_secs()));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("wait failed: {e}")),
        }
    };

    let mut text = Vec::new();
    let read = output.rewind().and_then(|()| output.read_to_end(&mut text));
    let success = matches!(&verdict, Ok(s) if s.success());
    let outcome = match verdict {
        Ok(s) => s.to_string(),
        Err(e) => e,
    };
    log.push_str(&format!("=== {what} ({outcome}) ===\n"));
    log.push_str(&String::from_utf8_lossy(&text));
    if let Err(e) = read {
        log.push_str(&format!("(output unreadable: {e})\n"));
    }
    success
}

/// A `data:` URL carrying `bytes`, percent-encoded (Ignition accepts RFC 2397
/// URLs; percent-encoding keeps any byte, newline or quote safe in JSON).
pub fn data_url(bytes: &[u8]) -> String {
    let mut url = String::from("data:,");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}
