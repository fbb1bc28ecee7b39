//! Phase 1: this node's own address in the site VPC.

use std::time::Duration;

use anyhow::Result;

use super::Context;

/// Interfaces may come up a moment after boot: wait a little here, the
/// engine retries beyond that.
const WAIT: Duration = Duration::from_secs(10);

pub async fn run(cx: &mut Context) -> Result<()> {
    let vpc = cx.config.site.vpc_range;
    let address = crate::net::wait_for_address(&vpc, WAIT).await?;
    let all = crate::net::own_addresses(&vpc)?;
    if all.len() > 1 {
        tracing::warn!("several addresses in {vpc}: {all:?}; using {address}");
    }
    cx.state.address = Some(address);
    tracing::info!(phase = "identify", address = %address, "this node is {} at {address}", cx.config.node);
    Ok(())
}
