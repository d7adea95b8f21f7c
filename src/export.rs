//! List and export encoders (NDJSON, CSV) and the export row cap (SPEC §9, §10).
//!
//! Every event is sanitized with the daemon's one [`Sanitizer`] before it is encoded,
//! exactly as for the file sink. [`list_page`] reads one [`ListPage`], the JSON of a
//! list page (with the cursor of the next); [`Export`]
//! drives an export: it opens the snapshot ([`db::query::start_export`]), refuses more
//! than the cap before producing a single byte, then hands out encoded chunks of
//! [`PAGE_ROWS`] events — reading the next page from the database while the current
//! one is sanitized and encoded on a blocking thread — and finally records the
//! `organization.audit.export_created` event. HTTP streams the chunks into the
//! response; the command line writes them to a file or stdout.
//!
//! # Formats
//!
//! - **NDJSON** (`application/x-ndjson`): one sink line per event (SPEC §5).
//! - **CSV** (`text/csv; charset=utf-8`): RFC 4180 (CRLF line ends, quoting where
//!   needed), a header row, one column per core field ([`CSV_COLUMNS`]; empty for
//!   null) and the sanitized metadata as a JSON text in the last column.
//!
//! # Formula injection
//!
//! Spreadsheets run a cell that starts with `=`, `+`, `-` or `@` as a formula, and
//! some also after a leading tab or carriage return. Every CSV cell that starts with
//! one of those characters gets a `'` in front ([`neutralise_cell`]), which
//! spreadsheets show as text. This includes plain negative numbers: no column of the
//! export is numeric except `id`, which is never negative, so a leading `-` is always
//! text here and keeping it would only leave a way in (`-1+cmd|…`). A cell that
//! starts with `'`s followed by one of the six gets one more `'` the same way, so
//! that the reading rule is exact: a consumer that reads the CSV programmatically
//! drops one leading `'` when the first character after the leading `'`s is one of
//! the six (`'=x` is written `''=x` and reads back as `'=x`, not `=x`). NDJSON is not
//! changed: it is not opened by spreadsheets, and its values are JSON strings.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::db::query::{self, ExportRecord, ExportSnapshot, ExportStart, OrgRef};
use crate::db::DbError;
use crate::event::{encode_line, AuditEvent, SanitizedEvent};
/// The format type lives with the filters that parse it; re-exported for callers.
pub use crate::filters::ExportFormat;
use crate::filters::{Cursor, Filters, ListParams};
use crate::sanitize::Sanitizer;
use crate::telemetry;

/// Error code of an export over the cap (HTTP `422`, and the command line's message).
pub const TOO_LARGE_CODE: &str = "audit_export_too_large";

/// Events read, sanitized and encoded per chunk: large enough that per-round-trip
/// costs vanish, small enough that a chunk stays around a few hundred KiB.
pub const PAGE_ROWS: i32 = 500;

/// The CSV header: the core fields, then the metadata.
pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "occurred_at",
    "organization_id",
    "organization",
    "event_type",
    "actor_type",
    "actor_id",
    "actor_email",
    "target_type",
    "target_id",
    "project_id",
    "status",
    "metadata",
];

/// The message of [`TOO_LARGE_CODE`].
pub fn too_large_message(max_rows: u64) -> String {
    format!(
        "more than {max_rows} events match; narrow the time range (from, to) or add filters \
         such as event, actor or target type"
    )
}

/// `audit-<org>-<UTC yyyymmddThhmmssZ>.<ext>`: the suggested file name of an export.
/// Slugs are `[a-z0-9-]`, so the name needs no quoting or escaping.
pub fn file_name(org: &str, at: DateTime<Utc>, format: ExportFormat) -> String {
    format!(
        "audit-{org}-{}.{}",
        at.format("%Y%m%dT%H%M%SZ"),
        format.as_str()
    )
}

/// A list page: `{"events":[…],"next_cursor":…}`.
#[derive(Debug, Clone, Serialize)]
pub struct ListPage {
    /// Sanitized events, newest first.
    pub events: Vec<SanitizedEvent>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One list page of `org`: up to `params.limit` events, newest first, sanitized, with
/// the cursor of the next page when there is one. The sanitizing runs on a blocking
/// thread.
pub async fn list_page(
    client: &impl GenericClient,
    org: &OrgRef,
    params: &ListParams,
    sanitizer: &Sanitizer,
) -> Result<ListPage, ExportError> {
    // One more than asked tells whether another page exists.
    let mut rows = query::list_page(
        client,
        org,
        &params.filters,
        params.cursor,
        params.limit.saturating_add(1),
    )
    .await?;
    let limit = params.limit as usize;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|last| Cursor::after(last.occurred_at, last.id).encode())
    } else {
        None
    };
    let sanitizer = sanitizer.clone();
    let events = tokio::task::spawn_blocking(move || sanitize_all(&sanitizer, &rows))
        .await
        .map_err(|err| ExportError::Worker(err.to_string()))?;
    Ok(ListPage {
        events,
        next_cursor,
    })
}

/// Sanitizes events, recording what was removed in the sanitizer metrics.
pub fn sanitize_all(sanitizer: &Sanitizer, events: &[AuditEvent]) -> Vec<SanitizedEvent> {
    events
        .iter()
        .map(|event| {
            let (sanitized, report) = sanitizer.sanitize_event(event);
            telemetry::sanitize::record(&report);
            sanitized
        })
        .collect()
}

/// `cell`, with a `'` in front if a spreadsheet would run it as a formula (see the
/// module documentation).
pub fn neutralise_cell(cell: &str) -> Cow<'_, str> {
    // Looking past leading quotes keeps a value that itself starts with `'=` apart
    // from a neutralised `=`: both would read back the same otherwise.
    match cell.trim_start_matches('\'').as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// The CSV header row.
pub fn encode_csv_header(out: &mut Vec<u8>) -> Result<(), ExportError> {
    let mut writer = csv_writer(out);
    writer.write_record(CSV_COLUMNS).map_err(encode_error)?;
    writer
        .flush()
        .map_err(|err| ExportError::Encode(err.to_string()))
}

fn csv_writer(out: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out)
}

fn encode_error(err: csv::Error) -> ExportError {
    ExportError::Encode(err.to_string())
}

/// Appends sanitized events in `format` (CSV without the header).
pub fn encode_events(
    format: ExportFormat,
    events: &[SanitizedEvent],
    out: &mut Vec<u8>,
) -> Result<(), ExportError> {
    match format {
        ExportFormat::Ndjson => {
            for event in events {
                encode_line(event, out);
            }
            Ok(())
        }
        ExportFormat::Csv => {
            let mut writer = csv_writer(out);
            for event in events {
                let id = event.id.to_string();
                let occurred_at = event
                    .occurred_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true);
                let organization_id = event.organization_id.to_string();
                let metadata = serde_json::to_string(&event.metadata)
                    .map_err(|err| ExportError::Encode(err.to_string()))?;
                let cells: [&str; 13] = [
                    &id,
                    &occurred_at,
                    &organization_id,
                    &event.organization,
                    &event.event_type,
                    &event.actor.kind,
                    &event.actor.id,
                    event.actor.email.as_deref().unwrap_or(""),
                    event.target.kind.as_deref().unwrap_or(""),
                    event.target.id.as_deref().unwrap_or(""),
                    event.project_id.as_deref().unwrap_or(""),
                    &event.status,
                    &metadata,
                ];
                writer
                    .write_record(cells.iter().map(|cell| neutralise_cell(cell).into_owned()))
                    .map_err(encode_error)?;
            }
            writer
                .flush()
                .map_err(|err| ExportError::Encode(err.to_string()))
        }
    }
}

/// Why an export did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// More events match than the cap allows; nothing was produced.
    #[error("{}", too_large_message(*max_rows))]
    TooLarge {
        /// The cap.
        max_rows: u64,
    },
    /// The organization does not exist.
    #[error("organization {slug:?} does not exist")]
    UnknownOrganization {
        /// Its slug.
        slug: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Encoding failed (cannot happen with in-memory buffers; kept instead of a panic).
    #[error("cannot encode the export: {0}")]
    Encode(String),
    /// A sanitize/encode task panicked.
    #[error("an export worker failed: {0}")]
    Worker(String),
    /// The snapshot produced more rows than it counted (cannot happen in one snapshot).
    #[error("the export produced more events than it counted")]
    Inconsistent,
}

/// Who an export is recorded for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportActor {
    /// `api_token` or `system`.
    pub actor_type: String,
    /// The token's id, or the command line's actor id.
    pub actor_id: String,
    /// The token's user, if any.
    pub actor_email: Option<String>,
}

/// An export in progress. Dropping it before [`Export::finish`] rolls the snapshot back
/// and records nothing.
pub struct Export<'a> {
    /// The rows.
    snapshot: ExportSnapshot<'a>,
    /// Shared with the sink and the list.
    sanitizer: Sanitizer,
    /// NDJSON or CSV.
    format: ExportFormat,
    /// The filters, recorded with the export.
    filters: Filters,
    /// The CSV header is still to be written.
    header_pending: bool,
    /// The next page, read while the previous one was being encoded.
    prefetched: Option<Vec<AuditEvent>>,
    /// The portal has no more rows.
    exhausted: bool,
    /// Events handed out so far.
    exported: u64,
}

impl<'a> Export<'a> {
    /// Opens the snapshot and counts; [`ExportError::TooLarge`] if more than
    /// `max_rows` events match (then nothing at all is produced).
    pub async fn start(
        client: &'a mut Client,
        org: &OrgRef,
        filters: &Filters,
        format: ExportFormat,
        max_rows: u64,
        sanitizer: Sanitizer,
    ) -> Result<Export<'a>, ExportError> {
        match query::start_export(client, org, filters, max_rows).await? {
            ExportStart::TooLarge => Err(ExportError::TooLarge { max_rows }),
            ExportStart::Ready(snapshot) => Ok(Export {
                snapshot,
                sanitizer,
                format,
                filters: filters.clone(),
                header_pending: format == ExportFormat::Csv,
                prefetched: None,
                exhausted: false,
                exported: 0,
            }),
        }
    }

    /// How many events the export holds.
    pub fn total(&self) -> u64 {
        self.snapshot.total()
    }

    /// How many events have been handed out.
    pub fn exported(&self) -> u64 {
        self.exported
    }

    /// The format.
    pub fn format(&self) -> ExportFormat {
        self.format
    }

    /// The next encoded chunk, or `None` when every event has been handed out.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ExportError> {
        let mut out = Vec::new();
        if self.header_pending {
            self.header_pending = false;
            encode_csv_header(&mut out)?;
        }
        let page = match self.prefetched.take() {
            Some(page) => page,
            None if self.exhausted => Vec::new(),
            None => self.snapshot.next_page(PAGE_ROWS).await?,
        };
        if page.is_empty() {
            self.exhausted = true;
            return Ok((!out.is_empty()).then(|| Bytes::from(out)));
        }
        let rows = page.len() as u64;
        // A short page is the portal's last.
        let more = page.len() >= PAGE_ROWS as usize;
        let sanitizer = self.sanitizer.clone();
        let format = self.format;
        let encode = tokio::task::spawn_blocking(move || {
            let events = sanitize_all(&sanitizer, &page);
            encode_events(format, &events, &mut out).map(|()| out)
        });
        let snapshot = &self.snapshot;
        let prefetch = async {
            if more {
                snapshot.next_page(PAGE_ROWS).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (encoded, next) = tokio::join!(encode, prefetch);
        let out = encoded.map_err(|err| ExportError::Worker(err.to_string()))??;
        match next? {
            Some(next) => self.prefetched = Some(next),
            None => self.exhausted = true,
        }
        self.exported += rows;
        if self.exported > self.total() {
            return Err(ExportError::Inconsistent);
        }
        Ok(Some(Bytes::from(out)))
    }

    /// Records `organization.audit.export_created` (`{format, event_count, filters}`)
    /// for `actor` and commits; returns the event's id. Call it once every chunk has
    /// been delivered.
    pub async fn finish(self, actor: &ExportActor) -> Result<i64, ExportError> {
        let record = ExportRecord {
            actor_type: actor.actor_type.clone(),
            actor_id: actor.actor_id.clone(),
            actor_email: actor.actor_email.clone(),
            metadata: serde_json::json!({
                "format": self.format.as_str(),
                "event_count": self.exported,
                "filters": self.filters.to_json(),
            }),
        };
        Ok(self.snapshot.finish(&record).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Metadata, Target};
    use uuid::Uuid;

    fn event(actor_id: &str, target_id: Option<&str>) -> SanitizedEvent {
        SanitizedEvent {
            id: 7,
            occurred_at: DateTime::from_timestamp(1_778_577_243, 120_000_000).expect("in range"),
            organization_id: Uuid::nil(),
            organization: "acme-dev".into(),
            event_type: "organization.user.invited".into(),
            actor: Actor {
                kind: "user".into(),
                id: actor_id.into(),
                email: None,
            },
            target: Target {
                kind: target_id.map(|_| "user".into()),
                id: target_id.map(Into::into),
            },
            project_id: None,
            status: "succeeded".into(),
            metadata: Metadata::new(),
        }
    }

    #[test]
    fn formula_triggers_get_a_quote() {
        for (cell, expected) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=1", "a=1"),
            ("", ""),
            ("{\"a\":1}", "{\"a\":1}"),
            (" =1", " =1"),
            ("'=1", "''=1"),
            ("''-1", "'''-1"),
            ("'x", "'x"),
            ("'", "'"),
        ] {
            assert_eq!(neutralise_cell(cell), expected, "{cell:?}");
        }
    }

    #[test]
    fn csv_rows_are_rfc4180_with_nulls_empty() {
        let mut out = Vec::new();
        encode_csv_header(&mut out).expect("header");
        encode_events(
            ExportFormat::Csv,
            &[event("=HYPERLINK(\"x\")", Some("a,b"))],
            &mut out,
        )
        .expect("row");
        let text = String::from_utf8(out).expect("UTF-8");
        assert_eq!(
            text,
            "id,occurred_at,organization_id,organization,event_type,actor_type,actor_id,\
             actor_email,target_type,target_id,project_id,status,metadata\r\n\
             7,2026-05-12T09:14:03.120Z,00000000-0000-0000-0000-000000000000,acme-dev,\
             organization.user.invited,user,\"'=HYPERLINK(\"\"x\"\")\",,user,\"a,b\",,succeeded,{}\r\n"
        );
    }

    #[test]
    fn file_names_carry_org_time_and_extension() {
        let at = DateTime::from_timestamp(1_778_577_243, 0).expect("in range");
        assert_eq!(
            file_name("acme-dev", at, ExportFormat::Csv),
            "audit-acme-dev-20260512T091403Z.csv"
        );
    }
}
