//! The lock server's decisions: who asks (from its certificate), whether
//! the id and group are its own, whether the site is assembled, and the
//! health gates around the semaphore.

use std::net::Ipv4Addr;

use node_contract::{HostName, Role};

use super::gates::{self, Probes};
use super::protocol::{kind, LockRequest, Operation, Refusal};
use super::store::{self, Holder, NodeRecord};
use crate::etcd::Client;

/// A node that asks, as its verified identity certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub node: HostName,
    pub role: Role,
    /// The address its connection came from.
    pub address: Ipv4Addr,
}

/// The reboot groups: one per role, each with its own slots.
pub fn group_of(role: Role) -> &'static str {
    node_contract::fleetlock::group(role)
}

/// How many nodes of a group may reboot at once. Core hosts: one, always
/// (three etcd members survive one down, FreeIPA needs another server).
/// Workers: a quarter of them, at least one, so that most of the public
/// face keeps serving.
pub fn slots(role: Role, workers: u32) -> usize {
    match role {
        Role::Core => 1,
        Role::Worker => (workers as usize / 4).max(1),
    }
}

/// What the lock server knows of the site.
#[derive(Debug, Clone)]
pub struct Site {
    pub core: Vec<HostName>,
    pub host_count: u32,
}

pub struct LockServer<P> {
    pub etcd: Client,
    pub site: Site,
    pub probes: P,
}

impl<P: Probes> LockServer<P> {
    /// Answer a checked FleetLock request from `caller`: Ok is 200.
    pub async fn decide(&self, caller: &Caller, request: &LockRequest) -> Result<(), Refusal> {
        let caller = &self.with_membership(caller).await?;
        let group = group_of(caller.role);
        if request.params.group != group {
            return Err(Refusal::new(
                403,
                kind::WRONG_GROUP,
                format!(
                    "{} is in group `{group}`, not `{}`",
                    caller.node, request.params.group
                ),
            ));
        }
        self.check_id(caller, &request.params.id).await?;
        match request.operation {
            Operation::PreReboot => self.pre_reboot(caller, &request.params.id).await,
            Operation::SteadyState => self.steady_state(caller).await,
        }
    }

    /// A caller this server's config does not know as core is one if it
    /// is an etcd member: a core host added to the site after this node
    /// was launched (its config, like every running node's, names the
    /// core hosts of the first launch). Taken for a worker, it would get
    /// a worker's slot beside a core host's and two members could go at
    /// once. When etcd cannot say, nothing is decided.
    async fn with_membership(&self, caller: &Caller) -> Result<Caller, Refusal> {
        if caller.role == Role::Core || self.site.core.contains(&caller.node) {
            return Ok(caller.clone());
        }
        let members = self.probes.members().await.map_err(|e| {
            Refusal::new(
                503,
                kind::ETCD_UNHEALTHY,
                format!("cannot tell whether {} is an etcd member: {e}", caller.node),
            )
        })?;
        let member = members.iter().any(|m| m.name == caller.node.as_str());
        Ok(Caller {
            role: if member { Role::Core } else { Role::Worker },
            ..caller.clone()
        })
    }

    /// The id must be the one this node registered (Zincati's
    /// app-specific machine id, which its relay computed on the node).
    async fn check_id(&self, caller: &Caller, id: &str) -> Result<(), Refusal> {
        let record = store::node(&self.etcd, &caller.node)
            .await
            .map_err(|e| Refusal::new(503, kind::STORE_UNAVAILABLE, format!("{e:#}")))?;
        match record {
            None => Err(Refusal::new(
                403,
                kind::FORBIDDEN,
                format!("{} has not registered its Zincati id yet", caller.node),
            )),
            Some(record) if record.address != caller.address => Err(Refusal::new(
                403,
                kind::FORBIDDEN,
                format!(
                    "{} registered from {}, and this request comes from {}",
                    caller.node, record.address, caller.address
                ),
            )),
            Some(record) if record.id != id => Err(Refusal::new(
                403,
                kind::FORBIDDEN,
                format!(
                    "`{}` is not {}'s id: a node asks only about itself",
                    id.escape_debug(),
                    caller.node
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    async fn pre_reboot(&self, caller: &Caller, id: &str) -> Result<(), Refusal> {
        store::assembled(&self.etcd, self.site.host_count).await?;
        let workers = self
            .site
            .host_count
            .saturating_sub(self.site.core.len() as u32);
        let holder = Holder {
            node: caller.node.clone(),
            id: id.to_owned(),
            since: crate::status::now(),
        };
        let group = group_of(caller.role);
        let gate = || async {
            match caller.role {
                Role::Core => self.core_can_go(&caller.node).await,
                Role::Worker => Ok(()),
            }
        };
        store::lock(&self.etcd, group, slots(caller.role, workers), holder, gate).await
    }

    async fn steady_state(&self, caller: &Caller) -> Result<(), Refusal> {
        let gate = || async {
            match caller.role {
                Role::Core => self.core_is_back(&caller.node).await,
                Role::Worker => Ok(()),
            }
        };
        store::unlock(&self.etcd, group_of(caller.role), &caller.node, gate).await
    }

    /// A core host may go: etcd can spare a member and another FreeIPA
    /// server is healthy. (That no other core host holds the lock is the
    /// core group's single slot.)
    async fn core_can_go(&self, node: &HostName) -> Result<(), Refusal> {
        let views = self
            .probes
            .etcd()
            .await
            .map_err(|e| Refusal::new(503, kind::ETCD_UNHEALTHY, e))?;
        gates::etcd_can_spare_one(&views)
            .map_err(|e| Refusal::new(503, kind::ETCD_UNHEALTHY, e))?;
        let mut down = Vec::new();
        for other in self.site.core.iter().filter(|c| *c != node) {
            match self.probes.freeipa(other).await {
                Ok(()) => return Ok(()),
                Err(e) => down.push(e),
            }
        }
        Err(Refusal::new(
            503,
            kind::FREEIPA_UNHEALTHY,
            format!(
                "no other FreeIPA server is healthy ({})",
                if down.is_empty() {
                    "there is none".to_owned()
                } else {
                    down.join("; ")
                }
            ),
        ))
    }

    /// A core host is back: its etcd member and its FreeIPA server are
    /// healthy again.
    async fn core_is_back(&self, node: &HostName) -> Result<(), Refusal> {
        let unhealthy = |e: String| Refusal::new(503, kind::NODE_UNHEALTHY, e);
        let views = self.probes.etcd().await.map_err(unhealthy)?;
        gates::member_is_back(&views, node).map_err(unhealthy)?;
        self.probes.freeipa(node).await.map_err(unhealthy)
    }

    /// A node registers its id and whether it is assembled, from the
    /// address it asks from.
    pub async fn register(
        &self,
        caller: &Caller,
        id: &str,
        assembled: bool,
    ) -> Result<(), Refusal> {
        if !is_app_id(id) {
            return Err(Refusal::new(
                400,
                kind::BAD_REQUEST,
                "the id is not 32 lower-case hex digits",
            ));
        }
        let record = NodeRecord {
            id: id.to_owned(),
            assembled,
            address: caller.address,
        };
        store::register(&self.etcd, &caller.node, &record)
            .await
            .map_err(|e| Refusal::new(503, kind::STORE_UNAVAILABLE, format!("{e:#}")))
    }
}

/// Zincati's id format: 32 lower-case hex digits.
pub fn is_app_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
