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
                  an etcd cluster and FreeIPA (DNS, Kerberos, CA) with replicas, \
                  assembled peer to peer by `firstboot` on each node; Kubernetes \
                  on top is planned, not built yet.\n\n\
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
    Launch(LaunchArgs),
    Status(StatusArgs),
    Destroy(DestroyArgs),
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
/// Asks for what it needs at a terminal, again until an answer passes.
/// For automation every answer has a flag or an environment variable, and
/// every problem is reported at once. Secrets are read only from the
/// environment or files, never from the command line:
///
///   BUILDER_VAULT_PASSPHRASE            (or --passphrase-file)
///   BUILDER_FREEIPA_ADMIN_PASSWORD      [default: generated]
///   BUILDER_DIRECTORY_MANAGER_PASSWORD  [default: generated]
///   DIGITALOCEAN_ACCESS_TOKEN           [optional: stored for launch,
///                                        which otherwise reads it]
///
/// The site's root secret (builder derives the site's signing key and
/// every node's own key from it) is always generated and never leaves the
/// vault. Existing files are never overwritten without --force.
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

    /// HTTP(S) base URL of your own server, where you put the firstboot
    /// binary and nodes fetch it from (or --spaces-bucket)
    #[arg(
        long,
        env = "BUILDER_PUBLISH_URL",
        value_name = "URL",
        conflicts_with = "spaces_bucket"
    )]
    pub publish_url: Option<String>,

    /// A DigitalOcean Spaces bucket that `launch` uploads the firstboot
    /// binary to (it reads SPACES_ACCESS_KEY_ID and
    /// SPACES_SECRET_ACCESS_KEY); nodes fetch it from there
    #[arg(long, env = "BUILDER_SPACES_BUCKET", value_name = "NAME")]
    pub spaces_bucket: Option<String>,

    /// The bucket's region [default: the site's region]
    #[arg(
        long,
        env = "BUILDER_SPACES_REGION",
        value_name = "SLUG",
        requires = "spaces_bucket"
    )]
    pub spaces_region: Option<String>,

    /// Host names, at least three, first the three core hosts
    /// [default: ns1,ns2,ns3]
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

/// The site, its vault and the API, shared by launch, status and destroy.
#[derive(Debug, Args)]
pub struct CloudArgs {
    /// The site file (hosts.yaml)
    #[arg(value_name = "SITE")]
    pub site: PathBuf,

    /// DigitalOcean's API base URL (tests point it at a fake)
    #[arg(
        long,
        env = "DIGITALOCEAN_API_URL",
        value_name = "URL",
        default_value = "https://api.digitalocean.com"
    )]
    pub api_url: String,

    // The vault: for the API token when $DIGITALOCEAN_ACCESS_TOKEN is
    // unset, and for launch the node configs' secrets.
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Create the site's DigitalOcean resources and start its droplets
///
/// Steps, each finding its resources by name and the site's tag before
/// creating anything: check the token, the tag, the cloud firewall (on
/// the tag, before any droplet exists), the SSH keys, the Fedora CoreOS
/// custom image (imported and polled until available), the VPC, the
/// firstboot binary (uploaded to Spaces, or checked at the site's
/// base_url), the volumes, the droplets (each with its rendered config as
/// user data and its volumes attached) and their attachments. Creates run
/// a few at a time. Running it again changes nothing; an interrupted
/// launch run again completes it.
///
/// The image is the current release of its Fedora CoreOS stream, read
/// from the stream metadata with the checksum it publishes, unless the
/// site file pins one (`defaults.release`); --dry-run says which and why.
/// A release is imported once, as an image named after it.
///
/// Before anything is created, each host gets the site's admission: a
/// signed window of 6 hours in which its credential may join for the
/// first time, recorded in the vault (one still open is kept). To add a
/// host to a running site, add it after the others in the site file and
/// run launch: it joins by its admission, after the handoff with every
/// certificate from FreeIPA. Core hosts are added in pairs; each joins the
/// running etcd cluster and becomes a FreeIPA replica. A site file that
/// would change a running host's role, or put another core host before
/// the bootstrap host, is refused before anything is created.
///
/// The API token comes from $DIGITALOCEAN_ACCESS_TOKEN or
/// $DIGITALOCEAN_TOKEN, else from the vault. Spaces keys come from
/// $SPACES_ACCESS_KEY_ID and $SPACES_SECRET_ACCESS_KEY.
#[derive(Debug, Args)]
#[command(after_help = "Example: builder launch mysite/hosts.yaml --dry-run")]
pub struct LaunchArgs {
    #[command(flatten)]
    pub cloud: CloudArgs,

    /// The static firstboot binary the configs pin
    /// [default: $BUILDER_FIRSTBOOT, else `firstboot` beside builder]
    #[arg(long, value_name = "PATH")]
    pub firstboot: Option<PathBuf>,

    /// Print the calls launch would make, and make none
    #[arg(long)]
    pub dry_run: bool,

    /// Where Fedora CoreOS's stream metadata is read, as <URL><stream>.json
    /// (tests point it at a local server)
    /// [default: https://builds.coreos.fedoraproject.org/streams/]
    #[arg(long, env = "BUILDER_FCOS_STREAMS_URL", value_name = "URL")]
    pub fcos_streams_url: Option<String>,
}

/// Show each host's droplet, addresses and firstboot phase
///
/// The phase is read over SSH as `core` (your ssh and its agent; $BUILDER_SSH
/// names another program) from the status file firstboot keeps. Needs only
/// the site file and the API token ($DIGITALOCEAN_ACCESS_TOKEN, else the
/// vault's).
#[derive(Debug, Args)]
#[command(after_help = "Example: builder status mysite/hosts.yaml --output json")]
pub struct StatusArgs {
    #[command(flatten)]
    pub cloud: CloudArgs,

    /// Output format
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,

    /// Do not log in to the nodes; droplet state and addresses only
    #[arg(long)]
    pub no_ssh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Delete hosts, or the whole site, from DigitalOcean
///
/// Lists exactly what will be deleted, then asks you to type the site's
/// domain. Only resources carrying the site's tag are touched (VPC and
/// firewall, which cannot carry tags, must also bear the site's marks);
/// anything else with a site name is listed and left alone. --host
/// deletes the hosts' droplets and volumes; --all also deletes the VPC,
/// firewall, image, every firstboot-* object in the site's Spaces bucket
/// (a base_url server is left alone) and the tag. Needs the site file,
/// the API token ($DIGITALOCEAN_ACCESS_TOKEN, else the vault's), the
/// vault when a droplet goes (see below), and the Spaces key to delete
/// objects.
///
/// A host whose droplet is deleted has its credential retired first: the
/// vault raises the host's generation (so destroy then needs the vault's
/// passphrase too), `launch` gives the relaunched host a new key and
/// ticket, and once it joins the site refuses the old user data
/// everywhere (join, renewal, FreeIPA enrollment, the peer service). A
/// copy of a destroyed host's user data is then worth nothing.
#[derive(Debug, Args)]
#[command(after_help = "Example: builder destroy mysite/hosts.yaml --host mail")]
#[command(group = clap::ArgGroup::new("what").required(true).args(["hosts", "all"]))]
pub struct DestroyArgs {
    #[command(flatten)]
    pub cloud: CloudArgs,

    /// A host to delete (repeatable)
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,

    /// Delete the whole site
    #[arg(long)]
    pub all: bool,

    /// Do not ask; for automation
    #[arg(long)]
    pub yes: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// Each sentence of `text` that names Kubernetes, which is not built
    /// yet, must say it is planned.
    fn unbuilt_said_planned(what: &str, text: &str) {
        for sentence in text.split(". ").filter(|s| s.contains("Kubernetes")) {
            assert!(
                sentence.contains("planned"),
                "{what} promises Kubernetes, which is not built: {sentence:?}"
            );
        }
    }

    #[test]
    fn help_and_readme_say_kubernetes_is_planned() {
        let help = super::Cli::command().render_long_help().to_string();
        assert!(help.contains("Kubernetes"), "{help}");
        unbuilt_said_planned("builder --help", &help.replace('\n', " "));
        let readme = include_str!("../../README.md");
        let first = readme.split("\n\n").nth(1).unwrap().replace('\n', " ");
        unbuilt_said_planned("README's first paragraph", &first);
    }
}
