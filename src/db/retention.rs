//! The SQL of `audit.retention.cleanup`: organizations and their retention, the sink
//! positions that bound deletion, the advisory lock, the resume point, and the batch
//! `DELETE`. The job's logic (fairness, batching, reporting) lives in
//! [`crate::retention`]; nothing here decides what to delete, it only runs the query
//! it is given the parameters for.
//!
//! Deletion is bounded twice over:
//!
//! - by time, per organization: `occurred_at < cutoff`;
//! - by the file sinks: only rows at or before the lowest position published for
//!   this cluster (`(tx, id) <= (tx, event_id)`, the mirror's commit-order cursor)
//!   may go, so no sink ever misses an event that retention removed first. The bound
//!   is computed inside each statement ([`SINK_BOUND`]), so it and the rows come from
//!   one snapshot; with no position published nothing is held back.

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Statement};
use uuid::Uuid;

use super::admin::AuditRetention;
use super::DbError;

/// Name of the job, as recorded in `audit_retention_state`.
pub const CLEANUP_JOB: &str = "audit.retention.cleanup";

/// Advisory lock key that lets only one replica run the job at a time ("cad-rete" in
/// ASCII, next to the migration lock's "cad-migr"). Held as a session lock on a
/// connection that is taken out of the pool for the run and closed afterwards, so it
/// can never be left behind on a pooled connection.
pub const RETENTION_LOCK_KEY: i64 = 0x6361_642d_7265_7465;

/// An organization and its audit retention setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationRetention {
    /// Its id (the job visits organizations in id order).
    pub id: Uuid,
    /// Its slug, for reports and logs.
    pub slug: String,
    /// Its setting.
    pub retention: AuditRetention,
}

/// A position published by a file sink in `audit_sink_positions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkPosition {
    /// The sink's name (`file_sink.id`).
    pub sink_id: String,
    /// The cluster the position was recorded against.
    pub system_identifier: String,
    /// Transaction id (`xid8`) of the last event the sink wrote durably.
    pub tx: u64,
    /// Id of that event.
    pub event_id: i64,
    /// When the sink last published.
    pub updated_at: DateTime<Utc>,
}

impl SinkPosition {
    /// The deletion bound this position imposes.
    pub fn bound(&self) -> SinkBound {
        SinkBound {
            tx: self.tx,
            event_id: self.event_id,
        }
    }
}

/// A position as a deletion bound: rows with `(tx, id)` up to it may be deleted.
/// Ordered like the mirror's cursor, so the lowest of several is `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SinkBound {
    /// Transaction id (`xid8`).
    pub tx: u64,
    /// Event id within that transaction.
    pub event_id: i64,
}

/// Where, within one organization, the next batch continues: after the last row
/// deleted, in `(occurred_at, id)` order. Lets a long run skip the index entries of
/// rows it already deleted instead of walking them again every batch (they stay in
/// the index until vacuum, and are only cheap to skip once no snapshot can see them).
pub type Keyset = (DateTime<Utc>, i64);

/// What one batch `DELETE` of one organization did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Rows deleted.
    pub rows: u64,
    /// The last row deleted, in `(occurred_at, id)` order; `None` if none was.
    pub last: Option<Keyset>,
}

/// The deletion bound of the cluster whose `system_identifier` is parameter `$n`:
/// the lowest `(tx, event_id)` of its sinks, or the largest possible `(xid8, bigint)`
/// when none publishes. An uncorrelated subquery, so PostgreSQL evaluates it once per
/// statement (an InitPlan), in the statement's snapshot.
fn sink_bound(n: u8) -> String {
    format!(
        "(SELECT b.tx, b.event_id FROM (
             SELECT tx, event_id FROM audit_sink_positions WHERE system_identifier = ${n}::text
             UNION ALL
             SELECT '18446744073709551615'::xid8, 9223372036854775807::bigint
         ) AS b ORDER BY b.tx, b.event_id LIMIT 1)"
    )
}

/// Expired rows of one organization, as counted for a dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredCount {
    /// Rows older than the cutoff.
    pub expired: u64,
    /// Of those, rows that a sink has not written yet (newer than the bound).
    pub held_back: u64,
}

/// Every organization (or the one with `slug`) with its retention setting, in id order.
pub async fn organizations(
    client: &impl GenericClient,
    slug: Option<&str>,
) -> Result<Vec<OrganizationRetention>, DbError> {
    const COLUMNS: &str = "id, slug, audit_retention_mode, audit_retention_days";
    let rows = match slug {
        Some(slug) => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM organizations WHERE slug = $1"),
                    &[&slug],
                )
                .await?
        }
        None => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM organizations ORDER BY id"),
                    &[],
                )
                .await?
        }
    };
    rows.iter()
        .map(|row| {
            let slug: String = row.try_get(1)?;
            let mode: String = row.try_get(2)?;
            let days: Option<i32> = row.try_get(3)?;
            let retention = AuditRetention::from_columns(&mode, days).ok_or_else(|| {
                // Only reachable if the CHECK constraints were dropped: refuse to guess
                // a retention (and so what to delete).
                DbError::Data {
                    reason: format!(
                        "organization {slug:?} has an inconsistent audit retention ({mode:?}, {days:?})"
                    ),
                }
            })?;
            Ok(OrganizationRetention {
                id: row.try_get(0)?,
                slug,
                retention,
            })
        })
        .collect()
}

/// The connected cluster's `system_identifier` (what sinks record their positions
/// against).
pub async fn system_identifier(client: &impl GenericClient) -> Result<String, DbError> {
    let row = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Every published sink position, by sink id.
pub async fn sink_positions(client: &impl GenericClient) -> Result<Vec<SinkPosition>, DbError> {
    let rows = client
        .query(
            "SELECT sink_id, system_identifier, tx::text, event_id, updated_at
             FROM audit_sink_positions ORDER BY sink_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let sink_id: String = row.try_get(0)?;
            let tx: String = row.try_get(2)?;
            let tx = tx.parse().map_err(|_| DbError::Data {
                reason: format!("sink {sink_id:?} has a position with an invalid xid8 {tx:?}"),
            })?;
            Ok(SinkPosition {
                sink_id,
                system_identifier: row.try_get(1)?,
                tx,
                event_id: row.try_get(3)?,
                updated_at: row.try_get(4)?,
            })
        })
        .collect()
}

/// Tries to take the job's session-level advisory lock ([`RETENTION_LOCK_KEY`])
/// without waiting. Only call this on a connection that is not returned to a pool.
pub async fn try_lock(client: &impl GenericClient) -> Result<bool, DbError> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK_KEY])
        .await?;
    Ok(row.try_get(0)?)
}

/// Releases the lock taken by [`try_lock`] (closing the connection does too).
pub async fn unlock(client: &impl GenericClient) -> Result<(), DbError> {
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK_KEY])
        .await?;
    Ok(())
}

/// The organization the next run starts with, if a previous run recorded one.
pub async fn resume_point(client: &impl GenericClient) -> Result<Option<Uuid>, DbError> {
    let row = client
        .query_opt(
            "SELECT resume_organization_id FROM audit_retention_state WHERE job = $1",
            &[&CLEANUP_JOB],
        )
        .await?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => None,
    })
}

/// Records the organization the next run starts with.
pub async fn set_resume_point(
    client: &impl GenericClient,
    organization_id: Uuid,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO audit_retention_state (job, resume_organization_id, updated_at)
             VALUES ($1, $2, now())
             ON CONFLICT (job) DO UPDATE
                 SET resume_organization_id = excluded.resume_organization_id,
                     updated_at = excluded.updated_at",
            &[&CLEANUP_JOB, &organization_id],
        )
        .await?;
    Ok(())
}

/// Of the given `(organization, cutoff)` pairs, the organizations that have at least
/// one row older than their cutoff, in the order given. One index probe each, so a
/// run does not open a batch for each of thousands of organizations with nothing to
/// delete.
pub async fn organizations_with_expired_rows(
    client: &impl GenericClient,
    targets: &[(Uuid, DateTime<Utc>)],
) -> Result<Vec<Uuid>, DbError> {
    let ids: Vec<Uuid> = targets.iter().map(|(id, _)| *id).collect();
    let cutoffs: Vec<DateTime<Utc>> = targets.iter().map(|(_, cutoff)| *cutoff).collect();
    let rows = client
        .query(
            "SELECT t.id
             FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS t(id, cutoff, n)
             WHERE EXISTS (
                 SELECT 1 FROM audit_events e
                 WHERE e.organization_id = t.id AND e.occurred_at < t.cutoff
             )
             ORDER BY t.n",
            &[&ids, &cutoffs],
        )
        .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(DbError::from))
        .collect()
}

/// The batch `DELETE` of one organization: its oldest expired rows that every sink
/// has written, after the keyset, at most `limit` of them.
///
/// The rows are picked by the `(organization_id, occurred_at DESC, id DESC)` index,
/// read backwards (oldest first), and deleted by their physical address (`ctid`)
/// found in the same statement and snapshot: a TID scan, without a second index
/// lookup per row. That address cannot point at another row meanwhile (the
/// statement's snapshot keeps the tuple from being vacuumed), and if a concurrent
/// `UPDATE` moved the row, the re-check of the new version fails and the row is
/// simply left for the next run.
fn delete_batch_sql() -> String {
    format!(
        "WITH deleted AS (
             DELETE FROM audit_events
             WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM audit_events
                 WHERE organization_id = $1::uuid
                   AND occurred_at < $2::timestamptz
                   AND (occurred_at, id) > (COALESCE($3::timestamptz, '-infinity'), $4::bigint)
                   AND (tx, id) <= {bound}
                 ORDER BY occurred_at, id
                 LIMIT $6::bigint
             ))
             RETURNING occurred_at, id
         )
         SELECT count(*) OVER ()::bigint, occurred_at, id
         FROM deleted
         ORDER BY occurred_at DESC, id DESC
         LIMIT 1",
        bound = sink_bound(5)
    )
}

/// The prepared batch `DELETE` (see [`Deleter::delete`]), prepared once per run on
/// the run's connection.
#[derive(Debug, Clone)]
pub struct Deleter {
    statement: Statement,
}

impl Deleter {
    /// Prepares the statement on `client`; use it on that client (or its transactions).
    pub async fn prepare(client: &impl GenericClient) -> Result<Deleter, DbError> {
        Ok(Deleter {
            statement: client.prepare(&delete_batch_sql()).await?,
        })
    }

    /// Deletes up to `limit` of `organization_id`'s rows with `occurred_at < cutoff`,
    /// oldest first, after `after`, and not past the sinks of the cluster
    /// `system_identifier`.
    pub async fn delete(
        &self,
        client: &impl GenericClient,
        organization_id: Uuid,
        cutoff: DateTime<Utc>,
        after: Option<Keyset>,
        system_identifier: &str,
        limit: u64,
    ) -> Result<Deleted, DbError> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), id),
            None => (None, i64::MIN),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let row = client
            .query_opt(
                &self.statement,
                &[
                    &organization_id,
                    &cutoff,
                    &after_at,
                    &after_id,
                    &system_identifier,
                    &limit,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Deleted {
                rows: 0,
                last: None,
            });
        };
        let rows: i64 = row.try_get(0)?;
        Ok(Deleted {
            rows: u64::try_from(rows).unwrap_or_default(),
            last: Some((row.try_get(1)?, row.try_get(2)?)),
        })
    }
}

/// Counts `organization_id`'s rows older than `cutoff`, and of those the ones past the
/// bound of the cluster `system_identifier` (not yet written by a sink). A full count:
/// for dry runs.
pub async fn count_expired(
    client: &impl GenericClient,
    organization_id: Uuid,
    cutoff: DateTime<Utc>,
    system_identifier: &str,
) -> Result<ExpiredCount, DbError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*)::bigint, count(*) FILTER (WHERE (tx, id) > {bound})::bigint
                 FROM audit_events
                 WHERE organization_id = $1::uuid AND occurred_at < $2::timestamptz",
                bound = sink_bound(3)
            ),
            &[&organization_id, &cutoff, &system_identifier],
        )
        .await?;
    let expired: i64 = row.try_get(0)?;
    let held_back: i64 = row.try_get(1)?;
    Ok(ExpiredCount {
        expired: u64::try_from(expired).unwrap_or_default(),
        held_back: u64::try_from(held_back).unwrap_or_default(),
    })
}

/// Counts `organization_id`'s rows older than `cutoff` that are past the bound of the
/// cluster `system_identifier`: expired rows a sink has not written yet.
pub async fn count_held_back(
    client: &impl GenericClient,
    organization_id: Uuid,
    cutoff: DateTime<Utc>,
    system_identifier: &str,
) -> Result<u64, DbError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*)::bigint FROM audit_events
                 WHERE organization_id = $1::uuid AND occurred_at < $2::timestamptz
                   AND (tx, id) > {bound}",
                bound = sink_bound(3)
            ),
            &[&organization_id, &cutoff, &system_identifier],
        )
        .await?;
    let rows: i64 = row.try_get(0)?;
    Ok(u64::try_from(rows).unwrap_or_default())
}
