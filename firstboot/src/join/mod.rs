//! Join: how nodes find and trust each other with no central driver
//! (ARCHITECTURE §4). The bootstrap host serves the join service; every
//! node serves the peer service, which answers the bootstrap host alone.

pub mod client;
pub mod peer;
pub mod protocol;
pub mod replay;
pub mod server;

use node_contract::identity::Purpose;
use node_contract::{NodeConfig, Seed, SigningKey, Ticket};

/// A reply's signed answer: a 200 whose body the node `ticket_of` names
/// signed over `nonce` for `purpose`, with a ticket of `site`'s. Anything
/// else is an error saying what came back.
pub fn signed_answer<T: serde::de::DeserializeOwned>(
    site: &protocol::Site,
    reply: &crate::https::Answer,
    nonce: &str,
    purpose: Purpose,
    ticket_of: impl Fn(&T) -> &Ticket,
) -> anyhow::Result<T> {
    if reply.status != 200 {
        anyhow::bail!(
            "answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        );
    }
    let proof = reply
        .headers
        .get(protocol::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    site.check_answer(&reply.body, proof, nonce, purpose, ticket_of)
        .map_err(|r| anyhow::anyhow!("{r}"))
}

/// This node's credentials: its signing key and the site's ticket for it.
pub struct Credentials {
    pub key: SigningKey,
    pub ticket: Ticket,
    /// The key's seed.
    pub seed: Seed,
    /// The bootstrap host's CA-copy key (`backup`); none elsewhere.
    pub backup_key: Option<Seed>,
}

impl Clone for Credentials {
    fn clone(&self) -> Credentials {
        Credentials {
            key: SigningKey::from_seed(&self.seed),
            ticket: self.ticket.clone(),
            seed: self.seed.clone(),
            backup_key: self.backup_key.clone(),
        }
    }
}

impl Credentials {
    pub fn of(config: &NodeConfig) -> Credentials {
        Credentials {
            key: config.signing_key(),
            ticket: config.ticket(),
            seed: config.identity.key.clone(),
            backup_key: config.identity.ca_backup_key.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
