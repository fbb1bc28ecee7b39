//! `builder launch`, `builder status` and `builder destroy`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::artifact::Firstboot;
use crate::cli::{CloudArgs, DestroyArgs, LaunchArgs, Output, StatusArgs};
use crate::cloud::destroy::{self, Scope};
use crate::cloud::launch::{self, elapsed, Launch, Pace};
use crate::cloud::{status, Plan};
use crate::digitalocean::{Client, RetryPolicy, DEFAULT_API_URL, TOKEN_ENVS};
use crate::publish::Publisher;
use crate::render;
use crate::site::Site;
use crate::vault::Secrets;

/// Everything the three commands share: the site, its plan, the API.
struct Opened {
    site: Site,
    plan: Plan,
    firstboot: Firstboot,
    publisher: Publisher,
    secrets: Secrets,
    demo: bool,
}

fn open(args: &CloudArgs) -> Result<Opened> {
    let (site, _) = Site::load(&args.site)?;
    let firstboot = Firstboot::locate(args.firstboot.as_deref())?;
    let (secrets, demo) = super::open_vault(&args.site, &args.vault)?;
    // The user data is exactly what `render` writes.
    let rendered = render::render_site(&site, &secrets, &firstboot, None)?;
    let plan = Plan::new(&site, &rendered)?;
    let publisher = Publisher::new(&site.publish)?;
    Ok(Opened {
        site,
        plan,
        firstboot,
        publisher,
        secrets,
        demo,
    })
}

/// The API client: the token from the environment (the names doctl and
/// Terraform use), else from the vault.
fn client(args: &CloudArgs, opened: &Opened) -> Result<Client> {
    let api = args.api_url.trim_end_matches('/');
    if opened.demo && api == DEFAULT_API_URL {
        bail!(
            "refusing to use the public demo vault against DigitalOcean: its passwords and join \
             secret are published. Run `builder init` for a vault of your own"
        );
    }
    let from_env = TOKEN_ENVS
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|t| !t.trim().is_empty()));
    let token = match from_env {
        Some(token) => token,
        None if !opened.secrets.digitalocean_token.trim().is_empty() => {
            opened.secrets.digitalocean_token.clone()
        }
        None => bail!(
            "no DigitalOcean token: set DIGITALOCEAN_ACCESS_TOKEN, or store one in the vault \
             with `builder init`"
        ),
    };
    Client::new(api, token.trim(), policy_from_env())
        .context("cannot set up the HTTPS client for DigitalOcean")
}

/// The retry policy, with test knobs: `BUILDER_API_TIMEOUT_MS` (one
/// request) and `BUILDER_API_BACKOFF_MS` (the first backoff).
fn policy_from_env() -> RetryPolicy {
    let mut policy = RetryPolicy::digitalocean();
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn launch(args: LaunchArgs) -> Result<()> {
    let opened = open(&args.cloud)?;
    if args.dry_run {
        for line in launch::dry_run(&opened.plan, &opened.publisher, &args.cloud.api_url) {
            println!("{line}");
        }
        println!("(dry run: no call was made)");
        return Ok(());
    }
    let client = client(&args.cloud, &opened)?;
    let started = Instant::now();
    let run = Launch {
        client: &client,
        plan: &opened.plan,
        publisher: &opened.publisher,
        firstboot: &opened.firstboot,
        pace: Pace::from_env(),
    };
    let result = runtime()?.block_on(run.run());
    let sent = client.sent();
    let outcome = result.context("launch stopped; run it again to resume")?;
    if outcome.created.is_empty() {
        eprintln!(
            "launch: {} is complete; nothing changed ({} requests, {} mutating, {})",
            opened.site.domain,
            sent.requests,
            sent.mutating,
            elapsed(started.elapsed())
        );
    } else {
        eprintln!(
            "launch: {} created or repaired {} resource(s) in {} ({} requests, {} mutating); \
             `builder status {}` follows the nodes",
            opened.site.domain,
            outcome.created.len(),
            elapsed(started.elapsed()),
            sent.requests,
            sent.mutating,
            args.cloud.site.display()
        );
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> Result<()> {
    let opened = open(&args.cloud)?;
    let client = client(&args.cloud, &opened)?;
    let mut rows = runtime()?.block_on(status::rows(&client, &opened.plan))?;
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
    let opened = open(&args.cloud)?;
    let client = client(&args.cloud, &opened)?;
    let scope = if args.all {
        Scope::All
    } else {
        Scope::Hosts(args.hosts.clone())
    };
    let runtime = runtime()?;
    let survey = runtime.block_on(destroy::survey(&client, &opened.plan, &scope))?;
    let lines = survey.describe(&opened.publisher, &opened.firstboot);
    for line in &lines {
        println!("{line}");
    }
    if survey.is_empty() {
        println!("nothing of {} to delete", opened.site.domain);
        return Ok(());
    }
    if !args.yes {
        confirm(opened.site.domain.as_str())?;
    }
    runtime.block_on(destroy::execute(
        &client,
        &opened.plan,
        &survey,
        &opened.publisher,
        &opened.firstboot,
        &Pace::from_env(),
    ))?;
    eprintln!("destroy: done");
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
