//! The site's temporary certificate authority.
//!
//! etcd runs over TLS with client-certificate authentication between peers
//! and for clients, so every node needs a certificate that a common CA signed.
//! No CA key may travel in user data, so the bootstrap host makes one at boot
//! and keeps its key to itself; joining nodes make their own keys and only
//! send a certificate signing request. The CA signs a request only for the
//! requester's own name: a node that could obtain a certificate for another
//! node's name could impersonate that node to the whole cluster.
//!
//! Certificates name hosts by DNS name only (never IP address): addresses on a
//! site change and may be shared, names are what the site vouches for.
//!
//! rcgen does not re-export x509-parser, and this crate does not depend on it
//! directly, so reading certificates back (their names, who signed them) uses
//! the small DER reader below and the signature verification algorithms that
//! rustls' ring provider exposes (the same code rustls uses to check peers).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate inside the CA directory.
const CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside the CA directory.
const KEY_FILE: &str = "ca.key";

/// How long the temporary CA lasts: far longer than any assembly takes, short
/// enough that a forgotten one does not outlive the hardware.
const CA_LIFETIME: Duration = Duration::days(365);
/// Node certificates are short-lived; the CA can always issue new ones.
const LEAF_LIFETIME: Duration = Duration::days(90);
/// Starting validity in the past tolerates nodes whose clocks lag the
/// bootstrap host's (they often have no NTP yet at first boot).
const BACKDATE: Duration = Duration::hours(1);

/// A certificate authority that lives only as long as a site needs it to
/// assemble; its key never leaves the node that created it.
pub struct TempCa {
    cert_pem: String,
    /// Holds the private key; built from the certificate itself so that
    /// issuer name and key identifier in every leaf match the CA exactly,
    /// whether the CA was just created or loaded from disk.
    issuer: Issuer<'static, KeyPair>,
}

/// Deliberately omits the key: a CA that ends up in a log line must not leak it.
impl fmt::Debug for TempCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempCa")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"[private]")
            .finish()
    }
}

/// A certificate together with the private key it certifies, both PEM.
#[derive(Clone)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Deliberately omits the key, like [`TempCa`]'s.
impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[private]")
            .finish()
    }
}

/// Why the CA would not sign a request; shown to the requester and logged,
/// so each reason says what was wrong without echoing anything secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrRefusal {
    /// Not a certificate request, or one whose signature does not verify (so
    /// nothing in it can be trusted), or one this CA cannot turn into a
    /// certificate.
    Malformed(String),
    /// The request names hosts other than the requester's own (possibly in
    /// addition to it).
    ForeignName { asked: Vec<String>, allowed: String },
    /// The request asks for an IP address; certificates here carry names only.
    IpAddress(String),
    /// The request asks for an e-mail address, URI, or other non-DNS name.
    OtherSan,
    /// The request names no host at all.
    NoName,
}

impl fmt::Display for CsrRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsrRefusal::Malformed(why) => write!(f, "unusable CSR: {why}"),
            CsrRefusal::ForeignName { asked, allowed } => {
                let node = allowed.split('.').next().unwrap_or(allowed);
                let asked = if asked.is_empty() {
                    "no name".to_string()
                } else {
                    asked.join(", ")
                };
                write!(
                    f,
                    "the CSR asks for {asked}, but {node} may only have {allowed}"
                )
            }
            CsrRefusal::IpAddress(ip) => write!(
                f,
                "the CSR asks for IP address {ip}, but certificates here carry DNS names only"
            ),
            CsrRefusal::OtherSan => write!(
                f,
                "the CSR asks for a subject alternative name that is not a DNS name"
            ),
            CsrRefusal::NoName => write!(
                f,
                "the CSR names no host (it needs exactly one DNS subject alternative name)"
            ),
        }
    }
}

impl std::error::Error for CsrRefusal {}

impl TempCa {
    /// New CA: ECDSA P-256 key, CN "<domain> temporary CA", O = the domain,
    /// BasicConstraints CA (pathlen 0), keyCertSign+cRLSign, validity from
    /// now-1h to now+365 days.
    ///
    /// Path length 0 because the CA only ever signs node certificates; an
    /// intermediate CA would be a way around its one-name-per-node rule.
    pub fn create(domain: &str) -> anyhow::Result<TempCa> {
        check_host_name(domain).map_err(|e| anyhow!("cannot create a CA for {domain:?}: {e}"))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the CA key")?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{domain} temporary CA"));
        dn.push(DnType::OrganizationName, domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;

        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        Self::from_parts(cert.pem(), key)
    }

    /// Persist into `dir` (ca.crt 0644, ca.key 0600), each written atomically.
    /// Creates `dir` 0700 if missing.
    ///
    /// Atomic writes because a power cut during first boot is plausible, and
    /// a half-written key would leave the site without a usable CA. The key
    /// is written first: a crash between the two renames then leaves a pair
    /// that [`TempCa::load`] reports as damaged rather than a certificate
    /// without key.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let key_pem = self.issuer.key().serialize_pem();
        write_atomic(dir, KEY_FILE, key_pem.as_bytes(), 0o600)?;
        write_atomic(dir, CERT_FILE, self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Load from `dir`; Ok(None) if absent; an error naming the problem if
    /// the files are damaged, mismatched, or the key is readable by others.
    ///
    /// A key that group or others can read is refused rather than used:
    /// [`TempCa::save`] never leaves it so, so someone else changed it, and
    /// a CA whose key may have leaked must not sign anything.
    pub fn load(dir: &Path) -> anyhow::Result<Option<TempCa>> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert = read_if_present(&cert_path)?;
        let key = read_if_present(&key_path)?;
        let ((cert_pem, _), (key_pem, key_mode)) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => bail!(
                "CA directory {} is damaged: {} exists but {} is missing",
                dir.display(),
                CERT_FILE,
                KEY_FILE
            ),
            (None, Some(_)) => bail!(
                "CA directory {} is damaged: {} exists but {} is missing",
                dir.display(),
                KEY_FILE,
                CERT_FILE
            ),
        };
        if key_mode & 0o077 != 0 {
            bail!(
                "refusing to use CA key {}: its mode is {:04o}, expected 0600",
                key_path.display(),
                key_mode & 0o7777
            );
        }
        let cert_pem = String::from_utf8(cert_pem)
            .map_err(|_| anyhow!("CA certificate {} is not text", cert_path.display()))?;
        let key_pem = String::from_utf8(key_pem)
            .map_err(|_| anyhow!("CA key {} is not text", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow!("CA key {} is damaged: {e}", key_path.display()))?;
        let ca = Self::from_parts(cert_pem, key)
            .with_context(|| format!("CA in {} is damaged", dir.display()))?;
        Ok(Some(ca))
    }

    /// The CA certificate, for distribution to nodes as their trust anchor.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Sign a node's CSR for exactly `fqdn`.
    ///
    /// Refuses unless the CSR's signature verifies (proof that the requester
    /// holds the key), its subject alternative names are exactly one DNS
    /// name equal to `fqdn` (ASCII case-insensitively; no IP or other SANs,
    /// no extra names), and each CN in its subject (if any) equals `fqdn`.
    /// Everything else the CSR requests (key usages, CA flag, other subject
    /// attributes) is ignored: the certificate always has the node profile
    /// (see [`TempCa::issue`]) and the subject CN=`fqdn` only.
    ///
    /// An invalid `fqdn` or a failure to sign is also reported as
    /// [`CsrRefusal::Malformed`], since no certificate can come of it.
    pub fn sign_csr(&self, csr_pem: &str, fqdn: &str) -> Result<String, CsrRefusal> {
        check_host_name(fqdn).map_err(|e| {
            CsrRefusal::Malformed(format!(
                "{fqdn:?} is not a host name this CA can certify: {e}"
            ))
        })?;
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|_| CsrRefusal::Malformed("no PEM CERTIFICATE REQUEST found".into()))?;
        // rcgen's from_der checks the request's self-signature with
        // x509-parser (feature "verify", enabled by rcgen's "ring") before
        // it returns anything; nothing below runs on an unverified request.
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(refusal_from_rcgen)?;
        let raw = parse_csr(&der)
            .map_err(|e| CsrRefusal::Malformed(format!("cannot read the request: {e}")))?;
        // rcgen rebuilds the public key from the request's signature
        // algorithm; make sure the rebuilt key is the one that was requested
        // (a compressed point or a mismatched curve would otherwise yield a
        // certificate for a key nobody holds).
        if csr.public_key.subject_public_key_info() != raw.spki {
            return Err(CsrRefusal::Malformed(
                "its public key is of a type or encoding this CA does not support".into(),
            ));
        }

        let mut dns = Vec::new();
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::DnsName(name) => dns.push(name.as_str().to_string()),
                SanType::IpAddress(ip) => return Err(CsrRefusal::IpAddress(ip.to_string())),
                _ => return Err(CsrRefusal::OtherSan),
            }
        }
        if dns.is_empty() {
            return Err(CsrRefusal::NoName);
        }
        let mut asked: Vec<String> = Vec::new();
        for name in dns.iter().chain(raw.common_names.iter()) {
            if !asked.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                asked.push(name.clone());
            }
        }
        if asked.len() != 1 || !asked[0].eq_ignore_ascii_case(fqdn) {
            return Err(CsrRefusal::ForeignName {
                asked,
                allowed: fqdn.to_string(),
            });
        }

        let params = leaf_params(fqdn).map_err(|e| CsrRefusal::Malformed(format!("{e:#}")))?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CsrRefusal::Malformed(format!("signing failed: {e}")))?;
        Ok(cert.pem())
    }

    /// The bootstrap host's own key and certificate (same profile as
    /// [`TempCa::sign_csr`] issues), without a CSR round trip: CN=`fqdn`,
    /// SAN DNS=`fqdn` only, EKU serverAuth+clientAuth (etcd uses the same
    /// certificate to serve and to connect to peers),
    /// KU digitalSignature+keyEncipherment, not a CA, valid now-1h..now+90d.
    pub fn issue(&self, fqdn: &str) -> anyhow::Result<NodeCert> {
        let params = leaf_params(fqdn)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating a node key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("issuing a certificate for {fqdn}"))?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA's certificate and key as PEM: what the sealed backup that
    /// core peers keep carries (see `backup`).
    pub fn to_pems(&self) -> (String, String) {
        (self.cert_pem.clone(), self.issuer.key().serialize_pem())
    }

    /// A CA from PEM, checked as `load` checks it.
    pub fn from_pems(cert_pem: &str, key_pem: &str) -> anyhow::Result<TempCa> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| anyhow!("the CA key is not a PEM key: {e}"))?;
        Self::from_parts(cert_pem.to_owned(), key)
    }

    /// Checks that `cert_pem` and `key` form a usable CA (so a damaged or
    /// mismatched pair fails at load, not at the first signature).
    fn from_parts(cert_pem: String, key: KeyPair) -> anyhow::Result<TempCa> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| anyhow!("no PEM CERTIFICATE found"))?;
        let cert = parse_cert(&der).map_err(|e| anyhow!("cannot read the certificate: {e}"))?;
        if !cert.is_ca()? {
            bail!("the certificate is not a CA certificate");
        }
        if key.subject_public_key_info() != cert.spki {
            bail!("the key does not belong to the certificate");
        }
        if !cert.signed_by(&cert)? {
            bail!("the certificate's self-signature does not verify");
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| anyhow!("cannot use the certificate as issuer: {e}"))?;
        Ok(TempCa { cert_pem, issuer })
    }
}

/// A node's new key (ECDSA P-256) and a CSR for its FQDN (SAN DNS=fqdn,
/// CN=fqdn), as (key PEM, CSR PEM).
///
/// The key stays on the node; only the CSR goes to the CA.
pub fn new_key_and_csr(fqdn: &str) -> anyhow::Result<(String, String)> {
    check_host_name(fqdn).map_err(|e| anyhow!("cannot request a certificate for {fqdn:?}: {e}"))?;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a node key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, fqdn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(
        fqdn.try_into()
            .map_err(|e| anyhow!("{fqdn:?} as DNS name: {e}"))?,
    )];
    let csr = params
        .serialize_request(&key)
        .with_context(|| format!("making a CSR for {fqdn}"))?;
    let csr_pem = csr.pem().context("encoding the CSR")?;
    Ok((key.serialize_pem(), csr_pem))
}

/// The DNS subject alternative names of a certificate, and whether it has
/// any IP address SAN (for tests and health checks: certificates here must
/// have none).
pub fn cert_names(cert_pem: &str) -> anyhow::Result<(Vec<String>, bool)> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| anyhow!("no PEM CERTIFICATE found"))?;
    let cert = parse_cert(&der).map_err(|e| anyhow!("cannot read the certificate: {e}"))?;
    let mut dns = Vec::new();
    let mut has_ip = false;
    let mut seen_san = false;
    for ext in &cert.extensions {
        if ext.oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        if seen_san {
            bail!("the certificate has two subject alternative name extensions");
        }
        seen_san = true;
        let (names, rest) = expect(ext.value, TAG_SEQUENCE)
            .map_err(|e| anyhow!("subject alternative names: {e}"))?;
        if !rest.is_empty() {
            bail!("subject alternative names: trailing data");
        }
        for name in items(names.value).map_err(|e| anyhow!("subject alternative names: {e}"))? {
            match name.tag {
                TAG_SAN_DNS => {
                    let s = std::str::from_utf8(name.value)
                        .ok()
                        .filter(|s| s.is_ascii())
                        .ok_or_else(|| anyhow!("a DNS name in the certificate is not ASCII"))?;
                    dns.push(s.to_string());
                }
                TAG_SAN_IP => has_ip = true,
                _ => {}
            }
        }
    }
    Ok((dns, has_ip))
}

/// Whether `cert_pem` is signed by the key of `ca_pem` and names it as
/// issuer. Checks the signature and the issuer name only, not validity
/// dates, key usages, or whether `ca_pem` is a CA.
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> anyhow::Result<bool> {
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| anyhow!("no PEM CERTIFICATE found in the certificate"))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|_| anyhow!("no PEM CERTIFICATE found in the CA certificate"))?;
    let cert = parse_cert(&cert_der).map_err(|e| anyhow!("cannot read the certificate: {e}"))?;
    let ca = parse_cert(&ca_der).map_err(|e| anyhow!("cannot read the CA certificate: {e}"))?;
    cert.signed_by(&ca)
}

/// The node certificate profile shared by [`TempCa::sign_csr`] and
/// [`TempCa::issue`], so both kinds of node certificate are interchangeable.
fn leaf_params(fqdn: &str) -> anyhow::Result<CertificateParams> {
    check_host_name(fqdn).map_err(|e| anyhow!("cannot issue a certificate for {fqdn:?}: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, fqdn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(
        fqdn.try_into()
            .map_err(|e| anyhow!("{fqdn:?} as DNS name: {e}"))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_LIFETIME;
    Ok(params)
}

/// Random serials keep certificates issued in the same second (or by a CA
/// recreated after a reboot) distinct, as RFC 5280 requires.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of fixed length: top bit clear, next bit set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Host names as this site uses them: LDH labels, no trailing dot, and not
/// something that reads as an IP address (a certificate must never carry one,
/// not even in disguise).
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "label {label:?} has characters other than letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the last label is numeric (looks like an IP address)".into());
    }
    Ok(())
}

fn refusal_from_rcgen(e: rcgen::Error) -> CsrRefusal {
    match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            CsrRefusal::Malformed("its signature does not verify".into())
        }
        rcgen::Error::CouldNotParseCertificationRequest => {
            CsrRefusal::Malformed("not a well-formed certificate request".into())
        }
        // rcgen reports SAN types it has no representation for (directory
        // names, registered IDs, ...) this way.
        rcgen::Error::InvalidNameType => CsrRefusal::OtherSan,
        rcgen::Error::InvalidIpAddressOctetLength(n) => {
            CsrRefusal::IpAddress(format!("(malformed, {n} bytes)"))
        }
        rcgen::Error::UnsupportedExtension => {
            CsrRefusal::Malformed("it requests an extension this CA does not support".into())
        }
        other => CsrRefusal::Malformed(other.to_string()),
    }
}

/// Contents and mode of a file, or None if it does not exist.
fn read_if_present(path: &Path) -> anyhow::Result<Option<(Vec<u8>, u32)>> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut data = Vec::new();
    io::Read::read_to_end(&mut file, &mut data)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some((data, meta.permissions().mode())))
}

fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(&dir.join(name), contents, mode)
}

// --- A minimal DER reader: just enough X.509 to find names and signatures. ---

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
/// [0] EXPLICIT (certificate version, CSR attributes).
const TAG_CONTEXT_0: u8 = 0xa0;
/// [3] EXPLICIT (certificate extensions).
const TAG_CONTEXT_3: u8 = 0xa3;
/// GeneralName dNSName [2] IMPLICIT IA5String.
const TAG_SAN_DNS: u8 = 0x82;
/// GeneralName iPAddress [7] IMPLICIT OCTET STRING.
const TAG_SAN_IP: u8 = 0x87;

/// 2.5.29.17
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.29.19
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// 2.5.4.3
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

#[derive(Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    /// Tag, length and value: what signatures and name comparisons cover.
    raw: &'a [u8],
}

fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("unexpected end of data")?;
    if tag & 0x1f == 0x1f {
        return Err("multi-byte tags are not supported".into());
    }
    let (&first, rest) = rest.split_first().ok_or("unexpected end of data")?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err("length beyond end of data".into());
    }
    let header = input.len() - rest.len();
    let tlv = Tlv {
        tag,
        value: &rest[..len],
        raw: &input[..header + len],
    };
    Ok((tlv, &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(Tlv<'_>, &[u8]), String> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(format!("expected tag {tag:#04x}, found {:#04x}", tlv.tag));
    }
    Ok((tlv, rest))
}

fn items(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = read_tlv(input)?;
        out.push(tlv);
        input = rest;
    }
    Ok(out)
}

/// The contents of a BIT STRING that has no unused bits (keys, signatures).
fn bit_string_bytes<'a>(tlv: &Tlv<'a>) -> Result<&'a [u8], String> {
    match tlv.value.split_first() {
        Some((0, bytes)) if tlv.tag == TAG_BIT_STRING => Ok(bytes),
        _ => Err("bad BIT STRING".into()),
    }
}

struct Extension<'a> {
    oid: &'a [u8],
    value: &'a [u8],
}

struct ParsedCert<'a> {
    tbs: &'a [u8],
    signature_algorithm: &'a [u8],
    signature: &'a [u8],
    issuer: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
    spki_algorithm: &'a [u8],
    spki_key: &'a [u8],
    extensions: Vec<Extension<'a>>,
}

fn parse_cert(der: &[u8]) -> Result<ParsedCert<'_>, String> {
    let (cert, rest) = expect(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return Err("trailing data after the certificate".into());
    }
    let (tbs, rest) = expect(cert.value, TAG_SEQUENCE)?;
    let (sig_alg, rest) = expect(rest, TAG_SEQUENCE)?;
    let (sig, rest) = expect(rest, TAG_BIT_STRING)?;
    if !rest.is_empty() {
        return Err("trailing data inside the certificate".into());
    }

    let mut body = tbs.value;
    if body.first() == Some(&TAG_CONTEXT_0) {
        body = read_tlv(body)?.1;
    }
    let (_serial, body) = expect(body, TAG_INTEGER)?;
    let (inner_sig_alg, body) = expect(body, TAG_SEQUENCE)?;
    if inner_sig_alg.raw != sig_alg.raw {
        return Err("the two signature algorithm fields differ".into());
    }
    let (issuer, body) = expect(body, TAG_SEQUENCE)?;
    let (_validity, body) = expect(body, TAG_SEQUENCE)?;
    let (subject, body) = expect(body, TAG_SEQUENCE)?;
    let (spki, mut body) = expect(body, TAG_SEQUENCE)?;
    let (spki_alg, spki_rest) = expect(spki.value, TAG_SEQUENCE)?;
    let (spki_key, _) = expect(spki_rest, TAG_BIT_STRING)?;

    let mut extensions = Vec::new();
    while !body.is_empty() {
        let (field, rest) = read_tlv(body)?;
        body = rest;
        if field.tag != TAG_CONTEXT_3 {
            continue; // issuerUniqueID / subjectUniqueID
        }
        let (list, _) = expect(field.value, TAG_SEQUENCE)?;
        for ext in items(list.value)? {
            if ext.tag != TAG_SEQUENCE {
                return Err("bad extension".into());
            }
            let (oid, rest) = expect(ext.value, TAG_OID)?;
            // Skip the optional `critical` BOOLEAN.
            let rest = match read_tlv(rest)? {
                (b, after) if b.tag == TAG_BOOLEAN => after,
                _ => rest,
            };
            let (value, _) = expect(rest, TAG_OCTET_STRING)?;
            extensions.push(Extension {
                oid: oid.value,
                value: value.value,
            });
        }
    }

    Ok(ParsedCert {
        tbs: tbs.raw,
        signature_algorithm: sig_alg.value,
        signature: bit_string_bytes(&sig)?,
        issuer: issuer.raw,
        subject: subject.raw,
        spki: spki.raw,
        spki_algorithm: spki_alg.value,
        spki_key: bit_string_bytes(&spki_key)?,
        extensions,
    })
}

impl ParsedCert<'_> {
    fn is_ca(&self) -> anyhow::Result<bool> {
        let Some(ext) = self
            .extensions
            .iter()
            .find(|e| e.oid == OID_BASIC_CONSTRAINTS)
        else {
            return Ok(false);
        };
        let (bc, _) =
            expect(ext.value, TAG_SEQUENCE).map_err(|e| anyhow!("basic constraints: {e}"))?;
        Ok(matches!(
            read_tlv(bc.value),
            Ok((b, _)) if b.tag == TAG_BOOLEAN && b.value == [0xff]
        ))
    }

    /// Whether `issuer`'s key signed this certificate and `issuer`'s subject
    /// is this certificate's issuer.
    fn signed_by(&self, issuer: &ParsedCert<'_>) -> anyhow::Result<bool> {
        if self.issuer != issuer.subject {
            return Ok(false);
        }
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        if !algs
            .iter()
            .any(|a| a.signature_alg_id().as_ref() == self.signature_algorithm)
        {
            bail!("the certificate's signature algorithm is not supported");
        }
        let Some(alg) = algs.iter().find(|a| {
            a.signature_alg_id().as_ref() == self.signature_algorithm
                && a.public_key_alg_id().as_ref() == issuer.spki_algorithm
        }) else {
            // Signed with an algorithm the issuer's key type cannot produce.
            return Ok(false);
        };
        Ok(alg
            .verify_signature(issuer.spki_key, self.tbs, self.signature)
            .is_ok())
    }
}

struct ParsedCsr<'a> {
    /// Every CN in the subject (a subject may carry several).
    common_names: Vec<String>,
    spki: &'a [u8],
}

fn parse_csr(der: &[u8]) -> Result<ParsedCsr<'_>, String> {
    let (csr, _) = expect(der, TAG_SEQUENCE)?;
    let (info, _) = expect(csr.value, TAG_SEQUENCE)?;
    let (_version, body) = expect(info.value, TAG_INTEGER)?;
    let (subject, body) = expect(body, TAG_SEQUENCE)?;
    let (spki, _) = expect(body, TAG_SEQUENCE)?;
    let mut common_names = Vec::new();
    for rdn in items(subject.value)? {
        if rdn.tag != TAG_SET {
            return Err("bad subject".into());
        }
        for atv in items(rdn.value)? {
            if atv.tag != TAG_SEQUENCE {
                return Err("bad subject".into());
            }
            let (oid, rest) = expect(atv.value, TAG_OID)?;
            if oid.value == OID_COMMON_NAME {
                let (value, _) = read_tlv(rest)?;
                common_names.push(decode_directory_string(&value)?);
            }
        }
    }
    Ok(ParsedCsr {
        common_names,
        spki: spki.raw,
    })
}

fn decode_directory_string(tlv: &Tlv<'_>) -> Result<String, String> {
    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const T61: u8 = 0x14;
    const IA5: u8 = 0x16;
    const UNIVERSAL: u8 = 0x1c;
    const BMP: u8 = 0x1e;
    let bad = || "badly encoded common name".to_string();
    match tlv.tag {
        UTF8 | PRINTABLE | T61 | IA5 => std::str::from_utf8(tlv.value)
            .map(str::to_string)
            .map_err(|_| bad()),
        BMP => {
            if tlv.value.len() % 2 != 0 {
                return Err(bad());
            }
            let units: Vec<u16> = tlv
                .value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| bad())
        }
        UNIVERSAL => {
            if tlv.value.len() % 4 != 0 {
                return Err(bad());
            }
            tlv.value
                .chunks(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::process::Command;
    use std::sync::Arc;

    const DOMAIN: &str = "lab.example.org";
    const NODE2: &str = "node2.lab.example.org";
    const NODE3: &str = "node3.lab.example.org";

    fn ca() -> TempCa {
        TempCa::create(DOMAIN).expect("create CA")
    }

    /// A CSR built by hand, for requests new_key_and_csr would never make.
    fn custom_csr(cn: Option<&str>, sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.len();
            let v = (chunk[0] as u32) << 16
                | (*chunk.get(1).unwrap_or(&0) as u32) << 8
                | *chunk.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= n {
                    b64.push(ALPHABET[(v >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn csr_der(csr_pem: &str) -> Vec<u8> {
        CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn replace_all(haystack: &mut [u8], from: &[u8], to: &[u8]) -> usize {
        assert_eq!(from.len(), to.len());
        let mut count = 0;
        let mut i = 0;
        while i + from.len() <= haystack.len() {
            if &haystack[i..i + from.len()] == from {
                haystack[i..i + from.len()].copy_from_slice(to);
                count += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        count
    }

    #[test]
    fn ca_is_shareable_between_tasks() {
        fn check<T: Send + Sync>() {}
        check::<TempCa>();
        check::<NodeCert>();
    }

    #[test]
    fn signs_csr_for_own_name() {
        let ca = ca();
        let (_key, csr) = new_key_and_csr(NODE2).unwrap();
        let leaf = ca.sign_csr(&csr, NODE2).expect("sign");
        assert_eq!(cert_names(&leaf).unwrap(), (vec![NODE2.to_string()], false));
        assert!(issued_by(&leaf, ca.cert_pem()).unwrap());
        let other = TempCa::create(DOMAIN).unwrap();
        assert!(!issued_by(&leaf, other.cert_pem()).unwrap());
        // The CA certificate is self-signed, and carries no SANs.
        assert!(issued_by(ca.cert_pem(), ca.cert_pem()).unwrap());
        assert_eq!(cert_names(ca.cert_pem()).unwrap(), (vec![], false));
    }

    #[test]
    fn name_compare_ignores_case() {
        let ca = ca();
        let (_key, csr) = new_key_and_csr("NODE2.Lab.Example.org").unwrap();
        let leaf = ca.sign_csr(&csr, NODE2).expect("sign");
        assert_eq!(cert_names(&leaf).unwrap().0, vec![NODE2.to_string()]);
    }

    #[test]
    fn issue_makes_matching_key_and_cert() {
        let ca = ca();
        let node = ca.issue("node1.lab.example.org").unwrap();
        assert_eq!(
            cert_names(&node.cert_pem).unwrap(),
            (vec!["node1.lab.example.org".to_string()], false)
        );
        assert!(issued_by(&node.cert_pem, ca.cert_pem()).unwrap());
        let key = KeyPair::from_pem(&node.key_pem).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            key.subject_public_key_info(),
            parse_cert(&der).unwrap().spki
        );
        assert!(!format!("{node:?}").contains("PRIVATE"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn refuses_other_nodes_name() {
        let ca = ca();
        let (_key, csr) = new_key_and_csr(NODE3).unwrap();
        let refusal = ca.sign_csr(&csr, NODE2).unwrap_err();
        assert_eq!(
            refusal,
            CsrRefusal::ForeignName {
                asked: vec![NODE3.to_string()],
                allowed: NODE2.to_string()
            }
        );
        assert_eq!(
            refusal.to_string(),
            "the CSR asks for node3.lab.example.org, but node2 may only have node2.lab.example.org"
        );
    }

    #[test]
    fn refuses_extra_dns_name() {
        let ca = ca();
        let csr = custom_csr(Some(NODE2), vec![dns(NODE2), dns(NODE3)]);
        assert_eq!(
            ca.sign_csr(&csr, NODE2).unwrap_err(),
            CsrRefusal::ForeignName {
                asked: vec![NODE2.to_string(), NODE3.to_string()],
                allowed: NODE2.to_string()
            }
        );
    }

    #[test]
    fn refuses_foreign_common_name() {
        let ca = ca();
        let csr = custom_csr(Some(NODE3), vec![dns(NODE2)]);
        assert!(matches!(
            ca.sign_csr(&csr, NODE2).unwrap_err(),
            CsrRefusal::ForeignName { .. }
        ));
    }

    #[test]
    fn refuses_ip_san() {
        let ca = ca();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let csr = custom_csr(Some(NODE2), vec![dns(NODE2), SanType::IpAddress(ip)]);
        let refusal = ca.sign_csr(&csr, NODE2).unwrap_err();
        assert_eq!(refusal, CsrRefusal::IpAddress("192.0.2.7".into()));
        assert!(refusal.to_string().contains("192.0.2.7"));
    }

    #[test]
    fn refuses_other_san_types_and_no_name() {
        let ca = ca();
        let uri = SanType::URI("https://node2.lab.example.org/".try_into().unwrap());
        let csr = custom_csr(Some(NODE2), vec![dns(NODE2), uri]);
        assert_eq!(ca.sign_csr(&csr, NODE2).unwrap_err(), CsrRefusal::OtherSan);
        let csr = custom_csr(Some(NODE2), vec![]);
        assert_eq!(ca.sign_csr(&csr, NODE2).unwrap_err(), CsrRefusal::NoName);
    }

    #[test]
    fn refuses_garbage() {
        let ca = ca();
        for garbage in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ca.cert_pem(),
        ] {
            assert!(
                matches!(ca.sign_csr(garbage, NODE2), Err(CsrRefusal::Malformed(_))),
                "{garbage:?}"
            );
        }
        let (_key, csr) = new_key_and_csr(NODE2).unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, "node2..lab"),
            Err(CsrRefusal::Malformed(_))
        ));
    }

    #[test]
    fn refuses_tampered_signature() {
        let ca = ca();
        // node3 asks for a certificate, then rewrites its request to name node2.
        let (_key, csr) = new_key_and_csr(NODE3).unwrap();
        let mut der = csr_der(&csr);
        assert_eq!(replace_all(&mut der, b"node3", b"node2"), 2);
        let refusal = ca.sign_csr(&pem_encode("CERTIFICATE REQUEST", &der), NODE2);
        assert_eq!(
            refusal,
            Err(CsrRefusal::Malformed(
                "its signature does not verify".into()
            ))
        );

        // A flipped byte in the signature itself.
        let (_key, csr) = new_key_and_csr(NODE2).unwrap();
        let mut der = csr_der(&csr);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let refusal = ca.sign_csr(&pem_encode("CERTIFICATE REQUEST", &der), NODE2);
        assert_eq!(
            refusal,
            Err(CsrRefusal::Malformed(
                "its signature does not verify".into()
            ))
        );

        // The encoder above is faithful: untampered, the same path succeeds.
        let der = csr_der(&csr);
        ca.sign_csr(&pem_encode("CERTIFICATE REQUEST", &der), NODE2)
            .expect("untampered CSR");
    }

    #[test]
    fn tampered_certificate_is_not_issued_by() {
        let ca = ca();
        let node = ca.issue(NODE2).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        let mut der = der.as_ref().to_vec();
        assert_eq!(replace_all(&mut der, b"node2", b"node3"), 2);
        let forged = pem_encode("CERTIFICATE", &der);
        assert_eq!(cert_names(&forged).unwrap().0, vec![NODE3.to_string()]);
        assert!(!issued_by(&forged, ca.cert_pem()).unwrap());
        assert!(issued_by("garbage", ca.cert_pem()).is_err());
    }

    #[test]
    fn save_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = ca();
        ca.save(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CERT_FILE)), 0o644);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        // Only the two files: no temporary files left behind.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![CERT_FILE, KEY_FILE]);

        let loaded = TempCa::load(&dir).unwrap().expect("saved CA");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let (_key, csr) = new_key_and_csr(NODE2).unwrap();
        let leaf = loaded.sign_csr(&csr, NODE2).unwrap();
        assert!(issued_by(&leaf, ca.cert_pem()).unwrap());

        // Saving again replaces the files in place.
        loaded.save(&dir).unwrap();
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    }

    #[test]
    fn load_missing_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(TempCa::load(&tmp.path().join("nope")).unwrap().is_none());
        assert!(TempCa::load(tmp.path()).unwrap().is_none());
    }

    #[test]
    fn load_reports_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        ca().save(&dir).unwrap();
        let err_of = |dir: &Path| format!("{:#}", TempCa::load(dir).unwrap_err());

        // Key readable by others.
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(err_of(&dir).contains("0644"), "{}", err_of(&dir));
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();

        // Key of another CA.
        let other = tmp.path().join("other");
        ca().save(&other).unwrap();
        fs::copy(other.join(KEY_FILE), dir.join(KEY_FILE)).unwrap();
        assert!(err_of(&dir).contains("does not belong"), "{}", err_of(&dir));

        // Garbage certificate.
        fs::write(dir.join(CERT_FILE), "not a certificate").unwrap();
        assert!(err_of(&dir).contains("damaged"), "{}", err_of(&dir));

        // A leaf certificate in place of the CA.
        let leaf = TempCa::load(&other).unwrap().unwrap().issue(NODE2).unwrap();
        fs::write(dir.join(CERT_FILE), &leaf.cert_pem).unwrap();
        fs::write(dir.join(KEY_FILE), &leaf.key_pem).unwrap();
        assert!(err_of(&dir).contains("not a CA"), "{}", err_of(&dir));

        // Half a CA.
        fs::remove_file(dir.join(CERT_FILE)).unwrap();
        assert!(err_of(&dir).contains("missing"), "{}", err_of(&dir));
    }

    #[test]
    fn rustls_accepts_leaf_as_server_and_client() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::client::WebPkiServerVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        use rustls::server::WebPkiClientVerifier;

        let ca = ca();
        let node = ca.issue(NODE2).unwrap();
        let leaf = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = UnixTime::now();

        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        let name = ServerName::try_from(NODE2).unwrap();
        server
            .verify_server_cert(&leaf, &[], &name, &[], now)
            .expect("valid server certificate");
        let wrong = ServerName::try_from(NODE3).unwrap();
        assert!(server
            .verify_server_cert(&leaf, &[], &wrong, &[], now)
            .is_err());
        let ip = ServerName::try_from("192.0.2.7").unwrap();
        assert!(server
            .verify_server_cert(&leaf, &[], &ip, &[], now)
            .is_err());

        let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        client
            .verify_client_cert(&leaf, &[], now)
            .expect("valid client certificate");
    }

    fn have_openssl() -> bool {
        Command::new("openssl")
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    #[test]
    fn openssl_agrees() {
        if !have_openssl() {
            println!("openssl not installed: skipping the cross-check with openssl");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = ca();
        let (_key, csr) = new_key_and_csr(NODE2).unwrap();
        let leaf = ca.sign_csr(&csr, NODE2).unwrap();
        fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        fs::write(dir.join("leaf.pem"), &leaf).unwrap();

        let (ok, out) = openssl(&["verify", "-CAfile", "ca.pem", "leaf.pem"], dir);
        assert!(ok && out.contains("leaf.pem: OK"), "{out}");
        for purpose in ["sslserver", "sslclient"] {
            let (ok, out) = openssl(
                &[
                    "verify",
                    "-purpose",
                    purpose,
                    "-verify_hostname",
                    NODE2,
                    "-CAfile",
                    "ca.pem",
                    "leaf.pem",
                ],
                dir,
            );
            assert!(ok && out.contains("leaf.pem: OK"), "{purpose}: {out}");
        }
        let (ok, _) = openssl(
            &[
                "verify",
                "-verify_hostname",
                NODE3,
                "-CAfile",
                "ca.pem",
                "leaf.pem",
            ],
            dir,
        );
        assert!(!ok, "openssl accepted the leaf for another name");

        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", "leaf.pem"], dir);
        assert!(ok, "{text}");
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        assert!(text.contains("DNS:node2.lab.example.org"), "{text}");
        assert!(!text.contains("IP Address"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(
            text.contains("Digital Signature, Key Encipherment"),
            "{text}"
        );
        assert!(
            text.contains("Subject: CN = node2.lab.example.org"),
            "{text}"
        );

        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", "ca.pem"], dir);
        assert!(ok, "{text}");
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(
            text.contains("CN = lab.example.org temporary CA")
                && text.contains("O = lab.example.org"),
            "{text}"
        );

        // A CSR made by openssl rather than by us: accepted for its own
        // name, refused with an IP address.
        let (ok, out) = openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "k.pem",
                "-out",
                "r.pem",
                "-subj",
                "/CN=node2.lab.example.org",
                "-addext",
                "subjectAltName=DNS:node2.lab.example.org",
            ],
            dir,
        );
        assert!(ok, "{out}");
        let csr = fs::read_to_string(dir.join("r.pem")).unwrap();
        let leaf = ca.sign_csr(&csr, NODE2).expect("openssl CSR");
        fs::write(dir.join("leaf2.pem"), &leaf).unwrap();
        let (ok, out) = openssl(&["verify", "-CAfile", "ca.pem", "leaf2.pem"], dir);
        assert!(ok && out.contains("leaf2.pem: OK"), "{out}");

        let (ok, out) = openssl(
            &[
                "req",
                "-new",
                "-key",
                "k.pem",
                "-out",
                "r2.pem",
                "-subj",
                "/CN=node2.lab.example.org",
                "-addext",
                "subjectAltName=DNS:node2.lab.example.org,IP:192.0.2.7",
            ],
            dir,
        );
        assert!(ok, "{out}");
        let csr = fs::read_to_string(dir.join("r2.pem")).unwrap();
        assert_eq!(
            ca.sign_csr(&csr, NODE2),
            Err(CsrRefusal::IpAddress("192.0.2.7".into()))
        );
    }
}
