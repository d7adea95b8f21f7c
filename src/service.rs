//! The service manager protocol (`sd_notify`): what systemd hears from the daemon.
//!
//! - `READY=1` once the daemon serves HTTP and the mirror has caught up (with the sink
//!   disabled: once it serves HTTP); never while the sink directory cannot be opened
//!   for writing (a full or read-only disk at start-up), which shows as `STATUS=`. While a long catch-up is making progress the
//!   start timeout is extended (`EXTEND_TIMEOUT_USEC`), so a backfill of millions of
//!   events is not mistaken for a hung start.
//! - `WATCHDOG=1` every half watchdog period, but only while every progress-beat check
//!   of [`Health`] is fresh: a stuck mirror loop stops the pings and systemd restarts
//!   the service. A database that is down is not "stuck" (the loop keeps retrying and
//!   beating), so an outage does not cause restart loops.
//! - `RELOADING=1` … `READY=1` around a configuration reload, `STOPPING=1` on shutdown,
//!   and `STATUS=` lines an operator sees in `systemctl status`.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "Cannot notify the service manager");
    }
}

/// The daemon is up and caught up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The daemon is draining.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("Stopping: draining the current batch"),
    ]);
}

/// A configuration reload starts.
pub fn reloading() {
    let now = NotifyState::monotonic_usec_now();
    match now {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A configuration reload ended (successfully or not: the daemon runs either way).
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A human-readable status line.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Asks for more start-up time (a long catch-up is making progress).
pub fn extend_start_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// Pings the watchdog at half its period while the daemon's loops make progress.
/// Returns at once when no watchdog is configured.
pub async fn watchdog(health: Arc<Health>, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_alive = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stale = health.stale_checks();
        if stale.is_empty() {
            send(&[NotifyState::Watchdog]);
            if !was_alive {
                tracing::info!("The daemon's loops make progress again; watchdog pings resumed");
            }
            was_alive = true;
        } else if was_alive {
            tracing::error!(
                checks = ?stale,
                "No progress; withholding watchdog pings so the service manager can restart the daemon"
            );
            was_alive = false;
        }
    }
}
