//! Retention telemetry: each function emits the log line and the metrics of one
//! event of `audit.retention.cleanup`, so every retention metric name exists once.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `compartment_audit_retention_rows_deleted_total` | counter | |
//! | `compartment_audit_retention_runs_total` | counter | `result` = `success`, `failure`, `skipped` |
//! | `compartment_audit_retention_last_success_timestamp_seconds` | gauge | |
//! | `compartment_audit_retention_run_duration_seconds` | histogram | |
//! | `compartment_audit_retention_batch_duration_seconds` | histogram | |
//! | `compartment_audit_retention_held_back_total` | counter | |
//!
//! `runs_total` counts real runs only (a dry run deletes nothing and is only logged).
//! `held_back_total` counts **runs**, not rows: a run adds one when a file sink's
//! published position kept at least one expired row from being deleted. Rows are the
//! wrong unit for a counter here, because the same held-back rows would be counted
//! again by every run until the sink catches up; the number of rows held back is in
//! the run's log line instead. Alert on `increase(…_held_back_total[1d]) > 0` for a
//! sink that lags a whole day, and on the age of `…_last_success_timestamp_seconds`
//! for a job that keeps failing.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use super::{registry, PREFIX};

struct Metrics {
    rows_deleted: IntCounter,
    runs: IntCounterVec,
    last_success: Gauge,
    run_duration: Histogram,
    batch_duration: Histogram,
    held_back: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // The names and label sets below are constant and valid, and this block runs
    // once, so neither creating nor registering them can fail.
    const WHY: &str = "constant, valid metric definitions registered exactly once";
    let m = Metrics {
        rows_deleted: IntCounter::with_opts(opts(
            "retention_rows_deleted_total",
            "Audit events deleted by retention cleanup.",
        ))
        .expect(WHY),
        runs: IntCounterVec::new(
            opts(
                "retention_runs_total",
                "Retention cleanup runs, by result (skipped: another replica held the lock).",
            ),
            &["result"],
        )
        .expect(WHY),
        last_success: Gauge::with_opts(opts(
            "retention_last_success_timestamp_seconds",
            "Unix time at which the last successful retention cleanup run finished.",
        ))
        .expect(WHY),
        run_duration: Histogram::with_opts(
            HistogramOpts::new(
                "retention_run_duration_seconds",
                "Duration of retention cleanup runs (successful or failed).",
            )
            .namespace(PREFIX)
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
        )
        .expect(WHY),
        batch_duration: Histogram::with_opts(
            HistogramOpts::new(
                "retention_batch_duration_seconds",
                "Duration of one retention batch transaction, BEGIN to COMMIT.",
            )
            .namespace(PREFIX)
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect(WHY),
        held_back: IntCounter::with_opts(opts(
            "retention_held_back_total",
            "Retention cleanup runs in which a file sink's position kept expired rows from being deleted.",
        ))
        .expect(WHY),
    };
    let r = registry();
    r.register(Box::new(m.rows_deleted.clone())).expect(WHY);
    r.register(Box::new(m.runs.clone())).expect(WHY);
    r.register(Box::new(m.last_success.clone())).expect(WHY);
    r.register(Box::new(m.run_duration.clone())).expect(WHY);
    r.register(Box::new(m.batch_duration.clone())).expect(WHY);
    r.register(Box::new(m.held_back.clone())).expect(WHY);
    // Every label value exists from the start, so dashboards see zeros, not gaps.
    for result in ["success", "failure", "skipped"] {
        m.runs.with_label_values(&[result]);
    }
    m
});

/// Registers the retention metrics, so `/metrics` shows them before the first run.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// One batch transaction committed after `duration`.
pub(crate) fn batch_finished(duration: Duration, rows: u64) {
    METRICS.batch_duration.observe(duration.as_secs_f64());
    tracing::debug!(
        rows,
        duration_ms = millis(duration),
        "Retention batch committed"
    );
}

/// A position recorded against another cluster (a restored or replaced database) is
/// ignored: its transaction ids mean nothing here.
pub(crate) fn position_ignored(sink_id: &str, recorded: &str, current: &str) {
    tracing::warn!(
        sink_id,
        recorded_system_identifier = recorded,
        current_system_identifier = current,
        "Ignoring a sink position recorded for another database cluster (stale after a restore); remove or re-baseline that sink"
    );
}

/// What the metrics and logs say of a finished run: the retention module fills it
/// from its run report, so that telemetry does not depend on retention's types.
pub(crate) struct RunSummary<'a> {
    pub(crate) rows_deleted: u64,
    pub(crate) rows_to_delete: u64,
    pub(crate) duration: Duration,
    pub(crate) batches: u32,
    pub(crate) sessions: usize,
    pub(crate) organizations_processed: usize,
    pub(crate) organizations_skipped: usize,
    pub(crate) organizations_pending: usize,
    pub(crate) held_back_rows: u64,
    pub(crate) bounding_sink: Option<&'a str>,
    pub(crate) stopped_at_cap: bool,
    pub(crate) interrupted: bool,
}

/// A real run finished (completed, capped or interrupted by shutdown).
pub(crate) fn run_finished(report: &RunSummary<'_>, finished_at: DateTime<Utc>) {
    let m = &*METRICS;
    m.runs.with_label_values(&["success"]).inc();
    m.rows_deleted.inc_by(report.rows_deleted);
    m.run_duration.observe(report.duration.as_secs_f64());
    // Milliseconds are plenty for a timestamp scraped every few seconds.
    m.last_success
        .set(finished_at.timestamp_millis() as f64 / 1000.0);
    let held_back = report.held_back_rows;
    if held_back > 0 {
        m.held_back.inc();
        tracing::warn!(
            rows_held_back = held_back,
            sink_id = report.bounding_sink.unwrap_or_default(),
            "Retention cleanup left expired events that a file sink has not written yet; they are deleted once it has"
        );
    }
    tracing::info!(
        rows_deleted = report.rows_deleted,
        batches = report.batches,
        sessions = report.sessions,
        organizations_processed = report.organizations_processed,
        organizations_skipped = report.organizations_skipped,
        organizations_pending = report.organizations_pending,
        rows_held_back = held_back,
        duration_ms = millis(report.duration),
        stopped_at_cap = report.stopped_at_cap,
        interrupted = report.interrupted,
        "Retention cleanup finished"
    );
}

/// A dry run finished: logged, not counted.
pub(crate) fn dry_run_finished(report: &RunSummary<'_>) {
    tracing::info!(
        rows_to_delete = report.rows_to_delete,
        organizations_processed = report.organizations_processed,
        organizations_skipped = report.organizations_skipped,
        rows_held_back = report.held_back_rows,
        duration_ms = millis(report.duration),
        "Retention cleanup dry run finished; nothing was deleted"
    );
}

/// Another runner holds the lock; this one did nothing.
pub(crate) fn run_skipped() {
    METRICS.runs.with_label_values(&["skipped"]).inc();
    tracing::info!("Retention cleanup skipped: another runner holds the retention lock");
}

/// A run failed after `duration`; batches committed before the failure stay done.
pub(crate) fn run_failed(err: &dyn std::fmt::Display, duration: Duration, rows_deleted: u64) {
    let m = &*METRICS;
    m.runs.with_label_values(&["failure"]).inc();
    m.rows_deleted.inc_by(rows_deleted);
    m.run_duration.observe(duration.as_secs_f64());
    tracing::error!(
        error = %err,
        rows_deleted,
        duration_ms = millis(duration),
        "Retention cleanup failed"
    );
}

/// The scheduler's run task ended without a result (it panicked).
pub(crate) fn run_crashed(reason: &str) {
    METRICS.runs.with_label_values(&["failure"]).inc();
    tracing::error!(
        error = reason,
        "Retention cleanup run crashed; the scheduler carries on"
    );
}

/// The scheduler sleeps until `next`.
pub(crate) fn scheduled(next: DateTime<Utc>, cron: &str) {
    tracing::info!(
        next_run = %next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cron,
        "Next retention cleanup scheduled"
    );
}

/// The schedule has no further fire time; the scheduler idles until shutdown.
pub(crate) fn schedule_exhausted(cron: &str) {
    tracing::warn!(
        cron,
        "The retention cleanup schedule never fires again; no further runs"
    );
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
