//! A stateful fake of DigitalOcean's API v2, for Prism to stand in front
//! of in proxy mode: Prism checks every request against the official spec
//! before forwarding it, and every answer of this fake on the way back
//! (with `--errors`, a spec violation becomes a 500 that fails the test).
//! So every answer here is exact to the spec's response schema of its
//! operation, and the fake never answers 501 (Prism would then mock).
//!
//! What it knows: the account, tags, SSH keys, images (public base images
//! and custom imports), VPCs (and their members), volumes (and attach,
//! detach, resize), droplets (single and multi-create), actions and
//! firewalls. Behaviour follows DigitalOcean where the spec or its docs
//! say so; the choices made where they are silent are noted on `State`.
//!
//! Tests steer it: `fault` and `fault_every_kind_once` inject rate limits,
//! server errors, dropped connections and stalls before a request is
//! processed; `kill_after_mutation` SIGKILLs a process right after a
//! mutating request changed the state; `latency` slows every answer;
//! `snapshot` describes the state without ids or timestamps so that two
//! launches can be compared; `seed_*` put resources in place; `reset`
//! makes the fake new again so one Prism can serve many tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::http::Response;

/// What to do to a request instead of processing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `ratelimit-remaining: 0` and `ratelimit-reset` this many
    /// seconds from now.
    TooMany {
        reset_in: u64,
    },
    Status500,
    Status503,
    /// Close the connection without answering. Through Prism the client
    /// sees Prism's own 500 (`FetchError ... socket hang up`).
    Reset,
    /// Sleep, then close without answering.
    Stall(Duration),
    /// Process the request (the state changes, as DigitalOcean did the
    /// work), then close without answering: the answer is lost on the way
    /// back, as when a connection breaks after the server acted. Through
    /// Prism the client sees Prism's 500, which for a create means "it
    /// may have been made".
    LoseAnswer,
}

/// What changed in the fake that a backend (the lab cloud) acts on: sent
/// once the change is made, in order, never blocking the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// With its volumes attached (by name).
    DropletCreated {
        id: u64,
        name: String,
        volumes: Vec<String>,
    },
    /// Its volumes are detached with it.
    DropletDeleted {
        id: u64,
        name: String,
    },
    VolumeCreated {
        name: String,
        size_gib: u64,
    },
    VolumeDeleted {
        name: String,
    },
    VolumeAttached {
        name: String,
        droplet: u64,
    },
    VolumeDetached {
        name: String,
        droplet: u64,
    },
    /// A firewall, or a tag or droplet a firewall may apply to, changed.
    FirewallsChanged,
}

/// A droplet as a backend needs it: what boots, and where.
#[derive(Clone, Debug)]
pub struct DropletView {
    pub id: u64,
    pub name: String,
    pub user_data: Option<String>,
    pub private_ip: std::net::Ipv4Addr,
    pub private_prefix: u8,
    pub private_gateway: std::net::Ipv4Addr,
    pub public_ip: std::net::Ipv4Addr,
    pub public_prefix: u8,
    pub public_gateway: std::net::Ipv4Addr,
    pub tags: Vec<String>,
    pub region: String,
    /// The image's name as created.
    pub image: String,
}

/// Where `seed_*` put what they create.
pub const SEED_REGION: &str = "ams3";
/// How many droplets the account may have (as `GET /v2/account` says).
pub const DROPLET_LIMIT: usize = 25;
/// The largest `user_data` DigitalOcean accepts.
pub const USER_DATA_LIMIT: usize = 64 * 1024;
/// Droplets created at once with `names`.
pub const MULTI_CREATE_LIMIT: usize = 10;

/// Regions (slug, name) the fake knows: those the spec's region enums
/// allow everywhere, so that any answer naming them is valid.
const REGIONS: &[(&str, &str)] = &[
    ("ams3", "Amsterdam 3"),
    ("blr1", "Bangalore 1"),
    ("fra1", "Frankfurt 1"),
    ("lon1", "London 1"),
    ("nyc1", "New York 1"),
    ("nyc2", "New York 2"),
    ("nyc3", "New York 3"),
    ("sfo2", "San Francisco 2"),
    ("sfo3", "San Francisco 3"),
    ("sgp1", "Singapore 1"),
    ("syd1", "Sydney 1"),
    ("tor1", "Toronto 1"),
];

struct Size {
    slug: &'static str,
    memory: u64,
    vcpus: u64,
    disk: u64,
    transfer: f64,
    monthly: f64,
    hourly: f64,
}

const SIZES: &[Size] = &[
    Size {
        slug: "s-1vcpu-512mb-10gb",
        memory: 512,
        vcpus: 1,
        disk: 10,
        transfer: 0.5,
        monthly: 4.0,
        hourly: 0.00595,
    },
    Size {
        slug: "s-1vcpu-1gb",
        memory: 1024,
        vcpus: 1,
        disk: 25,
        transfer: 1.0,
        monthly: 6.0,
        hourly: 0.00893,
    },
    Size {
        slug: "s-1vcpu-2gb",
        memory: 2048,
        vcpus: 1,
        disk: 50,
        transfer: 2.0,
        monthly: 12.0,
        hourly: 0.01786,
    },
    Size {
        slug: "s-2vcpu-2gb",
        memory: 2048,
        vcpus: 2,
        disk: 60,
        transfer: 3.0,
        monthly: 18.0,
        hourly: 0.02679,
    },
    Size {
        slug: "s-2vcpu-4gb",
        memory: 4096,
        vcpus: 2,
        disk: 80,
        transfer: 4.0,
        monthly: 24.0,
        hourly: 0.03571,
    },
    Size {
        slug: "s-4vcpu-8gb",
        memory: 8192,
        vcpus: 4,
        disk: 160,
        transfer: 5.0,
        monthly: 48.0,
        hourly: 0.07143,
    },
    Size {
        slug: "s-8vcpu-16gb",
        memory: 16384,
        vcpus: 8,
        disk: 320,
        transfer: 6.0,
        monthly: 96.0,
        hourly: 0.14286,
    },
];

/// Public distribution images every account sees: (slug, name, distribution).
const BASE_IMAGES: &[(&str, &str, &str)] = &[
    ("ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu"),
    ("debian-12-x64", "12 x64", "Debian"),
    ("fedora-42-x64", "42 x64", "Fedora"),
];

/// The spec's image distributions.
const DISTRIBUTIONS: &[&str] = &[
    "Arch Linux",
    "CentOS",
    "CoreOS",
    "Debian",
    "Fedora",
    "Fedora Atomic",
    "FreeBSD",
    "Gentoo",
    "openSUSE",
    "RancherOS",
    "Rocky Linux",
    "Ubuntu",
    "Unknown",
];

struct Key {
    id: u64,
    name: String,
    public_key: String,
    fingerprint: String,
}

struct Image {
    id: u64,
    name: String,
    slug: Option<String>,
    public: bool,
    distribution: String,
    description: String,
    /// Where it is available (empty while a custom image imports).
    regions: Vec<String>,
    /// Where a custom image is imported to.
    region: String,
    tags: Vec<String>,
    status: &'static str,
    polls: u32,
    created_at: String,
}

struct Vpc {
    id: String,
    name: String,
    region: String,
    range: (u32, u8),
    description: String,
    default: bool,
    created_at: String,
    /// The next private address handed to a droplet (offset in the range).
    next_host: u32,
}

struct Volume {
    id: String,
    name: String,
    region: String,
    size: u64,
    description: String,
    tags: Vec<String>,
    droplet_ids: Vec<u64>,
    filesystem_type: String,
    filesystem_label: String,
    created_at: String,
}

struct Droplet {
    id: u64,
    name: String,
    region: String,
    size: &'static Size,
    /// The image as it was at creation (it may be deleted later).
    image: Value,
    vpc_uuid: String,
    tags: Vec<String>,
    user_data: Option<String>,
    /// Fingerprints of the keys installed at creation.
    ssh_keys: Vec<String>,
    volume_ids: Vec<String>,
    features: Vec<&'static str>,
    private_ip: u32,
    private_range: (u32, u8),
    public_ip: u32,
    ipv6: Option<String>,
    status: &'static str,
    polls: u32,
    created_at: String,
}

struct Firewall {
    id: String,
    name: String,
    inbound: Vec<Value>,
    outbound: Vec<Value>,
    droplet_ids: Vec<u64>,
    tags: Vec<String>,
    /// "waiting" in the create answer, "succeeded" afterwards.
    settled: bool,
    created_at: String,
}

struct Action {
    id: u64,
    kind: String,
    resource_id: Option<u64>,
    resource_type: &'static str,
    region: Option<String>,
    started_at: String,
}

/// Everything the fake knows, behind one lock.
///
/// Choices where DigitalOcean's spec and docs are silent or vague:
/// - Each region's default VPC (`default-<region>`, a /20 in 10.x, marked
///   `default`) appears the first time the region is used (an image,
///   VPC, volume or droplet created there): the account is modelled as
///   one that has used its regions before, so a VPC created through the
///   API is never the default and can be deleted once empty. A default
///   VPC cannot be deleted (403).
/// - VPC ranges may not overlap any other VPC of the account (the spec
///   says account-wide), must be RFC 1918, and between /16 and /28.
/// - A droplet answers `new` to its first `droplet_polls` reads (a GET,
///   or a listing that shows it), then `active`, so a client may poll
///   either way; a custom image answers `NEW` to its first `image_polls`
///   GETs, then `available` (image listings do not advance it). Actions
///   are `in-progress` when created, `completed` when fetched.
/// - A droplet's networks are empty while it is `new` (as in the spec's
///   example); once `active` it has a private address from its VPC (the
///   default VPC of its region without `vpc_uuid`), counting up from .2,
///   a public one from 203.0.113.0/24 and, with `ipv6`, one in
///   2001:db8::/32.
/// - Refusals: 422 `unprocessable_entity` for invalid input, a VPC name
///   taken, an overlapping range, an SSH key already uploaded, more than
///   10 `names`, `user_data` over 64 KiB, the droplet limit (25); 409
///   `conflict` for a volume name taken in its region and for deleting an
///   attached volume; 403 `forbidden` for deleting a VPC with members or
///   a default VPC, or a public image; 404 `not_found` for anything
///   unknown, unknown routes included.
/// - Volumes given at droplet creation are attached to it (one droplet
///   only); deleting a droplet detaches its volumes, it does not delete
///   them.
/// - A firewall answers `waiting` when created, `succeeded` afterwards;
///   ports `"all"` read back as `"0"`, as DigitalOcean answers them.
/// - Tags used on a resource are created implicitly (as DigitalOcean does);
///   deleting a tag untags every resource.
pub struct State {
    keys: Vec<Key>,
    images: Vec<Image>,
    vpcs: Vec<Vpc>,
    volumes: Vec<Volume>,
    droplets: Vec<Droplet>,
    firewalls: Vec<Firewall>,
    actions: Vec<Action>,
    tags: BTreeSet<String>,
    next_droplet: u64,
    next_image: u64,
    next_key: u64,
    next_action: u64,
    next_uuid: u64,
    next_public: u32,
    next_request: u64,
    droplet_polls: u32,
    /// Droplets stay `new` until `activate` (a backend boots them).
    held: bool,
    /// Ranges a VPC may use: RFC 1918, unless a lab says otherwise.
    private_ranges: Vec<(u32, u8)>,
    /// Public addresses: the network, its gateway.
    public_pool: ((u32, u8), u32),
    backend: Option<std::sync::mpsc::Sender<Change>>,
    /// Changes sent to the backend.
    sent: usize,
    image_polls: u32,
    /// Every request as `METHOD /path?query`, in order.
    calls: Vec<String>,
    /// POST/PUT/DELETE received (faulted ones included).
    mutations: usize,
    /// POST/PUT/DELETE processed (not faulted), what `kill_after_mutation` counts.
    processed: usize,
    /// POST/PUT/DELETE requests being handled right now, and the most
    /// there ever were at once (since `reset`).
    in_flight: usize,
    most_in_flight: usize,
    latency: Duration,
    faults: Vec<(String, Fault, u32)>,
    every_kind: Option<(Fault, BTreeSet<String>)>,
    kill: Option<(usize, u32)>,
}

impl Default for State {
    fn default() -> State {
        let mut state = State {
            keys: Vec::new(),
            images: Vec::new(),
            vpcs: Vec::new(),
            volumes: Vec::new(),
            droplets: Vec::new(),
            firewalls: Vec::new(),
            actions: Vec::new(),
            tags: BTreeSet::new(),
            next_droplet: 3_164_001,
            next_image: 181_000_001,
            next_key: 512_001,
            next_action: 7_515_001,
            next_uuid: 1,
            next_public: 10,
            next_request: 1,
            droplet_polls: 1,
            held: false,
            private_ranges: vec![(0x0a00_0000, 8), (0xac10_0000, 12), (0xc0a8_0000, 16)],
            public_pool: ((0xcb00_7100, 24), 0xcb00_7101),
            backend: None,
            sent: 0,
            image_polls: 2,
            calls: Vec::new(),
            mutations: 0,
            processed: 0,
            in_flight: 0,
            most_in_flight: 0,
            latency: Duration::ZERO,
            faults: Vec::new(),
            every_kind: None,
            kill: None,
        };
        for (i, (slug, name, distribution)) in BASE_IMAGES.iter().enumerate() {
            state.images.push(Image {
                id: 160_000_001 + i as u64,
                name: (*name).into(),
                slug: Some((*slug).into()),
                public: true,
                distribution: (*distribution).into(),
                description: format!("{distribution} {name}"),
                regions: REGIONS.iter().map(|(s, _)| (*s).to_owned()).collect(),
                region: String::new(),
                tags: Vec::new(),
                status: "available",
                polls: 0,
                created_at: "2025-04-01T12:00:00Z".into(),
            });
        }
        state
    }
}

pub struct FakeDo {
    pub base: String,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeDo {
    pub fn start() -> FakeDo {
        Self::serve(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Listen on loopback inside the network namespace at `netns` (such
    /// as `/run/netns/NAME`), where Prism runs too.
    pub fn start_in(netns: &std::path::Path) -> FakeDo {
        let netns = netns.to_owned();
        let listener = thread::spawn(move || {
            let ns = std::fs::File::open(&netns).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> FakeDo {
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        thread::spawn(move || connection(stream, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeDo { base, state, stop }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request received, as `METHOD /path?query` (the target as
    /// sent), in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// POST, PUT and DELETE requests received, faulted ones included.
    pub fn mutations(&self) -> usize {
        self.lock().mutations
    }

    /// The most POST, PUT and DELETE requests handled at once since
    /// `start` or `reset` (each from its arrival to its answer).
    pub fn most_mutations_at_once(&self) -> usize {
        self.lock().most_in_flight
    }

    /// Sleep this long before answering each request.
    pub fn latency(&self, delay: Duration) {
        self.lock().latency = delay;
    }

    /// Apply `fault` to the next `times` requests of `kind`, such as
    /// `"POST /v2/droplets"` or `"GET /v2/droplets/{id}"` (see `kind_of`),
    /// before they are processed: the state does not change. Faults for
    /// one kind queue up in the order given.
    pub fn fault(&self, kind: &str, fault: Fault, times: u32) {
        if times > 0 {
            self.lock().faults.push((kind.to_owned(), fault, times));
        }
    }

    /// Apply `fault` once to each kind of request, the first time that
    /// kind is seen from now on (until `reset`).
    pub fn fault_every_kind_once(&self, fault: Fault) {
        self.lock().every_kind = Some((fault, BTreeSet::new()));
    }

    /// Once the `n`-th mutating request (1-based, counted since `start`
    /// or `reset`; faulted requests are not processed so not counted) has
    /// been processed and has changed the state, SIGKILL `pid` and close
    /// that connection without answering.
    pub fn kill_after_mutation(&self, n: usize, pid: u32) {
        self.lock().kill = Some((n, pid));
    }

    /// The first `n` reads of a new droplet (GETs, or listings showing
    /// it) answer `new`, later ones `active` (default 1; 0: active at the
    /// first read).
    pub fn droplet_polls_until_active(&self, n: u32) {
        self.lock().droplet_polls = n;
    }

    /// The first `n` GETs of an importing image answer `NEW`, later ones
    /// `available` (default 2).
    pub fn image_polls_until_available(&self, n: u32) {
        self.lock().image_polls = n;
    }

    /// Forget every resource, call, fault, hook and setting: as new.
    pub fn reset(&self) {
        *self.lock() = State::default();
    }

    /// Back the fake with real machines: every change is sent to
    /// `backend`, droplets stay `new` until `activate`, VPCs may use
    /// `private_ranges` (besides nothing else) and public addresses come
    /// from `public` (network, gateway), from its .10 on.
    pub fn back_with(
        &self,
        backend: std::sync::mpsc::Sender<Change>,
        private_ranges: &[(std::net::Ipv4Addr, u8)],
        public: ((std::net::Ipv4Addr, u8), std::net::Ipv4Addr),
    ) {
        let mut s = self.lock();
        s.backend = Some(backend);
        s.held = true;
        s.private_ranges = private_ranges
            .iter()
            .map(|(a, p)| (u32::from(*a), *p))
            .collect();
        s.public_pool = ((u32::from(public.0 .0), public.0 .1), u32::from(public.1));
    }

    /// How many changes were sent to the backend.
    pub fn changes_sent(&self) -> usize {
        self.lock().sent
    }

    /// A held droplet is running: reads show it `active` from now on.
    pub fn activate(&self, id: u64) {
        if let Some(d) = self.lock().droplets.iter_mut().find(|d| d.id == id) {
            d.status = "active";
        }
    }

    /// A droplet as a backend needs it, if it exists.
    pub fn droplet(&self, id: u64) -> Option<DropletView> {
        let s = self.lock();
        let d = s.droplets.iter().find(|d| d.id == id)?;
        let ((_, public_prefix), public_gateway) = s.public_pool;
        Some(DropletView {
            id,
            name: d.name.clone(),
            user_data: d.user_data.clone(),
            private_ip: d.private_ip.into(),
            private_prefix: d.private_range.1,
            private_gateway: (d.private_range.0 + 1).into(),
            public_ip: d.public_ip.into(),
            public_prefix,
            public_gateway: public_gateway.into(),
            tags: d.tags.clone(),
            region: d.region.clone(),
            image: d.image["name"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Every firewall as the API shows it, and every droplet's id, tags
    /// and addresses (`{"id", "tags", "private_ipv4", "public_ipv4"}`,
    /// whatever its status): what a backend enforces firewalls from.
    pub fn firewall_view(&self) -> (Vec<Value>, Vec<Value>) {
        let s = self.lock();
        let firewalls = s.firewalls.iter().map(Firewall::json).collect();
        let droplets = s
            .droplets
            .iter()
            .map(|d| {
                json!({"id": d.id, "tags": d.tags, "private_ipv4": ip(d.private_ip),
                       "public_ipv4": ip(d.public_ip)})
            })
            .collect();
        (firewalls, droplets)
    }

    /// The state, without ids or timestamps, sorted: equal for two
    /// launches that left the same resources behind. Custom images only
    /// (the public base images are always there).
    pub fn snapshot(&self) -> Value {
        self.lock().snapshot()
    }

    /// An active droplet in `SEED_REGION` (s-1vcpu-1gb, ubuntu-24-04-x64,
    /// the region's default VPC); its id.
    pub fn seed_droplet(&self, name: &str, tags: &[&str]) -> u64 {
        let mut s = self.lock();
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        s.tags.extend(tags.iter().cloned());
        let vpc = s.default_vpc(SEED_REGION);
        let image = s.images[0].json();
        let id = s.add_droplet(
            name,
            SEED_REGION,
            &SIZES[1],
            image,
            &vpc,
            tags,
            None,
            Vec::new(),
            (false, false),
        );
        let d = s.droplets.iter_mut().find(|d| d.id == id).unwrap();
        d.status = "active";
        id
    }

    /// A detached 10 GiB volume in `SEED_REGION`; its id.
    pub fn seed_volume(&self, name: &str, tags: &[&str]) -> String {
        let mut s = self.lock();
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        s.tags.extend(tags.iter().cloned());
        s.default_vpc(SEED_REGION);
        let id = s.uuid(0xb10c_b10c);
        s.volumes.push(Volume {
            id: id.clone(),
            name: name.into(),
            region: SEED_REGION.into(),
            size: 10,
            description: String::new(),
            tags,
            droplet_ids: Vec::new(),
            filesystem_type: String::new(),
            filesystem_label: String::new(),
            created_at: now(),
        });
        id
    }

    /// A VPC in `SEED_REGION` with this range; its id. Panics on a range
    /// DigitalOcean would refuse.
    pub fn seed_vpc(&self, name: &str, range: &str) -> String {
        let mut s = self.lock();
        s.default_vpc(SEED_REGION);
        let range = s
            .check_range(range)
            .unwrap_or_else(|e| panic!("seed_vpc {name} {range}: {e:?}"));
        s.add_vpc(name, SEED_REGION, range, "", false)
    }

    /// A droplet's id, by name.
    pub fn droplet_id(&self, droplet: &str) -> Option<u64> {
        self.lock()
            .droplets
            .iter()
            .find(|d| d.name == droplet)
            .map(|d| d.id)
    }

    /// The user_data a droplet was created with, by droplet name.
    pub fn user_data(&self, droplet: &str) -> Option<String> {
        let s = self.lock();
        s.droplets
            .iter()
            .find(|d| d.name == droplet)
            .and_then(|d| d.user_data.clone())
    }
}

impl Drop for FakeDo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A request's kind, as `fault` takes it: the method and the path without
/// the query, where a segment after a known collection becomes `{id}` if
/// it is numeric or a UUID (or any tag name or image slug).
pub fn kind_of(method: &str, target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let after = if i > 0 { segments[i - 1] } else { "" };
        let collection = matches!(
            after,
            "droplets" | "images" | "volumes" | "vpcs" | "firewalls" | "actions" | "tags" | "keys"
        );
        let named = matches!(after, "tags" | "images") && !segment.is_empty();
        if collection && (named || is_number(segment) || is_uuid(segment)) {
            out.push("{id}");
        } else {
            out.push(segment);
        }
    }
    format!("{method} {}", out.join("/"))
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

// ---------------------------------------------------------------- HTTP

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    host: String,
    body: Vec<u8>,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn mutating(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "DELETE" | "PATCH")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }
}

type Answer = (u16, Option<Value>);

fn read_request(reader: &mut BufReader<TcpStream>, fallback_host: &str) -> Option<Request> {
    let request = super::http::read_request(reader).ok()??;
    let host = request.header("host").unwrap_or(fallback_host).to_owned();
    let (method, target, body) = (request.method, request.target, request.body);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q),
        None => (target.clone(), ""),
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Request {
        method,
        target,
        path,
        query,
        host,
        body,
    })
}

/// Requests on one keep-alive connection, until the peer closes it (or a
/// fault or the kill hook closes it).
fn connection(stream: TcpStream, state: &Mutex<State>) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(request) = read_request(&mut reader, &local) {
        let kind = kind_of(&request.method, &request.path);
        let (fault, latency, request_id) = {
            let mut s = lock();
            s.calls
                .push(format!("{} {}", request.method, request.target));
            if request.mutating() {
                s.mutations += 1;
            }
            let id = s.request_id();
            (s.take_fault(&kind), s.latency, id)
        };
        let _counted = request.mutating().then(|| InFlight::enter(state));
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        let mut limit = ("4999".to_owned(), unix_now() + 60);
        let (status, body) = match fault {
            Some(Fault::Reset) => return,
            Some(Fault::Stall(pause)) => {
                thread::sleep(pause);
                return;
            }
            Some(Fault::TooMany { reset_in }) => {
                limit = ("0".to_owned(), unix_now() + reset_in);
                error_with(
                    429,
                    "too_many_requests",
                    "API Rate limit exceeded.",
                    &request_id,
                )
            }
            Some(Fault::Status500) => error_with(
                500,
                "server_error",
                "Unexpected server-side error",
                &request_id,
            ),
            Some(Fault::Status503) => error_with(
                503,
                "service_unavailable",
                "The service is temporarily unavailable; try again later.",
                &request_id,
            ),
            None | Some(Fault::LoseAnswer) => {
                let mut s = lock();
                let mut answer = route(&mut s, &request);
                if let Some(Value::Object(error)) = answer.1.as_mut() {
                    if answer.0 >= 400 {
                        error.insert("request_id".into(), json!(request_id));
                    }
                }
                if request.mutating() {
                    s.processed += 1;
                    if let Some((n, pid)) = s.kill {
                        if s.processed >= n {
                            s.kill = None;
                            drop(s);
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                            return;
                        }
                    }
                }
                if fault == Some(Fault::LoseAnswer) {
                    return;
                }
                answer
            }
        };
        let text = body.map(|v| v.to_string()).unwrap_or_default();
        let mut response = Response::new(status);
        if !text.is_empty() {
            response = response.with_header("content-type", "application/json; charset=utf-8");
        }
        let response = response
            .with_header("ratelimit-limit", "5000")
            .with_header("ratelimit-remaining", &limit.0)
            .with_header("ratelimit-reset", &limit.1.to_string())
            .with_body(text);
        if response.write_to(&mut writer, true).is_err() {
            return;
        }
    }
}

/// One mutating request in flight, counted until dropped (answered, or
/// its connection closed).
struct InFlight<'a>(&'a Mutex<State>);

impl<'a> InFlight<'a> {
    fn enter(state: &'a Mutex<State>) -> InFlight<'a> {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight += 1;
        s.most_in_flight = s.most_in_flight.max(s.in_flight);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

fn error(status: u16, id: &str, message: &str) -> Answer {
    (status, Some(json!({"id": id, "message": message})))
}

fn error_with(status: u16, id: &str, message: &str, request_id: &str) -> Answer {
    (
        status,
        Some(json!({"id": id, "message": message, "request_id": request_id})),
    )
}

fn not_found() -> Answer {
    error(
        404,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

fn invalid(message: &str) -> Answer {
    error(422, "unprocessable_entity", message)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `per_page` (1 to 200, default 20) and `page` (from 1) asked for.
fn page_of(r: &Request) -> (usize, usize) {
    let number = |name: &str, default: usize| {
        r.param(name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    (
        number("per_page", 20).clamp(1, 200),
        number("page", 1).max(1),
    )
}

/// The index of the first item the page asked for shows.
fn shown_from(r: &Request) -> usize {
    let (per_page, page) = page_of(r);
    (page - 1).saturating_mul(per_page)
}

/// One page of a listing, with `links.pages` (absolute URLs on the host the
/// request named) and `meta.total`.
fn paginate(r: &Request, key: &str, items: Vec<Value>) -> Answer {
    let (per_page, page) = page_of(r);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let shown: Vec<Value> = items
        .into_iter()
        .skip(shown_from(r))
        .take(per_page)
        .collect();
    let others: Vec<String> = r
        .query
        .iter()
        .filter(|(k, _)| k != "page" && k != "per_page")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let url = |p: usize| {
        let mut query = others.clone();
        query.push(format!("page={p}"));
        query.push(format!("per_page={per_page}"));
        r.url(&format!("{}?{}", r.path, query.join("&")))
    };
    let mut pages = Map::new();
    if page > 1 {
        pages.insert("first".into(), json!(url(1)));
        pages.insert("prev".into(), json!(url((page - 1).min(last))));
    }
    if page < last {
        pages.insert("next".into(), json!(url(page + 1)));
        pages.insert("last".into(), json!(url(last)));
    }
    let links = if pages.is_empty() {
        json!({})
    } else {
        json!({ "pages": pages })
    };
    (
        200,
        Some(json!({ key: shown, "links": links, "meta": {"total": total} })),
    )
}

fn parse_body(r: &Request) -> Result<Value, Answer> {
    serde_json::from_slice::<Value>(&r.body).map_err(|e| {
        error(
            400,
            "bad_request",
            &format!("error parsing request body: {e}"),
        )
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_owned()
}

// ---------------------------------------------------------------- routes

fn route(s: &mut State, r: &Request) -> Answer {
    let segments: Vec<String> = r
        .path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let result = match (r.method.as_str(), segments.as_slice()) {
        ("GET", ["v2", "account"]) => Ok(account()),
        ("GET", ["v2", "regions"]) => Ok(paginate(
            r,
            "regions",
            REGIONS.iter().map(|(slug, _)| region(slug)).collect(),
        )),
        ("GET", ["v2", "tags"]) => Ok(s.list_tags(r)),
        ("POST", ["v2", "tags"]) => parse_body(r).map(|b| s.create_tag(r, &b)),
        ("GET", ["v2", "tags", name]) => Ok(s.get_tag(r, name)),
        ("DELETE", ["v2", "tags", name]) => Ok(s.delete_tag(name)),
        ("POST", ["v2", "tags", name, "resources"]) => {
            parse_body(r).map(|b| s.tag_resources(name, &b, true))
        }
        ("DELETE", ["v2", "tags", name, "resources"]) => {
            parse_body(r).map(|b| s.tag_resources(name, &b, false))
        }
        ("GET", ["v2", "account", "keys"]) => Ok(s.list_keys(r)),
        ("POST", ["v2", "account", "keys"]) => parse_body(r).map(|b| s.create_key(&b)),
        ("GET", ["v2", "account", "keys", id]) => Ok(s.get_key(id)),
        ("DELETE", ["v2", "account", "keys", id]) => Ok(s.delete_key(id)),
        ("GET", ["v2", "images"]) => Ok(s.list_images(r)),
        ("POST", ["v2", "images"]) => parse_body(r).map(|b| s.create_image(&b)),
        ("GET", ["v2", "images", id]) => Ok(s.get_image(id)),
        ("DELETE", ["v2", "images", id]) => Ok(s.delete_image(id)),
        ("GET", ["v2", "vpcs"]) => Ok(s.list_vpcs(r)),
        ("POST", ["v2", "vpcs"]) => parse_body(r).map(|b| s.create_vpc(&b)),
        ("GET", ["v2", "vpcs", id]) => Ok(s.get_vpc(id)),
        ("DELETE", ["v2", "vpcs", id]) => Ok(s.delete_vpc(id)),
        ("GET", ["v2", "vpcs", id, "members"]) => Ok(s.vpc_members(r, id)),
        ("GET", ["v2", "volumes"]) => Ok(s.list_volumes(r)),
        ("POST", ["v2", "volumes"]) => parse_body(r).map(|b| s.create_volume(&b)),
        ("GET", ["v2", "volumes", id]) => Ok(s.get_volume(id)),
        ("DELETE", ["v2", "volumes", id]) => Ok(s.delete_volume(id)),
        ("POST", ["v2", "volumes", id, "actions"]) => {
            parse_body(r).map(|b| s.volume_action(id, &b))
        }
        ("GET", ["v2", "droplets"]) => Ok(s.list_droplets(r)),
        ("POST", ["v2", "droplets"]) => parse_body(r).map(|b| s.create_droplets(r, &b)),
        ("GET", ["v2", "droplets", id]) => Ok(s.get_droplet(id)),
        ("DELETE", ["v2", "droplets", id]) => Ok(s.delete_droplet(id)),
        ("GET", ["v2", "actions", id]) => Ok(s.get_action(id)),
        ("GET", ["v2", "firewalls"]) => Ok(s.list_firewalls(r)),
        ("POST", ["v2", "firewalls"]) => parse_body(r).map(|b| s.create_firewall(&b)),
        ("GET", ["v2", "firewalls", id]) => Ok(s.get_firewall(id)),
        ("PUT", ["v2", "firewalls", id]) => parse_body(r).map(|b| s.update_firewall(id, &b)),
        ("DELETE", ["v2", "firewalls", id]) => Ok(s.delete_firewall(id)),
        _ => Ok(not_found()),
    };
    result.unwrap_or_else(|e| e)
}

fn account() -> Answer {
    (
        200,
        Some(json!({"account": {
            "droplet_limit": DROPLET_LIMIT, "floating_ip_limit": 5, "volume_limit": 100,
            "email": "operator@example.com", "name": "Operator",
            "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
            "email_verified": true, "status": "active", "status_message": "",
            "team": {"uuid": "5df3e3004a17e242b7c20ca6c9fc25b701a47ece", "name": "My Team"}}})),
    )
}

fn region(slug: &str) -> Value {
    let name = REGIONS
        .iter()
        .find(|(s, _)| *s == slug)
        .map_or(slug, |(_, n)| n);
    json!({
        "name": name, "slug": slug,
        "features": ["private_networking", "backups", "ipv6", "metadata", "install_agent",
                     "storage", "image_transfer"],
        "available": true,
        "sizes": SIZES.iter().map(|s| s.slug).collect::<Vec<_>>(),
    })
}

fn known_region(slug: &str) -> bool {
    REGIONS.iter().any(|(s, _)| *s == slug)
}

fn valid_tag(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b))
}

impl State {
    /// Tell the backend, if any (it never blocks: a channel).
    fn changed(&mut self, change: Change) {
        if let Some(backend) = &self.backend {
            if backend.send(change).is_ok() {
                self.sent += 1;
            }
        }
    }

    fn uuid(&mut self, kind: u32) -> String {
        let n = self.next_uuid;
        self.next_uuid += 1;
        format!("{kind:08x}-{:04x}-4000-8000-{n:012x}", (n >> 48) & 0xffff)
    }

    fn request_id(&mut self) -> String {
        let n = self.next_request;
        self.next_request += 1;
        format!("7e57ab1e-0000-4000-8000-{n:012x}")
    }

    fn action(
        &mut self,
        kind: &str,
        resource_id: Option<u64>,
        resource_type: &'static str,
        region: Option<&str>,
    ) -> u64 {
        let id = self.next_action;
        self.next_action += 1;
        self.actions.push(Action {
            id,
            kind: kind.into(),
            resource_id,
            resource_type,
            region: region.map(str::to_owned),
            started_at: now(),
        });
        id
    }

    /// The fault for this request, if any: a queued one for its kind first,
    /// else the every-kind fault if the kind is new (a kind that met a
    /// queued fault has had its first fault).
    fn take_fault(&mut self, kind: &str) -> Option<Fault> {
        let first = match self.every_kind.as_mut() {
            Some((_, seen)) => seen.insert(kind.to_owned()),
            None => false,
        };
        if let Some(i) = self.faults.iter().position(|(k, _, _)| k == kind) {
            let fault = self.faults[i].1;
            self.faults[i].2 -= 1;
            if self.faults[i].2 == 0 {
                self.faults.remove(i);
            }
            return Some(fault);
        }
        match &self.every_kind {
            Some((fault, _)) if first => Some(*fault),
            _ => None,
        }
    }

    fn use_tags(&mut self, tags: &[String]) -> Result<(), Answer> {
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(invalid(&format!(
                "tag `{bad}` is invalid: use letters, numbers, colons, dashes and underscores, \
                 at most 255 characters"
            )));
        }
        self.tags.extend(tags.iter().cloned());
        Ok(())
    }

    // ---------------------------------------------------------- tags

    fn tag_json(&self, r: &Request, name: &str) -> Value {
        let has = |tags: &[String]| tags.iter().any(|t| t == name);
        let mut total = 0;
        let mut last: Option<String> = None;
        let mut group = |uris: Vec<String>| {
            total += uris.len();
            match uris.last() {
                Some(uri) => {
                    last = Some(uri.clone());
                    json!({"count": uris.len(), "last_tagged_uri": uri})
                }
                None => json!({"count": 0}),
            }
        };
        let droplets = group(
            self.droplets
                .iter()
                .filter(|d| has(&d.tags))
                .map(|d| r.url(&format!("/v2/droplets/{}", d.id)))
                .collect(),
        );
        let images = group(
            self.images
                .iter()
                .filter(|i| has(&i.tags))
                .map(|i| r.url(&format!("/v2/images/{}", i.id)))
                .collect(),
        );
        let volumes = group(
            self.volumes
                .iter()
                .filter(|v| has(&v.tags))
                .map(|v| r.url(&format!("/v2/volumes/{}", v.id)))
                .collect(),
        );
        let mut resources = json!({
            "count": total, "droplets": droplets, "images": images, "volumes": volumes,
            "volume_snapshots": {"count": 0}, "databases": {"count": 0},
        });
        if let Some(uri) = last {
            resources["last_tagged_uri"] = json!(uri);
        }
        json!({"name": name, "resources": resources})
    }

    fn list_tags(&self, r: &Request) -> Answer {
        let tags = self.tags.iter().map(|t| self.tag_json(r, t)).collect();
        paginate(r, "tags", tags)
    }

    fn create_tag(&mut self, r: &Request, body: &Value) -> Answer {
        let name = text(body, "name");
        if let Err(e) = self.use_tags(std::slice::from_ref(&name)) {
            return e;
        }
        // Creating an existing tag answers 201 with it, as DigitalOcean does.
        (201, Some(json!({"tag": self.tag_json(r, &name)})))
    }

    fn get_tag(&self, r: &Request, name: &str) -> Answer {
        if !self.tags.contains(name) {
            return not_found();
        }
        (200, Some(json!({"tag": self.tag_json(r, name)})))
    }

    fn delete_tag(&mut self, name: &str) -> Answer {
        if !self.tags.remove(name) {
            return not_found();
        }
        let keep = |tags: &mut Vec<String>| tags.retain(|t| t != name);
        self.droplets.iter_mut().for_each(|d| keep(&mut d.tags));
        self.images.iter_mut().for_each(|i| keep(&mut i.tags));
        self.volumes.iter_mut().for_each(|v| keep(&mut v.tags));
        self.changed(Change::FirewallsChanged);
        (204, None)
    }

    /// Tag (`add`) or untag resources, as `tags_assign_resources` and
    /// `tags_unassign_resources` do: the tag must exist (404), every
    /// resource must be a known droplet, image or volume (404 names the
    /// first that is not: nothing is tagged then), and 204 answers. Only
    /// droplets are tagged here (what builder tags); another type is 422,
    /// stricter than DigitalOcean.
    fn tag_resources(&mut self, name: &str, body: &Value, add: bool) -> Answer {
        if !self.tags.contains(name) {
            return not_found();
        }
        let Some(resources) = body["resources"].as_array().filter(|r| !r.is_empty()) else {
            return invalid("resources must be a non-empty array");
        };
        let mut ids = Vec::new();
        for resource in resources {
            let (Some(id), Some(kind)) = (
                resource["resource_id"].as_str(),
                resource["resource_type"].as_str(),
            ) else {
                return invalid(
                    "each resource needs a resource_id and a resource_type, as strings",
                );
            };
            if kind != "droplet" {
                return invalid(&format!("this fake tags droplets only, not `{kind}`"));
            }
            match id
                .parse::<u64>()
                .ok()
                .filter(|id| self.droplets.iter().any(|d| d.id == *id))
            {
                Some(id) => ids.push(id),
                None => return not_found(),
            }
        }
        for droplet in self.droplets.iter_mut().filter(|d| ids.contains(&d.id)) {
            let has = droplet.tags.iter().any(|t| t == name);
            if add && !has {
                droplet.tags.push(name.to_owned());
            } else if !add && has {
                droplet.tags.retain(|t| t != name);
            }
        }
        self.changed(Change::FirewallsChanged);
        (204, None)
    }

    // ---------------------------------------------------------- keys

    fn key_json(k: &Key) -> Value {
        json!({"id": k.id, "fingerprint": k.fingerprint, "public_key": k.public_key,
               "name": k.name})
    }

    fn find_key(&self, id: &str) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k.id.to_string() == id || k.fingerprint == id)
    }

    fn list_keys(&self, r: &Request) -> Answer {
        paginate(
            r,
            "ssh_keys",
            self.keys.iter().map(Self::key_json).collect(),
        )
    }

    fn create_key(&mut self, body: &Value) -> Answer {
        let name = text(body, "name");
        let public_key = text(body, "public_key").trim().to_owned();
        if name.is_empty() {
            return invalid("name is required");
        }
        let Some(fingerprint) = fingerprint(&public_key) else {
            return invalid("Key invalid, key should be of the format `type key [comment]`");
        };
        if self.keys.iter().any(|k| k.fingerprint == fingerprint) {
            return invalid("SSH Key is already in use on your account");
        }
        let key = Key {
            id: self.next_key,
            name,
            public_key,
            fingerprint,
        };
        self.next_key += 1;
        let answer = json!({"ssh_key": Self::key_json(&key)});
        self.keys.push(key);
        (201, Some(answer))
    }

    fn get_key(&self, id: &str) -> Answer {
        match self.find_key(id) {
            Some(i) => (200, Some(json!({"ssh_key": Self::key_json(&self.keys[i])}))),
            None => not_found(),
        }
    }

    fn delete_key(&mut self, id: &str) -> Answer {
        match self.find_key(id) {
            Some(i) => {
                self.keys.remove(i);
                (204, None)
            }
            None => not_found(),
        }
    }

    // ---------------------------------------------------------- images

    fn list_images(&self, r: &Request) -> Answer {
        let private = r.param("private") == Some("true");
        let kind = r.param("type");
        let tag = r.param("tag_name");
        let images = self
            .images
            .iter()
            .filter(|i| !private || !i.public)
            .filter(|i| match kind {
                Some("distribution") => i.public,
                Some(_) => false,
                None => true,
            })
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x == t)))
            .map(Image::json)
            .collect();
        paginate(r, "images", images)
    }

    fn find_image(&self, id: &str) -> Option<usize> {
        self.images
            .iter()
            .position(|i| i.id.to_string() == id || i.slug.as_deref() == Some(id))
    }

    fn create_image(&mut self, body: &Value) -> Answer {
        let name = text(body, "name");
        let url = text(body, "url");
        let region = text(body, "region");
        let distribution = body["distribution"].as_str().unwrap_or("Unknown");
        if name.is_empty() || url.is_empty() {
            return invalid("name and url are required");
        }
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return invalid("url must be an HTTP or HTTPS URL");
        }
        if !known_region(&region) {
            return invalid("region is not available");
        }
        if !DISTRIBUTIONS.contains(&distribution) {
            return invalid("distribution is not supported");
        }
        let tags = strings(&body["tags"]);
        if let Err(e) = self.use_tags(&tags) {
            return e;
        }
        self.default_vpc(&region);
        let image = Image {
            id: self.next_image,
            name,
            slug: None,
            public: false,
            distribution: distribution.into(),
            description: text(body, "description"),
            regions: Vec::new(),
            region,
            tags,
            status: "NEW",
            polls: 0,
            created_at: now(),
        };
        self.next_image += 1;
        let answer = json!({"image": image.json()});
        self.images.push(image);
        (202, Some(answer))
    }

    fn get_image(&mut self, id: &str) -> Answer {
        let polls = self.image_polls;
        let Some(i) = self.find_image(id) else {
            return not_found();
        };
        let image = &mut self.images[i];
        if image.status == "NEW" {
            if image.polls >= polls {
                image.status = "available";
                image.regions = vec![image.region.clone()];
            } else {
                image.polls += 1;
            }
        }
        (200, Some(json!({"image": image.json()})))
    }

    fn delete_image(&mut self, id: &str) -> Answer {
        match self.images.iter().position(|i| i.id.to_string() == id) {
            Some(i) if self.images[i].public => {
                error(403, "forbidden", "You cannot delete a public image.")
            }
            Some(i) => {
                self.images.remove(i);
                (204, None)
            }
            None => not_found(),
        }
    }

    // ---------------------------------------------------------- vpcs

    /// The region's default VPC, created on first use; its id.
    fn default_vpc(&mut self, region: &str) -> String {
        if let Some(v) = self.vpcs.iter().find(|v| v.region == region && v.default) {
            return v.id.clone();
        }
        let index = REGIONS.iter().position(|(s, _)| *s == region).unwrap_or(0) as u32;
        let base = (10 << 24) | ((100 + 2 * index) << 16);
        self.add_vpc(&format!("default-{region}"), region, (base, 20), "", true)
    }

    fn add_vpc(
        &mut self,
        name: &str,
        region: &str,
        range: (u32, u8),
        description: &str,
        default: bool,
    ) -> String {
        let id = self.uuid(0x5ca1_ab1e);
        self.vpcs.push(Vpc {
            id: id.clone(),
            name: name.into(),
            region: region.into(),
            range,
            description: description.into(),
            default,
            created_at: now(),
            next_host: 2,
        });
        id
    }

    fn check_range(&self, range: &str) -> Result<(u32, u8), Answer> {
        let Some((address, prefix)) = parse_cidr(range) else {
            return Err(invalid(&format!(
                "ip_range `{range}` is not a network in CIDR notation"
            )));
        };
        if !(16..=28).contains(&prefix) {
            return Err(invalid(
                "ip_range may not be smaller than /28 nor larger than /16",
            ));
        }
        if !self
            .private_ranges
            .iter()
            .any(|&(n, p)| contains((n, p), (address, prefix)))
        {
            return Err(invalid(
                "ip_range must be within the private ranges of RFC 1918",
            ));
        }
        if let Some(other) = self
            .vpcs
            .iter()
            .find(|v| overlaps(v.range, (address, prefix)))
        {
            return Err(invalid(&format!(
                "ip_range {range} overlaps the VPC `{}` ({})",
                other.name,
                cidr(other.range)
            )));
        }
        Ok((address, prefix))
    }

    fn list_vpcs(&self, r: &Request) -> Answer {
        paginate(r, "vpcs", self.vpcs.iter().map(Vpc::json).collect())
    }

    fn create_vpc(&mut self, body: &Value) -> Answer {
        let name = text(body, "name");
        let region = text(body, "region");
        if name.is_empty() {
            return invalid("name is required");
        }
        if !known_region(&region) {
            return invalid("region is not available");
        }
        if self.vpcs.iter().any(|v| v.name == name) {
            return invalid(&format!("A VPC with the name `{name}` already exists"));
        }
        let description = text(body, "description");
        if description.len() > 255 {
            return invalid("description is longer than 255 characters");
        }
        self.default_vpc(&region);
        let range = match body["ip_range"].as_str() {
            Some(range) => match self.check_range(range) {
                Ok(r) => r,
                Err(e) => return e,
            },
            None => match (0..=255u32)
                .map(|b| ((10 << 24) | (b << 16), 20))
                .find(|&r| !self.vpcs.iter().any(|v| overlaps(v.range, r)))
            {
                Some(r) => r,
                None => return invalid("no free /20 left for this VPC"),
            },
        };
        let id = self.add_vpc(&name, &region, range, &description, false);
        let vpc = self.vpcs.iter().find(|v| v.id == id).unwrap();
        (201, Some(json!({"vpc": vpc.json()})))
    }

    fn get_vpc(&self, id: &str) -> Answer {
        match self.vpcs.iter().find(|v| v.id == id) {
            Some(v) => (200, Some(json!({"vpc": v.json()}))),
            None => not_found(),
        }
    }

    fn vpc_members(&self, r: &Request, id: &str) -> Answer {
        if !self.vpcs.iter().any(|v| v.id == id) {
            return not_found();
        }
        let wanted = r.param("resource_type");
        let members = self
            .droplets
            .iter()
            .filter(|d| d.vpc_uuid == id)
            .filter(|_| wanted.is_none_or(|t| t == "droplet"))
            .map(|d| {
                json!({"name": d.name, "urn": format!("do:droplet:{}", d.id),
                       "created_at": d.created_at})
            })
            .collect();
        paginate(r, "members", members)
    }

    fn delete_vpc(&mut self, id: &str) -> Answer {
        let Some(i) = self.vpcs.iter().position(|v| v.id == id) else {
            return not_found();
        };
        if self.vpcs[i].default {
            return error(
                403,
                "forbidden",
                "Cannot delete the default VPC of a region.",
            );
        }
        if self.droplets.iter().any(|d| d.vpc_uuid == id) {
            return error(403, "forbidden", "Can not delete VPC with members");
        }
        self.vpcs.remove(i);
        (204, None)
    }

    // ---------------------------------------------------------- volumes

    fn list_volumes(&self, r: &Request) -> Answer {
        let name = r.param("name");
        let region = r.param("region");
        let volumes = self
            .volumes
            .iter()
            .filter(|v| name.is_none_or(|n| v.name == n))
            .filter(|v| region.is_none_or(|g| v.region == g))
            .map(Volume::json)
            .collect();
        paginate(r, "volumes", volumes)
    }

    fn create_volume(&mut self, body: &Value) -> Answer {
        let name = text(body, "name");
        let region = text(body, "region");
        let size = body["size_gigabytes"].as_u64().unwrap_or(0);
        let valid_name = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return invalid(
                "name must start with a lowercase letter and hold only lowercase letters, \
                 numbers and dashes, at most 64 characters",
            );
        }
        if !(1..=16384).contains(&size) {
            return invalid("size_gigabytes must be between 1 and 16384");
        }
        if !known_region(&region) {
            return invalid("region is not available");
        }
        if body.get("snapshot_id").is_some_and(|s| !s.is_null()) {
            return invalid("snapshot_id: no such snapshot");
        }
        if self
            .volumes
            .iter()
            .any(|v| v.name == name && v.region == region)
        {
            return error(
                409,
                "conflict",
                "a volume with that name already exists in this region",
            );
        }
        let tags = strings(&body["tags"]);
        if let Err(e) = self.use_tags(&tags) {
            return e;
        }
        self.default_vpc(&region);
        let volume = Volume {
            id: self.uuid(0xb10c_b10c),
            name,
            region,
            size,
            description: text(body, "description"),
            tags,
            droplet_ids: Vec::new(),
            filesystem_type: text(body, "filesystem_type"),
            filesystem_label: text(body, "filesystem_label"),
            created_at: now(),
        };
        let answer = json!({"volume": volume.json()});
        self.changed(Change::VolumeCreated {
            name: volume.name.clone(),
            size_gib: volume.size,
        });
        self.volumes.push(volume);
        (201, Some(answer))
    }

    fn get_volume(&self, id: &str) -> Answer {
        match self.volumes.iter().find(|v| v.id == id) {
            Some(v) => (200, Some(json!({"volume": v.json()}))),
            None => not_found(),
        }
    }

    fn delete_volume(&mut self, id: &str) -> Answer {
        let Some(i) = self.volumes.iter().position(|v| v.id == id) else {
            return not_found();
        };
        if !self.volumes[i].droplet_ids.is_empty() {
            return error(
                409,
                "conflict",
                "A volume that's attached to a Droplet cannot be deleted. Please detach it \
                 first before deleting.",
            );
        }
        let volume = self.volumes.remove(i);
        self.changed(Change::VolumeDeleted { name: volume.name });
        (204, None)
    }

    fn volume_action(&mut self, id: &str, body: &Value) -> Answer {
        let Some(v) = self.volumes.iter().position(|v| v.id == id) else {
            return not_found();
        };
        let region = self.volumes[v].region.clone();
        if let Some(asked) = body["region"].as_str() {
            if asked != region {
                return invalid(&format!("the volume is in {region}, not in {asked}"));
            }
        }
        let kind = body["type"].as_str().unwrap_or("");
        if kind == "resize" {
            let size = body["size_gigabytes"].as_u64().unwrap_or(0);
            if size <= self.volumes[v].size || size > 16384 {
                return invalid("a volume can only grow, up to 16384 GiB");
            }
            self.volumes[v].size = size;
            let action = self.action("resize_volume", None, "volume", Some(&region));
            return self.action_answer(202, action);
        }
        let Some(droplet) = body["droplet_id"].as_u64() else {
            return invalid("droplet_id is required");
        };
        let Some(d) = self.droplets.iter().position(|d| d.id == droplet) else {
            return invalid(&format!("Droplet {droplet} not found"));
        };
        match kind {
            "attach" => {
                if self.droplets[d].region != region {
                    return invalid("the Droplet and the volume must be in the same region");
                }
                if !self.volumes[v].droplet_ids.is_empty() {
                    return invalid("Volume is already attached to a Droplet");
                }
                if self.droplets[d].volume_ids.len() >= 15 {
                    return invalid("a Droplet can have at most 15 volumes attached");
                }
                self.volumes[v].droplet_ids.push(droplet);
                self.droplets[d].volume_ids.push(id.to_owned());
                self.changed(Change::VolumeAttached {
                    name: self.volumes[v].name.clone(),
                    droplet,
                });
                let action = self.action("attach_volume", None, "backend", Some(&region));
                self.action_answer(202, action)
            }
            "detach" => {
                if !self.volumes[v].droplet_ids.contains(&droplet) {
                    return invalid("Attachment not found");
                }
                self.volumes[v].droplet_ids.retain(|&x| x != droplet);
                self.droplets[d].volume_ids.retain(|x| x != id);
                self.changed(Change::VolumeDetached {
                    name: self.volumes[v].name.clone(),
                    droplet,
                });
                let action = self.action("detach_volume", None, "backend", Some(&region));
                self.action_answer(202, action)
            }
            _ => invalid("type must be attach, detach or resize"),
        }
    }

    // ---------------------------------------------------------- droplets

    fn list_droplets(&mut self, r: &Request) -> Answer {
        let tag = r.param("tag_name");
        let name = r.param("name");
        let polls = if self.held {
            u32::MAX
        } else {
            self.droplet_polls
        };
        let matching: Vec<usize> = (0..self.droplets.len())
            .filter(|&i| {
                let d = &self.droplets[i];
                tag.is_none_or(|t| d.tags.iter().any(|x| x == t))
                    && name.is_none_or(|n| d.name == n)
            })
            .collect();
        // Only what the page shows has been read.
        for &i in matching.iter().skip(shown_from(r)).take(page_of(r).0) {
            self.droplets[i].read(polls);
        }
        let droplets = matching
            .iter()
            .map(|&i| self.droplets[i].json(self))
            .collect();
        paginate(r, "droplets", droplets)
    }

    fn create_droplets(&mut self, r: &Request, body: &Value) -> Answer {
        let multiple = body.get("names").is_some();
        let names: Vec<String> = if multiple {
            strings(&body["names"])
        } else {
            vec![text(body, "name")]
        };
        if names.is_empty() || names.iter().any(String::is_empty) {
            return invalid("name is required");
        }
        if names.len() > MULTI_CREATE_LIMIT {
            return invalid(&format!(
                "you can create at most {MULTI_CREATE_LIMIT} Droplets at once, not {}",
                names.len()
            ));
        }
        if self.droplets.len() + names.len() > DROPLET_LIMIT {
            return invalid(&format!(
                "creating {} Droplet(s) will exceed your Droplet limit of {DROPLET_LIMIT}",
                names.len()
            ));
        }
        let region = body["region"].as_str().unwrap_or("nyc3").to_owned();
        if !known_region(&region) {
            return invalid("Region is not available");
        }
        let size_slug = text(body, "size");
        let Some(size) = SIZES.iter().find(|s| s.slug == size_slug) else {
            return invalid("You specified an invalid size for Droplet creation.");
        };
        let image = match &body["image"] {
            Value::Number(n) => self.find_image(&n.to_string()),
            Value::String(s) => self.find_image(s),
            _ => None,
        };
        let Some(image) = image else {
            return invalid("You specified an invalid image for Droplet creation.");
        };
        let image = &self.images[image];
        if image.status != "available" {
            return invalid("The image is not available yet.");
        }
        if !image.public && !image.regions.contains(&region) {
            return invalid(&format!("The image is not available in {region}."));
        }
        // DigitalOcean's Custom Images Limits: no IPv6 on droplets from a
        // custom image, no monitoring enabled at creation. What the real
        // API answers is not documented; the fake refuses, so a client
        // asking for either is caught.
        if !image.public {
            for option in ["ipv6", "monitoring"] {
                if body[option] == Value::Bool(true) {
                    return invalid(&format!(
                        "{option} cannot be enabled on a Droplet created from a custom image"
                    ));
                }
            }
        }
        let image = image.json();
        let mut keys = Vec::new();
        for key in body["ssh_keys"].as_array().into_iter().flatten() {
            let id = match key {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            match self.find_key(&id) {
                Some(i) => keys.push(self.keys[i].fingerprint.clone()),
                None => return invalid(&format!("SSH key `{id}` not found on your account")),
            }
        }
        let user_data = body["user_data"].as_str().map(str::to_owned);
        if user_data
            .as_ref()
            .is_some_and(|u| u.len() > USER_DATA_LIMIT)
        {
            return invalid("user_data is limited to 64 KiB");
        }
        let vpc = match body["vpc_uuid"].as_str() {
            Some(id) => match self.vpcs.iter().find(|v| v.id == id) {
                Some(v) if v.region == region => v.id.clone(),
                Some(_) => return invalid("the VPC is in another region than the Droplet"),
                None => return invalid(&format!("VPC {id} not found")),
            },
            None => self.default_vpc(&region),
        };
        let volumes = strings(&body["volumes"]);
        if !volumes.is_empty() && names.len() > 1 {
            return invalid("volumes can be attached only when creating one Droplet");
        }
        for id in &volumes {
            match self.volumes.iter().find(|v| &v.id == id) {
                None => return invalid(&format!("volume {id} not found")),
                Some(v) if v.region != region => {
                    return invalid(&format!("volume {id} is in another region"))
                }
                Some(v) if !v.droplet_ids.is_empty() => {
                    return invalid(&format!("volume {id} is already attached"))
                }
                Some(_) => {}
            }
        }
        let tags = strings(&body["tags"]);
        if let Err(e) = self.use_tags(&tags) {
            return e;
        }
        let options = (
            body["monitoring"].as_bool().unwrap_or(false),
            body["ipv6"].as_bool().unwrap_or(false),
        );
        let mut created = Vec::new();
        let mut links = Vec::new();
        for name in &names {
            let id = self.add_droplet(
                name,
                &region,
                size,
                image.clone(),
                &vpc,
                tags.clone(),
                user_data.clone(),
                keys.clone(),
                options,
            );
            for volume in &volumes {
                if let Some(v) = self.volumes.iter_mut().find(|v| &v.id == volume) {
                    v.droplet_ids.push(id);
                }
            }
            let d = self.droplets.iter_mut().find(|d| d.id == id).unwrap();
            d.volume_ids = volumes.clone();
            let action = self.action("create", Some(id), "droplet", Some(&region));
            links.push(json!({"id": action, "rel": "create",
                              "href": r.url(&format!("/v2/actions/{action}"))}));
            let d = self.droplets.iter().find(|d| d.id == id).unwrap();
            created.push(d.json(self));
            let names = volumes
                .iter()
                .filter_map(|v| self.volumes.iter().find(|x| &x.id == v))
                .map(|v| v.name.clone())
                .collect();
            self.changed(Change::DropletCreated {
                id,
                name: name.clone(),
                volumes: names,
            });
        }
        self.changed(Change::FirewallsChanged);
        let answer = if multiple {
            json!({"droplets": created, "links": {"actions": links}})
        } else {
            json!({"droplet": created[0], "links": {"actions": links}})
        };
        (202, Some(answer))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_droplet(
        &mut self,
        name: &str,
        region: &str,
        size: &'static Size,
        image: Value,
        vpc: &str,
        tags: Vec<String>,
        user_data: Option<String>,
        ssh_keys: Vec<String>,
        (monitoring, ipv6): (bool, bool),
    ) -> u64 {
        let id = self.next_droplet;
        self.next_droplet += 1;
        let v = self.vpcs.iter_mut().find(|v| v.id == vpc).unwrap();
        let hosts = 1u32 << (32 - u32::from(v.range.1));
        let offset = if v.next_host + 1 < hosts {
            v.next_host
        } else {
            2
        };
        v.next_host = offset + 1;
        let (private_ip, private_range) = (v.range.0 + offset, v.range);
        let public_ip = self.public_pool.0 .0 | self.next_public;
        self.next_public = if self.next_public >= 254 {
            2
        } else {
            self.next_public + 1
        };
        let mut features = vec!["private_networking"];
        if monitoring {
            features.push("monitoring");
        }
        if ipv6 {
            features.push("ipv6");
        }
        self.droplets.push(Droplet {
            id,
            name: name.into(),
            region: region.into(),
            size,
            image,
            vpc_uuid: vpc.into(),
            tags,
            user_data,
            ssh_keys,
            volume_ids: Vec::new(),
            features,
            private_ip,
            private_range,
            public_ip,
            ipv6: ipv6
                .then(|| format!("2001:db8:0:1::{:x}:{:x}", (id >> 16) & 0xffff, id & 0xffff)),
            status: "new",
            polls: 0,
            created_at: now(),
        });
        id
    }

    fn get_droplet(&mut self, id: &str) -> Answer {
        let polls = if self.held {
            u32::MAX
        } else {
            self.droplet_polls
        };
        let Some(i) = self.droplets.iter().position(|d| d.id.to_string() == id) else {
            return not_found();
        };
        self.droplets[i].read(polls);
        (200, Some(json!({"droplet": self.droplets[i].json(self)})))
    }

    fn delete_droplet(&mut self, id: &str) -> Answer {
        let Some(i) = self.droplets.iter().position(|d| d.id.to_string() == id) else {
            return not_found();
        };
        let droplet = self.droplets.remove(i);
        // Its volumes are detached, not deleted.
        for v in &mut self.volumes {
            v.droplet_ids.retain(|&x| x != droplet.id);
        }
        for f in &mut self.firewalls {
            f.droplet_ids.retain(|&x| x != droplet.id);
        }
        self.action(
            "destroy",
            Some(droplet.id),
            "droplet",
            Some(&droplet.region),
        );
        self.changed(Change::DropletDeleted {
            id: droplet.id,
            name: droplet.name,
        });
        self.changed(Change::FirewallsChanged);
        (204, None)
    }

    // ---------------------------------------------------------- actions

    fn action_answer(&self, status: u16, id: u64) -> Answer {
        let a = self.actions.iter().find(|a| a.id == id).unwrap();
        let completed = status == 200;
        let mut action = json!({
            "id": a.id, "status": if completed { "completed" } else { "in-progress" },
            "type": a.kind, "started_at": a.started_at,
            "completed_at": if completed { json!(now()) } else { Value::Null },
            "resource_id": a.resource_id, "resource_type": a.resource_type,
            "region_slug": a.region,
        });
        if let Some(slug) = &a.region {
            action["region"] = region(slug);
        }
        (status, Some(json!({ "action": action })))
    }

    fn get_action(&self, id: &str) -> Answer {
        match self.actions.iter().find(|a| a.id.to_string() == id) {
            Some(a) => self.action_answer(200, a.id),
            None => not_found(),
        }
    }

    // ---------------------------------------------------------- firewalls

    fn list_firewalls(&self, r: &Request) -> Answer {
        paginate(
            r,
            "firewalls",
            self.firewalls.iter().map(Firewall::json).collect(),
        )
    }

    /// The firewall a body describes, checked as DigitalOcean does.
    fn firewall_from(&mut self, body: &Value, id: String) -> Result<Firewall, Answer> {
        let name = text(body, "name");
        if name.is_empty() {
            return Err(invalid("name is required"));
        }
        let rules = |key: &str, side: &str| -> Result<Vec<Value>, Answer> {
            let mut out = Vec::new();
            for rule in body[key].as_array().into_iter().flatten() {
                let protocol = text(rule, "protocol");
                let ports = match rule["ports"].as_str() {
                    Some("all") | Some("") | None => "0".to_owned(),
                    Some(p) => p.to_owned(),
                };
                let target = rule[side].as_object().cloned().unwrap_or_default();
                let empty = [
                    "addresses",
                    "droplet_ids",
                    "load_balancer_uids",
                    "kubernetes_ids",
                    "tags",
                ]
                .iter()
                .all(|k| {
                    target
                        .get(*k)
                        .and_then(Value::as_array)
                        .is_none_or(|a| a.is_empty())
                });
                if empty {
                    return Err(invalid(&format!(
                        "each of {key} needs at least one of addresses, droplet_ids, \
                         load_balancer_uids, kubernetes_ids or tags in {side}"
                    )));
                }
                out.push(json!({"protocol": protocol, "ports": ports, side: target}));
            }
            Ok(out)
        };
        let inbound = rules("inbound_rules", "sources")?;
        let outbound = rules("outbound_rules", "destinations")?;
        if inbound.is_empty() && outbound.is_empty() {
            return Err(invalid(
                "a firewall needs at least one inbound or outbound rule",
            ));
        }
        let droplet_ids: Vec<u64> = body["droplet_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        if let Some(missing) = droplet_ids
            .iter()
            .find(|id| !self.droplets.iter().any(|d| d.id == **id))
        {
            return Err(invalid(&format!("Droplet {missing} not found")));
        }
        let tags = strings(&body["tags"]);
        self.use_tags(&tags)?;
        Ok(Firewall {
            id,
            name,
            inbound,
            outbound,
            droplet_ids,
            tags,
            settled: false,
            created_at: now(),
        })
    }

    fn create_firewall(&mut self, body: &Value) -> Answer {
        let id = self.uuid(0xf12e_f12e);
        match self.firewall_from(body, id) {
            Ok(firewall) => {
                let answer = json!({"firewall": firewall.json()});
                self.firewalls.push(Firewall {
                    settled: true,
                    ..firewall
                });
                self.changed(Change::FirewallsChanged);
                (202, Some(answer))
            }
            Err(e) => e,
        }
    }

    fn get_firewall(&self, id: &str) -> Answer {
        match self.firewalls.iter().find(|f| f.id == id) {
            Some(f) => (200, Some(json!({"firewall": f.json()}))),
            None => not_found(),
        }
    }

    fn update_firewall(&mut self, id: &str, body: &Value) -> Answer {
        let Some(i) = self.firewalls.iter().position(|f| f.id == id) else {
            return not_found();
        };
        match self.firewall_from(body, id.to_owned()) {
            Ok(firewall) => {
                let created_at = self.firewalls[i].created_at.clone();
                self.firewalls[i] = Firewall {
                    settled: true,
                    created_at,
                    ..firewall
                };
                self.changed(Change::FirewallsChanged);
                (200, Some(json!({"firewall": self.firewalls[i].json()})))
            }
            Err(e) => e,
        }
    }

    fn delete_firewall(&mut self, id: &str) -> Answer {
        match self.firewalls.iter().position(|f| f.id == id) {
            Some(i) => {
                self.firewalls.remove(i);
                self.changed(Change::FirewallsChanged);
                (204, None)
            }
            None => not_found(),
        }
    }

    // ---------------------------------------------------------- snapshot

    fn snapshot(&self) -> Value {
        fn sorted(mut items: Vec<Value>) -> Value {
            items.sort_by_key(|v| v.to_string());
            Value::Array(items)
        }
        let sorted_strings = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let droplet_name = |id: &u64| {
            self.droplets
                .iter()
                .find(|d| d.id == *id)
                .map_or_else(|| format!("#{id}"), |d| d.name.clone())
        };
        let keys: BTreeMap<&str, &str> = self
            .keys
            .iter()
            .map(|k| (k.fingerprint.as_str(), k.name.as_str()))
            .collect();
        let images = self
            .images
            .iter()
            .filter(|i| !i.public)
            .map(|i| {
                json!({"name": i.name, "status": i.status, "distribution": i.distribution,
                       "region": i.region, "tags": sorted_strings(&i.tags)})
            })
            .collect();
        let vpcs = self
            .vpcs
            .iter()
            .map(|v| {
                json!({"name": v.name, "region": v.region, "ip_range": cidr(v.range),
                       "default": v.default, "description": v.description})
            })
            .collect();
        let volumes = self
            .volumes
            .iter()
            .map(|v| {
                let attached: Vec<String> = v.droplet_ids.iter().map(droplet_name).collect();
                json!({"name": v.name, "region": v.region, "size_gigabytes": v.size,
                       "tags": sorted_strings(&v.tags), "attached_to": attached})
            })
            .collect();
        let droplets = self
            .droplets
            .iter()
            .map(|d| {
                let vpc = self
                    .vpcs
                    .iter()
                    .find(|v| v.id == d.vpc_uuid)
                    .map_or("?", |v| v.name.as_str());
                let mut volumes: Vec<String> = d
                    .volume_ids
                    .iter()
                    .map(|id| {
                        self.volumes
                            .iter()
                            .find(|v| &v.id == id)
                            .map_or_else(|| id.clone(), |v| v.name.clone())
                    })
                    .collect();
                volumes.sort();
                let user_data = d
                    .user_data
                    .as_ref()
                    .map(|u| hex::encode(Sha256::digest(u.as_bytes())));
                let mut features = d.features.clone();
                features.sort_unstable();
                json!({"name": d.name, "size": d.size.slug, "region": d.region,
                       "image": d.image["name"], "vpc": vpc, "tags": sorted_strings(&d.tags),
                       "user_data_sha256": user_data, "ssh_keys": sorted_strings(&d.ssh_keys),
                       "volumes": volumes, "features": features})
            })
            .collect();
        let firewalls = self
            .firewalls
            .iter()
            .map(|f| {
                let rules = |rules: &[Value]| {
                    let mut rules: Vec<String> = rules.iter().map(Value::to_string).collect();
                    rules.sort();
                    rules
                };
                let mut droplets: Vec<String> = f.droplet_ids.iter().map(droplet_name).collect();
                droplets.sort();
                json!({"name": f.name, "inbound_rules": rules(&f.inbound),
                       "outbound_rules": rules(&f.outbound), "tags": sorted_strings(&f.tags),
                       "droplets": droplets})
            })
            .collect();
        json!({
            "tags": self.tags,
            "ssh_keys": keys,
            "images": sorted(images),
            "vpcs": sorted(vpcs),
            "volumes": sorted(volumes),
            "droplets": sorted(droplets),
            "firewalls": sorted(firewalls),
        })
    }
}

impl Image {
    fn json(&self) -> Value {
        let available = self.status == "available";
        let (min_disk, size) = match (available, self.public) {
            (false, _) => (Value::Null, Value::Null),
            (true, true) => (json!(7), json!(2.36)),
            (true, false) => (json!(15), json!(2.36)),
        };
        json!({
            "id": self.id, "name": self.name,
            "type": if self.public { "base" } else { "custom" },
            "distribution": self.distribution, "slug": self.slug, "public": self.public,
            "regions": self.regions, "created_at": self.created_at,
            "min_disk_size": min_disk, "size_gigabytes": size,
            "description": self.description, "tags": self.tags, "status": self.status,
            "error_message": "",
        })
    }
}

impl Vpc {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "urn": format!("do:vpc:{}", self.id), "name": self.name,
            "description": self.description, "region": self.region,
            "ip_range": cidr(self.range), "default": self.default,
            "created_at": self.created_at,
        })
    }
}

impl Volume {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "region": region(&self.region), "droplet_ids": self.droplet_ids,
            "name": self.name, "description": self.description,
            "size_gigabytes": self.size, "created_at": self.created_at,
            "filesystem_type": self.filesystem_type, "filesystem_label": self.filesystem_label,
            "tags": self.tags,
        })
    }
}

impl Droplet {
    /// One read of a `new` droplet (a GET, or a listing that shows it):
    /// after `polls` of them it is `active`.
    fn read(&mut self, polls: u32) {
        if self.status == "new" {
            if self.polls >= polls {
                self.status = "active";
            } else {
                self.polls += 1;
            }
        }
    }

    fn json(&self, state: &State) -> Value {
        let size = self.size;
        let mask = |prefix: u8| ip(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
        let mut v4 = vec![
            json!({"ip_address": ip(self.private_ip), "netmask": mask(self.private_range.1),
                   "gateway": ip(self.private_range.0 + 1), "type": "private"}),
            json!({"ip_address": ip(self.public_ip), "netmask": mask(state.public_pool.0 .1),
                   "gateway": ip(state.public_pool.1), "type": "public"}),
        ];
        if self.status == "new" {
            // Addresses appear once the droplet is placed, as on DigitalOcean.
            v4.clear();
        }
        let v6: Vec<Value> = match (&self.ipv6, self.status) {
            (Some(address), "active") => vec![json!({
                "ip_address": address, "netmask": 64, "gateway": "2001:db8:0:1::1",
                "type": "public"})],
            _ => Vec::new(),
        };
        let volume_ids: Vec<&String> = self
            .volume_ids
            .iter()
            .filter(|id| state.volumes.iter().any(|v| &v.id == *id))
            .collect();
        json!({
            "id": self.id, "name": self.name, "memory": size.memory, "vcpus": size.vcpus,
            "disk": size.disk,
            "disk_info": [{"type": "local", "size": {"amount": size.disk, "unit": "gib"}}],
            "locked": false, "status": self.status, "kernel": null,
            "created_at": self.created_at, "features": self.features, "backup_ids": [],
            "next_backup_window": null, "snapshot_ids": [], "image": self.image,
            "volume_ids": volume_ids,
            "size": {
                "slug": size.slug, "memory": size.memory, "vcpus": size.vcpus, "disk": size.disk,
                "transfer": size.transfer, "price_monthly": size.monthly,
                "price_hourly": size.hourly,
                "regions": REGIONS.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                "available": true, "description": "Basic",
                "disk_info": [{"type": "local", "size": {"amount": size.disk, "unit": "gib"}}],
            },
            "size_slug": size.slug,
            "networks": {"v4": v4, "v6": v6},
            "region": region(&self.region),
            "tags": self.tags,
            "vpc_uuid": self.vpc_uuid,
        })
    }
}

impl Firewall {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name,
            "status": if self.settled { "succeeded" } else { "waiting" },
            "inbound_rules": self.inbound, "outbound_rules": self.outbound,
            "created_at": self.created_at, "droplet_ids": self.droplet_ids, "tags": self.tags,
            "pending_changes": [],
        })
    }
}

// ---------------------------------------------------------------- helpers

fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (address, prefix) = s.split_once('/')?;
    let address: std::net::Ipv4Addr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    let address = u32::from(address);
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    (address & mask == address).then_some((address, prefix))
}

fn cidr((address, prefix): (u32, u8)) -> String {
    format!("{}/{prefix}", ip(address))
}

fn ip(address: u32) -> String {
    std::net::Ipv4Addr::from(address).to_string()
}

/// Whether network `outer` contains network `inner`.
fn contains(outer: (u32, u8), inner: (u32, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(outer.1)).unwrap_or(0);
    inner.1 >= outer.1 && inner.0 & mask == outer.0
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    contains(a, b) || contains(b, a)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time now as `YYYY-MM-DDTHH:MM:SSZ`.
fn now() -> String {
    let secs = unix_now();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// DigitalOcean's fingerprint of a public key: the MD5 of the decoded key
/// blob, as colon-separated hex (what `ssh-keygen -E md5 -l` shows).
pub fn fingerprint(public_key: &str) -> Option<String> {
    let mut fields = public_key.split_whitespace();
    let kind = fields.next()?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(fields.next()?)
        .ok()?;
    // The blob starts with its own key type, length-prefixed.
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    if blob.get(4..4 + length)? != kind.as_bytes() {
        return None;
    }
    let digest = md5(&blob);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// MD5 (RFC 1321); no MD5 crate is in the lockfile.
fn md5(data: &[u8]) -> [u8; 16] {
    const SHIFTS: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    for chunk in message.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(SHIFTS[(i / 16) * 4 + i % 4]));
        }
        for (s, x) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(x);
        }
    }
    let mut out = [0; 16];
    for (i, word) in state.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}
