//! The whole promise on one machine (`make e2e`): the operator runs
//! `builder init`, `render`, `launch`, `status` and `destroy` and nothing
//! else, against the lab cloud (`support::lab_cloud`: DigitalOcean's API
//! behind Prism, droplets that boot as lab nodes), and the nodes find
//! each other and assemble.
//!
//! One lab cloud (Prism loads the spec once) carries two sites in turn:
//! - 3 hosts, launched through API faults (429, 5xx, a reset);
//! - 5 hosts (3 core, 2 workers): a worker destroyed half-way through
//!   assembly and launched again rejoins.
//!
//! A third site (`e2e_rebuilt_bootstrap_host_rejoins_its_cluster`, run
//! by `make e2e` like the first) loses its bootstrap host once etcd
//! formed: launched again at a new address, it rejoins the same etcd
//! cluster and the site's FreeIPA, and its peers follow it.
//!
//! On both: every node's user data is `builder render`'s output byte for
//! byte; `builder status --output json` (real SSH as `core`) shows every
//! node done; from a host on the Internet SSH answers on every public
//! address and the web, mail and phone ports on the workers' only, while
//! the join service, the temporary DNS, etcd's ports and FreeIPA's (443
//! and the rest, on the core hosts) do not, and from the VPC they do;
//! `builder destroy --all` leaves no node, loop device, file, namespace,
//! mount or process. Each step prints a line with its time; a summary
//! table ends the run.
//!
//! What the lab cannot show: swap (a swap volume in a container would be
//! the host's swap; the sites have none), the nodes' reboot (identify
//! configures the metadata's address with `ip` in the lab image, where
//! Fedora CoreOS keeps it in a NetworkManager profile), IPv6.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use node_contract::status::{State, Status};
use node_contract::Phase;
use serde_json::Value;
use support::do_fake::Fault;
use support::lab::in_netns;
use support::lab_cloud::{self, LabCloud, ATTACKER};

const REGION: &str = "ams3";
const PASSPHRASE: &str = "e2e vault passphrase";
/// The operator's own FreeIPA passwords, with what the container's
/// `xargs` would split or strip (blanks, both quotes) and what a shell
/// would expand (`$`). A backslash FreeIPA itself refuses (tests/init.rs).
const ADMIN_PASSWORD: &str = "it's an \"admin\" pa$$ word";
const DM_PASSWORD: &str = "dm 'pass\" $HOME word";
/// From `builder launch` to every node done, at most.
const ASSEMBLY_LIMIT: Duration = Duration::from_secs(300);

/// One step of the run, for the summary.
struct Step {
    site: String,
    name: String,
    took: Duration,
}

#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    fn time<T>(&mut self, site: &str, name: &str, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = work();
        let took = started.elapsed();
        eprintln!("[e2e {site}] {name}: {:.1} s", took.as_secs_f64());
        self.0.push(Step {
            site: site.to_owned(),
            name: name.to_owned(),
            took,
        });
        result
    }

    fn table(&self) -> String {
        let width = self
            .0
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("{:<8} {:<width$} {:>8}\n", "SITE", "STEP", "SECONDS");
        let mut totals: BTreeMap<&str, Duration> = BTreeMap::new();
        for step in &self.0 {
            out.push_str(&format!(
                "{:<8} {:<width$} {:>8.1}\n",
                step.site,
                step.name,
                step.took.as_secs_f64()
            ));
            *totals.entry(&step.site).or_default() += step.took;
        }
        for (site, total) in totals {
            out.push_str(&format!(
                "{site:<8} {:<width$} {:>8.1}\n",
                "(total)",
                total.as_secs_f64()
            ));
        }
        out
    }
}

/// The operator of one site: a home (with the site's SSH key), the site
/// directory, and the builder and firstboot binaries.
struct Operator<'a> {
    cloud: &'a LabCloud,
    label: String,
    home: tempfile::TempDir,
    site_dir: PathBuf,
    builder: PathBuf,
    firstboot: PathBuf,
    domain: String,
    bucket: String,
    hosts: Vec<String>,
}

impl<'a> Operator<'a> {
    fn new(cloud: &'a LabCloud, label: &str, hosts: usize, firstboot: &Path) -> Operator<'a> {
        let home = tempfile::Builder::new()
            .prefix("e2e-home-")
            .tempdir()
            .unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let keygen = std::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "operator@lab-cloud",
                "-f",
            ])
            .arg(ssh.join("id_ed25519"))
            .output()
            .unwrap();
        assert!(keygen.status.success(), "{}", transcript(&keygen));
        Operator {
            cloud,
            label: label.to_owned(),
            site_dir: home.path().join("site"),
            home,
            builder: builder_binary(),
            firstboot: firstboot.to_owned(),
            domain: format!("{label}.example.org"),
            bucket: bucket(label),
            hosts: (1..=hosts).map(|i| format!("node{i}")).collect(),
        }
    }

    fn site(&self) -> PathBuf {
        self.site_dir.join("hosts.yaml")
    }

    fn run_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut command = self.cloud.builder(&self.builder, self.home.path(), args);
        command
            .env("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)
            .env("BUILDER_FIRSTBOOT", &self.firstboot)
            .env("BUILDER_POLL_MS", "200")
            .env("BUILDER_API_BACKOFF_MS", "100")
            .envs(env.iter().copied());
        command.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(&[], args)
    }

    fn ok_with(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.run_with(env, args);
        let text = transcript(&out);
        assert!(
            out.status.success(),
            "[{}] builder {args:?} failed:\n{text}\nlab cloud: {:?}",
            self.label,
            self.cloud.failures()
        );
        text
    }

    /// `builder init --non-interactive`, then the edits an operator makes
    /// for the lab cloud: the lab image and its VPC range, Spaces, no swap.
    fn init(&self) {
        let key = self.home.path().join(".ssh/id_ed25519.pub");
        let hosts = self.hosts.join(",");
        self.ok_with(
            &[
                ("BUILDER_FREEIPA_ADMIN_PASSWORD", ADMIN_PASSWORD),
                ("BUILDER_DIRECTORY_MANAGER_PASSWORD", DM_PASSWORD),
            ],
            &[
                "init",
                self.site_dir.to_str().unwrap(),
                "--non-interactive",
                "--domain",
                &self.domain,
                "--region",
                REGION,
                "--ssh-key",
                key.to_str().unwrap(),
                "--publish-url",
                "https://downloads.example.org/site",
                "--hosts",
                &hosts,
            ],
        );
        let text = std::fs::read_to_string(self.site()).unwrap();
        let edited = replace_all(
            &text,
            &[
                ("vpc_range: 172.30.0.0/24", "vpc_range: 198.18.0.0/24"),
                (
                    "publish:\n  base_url: https://downloads.example.org/site",
                    &format!(
                        "publish:\n  spaces:\n    bucket: {}\n    region: {REGION}",
                        self.bucket
                    ),
                ),
                ("image: fedora-coreos", "image: lab"),
                ("data_gib: 10", "data_gib: 1"),
                ("swap_gib: 2", "swap_gib: 0"),
            ],
        );
        std::fs::write(self.site(), edited).unwrap();
    }

    fn site_arg(&self) -> String {
        self.site().display().to_string()
    }

    /// `builder render`'s configs: host → bytes.
    fn render(&self) -> BTreeMap<String, Vec<u8>> {
        let out = self.home.path().join("rendered");
        self.ok(&["render", &self.site_arg(), "--out", out.to_str().unwrap()]);
        self.hosts
            .iter()
            .map(|h| {
                (
                    h.clone(),
                    std::fs::read(out.join(format!("{h}.ign"))).unwrap(),
                )
            })
            .collect()
    }

    fn launch(&self) -> String {
        self.ok(&["launch", &self.site_arg()])
    }

    /// `builder status --output json`: one row per host.
    fn status(&self) -> Vec<Value> {
        let text = self.ok(&["status", &self.site_arg(), "--output", "json"]);
        let start = text.find('[').expect("a JSON array");
        let end = text.rfind(']').expect("a JSON array");
        serde_json::from_str(&text[start..=end]).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Poll `builder status` until `done` holds for every row (bounded).
    fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut rounds = 0;
        loop {
            self.cloud.check();
            let rows = self.status();
            if done(&rows) {
                return rows;
            }
            rounds += 1;
            assert!(
                Instant::now() < deadline && rounds < 400,
                "[{}] {what}: not within {limit:?}; last status:\n{}\n{}",
                self.label,
                serde_json::to_string_pretty(&rows).unwrap(),
                self.journals()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn wait_assembled(&self) -> Vec<Value> {
        self.wait_status("every node done", ASSEMBLY_LIMIT, |rows| {
            rows.len() == self.hosts.len() && rows.iter().all(assembled)
        })
    }

    /// Every node's firstboot journal, and on core hosts the end of
    /// etcd's and the names firstboot pinned, for failure messages.
    /// Every node's firstboot journal (hosts added since included), and
    /// the etcd journal and /etc/hosts of every node with an etcd member.
    fn journals(&self) -> String {
        let lab = self.cloud.lab();
        let mut hosts = self.hosts.clone();
        for n in hosts.len() + 1..=hosts.len() + 3 {
            let name = format!("node{n}");
            if lab.node(&name).is_ok() {
                hosts.push(name);
            }
        }
        hosts
            .iter()
            .map(|h| {
                let mut text = format!(
                    "--- {h}\n{}",
                    lab.journal(h, Some("firstboot.service"))
                        .unwrap_or_else(|e| format!("{e:#}"))
                );
                let etcd = lab.journal(h, Some("etcd.service")).unwrap_or_default();
                if !etcd.trim().is_empty() {
                    let tail: Vec<&str> = etcd.lines().rev().take(12).collect();
                    text.push_str(&format!(
                        "--- {h}: etcd (last lines)\n{}\n--- {h}: /etc/hosts\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                        lab.sh(h, "cat /etc/hosts").unwrap_or_default()
                    ));
                }
                text
            })
            .collect()
    }

    fn droplet_name(&self, host: &str) -> String {
        format!("{host}.{}", self.domain)
    }

    fn fqdn(&self, host: &str) -> String {
        format!("{host}.{}", self.domain)
    }
}

/// Whether a status row says the node went through every phase: `done`,
/// or `serving` on the bootstrap host (it serves the join service and
/// temporary DNS until handoff, a later phase).
/// Active, and done with the last phase there is (or serving, on the
/// bootstrap host).
fn assembled(row: &Value) -> bool {
    row["status"] == "active"
        && row["phase"] == LAST_PHASE.as_str()
        && matches!(row["state"].as_str(), Some("done" | "serving"))
}

const LAST_PHASE: Phase = Phase::ALL[Phase::ALL.len() - 1];

/// A node's status file, as firstboot wrote it (None when absent or
/// unreadable).
fn node_status(lab: &site_lab::Lab, host: &str) -> Option<Status> {
    let out = lab
        .exec(
            host,
            &["cat", node_contract::status::STATUS_PATH],
            Duration::from_secs(10),
        )
        .ok()?;
    Status::from_json(&out.stdout).ok()
}

/// Done with every phase (serving, on the bootstrap host).
fn finished(status: &Status) -> bool {
    status.phase == Some(LAST_PHASE) && matches!(status.state, State::Done | State::Serving)
}

fn replace_all(text: &str, edits: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in edits {
        assert!(text.contains(from), "`{from}` is not in:\n{text}");
        text = text.replace(from, to);
    }
    text
}

fn bucket(label: &str) -> String {
    format!("{label}-firstboot")
}

fn transcript(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The builder the operator runs: the shipped static one when `make`
/// built it, else this test build's.
fn builder_binary() -> PathBuf {
    std::env::var_os("BUILDER_TEST_BUILDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_builder")))
}

/// What a TCP or UDP probe from the Internet got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Something listens.
    Open,
    /// The node's kernel answered that nothing does: the packet got there.
    Refused,
    /// No answer at all: dropped on the way.
    Silent,
}

impl Probe {
    fn answered(self) -> bool {
        self != Probe::Silent
    }
}

const PROBE_WAIT: Duration = Duration::from_secs(2);

fn probe_tcp(address: Ipv4Addr, port: u16) -> Probe {
    match std::net::TcpStream::connect_timeout(&SocketAddr::new(address.into(), port), PROBE_WAIT) {
        Ok(_) => Probe::Open,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Err(_) => Probe::Silent,
    }
}

/// A UDP datagram to a closed port is answered by ICMP port unreachable,
/// which a connected socket reads as refused; an open one may answer.
fn probe_udp(address: Ipv4Addr, port: u16) -> Probe {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect((address, port)).unwrap();
    socket.set_read_timeout(Some(PROBE_WAIT)).unwrap();
    // A DNS query (for the root NS), which the temporary DNS would answer.
    let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
    let _ = socket.send(&query);
    let mut buf = [0u8; 512];
    match socket.recv(&mut buf) {
        Ok(_) => Probe::Open,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Err(_) => Probe::Silent,
    }
}

/// Probe every (address, protocol, port) at once from namespace `netns`.
fn probes(
    netns: &str,
    targets: Vec<(Ipv4Addr, &'static str, u16)>,
) -> Vec<((Ipv4Addr, &'static str, u16), Probe)> {
    in_netns(netns, move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = targets
                .iter()
                .map(|&(address, protocol, port)| {
                    scope.spawn(move || match protocol {
                        "tcp" => probe_tcp(address, port),
                        _ => probe_udp(address, port),
                    })
                })
                .collect();
            targets
                .iter()
                .copied()
                .zip(handles.into_iter().map(|h| h.join().unwrap()))
                .collect()
        })
    })
}

/// What the site's firewalls open to the Internet on every host (see
/// `builder launch --dry-run`), as (protocol, a port of each rule).
const OPEN_ON_EVERY_HOST: &[(&str, u16)] = &[("tcp", 22)];
/// What they open on the hosts that serve the public (the workers) only.
const OPEN_ON_WORKERS: &[(&str, u16)] = &[
    ("tcp", 80),
    ("tcp", 443),
    ("tcp", 25),
    ("tcp", 465),
    ("tcp", 587),
    ("tcp", 993),
    ("udp", 5060),
    ("tcp", 5061),
    ("udp", 10000),
    ("udp", 20000),
];
/// What the site serves its own nodes only: its services, and FreeIPA's
/// (the web UI and API on 443, LDAP, Kerberos, DNS) on the core hosts,
/// where the FreeIPA simulator listens on them.
const SITE_ONLY: &[(&str, u16)] = &[
    ("tcp", 443),
    ("tcp", 80),
    ("tcp", 389),
    ("tcp", 636),
    ("tcp", 88),
    ("tcp", 464),
    ("tcp", 7443),
    ("tcp", 7444),
    ("tcp", 53),
    ("udp", 53),
    ("tcp", 2379),
    ("tcp", 2380),
];

/// From the Internet, on every node's public address, what the firewalls
/// open answers (SSH is open), the workers' public service ports answer
/// on workers only, and the site's own services (FreeIPA's on the core
/// hosts among them) do not; from the VPC (a node of the site) they
/// answer where they run.
fn firewall_holds(op: &Operator, attacker: &str, rows: &[Value]) {
    let core = &op.hosts[..3];
    let public: Vec<(Ipv4Addr, bool)> = rows
        .iter()
        .map(|r| {
            let worker = !core.iter().any(|h| r["host"] == h.as_str());
            (r["public_ipv4"].as_str().unwrap().parse().unwrap(), worker)
        })
        .collect();
    let workers: Vec<Ipv4Addr> = public.iter().filter(|p| p.1).map(|p| p.0).collect();
    let mut targets = Vec::new();
    for &(address, _) in &public {
        for &(protocol, port) in OPEN_ON_EVERY_HOST
            .iter()
            .chain(OPEN_ON_WORKERS)
            .chain(SITE_ONLY)
        {
            targets.push((address, protocol, port));
        }
    }
    let results = probes(attacker, targets);
    let mut wrong = Vec::new();
    for ((address, protocol, port), probe) in &results {
        let open = OPEN_ON_EVERY_HOST.contains(&(*protocol, *port))
            || (workers.contains(address) && OPEN_ON_WORKERS.contains(&(*protocol, *port)));
        if open != probe.answered() || (*port == 22 && *probe != Probe::Open) {
            wrong.push(format!("{address} {protocol}/{port}: {probe:?}"));
        }
    }
    let rules = op.cloud.lab().dir().join("edge.nft");
    assert!(
        wrong.is_empty(),
        "[{}] from the Internet, against the firewall:\n{}\nrules:\n{}",
        op.label,
        wrong.join("\n"),
        std::fs::read_to_string(rules).unwrap_or_default()
    );
    // ICMP is open too.
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", attacker, "ping", "-c", "1", "-W", "2"])
        .arg(public[0].0.to_string())
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping from the Internet: {}",
        transcript(&ping)
    );

    // From the VPC: the bootstrap host's join service, DNS, peer service
    // and etcd, and every other core host's peer service and etcd, answer
    // a node of the site.
    let lab = op.cloud.lab();
    let from = &op.hosts[op.hosts.len() - 1];
    for (i, host) in op.hosts.iter().take(3).enumerate() {
        let address = lab.node(host).unwrap().address;
        let ports: &[u16] = if i == 0 {
            &[7443, 7444, 53, 2379, 2380]
        } else {
            &[7444, 2379, 2380]
        };
        for port in ports {
            let script = format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}'");
            let out = lab
                .exec(from, &["/bin/sh", "-c", &script], Duration::from_secs(10))
                .unwrap();
            assert!(
                out.status.success(),
                "[{}] {from} cannot reach {host}'s port {port} on the VPC ({address}): {}",
                op.label,
                transcript(&out)
            );
        }
    }
}

/// Each node's user data is render's output, byte for byte, and is what
/// its Ignition applied; its firstboot came from Spaces.
fn user_data_is_rendered(op: &Operator, rendered: &BTreeMap<String, Vec<u8>>) {
    for (host, bytes) in rendered {
        let got = op
            .cloud
            .fake
            .user_data(&op.droplet_name(host))
            .unwrap_or_else(|| panic!("[{}] no droplet {host}", op.label));
        assert!(
            got.as_bytes() == bytes.as_slice(),
            "[{}] {host}'s user data is not render's output",
            op.label
        );
        let root = op.cloud.lab().root(host).unwrap();
        let node_json = root.join("etc/firstboot/node.json");
        assert!(
            node_json.is_file(),
            "[{}] {host}: Ignition wrote no node.json",
            op.label
        );
    }
    let config: Value = serde_json::from_slice(rendered.values().next().unwrap()).unwrap();
    let source = config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| {
            f["contents"]["source"]
                .as_str()
                .filter(|s| s.starts_with("https://"))
        })
        .expect("a fetched file")
        .to_owned();
    let expected = format!(
        "https://{}.{REGION}.digitaloceanspaces.com/firstboot-",
        op.bucket
    );
    assert!(
        source.starts_with(&expected),
        "[{}] firstboot from {source}",
        op.label
    );
    let path = &source[source.find("/firstboot-").unwrap()..];
    assert!(
        op.cloud.spaces_hits(path) >= rendered.len(),
        "[{}] {path} fetched {} times from Spaces for {} nodes",
        op.label,
        op.cloud.spaces_hits(path),
        rendered.len()
    );
}

/// Each node learnt its VPC address from the metadata service (no DHCP
/// there), which answered it about itself.
fn addresses_came_from_metadata(op: &Operator, rows: &[Value]) {
    let lab = op.cloud.lab();
    for row in rows {
        let host = row["host"].as_str().unwrap();
        let private: Ipv4Addr = row["private_ipv4"].as_str().unwrap().parse().unwrap();
        let public: Ipv4Addr = row["public_ipv4"].as_str().unwrap().parse().unwrap();
        assert_eq!(lab.node(host).unwrap().address, private);
        let journal = lab.journal(host, Some("firstboot.service")).unwrap();
        assert!(
            journal.contains(&format!("the metadata service says {private}/24")),
            "[{}] {host} did not take its address from the metadata service:\n{journal}",
            op.label
        );
        assert!(
            lab.metadata().answered(public) + lab.metadata().answered(private) > 0,
            "[{}] the metadata stand-in never answered {host}",
            op.label
        );
        let ip = lab.sh(host, "ip -4 -br address show dev eth1").unwrap();
        assert!(
            ip.contains(&format!("{private}/24")),
            "[{}] {host}: {ip}",
            op.label
        );
    }
}

/// Nothing of the site is left in the lab: nodes, volumes and their loop
/// devices, node namespaces and mounts, firewall rules, metadata.
fn nothing_left(op: &Operator) {
    op.cloud.settle(Duration::from_secs(60));
    op.cloud.check();
    let lab = op.cloud.lab();
    let nodes: Vec<String> = lab.nodes().map(|n| n.name.clone()).collect();
    assert!(nodes.is_empty(), "[{}] nodes left: {nodes:?}", op.label);
    let volumes: Vec<String> = lab.volumes().map(|v| v.name.clone()).collect();
    assert!(
        volumes.is_empty(),
        "[{}] volumes left: {volumes:?}",
        op.label
    );
    let dir = lab.dir().to_owned();
    let loops: Vec<_> = site_lab::volumes::loops()
        .into_iter()
        .filter(|(_, file)| file.starts_with(&dir))
        .collect();
    assert!(
        loops.is_empty(),
        "[{}] loop devices left: {loops:?}",
        op.label
    );
    for sub in ["nodes", "volumes"] {
        let left: Vec<_> = std::fs::read_dir(dir.join(sub))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "[{}] {sub} left in {}: {left:?}",
            op.label,
            dir.display()
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let under: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .collect();
    assert!(under.is_empty(), "[{}] mounts left: {under:?}", op.label);
    let node_namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(&format!("{}-", lab.netns()))
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    assert!(
        node_namespaces.is_empty(),
        "[{}] node namespaces left: {node_namespaces:?}",
        op.label
    );
    let firewall = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.netns(), "nft", "list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&firewall.stdout).into_owned();
    assert!(
        !tables.contains(site_lab::cloud::EDGE_TABLE),
        "[{}] firewall left: {tables}",
        op.label
    );
}

/// The site's firstboot objects are gone from its bucket.
fn bucket_empty(op: &Operator) {
    let moto_port = op.cloud.moto().port();
    let bucket = op.bucket.clone();
    let listing = in_netns(&op.cloud.operator, move || {
        site_lab::http::request(
            &format!("127.0.0.1:{moto_port}"),
            "GET",
            &format!("/{bucket}?list-type=2"),
            &[],
            b"",
        )
        .unwrap()
    });
    let text = listing.text();
    assert!(
        !text.contains("<Key>firstboot-"),
        "[{}] objects left in the bucket:\n{text}",
        op.label
    );
}

/// Each etcd member's cluster id, as `host` sees them.
fn cluster_ids(op: &Operator, host: &str) -> Vec<u64> {
    support::lab::cluster_ids(&op.cloud.lab(), host, &op.fqdn(host))
}

/// What every site's run shares: the lab cloud, the Internet host the
/// firewall is probed from, the firstboot binary, the steps so far.
struct World<'a> {
    steps: Steps,
    cloud: &'a LabCloud,
    attacker: String,
    firstboot: PathBuf,
}

/// What a test adds to a site's run: before `builder launch`, right after
/// it (nodes assembling), and once every node is done.
type Hook<'h, T> = Box<dyn FnOnce(&mut Steps, &T) + 'h>;

struct Hooks<'h> {
    before_launch: Hook<'h, LabCloud>,
    during: Hook<'h, Operator<'h>>,
    middle: Hook<'h, Operator<'h>>,
}

impl Default for Hooks<'_> {
    fn default() -> Self {
        Hooks {
            before_launch: Box::new(|_, _| {}),
            during: Box::new(|_, _| {}),
            middle: Box::new(|_, _| {}),
        }
    }
}

/// A site's run, from init to destroy.
fn site_run<'a>(world: &mut World<'a>, label: &str, hosts: usize, hooks: Hooks<'a>) {
    let (cloud, attacker) = (world.cloud, world.attacker.clone());
    let steps = &mut world.steps;
    let op = Operator::new(cloud, label, hosts, &world.firstboot);
    steps.time(label, "builder init --non-interactive", || op.init());
    let rendered = steps.time(label, "builder render", || op.render());
    (hooks.before_launch)(steps, cloud);
    let launched = Instant::now();
    let text = steps.time(label, "builder launch", || op.launch());
    assert!(text.contains("[10/10] attachments:"), "{text}");
    (hooks.during)(steps, &op);
    let rows = steps.time(
        label,
        "nodes assemble (until status shows all done)",
        || op.wait_assembled(),
    );
    eprintln!(
        "[e2e {label}] from launch to every node done: {:.1} s",
        launched.elapsed().as_secs_f64()
    );
    // Launch recorded each host's admission in the vault, and a host
    // destroyed and launched again while the site assembled has its next
    // credential generation: what render gives now, from the site file
    // and the vault, is what every droplet carries.
    let before_launch = rendered;
    let rendered = op.render();
    assert!(
        before_launch
            .iter()
            .all(|(host, bytes)| rendered[host] != *bytes),
        "[{label}] a host's config carries no admission after launch"
    );
    steps.time(label, "check user data, metadata, Spaces", || {
        user_data_is_rendered(&op, &rendered);
        addresses_came_from_metadata(&op, &rows);
    });
    steps.time(label, "probe the firewall (Internet, VPC)", || {
        firewall_holds(&op, &attacker, &rows)
    });
    (hooks.middle)(steps, &op);
    let table = op.ok(&["status", &op.site_arg()]);
    eprintln!("[e2e {label}] builder status:\n{table}");
    steps.time(label, "builder destroy --all --yes", || {
        op.ok(&["destroy", &op.site_arg(), "--all", "--yes"])
    });
    steps.time(label, "check nothing is left", || {
        nothing_left(&op);
        bucket_empty(&op);
        // The SSH key is the operator's, on the account for every site:
        // destroy leaves it, as it should.
        let mut snapshot = cloud.fake.snapshot();
        snapshot["ssh_keys"] = Value::Null;
        let snapshot = snapshot.to_string();
        assert!(
            !snapshot.contains(&op.domain.replace('.', "-")),
            "[{label}] left in the API: {snapshot}"
        );
    });
}

#[test]
#[ignore = "`make e2e` runs it (root, minutes)"]
fn e2e_builder_launch_assembles_sites_in_the_lab_cloud() {
    let labels = ["e2e3", "e2e5"];
    // `SITE_E2E_ONLY=e2e5` runs one site (while working on it). A label
    // that names no site is an error, not a test that runs nothing; under
    // CI every site runs, whatever the environment says.
    let only = std::env::var("SITE_E2E_ONLY")
        .ok()
        .filter(|_| !support::in_ci());
    if let Some(only) = &only {
        assert!(
            labels.contains(&only.as_str()),
            "SITE_E2E_ONLY={only} names no site; the sites are {labels:?}"
        );
    }
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot)) = lab_cloud::ready() else {
        return;
    };
    let mut steps = Steps::default();
    let buckets: Vec<(String, &str)> = labels.iter().map(|l| (bucket(l), REGION)).collect();
    let buckets: Vec<(&str, &str)> = buckets.iter().map(|(b, r)| (b.as_str(), *r)).collect();
    let cloud = steps.time("cloud", "start the lab cloud (lab, Prism, moto)", || {
        LabCloud::start(&image, &buckets)
    });
    let attacker = cloud.lab().add_internet_host(ATTACKER).unwrap();
    let mut world = World {
        steps,
        cloud: &cloud,
        attacker,
        firstboot,
    };

    let wanted = |label: &str| {
        assert!(
            labels.contains(&label),
            "{label} is not a site of this test"
        );
        only.as_deref().is_none_or(|o| o == label)
    };

    // 3 hosts, launched through API faults.
    if wanted("e2e3") {
        let hooks = Hooks {
            before_launch: Box::new(|_, cloud: &LabCloud| {
                let fake = &cloud.fake;
                fake.fault("POST /v2/droplets", Fault::TooMany { reset_in: 1 }, 1);
                fake.fault("POST /v2/droplets", Fault::Status500, 1);
                fake.fault("POST /v2/volumes", Fault::Reset, 1);
                fake.fault("GET /v2/droplets", Fault::Status503, 1);
            }),
            middle: Box::new(|steps, op: &Operator| {
                let calls = op.cloud.fake.calls();
                let creates = calls
                    .iter()
                    .filter(|c| c.starts_with("POST /v2/droplets"))
                    .count();
                assert!(creates >= 5, "the faults were not met: {calls:#?}");
                steps.time("e2e3", "attach and detach a volume (API → node)", || {
                    volume_follows_the_api(op)
                });
                steps.time(
                    "e2e3",
                    "destroy node3 (FreeIPA replica), launch again",
                    || enrolled_node_rejoins(op, "node3", true),
                );
            }),
            ..Hooks::default()
        };
        site_run(&mut world, "e2e3", 3, hooks);
    }

    // 5 hosts: a worker destroyed half-way through and launched again.
    if wanted("e2e5") {
        let hooks = Hooks {
            during: Box::new(|steps, op: &Operator| {
                steps.time(
                    "e2e5",
                    "destroy node4 (worker) half-way, launch again",
                    || worker_rejoins(op, "node4"),
                );
            }),
            middle: Box::new(|steps, op: &Operator| {
                steps.time(
                    "e2e5",
                    "destroy node5 (worker, enrolled in FreeIPA), launch again",
                    || enrolled_node_rejoins(op, "node5", false),
                );
                steps.time(
                    "e2e5",
                    "add node6 to the site after the handoff, launch it",
                    || host_added_after_handoff(op, "node6"),
                );
                steps.time(
                    "e2e5",
                    "add node7 and node8 as core hosts after the handoff, launch them",
                    || core_hosts_added_after_handoff(op, ["node7", "node8"]),
                );
            }),
            ..Hooks::default()
        };
        site_run(&mut world, "e2e5", 5, hooks);
    }

    eprintln!("\n{}", world.steps.table());
    // After the lab cloud: no namespace, directory, mount, loop device,
    // cgroup or process of it, Prism and moto included.
    let (id, ns) = {
        let lab = cloud.lab();
        (lab.id().to_owned(), lab.netns())
    };
    let helpers = [cloud.prism().pid(), cloud.moto().pid()];
    drop(cloud);
    support::lab::assert_nothing_left(&id, &ns, &helpers);
}

/// Once etcd formed, destroy the bootstrap host and launch it again: the
/// new droplet (a new VPC address) restores the CAs from its peers and
/// rejoins the same etcd cluster, which has 3 members again.
fn bootstrap_rejoins(steps: &mut Steps, op: &Operator) {
    let label = op.label.clone();
    let before = steps.time(&label, "etcd cluster id before", || {
        let ids = cluster_ids(op, "node2");
        assert_eq!(ids.len(), 3, "{ids:?}");
        ids[0]
    });
    steps.time(
        &label,
        "destroy node1 (bootstrap), launch again, rejoin",
        || {
            let old = op.cloud.lab().node("node1").unwrap().address;
            op.ok(&["destroy", &op.site_arg(), "--host", "node1", "--yes"]);
            op.cloud.settle(Duration::from_secs(60));
            assert!(op.cloud.lab().node("node1").is_err(), "node1 still runs");
            op.launch();
            op.wait_assembled();
            let new = op.cloud.lab().node("node1").unwrap().address;
            eprintln!("[e2e {label}] node1 moved from {old} to {new}");
            for host in ["node1", "node2", "node3"] {
                let ids = cluster_ids(op, host);
                assert_eq!(ids.len(), 3, "{host}: members after the rebuild: {ids:?}");
                assert!(
                    ids.iter().all(|id| *id == before),
                    "{host}: a second cluster: {before} then {ids:?}"
                );
            }
            for peer in ["node2", "node3"] {
                let lab = op.cloud.lab();
                let followed = lab
                    .journal(peer, Some("firstboot-peer.service"))
                    .unwrap_or_default();
                assert!(
                    followed.contains(&format!("moved from {old} to {new}: following it")),
                    "{peer} did not follow node1:\n{followed}"
                );
                let hosts = lab.sh(peer, "cat /etc/hosts").unwrap();
                assert!(
                    hosts.contains(&format!("{new} node1."))
                        && !hosts.contains(&format!("{old} node1.")),
                    "{peer}: /etc/hosts:\n{hosts}"
                );
            }
            let journal = op
                .cloud
                .lab()
                .journal("node1", Some("firstboot.service"))
                .unwrap();
            assert!(journal.contains("a cluster already exists"), "{journal}");
            assert!(
                !journal.contains("created the temporary CAs"),
                "node1 made new CAs:\n{journal}"
            );
            // And the site's FreeIPA, not a second one: node1 is a replica
            // of a surviving server, with the same IPA CA, its old server
            // removed through FreeIPA's server_del.
            assert!(
                journal.contains("it installs as a replica of"),
                "node1 did not rejoin the site's FreeIPA:\n{journal}"
            );
            let lab = op.cloud.lab();
            let ca = |host: &str| {
                lab.sh(host, "cat /var/lib/freeipa-server/etc/ipa/ca.crt")
                    .unwrap()
            };
            assert_eq!(ca("node1"), ca("node2"), "node1's IPA CA is another one");
            let node1 = op.fqdn("node1");
            assert!(
                server_removed(&lab, &["node2", "node3"], &node1),
                "no server_del of the old {node1}"
            );
        },
    );
}

/// The new node1 has a new VPC address (as a new droplet has). It asks
/// its peers from there; each follows it (its /etc/hosts and the site
/// domain's DNS route), so etcd on node2 and node3 accepts the new member
/// under its name, and no second cluster or CA is made.
#[test]
#[ignore = "`make e2e` runs it (root, minutes)"]
fn e2e_rebuilt_bootstrap_host_rejoins_its_cluster() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot)) = lab_cloud::ready() else {
        return;
    };
    let cloud = LabCloud::start(&image, &[(&bucket("rebuild"), REGION)]);
    let attacker = cloud.lab().add_internet_host(ATTACKER).unwrap();
    let mut world = World {
        steps: Steps::default(),
        cloud: &cloud,
        attacker,
        firstboot,
    };
    let hooks = Hooks {
        middle: Box::new(bootstrap_rejoins),
        ..Hooks::default()
    };
    site_run(&mut world, "rebuild", 3, hooks);
    eprintln!("\n{}", world.steps.table());
}

/// Once `worker` has joined (while others may still assemble), destroy
/// it and launch again: the new droplet (a new VPC address, a fresh
/// volume) joins under its name, the bootstrap host moving it.
fn worker_rejoins(op: &Operator, worker: &str) {
    let deadline = Instant::now() + ASSEMBLY_LIMIT;
    let mut assembling = Vec::new();
    loop {
        op.cloud.check();
        let joined = {
            let lab = op.cloud.lab();
            // Past join: it holds its certificates and is a member.
            let joined = node_status(&lab, worker)
                .and_then(|s| s.phase)
                .is_some_and(|p| p > Phase::Join);
            if joined {
                assembling = op
                    .hosts
                    .iter()
                    .filter(|h| !node_status(&lab, h).is_some_and(|s| finished(&s)))
                    .cloned()
                    .collect();
            }
            joined
        };
        if joined {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{}] {worker} never joined:\n{}",
            op.label,
            op.journals()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "[e2e {}] {worker} joined; still assembling: {assembling:?}",
        op.label
    );
    let old = op.cloud.lab().node(worker).unwrap().address;
    op.ok(&["destroy", &op.site_arg(), "--host", worker, "--yes"]);
    op.cloud.settle(Duration::from_secs(60));
    op.cloud.check();
    assert!(op.cloud.lab().node(worker).is_err(), "{worker} still runs");
    let volume = format!("{worker}-{}-data", op.domain.replace('.', "-"));
    assert!(op.cloud.lab().volume(&volume).is_err(), "{volume} is left");
    op.launch();
    op.wait_status(&format!("{worker} done again"), ASSEMBLY_LIMIT, |rows| {
        rows.iter().any(|r| r["host"] == worker && assembled(r))
    });
    let lab = op.cloud.lab();
    let new = lab.node(worker).unwrap().address;
    assert_ne!(old, new, "the new droplet has the old address");
    let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
    assert!(
        journal.contains(&format!(
            "{worker} comes back with credential generation 2 (was at {old}, now {new})"
        )),
        "[{}] the bootstrap host did not move {worker}:\n{journal}",
        op.label
    );
    let a = lab
        .sh(
            "node2",
            &format!("dig +short @127.0.0.53 {} A", op.fqdn(worker)),
        )
        .unwrap();
    assert_eq!(a.trim(), new.to_string(), "[{}] DNS for {worker}", op.label);
}

/// Once the site is done, `worker` is enrolled in FreeIPA (the server
/// holds its keytab), a client or, for a core host, a replica. Destroyed
/// and launched again, the new droplet has no keytab: the bootstrap host
/// removes the old server (a replica), disables the old keytab (a client)
/// and hands it a new one-time password, and FreeIPA's record for it
/// follows it to its new address. A replica also takes its old place in
/// etcd.
fn enrolled_node_rejoins(op: &Operator, worker: &str, replica: bool) {
    // Inside the node: the service's state is on its data volume.
    let marker = if replica {
        "/var/lib/freeipa-server/volume-version"
    } else {
        "/var/lib/freeipa-client/enrolled"
    };
    let enrolled = |lab: &site_lab::Lab| {
        lab.sh(worker, &format!("test -e {marker} && echo yes"))
            .is_ok_and(|out| out.trim() == "yes")
    };
    let cluster = replica.then(|| cluster_ids(op, "node2"));
    assert!(
        enrolled(&op.cloud.lab()),
        "[{}] {worker} is not enrolled",
        op.label
    );
    let old = op.cloud.lab().node(worker).unwrap().address;
    op.ok(&["destroy", &op.site_arg(), "--host", worker, "--yes"]);
    op.cloud.settle(Duration::from_secs(60));
    assert!(op.cloud.lab().node(worker).is_err(), "{worker} still runs");
    op.launch();
    op.wait_status(&format!("{worker} done again"), ASSEMBLY_LIMIT, |rows| {
        rows.iter().any(|r| r["host"] == worker && assembled(r))
    });
    let fqdn = op.fqdn(worker);
    let (new, server) = {
        let lab = op.cloud.lab();
        assert!(
            enrolled(&lab),
            "[{}] {worker} did not enroll again",
            op.label
        );
        let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
        assert!(
            journal.contains(&format!("{fqdn} was rebuilt; it enrolls again")),
            "[{}] the bootstrap host did not let {worker} enroll again:\n{journal}",
            op.label
        );
        (
            lab.node(worker).unwrap().address,
            lab.node("node1").unwrap().address,
        )
    };
    if let Some(before) = cluster {
        let after = cluster_ids(op, "node2");
        assert_eq!(after, before, "[{}] etcd's cluster changed", op.label);
        // The old server went through FreeIPA's own server_del.
        assert!(
            server_removed(&op.cloud.lab(), &["node1"], &fqdn),
            "[{}] no server_del of {fqdn}",
            op.label
        );
    }
    // FreeIPA's DNS (the simulator's, on node1) has the new address only.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = op
            .cloud
            .lab()
            .sh(
                "node2",
                &format!("dig +short +time=2 +tries=1 @{server} {fqdn} A"),
            )
            .unwrap_or_default();
        if a.trim() == new.to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{}] FreeIPA's DNS has {worker} at {a:?}, not only at {new} (was {old})",
            op.label
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The operator adds `host` (a worker) to the site file after the
/// handoff, when the bootstrap host's own admission rule is closed (every
/// host it was launched with has joined, and its temporary CA is gone),
/// and launches: the new droplet joins by the admission `launch` gave its
/// credential, and every certificate it holds comes from FreeIPA's
/// sub-CAs, none from the temporary CA.
fn host_added_after_handoff(op: &Operator, host: &str) {
    use firstboot::certs::{moved::Moved, PLAN};
    use firstboot::paths::Paths;
    let label = &op.label;
    let paths = |node: &str| Paths::under(&op.cloud.lab().root(node).unwrap());
    let book = firstboot::join::server::HandoffBook::load(&paths("node1")).unwrap();
    assert!(
        book.temporary_ended,
        "[{label}] the handoff has not ended the temporary CA"
    );
    let registry = firstboot::join::server::Registry::load(&paths("node1").registry_file())
        .unwrap()
        .unwrap();
    assert_eq!(
        registry.hosts.len(),
        op.hosts.len(),
        "[{label}] the bootstrap host's own rule is not closed: {:?}",
        registry.hosts
    );
    let site = std::fs::read_to_string(op.site()).unwrap();
    std::fs::write(op.site(), format!("{site}  - name: {host}\n")).unwrap();
    let text = op.launch();
    assert!(
        text.contains(&format!("admission: {host} may join")),
        "[{label}] launch opened no admission for {host} alone:\n{text}"
    );
    let hosts = op.hosts.len() + 1;
    op.wait_status(&format!("{host} done"), ASSEMBLY_LIMIT, |rows| {
        rows.len() == hosts && rows.iter().all(assembled)
    });
    // (`paths` takes the lab's lock: before `lab` holds it.)
    let (new, moved_worker) = (paths(host), paths("node4"));
    let lab = op.cloud.lab();
    let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
    assert!(
        journal.contains(&format!(
            "admitted {host} at {} (every certificate from FreeIPA's sub-CAs, by the site's \
             admission of its own)",
            lab.node(host).unwrap().address
        )),
        "[{label}] node1 did not admit {host} through FreeIPA:\n{journal}"
    );
    // Each certificate the new host holds chains to its row's sub-CA (as
    // a worker that moved holds it), and not to the temporary root.
    let mut held = 0;
    for row in PLAN.held_by(node_contract::Role::Worker) {
        let moved = Moved::load(&moved_worker, row.purpose).unwrap().unwrap();
        let slot = row.slot(&new);
        let cert = std::fs::read_to_string(&slot.cert).unwrap();
        let trust = std::fs::read_to_string(&slot.ca).unwrap();
        assert_eq!(
            trust.trim(),
            moved.new_ca.trim(),
            "[{label}] {host}'s {} trust is not the sub-CA alone",
            row.purpose
        );
        assert!(
            firstboot::pki::issued_by(&cert, &moved.new_ca),
            "[{label}] {host}'s {} certificate is not the sub-CA's",
            row.purpose
        );
        assert!(
            !firstboot::pki::issued_by(&cert, &moved.old_ca),
            "[{label}] {host}'s {} certificate is the temporary CA's",
            row.purpose
        );
        held += 1;
    }
    assert!(held > 0, "[{label}] a worker holds no certificate");
    // And it is enrolled in FreeIPA.
    assert_eq!(
        lab.sh(host, "test -e /var/lib/freeipa-client/enrolled && echo yes")
            .unwrap()
            .trim(),
        "yes",
        "[{label}] {host} is not enrolled in FreeIPA"
    );
}

/// The operator adds two core hosts (the site file wants an odd count)
/// after the handoff and launches: each is admitted by its own admission
/// as a core host added later, joins the running etcd cluster (one at a
/// time: the same cluster, five members, every one healthy), presents an
/// etcd certificate from the `etcd` sub-CA and trusts it alone, and
/// installs a FreeIPA replica.
fn core_hosts_added_after_handoff(op: &Operator, hosts: [&str; 2]) {
    use firstboot::certs::{moved::Moved, plan};
    use firstboot::paths::Paths;
    let label = &op.label;
    let paths = |node: &str| Paths::under(&op.cloud.lab().root(node).unwrap());
    let before = cluster_ids(op, "node2");
    let site = std::fs::read_to_string(op.site()).unwrap();
    let added: String = hosts
        .iter()
        .map(|h| format!("  - name: {h}\n    role: core\n"))
        .collect();
    std::fs::write(op.site(), format!("{site}{added}")).unwrap();
    let text = op.launch();
    assert!(
        text.contains(&format!(
            "core: {} join the running site's etcd cluster",
            hosts.join(", ")
        )),
        "[{label}] launch did not add {hosts:?} as core hosts:\n{text}"
    );
    let rows = op.status().len();
    op.wait_status(
        &format!("{} done", hosts.join(" and ")),
        ASSEMBLY_LIMIT,
        |rows_now| rows_now.len() == rows && rows_now.iter().all(assembled),
    );
    // (`paths` takes the lab's lock: before `lab` holds it.)
    let etcd_moved = Moved::load(&paths("node2"), plan::ETCD.purpose)
        .unwrap()
        .unwrap();
    let new_paths: Vec<Paths> = hosts.iter().map(|h| paths(h)).collect();
    let registry = firstboot::join::server::Registry::load(&paths("node1").registry_file())
        .unwrap()
        .unwrap();
    assert_eq!(
        registry
            .added_core
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>(),
        hosts,
        "[{label}] the bootstrap host's registry does not record the added core hosts"
    );
    let after = cluster_ids(op, "node2");
    assert_eq!(
        after.len(),
        before.len() + 2,
        "[{label}] etcd members: {after:?}"
    );
    assert!(
        after.iter().all(|id| *id == before[0]),
        "[{label}] the added members are not in the site's cluster: {after:?} (was {before:?})"
    );
    let lab = op.cloud.lab();
    let members = support::lab::etcdctl(&lab, "node2", &op.fqdn("node2"), "member list");
    // FreeIPA's DNS lists every member for etcd's clients and peers, the
    // added ones too: asked on node2's server (the records are made on
    // node1's and replicated: a bounded wait), past any resolver cache.
    let server = lab.node("node2").unwrap().address;
    for owner in ["_etcd-server-ssl._tcp", "_etcd-client-ssl._tcp"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let srv = lab
                .sh(
                    "node2",
                    &format!(
                        "dig +short +time=2 +tries=1 @{server} {owner}.{} SRV",
                        op.domain
                    ),
                )
                .unwrap_or_default();
            let listed = srv.lines().count() == before.len() + 2
                && hosts
                    .iter()
                    .all(|host| srv.contains(&format!(" {}.", op.fqdn(host))));
            if listed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[{label}] {owner} does not list the {} members, {hosts:?} among them: {srv}",
                before.len() + 2
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let journal = lab.journal("node1", Some("firstboot.service")).unwrap();
    for (host, new) in hosts.iter().zip(&new_paths) {
        assert!(
            members.contains(&format!(", {host}, https://{}:2380", op.fqdn(host))),
            "[{label}] {host} is no started etcd member:\n{members}"
        );
        assert!(
            journal.contains(&format!(
                "admitted {host} at {} (every certificate from FreeIPA's sub-CAs, a core host \
                 added later, by the site's admission of its own)",
                lab.node(host).unwrap().address
            )),
            "[{label}] node1 did not admit {host} as a core host added later:\n{journal}"
        );
        let health = support::lab::etcdctl(&lab, host, &op.fqdn(host), "endpoint health");
        assert!(health.contains("is healthy"), "[{label}] {host}: {health}");
        let slot = plan::ETCD.slot(new);
        let cert = std::fs::read_to_string(&slot.cert).unwrap();
        let trust = std::fs::read_to_string(&slot.ca).unwrap();
        assert_eq!(
            trust.trim(),
            etcd_moved.new_ca.trim(),
            "[{label}] {host}'s etcd trust is not the etcd sub-CA alone"
        );
        assert!(
            firstboot::pki::issued_by(&cert, &etcd_moved.new_ca),
            "[{label}] {host}'s etcd certificate is not the etcd sub-CA's"
        );
        assert_eq!(
            lab.sh(
                host,
                "test -e /var/lib/freeipa-server/volume-version && echo yes"
            )
            .unwrap()
            .trim(),
            "yes",
            "[{label}] {host} installed no FreeIPA replica"
        );
        let own = lab.journal(host, Some("firstboot.service")).unwrap();
        assert!(
            own.contains(
                "this core host was added to a running site: it joins the existing etcd cluster"
            ),
            "[{label}] {host} did not join the running cluster:\n{own}"
        );
    }
}

/// Whether the FreeIPA (simulator) on one of `servers` removed the server
/// `fqdn` with a `server_del` that succeeded, by its call log.
fn server_removed(lab: &site_lab::Lab, servers: &[&str], fqdn: &str) -> bool {
    servers.iter().any(|server| {
        lab.sh(server, "cat /var/log/ipa-sim/calls.jsonl")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| {
                l["method"] == "server_del"
                    && l["params"][0].to_string().contains(fqdn)
                    && l["error"].is_null()
            })
    })
}

/// A volume created and attached through the API appears in the node
/// under its DigitalOcean name; detached, it disappears; deleted, its loop
/// device is gone.
fn volume_follows_the_api(op: &Operator) {
    let prism = op
        .cloud
        .prism()
        .base
        .trim_start_matches("http://")
        .to_owned();
    let call = |method: &'static str, path: String, body: Value| -> Value {
        let prism = prism.clone();
        let answer = in_netns(&op.cloud.operator, move || {
            let mut headers = vec![("Authorization", "Bearer lab-cloud-token")];
            let body = if body.is_null() {
                Vec::new()
            } else {
                headers.push(("Content-Type", "application/json"));
                body.to_string().into_bytes()
            };
            site_lab::http::request(&prism, method, &path, &headers, &body).unwrap()
        });
        assert!(
            answer.status < 300,
            "{method}: {} {}",
            answer.status,
            answer.text()
        );
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
    };
    let droplet = op.cloud.fake.droplet_id(&op.droplet_name("node2")).unwrap();
    let volume = call(
        "POST",
        "/v2/volumes".into(),
        serde_json::json!({
        "name": "e2e-extra", "size_gigabytes": 1, "region": REGION}),
    );
    let id = volume["volume"]["id"].as_str().unwrap().to_owned();
    let device = site_lab::volumes::by_id("e2e-extra");
    let present = |want: bool| {
        op.cloud.settle(Duration::from_secs(30));
        op.cloud.check();
        let out = op
            .cloud
            .lab()
            .exec("node2", &["test", "-b", &device], Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.status.success(), want, "{device} in node2");
    };
    present(false);
    call(
        "POST",
        format!("/v2/volumes/{id}/actions"),
        serde_json::json!({
        "type": "attach", "droplet_id": droplet, "region": REGION}),
    );
    present(true);
    call(
        "POST",
        format!("/v2/volumes/{id}/actions"),
        serde_json::json!({
        "type": "detach", "droplet_id": droplet, "region": REGION}),
    );
    present(false);
    call("DELETE", format!("/v2/volumes/{id}"), Value::Null);
    op.cloud.settle(Duration::from_secs(30));
    assert!(op.cloud.lab().volume("e2e-extra").is_err());
}

/// When each phase of one node's firstboot began and ended, and when it
/// was all done: seconds after `t0`, from the node's journal.
#[derive(Debug, Default, Clone)]
struct Timeline {
    phases: BTreeMap<String, (f64, f64)>,
    started: Option<f64>,
    done: Option<f64>,
}

const PHASES: [&str; 6] = ["identify", "storage", "join", "etcd", "freeipa", "handoff"];

fn timeline(cloud: &LabCloud, host: &str, t0: std::time::SystemTime) -> Timeline {
    let journal = cloud
        .lab()
        .exec(
            host,
            &[
                "journalctl",
                "--no-pager",
                "-o",
                "json",
                "-u",
                "firstboot.service",
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    let t0 = t0
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as f64;
    let mut line = Timeline::default();
    for entry in String::from_utf8_lossy(&journal.stdout).lines() {
        let Ok(entry) = serde_json::from_str::<Value>(entry) else {
            continue;
        };
        let (Some(at), Some(message)) = (
            entry["__REALTIME_TIMESTAMP"]
                .as_str()
                .and_then(|t| t.parse::<f64>().ok()),
            entry["MESSAGE"].as_str(),
        ) else {
            continue;
        };
        let at = (at - t0) / 1e6;
        for phase in PHASES {
            if message == format!("phase {phase}: attempt 1") {
                line.phases.entry(phase.into()).or_insert((at, at)).0 = at;
                line.started.get_or_insert(at);
            } else if message == format!("phase {phase}: done") {
                line.phases.entry(phase.into()).or_insert((at, at)).1 = at;
            }
        }
        if message.starts_with("all phases done") {
            line.done = Some(at);
        }
    }
    line
}

/// Wait until every node's status file says it is through (bounded),
/// reading the files from the nodes themselves: finer than `builder
/// status`, whose SSH round takes about a second.
fn wait_done(cloud: &LabCloud, hosts: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        cloud.check();
        let through = {
            let lab = cloud.lab();
            hosts
                .iter()
                .all(|h| node_status(&lab, h).is_some_and(|s| finished(&s)))
        };
        if through {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every node done within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The rows of one measurement: per node, when its create reached the
/// cloud, when it was booted, each phase's time, and when it was done;
/// the last node's done.
fn report(
    what: &str,
    cloud: &LabCloud,
    hosts: &[String],
    t0: std::time::SystemTime,
    (created, booted): (&BTreeMap<String, f64>, &BTreeMap<String, f64>),
) -> f64 {
    let mut last: f64 = 0.0;
    let mut out = format!(
        "{what}\n| node | created | booted | firstboot starts | identify | storage | join | etcd | freeipa | handoff | done |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for host in hosts {
        let line = timeline(cloud, host, t0);
        let phase = |p: &str| {
            line.phases
                .get(p)
                .map_or("-".to_owned(), |(a, b)| format!("{:.2}", b - a))
        };
        let done = line.done.unwrap_or(f64::NAN);
        last = last.max(done);
        let at =
            |m: &BTreeMap<String, f64>| m.get(host).map_or("-".to_owned(), |t| format!("{t:.2}"));
        out.push_str(&format!(
            "| {host} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {done:.2} |\n",
            at(created),
            at(booted),
            line.started.unwrap_or(f64::NAN),
            phase("identify"),
            phase("storage"),
            phase("join"),
            phase("etcd"),
            phase("freeipa"),
            phase("handoff"),
        ));
    }
    eprintln!("{out}(seconds from the start; phases: from their first attempt to done)\n");
    last
}

/// `builder launch`, timing its steps: when each step's first line came
/// (`[n/10] name: …`), in seconds from the start.
fn launch_timed(op: &Operator) -> Vec<(f64, String)> {
    use std::io::BufRead;
    let mut command = op
        .cloud
        .builder(&op.builder, op.home.path(), &["launch", &op.site_arg()]);
    command
        .env("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)
        .env("BUILDER_FIRSTBOOT", &op.firstboot)
        .env("BUILDER_POLL_MS", "200")
        .env("BUILDER_API_BACKOFF_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let mut steps: Vec<(f64, String)> = Vec::new();
    let mut text = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if let Some(step) = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(": "))
            .map(|(step, _)| step.replacen("] ", " ", 1))
        {
            if !steps.iter().any(|(_, s)| *s == step) {
                steps.push((started.elapsed().as_secs_f64(), step));
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "builder launch failed:\n{text}");
    steps.push((started.elapsed().as_secs_f64(), "(returned)".into()));
    steps
}

/// `make bench`: from `builder launch` to every node done, for 3 and 5
/// hosts, each phase's time per node, beside the floor measured in the
/// same run: the same droplets (user data, addresses, a fresh volume
/// each) booted straight from the lab driver, with no API, no Prism and
/// no controller in between.
#[test]
#[ignore = "`make bench` runs it (root, minutes)"]
fn bench_launch_to_assembled() {
    let _one_lab_at_a_time = support::lab::exclusive();
    let Some((image, firstboot)) = lab_cloud::ready() else {
        return;
    };
    let labels = [("bench3", 3), ("bench5", 5)];
    let buckets: Vec<String> = labels.iter().map(|(l, _)| bucket(l)).collect();
    let buckets: Vec<(&str, &str)> = buckets.iter().map(|b| (b.as_str(), REGION)).collect();
    let cloud = LabCloud::start(&image, &buckets);
    let mut summary = Vec::new();
    for (label, hosts) in labels {
        let op = Operator::new(&cloud, label, hosts, &firstboot);
        op.init();
        let wall = std::time::SystemTime::now();
        let started = Instant::now();
        let steps = launch_timed(&op);
        let launched = started.elapsed().as_secs_f64();
        wait_done(&cloud, &op.hosts, ASSEMBLY_LIMIT);
        let polled = started.elapsed().as_secs_f64();
        let provisioned: Vec<_> = cloud
            .provisioned()
            .into_iter()
            .filter(|p| op.hosts.contains(&p.host))
            .collect();
        let since = |t: Instant| (t - started).as_secs_f64();
        let created = provisioned
            .iter()
            .map(|p| (p.host.clone(), since(p.created)))
            .collect();
        let booted = provisioned
            .iter()
            .map(|p| (p.host.clone(), since(p.booted)))
            .collect();
        eprintln!(
            "{label}: builder launch's steps (seconds from its start): {}",
            steps
                .iter()
                .map(|(t, step)| format!("{step} {t:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let through = report(
            &format!("{label}: builder launch (returned after {launched:.2} s)"),
            &cloud,
            &op.hosts,
            wall,
            (&created, &booted),
        );

        // The floor: the same droplets, with the site's droplets gone.
        let droplets: Vec<_> = op
            .hosts
            .iter()
            .map(|h| {
                let id = cloud.fake.droplet_id(&op.droplet_name(h)).unwrap();
                cloud.fake.droplet(id).unwrap()
            })
            .collect();
        let mut args = vec!["destroy".to_owned(), op.site_arg()];
        for host in &op.hosts {
            args.extend(["--host".to_owned(), host.clone()]);
        }
        args.push("--yes".into());
        op.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        cloud.settle(Duration::from_secs(60));
        // The volume the config formats and mounts, under its own name.
        let volume = |host: &str| vec![(format!("{host}-{}-data", op.domain.replace('.', "-")), 1)];
        let wall = std::time::SystemTime::now();
        let started = Instant::now();
        let mut booted = BTreeMap::new();
        for (host, droplet) in op.hosts.iter().zip(&droplets) {
            cloud.boot_direct(droplet, &volume(host)).unwrap();
            booted.insert(host.clone(), started.elapsed().as_secs_f64());
        }
        wait_done(&cloud, &op.hosts, ASSEMBLY_LIMIT);
        let floor = report(
            &format!("{label}: the floor (the same droplets booted by the lab driver)"),
            &cloud,
            &op.hosts,
            wall,
            (&BTreeMap::new(), &booted),
        );
        for (host, droplet) in op.hosts.iter().zip(&droplets) {
            cloud.remove_direct(droplet, &volume(host)).unwrap();
        }
        op.ok(&["destroy", &op.site_arg(), "--all", "--yes"]);
        summary.push(format!(
            "| {hosts} | {launched:.1} s | {through:.1} s (seen by polling: {polled:.1} s) | {floor:.1} s | {:.1} s |",
            through - floor
        ));
    }
    eprintln!(
        "| hosts | builder launch returns | every node done after launch start | floor | launch's cost |\n\
         | --- | --- | --- | --- | --- |\n{}",
        summary.join("\n")
    );
}
