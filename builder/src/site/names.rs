//! Constrained strings of the site file. Each type's only constructor
//! checks it, so a value that exists is valid ("parse, don't validate").
//! Host names, the domain, the realm and the VPC range are the node
//! contract's own types: builder and firstboot check them in one place.

use std::fmt;

pub use node_contract::names::{mend_label, DomainName, HostName, Realm, Refusal, VpcRange};

macro_rules! string_type {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A DigitalOcean slug (size or region): lower-case letters, digits, `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);
string_type!(Slug);

impl Slug {
    pub fn parse(s: &str, what: &str, example: &str) -> Result<Slug, Refusal> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(
                Refusal::new(format!("`{s}` is not a DigitalOcean {what} slug")).help(format!(
                    "slugs look like `{example}`; `doctl compute {what} list` shows them"
                )),
            );
        }
        Ok(Slug(s.to_owned()))
    }
}

/// An OpenSSH public key line: `type base64 [comment]`, with the type
/// repeated inside the key blob (which catches truncated pastes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey(String);
string_type!(SshKey);

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl SshKey {
    pub fn parse(s: &str) -> Result<SshKey, Refusal> {
        use base64::Engine;
        let s = s.trim();
        let mut fields = s.split_whitespace();
        let kind = fields.next().unwrap_or_default();
        if kind.starts_with("-----BEGIN") {
            return Err(Refusal::new("this is a private key, not a public key")
                .help("give the contents of the `.pub` file; never put a private key here"));
        }
        if !SSH_KEY_TYPES.contains(&kind) {
            return Err(Refusal::new(format!(
                "`{}` is not an SSH public key type",
                kind.chars().take(40).collect::<String>()
            ))
            .help(
                "paste a whole line of a `.pub` file, such as `ssh-ed25519 AAAA... you@laptop`",
            ));
        }
        let blob = fields.next().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|_| {
                Refusal::new(format!("the {kind} key's data is not valid base64"))
                    .help("the key may be truncated or wrapped; paste it on one line")
            })?;
        let inner = decoded
            .get(..4)
            .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
            .and_then(|len| decoded.get(4..4 + len));
        if inner != Some(kind.as_bytes()) {
            return Err(
                Refusal::new(format!("the key's data does not hold a {kind} key")).help(
                    "the key may be truncated or its type changed; paste the whole `.pub` line",
                ),
            );
        }
        // The blob is a sequence of length-prefixed fields (type, then the
        // key material); a paste cut short ends inside one.
        let mut rest = decoded.as_slice();
        let mut count = 0;
        while !rest.is_empty() {
            let field_end = rest
                .get(..4)
                .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
                .and_then(|len| len.checked_add(4))
                .filter(|&end| end <= rest.len());
            let Some(end) = field_end else {
                count = 0;
                break;
            };
            rest = &rest[end..];
            count += 1;
        }
        if count < 2 {
            return Err(Refusal::new(format!("the {kind} key's data ends early"))
                .help("the key is probably truncated; paste the whole line of the `.pub` file"));
        }
        Ok(SshKey(s.to_owned()))
    }
}

/// A Spaces bucket name, by S3's DNS-compatible rule (the bucket is a
/// host name label in its URL): 3 to 63 of a-z, 0-9 and `-`, starting and
/// ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketName(String);
string_type!(BucketName);

impl BucketName {
    pub fn parse(s: &str) -> Result<BucketName, Refusal> {
        if BucketName::fits(s) {
            return Ok(BucketName(s.to_owned()));
        }
        let refusal = Refusal::new(format!("`{s}` is not a valid Spaces bucket name"));
        let mended = mend_label(s);
        Err(if BucketName::fits(&mended) {
            refusal.help(format!(
                "write `{mended}`: 3 to 63 characters of a-z, 0-9 and `-`, starting and ending \
                 with a letter or digit"
            ))
        } else {
            refusal.help(
                "use 3 to 63 characters of a-z, 0-9 and `-`, starting and ending with a letter \
                 or digit",
            )
        })
    }

    fn fits(s: &str) -> bool {
        (3..=63).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }
}

/// Where nodes fetch the firstboot binary: an http(s) URL with a host and
/// no user name, password, query or fragment, kept without a trailing
/// slash. Plain HTTP is accepted: Ignition checks the binary's sha512 from
/// user data, so the transport needs no integrity of its own, and the
/// binary holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(url::Url);

impl BaseUrl {
    pub fn parse(s: &str) -> Result<BaseUrl, Refusal> {
        let refuse = |why: &str| {
            Refusal::new(format!("`{s}` {why}"))
                .help("write it like `https://downloads.example.com/firstboot`")
        };
        let url = url::Url::parse(s)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| refuse("is not an http:// or https:// URL"))?;
        if s.chars().any(char::is_whitespace) {
            return Err(refuse("must not contain spaces"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(refuse("has no host name"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("must not carry a user name or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(refuse("must not contain a query or a fragment"));
        }
        Ok(BaseUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op@laptop";
        assert!(SshKey::parse(good).is_ok());
        assert!(SshKey::parse(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        )
        .is_err());
        assert!(SshKey::parse("ssh-ed25519 AAAAC3NzaC1lZDI1").is_err());
        // Cut short after the type: the key material is missing.
        let e = SshKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBdn1ZXuEs9c6tnGpQUc3YXUDBkl op@laptop",
        )
        .unwrap_err();
        assert!(e.message.contains("ends early"), "{}", e.message);
        assert!(SshKey::parse("-----BEGIN OPENSSH PRIVATE KEY-----").is_err());
        assert!(SshKey::parse("hello").is_err());
    }

    #[test]
    fn bucket_names() {
        assert!(BucketName::parse("my-site").is_ok());
        for bad in ["My_Site", "ab", "-site", "site-", &"a".repeat(64)] {
            assert!(BucketName::parse(bad).is_err(), "{bad} accepted");
        }
        let e = BucketName::parse("My_Site").unwrap_err();
        assert!(e.help.unwrap().starts_with("write `my-site`"));
    }

    #[test]
    fn base_urls() {
        let url = BaseUrl::parse("https://x.example/fb/").unwrap();
        assert_eq!(url.as_str(), "https://x.example/fb");
        assert_eq!(
            BaseUrl::parse("http://198.18.0.1:8080").unwrap().as_str(),
            "http://198.18.0.1:8080"
        );
        for (bad, why) in [
            ("ftp://x", "is not an http:// or https:// URL"),
            (
                "downloads.example.com/site",
                "is not an http:// or https:// URL",
            ),
            ("https://", "is not an http:// or https:// URL"),
            ("https://x/?a=1", "query"),
            ("https://x/#top", "fragment"),
            ("https://user:pw@x/", "user name"),
            ("https://x/a b", "spaces"),
        ] {
            let e = BaseUrl::parse(bad).unwrap_err();
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}
