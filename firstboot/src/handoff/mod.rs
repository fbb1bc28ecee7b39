//! Phase 6's pieces: what moves the site from its temporary CA and DNS
//! to FreeIPA (ARCHITECTURE §5), done by the nodes themselves.
//!
//! Built so far:
//! - phase `handoff` (`phases::handoff`): steps 1 to 5 below;
//! - [`recertify`]: etcd moved from one CA to another, one member at a
//!   time, agreed through etcd, never losing quorum or a write;
//! - `resolver::SiteDns`: the site domain routed to every FreeIPA server,
//!   the temporary DNS last while it serves;
//! - `temporary::Services::end_temporary`: the temporary DNS and CA ended,
//!   the join service kept for later hosts;
//! - `certs::plan`: which issuer each certificate moves to;
//! - [`request`]: where a node asks FreeIPA for a certificate (its FreeIPA
//!   server's own certmonger on a core host); `certs::moved`: the record
//!   of a move, which renewal reads;
//! - [`rejoin`]: a rebuilt bootstrap host's etcd certificate and
//!   identity from the sub-CAs its peers moved to;
//! - [`identity`]: every node's identity moved, agreed through the join
//!   service.
//!
//! The plan for the phase itself (issue 17), so each piece above fits:
//! 1. The bootstrap host (FreeIPA's first server, which holds the admin
//!    password) ensures, idempotently: every registered host's A and PTR
//!    records and the etcd SRV records in FreeIPA's zone; the
//!    `firstboot`, `etcd`, `kubernetes` and `containers` sub-CAs, each
//!    with its own CA ACL; each node's principals for the sub-CAs its
//!    certificates move to (`firstboot/<fqdn>` on every node,
//!    `etcd/<fqdn>` on a core host), managed by that host. It puts each
//!    sub-CA's certificate in etcd for the core hosts, and the
//!    `firstboot` sub-CA's in its join service for every node.
//! 2. Every node routes the site domain to FreeIPA's servers, the
//!    temporary DNS last, once FreeIPA answers its own name from each
//!    server it lists (a worker cannot read etcd; it asks DNS itself).
//! 3. Every core host re-certifies its etcd member ([`recertify`]) with
//!    certificates from the `etcd` sub-CA, whose certificate step 1 puts
//!    in etcd. certmonger requests and tracks them (`getcert request -c
//!    IPA -X etcd -K etcd/<fqdn>`; certmonger's `IPA` CA runs
//!    `ipa-submit`, which speaks XML-RPC with Kerberos,
//!    certmonger-ipa-submit(8)). A core host is a FreeIPA server in a
//!    container and no enrolled client: its keytab is the container's, so
//!    the request runs in the server's container, on files on its data
//!    volume, copied into the slot checked ([`request`]; settled after
//!    step 2 was built). The lab's server, the simulator, keeps a
//!    certmonger of its own with the container's `/etc` under its data
//!    directory, and ipa-sim bound over `ipa-submit` answers certmonger's
//!    helper protocol with the keytab stand-in, so firstboot's `getcert`
//!    command line is the production one. A replica answering 13031/4301
//!    (the sub-CA's key not replicated yet) is "not yet", bounded (the
//!    phase asks again). `getcert` gets no `-F` for etcd: the trust file
//!    is [`recertify`]'s (the bundle until its last step).
//!
//!    A core host rebuilt after this step must present and trust what the
//!    members do, the sub-CA's, from its first start: the join service
//!    asks FreeIPA, as the admin, to sign its etcd CSR
//!    (`join::server`); a rebuilt bootstrap host asks a surviving FreeIPA
//!    server itself ([`rejoin`]); FreeIPA gives a readmitted core host its
//!    etcd principal back (`freeipa::site`); and its etcd rejoin clears
//!    its last life's roll records, so its own handoff moves it to
//!    certmonger like every member.
//! 4. Identities (built: [`identity`]). The temporary root certified
//!    every node's identity (the join, peer and lock services' TLS, and
//!    the lock relay's client certificate), so its keys cannot go before
//!    those do. Each node's identity moves to FreeIPA's `firstboot`
//!    sub-CA (not FreeIPA's own CA, whose certificates every host and
//!    service holds), for the principal `firstboot/<fqdn>` that step 1 or
//!    the node's enrollment made, from the node's own certmonger: a
//!    worker's on the host, where `ipa-client-install` left its keytab
//!    ([`request::RequestSite::enrolled_host`]); a core host's in its
//!    server, as for etcd. The same three steps as etcd's roll, across
//!    every node, workers included, who cannot read etcd: every node
//!    reports each step to the join service, signed, and learns every
//!    node's there. firstboot's services read their files at every
//!    connection, so no step restarts anything. A node that joins while
//!    the bootstrap host's identity is moving gets its identity from the
//!    sub-CA through the join service (as the admin; the join service
//!    adds the host and its principal to FreeIPA first).
//! 5. The end (built: `phases::handoff`, `temporary::Services::end_temporary`).
//!    Once every registered node has reported its identity moved (a node
//!    that reports no more, to a bootstrap host rebuilt since, is asked
//!    at its peer service), the bootstrap host ends the temporary
//!    services: recorded first (and the registry's generation raised, so
//!    the copies without the CA are the newest), its temporary DNS stops,
//!    its temporary CA's keys are overwritten and removed, and its join
//!    service signs nothing from it again: a host that joins later gets
//!    every certificate from FreeIPA (as the admin, its host and
//!    principals added first) and FreeIPA's DNS servers to ask. Every
//!    other node waits to hear that the services ended, then drops the
//!    temporary DNS from its route; each core host replaces its sealed
//!    copy with the keys by the one the join service gives it, with the
//!    registry alone (overwritten, not merely unlinked), which a rebuilt
//!    bootstrap host still needs: who joined, and which credential
//!    generations are retired. A bootstrap host restarted, or rebuilt from
//!    such a copy, starts no temporary service and makes no CA.
//!    The peer service keeps answering "does a cluster exist" (its copy
//!    carries no CA now): a rebuilt bootstrap host must still learn that
//!    the site lives on, and silence never tells it. systemd keeps
//!    holding the temporary DNS's port (`firstboot-dns.socket`), so no
//!    other process takes it; nothing routes to it.
//!
//! A node that joins or comes back at a new address after step 1 does
//! not wait in step 2 for an answer FreeIPA never gives: its enrollment
//! ensures its A record at the address it joined from (`freeipa::site`,
//! `Enroller::enroll` and `readmit`, through `ensure_host`), before its
//! handoff begins. Its PTR record is not kept that way (step 2 does not
//! ask for it); a later host's join through FreeIPA (step 5) should
//! ensure it with the rest.

pub mod identity;
pub mod prepare;
pub mod recertify;
pub mod rejoin;
pub mod request;
