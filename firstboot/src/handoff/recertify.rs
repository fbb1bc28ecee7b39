//! etcd re-certified from a new CA, one member at a time, never losing
//! quorum or a write (ARCHITECTURE §5, phase 6; §8: etcd re-reads its
//! leaf certificate at every handshake but builds its trusted-CA pool
//! once, at start).
//!
//! Every core host runs [`Roll::run`] for its own member; they agree
//! through etcd itself, with no driver:
//! 1. **bundle**: its trust file becomes old CA + new CA, and its member
//!    restarts to read it;
//! 2. **leaf**: once every member trusts both, it presents a certificate
//!    from the new CA (same key, the file replaced whole; no restart);
//! 3. **dropped**: once every member presents a new certificate, its
//!    trust file becomes the new CA alone, and its member restarts.
//!
//! A member restarts only while it holds the restart lock (a key created
//! by compare-and-swap: one member at a time) and only when every member
//! is healthy, agrees on the leader and has applied what the leader had
//! ([`Gate`]); it releases the lock once its own member is back and
//! caught up. Each step done is recorded in etcd, so a node killed at any
//! point resumes: it finds its step, and a lock it holds is still its own.
//! A lock whose holder is silent is never taken over (silence is not
//! evidence): the holder resumes it when it comes back.
//!
//! Because the barrier before step 3 waits for every member's step 2,
//! no member ever trusts only the new CA while another still presents an
//! old certificate; because step 1 waits for nothing, and a member's own
//! client (firstboot, on the same files) trusts what its member trusts,
//! every client keeps working throughout.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::time::Instant;

use super::request::RequestSite;
use crate::certs::Slot;
use crate::etcd::{Client, Endpoint};

/// Where the core hosts agree on etcd's roll in a site (phase handoff):
/// each member's step and the restart lock.
pub const ROLL_PREFIX: &str = "/firstboot/handoff/etcd/";

pub use crate::certs::moved::Step;

/// This node's etcd member, restarted.
#[allow(async_fn_in_trait)]
pub trait Restart {
    async fn restart(&self) -> Result<()>;
}

/// The member as systemd runs it.
pub struct SystemdEtcd;

impl Restart for SystemdEtcd {
    async fn restart(&self) -> Result<()> {
        crate::system::systemctl(&["restart", "etcd.service"]).await
    }
}

/// Who certifies this member's key under the new CA: puts a certificate
/// for the slot's own key into the slot's certificate file (whole), and
/// leaves its trust file alone. The roll then checks it.
#[allow(async_fn_in_trait)]
pub trait Issue {
    async fn certify(&self, slot: &Slot, fqdn: &str) -> Result<()>;
}

/// certmonger, from FreeIPA's sub-CA for the service, which then keeps
/// renewing it (the certificate plan's renewal after handoff). The
/// request runs where this node's FreeIPA credentials are
/// ([`RequestSite`]: on a core host, in its FreeIPA server); the
/// certificate it writes there is checked under the sub-CA and for the
/// slot's key before it replaces the slot's.
pub struct FromFreeipa {
    pub site: RequestSite,
    /// The sub-CA (`etcd`) and its certificate.
    pub sub_ca: String,
    pub sub_ca_pem: String,
    /// The service's principal for this host: `etcd/<fqdn>@<REALM>`.
    pub principal: String,
    pub patience: Duration,
}

impl Issue for FromFreeipa {
    async fn certify(&self, slot: &Slot, fqdn: &str) -> Result<()> {
        // The key first, so certmonger certifies it instead of making one.
        let staged = self.site.stage_key(slot)?;
        let request = crate::certmonger::Request {
            id: format!("firstboot-{}", slot.purpose),
            ca: crate::certmonger::IPA.to_owned(),
            issuer: Some(self.sub_ca.clone()),
            profile: Some("caIPAserviceCert".to_owned()),
            principal: self.principal.clone(),
            dns: fqdn.to_owned(),
            subject: format!("CN={fqdn}"),
            key: staged.inside_key.clone(),
            cert: staged.inside_cert.clone(),
        };
        self.site
            .certmonger
            .ensure(&request, self.patience, Duration::from_secs(2))
            .await?;
        let cert = std::fs::read_to_string(&staged.host_cert).with_context(|| {
            format!(
                "certmonger says it issued {}, but {} cannot be read",
                request.id,
                staged.host_cert.display()
            )
        })?;
        slot.install_leaf(&cert, &self.sub_ca_pem, fqdn)
    }
}

/// How patient each wait is.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// For the other members to finish a step (each restarts in turn).
    pub barrier: Duration,
    /// For the restart lock, and for the cluster to be ready for a restart.
    pub lock: Duration,
    /// For this member to be back and caught up after its restart.
    pub back: Duration,
    pub poll: Duration,
}

pub const PATIENCE: Patience = Patience {
    barrier: Duration::from_secs(600),
    lock: Duration::from_secs(600),
    back: Duration::from_secs(180),
    poll: Duration::from_millis(250),
};

/// One member's part in the roll.
pub struct Roll<R, I> {
    /// This member's name (as the step keys and the lock carry it).
    pub me: String,
    /// Every voting member's name, this one included.
    pub members: Vec<String>,
    /// Each member's client endpoint, by the name in its certificate.
    pub endpoints: Vec<Endpoint>,
    /// This member's own endpoint.
    pub own: Endpoint,
    /// The plan's etcd row, on this node.
    pub slot: Slot,
    pub old_ca: String,
    pub new_ca: String,
    /// Where the roll's keys live in etcd (ends with `/`).
    pub prefix: String,
    pub restart: R,
    pub issuer: I,
    pub patience: Patience,
}

impl<R: Restart, I: Issue> Roll<R, I> {
    /// Every step not done yet, in order; `progress` hears each.
    pub async fn run(&self, progress: &mut dyn FnMut(Step)) -> Result<()> {
        for step in Step::ALL {
            if self.step_of(&self.me).await? >= Some(step) {
                continue;
            }
            progress(step);
            if let Some(previous) = step.previous() {
                self.barrier(previous).await?;
            }
            match step {
                Step::Bundle => {
                    let bundle = format!("{}\n{}", self.old_ca.trim_end(), self.new_ca.trim_end());
                    self.write_trust(&bundle)?;
                    self.restart_in_turn(step).await?;
                }
                Step::Leaf => {
                    self.new_leaf().await?;
                    self.record(step).await?;
                }
                Step::Dropped => {
                    self.write_trust(&self.new_ca)?;
                    self.restart_in_turn(step).await?;
                }
            }
            tracing::info!(
                phase = "handoff",
                step = step.as_str(),
                "etcd: {} done",
                step.as_str()
            );
        }
        Ok(())
    }

    /// A client on this node's files as they are now (they change between
    /// steps), asking every member.
    fn client(&self) -> Result<Client> {
        Client::for_slot(&self.slot, self.endpoints.clone())
    }

    fn step_key(&self, member: &str) -> Vec<u8> {
        format!("{}step/{member}", self.prefix).into_bytes()
    }

    fn lock_key(&self) -> Vec<u8> {
        format!("{}restart-lock", self.prefix).into_bytes()
    }

    /// The last step `member` recorded. A value this version does not
    /// know is an error, never "nothing done".
    async fn step_of(&self, member: &str) -> Result<Option<Step>> {
        match self.client()?.get(&self.step_key(member)).await? {
            None => Ok(None),
            Some(kv) => Step::parse(&kv.value).map(Some).ok_or_else(|| {
                anyhow!(
                    "etcd holds a step for {member} this firstboot does not know: {:?}",
                    String::from_utf8_lossy(&kv.value)
                )
            }),
        }
    }

    async fn record(&self, step: Step) -> Result<()> {
        self.client()?
            .put(&self.step_key(&self.me), step.as_str().as_bytes())
            .await?;
        Ok(())
    }

    fn write_trust(&self, pem: &str) -> Result<()> {
        crate::fsutil::write_atomic(
            &self.slot.ca,
            format!("{}\n", pem.trim_end()).as_bytes(),
            0o644,
        )
    }

    /// Until every member has recorded `step`; bounded.
    async fn barrier(&self, step: Step) -> Result<()> {
        let deadline = Instant::now() + self.patience.barrier;
        loop {
            let mut behind = Vec::new();
            for member in &self.members {
                if self.step_of(member).await? < Some(step) {
                    behind.push(member.as_str());
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("waiting for {} {}", behind.join(", "), step.waiting_for());
            }
            tokio::time::sleep(self.patience.poll).await;
        }
    }

    /// A certificate from the new CA for this member's own key, checked
    /// under the new CA once it is in place; the trust file is left as it
    /// is (the bundle).
    async fn new_leaf(&self) -> Result<()> {
        let fqdn = &self.own.name;
        self.issuer.certify(&self.slot, fqdn).await?;
        let cert = std::fs::read_to_string(&self.slot.cert)?;
        self.slot.check(&cert, &self.new_ca, fqdn)
    }

    /// Restart this member while holding the restart lock, with the
    /// cluster ready before and this member back after.
    async fn restart_in_turn(&self, step: Step) -> Result<()> {
        let lock = self.lock().await?;
        Gate::wait(self, "before restarting", self.patience.lock).await?;
        tracing::info!(
            phase = "handoff",
            step = step.as_str(),
            "etcd: restarting this member to read its trust file"
        );
        self.restart.restart().await?;
        Gate::wait(self, "after restarting", self.patience.back).await?;
        // The step is recorded before the lock is released, so a member
        // that sees the lock free sees this step done.
        self.record(step).await?;
        self.unlock(lock).await
    }

    /// The restart lock: created with this member's name, or found
    /// holding it already (a run that died while holding it).
    async fn lock(&self) -> Result<i64> {
        let deadline = Instant::now() + self.patience.lock;
        loop {
            let client = self.client()?;
            let key = self.lock_key();
            match client.get(&key).await? {
                Some(held) if held.value == self.me.as_bytes() => return Ok(held.mod_revision),
                Some(held) => {
                    if Instant::now() >= deadline {
                        bail!(
                            "waiting for {} to finish restarting its etcd member (it holds the \
                             restart lock)",
                            String::from_utf8_lossy(&held.value)
                        );
                    }
                }
                None => {
                    if client.compare_and_swap(&key, 0, self.me.as_bytes()).await? {
                        continue; // read back its revision
                    }
                }
            }
            tokio::time::sleep(self.patience.poll).await;
        }
    }

    async fn unlock(&self, revision: i64) -> Result<()> {
        if !self.client()?.delete_if(&self.lock_key(), revision).await? {
            bail!("the restart lock changed while this member held it");
        }
        Ok(())
    }
}

/// Ready for a member to restart (or back after one): every member
/// answers, all name the same leader, and each has applied what the
/// leader had when it was asked first.
pub struct Gate;

impl Gate {
    /// Whether the cluster is ready now; why not, if not.
    pub async fn check(client: &Client, endpoints: &[Endpoint]) -> Result<(), String> {
        let mut statuses = Vec::new();
        for endpoint in endpoints {
            match client.status(endpoint).await {
                Ok(status) => statuses.push((endpoint, status)),
                Err(e) => return Err(format!("{} does not answer: {e:#}", endpoint.name)),
            }
        }
        let Some((first, _)) = statuses.first() else {
            return Err("no member to ask".into());
        };
        let leader = statuses[0].1.leader;
        if leader == 0 {
            return Err(format!("{} knows no leader", first.name));
        }
        if let Some((e, s)) = statuses.iter().find(|(_, s)| s.leader != leader) {
            return Err(format!("{} names another leader ({:x})", e.name, s.leader));
        }
        if let Some((e, s)) = statuses.iter().find(|(_, s)| !s.errors.is_empty()) {
            return Err(format!("{} reports {}", e.name, s.errors.join(", ")));
        }
        let Some((leader_endpoint, _)) = statuses.iter().find(|(_, s)| s.member_id == leader)
        else {
            return Err(format!(
                "the leader {leader:x} is not among the members asked"
            ));
        };
        // The leader's index now; then every member must have applied at
        // least that much, asked after it.
        let target = client
            .status(leader_endpoint)
            .await
            .map_err(|e| format!("the leader does not answer: {e:#}"))?
            .raft_index;
        for endpoint in endpoints {
            let status = client
                .status(endpoint)
                .await
                .map_err(|e| format!("{} does not answer: {e:#}", endpoint.name))?;
            if status.raft_applied_index < target {
                return Err(format!(
                    "{} has applied {} of the leader's {target}",
                    endpoint.name, status.raft_applied_index
                ));
            }
        }
        // And a linearizable read goes through: there is a quorum.
        client
            .get(b"health")
            .await
            .map(|_| ())
            .map_err(|e| format!("no quorum read: {e:#}"))
    }

    async fn wait<R: Restart, I: Issue>(
        roll: &Roll<R, I>,
        when: &str,
        patience: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let why = match roll.client() {
                Ok(client) => match Gate::check(&client, &roll.endpoints).await {
                    Ok(()) => return Ok(()),
                    Err(why) => why,
                },
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("etcd is not ready {when}: {why}");
            }
            tokio::time::sleep(roll.patience.poll).await;
        }
    }
}

#[cfg(test)]
mod tests;
