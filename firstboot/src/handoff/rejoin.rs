//! A rebuilt bootstrap host whose core peers' etcd has moved to FreeIPA's
//! `etcd` sub-CA: the members refuse a certificate from the temporary CA
//! and present the sub-CA's, so before its etcd member rejoins, this host
//! gets its etcd certificate from that sub-CA and trusts it.
//!
//! It has no FreeIPA server of its own yet (it becomes a replica later),
//! but it holds the admin password, and its peers' signed answers gave it
//! each surviving FreeIPA server with its IPA CA (`bootstrap::Verdict`):
//! it logs in to one as the admin and asks for a certificate for its own
//! CSR, as `etcd/<fqdn>` (FreeIPA checks the CSR against the principal
//! and the sub-CA's ACL). The record of the move is written first, so no
//! start signs the row from the temporary CA again; its handoff later
//! moves the certificate to certmonger, as every member's.

use std::net::SocketAddr;

use anyhow::{bail, Context as _, Result};
use node_contract::NodeConfig;

use crate::certs::moved::Moved;
use crate::certs::plan;
use crate::freeipa::{Client, Config, Endpoint};
use crate::paths::Paths;
use crate::state::FreeipaPeer;

/// This host's etcd certificate from the sub-CA `sub_ca_pem`, through the
/// first of `servers` that gives it; done already is done.
pub async fn etcd_from_freeipa(
    paths: &Paths,
    config: &NodeConfig,
    servers: &[FreeipaPeer],
    sub_ca_pem: &str,
) -> Result<()> {
    from_freeipa(paths, config, servers, &plan::ETCD, sub_ca_pem).await
}

/// The same for this host's identity, once its peers' identities moved to
/// the `firstboot` sub-CA: they trust it alone (or soon will), so the
/// join service this host serves presents one of its certificates.
pub async fn identity_from_freeipa(
    paths: &Paths,
    config: &NodeConfig,
    servers: &[FreeipaPeer],
    sub_ca_pem: &str,
) -> Result<()> {
    from_freeipa(paths, config, servers, &plan::IDENTITY, sub_ca_pem).await
}

/// `row`'s certificate from its sub-CA, as the admin, for this host's
/// principal of that sub-CA.
async fn from_freeipa(
    paths: &Paths,
    config: &NodeConfig,
    servers: &[FreeipaPeer],
    row: &plan::Row,
    sub_ca_pem: &str,
) -> Result<()> {
    let slot = row.slot(paths);
    let purpose = row.purpose;
    let plan::FreeipaIssuer::SubCa(sub_ca) = row.issuer.freeipa;
    let service = crate::freeipa::ServiceCa::named(sub_ca)
        .with_context(|| format!("no sub-CA `{sub_ca}` for the {purpose} row"))?;
    let fqdn = config.fqdn(&config.node);
    if let Some(moved) = Moved::load(paths, purpose)? {
        let cert = std::fs::read_to_string(&slot.cert).unwrap_or_default();
        if slot.check(&cert, &moved.new_ca, &fqdn).is_ok() {
            return Ok(());
        }
    }
    let secrets = crate::freeipa::site::secrets(config)?;
    let principal = service
        .principal(&fqdn, config.site.realm.as_str())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let csr = slot.csr(&fqdn)?;
    let mut failures = Vec::new();
    for server in servers {
        let endpoint = Endpoint::at(
            &config.fqdn(&server.node),
            SocketAddr::new(server.address.into(), 443),
        );
        let asked = async {
            let client = Client::new(Config::admin(
                endpoint,
                &server.ca_pem,
                &secrets.admin_password,
            ))?;
            client.login().await?;
            client
                .request_certificate(
                    &principal,
                    &csr,
                    service.name(),
                    crate::freeipa::ensure::SERVICE_PROFILE,
                )
                .await
        };
        match asked.await {
            Ok(issued) => {
                slot.check(&issued.cert_pem, sub_ca_pem, &fqdn)
                    .with_context(|| format!("the certificate {} gave", server.node))?;
                let site = super::request::RequestSite::freeipa_server(paths, config)?;
                let staged = site.staged(&slot);
                Moved {
                    old_ca: sub_ca_pem.to_owned(),
                    new_ca: sub_ca_pem.to_owned(),
                    staged_cert: staged.host_cert,
                    staged_key: staged.host_key,
                    done: false,
                    step: None,
                }
                .save(paths, purpose)?;
                slot.install(&issued.cert_pem, sub_ca_pem, &fqdn)?;
                tracing::info!(
                    "the site trusts FreeIPA's {sub_ca} sub-CA for {purpose}: this host's \
                     certificate comes from it (through {})",
                    server.node
                );
                return Ok(());
            }
            Err(e) => failures.push(format!("{} ({}): {e}", server.node, server.address)),
        }
    }
    bail!(
        "the site trusts FreeIPA's {sub_ca} sub-CA for {purpose}, and no FreeIPA server gave \
         this host a certificate from it: {}",
        if failures.is_empty() {
            "no FreeIPA server answered the peers' call".to_owned()
        } else {
            failures.join("; ")
        }
    )
}
