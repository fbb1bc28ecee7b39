//! One function per sub-command.

pub mod cloud;
pub mod init;
pub mod render;

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, VaultArgs};
use crate::vault::{self, PassphraseSource, Secrets};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Render(args) => render::run(args),
        Command::Launch(args) => cloud::launch(args),
        Command::Status(args) => cloud::status(args),
        Command::Destroy(args) => cloud::destroy(args),
    }
}

/// Open the site's vault; also says whether it is the public demo vault.
pub fn open_vault(site: &Path, args: &VaultArgs) -> Result<(Secrets, bool)> {
    let (secrets, demo, _) = open_vault_for_change(site, args)?;
    Ok((secrets, demo))
}

/// A vault opened to be written back: [`open_vault`] and what writing it
/// needs.
pub struct OpenVault {
    path: std::path::PathBuf,
    passphrase: String,
}

impl OpenVault {
    /// Seal `secrets` again under the same passphrase, replacing the file
    /// whole (a failure leaves the old vault as it was).
    pub fn write(&self, secrets: &Secrets, demo: bool) -> Result<()> {
        // The demo passphrase is public: a slow derivation protects
        // nothing there (as `examples/demo-vault.rs` seals it).
        let work_factor = demo.then_some(10);
        let sealed = vault::seal(secrets, &self.passphrase, work_factor, demo)?;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&self.path)
                .with_context(|| format!("cannot read {}", self.path.display()))?
                .permissions(),
        ) & 0o777;
        crate::fsutil::write_atomic(&self.path, &sealed, mode)
    }
}

/// [`open_vault`], keeping what writing it back needs.
pub fn open_vault_for_change(site: &Path, args: &VaultArgs) -> Result<(Secrets, bool, OpenVault)> {
    let vault_path = args.vault.clone().unwrap_or_else(|| vault::path_for(site));
    let vault_name = vault_path.display().to_string();
    let vault_text = std::fs::read_to_string(&vault_path).with_context(|| {
        format!(
            "cannot read the vault {vault_name}; `builder init` writes one beside the site file"
        )
    })?;
    let demo = vault::is_demo(&vault_text);
    if demo {
        tracing::warn!(
            "{vault_name} is the public demo vault (passphrase \"demo\"); make your own with \
             `builder init`"
        );
    }
    let passphrase = PassphraseSource::from_env(args.passphrase_file.clone())
        .for_opening(&vault_text, &vault_name)?;
    let secrets = vault::open(&vault_text, &passphrase, &vault_name)?;
    Ok((
        secrets,
        demo,
        OpenVault {
            path: vault_path,
            passphrase,
        },
    ))
}
