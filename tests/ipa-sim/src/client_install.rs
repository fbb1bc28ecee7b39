//! `ipa-client-install`, as far as the lab needs it. The lab binds this
//! binary at /usr/sbin/ipa-client-install on every node, so a worker runs
//! Fedora CoreOS's own path (`firstboot ipa-client`) against it.
//!
//! It behaves like the real program where firstboot depends on it:
//! - options parsed first, an unknown one refused with exit status 2;
//! - exit status 3 when the host is enrolled already (`/etc/ipa/default.conf`);
//! - exit status 1 when enrollment fails, with nothing left behind;
//! - on success, `/etc/ipa/ca.crt`, `/etc/krb5.keytab` (0600) and
//!   `/etc/ipa/default.conf`.
//!
//! Enrollment is the simulator's own: the one-time password sent to the
//! server over TLS verified as the real client does, which answers with
//! the keytab and the IPA CA. There is no Kerberos, SSSD or certmonger
//! request here.

use std::net::SocketAddr;
use std::path::Path;

use ipa_sim::install::{self, InstallOptions};

/// The options this stand-in takes: those firstboot passes (and `-U`).
const WITH_VALUE: &[&str] = &["hostname", "domain", "realm", "server", "password"];
const FLAGS: &[&str] = &["no-ntp", "unattended", "U"];

enum Failure {
    /// Refused before anything ran (optparse's exit status 2).
    Usage(String),
    /// The install failed and left nothing (CLIENT_INSTALL_ERROR, 1).
    Install(anyhow::Error),
}

/// Run as `ipa-client-install ARGS` on a host whose root is `root`; the
/// exit status the real program gives.
pub async fn run(args: &[String], root: &Path) -> u8 {
    run_at(args, root, None).await
}

/// [`run`], asking the server at `at` (else `--server`'s address, port
/// 443).
async fn run_at(args: &[String], root: &Path, at: Option<SocketAddr>) -> u8 {
    match install(args, root, at).await {
        Ok(true) => {
            println!("Client configuration complete.");
            println!("The ipa-client-install command was successful");
            0
        }
        Ok(false) => {
            eprintln!("IPA client is already configured on this system.");
            eprintln!("The ipa-client-install command failed.");
            3
        }
        Err(Failure::Usage(message)) => {
            eprintln!("Usage: ipa-client-install [options]\n");
            eprintln!("ipa-client-install: error: {message}");
            2
        }
        Err(Failure::Install(e)) => {
            eprintln!("{e:#}");
            eprintln!("The ipa-client-install command failed.");
            1
        }
    }
}

/// Ok(false): enrolled already, nothing done.
async fn install(args: &[String], root: &Path, at: Option<SocketAddr>) -> Result<bool, Failure> {
    let options = parse(args).map_err(Failure::Usage)?;
    let default_conf = root.join("etc/ipa/default.conf");
    if default_conf.exists() {
        return Ok(false);
    }
    let enroll = async {
        let server = options.required("server")?;
        let hostname = options.hostname()?;
        let password = options.required("password")?;
        let realm = options.required("realm")?;
        let domain = options.required("domain")?;
        let address = install::server_address(server, at)?;
        let enrolled =
            install::enroll(server, address, &hostname, password, "client", false, None).await?;
        if install::take_install_fault(root)? {
            install::unenroll(server, address, &hostname, &enrolled.keytab).await?;
            anyhow::bail!(
                "the install failed after ipa-join (a fault the lab asked for); rolled back \
                 with ipa-join --unenroll: the one-time password is spent"
            );
        }
        let write = firstboot::fsutil::write_atomic;
        write(
            &root.join("etc/ipa/ca.crt"),
            enrolled.ca_pem.as_bytes(),
            0o644,
        )?;
        write(
            &root.join("etc/krb5.keytab"),
            enrolled.keytab.as_bytes(),
            0o600,
        )?;
        // Last: its presence is what "enrolled already" means.
        let conf = format!(
            "[global]\nhost = {hostname}\nserver = {server}\nrealm = {realm}\ndomain = {domain}\n\
             xmlrpc_uri = https://{server}/ipa/xml\nenable_ra = True\n"
        );
        write(&default_conf, conf.as_bytes(), 0o644)?;
        anyhow::Ok(())
    };
    enroll.await.map_err(Failure::Install)?;
    Ok(true)
}

/// Options as optparse takes them (`--name=value`, `--flag`, `-U`),
/// refusing what the stand-in does not know.
fn parse(args: &[String]) -> Result<InstallOptions, String> {
    let options = InstallOptions::from_args(args).map_err(|e| e.to_string())?;
    for (name, value) in &options.0 {
        let known = match value {
            Some(_) => WITH_VALUE.contains(&name.as_str()),
            None => FLAGS.contains(&name.as_str()),
        };
        if !known {
            let dashes = if name.len() == 1 { "-" } else { "--" };
            return Err(format!("no such option: {dashes}{name}"));
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let code = runtime.block_on(run(&args(&["--no-such-option"]), dir.path()));
        assert_eq!(code, 2);
        // A flag given a value is refused too.
        assert_eq!(
            runtime.block_on(run(&args(&["--unattended=yes"]), dir.path())),
            2
        );
        // Enrolled already: 3, before any server is asked.
        std::fs::create_dir_all(dir.path().join("etc/ipa")).unwrap();
        std::fs::write(dir.path().join("etc/ipa/default.conf"), "[global]\n").unwrap();
        let code = runtime.block_on(run(
            &args(&["--server=ipa.invalid", "--password=x", "-U"]),
            dir.path(),
        ));
        assert_eq!(code, 3);
        // A server that cannot be reached: 1, and nothing written. The
        // port is bound and never listened on, so a connection to it is
        // refused, and no other process can take it meanwhile.
        std::fs::remove_file(dir.path().join("etc/ipa/default.conf")).unwrap();
        let unserved = tokio::net::TcpSocket::new_v4().unwrap();
        unserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = unserved.local_addr().unwrap();
        let code = runtime.block_on(run_at(
            &args(&[
                "--hostname=node4.example.invalid",
                "--domain=example.invalid",
                "--realm=EXAMPLE.INVALID",
                "--server=ipa.example.invalid",
                "--password=x",
                "--unattended",
            ]),
            dir.path(),
            Some(at),
        ));
        assert_eq!(code, 1);
        assert!(!dir.path().join("etc/krb5.keytab").exists());
        assert!(!dir.path().join("etc/ipa/default.conf").exists());
    }
}
