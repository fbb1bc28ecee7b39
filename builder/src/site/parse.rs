//! From the positioned YAML tree to a validated [`Site`]. Every check that
//! fails records an error at the offending key or value and parsing goes
//! on, so one run reports every mistake in the file.

use std::collections::HashMap;

use super::error::{SiteError, SiteErrors};
use super::names::{
    BaseUrl, BucketName, DomainName, HostName, Realm, Refusal, Slug, SshKey, VpcRange,
};
use super::yaml::{self, Key, Node, Pos, ScalarKind, Value};
use super::{Host, Publish, Role, Site, Volumes};
use crate::images::{self, release::Release, Base};

const TOP_KEYS: &[&str] = &[
    "domain_name",
    "kerberos_realm",
    "ssh_keys",
    "vpc_range",
    "publish",
    "defaults",
    "hosts",
];
const DEFAULT_KEYS: &[&str] = &["size", "region", "image", "release", "volumes"];
const HOST_KEYS: &[&str] = &["name", "role", "size", "volumes"];
const VOLUME_KEYS: &[&str] = &["data_gib", "swap_gib"];
const PUBLISH_KEYS: &[&str] = &["base_url", "spaces"];
const SPACES_KEYS: &[&str] = &["bucket", "region"];

const DEFAULT_SIZE: &str = "s-2vcpu-4gb";
const DEFAULT_IMAGE: &str = "fedora-coreos";
const DEFAULT_VPC_RANGE: &str = "172.30.0.0/24";
/// The first this many hosts are core hosts unless a role says otherwise.
const DEFAULT_CORE_HOSTS: usize = 3;
/// Memory a FreeIPA server or replica needs, in MiB (DigitalOcean's "2gb").
const FREEIPA_MIN_MIB: u32 = 2048;
const MIN_HOSTS: usize = 3;
/// DigitalOcean's largest volume is 16 TiB.
const MAX_DATA_GIB: u64 = 16 * 1024;
const MAX_SWAP_GIB: u64 = 64;

pub(super) fn site(file: &str, source: &str) -> Result<Site, SiteErrors> {
    let mut cx = Cx {
        file,
        errors: Vec::new(),
    };
    let site = match yaml::parse(source) {
        Err(e) => {
            cx.error(e.pos, e.message, e.help.as_deref());
            None
        }
        Ok(None) => {
            cx.error(
                Pos { line: 1, col: 1 },
                "the site file is empty",
                Some("start from `builder init`, or copy examples/hosts.yaml"),
            );
            None
        }
        Ok(Some(root)) => cx.site(&root),
    };
    match site {
        Some(site) if cx.errors.is_empty() => Ok(site),
        _ => {
            cx.errors.sort_by_key(|e| e.pos);
            Err(SiteErrors(cx.errors))
        }
    }
}

struct Cx<'f> {
    file: &'f str,
    errors: Vec<SiteError>,
}

/// The entries of one mapping, unknown keys already reported.
struct Fields<'n> {
    pos: Pos,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }
    fn key(&self, name: &str) -> Option<&'n Key> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k)
    }
}

impl Cx<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>, help: Option<&str>) {
        self.errors.push(SiteError {
            file: self.file.to_owned(),
            pos,
            message: message.into(),
            help: help.map(str::to_owned),
        });
    }

    fn refused(&mut self, pos: Pos, refusal: Refusal) {
        self.errors.push(SiteError {
            file: self.file.to_owned(),
            pos,
            message: refusal.message,
            help: refusal.help,
        });
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.error(
            node.pos,
            format!("{what} must be {expected}, but it is {}", node.kind_name()),
            None,
        );
    }

    /// A mapping whose keys are all in `allowed`; each other key is an
    /// error with the nearest allowed key as a suggestion.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, what, "a mapping of `key: value` lines");
            return None;
        };
        for (key, _) in entries {
            if allowed.contains(&key.name.as_str()) {
                continue;
            }
            if let Some(explained) = explain_misplaced(what, &key.name) {
                self.error(
                    key.pos,
                    format!("`{}` is not allowed in {what}", key.name),
                    Some(explained),
                );
                continue;
            }
            let help = suggest(&key.name, allowed)
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| format!("{what} takes: {}", allowed.join(", ")));
            self.error(
                key.pos,
                format!("unknown key `{}` in {what}", key.name),
                Some(&help),
            );
        }
        Some(Fields {
            pos: node.pos,
            entries,
        })
    }

    fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        what: &str,
        help: &str,
    ) -> Option<&'n Node> {
        let node = fields.get(name);
        if node.is_none() {
            self.error(fields.pos, format!("{what} lacks `{name}`"), Some(help));
        }
        node
    }

    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match (&node.value, node.scalar_kind()) {
            (Value::Scalar { text, .. }, Some(ScalarKind::Str)) => Some(text),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str, max: u64) -> Option<u32> {
        let (Value::Scalar { text, .. }, Some(ScalarKind::Int)) = (&node.value, node.scalar_kind())
        else {
            let help = match &node.value {
                Value::Scalar { text, quoted: true } if text.trim().parse::<u64>().is_ok() => {
                    Some(format!("remove the quotes: write `{}`", text.trim()))
                }
                // A unit written after the number, as in `10GB`.
                Value::Scalar { text, .. } => {
                    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
                    let unit = text[digits.len()..].trim();
                    (!digits.is_empty()
                        && !unit.is_empty()
                        && unit.chars().all(char::is_alphabetic))
                    .then(|| format!("write the number alone: `{digits}`"))
                }
                _ => None,
            };
            self.error(
                node.pos,
                format!(
                    "{what} must be a whole number, but it is {}",
                    node.kind_name()
                ),
                help.as_deref(),
            );
            return None;
        };
        match text.parse::<u64>() {
            Ok(n) if n <= max => Some(n as u32),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be between 0 and {max}, not {text}"),
                    None,
                );
                None
            }
        }
    }

    fn checked<T>(
        &mut self,
        node: &Node,
        what: &str,
        check: impl FnOnce(&str) -> Result<T, Refusal>,
    ) -> Option<T> {
        let text = self.string(node, what)?;
        match check(text) {
            Ok(value) => Some(value),
            Err(refusal) => {
                self.refused(node.pos, refusal);
                None
            }
        }
    }

    fn site(&mut self, root: &Node) -> Option<Site> {
        if !matches!(root.value, Value::Map(_)) {
            self.error(
                root.pos,
                format!("the site file must be a mapping of settings such as `domain_name: example.com`, but it is {}", root.kind_name()),
                Some("start from examples/hosts.yaml"),
            );
            return None;
        }
        let top = self.mapping(root, "the site file", TOP_KEYS)?;

        let domain = self
            .required(
                &top,
                "domain_name",
                "the site file",
                "add `domain_name: example.com`",
            )
            .and_then(|n| self.checked(n, "`domain_name`", DomainName::parse));
        let realm = match top.get("kerberos_realm") {
            Some(node) => self.checked(node, "`kerberos_realm`", Realm::parse),
            None => domain.as_ref().map(DomainName::default_realm),
        };
        let ssh_keys = self
            .required(
                &top,
                "ssh_keys",
                "the site file",
                "add `ssh_keys:` with at least one public key line",
            )
            .and_then(|n| self.ssh_keys(n));
        let vpc_range = match top.get("vpc_range") {
            Some(node) => self.checked(node, "`vpc_range`", VpcRange::parse),
            None => Some(VpcRange::parse(DEFAULT_VPC_RANGE).expect("the default range is valid")),
        };
        let publish = self
            .required(
                &top,
                "publish",
                "the site file",
                "add `publish:` with `base_url:` or `spaces:`",
            )
            .and_then(|n| self.publish(n));
        let defaults = match top.get("defaults") {
            Some(node) => self.defaults(node),
            None => {
                self.error(
                    top.pos,
                    "the site file lacks `defaults`",
                    Some("add `defaults:` with at least `region: <slug>`"),
                );
                None
            }
        };
        let hosts_node = self.required(
            &top,
            "hosts",
            "the site file",
            "add `hosts:` with at least three hosts",
        );
        // Hosts are checked even when `defaults` is broken, so that one run
        // reports the mistakes in both; the site is refused either way.
        let hosts = match (hosts_node, &defaults) {
            (Some(node), Some(defaults)) => self.hosts(node, defaults),
            (Some(node), None) => self.hosts(node, &Defaults::placeholder()),
            (None, _) => None,
        };

        if let (Some(hosts), Some(range), Some(node)) = (&hosts, &vpc_range, top.get("vpc_range")) {
            if hosts.len() as u64 > range.usable() {
                self.error(
                    node.pos,
                    format!(
                        "the VPC range {range} holds {} droplets, but the site has {} hosts",
                        range.usable(),
                        hosts.len()
                    ),
                    Some("choose a larger range (a smaller prefix length)"),
                );
            }
        }
        if let (Some(range), Some(defaults)) = (&vpc_range, &defaults) {
            let pos = top.get("vpc_range").map(|n| n.pos).unwrap_or(top.pos);
            let lab = defaults.image == crate::images::LAB;
            if range.is_lab_range() && !lab {
                self.error(
                    pos,
                    format!("{range} is the lab's test range; a DigitalOcean VPC needs a private (RFC 1918) range"),
                    Some("use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
                );
            } else if lab && !range.is_lab_range() {
                self.error(
                    pos,
                    "a site on the `lab` image boots in the lab, whose network is 198.18.0.0/15",
                    Some("set `vpc_range: 198.18.0.0/24`"),
                );
            }
        }
        let hosts_key_pos = top.key("hosts").map(|k| k.pos).unwrap_or(top.pos);
        if let Some(hosts) = &hosts {
            self.check_roles(hosts, hosts_key_pos);
        }

        let defaults = defaults?;
        Some(Site {
            domain: domain?,
            realm: realm?,
            ssh_keys: ssh_keys?,
            vpc_range: vpc_range?,
            region: defaults.region,
            release: defaults.release,
            publish: publish?,
            hosts: hosts?.into_iter().map(|(_, h)| h).collect(),
        })
    }

    fn ssh_keys(&mut self, node: &Node) -> Option<Vec<SshKey>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, "`ssh_keys`", "a list of public key lines");
            return None;
        };
        if items.is_empty() {
            self.error(
                node.pos,
                "`ssh_keys` is empty; DigitalOcean needs at least one SSH key for every droplet",
                Some("add a line such as `- ssh-ed25519 AAAA... you@laptop` (from ~/.ssh/id_ed25519.pub)"),
            );
            return None;
        }
        let keys: Vec<Option<SshKey>> = items
            .iter()
            .map(|item| self.checked(item, "an SSH key", SshKey::parse))
            .collect();
        keys.into_iter().collect()
    }

    fn publish(&mut self, node: &Node) -> Option<Publish> {
        let fields = self.mapping(node, "`publish`", PUBLISH_KEYS)?;
        match (fields.get("base_url"), fields.get("spaces")) {
            (Some(url), None) => self
                .checked(url, "`publish.base_url`", BaseUrl::parse)
                .map(Publish::BaseUrl),
            (None, Some(spaces)) => {
                let spaces = self.mapping(spaces, "`publish.spaces`", SPACES_KEYS)?;
                let bucket = self
                    .required(
                        &spaces,
                        "bucket",
                        "`publish.spaces`",
                        "add `bucket: <name>`",
                    )
                    .and_then(|n| self.checked(n, "`publish.spaces.bucket`", BucketName::parse));
                let region = self
                    .required(
                        &spaces,
                        "region",
                        "`publish.spaces`",
                        "add `region: <slug>`, such as `ams3`",
                    )
                    .and_then(|n| {
                        self.checked(n, "`publish.spaces.region`", |s| {
                            Slug::parse(s, "region", "ams3")
                        })
                    });
                Some(Publish::Spaces {
                    bucket: bucket?,
                    region: region?,
                })
            }
            (Some(_), Some(_)) => {
                self.error(
                    fields.pos,
                    "`publish` takes either `base_url` or `spaces`, not both",
                    None,
                );
                None
            }
            (None, None) => {
                self.error(
                    fields.pos,
                    "`publish` needs `base_url` or `spaces`",
                    Some("say where nodes fetch the firstboot binary"),
                );
                None
            }
        }
    }

    fn defaults(&mut self, node: &Node) -> Option<Defaults> {
        let fields = self.mapping(node, "`defaults`", DEFAULT_KEYS)?;
        let size = match fields.get("size") {
            Some(n) => self.checked(n, "`defaults.size`", |s| {
                Slug::parse(s, "size", DEFAULT_SIZE)
            }),
            None => Some(Slug::parse(DEFAULT_SIZE, "size", DEFAULT_SIZE).expect("valid default")),
        };
        let region = self
            .required(
                &fields,
                "region",
                "`defaults`",
                "add `region: <slug>`, such as `ams3`; every host of a site shares one region",
            )
            .and_then(|n| {
                self.checked(n, "`defaults.region`", |s| Slug::parse(s, "region", "ams3"))
            });
        let image = match fields.get("image") {
            Some(n) => self.checked(n, "`defaults.image`", check_image),
            None => Some(DEFAULT_IMAGE.to_owned()),
        };
        let release = match fields.get("release") {
            Some(n) => self.release(n, image.as_deref()).map(Some),
            None => Some(None),
        };
        let volumes = match fields.get("volumes") {
            Some(n) => self.volumes(
                n,
                "`defaults.volumes`",
                Volumes {
                    data_gib: 0,
                    swap_gib: 0,
                },
            ),
            None => Some(Volumes {
                data_gib: 0,
                swap_gib: 0,
            }),
        };
        Some(Defaults {
            size: size?,
            size_pos: fields.get("size").map(|n| n.pos),
            region: region?,
            image: image?,
            release: release?,
            volumes: volumes?,
        })
    }

    /// `defaults.release`: a release of the image's stream. Any scalar is
    /// read as text, so that `44.20260707` is told what it lacks rather
    /// than that it is a number.
    fn release(&mut self, node: &Node, image: Option<&str>) -> Option<Release> {
        let what = "`defaults.release`";
        let Value::Scalar { text, .. } = &node.value else {
            self.wrong_type(node, what, "a release such as `44.20260707.3.1`");
            return None;
        };
        if text.trim().is_empty() {
            self.error(
                node.pos,
                format!("{what} is empty"),
                Some(
                    "write a release such as `44.20260707.3.1`, or remove the line to launch \
                     the stream's current release",
                ),
            );
            return None;
        }
        // An image already refused is reported where it stands; the
        // release is then checked for its shape alone.
        let checked = match image.map(images::load) {
            Some(Ok(loaded)) => match loaded.base {
                Base::FedoraCoreos { stream, .. } => Release::parse_for_stream(text, &stream),
                Base::Debian { .. } => Err(Refusal::new(format!(
                    "{what} pins a Fedora CoreOS release, but the `{}` image has none: it \
                     boots only in a lab cloud",
                    loaded.name
                ))
                .help("remove `release`, or set `image: fedora-coreos`")),
            },
            _ => Release::parse(text),
        };
        match checked {
            Ok(release) => Some(release),
            Err(refusal) => {
                self.refused(node.pos, refusal);
                None
            }
        }
    }

    fn volumes(&mut self, node: &Node, what: &str, base: Volumes) -> Option<Volumes> {
        let fields = self.mapping(node, what, VOLUME_KEYS)?;
        let mut volumes = base;
        let mut ok = true;
        // `what` is a dotted path in backticks: name the key inside them.
        let path = |key: &str| format!("{}.{key}`", what.trim_end_matches('`'));
        if let Some(n) = fields.get("data_gib") {
            match self.integer(n, &path("data_gib"), MAX_DATA_GIB) {
                Some(v) => volumes.data_gib = v,
                None => ok = false,
            }
        }
        if let Some(n) = fields.get("swap_gib") {
            match self.integer(n, &path("swap_gib"), MAX_SWAP_GIB) {
                Some(v) => volumes.swap_gib = v,
                None => ok = false,
            }
        }
        ok.then_some(volumes)
    }

    /// Hosts with the position each was written at.
    fn hosts(&mut self, node: &Node, defaults: &Defaults) -> Option<Vec<(Pos, Host)>> {
        let Value::Seq(items) = &node.value else {
            let help = match &node.value {
                Value::Scalar { text, .. } => {
                    let names: Vec<&str> = text
                        .split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|n| !n.is_empty())
                        .collect();
                    format!(
                        "write one host a line under `hosts:` (`  - {}`), or a list in brackets: \
                         `hosts: [{}]`",
                        names.first().unwrap_or(&"ns1"),
                        names.join(", ")
                    )
                }
                _ => "write one host a line under `hosts:`, as `  - ns1`".to_owned(),
            };
            self.error(
                node.pos,
                format!(
                    "`hosts` must be a list of hosts, but it is {}",
                    node.kind_name()
                ),
                Some(&help),
            );
            return None;
        };
        let mut hosts = Vec::new();
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let Some((name_pos, host)) = self.host(item, index, defaults) else {
                ok = false;
                continue;
            };
            if let Some(first) = seen.get(host.name.as_str()) {
                self.error(
                    name_pos,
                    format!(
                        "host `{}` is listed twice (first at line {})",
                        host.name, first.line
                    ),
                    Some("every host needs its own name"),
                );
                ok = false;
                continue;
            }
            seen.insert(host.name.as_str().to_owned(), name_pos);
            hosts.push((item.pos, host));
        }
        if ok && hosts.len() < MIN_HOSTS {
            self.error(
                node.pos,
                format!(
                    "a site needs at least {MIN_HOSTS} hosts, but this one has {}",
                    hosts.len()
                ),
                Some("etcd and FreeIPA keep working with one host down only from three hosts up"),
            );
            return None;
        }
        ok.then_some(hosts)
    }

    /// A host: a mapping, or just its name as shorthand.
    fn host(&mut self, node: &Node, index: usize, defaults: &Defaults) -> Option<(Pos, Host)> {
        let default_role = if index < DEFAULT_CORE_HOSTS {
            Role::Core
        } else {
            Role::Worker
        };
        if matches!(node.value, Value::Scalar { .. }) {
            let name = self.checked(node, "a host name", HostName::parse)?;
            let host = Host {
                name,
                role: default_role,
                size: defaults.size.clone(),
                image: defaults.image.clone(),
                volumes: defaults.volumes,
            };
            self.check_freeipa_size(&host, None, defaults);
            return Some((node.pos, host));
        }
        let fields = self.mapping(node, "a host", HOST_KEYS)?;
        let name_node = self.required(
            &fields,
            "name",
            "this host",
            "add `name: <short host name>`",
        )?;
        let name = self.checked(name_node, "a host name", HostName::parse);
        let role = match fields.get("role") {
            Some(n) => self.checked(n, "`role`", |s| match s {
                "core" => Ok(Role::Core),
                "worker" => Ok(Role::Worker),
                other => Err(Refusal {
                    message: format!("`{other}` is not a role"),
                    help: Some(
                        suggest(other, &["core", "worker"])
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| "a role is `core` or `worker`".into()),
                    ),
                }),
            }),
            None => Some(default_role),
        };
        let size = match fields.get("size") {
            Some(n) => self.checked(n, "`size`", |s| Slug::parse(s, "size", DEFAULT_SIZE)),
            None => Some(defaults.size.clone()),
        };
        let volumes = match fields.get("volumes") {
            Some(n) => self.volumes(n, "`volumes`", defaults.volumes),
            None => Some(defaults.volumes),
        };
        let host = Host {
            name: name?,
            role: role?,
            size: size?,
            image: defaults.image.clone(),
            volumes: volumes?,
        };
        self.check_freeipa_size(&host, fields.get("size").map(|n| n.pos), defaults);
        Some((name_node.pos, host))
    }

    /// A core host runs a FreeIPA server or replica: its installer refuses
    /// below about 1.2 GB of memory and its CA struggles on 1 GB, so a core
    /// host needs a size with 2 GB or more. Sizes whose memory the slug does
    /// not tell are let through.
    fn check_freeipa_size(&mut self, host: &Host, own_pos: Option<Pos>, defaults: &Defaults) {
        if host.role != Role::Core {
            return;
        }
        let Some(mib) = size_memory_mib(host.size.as_str()) else {
            return;
        };
        if mib >= FREEIPA_MIN_MIB {
            return;
        }
        let (pos, from) = match (own_pos, defaults.size_pos) {
            (Some(pos), _) => (pos, String::new()),
            (None, Some(pos)) => (pos, " (from `defaults.size`)".to_owned()),
            (None, None) => return,
        };
        let memory = if mib % 1024 == 0 {
            format!("{} GB", mib / 1024)
        } else {
            format!("{mib} MB")
        };
        self.error(
            pos,
            format!(
                "`{}` has {memory} of memory{from}, but core host `{}` runs a FreeIPA server or \
                 replica, which needs at least 2 GB",
                host.size, host.name
            ),
            Some("use `s-1vcpu-2gb` or larger (`s-2vcpu-4gb` is comfortable), or make the host `role: worker`"),
        );
    }

    fn check_roles(&mut self, hosts: &[(Pos, Host)], pos: Pos) {
        let core = hosts.iter().filter(|(_, h)| h.role == Role::Core).count();
        if core < 3 || core % 2 == 0 {
            self.error(
                pos,
                format!("the site has {core} core host{}; it needs an odd number, at least 3", if core == 1 { "" } else { "s" }),
                Some("core hosts form the etcd and FreeIPA quorum; by default the first three hosts are core, `role: core` or `role: worker` overrides that"),
            );
        }
    }
}

struct Defaults {
    size: Slug,
    /// Where `defaults.size` was written, if it was.
    size_pos: Option<Pos>,
    region: Slug,
    image: String,
    /// The Fedora CoreOS release pinned, if one is.
    release: Option<Release>,
    volumes: Volumes,
}

impl Defaults {
    /// Stands in for a `defaults` that has errors, only to check the hosts.
    fn placeholder() -> Defaults {
        let slug = |s| Slug::parse(s, "size", DEFAULT_SIZE).expect("valid placeholder");
        Defaults {
            size: slug(DEFAULT_SIZE),
            size_pos: None,
            region: slug("ams3"),
            image: DEFAULT_IMAGE.to_owned(),
            release: None,
            volumes: Volumes {
                data_gib: 0,
                swap_gib: 0,
            },
        }
    }
}

/// Keys that are reasonable guesses but wrong where they stand: say why.
fn explain_misplaced(what: &str, key: &str) -> Option<&'static str> {
    match (what, key) {
        ("a host", "region") => Some("a DigitalOcean VPC lives in one region, so every host of a site shares `defaults.region`"),
        ("a host", "image") => Some("every host of a site runs the same image: set `defaults.image`"),
        ("a host", "release") => Some("every host of a site runs the same release: set `defaults.release`"),
        ("the site file", "size" | "region" | "image" | "release" | "volumes") => Some("this setting belongs under `defaults:`"),
        _ => None,
    }
}

/// The allowed name nearest to a mistyped one, if any is close.
fn suggest<'a>(typo: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|&candidate| (strsim::jaro_winkler(typo, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

fn check_image(name: &str) -> Result<String, Refusal> {
    let images = crate::images::names();
    if images.contains(&name) {
        return Ok(name.to_owned());
    }
    Err(Refusal {
        message: format!("`{name}` is not a node image this builder knows"),
        help: Some(match suggest(name, &images) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("known images: {}", images.join(", ")),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "domain_name: example.com\nssh_keys:\n  - ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIBdn1ZXuEs9c6tnGpQUc3YXUDBklgj/+6uuPBcm7fkBn op@example\n\
        publish:\n  base_url: https://dl.example.com/fb\ndefaults:\n  region: ams3\n";

    /// `defaults.release` is optional; written, it is the checked release.
    #[test]
    fn a_release_is_pinned_under_defaults_or_not_at_all() {
        let hosts = "hosts: [ns1, ns2, ns3]\n";
        let unpinned = super::site("s", &format!("{SITE}{hosts}")).unwrap();
        assert_eq!(unpinned.release, None);
        let pinned =
            super::site("s", &format!("{SITE}  release: 44.20260707.3.1\n{hosts}")).unwrap();
        assert_eq!(
            pinned.release.map(|r| r.to_string()).as_deref(),
            Some("44.20260707.3.1")
        );
        for (release, why) in [
            ("\"\"", "is empty"),
            ("[44]", "must be a release"),
            ("44.20260707.3.1.0", "5 dot-separated parts"),
        ] {
            let errors = super::site("s", &format!("{SITE}  release: {release}\n{hosts}"))
                .unwrap_err()
                .0;
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].pos.line, 8, "{errors:?}");
            assert!(errors[0].message.contains(why), "{errors:?}");
        }
    }

    #[test]
    fn suggestions_find_near_names() {
        assert_eq!(suggest("domain", TOP_KEYS), Some("domain_name"));
        assert_eq!(suggest("domian_name", TOP_KEYS), Some("domain_name"));
        assert_eq!(suggest("ssh_key", TOP_KEYS), Some("ssh_keys"));
        assert_eq!(suggest("zzz", TOP_KEYS), None);
    }
}

/// A DigitalOcean size's memory in MiB, as its slug tells it: the first
/// `<n>mb`/`<n>gb` part (`s-1vcpu-512mb-10gb`, `s-2vcpu-4gb`), or 2 GB per
/// vCPU for the CPU-optimised `c-<n>`/`c2-<n>`. `None` when the slug does
/// not say.
pub fn size_memory_mib(slug: &str) -> Option<u32> {
    let parts: Vec<&str> = slug.split('-').collect();
    for part in &parts[1..] {
        let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &part[digits.len()..];
        let Ok(n) = digits.parse::<u32>() else {
            continue;
        };
        match unit {
            "gb" => return n.checked_mul(1024),
            "mb" => return Some(n),
            _ => {}
        }
    }
    match parts.as_slice() {
        ["c" | "c2", n] => n.parse::<u32>().ok().and_then(|n| n.checked_mul(2048)),
        _ => None,
    }
}

#[cfg(test)]
mod size_tests {
    use super::size_memory_mib;

    #[test]
    fn memory_is_read_from_the_slug() {
        assert_eq!(size_memory_mib("s-1vcpu-512mb-10gb"), Some(512));
        assert_eq!(size_memory_mib("s-1vcpu-1gb"), Some(1024));
        assert_eq!(size_memory_mib("s-1vcpu-2gb"), Some(2048));
        assert_eq!(size_memory_mib("s-2vcpu-4gb-amd"), Some(4096));
        assert_eq!(size_memory_mib("m-2vcpu-16gb"), Some(16384));
        assert_eq!(size_memory_mib("c-2"), Some(4096));
        assert_eq!(size_memory_mib("gpu-h100x1-80gb"), Some(81920));
        assert_eq!(size_memory_mib("mystery"), None);
    }
}
