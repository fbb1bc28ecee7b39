//! `builder init`: a commented site file and a new encrypted vault.
//!
//! Every answer given (flags, environment) is checked first, and every
//! problem is reported at once, naming the flag it came from. At a
//! terminal, what is missing is then asked for, again until it passes;
//! elsewhere, every missing answer is reported at once. The DigitalOcean
//! token is optional: only `launch`, `status` and `destroy` need it, and
//! they read it from $DIGITALOCEAN_ACCESS_TOKEN when the vault has none.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use tracing::info;

use crate::cli::InitArgs;
use crate::digitalocean::{Client, RetryPolicy, API_URL_ENV, DEFAULT_API_URL, TOKEN_ENVS};
use crate::fsutil;
use crate::site::{BaseUrl, BucketName, DomainName, HostName, Refusal, Site, Slug, SshKey};

/// Where nodes fetch firstboot, as init writes it.
enum Publish {
    BaseUrl(String),
    /// A bucket, and its region when given (else the site's).
    Spaces {
        bucket: String,
        region: Option<String>,
    },
}
use crate::vault::{self, PassphraseSource, Secrets, PASSPHRASE_ENV};
use node_contract::{freeipa_password_problem, FreeIpaPassword};

const ADMIN_ENV: &str = "BUILDER_FREEIPA_ADMIN_PASSWORD";
const DM_ENV: &str = "BUILDER_DIRECTORY_MANAGER_PASSWORD";
/// A site needs three core hosts (etcd and FreeIPA quorum).
const MIN_HOSTS: usize = 3;
/// Tries at one question before giving up.
const TRIES: usize = 5;

/// One answer: its flag, its variable, what it is, and how it is asked.
struct Question {
    flag: &'static str,
    env: &'static str,
    what: &'static str,
    prompt: &'static str,
}

const DOMAIN: Question = Question {
    flag: "--domain",
    what: "the site's DNS domain, such as example.com",
    env: "BUILDER_DOMAIN",
    prompt: "Domain of the site (e.g. example.com)",
};
const REGION: Question = Question {
    flag: "--region",
    what: "the DigitalOcean region slug of every droplet, such as ams3",
    env: "BUILDER_REGION",
    prompt: "DigitalOcean region (e.g. ams3)",
};
const PUBLISH_URL: Question = Question {
    flag: "--publish-url",
    what: "the http(s) base URL nodes fetch firstboot from",
    env: "BUILDER_PUBLISH_URL",
    prompt: "Base URL nodes fetch firstboot from (http:// or https://...)",
};
const PUBLISH: Question = Question {
    flag: "--spaces-bucket or --publish-url",
    what: "where nodes fetch firstboot from: a Spaces bucket launch uploads it to, or your own server's base URL",
    env: "BUILDER_SPACES_BUCKET or $BUILDER_PUBLISH_URL",
    prompt: "Where nodes fetch firstboot from:\n  1) a DigitalOcean Spaces bucket: `launch` uploads it, reading \
             SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY (a Spaces key of the control panel)\n  \
             2) your own web server: a base URL; you put the file there\nAnswer 1 or 2",
};
const SPACES_BUCKET: Question = Question {
    flag: "--spaces-bucket",
    what: "the Spaces bucket launch uploads firstboot to",
    env: "BUILDER_SPACES_BUCKET",
    prompt: "Spaces bucket name (created by launch if absent)",
};
const SPACES_REGION: Question = Question {
    flag: "--spaces-region",
    what: "the Spaces bucket's region",
    env: "BUILDER_SPACES_REGION",
    prompt: "Spaces region",
};
const SSH_KEY: Question = Question {
    flag: "--ssh-key",
    what: "an SSH public key file for the `core` user",
    env: "BUILDER_SSH_KEY",
    prompt: "SSH public key file",
};

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

    // Everything given is checked before anything is asked.
    let mut problems = Vec::new();
    let mut domain = given(&DOMAIN, args.domain, check_domain, &mut problems);
    let env_token = TOKEN_ENVS
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()));
    let regions = Regions::find(env_token.as_deref());
    let check_region = |s: &str| regions.check(s);
    let mut region = given(&REGION, args.region, check_region, &mut problems);
    let publish_url = given(&PUBLISH_URL, args.publish_url, check_url, &mut problems);
    let bucket = given(
        &SPACES_BUCKET,
        args.spaces_bucket,
        check_bucket,
        &mut problems,
    );
    let spaces_region = given(
        &SPACES_REGION,
        args.spaces_region,
        check_region,
        &mut problems,
    );
    let mut publish = match (publish_url, bucket) {
        (Some(url), _) => Some(Publish::BaseUrl(url)),
        (None, Some(bucket)) => Some(Publish::Spaces {
            bucket,
            region: spaces_region,
        }),
        (None, None) => None,
    };
    let mut ssh_keys = Vec::new();
    for path in &args.ssh_keys {
        match read_key(path) {
            Ok(key) => ssh_keys.push(key),
            Err(why) => problems.push(format!("{} {}: {why}", SSH_KEY.flag, path.display())),
        }
    }
    let hosts = check_hosts(&args.hosts).unwrap_or_else(|why| {
        problems.push(why);
        Vec::new()
    });
    let admin = password_from_env(ADMIN_ENV, FreeIpaPassword::Admin, &mut problems);
    let directory_manager =
        password_from_env(DM_ENV, FreeIpaPassword::DirectoryManager, &mut problems);
    let passphrase = PassphraseSource::from_env(args.passphrase_file.clone());
    if let Some(path) = &passphrase.file {
        if let Err(why) = first_line(path) {
            problems.push(format!("--passphrase-file {}: {why}", path.display()));
        }
    }
    let default_key = home_key();

    // Then what is missing: asked at a terminal, else reported with the rest.
    if !interactive {
        for (missing, question) in [
            (domain.is_none(), &DOMAIN),
            (region.is_none(), &REGION),
            (publish.is_none(), &PUBLISH),
        ] {
            let refused = |p: &String| question.flag.split(" or ").any(|f| p.starts_with(f));
            if missing && !problems.iter().any(refused) {
                problems.push(format!(
                    "{} (or ${}) is missing: {}",
                    question.flag, question.env, question.what
                ));
            }
        }
        if args.ssh_keys.is_empty() && default_key.is_none() {
            problems.push(format!(
                "{} (or ${}) is missing: {} (none is in ~/.ssh)",
                SSH_KEY.flag, SSH_KEY.env, SSH_KEY.what
            ));
        }
        if passphrase.file.is_none() && passphrase.env.is_none() {
            problems.push(format!(
                "the vault passphrase is missing: set {PASSPHRASE_ENV} or pass --passphrase-file"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(report(&problems));
    }
    let mut ask = Asker;
    if domain.is_none() {
        domain = Some(ask.value(&DOMAIN, None, check_domain)?);
    }
    if region.is_none() {
        region = Some(ask.value(&REGION, None, check_region)?);
    }
    if publish.is_none() {
        publish = Some(
            match ask.value(&PUBLISH, Some("1"), check_choice)?.as_str() {
                "1" => Publish::Spaces {
                    bucket: ask.value(&SPACES_BUCKET, None, check_bucket)?,
                    region: Some(ask.value(&SPACES_REGION, region.as_deref(), check_region)?),
                },
                _ => Publish::BaseUrl(ask.value(&PUBLISH_URL, None, check_url)?),
            },
        );
    }
    if ssh_keys.is_empty() {
        ssh_keys.push(match (&default_key, interactive) {
            (Some(default), false) => read_key(default).map_err(|why| {
                anyhow::anyhow!("the SSH key {}: {why}; pass --ssh-key", default.display())
            })?,
            (default, _) => {
                let default = default.as_ref().map(|d| d.display().to_string());
                ask.value(&SSH_KEY, default.as_deref(), |s| read_key(Path::new(s)))?
            }
        });
    }
    let token = match env_token {
        Some(token) => token,
        None if interactive => ask.optional_secret(
            "DigitalOcean API token (Enter to skip: launch then reads $DIGITALOCEAN_ACCESS_TOKEN)",
        )?,
        None => String::new(),
    };
    let secrets = Secrets {
        format: 1,
        digitalocean_token: token.trim().to_owned(),
        freeipa_admin_password: admin,
        directory_manager_password: directory_manager,
        join_secret: vault::generate_password(43),
        generations: Default::default(),
        admissions: Default::default(),
        core: Default::default(),
    };
    let passphrase = passphrase.for_creating()?;

    let (domain, region) = (domain.unwrap_or_default(), region.unwrap_or_default());
    let publish = match publish {
        Some(Publish::Spaces { bucket, region: r }) => {
            let r = r.unwrap_or_else(|| region.clone());
            format!("  # launch uploads firstboot here; it reads SPACES_ACCESS_KEY_ID and\n  # SPACES_SECRET_ACCESS_KEY.\n  spaces:\n    bucket: {bucket}\n    region: {r}")
        }
        Some(Publish::BaseUrl(url)) => format!("  base_url: {url}"),
        None => String::new(),
    };
    let site_text = site_template(&domain, &region, &publish, &ssh_keys, &hosts);
    // Every answer was checked above: a template that does not parse is
    // this builder's bug, not the operator's.
    if let Err(e) = Site::parse(&site_path.display().to_string(), &site_text) {
        bail!(
            "the site file init would write does not parse ({e}); nothing was written. This is \
             a bug in builder: please report it"
        );
    }
    let sealed = vault::seal(&secrets, &passphrase, None, false)?;

    fsutil::private_dir(&args.dir)?;
    fsutil::write_atomic(&vault_path, &sealed, 0o600)?;
    fsutil::write_atomic(&site_path, site_text.as_bytes(), 0o644)?;
    println!("{}", site_path.display());
    println!("{}", vault_path.display());
    if secrets.digitalocean_token.is_empty() {
        info!(
            "the vault holds no DigitalOcean token: set DIGITALOCEAN_ACCESS_TOKEN for \
             `builder launch`, `status` and `destroy`"
        );
    }
    info!(
        "wrote the site file and its vault; review {} and then run `builder render {}`",
        site_path.display(),
        site_path.display()
    );
    Ok(())
}

/// Every problem at once, each naming the flag or variable it is about.
fn report(problems: &[String]) -> anyhow::Error {
    let mut text = format!(
        "error: builder init cannot go on ({} problem{}); nothing was written:\n",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        text.push_str(&format!("  {problem}\n"));
    }
    text.push_str("(at a terminal, without --non-interactive, missing answers are asked for)");
    crate::Reported(text).into()
}

/// A given answer, checked; a refusal is recorded against its flag.
fn given(
    question: &Question,
    value: Option<String>,
    check: impl Fn(&str) -> Result<String, String>,
    problems: &mut Vec<String>,
) -> Option<String> {
    let value = value?;
    match check(value.trim()) {
        Ok(v) => {
            taken_as(value.trim(), &v);
            Some(v)
        }
        Err(why) => {
            problems.push(format!("{} `{value}`: {why}", question.flag));
            None
        }
    }
}

/// A refusal as one line: its message, and its help if any.
fn said(refusal: Refusal) -> String {
    match refusal.help {
        Some(help) => format!("{} ({help})", refusal.message),
        None => refusal.message,
    }
}

/// A domain in any case: DNS names are case-insensitive, so it is taken
/// in lower case (and the change is said, see [`taken_as`]).
fn check_domain(s: &str) -> Result<String, String> {
    DomainName::parse(&s.to_ascii_lowercase())
        .map(|d| d.to_string())
        .map_err(said)
}

/// The regions DigitalOcean's API specification documents for droplets
/// (`DigitalOcean-public.v2.yaml`: the `region` enum of VPC NAT gateways,
/// which lists every droplet region, and the databases' `ric1`).
pub const REGIONS: &[&str] = &[
    "ams2", "ams3", "atl1", "blr1", "fra1", "lon1", "nyc1", "nyc2", "nyc3", "ric1", "sfo1", "sfo2",
    "sfo3", "sgp1", "syd1", "tor1",
];

/// The regions a slug is checked against, and where they come from.
struct Regions {
    slugs: Vec<String>,
    from: &'static str,
}

impl Regions {
    /// The account's regions from the API (`GET /v2/regions`, those
    /// available) when a token is at hand; else, or when the API cannot
    /// be read, the regions the specification documents (said so).
    fn find(token: Option<&str>) -> Regions {
        let documented = Regions {
            slugs: REGIONS.iter().map(|r| (*r).to_owned()).collect(),
            from: "DigitalOcean's documented regions",
        };
        let Some(token) = token else {
            return documented;
        };
        let base = std::env::var(API_URL_ENV).unwrap_or_else(|_| DEFAULT_API_URL.to_owned());
        // One question at the start of init: a short wait, not launch's.
        let policy = RetryPolicy {
            attempts: 2,
            deadline: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            ..RetryPolicy::digitalocean()
        };
        let listed = Client::new(&base, token, policy).and_then(|client| {
            let runtime = crate::net::runtime()?;
            Ok(runtime.block_on(client.list("/v2/regions", "regions"))?)
        });
        match listed {
            Ok(regions) => {
                let slugs: Vec<String> = regions
                    .iter()
                    .filter(|r| r["available"] == true)
                    .filter_map(|r| r["slug"].as_str().map(str::to_owned))
                    .collect();
                if slugs.is_empty() {
                    eprintln!(
                        "note: DigitalOcean's API lists no available region; regions are \
                         checked against the documented ones"
                    );
                    return documented;
                }
                Regions {
                    slugs,
                    from: "the regions your DigitalOcean account offers (GET /v2/regions)",
                }
            }
            Err(e) => {
                eprintln!(
                    "note: cannot list DigitalOcean's regions ({e:#}); regions are checked \
                     against the documented ones"
                );
                documented
            }
        }
    }

    fn check(&self, s: &str) -> Result<String, String> {
        let slug = Slug::parse(&s.to_ascii_lowercase(), "region", "ams3").map_err(said)?;
        if self.slugs.iter().any(|r| r == slug.as_str()) {
            return Ok(slug.to_string());
        }
        let close = close_regions(&self.slugs, slug.as_str());
        let hint = if close.is_empty() {
            String::new()
        } else {
            format!("; close to it: {}", close.join(", "))
        };
        Err(format!(
            "not a DigitalOcean region{hint} ({}: {}; a region opened since can be written in \
             hosts.yaml by hand)",
            self.from,
            self.slugs.join(", ")
        ))
    }
}

/// Regions one edit from `slug`, or in the same city.
fn close_regions<'a>(regions: &'a [String], slug: &str) -> Vec<&'a str> {
    regions
        .iter()
        .map(String::as_str)
        .filter(|r| r.get(..3) == slug.get(..3) || edits(r, slug) <= 1)
        .collect()
}

/// The edit distance of two short strings.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Say it when an answer was taken in lower case.
fn taken_as(answer: &str, value: &str) {
    if answer != value && answer.eq_ignore_ascii_case(value) {
        eprintln!("  taken as `{value}`: DNS names and region slugs are case-insensitive");
    }
}

fn check_bucket(s: &str) -> Result<String, String> {
    BucketName::parse(s).map(|b| b.to_string()).map_err(said)
}

fn check_choice(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "spaces" => Ok("1".into()),
        "2" | "url" | "base url" => Ok("2".into()),
        _ => Err("answer 1 (a Spaces bucket) or 2 (your own server's base URL)".into()),
    }
}

fn check_url(s: &str) -> Result<String, String> {
    BaseUrl::parse(s).map(|u| u.to_string()).map_err(said)
}

/// The host names of `--hosts`, or ns1..ns3.
fn check_hosts(names: &[String]) -> Result<Vec<String>, String> {
    if names.is_empty() {
        return Ok(vec!["ns1".into(), "ns2".into(), "ns3".into()]);
    }
    let mut problems = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Err(refusal) = HostName::parse(name) {
            problems.push(format!("`{name}`: {}", said(refusal)));
        } else if names[..i].contains(name) {
            problems.push(format!("`{name}` is given twice"));
        }
    }
    if names.len() < MIN_HOSTS {
        problems.push(format!(
            "a site needs at least {MIN_HOSTS} hosts (the first three run etcd and FreeIPA), \
             but {} name{} given",
            names.len(),
            if names.len() == 1 { " is" } else { "s are" }
        ));
    }
    if problems.is_empty() {
        Ok(names.to_vec())
    } else {
        Err(format!(
            "--hosts `{}`: {}",
            names.join(","),
            problems.join("; ")
        ))
    }
}

fn password_from_env(name: &str, which: FreeIpaPassword, problems: &mut Vec<String>) -> String {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => vault::generate_password(24),
        Some(p) => match freeipa_password_problem(which, &p) {
            Some(why) => {
                problems.push(format!("{name} ({}): {why}", which.describe()));
                String::new()
            }
            None => p,
        },
    }
}

fn first_line(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({e})"))?;
    if text.lines().next().unwrap_or_default().is_empty() {
        return Err("its first line is empty".into());
    }
    Ok(())
}

fn home_key() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|f| home.join(".ssh").join(f))
        .find(|p| p.is_file())
}

/// The first line of a public key file, checked.
fn read_key(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({e})"))?;
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    SshKey::parse(line).map_err(said)?;
    Ok(line.to_owned())
}

/// Questions at a terminal; each asked again until its answer passes.
struct Asker;

impl Asker {
    /// `default` is taken for an empty answer.
    fn value(
        &mut self,
        question: &Question,
        default: Option<&str>,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> Result<String> {
        let stdin = std::io::stdin();
        let shown = default.map(|d| format!(" [{d}]")).unwrap_or_default();
        for _ in 0..TRIES {
            eprint!("{} ({}){shown}: ", question.prompt, question.flag);
            std::io::stderr().flush().ok();
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                bail!(
                    "no answer for {} (input ended); nothing was written",
                    question.flag
                );
            }
            let answer = match (line.trim(), default) {
                ("", Some(default)) => default.to_owned(),
                (answer, _) => answer.to_owned(),
            };
            match check(&answer) {
                Ok(v) => {
                    taken_as(&answer, &v);
                    return Ok(v);
                }
                Err(why) => eprintln!("  `{answer}`: {why}; try again"),
            }
        }
        bail!(
            "no valid answer for {} after {TRIES} tries; nothing was written",
            question.flag
        )
    }

    fn optional_secret(&mut self, question: &str) -> Result<String> {
        Ok(rpassword::prompt_password(format!("{question}: "))?)
    }
}

fn site_template(
    domain: &str,
    region: &str,
    publish: &str,
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
{publish}

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
