use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;

use super::*;
use crate::certs::plan::tests::{etcd_ca, WITH_TEST_ONLY};
use crate::certs::plan::{Plan, PLAN};

const DOMAIN: &str = "lab.example.org";
const NODE2: &str = "node2.lab.example.org";
const NODE3: &str = "node3.lab.example.org";

/// CAs well inside their life: made a month ago, for a year from now, so
/// the dates a test asks for a leaf are not cut short by the CA's.
fn ca() -> TempCa {
    let t = OffsetDateTime::now_utc();
    ca_valid(t - Duration::days(30), t + Duration::days(365))
}

/// CAs of the production plan, valid from `not_before` to `not_after`.
fn ca_valid(not_before: OffsetDateTime, not_after: OffsetDateTime) -> TempCa {
    TempCa::create_valid(DOMAIN, &PLAN.intermediates(), not_before, not_after).unwrap()
}

fn now() -> u64 {
    crate::status::now()
}

fn names(pem: &str) -> (Vec<String>, bool) {
    let info = inspect(pem).unwrap();
    (info.dns_names, info.has_ip)
}

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

fn der_of(pem: &str) -> Vec<u8> {
    rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
        .map(|d: Result<CertificateDer<'static>, _>| d.unwrap().as_ref().to_vec())
        .next()
        .or_else(|| {
            CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .ok()
                .map(|d| d.as_ref().to_vec())
        })
        .unwrap()
}

fn csr_der(csr_pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use rustls::pki_types::pem::SectionKind;
    let kind = match label {
        "CERTIFICATE" => SectionKind::Certificate,
        _ => SectionKind::Csr,
    };
    let b64 = base64_encode(der);
    let _ = kind;
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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
    b64
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
fn cas_are_shareable_between_tasks() {
    fn check<T: Send + Sync>() {}
    check::<TempCa>();
    check::<NodeCert>();
}

#[test]
fn signs_csr_for_own_name() {
    let ca = ca();
    let (_key, csr) = new_key_and_csr(NODE2).unwrap();
    let leaf = ca.root.sign_csr(&csr, NODE2).expect("sign");
    assert_eq!(names(&leaf), (vec![NODE2.to_string()], false));
    assert!(issued_by(&leaf, ca.root.cert_pem()));
    assert_eq!(
        verify(&leaf, ca.root.cert_pem(), Some(NODE2), now()),
        Ok(())
    );
    assert!(verify(&leaf, ca.root.cert_pem(), Some(NODE3), now()).is_err());
    let other = TempCa::create(DOMAIN, &PLAN.intermediates()).unwrap();
    assert!(!issued_by(&leaf, other.root.cert_pem()));
    assert_eq!(names(ca.root.cert_pem()), (vec![], false));
}

/// For every plan (the production one, and one with a kind more): what
/// one row's holders trust accepts that row's certificates and no other
/// row's, and each intermediate is the root's and signs no CA.
#[test]
fn what_a_service_trusts_is_not_what_another_row_certifies() {
    let (_key, csr) = new_key_and_csr(NODE2).unwrap();
    for plan in [PLAN, WITH_TEST_ONLY] {
        let ca = TempCa::create(DOMAIN, &plan.intermediates()).unwrap();
        assert_eq!(ca.names(), plan.intermediates());
        let issued: Vec<_> = plan
            .rows()
            .iter()
            .map(|row| {
                let signer = row.temporary_ca(&ca).unwrap();
                (
                    row,
                    signer.sign_csr(&csr, NODE2).unwrap(),
                    signer.cert_pem(),
                )
            })
            .collect();
        for (row, leaf, _) in &issued {
            for (other, _, trusted) in &issued {
                let verdict = verify(leaf, trusted, Some(NODE2), now());
                if row.purpose == other.purpose {
                    assert_eq!(verdict, Ok(()), "{}", row.purpose);
                } else {
                    assert!(
                        verdict.is_err(),
                        "a {} certificate passes where {} is trusted",
                        row.purpose,
                        other.purpose
                    );
                }
            }
        }
        for name in plan.intermediates() {
            let ca_cert = ca.signer(Signer::Intermediate(name)).unwrap().cert_pem();
            let der = pem_cert(ca_cert).unwrap();
            let cert = parse(&der).unwrap();
            let constraints = cert.basic_constraints().unwrap().unwrap().value;
            assert!(constraints.ca, "{name}");
            assert_eq!(constraints.path_len_constraint, Some(0), "{name}");
            let subject = cert.subject().to_string();
            assert!(
                subject.contains(&format!("temporary {name} CA")),
                "{subject}"
            );
        }
        // The intermediates must be the root's: a stranger's is refused.
        assert!(TempCa::from_pems(&root_pems(&ca), &ca.intermediate_pems()).is_ok());
        let stranger = TempCa::create(DOMAIN, &plan.intermediates()).unwrap();
        let err = TempCa::from_pems(&root_pems(&ca), &stranger.intermediate_pems()).unwrap_err();
        assert!(format!("{err:#}").contains("not signed by the temporary root"));
        // A signer the CA does not hold is an error, not a panic.
        assert!(ca.signer(Signer::Intermediate("absent")).is_err());
    }
}

fn root_pems(ca: &TempCa) -> CaPems {
    CaPems {
        cert_pem: ca.root.cert_pem().to_owned(),
        key_pem: ca.root.key_pem(),
    }
}

/// A store exactly as every release before the layout file wrote it (the
/// root and the etcd CA, nothing else) loads with the production plan,
/// and gains the intermediate of a row added to the plan once, under the
/// same root, leaving the others as they were; loading again changes
/// nothing.
#[test]
fn a_store_of_root_and_etcd_loads_and_gains_a_new_rows_ca_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let old = ca();
    old.save(&dir).unwrap();
    fs::remove_file(dir.join(LAYOUT)).unwrap();
    let version_1 = ["ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key"];
    assert_eq!(file_names(&dir), version_1);
    let file = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    let before: Vec<_> = version_1.iter().map(|f| file(f)).collect();
    let unchanged = || version_1.iter().map(|f| file(f)).collect::<Vec<_>>() == before;

    let grown = |plan: Plan| {
        TempCa::load_current(&dir, DOMAIN, &plan.intermediates())
            .unwrap()
            .unwrap()
    };
    let same = grown(PLAN);
    assert_eq!(same.names(), ["etcd"]);
    assert_eq!(etcd_ca(&same).cert_pem(), etcd_ca(&old).cert_pem());
    assert!(unchanged());

    let first = grown(WITH_TEST_ONLY);
    assert_eq!(first.names(), ["etcd", "test-only"]);
    assert!(unchanged());
    assert_eq!(mode(&dir.join("test-only-ca.key")), 0o600);
    let added = file("test-only-ca.crt");
    let test_only = first.signer(Signer::Intermediate("test-only")).unwrap();
    let (_key, csr) = new_key_and_csr(NODE2).unwrap();
    let leaf = test_only.sign_csr(&csr, NODE2).unwrap();
    assert!(issued_by(&leaf, &added));
    assert!(!issued_by(&leaf, etcd_ca(&old).cert_pem()));
    assert!(!issued_by(&leaf, old.root.cert_pem()));
    // Again: the same intermediate, nothing rewritten.
    let second = grown(WITH_TEST_ONLY);
    let again = second.signer(Signer::Intermediate("test-only")).unwrap();
    assert_eq!(again.cert_pem(), added);
    assert_eq!(file("test-only-ca.crt"), added);
    // The production plan loads the grown store with all it holds.
    assert_eq!(grown(PLAN).names(), ["etcd", "test-only"]);
    assert!(unchanged());
}

/// An intermediate the store held and lost is damage, never made anew
/// (its service would stop trusting every certificate of the site): the
/// etcd CA of a version 1 store, and any of a store with its layout.
#[test]
fn a_lost_intermediate_is_damage_not_a_new_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let ca = TempCa::create(DOMAIN, &WITH_TEST_ONLY.intermediates()).unwrap();
    ca.save(&dir).unwrap();
    let err_of = |plan: Plan| {
        format!(
            "{:#}",
            TempCa::load_current(&dir, DOMAIN, &plan.intermediates()).unwrap_err()
        )
    };
    fs::remove_file(dir.join("test-only-ca.crt")).unwrap();
    fs::remove_file(dir.join("test-only-ca.key")).unwrap();
    for plan in [PLAN, WITH_TEST_ONLY] {
        let err = err_of(plan);
        assert!(err.contains("test-only-ca.crt is missing"), "{err}");
    }
    fs::remove_file(dir.join(LAYOUT)).unwrap();
    fs::remove_file(dir.join("etcd-ca.crt")).unwrap();
    fs::remove_file(dir.join("etcd-ca.key")).unwrap();
    let err = err_of(PLAN);
    assert!(err.contains("etcd-ca.crt is missing"), "{err}");
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    files
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn certificates_outside_the_site_domain_never_verify() {
    let ca = ca();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let t = OffsetDateTime::now_utc();
    let foreign = ca
        .root
        .certify_key(
            &key.subject_public_key_info(),
            "www.example.net",
            t - Duration::hours(1),
            t + Duration::days(1),
        )
        .unwrap();
    let err = verify(&foreign, ca.root.cert_pem(), None, now()).unwrap_err();
    assert!(err.0.contains("does not verify"), "{err}");
}

#[test]
fn dates_decide_validity_and_renewal() {
    let ca = ca();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let spki = key.subject_public_key_info();
    let t = OffsetDateTime::now_utc();
    let make =
        |from: Duration, to: Duration| ca.root.certify_key(&spki, NODE2, t + from, t + to).unwrap();
    let fresh = make(-Duration::hours(1), Duration::days(90));
    let due = make(-Duration::hours(2), Duration::minutes(30));
    let expired = make(-Duration::hours(3), -Duration::minutes(1));
    let future = make(Duration::hours(1), Duration::days(1));
    let n = now();
    assert!(!renewal_due(&fresh, n));
    assert!(renewal_due(&due, n));
    assert!(renewal_due(&expired, n));
    assert_eq!(verify(&due, ca.root.cert_pem(), Some(NODE2), n), Ok(()));
    assert_eq!(
        verify(&expired, ca.root.cert_pem(), Some(NODE2), n),
        Err(Invalid("it has expired".into()))
    );
    assert_eq!(
        verify(&future, ca.root.cert_pem(), Some(NODE2), n),
        Err(Invalid("it is not valid yet".into()))
    );
    assert!(renewal_due("garbage", n));
}

fn not_after(pem: &str) -> i64 {
    inspect(pem).unwrap().not_after
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let t = OffsetDateTime::now_utc();
    let ca = ca_valid(t - Duration::days(300), t + Duration::days(10));
    let end = ca.root.not_after().unix_timestamp();
    assert!(
        not_after(etcd_ca(&ca).cert_pem()) <= end,
        "the etcd CA outlives the root"
    );
    let (_, csr) = new_key_and_csr(NODE2).unwrap();
    let leaf = ca.root.sign_csr(&csr, NODE2).unwrap();
    assert_eq!(
        not_after(&leaf),
        end,
        "90 days asked, 10 left: the CA's end"
    );
    let etcd = etcd_ca(&ca).sign_csr(&csr, NODE2).unwrap();
    assert!(not_after(&etcd) <= not_after(etcd_ca(&ca).cert_pem()));
    assert!(not_after(&ca.root.issue(NODE3).unwrap().cert_pem) <= end);
    // Renewal of such a leaf is due at two thirds of its (short) life.
    assert!(!renewal_due(&leaf, now()));
    assert!(renewal_due(&leaf, now() + 8 * 86_400));

    // A CA past its end signs nothing.
    let old = ca_valid(t - Duration::days(400), t - Duration::days(1));
    let err = old.root.sign_csr(&csr, NODE2).unwrap_err();
    assert!(err.to_string().contains("no longer valid"), "{err}");
}

#[test]
fn an_expired_ca_vouches_for_nothing() {
    let t = OffsetDateTime::now_utc();
    let ca = ca_valid(t - Duration::days(10), t + Duration::days(1));
    let (_, csr) = new_key_and_csr(NODE2).unwrap();
    let leaf = ca.root.sign_csr(&csr, NODE2).unwrap();
    assert_eq!(
        verify(&leaf, ca.root.cert_pem(), Some(NODE2), now()),
        Ok(())
    );
    assert_eq!(
        verify(&leaf, ca.root.cert_pem(), Some(NODE2), now() + 2 * 86_400),
        Err(Invalid("its CA has expired".into()))
    );
    let future = ca_valid(t + Duration::days(1), t + Duration::days(9));
    let leaf = future.root.sign_csr(&csr, NODE2).unwrap();
    assert_eq!(
        verify(&leaf, future.root.cert_pem(), Some(NODE2), now()),
        Err(Invalid("its CA is not valid yet".into()))
    );
}

#[test]
fn a_ca_past_two_thirds_is_issued_again_under_the_same_keys() {
    let t = OffsetDateTime::now_utc();
    let fresh = ca();
    assert!(fresh.renewed_if_due(DOMAIN, t).unwrap().is_none());

    let old = ca_valid(t - Duration::days(300), t + Duration::days(60));
    let (_, csr) = new_key_and_csr(NODE2).unwrap();
    let before = old.root.sign_csr(&csr, NODE2).unwrap();
    let etcd_before = etcd_ca(&old).sign_csr(&csr, NODE2).unwrap();
    let renewed = old.renewed_if_due(DOMAIN, t).unwrap().expect("due");
    assert_eq!(renewed.root.key_pem(), old.root.key_pem());
    assert_eq!(etcd_ca(&renewed).key_pem(), etcd_ca(&old).key_pem());
    let year = (t + CA_LIFETIME).unix_timestamp();
    assert!((not_after(renewed.root.cert_pem()) - year).abs() < 60);
    assert!(renewed.renewed_if_due(DOMAIN, t).unwrap().is_none());
    // What the old CAs signed verifies under the renewed ones, and what
    // the renewed ones sign verifies under the old (nodes that have not
    // renewed yet), until the old ones end.
    let n = now();
    assert_eq!(
        verify(&before, renewed.root.cert_pem(), Some(NODE2), n),
        Ok(())
    );
    assert_eq!(
        verify(&etcd_before, etcd_ca(&renewed).cert_pem(), Some(NODE2), n),
        Ok(())
    );
    let after = renewed.root.sign_csr(&csr, NODE2).unwrap();
    assert_eq!(verify(&after, old.root.cert_pem(), Some(NODE2), n), Ok(()));
    // On disk: loading renews and saves.
    let dir = tempfile::tempdir().unwrap();
    old.save(dir.path()).unwrap();
    let current = TempCa::load_current(dir.path(), DOMAIN, &PLAN.intermediates())
        .unwrap()
        .unwrap();
    assert!(not_after(current.root.cert_pem()) > not_after(old.root.cert_pem()));
    let reloaded = TempCa::load(dir.path(), &PLAN.intermediates())
        .unwrap()
        .unwrap();
    assert_eq!(reloaded.root.cert_pem(), current.root.cert_pem());
}

#[test]
fn name_compare_ignores_case() {
    let ca = ca();
    let (_key, csr) = new_key_and_csr("NODE2.Lab.Example.org").unwrap();
    let leaf = ca.root.sign_csr(&csr, NODE2).expect("sign");
    assert_eq!(names(&leaf).0, vec![NODE2.to_string()]);
}

#[test]
fn issue_makes_matching_key_and_cert() {
    let ca = ca();
    let node = ca.root.issue("node1.lab.example.org").unwrap();
    assert_eq!(
        names(&node.cert_pem),
        (vec!["node1.lab.example.org".to_string()], false)
    );
    assert!(issued_by(&node.cert_pem, ca.root.cert_pem()));
    let key = KeyPair::from_pem(&node.key_pem).unwrap();
    assert_eq!(
        key.subject_public_key_info(),
        inspect(&node.cert_pem).unwrap().spki
    );
    assert!(!format!("{node:?}").contains("PRIVATE"));
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[test]
fn refuses_other_nodes_name() {
    let ca = ca();
    let (_key, csr) = new_key_and_csr(NODE3).unwrap();
    let refusal = ca.root.sign_csr(&csr, NODE2).unwrap_err();
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
        ca.root.sign_csr(&csr, NODE2).unwrap_err(),
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
        ca.root.sign_csr(&csr, NODE2).unwrap_err(),
        CsrRefusal::ForeignName { .. }
    ));
}

#[test]
fn refuses_ip_san() {
    let ca = ca();
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let csr = custom_csr(Some(NODE2), vec![dns(NODE2), SanType::IpAddress(ip)]);
    let refusal = ca.root.sign_csr(&csr, NODE2).unwrap_err();
    assert_eq!(refusal, CsrRefusal::IpAddress("192.0.2.7".into()));
    assert!(refusal.to_string().contains("192.0.2.7"));
}

#[test]
fn refuses_other_san_types_and_no_name() {
    let ca = ca();
    let uri = SanType::URI("https://node2.lab.example.org/".try_into().unwrap());
    let csr = custom_csr(Some(NODE2), vec![dns(NODE2), uri]);
    assert_eq!(
        ca.root.sign_csr(&csr, NODE2).unwrap_err(),
        CsrRefusal::OtherSan
    );
    let csr = custom_csr(Some(NODE2), vec![]);
    assert_eq!(
        ca.root.sign_csr(&csr, NODE2).unwrap_err(),
        CsrRefusal::NoName
    );
}

#[test]
fn refuses_garbage() {
    let ca = ca();
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ca.root.cert_pem(),
    ] {
        assert!(
            matches!(
                ca.root.sign_csr(garbage, NODE2),
                Err(CsrRefusal::Malformed(_))
            ),
            "{garbage:?}"
        );
    }
    let (_key, csr) = new_key_and_csr(NODE2).unwrap();
    assert!(matches!(
        ca.root.sign_csr(&csr, "node2..lab"),
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
    let refusal = ca
        .root
        .sign_csr(&pem_encode("CERTIFICATE REQUEST", &der), NODE2);
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
    let refusal = ca
        .root
        .sign_csr(&pem_encode("CERTIFICATE REQUEST", &der), NODE2);
    assert_eq!(
        refusal,
        Err(CsrRefusal::Malformed(
            "its signature does not verify".into()
        ))
    );
    // The encoder above is faithful: untampered, the same path succeeds.
    let der = csr_der(&csr);
    ca.root
        .sign_csr(&pem_encode("CERTIFICATE REQUEST", &der), NODE2)
        .expect("untampered CSR");
}

#[test]
fn a_tampered_certificate_does_not_verify() {
    let ca = ca();
    let node = ca.root.issue(NODE2).unwrap();
    let mut der = der_of(&node.cert_pem);
    assert_eq!(replace_all(&mut der, b"node2", b"node3"), 2);
    let forged = pem_encode("CERTIFICATE", &der);
    assert_eq!(names(&forged).0, vec![NODE3.to_string()]);
    assert!(!issued_by(&forged, ca.root.cert_pem()));
    assert!(!issued_by("garbage", ca.root.cert_pem()));
}

#[test]
fn save_load_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let ca = ca();
    ca.save(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(ROOT_CERT)), 0o644);
    assert_eq!(mode(&dir.join(ROOT_KEY)), 0o600);
    assert_eq!(mode(&dir.join("etcd-ca.key")), 0o600);
    let files = file_names(&dir);
    assert_eq!(
        files,
        vec![ROOT_CERT, ROOT_KEY, "etcd-ca.crt", "etcd-ca.key", LAYOUT]
    );
    let layout: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(LAYOUT)).unwrap()).unwrap();
    assert_eq!(
        layout,
        serde_json::json!({"version": 2, "intermediates": ["etcd"]})
    );

    let loaded = TempCa::load(&dir, &PLAN.intermediates())
        .unwrap()
        .expect("saved CA");
    assert_eq!(loaded.root.cert_pem(), ca.root.cert_pem());
    let (_key, csr) = new_key_and_csr(NODE2).unwrap();
    let leaf = etcd_ca(&loaded).sign_csr(&csr, NODE2).unwrap();
    assert!(issued_by(&leaf, etcd_ca(&ca).cert_pem()));
    loaded.save(&dir).unwrap();
    assert_eq!(mode(&dir.join(ROOT_KEY)), 0o600);
}

#[test]
fn load_missing_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        TempCa::load(&tmp.path().join("nope"), &PLAN.intermediates())
            .unwrap()
            .is_none()
    );
    assert!(TempCa::load(tmp.path(), &PLAN.intermediates())
        .unwrap()
        .is_none());
}

#[test]
fn load_reports_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    ca().save(&dir).unwrap();
    let err_of = |dir: &Path| {
        format!(
            "{:#}",
            TempCa::load(dir, &PLAN.intermediates()).unwrap_err()
        )
    };

    fs::set_permissions(dir.join(ROOT_KEY), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(err_of(&dir).contains("0644"), "{}", err_of(&dir));
    fs::set_permissions(dir.join(ROOT_KEY), fs::Permissions::from_mode(0o600)).unwrap();

    let other = tmp.path().join("other");
    ca().save(&other).unwrap();
    fs::copy(other.join(ROOT_KEY), dir.join(ROOT_KEY)).unwrap();
    assert!(err_of(&dir).contains("does not belong"), "{}", err_of(&dir));

    fs::write(dir.join(ROOT_CERT), "not a certificate").unwrap();
    assert!(err_of(&dir).contains("damaged"), "{}", err_of(&dir));

    let leaf = TempCa::load(&other, &PLAN.intermediates())
        .unwrap()
        .unwrap()
        .root
        .issue(NODE2)
        .unwrap();
    fs::write(dir.join(ROOT_CERT), &leaf.cert_pem).unwrap();
    fs::write(dir.join(ROOT_KEY), &leaf.key_pem).unwrap();
    assert!(err_of(&dir).contains("not a CA"), "{}", err_of(&dir));

    fs::remove_file(dir.join(ROOT_CERT)).unwrap();
    assert!(err_of(&dir).contains("missing"), "{}", err_of(&dir));
}

#[test]
fn rustls_accepts_leaf_as_server_and_client() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;

    let ca = ca();
    let node = ca.root.issue(NODE2).unwrap();
    let leaf = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.root.cert_pem().as_bytes()).unwrap())
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
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap();
    client
        .verify_client_cert(&leaf, &[], now)
        .expect("valid client certificate");
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

/// openssl, an independent X.509 implementation, agrees with ours.
#[test]
fn openssl_agrees() {
    let present = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        return site_test_skip::skip(
            "skipping: openssl is not installed (apt-get install openssl)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = ca();
    let (_key, csr) = new_key_and_csr(NODE2).unwrap();
    let leaf = ca.root.sign_csr(&csr, NODE2).unwrap();
    let member = etcd_ca(&ca).sign_csr(&csr, NODE2).unwrap();
    fs::write(dir.join("ca.pem"), ca.root.cert_pem()).unwrap();
    fs::write(dir.join("etcd-ca.pem"), etcd_ca(&ca).cert_pem()).unwrap();
    fs::write(dir.join("leaf.pem"), &leaf).unwrap();
    fs::write(dir.join("member.pem"), &member).unwrap();

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
    // The etcd chain: root, etcd CA, member; an identity certificate does
    // not verify where only the etcd CA is trusted (partial chain).
    let (ok, out) = openssl(
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "etcd-ca.pem",
            "member.pem",
        ],
        dir,
    );
    assert!(ok && out.contains("member.pem: OK"), "{out}");
    let (ok, _) = openssl(
        &[
            "verify",
            "-partial_chain",
            "-CAfile",
            "etcd-ca.pem",
            "leaf.pem",
        ],
        dir,
    );
    assert!(!ok, "the etcd CA vouched for an identity certificate");

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
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", "ca.pem"], dir);
    assert!(ok, "{text}");
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
    assert!(
        text.contains("Permitted:") && text.contains("DNS:lab.example.org"),
        "{text}"
    );
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", "etcd-ca.pem"], dir);
    assert!(ok, "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    // A CSR made by openssl rather than by us.
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
    let leaf = ca.root.sign_csr(&csr, NODE2).expect("openssl CSR");
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
        ca.root.sign_csr(&csr, NODE2),
        Err(CsrRefusal::IpAddress("192.0.2.7".into()))
    );
}
