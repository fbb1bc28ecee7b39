//! Logs go to the journal with structured fields (phase, attempt, peer)
//! when systemd runs us, else to stderr without colour.

use log::{LevelFilter, Log, Metadata, Record};

pub fn init() {
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            if logger
                .with_syslog_identifier("firstboot".into())
                .install()
                .is_ok()
            {
                log::set_max_level(LevelFilter::Info);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(Stderr)).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        eprintln!(
            "firstboot: {}: {}",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}
