//! `builder launch`, `builder status` and `builder destroy`.
//!
//! `status` and `destroy` need only the site file and an API token: with
//! the token in the environment they open no vault and read no firstboot
//! binary. `launch` renders every host's config (the droplets' user data),
//! so it needs the vault and the binary as `render` does.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::Url;
use tracing::info;

use crate::artifact::Firstboot;
use crate::cli::{CloudArgs, DestroyArgs, LaunchArgs, Output, StatusArgs};
use crate::cloud::destroy::{self, Scope};
use crate::cloud::kinds::image::{Choice, Import};
use crate::cloud::launch::{self, Launch, Pace};
use crate::cloud::{status, Plan};
use crate::digitalocean::{Client, RetryPolicy, API_URL_ENV, DEFAULT_API_URL, TOKEN_ENVS};
use crate::images::fcos_streams::StreamsClient;
use crate::log::elapsed;
use crate::publish::Publisher;
use crate::render;
use crate::site::Site;
use crate::vault::{self, Secrets};

/// The site and what it needs on DigitalOcean: no secret, no binary.
fn open_site(args: &CloudArgs) -> Result<(Site, Plan)> {
    let (site, _) = Site::load(&args.site)?;
    let plan = Plan::new(&site)?;
    Ok((site, plan))
}

/// The API client. The token comes from the environment (the names doctl
/// and Terraform use), else from the vault, which is opened only then
/// (`vault`: already opened by `launch`, with whether it is the demo one).
/// A lab site (and the demo vault) is refused against DigitalOcean.
fn client(args: &CloudArgs, vault: Option<&(Secrets, bool)>, plan: &Plan) -> Result<Client> {
    let api = Url::parse(&args.api_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .with_context(|| {
            format!(
                "--api-url `{}` is not an http(s) URL (it also comes from {API_URL_ENV})",
                args.api_url
            )
        })?;
    let from_env = TOKEN_ENVS
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|t| !t.trim().is_empty()));
    let (token, demo) = match (from_env, vault) {
        (Some(token), vault) => (token, vault.is_some_and(|(_, demo)| *demo)),
        (None, Some((secrets, demo))) => (secrets.digitalocean_token.clone(), *demo),
        (None, None) => {
            let (secrets, demo) = super::open_vault(&args.site, &args.vault)?;
            (secrets.digitalocean_token, demo)
        }
    };
    if token.trim().is_empty() {
        let vault = args
            .vault
            .vault
            .clone()
            .unwrap_or_else(|| vault::path_for(&args.site));
        bail!(
            "no DigitalOcean API token: set DIGITALOCEAN_ACCESS_TOKEN (a token with read and \
             write scope, from the control panel under API, Tokens); the vault {} holds none, as \
             `builder init` leaves it when given no token",
            vault.display()
        );
    }
    let official = Url::parse(DEFAULT_API_URL).expect("a valid URL");
    if plan.image.image == crate::images::LAB && api.host_str() == official.host_str() {
        bail!(
            "the site runs on the `lab` image, which boots only in a lab cloud (the tests' \
             stand-in for DigitalOcean); set `image: fedora-coreos` for DigitalOcean"
        );
    }
    if demo && api.host_str() == official.host_str() {
        bail!(
            "refusing to use the public demo vault against DigitalOcean: its passwords and join \
             secret are published. Run `builder init` for a vault of your own"
        );
    }
    Client::new(
        api.as_str(),
        token.trim(),
        policy_from_env(RetryPolicy::digitalocean()),
    )
}

/// A retry policy with the test knobs applied: `BUILDER_API_TIMEOUT_MS`
/// (one request) and `BUILDER_API_BACKOFF_MS` (the first backoff), for the
/// DigitalOcean API and the stream metadata alike.
fn policy_from_env(mut policy: RetryPolicy) -> RetryPolicy {
    let ms = |name: &str| {
        std::env::var(name)
            .ok()?
            .parse::<u64>()
            .ok()
            .map(Duration::from_millis)
    };
    if let Some(t) = ms("BUILDER_API_TIMEOUT_MS") {
        policy.request_timeout = t;
    }
    if let Some(b) = ms("BUILDER_API_BACKOFF_MS") {
        policy.first_backoff = b;
        policy.max_backoff = policy.max_backoff.min(b * 16);
    }
    policy
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::net::runtime().context("cannot start the async runtime")
}

/// The image launch imports, its release chosen: a pinned release and the
/// lab image read nothing; otherwise the stream's metadata is read (under
/// `streams_url` when given, else where the image says), and a failure to
/// read it is an error that says how to pin a release, never a silent
/// fall back to an older one.
fn choose_image(plan: &Plan, streams_url: Option<&str>) -> Result<Import> {
    match plan.image.choice() {
        Choice::Known(import) => Ok(import),
        Choice::Current { metadata, .. } => {
            let streams = StreamsClient::new(
                streams_url.unwrap_or(metadata),
                policy_from_env(StreamsClient::policy()),
            )?;
            runtime()?.block_on(plan.image.choose(&streams))
        }
    }
}

pub fn launch(args: LaunchArgs) -> Result<()> {
    let (site, plan) = open_site(&args.cloud)?;
    let firstboot = Firstboot::locate(args.firstboot.as_deref())?;
    let (mut secrets, demo, vault_file) =
        super::open_vault_for_change(&args.cloud.site, &args.cloud.vault)?;
    // Every host gets the site's admission of its credential, open from
    // now unless one is open already: a host added to the site file after
    // the bootstrap host's own window closed joins by it. Recorded before
    // anything is created (a dry run records nothing), so that `render`
    // gives what the droplets carry.
    refuse_late_core_hosts(&site, &secrets)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let opened = secrets.admit(
        site.hosts.iter().map(|h| &h.name),
        now,
        node_contract::identity::ADMISSION_WINDOW,
    );
    if !opened.is_empty() && !args.dry_run {
        vault_file.write(&secrets, demo).context(
            "nothing was created: launch records each host's admission window in the vault first",
        )?;
        info!(
            "admission: {} may join the site for the first time until {} h from now",
            opened
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            node_contract::identity::ADMISSION_WINDOW / 3600
        );
    }
    let vault = (secrets, demo);
    // The user data is exactly what `render` writes.
    let rendered = render::render_site(&site, &vault.0, &firstboot, None)?;
    let user_data = rendered
        .into_iter()
        .map(|r| Ok((r.host.clone(), String::from_utf8(r.bytes)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let publisher = Publisher::new(&site.publish)?;
    let streams_url = args.fcos_streams_url.as_deref();
    if args.dry_run {
        let image = choose_image(&plan, streams_url)?;
        for line in launch::dry_run(&plan, &image, &user_data, &publisher, &args.cloud.api_url) {
            println!("{line}");
        }
        println!("(dry run: no call was made to DigitalOcean)");
        return Ok(());
    }
    // The refusals of a lab site and a demo vault come before anything is
    // read; the release is chosen before anything is created.
    let client = client(&args.cloud, Some(&vault), &plan)?;
    let image = choose_image(&plan, streams_url)?;
    let started = Instant::now();
    let run = Launch {
        client: &client,
        plan: &plan,
        image: &image,
        user_data: &user_data,
        publisher: &publisher,
        firstboot: &firstboot,
        pace: Pace::from_env(),
    };
    let result = runtime()?.block_on(run.run());
    let sent = client.sent();
    let outcome = result.context("launch stopped; run it again, it resumes")?;
    if outcome.created.is_empty() {
        info!(
            "{} is complete; nothing changed ({} requests, {} mutating, {})",
            site.domain,
            sent.requests,
            sent.mutating,
            elapsed(started.elapsed())
        );
    } else {
        info!(
            "{} created or repaired {} resource(s) in {} ({} requests, {} mutating); \
             `builder status {}` follows the nodes",
            site.domain,
            outcome.created.len(),
            elapsed(started.elapsed()),
            sent.requests,
            sent.mutating,
            args.cloud.site.display()
        );
    }
    Ok(())
}

/// Core hosts are fixed by the site's first launch: every node's config
/// names them (etcd's members, FreeIPA's servers), and a running
/// droplet's config never changes, so the bootstrap host refuses a core
/// host it does not know. Refused here first, before anything is created:
/// a core host the vault has no admission or credential record of, in a
/// site launched before (whose vault records admissions).
fn refuse_late_core_hosts(site: &Site, secrets: &Secrets) -> Result<()> {
    if secrets.admissions.is_empty() {
        return Ok(());
    }
    let late: Vec<&str> = site
        .hosts
        .iter()
        .filter(|h| h.role == node_contract::Role::Core)
        .filter(|h| {
            !secrets.admissions.contains_key(&h.name) && !secrets.generations.contains_key(&h.name)
        })
        .map(|h| h.name.as_str())
        .collect();
    if late.is_empty() {
        return Ok(());
    }
    bail!(
        "nothing was created: {} would be core host(s) added to a site already launched; its \
         core hosts are fixed at its first launch (the other nodes know no others), so add a \
         host later as a worker (`role: worker` in the site file)",
        late.join(", ")
    )
}

pub fn status(args: StatusArgs) -> Result<()> {
    let (_, plan) = open_site(&args.cloud)?;
    let client = client(&args.cloud, None, &plan)?;
    let mut rows = runtime()?.block_on(status::rows(&client, &plan))?;
    if !args.no_ssh {
        let ssh = std::env::var("BUILDER_SSH").unwrap_or_else(|_| "ssh".into());
        status::read_phases(&mut rows, &ssh);
    }
    match args.output {
        Output::Table => print!("{}", status::table(&rows)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    Ok(())
}

pub fn destroy(args: DestroyArgs) -> Result<()> {
    let (site, plan) = open_site(&args.cloud)?;
    let client = client(&args.cloud, None, &plan)?;
    let publisher = Publisher::new(&site.publish)?;
    let scope = if args.all {
        Scope::All
    } else {
        Scope::Hosts(args.hosts.clone())
    };
    let runtime = runtime()?;
    let survey = runtime.block_on(destroy::survey(&client, &plan, &publisher, &scope))?;
    for line in survey.describe() {
        println!("{line}");
    }
    if survey.is_empty() {
        println!("nothing of {} to delete", site.domain);
        return Ok(());
    }
    // The hosts whose droplet goes have their credential retired first,
    // so that a failure after it leaves a relaunch that still works (a
    // raised generation with the droplet still there changes nothing
    // until it is launched again); the other order could leave a host
    // that can never take its name back.
    let retired: Vec<&crate::cloud::plan::DropletPlan> = plan
        .droplets
        .iter()
        .filter(|d| survey.droplets.iter().any(|doomed| doomed.name == d.name))
        .collect();
    for d in &retired {
        println!(
            "retire   credential of {} (its user data will be refused)",
            d.host
        );
    }
    if !args.yes {
        confirm(site.domain.as_str())?;
    }
    if !retired.is_empty() {
        let (mut secrets, demo, vault) =
            super::open_vault_for_change(&args.cloud.site, &args.cloud.vault).context(
                "nothing was deleted: destroy retires each deleted host's credential in the \
                 vault, so that a copy of its user data is refused once it is launched again",
            )?;
        for d in &retired {
            let host = node_contract::HostName::parse(&d.host)
                .map_err(|e| anyhow::anyhow!("host `{}`: {e}", d.host))?;
            let generation = secrets.retire(&host);
            info!(
                "destroy: {host}'s credential retired; its next launch is generation {generation}"
            );
        }
        vault
            .write(&secrets, demo)
            .context("nothing was deleted: the vault could not record the retired credentials")?;
    }
    runtime
        .block_on(destroy::execute(
            &client,
            &survey,
            &publisher,
            &Pace::from_env(),
        ))
        .context("destroy stopped; what is reported above as deleted is gone; run it again to delete the rest")?;
    info!("destroy: done");
    Ok(())
}

/// The operator types the site's domain, at a terminal.
fn confirm(domain: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("not at a terminal, so nothing was deleted: pass --yes to destroy without asking");
    }
    eprint!("type the site's domain ({domain}) to delete the above: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != domain {
        bail!("the answer was not `{domain}`; nothing was deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(hosts: &str) -> Site {
        let text = format!(
            "domain_name: lab.example.org\nssh_keys:\n  - ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAIBdn1ZXuEs9c6tnGpQUc3YXUDBklgj/+6uuPBcm7fkBn op@example\n\
             publish:\n  base_url: https://dl.example.org/fb\ndefaults:\n  region: ams3\n\
             hosts:\n{hosts}"
        );
        Site::parse("site", &text).unwrap()
    }

    fn secrets() -> Secrets {
        Secrets {
            format: 1,
            digitalocean_token: String::new(),
            freeipa_admin_password: "a".repeat(12),
            directory_manager_password: "d".repeat(12),
            join_secret: "j".repeat(43),
            generations: Default::default(),
            admissions: Default::default(),
        }
    }

    #[test]
    fn a_core_host_added_after_the_first_launch_is_refused_before_anything() {
        let first = site("  - ns1\n  - ns2\n  - ns3\n  - www\n");
        let mut secrets = secrets();
        // The first launch: no admission recorded yet, all are new.
        refuse_late_core_hosts(&first, &secrets).unwrap();
        secrets.admit(first.hosts.iter().map(|h| &h.name), 1_000, 10);
        // A worker added at the end: admitted by its own admission.
        let worker = site("  - ns1\n  - ns2\n  - ns3\n  - www\n  - mail\n");
        refuse_late_core_hosts(&worker, &secrets).unwrap();
        // A host put second becomes core by position (and ns3 a worker):
        // refused, naming it.
        let shifted = site("  - ns1\n  - mail\n  - ns2\n  - ns3\n  - www\n");
        let refused = format!(
            "{:#}",
            refuse_late_core_hosts(&shifted, &secrets).unwrap_err()
        );
        assert!(
            refused.contains("mail would be core") && refused.contains("role: worker"),
            "{refused}"
        );
        // A core host destroyed (its admission closed with its credential)
        // and launched again is no newcomer.
        let ns2 = first.hosts[1].name.clone();
        secrets.retire(&ns2);
        refuse_late_core_hosts(&first, &secrets).unwrap();
    }
}
