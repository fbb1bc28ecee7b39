//! The listening sockets systemd holds for firstboot's services (socket
//! units: `firstboot-peer.socket` on every node, `firstboot-join.socket`
//! and `firstboot-dns.socket` on the bootstrap host). systemd binds them
//! at boot, before any service runs, and keeps them while a service
//! restarts, so no other process, whatever its uid, can take the
//! service's port in between (an unprivileged port otherwise goes to the
//! first to bind it). A service takes its sockets by the names the
//! socket units give them (`FileDescriptorName=`); started by hand,
//! without them, it binds its own.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

/// The sockets passed to this process, by name.
#[derive(Default)]
pub struct Passed {
    fds: Option<listenfd::ListenFd>,
    names: BTreeMap<String, Vec<usize>>,
}

impl Passed {
    /// What systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`); none when
    /// started by hand. Read once, at start: it clears the variables.
    pub fn from_env() -> Passed {
        let names_text = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        std::env::remove_var("LISTEN_FDNAMES");
        let fds = listenfd::ListenFd::from_env();
        let mut names: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, name) in names_text.split(':').enumerate().take(fds.len()) {
            names.entry(name.to_owned()).or_default().push(index);
        }
        Passed {
            fds: Some(fds),
            names,
        }
    }

    /// The TCP listener named `name`, if systemd passed one.
    pub fn tcp(&mut self, name: &str) -> Result<Option<tokio::net::TcpListener>> {
        let (Some(fds), Some(indices)) = (self.fds.as_mut(), self.names.get(name)) else {
            return Ok(None);
        };
        for &index in indices {
            // A name may hold a datagram socket too (DNS): skip it here.
            if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
                listener
                    .set_nonblocking(true)
                    .context("the passed socket")?;
                return Ok(Some(tokio::net::TcpListener::from_std(listener)?));
            }
        }
        Ok(None)
    }

    /// The UDP socket named `name`, if systemd passed one.
    pub fn udp(&mut self, name: &str) -> Result<Option<tokio::net::UdpSocket>> {
        let (Some(fds), Some(indices)) = (self.fds.as_mut(), self.names.get(name)) else {
            return Ok(None);
        };
        for &index in indices {
            if let Ok(Some(socket)) = fds.take_udp_socket(index) {
                socket.set_nonblocking(true).context("the passed socket")?;
                return Ok(Some(tokio::net::UdpSocket::from_std(socket)?));
            }
        }
        Ok(None)
    }
}

/// A TCP listener: systemd's, named `name`, or one bound here at `addr`.
pub async fn tcp_or_bind(
    passed: &mut Passed,
    name: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener> {
    match passed.tcp(name)? {
        Some(listener) => {
            tracing::info!(
                "{name}: on the socket systemd holds ({})",
                listener
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string())
            );
            Ok(listener)
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}")),
    }
}
