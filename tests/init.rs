//! `builder init` in automation: every answer from flags and environment.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::site::{tiny_firstboot_path, SSH_KEY};

const PASSPHRASE: &str = "a long test passphrase";

fn init(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let key = dir.join("id.pub");
    std::fs::write(&key, format!("{SSH_KEY}\n")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_builder"));
    cmd.arg("init")
        .arg(dir.join("site"))
        .args(["--non-interactive", "--region", "fra1"])
        .args(if extra.contains(&"--domain") {
            &[][..]
        } else {
            &["--domain", "example.net"]
        })
        .args(["--publish-url", "https://dl.example.net/fb", "--ssh-key"])
        .arg(&key)
        .args(extra)
        .stdin(Stdio::null());
    for var in [
        "DIGITALOCEAN_ACCESS_TOKEN",
        "DIGITALOCEAN_TOKEN",
        "BUILDER_VAULT_PASSPHRASE",
        "BUILDER_FREEIPA_ADMIN_PASSWORD",
        "BUILDER_DIRECTORY_MANAGER_PASSWORD",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn secrets_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DIGITALOCEAN_ACCESS_TOKEN", "dop_v1_testtoken"),
        ("BUILDER_VAULT_PASSPHRASE", PASSPHRASE),
        ("BUILDER_FREEIPA_ADMIN_PASSWORD", "admin-password-1"),
    ]
}

#[test]
fn init_writes_a_site_that_renders_and_a_vault_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &["--hosts", "a,b,c,d"], &secrets_env());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let site_path = dir.path().join("site/hosts.yaml");
    let site_text = std::fs::read_to_string(&site_path).unwrap();
    let site = builder::site::Site::parse("hosts.yaml", &site_text).unwrap();
    assert_eq!(site.domain.as_str(), "example.net");
    assert_eq!(site.hosts.len(), 4);

    let vault_text = std::fs::read_to_string(dir.path().join("site/hosts.vault")).unwrap();
    for secret in ["dop_v1_testtoken", "admin-password-1"] {
        assert!(
            !vault_text.contains(secret) && !site_text.contains(secret),
            "{secret} in clear"
        );
    }
    let secrets = builder::vault::open(&vault_text, PASSPHRASE, "v").unwrap();
    assert_eq!(secrets.digitalocean_token, "dop_v1_testtoken");
    assert_eq!(secrets.freeipa_admin_password, "admin-password-1");
    assert_eq!(
        secrets.directory_manager_password.len(),
        24,
        "generated when not given"
    );
    assert!(secrets.join_secret.len() >= 43);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("site/hosts.vault"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let rendered = Command::new(env!("CARGO_BIN_EXE_builder"))
        .arg("render")
        .arg(&site_path)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg("--firstboot")
        .arg(tiny_firstboot_path())
        .env("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(dir.path().join("out/d.ign").is_file());
}

#[test]
fn init_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    assert!(init(dir.path(), &[], &secrets_env()).status.success());
    let before = std::fs::read(dir.path().join("site/hosts.vault")).unwrap();
    let again = init(dir.path(), &[], &secrets_env());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr.contains("already exists; nothing was written"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("site/hosts.vault")).unwrap(),
        before
    );
    assert!(init(dir.path(), &["--force"], &secrets_env())
        .status
        .success());
    assert_ne!(
        std::fs::read(dir.path().join("site/hosts.vault")).unwrap(),
        before
    );
}

#[test]
fn missing_answers_fail_clearly_and_write_nothing() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)],
            "DigitalOcean API token is required",
        ),
        (
            vec![("DIGITALOCEAN_TOKEN", "t")],
            "set BUILDER_VAULT_PASSPHRASE or pass --passphrase-file",
        ),
        (
            vec![
                ("DIGITALOCEAN_TOKEN", "t"),
                ("BUILDER_VAULT_PASSPHRASE", PASSPHRASE),
                ("BUILDER_FREEIPA_ADMIN_PASSWORD", "short"),
            ],
            "BUILDER_FREEIPA_ADMIN_PASSWORD is shorter than 8 characters",
        ),
    ];
    for (env, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = init(dir.path(), &[], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(
            !dir.path().join("site").exists(),
            "wrote something despite: {stderr}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &["--domain", "Example.NET"], &secrets_env());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--domain `Example.NET`: domain name `Example.NET` must be in lower case"),
        "{stderr}"
    );
}
