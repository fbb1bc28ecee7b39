//! The site's temporary certificate authority, and every certificate check
//! firstboot makes.
//!
//! etcd runs over TLS with client-certificate authentication between peers
//! and for clients, so nodes need certificates a common CA signed. No CA
//! key may travel in user data, so the bootstrap host makes the CA at boot
//! and keeps its key; joining nodes make their own keys and send only a
//! certificate signing request. The CA signs a request only for the
//! requester's own name.
//!
//! One root and one intermediate per service, so that what a service
//! trusts is not what identifies a node:
//! - the **temporary root** signs every node's identity certificate;
//! - each **intermediate** (one for every service the certificate plan,
//!   `certs::plan`, names as a temporary signer: etcd's today) signs that
//!   service's certificates only. The service trusts its intermediate
//!   alone, so a worker's identity certificate, or another service's,
//!   opens nothing there.
//!
//! Which intermediates exist is the plan's to say: this file knows them
//! by name only, on disk (`<name>-ca.crt`, `<name>-ca.key`) and in the
//! sealed copy. All are name-constrained to the site's domain, and
//! certificates name hosts by DNS name only (never IP address).
//!
//! Parsing goes through `x509-parser` and chain checks (signatures, dates,
//! key usages, name constraints) through `rustls-webpki`, the code rustls
//! itself trusts; this file keeps only the policy.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How long the temporary CAs last: far longer than any assembly takes
/// (handoff to FreeIPA ends them), short enough that a forgotten one does
/// not outlive the hardware. Past two thirds of it the bootstrap host
/// issues the CA certificates again under the same keys
/// ([`TempCa::renewed_if_due`]), so no leaf ever depends on the CA's last
/// third.
pub const CA_LIFETIME: Duration = Duration::days(365);
/// Node certificates are short-lived; their node renews them at two
/// thirds of their life (see [`renewal_due`]). None outlives its CA: a
/// leaf's end is its CA's end at the latest.
pub const LEAF_LIFETIME: Duration = Duration::days(90);
/// Starting validity in the past tolerates nodes whose clocks lag the
/// bootstrap host's (they often have no NTP yet at first boot).
const BACKDATE: Duration = Duration::hours(1);

/// Which temporary CA signs a certificate, and so what it opens (the
/// certificate plan, `certs::plan`, says which for each certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signer {
    /// The temporary root: nodes' identities.
    Root,
    /// The intermediate under the root for one service only, by the
    /// service's name (a DNS label, see [`check_ca_name`]): its subject
    /// is "<domain> temporary <name> CA", its files `<name>-ca.crt` and
    /// `<name>-ca.key`, and the sealed copy keys it by that name.
    Intermediate(&'static str),
}

/// A CA's certificate and key, PEM, as the sealed copy carries them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaPems {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Deliberately omits the key, as [`Ca`]'s does.
impl fmt::Debug for CaPems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaPems")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[private]")
            .finish()
    }
}

/// One signing CA: its certificate and (private) issuer.
pub struct Ca {
    cert_pem: String,
    /// Built from the certificate itself, so the issuer name and key
    /// identifier in every leaf match the CA exactly, whether it was just
    /// created or loaded from disk.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's validity: nothing it signs ends later.
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// Deliberately omits the key: a CA that ends up in a log line must not leak it.
impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
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

impl Ca {
    /// A CA certificate profile: ECDSA P-256, CA with `path_len`,
    /// keyCertSign+cRLSign, name-constrained to `domain`.
    fn params(
        domain: &str,
        common_name: String,
        path_len: u8,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(domain.to_owned())],
            excluded_subtrees: vec![],
        });
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params
    }

    /// The temporary root under `key`: path length 1, so it can sign the
    /// intermediates and nothing can hang below them. The same key and domain
    /// give the same subject and key identifier, so a root issued again
    /// (renewed) verifies every certificate the earlier one signed.
    fn root_with(
        domain: &str,
        key: KeyPair,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<Ca> {
        check_host_name(domain).map_err(|e| anyhow!("cannot create a CA for {domain:?}: {e}"))?;
        let cert = Self::params(
            domain,
            format!("{domain} temporary CA"),
            1,
            not_before,
            not_after,
        )
        .self_signed(&key)
        .context("self-signing the CA certificate")?;
        Self::from_parts(cert.pem(), key)
    }

    /// An intermediate under this CA with `key` (path length 0: it signs
    /// only leaves), ending no later than this CA.
    fn intermediate_with(
        &self,
        domain: &str,
        what: &str,
        key: KeyPair,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<Ca> {
        let cert = Self::params(
            domain,
            format!("{domain} temporary {what} CA"),
            0,
            not_before.max(self.not_before),
            not_after.min(self.not_after),
        )
        .signed_by(&key, &self.issuer)
        .with_context(|| format!("signing the {what} CA"))?;
        Self::from_parts(cert.pem(), key)
    }

    /// This CA's own key, to issue its certificate again.
    fn key_pair(&self) -> anyhow::Result<KeyPair> {
        KeyPair::from_pem(&self.key_pem()).map_err(|e| anyhow!("the CA key: {e}"))
    }

    /// Whether this CA has lived two thirds of its life at `now`.
    fn due(&self, now: OffsetDateTime) -> bool {
        now >= self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    /// When this CA's certificate ends.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A CA from PEM; checks that the pair is a usable CA, so a damaged or
    /// mismatched pair fails here, not at the first signature.
    pub fn from_pems(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| anyhow!("the CA key is not a PEM key: {e}"))?;
        Self::from_parts(cert_pem.to_owned(), key)
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> anyhow::Result<Ca> {
        let der = pem_cert(&cert_pem)?;
        let cert = parse(&der)?;
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| anyhow!("its basic constraints are malformed: {e}"))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            bail!("the certificate is not a CA certificate");
        }
        if key.subject_public_key_info() != cert.public_key().raw {
            bail!("the key does not belong to the certificate");
        }
        let validity = cert.validity();
        let (not_before, not_after) = (
            OffsetDateTime::from_unix_timestamp(validity.not_before.timestamp())?,
            OffsetDateTime::from_unix_timestamp(validity.not_after.timestamp())?,
        );
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| anyhow!("cannot use the certificate as issuer: {e}"))?;
        Ok(Ca {
            cert_pem,
            issuer,
            not_before,
            not_after,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Sign a node's CSR for exactly `fqdn`.
    ///
    /// Refuses unless the CSR's signature verifies (proof that the requester
    /// holds the key), its subject alternative names are exactly one DNS
    /// name equal to `fqdn` (ASCII case-insensitively; no IP or other SANs,
    /// no extra names), and each CN in its subject (if any) equals `fqdn`.
    /// Everything else the CSR requests is ignored: the certificate always
    /// has the leaf profile and the subject CN=`fqdn` only.
    pub fn sign_csr(&self, csr_pem: &str, fqdn: &str) -> Result<String, CsrRefusal> {
        check_host_name(fqdn).map_err(|e| {
            CsrRefusal::Malformed(format!(
                "{fqdn:?} is not a host name this CA can certify: {e}"
            ))
        })?;
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|_| CsrRefusal::Malformed("no PEM CERTIFICATE REQUEST found".into()))?;
        // rcgen checks the request's self-signature (x509-parser, "verify")
        // before it returns anything; nothing below runs on an unverified
        // request.
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(refusal_from_rcgen)?;
        let (_, raw) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .map_err(|e| CsrRefusal::Malformed(format!("cannot read the request: {e}")))?;
        // rcgen rebuilds the public key from the request's signature
        // algorithm; make sure the rebuilt key is the one that was requested.
        if csr.public_key.subject_public_key_info()
            != raw.certification_request_info.subject_pki.raw
        {
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
        let mut common_names = Vec::new();
        for cn in raw.certification_request_info.subject.iter_common_name() {
            let text = cn
                .as_str()
                .map_err(|_| CsrRefusal::Malformed("its common name is not text".into()))?;
            common_names.push(text.to_owned());
        }
        let mut asked: Vec<String> = Vec::new();
        for name in dns.iter().chain(common_names.iter()) {
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
        let now = OffsetDateTime::now_utc();
        self.certify(&csr.public_key, fqdn, now - BACKDATE, now + LEAF_LIFETIME)
            .map_err(|e| CsrRefusal::Malformed(format!("{e:#}")))
    }

    /// A fresh key and a certificate for it (the bootstrap host's own).
    pub fn issue(&self, fqdn: &str) -> anyhow::Result<NodeCert> {
        let key = new_key()?;
        let now = OffsetDateTime::now_utc();
        let cert_pem = self.certify(&key, fqdn, now - BACKDATE, now + LEAF_LIFETIME)?;
        Ok(NodeCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for the public key in `spki_der` with a validity of
    /// its own: how renewal tests make certificates that are due or expired.
    pub fn certify_key(
        &self,
        spki_der: &[u8],
        fqdn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<String> {
        let key = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| anyhow!("not a public key this CA supports: {e}"))?;
        self.certify(&key, fqdn, not_before, not_after)
    }

    /// The leaf profile, the same for every certificate this CA issues:
    /// CN=`fqdn`, SAN DNS=`fqdn` only, EKU serverAuth+clientAuth (etcd uses
    /// the same certificate to serve and to connect to peers),
    /// KU digitalSignature+keyEncipherment, not a CA. Its validity is what
    /// was asked within this CA's own: it never outlives the CA.
    fn certify(
        &self,
        key: &impl PublicKeyData,
        fqdn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<String> {
        let mut params = named(fqdn)?;
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
        params.not_before = not_before.max(self.not_before);
        params.not_after = not_after.min(self.not_after);
        if params.not_after <= params.not_before {
            bail!("the CA is no longer valid: it cannot sign for {fqdn}");
        }
        let cert = params
            .signed_by(key, &self.issuer)
            .with_context(|| format!("signing a certificate for {fqdn}"))?;
        Ok(cert.pem())
    }
}

/// The temporary root and the intermediates under it, by name.
#[derive(Debug)]
pub struct TempCa {
    pub root: Ca,
    intermediates: BTreeMap<String, Ca>,
}

const ROOT_CERT: &str = "ca.crt";
const ROOT_KEY: &str = "ca.key";
/// Which intermediates the store holds, so that one lost is found
/// damaged rather than made anew (its service would stop trusting every
/// certificate of the site).
const LAYOUT: &str = "layout.json";

/// The CA directory's [`LAYOUT`] file. A directory without one is of
/// version 1: the root and the etcd CA, as every release before it wrote.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    version: u32,
    intermediates: Vec<String>,
}

impl Layout {
    const VERSION: u32 = 2;
    /// The one intermediate of a version 1 store: frozen history, not the
    /// plan's (which may name more).
    const VERSION_1_INTERMEDIATES: &[&str] = &["etcd"];

    /// The intermediates the store in `dir` holds, if it holds a root.
    fn read(dir: &Path) -> anyhow::Result<Vec<String>> {
        match crate::fsutil::read_json::<Layout>(&dir.join(LAYOUT))? {
            None => Ok(Layout::VERSION_1_INTERMEDIATES
                .iter()
                .map(|n| n.to_string())
                .collect()),
            Some(layout) if layout.version > Layout::VERSION => bail!(
                "{} has version {}, but this firstboot reads up to version {}",
                dir.join(LAYOUT).display(),
                layout.version,
                Layout::VERSION
            ),
            Some(layout) => Ok(layout.intermediates),
        }
    }
}

/// An intermediate's certificate and key files in the CA directory:
/// `<name>-ca.crt` and `<name>-ca.key` (so the etcd CA's are where every
/// release kept them).
fn intermediate_files(name: &str) -> (String, String) {
    (format!("{name}-ca.crt"), format!("{name}-ca.key"))
}

/// An intermediate's name: a lowercase DNS label, as it goes into file
/// names and a subject (a name from the sealed copy is checked too, so
/// none reaches a path unchecked).
pub fn check_ca_name(name: &str) -> anyhow::Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !fine {
        bail!("{name:?} is not a name for a temporary CA (a lowercase DNS label)");
    }
    Ok(())
}

impl TempCa {
    /// New CAs: the root, and an intermediate for each of `intermediates`
    /// (the certificate plan's, `Plan::intermediates`).
    pub fn create(domain: &str, intermediates: &[&str]) -> anyhow::Result<TempCa> {
        let now = OffsetDateTime::now_utc();
        TempCa::create_valid(domain, intermediates, now - BACKDATE, now + CA_LIFETIME)
    }

    /// New CAs valid from `not_before` to `not_after` (tests make CAs near
    /// their end with it).
    pub fn create_valid(
        domain: &str,
        intermediates: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<TempCa> {
        let root = Ca::root_with(domain, new_key()?, not_before, not_after)?;
        let mut ca = TempCa {
            root,
            intermediates: BTreeMap::new(),
        };
        ca.complete_valid(domain, intermediates, not_before, not_after)?;
        Ok(ca)
    }

    /// Add an intermediate for each of `names` this CA lacks, valid as
    /// the root is; the names added (none when every one was there).
    /// How a site whose CA predates a row of the plan gets that row's
    /// intermediate: the root and the others stay as they are.
    pub fn complete(&mut self, domain: &str, names: &[&str]) -> anyhow::Result<Vec<String>> {
        let (not_before, not_after) = (self.root.not_before, self.root.not_after);
        self.complete_valid(domain, names, not_before, not_after)
    }

    fn complete_valid(
        &mut self,
        domain: &str,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<Vec<String>> {
        let mut added = Vec::new();
        for &name in names {
            check_ca_name(name)?;
            if self.intermediates.contains_key(name) {
                continue;
            }
            let ca =
                self.root
                    .intermediate_with(domain, name, new_key()?, not_before, not_after)?;
            self.intermediates.insert(name.to_owned(), ca);
            added.push(name.to_owned());
        }
        Ok(added)
    }

    /// The CA `signer` names; an error if this CA has no such
    /// intermediate (one the plan names is added by [`TempCa::complete`]).
    pub fn signer(&self, signer: Signer) -> anyhow::Result<&Ca> {
        match signer {
            Signer::Root => Ok(&self.root),
            Signer::Intermediate(name) => self.intermediates.get(name).ok_or_else(|| {
                anyhow!(
                    "the temporary CAs have no {name} CA (they hold {:?})",
                    self.names()
                )
            }),
        }
    }

    /// The intermediates' names.
    pub fn names(&self) -> Vec<&str> {
        self.intermediates.keys().map(String::as_str).collect()
    }

    /// The intermediates, as the sealed copy carries them.
    pub fn intermediate_pems(&self) -> BTreeMap<String, CaPems> {
        self.intermediates
            .iter()
            .map(|(name, ca)| {
                let pems = CaPems {
                    cert_pem: ca.cert_pem.clone(),
                    key_pem: ca.key_pem(),
                };
                (name.clone(), pems)
            })
            .collect()
    }

    /// The same CAs (same keys, subjects and key identifiers, so every
    /// certificate signed before still verifies) issued again for a full
    /// [`CA_LIFETIME`] from `now`, once any has lived two thirds of its
    /// life; `None` while none has. Nodes take the new CA certificates
    /// with their next renewal; until handoff ends them, no leaf depends
    /// on a CA's last third.
    pub fn renewed_if_due(
        &self,
        domain: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<Option<TempCa>> {
        if !self.root.due(now) && !self.intermediates.values().any(|ca| ca.due(now)) {
            return Ok(None);
        }
        let (not_before, not_after) = (now - BACKDATE, now + CA_LIFETIME);
        let root = Ca::root_with(domain, self.root.key_pair()?, not_before, not_after)?;
        let mut intermediates = BTreeMap::new();
        for (name, ca) in &self.intermediates {
            let again =
                root.intermediate_with(domain, name, ca.key_pair()?, not_before, not_after)?;
            intermediates.insert(name.clone(), again);
        }
        Ok(Some(TempCa {
            root,
            intermediates,
        }))
    }

    /// [`TempCa::load`], [`TempCa::complete`] with `names`, then
    /// [`TempCa::renewed_if_due`], saved before it is used: what the
    /// bootstrap host's services and renewal sign with. Run again, it
    /// changes nothing.
    pub fn load_current(
        dir: &Path,
        domain: &str,
        names: &[&str],
    ) -> anyhow::Result<Option<TempCa>> {
        let Some(mut ca) = TempCa::load(dir, names)? else {
            return Ok(None);
        };
        let added = ca.complete(domain, names)?;
        if !added.is_empty() {
            ca.save(dir)?;
            tracing::warn!(
                "the certificate plan names temporary CAs this site did not have: made {added:?} \
                 under the existing root"
            );
        }
        match ca.renewed_if_due(domain, OffsetDateTime::now_utc())? {
            None => Ok(Some(ca)),
            Some(renewed) => {
                renewed.save(dir)?;
                tracing::warn!(
                    "the temporary CAs had lived two thirds of their life: issued again under \
                     the same keys, until {}",
                    renewed.root.not_after
                );
                Ok(Some(renewed))
            }
        }
    }

    /// Persist into `dir` (created 0700): certificates 0644, keys 0600,
    /// each written atomically, keys first (a crash between the writes
    /// leaves a pair that `load` reports as damaged, never a certificate
    /// without its key).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, bytes: &[u8], mode: u32| {
            crate::fsutil::write_atomic(&dir.join(name), bytes, mode)
        };
        write(ROOT_KEY, self.root.key_pem().as_bytes(), 0o600)?;
        for (name, ca) in &self.intermediates {
            write(&intermediate_files(name).1, ca.key_pem().as_bytes(), 0o600)?;
        }
        write(ROOT_CERT, self.root.cert_pem.as_bytes(), 0o644)?;
        for (name, ca) in &self.intermediates {
            write(&intermediate_files(name).0, ca.cert_pem.as_bytes(), 0o644)?;
        }
        // Last: until it is written, what it adds loads as a plan's new
        // row (the files are read for every name the plan gives).
        let layout = Layout {
            version: Layout::VERSION,
            intermediates: self.intermediates.keys().cloned().collect(),
        };
        crate::fsutil::write_json(&dir.join(LAYOUT), &layout, 0o644)
    }

    /// Load from `dir` the root, every intermediate the store holds, and
    /// those of `names` that are there (a store older than a row of the
    /// plan lacks its intermediate: [`TempCa::complete`] adds it);
    /// Ok(None) if nothing is there; an error naming the problem if the
    /// files are damaged (an intermediate it held is gone), mismatched,
    /// or a key is readable by others (a CA whose key may have leaked
    /// must not sign anything).
    pub fn load(dir: &Path, names: &[&str]) -> anyhow::Result<Option<TempCa>> {
        let root = read_pair(dir, ROOT_CERT, ROOT_KEY)?;
        let held = Layout::read(dir)?;
        let mut intermediates = BTreeMap::new();
        let every = held.iter().map(String::as_str).chain(names.iter().copied());
        for name in every {
            check_ca_name(name)?;
            let (cert, key) = intermediate_files(name);
            match read_pair(dir, &cert, &key)? {
                Some(pems) => {
                    intermediates.insert(name.to_owned(), pems);
                }
                None if root.is_some() && held.iter().any(|h| h == name) => bail!(
                    "CA directory {} is damaged: {cert} is missing (its {LAYOUT} holds the \
                     {name} CA)",
                    dir.display()
                ),
                None => {}
            }
        }
        let Some(root) = root else {
            if intermediates.is_empty() {
                return Ok(None);
            }
            bail!(
                "CA directory {} is damaged: {ROOT_CERT} is missing",
                dir.display()
            );
        };
        let ca = TempCa::from_pems(&root, &intermediates)
            .with_context(|| format!("the CA in {} is damaged", dir.display()))?;
        Ok(Some(ca))
    }

    /// The CAs from PEM (as the sealed copy carries them), checked: each
    /// intermediate must be a CA signed by the root, under a name
    /// [`check_ca_name`] accepts.
    pub fn from_pems(
        root: &CaPems,
        intermediates: &BTreeMap<String, CaPems>,
    ) -> anyhow::Result<TempCa> {
        let root_ca = Ca::from_pems(&root.cert_pem, &root.key_pem).context("the temporary root")?;
        let root_der = pem_cert(&root.cert_pem)?;
        let root_cert = parse(&root_der)?;
        let mut cas = BTreeMap::new();
        for (name, pems) in intermediates {
            check_ca_name(name)?;
            let ca = Ca::from_pems(&pems.cert_pem, &pems.key_pem)
                .with_context(|| format!("the {name} CA"))?;
            let der = pem_cert(&pems.cert_pem)?;
            parse(&der)?
                .verify_signature(Some(root_cert.public_key()))
                .map_err(|_| anyhow!("the {name} CA is not signed by the temporary root"))?;
            cas.insert(name.clone(), ca);
        }
        Ok(TempCa {
            root: root_ca,
            intermediates: cas,
        })
    }
}

/// A CA's certificate and key from `dir`, or None if neither is there;
/// an error if only one is.
fn read_pair(dir: &Path, cert: &str, key: &str) -> anyhow::Result<Option<CaPems>> {
    match (read_ca_file(dir, cert)?, read_ca_file(dir, key)?) {
        (None, None) => Ok(None),
        (Some(cert_pem), Some(key_pem)) => Ok(Some(CaPems { cert_pem, key_pem })),
        (cert_pem, _) => {
            let missing = if cert_pem.is_none() { cert } else { key };
            bail!(
                "CA directory {} is damaged: {missing} is missing",
                dir.display()
            )
        }
    }
}

/// A CA file's text, or None if it is not there; an error if it is a
/// key others may read.
fn read_ca_file(dir: &Path, name: &str) -> anyhow::Result<Option<String>> {
    let path = dir.join(name);
    let Some((bytes, mode)) = read_if_present(&path)? else {
        return Ok(None);
    };
    if name.ends_with(".key") && mode & 0o077 != 0 {
        bail!(
            "refusing to use CA key {}: its mode is {:04o}, expected 0600",
            path.display(),
            mode & 0o7777
        );
    }
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{} is not text", path.display()))?;
    Ok(Some(text))
}

/// A node's new key (ECDSA P-256) and a CSR for its FQDN (SAN DNS=fqdn,
/// CN=fqdn), as (key PEM, CSR PEM). The key stays on the node.
pub fn new_key_and_csr(fqdn: &str) -> anyhow::Result<(String, String)> {
    let key = new_key()?;
    let csr = csr_for(&key, fqdn)?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR for `fqdn` (SAN DNS=fqdn, CN=fqdn) signed with `key`.
pub fn csr_for(key: &KeyPair, fqdn: &str) -> anyhow::Result<String> {
    let csr = named(fqdn)?
        .serialize_request(key)
        .with_context(|| format!("making a CSR for {fqdn}"))?;
    csr.pem().context("encoding the CSR")
}

/// Parameters naming `fqdn` and nothing else: CN and one DNS SAN. What
/// every CSR and leaf certificate here starts from.
fn named(fqdn: &str) -> anyhow::Result<CertificateParams> {
    check_host_name(fqdn).map_err(|e| anyhow!("cannot name {fqdn:?} in a certificate: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, fqdn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(
        fqdn.try_into()
            .map_err(|e| anyhow!("{fqdn:?} as DNS name: {e}"))?,
    )];
    Ok(params)
}

/// A fresh self-signed certificate for `fqdn` (the peer service's TLS
/// before the node has joined: its answers are authenticated by the node's
/// signature, not by this certificate).
pub fn self_signed(fqdn: &str) -> anyhow::Result<NodeCert> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(
        fqdn.try_into()
            .map_err(|e| anyhow!("{fqdn:?} as DNS name: {e}"))?,
    )];
    let cert = params.self_signed(&key).context("self-signing")?;
    Ok(NodeCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What firstboot reads out of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Whether it carries any IP address SAN (none here ever should).
    pub has_ip: bool,
    /// Validity, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

pub fn inspect(cert_pem: &str) -> anyhow::Result<CertInfo> {
    let der = pem_cert(cert_pem)?;
    let cert = parse(&der)?;
    let mut dns_names = Vec::new();
    let mut has_ip = false;
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| anyhow!("its subject alternative names are malformed: {e}"))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns_names.push((*n).to_owned()),
                GeneralName::IPAddress(_) => has_ip = true,
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        dns_names,
        has_ip,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        spki: cert.public_key().raw.to_vec(),
    })
}

/// Why a certificate is not good for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Check that `cert_pem` chains to `anchor_pem` (the anchor is trusted as
/// given, as etcd's `--trusted-ca-file` trusts it) at time `now` (Unix
/// seconds), for both server and client use, with the digitalSignature key
/// usage, and, when given, that it names `name`. This is what every use of
/// a certificate here needs: an expired, not-yet-valid, foreign or
/// misused certificate fails.
pub fn verify(
    cert_pem: &str,
    anchor_pem: &str,
    name: Option<&str>,
    now: u64,
) -> Result<(), Invalid> {
    let invalid = |why: String| Invalid(why);
    let der = pem_cert(cert_pem).map_err(|e| invalid(format!("{e:#}")))?;
    let anchor_der = pem_cert(anchor_pem).map_err(|e| invalid(format!("the CA: {e:#}")))?;
    let anchor = webpki::anchor_from_trusted_cert(&anchor_der)
        .map_err(|e| invalid(format!("the CA certificate is unusable: {e}")))?;
    // webpki takes a trust anchor without its dates; ours have dates, and
    // an expired (or not yet valid) CA vouches for nothing.
    let anchor_validity = parse(&anchor_der)
        .map_err(|e| invalid(format!("the CA: {e:#}")))?
        .validity()
        .clone();
    let at = now as i64;
    if at < anchor_validity.not_before.timestamp() {
        return Err(invalid("its CA is not valid yet".into()));
    }
    if at > anchor_validity.not_after.timestamp() {
        return Err(invalid("its CA has expired".into()));
    }
    let leaf = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| invalid(format!("the certificate is unusable: {e}")))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| invalid(describe(e)))?;
    }
    let cert = parse(&der).map_err(|e| invalid(format!("{e:#}")))?;
    let signs = cert
        .key_usage()
        .map_err(|e| invalid(format!("its key usage is malformed: {e}")))?
        .is_some_and(|ku| ku.value.digital_signature());
    if !signs {
        return Err(invalid(
            "its key usage does not allow digital signatures".into(),
        ));
    }
    if let Some(name) = name {
        let server_name = ServerName::try_from(name)
            .map_err(|_| invalid(format!("`{name}` is not a host name")))?;
        leaf.verify_is_valid_for_subject_name(&server_name)
            .map_err(|_| invalid(format!("it does not name {name}")))?;
    }
    Ok(())
}

fn describe(e: webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => "it has expired".into(),
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet".into(),
        webpki::Error::UnknownIssuer => "it is not issued by this CA".into(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "its signature does not verify under this CA".into()
        }
        other => format!("it does not verify: {other:?}"),
    }
}

/// Whether `cert_pem` is good under `ca_pem` right now (see [`verify`]).
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    verify(cert_pem, ca_pem, None, crate::status::now()).is_ok()
}

/// Whether a certificate has lived two thirds of its life at `now` (or is
/// unreadable): its node renews it then.
pub fn renewal_due(cert_pem: &str, now: u64) -> bool {
    match inspect(cert_pem) {
        Ok(info) => {
            let life = info.not_after - info.not_before;
            (now as i64) >= info.not_before + life * 2 / 3
        }
        Err(_) => true,
    }
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")
}

fn pem_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| anyhow!("no PEM CERTIFICATE found"))
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> anyhow::Result<X509Certificate<'a>> {
    let (rest, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| anyhow!("cannot read the certificate: {e}"))?;
    if !rest.is_empty() {
        bail!("the certificate has trailing bytes");
    }
    Ok(cert)
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

#[cfg(test)]
mod tests;
