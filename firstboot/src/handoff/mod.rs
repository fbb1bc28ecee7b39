//! Phase 6's pieces: what moves the site from its temporary CA and DNS
//! to FreeIPA (ARCHITECTURE §5), done by the nodes themselves.
//!
//! Built so far:
//! - phase `handoff` (`phases::handoff`): steps 1 and 2 below, on every
//!   node;
//! - [`recertify`]: etcd moved from one CA to another, one member at a
//!   time, agreed through etcd, never losing quorum or a write;
//! - `resolver::SiteDns`: the site domain routed to every FreeIPA server,
//!   the temporary DNS last while it serves;
//! - `temporary::Services::stop`: the join service and DNS stopped;
//! - `certs::plan`: which issuer each certificate moves to;
//! - [`request`]: where a node asks FreeIPA for a certificate (its FreeIPA
//!   server's own certmonger on a core host); `certs::moved`: the record
//!   of a move, which renewal reads.
//!
//! The plan for the phase itself (issue 17), so each piece above fits:
//! 1. The bootstrap host (FreeIPA's first server, which holds the admin
//!    password) ensures, idempotently: every registered host's A and PTR
//!    records and the etcd SRV records in FreeIPA's zone; the `etcd`,
//!    `kubernetes` and `containers` sub-CAs, each with its own CA ACL;
//!    an `etcd/<fqdn>` service principal per core host, managed by that
//!    host. It records "FreeIPA ready" in etcd.
//! 2. Every node routes the site domain to FreeIPA's servers, the
//!    temporary DNS last, once FreeIPA answers its own name from each
//!    server it lists (a worker cannot read etcd; it asks DNS itself).
//! 3. Every core host re-certifies its etcd member ([`recertify`]) with
//!    certificates from the `etcd` sub-CA: on Fedora CoreOS certmonger
//!    requests and tracks them (`getcert request -c IPA -X etcd -K
//!    etcd/<fqdn>`, the host's keytab authenticating; certmonger's `IPA`
//!    CA runs `/usr/libexec/certmonger/ipa-submit`, which speaks XML-RPC
//!    with Kerberos, certmonger-ipa-submit(8)). The simulator speaks
//!    neither, so the lab binds ipa-sim over that helper path in its
//!    nodes (as it binds it over `/usr/sbin/ipa-client-install`; the lab
//!    image already carries certmonger): it answers certmonger's helper
//!    protocol (exit 0 issued, 1 wait, 2 rejected, 3 unreachable) and
//!    authenticates with the keytab stand-in it wrote at enrollment, so
//!    firstboot's `getcert` command line is the production one. A
//!    replica answering 13031 (the sub-CA's key not replicated yet) is
//!    "not yet", bounded. `getcert` gets no `-F` for etcd: the trust file
//!    is [`recertify`]'s (the bundle until its last step).
//!
//!    Open question found while building step 2, to settle before step 3
//!    runs on Fedora CoreOS: a core host is a FreeIPA server *in a
//!    container*, so the host itself is not an enrolled client. Its host
//!    keytab and krb5.conf are the container's, under its data volume
//!    (FreeIPA's container platform paths put `KRB5_KEYTAB` and
//!    `KRB5_CONF` under `/data`: freeipa `ipaplatform/*container*/paths.py`),
//!    and the host's certmonger has neither. The likely answer: the
//!    request runs in the server's container, whose certmonger already
//!    authenticates with that keytab (`podman exec freeipa-server getcert
//!    request ... -k /data/etcd/member.key -f /data/etcd/member.crt`),
//!    the files on the data volume, which the host's etcd reads. Workers
//!    are enrolled on the host and use the host's certmonger. The lab
//!    must then mirror the container's side, not the host's.
//! 4. Once every node has moved (core hosts record it in etcd; workers
//!    tell the join service, signed, as they told it everything else), the
//!    bootstrap host stops the temporary services, destroys the temporary
//!    CA keys, and the core hosts destroy their sealed copies; the join
//!    service then admits a later host by pointing it at FreeIPA.
//!    The peer service keeps answering "does a cluster exist" (without a
//!    sealed copy): a rebuilt bootstrap host must still learn that the
//!    site lives on, and silence never tells it.
//!
//! Gap to close with step 4 (a later host joining): only step 1 writes
//! FreeIPA's records, once. A node that joins or comes back at a new
//! address after it would wait in step 2 for an answer FreeIPA never
//! gives; the join service must ensure its records in FreeIPA when it
//! registers it after the handoff.

pub mod prepare;
pub mod recertify;
pub mod request;
