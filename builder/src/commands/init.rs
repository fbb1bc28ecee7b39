//! `builder init`: a commented site file and a new encrypted vault.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::InitArgs;
use crate::fsutil;
use crate::site::{DomainName, HostName, Site, Slug, SshKey};
use crate::vault::{self, PassphraseSource, Secrets};

const TOKEN_ENVS: &[&str] = &["DIGITALOCEAN_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN"];
const ADMIN_ENV: &str = "BUILDER_FREEIPA_ADMIN_PASSWORD";
const DM_ENV: &str = "BUILDER_DIRECTORY_MANAGER_PASSWORD";
/// FreeIPA refuses passwords shorter than 8 characters.
const MIN_PASSWORD: usize = 8;

pub fn run(args: InitArgs) -> Result<()> {
    let interactive = !args.non_interactive && std::io::stdin().is_terminal();
    let site_path = args.dir.join("hosts.yaml");
    let vault_path = vault::path_for(&site_path);
    for path in [&site_path, &vault_path] {
        if path.exists() && !args.force {
            bail!(
                "{} already exists; nothing was written (use --force to replace it)",
                path.display()
            );
        }
    }
    let mut ask = Asker { interactive };

    let domain = ask.value(
        args.domain,
        "Domain of the site (e.g. example.com)",
        "--domain",
        |s| {
            DomainName::parse(s)
                .map(|d| d.to_string())
                .map_err(|r| r.message)
        },
    )?;
    let region = ask.value(
        args.region,
        "DigitalOcean region (e.g. ams3)",
        "--region",
        |s| {
            Slug::parse(s, "region", "ams3")
                .map(|s| s.to_string())
                .map_err(|r| r.message)
        },
    )?;
    let publish_url = ask.value(
        args.publish_url,
        "Base URL nodes fetch firstboot from (https://...)",
        "--publish-url",
        |s| {
            if s.starts_with("https://") || s.starts_with("http://") {
                Ok(s.trim_end_matches('/').to_owned())
            } else {
                Err("it must start with https://".into())
            }
        },
    )?;
    let key_paths = if args.ssh_keys.is_empty() {
        let default = home_key();
        let path = ask
            .value(
                None,
                &format!(
                    "SSH public key file{}",
                    default
                        .as_ref()
                        .map(|p| format!(" [{}]", p.display()))
                        .unwrap_or_default()
                ),
                "--ssh-key",
                |s| Ok(s.to_owned()),
            )
            .or_else(|e| default.clone().map(|p| p.display().to_string()).ok_or(e))?;
        vec![PathBuf::from(path)]
    } else {
        args.ssh_keys
    };
    let ssh_keys = key_paths
        .iter()
        .map(|p| read_key(p))
        .collect::<Result<Vec<_>>>()?;
    let hosts = if args.hosts.is_empty() {
        vec!["ns1".into(), "ns2".into(), "ns3".into()]
    } else {
        args.hosts
    };
    for host in &hosts {
        HostName::parse(host).map_err(|r| anyhow::anyhow!("--hosts: {}", r.message))?;
    }

    let token = match TOKEN_ENVS
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    {
        Some(token) => token,
        None => ask.secret("DigitalOcean API token", "set DIGITALOCEAN_ACCESS_TOKEN")?,
    };
    let secrets = Secrets {
        format: 1,
        digitalocean_token: token.trim().to_owned(),
        freeipa_admin_password: password_from_env(ADMIN_ENV)?,
        directory_manager_password: password_from_env(DM_ENV)?,
        join_secret: vault::generate_password(43),
    };
    let passphrase = PassphraseSource::from_env(args.passphrase_file).for_creating()?;

    let site_text = site_template(&domain, &region, &publish_url, &ssh_keys, &hosts);
    // The template must parse: a site file builder cannot read is a bug here.
    Site::parse(&site_path.display().to_string(), &site_text)
        .map_err(|e| crate::Reported(e.render(&site_text)))?;
    let sealed = vault::seal(&secrets, &passphrase, None, false)?;

    fsutil::private_dir(&args.dir)?;
    fsutil::write_atomic(&vault_path, &sealed, 0o600)?;
    fsutil::write_atomic(&site_path, site_text.as_bytes(), 0o644)?;
    println!("{}", site_path.display());
    println!("{}", vault_path.display());
    eprintln!(
        "wrote the site file and its vault; review {} and then run `builder render {}`",
        site_path.display(),
        site_path.display()
    );
    Ok(())
}

fn password_from_env(name: &str) -> Result<String> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => Ok(vault::generate_password(24)),
        Some(p) if p.chars().count() < MIN_PASSWORD => {
            bail!("{name} is shorter than {MIN_PASSWORD} characters, which FreeIPA refuses")
        }
        Some(p) => Ok(p),
    }
}

fn home_key() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|f| home.join(".ssh").join(f))
        .find(|p| p.is_file())
}

fn read_key(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the SSH key {}", path.display()))?;
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    SshKey::parse(line).map_err(|r| anyhow::anyhow!("{}: {}", path.display(), r.message))?;
    Ok(line.to_owned())
}

struct Asker {
    interactive: bool,
}

impl Asker {
    fn value(
        &mut self,
        given: Option<String>,
        question: &str,
        flag: &str,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> Result<String> {
        if let Some(value) = given {
            return check(&value).map_err(|why| anyhow::anyhow!("{flag} `{value}`: {why}"));
        }
        if !self.interactive {
            bail!("{flag} is required when not asking at a terminal");
        }
        let stdin = std::io::stdin();
        for _ in 0..5 {
            eprint!("{question}: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                bail!("no answer for {flag}");
            }
            match check(line.trim()) {
                Ok(v) => return Ok(v),
                Err(why) => eprintln!("  {why}"),
            }
        }
        bail!("no valid answer for {flag} after 5 tries")
    }

    fn secret(&mut self, question: &str, how: &str) -> Result<String> {
        if !self.interactive {
            bail!("{question} is required when not asking at a terminal: {how}");
        }
        let value = rpassword::prompt_password(format!("{question}: "))?;
        if value.trim().is_empty() {
            bail!("{question} is required: {how}");
        }
        Ok(value)
    }
}

fn site_template(
    domain: &str,
    region: &str,
    publish_url: &str,
    ssh_keys: &[String],
    hosts: &[String],
) -> String {
    let keys: String = ssh_keys.iter().map(|k| format!("  - {k}\n")).collect();
    let host_lines: String = hosts.iter().map(|h| format!("  - name: {h}\n")).collect();
    format!(
        "# Site file written by `builder init`. Every key is documented in
# examples/hosts.yaml. Secrets are not here: they live in hosts.vault.

domain_name: {domain}
# kerberos_realm: {realm}      # default: the domain in upper case

# Logins for the `core` user; DigitalOcean requires at least one.
ssh_keys:
{keys}
# The site's private network (RFC 1918, /16 to /28).
vpc_range: 172.30.0.0/24

# Where nodes fetch the firstboot binary (checked by sha512).
publish:
  base_url: {publish_url}

defaults:
  region: {region}
  size: s-2vcpu-4gb
  image: fedora-coreos
  volumes:
    data_gib: 10
    swap_gib: 2

# The first three hosts are core hosts (etcd, FreeIPA, control plane);
# the first of them bootstraps the site. Add `role: worker` hosts below.
hosts:
{host_lines}",
        realm = domain.to_ascii_uppercase(),
    )
}
