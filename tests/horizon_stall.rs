//! A transaction held open elsewhere in the cluster (here a real prepared
//! transaction, which `pg_stat_activity` does not show) holds the mirror's horizon
//! back (issue 20, A5): the wait query, run every `mirror.horizon_poll_interval`,
//! must cost the same however many events wait; `/readyz` marks the `mirror` check
//! degraded after `mirror.horizon_stall_warning`; the log names `pg_prepared_xacts`.
//! Prepared transactions need `max_prepared_transactions > 0`: a private instance.

mod common;
mod support;

use std::time::Duration;

use compartment_auditd::config::Settings;
use compartment_auditd::db::{self, cursor};
use support::{read_sink_ids, wait_for, wait_for_lines, writers, DaemonConfig, PrivatePostgres};

/// Inserts `n` events of `org` in one committed statement.
async fn insert_n(url: &str, org: uuid::Uuid, n: i32) {
    writers::execute(
        url,
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             SELECT '{org}', 'organization.user.invited', 'user', 'usr_' || g \
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
}

/// Prepares (2PC) a transaction that took an xid: it keeps it, and so the horizon,
/// until `COMMIT PREPARED` or `ROLLBACK PREPARED`. (It cannot insert an audit event:
/// the doorbell's NOTIFY cannot be prepared.)
async fn prepare_held(url: &str, gid: &str) {
    writers::execute(
        url,
        &format!("BEGIN; SELECT pg_current_xact_id(); PREPARE TRANSACTION '{gid}'"),
    )
    .await;
}

/// Rows of `audit_events` the horizon-wait query reads (heap tuples fetched through an
/// index or read by a sequential scan), counted by the statistics of its own
/// transaction.
async fn rows_read_by_horizon_wait(client: &deadpool_postgres::Object) -> (u64, bool) {
    client.batch_execute("BEGIN").await.unwrap();
    let wait = cursor::horizon_wait(client, cursor::Position::BEGINNING)
        .await
        .expect("the wait query runs");
    let read: i64 = client
        .query_one(
            "SELECT (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::bigint \
             FROM pg_stat_xact_user_tables WHERE relname = 'audit_events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client.batch_execute("ROLLBACK").await.unwrap();
    (u64::try_from(read).unwrap(), wait.wait.is_some())
}

#[tokio::test]
async fn the_horizon_wait_reads_the_same_few_rows_however_long_the_backlog() {
    let pg = PrivatePostgres::start_with(&["max_prepared_transactions=5"]);
    let url = pg.create_migrated_database("audit");
    let org = writers::create_org(&url, "acme-dev").await;
    prepare_held(&url, "held").await;
    let pool = db::pool(&Settings::with_defaults(&url).database)
        .await
        .unwrap();
    let client = pool.get().await.unwrap();

    let mut reads = Vec::new();
    for backlog in [100, 5_000] {
        insert_n(&url, org, backlog).await;
        writers::execute(&url, "ANALYZE audit_events").await;
        let (read, waiting) = rows_read_by_horizon_wait(&client).await;
        assert!(waiting, "events wait behind the prepared transaction");
        reads.push((backlog, read));
    }
    assert!(
        reads.iter().all(|(_, read)| (1..=2).contains(read)),
        "the wait query must read a row or two, not the backlog: {reads:?} (backlog, rows read)"
    );
    pg.psql("audit", "ROLLBACK PREPARED 'held'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_transaction_holding_the_horizon_degrades_readiness_and_is_named() {
    let pg = PrivatePostgres::start_with(&["max_prepared_transactions=5"]);
    let url = pg.create_migrated_database("audit");
    let org = writers::create_org(&url, "acme-dev").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let daemon = DaemonConfig::new(&url, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_MIRROR_HORIZON_STALL_WARNING", "1s")
        .spawn();
    insert_n(&url, org, 1).await;
    assert!(
        wait_for_lines(&sink, 1, Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );

    prepare_held(&url, "held").await;
    insert_n(&url, org, 2).await;
    let mirror_check = |daemon: &support::Daemon| {
        let (status, body) = daemon.get("/readyz")?;
        let report: serde_json::Value = serde_json::from_str(&body).ok()?;
        let check = &report["checks"]["mirror"];
        Some((
            status,
            check["status"].as_str()?.to_string(),
            check["message"].as_str().unwrap_or_default().to_string(),
        ))
    };
    let degraded = wait_for(Duration::from_secs(30), async || {
        mirror_check(&daemon).filter(|(_, status, _)| status == "degraded")
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the mirror check never became degraded: {:?}; log: {}",
            mirror_check(&daemon),
            daemon.log_text()
        )
    });
    assert_eq!(degraded.0, 200, "degraded is still ready: {degraded:?}");
    assert!(
        degraded.2.contains("pg_prepared_xacts") && degraded.2.contains("pg_stat_activity"),
        "the check says where to look: {degraded:?}"
    );
    assert!(
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("pg_prepared_xacts")),
        "the log line names pg_prepared_xacts: {}",
        daemon.log_text()
    );
    assert_eq!(read_sink_ids(&sink).len(), 1, "nothing passes the horizon");

    pg.psql("audit", "COMMIT PREPARED 'held'");
    assert!(
        wait_for_lines(&sink, 3, Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    let ok = wait_for(Duration::from_secs(30), async || {
        mirror_check(&daemon).filter(|(_, status, _)| status == "ok")
    })
    .await;
    assert!(
        ok.is_some(),
        "the check recovers: {:?}",
        mirror_check(&daemon)
    );
}
