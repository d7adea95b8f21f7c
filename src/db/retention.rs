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
//!   is computed inside each statement (`sink_bound`), so it and the rows come from
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

/// One organization's share of a batch: what may be deleted from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTarget {
    /// The organization.
    pub organization_id: Uuid,
    /// Rows with `occurred_at` before this are expired.
    pub cutoff: DateTime<Utc>,
    /// Continue after this row (the last one deleted from it in this run).
    pub after: Option<Keyset>,
}

/// Rows deleted from one organization by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetDeleted {
    /// Index of the organization in the batch's targets.
    pub target: usize,
    /// Rows deleted.
    pub rows: u64,
    /// The last row deleted, in `(occurred_at, id)` order.
    pub last: Keyset,
    /// Whether it has more rows that may be deleted now.
    pub more: bool,
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDeleted {
    /// Per organization that lost rows, in target order.
    pub deleted: Vec<TargetDeleted>,
    /// Index of the last target looked at: the one that filled the batch, or the
    /// last one if the batch is not full. Those before it without an entry in
    /// `deleted` had nothing to delete; those after it were not reached.
    pub reached: usize,
}

impl BatchDeleted {
    /// Rows deleted over all targets.
    pub fn rows(&self) -> u64 {
        self.deleted.iter().map(|target| target.rows).sum()
    }
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

const SET_RESUME_POINT: &str = "
    INSERT INTO audit_retention_state (job, resume_organization_id, updated_at)
    VALUES ($1, $2, now())
    ON CONFLICT (job) DO UPDATE
        SET resume_organization_id = excluded.resume_organization_id,
            updated_at = excluded.updated_at";

/// Makes this session's commits asynchronous (`synchronous_commit = off`). Only for
/// a connection that is not returned to a pool, where the setting would outlive the
/// caller.
pub async fn use_asynchronous_commit(client: &impl GenericClient) -> Result<(), DbError> {
    client.batch_execute("SET synchronous_commit = off").await?;
    Ok(())
}

/// Of the given `(organization, cutoff)` pairs, the organizations that have at least
/// one row older than their cutoff, in the order given, each with how many it has, up
/// to `cap` (at least 1). One index probe each, reading at most `cap` index entries
/// (index-only where the table's pages are all-visible), so a run does not open a
/// batch for each of thousands of organizations with nothing to delete, and knows
/// how many rows each can at least give.
pub async fn organizations_with_expired_rows(
    client: &impl GenericClient,
    targets: &[(Uuid, DateTime<Utc>)],
    cap: u64,
) -> Result<Vec<(Uuid, u64)>, DbError> {
    let ids: Vec<Uuid> = targets.iter().map(|(id, _)| *id).collect();
    let cutoffs: Vec<DateTime<Utc>> = targets.iter().map(|(_, cutoff)| *cutoff).collect();
    let cap = i64::try_from(cap.max(1)).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT t.id, c.n
             FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS t(id, cutoff, o)
             CROSS JOIN LATERAL (
                 SELECT count(*) AS n FROM (
                     SELECT 1 FROM audit_events e
                     WHERE e.organization_id = t.id AND e.occurred_at < t.cutoff
                     LIMIT $3::bigint
                 ) AS expired
             ) AS c
             WHERE c.n > 0
             ORDER BY t.o",
            &[&ids, &cutoffs, &cap],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let n: i64 = row.try_get(1)?;
            Ok((row.try_get(0)?, u64::try_from(n).unwrap_or_default()))
        })
        .collect()
}

/// Whether any row older than `cutoff` lies past the bound of the cluster
/// `system_identifier`: an expired row a sink has not written yet. Reads the rows
/// past the bound in commit order (`audit_events_tx_id_idx`): as many as the sinks
/// lag behind, and none when no sink publishes.
pub async fn expired_rows_held_back(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
    system_identifier: &str,
) -> Result<bool, DbError> {
    // ORDER BY … LIMIT, not EXISTS: the planner cannot see the bound, and without the
    // order it reads the whole table instead of the index from the bound on.
    let row = client
        .query_opt(
            &format!(
                "SELECT 1 FROM audit_events
                 WHERE (tx, id) > {bound} AND occurred_at < $1::timestamptz
                 ORDER BY tx, id
                 LIMIT 1",
                bound = sink_bound(2)
            ),
            &[&cutoff, &system_identifier],
        )
        .await?;
    Ok(row.is_some())
}

/// Organizations passed to one batch at most: enough that a batch is full whenever
/// the organizations have the rows, bounded so the parameters stay small with very
/// many organizations.
pub const MAX_TARGETS_PER_BATCH: usize = 1000;

/// Fewest rows an organization's turn takes (when many organizations share a
/// batch): bounds the index descents per batch at `batch size / MIN_TURN_ROWS`.
pub const MIN_TURN_ROWS: u64 = 250;

/// One batch: `audit_retention_delete_batch` (migration 0003) gives the organizations,
/// in order, turns of their oldest expired rows that every sink has written, then
/// fills what room is left from those that have more. Server-side because each
/// organization's `DELETE` depends on how much room the previous ones left: done
/// from here that is a round trip per organization; there, one per batch, in one
/// statement and so one short transaction.
const DELETE_BATCH: &str = "
    SELECT target, rows_deleted, last_occurred_at, last_id, more, reached
    FROM audit_retention_delete_batch($1::uuid[], $2::timestamptz[], $3::timestamptz[],
                                      $4::bigint[], $5::bigint, $6::bigint, $7::text)
    ORDER BY target";

/// The statements a run executes in every batch, prepared once per run on the run's
/// connection (a batch then costs no parse round trips).
#[derive(Debug, Clone)]
pub struct Statements {
    delete: Statement,
    set_resume_point: Statement,
}

impl Statements {
    /// Prepares them on `client`; use them on that client (or its transactions).
    pub async fn prepare(client: &impl GenericClient) -> Result<Statements, DbError> {
        Ok(Statements {
            delete: client.prepare(DELETE_BATCH).await?,
            set_resume_point: client.prepare(SET_RESUME_POINT).await?,
        })
    }

    /// Records the organization the next run starts with.
    pub async fn set_resume_point(
        &self,
        client: &impl GenericClient,
        organization_id: Uuid,
    ) -> Result<(), DbError> {
        client
            .execute(&self.set_resume_point, &[&CLEANUP_JOB, &organization_id])
            .await?;
        Ok(())
    }

    /// Runs one batch (see [`DELETE_BATCH`]): up to `limit` (at least 1) rows from
    /// `targets` (at most [`MAX_TARGETS_PER_BATCH`]), turns of at most `turn` rows
    /// first, in order, never past the sinks of the cluster `system_identifier`.
    pub async fn delete_batch(
        &self,
        client: &impl GenericClient,
        targets: &[BatchTarget],
        system_identifier: &str,
        limit: u64,
        turn: u64,
    ) -> Result<BatchDeleted, DbError> {
        let ids: Vec<Uuid> = targets.iter().map(|t| t.organization_id).collect();
        let cutoffs: Vec<DateTime<Utc>> = targets.iter().map(|t| t.cutoff).collect();
        let after_at: Vec<Option<DateTime<Utc>>> =
            targets.iter().map(|t| t.after.map(|(at, _)| at)).collect();
        let after_id: Vec<Option<i64>> =
            targets.iter().map(|t| t.after.map(|(_, id)| id)).collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        let turn = i64::try_from(turn).unwrap_or(i64::MAX - 1);
        let rows = client
            .query(
                &self.delete,
                &[
                    &ids,
                    &cutoffs,
                    &after_at,
                    &after_id,
                    &limit,
                    &turn,
                    &system_identifier,
                ],
            )
            .await?;
        let index = |n: i32| {
            usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .filter(|i| *i < targets.len())
                .ok_or_else(|| DbError::Data {
                    reason: format!("batch result names target {n} of {}", targets.len()),
                })
        };
        let mut deleted = Vec::with_capacity(rows.len());
        // No row: nothing was deleted, so the batch never filled up and the first
        // pass looked at every target.
        let mut reached = targets.len().saturating_sub(1);
        for row in &rows {
            let rows_deleted: i64 = row.try_get(1)?;
            deleted.push(TargetDeleted {
                target: index(row.try_get(0)?)?,
                rows: u64::try_from(rows_deleted).unwrap_or_default(),
                last: (row.try_get(2)?, row.try_get(3)?),
                more: row.try_get(4)?,
            });
            reached = index(row.try_get(5)?)?;
        }
        Ok(BatchDeleted { deleted, reached })
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

/// For each `(organization, cutoff)`, counts its rows older than the cutoff that are
/// past the bound of the cluster `system_identifier`: expired rows a sink has not
/// written yet. One statement for all of them; the counts come in the order given.
pub async fn count_held_back(
    client: &impl GenericClient,
    targets: &[(Uuid, DateTime<Utc>)],
    system_identifier: &str,
) -> Result<Vec<u64>, DbError> {
    let ids: Vec<Uuid> = targets.iter().map(|(id, _)| *id).collect();
    let cutoffs: Vec<DateTime<Utc>> = targets.iter().map(|(_, cutoff)| *cutoff).collect();
    let rows = client
        .query(
            &format!(
                "SELECT (SELECT count(*) FROM audit_events AS e
                         WHERE e.organization_id = t.org AND e.occurred_at < t.cutoff
                           AND (e.tx, e.id) > {bound})::bigint
                 FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS t(org, cutoff, n)
                 ORDER BY t.n",
                bound = sink_bound(3)
            ),
            &[&ids, &cutoffs, &system_identifier],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let rows: i64 = row.try_get(0)?;
            Ok(u64::try_from(rows).unwrap_or_default())
        })
        .collect()
}
