//! Retention metrics as `/metrics` renders them. One test in its own binary, so the
//! process-wide counters hold exactly what it did, under any test runner.

mod common;
mod retention_support;

use chrono::TimeDelta;
use common::{server_url, with_database, TestDb};
use compartment_auditd::config::Settings;
use compartment_auditd::db::admin::AuditRetention;
use compartment_auditd::db::retention::RETENTION_LOCK_KEY;
use compartment_auditd::retention::{run_once, RunOptions, RunOutcome};
use compartment_auditd::telemetry;
use retention_support::*;

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap_or_else(|err| panic!("{series}: {err}"))
}

#[tokio::test]
async fn runs_rows_durations_and_held_back_runs_are_counted() {
    telemetry::retention::init();
    let text = telemetry::render();
    for series in [
        "compartment_audit_retention_rows_deleted_total",
        "compartment_audit_retention_runs_total{result=\"success\"}",
        "compartment_audit_retention_runs_total{result=\"failure\"}",
        "compartment_audit_retention_runs_total{result=\"skipped\"}",
        "compartment_audit_retention_last_success_timestamp_seconds",
        "compartment_audit_retention_run_duration_seconds_count",
        "compartment_audit_retention_batch_duration_seconds_count",
        "compartment_audit_retention_held_back_total",
    ] {
        assert_eq!(sample(&text, series), 0.0, "{series} starts at zero");
    }

    let db = TestDb::new().await;
    let settings = settings(10, 100);
    let now = now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    let ids = events(
        &db,
        acme,
        25,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;
    // A second transaction the sink has not reached.
    events(
        &db,
        acme,
        4,
        now - TimeDelta::days(99),
        TimeDelta::minutes(1),
    )
    .await;
    publish_position(&db, "sink-a", &system_identifier(&db).await, ids[24]).await;

    // A dry run is logged, not counted.
    let dry = run_once(
        db.pool(),
        &settings,
        RunOptions {
            dry_run: true,
            org: None,
        },
        now,
    )
    .await
    .expect("dry run");
    assert_eq!(dry.rows_to_delete(), 25);

    let report = run_once(db.pool(), &settings, RunOptions::default(), now)
        .await
        .expect("run");
    assert_eq!((report.rows_deleted, report.batches), (25, 3));
    assert_eq!(report.held_back_rows(), 4);
    let text = telemetry::render();
    assert_eq!(
        sample(&text, "compartment_audit_retention_rows_deleted_total"),
        25.0
    );
    assert_eq!(
        sample(
            &text,
            "compartment_audit_retention_runs_total{result=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "compartment_audit_retention_held_back_total"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "compartment_audit_retention_run_duration_seconds_count"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "compartment_audit_retention_batch_duration_seconds_count"
        ),
        3.0
    );
    // The run's clock is the injected one: finished at now + its duration.
    let last_success = sample(
        &text,
        "compartment_audit_retention_last_success_timestamp_seconds",
    );
    let started = now.timestamp() as f64;
    assert!(
        (started..started + 60.0).contains(&last_success),
        "{last_success} vs {started}"
    );

    // Another runner holds the lock.
    let holder = db.connect().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&RETENTION_LOCK_KEY])
        .await
        .expect("hold the lock");
    let skipped = run_once(db.pool(), &settings, RunOptions::default(), now)
        .await
        .expect("skipped");
    assert_eq!(skipped.outcome, RunOutcome::Skipped);

    // The database is unreachable.
    let missing = Settings::with_defaults(&with_database(&server_url(), "auditd_test_missing"));
    let pool = compartment_auditd::db::pool(&missing.database)
        .await
        .expect("pool");
    run_once(&pool, &settings, RunOptions::default(), now)
        .await
        .expect_err("no database");

    let text = telemetry::render();
    for (result, runs) in [("success", 1.0), ("skipped", 1.0), ("failure", 1.0)] {
        assert_eq!(
            sample(
                &text,
                &format!("compartment_audit_retention_runs_total{{result=\"{result}\"}}")
            ),
            runs,
            "{result}"
        );
    }
    assert_eq!(
        sample(&text, "compartment_audit_retention_rows_deleted_total"),
        25.0
    );
    assert_eq!(
        sample(
            &text,
            "compartment_audit_retention_run_duration_seconds_count"
        ),
        2.0,
        "successful and failed runs are timed"
    );
    assert_eq!(
        sample(
            &text,
            "compartment_audit_retention_last_success_timestamp_seconds"
        ),
        last_success,
        "only a success moves it"
    );
}
