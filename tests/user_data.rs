//! What a node's user data holds (issue 8): the metadata service serves it
//! to anything on the droplet, forever, so it is read here as an attacker
//! would, every rendered config of a site decoded in full.
//!
//! - no config holds anything from which another node's key (or any
//!   node's ticket) can be made: not the vault's root secret, not the site
//!   signing key's seed (each searched for in every decoded file, as
//!   bytes, hex and base64), not another node's key;
//! - only the bootstrap host's config holds the FreeIPA passwords;
//! - the bootstrap host's config does not grow with the site.

mod support;

use base64::Engine;
use builder::render::{self, keys::SiteKeys};
use builder::site::Site;
use node_contract::{Generation, NodeConfig, Role, Seed, SigningKey};
use support::site::{generated_site, test_secrets, tiny_firstboot};

/// Every byte a config carries, with its gzip'd and base64'd files
/// opened: what a reader of the user data sees.
fn every_byte_in(config: &[u8]) -> Vec<u8> {
    let mut all = config.to_vec();
    let value: serde_json::Value = serde_json::from_slice(config).unwrap();
    for file in value["storage"]["files"].as_array().unwrap() {
        let source = file["contents"]["source"].as_str().unwrap_or_default();
        if let Some(data) = source.strip_prefix("data:;base64,") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            let plain = if file["contents"]["compression"] == "gzip" {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                    .unwrap();
                out
            } else {
                bytes
            };
            all.extend_from_slice(&plain);
        }
    }
    all
}

/// [`every_byte_in`] as text.
fn everything_in(config: &[u8]) -> String {
    String::from_utf8_lossy(&every_byte_in(config)).into_owned()
}

/// The forms a secret of these bytes could be written in: itself, hex
/// (either case), base64 (standard and URL-safe, padded or not).
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut forms = vec![
        secret.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
    ];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret).into_bytes());
    }
    forms
}

/// Whether `haystack` holds `secret` in any of its [`forms`].
fn holds_any_form(haystack: &[u8], secret: &[u8]) -> bool {
    forms(secret)
        .iter()
        .any(|form| haystack.windows(form.len()).any(|w| w == form.as_slice()))
}

fn contract_of(config: &[u8]) -> NodeConfig {
    let text = everything_in(config);
    let start = text
        .find("{\n  \"schema\"")
        .expect("node.json in the config");
    let end = text[start..].find("\n}\n").unwrap() + start + 3;
    NodeConfig::from_json(&text.as_bytes()[start..end]).unwrap()
}

fn render_site(n: usize) -> (Site, Vec<render::Rendered>) {
    let site = Site::parse("site", &generated_site(n, "https://dl.example.org/fb")).unwrap();
    let configs = render::render_site(&site, &test_secrets(), &tiny_firstboot(), None).unwrap();
    (site, configs)
}

#[test]
fn no_config_holds_what_makes_another_nodes_credential() {
    let (site, configs) = render_site(5);
    let secrets = test_secrets();
    let keys = SiteKeys::derive(&secrets.join_secret);
    let seeds: Vec<(String, Seed)> = site
        .hosts
        .iter()
        .map(|h| {
            let (seed, _) = keys.node(&site.domain, &h.name, h.role, Generation::FIRST);
            (h.name.to_string(), seed)
        })
        .collect();
    let backup_key = keys.ca_backup(&site.bootstrap().name);
    let site_seed = keys.site_seed();
    // The checks below can see a secret: the bootstrap host's own seed is
    // found in its config in one of these forms.
    let (own, _) = keys.node(
        &site.domain,
        &site.bootstrap().name,
        site.bootstrap().role,
        Generation::FIRST,
    );
    let bootstrap = configs
        .iter()
        .find(|c| c.host == site.bootstrap().name.as_str())
        .unwrap();
    assert!(holds_any_form(
        &every_byte_in(&bootstrap.bytes),
        own.as_bytes()
    ));
    for config in &configs {
        let bytes = every_byte_in(&config.bytes);
        let text = everything_in(&config.bytes);
        // Every decoded config, in every form a secret could take: the
        // vault's root secret and the site signing key's seed.
        assert!(
            !holds_any_form(&bytes, secrets.join_secret.as_bytes()),
            "{}: the vault's root secret",
            config.host
        );
        assert!(
            !holds_any_form(&bytes, site_seed.as_bytes()),
            "{}: the site signing key's seed",
            config.host
        );
        assert_eq!(
            SigningKey::from_seed(&site_seed).public_key(),
            contract_of(&config.bytes).site.site_key,
            "the seed searched for is not the site's signing key"
        );
        // No config may hold a key whose public half is the site key.
        let contract = contract_of(&config.bytes);
        assert_ne!(
            SigningKey::from_seed(&contract.identity.key).public_key(),
            contract.site.site_key,
            "{}: holds the site signing key",
            config.host
        );
        for (other, seed) in &seeds {
            let held = text.contains(&seed.to_hex());
            assert_eq!(
                held,
                *other == config.host,
                "{}: {} node {other}'s key",
                config.host,
                if held { "holds" } else { "lacks" }
            );
        }
        // The CA-copy key: the bootstrap host's alone.
        assert_eq!(
            text.contains(&backup_key.to_hex()),
            config.host == site.bootstrap().name.as_str(),
            "{}: the CA-copy key",
            config.host
        );
        // What it holds verifies as its own ticket and no one else's.
        let ticket = contract.ticket();
        assert_eq!(ticket.node.as_str(), config.host);
        assert_eq!(
            ticket.verify(&contract.site.site_key, &contract.site.domain),
            Ok(())
        );
    }
}

#[test]
fn a_retired_host_renders_a_new_credential_and_nothing_of_the_old() {
    let site = Site::parse("site", &generated_site(4, "https://dl.example.org/fb")).unwrap();
    let mut secrets = test_secrets();
    let before = render::render_site(&site, &secrets, &tiny_firstboot(), None).unwrap();
    let host = site.hosts[1].name.clone();
    assert_eq!(secrets.retire(&host), Generation::FIRST.next());
    let after = render::render_site(&site, &secrets, &tiny_firstboot(), None).unwrap();
    let keys = SiteKeys::derive(&secrets.join_secret);
    let (old_seed, _) = keys.node(&site.domain, &host, Role::Core, Generation::FIRST);
    for (b, a) in before.iter().zip(&after) {
        let (old, new) = (contract_of(&b.bytes), contract_of(&a.bytes));
        if b.host == host.as_str() {
            assert_eq!(new.identity.generation, Generation::FIRST.next());
            assert_ne!(new.identity.key, old.identity.key);
            assert!(!everything_in(&a.bytes).contains(&old_seed.to_hex()));
            assert_eq!(
                new.ticket().verify(&new.site.site_key, &new.site.domain),
                Ok(())
            );
        } else {
            // Every other host's config is byte for byte the same.
            assert_eq!(a.bytes, b.bytes, "{}", b.host);
        }
    }
}

/// Launch's admissions (in the vault) reach each host's config as the
/// site key's signature for that host's credential and window alone; a
/// retired host's goes with its credential; a host without one renders
/// none.
#[test]
fn each_admission_is_signed_for_its_own_credential() {
    let site = Site::parse("site", &generated_site(4, "https://dl.example.org/fb")).unwrap();
    let mut secrets = test_secrets();
    let names: Vec<_> = site.hosts.iter().map(|h| h.name.clone()).collect();
    let opened = secrets.admit(names.iter().take(3), 1_000, 50);
    assert_eq!(opened, names[..3]);
    let configs = render::render_site(&site, &secrets, &tiny_firstboot(), None).unwrap();
    for (i, config) in configs.iter().enumerate() {
        let contract = contract_of(&config.bytes);
        let admission = contract.identity.admission.clone();
        if i == 3 {
            assert_eq!(admission, None, "{}", config.host);
            continue;
        }
        let admission = admission.expect("an admission");
        assert_eq!(admission.not_after, 1_050);
        let (key, domain) = (contract.site.site_key, &contract.site.domain);
        assert_eq!(admission.verify(&key, domain, &contract.ticket()), Ok(()));
        // Not another host's.
        let other = contract_of(&configs[(i + 1) % 3].bytes);
        assert!(admission.verify(&key, domain, &other.ticket()).is_err());
    }
    // Retiring a host drops its admission; the next launch opens one
    // for the new credential, and the others' windows stay as they were.
    secrets.retire(&names[1]);
    let after = render::render_site(&site, &secrets, &tiny_firstboot(), None).unwrap();
    assert_eq!(contract_of(&after[1].bytes).identity.admission, None);
    assert_eq!(after[0].bytes, configs[0].bytes);
    assert_eq!(
        secrets.admit(&names, 1_010, 50),
        [names[1].clone(), names[3].clone()]
    );
    assert_eq!(secrets.admissions[&names[0]], 1_050);
    assert_eq!(secrets.admissions[&names[1]], 1_060);
    // A window that closed is opened again by the next launch.
    assert_eq!(
        secrets.admit(&names, 1_050, 50),
        [names[0].clone(), names[2].clone()]
    );
    assert!(secrets.admit(&names, 1_050, 50).is_empty());
}

/// Whether `text` holds `secret` as written, or as a JSON string holds it
/// (the test passwords carry quotes, which node.json escapes).
fn holds(text: &str, secret: &str) -> bool {
    let quoted = serde_json::to_string(secret).unwrap();
    text.contains(secret) || text.contains(&quoted[1..quoted.len() - 1])
}

#[test]
fn only_the_bootstrap_host_holds_the_freeipa_passwords() {
    let (site, configs) = render_site(5);
    let secrets = test_secrets();
    for config in &configs {
        let text = everything_in(&config.bytes);
        let bootstrap = config.host == site.bootstrap().name.as_str();
        for password in [
            &secrets.freeipa_admin_password,
            &secrets.directory_manager_password,
        ] {
            assert_eq!(holds(&text, password), bootstrap, "{}", config.host);
        }
        assert!(
            !text.contains(&secrets.digitalocean_token),
            "{}",
            config.host
        );
    }
}

#[test]
fn the_bootstrap_hosts_config_does_not_grow_with_the_site() {
    let size = |n: usize| {
        let (site, configs) = render_site(n);
        let bootstrap = site.bootstrap().name.to_string();
        configs
            .into_iter()
            .find(|c| c.host == bootstrap)
            .unwrap()
            .bytes
            .len()
    };
    let (small, large) = (size(5), size(250));
    // The host count's digits may grow; nothing per host does.
    assert!(
        large.abs_diff(small) <= 16,
        "5 hosts: {small} bytes, 250 hosts: {large} bytes"
    );
}
