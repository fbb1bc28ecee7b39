//! The platform's metadata service: where a droplet learns its own
//! network settings when no DHCP gives them (DigitalOcean's at
//! `http://169.254.169.254`, from `node.json`'s `platform.metadata`; the
//! lab's stand-in at a lab address). Plain HTTP on the link, answered for
//! the droplet that asks; the guard lets only root on the host reach it.
//!
//! One client, bounded: each request has a timeout, a failed one is
//! retried with a doubling backoff a few times, a 404 is "none" and not
//! retried, and answers are small text.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// DigitalOcean's metadata API, version 1.
const ROOT: &str = "/metadata/v1";
/// One request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Metadata answers are a line or a short list.
const MAX_ANSWER: usize = 64 * 1024;

/// The metadata service at one address.
#[derive(Debug, Clone, Copy)]
pub struct Metadata {
    address: SocketAddr,
}

/// The droplet's VPC interface, as the metadata service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateInterface {
    /// Lower-case, colon-separated.
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Metadata {
    /// The service at `address`, port 80.
    pub fn at(address: Ipv4Addr) -> Metadata {
        Metadata {
            address: SocketAddr::new(address.into(), 80),
        }
    }

    /// `GET /metadata/v1/<path>` as text: `Ok(None)` for 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>> {
        let url = format!("{ROOT}/{}", path.trim_start_matches('/'));
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(REQUEST_TIMEOUT, self.get_once(&url))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
                });
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(
                        "metadata service {}: GET {url}: {e:#}; retrying",
                        self.address
                    );
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "the metadata service at {} did not answer GET {url} ({ATTEMPTS} attempts)",
                        self.address
                    )))
                }
            }
        }
    }

    async fn get_once(&self, url: &str) -> Result<Option<String>> {
        let stream = TcpStream::connect(self.address)
            .await
            .with_context(|| format!("cannot connect to {}", self.address))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get(url)
            .header("host", self.address.ip().to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow!("cannot read the answer: {e}"))?
            .to_bytes();
        driver.abort();
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("answered {status}");
        }
        let text = String::from_utf8(body.to_vec()).context("the answer is not text")?;
        Ok(Some(text.trim().to_owned()))
    }

    /// A value that must exist.
    async fn required(&self, path: &str) -> Result<String> {
        self.get(path)
            .await?
            .with_context(|| format!("the metadata service has no {ROOT}/{path}"))
    }

    /// The first private (VPC) interface, or `None` when the droplet has
    /// none.
    pub async fn private_interface(&self) -> Result<Option<PrivateInterface>> {
        if self.get("interfaces/private/0/mac").await?.is_none() {
            return Ok(None);
        }
        let base = "interfaces/private/0";
        let mac = self.required(&format!("{base}/mac")).await?;
        let address = self.required(&format!("{base}/ipv4/address")).await?;
        let netmask = self.required(&format!("{base}/ipv4/netmask")).await?;
        let interface = parse_interface(&mac, &address, &netmask)
            .with_context(|| format!("the metadata service's {ROOT}/{base} is malformed"))?;
        Ok(Some(interface))
    }
}

/// The interface from its three metadata values.
pub fn parse_interface(mac: &str, address: &str, netmask: &str) -> Result<PrivateInterface> {
    let mac = mac.trim().to_ascii_lowercase();
    let octets: Vec<&str> = mac.split(':').collect();
    if octets.len() != 6
        || !octets
            .iter()
            .all(|o| o.len() == 2 && u8::from_str_radix(o, 16).is_ok())
    {
        bail!("`{mac}` is not a MAC address");
    }
    let address: Ipv4Addr = address
        .trim()
        .parse()
        .with_context(|| format!("`{address}` is not an IPv4 address"))?;
    let mask: Ipv4Addr = netmask
        .trim()
        .parse()
        .with_context(|| format!("`{netmask}` is not a netmask"))?;
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    if bits.checked_shl(prefix).unwrap_or(0) != 0 {
        bail!("`{netmask}` is not a contiguous netmask");
    }
    Ok(PrivateInterface {
        mac,
        address,
        prefix: prefix as u8,
    })
}

/// A metadata service on a loopback port answering `values` (paths
/// under `/metadata/v1/`), 500 for `broken` and 404 for the rest.
#[cfg(test)]
pub async fn stub(values: &[(&str, &str)]) -> Metadata {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(path, value)| (format!("GET {ROOT}/{path} "), value.to_string()))
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (status, body) = match values.iter().find(|(p, _)| request.starts_with(p)) {
                Some((_, value)) => ("200 OK", value.as_str()),
                None if request.starts_with(&format!("GET {ROOT}/broken ")) => {
                    ("500 Internal Server Error", "no")
                }
                None => ("404 Not Found", ""),
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    Metadata { address }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_parse_and_refuse_what_is_malformed() {
        let i = parse_interface("12:AB:9c:6c:a2:20\n", "10.46.0.5", "255.255.240.0").unwrap();
        assert_eq!(i.mac, "12:ab:9c:6c:a2:20");
        assert_eq!(i.address, Ipv4Addr::new(10, 46, 0, 5));
        assert_eq!(i.prefix, 20);
        assert!(parse_interface("12:ab:9c:6c:a2", "10.0.0.1", "255.0.0.0").is_err());
        assert!(parse_interface("12:ab:9c:6c:a2:20", "10.0.0", "255.0.0.0").is_err());
        assert!(parse_interface("12:ab:9c:6c:a2:20", "10.0.0.1", "255.0.255.0").is_err());
    }

    /// A metadata service on loopback: values, 404, and a server error
    /// that is retried until it gives up.
    #[tokio::test(flavor = "current_thread")]
    async fn answers_none_and_failures() {
        let metadata = stub(&[
            ("interfaces/private/0/mac", "02:00:00:00:02:01"),
            ("interfaces/private/0/ipv4/address", "198.18.0.2"),
            ("interfaces/private/0/ipv4/netmask", "255.255.255.0"),
        ])
        .await;
        let interface = metadata.private_interface().await.unwrap().unwrap();
        assert_eq!(
            interface,
            PrivateInterface {
                mac: "02:00:00:00:02:01".into(),
                address: Ipv4Addr::new(198, 18, 0, 2),
                prefix: 24
            }
        );
        assert_eq!(metadata.get("nothing").await.unwrap(), None);
        let err = metadata.get("broken").await.unwrap_err();
        assert!(format!("{err:#}").contains("4 attempts"), "{err:#}");
    }
}
