//! Logging set up from `[log]`: JSON or text, the level filter, a second `init`
//! that changes nothing instead of panicking, and no query parameter of the database
//! driver in the log at any level (the real daemon at `debug` and `trace`).

mod api_support;
mod common;
mod support;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
fn the_database_driver_is_heard_only_at_warn_whatever_the_level() {
    for level in ["trace", "debug,tokio_postgres=trace,deadpool=trace"] {
        let output = capture(level, LogFormat::Text, || {
            tracing::debug!(
                target: "tokio_postgres::query",
                "executing statement s1 with parameters: [\"alice@example.com\"]"
            );
            tracing::trace!(target: "tokio_postgres::connection", "poll_read: done");
            tracing::info!(target: "deadpool.postgres", "pool info");
            tracing::warn!(target: "deadpool.postgres", "Connection error: closed");
            tracing::debug!(target: "tokio_postgres_like", "Not the driver");
            tracing::debug!("Our own debug line");
        });
        assert!(!output.contains("alice@example.com"), "{level}: {output}");
        assert!(!output.contains("poll_read"), "{level}: {output}");
        assert!(!output.contains("pool info"), "{level}: {output}");
        assert!(
            output.contains("Connection error: closed"),
            "{level}: {output}"
        );
        assert!(output.contains("Not the driver"), "{level}: {output}");
        assert!(output.contains("Our own debug line"), "{level}: {output}");
    }
}

/// The real daemon at `level`: API requests (a list, an export, a bad token) and a
/// mirrored event; returns its stderr.
async fn daemon_log_at(level: &str, token: &str, db: &common::TestDb, org: uuid::Uuid) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sink = dir.path().join("sink");
    let daemon = support::DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_LOG_LEVEL", level)
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let client = api_support::Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], daemon.port)),
    };
    let list = client
        .get("/v1/orgs/acme-dev/audit/events", Some(token))
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    let export = client
        .get("/v1/orgs/acme-dev/audit/export", Some(token))
        .await;
    assert_eq!(export.status, 200, "{}", export.text());
    let bad = client
        .get(
            "/v1/orgs/acme-dev/audit/events",
            Some("cat_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"),
        )
        .await;
    assert_eq!(bad.status, 401);
    // The export's own audit event (with the caller's e-mail) reaches the sink.
    assert!(!api_support::export_events(db, org).await.is_empty());
    assert!(
        support::wait_for(Duration::from_secs(30), async || {
            support::read_sink_lines(&sink)
                .iter()
                .any(|line| line["event_type"] == "organization.audit.export_created")
                .then_some(())
        })
        .await
        .is_some(),
        "the export event was not mirrored"
    );
    let log = daemon.log.clone();
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    std::fs::read_to_string(&log).expect("the daemon's log")
}

#[tokio::test]
async fn the_daemon_at_debug_or_trace_never_logs_query_parameters() {
    let db = common::TestDb::new().await;
    let (org, reader) = api_support::acme(&db).await;
    let hash = compartment_auditd::db::admin::hash_token(&reader.token);
    let secrets = [
        reader.token.clone(),
        reader.email.clone(),
        hex::encode(hash),
        // How the driver prints a `bytea` parameter.
        format!("{:?}", hash.as_slice()),
        "ZZZZZZZZZZZZZZZZZZZZ".to_owned(),
    ];
    for level in ["debug", "trace", "info,tokio_postgres=trace,deadpool=trace"] {
        let log = daemon_log_at(level, &reader.token, &db, org).await;
        let verbose = if level == "trace" { "TRACE" } else { "DEBUG" };
        if !level.starts_with("info") {
            assert!(
                log.contains(verbose),
                "{level}: no {verbose} line at all:\n{log}"
            );
        }
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "{level}: the log holds {secret:?}:\n{log}"
            );
        }
    }
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
