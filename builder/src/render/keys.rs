//! The site's keys, derived on the operator's machine from the vault's
//! root secret, so that rendering stays a pure function of the site and
//! the vault (the same inputs give byte-identical configs).
//!
//! The root secret and the site signing key never leave this machine.
//! Each node's config carries that node's own private key and the site's
//! ticket for it; from those nothing about any other node's key can be
//! computed (each seed is an HMAC of the root secret, which no node has).

use hmac::{Hmac, Mac};
use node_contract::{DomainName, Generation, HostName, Role, Seed, SigningKey, Ticket};
use sha2::Sha256;

/// The keys of one site.
pub struct SiteKeys {
    root: Vec<u8>,
    site: SigningKey,
}

impl SiteKeys {
    /// Derive from the vault's root secret.
    pub fn derive(root_secret: &str) -> SiteKeys {
        let root = root_secret.as_bytes().to_vec();
        let site = SigningKey::from_seed(&derive(&root, b"site signing key", b""));
        SiteKeys { root, site }
    }

    /// The site's public key, which every node gets.
    pub fn site_public_key(&self) -> node_contract::PublicKey {
        self.site.public_key()
    }

    /// The site signing key's seed: it never leaves the operator's
    /// machine (tests search every rendered config for it).
    pub fn site_seed(&self) -> Seed {
        derive(&self.root, b"site signing key", b"")
    }

    /// One node's private key seed and the site's ticket for it, in its
    /// `generation`: each generation has a key of its own, so retiring a
    /// host's credential retires its key too.
    pub fn node(
        &self,
        domain: &DomainName,
        node: &HostName,
        role: Role,
        generation: Generation,
    ) -> (Seed, Ticket) {
        let mut name = node.as_str().as_bytes().to_vec();
        name.push(0);
        name.extend_from_slice(&generation.get().to_be_bytes());
        let seed = derive(&self.root, b"node key", &name);
        let public = SigningKey::from_seed(&seed).public_key();
        let ticket = self.site.ticket(domain, node, role, generation, public);
        (seed, ticket)
    }

    /// The site's admission of `ticket`'s credential until `not_after`.
    pub fn admission(
        &self,
        domain: &DomainName,
        ticket: &Ticket,
        not_after: u64,
    ) -> node_contract::Admission {
        self.site.admission(domain, ticket, not_after)
    }

    /// The key the bootstrap host seals its temporary CAs' copy under.
    /// It does not change with the bootstrap host's generation: a rebuilt
    /// bootstrap host opens the copy its predecessor sealed (and peers
    /// hand copies only to the bootstrap host's newest generation).
    pub fn ca_backup(&self, bootstrap: &HostName) -> Seed {
        derive(&self.root, b"ca backup key", bootstrap.as_str().as_bytes())
    }
}

fn derive(root: &[u8], purpose: &[u8], name: &[u8]) -> Seed {
    let mut mac = Hmac::<Sha256>::new_from_slice(root).expect("HMAC takes keys of any length");
    mac.update(b"builder key derivation v2\0");
    mac.update(&(purpose.len() as u64).to_be_bytes());
    mac.update(purpose);
    mac.update(&(name.len() as u64).to_be_bytes());
    mac.update(name);
    Seed::from_bytes(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_distinct_and_vouched_for() {
        let domain = DomainName::parse("example.com").unwrap();
        let ns1 = HostName::parse("ns1").unwrap();
        let ns2 = HostName::parse("ns2").unwrap();
        let g1 = Generation::FIRST;
        let keys = SiteKeys::derive("root secret");
        let (seed1, ticket1) = keys.node(&domain, &ns1, Role::Core, g1);
        let (seed1_again, _) = SiteKeys::derive("root secret").node(&domain, &ns1, Role::Core, g1);
        assert_eq!(seed1, seed1_again);
        let (seed2, _) = keys.node(&domain, &ns2, Role::Core, g1);
        assert_ne!(seed1, seed2);
        let (other, _) = SiteKeys::derive("another root").node(&domain, &ns1, Role::Core, g1);
        assert_ne!(seed1, other);
        let (retired, ticket2) = keys.node(&domain, &ns1, Role::Core, g1.next());
        assert_ne!(seed1, retired, "a new generation keeps the old key");
        assert_eq!(ticket2.generation, g1.next());
        assert_eq!(ticket2.verify(&keys.site_public_key(), &domain), Ok(()));
        assert_ne!(keys.ca_backup(&ns1), seed1);
        assert_ne!(keys.ca_backup(&ns1), keys.ca_backup(&ns2));
        assert_eq!(ticket1.verify(&keys.site_public_key(), &domain), Ok(()));
        assert_eq!(
            ticket1.public_key,
            SigningKey::from_seed(&seed1).public_key()
        );
    }
}
