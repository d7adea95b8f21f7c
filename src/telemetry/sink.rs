//! Sink telemetry: each function emits the metric and, where an operator cares, the
//! log line, so every sink metric name exists once.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `compartment_audit_sink_written_bytes_total` | counter | |
//! | `compartment_audit_sink_written_lines_total` | counter | |
//! | `compartment_audit_sink_rotations_total` | counter | `reason` = `size`, `time`, `manual` |
//! | `compartment_audit_sink_compressions_total` | counter | `result` = `ok`, `error` |
//! | `compartment_audit_sink_files_deleted_total` | counter | |
//! | `compartment_audit_sink_write_errors_total` | counter | `op` = `write`, `fsync`, `rotate`, `compress` |
//! | `compartment_audit_sink_fsync_duration_seconds` | histogram | |
//! | `compartment_audit_sink_writable` | gauge (0/1) | |

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use super::{registry, PREFIX};
use crate::sink::{RotationReason, SinkError};

struct Metrics {
    written_bytes: IntCounter,
    written_lines: IntCounter,
    rotations: IntCounterVec,
    compressions: IntCounterVec,
    files_deleted: IntCounter,
    write_errors: IntCounterVec,
    fsync_duration: Histogram,
    writable: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // The names and label sets below are constant and valid, and this block runs
    // once, so neither creating nor registering them can fail.
    const WHY: &str = "constant, valid metric definitions registered exactly once";
    let m = Metrics {
        written_bytes: IntCounter::with_opts(opts(
            "sink_written_bytes_total",
            "Bytes appended to the sink's active file.",
        ))
        .expect(WHY),
        written_lines: IntCounter::with_opts(opts(
            "sink_written_lines_total",
            "Lines appended to the sink's active file.",
        ))
        .expect(WHY),
        rotations: IntCounterVec::new(
            opts(
                "sink_rotations_total",
                "Rotations of the active file, by reason.",
            ),
            &["reason"],
        )
        .expect(WHY),
        compressions: IntCounterVec::new(
            opts(
                "sink_compressions_total",
                "Gzip compressions of rotated files, by result.",
            ),
            &["result"],
        )
        .expect(WHY),
        files_deleted: IntCounter::with_opts(opts(
            "sink_files_deleted_total",
            "Rotated files deleted by the sink's file retention.",
        ))
        .expect(WHY),
        write_errors: IntCounterVec::new(
            opts(
                "sink_write_errors_total",
                "Failed sink operations, by operation.",
            ),
            &["op"],
        )
        .expect(WHY),
        fsync_duration: Histogram::with_opts(
            HistogramOpts::new(
                "sink_fsync_duration_seconds",
                "Time spent in fsync of the active file.",
            )
            .namespace(PREFIX)
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect(WHY),
        writable: IntGauge::with_opts(opts(
            "sink_writable",
            "1 while the sink accepts writes, 0 after a failed write until one succeeds.",
        ))
        .expect(WHY),
    };
    let r = registry();
    r.register(Box::new(m.written_bytes.clone())).expect(WHY);
    r.register(Box::new(m.written_lines.clone())).expect(WHY);
    r.register(Box::new(m.rotations.clone())).expect(WHY);
    r.register(Box::new(m.compressions.clone())).expect(WHY);
    r.register(Box::new(m.files_deleted.clone())).expect(WHY);
    r.register(Box::new(m.write_errors.clone())).expect(WHY);
    r.register(Box::new(m.fsync_duration.clone())).expect(WHY);
    r.register(Box::new(m.writable.clone())).expect(WHY);
    // Every label value exists from the start, so dashboards see zeros, not gaps.
    for reason in ["size", "time", "manual"] {
        m.rotations.with_label_values(&[reason]);
    }
    for result in ["ok", "error"] {
        m.compressions.with_label_values(&[result]);
    }
    for op in ["write", "fsync", "rotate", "compress"] {
        m.write_errors.with_label_values(&[op]);
    }
    m
});

/// Forces registration so every sink series shows on `/metrics` from the start.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// A batch (or a part of one) reached the active file.
pub fn written(bytes: usize, lines: usize) {
    let m = &*METRICS;
    m.written_bytes.inc_by(bytes as u64);
    m.written_lines.inc_by(lines as u64);
}

/// The active file was renamed to `name`.
pub fn rotated(reason: RotationReason, name: &str, bytes: u64) {
    METRICS
        .rotations
        .with_label_values(&[reason.as_str()])
        .inc();
    tracing::info!(
        file = name,
        reason = reason.as_str(),
        bytes,
        "Rotated the active audit file."
    );
}

/// A rotated file was compressed.
pub fn compressed(name: &str, plain_bytes: u64, gz_bytes: u64, took: Duration) {
    METRICS.compressions.with_label_values(&["ok"]).inc();
    tracing::debug!(
        file = name,
        plain_bytes,
        gz_bytes,
        seconds = took.as_secs_f64(),
        "Compressed a rotated audit file."
    );
}

/// Compressing a rotated file failed (it stays plain and is retried).
pub fn compression_failed(error: &SinkError) {
    METRICS.compressions.with_label_values(&["error"]).inc();
    METRICS.write_errors.with_label_values(&["compress"]).inc();
    tracing::warn!(error = %error, "Could not compress a rotated audit file; will retry.");
}

/// Retention (or a compression made pointless by it) deleted a rotated file.
pub fn file_deleted(name: &str) {
    METRICS.files_deleted.inc();
    tracing::info!(
        file = name,
        "Deleted a rotated audit file beyond the retention count."
    );
}

/// A write-path operation failed.
pub fn write_failed(error: &SinkError) {
    METRICS
        .write_errors
        .with_label_values(&[error.op().metric_label()])
        .inc();
    tracing::warn!(error = %error, kind = ?error.io_kind(), "The audit file sink failed to write.");
}

/// One fsync of the active file took `took`.
pub fn fsync_observed(took: Duration) {
    METRICS.fsync_duration.observe(took.as_secs_f64());
}

/// Whether the sink currently accepts writes.
pub fn set_writable(writable: bool) {
    METRICS.writable.set(i64::from(writable));
}
