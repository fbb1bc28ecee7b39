//! Shared helpers for the integration tests under `tests/`.
//!
//! Every test binary includes this module with `mod support;` but uses only
//! part of it, so unused helpers would otherwise warn in each binary.
#![allow(dead_code, unused_imports)]

pub use site_lab::{http, ignition};
pub mod site;

/// One definition for every test of the workspace (`tests/skip`).
pub use site_test_skip::{in_ci, skip};

pub mod child;
pub mod do_fake;
pub mod fcos_streams;
pub mod lab;
pub mod lab_cloud;
pub mod moto;
pub mod prism;

/// End a helper server started in its own process group: SIGTERM to the
/// group, then SIGKILL after 5 s.
pub fn end_group(child: &mut std::process::Child) {
    use nix::sys::signal::{kill, Signal};
    use std::time::{Duration, Instant};
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = kill(group, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(group, Signal::SIGKILL);
    let _ = child.wait();
}
