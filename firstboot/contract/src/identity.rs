//! Node identity: who a node is, proven without any secret shared between
//! nodes (ARCHITECTURE §4).
//!
//! The operator's vault holds the site's signing key; it never leaves the
//! operator's machine. `builder render` gives every node a key pair of its
//! own (Ed25519) and a **ticket**: the site key's signature over the
//! node's name, role and public key. A node proves who it is by showing
//! its ticket and signing a fresh message with its own key; anyone holding
//! the site's *public* key checks both. So a node's user data lets its
//! reader act as that node and no other, and the bootstrap host's config
//! holds one public key whatever the size of the site.
//!
//! A ticket also carries the node's **generation**: 1 when the site is
//! first launched, raised by the operator (`builder destroy --host`) each
//! time the host's credential is retired. The generation is signed, and
//! every service keeps the highest it has seen for a name and refuses any
//! lower one, so a copy of a retired node's user data opens nothing, and
//! a registered name moves only for a newer credential, never because the
//! old address went silent (ARCHITECTURE §4).
//!
//! Every signed message is domain-separated: a label naming its purpose,
//! then each part length-prefixed, so a signature made for one purpose
//! can never be replayed as another.

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::{DomainName, HostName};
use crate::Role;

/// Fixed-size byte strings carried as hex in JSON.
macro_rules! hex_bytes {
    ($name:ident, $len:expr) => {
        impl $name {
            pub const LEN: usize = $len;

            pub fn from_bytes(bytes: [u8; $len]) -> $name {
                $name(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn from_hex(text: &str) -> Result<$name, String> {
                let bytes = hex::decode(text.trim())
                    .map_err(|_| format!("`{}` is not hex", abbreviate(text)))?;
                let array: [u8; $len] = bytes.try_into().map_err(|b: Vec<u8>| {
                    format!("{} bytes where {} are expected", b.len(), $len)
                })?;
                Ok($name(array))
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn abbreviate(text: &str) -> String {
    let mut short: String = text.chars().take(16).collect();
    if text.chars().count() > 16 {
        short.push('…');
    }
    short
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);
hex_bytes!(PublicKey, 32);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);
hex_bytes!(Signature, 64);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &self.to_hex()[..16])
    }
}

/// The 32-byte seed of an Ed25519 private key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed([u8; 32]);
hex_bytes!(Seed, 32);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed([private])")
    }
}

/// How many times the operator has issued a host's credential: 1 at the
/// first launch, raised each time the host is retired (destroyed to be
/// launched again). Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Generation(u32);

impl Generation {
    pub const FIRST: Generation = Generation(1);

    pub fn new(n: u32) -> Result<Generation, String> {
        if n == 0 {
            Err("a generation counts from 1".into())
        } else {
            Ok(Generation(n))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The generation that retires this one.
    pub fn next(self) -> Generation {
        Generation(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Generation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Generation::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a signature is for. Each purpose has its own label, so no
/// signature can be taken for another purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The site key vouching for a node (name, role, generation, public
    /// key).
    Ticket,
    /// A node asking the join service to admit it or renew its
    /// certificates (the request body).
    JoinRequest,
    /// The bootstrap host answering one join request (nonce, body).
    JoinAnswer,
    /// The bootstrap host asking a peer whether a cluster exists, or
    /// whether it still answers as a registered node (the request body).
    PeerRequest,
    /// A peer answering one such request (nonce, body).
    PeerAnswer,
    /// A joined node asking the bootstrap host for its FreeIPA enrollment
    /// (a one-time password), the request body.
    EnrollRequest,
    /// The bootstrap host answering it (nonce, body).
    EnrollAnswer,
    /// A joined node reporting its handoff step (the request body).
    HandoffReport,
    /// The bootstrap host answering it with every node's (nonce, body).
    HandoffAnswer,
    /// The site key letting one credential (name, generation, key) join
    /// until a time of its own: a host added after the site's first
    /// admission window closed (see [`Admission`]).
    Admission,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Ticket => b"firstboot node ticket v3\0",
            Purpose::JoinRequest => b"firstboot join request v2\0",
            Purpose::JoinAnswer => b"firstboot join answer v2\0",
            Purpose::PeerRequest => b"firstboot peer request v2\0",
            Purpose::PeerAnswer => b"firstboot peer answer v2\0",
            Purpose::EnrollRequest => b"firstboot enroll request v2\0",
            Purpose::EnrollAnswer => b"firstboot enroll answer v2\0",
            Purpose::HandoffReport => b"firstboot handoff report v1\0",
            Purpose::HandoffAnswer => b"firstboot handoff answer v1\0",
            Purpose::Admission => b"firstboot admission v1\0",
        }
    }
}

/// The exact bytes signed for `purpose` over `parts`.
fn message(purpose: Purpose, parts: &[&[u8]]) -> Vec<u8> {
    let label = purpose.label();
    let mut out =
        Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 8).sum::<usize>());
    out.extend_from_slice(label);
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A private signing key: a node's own, or (in builder) the site's.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?})", self.public_key())
    }
}

impl SigningKey {
    pub fn from_seed(seed: &Seed) -> SigningKey {
        SigningKey {
            pair: Ed25519KeyPair::from_seed_unchecked(seed.as_bytes())
                .expect("any 32 bytes are an Ed25519 seed"),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        let bytes: [u8; 32] = self
            .pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        PublicKey(bytes)
    }

    pub fn sign(&self, purpose: Purpose, parts: &[&[u8]]) -> Signature {
        let sig: [u8; 64] = self
            .pair
            .sign(&message(purpose, parts))
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes");
        Signature(sig)
    }

    /// The site key's ticket for a node (builder only: the site key never
    /// leaves the operator's machine).
    pub fn ticket(
        &self,
        domain: &DomainName,
        node: &HostName,
        role: Role,
        generation: Generation,
        node_key: PublicKey,
    ) -> Ticket {
        let parts = ticket_parts(domain, node, role, generation, &node_key);
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let signature = self.sign(Purpose::Ticket, &parts);
        Ticket {
            node: node.clone(),
            role,
            generation,
            public_key: node_key,
            signature,
        }
    }

    /// The site key's admission for a ticket's credential, until
    /// `not_after` (builder only, as for tickets).
    pub fn admission(&self, domain: &DomainName, ticket: &Ticket, not_after: u64) -> Admission {
        let parts = admission_parts(domain, ticket, not_after);
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        Admission {
            not_after,
            signature: self.sign(Purpose::Admission, &parts),
        }
    }
}

impl PublicKey {
    /// Whether `signature` is this key's over `parts` for `purpose`.
    pub fn verifies(&self, purpose: Purpose, parts: &[&[u8]], signature: &Signature) -> bool {
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(&message(purpose, parts), signature.as_bytes())
            .is_ok()
    }
}

fn ticket_parts(
    domain: &DomainName,
    node: &HostName,
    role: Role,
    generation: Generation,
    key: &PublicKey,
) -> Vec<Vec<u8>> {
    vec![
        domain.as_str().as_bytes().to_vec(),
        node.as_str().as_bytes().to_vec(),
        role.as_str().as_bytes().to_vec(),
        generation.0.to_be_bytes().to_vec(),
        key.as_bytes().to_vec(),
    ]
}

/// The site's word that `public_key` belongs to `node`, which has `role`,
/// in the node's `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    pub node: HostName,
    pub role: Role,
    pub generation: Generation,
    pub public_key: PublicKey,
    pub signature: Signature,
}

/// Why a ticket or a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgery {
    /// The ticket is not signed by this site's key.
    Ticket(HostName),
    /// The message is not signed by the key its ticket names.
    Message(HostName),
    /// The admission is not the site's for this credential.
    Admission(HostName),
}

impl fmt::Display for Forgery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forgery::Ticket(n) => {
                write!(f, "the ticket for `{n}` is not signed by this site's key")
            }
            Forgery::Message(n) => write!(f, "the message is not signed by `{n}`'s key"),
            Forgery::Admission(n) => write!(
                f,
                "the admission `{n}` shows is not signed by this site's key for its credential"
            ),
        }
    }
}

impl std::error::Error for Forgery {}

impl Ticket {
    /// Check the site's signature on this ticket.
    pub fn verify(&self, site_key: &PublicKey, domain: &DomainName) -> Result<(), Forgery> {
        let parts = ticket_parts(
            domain,
            &self.node,
            self.role,
            self.generation,
            &self.public_key,
        );
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        if site_key.verifies(Purpose::Ticket, &parts, &self.signature) {
            Ok(())
        } else {
            Err(Forgery::Ticket(self.node.clone()))
        }
    }

    /// Check the ticket, then that `signature` over `parts` is its node's.
    pub fn verify_message(
        &self,
        site_key: &PublicKey,
        domain: &DomainName,
        purpose: Purpose,
        parts: &[&[u8]],
        signature: &Signature,
    ) -> Result<(), Forgery> {
        self.verify(site_key, domain)?;
        if self.public_key.verifies(purpose, parts, signature) {
            Ok(())
        } else {
            Err(Forgery::Message(self.node.clone()))
        }
    }
}

/// How long a host that never joined may still join: the bootstrap
/// host's window for the hosts it was launched with, from its first
/// start, and each [`Admission`]'s, from the `builder launch` that gave
/// it. A site assembles in minutes.
pub const ADMISSION_WINDOW: u64 = 6 * 3600;

fn admission_parts(domain: &DomainName, ticket: &Ticket, not_after: u64) -> Vec<Vec<u8>> {
    vec![
        domain.as_str().as_bytes().to_vec(),
        ticket.node.as_str().as_bytes().to_vec(),
        ticket.generation.0.to_be_bytes().to_vec(),
        ticket.public_key.as_bytes().to_vec(),
        not_after.to_be_bytes().to_vec(),
    ]
}

/// The site's word that one credential (its ticket's name, generation and
/// key) may join the site until `not_after`, Unix seconds.
///
/// The bootstrap host admits the hosts it was launched with during a
/// window that closes 6 hours after it first started, and never more
/// than that many: its own config, which a running droplet cannot
/// change, says so. A host the operator adds to `hosts.yaml` later is
/// admitted by this instead, which `builder launch` signs with the site
/// key, whose window is its own: a copy of user data that never joined
/// stops being an invitation when the window closes, as for the first
/// hosts. It only admits a name not yet registered; a registered name
/// moves only by a newer generation, as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    pub not_after: u64,
    pub signature: Signature,
}

impl Admission {
    /// Check the site's signature over this admission for `ticket`'s
    /// credential (the ticket itself is checked apart).
    pub fn verify(
        &self,
        site_key: &PublicKey,
        domain: &DomainName,
        ticket: &Ticket,
    ) -> Result<(), Forgery> {
        let parts = admission_parts(domain, ticket, self.not_after);
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        if site_key.verifies(Purpose::Admission, &parts, &self.signature) {
            Ok(())
        } else {
            Err(Forgery::Admission(ticket.node.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> Seed {
        Seed::from_bytes([n; 32])
    }

    #[test]
    fn tickets_verify_under_their_site_key_only() {
        let domain = DomainName::parse("example.com").unwrap();
        let ns2 = HostName::parse("ns2").unwrap();
        let site = SigningKey::from_seed(&seed(1));
        let node = SigningKey::from_seed(&seed(2));
        let g1 = Generation::FIRST;
        let ticket = site.ticket(&domain, &ns2, Role::Core, g1, node.public_key());
        assert_eq!(ticket.verify(&site.public_key(), &domain), Ok(()));
        let mut raised = ticket.clone();
        raised.generation = g1.next();
        assert!(
            raised.verify(&site.public_key(), &domain).is_err(),
            "a ticket's generation raised by its holder"
        );

        let other_site = SigningKey::from_seed(&seed(3));
        assert!(ticket.verify(&other_site.public_key(), &domain).is_err());
        let other_domain = DomainName::parse("example.org").unwrap();
        assert!(ticket.verify(&site.public_key(), &other_domain).is_err());

        let mut promoted = site.ticket(&domain, &ns2, Role::Worker, g1, node.public_key());
        promoted.role = Role::Core;
        assert!(promoted.verify(&site.public_key(), &domain).is_err());
        let mut renamed = ticket.clone();
        renamed.node = HostName::parse("ns3").unwrap();
        assert!(renamed.verify(&site.public_key(), &domain).is_err());
        let mut rekeyed = ticket.clone();
        rekeyed.public_key = SigningKey::from_seed(&seed(9)).public_key();
        assert!(rekeyed.verify(&site.public_key(), &domain).is_err());
    }

    #[test]
    fn admissions_bind_one_credential_and_its_window() {
        let domain = DomainName::parse("example.com").unwrap();
        let site = SigningKey::from_seed(&seed(1));
        let g1 = Generation::FIRST;
        let www = HostName::parse("www").unwrap();
        let ticket = site.ticket(
            &domain,
            &www,
            Role::Worker,
            g1,
            SigningKey::from_seed(&seed(2)).public_key(),
        );
        let admission = site.admission(&domain, &ticket, 1_000);
        assert_eq!(
            admission.verify(&site.public_key(), &domain, &ticket),
            Ok(())
        );

        let mut extended = admission.clone();
        extended.not_after += 1;
        let refused = Err(Forgery::Admission(www.clone()));
        assert_eq!(
            extended.verify(&site.public_key(), &domain, &ticket),
            refused,
            "a window extended by its holder"
        );
        // Another credential of the same name (a later generation, or
        // another key) is not admitted by it, nor another name.
        let next = site.ticket(&domain, &www, Role::Worker, g1.next(), ticket.public_key);
        assert_eq!(
            admission.verify(&site.public_key(), &domain, &next),
            refused
        );
        let rekeyed = site.ticket(
            &domain,
            &www,
            Role::Worker,
            g1,
            SigningKey::from_seed(&seed(3)).public_key(),
        );
        assert_eq!(
            admission.verify(&site.public_key(), &domain, &rekeyed),
            refused
        );
        let mail = HostName::parse("mail").unwrap();
        let other = site.ticket(&domain, &mail, Role::Worker, g1, ticket.public_key);
        assert!(admission
            .verify(&site.public_key(), &domain, &other)
            .is_err());
        let other_site = SigningKey::from_seed(&seed(4));
        assert!(admission
            .verify(&other_site.public_key(), &domain, &ticket)
            .is_err());
        // Nor is a ticket's signature taken for an admission.
        let as_admission = Admission {
            not_after: 1_000,
            signature: ticket.signature,
        };
        assert!(as_admission
            .verify(&site.public_key(), &domain, &ticket)
            .is_err());
    }

    #[test]
    fn messages_are_bound_to_their_purpose_and_parts() {
        let domain = DomainName::parse("example.com").unwrap();
        let site = SigningKey::from_seed(&seed(1));
        let node = SigningKey::from_seed(&seed(2));
        let ticket = site.ticket(
            &domain,
            &HostName::parse("www").unwrap(),
            Role::Worker,
            Generation::FIRST,
            node.public_key(),
        );
        let sig = node.sign(Purpose::JoinRequest, &[b"body"]);
        let check = |purpose, parts: &[&[u8]], sig: &Signature| {
            ticket.verify_message(&site.public_key(), &domain, purpose, parts, sig)
        };
        assert_eq!(check(Purpose::JoinRequest, &[b"body"], &sig), Ok(()));
        assert!(check(Purpose::PeerRequest, &[b"body"], &sig).is_err());
        assert!(check(Purpose::JoinRequest, &[b"bodY"], &sig).is_err());
        // Moving bytes between parts changes the message.
        assert!(check(Purpose::JoinRequest, &[b"bo", b"dy"], &sig).is_err());
        let stranger = SigningKey::from_seed(&seed(7)).sign(Purpose::JoinRequest, &[b"body"]);
        assert!(check(Purpose::JoinRequest, &[b"body"], &stranger).is_err());
    }

    #[test]
    fn generations_count_from_one() {
        assert!(Generation::new(0).is_err());
        assert!(serde_json::from_str::<Generation>("0").is_err());
        assert!(serde_json::from_str::<Generation>("-1").is_err());
        let g: Generation = serde_json::from_str("7").unwrap();
        assert_eq!(g.get(), 7);
        assert!(g.next() > g);
        assert_eq!(serde_json::to_string(&g).unwrap(), "7");
    }

    #[test]
    fn hex_round_trips_and_refuses_wrong_lengths() {
        let key = SigningKey::from_seed(&seed(5)).public_key();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
        assert!(PublicKey::from_hex("abcd").is_err());
        assert!(PublicKey::from_hex("zz").is_err());
        assert!(!format!("{:?}", seed(5)).contains("0505"));
    }

    #[test]
    fn seeds_give_the_keys_an_independent_implementation_gives() {
        // RFC 8032, section 7.1, TEST 1: secret key and public key.
        let seed =
            Seed::from_hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap();
        assert_eq!(
            SigningKey::from_seed(&seed).public_key().to_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}
