//! Logs go through `tracing`: to the journal with structured fields
//! (PHASE, ATTEMPT, PEER, ...) when systemd runs us, else to stderr
//! without colour. hickory's own events reach the same place.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, filter::Targets, Layer};

pub fn init() {
    // hickory logs every query at info: only its warnings are worth a line.
    let level = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("hickory_server", LevelFilter::WARN)
        .with_target("hickory_proto", LevelFilter::WARN)
        .with_target("hickory_net", LevelFilter::WARN);
    let journal = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|layer| layer.with_syslog_identifier("firstboot".into()));
    if let Some(journal) = journal {
        let _ = tracing_subscriber::registry()
            .with(journal.with_filter(level.clone()))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false)
                .without_time()
                .with_filter(level),
        )
        .try_init();
}
