//! certmonger's `ipa-submit` helper, as far as the lab needs it. The lab
//! binds this binary over certmonger's helper in every node
//! (`/usr/lib/certmonger/ipa-submit` on Debian), so the real certmonger
//! daemon, driven by firstboot's real `getcert request -c IPA ...`, asks
//! the simulator for certificates: only the helper differs from a
//! droplet, where FreeIPA's own helper speaks XML-RPC with Kerberos.
//!
//! The helper protocol (certmonger-ipa-submit(8), and what certmonger
//! 0.79 sets, seen on this machine): the operation in
//! `CERTMONGER_OPERATION`; for `SUBMIT` and `POLL` the request in
//! `CERTMONGER_CSR`, its principal in `CERTMONGER_REQ_PRINCIPAL`, the
//! issuer (`getcert -X`) in `CERTMONGER_CA_ISSUER`, the profile (`-T`)
//! in `CERTMONGER_CA_PROFILE`. Exit status: 0 issued (the certificate on
//! stdout), 2 rejected (the reason on stdout), 3 the CA unreachable,
//! 4 configuration missing, 6 an operation it does not do.
//!
//! Where FreeIPA's helper authenticates with the host's keytab through
//! Kerberos, this one logs in at the simulator's stand-in for
//! `/ipa/session/login_kerberos` with the keytab secret the simulator's
//! `ipa-client-install` wrote (see `server`): the session is the host's,
//! and the simulator holds it to what a host may do.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use base64::Engine as _;
use serde_json::{json, Value};

const EXCHANGE: Duration = Duration::from_secs(30);

/// certmonger's exit statuses for a helper.
const ISSUED: u8 = 0;
const REJECTED: u8 = 2;
const UNREACHABLE: u8 = 3;
const UNCONFIGURED: u8 = 4;
const UNSUPPORTED: u8 = 6;

/// The host's root: `/`, or the directory after `--root` (the tests'
/// scratch root, given in the helper's command line, `getcert add-ca -e`:
/// certmonger runs its helpers with an environment of its own making).
pub fn root(args: &[String]) -> std::path::PathBuf {
    match args {
        [flag, dir] if flag == "--root" => dir.into(),
        _ => "/".into(),
    }
}

/// Run as certmonger's helper on a host whose root is `root`.
pub async fn run(root: &Path) -> u8 {
    let operation = std::env::var("CERTMONGER_OPERATION").unwrap_or_default();
    match operation.as_str() {
        "SUBMIT" | "POLL" => match submit(root).await {
            Ok(pem) => {
                print!("{pem}");
                ISSUED
            }
            Err((status, why)) => {
                println!("{why}");
                status
            }
        },
        "IDENTIFY" => {
            println!("ipa-sim (the lab's stand-in for ipa-submit)");
            ISSUED
        }
        _ => UNSUPPORTED,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `key = value` from `/etc/ipa/default.conf`.
fn conf_value(conf: &str, key: &str) -> Option<String> {
    conf.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// The server a default.conf names, and where to connect when it says.
/// `xmlrpc_uri`'s authority: an address and port (the tests' simulator
/// on loopback) is where to connect; a name is the server's (certmonger's
/// ipa-submit reads the server's URL there: certmonger-ipa-submit(8),
/// FILES). The server: `server` in a client's default.conf; a server's
/// own names none (freeipa `ipaserver/install/server/install.py` writes
/// only `xmlrpc_uri`), so the host of `xmlrpc_uri`.
fn server_of(conf: &str) -> (Option<String>, Option<std::net::SocketAddr>) {
    let authority = conf_value(conf, "xmlrpc_uri").and_then(|uri| {
        let rest = uri.strip_prefix("https://")?;
        Some(rest.split('/').next()?.to_owned())
    });
    let explicit = authority
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
    let named = authority
        .filter(|_| explicit.is_none())
        .and_then(|a| a.split(':').next().map(str::to_owned))
        .filter(|name| !name.is_empty());
    (conf_value(conf, "server").or(named), explicit)
}

async fn submit(root: &Path) -> Result<String, (u8, String)> {
    let unconfigured = |why: String| (UNCONFIGURED, why);
    let csr = env("CERTMONGER_CSR").ok_or_else(|| unconfigured("no CSR".into()))?;
    let principal = env("CERTMONGER_REQ_PRINCIPAL").ok_or_else(|| {
        unconfigured("IPA needs the principal of the request (getcert -K)".into())
    })?;
    let read = |path: &str| {
        let path = root.join(path);
        std::fs::read_to_string(&path).map_err(|e| unconfigured(format!("{}: {e}", path.display())))
    };
    let conf = read("etc/ipa/default.conf")?;
    let ca_pem = read("etc/ipa/ca.crt")?;
    let keytab = read("etc/krb5.keytab")?;
    let (server, explicit) = server_of(&conf);
    let (Some(host), Some(server)) = (conf_value(&conf, "host"), server) else {
        return Err(unconfigured(
            "/etc/ipa/default.conf names no host, or no server (`server`, or the name in \
             `xmlrpc_uri`)"
                .into(),
        ));
    };
    // Where to connect: the explicit address, else the server's name on
    // 443 as the lab's nodes resolve it; the certificate must name the
    // server either way.
    let address = ipa_sim::install::server_address(&server, explicit)
        .map_err(|e| (UNREACHABLE, format!("{e:#}")))?;

    let token = base64::engine::general_purpose::STANDARD
        .encode(json!({"host": host, "keytab": keytab.trim()}).to_string());
    let login = firstboot::https::post_verified(
        address,
        &ca_pem,
        &server,
        "/ipa/session/login_kerberos",
        &[("authorization", format!("Negotiate {token}"))],
        Vec::new(),
        EXCHANGE,
    )
    .await
    .map_err(|e| (UNREACHABLE, format!("{server}: {e:#}")))?;
    if login.status != 200 {
        return Err(unconfigured(format!(
            "{server} refused host/{host}'s keytab ({})",
            login.status
        )));
    }
    let cookie = login
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| (UNREACHABLE, format!("{server} gave no session")))?;

    let mut options = json!({
        "principal": principal,
        "version": firstboot::freeipa::API_VERSION,
    });
    if let Some(issuer) = env("CERTMONGER_CA_ISSUER") {
        options["cacn"] = json!(issuer);
    }
    if let Some(profile) = env("CERTMONGER_CA_PROFILE") {
        options["profile_id"] = json!(profile);
    }
    let body = json!({"method": "cert_request", "params": [[csr], options], "id": 0});
    let answer = firstboot::https::post_verified(
        address,
        &ca_pem,
        &server,
        "/ipa/session/json",
        &[
            ("cookie", cookie),
            ("referer", format!("https://{server}/ipa")),
        ],
        body.to_string().into_bytes(),
        EXCHANGE,
    )
    .await
    .map_err(|e| (UNREACHABLE, format!("{server}: {e:#}")))?;
    if answer.status != 200 {
        return Err((UNREACHABLE, format!("{server} answered {}", answer.status)));
    }
    let reply: Value = serde_json::from_slice(&answer.body)
        .map_err(|_| (UNREACHABLE, format!("{server} answered something not JSON")))?;
    if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
        return Err((
            REJECTED,
            format!(
                "Server at {server} denied our request, giving up: {} ({}).",
                error["message"].as_str().unwrap_or("no message"),
                error["code"]
            ),
        ));
    }
    certificate_pem(&reply["result"]["result"]["certificate"])
        .map_err(|e| (REJECTED, format!("{e:#}")))
}

/// FreeIPA's certificate (base64 DER, alone or as a one-value list) as
/// PEM.
fn certificate_pem(value: &Value) -> anyhow::Result<String> {
    let text = value
        .as_str()
        .or_else(|| value.get(0).and_then(Value::as_str))
        .ok_or_else(|| anyhow!("the answer holds no certificate"))?;
    let der = ipa_sim::ca::cert_der_from_base64(text)
        .map_err(|e| anyhow!("the certificate is not DER: {e}"))
        .context("the answer")?;
    Ok(ipa_sim::ca::pem("CERTIFICATE", &der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_read_from_a_client_s_and_a_server_s_default_conf() {
        let server_own = ipa_sim::install::server_default_conf(
            "ipa1.lab.example.org",
            "LAB.EXAMPLE.ORG",
            "lab.example.org",
            None,
        );
        assert_eq!(
            server_of(&server_own),
            (Some("ipa1.lab.example.org".into()), None)
        );
        let client = "[global]\nhost = node1.lab.example.org\nserver = ipa2.lab.example.org\n\
                      xmlrpc_uri = https://ipa2.lab.example.org/ipa/xml\n";
        assert_eq!(
            server_of(client),
            (Some("ipa2.lab.example.org".into()), None)
        );
        let tests = "[global]\nserver = ipa1.lab.example.org\n\
                     xmlrpc_uri = https://127.0.0.1:4443/ipa/xml\n";
        assert_eq!(
            server_of(tests),
            (
                Some("ipa1.lab.example.org".into()),
                Some("127.0.0.1:4443".parse().unwrap())
            )
        );
        // An address alone names no server to check the certificate for.
        assert_eq!(
            server_of("[global]\nxmlrpc_uri = https://127.0.0.1:4443/ipa/xml\n").0,
            None
        );
    }
}
