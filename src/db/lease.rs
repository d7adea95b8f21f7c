//! The statements of leader election per sink group (`audit_sink_leases`, migration
//! 0005; the design and its failure analysis are in docs/replicas.md).
//!
//! Each statement is one autocommit statement, so it works the same through any
//! connection (pooled, or behind a transaction-mode pooler): no session state is ever
//! relied on. Times are the server's clock.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::db::cursor::{parse_xid8, Position};
use crate::db::DbError;

/// Who asks for or holds a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The replica's name (for people: logs, `/readyz`, metrics).
    pub name: String,
    /// This process: the fence of the lease.
    pub instance: Uuid,
    /// The sink directory this process writes (from its state file).
    pub sink: Uuid,
}

/// The lease of a sink group as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The epoch of the current (or last) holder.
    pub epoch: i64,
    /// The holder's replica name, if any ever held it.
    pub holder_name: Option<String>,
    /// The holder's process.
    pub holder_instance: Option<Uuid>,
    /// The holder's sink directory.
    pub holder_sink: Option<Uuid>,
    /// Whether the lease has expired (server clock) or was released.
    pub expired: bool,
    /// Whether the holder released it on shutdown.
    pub released: bool,
    /// Time since the holder last renewed it.
    pub age: Option<Duration>,
    /// The holder's appended position at its last renewal.
    pub appended: Option<Position>,
}

/// Reads the group's lease row, creating it (unheld, at the epoch of the group's
/// published position) when there is none.
pub async fn read(client: &impl GenericClient, sink_id: &str) -> Result<LeaseRow, DbError> {
    const SELECT: &str = "SELECT epoch, holder_name, holder_instance, holder_sink, \
                expires_at <= clock_timestamp(), released_at IS NOT NULL, \
                extract(epoch FROM clock_timestamp() - renewed_at)::float8, \
                appended_tx::text, appended_event_id \
         FROM audit_sink_leases WHERE sink_id = $1";
    if let Some(row) = client.query_opt(SELECT, &[&sink_id]).await? {
        return lease_row(&row);
    }
    // Continue the epochs of the published position (an operator may have deleted the
    // lease row): a lower epoch could never publish again.
    client
        .execute(
            "INSERT INTO audit_sink_leases (sink_id, epoch, expires_at) \
             SELECT $1, coalesce((SELECT epoch FROM audit_sink_positions WHERE sink_id = $1), 0), \
                    '-infinity' \
             ON CONFLICT (sink_id) DO NOTHING",
            &[&sink_id],
        )
        .await?;
    let row = client.query_one(SELECT, &[&sink_id]).await?;
    lease_row(&row)
}

fn lease_row(row: &tokio_postgres::Row) -> Result<LeaseRow, DbError> {
    let age: Option<f64> = row.try_get(6)?;
    let tx: Option<String> = row.try_get(7)?;
    let id: Option<i64> = row.try_get(8)?;
    let appended = match (tx, id) {
        (Some(tx), Some(id)) => Some(Position {
            tx: parse_xid8(&tx)?,
            id,
        }),
        _ => None,
    };
    Ok(LeaseRow {
        epoch: row.try_get(0)?,
        holder_name: row.try_get(1)?,
        holder_instance: row.try_get(2)?,
        holder_sink: row.try_get(3)?,
        expired: row.try_get(4)?,
        released: row.try_get(5)?,
        age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
        appended,
    })
}

/// Takes the lease over if it is still at `seen_epoch` and free to take (expired,
/// released, or held for this very sink directory, whose lock this process holds).
/// Returns the new epoch, or `None` when another replica was faster or the holder
/// renewed meanwhile.
pub async fn acquire(
    client: &impl GenericClient,
    sink_id: &str,
    me: &Candidate,
    seen_epoch: i64,
    timeout: Duration,
) -> Result<Option<i64>, DbError> {
    let ms = millis(timeout);
    let row = client
        .query_opt(
            "UPDATE audit_sink_leases SET epoch = epoch + 1, holder_name = $2, \
                 holder_instance = $3, holder_sink = $4, acquired_at = clock_timestamp(), \
                 renewed_at = clock_timestamp(), released_at = NULL, \
                 expires_at = clock_timestamp() + $5 * interval '1 millisecond', \
                 appended_tx = NULL, appended_event_id = NULL \
             WHERE sink_id = $1 AND epoch = $6 \
               AND (expires_at <= clock_timestamp() OR holder_sink = $4) \
             RETURNING epoch",
            &[&sink_id, &me.name, &me.instance, &me.sink, &ms, &seen_epoch],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// Extends the lease held at `epoch` by this process and records its appended
/// position. False: the lease is no longer ours (taken over).
pub async fn renew(
    client: &impl GenericClient,
    sink_id: &str,
    me: &Candidate,
    epoch: i64,
    timeout: Duration,
    appended: Option<Position>,
) -> Result<bool, DbError> {
    let ms = millis(timeout);
    let tx = appended.map(|p| p.tx.to_string());
    let id = appended.map(|p| p.id);
    let n = client
        .execute(
            "UPDATE audit_sink_leases SET renewed_at = clock_timestamp(), \
                 expires_at = clock_timestamp() + $4 * interval '1 millisecond', \
                 appended_tx = coalesce($5::text::xid8, appended_tx), \
                 appended_event_id = coalesce($6, appended_event_id) \
             WHERE sink_id = $1 AND epoch = $2 AND holder_instance = $3 AND released_at IS NULL",
            &[&sink_id, &epoch, &me.instance, &ms, &tx, &id],
        )
        .await?;
    Ok(n == 1)
}

/// Hands the lease held at `epoch` over: a standby may take it at once. False when
/// it was not ours any more.
pub async fn release(
    client: &impl GenericClient,
    sink_id: &str,
    me: &Candidate,
    epoch: i64,
    appended: Option<Position>,
) -> Result<bool, DbError> {
    let tx = appended.map(|p| p.tx.to_string());
    let id = appended.map(|p| p.id);
    let n = client
        .execute(
            "UPDATE audit_sink_leases SET expires_at = '-infinity', released_at = clock_timestamp(), \
                 appended_tx = coalesce($4::text::xid8, appended_tx), \
                 appended_event_id = coalesce($5, appended_event_id) \
             WHERE sink_id = $1 AND epoch = $2 AND holder_instance = $3",
            &[&sink_id, &epoch, &me.instance, &tx, &id],
        )
        .await?;
    Ok(n == 1)
}

/// What a fenced publication found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The lease is still ours (the position moved, or was already further).
    Held,
    /// Another replica took the lease over: nothing was published.
    Superseded,
}

/// Publishes the group's durable position under `epoch`, only while the lease is
/// still at that epoch and ours, and never over a publication of a later epoch; only
/// forward unless `back` (a directory that lost lines holds retention back while it
/// writes them again). The
/// lease row is locked (shared) by the same statement, so a takeover either commits
/// before (and this publishes nothing) or waits for it.
pub async fn publish(
    client: &impl GenericClient,
    sink_id: &str,
    system_identifier: &str,
    position: Position,
    me: &Candidate,
    epoch: i64,
    back: bool,
) -> Result<Published, DbError> {
    let row = client
        .query_one(
            "WITH lease AS ( \
                 SELECT epoch FROM audit_sink_leases \
                 WHERE sink_id = $1 AND epoch = $5 AND holder_instance = $6 \
                 FOR SHARE \
             ), up AS ( \
                 INSERT INTO audit_sink_positions \
                     (sink_id, system_identifier, tx, event_id, updated_at, epoch, sink_instance) \
                 SELECT $1, $2, $3::text::xid8, $4, now(), $5, $7 FROM lease \
                 ON CONFLICT (sink_id) DO UPDATE SET \
                     system_identifier = excluded.system_identifier, \
                     tx = excluded.tx, event_id = excluded.event_id, updated_at = now(), \
                     epoch = excluded.epoch, sink_instance = excluded.sink_instance \
                 WHERE audit_sink_positions.epoch <= excluded.epoch \
                   AND ($8 OR audit_sink_positions.system_identifier IS DISTINCT FROM excluded.system_identifier \
                        OR (audit_sink_positions.tx, audit_sink_positions.event_id) \
                           <= (excluded.tx, excluded.event_id)) \
                 RETURNING 1 \
             ) \
             SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM up)",
            &[
                &sink_id,
                &system_identifier,
                &position.tx.to_string(),
                &position.id,
                &epoch,
                &me.instance,
                &me.sink,
                &back,
            ],
        )
        .await?;
    let held: i64 = row.try_get(0)?;
    Ok(if held == 1 {
        Published::Held
    } else {
        Published::Superseded
    })
}

/// The group's published position with the epoch and sink directory that published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    /// The cluster the position belongs to.
    pub system_identifier: String,
    /// The durable position.
    pub position: Position,
    /// The epoch it was published under.
    pub epoch: i64,
    /// The sink directory that published it (`None` before migration 0005).
    pub sink_instance: Option<Uuid>,
}

/// The group's published position, if any.
pub async fn group_position(
    client: &impl GenericClient,
    sink_id: &str,
) -> Result<Option<GroupPosition>, DbError> {
    let row = client
        .query_opt(
            "SELECT system_identifier, tx::text, event_id, epoch, sink_instance \
             FROM audit_sink_positions WHERE sink_id = $1",
            &[&sink_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let tx: String = row.try_get(1)?;
    Ok(Some(GroupPosition {
        system_identifier: row.try_get(0)?,
        position: Position {
            tx: parse_xid8(&tx)?,
            id: row.try_get(2)?,
        },
        epoch: row.try_get(3)?,
        sink_instance: row.try_get(4)?,
    }))
}

/// How long the group's published position has not moved while committed events
/// wait readable beyond it (`None`: nothing waits, or no position).
pub async fn group_stall(
    client: &impl GenericClient,
    sink_id: &str,
) -> Result<Option<Duration>, DbError> {
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM clock_timestamp() - p.updated_at)::float8 \
             FROM audit_sink_positions p \
             WHERE p.sink_id = $1 AND EXISTS ( \
                 SELECT 1 FROM audit_events e \
                 WHERE (e.tx, e.id) > (p.tx, p.event_id) \
                   AND e.tx < pg_snapshot_xmin(pg_current_snapshot()))",
            &[&sink_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let seconds: f64 = row.try_get(0)?;
    Ok(Some(Duration::from_secs_f64(seconds.max(0.0))))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
