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
        .arg("--non-interactive")
        .args(if extra.contains(&"--region") {
            &[][..]
        } else {
            &["--region", "fra1"]
        })
        .args(if extra.contains(&"--domain") {
            &[][..]
        } else {
            &["--domain", "example.net"]
        })
        .args(
            if extra.contains(&"--publish-url") || extra.contains(&"--spaces-bucket") {
                &[][..]
            } else {
                &["--publish-url", "https://dl.example.net/fb"]
            },
        )
        .arg("--ssh-key")
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
    // A token in `env` makes init list the account's regions: from a
    // closed port here, so it falls back to the documented ones (the
    // account's are checked against the DigitalOcean fake in do_launch).
    cmd.env("DIGITALOCEAN_API_URL", "http://127.0.0.1:9");
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
fn problems_fail_clearly_and_write_nothing() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
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
            "BUILDER_FREEIPA_ADMIN_PASSWORD (the FreeIPA admin password): it has 5 characters; \
             FreeIPA needs at least 8",
        ),
        // FreeIPA's installer refuses a backslash in either password, and
        // leading or trailing blanks in the Directory Manager's.
        (
            vec![
                ("DIGITALOCEAN_TOKEN", "t"),
                ("BUILDER_VAULT_PASSPHRASE", PASSPHRASE),
                ("BUILDER_FREEIPA_ADMIN_PASSWORD", "back\\slash pass"),
            ],
            "BUILDER_FREEIPA_ADMIN_PASSWORD (the FreeIPA admin password): it holds a backslash",
        ),
        (
            vec![
                ("DIGITALOCEAN_TOKEN", "t"),
                ("BUILDER_VAULT_PASSPHRASE", PASSPHRASE),
                ("BUILDER_DIRECTORY_MANAGER_PASSWORD", "trailing space "),
            ],
            "BUILDER_DIRECTORY_MANAGER_PASSWORD (the Directory Manager password): it starts or \
             ends with a space",
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
    // A region DigitalOcean does not have is refused, with the close ones.
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &["--region", "ams9"], &secrets_env());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--region `ams9`: not a DigitalOcean region; close to it: ams2, ams3"),
        "{stderr}"
    );
    assert!(!dir.path().join("site").exists());
}

/// DNS names are case-insensitive: a domain in capitals is taken in
/// lower case, and the change is said.
#[test]
fn a_domain_in_capitals_is_taken_in_lower_case() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &["--domain", "Example.NET"], &secrets_env());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("taken as `example.net`"), "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("site/hosts.yaml")).unwrap();
    assert!(text.contains("domain_name: example.net\n"), "{text}");
}

/// `builder init` with nothing but `--non-interactive`, and no key in
/// ~/.ssh: one run names every missing answer.
#[test]
fn every_missing_answer_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_builder"))
        .arg("init")
        .arg(dir.path().join("site"))
        .args([
            "--non-interactive",
            "--hosts",
            "a,b",
            "--publish-url",
            "ftp://x",
        ])
        .env("HOME", dir.path())
        .env_remove("BUILDER_DOMAIN")
        .env_remove("BUILDER_REGION")
        .env_remove("BUILDER_PUBLISH_URL")
        .env_remove("BUILDER_SSH_KEY")
        .env_remove("BUILDER_HOSTS")
        .env_remove("BUILDER_VAULT_PASSPHRASE")
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .env_remove("DIGITALOCEAN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "6 problems",
        "--domain (or $BUILDER_DOMAIN) is missing",
        "--region (or $BUILDER_REGION) is missing",
        "--publish-url `ftp://x`: `ftp://x` is not an http:// or https:// URL",
        "--ssh-key (or $BUILDER_SSH_KEY) is missing",
        "the vault passphrase is missing",
        // About the flag, not about a line of a file never written.
        "--hosts `a,b`: a site needs at least 3 hosts",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("hosts.yaml:"), "{stderr}");
    assert!(!dir.path().join("site").exists());
}

/// No token: the site is written (render needs none); launch then says
/// where to give one.
#[test]
fn init_needs_no_token_and_launch_says_where_to_give_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)];
    let out = init(
        dir.path(),
        &["--publish-url", "http://dl.example.net/fb"],
        &env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DIGITALOCEAN_ACCESS_TOKEN"), "{stderr}");
    let vault_text = std::fs::read_to_string(dir.path().join("site/hosts.vault")).unwrap();
    let secrets = builder::vault::open(&vault_text, PASSPHRASE, "v").unwrap();
    assert_eq!(secrets.digitalocean_token, "");
    let site = std::fs::read_to_string(dir.path().join("site/hosts.yaml")).unwrap();
    assert!(
        site.contains("base_url: http://dl.example.net/fb"),
        "{site}"
    );

    // Nothing listens on port 9: the token is missing before any call.
    let launch = Command::new(env!("CARGO_BIN_EXE_builder"))
        .arg("launch")
        .arg(dir.path().join("site/hosts.yaml"))
        .args(["--api-url", "http://127.0.0.1:9"])
        .env("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)
        .env("BUILDER_FIRSTBOOT", tiny_firstboot_path())
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .env_remove("DIGITALOCEAN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&launch.stderr);
    assert_eq!(launch.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no DigitalOcean API token: set DIGITALOCEAN_ACCESS_TOKEN"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("127.0.0.1:9"),
        "a call was tried: {stderr}"
    );
}

/// At a terminal (a pty from `script`): an http URL is taken, a key path
/// that cannot be read is asked again, the token may be skipped.
#[test]
fn interactive_init_asks_again_instead_of_ending() {
    if Command::new("script").arg("--version").output().is_err() {
        return support::skip("skipping: `script` (util-linux) is not installed");
    }
    let (ok, transcript, dir) = init_at_a_terminal(&format!(
        "example.org\nams3\n2\nhttp://dl.example.org/fb\n/nonexistent/key.pub\n{{key}}\n\n{PASSPHRASE}\n{PASSPHRASE}\n"
    ));
    let site = dir.path().join("site");
    assert!(ok, "{transcript}");
    assert!(
        transcript.contains("`/nonexistent/key.pub`: cannot read it")
            && transcript.contains("try again"),
        "{transcript}"
    );
    let text = std::fs::read_to_string(site.join("hosts.yaml")).unwrap();
    assert!(
        text.contains("base_url: http://dl.example.org/fb"),
        "{text}"
    );
    assert!(text.contains(SSH_KEY), "{text}");
    let vault_text = std::fs::read_to_string(site.join("hosts.vault")).unwrap();
    let secrets = builder::vault::open(&vault_text, PASSPHRASE, "v").unwrap();
    assert_eq!(secrets.digitalocean_token, "");
}

/// Answers typed at a terminal (a pty from `script`), as `answers`; the
/// transcript, the exit status and the site's directory.
fn init_at_a_terminal(answers: &str) -> (bool, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id.pub"), format!("{SSH_KEY}\n")).unwrap();
    let mut child = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} init {}",
            env!("CARGO_BIN_EXE_builder"),
            dir.path().join("site").display()
        ))
        .arg("/dev/null")
        .env("HOME", dir.path())
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .env_remove("DIGITALOCEAN_TOKEN")
        .env_remove("BUILDER_VAULT_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            answers
                .replace("{key}", &dir.path().join("id.pub").display().to_string())
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        dir,
    )
}

/// A newcomer's session, typos included: the domain in capitals, a
/// region that does not exist, Spaces chosen, a short passphrase, then a
/// confirmation that differs. Nothing typed before is lost to a typo; the
/// site written renders, and `launch --dry-run` accepts it.
#[test]
fn a_newcomer_at_a_terminal_loses_no_answer_to_a_typo() {
    if Command::new("script").arg("--version").output().is_err() {
        return support::skip("skipping: `script` (util-linux) is not installed");
    }
    let answers = format!(
        "Example.COM\nams9\nams3\n1\nmy-site-fb\n\n{{key}}\n\nshort\n{PASSPHRASE}\nanother one here\n{PASSPHRASE}\n{PASSPHRASE}\n"
    );
    let (ok, transcript, dir) = init_at_a_terminal(&answers);
    assert!(ok, "{transcript}");
    for said in [
        "(--domain)",
        "taken as `example.com`",
        "`ams9`: not a DigitalOcean region; close to it: ams2, ams3",
        "(--spaces-bucket or --publish-url) [1]",
        "SPACES_ACCESS_KEY_ID",
        "Spaces region (--spaces-region) [ams3]",
        "shorter than 12 characters",
        "the two differ; once more",
    ] {
        assert!(transcript.contains(said), "`{said}` not in:\n{transcript}");
    }
    let site = dir.path().join("site/hosts.yaml");
    let text = std::fs::read_to_string(&site).unwrap();
    assert!(text.contains("domain_name: example.com\n"), "{text}");
    assert!(
        text.contains("  spaces:\n    bucket: my-site-fb\n    region: ams3\n"),
        "{text}"
    );
    let vault_text = std::fs::read_to_string(dir.path().join("site/hosts.vault")).unwrap();
    builder::vault::open(&vault_text, PASSPHRASE, "v").unwrap();

    let streams = support::fcos_streams::StreamServer::start(&support::fcos_streams::document(
        support::fcos_streams::RELEASE,
    ));
    let builder = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_builder"))
            .args(args)
            .env("BUILDER_FCOS_STREAMS_URL", streams.base())
            .env("BUILDER_VAULT_PASSPHRASE", PASSPHRASE)
            .env("BUILDER_FIRSTBOOT", tiny_firstboot_path())
            .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
            .env_remove("DIGITALOCEAN_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "builder {args:?}:\n{text}");
        text
    };
    let rendered = dir.path().join("rendered");
    builder(&[
        "render",
        site.to_str().unwrap(),
        "--out",
        rendered.to_str().unwrap(),
    ]);
    assert!(rendered.join("ns1.ign").exists());
    let plan = builder(&["launch", site.to_str().unwrap(), "--dry-run"]);
    assert!(plan.contains("my-site-fb"), "{plan}");
}
