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
    Ok((vault::open(&vault_text, &passphrase, &vault_name)?, demo))
}
