//! The audit event, its catalog and its line encoding (SPEC §4, §5).
//!
//! Pure: no I/O, no clock, no globals.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One row of `audit_events`, joined with its organization's slug, as read from the database.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Database id; collectors deduplicate on it.
    pub id: i64,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// Owning organization.
    pub organization_id: Uuid,
    /// The organization's slug (`acme-dev`), for humans reading the line.
    pub organization: String,
    /// Catalog name, e.g. `organization.user.invited`.
    pub event_type: String,
    /// `user`, `api_token`, `system` …
    pub actor_type: String,
    /// Who acted.
    pub actor_id: String,
    /// The actor's email, when it has one.
    pub actor_email: Option<String>,
    /// What kind of thing was acted on.
    pub target_type: Option<String>,
    /// Which thing was acted on.
    pub target_id: Option<String>,
    /// Project scope, when there is one.
    pub project_id: Option<String>,
    /// `succeeded`, `failed` or `denied`.
    pub status: String,
    /// Raw metadata as stored; never written anywhere before sanitizing.
    pub metadata: serde_json::Value,
}
