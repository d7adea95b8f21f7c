//! Telemetry of leader election per sink group (docs/replicas.md).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts};

use super::{register, PREFIX};

static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "mirror_leader",
            "1 while this replica is the leader of its sink group (the one that appends).",
        )
        .namespace(PREFIX),
    ))
});

static TAKEOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "mirror_takeovers_total",
            "Times this replica became the leader of its sink group.",
        )
        .namespace(PREFIX),
    ))
});

static EPOCH: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "mirror_epoch",
            "Epoch of this replica's last leadership of its sink group (0 before any).",
        )
        .namespace(PREFIX),
    ))
});

static LEASE_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    register(Gauge::with_opts(
        Opts::new(
            "mirror_lease_age_seconds",
            "Time since the sink group's lease was last renewed, as last seen by this replica.",
        )
        .namespace(PREFIX),
    ))
});

static REWRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::with_opts(
        Opts::new(
            "mirror_takeover_rewrites_total",
            "Events this replica wrote after a takeover that the previous leader had already appended \
             (by its last lease renewal) but not published: lines present in two replicas' files.",
        )
        .namespace(PREFIX),
    ))
});

static RESUMED_BEHIND: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "mirror_resumed_behind_group_total",
            "Starts whose own files ended before the group's published position, by reason \
             (takeover: another replica wrote the rest; lines_lost: this directory lost lines it had published).",
        )
        .namespace(PREFIX),
        &["reason"],
    ))
});

static GROUP_STALL: LazyLock<Gauge> = LazyLock::new(|| {
    register(Gauge::with_opts(
        Opts::new(
            "sink_group_position_stalled_seconds",
            "How long the sink group's published position has not moved while events wait (0 when none wait).",
        )
        .namespace(PREFIX),
    ))
});

static GROUP_STALLED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::with_opts(
        Opts::new(
            "sink_group_stalled",
            "1 while the sink group's position has not moved for file_sink.group_stall_after while events wait.",
        )
        .namespace(PREFIX),
    ))
});

/// Forces registration, so every series shows on `/metrics` from the start.
pub fn init() {
    LazyLock::force(&LEADER);
    LazyLock::force(&TAKEOVERS);
    LazyLock::force(&EPOCH);
    LazyLock::force(&LEASE_AGE);
    LazyLock::force(&REWRITES);
    for reason in ["takeover", "lines_lost"] {
        RESUMED_BEHIND.with_label_values(&[reason]);
    }
    LazyLock::force(&GROUP_STALL);
    LazyLock::force(&GROUP_STALLED);
}

/// This replica took the lease at `epoch`.
pub fn took_over(epoch: i64) {
    TAKEOVERS.inc();
    EPOCH.set(epoch);
    LEADER.set(1);
}

/// This replica stopped leading (deposed or shut down).
pub fn role_changed(leader: bool, epoch: i64) {
    LEADER.set(i64::from(leader));
    EPOCH.set(epoch);
}

/// The lease's age as seen (`None`: never renewed).
pub fn lease_age(age: Option<Duration>) {
    LEASE_AGE.set(age.map_or(0.0, |a| a.as_secs_f64()));
}

/// A new leader wrote `n` events the previous one had appended.
pub fn rewrites(n: u64) {
    REWRITES.inc_by(n);
}

/// A start resumed after the group's position, its own files ending before it.
pub fn resumed_behind(reason: &'static str) {
    RESUMED_BEHIND.with_label_values(&[reason]).inc();
}

/// The group's stall as last checked.
pub fn group_stall(stall: Option<Duration>, stalled: bool) {
    GROUP_STALL.set(stall.map_or(0.0, |s| s.as_secs_f64()));
    GROUP_STALLED.set(i64::from(stalled));
}
