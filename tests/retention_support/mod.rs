//! Helpers shared by the retention tests: organizations with a given id and
//! retention, events at chosen times, sink positions, and a way to catch a run in
//! the middle of a batch.
// Every test binary compiles this module but uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use compartment_auditd::config::{RetentionSettings, Settings};
use compartment_auditd::db::admin::AuditRetention;
use uuid::Uuid;

use crate::common::TestDb;

/// A fixed "now" for runs, so cutoffs are exact.
pub fn now() -> DateTime<Utc> {
    at("2026-05-12T03:00:00Z")
}

/// Parses an RFC 3339 timestamp.
pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("bad timestamp {text}: {err}"))
        .with_timezone(&Utc)
}

/// Default retention settings with another batch size and cap.
pub fn settings(batch_size: u32, max_batches: u32) -> RetentionSettings {
    let mut settings = Settings::with_defaults("postgres://unused@localhost/x").retention;
    settings.cleanup_batch_size = batch_size;
    settings.cleanup_max_batches = max_batches;
    settings
}

/// Inserts an organization with this id, slug and retention (plain SQL, no audit
/// event, so event counts stay what the test inserted).
pub async fn org(db: &TestDb, id: u128, slug: &str, retention: AuditRetention) -> Uuid {
    let id = Uuid::from_u128(id);
    let (mode, days) = retention.to_columns();
    db.client()
        .await
        .execute(
            "INSERT INTO organizations (id, slug, name, audit_retention_mode, audit_retention_days)
             VALUES ($1, $2, $2, $3, $4)",
            &[&id, &slug, &mode, &days],
        )
        .await
        .unwrap_or_else(|err| panic!("cannot insert organization {slug}: {err}"));
    id
}

/// Inserts `count` events of `organization_id` in one statement, the n-th (from 1)
/// at `first + (n - 1) * step`; returns their ids in time order.
pub async fn events(
    db: &TestDb,
    organization_id: Uuid,
    count: i64,
    first: DateTime<Utc>,
    step: TimeDelta,
) -> Vec<i64> {
    let step_us = step.num_microseconds().expect("small step");
    db.client()
        .await
        .query(
            "INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type, actor_id)
             SELECT $1, $2::timestamptz + (n - 1) * ($4::bigint * interval '1 microsecond'), 'organization.user.invited', 'user', 'usr_test'
             FROM generate_series(1, $3::bigint) AS n
             ORDER BY n
             RETURNING id",
            &[&organization_id, &first, &count, &step_us],
        )
        .await
        .unwrap_or_else(|err| panic!("cannot insert {count} events: {err:?}"))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Organizations `org-1` … `org-N` (ids 1 … N, retention `inherit`), each with
/// `each` events from `first` on, one a minute, each organization's in a transaction
/// of its own. Returns the organizations and their event ids, in that order.
pub async fn organizations_with_events(
    db: &TestDb,
    organizations: u128,
    each: i64,
    first: DateTime<Utc>,
) -> Vec<(Uuid, Vec<i64>)> {
    let mut made = Vec::new();
    for n in 1..=organizations {
        let id = org(db, n, &format!("org-{n}"), AuditRetention::Inherit).await;
        let ids = events(db, id, each, first, TimeDelta::minutes(1)).await;
        made.push((id, ids));
    }
    made
}

/// Inserts one event at `occurred_at` in a transaction of its own; returns its id.
pub async fn event(db: &TestDb, organization_id: Uuid, occurred_at: DateTime<Utc>) -> i64 {
    events(db, organization_id, 1, occurred_at, TimeDelta::zero()).await[0]
}

/// Ids of the events of `organization_id` still present, in id order.
pub async fn remaining(db: &TestDb, organization_id: Uuid) -> Vec<i64> {
    db.client()
        .await
        .query(
            "SELECT id FROM audit_events WHERE organization_id = $1 ORDER BY id",
            &[&organization_id],
        )
        .await
        .expect("select remaining events")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Number of events of `organization_id` still present.
pub async fn count(db: &TestDb, organization_id: Uuid) -> usize {
    remaining(db, organization_id).await.len()
}

/// The cluster's system identifier.
pub async fn system_identifier(db: &TestDb) -> String {
    db.client()
        .await
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .expect("pg_control_system")
        .get(0)
}

/// Publishes (or moves) a sink position at event `event_id` (its own `tx`), as the
/// mirror would, recorded against `system_identifier`.
pub async fn publish_position(db: &TestDb, sink_id: &str, system_identifier: &str, event_id: i64) {
    db.client()
        .await
        .execute(
            "INSERT INTO audit_sink_positions (sink_id, system_identifier, tx, event_id)
             SELECT $1, $2, tx, id FROM audit_events WHERE id = $3
             ON CONFLICT (sink_id) DO UPDATE
                 SET system_identifier = excluded.system_identifier,
                     tx = excluded.tx, event_id = excluded.event_id, updated_at = now()",
            &[&sink_id, &system_identifier, &event_id],
        )
        .await
        .unwrap_or_else(|err| panic!("cannot publish position of {sink_id}: {err}"));
}

/// Publishes a position that is not an existing event's (another cluster's, say).
pub async fn publish_raw_position(
    db: &TestDb,
    sink_id: &str,
    system_identifier: &str,
    tx: u64,
    event_id: i64,
) {
    db.client()
        .await
        .execute(
            "INSERT INTO audit_sink_positions (sink_id, system_identifier, tx, event_id)
             VALUES ($1, $2, $3::text::xid8, $4)",
            &[&sink_id, &system_identifier, &tx.to_string(), &event_id],
        )
        .await
        .unwrap_or_else(|err| panic!("cannot publish position of {sink_id}: {err}"));
}

/// The recorded rotation point of the job.
pub async fn resume_point(db: &TestDb) -> Option<Uuid> {
    db.client()
        .await
        .query_opt(
            "SELECT resume_organization_id FROM audit_retention_state WHERE job = 'audit.retention.cleanup'",
            &[],
        )
        .await
        .expect("read audit_retention_state")
        .and_then(|row| row.get(0))
}

/// Advisory locks held in this database (by anyone).
pub async fn advisory_locks(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory'
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .expect("read pg_locks")
        .get(0)
}

/// Polls `condition` every 20 ms until it holds; panics after 30 s. A bound on a hang,
/// not a timing assumption: callers wait for a state they caused.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a retention batch in this database is waiting for a row lock: a
/// connection of compartment-auditd (the library's pool and the binary set this
/// `application_name`; the tests' own connections do not) waiting on a lock. The
/// statement text is not matched: `pg_stat_activity` cuts it at 1 kB.
pub async fn delete_is_waiting(db: &TestDb) -> bool {
    let waiting: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database()
               AND application_name = 'compartment-auditd'
               AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("read pg_stat_activity")
        .get(0);
    waiting > 0
}

/// A row lock on one event, held until [`RowLock::release`]: a retention batch that
/// reaches this row waits for it, mid-transaction, which lets a test act while a run
/// is provably in the middle of a batch.
pub struct RowLock {
    client: tokio_postgres::Client,
}

impl RowLock {
    /// Locks event `event_id` (`FOR UPDATE`) in an open transaction.
    pub async fn take(db: &TestDb, event_id: i64) -> RowLock {
        let client = db.connect().await;
        client
            .batch_execute("BEGIN")
            .await
            .expect("begin the row-lock transaction");
        let locked = client
            .execute(
                "SELECT 1 FROM audit_events WHERE id = $1 FOR UPDATE",
                &[&event_id],
            )
            .await
            .expect("lock the row");
        assert_eq!(locked, 1, "event {event_id} exists");
        RowLock { client }
    }

    /// Ends the transaction; the waiting batch continues.
    pub async fn release(self) {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .expect("release the row lock");
    }
}
