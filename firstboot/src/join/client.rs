//! Asking the join service: to be admitted, or to renew certificates.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use node_contract::identity::Purpose;
use node_contract::{NodeConfig, Role};

use super::protocol::{self, JoinAnswer, JoinRequest, Site, JOIN_PATH, SIGNATURE_HEADER};
use crate::certs::plan::{self, CertPurpose, Plan};
use crate::https::{self, Answer};

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// One signed request to the join service at `address`; the answer counts
/// only if the site's bootstrap host signed it over this request's nonce,
/// and the TLS certificate this exchange ran over chains to the CA that
/// answer names and names the bootstrap host (so a listener that merely
/// relayed our request to the real one is found out).
pub async fn join(
    config: &NodeConfig,
    address: Ipv4Addr,
    own_addresses: &[Ipv4Addr],
    csrs: BTreeMap<CertPurpose, String>,
) -> Result<JoinAnswer> {
    let request = JoinRequest {
        ticket: config.ticket(),
        addresses: own_addresses.to_vec(),
        csrs,
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
        admission: config.identity.admission.clone(),
    };
    let body = serde_json::to_vec(&request)?;
    let signature = protocol::sign_request(&config.signing_key(), Purpose::JoinRequest, &body);
    let reply = send(address, config.join.port, body, signature).await?;
    if reply.status == 404 {
        bail!(
            "the join service at {address} does not serve {JOIN_PATH} (it answered 404: {}): \
             the bootstrap host runs another firstboot release; render every host's config \
             with the same builder",
            String::from_utf8_lossy(&reply.body).trim()
        );
    }
    if reply.status != 200 {
        bail!(
            "the join service at {address} refused: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        );
    }
    let site = Site::of(config);
    let proof = reply
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let answer: JoinAnswer = site
        .check_answer(
            &reply.body,
            proof,
            &request.nonce,
            Purpose::JoinAnswer,
            |a: &JoinAnswer| &a.bootstrap,
        )
        .map_err(|r| anyhow!("the answer from {address} is not our bootstrap host's: {r}"))?;
    if answer.bootstrap.node != site.bootstrap || answer.bootstrap.role != Role::Core {
        bail!(
            "the answer from {address} is signed by {}, not by the bootstrap host {}",
            answer.bootstrap.node,
            site.bootstrap
        );
    }
    let presented = reply
        .server_certificate
        .as_ref()
        .map(https::to_pem)
        .ok_or_else(|| anyhow!("the join service at {address} presented no certificate"))?;
    let bootstrap_fqdn = config.fqdn(&site.bootstrap);
    let identity = answer
        .issued(plan::IDENTITY.purpose)
        .map_err(|e| anyhow!("the answer from {address}: {e}"))?;
    crate::pki::verify(
        &presented,
        &identity.ca_pem,
        Some(&bootstrap_fqdn),
        crate::status::now(),
    )
    .map_err(|e| {
        anyhow!(
            "the TLS certificate at {address} is not {bootstrap_fqdn}'s under the CA the answer \
             names ({e}): something relayed this exchange"
        )
    })?;
    Ok(answer)
}

/// One POST to the join service. Public for the tests that send it forged
/// and malformed requests.
pub async fn send(
    address: Ipv4Addr,
    port: u16,
    body: Vec<u8>,
    signature: String,
) -> Result<Answer> {
    https::post(
        SocketAddr::new(address.into(), port),
        JOIN_PATH,
        &[(SIGNATURE_HEADER, signature)],
        body,
        EXCHANGE_TIMEOUT,
    )
    .await
}

/// Ask the join service at `address` for this node's certificates, every
/// row of `plan` its role holds (its first join, or a renewal: the keys
/// stay, the certificates are new), and install them; a core host also
/// keeps the sealed CA copy (0600).
pub async fn enroll(
    paths: &crate::paths::Paths,
    config: &NodeConfig,
    plan: Plan,
    address: Ipv4Addr,
    own: Ipv4Addr,
) -> Result<JoinAnswer> {
    let answer = join(config, address, &[own], csrs(paths, config, plan)?).await?;
    // A retired bootstrap host (a thief of its old user data) is not
    // followed; a newer one retires the one known.
    crate::state::KnownGenerations::admit(&paths.known_generations(), &answer.bootstrap)
        .with_context(|| format!("the join service at {address}"))?;
    install(paths, config, plan, &answer).with_context(|| format!("the answer from {address}"))?;
    Ok(answer)
}

/// A CSR for every row of `plan` this node's role holds from the
/// temporary CA (rows the handoff moved to FreeIPA are certmonger's),
/// with the row's key (made on first use, kept after).
pub fn csrs(
    paths: &crate::paths::Paths,
    config: &NodeConfig,
    plan: Plan,
) -> Result<BTreeMap<CertPurpose, String>> {
    let fqdn = config.fqdn(&config.node);
    let mut csrs = BTreeMap::new();
    for row in crate::certs::moved::temporary_rows(paths, plan, config.role()) {
        csrs.insert(row.purpose, row.slot(paths).csr(&fqdn)?);
    }
    Ok(csrs)
}

/// Install what a join answer issued, one certificate for every row of
/// `plan` this node's role holds from the temporary CA, and for a core host the sealed CA copy.
/// Every certificate is checked before any is installed: a node never
/// holds a mix of an answer it refused and the certificates before it.
pub fn install(
    paths: &crate::paths::Paths,
    config: &NodeConfig,
    plan: Plan,
    answer: &JoinAnswer,
) -> Result<()> {
    let fqdn = config.fqdn(&config.node);
    let mut install = Vec::new();
    for row in crate::certs::moved::temporary_rows(paths, plan, config.role()) {
        let issued = answer.issued(row.purpose).map_err(|e| anyhow!(e))?;
        let slot = row.slot(paths);
        slot.check(&issued.certificate_pem, &issued.ca_pem, &fqdn)?;
        install.push((slot, issued));
    }
    for (slot, issued) in install {
        slot.install(&issued.certificate_pem, &issued.ca_pem, &fqdn)?;
    }
    if config.role() == Role::Core {
        let sealed = answer
            .ca_backup
            .as_ref()
            .ok_or_else(|| anyhow!("the answer holds no CA copy for this core host"))?;
        crate::fsutil::write_atomic(&paths.ca_backup(), sealed.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// Ask the bootstrap host at `address` how this node enrolls in FreeIPA.
/// Over TLS verified against the temporary CA this node joined with (the
/// answer holds a one-time password), and signed by the bootstrap host.
/// `Ok(None)` while the bootstrap host's FreeIPA is not configured yet.
pub async fn enrollment(
    paths: &crate::paths::Paths,
    config: &NodeConfig,
    address: Ipv4Addr,
) -> Result<Option<super::protocol::EnrollAnswer>> {
    use super::protocol::{EnrollAnswer, EnrollRequest, ENROLL_PATH};
    let request = EnrollRequest {
        ticket: config.ticket(),
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
    };
    let body = serde_json::to_vec(&request)?;
    let signature = protocol::sign_request(&config.signing_key(), Purpose::EnrollRequest, &body);
    let ca = std::fs::read_to_string(plan::IDENTITY.slot(paths).ca).map_err(|e| {
        anyhow!("this node has no temporary CA to check the bootstrap host with: {e}")
    })?;
    let site = Site::of(config);
    let reply = https::post_verified(
        SocketAddr::new(address.into(), config.join.port),
        &ca,
        &config.fqdn(&site.bootstrap),
        ENROLL_PATH,
        &[(SIGNATURE_HEADER, signature)],
        body,
        EXCHANGE_TIMEOUT,
    )
    .await?;
    match reply.status {
        200 => {}
        503 => {
            tracing::info!(
                "the bootstrap host cannot enroll this node yet: {}",
                String::from_utf8_lossy(&reply.body).trim()
            );
            return Ok(None);
        }
        status => bail!(
            "the bootstrap host refused to enroll this node: {status} {}",
            String::from_utf8_lossy(&reply.body).trim()
        ),
    }
    let proof = reply
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let answer: EnrollAnswer = site
        .check_answer(
            &reply.body,
            proof,
            &request.nonce,
            Purpose::EnrollAnswer,
            |a: &EnrollAnswer| &a.bootstrap,
        )
        .map_err(|r| anyhow!("the enrollment answer is not the bootstrap host's: {r}"))?;
    if answer.bootstrap.node != site.bootstrap {
        bail!(
            "the enrollment answer is signed by {}, not the bootstrap host",
            answer.bootstrap.node
        );
    }
    crate::state::KnownGenerations::admit(&paths.known_generations(), &answer.bootstrap)
        .context("the enrollment answer")?;
    Ok(Some(answer))
}

/// Report this node's identity step (phase handoff) to the join service
/// at `address`, and learn every registered node's: over TLS checked
/// against this node's identity trust file (which the roll changes:
/// the bootstrap host presents what every node trusts by then), and
/// signed by the bootstrap host over this report's nonce.
pub async fn handoff_report(
    paths: &crate::paths::Paths,
    config: &NodeConfig,
    address: Ipv4Addr,
    identity: Option<crate::certs::moved::Step>,
) -> Result<super::protocol::HandoffAnswer> {
    use super::protocol::{HandoffAnswer, HandoffReport, HANDOFF_PATH};
    let request = HandoffReport {
        ticket: config.ticket(),
        identity,
        timestamp: crate::status::now(),
        nonce: protocol::nonce(),
    };
    let body = serde_json::to_vec(&request)?;
    let signature = protocol::sign_request(&config.signing_key(), Purpose::HandoffReport, &body);
    let trust = plan::IDENTITY.slot(paths).ca;
    let ca = std::fs::read_to_string(&trust)
        .with_context(|| format!("cannot read {}", trust.display()))?;
    let site = Site::of(config);
    let reply = https::post_verified(
        SocketAddr::new(address.into(), config.join.port),
        &ca,
        &config.fqdn(&site.bootstrap),
        HANDOFF_PATH,
        &[(SIGNATURE_HEADER, signature)],
        body,
        EXCHANGE_TIMEOUT,
    )
    .await
    .with_context(|| format!("the join service at {address}"))?;
    let answer: HandoffAnswer = super::signed_answer(
        &site,
        &reply,
        &request.nonce,
        Purpose::HandoffAnswer,
        |a: &HandoffAnswer| &a.bootstrap,
    )
    .with_context(|| format!("the join service at {address}, to this node's handoff report"))?;
    if answer.bootstrap.node != site.bootstrap || answer.bootstrap.role != Role::Core {
        bail!(
            "the handoff answer is signed by {}, not the bootstrap host",
            answer.bootstrap.node
        );
    }
    crate::state::KnownGenerations::admit(&paths.known_generations(), &answer.bootstrap)
        .context("the handoff answer")?;
    Ok(answer)
}
