//! Site files and fixtures for tests.

use std::path::PathBuf;

use builder::artifact::Firstboot;
use builder::vault::Secrets;

pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A tiny static x86_64 ELF (exits 0): stable bytes standing in for the
/// firstboot binary where output must not change with firstboot's code.
pub fn tiny_firstboot_path() -> PathBuf {
    repo().join("tests/fixtures/tiny-static.elf")
}

pub fn tiny_firstboot() -> Firstboot {
    Firstboot::locate(Some(&tiny_firstboot_path())).expect("fixture is a static ELF")
}

/// A loopback server of the tiny firstboot under `/fb/`, as a site's
/// `publish.base_url` (`server.url("/fb")`) serves it to nodes: `launch`
/// checks it is there.
pub fn firstboot_server() -> site_lab::http::FileServer {
    let bytes = std::fs::read(tiny_firstboot_path()).unwrap();
    site_lab::http::FileServer::start(vec![(
        format!("/fb/{}", tiny_firstboot().object_name()),
        bytes,
    )])
    .unwrap()
}

pub fn test_secrets() -> Secrets {
    Secrets {
        format: 1,
        digitalocean_token: "test-token".into(),
        // What an options file must quote for the container's xargs.
        freeipa_admin_password: "test 'admin' pa$$word".into(),
        directory_manager_password: "test \"dm\" pa$$word".into(),
        join_secret: "test-join-secret".into(),
        generations: Default::default(),
        admissions: Default::default(),
        core: Default::default(),
    }
}

pub const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBdn1ZXuEs9c6tnGpQUc3YXUDBklgj/+6uuPBcm7fkBn operator@example";

/// A valid site of `n` hosts (`node001`...), the first three core.
pub fn generated_site(n: usize, base_url: &str) -> String {
    let prefix = if n <= 250 { 24 } else { 16 };
    let mut text = format!(
        "domain_name: lab.example.org\nssh_keys:\n  - {SSH_KEY}\nvpc_range: 10.20.0.0/{prefix}\n\
         publish:\n  base_url: {base_url}\ndefaults:\n  region: ams3\n  volumes:\n    data_gib: 5\n    swap_gib: 1\nhosts:\n"
    );
    for i in 1..=n {
        text.push_str(&format!("  - node{i:03}\n"));
    }
    text
}

/// `n` distinct well-formed ed25519 public key lines (key bytes made up:
/// they only have to parse, never to verify a login).
pub fn many_ssh_keys(n: usize) -> Vec<String> {
    use base64::Engine;
    (0..n)
        .map(|i| {
            let mut blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20".to_vec();
            blob.extend((0..32u32).map(|j| (i as u32).wrapping_mul(31).wrapping_add(j * 7) as u8));
            let data = base64::engine::general_purpose::STANDARD.encode(blob);
            format!("ssh-ed25519 {data} key{i}@example")
        })
        .collect()
}

/// A valid 3-host site whose configs carry `keys` SSH keys each.
pub fn site_with_keys(keys: usize) -> String {
    let lines: String = many_ssh_keys(keys)
        .iter()
        .map(|k| format!("  - {k}\n"))
        .collect();
    format!(
        "domain_name: lab.example.org\nssh_keys:\n{lines}publish:\n  base_url: https://dl.example.org/fb\n\
         defaults:\n  region: ams3\nhosts: [a1, a2, a3]\n"
    )
}
