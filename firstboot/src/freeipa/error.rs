//! What can go wrong talking to FreeIPA, typed where a caller branches.

use std::fmt;

/// FreeIPA's error codes the client branches on (`ipalib/errors.py`).
pub mod code {
    pub const NOT_FOUND: u32 = 4001;
    pub const DUPLICATE_ENTRY: u32 = 4002;
    pub const EMPTY_MODLIST: u32 = 4202;
    /// An LDAP error FreeIPA has no other name for (`DatabaseError`), such
    /// as the topology plugin's "unwilling to perform".
    pub const DATABASE_ERROR: u32 = 4203;
    /// `*_disable` of something already disabled.
    pub const ALREADY_INACTIVE: u32 = 4010;
    /// `dnsrecord_del` of a value the record does not hold.
    pub const ATTR_VALUE_NOT_FOUND: u32 = 4026;
    pub const ACI: u32 = 2100;
    /// Dogtag could not do it (`CertificateOperationError`): among others,
    /// a sub-CA whose key has not reached this server yet.
    pub const CERTIFICATE_OPERATION: u32 = 4301;
    pub const REFERER: u32 = 911;
    pub const VERSION: u32 = 901;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server answered the command with an error.
    Ipa {
        method: String,
        code: u32,
        name: String,
        message: String,
    },
    /// The login was refused (wrong password, locked, expired), or a
    /// session was refused again right after a fresh login.
    Auth { server: String, why: String },
    /// No usable answer before the deadline: connection failures, 5xx,
    /// answers that are not FreeIPA JSON.
    Unavailable {
        server: String,
        method: String,
        attempts: u32,
        last: String,
    },
    /// A command that changes things was sent and not answered in time:
    /// it may have taken effect, or still be running. It is not sent
    /// again blindly; the caller looks whether it took effect.
    Unsettled {
        server: String,
        method: String,
        why: String,
    },
    /// A successful answer without what the command returns.
    Malformed { method: String, why: String },
    /// A membership command refused a member for a reason other than its
    /// being a member already (usually: no such entry).
    MemberRefused {
        method: String,
        member: String,
        why: String,
    },
    /// The request cannot be made as asked (a bad name, an unusable CA file).
    Invalid(String),
    /// Something FreeIPA replicates has not reached this server within
    /// the time allowed (a sub-CA's key: 13031).
    NotYet { server: String, what: String },
}

impl Error {
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Ipa { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is(&self, wanted: u32) -> bool {
        self.code() == Some(wanted)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Ipa {
                method,
                code,
                name,
                message,
            } => write!(f, "FreeIPA refused {method}: {message} ({name} {code})"),
            Error::Auth { server, why } => write!(
                f,
                "FreeIPA at {server} refused the login: {why}; check the admin password in the vault"
            ),
            Error::Unsettled {
                server,
                method,
                why,
            } => write!(
                f,
                "{method} was sent to FreeIPA at {server} and not answered ({why}); it may \
                 have taken effect, so it is not sent again before a look"
            ),
            Error::Unavailable {
                server,
                method,
                attempts,
                last,
            } => write!(
                f,
                "FreeIPA at {server} gave no usable answer to {method} after {attempts} attempts \
                 (last: {last}); is the server up and its certificate from the IPA CA?"
            ),
            Error::Malformed { method, why } => {
                write!(f, "FreeIPA's answer to {method} is not what it returns: {why}")
            }
            Error::MemberRefused {
                method,
                member,
                why,
            } => write!(f, "FreeIPA refused {member} in {method}: {why}"),
            Error::Invalid(why) => f.write_str(why),
            Error::NotYet { server, what } => {
                write!(f, "FreeIPA at {server} does not have {what}")
            }
        }
    }
}

impl std::error::Error for Error {}
