//! Shared helpers for the integration tests under `tests/`.
//!
//! Every test binary includes this module with `mod support;` but uses only
//! part of it, so unused helpers would otherwise warn in each binary.
#![allow(dead_code, unused_imports)]

pub use site_lab::{http, ignition};
pub mod site;

/// Report a test that cannot run here. Outside CI it prints one line and
/// the test returns; in CI (`CI` set) the packages are installed by
/// `.ci/run`, so a skip means a broken setup and fails the test.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set, so this test must run)");
    }
    eprintln!("{reason}");
}
pub mod do_fake;
pub mod lab;
pub mod prism;
