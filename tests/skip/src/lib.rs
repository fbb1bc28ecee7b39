//! One definition of "in CI", and one way for a test to say it cannot
//! run here, shared by every test of the workspace: the integration tests
//! (`tests/support`), the lab's and the simulator's own, and firstboot's
//! unit tests that cross-check against outside tools. `.ci/run` sets `CI`;
//! `make test` sets `SITE_TEST_SKIPS` and lists and counts what it holds
//! after the run, however many test binaries skipped.

/// Whether the tests run under CI (`CI` set and not empty), where
/// `.ci/run` has installed every prerequisite.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Report a test that cannot run here; the caller then returns. `reason`
/// says what is missing and how to get it. In CI a skip means a broken
/// setup, so the test fails instead. Elsewhere the reason goes to stderr,
/// which the test runner hides from passing tests, and as one line
/// (`binary::test: reason`) to the file named by `SITE_TEST_SKIPS`, which
/// `make test` prints and counts after the run.
pub fn skip(reason: &str) {
    if in_ci() {
        let missing = reason.strip_prefix("skipping: ").unwrap_or(reason);
        panic!("cannot run: {missing} (CI is set, so a missing prerequisite fails the test)");
    }
    eprintln!("{reason}");
    if let Some(path) = std::env::var_os("SITE_TEST_SKIPS") {
        record_skip(std::path::Path::new(&path), reason);
    }
}

/// One line per skip, appended whole: tests skip from parallel threads
/// and processes, and a single small `O_APPEND` write is not interleaved.
fn record_skip(path: &std::path::Path, reason: &str) {
    use std::io::Write;
    // The test binary (`render-0123abcd` → `render`) and the test's name,
    // which the test harness gives its thread.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.bytes().all(|b| b.is_ascii_hexdigit()) => name.to_owned(),
            _ => stem,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{binary}::{test}: {reason}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", path.display());
    }
}
