//! SSH keys: the site file's public keys, on the account. A key is
//! found by its material (type and blob), whatever its name or comment on
//! the account, and `destroy` never deletes one: keys are the operator's,
//! and other droplets may use them.

use anyhow::Result;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::Kind;
use crate::cloud::launch::{Launch, Outcome};
use crate::cloud::plan::Plan;

/// A key of the site file, as launch adds it to the account.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    pub name: String,
    /// The whole `.pub` line.
    pub public_key: String,
}

impl KeyPlan {
    /// The key material (type and base64 blob), which identifies a key
    /// whatever its comment.
    pub fn material(&self) -> String {
        key_material(&self.public_key)
    }
}

/// The type and blob of an OpenSSH public key line, without the comment.
pub fn key_material(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key on the account, as DigitalOcean shows it (`sshKeys`).
#[derive(Debug, Clone, Deserialize)]
pub struct SshKey {
    pub id: u64,
    pub name: String,
    pub public_key: String,
}

impl Kind for SshKey {
    const NOUN: &'static str = "ssh key";
    const COLLECTION: &'static str = "/v2/account/keys";
    const MANY: &'static str = "ssh_keys";
    const ONE: &'static str = "ssh_key";

    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> String {
        self.id.to_string()
    }
    /// Destroy never deletes a key: keys are the operator's.
    fn planned(_plan: &Plan, _hosts: &[&str], _name: &str) -> bool {
        false
    }
    fn not_the_sites(&self, plan: &Plan) -> Option<String> {
        let material = key_material(&self.public_key);
        (!plan.keys.iter().any(|k| k.material() == material))
            .then(|| "not a key of the site file".into())
    }
}

fn with_material(keys: Vec<SshKey>, material: &str) -> Option<SshKey> {
    keys.into_iter()
        .find(|k| key_material(&k.public_key) == material)
}

/// Launch: every key of the site file is on the account; their ids, in
/// the site file's order.
pub async fn ensure(launch: &Launch<'_>, outcome: &mut Outcome) -> Result<Vec<u64>> {
    let on_account = super::list::<SshKey>(launch.client, launch.plan).await?;
    let mut ids = Vec::new();
    for key in &launch.plan.keys {
        let material = key.material();
        let id = match with_material(on_account.clone(), &material) {
            Some(k) => {
                info!("{}: on the account as `{}`", short_key(&material), k.name);
                k.id
            }
            None => {
                let created = launch
                    .create::<SshKey, _, _>(
                        &json!({"name": key.name, "public_key": key.public_key}),
                        || async {
                            let keys = super::list::<SshKey>(launch.client, launch.plan).await?;
                            Ok(with_material(keys, &material))
                        },
                    )
                    .await?;
                outcome.created.push(format!("ssh key {}", key.name));
                info!("{}: added as `{}`", short_key(&material), key.name);
                created.id
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// What launch does, for `--dry-run`.
pub fn describe(plan: &Plan) -> Vec<String> {
    let mut lines = vec![format!(
        "GET {}; for each key not on the account:",
        SshKey::COLLECTION
    )];
    for key in &plan.keys {
        lines.push(format!(
            "      POST {} {} ({})",
            SshKey::COLLECTION,
            key.name,
            short_key(&key.material())
        ));
    }
    lines
}

/// A key's type and the end of its blob, for messages.
pub fn short_key(material: &str) -> String {
    let (kind, blob) = material.split_once(' ').unwrap_or((material, ""));
    let tail = &blob[blob.len().saturating_sub(12)..];
    format!("{kind} …{tail}")
}
