//! The commands a site needs, run against [`State`] after the call passed
//! the API.txt checks, answering with the real server's result shapes and
//! error codes (`ipaserver/plugins/*.py`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::api::{parse_principal, Checked, Principal};
use crate::ca;
use crate::error::IpaError;
use crate::state::{self, add_value, first, public, set, values, Entry, Kind, State};

/// Who runs a command, and how to encode the answer.
pub struct Ctx<'a> {
    /// This server's FQDN (stamps writes, default name server).
    pub server: &'a str,
    /// The client's API version is 2.88 or later: DNS names go out as
    /// `{"__dns_name__": ...}`.
    pub dns_name_objects: bool,
    /// What the server's resolver answers, where `verify_host_resolvable`
    /// asks it (see [`Resolution`]).
    pub resolution: Resolution<'a>,
    /// Lightweight CAs (lower-case names) whose signing key has not
    /// reached this server yet (see [`crate::server::Options`]).
    pub unready_cas: &'a std::collections::BTreeSet<String>,
    /// Who is calling: the admin, or a host with its keytab.
    pub caller: &'a Caller,
}

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `admin`, logged in with its password: may do everything.
    Admin,
    /// An enrolled host (`host/<fqdn>`), logged in with its keytab, as
    /// certmonger's `ipa-submit` binds (the stand-in for Kerberos: see
    /// `server`'s `login_kerberos`).
    Host(String),
}

/// What a host may call. FreeIPA's ACIs let a host read a good deal
/// more; the simulator lets it do only what certmonger's helper does,
/// so a host session that strays is seen.
const HOST_METHODS: &[&str] = &["cert_request", "ca_show", "ping"];

impl Caller {
    /// The session's principal, as FreeIPA's answers name it.
    pub fn principal(&self, realm: &str) -> String {
        match self {
            Caller::Admin => format!("admin@{realm}"),
            Caller::Host(fqdn) => format!("host/{fqdn}@{realm}"),
        }
    }
}

/// How a server resolves host names for FreeIPA's resolvability checks
/// (`verify_host_resolvable` in freeipa `ipalib/util.py`, through
/// dnspython and the server's resolv.conf, never /etc/hosts).
#[derive(Debug, Clone, Copy)]
pub enum Resolution<'a> {
    /// Through its own DNS: a container started with `--dns=127.0.0.1`.
    OwnZones,
    /// Through another resolver, whose answers for the names a command
    /// checks were looked up before it ran: name -> whether it has an A
    /// record there.
    Looked(&'a BTreeMap<String, bool>),
}

/// A command's answer (`result` of the JSON-RPC reply) and whether it
/// changed anything.
#[derive(Debug)]
pub struct Outcome {
    pub result: Value,
    pub mutated: bool,
}

fn unchanged(result: Value) -> Result<Outcome, IpaError> {
    Ok(Outcome {
        result,
        mutated: false,
    })
}

fn changed(result: Value) -> Result<Outcome, IpaError> {
    Ok(Outcome {
        result,
        mutated: true,
    })
}

/// The default certificate profile for hosts and services.
pub const DEFAULT_PROFILE: &str = "caIPAserviceCert";
/// The built-in host group of IPA servers.
pub const IPASERVERS: &str = "ipaservers";

/// Lower-case FQDN without a trailing dot.
fn fqdn(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

/// The commands this simulator implements (everything else: 905 would be
/// wrong, the server has them; answer 903 and say so in the log).
pub const IMPLEMENTED: &[&str] = &[
    "ping",
    "host_add",
    "host_show",
    "host_find",
    "host_del",
    "host_mod",
    "host_disable",
    "hostgroup_add",
    "hostgroup_show",
    "hostgroup_add_member",
    "service_add",
    "service_show",
    "dnszone_add",
    "dnszone_show",
    "dnsrecord_add",
    "dnsrecord_show",
    "dnsrecord_del",
    "topologysuffix_find",
    "topologysegment_add",
    "topologysegment_find",
    "topologysegment_show",
    "server_find",
    "server_show",
    "server_del",
    "ca_add",
    "ca_show",
    "ca_find",
    "caacl_add",
    "caacl_show",
    "caacl_add_host",
    "caacl_add_service",
    "caacl_add_ca",
    "caacl_add_profile",
    "cert_request",
    "cert_show",
];

pub fn run(state: &mut State, ctx: &Ctx, call: &Checked) -> Result<Outcome, IpaError> {
    let args: Vec<String> = call
        .command
        .args
        .iter()
        .filter_map(|a| call.str(&a.name).map(str::to_owned))
        .collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    if let Caller::Host(host) = ctx.caller {
        if !HOST_METHODS.contains(&call.command.name.as_str()) {
            return Err(IpaError::aci(format!(
                "Insufficient access: host/{host} may not call {} here (the simulator lets \
                 a host call only {})",
                call.command.name,
                HOST_METHODS.join(", ")
            )));
        }
    }
    match call.command.name.as_str() {
        "ping" => unchanged(json!({
            "summary": "IPA server version 4.13.0. API version 2.257",
        })),
        "host_add" => host_add(state, ctx, &fqdn(&arg(0)), call),
        "host_show" => host_show(state, &fqdn(&arg(0))),
        "host_find" => host_find(state, call),
        "host_del" => host_del(state, ctx, call),
        "host_mod" => host_mod(state, ctx, &fqdn(&arg(0)), call),
        "host_disable" => host_disable(state, ctx, &fqdn(&arg(0))),
        "hostgroup_add" => hostgroup_add(state, ctx, &arg(0), call),
        "hostgroup_show" => {
            let entry = shown(state, Kind::HostGroup, &arg(0), "host group")?;
            unchanged(json!({"result": entry, "summary": null, "value": arg(0)}))
        }
        "hostgroup_add_member" => hostgroup_add_member(state, ctx, &arg(0), call),
        "service_add" => service_add(state, ctx, &arg(0)),
        "service_show" => {
            let principal = service_key(state, &arg(0));
            let entry = shown(state, Kind::Service, &principal, "service")?;
            unchanged(json!({"result": entry, "summary": null, "value": principal}))
        }
        "dnszone_add" => dnszone_add(state, ctx, &arg(0), call),
        "dnszone_show" => {
            let zone = zone_name(&arg(0));
            let entry = shown(state, Kind::DnsZone, &zone, "DNS zone")?;
            unchanged(
                json!({"result": dns_out(ctx, entry), "summary": null, "value": dns_name(ctx, &zone)}),
            )
        }
        "dnsrecord_add" => dnsrecord_add(state, ctx, &arg(0), &arg(1), call),
        "dnsrecord_show" => {
            let (zone, name) = record_key(state, &arg(0), &arg(1))?;
            let entry = shown(
                state,
                Kind::DnsRecord,
                &format!("{zone}|{name}"),
                "DNS resource record",
            )
            .map_err(|_| IpaError::not_found(&name, "DNS resource record"))?;
            unchanged(
                json!({"result": dns_out(ctx, entry), "summary": null, "value": dns_name(ctx, &name)}),
            )
        }
        "dnsrecord_del" => dnsrecord_del(state, ctx, &arg(0), &arg(1), call),
        "topologysuffix_find" => {
            let suffixes: Vec<Value> = suffixes(state)
                .into_iter()
                .filter(|(cn, _)| call.str("cn").is_none_or(|want| want == *cn))
                .map(|(cn, root)| json!({"cn": [cn], "iparepltopoconfroot": [root]}))
                .collect();
            unchanged(find_answer(suffixes, "suffix"))
        }
        "topologysegment_add" => segment_add(state, ctx, &arg(0), &arg(1), call),
        "topologysegment_find" => {
            check_suffix(state, &arg(0))?;
            let prefix = format!("{}|", arg(0).to_ascii_lowercase());
            let found: Vec<Value> = state
                .all(Kind::Segment)
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter(|(_, e)| {
                    let matches = |option: &str, attribute: &str| {
                        call.str(option).is_none_or(|want| {
                            values(e, attribute)
                                .iter()
                                .any(|v| v.eq_ignore_ascii_case(want))
                        })
                    };
                    matches("cn", "cn")
                        && matches("iparepltoposegmentleftnode", "iparepltoposegmentleftnode")
                        && matches("iparepltoposegmentrightnode", "iparepltoposegmentrightnode")
                })
                .map(|(_, e)| Value::Object(public(e)))
                .collect();
            unchanged(find_answer(found, "segment"))
        }
        "topologysegment_show" => {
            check_suffix(state, &arg(0))?;
            let key = format!("{}|{}", arg(0), arg(1));
            let entry = shown(state, Kind::Segment, &key, "segment")
                .map_err(|_| IpaError::not_found(&arg(1), "segment"))?;
            unchanged(json!({"result": entry, "summary": null, "value": arg(1)}))
        }
        "server_find" => {
            let criteria = args.first().map(|s| s.to_ascii_lowercase());
            let found: Vec<Value> = state
                .all(Kind::Server)
                .into_iter()
                .filter(|(k, _)| criteria.as_deref().is_none_or(|c| k.contains(c)))
                .filter(|(k, _)| call.str("cn").is_none_or(|cn| fqdn(cn) == *k))
                .map(|(_, e)| Value::Object(public(e)))
                .collect();
            unchanged(find_answer(found, "server"))
        }
        "server_show" => {
            let name = fqdn(&arg(0));
            let entry = shown(state, Kind::Server, &name, "server")?;
            unchanged(json!({"result": entry, "summary": null, "value": name}))
        }
        "server_del" => server_del(state, ctx, call),
        "ca_add" => ca_add(state, ctx, &arg(0), call),
        "ca_show" => ca_show(state, ctx, &arg(0)),
        "ca_find" => ca_find(state, ctx, args.first(), call),
        "caacl_add" => caacl_add(state, ctx, &arg(0), call),
        "caacl_show" => {
            let entry = shown(state, Kind::CaAcl, &arg(0), "CA ACL")?;
            unchanged(json!({"result": entry, "summary": null, "value": arg(0)}))
        }
        "caacl_add_host" => caacl_add_members(
            state,
            ctx,
            &arg(0),
            "memberhost",
            &[
                ("host", Kind::Host, call.list("host")),
                ("hostgroup", Kind::HostGroup, call.list("hostgroup")),
            ],
        ),
        "caacl_add_service" => caacl_add_members(
            state,
            ctx,
            &arg(0),
            "memberservice",
            &[("service", Kind::Service, call.list("service"))],
        ),
        "caacl_add_ca" => caacl_add_members(
            state,
            ctx,
            &arg(0),
            "ipamemberca",
            &[("ca", Kind::Ca, call.list("ca"))],
        ),
        "caacl_add_profile" => caacl_add_members(
            state,
            ctx,
            &arg(0),
            "ipamembercertprofile",
            &[("certprofile", Kind::CertProfile, call.list("certprofile"))],
        ),
        "cert_request" => cert_request(state, ctx, &arg(0), call),
        "cert_show" => cert_show(state, &arg(0), call),
        other => {
            tracing::warn!("{other} is in API.txt but not simulated");
            Err(IpaError::internal())
        }
    }
}

/// A live entry as shown, or 4001.
fn shown(state: &State, kind: Kind, key: &str, object: &str) -> Result<Value, IpaError> {
    state
        .get(kind, key)
        .map(|e| Value::Object(public(e)))
        .ok_or_else(|| IpaError::not_found(key, object))
}

fn find_answer(found: Vec<Value>, what: &str) -> Value {
    let count = found.len();
    let plural = if count == 1 { "" } else { "s" };
    json!({
        "result": found,
        "count": count,
        "truncated": false,
        "summary": format!("{count} {what}{plural} matched"),
    })
}

// ---- hosts -------------------------------------------------------------

fn host_dn(state: &State, host: &str) -> String {
    format!("fqdn={host},cn=computers,cn=accounts,{}", state.basedn())
}

/// A host entry as `host_show` answers: membership and password facts.
fn host_out(state: &State, host: &str) -> Option<Value> {
    let entry = state.get(Kind::Host, host)?;
    let mut out = public(entry);
    let groups: Vec<String> = state
        .all(Kind::HostGroup)
        .into_iter()
        .filter(|(_, g)| values(g, "member_host").iter().any(|h| h == host))
        .map(|(k, _)| k.to_owned())
        .collect();
    set(&mut out, "memberof_hostgroup", groups);
    out.insert(
        "has_password".into(),
        json!(entry.contains_key("_password")),
    );
    out.insert("has_keytab".into(), json!(entry.contains_key("_keytab")));
    out.insert("dn".into(), json!(host_dn(state, host)));
    Some(Value::Object(out))
}

/// Whether `host` resolves where the server resolves names: its own
/// DNS (an A or AAAA record in a zone it holds), or the answers its
/// resolver gave.
fn resolvable(state: &State, ctx: &Ctx, host: &str) -> bool {
    if let Resolution::Looked(answers) = ctx.resolution {
        return answers.get(host).copied().unwrap_or(false);
    }
    let Some((name, zone)) = split_in_zone(state, host) else {
        return false;
    };
    state
        .get(Kind::DnsRecord, &format!("{zone}|{name}"))
        .is_some_and(|e| !values(e, "arecord").is_empty() || !values(e, "aaaarecord").is_empty())
}

/// `host.zone.` -> ("host", "zone.") for the longest zone held.
fn split_in_zone(state: &State, host: &str) -> Option<(String, String)> {
    let absolute = format!("{}.", fqdn(host));
    state
        .all(Kind::DnsZone)
        .into_iter()
        .map(|(zone, _)| zone.to_owned())
        .filter(|zone| absolute.ends_with(&format!(".{zone}")) || absolute == *zone)
        .max_by_key(String::len)
        .map(|zone| {
            let name = absolute[..absolute.len() - zone.len()].trim_end_matches('.');
            (
                if name.is_empty() {
                    "@".into()
                } else {
                    name.to_owned()
                },
                zone,
            )
        })
}

fn host_add(state: &mut State, ctx: &Ctx, host: &str, call: &Checked) -> Result<Outcome, IpaError> {
    if state.exists(Kind::Host, host) {
        return Err(IpaError::duplicate(host, "host"));
    }
    let ip = call.str("ip_address").map(str::to_owned);
    let split = host
        .split_once('.')
        .map(|(h, d)| (h.to_owned(), format!("{d}.")));
    if let Some(ip) = &ip {
        let (_, domain) = split.clone().unwrap_or_default();
        if !state.exists(Kind::DnsZone, &domain) {
            return Err(IpaError::not_found_reason(format!(
                "DNS zone {domain} not found"
            )));
        }
        let parsed: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|_| IpaError::validation("ip_address", "invalid IP address format"))?;
        let taken = state
            .all(Kind::DnsRecord)
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{domain}|")))
            .any(|(_, e)| values(e, "arecord").contains(&parsed.to_string()));
        if taken {
            return Err(IpaError::duplicate_message(format!(
                "IP address {parsed} is already assigned in domain {domain}."
            )));
        }
    } else if !call.flag("force") && !resolvable(state, ctx, host) {
        return Err(IpaError::new(
            4019,
            "DNSNotARecordError",
            format!("Host '{host}' does not have corresponding DNS A/AAAA record"),
            json!({ "hostname": host }),
        ));
    }
    let mut entry = state::entry(&[
        ("fqdn", &[host]),
        ("serverhostname", &[host.split('.').next().unwrap_or(host)]),
        ("managedby_host", &[host]),
    ]);
    if let Some(description) = call.str("description") {
        set(&mut entry, "description", vec![description.to_owned()]);
    }
    let random = call.flag("random").then(random_password);
    let password = random
        .clone()
        .or_else(|| call.str("userpassword").map(str::to_owned));
    match &password {
        Some(password) => {
            entry.insert("_password".into(), json!(password));
        }
        None => {
            let principal = format!("host/{host}@{}", state.realm);
            set(&mut entry, "krbprincipalname", vec![principal.clone()]);
            set(&mut entry, "krbcanonicalname", vec![principal]);
        }
    }
    state.put(ctx.server, Kind::Host, host, Some(entry));
    if let (Some(ip), Some((name, domain))) = (ip, split) {
        add_record_values(
            state,
            ctx,
            &domain,
            &name,
            "arecord",
            std::slice::from_ref(&ip),
        );
        if !call.flag("no_reverse") {
            if let Some((zone, name)) = reverse_of(state, &ip) {
                add_record_values(state, ctx, &zone, &name, "ptrrecord", &[format!("{host}.")]);
            }
        }
    }
    let mut result = host_out(state, host).unwrap_or_default();
    if let Some(random) = random {
        result["randompassword"] = json!(random);
    }
    changed(json!({"result": result, "summary": format!("Added host \"{host}\""), "value": host}))
}

fn host_show(state: &State, host: &str) -> Result<Outcome, IpaError> {
    let result = host_out(state, host).ok_or_else(|| IpaError::not_found(host, "host"))?;
    unchanged(json!({"result": result, "summary": null, "value": host}))
}

fn host_find(state: &State, call: &Checked) -> Result<Outcome, IpaError> {
    let criteria = call.str("criteria").map(str::to_ascii_lowercase);
    let groups = call.list("in_hostgroup");
    let found: Vec<Value> = state
        .all(Kind::Host)
        .into_iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| criteria.as_deref().is_none_or(|c| k.contains(c)))
        .filter(|k| call.str("fqdn").is_none_or(|f| fqdn(f) == *k))
        .filter(|k| {
            groups.iter().all(|g| {
                state
                    .get(Kind::HostGroup, g)
                    .is_some_and(|e| values(e, "member_host").contains(k))
            })
        })
        .filter_map(|k| host_out(state, &k))
        .collect();
    unchanged(find_answer(found, "host"))
}

fn host_del(state: &mut State, ctx: &Ctx, call: &Checked) -> Result<Outcome, IpaError> {
    let hosts: Vec<String> = call.list("fqdn").iter().map(|h| fqdn(h)).collect();
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for host in &hosts {
        if !state.exists(Kind::Host, host) {
            if call.flag("continue") {
                failed.push(host.clone());
                continue;
            }
            return Err(IpaError::not_found(host, "host"));
        }
        delete_host(state, ctx, host);
        if call.flag("updatedns") {
            if let Some((name, zone)) = split_in_zone(state, host) {
                state.put(ctx.server, Kind::DnsRecord, &format!("{zone}|{name}"), None);
            }
        }
        deleted.push(host.clone());
    }
    let result = json!({
        "result": {"failed": failed},
        "summary": format!("Deleted host \"{}\"", deleted.join(",")),
        "value": deleted,
    });
    if deleted.is_empty() {
        unchanged(result)
    } else {
        changed(result)
    }
}

/// As FreeIPA's: the host's keytab goes (its certificates would be
/// revoked), so it may enroll again; 4010 when there was nothing to
/// disable.
fn host_disable(state: &mut State, ctx: &Ctx, host: &str) -> Result<Outcome, IpaError> {
    let mut entry = state
        .get(Kind::Host, host)
        .cloned()
        .ok_or_else(|| IpaError::not_found(host, "host"))?;
    if entry.remove("_keytab").is_none() {
        return Err(IpaError::new(
            4010,
            "AlreadyInactive",
            "This entry is already disabled",
            json!({}),
        ));
    }
    state.put(ctx.server, Kind::Host, host, Some(entry));
    changed(json!({"result": true, "summary": format!("Disabled host \"{host}\""), "value": host}))
}

fn host_mod(state: &mut State, ctx: &Ctx, host: &str, call: &Checked) -> Result<Outcome, IpaError> {
    let mut entry = state
        .get(Kind::Host, host)
        .cloned()
        .ok_or_else(|| IpaError::not_found(host, "host"))?;
    let before = entry.clone();
    for option in [
        "description",
        "l",
        "nshostlocation",
        "nshardwareplatform",
        "nsosversion",
    ] {
        if let Some(value) = call.str(option) {
            set(&mut entry, option, vec![value.to_owned()]);
        }
    }
    let random = call.flag("random").then(random_password);
    if let Some(password) = random
        .clone()
        .or_else(|| call.str("userpassword").map(str::to_owned))
    {
        entry.insert("_password".into(), json!(password));
    }
    if entry == before {
        return Err(IpaError::empty_modlist());
    }
    state.put(ctx.server, Kind::Host, host, Some(entry));
    let mut result = host_out(state, host).unwrap_or_default();
    if let Some(random) = random {
        result["randompassword"] = json!(random);
    }
    changed(
        json!({"result": result, "summary": format!("Modified host \"{host}\""), "value": host}),
    )
}

/// ipa_generate_password's stand-in: letters and digits, 24 of them.
pub fn random_password() -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

// ---- host groups -------------------------------------------------------

fn hostgroup_add(
    state: &mut State,
    ctx: &Ctx,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    if state.exists(Kind::HostGroup, name) {
        return Err(IpaError::duplicate(name, "host group"));
    }
    let mut entry = state::entry(&[("cn", &[name])]);
    if let Some(description) = call.str("description") {
        set(&mut entry, "description", vec![description.to_owned()]);
    }
    state.put(ctx.server, Kind::HostGroup, name, Some(entry));
    let result = shown(state, Kind::HostGroup, name, "host group")?;
    changed(
        json!({"result": result, "summary": format!("Added hostgroup \"{name}\""), "value": name}),
    )
}

fn hostgroup_add_member(
    state: &mut State,
    ctx: &Ctx,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    let mut entry = state
        .get(Kind::HostGroup, name)
        .cloned()
        .ok_or_else(|| IpaError::not_found(name, "host group"))?;
    let mut completed = 0;
    let mut failed = Map::new();
    for (option, kind, attribute) in [
        ("host", Kind::Host, "member_host"),
        ("hostgroup", Kind::HostGroup, "member_hostgroup"),
    ] {
        let mut failures = Vec::new();
        for member in call.list(option) {
            let member = if kind == Kind::Host {
                fqdn(&member)
            } else {
                member
            };
            if !state.exists(kind, &member) {
                failures.push(json!([member, "no such entry"]));
            } else if add_value(&mut entry, attribute, &member) {
                completed += 1;
            } else {
                failures.push(json!([member, "This entry is already a member"]));
            }
        }
        failed.insert(option.into(), Value::Array(failures));
    }
    if completed > 0 {
        state.put(ctx.server, Kind::HostGroup, name, Some(entry));
    }
    let result = shown(state, Kind::HostGroup, name, "host group")?;
    let answer = json!({"result": result, "completed": completed, "failed": {"member": failed}});
    if completed > 0 {
        changed(answer)
    } else {
        unchanged(answer)
    }
}

// ---- services ----------------------------------------------------------

/// `HTTP/host` or `HTTP/host@REALM` -> `HTTP/host@REALM`.
fn service_key(state: &State, text: &str) -> String {
    match parse_principal(text) {
        Some(p) => Principal {
            name: fqdn(&p.name),
            ..p
        }
        .text(&state.realm),
        None => text.to_owned(),
    }
}

fn service_add(state: &mut State, ctx: &Ctx, text: &str) -> Result<Outcome, IpaError> {
    let key = add_service_entry(state, ctx, text, true)?;
    let mut result = shown(state, Kind::Service, &key, "service")?;
    result["has_keytab"] = json!(false);
    changed(json!({"result": result, "summary": format!("Added service \"{key}\""), "value": key}))
}

/// A service entry for principal `text`, managed by its host (freeipa
/// `ipaserver/plugins/service.py`, `service_add`); `check_resolvable`
/// false is its `force` (as `cert_request --add` calls it). The key.
fn add_service_entry(
    state: &mut State,
    ctx: &Ctx,
    text: &str,
    check_resolvable: bool,
) -> Result<String, IpaError> {
    let principal = parse_principal(text).ok_or_else(|| {
        IpaError::validation("canonical_principal", "Service principal is required")
    })?;
    let Some(service) = principal.service.clone() else {
        return Err(IpaError::validation(
            "canonical_principal",
            "Service principal is required",
        ));
    };
    if service.eq_ignore_ascii_case("host") {
        return Err(IpaError::new(
            4003,
            "HostService",
            "You must enroll a host in order to create a host service",
            json!({}),
        ));
    }
    if principal
        .realm
        .as_deref()
        .is_some_and(|realm| realm != state.realm)
    {
        return Err(IpaError::new(
            4005,
            "RealmMismatch",
            "The realm for the principal does not match the realm for this IPA server",
            json!({}),
        ));
    }
    let host = fqdn(&principal.name);
    let key = service_key(state, text);
    if state.exists(Kind::Service, &key) {
        return Err(IpaError::duplicate(&key, "service"));
    }
    if !state.exists(Kind::Host, &host) {
        return Err(IpaError::not_found(&host, "host"));
    }
    if check_resolvable && !resolvable(state, ctx, &host) {
        return Err(IpaError::new(
            4019,
            "DNSNotARecordError",
            format!("Host '{host}' does not have corresponding DNS A/AAAA record"),
            json!({ "hostname": host }),
        ));
    }
    let dn = format!(
        "krbprincipalname={key},cn=services,cn=accounts,{}",
        state.basedn()
    );
    let mut entry = state::entry(&[
        ("krbprincipalname", &[key.as_str()]),
        ("krbcanonicalname", &[key.as_str()]),
        ("managedby_host", &[host.as_str()]),
    ]);
    entry.insert("dn".into(), json!(dn));
    state.put(ctx.server, Kind::Service, &key, Some(entry));
    Ok(key)
}

// ---- DNS ---------------------------------------------------------------

/// Zones are kept absolute and lower-case: `example.com.`.
fn zone_name(text: &str) -> String {
    format!("{}.", text.trim_end_matches('.').to_ascii_lowercase())
}

fn dns_name(ctx: &Ctx, name: &str) -> Value {
    if ctx.dns_name_objects {
        json!({ "__dns_name__": name })
    } else {
        json!(name)
    }
}

/// Entries hold DNS names as text; the answer encodes them per version.
fn dns_out(ctx: &Ctx, entry: Value) -> Value {
    let Value::Object(mut map) = entry else {
        return entry;
    };
    for attribute in ["idnsname", "idnssoamname", "idnssoarname"] {
        if let Some(Value::Array(items)) = map.get_mut(attribute) {
            for item in items.iter_mut() {
                if let Some(text) = item.as_str().map(str::to_owned) {
                    *item = dns_name(ctx, &text);
                }
            }
        }
    }
    Value::Object(map)
}

/// The record's zone and its name relative to it (`@` for the apex).
fn record_key(state: &State, zone: &str, name: &str) -> Result<(String, String), IpaError> {
    let zone = zone_name(zone);
    if !state.exists(Kind::DnsZone, &zone) {
        return Err(IpaError::not_found(&zone, "DNS zone"));
    }
    let lower = name.to_ascii_lowercase();
    let relative = if lower == "@" || lower == zone || format!("{lower}.") == zone {
        "@".to_owned()
    } else if let Some(stripped) = lower.strip_suffix(&format!(".{zone}")) {
        stripped.to_owned()
    } else {
        lower.trim_end_matches('.').to_owned()
    };
    Ok((zone, relative))
}

/// Adds values to a record (creating it); whether anything was new.
pub fn add_record_values(
    state: &mut State,
    ctx: &Ctx,
    zone: &str,
    name: &str,
    attribute: &str,
    new: &[String],
) -> bool {
    let key = format!("{zone}|{name}");
    let mut entry = state
        .get(Kind::DnsRecord, &key)
        .cloned()
        .unwrap_or_else(|| state::entry(&[("idnsname", &[name])]));
    let mut added = false;
    for value in new {
        added |= add_value(&mut entry, attribute, value);
    }
    if added {
        state.put(ctx.server, Kind::DnsRecord, &key, Some(entry));
    }
    added
}

/// The reverse zone held for `ip` and the record name in it.
fn reverse_of(state: &State, ip: &str) -> Option<(String, String)> {
    let octets: Vec<&str> = ip.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    let full = format!(
        "{}.{}.{}.{}.in-addr.arpa.",
        octets[3], octets[2], octets[1], octets[0]
    );
    state
        .all(Kind::DnsZone)
        .into_iter()
        .map(|(zone, _)| zone.to_owned())
        .filter(|zone| full.ends_with(&format!(".{zone}")))
        .max_by_key(String::len)
        .map(|zone| {
            let name = full[..full.len() - zone.len() - 1].to_owned();
            (zone, name)
        })
}

fn dnszone_add(
    state: &mut State,
    ctx: &Ctx,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    let zone = zone_name(name);
    if state.exists(Kind::DnsZone, &zone) {
        return Err(IpaError::duplicate(&zone, "DNS zone"));
    }
    let mname = call
        .str("idnssoamname")
        .map(|m| format!("{}.", fqdn(m)))
        .unwrap_or_else(|| format!("{}.", ctx.server));
    let rname = format!("hostmaster.{zone}");
    let serial = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1)
        % u64::from(u32::MAX))
    .to_string();
    let mut entry = state::entry(&[
        ("idnsname", &[zone.as_str()]),
        ("idnszoneactive", &["TRUE"]),
        ("idnssoamname", &[mname.as_str()]),
        ("idnssoarname", &[rname.as_str()]),
        ("idnssoaserial", &[serial.as_str()]),
        ("idnssoarefresh", &["3600"]),
        ("idnssoaretry", &["900"]),
        ("idnssoaexpire", &["1209600"]),
        ("idnssoaminimum", &["3600"]),
        ("idnsallowquery", &["any;"]),
        ("idnsallowtransfer", &["none;"]),
    ]);
    entry.insert(
        "dn".into(),
        json!(format!("idnsname={zone},cn=dns,{}", state.basedn())),
    );
    state.put(ctx.server, Kind::DnsZone, &zone, Some(entry));
    // Every IPA DNS server is a name server of every zone.
    let servers: Vec<String> = state
        .all(Kind::Server)
        .into_iter()
        .map(|(k, _)| format!("{k}."))
        .collect();
    let servers = if servers.is_empty() {
        vec![mname]
    } else {
        servers
    };
    add_record_values(state, ctx, &zone, "@", "nsrecord", &servers);
    let result = dns_out(ctx, shown(state, Kind::DnsZone, &zone, "DNS zone")?);
    changed(json!({
        "result": result,
        "summary": format!("Added DNS zone \"{zone}\""),
        "value": dns_name(ctx, &zone),
    }))
}

/// The `*record` options of a call with their values.
fn record_options(call: &Checked) -> Vec<(String, Vec<String>)> {
    call.params
        .keys()
        .filter(|k| k.ends_with("record") && !k.contains("_part_"))
        .map(|k| (k.clone(), call.list(k)))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// Record values as stored: names absolute and lower-case.
fn normalise_value(attribute: &str, value: &str) -> String {
    match attribute {
        "ptrrecord" | "nsrecord" | "cnamerecord" => format!("{}.", fqdn(value)),
        "srvrecord" => {
            let parts: Vec<&str> = value.split_whitespace().collect();
            match parts.as_slice() {
                [p, w, port, target] => format!("{p} {w} {port} {}.", fqdn(target)),
                _ => value.to_owned(),
            }
        }
        _ => value.to_owned(),
    }
}

/// A record value as freeipa `ipaserver/plugins/dns.py` validates it
/// before anything is written: an A record is an IPv4 address
/// (`ARecord`), an SRV record four parts "priority weight port target",
/// the three numbers 0 to 65535 (`SRVRecord`), and names are DNS names.
/// ValidationError 3009 otherwise.
fn check_record_value(attribute: &str, value: &str) -> Result<(), IpaError> {
    let name_ok = |name: &str| {
        let name = name.trim_end_matches('.');
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
    };
    let invalid = |error: String| Err(IpaError::validation(attribute, error));
    match attribute {
        "arecord" if value.parse::<std::net::Ipv4Addr>().is_err() => {
            return invalid("invalid IP address format".into());
        }
        "srvrecord" => {
            let parts: Vec<&str> = value.split_whitespace().collect();
            let [priority, weight, port, target] = parts.as_slice() else {
                return invalid(
                    "format must be specified as \"priority weight port target\" (see RFC \
                     2782 for details)"
                        .into(),
                );
            };
            for (part, text) in [("priority", priority), ("weight", weight), ("port", port)] {
                match text.parse::<i64>() {
                    Ok(n) if (0..=65535).contains(&n) => {}
                    Ok(n) if n < 0 => return invalid(format!("{part}: must be at least 0")),
                    Ok(_) => return invalid(format!("{part}: must be at most 65535")),
                    Err(_) => return invalid(format!("{part}: must be an integer")),
                }
            }
            if *target != "." && !name_ok(target) {
                return invalid(format!("target: invalid domain-name: {target}"));
            }
        }
        "ptrrecord" | "cnamerecord" | "nsrecord" if !name_ok(value) => {
            return invalid(format!("invalid domain-name: {value}"));
        }
        _ => {}
    }
    Ok(())
}

/// `_ptrrecord_pre_callback` (freeipa `ipaserver/plugins/dns.py`): in a
/// zone under in-addr.arpa. the record's name and the zone's labels
/// together are the four parts of an address (ip6.arpa.: 32 nibbles).
fn check_ptr_name(zone: &str, name: &str) -> Result<(), IpaError> {
    for (suffix, count) in [("in-addr.arpa.", 4), ("ip6.arpa.", 32)] {
        let Some(inner) = zone.strip_suffix(suffix) else {
            continue;
        };
        let zone_labels = inner
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty());
        let name_labels = if name == "@" {
            0
        } else {
            name.split('.').count()
        };
        // Classless delegations (`0/25.0.0.10.in-addr.arpa.`) are not
        // checked.
        if inner.contains(['/', '-']) || name.contains(['/', '-']) {
            return Ok(());
        }
        let given = zone_labels.count() + name_labels;
        if given != count {
            return Err(IpaError::validation(
                "ptrrecord",
                format!(
                    "Reverse zone {suffix} requires exactly {count} IP address components, \
                     {given} given"
                ),
            ));
        }
    }
    Ok(())
}

fn dnsrecord_add(
    state: &mut State,
    ctx: &Ctx,
    zone: &str,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    let (zone, name) = record_key(state, zone, name)?;
    let options = record_options(call);
    for (attribute, list) in &options {
        for value in list {
            check_record_value(attribute, value)?;
        }
        if attribute == "ptrrecord" {
            check_ptr_name(&zone, &name)?;
        }
    }
    let mut added = false;
    for (attribute, list) in &options {
        let list: Vec<String> = list.iter().map(|v| normalise_value(attribute, v)).collect();
        added |= add_record_values(state, ctx, &zone, &name, attribute, &list);
    }
    if !added {
        return Err(IpaError::empty_modlist());
    }
    let result = dns_out(
        ctx,
        shown(
            state,
            Kind::DnsRecord,
            &format!("{zone}|{name}"),
            "DNS resource record",
        )?,
    );
    changed(json!({"result": result, "summary": null, "value": dns_name(ctx, &name)}))
}

fn dnsrecord_del(
    state: &mut State,
    ctx: &Ctx,
    zone: &str,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    let (zone, name) = record_key(state, zone, name)?;
    let key = format!("{zone}|{name}");
    let mut entry = state
        .get(Kind::DnsRecord, &key)
        .cloned()
        .ok_or_else(|| IpaError::not_found(&name, "DNS resource record"))?;
    if call.flag("del_all") {
        state.put(ctx.server, Kind::DnsRecord, &key, None);
        return changed(
            json!({"result": {"failed": []}, "summary": format!("Deleted record \"{name}\""), "value": [dns_name(ctx, &name)]}),
        );
    }
    for (attribute, list) in record_options(call) {
        let mut present = values(&entry, &attribute);
        for value in list {
            let value = normalise_value(&attribute, &value);
            let before = present.len();
            present.retain(|v| !v.eq_ignore_ascii_case(&value));
            if present.len() == before {
                return Err(IpaError::new(
                    4026,
                    "AttrValueNotFound",
                    format!("{attribute} does not contain '{value}'"),
                    json!({ "attr": attribute, "value": value }),
                ));
            }
        }
        set(&mut entry, &attribute, present);
    }
    let empty = !entry.keys().any(|k| k.ends_with("record"));
    if empty {
        state.put(ctx.server, Kind::DnsRecord, &key, None);
        return changed(
            json!({"result": {"failed": []}, "summary": format!("Deleted record \"{name}\""), "value": [dns_name(ctx, &name)]}),
        );
    }
    state.put(ctx.server, Kind::DnsRecord, &key, Some(entry));
    let result = dns_out(
        ctx,
        shown(state, Kind::DnsRecord, &key, "DNS resource record")?,
    );
    changed(json!({"result": result, "summary": null, "value": [dns_name(ctx, &name)]}))
}

// ---- topology ----------------------------------------------------------

fn suffixes(state: &State) -> Vec<(&'static str, String)> {
    vec![("ca", "o=ipaca".to_owned()), ("domain", state.basedn())]
}

fn check_suffix(state: &State, suffix: &str) -> Result<(), IpaError> {
    if suffixes(state).iter().any(|(cn, _)| *cn == suffix) {
        Ok(())
    } else {
        Err(IpaError::not_found(suffix, "suffix"))
    }
}

fn segment_add(
    state: &mut State,
    ctx: &Ctx,
    suffix: &str,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    check_suffix(state, suffix)?;
    let key = format!("{suffix}|{name}");
    let left = fqdn(call.str("iparepltoposegmentleftnode").unwrap_or_default());
    let right = fqdn(call.str("iparepltoposegmentrightnode").unwrap_or_default());
    // `validate_nodes` (freeipa `ipaserver/plugins/topology.py`), in the
    // command's pre_callback: both ends are servers (3009 "is not a
    // topology node"), not the same, and both manage the suffix (3009
    // "does not support suffix"; a replica whose CA clone is not done
    // yet is in server_find without `ca`).
    for (side, node) in [("leftnode", &left), ("rightnode", &right)] {
        let which = &side[..side.len() - 4];
        if !state.exists(Kind::Server, node) {
            return Err(IpaError::validation(
                side,
                format!("{which} node is not a topology node: {node}"),
            ));
        }
    }
    if left == right {
        return Err(IpaError::validation(
            "leftnode",
            "left node and right node must not be the same",
        ));
    }
    for (side, node) in [("leftnode", &left), ("rightnode", &right)] {
        let which = &side[..side.len() - 4];
        if !manages(state, node, suffix) {
            return Err(IpaError::validation(
                side,
                format!("{which} node ({node}) does not support suffix '{suffix}'"),
            ));
        }
    }
    // Then the topology plugin, before the directory looks at the name
    // (a pre-operation plugin): the same pair, in either direction, under
    // any name, is LDAP "unwilling to perform", which FreeIPA answers as
    // DatabaseError 4203 (freeipa `daemons/ipa-slapi-plugins/topology/
    // topology_pre.c`, `ipa_topo_check_segment_is_valid`;
    // `ipapython/ipaldap.py`, UNWILLING_TO_PERFORM).
    let prefix = format!("{suffix}|");
    let exists = state
        .all(Kind::Segment)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .any(|(_, e)| {
            let l = first(e, "iparepltoposegmentleftnode").unwrap_or_default();
            let r = first(e, "iparepltoposegmentrightnode").unwrap_or_default();
            (l == left && r == right) || (l == right && r == left)
        });
    if exists {
        let info = "Segment already exists in topology. Add rejected.";
        return Err(IpaError::new(
            4203,
            "DatabaseError",
            format!("Server is unwilling to perform: {info}"),
            json!({"desc": "Server is unwilling to perform", "info": info}),
        ));
    }
    // Only then the name: 4002.
    if state.exists(Kind::Segment, &key) {
        return Err(IpaError::duplicate(name, "segment"));
    }
    let direction = call.str("iparepltoposegmentdirection").unwrap_or("both");
    let entry = state::entry(&[
        ("cn", &[name]),
        ("iparepltoposegmentleftnode", &[left.as_str()]),
        ("iparepltoposegmentrightnode", &[right.as_str()]),
        ("iparepltoposegmentdirection", &[direction]),
    ]);
    state.put(ctx.server, Kind::Segment, &key, Some(entry));
    let result = shown(state, Kind::Segment, &key, "segment")?;
    changed(
        json!({"result": result, "summary": format!("Added segment \"{name}\""), "value": name}),
    )
}

/// What a server install adds for `server`: its `server` entry, its
/// membership of `ipaservers`, segments to `peer`.
/// As FreeIPA's `server_del` (ipaserver/plugins/server.py): refused
/// (4033) when the rest of a suffix's servers would be disconnected or no
/// CA would be left, unless told to ignore it; then the server's
/// agreements go, and every Kerberos principal `*/<server>@REALM` (its
/// services and its host entry, keytab and all), and with them its place
/// in `ipaservers`.
fn server_del(state: &mut State, ctx: &Ctx, call: &Checked) -> Result<Outcome, IpaError> {
    let names: Vec<String> = call.list("cn").iter().map(|h| fqdn(h)).collect();
    let mut deleted = Vec::new();
    for name in &names {
        let Some(server) = state.get(Kind::Server, name).cloned() else {
            // FreeIPA's `pre_callback` runs before the entry is looked up:
            // for a host that is no server it still destroys every
            // Kerberos principal `*/<name>@REALM` (the host's own entry
            // among them, `_remove_server_host_services`), and only the
            // final delete finds no server (freeipa
            // `ipaserver/plugins/server.py`).
            remove_principals_of(state, ctx, name);
            if call.flag("continue") {
                continue;
            }
            return Err(IpaError::not_found(name, "IPA server"));
        };
        let removal = |reason: String| {
            IpaError::new(
                4033,
                "ServerRemovalError",
                format!("Server removal aborted: {reason}."),
                json!({}),
            )
        };
        if !call.flag("ignore_topology_disconnect") && !call.flag("force") {
            for suffix in values(&server, "iparepltopomanagedsuffix_topologysuffix") {
                if let Some(cut) = disconnected_without(state, &suffix, name) {
                    return Err(removal(format!(
                        "Removal of '{name}' leads to disconnected topology in suffix \
                         '{suffix}': {cut}"
                    )));
                }
            }
        }
        let ca = |s: &Entry| {
            values(s, "iparepltopomanagedsuffix_topologysuffix")
                .iter()
                .any(|x| x == "ca")
        };
        let other_cas = state
            .all(Kind::Server)
            .into_iter()
            .filter(|(k, s)| *k != name.as_str() && ca(s))
            .count();
        if ca(&server) && other_cas == 0 && !call.flag("ignore_last_of_role") {
            return Err(removal(
                "Deleting this server is not allowed as it would leave your installation \
                 without a CA"
                    .into(),
            ));
        }
        let segments: Vec<String> = state
            .all(Kind::Segment)
            .into_iter()
            .filter(|(_, e)| {
                ["iparepltoposegmentleftnode", "iparepltoposegmentrightnode"]
                    .iter()
                    .any(|side| values(e, side).iter().any(|v| v.eq_ignore_ascii_case(name)))
            })
            .map(|(k, _)| k.to_owned())
            .collect();
        for key in segments {
            state.put(ctx.server, Kind::Segment, &key, None);
        }
        remove_principals_of(state, ctx, name);
        state.put(ctx.server, Kind::Server, name, None);
        deleted.push(name.clone());
    }
    let result = json!({
        "result": {"failed": []},
        "summary": format!("Deleted IPA server \"{}\"", deleted.join(",")),
        "value": deleted,
    });
    if deleted.is_empty() {
        unchanged(result)
    } else {
        changed(result)
    }
}

/// Every Kerberos principal of host `name`: its services and its host
/// entry (FreeIPA's `_remove_server_host_services` deletes all entries
/// with `krbprincipalname=*/<name>@REALM`).
fn remove_principals_of(state: &mut State, ctx: &Ctx, name: &str) {
    let suffix = format!("/{name}@{}", state.realm).to_ascii_lowercase();
    let services: Vec<String> = state
        .all(Kind::Service)
        .into_iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| k.to_ascii_lowercase().ends_with(&suffix))
        .collect();
    for key in services {
        state.put(ctx.server, Kind::Service, &key, None);
    }
    if state.exists(Kind::Host, name) {
        delete_host(state, ctx, name);
    }
}

/// A host entry goes, and with it every host group's reference to it:
/// 389-ds's referential integrity plugin, which FreeIPA configures for
/// `member` and the other membership attributes (freeipa
/// `install/share/referint-conf.ldif`, `install/updates/25-referint.update`).
fn delete_host(state: &mut State, ctx: &Ctx, name: &str) {
    state.put(ctx.server, Kind::Host, name, None);
    let groups: Vec<(String, Entry)> = state
        .all(Kind::HostGroup)
        .into_iter()
        .filter(|(_, g)| {
            values(g, "member_host")
                .iter()
                .any(|m| m.eq_ignore_ascii_case(name))
        })
        .map(|(k, g)| (k.to_owned(), g.clone()))
        .collect();
    for (key, mut group) in groups {
        let mut members = values(&group, "member_host");
        members.retain(|m| !m.eq_ignore_ascii_case(name));
        set(&mut group, "member_host", members);
        state.put(ctx.server, Kind::HostGroup, &key, Some(group));
    }
}

/// The servers of `suffix` other than `gone` that its segments (those not
/// touching `gone`) leave unreachable from the first of them, if any.
fn disconnected_without(state: &State, suffix: &str, gone: &str) -> Option<String> {
    let servers: Vec<String> = state
        .all(Kind::Server)
        .into_iter()
        .filter(|(k, s)| {
            *k != gone
                && values(s, "iparepltopomanagedsuffix_topologysuffix")
                    .iter()
                    .any(|x| x == suffix)
        })
        .map(|(k, _)| k.to_owned())
        .collect();
    let prefix = format!("{suffix}|");
    let edges: Vec<(String, String)> = state
        .all(Kind::Segment)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(_, e)| {
            let left = first(e, "iparepltoposegmentleftnode")?.to_ascii_lowercase();
            let right = first(e, "iparepltoposegmentrightnode")?.to_ascii_lowercase();
            (left != gone && right != gone).then_some((left, right))
        })
        .collect();
    let mut reached: Vec<String> = servers.first().cloned().into_iter().collect();
    loop {
        let before = reached.len();
        for (left, right) in &edges {
            if reached.contains(left) && !reached.contains(right) {
                reached.push(right.clone());
            } else if reached.contains(right) && !reached.contains(left) {
                reached.push(left.clone());
            }
        }
        if reached.len() == before {
            break;
        }
    }
    let cut: Vec<&String> = servers.iter().filter(|s| !reached.contains(s)).collect();
    (!cut.is_empty()).then(|| {
        format!(
            "{} can no longer replicate with {}",
            cut.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reached.join(", ")
        )
    })
}

pub fn add_server(
    state: &mut State,
    writer: &str,
    server: &str,
    address: &str,
    ca: bool,
    peer: Option<&str>,
) {
    let suffixes: &[&str] = if ca { &["ca", "domain"] } else { &["domain"] };
    let mut entry = state::entry(&[
        ("cn", &[server]),
        ("iparepltopomanagedsuffix_topologysuffix", suffixes),
        ("ipamindomainlevel", &["0"]),
        ("ipamaxdomainlevel", &["1"]),
    ]);
    entry.insert("_address".into(), json!(address));
    state.put(writer, Kind::Server, server, Some(entry));
    let mut group = state
        .get(Kind::HostGroup, IPASERVERS)
        .cloned()
        .unwrap_or_else(|| {
            state::entry(&[
                ("cn", &[IPASERVERS]),
                ("description", &["IPA server hosts"]),
            ])
        });
    if add_value(&mut group, "member_host", server) {
        state.put(writer, Kind::HostGroup, IPASERVERS, Some(group));
    }
    if let Some(peer) = peer {
        for suffix in suffixes {
            add_install_segment(state, writer, suffix, peer, server);
        }
    }
}

/// Whether `server` manages `suffix` (a replica manages `ca` only once its
/// CA clone is installed).
fn manages(state: &State, server: &str, suffix: &str) -> bool {
    state.get(Kind::Server, server).is_some_and(|s| {
        values(s, "iparepltopomanagedsuffix_topologysuffix")
            .iter()
            .any(|x| x == suffix)
    })
}

/// The segment an install makes between `peer` and `server` in `suffix`,
/// when both manage it.
fn add_install_segment(state: &mut State, writer: &str, suffix: &str, peer: &str, server: &str) {
    if !manages(state, peer, suffix) || !manages(state, server, suffix) {
        return;
    }
    let name = format!("{peer}-to-{server}");
    let segment = state::entry(&[
        ("cn", &[name.as_str()]),
        ("iparepltoposegmentleftnode", &[peer]),
        ("iparepltoposegmentrightnode", &[server]),
        ("iparepltoposegmentdirection", &["both"]),
    ]);
    state.put(
        writer,
        Kind::Segment,
        &format!("{suffix}|{name}"),
        Some(segment),
    );
}

/// A replica's CA clone is installed: from now on its server entry
/// manages the `ca` suffix, with a segment to the server it was cloned
/// from. Until then it is in `server_find` with the `domain` suffix only
/// (freeipa `ipaserver/install/server/replicainstall.py` promotes the
/// replica, and only then installs the CA, `ipaserver/install/ca.py`).
pub fn add_ca_clone(state: &mut State, server: &str, from: &str) {
    let Some(mut entry) = state.get(Kind::Server, server).cloned() else {
        return;
    };
    if add_value(&mut entry, "iparepltopomanagedsuffix_topologysuffix", "ca") {
        state.put(server, Kind::Server, server, Some(entry));
    }
    add_install_segment(state, server, "ca", from, server);
}

// ---- CAs and CA ACLs ---------------------------------------------------

fn ca_out(state: &State, name: &str) -> Result<Value, IpaError> {
    let entry = state
        .get(Kind::Ca, name)
        .ok_or_else(|| IpaError::not_found(name, "Certificate Authority"))?;
    let mut out = public(entry);
    if let Some(pem) = entry.get("_cert_pem").and_then(Value::as_str) {
        if let Ok(der) = ca::pem_to_der(pem) {
            use base64::Engine as _;
            out.insert(
                "certificate".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(der)),
            );
        }
    }
    Ok(Value::Object(out))
}

/// `ca_show` (freeipa `ipaserver/plugins/ca.py`): the entry with the CA's
/// certificate, read from Dogtag on this server. Where the key (and with
/// it the certificate) of a lightweight CA has not reached this server
/// yet, Dogtag answers 404 and `set_certificate_attrs` leaves the
/// certificate out and adds message 13031,
/// `LightweightCACertificateNotAvailable` (freeipa `ipalib/messages.py`),
/// of type "error", to an answer that is otherwise a success.
fn ca_show(state: &State, ctx: &Ctx, name: &str) -> Result<Outcome, IpaError> {
    let mut entry = ca_out(state, name)?;
    let mut answer = json!({"summary": null, "value": name});
    let cn = first(state.get(Kind::Ca, name).unwrap_or(&Entry::new()), "cn")
        .unwrap_or_else(|| name.to_owned());
    if ctx.unready_cas.contains(&name.to_ascii_lowercase()) {
        if let Some(map) = entry.as_object_mut() {
            map.remove("certificate");
        }
        answer["messages"] = json!([lwca_not_available(&cn)]);
    }
    answer["result"] = entry;
    unchanged(answer)
}

/// `ca_find` (freeipa `ipaserver/plugins/ca.py`): the entries, and with
/// `all` each one's certificate as `ca_show` reads it, message 13031 for
/// each CA whose key is not here yet.
fn ca_find(
    state: &State,
    ctx: &Ctx,
    criteria: Option<&String>,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    let criteria = criteria.map(|s| s.to_ascii_lowercase());
    let mut found = Vec::new();
    let mut messages = Vec::new();
    for (key, entry) in state.all(Kind::Ca) {
        let matches = criteria.as_deref().is_none_or(|c| key.contains(c))
            && call.str("cn").is_none_or(|cn| cn.eq_ignore_ascii_case(key));
        if !matches {
            continue;
        }
        if !call.flag("all") {
            found.push(Value::Object(public(entry)));
        } else if ctx.unready_cas.contains(key) {
            found.push(Value::Object(public(entry)));
            messages.push(lwca_not_available(key));
        } else {
            found.push(ca_out(state, key)?);
        }
    }
    let mut answer = find_answer(found, "CA");
    if !messages.is_empty() {
        answer["messages"] = Value::Array(messages);
    }
    unchanged(answer)
}

/// Message 13031 for CA `ca`.
pub fn lwca_not_available(ca: &str) -> Value {
    json!({
        "type": "error",
        "name": "LightweightCACertificateNotAvailable",
        "message": format!("The certificate for {ca} is not available on this server."),
        "code": 13031,
        "data": {"ca": ca},
    })
}

/// The CA's certificate and key, as held in the state.
pub fn ca_pems(state: &State, name: &str) -> Option<ca::CaPems> {
    let entry = state.get(Kind::Ca, name)?;
    Some(ca::CaPems {
        cert_pem: entry.get("_cert_pem")?.as_str()?.to_owned(),
        key_pem: entry.get("_key_pem")?.as_str()?.to_owned(),
    })
}

/// A CA entry for `pems` named `name`.
pub fn ca_entry(name: &str, pems: &ca::CaPems, description: Option<&str>) -> anyhow::Result<Entry> {
    let facts = ca::facts(&pems.cert_pem)?;
    let id = {
        let bytes: [u8; 16] = rand::random();
        let hex = hex::encode(bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    };
    let mut entry = state::entry(&[
        ("cn", &[name]),
        ("ipacaid", &[id.as_str()]),
        ("ipacasubjectdn", &[facts.subject.as_str()]),
        ("ipacaissuerdn", &[facts.issuer.as_str()]),
    ]);
    if let Some(description) = description {
        set(&mut entry, "description", vec![description.to_owned()]);
    }
    entry.insert("_cert_pem".into(), json!(pems.cert_pem));
    entry.insert("_key_pem".into(), json!(pems.key_pem));
    Ok(entry)
}

fn ca_add(state: &mut State, ctx: &Ctx, name: &str, call: &Checked) -> Result<Outcome, IpaError> {
    if state.exists(Kind::Ca, name) {
        return Err(IpaError::duplicate(name, "Certificate Authority"));
    }
    let subject = call.str("ipacasubjectdn").unwrap_or_default();
    let subject_taken = state
        .all(Kind::Ca)
        .into_iter()
        .any(|(_, e)| first(e, "ipacasubjectdn").is_some_and(|s| s.eq_ignore_ascii_case(subject)));
    if subject_taken {
        return Err(IpaError::duplicate_message(format!(
            "Subject DN is already used by CA '{subject}'"
        )));
    }
    let root =
        ca_pems(state, "ipa").ok_or_else(|| IpaError::not_found_reason("CA is not configured"))?;
    let pems = ca::create_sub_ca(&root, subject)
        .map_err(|e| IpaError::validation("subject", format!("{e:#}")))?;
    let entry = ca_entry(name, &pems, call.str("description")).map_err(|e| {
        tracing::error!("ca_add {name}: {e:#}");
        IpaError::internal()
    })?;
    state.put(ctx.server, Kind::Ca, name, Some(entry));
    let result = ca_out(state, name)?;
    changed(json!({"result": result, "summary": format!("Created CA \"{name}\""), "value": name}))
}

fn caacl_add(
    state: &mut State,
    ctx: &Ctx,
    name: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    if state.exists(Kind::CaAcl, name) {
        return Err(IpaError::duplicate(name, "CA ACL"));
    }
    let enabled = if call.params.get("ipaenabledflag") == Some(&Value::Bool(false)) {
        "FALSE"
    } else {
        "TRUE"
    };
    let mut entry = state::entry(&[("cn", &[name]), ("ipaenabledflag", &[enabled])]);
    for option in [
        "description",
        "hostcategory",
        "servicecategory",
        "usercategory",
        "ipacacategory",
        "ipacertprofilecategory",
    ] {
        if let Some(value) = call.str(option) {
            set(&mut entry, option, vec![value.to_owned()]);
        }
    }
    state.put(ctx.server, Kind::CaAcl, name, Some(entry));
    let result = shown(state, Kind::CaAcl, name, "CA ACL")?;
    changed(json!({"result": result, "summary": format!("Added CA ACL \"{name}\""), "value": name}))
}

/// `caacl_add_*`: members go to `<group>_<option>` attributes; failures are
/// reported under `failed.<group>.<option>`, never as an error.
///
/// Members cannot be added where the ACL's category for them is `all`
/// (the `pre_callback` of each `caacl_add_*`, freeipa
/// `ipaserver/plugins/caacl.py`: MutuallyExclusiveError 4303).
fn caacl_add_members(
    state: &mut State,
    ctx: &Ctx,
    name: &str,
    group: &str,
    members: &[(&str, Kind, Vec<String>)],
) -> Result<Outcome, IpaError> {
    let mut entry = state
        .get(Kind::CaAcl, name)
        .cloned()
        .ok_or_else(|| IpaError::not_found(name, "CA ACL"))?;
    let (category, what, label) = match group {
        "memberhost" => ("hostcategory", "hosts", "host"),
        "memberservice" => ("servicecategory", "services", "service"),
        "ipamemberca" => ("ipacacategory", "CAs", "CA"),
        _ => ("ipacertprofilecategory", "profiles", "profile"),
    };
    if first(&entry, category).is_some_and(|c| c.eq_ignore_ascii_case("all")) {
        return Err(IpaError::new(
            4303,
            "MutuallyExclusiveError",
            format!("{what} cannot be added when {label} category='all'"),
            json!({"reason": format!("{what} cannot be added when {label} category='all'")}),
        ));
    }
    let mut completed = 0;
    let mut failed = Map::new();
    for (option, kind, list) in members {
        let attribute = format!("{group}_{option}");
        let mut failures = Vec::new();
        for member in list {
            let member = match kind {
                Kind::Host => fqdn(member),
                Kind::Service => service_key(state, member),
                _ => member.clone(),
            };
            if !state.exists(*kind, &member) {
                failures.push(json!([member, "no such entry"]));
            } else if add_value(&mut entry, &attribute, &member) {
                completed += 1;
            } else {
                failures.push(json!([member, "This entry is already a member"]));
            }
        }
        failed.insert((*option).into(), Value::Array(failures));
    }
    if completed > 0 {
        state.put(ctx.server, Kind::CaAcl, name, Some(entry));
    }
    let result = shown(state, Kind::CaAcl, name, "CA ACL")?;
    let answer = json!({"result": result, "completed": completed, "failed": {group: failed}});
    if completed > 0 {
        changed(answer)
    } else {
        unchanged(answer)
    }
}

/// `acl_evaluate`: does an enabled CA ACL let `principal` use `ca` with
/// `profile`? An ACL that names no CA covers the `ipa` CA only.
fn acl_allows(state: &State, principal: &Principal, ca: &str, profile: &str) -> bool {
    let host_groups = |host: &str| -> Vec<String> {
        state
            .all(Kind::HostGroup)
            .into_iter()
            .filter(|(_, g)| values(g, "member_host").iter().any(|h| h == host))
            .map(|(k, _)| k.to_owned())
            .collect()
    };
    state.all(Kind::CaAcl).into_iter().any(|(_, acl)| {
        if first(acl, "ipaenabledflag").as_deref() != Some("TRUE") {
            return false;
        }
        let category = |attribute: &str| first(acl, attribute).as_deref() == Some("all");
        let member = |attribute: &str, name: &str| {
            values(acl, attribute)
                .iter()
                .any(|v| v.eq_ignore_ascii_case(name))
        };
        let who = match principal.service.as_deref() {
            Some("host") => {
                let host = fqdn(&principal.name);
                category("hostcategory")
                    || member("memberhost_host", &host)
                    || host_groups(&host)
                        .iter()
                        .any(|g| member("memberhost_hostgroup", g))
            }
            Some(_) => {
                category("servicecategory")
                    || member("memberservice_service", &principal.text(&state.realm))
            }
            None => category("usercategory"),
        };
        let cas = values(acl, "ipamemberca_ca");
        let which_ca = category("ipacacategory")
            || cas.iter().any(|c| c.eq_ignore_ascii_case(ca))
            || (cas.is_empty() && ca == "ipa");
        let which_profile = category("ipacertprofilecategory")
            || member("ipamembercertprofile_certprofile", profile);
        who && which_ca && which_profile
    })
}

/// The host names a principal's entry answers to (`_dns_name_matches_principal`
/// in freeipa `ipaserver/plugins/cert.py`): the host part of each of its
/// Kerberos names with the same service and realm (a host's own name
/// counts whether or not it has enrolled).
fn principal_host_names(state: &State, principal: &Principal, entry: &Entry) -> Vec<String> {
    let mut names = Vec::new();
    if principal.service.as_deref() == Some("host") {
        names.push(fqdn(&principal.name));
    }
    for alias in values(entry, "krbprincipalname") {
        let Some(alias) = parse_principal(&alias) else {
            continue;
        };
        let same_service = alias
            .service
            .as_deref()
            .zip(principal.service.as_deref())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
        let same_realm = alias.realm.as_deref().unwrap_or(&state.realm)
            == principal.realm.as_deref().unwrap_or(&state.realm);
        if same_service && same_realm {
            names.push(fqdn(&alias.name));
        }
    }
    names
}

/// Where a host or service principal is kept: its kind and key.
fn principal_key(state: &State, principal: &Principal) -> Option<(Kind, String)> {
    match principal.service.as_deref() {
        Some("host") => Some((Kind::Host, fqdn(&principal.name))),
        Some(_) => Some((Kind::Service, principal.text(&state.realm))),
        None => None,
    }
}

/// `caacl_check` (freeipa `ipaserver/plugins/cert.py`): 2100 unless an
/// enabled CA ACL lets `principal` use `ca` with `profile`.
fn caacl_check(
    state: &State,
    principal: &Principal,
    ca: &str,
    profile: &str,
) -> Result<(), IpaError> {
    if acl_allows(state, principal, ca, profile) {
        return Ok(());
    }
    Err(IpaError::aci(format!(
        "Principal '{}' is not permitted to use CA '{ca}' with profile '{profile}' for \
         certificate issuance.",
        principal.text(&state.realm)
    )))
}

/// The message Dogtag's refusal to sign with a lightweight CA whose key
/// has not reached this server yet reaches the client in: `ensureReady`
/// (dogtag `CertificateAuthority.java`) throws `CAMissingKeyException`,
/// which FreeIPA's `request_certificate` (freeipa
/// `ipaserver/plugins/dogtag.py`) turns into CertificateOperationError.
pub const LWCA_KEY_MISSING: &str =
    "Authority does not yet have signing key and cert in local NSSDB";

/// `cert_request` as freeipa `ipaserver/plugins/cert.py` runs it, in its
/// order: the CA (`ca_show`, so a wrong name says so before any ACL), the
/// principal (`lookup_or_add_principal`), `caacl_check` for it, the
/// subject's most specific CN against the principal, each SAN DNS name
/// (the principal's own, or another principal of the same service whose
/// entry it may write, and which `caacl_check` lets use the CA too),
/// the SAN IP addresses (`_validate_san_ips`), then Dogtag, which refuses
/// while this server lacks the CA's key.
///
/// Stricter than FreeIPA: the simulator's caller is always `admin`, who
/// may write every entry; a SAN naming another principal is taken only
/// when that principal is managed by the requester's host, which is what
/// FreeIPA asks of a host binding with its keytab (certmonger's path; the
/// ACI "Hosts can modify service userCertificate"). User principals get
/// nothing.
fn cert_request(
    state: &mut State,
    ctx: &Ctx,
    csr: &str,
    call: &Checked,
) -> Result<Outcome, IpaError> {
    let ca_name = call.str("cacn").unwrap_or("ipa").to_ascii_lowercase();
    let pems = ca_pems(state, &ca_name)
        .ok_or_else(|| IpaError::not_found(&ca_name, "Certificate Authority"))?;
    let profile = call.str("profile_id").unwrap_or(DEFAULT_PROFILE).to_owned();
    if !state.exists(Kind::CertProfile, &profile) {
        return Err(IpaError::not_found(&profile, "Certificate Profile"));
    }
    let text = call.str("principal").unwrap_or_default();
    let principal = parse_principal(text).ok_or_else(|| {
        IpaError::validation("principal", format!("Malformed principal: '{text}'"))
    })?;
    let principal = Principal {
        name: fqdn(&principal.name),
        realm: Some(principal.realm.unwrap_or_else(|| state.realm.clone())),
        ..principal
    };
    let principal_text = principal.text(&state.realm);
    let Some((kind, key)) = principal_key(state, &principal) else {
        return Err(IpaError::aci(format!(
            "Principal '{principal_text}' is not permitted to use CA '{ca_name}' with \
             profile '{profile}' for certificate issuance."
        )));
    };
    if !state.exists(kind, &key) {
        if !(call.flag("add") && kind == Kind::Service) {
            return Err(IpaError::not_found_reason(format!(
                "The principal for {principal_text} does not exist"
            )));
        }
        // `lookup_or_add_principal`: `service_add(force=True)`.
        add_service_entry(state, ctx, &principal_text, false)?;
    }
    caacl_check(state, &principal, &ca_name, &profile)?;
    let request = ca::read_csr(csr).map_err(|e| {
        IpaError::new(
            3008,
            "ConversionError",
            format!("invalid 'csr': Failure decoding Certificate Signing Request: {e}"),
            json!({"name": "csr", "error": e}),
        )
    })?;
    let cn = request.common_name.clone().ok_or_else(|| {
        IpaError::validation("csr", "No Common Name was found in subject of request.")
    })?;
    let entry = state.get(kind, &key).cloned().unwrap_or_default();
    // A host binding with its keytab writes only its own entry and the
    // services it manages (the ACI "Hosts can modify service
    // userCertificate"; cert.py's `ldap.can_write(dn, "usercertificate")`).
    if let Caller::Host(host) = ctx.caller {
        let own = kind == Kind::Host && key.eq_ignore_ascii_case(host);
        let manages = kind == Kind::Service
            && values(&entry, "managedby_host")
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host));
        if !own && !manages {
            return Err(IpaError::aci(format!(
                "Insufficient access: host/{host} may not write the certificate of \
                 {principal_text}"
            )));
        }
    }
    let own_names = principal_host_names(state, &principal, &entry);
    let matches = |names: &[String], name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if !matches(&own_names, &cn) {
        return Err(IpaError::validation(
            "csr",
            format!(
                "hostname in subject of request '{cn}' does not match name or aliases of \
                 principal '{principal_text}'"
            ),
        ));
    }
    let requester_host = fqdn(&principal.name);
    let mut qualified = Vec::new();
    for name in &request.dns_names {
        if matches(&own_names, name) {
            qualified.push(name.clone());
            continue;
        }
        let alt = Principal {
            name: fqdn(name),
            ..principal.clone()
        };
        let alt_entry = principal_key(state, &alt)
            .and_then(|(kind, key)| state.get(kind, &key).cloned())
            .ok_or_else(|| {
                IpaError::not_found_reason(format!(
                    "The service principal for subject alt name {name} in certificate \
                     request does not exist"
                ))
            })?;
        if matches(&principal_host_names(state, &alt, &alt_entry), name) {
            qualified.push(name.clone());
        }
        let managed = values(&alt_entry, "managedby_host")
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&requester_host));
        if !managed {
            return Err(IpaError::aci(format!(
                "Insufficient privilege to create a certificate with subject alt name \
                 '{name}'."
            )));
        }
        caacl_check(state, &alt, &ca_name, &profile)?;
    }
    // A Kerberos principal name (certmonger's `-K`) must be the
    // principal asked for (cert.py, SAN_OTHERNAME_KRB5PRINCIPALNAME and
    // SAN_OTHERNAME_UPN).
    if let Some(other) = request
        .principal_names
        .iter()
        .find(|n| **n != principal_text)
    {
        return Err(IpaError::aci(format!(
            "Principal '{other}' in subject alt name does not match requested principal"
        )));
    }
    if let Some(kind) = request.forbidden.first() {
        return Err(IpaError::aci(format!(
            "Subject alt name type {kind} is forbidden"
        )));
    }
    if !request.ip_addresses.is_empty() {
        validate_san_ips(state, &request.ip_addresses, &qualified)?;
    }
    if ca_name != "ipa" && ctx.unready_cas.contains(&ca_name) {
        return Err(IpaError::new(
            4301,
            "CertificateOperationError",
            format!("Certificate operation cannot be completed: {LWCA_KEY_MISSING}"),
            json!({ "error": LWCA_KEY_MISSING }),
        ));
    }
    let cert_pem = ca::issue(&pems, &request, &state.realm).map_err(|e| {
        IpaError::new(
            4301,
            "CertificateOperationError",
            format!("Certificate operation cannot be completed: {e:#}"),
            json!({ "error": format!("{e:#}") }),
        )
    })?;
    let facts = ca::facts(&cert_pem).map_err(|e| {
        tracing::error!("cert_request: {e:#}");
        IpaError::internal()
    })?;
    let mut cert = state::entry(&[
        ("cacn", &[ca_name.as_str()]),
        ("principal", &[principal_text.as_str()]),
    ]);
    cert.insert("_cert_pem".into(), json!(cert_pem));
    state.put(ctx.server, Kind::Cert, &facts.serial, Some(cert));
    if let Some(mut owner) = state.get(kind, &key).cloned() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&facts.der);
        add_value(&mut owner, "usercertificate", &b64);
        state.put(ctx.server, kind, &key, Some(owner));
    }
    let mut result = ca::cert_entry(&facts, &ca_name);
    result["request_id"] = json!(facts.serial);
    changed(json!({"result": result, "summary": null, "value": facts.serial}))
}

/// `_validate_san_ips` (freeipa `ipaserver/plugins/cert.py`): every IP
/// address in the request is reached from one of its qualified DNS names
/// through an A/AAAA record (or one CNAME), has a PTR record, and every
/// PTR of it names one of the names that reach it; all in this
/// deployment's own DNS.
fn validate_san_ips(
    state: &State,
    ips: &[std::net::IpAddr],
    names: &[String],
) -> Result<(), IpaError> {
    let mut reachable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        reach(state, &mut reachable, name, 1);
    }
    let refuse = |error: String| Err(IpaError::validation("csr", error));
    let unreachable: Vec<String> = ips
        .iter()
        .map(|ip| ip.to_string())
        .filter(|ip| !reachable.contains_key(ip))
        .collect();
    if !unreachable.is_empty() {
        return refuse(format!(
            "IP address in subjectAltName ({}) unreachable from DNS names",
            unreachable.join(", ")
        ));
    }
    let mut ptrs_by_ip = BTreeMap::new();
    let mut missing = Vec::new();
    for ip in ips {
        let ip = ip.to_string();
        let ptrs: Vec<String> = reverse_of(state, &ip)
            .and_then(|(zone, name)| state.get(Kind::DnsRecord, &format!("{zone}|{name}")))
            .map(|e| values(e, "ptrrecord"))
            .unwrap_or_default()
            .into_iter()
            .map(|p| fqdn(&p))
            .collect();
        if ptrs.is_empty() {
            missing.push(ip);
        } else {
            ptrs_by_ip.insert(ip, ptrs);
        }
    }
    if !missing.is_empty() {
        return refuse(format!(
            "IP address in subjectAltName ({}) does not have PTR record",
            missing.join(", ")
        ));
    }
    for (ip, ptrs) in ptrs_by_ip {
        let reaching = reachable.get(&ip).cloned().unwrap_or_default();
        if ptrs.iter().any(|p| !reaching.contains(p)) {
            return refuse(format!(
                "PTR record for SAN IP ({ip}) does not match A/AAAA records"
            ));
        }
    }
    Ok(())
}

/// `_san_ip_update_reachable`: the addresses `name` has in this
/// deployment's zones, following at most `cname_depth` CNAMEs.
fn reach(
    state: &State,
    reachable: &mut BTreeMap<String, Vec<String>>,
    name: &str,
    cname_depth: u32,
) {
    let Some((relative, zone)) = split_in_zone(state, name) else {
        return;
    };
    let Some(record) = state.get(Kind::DnsRecord, &format!("{zone}|{relative}")) else {
        return;
    };
    for ip in values(record, "arecord")
        .into_iter()
        .chain(values(record, "aaaarecord"))
    {
        let names = reachable.entry(ip).or_default();
        let name = fqdn(name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if cname_depth > 0 {
        for cname in values(record, "cnamerecord") {
            let target = if cname.ends_with('.') {
                cname
            } else {
                format!("{cname}.{zone}")
            };
            reach(state, reachable, &target, cname_depth - 1);
        }
    }
}

fn cert_show(state: &State, serial: &str, call: &Checked) -> Result<Outcome, IpaError> {
    let ca_name = call.str("cacn").unwrap_or("ipa");
    let number = crate::api::parse_serial(serial)
        .map(|n| n.to_string())
        .unwrap_or_else(|| serial.to_owned());
    // Serials may exceed 64 bits: match the stored decimal or hex text.
    let stored = state.all(Kind::Cert).into_iter().find(|(k, e)| {
        *k == number
            || e.get("_cert_pem")
                .and_then(Value::as_str)
                .and_then(|pem| ca::facts(pem).ok())
                .is_some_and(|f| f.serial_hex.eq_ignore_ascii_case(serial))
    });
    let not_found = || {
        IpaError::not_found_reason(format!(
            "Certificate with serial number {serial} issued by CA '{ca_name}' not found"
        ))
    };
    let (_, entry) = stored.ok_or_else(not_found)?;
    if first(entry, "cacn").as_deref() != Some(ca_name) {
        return Err(not_found());
    }
    let pem = entry
        .get("_cert_pem")
        .and_then(Value::as_str)
        .ok_or_else(IpaError::internal)?;
    let facts = ca::facts(pem).map_err(|_| IpaError::internal())?;
    let mut result = ca::cert_entry(&facts, ca_name);
    result["revoked"] = json!(false);
    let owner = first(entry, "principal").unwrap_or_default();
    if let Some(p) = parse_principal(&owner) {
        match p.service.as_deref() {
            Some("host") => result["owner_host"] = json!([p.name]),
            Some(_) => result["owner_service"] = json!([owner]),
            None => {}
        }
    }
    unchanged(json!({"result": result, "summary": null, "value": facts.serial}))
}
