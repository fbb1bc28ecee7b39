//! `builder render`.

use anyhow::{Context, Result};

use crate::artifact::Firstboot;
use crate::cli::RenderArgs;
use crate::fsutil;
use crate::render::{self, USER_DATA_LIMIT};
use crate::site::Site;
use crate::vault::{self, PassphraseSource};

pub fn run(args: RenderArgs) -> Result<()> {
    let (site, _) = Site::load(&args.site)?;
    let firstboot = Firstboot::locate(args.firstboot.as_deref())?;
    let vault_path = args
        .vault
        .vault
        .clone()
        .unwrap_or_else(|| vault::path_for(&args.site));
    let vault_name = vault_path.display().to_string();
    let vault_text = std::fs::read_to_string(&vault_path).with_context(|| {
        format!(
            "cannot read the vault {vault_name}; `builder init` writes one beside the site file"
        )
    })?;
    if vault::is_demo(&vault_text) {
        eprintln!("note: {vault_name} is the public demo vault (passphrase \"demo\"); make your own with `builder init`");
    }
    let passphrase = PassphraseSource::from_env(args.vault.passphrase_file.clone())
        .for_opening(&vault_text, &vault_name)?;
    let secrets = vault::open(&vault_text, &passphrase, &vault_name)?;

    // Everything is rendered and checked before the first byte is written.
    let rendered = render::render_site(&site, &secrets, &firstboot, args.host.as_deref())?;
    fsutil::private_dir(&args.out)?;
    for config in &rendered {
        let path = args.out.join(config.file_name());
        fsutil::write_atomic(&path, &config.bytes, 0o600)?;
        println!(
            "{}\t{} bytes\t{:.0}% of the user-data limit",
            path.display(),
            config.bytes.len(),
            100.0 * config.bytes.len() as f64 / USER_DATA_LIMIT as f64
        );
    }
    eprintln!(
        "rendered {} config{} for {}; nodes fetch firstboot from {}",
        rendered.len(),
        if rendered.len() == 1 { "" } else { "s" },
        site.domain,
        firstboot.url(&site.publish.base_url())
    );
    Ok(())
}
