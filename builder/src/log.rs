//! What the operator sees on stderr: progress, warnings and waits, logged
//! through `tracing`. Data (tables, paths, dry-run plans) goes to stdout
//! and is printed by the commands themselves.
//!
//! One line per event, no timestamps and no colour: an operator reads
//! these lines as they come, and a CI log keeps them as they are. A span
//! named `step` (fields `n`, `of`, `name`) prefixes its events with
//! `[n/of] name: `, so every line of a launch says which step it belongs
//! to, even when requests run concurrently. Other fields of an event
//! follow its message as `key=value`.
//!
//! A long wait (an image import, a volume detach) is a [`Waiting`]: on a
//! terminal, one line redrawn in place; elsewhere, a plain line every
//! half minute.

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// `error`, `warn`, `info` (the default), `debug` or `trace`.
pub const LOG_ENV: &str = "BUILDER_LOG";

/// How often a wait off a terminal says it is still waiting.
const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// Install the stderr logger for the whole process. Events of other
/// crates show from `warn` up only.
pub fn init() {
    let max = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<Level>().ok())
        .unwrap_or(Level::INFO);
    let subscriber = tracing_subscriber::registry().with(Lines { max, sink: None });
    // A second call (tests calling `run` twice) keeps the first logger.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct Lines {
    max: Level,
    /// Where lines go instead of stderr (tests).
    sink: Option<std::sync::Arc<Mutex<Vec<String>>>>,
}

/// A span's share of each line's prefix.
struct Prefix(String);

impl<S> Layer<S> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        let max = if metadata.target().starts_with("builder") {
            self.max
        } else {
            Level::WARN
        };
        *metadata.level() <= max
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "step" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let prefix = format!(
            "[{}/{}] {}",
            fields.take("n"),
            fields.take("of"),
            fields.take("name")
        );
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Prefix(prefix));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(prefix) = span.extensions().get::<Prefix>() {
                    line.push_str(&prefix.0);
                    line.push_str(": ");
                }
            }
        }
        match *event.metadata().level() {
            Level::ERROR => line.push_str("error: "),
            Level::WARN => line.push_str("warning: "),
            _ => {}
        }
        line.push_str(&fields.message);
        for (key, value) in &fields.rest {
            let _ = write!(line, " {key}={value}");
        }
        match &self.sink {
            Some(sink) => sink.lock().unwrap_or_else(|e| e.into_inner()).push(line),
            None => write_line(&line),
        }
    }
}

/// An event's or a span's fields: the message, and the others in order.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Fields {
    fn take(&mut self, name: &str) -> String {
        match self.rest.iter().position(|(k, _)| *k == name) {
            Some(i) => self.rest.remove(i).1,
            None => "?".into(),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push((field.name(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.rest.push((field.name(), value.to_owned()));
        }
    }
}

/// The live line of a wait on a terminal, redrawn under other output.
static LIVE: Mutex<Option<String>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<String>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write one line to stderr, keeping a live line (if any) below it.
fn write_line(line: &str) {
    let live = live();
    let mut err = std::io::stderr().lock();
    let _ = match live.as_deref() {
        Some(current) => write!(err, "\r\x1b[2K{line}\n{current}"),
        None => writeln!(err, "{line}"),
    };
    let _ = err.flush();
}

/// A long wait that shows it is alive: on a terminal one line redrawn in
/// place (`label: state, 1m05s`), elsewhere an info event every half
/// minute. Dropping it clears the line.
pub struct Waiting {
    label: String,
    started: Instant,
    told: Instant,
    on_terminal: bool,
}

impl Waiting {
    pub fn start(label: impl Into<String>) -> Waiting {
        let on_terminal = std::io::stderr().is_terminal() && tracing::enabled!(Level::INFO);
        Waiting {
            label: label.into(),
            started: Instant::now(),
            told: Instant::now(),
            on_terminal,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Say where the wait is: `state` such as "status NEW".
    pub fn update(&mut self, state: &str) {
        let text = format!(
            "{}: {state}, {}",
            self.label,
            crate::log::elapsed(self.started.elapsed())
        );
        if self.on_terminal {
            let mut live = live();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
            *live = Some(text);
        } else if self.told.elapsed() >= PLAIN_EVERY {
            tracing::info!("{text}");
            self.told = Instant::now();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.on_terminal {
            let mut live = live();
            if live.take().is_some() {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            }
        }
    }
}

/// A duration as an operator reads it: `20ms`, `4.2s`, `3m07s`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_step_the_level_and_the_fields() {
        let sink = std::sync::Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Lines {
            max: Level::INFO,
            sink: Some(sink.clone()),
        });
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before any step");
            let step = tracing::info_span!("step", n = 3, of = 10, name = "image");
            let _entered = step.enter();
            tracing::info!("fedora-coreos-42: exists");
            tracing::warn!(attempt = 2, "GET /v2/images: timed out; retrying in 1.0s");
            tracing::debug!("not shown at info");
        });
        assert_eq!(
            *sink.lock().unwrap(),
            [
                "before any step",
                "[3/10] image: fedora-coreos-42: exists",
                "[3/10] image: warning: GET /v2/images: timed out; retrying in 1.0s attempt=2",
            ]
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(elapsed(Duration::from_millis(20)), "20ms");
        assert_eq!(elapsed(Duration::from_millis(4_240)), "4.2s");
        assert_eq!(elapsed(Duration::from_secs(187)), "3m07s");
    }
}
