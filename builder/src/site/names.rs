//! Constrained strings of the site file. Each type's only constructor
//! checks it, so a value that exists is valid ("parse, don't validate").

use std::fmt;
use std::net::Ipv4Addr;

/// Why a string was refused, and optionally how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub help: Option<String>,
}

impl Refusal {
    fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            help: None,
        }
    }
    fn help(mut self, help: impl Into<String>) -> Refusal {
        self.help = Some(help.into());
        self
    }
}

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

/// Check one DNS label (RFC 1123): 1-63 of `a-z`, `0-9`, `-`, no hyphen
/// at either end. Upper case is refused rather than folded, so the name an
/// operator reads in the file is the name every node uses. Every problem
/// of the label is named at once; the caller adds a fix that passes.
fn check_label(label: &str, what: &str) -> Result<(), Refusal> {
    if label.is_empty() {
        return Err(Refusal::new(format!("{what} has an empty label")));
    }
    if label.len() > 63 {
        return Err(Refusal::new(format!(
            "{what} has a label of {} characters; at most 63 are allowed",
            label.len()
        )));
    }
    let mut problems = Vec::new();
    if label.chars().any(|c| c.is_ascii_uppercase()) {
        problems.push("must be in lower case".to_owned());
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        problems.push(format!(
            "contains `{bad}`; only a-z, 0-9 and `-` are allowed"
        ));
    }
    if !problems.is_empty() {
        return Err(Refusal::new(format!("{what} {}", problems.join(" and "))));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(Refusal::new(format!(
            "{what} `{label}` starts or ends with `-`"
        )));
    }
    Ok(())
}

/// A label as it was probably meant: lower case, any other character as
/// `-`, no `-` at either end. The caller checks that it passes.
fn mend_label(label: &str) -> String {
    let mended: String = label
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    mended.trim_matches('-').to_owned()
}

/// `refusal` with the help "write `mended`" when `mended` is valid.
fn offer(refusal: Refusal, mended: String, valid: bool) -> Refusal {
    if valid && !mended.is_empty() {
        refusal.help(format!("write `{mended}`"))
    } else {
        refusal
    }
}

/// A host's short name: one DNS label, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);
string_type!(HostName);

impl HostName {
    pub fn parse(s: &str) -> Result<HostName, Refusal> {
        if s.contains('.') {
            let short = s.split('.').next().unwrap_or_default();
            return Err(
                Refusal::new(format!("host name `{s}` contains a dot")).help(format!(
                    "give the short name (`{short}`); the domain comes from `domain_name`"
                )),
            );
        }
        HostName::check(s).map_err(|refusal| {
            let mended = mend_label(s);
            let valid = HostName::check(&mended).is_ok();
            offer(refusal, mended, valid)
        })?;
        Ok(HostName(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), Refusal> {
        check_label(s, "host name")?;
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(Refusal::new(format!(
                "host name `{s}` must start with a letter"
            )));
        }
        Ok(())
    }
}

/// The site's DNS domain: at least two labels, at most 253 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainName(String);
string_type!(DomainName);

impl DomainName {
    pub fn parse(s: &str) -> Result<DomainName, Refusal> {
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        DomainName::check(s, trimmed).map_err(|refusal| {
            let mended: Vec<String> = trimmed.split('.').map(mend_label).collect();
            let mended = mended.join(".");
            let valid = DomainName::check(&mended, &mended).is_ok();
            offer(refusal, mended, valid)
        })?;
        Ok(DomainName(trimmed.to_owned()))
    }

    /// `s` as written, `trimmed` without a final dot.
    fn check(s: &str, trimmed: &str) -> Result<(), Refusal> {
        if trimmed.len() > 253 {
            return Err(Refusal::new(format!(
                "domain name is {} characters long; at most 253 are allowed",
                trimmed.len()
            )));
        }
        let labels: Vec<&str> = trimmed.split('.').collect();
        if labels.len() < 2 {
            return Err(
                Refusal::new(format!("domain name `{s}` has a single label"))
                    .help("FreeIPA needs a domain of at least two labels, such as `example.com`"),
            );
        }
        let only_case = trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if only_case && trimmed.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(Refusal::new(format!(
                "domain name `{s}` must be in lower case"
            )));
        }
        for label in &labels {
            check_label(label, "domain name")?;
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(Refusal::new(format!(
                "domain name `{s}` ends in a numeric label; is it an IP address?"
            )));
        }
        Ok(())
    }

    /// The default Kerberos realm: the domain in upper case.
    pub fn default_realm(&self) -> Realm {
        Realm(self.0.to_ascii_uppercase())
    }
}

/// A Kerberos realm: by convention the domain in upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm(String);
string_type!(Realm);

impl Realm {
    pub fn parse(s: &str) -> Result<Realm, Refusal> {
        if s.chars().any(|c| c.is_ascii_lowercase()) {
            return Err(Refusal::new("a Kerberos realm must be in upper case")
                .help(format!("write `{}`", s.to_ascii_uppercase())));
        }
        let lower = s.to_ascii_lowercase();
        // The domain checks name the lower-cased text in backticks; show it
        // as written, and give realm advice rather than domain advice.
        DomainName::parse(&lower).map_err(|r| Refusal {
            message: upper_in_backticks(
                &r.message
                    .replace("domain name", "realm")
                    .replace("a-z", "A-Z"),
            ),
            help: Some(
                "a realm is normally `domain_name` in upper case, such as `EXAMPLE.COM`; \
                 leave `kerberos_realm` out to get that"
                    .into(),
            ),
        })?;
        Ok(Realm(s.to_owned()))
    }
}

fn upper_in_backticks(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                part.to_ascii_uppercase()
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("`")
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

/// An RFC 1918 IPv4 range in CIDR notation, as a DigitalOcean VPC takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VpcRange {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for VpcRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl VpcRange {
    pub fn parse(s: &str) -> Result<VpcRange, Refusal> {
        let bad = || {
            Refusal::new(format!("`{s}` is not an IPv4 range in CIDR notation"))
                .help("write it like `10.118.0.0/24`")
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            let refusal = Refusal::new(format!("`{s}` has host bits set"));
            return Err(match VpcRange::mended(network, prefix) {
                Some(m) if m.prefix == prefix => refusal.help(format!("did you mean `{m}`?")),
                Some(m) => refusal.help(format!(
                    "did you mean `{m}` ({} droplets)? DigitalOcean takes /16 to /28",
                    m.usable()
                )),
                None => refusal,
            });
        }
        let o = network.octets();
        let private = o[0] == 10
            || (o[0] == 172 && (16..32).contains(&o[1]) && prefix >= 12)
            || (o[0] == 192 && o[1] == 168 && prefix >= 16);
        let range = VpcRange { network, prefix };
        if (!private && !range.is_lab_range()) || prefix < 8 {
            return Err(
                Refusal::new(format!("`{s}` is not a private (RFC 1918) range"))
                    .help("use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
            );
        }
        if !(16..=28).contains(&prefix) {
            let refusal = Refusal::new(format!(
                "a DigitalOcean VPC range must be between /16 and /28, not /{prefix}"
            ));
            return Err(match VpcRange::mended(network, prefix) {
                Some(m) => refusal.help(format!(
                    "write `{m}` ({} droplets), or another prefix from /16 to /28",
                    m.usable()
                )),
                None => refusal,
            });
        }
        Ok(VpcRange { network, prefix })
    }

    /// The valid range nearest to `network/prefix`: the same prefix if
    /// DigitalOcean takes it, else the /24 or /16 around the network.
    fn mended(network: Ipv4Addr, prefix: u8) -> Option<VpcRange> {
        let fit = match prefix {
            16..=28 => prefix,
            29.. => 24,
            _ => 16,
        };
        let network = Ipv4Addr::from(u32::from(network) & (u32::MAX << (32 - u32::from(fit))));
        VpcRange::parse(&format!("{network}/{fit}")).ok()
    }

    /// Inside 198.18.0.0/15 (RFC 2544, for testing): the lab's network,
    /// which only sites on the lab image may use.
    pub fn is_lab_range(&self) -> bool {
        let o = self.network.octets();
        o[0] == 198 && o[1] & 0xfe == 18 && self.prefix >= 15
    }

    /// Addresses usable by droplets: all but the network and broadcast.
    pub fn usable(&self) -> u64 {
        (1u64 << (32 - self.prefix)) - 2
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
    fn host_names() {
        assert!(HostName::parse("ns1").is_ok());
        assert!(HostName::parse("a-b-c").is_ok());
        for bad in [
            "",
            "1abc",
            "-a",
            "a-",
            "Ns1",
            "ns_1",
            "ns1.example.com",
            &"a".repeat(64),
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad} accepted");
        }
        // The fix offered is one that passes.
        let e = HostName::parse("Ns_2").unwrap_err();
        assert_eq!(
            e.message,
            "host name must be in lower case and contains `_`; only a-z, 0-9 and `-` are allowed"
        );
        assert_eq!(e.help.as_deref(), Some("write `ns-2`"));
        assert!(HostName::parse("ns-2").is_ok());
        assert_eq!(HostName::parse("1_www").unwrap_err().help, None);
        let e = HostName::parse("ns1.example.com").unwrap_err();
        assert_eq!(
            e.help.as_deref(),
            Some("give the short name (`ns1`); the domain comes from `domain_name`")
        );
    }

    #[test]
    fn domains_and_realms() {
        assert_eq!(
            DomainName::parse("example.com.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            DomainName::parse("example.com")
                .unwrap()
                .default_realm()
                .as_str(),
            "EXAMPLE.COM"
        );
        for bad in ["example", "Example.com", "exa mple.com", "1.2.3.4", "a..b"] {
            assert!(DomainName::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Realm::parse("EXAMPLE.COM").is_ok());
        assert!(Realm::parse("example.com").is_err());
        assert!(Realm::parse("EXAMPLE").is_err());
        let e = DomainName::parse("Example.com").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("write `example.com`"));
        let e = DomainName::parse("Ex_ample.com").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("write `ex-ample.com`"));
        assert!(DomainName::parse("ex-ample.com").is_ok());
        let e = Realm::parse("EXAMPLE").unwrap_err();
        assert_eq!(e.message, "realm `EXAMPLE` has a single label");
    }

    #[test]
    fn vpc_ranges() {
        let r = VpcRange::parse("10.118.0.0/24").unwrap();
        assert_eq!(r.usable(), 254);
        assert_eq!(VpcRange::parse("172.20.0.0/28").unwrap().usable(), 14);
        let e = VpcRange::parse("10.20.30.5/30").unwrap_err();
        assert_eq!(
            e.help.as_deref(),
            Some("did you mean `10.20.30.0/24` (254 droplets)? DigitalOcean takes /16 to /28")
        );
        let e = VpcRange::parse("10.20.30.0/30").unwrap_err();
        assert_eq!(
            e.help.as_deref(),
            Some("write `10.20.30.0/24` (254 droplets), or another prefix from /16 to /28")
        );
        let e = VpcRange::parse("10.0.0.0/8").unwrap_err();
        assert!(e.help.unwrap().starts_with("write `10.0.0.0/16`"));
        let e = VpcRange::parse("10.118.0.5/24").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `10.118.0.0/24`?"));
        for bad in [
            "8.8.8.0/24",
            "172.32.0.0/24",
            "10.0.0.0/8",
            "10.0.0.0/29",
            "10.0.0.0",
            "x/24",
        ] {
            assert!(VpcRange::parse(bad).is_err(), "{bad} accepted");
        }
    }

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
