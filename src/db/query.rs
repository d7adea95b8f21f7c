//! The filtered reads behind the `/v1` API and the `list` and `export` commands.
//!
//! - [`list_page`]: newest first, keyset pagination on `(occurred_at, id)`, one
//!   statement per page (the `audit_events_org_*` indexes are ordered for it).
//! - [`start_export`]: oldest first, inside one `REPEATABLE READ` transaction, so the
//!   count that enforces the row cap and the rows that are streamed come from the same
//!   snapshot. Rows are read from a portal in pages, so memory does not grow with the
//!   export; [`ExportSnapshot::finish`] records the `organization.audit.export_created`
//!   event in that transaction and commits.
//!
//! Filter values are always bound as parameters, never spliced into the SQL text.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Portal, Row, Transaction};
use uuid::Uuid;

use crate::db::json::BoundedJson;
use crate::db::DbError;
use crate::event::AuditEvent;
use crate::filters::{Cursor, EventFilter, Filters};

/// Event type of the record every export leaves.
pub const EXPORT_CREATED_EVENT: &str = "organization.audit.export_created";

/// The columns of [`AuditEvent`] except the organization's slug, which the caller knows.
const EVENT_COLUMNS: &str = "e.id, e.occurred_at, e.organization_id, e.event_type, \
     e.actor_type, e.actor_id, e.actor_email, e.target_type, e.target_id, e.project_id, \
     e.status, e.metadata";

/// An organization, resolved from its slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRef {
    /// Its id (what `audit_events.organization_id` holds).
    pub id: Uuid,
    /// Its slug (what events show as `organization`).
    pub slug: String,
}

/// The organization with this slug, if any.
pub async fn organization(
    client: &impl GenericClient,
    slug: &str,
) -> Result<Option<OrgRef>, DbError> {
    let row = client
        .query_opt(
            "SELECT id, slug FROM organizations WHERE slug = $1",
            &[&slug],
        )
        .await?;
    row.map(|row| {
        Ok(OrgRef {
            id: row.try_get(0)?,
            slug: row.try_get(1)?,
        })
    })
    .transpose()
}

/// Statement parameters of different types, bound by position.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn param_refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Adds a parameter and returns its placeholder (`$n`).
fn bind(params: &mut Params, value: impl ToSql + Sync + Send + 'static) -> String {
    params.push(Box::new(value));
    format!("${}", params.len())
}

/// `LIKE` pattern matching every string that starts with `prefix` (`\` is the escape).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The `WHERE` conditions of the organization and the filters.
fn conditions(org: &OrgRef, filters: &Filters, params: &mut Params) -> Vec<String> {
    let mut conditions = vec![format!("e.organization_id = {}", bind(params, org.id))];
    if let Some(from) = filters.from {
        conditions.push(format!("e.occurred_at >= {}", bind(params, from)));
    }
    if let Some(to) = filters.to {
        conditions.push(format!("e.occurred_at <= {}", bind(params, to)));
    }
    match &filters.event {
        Some(EventFilter::Exact(name)) => {
            conditions.push(format!("e.event_type = {}", bind(params, name.clone())));
        }
        Some(EventFilter::Prefix(prefix)) => {
            // text_pattern_ops on the index makes this a range scan whatever the collation.
            conditions.push(format!(
                "e.event_type LIKE {}",
                bind(params, like_prefix(prefix))
            ));
        }
        None => {}
    }
    if let Some(actor) = &filters.actor {
        // Ids are compared exactly, e-mail addresses case-insensitively (as the
        // `lower(actor_email)` index does); either may match.
        let p = bind(params, actor.clone());
        conditions.push(format!(
            "(e.actor_id = {p} OR lower(e.actor_email) = lower({p}))"
        ));
    }
    if let Some(target_type) = &filters.target_type {
        conditions.push(format!(
            "e.target_type = {}",
            bind(params, target_type.clone())
        ));
    }
    if let Some(project_id) = &filters.project_id {
        conditions.push(format!(
            "e.project_id = {}",
            bind(params, project_id.clone())
        ));
    }
    conditions
}

fn event_from_row(row: &Row, organization: &str) -> Result<AuditEvent, DbError> {
    Ok(AuditEvent {
        id: row.try_get(0)?,
        occurred_at: row.try_get(1)?,
        organization_id: row.try_get(2)?,
        organization: organization.to_owned(),
        event_type: row.try_get(3)?,
        actor_type: row.try_get(4)?,
        actor_id: row.try_get(5)?,
        actor_email: row.try_get(6)?,
        target_type: row.try_get(7)?,
        target_id: row.try_get(8)?,
        project_id: row.try_get(9)?,
        status: row.try_get(10)?,
        metadata: row.try_get::<_, BoundedJson>(11)?.0,
    })
}

/// Up to `limit` events of `org` matching `filters`, newest first (by `occurred_at`,
/// then `id`), strictly after `after` in that order.
///
/// Raw rows: the caller sanitizes them before they go anywhere.
pub async fn list_page(
    client: &impl GenericClient,
    org: &OrgRef,
    filters: &Filters,
    after: Option<Cursor>,
    limit: u32,
) -> Result<Vec<AuditEvent>, DbError> {
    let mut params: Params = Vec::new();
    let mut conditions = conditions(org, filters, &mut params);
    if let Some(cursor) = after {
        let at = cursor.occurred_at().ok_or_else(|| DbError::Data {
            reason: "the cursor's time is out of range".into(),
        })?;
        // A row comparison, so that the (organization_id, occurred_at DESC, id DESC)
        // index serves it as one range.
        conditions.push(format!(
            "(e.occurred_at, e.id) < ({}, {})",
            bind(&mut params, at),
            bind(&mut params, cursor.id)
        ));
    }
    let limit = bind(&mut params, i64::from(limit));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events e WHERE {} \
         ORDER BY e.occurred_at DESC, e.id DESC LIMIT {limit}",
        conditions.join(" AND ")
    );
    let rows = client.query(&sql, &param_refs(&params)).await?;
    rows.iter()
        .map(|row| event_from_row(row, &org.slug))
        .collect()
}

/// What [`start_export`] found.
pub enum ExportStart<'a> {
    /// At most the cap matches: read them from the snapshot.
    Ready(ExportSnapshot<'a>),
    /// More than the cap matches; nothing was read.
    TooLarge,
}

/// An export in progress: a `REPEATABLE READ` transaction with the matching rows
/// counted and a portal over them, oldest first.
pub struct ExportSnapshot<'a> {
    /// Holds the snapshot; rolled back if dropped before [`ExportSnapshot::finish`].
    transaction: Transaction<'a>,
    /// The rows, read page by page.
    portal: Portal,
    /// How many rows the snapshot holds.
    total: u64,
    /// Whose rows.
    org: OrgRef,
}

/// What [`ExportSnapshot::finish`] records as `organization.audit.export_created`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRecord {
    /// `actor_type`: `api_token` over HTTP, `system` from the command line.
    pub actor_type: String,
    /// `actor_id`: the token's id, or the command line's actor id.
    pub actor_id: String,
    /// `actor_email`: the token's user, if any.
    pub actor_email: Option<String>,
    /// The event's metadata: `{format, event_count, filters}`.
    pub metadata: serde_json::Value,
}

/// Opens a snapshot of the events of `org` matching `filters`, counts them up to
/// `max_rows + 1`, and either refuses ([`ExportStart::TooLarge`], the transaction
/// rolled back) or returns the snapshot with a portal over the rows, oldest first.
///
/// The transaction takes no transaction id while it only reads, so streaming from it
/// does not hold back the mirror's visibility horizon.
pub async fn start_export<'a>(
    client: &'a mut Client,
    org: &OrgRef,
    filters: &Filters,
    max_rows: u64,
) -> Result<ExportStart<'a>, DbError> {
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let mut params: Params = Vec::new();
    let conditions = conditions(org, filters, &mut params).join(" AND ");
    let count_limit = i64::try_from(max_rows.saturating_add(1)).unwrap_or(i64::MAX);
    let mut count_params = Vec::with_capacity(params.len() + 1);
    count_params.extend(param_refs(&params));
    count_params.push(&count_limit as &(dyn ToSql + Sync));
    let count_sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM audit_events e WHERE {conditions} LIMIT ${}) s",
        count_params.len()
    );
    let count: i64 = transaction
        .query_one(&count_sql, &count_params)
        .await?
        .try_get(0)?;
    let total = u64::try_from(count).map_err(|_| DbError::Data {
        reason: "count(*) was negative".into(),
    })?;
    if total > max_rows {
        // Dropping the transaction rolls it back.
        return Ok(ExportStart::TooLarge);
    }
    let rows_sql = format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events e WHERE {conditions} \
         ORDER BY e.occurred_at, e.id"
    );
    let portal = transaction.bind(&rows_sql, &param_refs(&params)).await?;
    Ok(ExportStart::Ready(ExportSnapshot {
        transaction,
        portal,
        total,
        org: org.clone(),
    }))
}

impl ExportSnapshot<'_> {
    /// How many events the export holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The next `max_rows` events (fewer only at the end; none once done).
    pub async fn next_page(&self, max_rows: i32) -> Result<Vec<AuditEvent>, DbError> {
        let rows = self
            .transaction
            .query_portal(&self.portal, max_rows)
            .await?;
        rows.iter()
            .map(|row| event_from_row(row, &self.org.slug))
            .collect()
    }

    /// Records the export as `organization.audit.export_created` (occurred now, the
    /// organization as target) and commits; returns the event's id.
    pub async fn finish(self, record: &ExportRecord) -> Result<i64, DbError> {
        let row = self
            .transaction
            .query_one(
                "INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type,
                     actor_id, actor_email, target_type, target_id, metadata)
                 VALUES ($1, clock_timestamp(), $2, $3, $4, $5, 'organization', $6, $7)
                 RETURNING id",
                &[
                    &self.org.id,
                    &EXPORT_CREATED_EVENT,
                    &record.actor_type,
                    &record.actor_id,
                    &record.actor_email,
                    &self.org.id.to_string(),
                    &record.metadata,
                ],
            )
            .await?;
        let id: i64 = row.try_get(0)?;
        self.transaction.commit().await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefixes_escape_wildcards() {
        assert_eq!(like_prefix("organization.user."), "organization.user.%");
        assert_eq!(
            like_prefix("organization.auth_settings."),
            "organization.auth\\_settings.%"
        );
        assert_eq!(like_prefix("a%b\\c."), "a\\%b\\\\c.%");
    }
}
