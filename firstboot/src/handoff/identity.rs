//! Every node's identity (the TLS certificate of firstboot's own
//! services: join, peer, lock server, and the lock relay's client
//! certificate) moved from the temporary root to FreeIPA's `firstboot`
//! sub-CA: handoff's step 4 (`crate::handoff`), on every node, workers
//! included.
//!
//! The same three steps as etcd's roll ([`super::recertify`]): trust
//! the old and the new CA, present a certificate from the new, trust the
//! new alone. Unlike etcd, firstboot's services read their files at every
//! connection (`https::Identity`), so no step restarts anything; what
//! makes it safe is the order across nodes alone:
//! - nobody presents a new certificate before every node trusts the new
//!   CA (the barrier before step 2), so no handshake fails for it;
//! - nobody stops trusting the old CA before every node presents a new
//!   certificate (the barrier before step 3).
//!
//! The barriers span every registered node, and a worker cannot read
//! etcd, so every node reports its step to the join service and learns
//! every node's there ([`Book`]): signed both ways, over TLS checked
//! against the node's trust file of the moment. A node that does not
//! report holds every barrier (silence is not evidence); each wait is
//! bounded and the phase asks again. Each node keeps its own step in its
//! move record (`certs::moved`), so a node killed at any point resumes
//! at its step, and repeats at most the step it was in (each step is
//! idempotent: a file written whole, a certmonger request ensured).

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use node_contract::HostName;
use tokio::time::Instant;

use super::recertify::Issue;
use crate::certs::moved::{Moved, Step};
use crate::certs::Slot;
use crate::join::protocol::HandoffAnswer;
use crate::paths::Paths;

/// Where every node's identity step is kept: the join service.
#[allow(async_fn_in_trait)]
pub trait Book {
    /// Say this node's step (none before the first); hear every
    /// registered node's, and the sub-CA the identities move to.
    async fn report(&self, step: Option<Step>) -> Result<HandoffAnswer>;
}

/// The join service on the bootstrap host, as `join::client` asks it.
pub struct JoinService<'a> {
    pub paths: &'a Paths,
    pub config: &'a node_contract::NodeConfig,
    pub address: std::net::Ipv4Addr,
}

impl Book for JoinService<'_> {
    async fn report(&self, step: Option<Step>) -> Result<HandoffAnswer> {
        crate::join::client::handoff_report(self.paths, self.config, self.address, step).await
    }
}

/// How patient the roll's waits are.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// For the join service to have the sub-CA, and for every node to
    /// finish a step.
    pub barrier: Duration,
    pub poll: Duration,
}

pub const PATIENCE: Patience = Patience {
    barrier: Duration::from_secs(600),
    poll: Duration::from_secs(1),
};

/// One node's part in the roll.
pub struct Roll<'a, B, I> {
    pub paths: &'a Paths,
    pub me: HostName,
    /// This node's FQDN, which its certificate names.
    pub fqdn: String,
    /// The plan's identity row on this node.
    pub slot: Slot,
    /// What the staged files of [`Moved`] are, where certmonger writes.
    pub staged_cert: std::path::PathBuf,
    pub staged_key: std::path::PathBuf,
    pub book: B,
    /// Given the sub-CA's certificate, who certifies this node's key
    /// under it.
    pub issuer: &'a dyn Fn(&str) -> I,
    pub patience: Patience,
}

impl<B: Book, I: Issue> Roll<'_, B, I> {
    /// Every step not done yet, in order; `progress` hears each.
    pub async fn run(&self, progress: &mut dyn FnMut(Step)) -> Result<()> {
        let purpose = self.slot.purpose;
        let mut moved = match Moved::load(self.paths, purpose)? {
            Some(moved) if moved.done => return Ok(()),
            Some(moved) => moved,
            None => {
                let new_ca = self.sub_ca().await?;
                // What the node trusts now is the temporary root: kept
                // before anything changes, as the roll's "old" from here.
                let old_ca = std::fs::read_to_string(&self.slot.ca)
                    .with_context(|| format!("reading {}", self.slot.ca.display()))?;
                let moved = Moved {
                    old_ca,
                    new_ca,
                    staged_cert: self.staged_cert.clone(),
                    staged_key: self.staged_key.clone(),
                    done: false,
                    step: None,
                };
                moved.save(self.paths, purpose)?;
                moved
            }
        };
        // A node whose identity came from the sub-CA already (a host that
        // joined, or a bootstrap host rebuilt, once the move was done)
        // trusts the new CA alone from its start: it has nothing to roll
        // with the others, and waits for no one (who may be done, and
        // report no more); its certificate only moves to certmonger.
        let alone = moved.old_ca.trim() == moved.new_ca.trim();
        for step in Step::ALL {
            if moved.step >= Some(step) {
                continue;
            }
            progress(step);
            if let (Some(previous), false) = (step.previous(), alone) {
                self.barrier(moved.step, previous).await?;
            }
            match step {
                Step::Bundle if alone => self.write_trust(&moved.new_ca)?,
                Step::Bundle => self.write_trust(&format!(
                    "{}\n{}",
                    moved.old_ca.trim_end(),
                    moved.new_ca.trim_end()
                ))?,
                Step::Leaf => {
                    (self.issuer)(&moved.new_ca)
                        .certify(&self.slot, &self.fqdn)
                        .await?;
                    let cert = std::fs::read_to_string(&self.slot.cert)?;
                    self.slot.check(&cert, &moved.new_ca, &self.fqdn)?;
                }
                Step::Dropped => self.write_trust(&moved.new_ca)?,
            }
            moved.step = Some(step);
            moved.save(self.paths, purpose)?;
            tracing::info!(
                phase = "handoff",
                step = step.as_str(),
                "identity: {} done",
                step.as_str()
            );
        }
        // The last step said, so the others' barrier sees it at once.
        self.book.report(moved.step).await?;
        moved.done = true;
        moved.save(self.paths, purpose)?;
        Ok(())
    }

    /// The registered nodes that have not reported `step` yet, saying
    /// ours (`mine`): one report.
    pub async fn behind(&self, mine: Option<Step>, step: Step) -> Result<Vec<String>> {
        let answer = self.book.report(mine).await?;
        if !answer.identity.contains_key(&self.me) {
            bail!("the join service does not list this node among the registered ones");
        }
        Ok(answer
            .identity
            .iter()
            .filter(|(_, reported)| **reported < Some(step))
            .map(|(node, _)| node.to_string())
            .collect())
    }

    /// Until the bootstrap host says it ended the temporary services (the
    /// temporary DNS is then stopped: nothing routes to it any more). Run
    /// once this node's own move is done; bounded.
    pub async fn temporary_ended(&self) -> Result<HandoffAnswer> {
        let deadline = Instant::now() + self.patience.barrier;
        loop {
            let answer = self.book.report(Some(Step::Dropped)).await?;
            if answer.temporary_ended {
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                let behind: Vec<&str> = answer
                    .identity
                    .iter()
                    .filter(|(_, step)| **step < Some(Step::Dropped))
                    .map(|(node, _)| node.as_str())
                    .collect();
                bail!(
                    "the bootstrap host has not ended the temporary services after {}s (it \
                     waits for every node's move; not done: {})",
                    self.patience.barrier.as_secs(),
                    if behind.is_empty() {
                        "none".to_owned()
                    } else {
                        behind.join(", ")
                    }
                );
            }
            tokio::time::sleep(self.patience.poll).await;
        }
    }

    /// The sub-CA's certificate, once the join service has it; bounded.
    async fn sub_ca(&self) -> Result<String> {
        let deadline = Instant::now() + self.patience.barrier;
        loop {
            if let Some(pem) = self.book.report(None).await?.identity_ca {
                crate::pki::inspect(&pem)
                    .context("the join service's identity sub-CA is not a certificate")?;
                return Ok(pem);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the join service has no identity sub-CA after {}s (the bootstrap host's \
                     handoff makes it first)",
                    self.patience.barrier.as_secs()
                );
            }
            tokio::time::sleep(self.patience.poll).await;
        }
    }

    /// Until every registered node has reported `step`, saying ours
    /// (`mine`) each time; bounded.
    async fn barrier(&self, mine: Option<Step>, step: Step) -> Result<()> {
        let deadline = Instant::now() + self.patience.barrier;
        loop {
            let behind = self.behind(mine, step).await?;
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "waiting for {} {} (as each reports to the join service)",
                    behind.join(", "),
                    step.waiting_for()
                );
            }
            tokio::time::sleep(self.patience.poll).await;
        }
    }

    fn write_trust(&self, pem: &str) -> Result<()> {
        crate::fsutil::write_atomic(
            &self.slot.ca,
            format!("{}\n", pem.trim_end()).as_bytes(),
            0o644,
        )
    }
}

#[cfg(test)]
mod tests;
