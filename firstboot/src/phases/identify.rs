//! Phase 1: this node's own address in the site VPC.

use std::time::Duration;

use anyhow::{bail, Result};

use super::Context;

pub async fn run(cx: &mut Context) -> Result<()> {
    // Interfaces may come up a moment after boot: wait a little here,
    // the engine retries beyond that.
    for _ in 0..20 {
        let found = crate::net::own_addresses(&cx.vpc)?;
        if let Some(&address) = found.first() {
            if found.len() > 1 {
                log::warn!(
                    "several addresses in {}: {found:?}; using {address}",
                    cx.config.site.vpc_range
                );
            }
            cx.state.address = Some(address);
            log::info!(phase = "identify", address = address.to_string().as_str(); "this node is {} at {address}", cx.config.node);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!(
        "no address in the site VPC {} on any interface",
        cx.config.site.vpc_range
    )
}
