//! Telemetry of the `/v1` audit-event API and of exports.
//!
//! Labels stay bounded: the route (`events`, `export`, `other`), the HTTP status code,
//! the export format and a fixed set of outcomes. Organizations appear in log lines
//! (they are not secrets), tokens only by id, never by value.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use uuid::Uuid;

use super::{register, PREFIX};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "api_requests_total",
            "Requests to the /v1 audit-event API, by route and HTTP status code.",
        )
        .namespace(PREFIX),
        &["route", "code"],
    ))
});

static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "api_auth_failures_total",
            "Refused /v1 requests: missing or malformed credentials, unknown/expired/revoked tokens, missing permission.",
        )
        .namespace(PREFIX),
        &["reason"],
    ))
});

static EXPORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "exports_total",
            "Exports by format and outcome (completed, too_large, busy, cancelled, failed).",
        )
        .namespace(PREFIX),
        &["format", "result"],
    ))
});

static EXPORTED_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "exported_events_total",
            "Events delivered by completed exports, by format.",
        )
        .namespace(PREFIX),
        &["format"],
    ))
});

static EXPORT_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register(Histogram::with_opts(
        HistogramOpts::new(
            "export_duration_seconds",
            "Time from the start of an export to its last byte, for completed exports.",
        )
        .namespace(PREFIX)
        .buckets(vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]),
    ))
});

static EXPORTS_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "exports_in_flight",
            "Exports being streamed right now (bounded by http.max_concurrent_exports).",
        )
        .namespace(PREFIX),
    ))
});

static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "api_requests_shed_total",
            "/v1 requests refused before any database work: rate_limited (too many failed authentications from the address, 429), overloaded (http.max_in_flight_requests reached, 503).",
        )
        .namespace(PREFIX),
        &["reason"],
    ))
});

static QUERIES_CANCELLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "api_queries_cancelled_total",
            "API database sessions abandoned mid-request (timeout, client gone): their query was cancelled and the connection closed.",
        )
        .namespace(PREFIX),
    ))
});

/// Forces registration so the families show on `/metrics` from the start.
pub fn init() {
    LazyLock::force(&SHED);
    LazyLock::force(&QUERIES_CANCELLED);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&AUTH_FAILURES);
    LazyLock::force(&EXPORTS);
    LazyLock::force(&EXPORTED_EVENTS);
    LazyLock::force(&EXPORT_DURATION);
    LazyLock::force(&EXPORTS_IN_FLIGHT);
}

/// One answered `/v1` request.
pub fn request(route: &'static str, code: u16) {
    REQUESTS
        .with_label_values(&[route, &code.to_string()])
        .inc();
}

/// Why a request was refused by authentication or authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// No live token has this hash (unknown, expired or revoked).
    Invalid,
    /// The token's user lacks the permission in that organization (or it does not exist).
    Forbidden,
}

impl AuthFailure {
    fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Forbidden => "forbidden",
        }
    }
}

/// A refused request. `token_id` is known only for [`AuthFailure::Forbidden`].
pub fn auth_refused(reason: AuthFailure, token_id: Option<Uuid>) {
    AUTH_FAILURES.with_label_values(&[reason.label()]).inc();
    match token_id {
        Some(token_id) => tracing::info!(
            reason = reason.label(),
            %token_id,
            "Refused an audit API request"
        ),
        None => tracing::debug!(reason = reason.label(), "Refused an audit API request"),
    }
}

/// A request from `client` refused because it failed authentication too often.
pub fn rate_limited(client: std::net::IpAddr) {
    SHED.with_label_values(&["rate_limited"]).inc();
    tracing::info!(%client, "Refused an audit API request: too many failed authentications from this address");
}

/// A request refused because `http.max_in_flight_requests` are being handled.
pub fn overloaded() {
    SHED.with_label_values(&["overloaded"]).inc();
    tracing::debug!("Refused an audit API request: too many requests in flight");
}

/// An abandoned API session's query was cancelled and its connection closed.
pub fn query_cancelled() {
    QUERIES_CANCELLED.inc();
    tracing::debug!("Cancelled the query of an abandoned API request");
}

/// A `/v1` request failed on our side (database, worker); `error` never holds values.
pub fn request_failed(route: &'static str, error: &dyn std::fmt::Display) {
    tracing::warn!(route, error = %error, "An audit API request failed");
}

/// Holds the in-flight gauge up while an export runs.
#[derive(Debug)]
pub struct ExportInFlight(());

impl ExportInFlight {
    /// Counts an export as in flight until dropped.
    pub fn start() -> ExportInFlight {
        EXPORTS_IN_FLIGHT.inc();
        ExportInFlight(())
    }
}

impl Drop for ExportInFlight {
    fn drop(&mut self) {
        EXPORTS_IN_FLIGHT.dec();
    }
}

/// An export completed: every event delivered and the export recorded.
pub fn export_completed(
    org: &str,
    format: &'static str,
    events: u64,
    event_id: i64,
    actor: &str,
    elapsed: Duration,
) {
    EXPORTS.with_label_values(&[format, "completed"]).inc();
    EXPORTED_EVENTS.with_label_values(&[format]).inc_by(events);
    EXPORT_DURATION.observe(elapsed.as_secs_f64());
    tracing::info!(
        org,
        format,
        events,
        event_id,
        actor,
        elapsed_ms = elapsed.as_millis() as u64,
        "Export completed and recorded"
    );
}

/// An export was refused because more events match than the cap allows.
pub fn export_too_large(org: &str, format: &'static str, max_rows: u64) {
    EXPORTS.with_label_values(&[format, "too_large"]).inc();
    tracing::info!(
        org,
        format,
        max_rows,
        "Export refused: more events match than the cap"
    );
}

/// An export was refused because `http.max_concurrent_exports` are running.
pub fn export_busy(format: &'static str) {
    EXPORTS.with_label_values(&[format, "busy"]).inc();
    tracing::info!(
        format,
        "Export refused: the concurrent export limit is reached"
    );
}

/// The client went away (or gave up) before the export completed; nothing recorded.
pub fn export_cancelled(org: &str, format: &'static str, events: u64) {
    EXPORTS.with_label_values(&[format, "cancelled"]).inc();
    tracing::info!(
        org,
        format,
        events,
        "Export cancelled before completion; not recorded"
    );
}

/// An export failed on our side (database, timeout); nothing recorded.
pub fn export_failed(org: &str, format: &'static str, error: &dyn std::fmt::Display) {
    EXPORTS.with_label_values(&[format, "failed"]).inc();
    tracing::warn!(org, format, error = %error, "Export failed; not recorded");
}
