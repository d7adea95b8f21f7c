//! Audit rows the mirror cannot miss (issue 20, A1): whatever an `INSERT` names, a
//! row's `tx` is its inserting transaction, so no way of writing a row puts it below
//! the mirror's cursor — a statement naming `tx`, a data-only `pg_dump | psql` restore
//! into a mirrored database, a logical-replication subscriber. And written rows stay
//! as written: no `UPDATE`, no `TRUNCATE`, no `DELETE` but retention's.

mod common;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{read_sink_ids, wait_for_lines, writers, DaemonConfig, PrivatePostgres};

/// Inserts `n` events of `org` (plain `INSERT`, defaults for `id` and `tx`).
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

/// Waits for `n` lines; on timeout fails with what the sink holds and the log.
async fn expect_lines(sink: &std::path::Path, n: usize, daemon: &support::Daemon) {
    assert!(
        wait_for_lines(sink, n, Duration::from_secs(30)).await,
        "expected {n} lines, the sink holds {:?}; log: {}",
        read_sink_ids(sink),
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_naming_tx_is_still_mirrored() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    insert_n(db.url(), org, 2).await;
    expect_lines(&sink, 2, &daemon).await;

    // A new user's INSERT naming every column, `tx` included (as a copy of another
    // row would), in explicit and in COPY form.
    let client = db.connect().await;
    let row = client
        .query_one(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, tx) \
             VALUES ($1, 'organization.user.removed', 'user', 'usr_x', '5') \
             RETURNING tx::text, pg_current_xact_id()::text",
            &[&org],
        )
        .await
        .expect("the INSERT is accepted");
    let (tx, own): (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        tx, own,
        "tx is the inserting transaction, not the one named"
    );
    insert_n(db.url(), org, 1).await;
    expect_lines(&sink, 4, &daemon).await;
}

#[tokio::test]
async fn audit_rows_cannot_be_updated_truncated_or_deleted_outside_retention() {
    let db = common::TestDb::new().await;
    let org = db.insert_org("acme-dev").await;
    let old = chrono::Utc::now() - chrono::Duration::days(400);
    db.insert_generated_events(org, "organization.user.invited", 3, old)
        .await;
    let client = db.connect().await;
    for sql in [
        "UPDATE audit_events SET status = 'failed'",
        "UPDATE audit_events SET tx = '5' WHERE false",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        // The flag the retention function sets cannot be borrowed by a statement of
        // the same transaction after it.
        "BEGIN; SELECT count(*) FROM audit_retention_delete_batch(ARRAY[]::uuid[], \
         ARRAY[]::timestamptz[], ARRAY[]::timestamptz[], ARRAY[]::bigint[], 10, 10, 'x'); \
         DELETE FROM audit_events; COMMIT",
    ] {
        let err = client
            .batch_execute(sql)
            .await
            .expect_err(&format!("{sql:?} must be rejected"));
        let message = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("audit events cannot be changed"),
            "{sql:?}: {message}"
        );
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3, "nothing was changed");

    // Retention's own function still deletes (no sink position: no bound).
    let sysid: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let deleted: i64 = client
        .query_one(
            "SELECT coalesce(sum(rows_deleted), 0)::bigint FROM audit_retention_delete_batch(\
             ARRAY[$1]::uuid[], ARRAY[now() - interval '30 days'], ARRAY[NULL]::timestamptz[], \
             ARRAY[NULL]::bigint[], 10, 10, $2)",
            &[&org, &sysid],
        )
        .await
        .expect("retention deletes")
        .get(0);
    assert_eq!(deleted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_only_dump_restored_into_a_mirrored_database_is_mirrored() {
    // Rows written first, in another database of the same cluster: their tx are
    // below anything the mirror of the second database reaches later.
    let source = common::TestDb::new().await;
    writers::execute(
        source.url(),
        "ALTER TABLE audit_events ALTER COLUMN id RESTART WITH 1000000",
    )
    .await;
    let source_org = writers::create_org(source.url(), "from-backup").await;
    insert_n(source.url(), source_org, 5).await;

    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    // The organization the restored events belong to exists in the target.
    writers::execute(
        db.url(),
        &format!("INSERT INTO organizations (id, slug, name) VALUES ('{source_org}', 'from-backup', 'x')"),
    )
    .await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    insert_n(db.url(), org, 2).await;
    expect_lines(&sink, 2, &daemon).await;

    // pg_dump --data-only -t audit_events SOURCE | psql TARGET
    let mut dump = Command::new("pg_dump")
        .args(["--data-only", "-t", "audit_events"])
        .arg(source.url())
        .stdout(Stdio::piped())
        .spawn()
        .expect("pg_dump runs");
    let restore = Command::new("psql")
        .args(["-qX", "-v", "ON_ERROR_STOP=1"])
        .arg(db.url())
        .stdin(dump.stdout.take().expect("pg_dump's output"))
        .output()
        .expect("psql runs");
    assert!(
        dump.wait().expect("pg_dump ends").success(),
        "pg_dump failed"
    );
    assert!(
        restore.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    expect_lines(&sink, 7, &daemon).await;
    let ids = read_sink_ids(&sink);
    assert_eq!(
        ids.iter().filter(|id| **id >= 1_000_000).count(),
        5,
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_replication_subscriber_mirrors_the_replicated_rows() {
    let pg = PrivatePostgres::start_with(&["wal_level=logical"]);
    let publisher = pg.create_migrated_database("publisher");
    let subscriber = pg.create_migrated_database("subscriber");
    // Ids of the subscriber's own rows stay clear of the replicated ones.
    pg.psql(
        "subscriber",
        "ALTER TABLE audit_events ALTER COLUMN id RESTART WITH 1000000",
    );
    let org = writers::create_org(&publisher, "acme-dev").await;
    insert_n(&publisher, org, 3).await;
    // As README says: inserts only, and the slot made first (same cluster).
    pg.psql(
        "publisher",
        "CREATE PUBLICATION audit_pub FOR TABLE organizations, audit_events \
         WITH (publish = 'insert')",
    );
    pg.psql(
        "publisher",
        "SELECT pg_create_logical_replication_slot('audit_sub', 'pgoutput')",
    );
    pg.psql(
        "subscriber",
        &format!(
            "CREATE SUBSCRIPTION audit_sub CONNECTION 'host=127.0.0.1 port={} user=postgres \
             dbname=publisher' PUBLICATION audit_pub \
             WITH (create_slot = false, slot_name = 'audit_sub', enabled = false)",
            pg.port
        ),
    );

    // The subscriber's mirror first passes a row of its own: the replicated rows,
    // written by transactions of the publisher long before, come after it.
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let daemon = DaemonConfig::new(&subscriber, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    let local = writers::create_org(&subscriber, "local").await;
    insert_n(&subscriber, local, 1).await;
    expect_lines(&sink, 1, &daemon).await;

    // The initial copy, then streamed inserts.
    pg.psql("subscriber", "ALTER SUBSCRIPTION audit_sub ENABLE");
    expect_lines(&sink, 4, &daemon).await;
    insert_n(&publisher, org, 2).await;
    expect_lines(&sink, 6, &daemon).await;
}
