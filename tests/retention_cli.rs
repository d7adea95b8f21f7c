//! `compartment-auditd retention run [--dry-run] [--org SLUG]`, through the real binary.

mod common;
mod retention_support;

use std::process::{ExitStatus, Stdio};

use chrono::{TimeDelta, Utc};
use common::{cli_command, TestDb};
use compartment_auditd::db::admin::AuditRetention;
use retention_support::{count, events, org, wait_until, RowLock};

/// Runs the binary against `db` with extra environment variables.
async fn cli(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = cli_command(db.url());
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || {
        let output = command.output().expect("run compartment-auditd");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("CLI runner thread")
}

#[tokio::test]
async fn retention_run_prints_a_table_per_organization_and_the_totals() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let beta = org(&db, 1, "beta", AuditRetention::Days(7)).await;
    let alpha = org(&db, 2, "alpha", AuditRetention::Inherit).await;
    let keep = org(&db, 3, "keep", AuditRetention::Indefinite).await;
    events(
        &db,
        alpha,
        4,
        now - TimeDelta::days(100),
        TimeDelta::hours(1),
    )
    .await;
    events(
        &db,
        alpha,
        2,
        now - TimeDelta::days(10),
        TimeDelta::hours(1),
    )
    .await;
    events(&db, beta, 3, now - TimeDelta::days(10), TimeDelta::hours(1)).await;
    events(
        &db,
        keep,
        5,
        now - TimeDelta::days(1000),
        TimeDelta::hours(1),
    )
    .await;

    let (status, stdout, stderr) = cli(&db, &[], &["retention", "run", "--dry-run"]).await;
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("ORGANIZATION  RETENTION          CUTOFF (UTC)          WOULD DELETE  HELD BACK  STATUS"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("alpha         90 days (inherit)  "),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("           4          0  pending"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("beta          7 days             "),
        "{stdout}"
    );
    assert!(
        lines[2].ends_with("           3          0  pending"),
        "{stdout}"
    );
    assert_eq!(
        lines[3],
        "keep          indefinite         -                                -          -  skipped (indefinite)"
    );
    assert!(
        stdout.contains("Dry run, nothing deleted: 7 rows would be deleted from 2 organizations (1 skipped: indefinite).\n"),
        "{stdout}"
    );
    assert_eq!(
        [
            count(&db, alpha).await,
            count(&db, beta).await,
            count(&db, keep).await
        ],
        [6, 3, 5]
    );

    let (status, stdout, stderr) = cli(&db, &[], &["retention", "run"]).await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("DELETED  HELD BACK  STATUS\n"), "{stdout}");
    assert!(
        stdout.contains(
            "Deleted 7 rows in 1 batch from 2 organizations processed (1 skipped: indefinite) in "
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("batch cap"), "{stdout}");
    assert_eq!(
        [
            count(&db, alpha).await,
            count(&db, beta).await,
            count(&db, keep).await
        ],
        [2, 0, 5]
    );
    // The run's log line goes to stderr, never stdout.
    assert!(stderr.contains("Retention cleanup finished"), "{stderr}");
    assert!(stderr.contains("rows_deleted=7"), "{stderr}");
}

#[tokio::test]
async fn retention_run_honours_the_batch_settings_and_org_filter() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    let other = org(&db, 2, "other", AuditRetention::Inherit).await;
    events(
        &db,
        acme,
        10,
        now - TimeDelta::days(100),
        TimeDelta::hours(1),
    )
    .await;
    events(
        &db,
        other,
        10,
        now - TimeDelta::days(100),
        TimeDelta::hours(1),
    )
    .await;
    let env = [
        ("COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE", "3"),
        ("COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES", "2"),
    ];

    let (status, stdout, stderr) = cli(&db, &env, &["retention", "run", "--org", "acme"]).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "Deleted 6 rows in 2 batches from 1 organization processed (0 skipped: indefinite)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("Stopped at the batch cap (2 batches × 3 rows): 1 organization still has expired rows; the next run continues with them.\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("other"), "{stdout}");
    assert_eq!([count(&db, acme).await, count(&db, other).await], [4, 10]);

    let (status, stdout, stderr) = cli(&db, &env, &["retention", "run", "--dry-run"]).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "One run deletes at most 6 rows (2 batches × 3 rows); about 3 runs are needed.\n"
        ),
        "{stdout}"
    );

    let (status, stdout, stderr) = cli(&db, &env, &["retention", "run", "--org", "nope"]).await;
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"nope\" does not exist\n"
    );
    let (status, _, stderr) = cli(&db, &env, &["retention", "run", "--org", "Not A Slug"]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("invalid organization slug \"Not A Slug\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_invalid_cron_expression_is_rejected_at_start_with_exit_78() {
    let db = TestDb::new().await;
    for bad in [
        "0 3 * *",
        "61 * * * *",
        "0 0 3 * * *",
        "@daily",
        "0 0 31 2 *",
    ] {
        let (status, stdout, stderr) = cli(
            &db,
            &[("COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON", bad)],
            &["retention", "run"],
        )
        .await;
        assert_eq!(status.code(), Some(78), "{bad}: {stderr}");
        assert!(stdout.is_empty(), "{bad}: {stdout}");
        assert!(
            stderr.contains("COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON"),
            "{bad}: {stderr}"
        );
    }
}

#[tokio::test]
async fn two_processes_at_once_delete_each_row_once_and_one_skips() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    let ids = events(
        &db,
        acme,
        500,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;
    events(
        &db,
        acme,
        5,
        now - TimeDelta::days(1),
        TimeDelta::minutes(1),
    )
    .await;
    let env = [("COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE", "50")];

    // The first process is held inside its first batch, lock taken.
    let row_lock = RowLock::take(&db, ids[20]).await;
    let mut first = cli_command(db.url());
    first
        .args(["retention", "run"])
        .env(env[0].0, env[0].1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let first = first.spawn().expect("start the first process");
    wait_until("the first process waits inside a batch", || {
        retention_support::delete_is_waiting(&db)
    })
    .await;

    let (status, stdout, stderr) = cli(&db, &env, &["retention", "run"]).await;
    assert!(
        status.success(),
        "the second process does not fail: {stderr}"
    );
    assert_eq!(
        stdout,
        "Skipped: another runner holds the retention lock (the daemon or another replica is cleaning up right now). Nothing was deleted.\n"
    );
    assert!(stderr.contains("Retention cleanup skipped"), "{stderr}");

    row_lock.release().await;
    let output = tokio::task::spawn_blocking(move || first.wait_with_output())
        .await
        .expect("waiter thread")
        .expect("the first process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Deleted 500 rows in 10 batches"),
        "{stdout}"
    );
    assert_eq!(count(&db, acme).await, 5);
}
