//! One FreeIPA lightweight sub-CA per service, each with a CA ACL of its
//! own that lets only that service's principals use it, the service
//! principal of each node, and certificates from the sub-CA.
//!
//! Why a sub-CA per service and an ACL per sub-CA: a peer that trusts
//! the sub-CA's certificate (never the IPA root, which signs every host
//! and service certificate of the site) accepts only what that sub-CA
//! issued, and the ACL decides who gets it. FreeIPA's default ACL,
//! `hosts_services_caIPAserviceCert`, lets every host and service use the
//! `ipa` CA; an ACL naming no CA covers `ipa` only (freeipa
//! `ipaserver/plugins/cert.py`, `_acl_make_rule`), so the sub-CAs are
//! reachable through their own ACLs alone. An ACL here never has a
//! category `all` and never names a host or host group: a host's own
//! principal (`host/<fqdn>`) never gets a service's certificate.
//!
//! A sub-CA's signing key reaches the other servers by FreeIPA's own
//! replication, some time after its entry: until then such a server
//! answers `ca_show` without the certificate and with message 13031
//! (`LightweightCACertificateNotAvailable`, freeipa `ipalib/messages.py`;
//! `set_certificate_attrs` in `ipaserver/plugins/ca.py`), and
//! `cert_request` with CertificateOperationError 4301 (Dogtag's
//! `ensureReady`, "Authority does not yet have signing key and cert in
//! local NSSDB", through `ipaserver/plugins/dogtag.py`). That is "not
//! yet": waited for, within a bound, then a clear error.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::calls;
use super::client::{Client, FIRST_BACKOFF, MAX_BACKOFF};
use super::ensure::{certificate, contains, entry, values, CaAclSpec, Change, SERVICE_PROFILE};
use super::error::{code, Error};

/// The services with a sub-CA of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceCa {
    /// firstboot's own services (join, peer, lock server): each node's
    /// identity among them, `firstboot/<fqdn>`.
    Firstboot,
    Etcd,
    Kubernetes,
    Containers,
}

/// The categories a CA ACL may set to `all` (freeipa
/// `ipaserver/plugins/caacl.py`); none of them may be `all` on ours.
const CATEGORIES: &[&str] = &[
    "hostcategory",
    "servicecategory",
    "usercategory",
    "ipacacategory",
    "ipacertprofilecategory",
];

impl ServiceCa {
    pub const ALL: [ServiceCa; 4] = [
        ServiceCa::Firstboot,
        ServiceCa::Etcd,
        ServiceCa::Kubernetes,
        ServiceCa::Containers,
    ];

    /// The CA's name in FreeIPA (`cacn`), which is also the Kerberos
    /// service name of the principals that may use it.
    pub fn name(self) -> &'static str {
        match self {
            ServiceCa::Firstboot => "firstboot",
            ServiceCa::Etcd => "etcd",
            ServiceCa::Kubernetes => "kubernetes",
            ServiceCa::Containers => "containers",
        }
    }

    /// The sub-CA named `name`, if handoff makes one.
    pub fn named(name: &str) -> Option<ServiceCa> {
        ServiceCa::ALL.into_iter().find(|ca| ca.name() == name)
    }

    /// The sub-CAs a node of `role` asks for certificates once the site
    /// has handed off: those the certificate plan's rows it holds move to.
    pub fn held_by(role: node_contract::Role) -> Vec<ServiceCa> {
        crate::certs::plan::PLAN
            .held_by(role)
            .filter_map(|row| {
                let crate::certs::plan::FreeipaIssuer::SubCa(name) = row.issuer.freeipa;
                ServiceCa::named(name)
            })
            .collect()
    }

    /// `CN=etcd CA,O=<REALM>`.
    pub fn subject(self, realm: &str) -> Result<String, Error> {
        check_realm(realm)?;
        Ok(format!("CN={} CA,O={realm}", self.name()))
    }

    /// Its CA ACL, one per sub-CA.
    pub fn acl(self) -> String {
        format!("{}_service_ca", self.name())
    }

    /// The principal of this service on `fqdn`: `etcd/<fqdn>@<REALM>`.
    pub fn principal(self, fqdn: &str, realm: &str) -> Result<String, Error> {
        check_realm(realm)?;
        let fqdn = checked_fqdn(fqdn)?;
        Ok(format!("{}/{fqdn}@{realm}", self.name()))
    }

    fn description(self) -> String {
        format!(
            "Only {} service principals may use the {} sub-CA",
            self.name(),
            self.name()
        )
    }
}

/// A realm as FreeIPA writes it: upper case letters, digits, dots and
/// hyphens.
fn check_realm(realm: &str) -> Result<(), Error> {
    let ok = !realm.is_empty()
        && realm
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "`{realm}` is not a Kerberos realm of the form EXAMPLE.COM"
        )))
    }
}

/// A fully qualified host name, lower case, without the trailing dot.
fn checked_fqdn(fqdn: &str) -> Result<String, Error> {
    let name = fqdn.trim_end_matches('.').to_ascii_lowercase();
    let ok = name.contains('.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(name)
    } else {
        Err(Error::Invalid(format!(
            "`{fqdn}` is not a fully qualified host name"
        )))
    }
}

/// A sub-CA as one server has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaInfo {
    pub ca: ServiceCa,
    /// Its certificate, PEM: what peers of the service trust, alone.
    pub cert_pem: String,
    pub change: Change,
}

/// A certificate from a service's sub-CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCert {
    pub cert_pem: String,
    /// The sub-CA's certificate, PEM.
    pub ca_pem: String,
    /// The certificate then the sub-CA's: the chain a server presents.
    pub chain_pem: String,
    /// `0x...`.
    pub serial_hex: String,
}

/// What `ca_show` on one server says of a CA.
enum Shown {
    Missing,
    /// The entry is there, its key (and certificate) not yet: 13031.
    NotYet,
    Ready {
        subject: String,
        cert_pem: String,
    },
}

/// Whether an answer carries message 13031.
fn not_available_here(result: &Value) -> bool {
    result
        .get("messages")
        .and_then(Value::as_array)
        .is_some_and(|messages| {
            messages
                .iter()
                .any(|m| m.get("code").and_then(Value::as_u64) == Some(13031))
        })
}

impl Client {
    async fn show_ca(&self, name: &str) -> Result<Shown, Error> {
        let shown = match self.call(&calls::ca_show(name)).await {
            Ok(shown) => shown,
            Err(e) if e.is(code::NOT_FOUND) => return Ok(Shown::Missing),
            Err(e) => return Err(e),
        };
        let found = entry("ca_show", &shown)?;
        if not_available_here(&shown) && values(found, "certificate").is_empty() {
            return Ok(Shown::NotYet);
        }
        Ok(Shown::Ready {
            subject: values(found, "ipacasubjectdn")
                .into_iter()
                .next()
                .unwrap_or_default(),
            cert_pem: certificate("ca_show", found)?,
        })
    }

    /// Wait (doubling pauses, within `within`) until this server has the
    /// key of CA `name`; its certificate. Missing is an error at once.
    async fn ready_ca(&self, name: &str, within: Duration) -> Result<(String, String), Error> {
        let deadline = Instant::now() + within;
        let mut pause = FIRST_BACKOFF;
        let mut waits = 0u32;
        loop {
            match self.show_ca(name).await? {
                Shown::Ready { subject, cert_pem } => return Ok((subject, cert_pem)),
                Shown::Missing => {
                    return Err(Error::Invalid(format!(
                        "FreeIPA at {} has no CA `{name}`",
                        self.server()
                    )))
                }
                Shown::NotYet => {
                    if Instant::now() + pause > deadline {
                        return Err(self.not_yet(name, within, waits));
                    }
                    tracing::info!(
                        server = self.server(),
                        ca = name,
                        waits,
                        "the sub-CA's key has not reached this server yet (13031)"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                    waits += 1;
                }
            }
        }
    }

    fn not_yet(&self, ca: &str, within: Duration, waits: u32) -> Error {
        Error::NotYet {
            server: self.server().to_owned(),
            what: format!(
                "the key of sub-CA `{ca}` (13031, waited {}s, {waits} times); FreeIPA \
                 replicates it from the server that made the CA: check `ipa ca-show {ca}` \
                 there and the replication agreements",
                within.as_secs()
            ),
        }
    }

    /// The sub-CA of `ca` exists with subject `CN=<name> CA,O=<realm>`,
    /// and its own CA ACL allows it with the service profile to no one
    /// but the service's principals added by
    /// [`Client::ensure_service_principal`]. An existing CA with another
    /// subject, or an existing ACL of that name that allows more (a
    /// category `all`, a host, a host group, another service's principal,
    /// another CA), is an error: it is not quietly reused. Waits (within
    /// `within`) for the CA's key on this server.
    pub async fn ensure_service_ca(
        &self,
        ca: ServiceCa,
        realm: &str,
        within: Duration,
    ) -> Result<ServiceCaInfo, Error> {
        let subject = ca.subject(realm)?;
        let mut change = Change::Unchanged;
        if let Shown::Missing = self.show_ca(ca.name()).await? {
            change = self
                .write(&calls::ca_add(ca.name(), &subject, &ca.description()))
                .await?;
        }
        let (found, cert_pem) = self.ready_ca(ca.name(), within).await?;
        if !found
            .replace(", ", ",")
            .eq_ignore_ascii_case(&subject.replace(", ", ","))
        {
            return Err(Error::Invalid(format!(
                "FreeIPA has a CA `{}` with subject `{found}`, not `{subject}`; remove it \
                 (ipa ca-del {}) or choose another name",
                ca.name(),
                ca.name()
            )));
        }
        if self.ensure_service_acl(ca, &[]).await? == Change::Created {
            change = Change::Created;
        }
        Ok(ServiceCaInfo {
            ca,
            cert_pem,
            change,
        })
    }

    /// `ca`'s ACL exists, allows `ca` with the service profile and the
    /// `principals`, and nothing more.
    async fn ensure_service_acl(
        &self,
        ca: ServiceCa,
        principals: &[String],
    ) -> Result<Change, Error> {
        let name = ca.acl();
        let mut change = Change::Unchanged;
        let shown = match self.lookup(&calls::caacl_show(&name)).await? {
            Some(shown) => shown,
            None => {
                change = self
                    .write(&calls::caacl_add(&name, &ca.description()))
                    .await?;
                self.call(&calls::caacl_show(&name)).await?
            }
        };
        check_acl_allows_only(ca, entry("caacl_show", &shown)?)?;
        let added = self
            .ensure_ca_acl(&CaAclSpec {
                name: name.clone(),
                description: ca.description(),
                cas: vec![ca.name().to_owned()],
                profiles: vec![SERVICE_PROFILE.to_owned()],
                services: principals.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(if added == Change::Created {
            Change::Created
        } else {
            change
        })
    }

    /// `ca`'s service principal on `fqdn` again, if the handoff made `ca`
    /// (its sub-CA exists): a core host readmitted after its rebuild lost
    /// its service principals with its old server entry (`server_del`
    /// removes the host's services), and its certmonger asks as them.
    /// Nothing before the handoff; Ok(false) then.
    pub async fn restore_service_principal(
        &self,
        ca: ServiceCa,
        fqdn: &str,
        realm: &str,
    ) -> Result<bool, Error> {
        if matches!(self.show_ca(ca.name()).await?, Shown::Missing) {
            return Ok(false);
        }
        self.ensure_service_principal(ca, fqdn, realm).await?;
        Ok(true)
    }

    /// Every service principal a node of `role` on `fqdn` asks as
    /// ([`ServiceCa::held_by`]), for each sub-CA the handoff made already:
    /// a node enrolled (or enrolled again) after the handoff began gets
    /// them here, as the handoff's first step gave them to the nodes
    /// enrolled before it. The sub-CAs whose principal was ensured.
    pub async fn restore_service_principals(
        &self,
        fqdn: &str,
        role: node_contract::Role,
        realm: &str,
    ) -> Result<Vec<ServiceCa>, Error> {
        let mut restored = Vec::new();
        for ca in ServiceCa::held_by(role) {
            if self.restore_service_principal(ca, fqdn, realm).await? {
                restored.push(ca);
            }
        }
        Ok(restored)
    }

    /// Whether FreeIPA has a host entry for `fqdn`.
    pub async fn host_exists(&self, fqdn: &str) -> Result<bool, Error> {
        let host = checked_fqdn(fqdn)?;
        Ok(self.lookup(&calls::host_show(&host)).await?.is_some())
    }

    /// `ca`'s service principal on `fqdn` exists (its host must be in
    /// FreeIPA and resolve) and may use `ca`'s sub-CA.
    pub async fn ensure_service_principal(
        &self,
        ca: ServiceCa,
        fqdn: &str,
        realm: &str,
    ) -> Result<Change, Error> {
        let principal = ca.principal(fqdn, realm)?;
        let host = checked_fqdn(fqdn)?;
        if self.lookup(&calls::host_show(&host)).await?.is_none() {
            return Err(Error::Invalid(format!(
                "FreeIPA has no host {host}, so no {principal}: the host is added (and \
                 enrolled) first"
            )));
        }
        let made = self.ensure_service(&principal).await?;
        let allowed = self
            .ensure_service_acl(ca, std::slice::from_ref(&principal))
            .await?;
        Ok(if made == Change::Created || allowed == Change::Created {
            Change::Created
        } else {
            Change::Unchanged
        })
    }

    /// A certificate for `csr_pem` (made on the node, naming `fqdn`) from
    /// `ca`'s sub-CA, for `ca`'s principal on `fqdn`. 4301 while this
    /// server lacks the sub-CA's key (its `ca_show` says 13031) is "not
    /// yet": asked again after doubling pauses until `within` has passed,
    /// then [`Error::NotYet`]; any other refusal is returned at once. The
    /// certificate must chain to the sub-CA and name `fqdn`, whatever the
    /// server says.
    pub async fn request_service_certificate(
        &self,
        ca: ServiceCa,
        fqdn: &str,
        realm: &str,
        csr_pem: &str,
        within: Duration,
    ) -> Result<ServiceCert, Error> {
        let principal = ca.principal(fqdn, realm)?;
        let fqdn = checked_fqdn(fqdn)?;
        let deadline = Instant::now() + within;
        let mut pause = FIRST_BACKOFF;
        let mut waits = 0u32;
        // A 4301 right after the key arrived is asked again once; any
        // other 4301 (a disabled CA, say) is the answer.
        let mut was_not_yet = false;
        let issued = loop {
            let asked = self
                .request_certificate(&principal, csr_pem, ca.name(), SERVICE_PROFILE)
                .await;
            match asked {
                Ok(issued) => break issued,
                Err(e) if e.is(code::CERTIFICATE_OPERATION) => {
                    match self.show_ca(ca.name()).await? {
                        Shown::NotYet => was_not_yet = true,
                        Shown::Ready { .. } if was_not_yet => {
                            was_not_yet = false;
                            continue;
                        }
                        _ => return Err(e),
                    }
                    if Instant::now() + pause > deadline {
                        return Err(self.not_yet(ca.name(), within, waits));
                    }
                    tracing::info!(
                        server = self.server(),
                        ca = ca.name(),
                        waits,
                        "the sub-CA cannot sign on this server yet (4301, 13031)"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                    waits += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (_, ca_pem) = self.ready_ca(ca.name(), remaining).await?;
        crate::pki::verify(&issued.cert_pem, &ca_pem, Some(&fqdn), crate::status::now()).map_err(
            |why| Error::Malformed {
                method: "cert_request".into(),
                why: format!(
                    "the certificate FreeIPA at {} issued for {principal} is not one of sub-CA \
                     `{}` for {fqdn}: {why}",
                    self.server(),
                    ca.name()
                ),
            },
        )?;
        let chain_pem = format!("{}\n{}", issued.cert_pem.trim_end(), ca_pem.trim_end()) + "\n";
        Ok(ServiceCert {
            cert_pem: issued.cert_pem,
            ca_pem,
            chain_pem,
            serial_hex: issued.serial_hex,
        })
    }
}

/// An ACL of `ca`'s allows nothing beyond `ca`'s sub-CA and `ca`'s
/// service principals.
fn check_acl_allows_only(ca: ServiceCa, acl: &Value) -> Result<(), Error> {
    let name = ca.acl();
    let refuse = |what: String| {
        Err(Error::Invalid(format!(
            "FreeIPA's CA ACL `{name}` {what}, which would let more than {} service \
             principals use the sub-CA; remove it (ipa caacl-del {name}) and run again",
            ca.name()
        )))
    };
    for category in CATEGORIES {
        if contains(&values(acl, category), "all") {
            return refuse(format!("has {category}=all"));
        }
    }
    for attribute in [
        "memberhost_host",
        "memberhost_hostgroup",
        "memberuser_user",
        "memberuser_group",
    ] {
        if let Some(member) = values(acl, attribute).into_iter().next() {
            return refuse(format!("names {member} ({attribute})"));
        }
    }
    if let Some(other) = values(acl, "ipamemberca_ca")
        .into_iter()
        .find(|c| !c.eq_ignore_ascii_case(ca.name()))
    {
        return refuse(format!("names the CA {other}"));
    }
    let prefix = format!("{}/", ca.name());
    if let Some(other) = values(acl, "memberservice_service")
        .into_iter()
        .find(|s| !s.to_ascii_lowercase().starts_with(&prefix))
    {
        return refuse(format!("names the principal {other}"));
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn check_acl_for_tests(ca: ServiceCa, acl: &Value) -> Result<(), Error> {
    check_acl_allows_only(ca, acl)
}

/// Every sub-CA the certificate plan names (its own and the tests' plan)
/// is one handoff creates.
#[cfg(test)]
#[test]
fn every_sub_ca_the_plan_names_is_one_handoff_creates() {
    use crate::certs::plan::{self, FreeipaIssuer};
    for plan in [plan::PLAN, plan::tests::WITH_TEST_ONLY] {
        for row in plan.rows() {
            let FreeipaIssuer::SubCa(name) = row.issuer.freeipa;
            assert!(ServiceCa::named(name).is_some(), "{}: {name}", row.purpose);
        }
    }
}
