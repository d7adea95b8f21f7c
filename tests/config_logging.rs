//! Logging set up from `[log]`: JSON or text, the level filter, and a second `init`
//! that changes nothing instead of panicking.

use std::io;
use std::sync::{Arc, Mutex};

use compartment_auditd::config::{LogFormat, LogSettings};
use compartment_auditd::telemetry::logging;
use tracing_subscriber::fmt::MakeWriter;

/// A log destination the test can read back.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn contents(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn capture(level: &str, format: LogFormat, emit: impl FnOnce()) -> String {
    let buffer = Buffer::default();
    let settings = LogSettings {
        level: level.into(),
        format,
    };
    tracing::subscriber::with_default(logging::subscriber(&settings, buffer.clone()), emit);
    buffer.contents()
}

#[test]
fn json_logs_are_one_object_per_line_with_fields_at_the_top() {
    let output = capture("info", LogFormat::Json, || {
        tracing::info!(batch = 42, "Mirrored a batch");
        tracing::debug!("Below the level");
    });
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "{output}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
    assert_eq!(line["message"], "Mirrored a batch", "{line}");
    assert_eq!(line["batch"], 42, "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
}

#[test]
fn text_logs_are_plain_lines() {
    let output = capture("info", LogFormat::Text, || {
        tracing::warn!(path = "/x", "Sink not writable");
    });
    assert!(output.contains("Sink not writable"), "{output}");
    assert!(output.contains("path=\"/x\""), "{output}");
    assert!(serde_json::from_str::<serde_json::Value>(output.trim()).is_err());
    assert!(
        !output.contains('\u{1b}'),
        "colour codes in a non-terminal: {output:?}"
    );
}

#[test]
fn the_level_filter_applies_per_target() {
    let output = capture("warn,config_logging=debug", LogFormat::Text, || {
        tracing::debug!("Kept for this target");
        tracing::info!(target: "other", "Dropped for others");
        tracing::warn!(target: "other", "Warnings kept for others");
    });
    assert!(output.contains("Kept for this target"), "{output}");
    assert!(!output.contains("Dropped for others"), "{output}");
    assert!(output.contains("Warnings kept for others"), "{output}");
}

#[test]
fn init_twice_does_not_panic_and_the_level_can_change() {
    let settings = LogSettings {
        level: "info".into(),
        format: LogFormat::Json,
    };
    assert!(
        logging::init(&settings),
        "the first init installs the subscriber"
    );
    assert!(!logging::init(&settings), "a second init changes nothing");
    logging::set_level("debug").expect("a valid level applies");
    assert!(tracing::enabled!(tracing::Level::DEBUG));
    logging::set_level("warn").expect("a valid level applies");
    assert!(!tracing::enabled!(tracing::Level::INFO));
    assert!(logging::set_level("info,=[").is_err());
}
