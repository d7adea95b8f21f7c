//! `audit.retention.cleanup` against a real PostgreSQL: which rows go, batches and the
//! cap, fairness across runs, the single-runner lock, the sink bound, dry runs.

mod common;
mod retention_support;

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use compartment_auditd::config::RetentionSettings;
use compartment_auditd::db::admin::AuditRetention;
use compartment_auditd::db::retention::{MIN_TURN_ROWS, RETENTION_LOCK_KEY};
use compartment_auditd::retention::{
    run_once, run_once_with, OrganizationStatus, Progress, RetentionError, RunHooks, RunOptions,
    RunOutcome,
};
use retention_support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn real() -> RunOptions {
    RunOptions::default()
}

fn dry() -> RunOptions {
    RunOptions {
        dry_run: true,
        org: None,
    }
}

fn only(slug: &str) -> RunOptions {
    RunOptions {
        dry_run: false,
        org: Some(slug.parse().expect("valid slug")),
    }
}

#[tokio::test]
async fn deletes_exactly_the_expired_rows_of_each_organization() {
    let db = TestDb::new().await;
    let settings = settings(5000, 100); // install default: 90 days
    let now = now();
    let one_us = TimeDelta::microseconds(1);

    let mut expected_kept = BTreeMap::new();
    let mut expected_deleted = BTreeMap::new();
    for (n, slug, retention, days) in [
        (1, "inherits", AuditRetention::Inherit, 90),
        (2, "one-day", AuditRetention::Days(1), 1),
        (3, "one-year", AuditRetention::Days(365), 365),
    ] {
        let id = org(&db, n, slug, retention).await;
        let cutoff = now - TimeDelta::days(days);
        let deleted = vec![
            event(&db, id, cutoff - TimeDelta::days(400)).await,
            event(&db, id, cutoff - TimeDelta::days(1)).await,
            event(&db, id, cutoff - one_us).await,
        ];
        let kept = vec![
            event(&db, id, cutoff).await,
            event(&db, id, cutoff + one_us).await,
            event(&db, id, now - TimeDelta::minutes(1)).await,
        ];
        expected_deleted.insert(id, deleted);
        expected_kept.insert(id, kept);
    }
    let forever = org(&db, 4, "forever", AuditRetention::Indefinite).await;
    let mut forever_events = Vec::new();
    for age in [10_000, 400, 91, 2] {
        forever_events.push(event(&db, forever, now - TimeDelta::days(age)).await);
    }

    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run");

    for (id, kept) in &expected_kept {
        assert_eq!(&remaining(&db, *id).await, kept, "organization {id}");
    }
    assert_eq!(remaining(&db, forever).await, forever_events);
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.rows_deleted, 9);
    assert_eq!(report.batches, 1, "nine rows fit one batch");
    assert!(!report.stopped_at_cap);
    assert_eq!(report.organizations_processed(), 3);
    assert_eq!(report.organizations_skipped(), 1);
    for org in &report.organizations {
        if org.id == forever {
            assert_eq!(org.status, OrganizationStatus::Indefinite);
            assert_eq!((org.effective_days, org.cutoff), (None, None));
            assert_eq!(org.rows_deleted, 0);
        } else {
            let days = org.effective_days.expect("finite retention");
            assert_eq!(org.cutoff, Some(now - TimeDelta::days(days.into())));
            assert_eq!(org.status, OrganizationStatus::Clean);
            assert_eq!(org.rows_deleted, 3, "{}", org.slug);
        }
    }
    assert_eq!(
        report
            .organizations
            .iter()
            .map(|org| (org.slug.as_str(), org.effective_days))
            .collect::<Vec<_>>(),
        [
            ("inherits", Some(90)),
            ("one-day", Some(1)),
            ("one-year", Some(365)),
            ("forever", None)
        ],
        "reported in id order with the effective retention"
    );

    // Nothing left to do: the next run deletes nothing and uses no batch.
    let again = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("second run");
    assert_eq!((again.rows_deleted, again.batches), (0, 0));
}

#[tokio::test]
async fn the_batch_cap_holds_exactly_and_the_next_run_continues_oldest_first() {
    let db = TestDb::new().await;
    let settings = settings(7, 5); // at most 35 rows per run
    let now = now();
    let old = now - TimeDelta::days(200);
    let big = org(&db, 1, "big", AuditRetention::Inherit).await;
    let big_ids = events(&db, big, 100, old, TimeDelta::minutes(1)).await;
    let small = org(&db, 2, "small", AuditRetention::Inherit).await;
    let small_ids = events(&db, small, 20, old, TimeDelta::minutes(1)).await;
    let fresh = events(&db, big, 3, now - TimeDelta::days(1), TimeDelta::minutes(1)).await;

    let mut deleted_per_run = Vec::new();
    loop {
        let report = run_once(db.pool(), &settings, real(), now)
            .await
            .expect("run");
        assert!(report.batches <= 5);
        assert_eq!(
            report.stopped_at_cap,
            report.rows_deleted == 35 && report.organizations_pending() > 0
        );
        deleted_per_run.push(report.rows_deleted);
        // Each organization loses its oldest rows first.
        let big_left = remaining(&db, big).await;
        let big_expired_left = big_left.len() - fresh.len();
        assert_eq!(
            big_left[..big_expired_left],
            big_ids[100 - big_expired_left..]
        );
        let small_left = remaining(&db, small).await;
        assert_eq!(small_left[..], small_ids[20 - small_left.len()..]);
        if report.rows_deleted == 0 {
            assert_eq!(report.batches, 0);
            break;
        }
        assert!(deleted_per_run.len() < 10, "runs never finish");
    }
    assert_eq!(deleted_per_run, [35, 35, 35, 15, 0]);
    assert_eq!(remaining(&db, big).await, fresh);
    assert_eq!(count(&db, small).await, 0);
}

/// Runs retention until every organization of `all` but the first (the huge one) is
/// empty, `runs` runs having been made already; every one must be capped and spend
/// its whole budget, and there may be at most `max_runs` in all. Returns the runs made.
async fn run_until_the_small_ones_are_done(
    db: &TestDb,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
    all: &[Uuid],
    mut runs: usize,
    max_runs: usize,
) -> usize {
    let budget = u64::from(settings.cleanup_batch_size) * u64::from(settings.cleanup_max_batches);
    while organization_counts(db, all).await[1..]
        .iter()
        .any(|n| *n > 0)
    {
        let report = run_once(db.pool(), settings, real(), now)
            .await
            .expect("run");
        assert_eq!(
            report.rows_deleted, budget,
            "every capped run uses its whole budget"
        );
        runs += 1;
        assert!(
            runs <= max_runs,
            "small organizations still waiting after {runs} runs"
        );
    }
    runs
}

#[tokio::test]
async fn a_huge_organization_does_not_starve_the_others_across_runs() {
    let db = TestDb::new().await;
    // Three batches per run, six organizations with expired rows: a run cannot serve
    // them all, so only the recorded rotation lets the later ones have their turn.
    // One batch at a time, so the turns follow the rotation exactly (with several,
    // each batch in flight serves its own part of the queue: see the next test).
    let mut settings = settings(10, 3);
    settings.cleanup_concurrency = 1;
    let now = now();
    let old = now - TimeDelta::days(365);
    let huge = org(&db, 1, "huge", AuditRetention::Inherit).await;
    events(&db, huge, 1000, old, TimeDelta::seconds(1)).await;
    let mut small = Vec::new();
    for n in 2..=6 {
        let id = org(&db, n, &format!("small-{n}"), AuditRetention::Inherit).await;
        events(&db, id, 25, old, TimeDelta::seconds(1)).await;
        small.push(id);
    }
    let mut all = vec![huge];
    all.extend(&small);
    let counts = || organization_counts(&db, &all);

    let first = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 1");
    assert_eq!((first.rows_deleted, first.batches), (30, 3));
    assert!(first.stopped_at_cap);
    assert_eq!(counts().await, [990, 15, 15, 25, 25, 25]);
    assert_eq!(resume_point(&db).await, Some(small[2]), "small-4 is next");

    let second = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 2");
    assert_eq!(second.rows_deleted, 30);
    assert_eq!(
        counts().await,
        [990, 15, 15, 15, 15, 15],
        "the second run serves the organizations the first could not"
    );

    let runs = run_until_the_small_ones_are_done(&db, &settings, now, &all, 2, 6).await;
    // Every run spent its whole budget; what the small ones did not take went to
    // the huge one.
    let left = counts().await;
    assert_eq!(left, [1000 - (runs * 30 - 125), 0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn concurrent_batches_serve_every_organization_each_round_and_fill_the_cap() {
    let db = TestDb::new().await;
    // Ten organizations with expired rows and batches of 10 rows: a batch's first
    // turn fills it, so batches at once each take one organization. 40 batches a run:
    // the second session's count (ten index probes) is long done before the cap.
    let mut settings = settings(10, 40);
    settings.cleanup_concurrency = 2;
    let now = now();
    let old = now - TimeDelta::days(365);
    let huge = org(&db, 1, "huge", AuditRetention::Inherit).await;
    events(&db, huge, 5000, old, TimeDelta::seconds(1)).await;
    let mut all = vec![huge];
    for n in 2..=10 {
        let id = org(&db, n, &format!("small-{n}"), AuditRetention::Inherit).await;
        events(&db, id, 100, old, TimeDelta::seconds(1)).await;
        all.push(id);
    }
    let counts = || organization_counts(&db, &all);

    let first = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 1");
    assert_eq!((first.rows_deleted, first.batches), (400, 40));
    assert_eq!(first.sessions, 2, "batches ran on two sessions");
    assert!(first.stopped_at_cap);
    // Four rounds of the rotation: every organization had four turns of 10 rows.
    assert_eq!(counts().await, [4960, 60, 60, 60, 60, 60, 60, 60, 60, 60]);

    // Every capped run spends its whole budget, and the small organizations (ten
    // turns each) are done in the runs strict rotation needs: three.
    let runs = run_until_the_small_ones_are_done(&db, &settings, now, &all, 1, 3).await;
    let left = counts().await;
    assert_eq!(left[0], 5000 - (runs * 400 - 900));
    assert!(left[1..].iter().all(|n| *n == 0), "{left:?}");
}

#[tokio::test]
async fn batches_run_one_at_a_time_while_a_sink_holds_expired_rows_back() {
    // Batches at once rely on counts of each organization's expired rows; a row a
    // sink holds back is counted but may not go, so a batch could come out partly
    // full. With such a row the run does one batch at a time, and still fills its cap.
    let db = TestDb::new().await;
    // 40 batches a run: the count is long done before the cap.
    let mut settings = settings(10, 40);
    settings.cleanup_concurrency = 2;
    let now = now();
    let old = now - TimeDelta::days(365);
    let made = organizations_with_events(&db, 10, 100, old).await;
    let all: Vec<Uuid> = made.iter().map(|(id, _)| *id).collect();
    let last = *made[9].1.last().unwrap();
    // Imported late: expired, in a transaction after everything the sink wrote.
    let held = event(&db, all[0], old - TimeDelta::days(1)).await;
    let sysid = system_identifier(&db).await;
    publish_position(&db, "sink-a", &sysid, last).await;

    let first = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 1");
    assert_eq!((first.rows_deleted, first.batches), (400, 40));
    assert_eq!(first.sessions, 1, "one batch at a time");
    assert!(remaining(&db, all[0]).await.contains(&held));

    // The sink writes it: nothing is held back, batches run at once again.
    publish_position(&db, "sink-a", &sysid, held).await;
    let second = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 2");
    assert_eq!((second.rows_deleted, second.batches), (400, 40));
    assert_eq!(second.sessions, 2, "two batches at once");
}

#[tokio::test]
async fn a_run_for_one_organization_touches_only_it_and_keeps_the_rotation() {
    let db = TestDb::new().await;
    let settings = settings(10, 1);
    let now = now();
    let old = now - TimeDelta::days(365);
    let a = org(&db, 1, "a", AuditRetention::Inherit).await;
    let b = org(&db, 2, "b", AuditRetention::Inherit).await;
    let c = org(&db, 3, "c", AuditRetention::Indefinite).await;
    for id in [a, b, c] {
        events(&db, id, 30, old, TimeDelta::seconds(1)).await;
    }
    run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run");
    assert_eq!(resume_point(&db).await, Some(b));

    let report = run_once(db.pool(), &settings, only("a"), now)
        .await
        .expect("run for a");
    assert_eq!(report.organizations.len(), 1);
    assert_eq!(report.rows_deleted, 10);
    assert_eq!(
        [
            count(&db, a).await,
            count(&db, b).await,
            count(&db, c).await
        ],
        [10, 30, 30]
    );
    assert_eq!(resume_point(&db).await, Some(b), "rotation unchanged");

    let report = run_once(db.pool(), &settings, only("c"), now)
        .await
        .expect("run for c");
    assert_eq!(
        report.organizations[0].status,
        OrganizationStatus::Indefinite
    );
    assert_eq!(report.rows_deleted, 0);
    assert_eq!(count(&db, c).await, 30);

    let err = run_once(db.pool(), &settings, only("nope"), now)
        .await
        .expect_err("unknown organization");
    assert!(
        matches!(&err, RetentionError::UnknownOrganization { slug } if slug == "nope"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dry_run_deletes_nothing_and_reports_what_would_go() {
    let db = TestDb::new().await;
    let settings = settings(10, 2); // cap 20 rows: the dry run counts past it
    let now = now();
    let inherits = org(&db, 1, "inherits", AuditRetention::Inherit).await;
    let week = org(&db, 2, "week", AuditRetention::Days(7)).await;
    let forever = org(&db, 3, "forever", AuditRetention::Indefinite).await;
    events(
        &db,
        inherits,
        40,
        now - TimeDelta::days(100),
        TimeDelta::hours(1),
    )
    .await;
    events(
        &db,
        inherits,
        5,
        now - TimeDelta::days(10),
        TimeDelta::hours(1),
    )
    .await;
    let week_ids = events(
        &db,
        week,
        12,
        now - TimeDelta::days(10),
        TimeDelta::hours(1),
    )
    .await;
    events(
        &db,
        forever,
        8,
        now - TimeDelta::days(1000),
        TimeDelta::days(1),
    )
    .await;
    // A sink has written the week organization's first 9 events only.
    let sysid = system_identifier(&db).await;
    publish_position(&db, "sink-a", &sysid, week_ids[8]).await;
    // … and the inherit organization's events are all older than that position.
    // Another runner holds the lock: a dry run neither needs nor takes it.
    let holder = db.connect().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&RETENTION_LOCK_KEY])
        .await
        .expect("hold the lock");

    let report = run_once(db.pool(), &settings, dry(), now)
        .await
        .expect("dry run");

    assert!(report.dry_run);
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!((report.rows_deleted, report.batches), (0, 0));
    let by_slug = |slug: &str| {
        report
            .organizations
            .iter()
            .find(|org| org.slug == slug)
            .unwrap_or_else(|| panic!("{slug} reported"))
            .clone()
    };
    let inherits_report = by_slug("inherits");
    assert_eq!(inherits_report.effective_days, Some(90));
    assert_eq!(inherits_report.cutoff, Some(now - TimeDelta::days(90)));
    assert_eq!(inherits_report.rows_to_delete, Some(40));
    assert_eq!(inherits_report.rows_held_back, Some(0));
    assert_eq!(inherits_report.status, OrganizationStatus::Pending);
    let week_report = by_slug("week");
    assert_eq!(week_report.cutoff, Some(now - TimeDelta::days(7)));
    assert_eq!(week_report.rows_to_delete, Some(9));
    assert_eq!(
        week_report.rows_held_back,
        Some(3),
        "expired but not yet written"
    );
    let forever_report = by_slug("forever");
    assert_eq!(forever_report.status, OrganizationStatus::Indefinite);
    assert_eq!(forever_report.rows_to_delete, None);
    assert_eq!(report.rows_to_delete(), 49);
    assert_eq!(report.held_back_rows(), 3);
    assert_eq!(report.bounding_sink.as_deref(), Some("sink-a"));

    assert_eq!(
        [
            count(&db, inherits).await,
            count(&db, week).await,
            count(&db, forever).await
        ],
        [45, 12, 8],
        "nothing deleted"
    );
    assert_eq!(resume_point(&db).await, None, "nothing recorded");
}

#[tokio::test]
async fn rows_a_sink_has_not_written_survive_and_other_clusters_are_ignored() {
    let db = TestDb::new().await;
    let settings = settings(5000, 100);
    let now = now();
    let old = now - TimeDelta::days(200);
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    // One transaction per event, so each has its own tx.
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(event(&db, acme, old + TimeDelta::minutes(n)).await);
    }
    // Two more in one transaction (same tx, ids in order).
    let same_tx = events(
        &db,
        acme,
        2,
        old + TimeDelta::minutes(20),
        TimeDelta::minutes(1),
    )
    .await;
    let sysid = system_identifier(&db).await;
    // Positions of a cluster this database was restored from: (0, 0) would hold
    // everything back if it counted.
    publish_raw_position(&db, "restored", "7000000000000000001", 0, 0).await;
    // Two live sinks: every position must have passed a row before it goes.
    publish_position(&db, "sink-a", &sysid, ids[4]).await;
    publish_position(&db, "sink-b", &sysid, ids[2]).await;

    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 1");
    let mut expected: Vec<i64> = ids[3..].to_vec();
    expected.extend(&same_tx);
    assert_eq!(
        remaining(&db, acme).await,
        expected,
        "only rows before sink-b's position"
    );
    assert_eq!(report.rows_deleted, 3);
    assert_eq!(report.ignored_sinks, ["restored"]);
    assert_eq!(report.bounding_sink.as_deref(), Some("sink-b"));
    assert_eq!(report.held_back_rows(), 9);
    assert_eq!(report.organizations[0].rows_held_back, Some(9));
    assert_eq!(report.organizations[0].status, OrganizationStatus::Clean);

    // sink-b catches up past sink-a: now sink-a bounds deletion.
    publish_position(&db, "sink-b", &sysid, same_tx[1]).await;
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 2");
    let mut expected: Vec<i64> = ids[5..].to_vec();
    expected.extend(&same_tx);
    assert_eq!(remaining(&db, acme).await, expected);
    assert_eq!(report.bounding_sink.as_deref(), Some("sink-a"));

    // A position in the middle of a transaction's rows: (tx, id) order.
    publish_position(&db, "sink-a", &sysid, same_tx[0]).await;
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 3");
    assert_eq!(remaining(&db, acme).await, [same_tx[1]]);
    assert_eq!(report.held_back_rows(), 1);

    // With the stale position gone and no live sink left, nothing holds back.
    db.client()
        .await
        .execute("DELETE FROM audit_sink_positions", &[])
        .await
        .expect("remove positions");
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run 4");
    assert_eq!(remaining(&db, acme).await, Vec::<i64>::new());
    assert_eq!(report.bounding_sink, None);
    assert_eq!(report.held_back_rows(), 0);
    assert_eq!(report.organizations[0].rows_held_back, None);
}

#[tokio::test]
async fn a_run_is_skipped_while_another_runner_holds_the_lock_and_leaves_no_lock_behind() {
    let db = TestDb::new().await;
    let settings = settings(5000, 100);
    let now = now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    events(
        &db,
        acme,
        10,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;

    let holder = db.connect().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&RETENTION_LOCK_KEY])
        .await
        .expect("hold the lock");
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("skipped, not failed");
    assert_eq!(report.outcome, RunOutcome::Skipped);
    assert_eq!(report.rows_deleted, 0);
    assert_eq!(count(&db, acme).await, 10);
    assert_eq!(advisory_locks(&db).await, 1, "only the holder's");

    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK_KEY])
        .await
        .expect("release the lock");
    for _ in 0..3 {
        let report = run_once(db.pool(), &settings, real(), now)
            .await
            .expect("run");
        assert_eq!(report.outcome, RunOutcome::Completed);
        // The run's connection is closed with its lock; no pooled connection keeps it.
        assert_eq!(advisory_locks(&db).await, 0);
    }
    assert_eq!(count(&db, acme).await, 0);
}

#[tokio::test]
async fn two_runners_at_once_delete_each_row_once_and_one_skips() {
    let db = TestDb::new().await;
    let settings = settings(50, 100);
    let now = now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    let ids = events(
        &db,
        acme,
        500,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;
    let fresh = events(
        &db,
        acme,
        5,
        now - TimeDelta::days(1),
        TimeDelta::minutes(1),
    )
    .await;

    // Hold the first runner inside its first batch, with the lock taken.
    let row_lock = RowLock::take(&db, ids[10]).await;
    let first = tokio::spawn({
        let pool = db.pool().clone();
        let settings = settings.clone();
        async move { run_once(&pool, &settings, RunOptions::default(), now).await }
    });
    wait_until("the first runner waits inside a batch", || {
        delete_is_waiting(&db)
    })
    .await;

    let second = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("the second runner does not fail");
    assert_eq!(second.outcome, RunOutcome::Skipped);
    assert_eq!(second.rows_deleted, 0);

    row_lock.release().await;
    let first = first
        .await
        .expect("first runner task")
        .expect("first runner");
    assert_eq!(first.outcome, RunOutcome::Completed);
    assert_eq!(first.rows_deleted, 500, "every expired row, each once");
    assert_eq!(remaining(&db, acme).await, fresh);

    // Unforced: both at once, whichever way they interleave, no error and no row
    // deleted twice (the counts add up to exactly the expired rows).
    let more = events(
        &db,
        acme,
        300,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;
    let (a, b) = tokio::join!(
        run_once(db.pool(), &settings, real(), now),
        run_once(db.pool(), &settings, real(), now)
    );
    let (a, b) = (a.expect("runner a"), b.expect("runner b"));
    assert_eq!(a.rows_deleted + b.rows_deleted, more.len() as u64);
    assert_eq!(remaining(&db, acme).await, fresh);
}

#[tokio::test]
async fn inserts_are_not_blocked_by_a_batch_in_progress() {
    let db = TestDb::new().await;
    // Many small batches: the run is long, and we catch it inside one.
    let settings = settings(10, 1000);
    let now = now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    let other = org(&db, 2, "other", AuditRetention::Inherit).await;
    let ids = events(
        &db,
        acme,
        300,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;
    events(
        &db,
        other,
        300,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;

    let row_lock = RowLock::take(&db, ids[155]).await;
    let run = tokio::spawn({
        let pool = db.pool().clone();
        let settings = settings.clone();
        async move { run_once(&pool, &settings, RunOptions::default(), now).await }
    });
    wait_until("the run waits inside a batch", || delete_is_waiting(&db)).await;
    let deleted_so_far = 600 - (count(&db, acme).await + count(&db, other).await);
    assert!(deleted_so_far > 0, "earlier batches committed");

    // Writers of both organizations, fresh and backdated rows, on their own
    // connections, while the batch holds its row locks and its transaction open.
    let writer = db.connect().await;
    for (id, occurred_at) in [
        (acme, now),
        (other, now),
        (acme, now - TimeDelta::days(200)),
    ] {
        let inserted = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            writer.execute(
                "INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type, actor_id)
                 VALUES ($1, $2, 'organization.user.invited', 'user', 'usr_test')",
                &[&id, &occurred_at],
            ),
        )
        .await
        .expect("an insert waited on the retention batch")
        .expect("insert");
        assert_eq!(inserted, 1);
    }
    assert!(
        delete_is_waiting(&db).await,
        "the inserts completed while the batch was still in progress"
    );

    row_lock.release().await;
    let report = run.await.expect("run task").expect("run");
    assert!(report.batches > 1);
    assert_eq!(count(&db, other).await, 1, "only the fresh insert is left");
    assert!(count(&db, acme).await >= 1);
}

#[tokio::test]
async fn a_session_lost_mid_run_fails_the_run_and_loses_nothing() {
    let db = TestDb::new().await;
    // Small batches on two sessions; one of them is caught inside a batch and its
    // backend terminated.
    let mut settings = settings(10, 1000);
    settings.cleanup_concurrency = 2;
    let now = now();
    let old = now - TimeDelta::days(200);
    let made = organizations_with_events(&db, 10, 30, old).await;
    let all: Vec<Uuid> = made.iter().map(|(id, _)| *id).collect();
    let locked = made[5].1[15];
    let row_lock = RowLock::take(&db, locked).await;
    let run = tokio::spawn({
        let pool = db.pool().clone();
        let settings = settings.clone();
        async move { run_once(&pool, &settings, real(), now).await }
    });
    wait_until("a batch waits for the locked row", || {
        delete_is_waiting(&db)
    })
    .await;
    let terminated: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM (
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database()
                   AND application_name = 'compartment-auditd'
                   AND wait_event_type = 'Lock'
             ) AS t",
            &[],
        )
        .await
        .expect("terminate the waiting backend")
        .get(0);
    assert_eq!(terminated, 1);
    row_lock.release().await;
    let failed = run.await.expect("run task");
    assert!(
        failed.is_err(),
        "the run reports the lost session: {failed:?}"
    );

    // Nothing half done: the next run deletes the rest, each row once.
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("the next run");
    assert!(!report.stopped_at_cap);
    assert_eq!(organization_counts(&db, &all).await, [0; 10]);
    assert_eq!(advisory_locks(&db).await, 0, "no lock left behind");
}

#[tokio::test]
async fn a_stop_request_ends_the_run_between_batches() {
    let db = TestDb::new().await;
    let settings = settings(10, 100);
    let now = now();
    let acme = org(&db, 1, "acme", AuditRetention::Inherit).await;
    events(
        &db,
        acme,
        100,
        now - TimeDelta::days(100),
        TimeDelta::minutes(1),
    )
    .await;

    let stop = CancellationToken::new();
    let seen = Mutex::new(Vec::new());
    let progress = |progress: &Progress| {
        seen.lock().expect("not poisoned").push(*progress);
        if progress.batches == 2 {
            stop.cancel();
        }
    };
    let hooks = RunHooks {
        stop: Some(&stop),
        progress: Some(&progress),
    };
    let report = run_once_with(db.pool(), &settings, real(), now, hooks)
        .await
        .expect("run");
    assert!(report.interrupted);
    assert!(!report.stopped_at_cap);
    assert_eq!((report.batches, report.rows_deleted), (2, 20));
    assert_eq!(count(&db, acme).await, 80);
    let seen = seen.into_inner().expect("not poisoned");
    assert_eq!(
        seen.iter().map(|p| (p.batches, p.rows)).collect::<Vec<_>>(),
        [(1, 10), (2, 20)]
    );
    assert_eq!(report.organizations[0].status, OrganizationStatus::Pending);
    // Nothing left half-done: the next run simply continues.
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("next run");
    assert_eq!(report.rows_deleted, 80);
}

#[tokio::test]
async fn a_stop_request_lets_the_batches_in_flight_finish_and_starts_no_more() {
    let db = TestDb::new().await;
    let mut settings = settings(10, 100);
    settings.cleanup_concurrency = 2;
    let now = now();
    let made = organizations_with_events(&db, 10, 30, now - TimeDelta::days(100)).await;
    let all: Vec<Uuid> = made.iter().map(|(id, _)| *id).collect();
    let stop = CancellationToken::new();
    let progress = |progress: &Progress| {
        if progress.batches == 4 {
            stop.cancel();
        }
    };
    let hooks = RunHooks {
        stop: Some(&stop),
        progress: Some(&progress),
    };
    let report = run_once_with(db.pool(), &settings, real(), now, hooks)
        .await
        .expect("run");
    assert!(report.interrupted);
    assert!(!report.stopped_at_cap);
    // The batch in flight beside the fourth, if any, finished; none started after.
    assert!(
        (4..=5).contains(&report.batches),
        "{} batches",
        report.batches
    );
    assert_eq!(
        report.rows_deleted,
        u64::from(report.batches) * 10,
        "every batch full"
    );
    let left: usize = organization_counts(&db, &all).await.iter().sum();
    assert_eq!(left as u64, 300 - report.rows_deleted);
    let next = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("next run");
    assert_eq!(next.rows_deleted + report.rows_deleted, 300);
}

/// Events left per organization, in the order given.
async fn organization_counts(db: &TestDb, ids: &[Uuid]) -> Vec<usize> {
    let mut out = Vec::new();
    for id in ids {
        out.push(count(db, *id).await);
    }
    out
}

#[tokio::test]
async fn a_batch_gives_organizations_turns_then_fills_its_room() {
    let db = TestDb::new().await;
    let turn = MIN_TURN_ROWS as i64;
    // Room for a turn of each of two organizations and a bit more.
    let batch = 2 * turn + 100;
    let settings = settings(u32::try_from(batch).expect("small"), 1);
    let now = now();
    let old = now - TimeDelta::days(200);
    let few_a = org(&db, 1, "few-a", AuditRetention::Inherit).await;
    let few_b = org(&db, 2, "few-b", AuditRetention::Inherit).await;
    let many = org(&db, 3, "many", AuditRetention::Inherit).await;
    let later = org(&db, 4, "later", AuditRetention::Inherit).await;
    events(&db, few_a, 20, old, TimeDelta::seconds(1)).await;
    events(&db, few_b, 30, old, TimeDelta::seconds(1)).await;
    let many_ids = events(&db, many, 3 * turn, old, TimeDelta::seconds(1)).await;
    events(&db, later, 3 * turn, old, TimeDelta::seconds(1)).await;

    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run");

    // First pass, in order: few-a and few-b empty theirs (50 rows), many and later
    // take a whole turn each. Second pass: the 50 rows of room left go to the first
    // organization with more, many.
    assert_eq!(report.batches, 1);
    assert_eq!(report.rows_deleted, batch as u64, "the batch is full");
    assert_eq!(
        [
            count(&db, few_a).await,
            count(&db, few_b).await,
            count(&db, many).await,
            count(&db, later).await
        ],
        [
            0,
            0,
            (3 * turn - (turn + 50)) as usize,
            (3 * turn - turn) as usize
        ]
    );
    // Oldest first within the organization, across both passes.
    assert_eq!(remaining(&db, many).await, many_ids[(turn + 50) as usize..]);
    let status = |slug: &str| {
        report
            .organizations
            .iter()
            .find(|org| org.slug == slug)
            .map(|org| org.status)
    };
    assert_eq!(status("few-a"), Some(OrganizationStatus::Clean));
    assert_eq!(status("many"), Some(OrganizationStatus::Pending));

    // When every organization has had its turn and room is left, those with more
    // fill it: one organization with many rows and one almost empty.
    let db = TestDb::new().await;
    let big = org(&db, 1, "big", AuditRetention::Inherit).await;
    let small = org(&db, 2, "small", AuditRetention::Inherit).await;
    let big_ids = events(&db, big, 3 * batch, old, TimeDelta::seconds(1)).await;
    events(&db, small, 5, old, TimeDelta::seconds(1)).await;
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run");
    assert_eq!(
        report.rows_deleted, batch as u64,
        "filled by the second pass"
    );
    assert_eq!(count(&db, small).await, 0);
    assert_eq!(
        remaining(&db, big).await,
        big_ids[(batch - 5) as usize..],
        "the big organization's oldest rows, in order"
    );
}

#[tokio::test]
async fn every_organization_progresses_within_one_run_when_turns_are_small() {
    let db = TestDb::new().await;
    let turn = MIN_TURN_ROWS as i64;
    // Eight organizations, room for four turns per batch, two batches: each
    // organization gets exactly one turn in the run.
    let settings = settings(u32::try_from(4 * turn).expect("small"), 2);
    let now = now();
    let mut ids = Vec::new();
    for n in 1..=8 {
        let id = org(&db, n, &format!("org-{n}"), AuditRetention::Inherit).await;
        events(
            &db,
            id,
            3 * turn,
            now - TimeDelta::days(200),
            TimeDelta::seconds(1),
        )
        .await;
        ids.push(id);
    }
    let report = run_once(db.pool(), &settings, real(), now)
        .await
        .expect("run");
    assert_eq!((report.batches, report.rows_deleted), (2, 8 * turn as u64));
    assert_eq!(
        organization_counts(&db, &ids).await,
        vec![(2 * turn) as usize; 8]
    );
}
