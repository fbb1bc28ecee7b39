//! `firstboot renew` (firstboot-renew.timer): this node renews its own
//! temporary certificates once two thirds of their life have passed, or at
//! once if they are unusable (an expired certificate is never kept). The
//! bootstrap host certifies itself from its CAs; the others ask the join
//! service with their key, keeping their private keys. Files are replaced
//! whole; etcd reads them at every new connection, so nothing restarts.
//!
//! A certificate the handoff moved to FreeIPA is certmonger's: this run
//! copies certmonger's renewal into its slot, checked, and never signs it
//! from the temporary CA again (`certs::moved`).

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
    // certmonger's renewals first; a failed copy is told after the
    // temporary renewals, which it does not hold up.
    let synced = sync_moved(paths, &config, plan);
    let renewed = renew_temporary(paths, &config, plan, &state).await?;
    match (synced?, renewed) {
        (false, false) => Ok(Renewed::NothingDue),
        _ => Ok(Renewed::Renewed),
    }
}

/// The rows still from the temporary CA, when due: whether any was.
async fn renew_temporary(
    paths: &Paths,
    config: &node_contract::NodeConfig,
    plan: Plan,
    state: &State,
) -> Result<bool> {
    if !crate::certs::any_due(paths, config, plan) {
        return Ok(false);
    }
    if config.is_bootstrap() {
        let domain = config.site.domain.as_str();
        let ca = crate::pki::TempCa::load_current(&paths.ca_dir(), domain, &plan.intermediates())?
            .context("the bootstrap host's temporary CA is gone")?;
        crate::certs::ensure_from_temporary(paths, config, plan, &ca)?;
        return Ok(true);
    }
    let own = state
        .address
        .context("identify did not record this node's address")?;
    let bootstrap = crate::state::bootstrap_address(paths, state)
        .context("join did not record the join service's address")?;
    crate::join::client::enroll(paths, config, plan, bootstrap, own)
        .await
        .with_context(|| format!("cannot renew through the join service at {bootstrap}"))?;
    Ok(true)
}

/// certmonger's renewals of the rows moved to FreeIPA, into their slots:
/// whether any was copied. Every row is tried before a failure is told.
fn sync_moved(paths: &Paths, config: &node_contract::NodeConfig, plan: Plan) -> Result<bool> {
    use crate::certs::moved::Renewal;
    let fqdn = config.fqdn(&config.node);
    let mut copied = false;
    let mut failed = Vec::new();
    for row in plan.held_by(config.role()) {
        match crate::certs::moved::renewal(paths, &row.slot(paths), &fqdn) {
            Ok(Renewal::Synced { copied: true }) => {
                tracing::info!(
                    "{} certificate renewed by certmonger, now in place",
                    row.purpose
                );
                copied = true;
            }
            Ok(_) => {}
            Err(e) => failed.push(format!("{}: {e:#}", row.purpose)),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(copied)
}
