//! `builder render`: a site and its secrets to one Ignition config per
//! host. Pure: the same inputs give byte-identical output.

pub mod guard;
pub mod ignition;
pub mod keys;
pub mod units;
pub mod zincati;

use std::fmt;

use anyhow::Result;
use node_contract::{
    FreeIpaSecrets, Identity, JoinConfig, NodeConfig, Platform, Role, SiteInfo, Storage,
    SCHEMA_VERSION,
};

use crate::artifact::Firstboot;
use crate::images;
use crate::site::{Host, Site};
use crate::vault::Secrets;
use ignition::{Contents, FileEntry, FilesystemEntry, NodeIgnition, UnitEntry};

/// DigitalOcean refuses user data above 64 KiB.
pub const USER_DATA_LIMIT: usize = 64 * 1024;
/// Room kept free under that limit, so a config that barely fits today
/// does not break when a unit grows by a line.
pub const SAFETY_MARGIN: usize = 4 * 1024;

/// Where firstboot lives on a node.
pub const FIRSTBOOT_PATH: &str = "/usr/local/bin/firstboot";
/// The user whose SSH keys Ignition installs (Fedora CoreOS and Flatcar).
pub const LOGIN_USER: &str = "core";

/// One host's rendered config.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub host: String,
    pub bytes: Vec<u8>,
}

impl Rendered {
    pub fn file_name(&self) -> String {
        format!("{}.ign", self.host)
    }
}

/// A config too large for DigitalOcean's user data.
#[derive(Debug)]
pub struct TooLarge {
    pub host: String,
    pub size: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the config of `{}` is {} bytes; DigitalOcean takes at most {USER_DATA_LIMIT} bytes of \
             user data and builder keeps {SAFETY_MARGIN} of them spare. Every config carries the \
             core hosts and all SSH keys: use fewer or shorter (ed25519) keys",
            self.host, self.size
        )
    }
}

impl std::error::Error for TooLarge {}

/// Render every host, or only `only`. Nothing is returned unless every
/// requested config fits.
pub fn render_site(
    site: &Site,
    secrets: &Secrets,
    firstboot: &Firstboot,
    only: Option<&str>,
) -> Result<Vec<Rendered>> {
    let passwords = FreeIpaSecrets {
        admin_password: secrets.freeipa_admin_password.clone(),
        directory_manager_password: secrets.directory_manager_password.clone(),
    };
    let problems = passwords.problems();
    if !problems.is_empty() {
        anyhow::bail!(
            "the site's vault holds FreeIPA passwords that ipa-server-install refuses: {} \
             (run `builder init` again with BUILDER_FREEIPA_ADMIN_PASSWORD and \
             BUILDER_DIRECTORY_MANAGER_PASSWORD set to passwords FreeIPA takes)",
            problems.join("; ")
        );
    }
    let hosts: Vec<&Host> = match only {
        None => site.hosts.iter().collect(),
        Some(name) => vec![site.host(name).ok_or_else(|| unknown_host(site, name))?],
    };
    hosts
        .into_iter()
        .map(|host| render_host(site, secrets, firstboot, host))
        .collect()
}

fn unknown_host(site: &Site, name: &str) -> anyhow::Error {
    let names: Vec<&str> = site.hosts.iter().map(|h| h.name.as_str()).collect();
    let near = names
        .iter()
        .map(|n| (strsim::jaro_winkler(name, n), n))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match near {
        Some((_, n)) => anyhow::anyhow!("the site has no host `{name}`; did you mean `{n}`?"),
        None => anyhow::anyhow!(
            "the site has no host `{name}`; its hosts are: {}",
            names.join(", ")
        ),
    }
}

pub fn render_host(
    site: &Site,
    secrets: &Secrets,
    firstboot: &Firstboot,
    host: &Host,
) -> Result<Rendered> {
    let image = images::load(&host.image)?;
    let contract = contract(site, secrets, host, &image);
    let mut files = vec![
        FileEntry {
            path: node_contract::NODE_JSON_PATH.into(),
            mode: 0o600,
            contents: Contents::Compressed(contract.to_json()),
        },
        FileEntry {
            path: guard::RULES_PATH.into(),
            mode: 0o644,
            contents: Contents::Compressed(
                guard::rules(image.platform.metadata, &image.platform.metadata_clients)
                    .into_bytes(),
            ),
        },
        FileEntry {
            path: FIRSTBOOT_PATH.into(),
            mode: 0o755,
            contents: Contents::Remote {
                url: firstboot.url(&site.publish.base_url()),
                sha512: firstboot.sha512.clone(),
            },
        },
    ];
    // Zincati (Fedora CoreOS's update agent) asks the site's lock server
    // before it reboots; an image without Zincati ignores the file.
    files.push(FileEntry {
        path: node_contract::fleetlock::ZINCATI_DROPIN_PATH.into(),
        mode: 0o644,
        contents: Contents::Text(zincati::dropin(host.role)),
    });
    if site.bootstrap().name == host.name {
        files.push(FileEntry {
            path: units::BOOTSTRAP_DROPIN_PATH.into(),
            mode: 0o644,
            contents: Contents::Text(units::BOOTSTRAP_DROPIN.into()),
        });
    }
    // The platform agent's metadata readers fill their guard chain too.
    files.extend(
        guard::dropin_paths(&image.platform.metadata_clients)
            .into_iter()
            .map(|path| FileEntry {
                path,
                mode: 0o644,
                contents: Contents::Text(guard::DROPIN.into()),
            }),
    );
    let node = NodeIgnition {
        hostname: site.fqdn(host),
        user: LOGIN_USER.into(),
        ssh_keys: site
            .ssh_keys
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        files,
        units: node_units(site, host),
        filesystems: node_filesystems(site, host),
    };
    let bytes = ignition::render(&node);
    if bytes.len() > USER_DATA_LIMIT - SAFETY_MARGIN {
        return Err(TooLarge {
            host: host.name.to_string(),
            size: bytes.len(),
        }
        .into());
    }
    Ok(Rendered {
        host: host.name.to_string(),
        bytes,
    })
}

/// The node contract of one host. Its size does not grow with the
/// number of workers: only the core hosts are named.
pub fn node_config(site: &Site, secrets: &Secrets, host: &Host) -> Result<NodeConfig> {
    Ok(contract(site, secrets, host, &images::load(&host.image)?))
}

fn contract(site: &Site, secrets: &Secrets, host: &Host, image: &images::Image) -> NodeConfig {
    let keys = keys::SiteKeys::derive(&secrets.join_secret);
    let generation = secrets.generation(&host.name);
    let (seed, ticket) = keys.node(&site.domain, &host.name, host.role, generation);
    let bootstrap = site.bootstrap().name == host.name;
    NodeConfig {
        schema: SCHEMA_VERSION,
        site: SiteInfo {
            domain: site.domain.clone(),
            realm: site.realm.clone(),
            vpc_range: site.vpc_range,
            core: site
                .hosts
                .iter()
                .filter(|h| h.role == Role::Core)
                .map(|h| h.name.clone())
                .collect(),
            host_count: site.hosts.len() as u32,
            site_key: keys.site_public_key(),
        },
        node: host.name.clone(),
        identity: Identity {
            key: seed,
            generation,
            ticket_signature: ticket.signature,
            ca_backup_key: bootstrap.then(|| keys.ca_backup(&host.name)),
            admission: secrets
                .admissions
                .get(&host.name)
                .map(|&until| keys.admission(&site.domain, &ticket, until)),
        },
        join: JoinConfig {
            port: node_contract::JOIN_PORT,
            address: None,
        },
        platform: Platform {
            metadata: image.platform.metadata,
        },
        catalog: image.services.clone(),
        // Only the first FreeIPA server installs with the passwords;
        // replicas and clients enroll with one-time passwords.
        freeipa: bootstrap.then(|| FreeIpaSecrets {
            admin_password: secrets.freeipa_admin_password.clone(),
            directory_manager_password: secrets.directory_manager_password.clone(),
        }),
        storage: Storage {
            data_mount: (host.volumes.data_gib > 0).then(|| units::DATA_MOUNT_POINT.to_owned()),
            swap_device: (host.volumes.swap_gib > 0)
                .then(|| units::volume_device(&site.resource_name(host, "swap"))),
        },
    }
}

fn node_units(site: &Site, host: &Host) -> Vec<UnitEntry> {
    let bootstrap = site.bootstrap().name == host.name;
    let shipped = units::SHIPPED.iter().map(move |u| UnitEntry {
        name: u.name.into(),
        contents: u.contents.into(),
        enabled: u.enabled && (bootstrap || !u.bootstrap_only),
    });
    let volumes = units::volume_units(site, host)
        .into_iter()
        .map(|u| UnitEntry {
            name: u.name,
            contents: u.contents,
            enabled: true,
        });
    shipped.chain(volumes).collect()
}

fn node_filesystems(site: &Site, host: &Host) -> Vec<FilesystemEntry> {
    let mut filesystems = Vec::new();
    if host.volumes.data_gib > 0 {
        filesystems.push(FilesystemEntry {
            device: units::volume_device(&site.resource_name(host, "data")),
            format: "xfs".into(),
            label: "data".into(),
        });
    }
    if host.volumes.swap_gib > 0 {
        filesystems.push(FilesystemEntry {
            device: units::volume_device(&site.resource_name(host, "swap")),
            format: "swap".into(),
            label: "swap".into(),
        });
    }
    filesystems
}
