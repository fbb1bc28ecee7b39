//! The FreeIPA JSON-RPC client: one client per server (see [`Client`]),
//! every request built in [`calls`], "ensure" operations in [`ensure`].
//!
//! On the wire: `POST /ipa/session/login_password` (form `user`, `password`)
//! sets the `ipa_session` cookie; `POST /ipa/session/json` carries
//! `{"method", "params": [args, options], "id"}` with `Referer:
//! https://<server>/ipa` and the cookie, and is answered with HTTP 200 and
//! `{"result", "error", ...}` whether the command succeeded or not; 401
//! means the session is gone. TLS is verified against the IPA CA, never
//! skipped.

pub mod calls;
pub mod client;
pub mod ensure;
pub mod error;
pub mod host;
pub mod service_ca;
pub mod site;
pub mod site_records;
pub mod transport;

pub use calls::{Call, Record, Suffix, API_VERSION};
pub use client::{Client, Config};
pub use ensure::{
    CaAclSpec, CaInfo, Change, HostSpec, HostState, IssuedCert, TopologyServer, SERVICE_PROFILE,
};
pub use error::Error;
pub use service_ca::{ServiceCa, ServiceCaInfo, ServiceCert};
pub use site_records::NodeAddress;
pub use transport::Endpoint;

#[cfg(test)]
pub(crate) mod tests;
