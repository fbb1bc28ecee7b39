//! What a FreeIPA deployment holds, as the simulator keeps it: LDAP-like
//! entries (attribute -> list of values) per object, each stamped so that
//! servers can merge each other's copies (last writer wins per object,
//! deletions kept as tombstones), which is how replicas stay current in
//! both directions without a leader.
//!
//! Attributes whose names start with `_` are the simulator's own (a host's
//! one-time password, a CA's key) and never appear in an answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An entry: attribute -> values (lists, as LDAP has them).
pub type Entry = Map<String, Value>;

/// The kinds of object, each a namespace of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Host,
    HostGroup,
    Service,
    DnsZone,
    /// Keyed `zone|name`.
    DnsRecord,
    /// Keyed `suffix|name`.
    Segment,
    Server,
    Ca,
    CaAcl,
    /// Keyed by the serial number (decimal).
    Cert,
    CertProfile,
    /// The simulator keeps only `admin`.
    User,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::HostGroup => "hostgroup",
            Kind::Service => "service",
            Kind::DnsZone => "dnszone",
            Kind::DnsRecord => "dnsrecord",
            Kind::Segment => "topologysegment",
            Kind::Server => "server",
            Kind::Ca => "ca",
            Kind::CaAcl => "caacl",
            Kind::Cert => "cert",
            Kind::CertProfile => "certprofile",
            Kind::User => "user",
        }
    }
}

/// One object's latest version, or its deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    /// (Lamport clock, server that wrote it): later wins; the server name
    /// breaks ties the same way everywhere.
    pub stamp: (u64, String),
    pub entry: Option<Entry>,
}

/// The whole deployment: the site's names and every object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub realm: String,
    pub domain: String,
    pub clock: u64,
    pub objects: BTreeMap<String, Stamped>,
}

fn storage_key(kind: Kind, key: &str) -> String {
    format!("{}:{}", kind.prefix(), key.to_ascii_lowercase())
}

impl State {
    pub fn new(realm: &str, domain: &str) -> State {
        State {
            realm: realm.to_owned(),
            domain: domain.to_owned(),
            ..State::default()
        }
    }

    /// `dc=example,dc=com`.
    pub fn basedn(&self) -> String {
        self.domain
            .split('.')
            .map(|label| format!("dc={label}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn get(&self, kind: Kind, key: &str) -> Option<&Entry> {
        self.objects.get(&storage_key(kind, key))?.entry.as_ref()
    }

    /// The server that wrote an object's latest version.
    pub fn writer(&self, kind: Kind, key: &str) -> Option<&str> {
        self.objects
            .get(&storage_key(kind, key))
            .map(|stamped| stamped.stamp.1.as_str())
    }

    pub fn exists(&self, kind: Kind, key: &str) -> bool {
        self.get(kind, key).is_some()
    }

    /// Every live entry of a kind, in key order.
    pub fn all(&self, kind: Kind) -> Vec<(&str, &Entry)> {
        let prefix = format!("{}:", kind.prefix());
        self.objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| Some((&k[prefix.len()..], v.entry.as_ref()?)))
            .collect()
    }

    /// Write (or, with None, delete) an object as `server`.
    pub fn put(&mut self, server: &str, kind: Kind, key: &str, entry: Option<Entry>) {
        self.clock += 1;
        self.objects.insert(
            storage_key(kind, key),
            Stamped {
                stamp: (self.clock, server.to_owned()),
                entry,
            },
        );
    }

    /// Take every object of `other` that is newer than ours. Returns
    /// whether anything changed.
    pub fn merge(&mut self, other: &State) -> bool {
        let mut changed = false;
        if self.realm.is_empty() {
            self.realm.clone_from(&other.realm);
            self.domain.clone_from(&other.domain);
            changed = true;
        }
        for (key, theirs) in &other.objects {
            let newer = match self.objects.get(key) {
                Some(ours) if same_name_added_twice(key, ours, theirs) => theirs.stamp < ours.stamp,
                Some(ours) => theirs.stamp > ours.stamp,
                None => true,
            };
            if newer {
                self.objects.insert(key.clone(), theirs.clone());
                changed = true;
            }
        }
        self.clock = self.clock.max(other.clock);
        changed
    }

    /// A copy without the simulator's private attributes whose names are in
    /// `private` (for copies sent to servers that must not hold them).
    pub fn without(&self, kind: Kind, attribute: &str) -> State {
        let mut copy = self.clone();
        let prefix = format!("{}:", kind.prefix());
        for (key, stamped) in copy.objects.iter_mut() {
            if key.starts_with(&prefix) {
                if let Some(entry) = stamped.entry.as_mut() {
                    entry.remove(attribute);
                }
            }
        }
        copy
    }
}

/// Two servers each added a CA of this name before either saw the
/// other's (each with its own `ipacaid`, and its own key in Dogtag): for
/// an add on both sides 389-ds keeps the entry added first and renames the
/// later one into a conflict entry (`nsds5ReplConflict`) that FreeIPA's
/// commands do not show (389-ds `ldap/servers/plugins/replication/urp.c`,
/// add-add conflicts). The later CA's certificates then chain to a CA no
/// one shows any more: whoever adds a sub-CA must be the only one adding
/// it. Other kinds keep the simulator's last-writer-wins.
fn same_name_added_twice(key: &str, ours: &Stamped, theirs: &Stamped) -> bool {
    if !key.starts_with(&format!("{}:", Kind::Ca.prefix())) {
        return false;
    }
    match (&ours.entry, &theirs.entry) {
        (Some(a), Some(b)) => first(a, "ipacaid") != first(b, "ipacaid"),
        _ => false,
    }
}

/// Values of one attribute as text.
pub fn values(entry: &Entry, attribute: &str) -> Vec<String> {
    match entry.get(attribute) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

pub fn first(entry: &Entry, attribute: &str) -> Option<String> {
    values(entry, attribute).into_iter().next()
}

/// Set an attribute to a list of text values (removed when empty).
pub fn set(entry: &mut Entry, attribute: &str, list: Vec<String>) {
    if list.is_empty() {
        entry.remove(attribute);
    } else {
        entry.insert(
            attribute.to_owned(),
            Value::Array(list.into_iter().map(Value::String).collect()),
        );
    }
}

/// Add a value unless present (case-insensitively); whether it was added.
pub fn add_value(entry: &mut Entry, attribute: &str, value: &str) -> bool {
    let mut list = values(entry, attribute);
    if list.iter().any(|v| v.eq_ignore_ascii_case(value)) {
        return false;
    }
    list.push(value.to_owned());
    set(entry, attribute, list);
    true
}

/// An entry from `(attribute, [values])` pairs.
pub fn entry(pairs: &[(&str, &[&str])]) -> Entry {
    let mut out = Entry::new();
    for (attribute, list) in pairs {
        set(
            &mut out,
            attribute,
            list.iter().map(|s| (*s).to_owned()).collect(),
        );
    }
    out
}

/// The entry as an answer shows it: private attributes gone.
pub fn public(entry: &Entry) -> Entry {
    entry
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_takes_the_newer_version_of_each_object_and_keeps_deletions() {
        let mut a = State::new("LAB.EXAMPLE.ORG", "lab.example.org");
        a.put("ipa1", Kind::Host, "n1", Some(entry(&[("fqdn", &["n1"])])));
        let mut b = State::default();
        assert!(b.merge(&a));
        assert!(b.exists(Kind::Host, "n1"));
        b.put("ipa2", Kind::Host, "n1", None);
        b.put("ipa2", Kind::Host, "n2", Some(entry(&[("fqdn", &["n2"])])));
        assert!(a.merge(&b));
        assert!(!a.exists(Kind::Host, "n1"));
        assert!(a.exists(Kind::Host, "N2"));
        assert!(!a.merge(&b), "nothing new the second time");
        assert_eq!(a.all(Kind::Host).len(), 1);
    }

    #[test]
    fn a_ca_added_on_two_servers_keeps_the_first_everywhere() {
        let ca = |id: &str| Some(entry(&[("cn", &["etcd"]), ("ipacaid", &[id])]));
        let mut a = State::new("LAB.EXAMPLE.ORG", "lab.example.org");
        a.put("ipa1", Kind::Ca, "etcd", ca("first"));
        let mut b = State::new("LAB.EXAMPLE.ORG", "lab.example.org");
        b.clock = 5;
        b.put("ipa2", Kind::Ca, "etcd", ca("second"));
        let id = |s: &State| first(s.get(Kind::Ca, "etcd").unwrap(), "ipacaid");
        let mut b_merged = b.clone();
        b_merged.merge(&a);
        assert_eq!(id(&b_merged).as_deref(), Some("first"));
        a.merge(&b);
        assert_eq!(id(&a).as_deref(), Some("first"));
        // A later write of the same CA (same id) is taken as usual.
        let mut renamed = ca("first").unwrap();
        set(&mut renamed, "description", vec!["etcd CA".into()]);
        b_merged.put("ipa2", Kind::Ca, "etcd", Some(renamed));
        assert!(a.merge(&b_merged));
        assert!(values(a.get(Kind::Ca, "etcd").unwrap(), "description").len() == 1);
    }
}
