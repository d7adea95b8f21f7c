//! Sanitizer telemetry. The sanitizer is pure; whoever runs it records its report here.
//! Values are never logged: only counts, labelled by the bounded event type.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

use super::{register, PREFIX};
use crate::sanitize::SanitizeReport;

static DROPPED_KEYS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "sanitizer_dropped_keys_total",
            "Metadata keys removed by the allowlist or the secret scrubber, by event type.",
        )
        .namespace(PREFIX),
        &["event_type"],
    ))
});

static REDACTED_VALUES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "sanitizer_redacted_values_total",
            "Values replaced by [REDACTED] or truncated, by event type.",
        )
        .namespace(PREFIX),
        &["event_type"],
    ))
});

/// Forces registration so the families show on `/metrics` from the start.
pub fn init() {
    LazyLock::force(&DROPPED_KEYS);
    LazyLock::force(&REDACTED_VALUES);
}

/// Records what sanitizing one event removed.
pub fn record(report: &SanitizeReport) {
    let label = report.metric_label();
    if report.dropped_keys > 0 {
        DROPPED_KEYS
            .with_label_values(&[label])
            .inc_by(report.dropped_keys);
    }
    if report.redacted_values > 0 {
        REDACTED_VALUES
            .with_label_values(&[label])
            .inc_by(report.redacted_values);
    }
}
