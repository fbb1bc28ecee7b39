//! The certificate plan: every certificate a node holds is one row here
//! (ARCHITECTURE §5, phase 6). Join (the CSRs a node sends, what the
//! join service signs, what the node installs), renewal, the temporary
//! CAs, the bootstrap host's own certificates and the handoff to FreeIPA
//! all read this table; adding a certificate (Kubernetes' next) adds a row, not an edit
//! in each of them.
//!
//! A row says:
//! - **purpose**: what the certificate is for, and the key under which
//!   join's messages carry its CSR and certificate;
//! - **holders**: which nodes hold one (every node, or core hosts only);
//! - **issuer**: the temporary CA that signs it until handoff (the root,
//!   or an intermediate named here: `pki::TempCa` holds one for every
//!   name the plan gives, and makes it for a row added later), and the
//!   FreeIPA CA that does after (a lightweight sub-CA per service, so
//!   that what one service trusts is not what another's certificates
//!   chain to);
//! - **names**: what it certifies (a node's FQDN only, never an address);
//! - **files**: key, certificate and trust file, in one directory that is
//!   all the service reading them sees;
//! - **trusted by**: who accepts it, and so what its trust file must hold
//!   (only its own issuer: a certificate from another CA of the site must
//!   not authenticate there);
//! - **renewal**: when, and by whom, before and after handoff.

use std::path::PathBuf;

use anyhow::Context as _;
use node_contract::Role;
use serde::{Deserialize, Serialize};

use super::Slot;
use crate::paths::Paths;
use crate::pki::{Ca, Signer, TempCa};

/// What a certificate is for. Join's request and answer carry CSRs and
/// certificates keyed by it (kebab-case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertPurpose {
    /// The node's identity among the site's own services: the TLS
    /// certificate of the join and peer services, checked by the node
    /// that asks them.
    Identity,
    /// An etcd member's certificate, as server, peer and client.
    Etcd,
    /// A kind only tests' plans hold ([`tests::WITH_TEST_ONLY`]): it shows
    /// that a row is all a new kind needs.
    #[cfg(test)]
    TestOnly,
}

impl std::fmt::Display for CertPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertPurpose::Identity => "identity",
            CertPurpose::Etcd => "etcd",
            #[cfg(test)]
            CertPurpose::TestOnly => "test-only",
        })
    }
}

/// Which nodes hold a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holders {
    Every,
    CoreOnly,
}

impl Holders {
    pub fn include(self, role: Role) -> bool {
        match self {
            Holders::Every => true,
            Holders::CoreOnly => role == Role::Core,
        }
    }
}

/// Who signs a certificate once the site has handed off to FreeIPA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeipaIssuer {
    /// Never FreeIPA's own CA, which signs every host and service
    /// certificate of the site: a trust file holding it accepts them all.
    /// A lightweight sub-CA of FreeIPA's, by its name, for the service
    /// principal `<service>/<fqdn>`; its own CA ACL lets only that
    /// service's principals use it. Handoff creates each
    /// (`freeipa::ServiceCa`, whose tests hold every name here to one it
    /// knows); the plan names it and needs nothing of FreeIPA's.
    SubCa(&'static str),
}

/// Who signs: before handoff, after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issuer {
    pub temporary: Signer,
    pub freeipa: FreeipaIssuer,
}

/// What a certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// The node's FQDN, as CN and the one DNS SAN (etcd matches an
    /// incoming peer's source address against it by DNS).
    NodeFqdn,
}

/// Where a row's files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    /// Under `/etc/firstboot/`: the one directory its reader sees.
    pub dir: &'static str,
    pub key: &'static str,
    pub cert: &'static str,
    /// What the holder trusts for its peers' certificates of this
    /// purpose: the issuer's certificate (after handoff's first step, old
    /// and new issuers together, until the last step drops the old).
    pub trust: &'static str,
}

/// Who accepts a certificate of this purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedBy {
    /// A node asking the join or peer service checks the service's
    /// certificate against the identity issuer.
    SiteServices,
    /// etcd members, from their peers and clients (client-certificate
    /// authentication on both ports).
    EtcdMembers,
}

/// Who renews, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// Before handoff: firstboot's renewal timer, at two thirds of the
    /// certificate's life (`pki::renewal_due`), with the same key.
    pub before_handoff: Renewer,
    /// After: certmonger tracks it against its FreeIPA issuer.
    pub after_handoff: Renewer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewer {
    /// `firstboot renew` (the bootstrap host signs its own from its CAs;
    /// the others ask the join service).
    Firstboot,
    /// certmonger's FreeIPA helper, with the host's keytab.
    Certmonger,
}

/// One certificate a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub purpose: CertPurpose,
    pub holders: Holders,
    pub issuer: Issuer,
    pub names: Names,
    pub files: Files,
    pub trusted_by: TrustedBy,
    pub renewal: Renewal,
}

const RENEWED_BY_FIRSTBOOT_THEN_CERTMONGER: Renewal = Renewal {
    before_handoff: Renewer::Firstboot,
    after_handoff: Renewer::Certmonger,
};

/// Every node's identity.
pub const IDENTITY: Row = Row {
    purpose: CertPurpose::Identity,
    holders: Holders::Every,
    issuer: Issuer {
        temporary: Signer::Root,
        // Not FreeIPA's own CA, whose certificates every host and
        // service of the site holds: a trust file with it would accept
        // any of them.
        freeipa: FreeipaIssuer::SubCa("firstboot"),
    },
    names: Names::NodeFqdn,
    files: Files {
        dir: "tls",
        key: "node.key",
        cert: "node.crt",
        trust: "ca.crt",
    },
    trusted_by: TrustedBy::SiteServices,
    renewal: RENEWED_BY_FIRSTBOOT_THEN_CERTMONGER,
};

/// A core host's etcd member. The temporary etcd CA is an intermediate of
/// its own and FreeIPA's `etcd` sub-CA has its own ACL, so a worker's
/// identity (or any other certificate of the site) opens nothing in etcd.
pub const ETCD: Row = Row {
    purpose: CertPurpose::Etcd,
    holders: Holders::CoreOnly,
    issuer: Issuer {
        temporary: Signer::Intermediate("etcd"),
        freeipa: FreeipaIssuer::SubCa("etcd"),
    },
    names: Names::NodeFqdn,
    files: Files {
        dir: "etcd",
        key: "member.key",
        cert: "member.crt",
        trust: "ca.crt",
    },
    trusted_by: TrustedBy::EtcdMembers,
    renewal: RENEWED_BY_FIRSTBOOT_THEN_CERTMONGER,
};

/// A certificate plan: its rows, in the order a node makes its keys.
/// Whatever iterates over the kinds of certificate (join's CSRs and
/// signing, renewal, the temporary CAs) takes one, [`PLAN`] in
/// production, so that tests can hand it a plan with a kind of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    rows: &'static [Row],
}

/// The plan.
pub const PLAN: Plan = Plan::new(&[IDENTITY, ETCD]);

impl Plan {
    pub const fn new(rows: &'static [Row]) -> Plan {
        Plan { rows }
    }

    pub fn rows(self) -> &'static [Row] {
        self.rows
    }

    /// The rows a node of `role` holds.
    pub fn held_by(self, role: Role) -> impl Iterator<Item = &'static Row> {
        self.rows
            .iter()
            .filter(move |row| row.holders.include(role))
    }

    /// The row for `purpose`, if this plan has one.
    pub fn row(self, purpose: CertPurpose) -> Option<&'static Row> {
        self.rows.iter().find(|row| row.purpose == purpose)
    }

    /// The temporary intermediates its rows name, each once: what the
    /// temporary CA holds besides its root.
    pub fn intermediates(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for row in self.rows {
            if let Signer::Intermediate(name) = row.issuer.temporary {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

impl Row {
    /// The temporary CA that signs this row's certificates, among `ca`'s.
    pub fn temporary_ca<'a>(&self, ca: &'a TempCa) -> anyhow::Result<&'a Ca> {
        ca.signer(self.issuer.temporary)
            .with_context(|| format!("signing {} certificates", self.purpose))
    }

    /// This row's files on a node.
    pub fn slot(&self, paths: &Paths) -> Slot {
        let dir: PathBuf = paths.under_root(&format!("/etc/firstboot/{}", self.files.dir));
        Slot {
            purpose: self.purpose,
            key: dir.join(self.files.key),
            cert: dir.join(self.files.cert),
            ca: dir.join(self.files.trust),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A kind of certificate only tests know: held by every node, signed
    /// by a temporary intermediate of its own, and by FreeIPA's containers
    /// sub-CA after handoff (no production row uses it). Adding it is the
    /// whole change a new kind takes until handoff: this row, and its
    /// purpose above (handoff's move to FreeIPA is etcd's alone so far).
    pub(crate) const TEST_ONLY: Row = Row {
        purpose: CertPurpose::TestOnly,
        holders: Holders::Every,
        issuer: Issuer {
            temporary: Signer::Intermediate("test-only"),
            freeipa: FreeipaIssuer::SubCa("containers"),
        },
        names: Names::NodeFqdn,
        files: Files {
            dir: "test-only",
            key: "test.key",
            cert: "test.crt",
            trust: "ca.crt",
        },
        trusted_by: TrustedBy::SiteServices,
        renewal: RENEWED_BY_FIRSTBOOT_THEN_CERTMONGER,
    };

    /// The plan with one row more.
    pub(crate) const WITH_TEST_ONLY: Plan = Plan::new(&[IDENTITY, ETCD, TEST_ONLY]);

    /// The etcd row's temporary CA, for tests that make etcd members.
    pub(crate) fn etcd_ca(ca: &TempCa) -> &Ca {
        ETCD.temporary_ca(ca).unwrap()
    }

    /// Every plan the tests check: the production one, and the one with
    /// the test-only kind, each with the purposes it must cover.
    const PLANS: [(Plan, &[CertPurpose]); 2] = [
        (PLAN, &[CertPurpose::Identity, CertPurpose::Etcd]),
        (
            WITH_TEST_ONLY,
            &[
                CertPurpose::Identity,
                CertPurpose::Etcd,
                CertPurpose::TestOnly,
            ],
        ),
    ];

    #[test]
    fn every_purpose_has_exactly_one_row() {
        for (plan, purposes) in PLANS {
            for &purpose in purposes {
                assert_eq!(
                    plan.rows().iter().filter(|r| r.purpose == purpose).count(),
                    1,
                    "{purpose}"
                );
                assert_eq!(plan.row(purpose).map(|r| r.purpose), Some(purpose));
            }
            assert_eq!(plan.rows().len(), purposes.len());
        }
        assert_eq!(PLAN.row(CertPurpose::TestOnly), None);
    }

    #[test]
    fn no_two_rows_share_a_file_or_an_issuer() {
        let paths = Paths::under(std::path::Path::new("/n"));
        for (plan, _) in PLANS {
            let mut files = BTreeSet::new();
            for row in plan.rows() {
                let slot = row.slot(&paths);
                for path in [slot.key, slot.cert, slot.ca] {
                    assert!(files.insert(path.clone()), "{} twice", path.display());
                }
            }
            // What one purpose's holders trust is signed by no other
            // row's issuer, before handoff and after.
            let temporary: BTreeSet<_> = plan.rows().iter().map(|r| r.issuer.temporary).collect();
            assert_eq!(temporary.len(), plan.rows().len());
            let freeipa: Vec<_> = plan.rows().iter().map(|r| r.issuer.freeipa).collect();
            for (i, a) in freeipa.iter().enumerate() {
                assert!(!freeipa[i + 1..].contains(a), "{a:?} issues two rows");
            }
        }
    }

    #[test]
    fn the_temporary_intermediates_are_the_rows_and_named_for_files() {
        // Existing sites hold exactly the root and `etcd-ca.*` on disk.
        assert_eq!(PLAN.intermediates(), ["etcd"]);
        assert_eq!(WITH_TEST_ONLY.intermediates(), ["etcd", "test-only"]);
        for (plan, _) in PLANS {
            for name in plan.intermediates() {
                crate::pki::check_ca_name(name).unwrap();
            }
        }
    }

    #[test]
    fn a_worker_holds_its_identity_and_nothing_of_etcd() {
        let worker: Vec<_> = PLAN.held_by(Role::Worker).map(|r| r.purpose).collect();
        assert_eq!(worker, [CertPurpose::Identity]);
        let core: Vec<_> = PLAN.held_by(Role::Core).map(|r| r.purpose).collect();
        assert_eq!(core, [CertPurpose::Identity, CertPurpose::Etcd]);
    }

    #[test]
    fn the_files_are_where_the_services_read_them() {
        let paths = Paths::under(std::path::Path::new("/n"));
        // The etcd container sees only this directory (`paths.etcd_dir`).
        assert_eq!(ETCD.slot(&paths).cert.parent(), Some(&*paths.etcd_dir()));
        assert_eq!(IDENTITY.slot(&paths).cert.parent(), Some(&*paths.tls_dir()));
    }

    #[test]
    fn the_wire_names_are_stable() {
        assert_eq!(
            serde_json::to_string(&CertPurpose::Identity).unwrap(),
            "\"identity\""
        );
        assert_eq!(
            serde_json::to_string(&CertPurpose::Etcd).unwrap(),
            "\"etcd\""
        );
        // Display and the wire agree, for every kind.
        for (plan, _) in PLANS {
            for row in plan.rows() {
                assert_eq!(
                    serde_json::to_string(&row.purpose).unwrap(),
                    format!("\"{}\"", row.purpose)
                );
            }
        }
    }
}
