//! Command-line arguments, one struct per sub-command; their doc comments
//! are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "builder",
    version,
    term_width = 80,
    about = "Turn a short hosts.yaml into a self-assembling site on DigitalOcean",
    long_about = "Turn a short hosts.yaml into a self-assembling site on DigitalOcean: \
                  an etcd cluster, FreeIPA (DNS, Kerberos, CA) with replicas, and \
                  Kubernetes, assembled peer to peer by `firstboot` on each node.\n\n\
                  Start with `builder init mysite`, edit mysite/hosts.yaml, then \
                  `builder render mysite/hosts.yaml`.",
    after_help = "Try the bundled example: builder render examples/hosts.yaml --out rendered"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(InitArgs),
    Render(RenderArgs),
}

/// Where the vault and its passphrase come from.
#[derive(Debug, Args)]
pub struct VaultArgs {
    /// The secrets vault [default: the site file with extension .vault]
    #[arg(long, value_name = "PATH")]
    pub vault: Option<PathBuf>,

    /// Read the vault passphrase from the first line of this file
    /// [otherwise: $BUILDER_VAULT_PASSPHRASE, else a prompt]
    #[arg(long, value_name = "PATH")]
    pub passphrase_file: Option<PathBuf>,
}

/// Write one Ignition config per host (spec 3.3.0) into a directory
///
/// Each config sets the host name and the `core` user's SSH keys, formats
/// and mounts the host's volumes, installs firstboot (fetched from the
/// site's publish URL and checked by sha512) with its units, and writes
/// /etc/firstboot/node.json. The same site and vault always give the same
/// bytes. Configs hold secrets: they are written with mode 0600.
#[derive(Debug, Args)]
#[command(after_help = "Example: builder render examples/hosts.yaml --out rendered")]
pub struct RenderArgs {
    /// The site file (hosts.yaml)
    #[arg(value_name = "SITE")]
    pub site: PathBuf,

    /// Directory for the <host>.ign files (created, mode 0700)
    #[arg(long, short, value_name = "DIR", default_value = "rendered")]
    pub out: PathBuf,

    /// Render only this host
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,

    /// The static firstboot binary whose sha512 the configs pin
    /// [default: $BUILDER_FIRSTBOOT, else `firstboot` beside builder]
    #[arg(long, value_name = "PATH")]
    pub firstboot: Option<PathBuf>,

    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Start a site: write a commented hosts.yaml and an encrypted vault
///
/// Asks for what it needs at a terminal. For automation every answer has
/// a flag or an environment variable, and secrets are read only from the
/// environment or files, never from the command line:
///
///   DIGITALOCEAN_ACCESS_TOKEN (or DIGITALOCEAN_TOKEN)  API token
///   BUILDER_FREEIPA_ADMIN_PASSWORD      [default: generated]
///   BUILDER_DIRECTORY_MANAGER_PASSWORD  [default: generated]
///   BUILDER_VAULT_PASSPHRASE            (or --passphrase-file)
///
/// The join secret that nodes authenticate each other with is always
/// generated. Existing files are never overwritten without --force.
#[derive(Debug, Args)]
#[command(
    after_help = "Example: builder init mysite --domain example.com --region ams3 \\\n\
                        \x20        --ssh-key ~/.ssh/id_ed25519.pub \\\n\
                        \x20        --publish-url https://downloads.example.com/site"
)]
pub struct InitArgs {
    /// Directory to write hosts.yaml and hosts.vault into
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// The site's DNS domain, e.g. example.com
    #[arg(long, env = "BUILDER_DOMAIN", value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// DigitalOcean region slug for every droplet, e.g. ams3
    #[arg(long, env = "BUILDER_REGION", value_name = "SLUG")]
    pub region: Option<String>,

    /// An SSH public key file for the `core` user (repeatable)
    #[arg(
        long = "ssh-key",
        env = "BUILDER_SSH_KEY",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub ssh_keys: Vec<PathBuf>,

    /// HTTPS base URL nodes fetch the firstboot binary from
    #[arg(long, env = "BUILDER_PUBLISH_URL", value_name = "URL")]
    pub publish_url: Option<String>,

    /// Host names, first the three core hosts [default: ns1,ns2,ns3]
    #[arg(
        long = "hosts",
        env = "BUILDER_HOSTS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub hosts: Vec<String>,

    /// Never prompt; fail if an answer is missing
    #[arg(long)]
    pub non_interactive: bool,

    /// Replace an existing hosts.yaml and hosts.vault
    #[arg(long)]
    pub force: bool,

    /// Read the new vault's passphrase from the first line of this file
    #[arg(long, value_name = "PATH")]
    pub passphrase_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
