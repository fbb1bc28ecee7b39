//! certmonger, which requests and renews this node's certificates from
//! FreeIPA once the site has handed off (the certificate plan's renewal
//! after handoff). firstboot drives it with `getcert` (certmonger's own
//! client, getcert-request(1)), so what runs on a droplet is FreeIPA's
//! documented path: certmonger's `IPA` CA runs its `ipa-submit` helper,
//! which authenticates with the host's keytab (certmonger-ipa-submit(8)).
//!
//! A request has an id of firstboot's choosing (`-I`), so asking again
//! finds it instead of adding a second: `getcert list -i ID` says where
//! it stands, a rejected or stuck one is asked for again (as a new
//! request, which keeps the key), a tracked one is left alone. The key is
//! the slot's own (a new request reads an existing key file and makes no
//! new one), so a certificate never disagrees with its key; certmonger
//! writes the certificate file itself, and renews it
//! from then on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// certmonger's name for FreeIPA's CA (built in; its helper is
/// `ipa-submit`).
pub const IPA: &str = "IPA";

/// One certificate for certmonger to obtain and keep renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// firstboot's id for it (`getcert -I`).
    pub id: String,
    /// certmonger's CA: [`IPA`] on a node.
    pub ca: String,
    /// FreeIPA's issuer: a lightweight sub-CA's name (`-X`), or none for
    /// FreeIPA's own CA.
    pub issuer: Option<String>,
    /// FreeIPA's certificate profile (`-T`).
    pub profile: Option<String>,
    /// The Kerberos principal the certificate is for (`-K`), with its
    /// realm: FreeIPA issues for this principal and checks the CA ACL
    /// for it.
    pub principal: String,
    /// The DNS name it names (`-D`), and its subject (`-N`).
    pub dns: String,
    pub subject: String,
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl Request {
    /// `getcert request`'s arguments. No `-F`: where the issuer's
    /// certificate goes is the certificate plan's trust file, which
    /// handoff writes itself (the old and new issuers together, for a
    /// while).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "request".to_owned(),
            "-I".to_owned(),
            self.id.clone(),
            "-c".to_owned(),
            self.ca.clone(),
        ];
        if let Some(issuer) = &self.issuer {
            args.extend(["-X".to_owned(), issuer.clone()]);
        }
        if let Some(profile) = &self.profile {
            args.extend(["-T".to_owned(), profile.clone()]);
        }
        args.extend([
            "-K".to_owned(),
            self.principal.clone(),
            "-D".to_owned(),
            self.dns.clone(),
            "-N".to_owned(),
            self.subject.clone(),
            "-k".to_owned(),
            self.key.display().to_string(),
            "-f".to_owned(),
            self.cert.display().to_string(),
            // Renewed before it expires (the default, said aloud).
            "-r".to_owned(),
        ]);
        args
    }
}

/// Where a request stands, as `getcert list -i ID` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tracked {
    /// certmonger's state: `MONITORING` once issued and tracked;
    /// `CA_REJECTED`, `CA_UNREACHABLE`, `NEED_TO_SUBMIT`, `SUBMITTING`,
    /// `CA_WORKING` ... otherwise.
    pub status: String,
    /// What the CA said when it refused.
    pub ca_error: Option<String>,
    pub stuck: bool,
    pub ca: String,
    pub issuer: String,
}

impl Tracked {
    pub fn issued(&self) -> bool {
        self.status == "MONITORING"
    }

    /// Refused or stuck: asking again is the way on (once the cause is
    /// mended).
    pub fn needs_resubmit(&self) -> bool {
        self.stuck || matches!(self.status.as_str(), "CA_REJECTED" | "CA_UNREACHABLE")
    }

    fn describe(&self) -> String {
        match &self.ca_error {
            Some(why) => format!("{} ({why})", self.status),
            None => self.status.clone(),
        }
    }
}

/// Read `getcert list -i ID`'s answer: None when certmonger has no such
/// request.
pub fn parse_list(text: &str) -> Option<Tracked> {
    let mut lines = text.lines();
    lines.find(|l| l.starts_with("Request ID "))?;
    let mut tracked = Tracked::default();
    for line in lines {
        if line.starts_with("Request ID ") {
            break;
        }
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "status" => tracked.status = value.to_owned(),
            "ca-error" => tracked.ca_error = Some(value.to_owned()),
            "stuck" => tracked.stuck = value == "yes",
            "CA" => tracked.ca = value.to_owned(),
            "issuer" => tracked.issuer = value.to_owned(),
            _ => {}
        }
    }
    Some(tracked)
}

/// The certmonger daemon asked: the system's (on the system bus), one
/// at a private socket (`CERTMONGER_PVT_ADDRESS`, certmonger(8) `-P`:
/// the tests' own daemon, or the lab's FreeIPA server's), or the one in a
/// container (`podman exec NAME getcert ...`: the FreeIPA server's own,
/// on Fedora CoreOS).
#[derive(Debug, Clone, Default)]
pub struct Certmonger {
    private: Option<String>,
    /// The container whose certmonger `getcert` asks, from inside it.
    container: Option<String>,
}

impl Certmonger {
    pub fn system() -> Certmonger {
        Certmonger::default()
    }

    pub fn private(address: &str) -> Certmonger {
        Certmonger {
            private: Some(address.to_owned()),
            container: None,
        }
    }

    /// The certmonger that runs in the container `name`, asked with
    /// `podman exec` (file paths in requests are then the container's).
    pub fn in_container(name: &str) -> Certmonger {
        Certmonger {
            private: None,
            container: Some(name.to_owned()),
        }
    }

    /// The command line that runs `getcert ARGS` against this daemon.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = match &self.container {
            Some(name) => {
                let mut c = tokio::process::Command::new("podman");
                c.args(["exec", name.as_str(), "getcert"]);
                c
            }
            None => tokio::process::Command::new("getcert"),
        };
        command.args(args);
        if let Some(address) = &self.private {
            command.env("CERTMONGER_PVT_ADDRESS", address);
        }
        command
    }

    /// Where certmonger stands on `id`.
    pub async fn status(&self, id: &str) -> Result<Option<Tracked>> {
        let out = self.getcert(&["list", "-i", id]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "No request found with specified nickname." is an answer.
        Ok(parse_list(&text))
    }

    /// Until `request` is issued and tracked: requested if certmonger does
    /// not have it, asked again once if it was refused or is stuck, waited
    /// for while certmonger works on it; bounded by `patience`. A refusal
    /// after the resubmission, or the end of patience, is an error with what
    /// the CA said (the phase engine asks again later).
    pub async fn ensure(
        &self,
        request: &Request,
        patience: Duration,
        poll: Duration,
    ) -> Result<Tracked> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut resubmitted = false;
        let refused = |tracked: &Tracked| {
            anyhow::anyhow!(
                "certmonger has no certificate for {} from {}{}: {}",
                request.principal,
                request.ca,
                request
                    .issuer
                    .as_ref()
                    .map(|i| format!(" (issuer {i})"))
                    .unwrap_or_default(),
                tracked.describe()
            )
        };
        loop {
            match self.status(&request.id).await? {
                None => {
                    let mut args = request.args();
                    args.push("-w".to_owned());
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    if let Some(out) = self.getcert_waiting(&args).await? {
                        if !out.status.success() && self.status(&request.id).await?.is_none() {
                            bail!(
                                "getcert request {}: {}",
                                request.id,
                                String::from_utf8_lossy(&out.stderr).trim()
                            );
                        }
                    }
                }
                Some(tracked) if tracked.issued() => return Ok(tracked),
                Some(tracked) if tracked.needs_resubmit() => {
                    if resubmitted {
                        return Err(refused(&tracked));
                    }
                    tracing::info!(
                        "certmonger: {} is {}; asking again",
                        request.id,
                        tracked.describe()
                    );
                    // Asked again as a new request, not `getcert
                    // resubmit`: certmonger 0.79 resubmits a rejected
                    // request with a new key of its own making (an RSA key
                    // in place of the slot's; seen here, and shown by
                    // `a_refusal_is_asked_again_once...` in the tests), and
                    // a certificate for another key is no use to the slot.
                    // A new request reads the key file as it is.
                    let out = self.getcert(&["stop-tracking", "-i", &request.id]).await?;
                    if !out.status.success() && self.status(&request.id).await?.is_some() {
                        bail!(
                            "getcert stop-tracking {}: {}",
                            request.id,
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    resubmitted = true;
                    continue;
                }
                Some(tracked) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(refused(&tracked));
                    }
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// getcert with `-w`, which waits for certmonger: its bound ending the
    /// wait is no error (certmonger goes on; its state is read next).
    async fn getcert_waiting(&self, args: &[&str]) -> Result<Option<std::process::Output>> {
        match self.getcert(args).await {
            Ok(out) => Ok(Some(out)),
            Err(e) if format!("{e:#}").contains("timed out") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// certmonger's CA `ca` runs `helper` (a command line) from now on
    /// (getcert-modify-ca(1)): how the built-in `IPA` CA is pointed at a
    /// stand-in for `ipa-submit`.
    pub async fn set_helper(&self, ca: &str, helper: &str) -> Result<()> {
        let out = self.getcert(&["modify-ca", "-c", ca, "-e", helper]).await?;
        if !out.status.success() {
            bail!(
                "getcert modify-ca -c {ca}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `getcert list-cas -c CA`'s answer, as certmonger writes it (its
    /// `helper-location:` line names the helper).
    pub async fn describe_ca(&self, ca: &str) -> Result<String> {
        let out = self.getcert(&["list-cas", "-c", ca]).await?;
        if !out.status.success() {
            bail!(
                "getcert list-cas -c {ca}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn getcert(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut command = self.command(args);
        crate::system::bounded(&mut command)
            .await
            .with_context(|| format!("running getcert {}", args.first().unwrap_or(&"")))
    }
}

#[cfg(test)]
mod tests;
