//! "Make it so" operations: each reads before it writes, so a second run
//! makes no mutating call that succeeds, and takes FreeIPA's "it exists
//! already" answers (4002, 4202, membership `failed` entries saying "already
//! a member") as success, which also makes a retried write whose first
//! answer was lost harmless.

use std::net::Ipv4Addr;

use base64::Engine as _;
use serde_json::Value;

use super::calls::{self, Record, Suffix};
use super::client::Client;
use super::error::{code, Error};

/// Whether an ensure had to change something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Unchanged,
}

/// A host to ensure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub fqdn: String,
    /// Its address: the A (and, where the reverse zone exists, PTR) record
    /// is ensured too.
    pub address: Option<Ipv4Addr>,
    /// The one-time password to enroll with. Keep it (in the phase's
    /// state) before calling: a second run then hands the same one on. None
    /// lets the server choose one, which only the run that created the
    /// host learns.
    pub one_time_password: Option<String>,
}

/// A server as `server_find` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyServer {
    pub name: String,
    /// The replication suffixes it manages: `domain`, and `ca` once it
    /// has a CA.
    pub suffixes: Vec<String>,
}

/// A host as FreeIPA has it after [`Client::ensure_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub change: Change,
    /// It has enrolled (has a keytab): no password is needed any more.
    pub enrolled: bool,
    /// The password to enroll with, when not enrolled and known.
    pub one_time_password: Option<String>,
}

/// A CA ACL and the members it must have (members already there stay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaAclSpec {
    pub name: String,
    pub description: String,
    pub cas: Vec<String>,
    pub profiles: Vec<String>,
    pub hosts: Vec<String>,
    pub hostgroups: Vec<String>,
    pub services: Vec<String>,
}

/// A certificate FreeIPA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// `0x...`, as `cert_show` takes it.
    pub serial_hex: String,
    pub ca: String,
}

/// A CA as FreeIPA has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaInfo {
    pub name: String,
    pub subject: String,
    pub cert_pem: String,
    pub change: Change,
}

/// The certificate profile FreeIPA issues host and service certificates
/// with.
pub const SERVICE_PROFILE: &str = "caIPAserviceCert";

fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Text values of an attribute of an entry (DNS names decoded).
pub(super) fn values(entry: &Value, attribute: &str) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("__dns_name__")?.as_str().map(str::to_owned),
        _ => None,
    };
    match entry.get(attribute) {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(other) => one(other).into_iter().collect(),
        None => Vec::new(),
    }
}

pub(super) fn contains(list: &[String], wanted: &str) -> bool {
    list.iter().any(|v| v.eq_ignore_ascii_case(wanted))
}

pub(super) fn entry<'a>(method: &str, result: &'a Value) -> Result<&'a Value, Error> {
    result
        .get("result")
        .filter(|e| e.is_object())
        .ok_or_else(|| Error::Malformed {
            method: method.to_owned(),
            why: "no `result` entry".into(),
        })
}

/// `certificate` (base64 DER) of a result entry as PEM.
pub(super) fn certificate(method: &str, entry: &Value) -> Result<String, Error> {
    let text = values(entry, "certificate")
        .into_iter()
        .next()
        .ok_or_else(|| Error::Malformed {
            method: method.to_owned(),
            why: "no certificate".into(),
        })?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Error::Malformed {
            method: method.to_owned(),
            why: format!("the certificate is not base64: {e}"),
        })?;
    Ok(crate::https::to_pem(
        &rustls::pki_types::CertificateDer::from(der),
    ))
}

/// Membership answers: success unless a member failed for a reason other
/// than being a member already.
fn check_members(method: &str, result: &Value) -> Result<Change, Error> {
    let completed = result.get("completed").and_then(Value::as_u64).unwrap_or(0);
    if let Some(groups) = result.get("failed").and_then(Value::as_object) {
        for kinds in groups.values().filter_map(Value::as_object) {
            for failures in kinds.values().filter_map(Value::as_array) {
                for failure in failures {
                    let member = failure.get(0).and_then(Value::as_str).unwrap_or_default();
                    let why = failure.get(1).and_then(Value::as_str).unwrap_or_default();
                    if why != "This entry is already a member" {
                        return Err(Error::MemberRefused {
                            method: method.to_owned(),
                            member: member.to_owned(),
                            why: why.to_owned(),
                        });
                    }
                }
            }
        }
    }
    Ok(if completed > 0 {
        Change::Created
    } else {
        Change::Unchanged
    })
}

/// The host's zone: its name without the first label.
pub(super) fn zone_of(fqdn: &str) -> Result<(String, String), Error> {
    let (host, domain) = fqdn
        .trim_end_matches('.')
        .split_once('.')
        .ok_or_else(|| Error::Invalid(format!("`{fqdn}` is not a fully qualified host name")))?;
    Ok((host.to_owned(), absolute(domain)))
}

impl Client {
    /// The result of a lookup, or None for 4001.
    pub(super) async fn lookup(&self, call: &calls::Call) -> Result<Option<Value>, Error> {
        match self.call(call).await {
            Ok(result) => Ok(Some(result)),
            Err(e) if e.is(code::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A write whose "already so" answers count as success.
    pub(super) async fn write(&self, call: &calls::Call) -> Result<Change, Error> {
        match self.call(call).await {
            Ok(_) => Ok(Change::Created),
            Err(e) if e.is(code::DUPLICATE_ENTRY) || e.is(code::EMPTY_MODLIST) => {
                Ok(Change::Unchanged)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.call(&calls::ping()).await.map(|_| ())
    }

    /// The IPA servers' names.
    pub async fn servers(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .topology_servers()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect())
    }

    /// The IPA servers with the suffixes each manages (what
    /// `server_find` lists by default): a replica is listed before its
    /// CA clone is done, without `ca`, and FreeIPA refuses a `ca` segment
    /// to it until then (freeipa `ipaserver/plugins/topology.py`,
    /// `validate_nodes`).
    pub async fn topology_servers(&self) -> Result<Vec<TopologyServer>, Error> {
        let result = self.call(&calls::server_find()).await?;
        let list = result
            .get("result")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Malformed {
                method: "server_find".into(),
                why: "no list of servers".into(),
            })?;
        Ok(list
            .iter()
            .flat_map(|e| {
                let suffixes = values(e, "iparepltopomanagedsuffix_topologysuffix");
                values(e, "cn").into_iter().map(move |name| TopologyServer {
                    name,
                    suffixes: suffixes.clone(),
                })
            })
            .collect())
    }

    /// The host exists (with its address in DNS when given) and, until it
    /// enrolls, has a one-time password.
    pub async fn ensure_host(&self, spec: &HostSpec) -> Result<HostState, Error> {
        let fqdn = spec.fqdn.trim_end_matches('.').to_ascii_lowercase();
        if let Some(address) = spec.address {
            // Records first: then host_add never has to add them, and a
            // second run finds them there.
            let (host, zone) = zone_of(&fqdn)?;
            self.ensure_address(&zone, &host, address).await?;
        }
        let found = self.lookup(&calls::host_show(&fqdn)).await?;
        let Some(found) = found else {
            let password = spec.one_time_password.as_deref();
            // The record was just ensured in FreeIPA's DNS: `force`, so
            // that whatever the server resolves through does not matter.
            let force = spec.address.is_some();
            let added = self
                .call(&calls::host_add(&fqdn, password, None, force))
                .await;
            return match added {
                Ok(result) => {
                    let entry = entry("host_add", &result)?;
                    let random = values(entry, "randompassword").into_iter().next();
                    tracing::info!(host = %fqdn, "freeipa: host added");
                    Ok(HostState {
                        change: Change::Created,
                        enrolled: false,
                        one_time_password: random.or_else(|| password.map(str::to_owned)),
                    })
                }
                // Added by an attempt whose answer was lost.
                Err(e) if e.is(code::DUPLICATE_ENTRY) => Ok(HostState {
                    change: Change::Unchanged,
                    enrolled: false,
                    one_time_password: password.map(str::to_owned),
                }),
                Err(e) => Err(e),
            };
        };
        let entry = entry("host_show", &found)?;
        let flag = |name: &str| entry.get(name).and_then(Value::as_bool).unwrap_or(false);
        let enrolled = flag("has_keytab");
        if enrolled {
            return Ok(HostState {
                change: Change::Unchanged,
                enrolled: true,
                one_time_password: None,
            });
        }
        let mut change = Change::Unchanged;
        if !flag("has_password") {
            if let Some(password) = &spec.one_time_password {
                change = self
                    .write(&calls::host_mod_password(&fqdn, password))
                    .await?;
            }
        }
        Ok(HostState {
            change,
            enrolled: false,
            one_time_password: spec.one_time_password.clone(),
        })
    }

    /// An enrolled host that lost its keytab (a droplet rebuilt under the
    /// same name) enrolls again: FreeIPA disables the old keytab (and
    /// revokes the old certificates), and `password` becomes its one-time
    /// password. Safe to repeat: a host already disabled stays so.
    pub async fn reenroll_host(&self, fqdn: &str, password: &str) -> Result<(), Error> {
        let fqdn = fqdn.trim_end_matches('.').to_ascii_lowercase();
        match self.call(&calls::host_disable(&fqdn)).await {
            Ok(_) => tracing::info!(host = %fqdn, "freeipa: host disabled to enroll again"),
            Err(e) if e.is(code::ALREADY_INACTIVE) => {}
            Err(e) => return Err(e),
        }
        self.write(&calls::host_mod_password(&fqdn, password))
            .await
            .map(|_| ())
    }

    /// `fqdn` is no FreeIPA server (any more): removed when it was one,
    /// with its agreements, principals and host entry. FreeIPA refuses
    /// (4033) when that would cut the other servers apart or leave no CA;
    /// that error is returned. `server_del` can take minutes (it waits
    /// for replication); one that got no answer in time is not sent
    /// again until `server_show` says the server is still there once the
    /// first could have finished.
    pub async fn ensure_no_server(&self, fqdn: &str) -> Result<Change, Error> {
        let fqdn = fqdn.trim_end_matches('.').to_ascii_lowercase();
        let mut looked = false;
        loop {
            match self.call(&calls::server_del(&fqdn)).await {
                Ok(_) => {
                    tracing::info!(server = %fqdn, "freeipa: server removed");
                    return Ok(Change::Created);
                }
                Err(e) if e.is(code::NOT_FOUND) => return Ok(Change::Unchanged),
                Err(e @ Error::Unsettled { .. }) if !looked => {
                    looked = true;
                    tracing::warn!(server = %fqdn, "freeipa: {e}");
                    if self.lookup(&calls::server_show(&fqdn)).await?.is_none() {
                        return Ok(Change::Created);
                    }
                    // Still listed: the first may be running yet. It had
                    // its whole time; one more, and only one.
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn ensure_hostgroup(&self, name: &str, description: &str) -> Result<Change, Error> {
        if self.lookup(&calls::hostgroup_show(name)).await?.is_some() {
            return Ok(Change::Unchanged);
        }
        self.write(&calls::hostgroup_add(name, description)).await
    }

    /// Each of `hosts` is a member of the group (others stay).
    pub async fn ensure_hostgroup_members(
        &self,
        name: &str,
        hosts: &[String],
    ) -> Result<Change, Error> {
        let shown = self.call(&calls::hostgroup_show(name)).await?;
        let present = values(entry("hostgroup_show", &shown)?, "member_host");
        let missing: Vec<String> = hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !contains(&present, h))
            .collect();
        if missing.is_empty() {
            return Ok(Change::Unchanged);
        }
        let result = self
            .call(&calls::hostgroup_add_member(name, &missing))
            .await?;
        check_members("hostgroup_add_member", &result)
    }

    /// A service principal (`etcd/node1.example.com@EXAMPLE.COM`); its host
    /// must exist and resolve.
    pub async fn ensure_service(&self, principal: &str) -> Result<Change, Error> {
        if self
            .lookup(&calls::service_show(principal))
            .await?
            .is_some()
        {
            return Ok(Change::Unchanged);
        }
        self.write(&calls::service_add(principal)).await
    }

    pub async fn ensure_dns_zone(
        &self,
        zone: &str,
        skip_overlap_check: bool,
    ) -> Result<Change, Error> {
        let zone = absolute(zone);
        if self.lookup(&calls::dnszone_show(&zone)).await?.is_some() {
            return Ok(Change::Unchanged);
        }
        self.write(&calls::dnszone_add(&zone, skip_overlap_check))
            .await
    }

    /// `record` is among the values of `name` in `zone` (other values stay).
    pub async fn ensure_dns_record(
        &self,
        zone: &str,
        name: &str,
        record: &Record,
    ) -> Result<Change, Error> {
        let zone = absolute(zone);
        if let Some(shown) = self.lookup(&calls::dnsrecord_show(&zone, name)).await? {
            let present = values(entry("dnsrecord_show", &shown)?, record.option());
            if contains(&present, &record.value()) {
                return Ok(Change::Unchanged);
            }
        }
        self.write(&calls::dnsrecord_add(&zone, name, record)).await
    }

    /// `name`'s A record is `address` and nothing else: added when missing,
    /// then any other address (a rebuilt node's old one) removed, so the
    /// name never resolves to nothing on the way.
    pub async fn ensure_address(
        &self,
        zone: &str,
        name: &str,
        address: Ipv4Addr,
    ) -> Result<Change, Error> {
        let zone = absolute(zone);
        let wanted = Record::A(address);
        let present = match self.lookup(&calls::dnsrecord_show(&zone, name)).await? {
            Some(shown) => values(entry("dnsrecord_show", &shown)?, wanted.option()),
            None => Vec::new(),
        };
        let mut change = Change::Unchanged;
        if !contains(&present, &wanted.value()) {
            change = self
                .write(&calls::dnsrecord_add(&zone, name, &wanted))
                .await?;
        }
        for old in present.iter().filter_map(|v| v.parse::<Ipv4Addr>().ok()) {
            if old == address {
                continue;
            }
            match self
                .call(&calls::dnsrecord_del(&zone, name, &Record::A(old)))
                .await
            {
                Ok(_) => change = Change::Created,
                Err(e) if e.is(code::NOT_FOUND) || e.is(code::ATTR_VALUE_NOT_FOUND) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(change)
    }

    /// A replication segment joins `left` and `right` in `suffix`, in
    /// either direction and whatever its name.
    pub async fn ensure_segment(
        &self,
        suffix: Suffix,
        left: &str,
        right: &str,
    ) -> Result<Change, Error> {
        let pair = [(left.to_owned(), right.to_owned())];
        let added = self.ensure_segments(suffix, &pair).await?;
        Ok(if added == 0 {
            Change::Unchanged
        } else {
            Change::Created
        })
    }

    /// Every pair of `pairs` joined by a segment of `suffix` (in either
    /// direction): one listing, then an add for each pair missing. How
    /// many were added.
    pub async fn ensure_segments(
        &self,
        suffix: Suffix,
        pairs: &[(String, String)],
    ) -> Result<usize, Error> {
        let found = self.call(&calls::topologysegment_find(suffix)).await?;
        let segments = found
            .get("result")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Malformed {
                method: "topologysegment_find".into(),
                why: "no list of segments".into(),
            })?;
        let mut added = 0;
        for (left, right) in pairs {
            let joins = |segment: &Value| {
                let l = values(segment, "iparepltoposegmentleftnode");
                let r = values(segment, "iparepltoposegmentrightnode");
                (contains(&l, left) && contains(&r, right))
                    || (contains(&l, right) && contains(&r, left))
            };
            if segments.iter().any(joins) {
                continue;
            }
            let name = format!("{left}-to-{right}");
            match self
                .write(&calls::topologysegment_add(suffix, &name, left, right))
                .await
            {
                Ok(Change::Created) => added += 1,
                Ok(_) => {}
                // The topology plugin's "unwilling to perform" (4203)
                // when the pair is joined under another name, which the
                // listing missed (a segment replicated in since). 4203 is
                // any refusal of the directory's, though: the pair is
                // looked up again, and only a segment joining it counts.
                Err(e) if e.is(code::DATABASE_ERROR) => {
                    let again = self.call(&calls::topologysegment_find(suffix)).await?;
                    let joined = again
                        .get("result")
                        .and_then(Value::as_array)
                        .is_some_and(|list| list.iter().any(joins));
                    if !joined {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(added)
    }

    async fn ca_info(&self, name: &str, change: Change) -> Result<Option<CaInfo>, Error> {
        let Some(shown) = self.lookup(&calls::ca_show(name)).await? else {
            return Ok(None);
        };
        let entry = entry("ca_show", &shown)?;
        Ok(Some(CaInfo {
            name: name.to_owned(),
            subject: values(entry, "ipacasubjectdn")
                .into_iter()
                .next()
                .unwrap_or_default(),
            cert_pem: certificate("ca_show", entry)?,
            change,
        }))
    }

    /// A sub-CA of the IPA CA with this subject. An existing CA of that
    /// name with another subject is an error, not silently reused.
    pub async fn ensure_sub_ca(
        &self,
        name: &str,
        subject_dn: &str,
        description: &str,
    ) -> Result<CaInfo, Error> {
        let change = match self.ca_info(name, Change::Unchanged).await? {
            Some(found) => {
                let same = found
                    .subject
                    .replace(", ", ",")
                    .eq_ignore_ascii_case(&subject_dn.replace(", ", ","));
                if !same {
                    return Err(Error::Invalid(format!(
                        "FreeIPA has a CA `{name}` with subject `{}`, not `{subject_dn}`; \
                         remove it (ipa ca-del {name}) or choose another name",
                        found.subject
                    )));
                }
                return Ok(found);
            }
            None => {
                self.write(&calls::ca_add(name, subject_dn, description))
                    .await?
            }
        };
        self.ca_info(name, change)
            .await?
            .ok_or_else(|| Error::Malformed {
                method: "ca_show".into(),
                why: format!("the CA `{name}` just added is not there"),
            })
    }

    /// The CA ACL exists and has every member of `spec`.
    pub async fn ensure_ca_acl(&self, spec: &CaAclSpec) -> Result<Change, Error> {
        let name = spec.name.as_str();
        let mut change = Change::Unchanged;
        let shown = match self.lookup(&calls::caacl_show(name)).await? {
            Some(shown) => shown,
            None => {
                change = self
                    .write(&calls::caacl_add(name, &spec.description))
                    .await?;
                self.call(&calls::caacl_show(name)).await?
            }
        };
        let acl = entry("caacl_show", &shown)?;
        let missing = |attribute: &str, wanted: &[String]| -> Vec<String> {
            let present = values(acl, attribute);
            wanted
                .iter()
                .filter(|w| !contains(&present, w))
                .cloned()
                .collect()
        };
        let hosts = missing("memberhost_host", &spec.hosts);
        let hostgroups = missing("memberhost_hostgroup", &spec.hostgroups);
        let services = missing("memberservice_service", &spec.services);
        let cas = missing("ipamemberca_ca", &spec.cas);
        let profiles = missing("ipamembercertprofile_certprofile", &spec.profiles);
        let mut member_calls = Vec::new();
        if !hosts.is_empty() || !hostgroups.is_empty() {
            member_calls.push(calls::caacl_add_host(name, &hosts, &hostgroups));
        }
        if !services.is_empty() {
            member_calls.push(calls::caacl_add_service(name, &services));
        }
        if !cas.is_empty() {
            member_calls.push(calls::caacl_add_ca(name, &cas));
        }
        if !profiles.is_empty() {
            member_calls.push(calls::caacl_add_profile(name, &profiles));
        }
        for call in member_calls {
            let result = self.call(&call).await?;
            if check_members(call.method, &result)? == Change::Created {
                change = Change::Created;
            }
        }
        Ok(change)
    }

    /// Ask `ca` to sign `csr_pem` (made on the node) for `principal`.
    pub async fn request_certificate(
        &self,
        principal: &str,
        csr_pem: &str,
        ca: &str,
        profile: &str,
    ) -> Result<IssuedCert, Error> {
        let result = self
            .call(&calls::cert_request(csr_pem, principal, ca, profile))
            .await?;
        issued("cert_request", &result, ca)
    }

    pub async fn show_certificate(&self, serial: &str, ca: &str) -> Result<IssuedCert, Error> {
        let result = self.call(&calls::cert_show(serial, ca)).await?;
        issued("cert_show", &result, ca)
    }

    /// `existing` if `ca` issued it, it names `fqdn` and is not yet due for
    /// renewal; otherwise a new certificate for `csr_pem` (a CSR for the
    /// same key keeps the key).
    pub async fn ensure_certificate(
        &self,
        principal: &str,
        fqdn: &str,
        ca: &str,
        existing: Option<&str>,
        csr_pem: &str,
    ) -> Result<(IssuedCert, Change), Error> {
        if let Some(existing) = existing {
            let info = self
                .ca_info(ca, Change::Unchanged)
                .await?
                .ok_or_else(|| Error::Invalid(format!("FreeIPA has no CA `{ca}`")))?;
            let now = crate::status::now();
            let good = crate::pki::verify(existing, &info.cert_pem, Some(fqdn), now).is_ok()
                && !crate::pki::renewal_due(existing, now);
            if good {
                return Ok((
                    IssuedCert {
                        cert_pem: existing.to_owned(),
                        serial_hex: String::new(),
                        ca: ca.to_owned(),
                    },
                    Change::Unchanged,
                ));
            }
        }
        let issued = self
            .request_certificate(principal, csr_pem, ca, SERVICE_PROFILE)
            .await?;
        Ok((issued, Change::Created))
    }
}

fn issued(method: &str, result: &Value, ca: &str) -> Result<IssuedCert, Error> {
    let entry = entry(method, result)?;
    Ok(IssuedCert {
        cert_pem: certificate(method, entry)?,
        serial_hex: values(entry, "serial_number_hex")
            .into_iter()
            .next()
            .unwrap_or_default(),
        ca: ca.to_owned(),
    })
}

#[cfg(test)]
pub(super) fn check_members_for_tests(result: &Value) -> Result<Change, Error> {
    check_members("test", result)
}

#[cfg(test)]
pub(super) fn values_for_tests(entry: &Value, attribute: &str) -> Vec<String> {
    values(entry, attribute)
}
