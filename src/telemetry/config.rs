//! Configuration reload telemetry.

use std::sync::LazyLock;

use prometheus::{Gauge, IntCounterVec, Opts};

use super::{register, PREFIX};

static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new("config_reloads_total", "Configuration reloads, by result.").namespace(PREFIX),
        &["result"],
    ))
});

static LAST_SUCCESS: LazyLock<Gauge> = LazyLock::new(|| {
    register(Gauge::with_opts(
        Opts::new(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last configuration load that was applied (the start counts).",
        )
        .namespace(PREFIX),
    ))
});

/// Registers the series; the start-up load counts as the first success.
pub fn init() {
    RELOADS.with_label_values(&["success"]);
    RELOADS.with_label_values(&["failure"]);
    LAST_SUCCESS.set(now());
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A reload was applied.
pub fn reloaded(changed: &[&str], needs_restart: &[&str]) {
    RELOADS.with_label_values(&["success"]).inc();
    LAST_SUCCESS.set(now());
    if changed.is_empty() && needs_restart.is_empty() {
        tracing::info!("Reloaded the configuration: nothing changed");
    } else {
        tracing::info!(?changed, "Reloaded the configuration");
    }
    if !needs_restart.is_empty() {
        tracing::warn!(
            keys = ?needs_restart,
            "These settings changed but take effect only after a restart; the daemon keeps the old values"
        );
    }
}

/// A reload was refused; the daemon keeps its settings.
pub fn reload_failed(error: &dyn std::fmt::Display) {
    RELOADS.with_label_values(&["failure"]).inc();
    tracing::error!(error = %error, "The new configuration is not valid; keeping the current settings");
}
