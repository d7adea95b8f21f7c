//! The retention scheduler: cron fire times, runs at those times (with that time as
//! the run's "now"), failures that do not stop it, shutdown. Time is a clock the test
//! sets by hand; nothing sleeps.

mod common;
mod retention_support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{server_url, with_database, TestDb};
use compartment_auditd::config::{CronSchedule, RetentionSettings, Settings};
use compartment_auditd::db::admin::AuditRetention;
use compartment_auditd::retention::{run_scheduler_with_clock, Clock};
use deadpool_postgres::Pool;
use retention_support::{at, count, event, org};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A clock the test moves; every sleep the scheduler starts is reported.
#[derive(Clone)]
struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
    sleeps: mpsc::UnboundedSender<DateTime<Utc>>,
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> impl Future<Output = ()> + Send {
        let mut now = self.now.subscribe();
        // The test may be gone at the end; then nobody is waiting for the report.
        let _ = self.sleeps.send(deadline);
        async move {
            let _ = now.wait_for(|now| *now >= deadline).await;
        }
    }
}

/// A running scheduler on a manual clock.
struct Scheduler {
    now: Arc<watch::Sender<DateTime<Utc>>>,
    sleeps: mpsc::UnboundedReceiver<DateTime<Utc>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Scheduler {
    fn start(pool: Pool, settings: RetentionSettings, start: DateTime<Utc>) -> Scheduler {
        let (now, _) = watch::channel(start);
        let now = Arc::new(now);
        let (sleeps_tx, sleeps) = mpsc::unbounded_channel();
        let clock = ManualClock {
            now: now.clone(),
            sleeps: sleeps_tx,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_scheduler_with_clock(
            pool,
            settings,
            shutdown.clone(),
            clock,
        ));
        Scheduler {
            now,
            sleeps,
            shutdown,
            task,
        }
    }

    /// The deadline of the scheduler's next sleep. When it arrives, any run before it
    /// has finished (the scheduler runs one thing at a time).
    async fn next_sleep(&mut self) -> DateTime<Utc> {
        tokio::time::timeout(Duration::from_secs(30), self.sleeps.recv())
            .await
            .expect("the scheduler did not go to sleep within 30 s")
            .expect("the scheduler stopped")
    }

    /// Moves the clock.
    fn set_now(&self, now: DateTime<Utc>) {
        self.now.send_replace(now);
    }

    /// Cancels and waits for the scheduler to return.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the scheduler did not stop within 30 s")
            .expect("the scheduler task panicked");
    }
}

fn cron(expression: &str) -> CronSchedule {
    CronSchedule::parse(expression).unwrap_or_else(|err| panic!("{expression}: {err}"))
}

#[test]
fn next_fire_times_of_the_default_and_other_expressions() {
    let default = Settings::with_defaults("postgres://x@localhost/y")
        .retention
        .cleanup_cron;
    assert_eq!(default.source, "0 3 * * *");
    for (schedule, after, expected) in [
        (&default, "2026-05-12T02:59:59Z", "2026-05-12T03:00:00Z"),
        // Strictly after: a run at 03:00 schedules the next day's.
        (&default, "2026-05-12T03:00:00Z", "2026-05-13T03:00:00Z"),
        (&default, "2026-12-31T03:00:01Z", "2027-01-01T03:00:00Z"),
        (
            &cron("*/15 * * * *"),
            "2026-05-12T10:07:30Z",
            "2026-05-12T10:15:00Z",
        ),
        (
            &cron("*/15 * * * *"),
            "2026-05-12T10:45:00Z",
            "2026-05-12T11:00:00Z",
        ),
        // Mondays at 02:30; 2026-05-13 is a Wednesday.
        (
            &cron("30 2 * * 1"),
            "2026-05-13T12:00:00Z",
            "2026-05-18T02:30:00Z",
        ),
        // Weekdays at noon; 2026-05-15 is a Friday.
        (
            &cron("0 12 * * 1-5"),
            "2026-05-15T13:00:00Z",
            "2026-05-18T12:00:00Z",
        ),
        (
            &cron("0 0 1 * *"),
            "2026-02-15T08:00:00Z",
            "2026-03-01T00:00:00Z",
        ),
        (
            &cron("15 4 * 6 *"),
            "2026-07-01T00:00:00Z",
            "2027-06-01T04:15:00Z",
        ),
        // Leap day only.
        (
            &cron("0 0 29 2 *"),
            "2026-03-01T00:00:00Z",
            "2028-02-29T00:00:00Z",
        ),
    ] {
        assert_eq!(
            schedule.next_after(at(after)),
            Some(at(expected)),
            "{schedule} after {after}"
        );
    }
}

#[tokio::test]
async fn runs_at_each_fire_time_with_that_time_as_now() {
    let db = TestDb::new().await;
    let settings = db.settings().retention; // 90 days, "0 3 * * *"
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    let first_fire = at("2026-05-13T03:00:00Z");
    let second_fire = at("2026-05-14T03:00:00Z");
    let first_cutoff = first_fire - TimeDelta::days(90);
    let second_cutoff = second_fire - TimeDelta::days(90);
    // Expired only from the first run's point of view …
    event(&db, acme, first_cutoff - TimeDelta::seconds(1)).await;
    // … only from the second's …
    let b = event(&db, acme, second_cutoff - TimeDelta::seconds(1)).await;
    // … and from neither (exactly at the second cutoff is not older than it).
    let c = event(&db, acme, second_cutoff).await;

    let mut scheduler = Scheduler::start(db.pool().clone(), settings, at("2026-05-12T10:17:00Z"));
    assert_eq!(scheduler.next_sleep().await, first_fire);
    assert_eq!(
        count(&db, acme).await,
        3,
        "nothing runs before the fire time"
    );

    scheduler.set_now(first_fire);
    assert_eq!(scheduler.next_sleep().await, second_fire);
    assert_eq!(retention_support::remaining(&db, acme).await, [b, c]);

    scheduler.set_now(second_fire);
    assert_eq!(scheduler.next_sleep().await, at("2026-05-15T03:00:00Z"));
    assert_eq!(retention_support::remaining(&db, acme).await, [c]);

    scheduler.stop().await;
}

#[tokio::test]
async fn follows_another_expression_and_skips_fire_times_missed_while_running() {
    let db = TestDb::new().await;
    let mut settings = db.settings().retention;
    settings.cleanup_cron = cron("*/10 * * * *");
    let mut scheduler = Scheduler::start(db.pool().clone(), settings, at("2026-05-12T10:04:59Z"));
    assert_eq!(scheduler.next_sleep().await, at("2026-05-12T10:10:00Z"));
    // The clock jumps well past several fire times (a long run, a suspended host):
    // one run, then the next fire time after the current time, no burst of catch-ups.
    scheduler.set_now(at("2026-05-12T10:43:00Z"));
    assert_eq!(scheduler.next_sleep().await, at("2026-05-12T10:50:00Z"));
    scheduler.stop().await;
}

#[tokio::test]
async fn a_failing_run_does_not_stop_the_scheduler() {
    // A database that does not exist: every run fails to connect.
    let url = with_database(&server_url(), "auditd_test_does_not_exist");
    let settings = Settings::with_defaults(&url);
    let pool = compartment_auditd::db::pool(&settings.database)
        .await
        .expect("the pool does not connect yet");
    let mut scheduler = Scheduler::start(pool, settings.retention, at("2026-05-12T00:00:00Z"));
    for day in 12..15 {
        let fire = at(&format!("2026-05-{day}T03:00:00Z"));
        assert_eq!(scheduler.next_sleep().await, fire);
        scheduler.set_now(fire);
    }
    assert_eq!(scheduler.next_sleep().await, at("2026-05-15T03:00:00Z"));
    assert!(!scheduler.task.is_finished());
    // Three runs happened, and failed (no other test of this binary fails a run).
    assert_eq!(failed_runs(), 3.0);
    scheduler.stop().await;
}

#[tokio::test]
async fn shutdown_ends_a_sleeping_scheduler() {
    let db = TestDb::new().await;
    let mut scheduler = Scheduler::start(
        db.pool().clone(),
        db.settings().retention,
        at("2026-05-12T00:00:00Z"),
    );
    scheduler.next_sleep().await;
    scheduler.stop().await;
}

/// `compartment_audit_retention_runs_total{result="failure"}` of this process.
fn failed_runs() -> f64 {
    let text = compartment_auditd::telemetry::render();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("compartment_audit_retention_runs_total{result=\"failure\"} ")
        })
        .unwrap_or_else(|| panic!("no failure counter in:\n{text}"))
        .parse()
        .expect("a number")
}
