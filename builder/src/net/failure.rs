//! What failed below HTTP, said once and in words: reqwest's own message
//! ("error sending request for url (…)") names neither the cause nor what
//! to do, and its cause chain repeats itself at every level.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::time::Duration;

/// One exchange that got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host name does not resolve. Permanent for this run: the name
    /// will not appear within a retry's backoff.
    Resolve { host: String, detail: String },
    /// Nothing listens at the address (or a firewall rejects us).
    Refused { address: String },
    /// The TLS handshake failed (certificate, clock, protocol): permanent
    /// for this run as well.
    Tls { host: String, detail: String },
    /// No answer in time. `connecting`: the connection itself timed out,
    /// so the request never left.
    Timeout { after: Duration, connecting: bool },
    /// The connection broke before a whole answer came.
    Broken { detail: String },
    /// Anything else, in the innermost words available.
    Other {
        detail: String,
        /// Whether the request provably never reached the server.
        unsent: bool,
    },
}

impl Failure {
    /// Describe `error`, a failed exchange whose whole-request timeout
    /// was `timeout`.
    pub fn of(error: &reqwest::Error, timeout: Duration) -> Failure {
        let url = error.url();
        let host = url
            .and_then(|u| u.host_str())
            .unwrap_or("the server")
            .to_owned();
        let detail = innermost(error);
        if error.is_dns() {
            return Failure::Resolve { host, detail };
        }
        if error.is_timeout() {
            return Failure::Timeout {
                after: timeout,
                connecting: error.is_connect(),
            };
        }
        if let Some(tls) = tls_cause(error) {
            return Failure::Tls { host, detail: tls };
        }
        match io_kind(error) {
            Some(io::ErrorKind::ConnectionRefused) => Failure::Refused {
                address: match url.and_then(|u| u.port_or_known_default()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                },
            },
            Some(
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof,
            ) => Failure::Broken { detail },
            _ if error.is_connect() => Failure::Other {
                detail,
                unsent: true,
            },
            _ if error.is_body() || error.is_decode() => Failure::Broken { detail },
            _ => Failure::Other {
                detail,
                unsent: false,
            },
        }
    }

    /// A failure that retrying within this run cannot mend.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Failure::Resolve { .. } | Failure::Tls { .. })
    }

    /// Whether the request provably never reached the server, so that
    /// even a request that must not be repeated can be sent again.
    pub fn unsent(&self) -> bool {
        match self {
            Failure::Resolve { .. } | Failure::Refused { .. } | Failure::Tls { .. } => true,
            Failure::Timeout { connecting, .. } => *connecting,
            Failure::Broken { .. } => false,
            Failure::Other { unsent, .. } => *unsent,
        }
    }

    /// What to do about a permanent failure.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Failure::Resolve { .. } => {
                Some("check the host name in the URL, and this machine's DNS and network")
            }
            Failure::Tls { .. } => {
                Some("check the URL, this machine's clock and its CA certificates")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Resolve { host, detail } => {
                write!(f, "cannot resolve the host name `{host}` ({detail})")
            }
            Failure::Refused { address } => write!(f, "connection refused by {address}"),
            Failure::Tls { host, detail } => write!(f, "TLS with {host} failed: {detail}"),
            Failure::Timeout { after, .. } => {
                write!(f, "no answer within {}", crate::log::elapsed(*after))
            }
            Failure::Broken { detail } => {
                write!(f, "the connection broke before a whole answer ({detail})")
            }
            Failure::Other { detail, .. } => f.write_str(detail),
        }
    }
}

/// The message of the deepest cause: the one that says what happened.
fn innermost(error: &reqwest::Error) -> String {
    let mut deepest: &dyn std::error::Error = error;
    while let Some(next) = deepest.source() {
        deepest = next;
    }
    deepest.to_string()
}

fn io_kind(error: &reqwest::Error) -> Option<io::ErrorKind> {
    let mut source = error.source();
    let mut kind = None;
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            kind = Some(io.kind());
        }
        source = err.source();
    }
    kind
}

fn tls_cause(error: &reqwest::Error) -> Option<String> {
    let mut source = error.source();
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        source = err.source();
    }
    None
}
