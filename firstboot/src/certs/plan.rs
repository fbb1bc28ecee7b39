//! The certificate plan: every certificate a node holds is one row here
//! (ARCHITECTURE §5, phase 6). Join (the CSRs a node sends, what the
//! join service signs, what the node installs), renewal, the bootstrap
//! host's own certificates and the handoff to FreeIPA all read this
//! table; adding a certificate (Kubernetes' next) adds a row, not an edit
//! in each of them.
//!
//! A row says:
//! - **purpose**: what the certificate is for, and the key under which
//!   join's messages carry its CSR and certificate;
//! - **holders**: which nodes hold one (every node, or core hosts only);
//! - **issuer**: the temporary CA that signs it until handoff, and the
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

use node_contract::Role;
use serde::{Deserialize, Serialize};

use super::Slot;
use crate::freeipa::ServiceCa;
use crate::paths::Paths;
use crate::pki::Signer;

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
}

impl std::fmt::Display for CertPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertPurpose::Identity => "identity",
            CertPurpose::Etcd => "etcd",
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
    /// FreeIPA's own CA, for the host principal `host/<fqdn>`: what
    /// `ipa-client-install` makes every enrolled host.
    HostCa,
    /// A lightweight sub-CA of FreeIPA's, for the service principal
    /// `<service>/<fqdn>`; its own CA ACL lets only that service's
    /// principals use it (`freeipa::ServiceCa`).
    SubCa(ServiceCa),
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
        freeipa: FreeipaIssuer::HostCa,
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
        temporary: Signer::Etcd,
        freeipa: FreeipaIssuer::SubCa(ServiceCa::Etcd),
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

/// The plan, in the order a node makes its keys.
pub const PLAN: &[Row] = &[IDENTITY, ETCD];

/// The rows a node of `role` holds.
pub fn held_by(role: Role) -> impl Iterator<Item = &'static Row> {
    PLAN.iter().filter(move |row| row.holders.include(role))
}

/// The row for `purpose`.
pub fn row(purpose: CertPurpose) -> &'static Row {
    PLAN.iter()
        .find(|row| row.purpose == purpose)
        .expect("every purpose has a row (plan::tests)")
}

impl Row {
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
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const ALL_PURPOSES: [CertPurpose; 2] = [CertPurpose::Identity, CertPurpose::Etcd];

    #[test]
    fn every_purpose_has_exactly_one_row() {
        for purpose in ALL_PURPOSES {
            assert_eq!(
                PLAN.iter().filter(|r| r.purpose == purpose).count(),
                1,
                "{purpose}"
            );
            assert_eq!(row(purpose).purpose, purpose);
        }
        assert_eq!(PLAN.len(), ALL_PURPOSES.len());
    }

    #[test]
    fn no_two_rows_share_a_file_or_an_issuer() {
        let paths = Paths::under(std::path::Path::new("/n"));
        let mut files = BTreeSet::new();
        for row in PLAN {
            let slot = row.slot(&paths);
            for path in [slot.key, slot.cert, slot.ca] {
                assert!(files.insert(path.clone()), "{} twice", path.display());
            }
        }
        // What one purpose's holders trust is signed by no other row's
        // issuer, before handoff and after.
        let temporary: BTreeSet<_> = PLAN.iter().map(|r| r.issuer.temporary).collect();
        assert_eq!(temporary.len(), PLAN.len());
        let freeipa: Vec<_> = PLAN.iter().map(|r| r.issuer.freeipa).collect();
        for (i, a) in freeipa.iter().enumerate() {
            assert!(!freeipa[i + 1..].contains(a), "{a:?} issues two rows");
        }
    }

    #[test]
    fn a_worker_holds_its_identity_and_nothing_of_etcd() {
        let worker: Vec<_> = held_by(Role::Worker).map(|r| r.purpose).collect();
        assert_eq!(worker, [CertPurpose::Identity]);
        let core: Vec<_> = held_by(Role::Core).map(|r| r.purpose).collect();
        assert_eq!(core, [CertPurpose::Identity, CertPurpose::Etcd]);
    }

    #[test]
    fn every_freeipa_sub_ca_of_a_row_is_one_handoff_creates() {
        for row in PLAN {
            if let FreeipaIssuer::SubCa(ca) = row.issuer.freeipa {
                assert!(ServiceCa::ALL.contains(&ca), "{ca:?}");
            }
        }
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
    }
}
