//! The Spaces access key, from the variables doctl and the Terraform
//! provider read, else AWS's.

use std::fmt;

use super::PublishError;

/// The variables doctl and the Terraform provider read, then AWS's.
pub const KEY_ENVS: [&str; 2] = ["SPACES_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"];
pub const SECRET_ENVS: [&str; 2] = ["SPACES_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"];

/// A Spaces access key. `Debug` shows the key id only, never the secret.
#[derive(Clone)]
pub struct SpacesCredentials {
    key: String,
    secret: String,
    /// The variables they came from, named in hints.
    origin: (&'static str, &'static str),
}

impl fmt::Debug for SpacesCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpacesCredentials")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("origin", &self.origin)
            .finish()
    }
}

impl SpacesCredentials {
    /// A key given directly; hints name the `SPACES_…` variables.
    pub fn new(key: impl Into<String>, secret: impl Into<String>) -> SpacesCredentials {
        SpacesCredentials {
            key: key.into(),
            secret: secret.into(),
            origin: (KEY_ENVS[0], SECRET_ENVS[0]),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn secret(&self) -> &str {
        &self.secret
    }

    /// The variables the key came from, as hints name them.
    pub(super) fn origin(&self) -> (&'static str, &'static str) {
        self.origin
    }

    /// `SPACES_ACCESS_KEY_ID` and `SPACES_SECRET_ACCESS_KEY`, else
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; a pair is taken
    /// whole, never mixed with the other.
    pub fn from_env() -> Result<SpacesCredentials, PublishError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<SpacesCredentials, PublishError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        for (key_var, secret_var) in KEY_ENVS.iter().zip(SECRET_ENVS) {
            match (get(key_var), get(secret_var)) {
                (Some(key), Some(secret)) => {
                    return Ok(SpacesCredentials {
                        key: key.trim().to_owned(),
                        secret: secret.trim().to_owned(),
                        origin: (key_var, secret_var),
                    })
                }
                (None, None) => continue,
                (Some(_), None) => {
                    return Err(PublishError::Credentials(format!(
                        "{key_var} is set but {secret_var} is not; set both (a Spaces key and its \
                         secret, from the control panel: API, Spaces Keys)"
                    )))
                }
                (None, Some(_)) => {
                    return Err(PublishError::Credentials(format!(
                        "{secret_var} is set but {key_var} is not; set both (a Spaces key and its \
                         secret, from the control panel: API, Spaces Keys)"
                    )))
                }
            }
        }
        Err(PublishError::Credentials(format!(
            "no Spaces key: set {} and {} (or {} and {}); create a key in the control panel \
             under API, Spaces Keys",
            KEY_ENVS[0], SECRET_ENVS[0], KEY_ENVS[1], SECRET_ENVS[1]
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_in_pairs_spaces_first_and_never_show_the_secret() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = SpacesCredentials::from_lookup(env(&[
            ("SPACES_ACCESS_KEY_ID", "DO-KEY"),
            ("SPACES_SECRET_ACCESS_KEY", "do-secret"),
            ("AWS_ACCESS_KEY_ID", "AWS-KEY"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .unwrap();
        assert_eq!(both.key(), "DO-KEY");
        let debug = format!("{both:?}");
        assert!(
            debug.contains("DO-KEY") && !debug.contains("do-secret"),
            "{debug}"
        );

        assert_eq!(both.origin, (KEY_ENVS[0], SECRET_ENVS[0]));
        let aws = SpacesCredentials::from_lookup(env(&[
            ("AWS_ACCESS_KEY_ID", "AWS-KEY"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .unwrap();
        assert_eq!(aws.key(), "AWS-KEY");
        assert_eq!(aws.origin, (KEY_ENVS[1], SECRET_ENVS[1]));

        let half = SpacesCredentials::from_lookup(env(&[
            ("SPACES_ACCESS_KEY_ID", "DO-KEY"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(half.contains("SPACES_SECRET_ACCESS_KEY is not"), "{half}");

        let none = SpacesCredentials::from_lookup(env(&[("SPACES_ACCESS_KEY_ID", " ")]))
            .unwrap_err()
            .to_string();
        for var in KEY_ENVS.iter().chain(&SECRET_ENVS) {
            assert!(none.contains(var), "{var} missing from {none}");
        }
    }
}
