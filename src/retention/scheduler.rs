//! The cron loop around [`run_once`]: sleep until `cleanup_cron` next fires (UTC),
//! run, repeat, until shutdown.
//!
//! Time comes from a [`Clock`], so tests drive the schedule with a clock they set by
//! hand instead of waiting (tokio's paused time would not do: it auto-advances while
//! the run waits for the database, firing every timeout on the way).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::{run_once_with, RunHooks, RunOptions};
use crate::config::RetentionSettings;
use crate::telemetry::retention as telemetry;

/// The scheduler's source of time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> impl Future<Output = ()> + Send;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single sleep of [`SystemClock`]: the wall clock is re-read at least this
/// often, so a clock step (NTP, a suspended VM) delays a run by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        loop {
            let left = deadline - Utc::now();
            // `to_std` fails for a negative delta: the deadline has passed.
            let Ok(left) = left.to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(MAX_SLEEP)).await;
        }
    }
}

/// Runs `audit.retention.cleanup` on `settings.cleanup_cron` until `shutdown` is
/// cancelled. A failing run is logged and counted (by [`run_once`](super::run_once))
/// and the scheduler waits for the next fire time; it never stops on its own, and it
/// has no say in readiness. On shutdown a run in progress finishes its current batch
/// and stops.
pub async fn run_scheduler(pool: Pool, settings: RetentionSettings, shutdown: CancellationToken) {
    run_scheduler_with_clock(pool, settings, shutdown, SystemClock).await;
}

/// [`run_scheduler`] with an injected clock.
pub async fn run_scheduler_with_clock<C: Clock>(
    pool: Pool,
    settings: RetentionSettings,
    shutdown: CancellationToken,
    clock: C,
) {
    telemetry::init();
    let cron = settings.cleanup_cron.source.clone();
    loop {
        let Some(next) = settings.cleanup_cron.next_after(clock.now()) else {
            telemetry::schedule_exhausted(&cron);
            shutdown.cancelled().await;
            return;
        };
        telemetry::scheduled(next, &cron);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = clock.sleep_until(next) => {}
        }
        let now = clock.now();
        // Each run on a task of its own: even a panic in it is contained, counted and
        // logged, and the schedule goes on.
        let run = tokio::spawn({
            let pool = pool.clone();
            let settings = settings.clone();
            let stop = shutdown.clone();
            async move {
                let hooks = RunHooks {
                    stop: Some(&stop),
                    progress: None,
                };
                // Errors are logged and counted inside; nothing more to do here.
                let _ = run_once_with(&pool, &settings, RunOptions::default(), now, hooks).await;
            }
        });
        if let Err(err) = run.await {
            telemetry::run_crashed(&err.to_string());
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}
