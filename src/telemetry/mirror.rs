//! Telemetry of the mirror, the listener and readiness.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use super::{register, PREFIX};

static EVENTS_MIRRORED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "events_mirrored_total",
            "Audit events written durably to the file sink.",
        )
        .namespace(PREFIX),
    ))
});

static BATCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "mirror_batches_total",
            "Batches written durably to the file sink.",
        )
        .namespace(PREFIX),
    ))
});

static LAG: LazyLock<Histogram> = LazyLock::new(|| {
    register(Histogram::with_opts(
        HistogramOpts::new(
            "mirror_lag_seconds",
            "Time from an event's occurred_at to its line being durable in the sink.",
        )
        .namespace(PREFIX)
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            3600.0,
        ]),
    ))
});

static HORIZON_WAIT: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    register(prometheus::Gauge::with_opts(
        Opts::new(
            "mirror_horizon_wait_seconds",
            "How long the oldest committed event has waited behind an older open transaction (0 when none waits).",
        )
        .namespace(PREFIX),
    ))
});

static POSITION_ID: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "mirror_last_event_id",
            "Database id of the last event written durably to the file sink.",
        )
        .namespace(PREFIX),
    ))
});

static LAST_DURABLE: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    register(prometheus::Gauge::with_opts(
        Opts::new(
            "mirror_last_durable_timestamp_seconds",
            "Unix time of the last batch written durably to the file sink.",
        )
        .namespace(PREFIX),
    ))
});

static STALLED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "mirror_stalled",
            "1 while the mirror cannot make progress (database, sink or identity problem).",
        )
        .namespace(PREFIX),
    ))
});

static MIRROR_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new("mirror_errors_total", "Mirror failures, by stage.").namespace(PREFIX),
        &["stage"],
    ))
});

static RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "listener_reconnects_total",
            "Times the LISTEN connection was lost and had to be re-established.",
        )
        .namespace(PREFIX),
    ))
});

static NOTIFICATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "listener_notifications_total",
            "Notifications received on the LISTEN connection.",
        )
        .namespace(PREFIX),
    ))
});

static CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "listener_connected",
            "1 while the LISTEN connection is subscribed.",
        )
        .namespace(PREFIX),
    ))
});

static READY: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "ready",
            "1 when every readiness check passes, as last reported by /readyz.",
        )
        .namespace(PREFIX),
    ))
});

/// Forces registration, so every series shows on `/metrics` from the start.
pub fn init() {
    LazyLock::force(&EVENTS_MIRRORED);
    LazyLock::force(&BATCHES);
    LazyLock::force(&LAG);
    LazyLock::force(&HORIZON_WAIT);
    LazyLock::force(&POSITION_ID);
    LazyLock::force(&LAST_DURABLE);
    LazyLock::force(&STALLED);
    LazyLock::force(&MIRROR_ERRORS);
    LazyLock::force(&RECONNECTS);
    LazyLock::force(&NOTIFICATIONS);
    LazyLock::force(&CONNECTED);
    LazyLock::force(&READY);
}

/// A batch became durable.
pub fn batch_durable(events: usize, last_id: i64, lags: impl Iterator<Item = f64>) {
    EVENTS_MIRRORED.inc_by(events as u64);
    BATCHES.inc();
    POSITION_ID.set(last_id);
    for lag in lags {
        LAG.observe(lag.max(0.0));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    LAST_DURABLE.set(now.as_secs_f64());
    tracing::debug!(events, last_id, "Wrote a batch to the sink");
}

/// Rows wait behind an open transaction (or stopped waiting: `None`).
pub fn horizon_wait(wait: Option<Duration>) {
    let seconds = wait.map_or(0.0, |w| w.as_secs_f64());
    HORIZON_WAIT.set(seconds);
}

/// Events have waited behind the horizon longer than `mirror.horizon_stall_warning`.
pub fn horizon_stalled(stalled: Duration, position: crate::db::cursor::Position) {
    tracing::warn!(
        waited_seconds = stalled.as_secs(),
        %position,
        "Audit events wait behind an older open transaction in the cluster; find it in \
         pg_stat_activity (backend_xid, backend_xmin, xact_start) or, if prepared (two-phase \
         commit), in pg_prepared_xacts, then end it (COMMIT/ROLLBACK PREPARED for a prepared one)"
    );
}

/// The server changed timeline and has the last mirrored event: mirroring goes on.
pub fn timeline_followed(from: u32, to: u32, position: crate::db::cursor::Position) {
    tracing::warn!(
        from,
        to,
        %position,
        "The database server changed timeline (a failover or a point-in-time recovery); \
         it has the last mirrored event, mirroring goes on"
    );
}

/// The horizon passed the events that waited: the stall is over.
pub fn horizon_released() {
    tracing::info!("The audit events that waited behind an open transaction can be mirrored again");
}

/// The mirror cannot make progress; `stage` is a fixed word (`read`, `write`, …).
pub fn mirror_failed(stage: &'static str, error: &dyn std::fmt::Display) {
    MIRROR_ERRORS.with_label_values(&[stage]).inc();
    STALLED.set(1);
    tracing::warn!(stage, error = %error, "The mirror cannot make progress; retrying");
}

/// The mirror made progress again after a failure.
pub fn mirror_recovered() {
    if STALLED.get() != 0 {
        STALLED.set(0);
        tracing::info!("The mirror is making progress again");
    }
}

/// The mirror stopped for good until an operator acts (e.g. a replaced database).
pub fn mirror_halted(reason: &dyn std::fmt::Display) {
    STALLED.set(1);
    tracing::error!(reason = %reason, "The mirror has stopped and needs an operator");
}

/// The LISTEN connection went up or down.
pub fn listener_connected(up: bool) {
    CONNECTED.set(i64::from(up));
    if up {
        tracing::info!("Listening for audit event notifications");
    }
}

/// The LISTEN connection was lost; a reconnect follows.
pub fn listener_disconnected(error: &str) {
    RECONNECTS.inc();
    tracing::warn!(error, "Lost the notification connection; reconnecting");
}

/// A notification arrived.
pub fn notification_received() {
    NOTIFICATIONS.inc();
}

/// `/readyz` was answered.
pub fn ready(ready: bool) {
    READY.set(i64::from(ready));
}
