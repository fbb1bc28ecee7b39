//! Writes examples/hosts.vault and examples/lab.vault, the public demo
//! vaults: passphrase "demo",
//! fixed and public secrets, so the example renders the same bytes on
//! every machine. Run: cargo run -p builder --example demo-vault

use builder::vault::{self, Secrets, DEMO_PASSPHRASE};

fn main() -> anyhow::Result<()> {
    let secrets = Secrets {
        format: 1,
        digitalocean_token: "demo-token-not-a-real-digitalocean-token".into(),
        freeipa_admin_password: "demo-admin-password".into(),
        directory_manager_password: "demo-directory-manager-password".into(),
        join_secret: "demo-join-secret-public-never-use-for-a-real-site".into(),
        generations: Default::default(),
        admissions: Default::default(),
        core: Default::default(),
    };
    // The passphrase is public, so a slow key derivation protects nothing.
    for name in ["hosts.vault", "lab.vault"] {
        let sealed = vault::seal(&secrets, DEMO_PASSPHRASE, Some(10), true)?;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        builder::fsutil::write_atomic(&path, &sealed, 0o644)?;
        println!("{}", path.display());
    }
    Ok(())
}
