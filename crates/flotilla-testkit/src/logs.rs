//! The test binary's logs: to the test's output when `FLOTILLA_TEST_LOG` holds a
//! tracing filter, and, whatever it holds, every warning kept in memory so that a
//! test can check what a server told its operator (a refusal, with who and what).

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Every warning (and error) logged in this test binary so far, one line each:
/// `<target>: <message> <field>=<value> …`.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs the test binary's logging once; later calls (other tests) find it in place.
pub(crate) fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        // Another subscriber installed by the test itself wins; that one serves.
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter),
            )
            .with(KeepWarnings.with_filter(LevelFilter::WARN))
            .try_init();
    });
}

/// The warnings logged so far that contain every one of `words`.
pub fn warnings_with(words: &[&str]) -> Vec<String> {
    WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter(|line| words.iter().all(|w| line.contains(w)))
        .cloned()
        .collect()
}

struct KeepWarnings;

impl<S: tracing::Subscriber> Layer<S> for KeepWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line(format!("{}:", event.metadata().target()));
        event.record(&mut line);
        WARNINGS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(line.0);
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = match field.name() {
            "message" => write!(self.0, " {value}"),
            name => write!(self.0, " {name}={value}"),
        };
    }
}
