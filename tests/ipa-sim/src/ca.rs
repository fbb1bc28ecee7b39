//! The simulator's certificate authority: a root (IPA's "ipa" CA) and
//! sub-CAs really signed by it. Leaves are signed with firstboot's CA code
//! (`firstboot::pki::Ca`), which also enforces that a request names only
//! the host it is for.

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use firstboot::pki;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// IPA's CAs live for 20 years.
const CA_LIFETIME: Duration = Duration::days(365 * 20);

/// A CA certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct CaPems {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The root: `CN=Certificate Authority,O=<REALM>`, as ipa-server-install
/// makes it.
pub fn create_root(realm: &str) -> anyhow::Result<CaPems> {
    let key = new_key()?;
    let params = ca_params(&[
        ("O".into(), realm.to_owned()),
        ("CN".into(), "Certificate Authority".into()),
    ])?;
    let cert = params
        .self_signed(&key)
        .context("self-signing the IPA CA")?;
    Ok(CaPems {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A sub-CA with subject `subject_dn` (`CN=etcd CA,O=REALM`), signed by
/// `parent`.
pub fn create_sub_ca(parent: &CaPems, subject_dn: &str) -> anyhow::Result<CaPems> {
    let rdns = crate::api::parse_dn(subject_dn).map_err(|e| anyhow!("{e}"))?;
    // A DN string lists the most specific RDN first; a certificate's
    // subject is written from the root down.
    let rdns: Vec<(String, String)> = rdns.into_iter().rev().collect();
    let params = ca_params(&rdns)?;
    let parent_key = KeyPair::from_pem(&parent.key_pem).context("the parent CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&parent.cert_pem, parent_key)
        .map_err(|e| anyhow!("the parent CA certificate: {e}"))?;
    let key = new_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the sub-CA")?;
    Ok(CaPems {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_params(rdns: &[(String, String)]) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for (attr, value) in rdns {
        let kind = match attr.to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "L" => DnType::LocalityName,
            "ST" => DnType::StateOrProvinceName,
            other => bail!("the simulator cannot put `{other}` in a CA subject"),
        };
        dn.push(kind, value.as_str());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_serial_and_validity(&mut params, Duration::hours(1), CA_LIFETIME, None);
    Ok(params)
}

/// A random positive serial, and a validity from `backdate` ago for
/// `lifetime`, never past `end`; with the authority key identifier.
fn set_serial_and_validity(
    params: &mut CertificateParams,
    backdate: Duration,
    lifetime: Duration,
    end: Option<OffsetDateTime>,
) {
    params.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 8] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - backdate;
    params.not_after = end.map_or(now + lifetime, |end| (now + lifetime).min(end));
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")
}

/// A TLS certificate for one of the simulator's servers.
pub fn server_certificate(ca: &CaPems, fqdn: &str) -> anyhow::Result<pki::NodeCert> {
    pki::Ca::from_pems(&ca.cert_pem, &ca.key_pem)?.issue(fqdn)
}

/// What a CSR asks for, read as `cert_request` reads it (freeipa
/// `ipaserver/plugins/cert.py`): the subject's most specific common
/// name and the subject alternative names by type. Its signature has been
/// verified. Read with x509-parser alone: certmonger's requests carry
/// Kerberos principal names (`getcert -K`) and a basic-constraints
/// request, which rcgen's CSR reader does not take and FreeIPA does.
pub struct CsrRequest {
    /// The last CN of the subject ("most specific is end of list").
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Kerberos principal names (KRB5PrincipalName and UPN other names),
    /// `service/host@REALM`: `cert_request` requires each to be the
    /// principal asked for.
    pub principal_names: Vec<String>,
    /// SAN types FreeIPA forbids for hosts and services, by name.
    pub forbidden: Vec<&'static str>,
    public_key: rcgen::SubjectPublicKeyInfo,
}

/// OIDs of the other names cert.py reads (`pkcs10.SAN_OTHERNAME_UPN`,
/// `SAN_OTHERNAME_KRB5PRINCIPALNAME`).
const UPN: &str = "1.3.6.1.4.1.311.20.2.3";
const KRB5_PRINCIPAL_NAME: &str = "1.3.6.1.5.2.2";

/// Read a CSR given as PEM or bare base64 DER.
pub fn read_csr(text: &str) -> Result<CsrRequest, String> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::ParsedExtension;
    let der = csr_der(text)?;
    let (_, raw) = X509CertificationRequest::from_der(&der).map_err(|e| format!("{e}"))?;
    raw.verify_signature()
        .map_err(|e| format!("its signature does not verify: {e}"))?;
    let info = &raw.certification_request_info;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|_| "its public key is of a type this CA does not take".to_owned())?;
    let mut common_name = None;
    for cn in info.subject.iter_common_name() {
        common_name = Some(
            cn.as_str()
                .map_err(|_| "its common name is not text".to_owned())?
                .to_owned(),
        );
    }
    let mut out = CsrRequest {
        common_name,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        principal_names: Vec::new(),
        forbidden: Vec::new(),
        public_key,
    };
    for extension in raw.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(n) => out.dns_names.push((*n).to_owned()),
                GeneralName::IPAddress(bytes) => out.ip_addresses.push(ip_of(bytes)?),
                GeneralName::OtherName(oid, value) => match oid.to_id_string().as_str() {
                    UPN => out.principal_names.push(upn(value)?),
                    KRB5_PRINCIPAL_NAME => out.principal_names.push(krb5_principal_name(value)?),
                    _ => out.forbidden.push("OtherName"),
                },
                GeneralName::RFC822Name(_) => out.forbidden.push("RFC822Name"),
                GeneralName::URI(_) => out.forbidden.push("UniformResourceIdentifier"),
                GeneralName::DirectoryName(_) => out.forbidden.push("DirectoryName"),
                _ => out.forbidden.push("OtherName"),
            }
        }
    }
    Ok(out)
}

fn ip_of(bytes: &[u8]) -> Result<std::net::IpAddr, String> {
    match bytes.len() {
        4 => Ok(std::net::IpAddr::from(
            <[u8; 4]>::try_from(bytes).expect("4 bytes"),
        )),
        16 => Ok(std::net::IpAddr::from(
            <[u8; 16]>::try_from(bytes).expect("16 bytes"),
        )),
        n => Err(format!("an IP address of {n} bytes")),
    }
}

/// One DER element: (tag byte, contents, what follows). Definite lengths
/// only, as DER has.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = || "a malformed other name".to_owned();
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, rest) = rest.split_first().ok_or_else(bad)?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let len = rest[..n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `[0] EXPLICIT UTF8String`.
fn upn(value: &[u8]) -> Result<String, String> {
    let (tag, inner, _) = tlv(value)?;
    let (string_tag, text, _) = tlv(inner)?;
    if tag != 0xa0 || string_tag != 0x0c {
        return Err("a UPN other name that is not a UTF8String".into());
    }
    String::from_utf8(text.to_vec()).map_err(|_| "a UPN that is not UTF-8".into())
}

/// `[0] EXPLICIT KRB5PrincipalName`, RFC 4556 §3.2.2: `SEQUENCE { realm
/// [0] Realm, principalName [1] SEQUENCE { name-type [0] Int32,
/// name-string [1] SEQUENCE OF KerberosString } }`, as
/// `component/component@REALM`.
fn krb5_principal_name(value: &[u8]) -> Result<String, String> {
    let bad = || "a malformed Kerberos principal name".to_owned();
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| bad());
    let (tag, explicit, _) = tlv(value)?;
    let (seq, fields, _) = tlv(explicit)?;
    if tag != 0xa0 || seq != 0x30 {
        return Err(bad());
    }
    let (realm_tag, realm, rest) = tlv(fields)?;
    let (_, realm, _) = tlv(realm)?;
    let (name_tag, principal, _) = tlv(rest)?;
    let (_, principal, _) = tlv(principal)?; // the SEQUENCE
    let (_, _name_type, strings) = tlv(principal)?; // [0] name-type
    let (strings_tag, strings, _) = tlv(strings)?; // [1]
    let (_, mut strings, _) = tlv(strings)?; // SEQUENCE OF
    if realm_tag != 0xa0 || name_tag != 0xa1 || strings_tag != 0xa1 {
        return Err(bad());
    }
    let mut components = Vec::new();
    while !strings.is_empty() {
        let (_, component, rest) = tlv(strings)?;
        components.push(text(component)?);
        strings = rest;
    }
    Ok(format!("{}@{}", components.join("/"), text(realm)?))
}

/// Certificates of the `caIPAserviceCert` profile live 731 days.
const SERVICE_CERT_LIFETIME: Duration = Duration::days(731);

/// Issue `request` with `ca` as the `caIPAserviceCert` profile does
/// (freeipa `install/share/profiles/caIPAserviceCert.cfg`): subject
/// `CN=<the request's CN>,O=<REALM>`, the request's subject alternative
/// names copied (`userExtensionDefaultImpl` for 2.5.29.17), key usage
/// digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment,
/// extended key usage serverAuth and clientAuth, 731 days, never past the
/// CA's own end. The names were checked by the caller, as `cert.py`
/// checks them before it hands the request to Dogtag.
pub fn issue(ca: &CaPems, request: &CsrRequest, realm: &str) -> anyhow::Result<String> {
    let cn = request
        .common_name
        .clone()
        .ok_or_else(|| anyhow!("the request has no common name"))?;
    let key = KeyPair::from_pem(&ca.key_pem).context("the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key)
        .map_err(|e| anyhow!("the CA certificate: {e}"))?;
    let ca_end = {
        let der = pem_to_der(&ca.cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow!("cannot read the CA certificate: {e}"))?;
        OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())?
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, realm);
    dn.push(DnType::CommonName, cn.as_str());
    params.distinguished_name = dn;
    // The DNS and IP names; the principal names are left out (FreeIPA
    // copies them too; nothing of the site reads them from a certificate).
    params.subject_alt_names = request
        .dns_names
        .iter()
        .map(|n| {
            n.as_str()
                .try_into()
                .map(rcgen::SanType::DnsName)
                .map_err(|e| anyhow!("{n:?} as a DNS name: {e}"))
        })
        .chain(
            request
                .ip_addresses
                .iter()
                .map(|ip| Ok(rcgen::SanType::IpAddress(*ip))),
        )
        .collect::<anyhow::Result<_>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DataEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_serial_and_validity(
        &mut params,
        Duration::minutes(5),
        SERVICE_CERT_LIFETIME,
        Some(ca_end),
    );
    let signed = params
        .signed_by(&request.public_key, &issuer)
        .with_context(|| format!("signing a certificate for {cn}"))?;
    Ok(signed.pem())
}

/// The DER of a CSR given as PEM or as bare base64, checked to parse.
pub fn csr_der(text: &str) -> Result<Vec<u8>, String> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("{e}"))?;
    Ok(der)
}

/// A certificate given as base64 DER (FreeIPA's `Certificate` parameter).
pub fn cert_der_from_base64(text: &str) -> Result<Vec<u8>, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    X509Certificate::from_der(&der).map_err(|e| format!("{e}"))?;
    Ok(der)
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .context("the PEM body is not base64")
}

/// What FreeIPA's `cert_*` commands report about a certificate; the
/// serial number is kept as text, since it may not fit 64 bits.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub serial_hex: String,
    pub not_before: String,
    pub not_after: String,
    pub dns_names: Vec<String>,
    pub sha1: String,
    pub sha256: String,
}

pub fn facts(cert_pem: &str) -> anyhow::Result<CertFacts> {
    let der = pem_to_der(cert_pem)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("cannot read a certificate: {e}"))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                dns_names.push((*n).to_owned());
            }
        }
    }
    let serial = cert.tbs_certificate.serial.to_str_radix(10);
    let serial_hex = format!(
        "0x{}",
        cert.tbs_certificate.serial.to_str_radix(16).to_uppercase()
    );
    let fingerprint = |algorithm| {
        ring::digest::digest(algorithm, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let when = |t: x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default()
    };
    Ok(CertFacts {
        subject: ipa_dn(&cert.subject().to_string()),
        issuer: ipa_dn(&cert.issuer().to_string()),
        serial,
        serial_hex,
        not_before: when(cert.validity().not_before),
        not_after: when(cert.validity().not_after),
        dns_names,
        sha1: fingerprint(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        sha256: fingerprint(&ring::digest::SHA256),
        der,
    })
}

/// x509-parser writes `O=X, CN=Y` (root first); FreeIPA shows `CN=Y,O=X`.
fn ipa_dn(text: &str) -> String {
    let mut parts: Vec<&str> = text.split(", ").collect();
    parts.reverse();
    parts.join(",")
}

/// The `result` of `cert_request` and `cert_show` for a certificate.
pub fn cert_entry(facts: &CertFacts, cacn: &str) -> Value {
    json!({
        "certificate": base64::engine::general_purpose::STANDARD.encode(&facts.der),
        "subject": facts.subject,
        "issuer": facts.issuer,
        "serial_number": big_number(&facts.serial),
        "serial_number_hex": facts.serial_hex,
        "valid_not_before": facts.not_before,
        "valid_not_after": facts.not_after,
        "sha1_fingerprint": facts.sha1,
        "sha256_fingerprint": facts.sha256,
        "san_dnsname": facts.dns_names,
        "cacn": cacn,
    })
}

/// A marker for an integer too large for `serde_json::Value`; the answer's
/// encoder ([`crate::server`]) writes it as a bare JSON number, as
/// FreeIPA's (Python) encoder does.
pub const BIG_NUMBER_MARK: &str = "\u{1}bignum:";

pub fn big_number(digits: &str) -> Value {
    match digits.parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => Value::String(format!("{BIG_NUMBER_MARK}{digits}")),
    }
}

/// Write marked big numbers as JSON numbers.
pub fn encode_json(value: &Value) -> Vec<u8> {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    let marker = serde_json::to_string(BIG_NUMBER_MARK).unwrap_or_default();
    let marker = marker.trim_matches('"');
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(&format!("\"{marker}")) {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1 + marker.len()..];
        let end = after.find('"').unwrap_or(after.len());
        out.push_str(&after[..end]);
        rest = &after[(end + 1).min(after.len())..];
    }
    out.push_str(rest);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request certmonger 0.79 made (`getcert request -K
    /// etcd/node1.lab.example.org@LAB.EXAMPLE.ORG -D node1... -N CN=node1...`
    /// on this project's machine): read as FreeIPA reads it.
    #[test]
    fn a_certmonger_request_is_read_with_its_principal_names() {
        let text = include_str!("../testdata/certmonger-etcd-node1.csr");
        let request = read_csr(text).unwrap();
        assert_eq!(
            request.common_name.as_deref(),
            Some("node1.lab.example.org")
        );
        assert_eq!(request.dns_names, ["node1.lab.example.org"]);
        // As a UPN and as a KRB5PrincipalName.
        assert_eq!(
            request.principal_names,
            ["etcd/node1.lab.example.org@LAB.EXAMPLE.ORG"; 2]
        );
        assert!(request.forbidden.is_empty());
        let root = create_root("LAB.EXAMPLE.ORG").unwrap();
        let etcd = create_sub_ca(&root, "CN=etcd CA,O=LAB.EXAMPLE.ORG").unwrap();
        issued_for_node1(&etcd, &request);
    }

    /// A leaf for node1 from `ca`, good now under it alone.
    fn issued_for_node1(ca: &CaPems, request: &CsrRequest) -> String {
        let leaf = issue(ca, request, "LAB.EXAMPLE.ORG").unwrap();
        pki::verify(
            &leaf,
            &ca.cert_pem,
            Some("node1.lab.example.org"),
            firstboot::status::now(),
        )
        .unwrap();
        leaf
    }

    #[test]
    fn sub_cas_chain_to_the_root_and_leaves_to_their_ca() {
        let root = create_root("LAB.EXAMPLE.ORG").unwrap();
        let etcd = create_sub_ca(&root, "CN=etcd CA,O=LAB.EXAMPLE.ORG").unwrap();
        let facts = facts(&etcd.cert_pem).unwrap();
        assert_eq!(facts.subject, "CN=etcd CA,O=LAB.EXAMPLE.ORG");
        assert_eq!(facts.issuer, "CN=Certificate Authority,O=LAB.EXAMPLE.ORG");
        let (_, csr) = pki::new_key_and_csr("node1.lab.example.org").unwrap();
        let request = read_csr(&csr).unwrap();
        assert_eq!(
            request.common_name.as_deref(),
            Some("node1.lab.example.org")
        );
        assert_eq!(request.dns_names, vec!["node1.lab.example.org".to_owned()]);
        let leaf = issued_for_node1(&etcd, &request);
        assert!(!pki::issued_by(&leaf, &root.cert_pem));
        assert_eq!(
            super::facts(&leaf).unwrap().subject,
            "CN=node1.lab.example.org,O=LAB.EXAMPLE.ORG"
        );
        // A request whose signature does not verify is no request.
        let mut der = csr_der(&csr).unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(read_csr(&pem("CERTIFICATE REQUEST", &der)).is_err());
    }

    #[test]
    fn big_numbers_are_written_bare() {
        let value = json!({"a": big_number("123456789012345678901234567890"), "b": 5});
        let text = String::from_utf8(encode_json(&value)).unwrap();
        assert_eq!(text, r#"{"a":123456789012345678901234567890,"b":5}"#);
        let small = json!({"a": big_number("17")});
        assert_eq!(encode_json(&small), br#"{"a":17}"#);
    }
}
