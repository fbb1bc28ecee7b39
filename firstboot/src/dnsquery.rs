//! Looking names up in the site's DNS directly. firstboot is a static
//! binary, and glibc's resolver in a static binary needs the NSS modules of
//! the exact glibc it was built with, which a node image need not have; so
//! firstboot asks the server itself, over UDP.
//!
//! What it takes for an answer, as a stub resolver should (RFC 5452,
//! section 9.1): a datagram from the server asked (the socket is connected
//! to it, so the kernel drops any other source), with the query's ID, the
//! response flag and the very question asked; only A records of the name
//! asked count. Anything else is ignored, not taken as the answer or as a
//! failure, until the time allowed runs out: a forged reply neither
//! poisons the lookup nor makes it fail at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The A records of `fqdn` on `server` (empty when it has none).
pub async fn lookup_a(server: SocketAddr, fqdn: &str) -> Result<Vec<Ipv4Addr>> {
    lookup_a_within(server, fqdn, TIMEOUT).await
}

/// The A records of `fqdn` through `resolver`, asked to recurse, as a
/// stub resolver asks the server in its resolv.conf.
pub async fn resolve_a(resolver: SocketAddr, fqdn: &str) -> Result<Vec<Ipv4Addr>> {
    query_a(resolver, fqdn, TIMEOUT, true).await
}

async fn lookup_a_within(server: SocketAddr, fqdn: &str, limit: Duration) -> Result<Vec<Ipv4Addr>> {
    query_a(server, fqdn, limit, false).await
}

async fn query_a(
    server: SocketAddr,
    fqdn: &str,
    limit: Duration,
    recursion: bool,
) -> Result<Vec<Ipv4Addr>> {
    let name = Name::from_ascii(format!("{}.", fqdn.trim_end_matches('.')))
        .with_context(|| format!("`{fqdn}` is not a DNS name"))?;
    let mut query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = recursion;
    let question = Query::query(name.clone(), RecordType::A);
    query.add_query(question.clone());
    let bytes = query.to_bytes()?;
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    socket
        .connect(server)
        .await
        .with_context(|| format!("cannot reach the DNS server {server}"))?;
    socket.send(&bytes).await?;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 4096];
    let mut ignored = 0u32;
    let answer = loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(received) => received?,
            Err(_) if ignored > 0 => bail!(
                "the DNS server {server} did not answer {fqdn} ({ignored} reply(ies) that were \
                 not the answer to this query ignored)"
            ),
            Err(_) => bail!("the DNS server {server} did not answer"),
        };
        match Message::from_bytes(&buf[..len]) {
            Ok(reply)
                if reply.metadata.id == query.metadata.id
                    && reply.metadata.message_type == MessageType::Response
                    && reply.queries.len() == 1
                    && reply.queries[0].name() == question.name()
                    && reply.queries[0].query_type() == RecordType::A =>
            {
                break reply
            }
            _ => ignored += 1,
        }
    };
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => bail!("the DNS server {server} answered {code} for {fqdn}"),
    }
    Ok(answer
        .answers
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;

    /// A server on loopback that answers each query with `reply(query)`s,
    /// in order.
    async fn server(reply: impl Fn(&Message) -> Vec<Message> + Send + 'static) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let query = Message::from_bytes(&buf[..len]).unwrap();
                for answer in reply(&query) {
                    socket
                        .send_to(&answer.to_bytes().unwrap(), from)
                        .await
                        .unwrap();
                }
            }
        });
        address
    }

    fn response(query: &Message, asked: &str, records: &[(&str, [u8; 4])]) -> Message {
        let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii(asked).unwrap(),
            RecordType::A,
        ));
        for (name, a) in records {
            m.add_answer(Record::from_rdata(
                Name::from_ascii(name).unwrap(),
                60,
                RData::A(Ipv4Addr::from(*a).into()),
            ));
        }
        m
    }

    #[tokio::test]
    async fn only_the_answer_to_the_question_asked_counts() {
        let name = "node2.lab.example.org.";
        let address = server(move |q| {
            let mut wrong_id = response(q, name, &[(name, [198, 18, 0, 66])]);
            wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
            vec![
                wrong_id,
                // Another question, with the right ID.
                response(q, "node3.lab.example.org.", &[(name, [198, 18, 0, 67])]),
                // The answer, with a record for another name beside it.
                response(
                    q,
                    name,
                    &[
                        (name, [198, 18, 0, 11]),
                        ("evil.example.net.", [198, 18, 0, 68]),
                    ],
                ),
            ]
        })
        .await;
        let found = lookup_a(address, "node2.lab.example.org").await.unwrap();
        assert_eq!(found, [Ipv4Addr::new(198, 18, 0, 11)]);
    }

    #[tokio::test]
    async fn forged_replies_alone_end_in_no_answer() {
        let name = "node2.lab.example.org.";
        let address = server(move |q| {
            vec![response(
                q,
                "node3.lab.example.org.",
                &[(name, [1, 2, 3, 4])],
            )]
        })
        .await;
        let err = lookup_a_within(address, "node2.lab.example.org", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1 reply(ies)"), "{err:#}");
    }

    #[tokio::test]
    async fn a_reply_from_another_source_is_not_read() {
        // The server never answers; a stranger sends a well-formed answer
        // to the client's port from another socket.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_address = silent.local_addr().unwrap();
        let lookup = tokio::spawn(async move {
            lookup_a_within(
                server_address,
                "node2.lab.example.org",
                Duration::from_millis(500),
            )
            .await
        });
        let mut buf = vec![0u8; 4096];
        let (len, client) = silent.recv_from(&mut buf).await.unwrap();
        let query = Message::from_bytes(&buf[..len]).unwrap();
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forged = response(
            &query,
            "node2.lab.example.org.",
            &[("node2.lab.example.org.", [6, 6, 6, 6])],
        );
        stranger
            .send_to(&forged.to_bytes().unwrap(), client)
            .await
            .unwrap();
        let err = lookup.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err:#}");
    }
}
