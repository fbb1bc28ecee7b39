//! The constrained strings both binaries share: host names, the domain,
//! the realm, the VPC range. Each type's only constructor checks it, so a
//! value that exists is valid ("parse, don't validate"), whether it came
//! from `hosts.yaml` (builder) or from `node.json` (firstboot).

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string was refused, and optionally how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub help: Option<String>,
}

impl Refusal {
    pub fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Refusal {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.help {
            Some(help) => write!(f, "{} ({help})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Refusal {}

/// String newtypes: read-only access, Display, and serde as a plain
/// string whose deserialisation goes through `parse`.
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
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $name {
            type Err = Refusal;
            fn from_str(s: &str) -> Result<Self, Refusal> {
                $name::parse(s)
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
            "contains `{}`; only a-z, 0-9 and `-` are allowed",
            bad.escape_default()
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
/// `-`, no `-` at either end. The caller checks that it passes: a hint
/// must never suggest a name that is refused too.
pub fn mend_label(label: &str) -> String {
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
        HostName::check(s).map_err(|refusal| {
            if refusal.help.is_some() {
                return refusal;
            }
            let mended = mend_label(s);
            let valid = HostName::check(&mended).is_ok();
            offer(refusal, mended, valid)
        })?;
        Ok(HostName(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), Refusal> {
        if s.contains('.') {
            let short = s.split('.').next().unwrap_or_default();
            return Err(
                Refusal::new(format!("host name `{s}` contains a dot")).help(format!(
                    "give the short name (`{short}`); the domain comes from `domain_name`"
                )),
            );
        }
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainName(String);
string_type!(DomainName);

impl DomainName {
    pub fn parse(s: &str) -> Result<DomainName, Refusal> {
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        DomainName::check(s, trimmed).map_err(|refusal| {
            if refusal.help.is_some() {
                return refusal;
            }
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
        // Checked on the whole name, so the message names the whole name.
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

    /// `host.domain`.
    pub fn fqdn(&self, host: &HostName) -> String {
        format!("{host}.{}", self.0)
    }
}

/// A Kerberos realm: by convention the domain in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// An RFC 1918 IPv4 range in CIDR notation, as a DigitalOcean VPC takes
/// it (or, for sites on the lab image, a range inside 198.18.0.0/15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VpcRange {
    network: Ipv4Addr,
    prefix: u8,
}

impl fmt::Display for VpcRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for VpcRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VpcRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        VpcRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for VpcRange {
    type Err = Refusal;
    fn from_str(s: &str) -> Result<Self, Refusal> {
        VpcRange::parse(s)
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
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
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
        Ok(range)
    }

    /// The valid range nearest to `network/prefix`: the same prefix if
    /// DigitalOcean takes it, else the /24 or /16 around the network.
    fn mended(network: Ipv4Addr, prefix: u8) -> Option<VpcRange> {
        let fit = match prefix {
            16..=28 => prefix,
            29.. => 24,
            _ => 16,
        };
        let network = Ipv4Addr::from(u32::from(network) & mask(fit));
        VpcRange::parse(&format!("{network}/{fit}")).ok()
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
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

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Every host address (not network or broadcast), in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (1..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
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
        let e = HostName::parse("ns1.example.com").unwrap_err();
        assert_eq!(
            e.help.as_deref(),
            Some("give the short name (`ns1`); the domain comes from `domain_name`")
        );
    }

    #[test]
    fn hints_name_only_names_that_are_accepted() {
        for bad in ["Ns_2", "ns_2", "NS1", "web server"] {
            let e = HostName::parse(bad).unwrap_err();
            let help = e.help.unwrap_or_else(|| panic!("{bad}: no hint"));
            let suggested = help
                .split('`')
                .nth(1)
                .unwrap_or_else(|| panic!("{bad}: {help}"));
            assert!(
                HostName::parse(suggested).is_ok(),
                "{bad}: the hint `{suggested}` is refused too"
            );
        }
        let e = HostName::parse("Ns_2").unwrap_err();
        assert_eq!(
            e.message,
            "host name must be in lower case and contains `_`; only a-z, 0-9 and `-` are allowed"
        );
        assert_eq!(e.help.as_deref(), Some("write `ns-2`"));
        assert_eq!(HostName::parse("1_www").unwrap_err().help, None);
        let e = DomainName::parse("Ex_ample.com").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("write `ex-ample.com`"));
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
        let e = Realm::parse("EXAMPLE").unwrap_err();
        assert_eq!(e.message, "realm `EXAMPLE` has a single label");
    }

    #[test]
    fn vpc_ranges() {
        let r = VpcRange::parse("10.118.0.0/24").unwrap();
        assert_eq!(r.usable(), 254);
        assert_eq!(VpcRange::parse("172.20.0.0/28").unwrap().usable(), 14);
        let e = VpcRange::parse("10.118.0.5/24").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `10.118.0.0/24`?"));
        for bad in [
            "8.8.8.0/24",
            "172.32.0.0/24",
            "10.0.0.0/8",
            "10.0.0.0/29",
            "10.0.0.0/30",
            "10.0.0.0",
            "x/24",
        ] {
            assert!(VpcRange::parse(bad).is_err(), "{bad} accepted");
        }
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
        let lab = VpcRange::parse("198.18.0.0/24").unwrap();
        assert!(lab.contains(Ipv4Addr::new(198, 18, 0, 200)));
        assert!(!lab.contains(Ipv4Addr::new(198, 18, 1, 1)));
        let hosts: Vec<_> = lab.hosts().collect();
        assert_eq!(hosts.len(), 254);
        assert_eq!(hosts[0], Ipv4Addr::new(198, 18, 0, 1));
    }

    #[test]
    fn serde_goes_through_parse() {
        let name: HostName = serde_json::from_str("\"ns1\"").unwrap();
        assert_eq!(name, "ns1");
        assert!(serde_json::from_str::<HostName>("\"NS1\"").is_err());
        assert!(serde_json::from_str::<VpcRange>("\"8.8.8.0/24\"").is_err());
        let range: VpcRange = serde_json::from_str("\"10.1.0.0/24\"").unwrap();
        assert_eq!(serde_json::to_string(&range).unwrap(), "\"10.1.0.0/24\"");
    }
}
