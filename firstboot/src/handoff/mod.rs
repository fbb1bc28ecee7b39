//! Phase 6's pieces: what moves the site from its temporary CA and DNS
//! to FreeIPA (ARCHITECTURE §5).

pub mod recertify;
