//! The secrets vault: a site's secrets, encrypted with age under a
//! passphrase, beside the site file (`hosts.yaml` -> `hosts.vault`).
//!
//! The file is a standard ASCII-armoured age file behind a few `#` comment
//! lines, so an operator can always recover the secrets without this tool:
//! `grep -v '^#' hosts.vault | age -d`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::iter;
use std::path::{Path, PathBuf};

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use age::secrecy::SecretString;
use anyhow::{bail, Context, Result};
use node_contract::{Generation, HostName};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The passphrase of the demo vault shipped in `examples/`. It is public
/// on purpose so the example renders with no setup; `launch` refuses it.
pub const DEMO_PASSPHRASE: &str = "demo";
const DEMO_MARKER: &str =
    "# demo-vault: the passphrase is \"demo\"; never launch a real site with it";
const HEADER: &str = "# builder secrets vault, format 1: age, passphrase-encrypted\n\
                      # recover by hand with: grep -v '^#' THIS_FILE | age -d\n";

/// The vault's contents.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub format: u32,
    pub digitalocean_token: String,
    pub freeipa_admin_password: String,
    pub directory_manager_password: String,
    /// The site's root secret. builder derives from it the site signing
    /// key and every node's own key (`render::keys`); it never leaves the
    /// operator's machine, and no node gets it or the site signing key.
    pub join_secret: String,
    /// Each retired host's credential generation (see
    /// `node_contract::Generation`): `destroy --host` raises it, so the
    /// relaunched host gets a new key and ticket and the site refuses the
    /// old ones. A host not named here is at its first generation. Kept
    /// here, not drawn at random, so render stays deterministic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<HostName, Generation>,
    /// Until when each host's current credential may join the site for
    /// the first time (Unix seconds; `node_contract::Admission`):
    /// `launch` opens a window for every host that has none open, so a
    /// host added to `hosts.yaml` after the site's first window closed
    /// is admitted, and `destroy --host` closes it with the credential.
    /// Kept here so that render stays a pure function of the site and
    /// the vault.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub admissions: BTreeMap<HostName, u64>,
    /// The site's core hosts as launched, in the site file's order: those
    /// of the first launch (every running node's config names them, the
    /// first is the bootstrap host), then each added later. `launch`
    /// refuses a site file that would make one of them a worker or put
    /// another core host first (see `commands::cloud::settle_core`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core: Vec<HostName>,
}

impl Secrets {
    /// The generation of `host`'s credential.
    pub fn generation(&self, host: &HostName) -> Generation {
        self.generations
            .get(host)
            .copied()
            .unwrap_or(Generation::FIRST)
    }

    /// Retire `host`'s credential: its next render gets a new generation,
    /// key and ticket. Returns the new generation.
    pub fn retire(&mut self, host: &HostName) -> Generation {
        let next = self.generation(host).next();
        self.generations.insert(host.clone(), next);
        // The admission was the retired credential's (it names its
        // generation and key): the next launch opens one for the new.
        self.admissions.remove(host);
        next
    }

    /// Open an admission window of `window` seconds from `now` for each
    /// of `hosts` whose window is not open at `now`. Returns the hosts
    /// given one.
    pub fn admit<'h>(
        &mut self,
        hosts: impl IntoIterator<Item = &'h HostName>,
        now: u64,
        window: u64,
    ) -> Vec<HostName> {
        let mut opened = Vec::new();
        for host in hosts {
            if self.admissions.get(host).is_some_and(|&until| now < until) {
                continue;
            }
            self.admissions.insert(host.clone(), now + window);
            opened.push(host.clone());
        }
        opened
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// A random secret of `len` characters from an alphabet safe in shells,
/// URLs and FreeIPA passwords (which must not start with `-`).
pub fn generate_password(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The vault that belongs to a site file.
pub fn path_for(site: &Path) -> PathBuf {
    site.with_extension("vault")
}

/// Whether a vault file says it is the public demo vault.
pub fn is_demo(text: &str) -> bool {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .any(|l| l == DEMO_MARKER)
}

/// Encrypt secrets to the bytes of a vault file. `work_factor` is scrypt's
/// log2(N); `None` lets age calibrate to about a second on this machine.
pub fn seal(
    secrets: &Secrets,
    passphrase: &str,
    work_factor: Option<u8>,
    demo: bool,
) -> Result<Vec<u8>> {
    let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase.to_owned()));
    if let Some(log_n) = work_factor {
        recipient.set_work_factor(log_n);
    }
    let encryptor = age::Encryptor::with_recipients(iter::once(&recipient as &dyn age::Recipient))
        .context("cannot set up vault encryption")?;
    let mut out = HEADER.as_bytes().to_vec();
    if demo {
        out.extend_from_slice(DEMO_MARKER.as_bytes());
        out.push(b'\n');
    }
    let armor = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(armor)?;
    writer.write_all(&serde_json::to_vec(secrets)?)?;
    writer.finish()?.finish()?;
    Ok(out)
}

/// Decrypt a vault file's text. `name` names it in errors.
pub fn open(text: &str, passphrase: &str, name: &str) -> Result<Secrets> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let decryptor =
        age::Decryptor::new_buffered(ArmoredReader::new(body.as_bytes())).map_err(|e| {
            anyhow::anyhow!("{name} is not a builder vault (an age-encrypted file): {e}")
        })?;
    if !decryptor.is_scrypt() {
        bail!("{name} is encrypted to age keys, not a passphrase; builder vaults use a passphrase");
    }
    let identity = age::scrypt::Identity::new(SecretString::from(passphrase.to_owned()));
    let mut reader = decryptor
        .decrypt(iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                anyhow::anyhow!("wrong passphrase for {name}")
            }
            other => anyhow::anyhow!("cannot decrypt {name}: {other}"),
        })?;
    let mut plain = Vec::new();
    reader
        .read_to_end(&mut plain)
        .with_context(|| format!("{name} is damaged"))?;
    let secrets: Secrets = serde_json::from_slice(&plain)
        .with_context(|| format!("{name} decrypts, but its contents are not builder secrets"))?;
    if secrets.format != 1 {
        bail!(
            "{name} has vault format {}, this builder reads format 1",
            secrets.format
        );
    }
    Ok(secrets)
}

/// Where the vault passphrase comes from, in order: a file, the
/// environment, the demo marker, a terminal prompt.
pub struct PassphraseSource {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

pub const PASSPHRASE_ENV: &str = "BUILDER_VAULT_PASSPHRASE";

impl PassphraseSource {
    pub fn from_env(file: Option<PathBuf>) -> PassphraseSource {
        PassphraseSource {
            file,
            env: std::env::var(PASSPHRASE_ENV).ok().filter(|s| !s.is_empty()),
        }
    }

    /// The passphrase to open an existing vault.
    pub fn for_opening(&self, vault_text: &str, vault_name: &str) -> Result<String> {
        if let Some(p) = self.given()? {
            return Ok(p);
        }
        if is_demo(vault_text) {
            return Ok(DEMO_PASSPHRASE.to_owned());
        }
        prompt(&format!("Passphrase for {vault_name}: "))
    }

    /// The passphrase for a new vault: asked twice at a terminal.
    /// The new vault's passphrase: given (file, environment), else asked
    /// at the terminal twice. A short one, or a repetition that differs,
    /// is asked again (a typo in an unrepeated passphrase would lock the
    /// operator out of the vault; ending the run would lose every answer
    /// before it).
    pub fn for_creating(&self) -> Result<String> {
        if let Some(p) = self.given()? {
            return Ok(p);
        }
        for _ in 0..PASSPHRASE_TRIES {
            let first = prompt("New vault passphrase: ")?;
            if first.chars().count() < MIN_PASSPHRASE {
                eprintln!(
                    "  it is shorter than {MIN_PASSPHRASE} characters; choose a longer one \
                     (or set {PASSPHRASE_ENV}, or pass --passphrase-file)"
                );
                continue;
            }
            if prompt("Repeat the passphrase: ")? == first {
                return Ok(first);
            }
            eprintln!("  the two differ; once more");
        }
        bail!(
            "no passphrase after {PASSPHRASE_TRIES} tries; nothing was written (set \
             {PASSPHRASE_ENV} or pass --passphrase-file)"
        )
    }

    fn given(&self) -> Result<Option<String>> {
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
            let line = text.lines().next().unwrap_or_default().to_owned();
            if line.is_empty() {
                bail!("the passphrase file {} is empty", path.display());
            }
            return Ok(Some(line));
        }
        Ok(self.env.clone())
    }
}

/// A new vault's passphrase is at least this long.
const MIN_PASSPHRASE: usize = 12;
/// Tries at a new passphrase before giving up.
const PASSPHRASE_TRIES: usize = 5;

fn prompt(message: &str) -> Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            "the vault passphrase is needed, but there is no terminal to ask on; \
             set {PASSPHRASE_ENV} or pass --passphrase-file"
        );
    }
    rpassword::prompt_password(message).context("cannot read the passphrase")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets {
            format: 1,
            digitalocean_token: "dop_v1_test".into(),
            freeipa_admin_password: generate_password(24),
            directory_manager_password: generate_password(24),
            join_secret: generate_password(43),
            generations: Default::default(),
            admissions: Default::default(),
            core: Default::default(),
        }
    }

    #[test]
    fn seal_then_open_round_trips() {
        let s = secrets();
        let bytes = seal(&s, "correct horse", Some(10), false).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!text.contains(&s.join_secret), "secret in clear");
        assert!(!is_demo(&text));
        assert_eq!(open(&text, "correct horse", "v").unwrap(), s);
    }

    #[test]
    fn wrong_passphrase_is_a_clear_error() {
        let text = String::from_utf8(seal(&secrets(), "right", Some(10), false).unwrap()).unwrap();
        let err = open(&text, "wrong", "hosts.vault").unwrap_err().to_string();
        assert_eq!(err, "wrong passphrase for hosts.vault");
    }

    #[test]
    fn garbage_is_not_a_vault() {
        let err = open("hello\n", "x", "v").unwrap_err().to_string();
        assert!(err.starts_with("v is not a builder vault"), "{err}");
    }

    #[test]
    fn demo_vaults_are_marked() {
        let text =
            String::from_utf8(seal(&secrets(), DEMO_PASSPHRASE, Some(10), true).unwrap()).unwrap();
        assert!(is_demo(&text));
        let source = PassphraseSource {
            file: None,
            env: None,
        };
        assert_eq!(source.for_opening(&text, "v").unwrap(), DEMO_PASSPHRASE);
    }

    #[test]
    fn passwords_are_random_and_shell_safe() {
        let a = generate_password(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, generate_password(32));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
