//! Migrations (`compartment-auditd migrate` and `db::migrate`) and the reference
//! schema's behaviour: constraints, defaults, the admin-role trigger, the doorbell.

mod common;

use std::time::Duration;

use common::{NewEvent, TestDb, AUDIT_CHANNEL};
use compartment_auditd::db::migrate::{self, MigrateError, MIGRATIONS, MIGRATION_LOCK_KEY};
use tokio_postgres::error::SqlState;

type MigrationRow = (i64, String, Vec<u8>, chrono::DateTime<chrono::Utc>);

async fn schema_migrations(db: &TestDb) -> Vec<MigrationRow> {
    db.client()
        .await
        .query(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("schema_migrations is readable")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

/// Holds the migration lock on a dedicated connection until `release` is called.
async fn hold_migration_lock(db: &TestDb) -> tokio_postgres::Client {
    let blocker = db.connect().await;
    blocker.batch_execute("BEGIN").await.expect("begin");
    blocker
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .expect("lock");
    blocker
}

/// Waits until `n` sessions wait for an advisory lock in this database: both
/// migrators are then really contending, whatever the scheduling.
async fn wait_for_lock_waiters(db: &TestDb, n: i64) {
    let client = db.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .expect("pg_locks is readable")
            .get(0);
        if waiting >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {waiting} of {n} migrators reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn test_urls_get_the_database_name_replaced() {
    assert_eq!(
        common::with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        common::with_database("postgresql://u:p@h/db?sslmode=disable", "t1"),
        "postgresql://u:p@h/t1?sslmode=disable"
    );
    assert_eq!(
        common::with_database("postgres://h:1", "t1"),
        "postgres://h:1/t1"
    );
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let db = TestDb::empty().await;

    let (status, stdout, stderr) = db.cli(&["migrate"]).await;
    assert!(status.success(), "{stdout}{stderr}");
    for migration in MIGRATIONS {
        assert!(
            stdout.contains(&format!(
                "Applied migration {} ({}).",
                migration.version, migration.name
            )),
            "{stdout}"
        );
    }
    let first = schema_migrations(&db).await;
    assert_eq!(first.len(), MIGRATIONS.len());
    for ((version, name, checksum, _), migration) in first.iter().zip(MIGRATIONS) {
        assert_eq!(*version, migration.version);
        assert_eq!(name, migration.name);
        assert_eq!(*checksum, migration.checksum());
    }

    let (status, stdout, stderr) = db.cli(&["migrate"]).await;
    assert!(status.success(), "{stdout}{stderr}");
    let last = MIGRATIONS.last().expect("at least one migration").version;
    assert_eq!(stdout, format!("Schema is up to date (version {last}).\n"));
    assert_eq!(stderr, "");
    // Same rows, same applied_at: nothing was re-applied or re-recorded.
    assert_eq!(schema_migrations(&db).await, first);
}

#[tokio::test]
async fn concurrent_migrate_processes_both_succeed() {
    let db = TestDb::empty().await;
    let blocker = hold_migration_lock(&db).await;
    let first = common::cli_command(db.url())
        .arg("migrate")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the first migrate");
    let second = common::cli_command(db.url())
        .arg("migrate")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the second migrate");
    wait_for_lock_waiters(&db, 2).await;
    blocker.batch_execute("COMMIT").await.expect("release");

    let mut applied_lines = Vec::new();
    for child in [first, second] {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("waiter thread")
            .expect("migrate ran");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}{stderr}");
        applied_lines.extend(
            stdout
                .lines()
                .filter(|line| line.starts_with("Applied migration"))
                .map(str::to_owned),
        );
    }
    // Each migration applied exactly once, by one process or the other.
    applied_lines.sort();
    let mut expected: Vec<String> = MIGRATIONS
        .iter()
        .map(|m| format!("Applied migration {} ({}).", m.version, m.name))
        .collect();
    expected.sort();
    assert_eq!(applied_lines, expected);
    assert_eq!(schema_migrations(&db).await.len(), MIGRATIONS.len());
}

#[tokio::test]
async fn concurrent_migrate_tasks_both_succeed() {
    let db = TestDb::empty().await;
    let blocker = hold_migration_lock(&db).await;
    let first = tokio::spawn({
        let pool = db.pool().clone();
        async move { migrate::run(&pool).await }
    });
    let second = tokio::spawn({
        let pool = db.pool().clone();
        async move { migrate::run(&pool).await }
    });
    wait_for_lock_waiters(&db, 2).await;
    blocker.batch_execute("COMMIT").await.expect("release");

    let first = first.await.expect("task ran").expect("first migrate");
    let second = second.await.expect("task ran").expect("second migrate");
    assert_eq!(
        first.applied.len() + second.applied.len(),
        MIGRATIONS.len(),
        "{first:?} {second:?}"
    );
    let last = MIGRATIONS.last().map(|m| m.version);
    assert_eq!(first.current_version, last);
    assert_eq!(second.current_version, last);
    assert_eq!(schema_migrations(&db).await.len(), MIGRATIONS.len());
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused() {
    let db = TestDb::new().await;
    db.client()
        .await
        .execute(
            "UPDATE schema_migrations SET checksum = '\\x00' WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");

    let err = migrate::run(db.pool()).await.expect_err("checksum differs");
    assert!(
        matches!(err, MigrateError::ChecksumMismatch { version: 1, .. }),
        "{err}"
    );

    let (status, stdout, stderr) = db.cli(&["migrate"]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "migration 1 (organizations_and_access) was applied with a different checksum"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_reported_but_not_fatal() {
    let db = TestDb::new().await;
    db.client()
        .await
        .execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', '\\x00')",
            &[],
        )
        .await
        .expect("insert");

    let report = migrate::run(db.pool()).await.expect("known ones match");
    assert!(report.applied.is_empty());
    assert_eq!(report.unknown_versions, vec![9999]);

    let (status, _, stderr) = db.cli(&["migrate"]).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("does not know (9999)"), "{stderr}");
}

#[tokio::test]
async fn a_failing_migration_keeps_the_earlier_ones_and_nothing_of_itself() {
    let db = TestDb::empty().await;
    // Makes migration 2 fail halfway: its first statement creates audit_events.
    db.client()
        .await
        .batch_execute("CREATE TABLE audit_events (x int)")
        .await
        .expect("conflicting table");

    let err = migrate::run(db.pool())
        .await
        .expect_err("migration 2 fails");
    assert!(
        matches!(err, MigrateError::Failed { version: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    let versions: Vec<i64> = schema_migrations(&db).await.iter().map(|r| r.0).collect();
    assert_eq!(versions, vec![1]);
    let sink_table: Option<String> = db
        .client()
        .await
        .query_one("SELECT to_regclass('audit_sink_positions')::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(sink_table, None, "migration 2 was rolled back as a whole");
}

#[tokio::test]
async fn every_organization_gets_the_builtin_admin_role() {
    let db = TestDb::new().await;
    let org = db.insert_org("acme-dev").await;
    let rows = db
        .client()
        .await
        .query(
            "SELECT name, builtin, permissions FROM roles WHERE organization_id = $1",
            &[&org],
        )
        .await
        .expect("roles");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "admin");
    assert!(rows[0].get::<_, bool>(1));
    assert_eq!(
        rows[0].get::<_, Vec<String>>(2),
        vec!["organization.audit.read".to_owned()]
    );
}

#[tokio::test]
async fn retention_settings_are_constrained() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let org: uuid::Uuid = client
        .query_one(
            "INSERT INTO organizations (slug, name) VALUES ('acme', 'Acme') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    let (mode, days): (String, Option<i32>) = client
        .query_one(
            "SELECT audit_retention_mode, audit_retention_days FROM organizations WHERE id = $1",
            &[&org],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .expect("select");
    assert_eq!((mode.as_str(), days), ("inherit", None));

    for (mode, days) in [("days", Some(365)), ("indefinite", None), ("inherit", None)] {
        client
            .execute(
                "UPDATE organizations SET audit_retention_mode = $2, audit_retention_days = $3 WHERE id = $1",
                &[&org, &mode, &days],
            )
            .await
            .unwrap_or_else(|err| panic!("{mode} {days:?}: {err}"));
    }
    for (mode, days) in [
        ("days", Some(0)),
        ("days", Some(-1)),
        ("days", None),
        ("inherit", Some(30)),
        ("indefinite", Some(30)),
        ("forever", None),
    ] {
        let err = client
            .execute(
                "UPDATE organizations SET audit_retention_mode = $2, audit_retention_days = $3 WHERE id = $1",
                &[&org, &mode, &days],
            )
            .await
            .expect_err(&format!("{mode} {days:?} must be rejected"));
        assert_eq!(
            err.code(),
            Some(&SqlState::CHECK_VIOLATION),
            "{mode} {days:?}"
        );
    }
}

#[tokio::test]
async fn audit_events_take_defaults_and_reject_bad_rows() {
    let db = TestDb::new().await;
    let org = db.insert_org("acme").await;
    let client = db.client().await;
    // The minimal INSERT of Compartment's API: defaults fill the rest.
    let row = client
        .query_one(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
             VALUES ($1, 'organization.user.invited', 'user', 'usr_1')
             RETURNING status, metadata, occurred_at <= now(), tx IS NOT NULL",
            &[&org],
        )
        .await
        .expect("insert with defaults");
    assert_eq!(row.get::<_, String>(0), "succeeded");
    assert_eq!(row.get::<_, serde_json::Value>(1), serde_json::json!({}));
    assert!(row.get::<_, bool>(2));
    assert!(row.get::<_, bool>(3));

    for status in ["failed", "denied"] {
        db.insert_event(&NewEvent::new(org, "organization.user.removed").status(status))
            .await;
    }
    let bad = [
        (
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, status)
             VALUES ($1, 'x.y', 'user', 'u', 'ok')",
            SqlState::CHECK_VIOLATION,
        ),
        (
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata)
             VALUES ($1, 'x.y', 'user', 'u', '[1]')",
            SqlState::CHECK_VIOLATION,
        ),
        (
            "INSERT INTO audit_events (id, organization_id, event_type, actor_type, actor_id)
             VALUES (42, $1, 'x.y', 'user', 'u')",
            SqlState::GENERATED_ALWAYS,
        ),
    ];
    for (sql, code) in bad {
        let err = client.execute(sql, &[&org]).await.expect_err(sql);
        assert_eq!(err.code(), Some(&code), "{sql}");
    }
    let err = client
        .execute(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
             VALUES (gen_random_uuid(), 'x.y', 'user', 'u')",
            &[],
        )
        .await
        .expect_err("unknown organization");
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION));
}

#[tokio::test]
async fn tx_is_the_inserting_transaction() {
    let db = TestDb::new().await;
    let org = db.insert_org("acme").await;
    let mut client = db.client().await;
    let tx = client.transaction().await.expect("begin");
    let ids: Vec<i64> = tx
        .query(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
             SELECT $1, 'organization.role.created', 'user', 'u' FROM generate_series(1, 3)
             RETURNING id",
            &[&org],
        )
        .await
        .expect("insert")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let current: String = tx
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .expect("xact id")
        .get(0);
    tx.commit().await.expect("commit");
    let later = db
        .insert_event(&NewEvent::new(org, "organization.role.deleted"))
        .await;

    let rows = client
        .query(
            "SELECT id, tx::text FROM audit_events WHERE id = ANY($1) OR id = $2 ORDER BY id",
            &[&ids, &later],
        )
        .await
        .expect("select");
    assert_eq!(rows.len(), 4);
    for row in &rows[..3] {
        assert_eq!(row.get::<_, String>(1), current);
    }
    let later_tx: u64 = rows[3].get::<_, String>(1).parse().expect("xid8 as text");
    assert!(later_tx > current.parse::<u64>().expect("xid8 as text"));
}

/// Sends the fence notification that `Listener::recv_until("fence")` stops at.
async fn fence(client: &tokio_postgres::Client) {
    client
        .execute("SELECT pg_notify($1, 'fence')", &[&AUDIT_CHANNEL])
        .await
        .expect("fence");
}

#[tokio::test]
async fn one_notification_per_insert_statement() {
    let db = TestDb::new().await;
    let org = db.insert_org("acme").await;
    // PostgreSQL folds identical notifications of one transaction, so a row-level
    // trigger would look the same from the listener: check the trigger's kind too.
    let (row_level, before, on_insert, on_update): (bool, bool, bool, bool) = db
        .client()
        .await
        .query_one(
            "SELECT tgtype & 1 <> 0, tgtype & 2 <> 0, tgtype & 4 <> 0, tgtype & 16 <> 0
             FROM pg_trigger WHERE tgname = 'audit_events_notify'",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .expect("the trigger exists");
    assert_eq!(
        (row_level, before, on_insert, on_update),
        (false, false, true, false),
        "AFTER INSERT FOR EACH STATEMENT"
    );

    let mut listener = db.listen(AUDIT_CHANNEL).await;
    let writer = db.connect().await;
    // One statement, three rows: one doorbell with an empty payload.
    writer
        .execute(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
             SELECT $1, 'organization.group.created', 'user', 'u' FROM generate_series(1, 3)",
            &[&org],
        )
        .await
        .expect("insert 3 rows");
    fence(&writer).await;
    let received = listener.recv_until("fence").await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].channel(), AUDIT_CHANNEL);
    assert_eq!(received[0].payload(), "");

    // Two statements in two transactions: two doorbells.
    for _ in 0..2 {
        writer
            .execute(
                "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
                 VALUES ($1, 'organization.group.deleted', 'user', 'u')",
                &[&org],
            )
            .await
            .expect("insert");
    }
    fence(&writer).await;
    assert_eq!(listener.recv_until("fence").await.len(), 2);

    // A rolled-back INSERT does not ring (and rows cannot be updated at all).
    writer.batch_execute("BEGIN").await.expect("begin");
    writer
        .execute(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
             VALUES ($1, 'organization.group.deleted', 'user', 'u')",
            &[&org],
        )
        .await
        .expect("insert");
    writer.batch_execute("ROLLBACK").await.expect("rollback");
    fence(&writer).await;
    assert_eq!(listener.recv_until("fence").await.len(), 0);
}
