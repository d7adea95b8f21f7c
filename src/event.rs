//! The audit event, its catalog and its line encoding (SPEC §4, §5).
//!
//! Pure: no I/O, no clock, no globals.
//!
//! - [`AuditEvent`] is a row of `audit_events` as read from the database. Its metadata
//!   is raw and must never be written anywhere before the sanitizer has seen it.
//! - [`CATALOG`] lists every event type the daemon knows, each with the top-level
//!   metadata keys it may carry ([`allowed_metadata_keys`]). It also bounds the
//!   `event_type` metric label: anything outside it is [`UNKNOWN_EVENT_TYPE`].
//! - [`SanitizedEvent`] is what [`crate::sanitize::Sanitizer`] produces, and the only
//!   thing that leaves the daemon (sink lines, list API, exports). Its serde field
//!   order is the stable line format of SPEC §5.
//! - [`encode_line`] appends one `\n`-terminated JSON line to a buffer.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
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

/// One entry of the event catalog: an event type and its metadata allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// The event type as stored in `audit_events.event_type`.
    pub name: &'static str,
    /// Top-level metadata keys this event type may carry; every other key is dropped.
    pub allowed_metadata_keys: &'static [&'static str],
}

/// The metric label (and report value) for an event type outside [`CATALOG`].
pub const UNKNOWN_EVENT_TYPE: &str = "unknown";

// Allowlists shared by several variants of one event (SPEC §4 table, one row each).
const SSO_OIDC_PROVIDER_KEYS: &[&str] = &[
    "provider_id",
    "provider_name",
    "issuer",
    "client_id",
    "scopes",
    "changed_fields",
];
const USER_STATE_KEYS: &[&str] = &["user_id", "email", "reason"];
const ROLE_KEYS: &[&str] = &[
    "role_id",
    "role_name",
    "permissions",
    "added_permissions",
    "removed_permissions",
];
const GROUP_KEYS: &[&str] = &["group_id", "group_name", "changed_fields"];
const ASSIGNMENT_KEYS: &[&str] = &[
    "assignment_id",
    "role_id",
    "subject_type",
    "subject_id",
    "scope_type",
    "scope_id",
];
const GIT_SOURCE_CONNECTION_KEYS: &[&str] = &["git_source_id", "provider", "repository", "branch"];
const GIT_SOURCE_DESCRIPTOR_KEYS: &[&str] =
    &["git_source_id", "repository", "branch", "descriptor_path"];
const GIT_SOURCE_SYNC_KEYS: &[&str] = &[
    "git_source_id",
    "repository",
    "branch",
    "commit_id",
    "trigger",
    "error_code",
    "duration_ms",
];
const GIT_SOURCE_AUTO_DEPLOY_KEYS: &[&str] = &[
    "git_source_id",
    "repository",
    "branch",
    "commit_id",
    "descriptor_path",
    "deployment_id",
    "skip_reason",
];

const fn entry(name: &'static str, keys: &'static [&'static str]) -> EventType {
    EventType {
        name,
        allowed_metadata_keys: keys,
    }
}

/// Every event type the daemon knows (SPEC §4), with its metadata allowlist.
///
/// Each `.created` / `.updated` / `.deleted` … variant is its own entry, because the
/// stored `event_type` is always the full name.
pub const CATALOG: &[EventType] = &[
    entry(
        "organization.settings.updated",
        &["changed_fields", "audit_retention"],
    ),
    entry("organization.auth_settings.updated", &["changed_fields"]),
    entry(
        "organization.sso.oidc_provider.created",
        SSO_OIDC_PROVIDER_KEYS,
    ),
    entry(
        "organization.sso.oidc_provider.updated",
        SSO_OIDC_PROVIDER_KEYS,
    ),
    entry(
        "organization.sso.oidc_provider.deleted",
        SSO_OIDC_PROVIDER_KEYS,
    ),
    entry(
        "organization.user.invited",
        &["email", "role_ids", "invited_via"],
    ),
    entry("organization.user.removed", USER_STATE_KEYS),
    entry("organization.user.blocked", USER_STATE_KEYS),
    entry("organization.user.unblocked", USER_STATE_KEYS),
    entry(
        "organization.user.password_reset_issued",
        &["user_id", "email", "issued_via", "expires_at"],
    ),
    entry("organization.role.created", ROLE_KEYS),
    entry("organization.role.updated", ROLE_KEYS),
    entry("organization.role.deleted", ROLE_KEYS),
    entry("organization.group.created", GROUP_KEYS),
    entry("organization.group.updated", GROUP_KEYS),
    entry("organization.group.deleted", GROUP_KEYS),
    entry(
        "organization.group.membership_changed",
        &[
            "group_id",
            "group_name",
            "added_user_ids",
            "removed_user_ids",
        ],
    ),
    entry("organization.assignment.created", ASSIGNMENT_KEYS),
    entry("organization.assignment.deleted", ASSIGNMENT_KEYS),
    entry(
        "organization.git_source.connected",
        GIT_SOURCE_CONNECTION_KEYS,
    ),
    entry(
        "organization.git_source.disconnected",
        GIT_SOURCE_CONNECTION_KEYS,
    ),
    entry(
        "organization.git_source.settings_changed",
        &["git_source_id", "repository", "changed_fields", "diff"],
    ),
    entry(
        "organization.git_source.descriptor_included",
        GIT_SOURCE_DESCRIPTOR_KEYS,
    ),
    entry(
        "organization.git_source.descriptor_excluded",
        GIT_SOURCE_DESCRIPTOR_KEYS,
    ),
    entry(
        "organization.git_source.sync_requested",
        GIT_SOURCE_SYNC_KEYS,
    ),
    entry(
        "organization.git_source.sync_succeeded",
        GIT_SOURCE_SYNC_KEYS,
    ),
    entry("organization.git_source.sync_failed", GIT_SOURCE_SYNC_KEYS),
    entry(
        "organization.git_source.push_received",
        &["git_source_id", "repository", "branch", "commit_id"],
    ),
    entry(
        "organization.git_source.auto_deploy_queued",
        GIT_SOURCE_AUTO_DEPLOY_KEYS,
    ),
    entry(
        "organization.git_source.auto_deploy_skipped",
        GIT_SOURCE_AUTO_DEPLOY_KEYS,
    ),
    entry(
        "organization.git_source.binding_created",
        &[
            "git_source_id",
            "repository",
            "descriptor_path",
            "project_id",
            "binding_id",
            "created_during",
        ],
    ),
    entry(
        "organization.audit.export_created",
        &["format", "event_count", "filters"],
    ),
];

/// The catalog entry of `event_type`, if the daemon knows it (exact, case-sensitive match).
pub fn lookup(event_type: &str) -> Option<&'static EventType> {
    // A linear scan over ~30 short names: slice equality compares lengths first, so
    // this costs a handful of length checks and one or two memcmps per event.
    CATALOG.iter().find(|entry| entry.name == event_type)
}

/// The top-level metadata keys `event_type` may carry, or `None` for an unknown type
/// (whose metadata is dropped entirely).
pub fn allowed_metadata_keys(event_type: &str) -> Option<&'static [&'static str]> {
    lookup(event_type).map(|entry| entry.allowed_metadata_keys)
}

/// A bounded metric label for `event_type`: its catalog name, or [`UNKNOWN_EVENT_TYPE`].
pub fn metric_label(event_type: &str) -> &'static str {
    lookup(event_type).map_or(UNKNOWN_EVENT_TYPE, |entry| entry.name)
}

/// An audit event after sanitizing: the only form in which an event leaves the daemon.
///
/// The field order is the stable line format of SPEC §5; do not reorder fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SanitizedEvent {
    /// Database id; collectors deduplicate on it.
    pub id: i64,
    /// When the event happened, written as RFC 3339 UTC with milliseconds and `Z`.
    #[serde(serialize_with = "serialize_occurred_at")]
    pub occurred_at: DateTime<Utc>,
    /// Owning organization.
    pub organization_id: Uuid,
    /// The organization's slug.
    pub organization: String,
    /// The event type (a catalog name, or an unknown type kept as stored).
    pub event_type: String,
    /// Who acted.
    pub actor: Actor,
    /// What was acted on.
    pub target: Target,
    /// Project scope, when there is one.
    pub project_id: Option<String>,
    /// `succeeded`, `failed` or `denied`.
    pub status: String,
    /// Allowlisted, scrubbed metadata; always a JSON object.
    pub metadata: Metadata,
}

/// The `actor` object of a sink line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// `user`, `api_token`, `system` …
    #[serde(rename = "type")]
    pub kind: String,
    /// Who acted.
    pub id: String,
    /// The actor's email; `null` when it has none.
    pub email: Option<String>,
}

/// The `target` object of a sink line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// What kind of thing was acted on; `null` when the event has no target.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Which thing was acted on.
    pub id: Option<String>,
}

/// Sanitized metadata: allowlisted top-level keys, each at most once, in the order of
/// the event's catalog allowlist (as in the SPEC §5 example), with scrubbed values.
///
/// Serializes as a JSON object. Objects nested in the values keep serde_json's sorted
/// key order, so the encoding is deterministic at every level.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    /// Catalog key names are `'static`, so keeping them costs no allocation per event.
    entries: Vec<(&'static str, serde_json::Value)>,
}

impl Metadata {
    /// Empty metadata, as written for unknown event types.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a key; only the sanitizer builds metadata, and it appends each allowed
    /// key at most once.
    pub(crate) fn push(&mut self, key: &'static str, value: serde_json::Value) {
        debug_assert!(self.get(key).is_none(), "metadata key {key} pushed twice");
        self.entries.push((key, value));
    }

    /// The value of `key`, if kept.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.entries
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    /// The kept keys and values, in output order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &serde_json::Value)> + '_ {
        self.entries.iter().map(|(name, value)| (*name, value))
    }

    /// How many keys were kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key was kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The metadata as a JSON object (keys re-sorted, as serde_json maps are).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
        )
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Appends `event` to `out` as exactly one JSON line terminated by `\n`.
///
/// serde_json escapes every control character inside strings, so the only raw newline
/// written is the terminator. Top-level metadata keys come out in catalog order and
/// nested object keys sorted (serde_json's map is a `BTreeMap`), so the bytes are a
/// pure function of the event.
pub fn encode_line(event: &SanitizedEvent, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, event).expect(
        "encoding a SanitizedEvent into a Vec cannot fail: writing to a Vec is infallible, \
         every map key is a string and no field has a fallible Serialize impl",
    );
    out.push(b'\n');
}

/// Length of `YYYY-MM-DDThh:mm:ss.mmmZ`.
const TIMESTAMP_LEN: usize = 24;

/// Formats `at` as `YYYY-MM-DDThh:mm:ss.mmmZ` without allocating, or `None` when the
/// year has no four-digit form (then the caller falls back to chrono's formatter).
///
/// Milliseconds are truncated, like chrono's `SecondsFormat::Millis`; this runs once
/// per event on the catch-up hot path, hence the hand-written digits.
fn format_occurred_at<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; TIMESTAMP_LEN]) -> Option<&'b str> {
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = at.nanosecond();
    // chrono represents a leap second as second 59 with 1_000_000_000 or more nanoseconds.
    let (second, nanos) = if nanos >= 1_000_000_000 {
        (60, nanos - 1_000_000_000)
    } else {
        (at.second(), nanos)
    };
    let millis = nanos / 1_000_000;
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for slot in buf[at..at + width].iter_mut().rev() {
            // `value % 10` is a single decimal digit, so the cast cannot truncate.
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, at.month(), 2);
    put(8, at.day(), 2);
    put(11, at.hour(), 2);
    put(14, at.minute(), 2);
    put(17, second, 2);
    put(20, millis, 3);
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    buf[19] = b'.';
    buf[23] = b'Z';
    std::str::from_utf8(buf).ok()
}

fn serialize_occurred_at<S: Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; TIMESTAMP_LEN];
    match format_occurred_at(at, &mut buf) {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn formatted(at: DateTime<Utc>) -> String {
        let mut buf = [0u8; TIMESTAMP_LEN];
        format_occurred_at(&at, &mut buf)
            .map(str::to_owned)
            .unwrap_or_else(|| at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    #[test]
    fn timestamp_matches_chrono_millis_format() {
        for (secs, nanos) in [
            (0_i64, 0_u32),
            (1_778_577_243, 120_000_000),
            (1_778_577_243, 999_999_999),
            (-62_135_596_800, 1_000_000), // 0001-01-01
            (253_402_300_799, 5_000_000), // 9999-12-31T23:59:59
        ] {
            let at = DateTime::from_timestamp(secs, nanos).expect("in range");
            assert_eq!(
                formatted(at),
                at.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
    }

    #[test]
    fn leap_second_is_written_as_second_60() {
        let at = NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 1_250))
            .expect("valid leap second");
        let at = Utc.from_utc_datetime(&at);
        assert_eq!(formatted(at), "2016-12-31T23:59:60.250Z");
        assert_eq!(
            formatted(at),
            at.to_rfc3339_opts(SecondsFormat::Millis, true)
        );
    }

    #[test]
    fn years_without_four_digits_fall_back_to_chrono() {
        let at = DateTime::from_timestamp(253_402_300_800, 0).expect("year 10000 in range");
        let mut buf = [0u8; TIMESTAMP_LEN];
        assert!(format_occurred_at(&at, &mut buf).is_none());
    }
}
