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
use node_contract::HostName;
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
    let core = settle_core(&site, &secrets)?;
    let added: Vec<&str> = core
        .iter()
        .filter(|h| !secrets.core.contains(h) && !secrets.admissions.is_empty())
        .map(HostName::as_str)
        .collect();
    if !added.is_empty() {
        info!(
            "core: {} join the running site's etcd cluster and FreeIPA as core host(s) added later",
            added.join(", ")
        );
    }
    let recorded = core != secrets.core;
    secrets.core = core;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let opened = secrets.admit(
        site.hosts.iter().map(|h| &h.name),
        now,
        node_contract::identity::ADMISSION_WINDOW,
    );
    if (recorded || !opened.is_empty()) && !args.dry_run {
        vault_file.write(&secrets, demo).context(
            "nothing was created: launch records each host's admission window and the core \
             hosts in the vault first",
        )?;
    }
    if !opened.is_empty() && !args.dry_run {
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

/// The site's core hosts as this launch leaves them: the site file's, in
/// its order. At the first launch (no host has a live admission: none was
/// launched, or `destroy --all` retired all) they are whatever the file
/// says. After it, every running node's config names the core hosts it was
/// launched with and etcd and FreeIPA count on them, so the file may add
/// core hosts (they join the running cluster) but not:
/// - make a core host of a running site a worker (a host inserted before
///   it takes its place by position, or `role: worker`);
/// - put another host first among the core hosts (the first is the
///   bootstrap host, which every node's config names);
/// - make a core host of a running worker (its droplet has a worker's
///   config: `destroy --host` it first).
///
/// Refused here, before anything is created. A vault from before this
/// record knows the core hosts launched as those with a credential on
/// record.
fn settle_core(site: &Site, secrets: &Secrets) -> Result<Vec<HostName>> {
    let core: Vec<HostName> = site
        .hosts
        .iter()
        .filter(|h| h.role == node_contract::Role::Core)
        .map(|h| h.name.clone())
        .collect();
    if secrets.admissions.is_empty() {
        return Ok(core);
    }
    let launched: Vec<HostName> = if secrets.core.is_empty() {
        core.iter()
            .filter(|h| secrets.admissions.contains_key(*h) || secrets.generations.contains_key(*h))
            .cloned()
            .collect()
    } else {
        secrets.core.clone()
    };
    let role_of = |name: &HostName| site.hosts.iter().find(|h| &h.name == name).map(|h| h.role);
    let mut refusals = Vec::new();
    for host in &launched {
        if role_of(host) == Some(node_contract::Role::Worker) {
            refusals.push(format!(
                "{host} was launched as a core host (an etcd member and FreeIPA server every \
                 node counts on) and the site file now makes it a worker: a host put before \
                 it takes its place by position; add new hosts after it, or give them a `role:`"
            ));
        }
    }
    if let (Some(bootstrap), Some(first)) = (launched.first(), core.first()) {
        if bootstrap != first && role_of(bootstrap) == Some(node_contract::Role::Core) {
            refusals.push(format!(
                "{first} would come before {bootstrap} among the core hosts, and the first is \
                 the site's bootstrap host, which every running node's config names as \
                 {bootstrap}: list {first} after it"
            ));
        }
    }
    for host in core.iter().filter(|h| !launched.contains(h)) {
        if secrets.admissions.contains_key(host) {
            refusals.push(format!(
                "{host} runs as a worker and the site file now makes it a core host: its \
                 droplet carries a worker's config (`builder destroy --host {host}`, then \
                 `builder launch`, brings it back as a core host)"
            ));
        }
    }
    if !refusals.is_empty() {
        bail!("nothing was created: {}", refusals.join("; "));
    }
    // The core hosts launched before first, in their order (one gone from
    // the file stays on record: its name does not come back as a worker),
    // then the ones added now, in the file's.
    let mut settled = launched.clone();
    settled.extend(core.iter().filter(|h| !launched.contains(h)).cloned());
    Ok(settled)
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
            core: Default::default(),
        }
    }

    fn names(hosts: &[HostName]) -> Vec<&str> {
        hosts.iter().map(HostName::as_str).collect()
    }

    /// After the first launch, core hosts may be added (after the others,
    /// or anywhere with `role: core`), but no running core host becomes a
    /// worker, none comes before the bootstrap host, and no running worker
    /// becomes core: each refused by name, before anything is created.
    #[test]
    fn core_hosts_may_be_added_but_no_running_host_changes_its_role() {
        let first = site("  - ns1\n  - ns2\n  - ns3\n  - www\n");
        let mut secrets = secrets();
        // The first launch: no admission recorded yet, the file decides.
        let core = settle_core(&first, &secrets).unwrap();
        assert_eq!(names(&core), ["ns1", "ns2", "ns3"]);
        secrets.core = core;
        secrets.admit(first.hosts.iter().map(|h| &h.name), 1_000, 10);
        // A worker added at the end changes nothing.
        let worker = site("  - ns1\n  - ns2\n  - ns3\n  - www\n  - mail\n");
        assert_eq!(
            names(&settle_core(&worker, &secrets).unwrap()),
            ["ns1", "ns2", "ns3"]
        );
        // Core hosts added, in a pair (the site file wants an odd count).
        let added = site(
            "  - ns1\n  - ns2\n  - ns3\n  - www\n  - name: ns4\n    role: core\n  - name: ns5\n    \
             role: core\n",
        );
        assert_eq!(
            names(&settle_core(&added, &secrets).unwrap()),
            ["ns1", "ns2", "ns3", "ns4", "ns5"]
        );
        // A host put second is core by position, and ns3 a worker.
        let shifted = site("  - ns1\n  - mail\n  - ns2\n  - ns3\n  - www\n");
        assert_eq!(shifted.hosts[3].role, node_contract::Role::Worker);
        let refused = format!("{:#}", settle_core(&shifted, &secrets).unwrap_err());
        assert!(
            refused.contains("ns3 was launched as a core host") && refused.contains("worker"),
            "{refused}"
        );
        // Another core host first would move the bootstrap host.
        let before = site(
            "  - name: ns0\n    role: core\n  - ns1\n  - ns2\n  - name: ns3\n    role: core\n  \
             - www\n  - name: ns4\n    role: core\n",
        );
        let refused = format!("{:#}", settle_core(&before, &secrets).unwrap_err());
        assert!(
            refused.contains("ns0 would come before ns1") && refused.contains("bootstrap host"),
            "{refused}"
        );
        // A running worker made core: refused until it is destroyed.
        let promoted = site(
            "  - ns1\n  - ns2\n  - ns3\n  - name: www\n    role: core\n  - name: ns4\n    \
             role: core\n",
        );
        let refused = format!("{:#}", settle_core(&promoted, &secrets).unwrap_err());
        assert!(
            refused.contains("www runs as a worker") && refused.contains("destroy --host www"),
            "{refused}"
        );
        secrets.retire(&first.hosts[3].name);
        assert_eq!(
            names(&settle_core(&promoted, &secrets).unwrap()),
            ["ns1", "ns2", "ns3", "www", "ns4"]
        );
        // A core host destroyed (its admission closed with its credential)
        // and launched again is what it was.
        secrets.retire(&first.hosts[1].name);
        assert_eq!(
            names(&settle_core(&first, &secrets).unwrap()),
            ["ns1", "ns2", "ns3"]
        );
        // A vault from before the record: the core hosts with a credential
        // on record are the launched ones; a new one is added.
        let mut older = secrets.clone();
        older.core.clear();
        let core_added = site(
            "  - ns1\n  - ns2\n  - ns3\n  - www\n  - name: ns4\n    role: core\n  - name: ns5\n    \
             role: core\n",
        );
        assert_eq!(
            names(&settle_core(&core_added, &older).unwrap()),
            ["ns1", "ns2", "ns3", "ns4", "ns5"]
        );
        // After `destroy --all` (every admission gone) the file decides again.
        let mut gone = secrets.clone();
        gone.admissions.clear();
        assert_eq!(
            names(&settle_core(&shifted, &gone).unwrap()),
            ["ns1", "mail", "ns2"]
        );
    }
}
