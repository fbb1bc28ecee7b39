//! HTTP plumbing shared by the DigitalOcean client and the publishers:
//! one way to build an HTTP client, one retry loop with an overall
//! deadline, one account of what failed on the network, and one rule for
//! what may be sent again.

mod failure;
mod retry;

use std::time::Duration;

use reqwest::StatusCode;

pub use failure::Failure;
pub use retry::{retry, Error as RetryError, GaveUp, RetryPolicy, Step};

/// An HTTP client for one remote service (rustls with ring; no proxy
/// settings beyond reqwest's defaults).
pub fn client(request_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(10).min(request_timeout))
        .user_agent(concat!("site-builder/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The runtime network work runs on: one thread (a command waits on one
/// service at a time; concurrency within it is futures, not threads).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Whether a request may be sent again when its fate is unknown. The
/// caller says which, since only it knows what the request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Sending it twice does what sending it once does: a GET, a HEAD, a
    /// DELETE, a PUT of a whole resource (a firewall's rules, an object
    /// named by its content's hash).
    Always,
    /// Sending it twice may do it twice (a POST that creates something):
    /// sent again only when it provably never reached the server or the
    /// server said it did nothing (429, 503). A caller that must know
    /// looks before it asks again.
    OnlyIfUnprocessed,
}

impl Resend {
    /// After a failure with no HTTP answer.
    pub fn after_failure(self, failure: &Failure) -> bool {
        if failure.is_permanent() {
            return false;
        }
        match self {
            Resend::Always => true,
            Resend::OnlyIfUnprocessed => failure.unsent(),
        }
    }

    /// After an HTTP answer with this status.
    pub fn after_status(self, status: StatusCode) -> bool {
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => true,
            s if s.is_server_error() => self == Resend::Always,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unprocessed_creates_are_sent_again() {
        let lost = Failure::Broken {
            detail: "reset".into(),
        };
        let refused = Failure::Refused {
            address: "127.0.0.1:9".into(),
        };
        let unresolved = Failure::Resolve {
            host: "api.example".into(),
            detail: "Name or service not known".into(),
        };
        assert!(Resend::Always.after_failure(&lost));
        assert!(!Resend::OnlyIfUnprocessed.after_failure(&lost));
        assert!(Resend::OnlyIfUnprocessed.after_failure(&refused));
        assert!(!Resend::Always.after_failure(&unresolved));
        for (status, always, once) in [(500, true, false), (503, true, true), (429, true, true)] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(Resend::Always.after_status(status), always, "{status}");
            assert_eq!(
                Resend::OnlyIfUnprocessed.after_status(status),
                once,
                "{status}"
            );
        }
        assert!(!Resend::Always.after_status(StatusCode::NOT_FOUND));
    }
}
