//! Every JSON-RPC request the client can send, built in one place, so a
//! test can check each against FreeIPA's `API.txt` (see `tests.rs`, which
//! also makes sure no builder here is left out of [`examples`]).
//!
//! Options are those FreeIPA 4.9 (API 2.251) already had and 4.13 (2.257)
//! still has; see [`API_VERSION`].

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// The API version every request carries. A server refuses only another
/// major version (`verify_client_version`), so 2.251 (FreeIPA 4.9, the
/// oldest we support) is accepted by 4.9 through 4.13 (2.257); the minor
/// only selects encodings, and from 2.88 on they are the same (DNS names as
/// `{"__dns_name__": ...}`, dates as `{"__datetime__": ...}`), so a newer
/// server answers a 2.251 client exactly as it answers a 2.257 one.
pub const API_VERSION: &str = "2.251";

/// One request: `{"method", "params": [args, options]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub args: Vec<Value>,
    pub options: Map<String, Value>,
    /// Whether the command changes anything when it succeeds.
    pub mutating: bool,
    /// How long one exchange of this command may take, when longer than
    /// the client's usual (a command that waits on the server's side).
    pub timeout: Option<Duration>,
}

/// How long `server_del` may take: it waits for replication to remove
/// the server's agreements, up to 90 rounds of 2 s (freeipa
/// `ipaserver/plugins/server.py`, `wait_for_segment_removal`), after the
/// removals before it; with room to spare.
pub const SERVER_DEL_TIMEOUT: Duration = Duration::from_secs(5 * 60);

impl Call {
    fn new(method: &'static str, args: Vec<Value>, options: Value, mutating: bool) -> Call {
        let mut options = match options {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        options.insert("version".into(), json!(API_VERSION));
        Call {
            method,
            args,
            options,
            mutating,
            timeout: None,
        }
    }

    fn taking(mut self, timeout: Duration) -> Call {
        self.timeout = Some(timeout);
        self
    }

    /// `[args, options]`.
    pub fn params(&self) -> Value {
        json!([self.args, self.options])
    }

    /// The JSON-RPC body.
    pub fn body(&self, id: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({"method": self.method, "params": self.params(), "id": id}))
            .unwrap_or_default()
    }
}

/// A DNS record the client manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    /// Target host name (absolute or not; stored absolute).
    Ptr(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

impl Record {
    /// The `dnsrecord_*` option name.
    pub fn option(&self) -> &'static str {
        match self {
            Record::A(_) => "arecord",
            Record::Ptr(_) => "ptrrecord",
            Record::Srv { .. } => "srvrecord",
        }
    }

    /// The value as FreeIPA stores it (names absolute).
    pub fn value(&self) -> String {
        let absolute = |name: &str| format!("{}.", name.trim_end_matches('.'));
        match self {
            Record::A(ip) => ip.to_string(),
            Record::Ptr(target) => absolute(target),
            Record::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {}", absolute(target)),
        }
    }
}

/// Replication suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix {
    Domain,
    Ca,
}

impl Suffix {
    pub fn name(self) -> &'static str {
        match self {
            Suffix::Domain => "domain",
            Suffix::Ca => "ca",
        }
    }
}

pub fn ping() -> Call {
    Call::new("ping", vec![], json!({}), false)
}

pub fn host_show(fqdn: &str) -> Call {
    Call::new("host_show", vec![json!(fqdn)], json!({}), false)
}

/// `password`: Some = this one-time password, None = let the server
/// generate one (`random`). `ip_address` also adds the A (and PTR) record.
///
/// `force`: skip FreeIPA's check that the name resolves
/// (`verify_host_resolvable`, freeipa `ipaserver/plugins/host.py`), for a
/// name whose record the caller has just put in FreeIPA's DNS: the check
/// asks the server's resolver, which need not be FreeIPA's own DNS (a
/// container started without `--dns`), nor have it yet.
pub fn host_add(
    fqdn: &str,
    password: Option<&str>,
    ip_address: Option<Ipv4Addr>,
    force: bool,
) -> Call {
    let mut options = Map::new();
    match password {
        Some(password) => options.insert("userpassword".into(), json!(password)),
        None => options.insert("random".into(), json!(true)),
    };
    if let Some(ip) = ip_address {
        options.insert("ip_address".into(), json!(ip.to_string()));
    }
    if force {
        options.insert("force".into(), json!(true));
    }
    Call::new("host_add", vec![json!(fqdn)], Value::Object(options), true)
}

/// Set a one-time password on a host that has none.
pub fn host_mod_password(fqdn: &str, password: &str) -> Call {
    Call::new(
        "host_mod",
        vec![json!(fqdn)],
        json!({ "userpassword": password }),
        true,
    )
}

/// Disable an enrolled host: FreeIPA removes its keytab (and revokes its
/// certificates), so it may enroll again with a new one-time password.
pub fn host_disable(fqdn: &str) -> Call {
    Call::new("host_disable", vec![json!(fqdn)], json!({}), true)
}

pub fn hostgroup_show(name: &str) -> Call {
    Call::new("hostgroup_show", vec![json!(name)], json!({}), false)
}

pub fn hostgroup_add(name: &str, description: &str) -> Call {
    Call::new(
        "hostgroup_add",
        vec![json!(name)],
        json!({ "description": description }),
        true,
    )
}

pub fn hostgroup_add_member(name: &str, hosts: &[String]) -> Call {
    Call::new(
        "hostgroup_add_member",
        vec![json!(name)],
        json!({ "host": hosts }),
        true,
    )
}

pub fn service_show(principal: &str) -> Call {
    Call::new("service_show", vec![json!(principal)], json!({}), false)
}

pub fn service_add(principal: &str) -> Call {
    Call::new("service_add", vec![json!(principal)], json!({}), true)
}

pub fn dnszone_show(zone: &str) -> Call {
    Call::new("dnszone_show", vec![json!(zone)], json!({}), false)
}

/// `skip_overlap_check`: a zone some public server already answers for
/// (a reverse zone of a private range, say) is refused without it.
pub fn dnszone_add(zone: &str, skip_overlap_check: bool) -> Call {
    let options = if skip_overlap_check {
        json!({ "skip_overlap_check": true })
    } else {
        json!({})
    };
    Call::new("dnszone_add", vec![json!(zone)], options, true)
}

pub fn dnsrecord_show(zone: &str, name: &str) -> Call {
    Call::new(
        "dnsrecord_show",
        vec![json!(zone), json!(name)],
        json!({}),
        false,
    )
}

pub fn dnsrecord_add(zone: &str, name: &str, record: &Record) -> Call {
    record_value("dnsrecord_add", zone, name, record)
}

/// Remove one value of a record (the record goes when it was the last).
pub fn dnsrecord_del(zone: &str, name: &str, record: &Record) -> Call {
    record_value("dnsrecord_del", zone, name, record)
}

/// `dnsrecord_add` or `_del` of one value.
fn record_value(method: &'static str, zone: &str, name: &str, record: &Record) -> Call {
    let mut options = Map::new();
    options.insert(record.option().into(), json!([record.value()]));
    Call::new(
        method,
        vec![json!(zone), json!(name)],
        Value::Object(options),
        true,
    )
}

pub fn topologysegment_find(suffix: Suffix) -> Call {
    Call::new(
        "topologysegment_find",
        vec![json!(suffix.name())],
        json!({}),
        false,
    )
}

pub fn topologysegment_add(suffix: Suffix, name: &str, left: &str, right: &str) -> Call {
    Call::new(
        "topologysegment_add",
        vec![json!(suffix.name()), json!(name)],
        json!({
            "iparepltoposegmentleftnode": left,
            "iparepltoposegmentrightnode": right,
        }),
        true,
    )
}

pub fn server_find() -> Call {
    Call::new("server_find", vec![], json!({}), false)
}

/// Remove a server from the deployment: its agreements, its principals
/// and its host entry. No option that overrides FreeIPA's own refusals
/// (a topology it would disconnect, the last CA).
pub fn server_del(fqdn: &str) -> Call {
    Call::new("server_del", vec![json!([fqdn])], json!({}), true).taking(SERVER_DEL_TIMEOUT)
}

pub fn server_show(fqdn: &str) -> Call {
    Call::new("server_show", vec![json!(fqdn)], json!({}), false)
}

pub fn ca_show(name: &str) -> Call {
    Call::new("ca_show", vec![json!(name)], json!({}), false)
}

pub fn ca_add(name: &str, subject_dn: &str, description: &str) -> Call {
    Call::new(
        "ca_add",
        vec![json!(name)],
        json!({ "ipacasubjectdn": subject_dn, "description": description }),
        true,
    )
}

pub fn caacl_show(name: &str) -> Call {
    Call::new("caacl_show", vec![json!(name)], json!({}), false)
}

pub fn caacl_add(name: &str, description: &str) -> Call {
    Call::new(
        "caacl_add",
        vec![json!(name)],
        json!({ "description": description }),
        true,
    )
}

pub fn caacl_add_host(name: &str, hosts: &[String], hostgroups: &[String]) -> Call {
    let mut options = Map::new();
    if !hosts.is_empty() {
        options.insert("host".into(), json!(hosts));
    }
    if !hostgroups.is_empty() {
        options.insert("hostgroup".into(), json!(hostgroups));
    }
    Call::new(
        "caacl_add_host",
        vec![json!(name)],
        Value::Object(options),
        true,
    )
}

pub fn caacl_add_service(name: &str, services: &[String]) -> Call {
    Call::new(
        "caacl_add_service",
        vec![json!(name)],
        json!({ "service": services }),
        true,
    )
}

pub fn caacl_add_ca(name: &str, cas: &[String]) -> Call {
    Call::new(
        "caacl_add_ca",
        vec![json!(name)],
        json!({ "ca": cas }),
        true,
    )
}

pub fn caacl_add_profile(name: &str, profiles: &[String]) -> Call {
    Call::new(
        "caacl_add_profile",
        vec![json!(name)],
        json!({ "certprofile": profiles }),
        true,
    )
}

pub fn cert_request(csr_pem: &str, principal: &str, ca: &str, profile: &str) -> Call {
    Call::new(
        "cert_request",
        vec![json!(csr_pem)],
        json!({ "principal": principal, "cacn": ca, "profile_id": profile }),
        true,
    )
}

pub fn cert_show(serial: &str, ca: &str) -> Call {
    Call::new(
        "cert_show",
        vec![json!(serial)],
        json!({ "cacn": ca }),
        false,
    )
}

/// A call no builder makes (a CA ACL with a category `all`, a malformed
/// record): what the tests send to see FreeIPA refuse it.
#[cfg(test)]
pub(super) fn raw_for_tests(method: &'static str, args: Vec<Value>, options: Value) -> Call {
    Call::new(method, args, options, true)
}

/// One call of every builder above, with sample values: what the API test
/// checks.
pub fn examples(csr_pem: &str) -> Vec<Call> {
    let fqdn = "node1.lab.example.org";
    let ip = Ipv4Addr::new(198, 18, 0, 10);
    let many = |s: &str| vec![s.to_owned()];
    vec![
        ping(),
        host_show(fqdn),
        host_add(fqdn, Some("otp-secret"), Some(ip), false),
        host_add(fqdn, None, None, false),
        host_add(fqdn, Some("otp-secret"), None, true),
        host_mod_password(fqdn, "otp-secret"),
        host_disable(fqdn),
        hostgroup_show("etcd"),
        hostgroup_add("etcd", "etcd members"),
        hostgroup_add_member("etcd", &many(fqdn)),
        service_show("HTTP/node1.lab.example.org@LAB.EXAMPLE.ORG"),
        service_add("HTTP/node1.lab.example.org@LAB.EXAMPLE.ORG"),
        dnszone_show("lab.example.org."),
        dnszone_add("0.18.198.in-addr.arpa.", true),
        dnszone_add("lab.example.org.", false),
        dnsrecord_show("lab.example.org.", "node1"),
        dnsrecord_add("lab.example.org.", "node1", &Record::A(ip)),
        dnsrecord_del("lab.example.org.", "node1", &Record::A(ip)),
        dnsrecord_add(
            "0.18.198.in-addr.arpa.",
            "10",
            &Record::Ptr(fqdn.to_owned()),
        ),
        dnsrecord_add(
            "lab.example.org.",
            "_etcd-server-ssl._tcp",
            &Record::Srv {
                priority: 0,
                weight: 0,
                port: 2380,
                target: fqdn.to_owned(),
            },
        ),
        topologysegment_find(Suffix::Domain),
        topologysegment_add(Suffix::Ca, "a-to-b", fqdn, "node2.lab.example.org"),
        server_find(),
        server_show("ipa1.example.com"),
        server_del(fqdn),
        ca_show("etcd"),
        ca_add("etcd", "CN=etcd CA,O=LAB.EXAMPLE.ORG", "etcd sub-CA"),
        caacl_show("etcd"),
        caacl_add("etcd", "etcd members may use the etcd CA"),
        caacl_add_host("etcd", &many(fqdn), &many("etcd")),
        caacl_add_service("etcd", &many("etcd/node1.lab.example.org@LAB.EXAMPLE.ORG")),
        caacl_add_ca("etcd", &many("etcd")),
        caacl_add_profile("etcd", &many("caIPAserviceCert")),
        cert_request(
            csr_pem,
            "host/node1.lab.example.org@LAB.EXAMPLE.ORG",
            "etcd",
            "caIPAserviceCert",
        ),
        cert_show("0x1234", "etcd"),
    ]
}
