//! `firstboot renew` (firstboot-renew.timer): this node renews its own
//! temporary certificates once two thirds of their life have passed, or at
//! once if they are unusable (an expired certificate is never kept). The
//! bootstrap host certifies itself from its CAs; the others ask the join
//! service with their key, keeping their private keys. Files are replaced
//! whole; etcd reads them at every new connection, so nothing restarts.

use anyhow::{Context, Result};
use node_contract::Phase;

use crate::certs::Plan;
use crate::paths::Paths;
use crate::state::State;

/// What a renewal run did, for its log line and for tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewed {
    NotJoined,
    NothingDue,
    Renewed,
}

/// Renew this node's certificates of `plan` (`certs::PLAN`, or a test's).
pub async fn run(paths: &Paths, plan: Plan) -> Result<Renewed> {
    let config = crate::check::load(&paths.node_json())?;
    let state = State::load(&paths.state_file())?;
    if !state.is_done(Phase::Join) {
        return Ok(Renewed::NotJoined);
    }
    if !crate::certs::any_due(paths, &config, plan) {
        return Ok(Renewed::NothingDue);
    }
    if config.is_bootstrap() {
        let domain = config.site.domain.as_str();
        let ca = crate::pki::TempCa::load_current(&paths.ca_dir(), domain, &plan.intermediates())?
            .context("the bootstrap host's temporary CA is gone")?;
        crate::certs::ensure_from_temporary(paths, &config, plan, &ca)?;
        return Ok(Renewed::Renewed);
    }
    let own = state
        .address
        .context("identify did not record this node's address")?;
    let bootstrap = crate::state::bootstrap_address(paths, &state)
        .context("join did not record the join service's address")?;
    crate::join::client::enroll(paths, &config, plan, bootstrap, own)
        .await
        .with_context(|| format!("cannot renew through the join service at {bootstrap}"))?;
    Ok(Renewed::Renewed)
}
