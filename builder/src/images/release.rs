//! A Fedora CoreOS release such as `44.20260707.3.1`, checked once: it
//! names the DigitalOcean custom image and sits in its artifact's URL, so
//! it comes either from the site file (a pin) or from the stream metadata,
//! and in both cases only in this shape.
//!
//! The shape is Fedora CoreOS's own, `X.Y.Z.A` (coreos/fedora-coreos-tracker
//! `Design.md`, "Version numbers"): X the Fedora major version, Y the date
//! of the package snapshot (`YYYYMMDD`), Z the stream's code (1 `next`,
//! 2 `testing`, 3 `stable`, 10 `next-devel`, 20 `testing-devel`, 91
//! `rawhide`, 92 `branched`), A a revision from 0. Upstream says the scheme
//! is for people, not promised forever: the current release is therefore
//! read from the metadata, never computed, and the shape is checked only
//! so that a release is safe in an image name and a URL, and so that a
//! pin of another stream's release is refused before DigitalOcean spends
//! minutes on a URL that does not exist.

use std::fmt;

use crate::site::Refusal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release(String);

/// Each stream's Z, as `Design.md` lists them.
const STREAM_CODES: &[(&str, &str)] = &[
    ("next", "1"),
    ("testing", "2"),
    ("stable", "3"),
    ("next-devel", "10"),
    ("testing-devel", "20"),
    ("rawhide", "91"),
    ("branched", "92"),
];

const EXAMPLE: &str = "44.20260707.3.1";

impl Release {
    /// A release of any stream: four dot-separated numbers, the second a
    /// date.
    pub fn parse(s: &str) -> Result<Release, Refusal> {
        let shown: String = s.chars().take(40).collect();
        let refuse = |why: &str| {
            Refusal::new(format!("`{shown}` is not a Fedora CoreOS release: {why}")).help(format!(
                "a release reads like `{EXAMPLE}`: the Fedora version, the snapshot's date \
                 (YYYYMMDD), the stream's number and a revision"
            ))
        };
        let parts: Vec<&str> = s.split('.').collect();
        let [major, date, code, revision] = parts.as_slice() else {
            return Err(refuse(&format!(
                "it has {} dot-separated parts, not 4",
                parts.len()
            )));
        };
        let digits = |part: &str, min: usize, max: usize| {
            (min..=max).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(major, 2, 3) {
            return Err(refuse(
                "the first part is not a Fedora version (2 or 3 digits)",
            ));
        }
        if !digits(date, 8, 8) || !plausible_date(date) {
            return Err(refuse("the second part is not a date as YYYYMMDD"));
        }
        if !digits(code, 1, 3) {
            return Err(refuse("the third part is not a stream's number"));
        }
        if !digits(revision, 1, 4) {
            return Err(refuse("the fourth part is not a revision number"));
        }
        Ok(Release(s.to_owned()))
    }

    /// A release of `stream`: its third part is the stream's code, where
    /// the stream has one.
    pub fn parse_for_stream(s: &str, stream: &str) -> Result<Release, Refusal> {
        let release = Release::parse(s)?;
        let code = release.0.split('.').nth(2).unwrap_or_default();
        let Some((_, wanted)) = STREAM_CODES.iter().find(|(name, _)| *name == stream) else {
            return Ok(release);
        };
        if code == *wanted {
            return Ok(release);
        }
        let theirs = STREAM_CODES.iter().find(|(_, c)| *c == code).map_or_else(
            || "no known stream's".to_owned(),
            |(name, _)| format!("a `{name}`"),
        );
        Err(Refusal::new(format!(
            "`{release}` is {theirs} release (its third number is {code}), but the image follows \
             the `{stream}` stream, whose releases have {wanted} there"
        ))
        .help(format!(
            "pin a `{stream}` release, such as the `release` of \
             https://builds.coreos.fedoraproject.org/streams/{stream}.json, or remove `release` \
             to launch the stream's current one"
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Month 01-12, day 01-31, a year this century: enough to catch a
/// transposed or truncated date, without a calendar.
fn plausible_date(date: &str) -> bool {
    let number = |range: std::ops::Range<usize>| date[range].parse::<u32>().unwrap_or(0);
    (2000..2100).contains(&number(0..4))
        && (1..=12).contains(&number(4..6))
        && (1..=31).contains(&number(6..8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_of_the_documented_shape_pass() {
        for good in ["44.20260707.3.1", "31.20191018.10.10", "33.20191018.91.0"] {
            assert_eq!(Release::parse(good).unwrap().as_str(), good);
        }
        let stable = Release::parse_for_stream("44.20260707.3.1", "stable").unwrap();
        assert_eq!(stable.to_string(), "44.20260707.3.1");
        // A stream without a known code takes any well-formed release.
        assert!(Release::parse_for_stream("44.20260707.7.0", "custom").is_ok());
    }

    #[test]
    fn malformed_releases_say_which_part_is_wrong() {
        for (bad, why) in [
            ("", "1 dot-separated parts"),
            ("44.20260707.3", "3 dot-separated parts"),
            ("44.20260707.3.1.0", "5 dot-separated parts"),
            ("4.20260707.3.1", "Fedora version"),
            ("44.2026077.3.1", "date"),
            ("44.20261307.3.1", "date"),
            ("44.20260700.3.1", "date"),
            ("44.20260707.x.1", "stream's number"),
            ("44.20260707.3.", "revision"),
            ("44.20260707.3.-1", "revision"),
            (" 44.20260707.3.1", "Fedora version"),
            ("44.20260707.3.1/x", "revision"),
            ("44.20260707.3.1/../x", "6 dot-separated parts"),
            ("४४.20260707.3.1", "Fedora version"),
        ] {
            let refusal = Release::parse(bad).unwrap_err();
            assert!(refusal.message.contains(why), "{bad:?}: {refusal}");
            assert!(refusal.help.unwrap().contains(EXAMPLE));
        }
    }

    #[test]
    fn a_release_of_another_stream_is_refused_for_stable() {
        let refusal = Release::parse_for_stream("44.20260707.2.0", "stable").unwrap_err();
        assert!(
            refusal.message.contains("a `testing` release")
                && refusal.message.contains("`stable` stream"),
            "{refusal}"
        );
        let refusal = Release::parse_for_stream("44.20260707.7.0", "stable").unwrap_err();
        assert!(refusal.message.contains("no known stream's"), "{refusal}");
    }
}
