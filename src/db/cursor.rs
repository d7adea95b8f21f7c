//! Gap-free reads in commit order (SPEC §7.1, §12 "Ids commit out of order").
//!
//! Ids are taken at insert time but rows become visible at commit, so `id > last`
//! would skip a row whose transaction commits after one with a larger id. Every row
//! carries `tx` (its transaction's `xid8`); the cursor is `(tx, id)`; and a read only
//! returns rows whose transaction is below the snapshot's `xmin` — every transaction
//! below it has ended, so no row can appear there later. The horizon and the rows come
//! from one statement, hence one snapshot.

use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{GenericClient, Row, RowStream};

use crate::db::json::BoundedJson;
use crate::db::DbError;
use crate::event::AuditEvent;

/// A point in commit order: everything at or before it has been handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The transaction id (`xid8`) of the last handled row.
    pub tx: u64,
    /// The id of the last handled row within that transaction.
    pub id: i64,
}

impl Position {
    /// Before every row.
    pub const BEGINNING: Position = Position { tx: 0, id: 0 };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(tx {}, id {})", self.tx, self.id)
    }
}

/// One read: rows after a position, in commit order.
#[derive(Debug, Default)]
pub struct Batch {
    /// The rows, ordered by `(tx, id)`.
    pub events: Vec<AuditEvent>,
    /// Position of each row, parallel to `events`.
    pub positions: Vec<Position>,
    /// More rows are readable right now: the read stopped at its row limit or its
    /// byte budget, not at the end.
    pub more: bool,
    /// The server's timeline when the rows were read ([`TIMELINE_SQL`]); `None` when
    /// the read returned no row.
    pub timeline: Option<u32>,
}

impl Batch {
    /// The position after this batch, if it has rows.
    pub fn last_position(&self) -> Option<Position> {
        self.positions.last().copied()
    }
}

/// The server's current timeline, as an SQL expression: the timeline WAL is written
/// on, taken from the current WAL file's name (it changes the moment a standby is
/// promoted), or on a server in recovery the last checkpoint's
/// (`pg_control_checkpoint()`, which on a promoted standby changes only once the
/// checkpoint after the promotion completes).
pub const TIMELINE_SQL: &str = "CASE WHEN pg_is_in_recovery() \
         THEN (SELECT timeline_id::bigint FROM pg_control_checkpoint()) \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END";

/// Reads up to `limit` rows after `after`, only below the visibility horizon, in one
/// statement (so horizon and rows share a snapshot). Every row carries the server's
/// timeline (computed once per statement), so rows read from a promoted standby are
/// never written before the mirror has checked the failover.
///
/// `max_bytes` bounds what one read pulls into memory: the rows stream in, and the read
/// stops taking them once the metadata received (as sent, in bytes) reaches the
/// budget; the first row always comes, however large. The rest of the statement's rows
/// are discarded unread by the connection (it applies back-pressure, so they are never
/// held), and the next read starts after the last row taken. Decoding overlaps the
/// server producing the following rows.
pub async fn read_batch(
    client: &ClientWrapper,
    after: Position,
    limit: i64,
    max_bytes: i64,
) -> Result<Batch, DbError> {
    // No window function and no row count: either would make the server materialize
    // every row before sending the first (it doubled the server's work per batch).
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT e.id, e.tx::text, e.occurred_at, e.organization_id, \
                    coalesce(o.slug, ''), e.event_type, e.actor_type, e.actor_id, \
                    e.actor_email, e.target_type, e.target_id, e.project_id, e.status, \
                    e.metadata, (SELECT {TIMELINE_SQL}) \
             FROM audit_events e \
             LEFT JOIN organizations o ON o.id = e.organization_id \
             WHERE (e.tx, e.id) > ($1::text::xid8, $2) \
               AND e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY e.tx, e.id \
             LIMIT $3"
        )
    });
    let tx = after.tx.to_string();
    let params: [&(dyn ToSql + Sync); 3] = [&tx, &after.id, &limit];
    let rows = query_stream_prepared(client, &SQL, &params).await?;
    futures_util::pin_mut!(rows);
    let capacity = usize::try_from(limit).unwrap_or(usize::MAX).min(1024);
    let mut batch = Batch {
        events: Vec::with_capacity(capacity),
        positions: Vec::with_capacity(capacity),
        more: false,
        timeline: None,
    };
    let mut bytes: i64 = 0;
    while let Some(row) = rows.try_next().await? {
        let id: i64 = row.try_get(0)?;
        let tx: &str = row.try_get(1)?;
        if batch.timeline.is_none() {
            batch.timeline = Some(timeline(row.try_get(14)?)?);
        }
        batch.positions.push(Position {
            tx: parse_xid8(tx)?,
            id,
        });
        batch.events.push(AuditEvent {
            id,
            occurred_at: row.try_get(2)?,
            organization_id: row.try_get(3)?,
            organization: row.try_get(4)?,
            event_type: row.try_get(5)?,
            actor_type: row.try_get(6)?,
            actor_id: row.try_get(7)?,
            actor_email: row.try_get(8)?,
            target_type: row.try_get(9)?,
            target_id: row.try_get(10)?,
            project_id: row.try_get(11)?,
            status: row.try_get(12)?,
            metadata: row.try_get::<_, BoundedJson>(13)?.0,
        });
        bytes = bytes.saturating_add(row.try_get::<_, WireLen>(13)?.0);
        // At the row limit or the byte budget, rows may or may not follow; saying
        // "more" costs at most one empty read.
        if i64::try_from(batch.events.len()).unwrap_or(i64::MAX) >= limit || bytes >= max_bytes {
            batch.more = true;
            break;
        }
    }
    Ok(batch)
}

/// The length of a column's value as sent, whatever its type (`NULL` is 0).
struct WireLen(i64);

impl<'a> FromSql<'a> for WireLen {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(WireLen(i64::try_from(raw.len()).unwrap_or(i64::MAX)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(WireLen(0))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// What the mirror's idle turn learns in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HorizonWait {
    /// How long the first committed row past the position (in commit order) has been
    /// waiting behind the horizon (held back by an older transaction still open
    /// somewhere in the cluster), or `None` when nothing waits.
    pub wait: Option<Duration>,
    /// The server's timeline ([`TIMELINE_SQL`]).
    pub timeline: u32,
}

/// See [`HorizonWait`].
///
/// The mirror runs this every `mirror.horizon_poll_interval` for as long as the
/// horizon is held back, so it must not grow with the backlog: one row, the first in
/// `(tx, id)` order at or above the horizon, found through the cursor's index
/// (`min(occurred_at)` over every waiting row read them all, every time).
pub async fn horizon_wait(client: &ClientWrapper, after: Position) -> Result<HorizonWait, DbError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT (SELECT extract(epoch FROM clock_timestamp() - occurred_at)::float8 \
                     FROM audit_events \
                     WHERE (tx, id) > ($1::text::xid8, $2) \
                       AND tx >= pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY tx, id \
                     LIMIT 1), \
                    {TIMELINE_SQL}"
        )
    });
    let rows = query_prepared(client, &SQL, &[&after.tx.to_string(), &after.id]).await?;
    // A SELECT without FROM returns exactly one row.
    let row = rows.first().ok_or_else(|| DbError::Data {
        reason: "the horizon query returned no row".into(),
    })?;
    let seconds: Option<f64> = row.try_get(0)?;
    Ok(HorizonWait {
        wait: seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        timeline: timeline(row.try_get(1)?)?,
    })
}

fn timeline(value: i64) -> Result<u32, DbError> {
    u32::try_from(value).map_err(|_| DbError::Data {
        reason: format!("not a timeline: {value}"),
    })
}

/// Runs one of the mirror's per-wake-up queries as a statement prepared once per
/// pooled connection. Sent as text, each query was parsed, described and closed again
/// on every call — two extra round trips, and several times more CPU on the database
/// than running it (measured by `cargo bench --bench mirror`, live scenario).
async fn query_prepared(
    client: &ClientWrapper,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, DbError> {
    Ok(query_stream_prepared(client, sql, params)
        .await?
        .try_collect()
        .await?)
}

/// Like [`query_prepared`], but streams the rows as they arrive.
async fn query_stream_prepared(
    client: &ClientWrapper,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<RowStream, DbError> {
    let statement = client.prepare_cached(sql).await?;
    match client.query_raw(&statement, params.iter().copied()).await {
        // "cached plan must not change result type": a column was altered under the
        // prepared statement (reported at bind time, before any row). Forget it and
        // prepare afresh, once.
        Err(err) if err.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
            client.statement_cache.remove(sql, &[]);
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query_raw(&statement, params.iter().copied()).await?)
        }
        result => Ok(result?),
    }
}

/// The position that means "now": every transaction below the current horizon counts
/// as already handled, every later one will be read.
pub async fn current_horizon(client: &impl GenericClient) -> Result<Position, DbError> {
    let row = client
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await?;
    let xmin: String = row.try_get(0)?;
    // Rows of transaction `xmin` itself may still come: start just before it.
    Ok(Position {
        tx: parse_xid8(&xmin)?.saturating_sub(1),
        id: i64::MAX,
    })
}

/// The position of the row with this id, if it still exists.
pub async fn position_of(
    client: &impl GenericClient,
    id: i64,
) -> Result<Option<Position>, DbError> {
    let row = client
        .query_opt("SELECT tx::text FROM audit_events WHERE id = $1", &[&id])
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let tx: String = row.try_get(0)?;
            Ok(Some(Position {
                tx: parse_xid8(&tx)?,
                id,
            }))
        }
    }
}

/// The cluster's `system_identifier`: it changes when the database is replaced
/// (restored into a new cluster), which makes stored positions meaningless.
pub async fn system_identifier(client: &impl GenericClient) -> Result<String, DbError> {
    let row = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// A sink's position as published in the database, for retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPosition {
    /// The cluster the position belongs to.
    pub system_identifier: String,
    /// The sink's durable position.
    pub position: Position,
}

/// Publishes a sink's durable position (only ever moves forward, unless the cluster
/// changed).
pub async fn publish_position(
    client: &impl GenericClient,
    sink_id: &str,
    system_identifier: &str,
    position: Position,
) -> Result<(), DbError> {
    upsert_position(client, sink_id, system_identifier, position, true).await
}

/// Sets a sink's published position unconditionally (re-baseline only).
pub async fn reset_position(
    client: &impl GenericClient,
    sink_id: &str,
    system_identifier: &str,
    position: Position,
) -> Result<(), DbError> {
    upsert_position(client, sink_id, system_identifier, position, false).await
}

async fn upsert_position(
    client: &impl GenericClient,
    sink_id: &str,
    system_identifier: &str,
    position: Position,
    forward_only: bool,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO audit_sink_positions (sink_id, system_identifier, tx, event_id, updated_at) \
             VALUES ($1, $2, $3::text::xid8, $4, now()) \
             ON CONFLICT (sink_id) DO UPDATE SET \
                 system_identifier = excluded.system_identifier, \
                 tx = excluded.tx, event_id = excluded.event_id, updated_at = now() \
             WHERE NOT $5 \
                OR audit_sink_positions.system_identifier IS DISTINCT FROM excluded.system_identifier \
                OR (audit_sink_positions.tx, audit_sink_positions.event_id) <= (excluded.tx, excluded.event_id)",
            &[&sink_id, &system_identifier, &position.tx.to_string(), &position.id, &forward_only],
        )
        .await?;
    Ok(())
}

/// A sink's published position, if it has one.
pub async fn published_position(
    client: &impl GenericClient,
    sink_id: &str,
) -> Result<Option<PublishedPosition>, DbError> {
    let row = client
        .query_opt(
            "SELECT system_identifier, tx::text, event_id FROM audit_sink_positions WHERE sink_id = $1",
            &[&sink_id],
        )
        .await
        ?;
    let Some(row) = row else { return Ok(None) };
    let system_identifier: String = row.try_get(0)?;
    let tx: String = row.try_get(1)?;
    let id: i64 = row.try_get(2)?;
    Ok(Some(PublishedPosition {
        system_identifier,
        position: Position {
            tx: parse_xid8(&tx)?,
            id,
        },
    }))
}

pub(crate) fn parse_xid8(text: &str) -> Result<u64, DbError> {
    text.parse().map_err(|_| DbError::Data {
        reason: format!("not an xid8: {text:?}"),
    })
}
