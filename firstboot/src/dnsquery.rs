//! Looking names up in the site's DNS directly. firstboot is a static
//! binary, and glibc's resolver in a static binary needs the NSS modules of
//! the exact glibc it was built with, which a node image need not have; so
//! firstboot asks the server itself, over UDP.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The A records of `fqdn` on `server` (empty when it has none).
pub async fn lookup_a(server: SocketAddr, fqdn: &str) -> Result<Vec<Ipv4Addr>> {
    let name = Name::from_ascii(format!("{}.", fqdn.trim_end_matches('.')))
        .with_context(|| format!("`{fqdn}` is not a DNS name"))?;
    let mut query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(name, RecordType::A));
    let bytes = query.to_bytes()?;
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    socket.send_to(&bytes, server).await?;
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .with_context(|| format!("the DNS server {server} did not answer"))??;
    let answer = Message::from_bytes(&buf[..len])?;
    if answer.metadata.id != query.metadata.id {
        bail!("the DNS server {server} answered another query");
    }
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => bail!("the DNS server {server} answered {code} for {fqdn}"),
    }
    Ok(answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}
