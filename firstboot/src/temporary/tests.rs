use std::time::Duration;

use super::*;
use crate::join::server::Registry;
use crate::pki::TempCa;

/// A loopback address of this test's own (all of 127.0.0.0/8 is local on
/// Linux), so the fixed ports cannot clash with another test's: `test`
/// tells this file's tests apart, the process id other runs.
fn own_loopback(test: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 91 + test, (pid >> 8) as u8, (pid as u8).max(2))
}

/// The bootstrap host's services on `own`, with new temporary CAs and an
/// empty registry, both on disk as `bootstrap::ensure_ca` leaves them.
async fn started(paths: &Paths, config: &NodeConfig, own: Ipv4Addr) -> Services {
    let ca = TempCa::create(config.site.domain.as_str(), &plan::PLAN.intermediates()).unwrap();
    ca.save(&paths.ca_dir()).unwrap();
    let registry = Registry {
        admission_deadline: crate::status::now() + 3600,
        ..Registry::default()
    };
    registry.save(&paths.registry_file()).unwrap();
    let settled = Settled {
        ca: Some(ca),
        registry,
        cluster_state: None,
        restored: false,
    };
    Services::start(
        paths,
        config,
        own,
        settled,
        Reporter::new(paths.status_file()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_services_start_with_the_plan_s_certificates_and_stop_for_good() {
    let root = tempfile::tempdir().unwrap();
    let paths = Paths::under(root.path());
    let config = crate::phases::tests::lab_config("node1");
    let own = own_loopback(0);
    let services = started(&paths, &config, own).await;

    // The bootstrap host holds every row of the plan a core host holds,
    // each under its own temporary CA.
    let fqdn = config.fqdn(&config.node);
    for row in plan::PLAN.held_by(config.role()) {
        assert!(!row.slot(&paths).due(&fqdn), "{} not issued", row.purpose);
    }
    // The DNS answers for the site and the join service takes TLS.
    let dns = SocketAddr::new(own.into(), DNS_PORT);
    assert_eq!(crate::dnsquery::lookup_a(dns, &fqdn).await.unwrap(), [own]);
    let join = SocketAddr::new(own.into(), config.join.port);
    assert!(crate::https::answers_tls(join, Duration::from_secs(5)).await);
    assert_eq!(services.peers().await.get(&config.node), Some(&own));
    // A node of an earlier firstboot release is told why it is not heard.
    let old = crate::https::post(
        join,
        "/v2/join",
        &[],
        b"{}".to_vec(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(old.status, 404);
    let why = String::from_utf8_lossy(&old.body);
    assert!(why.contains("older firstboot"), "{why}");

    services.stop().await;
    // Both ports are free again: nothing of the services listens.
    std::net::TcpListener::bind(join).expect("the join port is still held");
    std::net::UdpSocket::bind(dns).expect("the DNS UDP port is still held");
    std::net::TcpListener::bind(dns).expect("the DNS TCP port is still held");
}

#[tokio::test]
async fn ending_the_temporary_services_stops_the_dns_and_destroys_the_ca_for_good() {
    let root = tempfile::tempdir().unwrap();
    let paths = Paths::under(root.path());
    let config = crate::phases::tests::lab_config("node1");
    let own = own_loopback(1);
    let services = started(&paths, &config, own).await;
    let fqdn = config.fqdn(&config.node);
    let dns = SocketAddr::new(own.into(), DNS_PORT);
    assert_eq!(crate::dnsquery::lookup_a(dns, &fqdn).await.unwrap(), [own]);

    services.end_temporary().await.unwrap();
    assert!(!paths.ca_dir().exists(), "the temporary CA's keys are left");
    std::net::UdpSocket::bind(dns).expect("the temporary DNS still holds its port");
    let book = crate::join::server::HandoffBook::load(&paths).unwrap();
    assert!(book.temporary_ended);
    // Again: nothing left to do, nothing fails.
    services.end_temporary().await.unwrap();
    services.stop().await;

    // A restart finds no CA and makes none, and starts no DNS; the
    // registry is what it was.
    let mut discovery = crate::bootstrap::Discovery::default();
    let settled = crate::bootstrap::ensure_ca(
        &paths,
        &config,
        own,
        &mut discovery,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    assert!(settled.ca.is_none());
    assert!(!paths.ca_dir().exists());
    let services = Services::start(
        &paths,
        &config,
        own,
        settled,
        Reporter::new(paths.status_file()),
    )
    .await
    .unwrap();
    std::net::UdpSocket::bind(dns).expect("the temporary DNS started again");
    services.stop().await;
}
