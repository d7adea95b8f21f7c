//! The parameters of the audit-event list and export, in one place for HTTP and the
//! command line (SPEC §9, §10).
//!
//! Both front ends turn what they were given into `(name, value)` pairs — the decoded
//! query string, or the flags that were set — and hand them to
//! [`ListParams::from_pairs`] or [`ExportParams::from_pairs`]. Every value is validated
//! here, once, so a bad value gets the same [`ParamError`] (naming the parameter) on
//! either side:
//!
//! | parameter | meaning |
//! |---|---|
//! | `from` | events that occurred at or after this RFC 3339 time |
//! | `to` | events that occurred at or before this RFC 3339 time (inclusive) |
//! | `event` | this event type exactly, or every type under a prefix ending in `.*` (`organization.user.*`) |
//! | `actor` | events by this actor, given as its id or e-mail address (e-mail compared case-insensitively) |
//! | `target_type` | events on targets of this type |
//! | `project_id` | events in this project |
//! | `limit` | list only: events per page, 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`] |
//! | `cursor` | list only: the `next_cursor` of the previous page |
//! | `format` | export only: `ndjson` (default) or `csv` |
//!
//! Unknown parameters and parameters given twice are errors, not ignored: a typo such
//! as `evnet=` must not silently widen an audit query.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Timelike, Utc};

/// Events per list page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;

/// Most events per list page.
pub const MAX_LIMIT: u32 = 500;

/// Longest accepted `event`, `target_type` or `project_id` value, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Longest accepted `actor` value, in bytes (an e-mail address is at most 254).
const MAX_ACTOR_BYTES: usize = 320;

/// The parameters of the list.
pub const LIST_PARAMETERS: &[&str] = &[
    "from",
    "to",
    "event",
    "actor",
    "target_type",
    "project_id",
    "limit",
    "cursor",
];

/// The parameters of the export.
pub const EXPORT_PARAMETERS: &[&str] = &[
    "from",
    "to",
    "event",
    "actor",
    "target_type",
    "project_id",
    "format",
];

/// A parameter that cannot be accepted; HTTP answers it with `400 invalid_parameter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter {parameter}: {message}")]
pub struct ParamError {
    /// The parameter's name as given (for an unknown parameter: the unknown name).
    pub parameter: String,
    /// What is wrong and what is accepted; never more of the value than needed.
    pub message: String,
}

impl ParamError {
    fn new(parameter: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            parameter: parameter.to_owned(),
            message: message.into(),
        }
    }
}

/// The `event` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// This event type exactly.
    Exact(String),
    /// Every event type starting with this prefix, which ends in `.` (from `prefix.*`).
    Prefix(String),
}

impl EventFilter {
    /// The filter as it was written (`organization.user.*` for a prefix).
    pub fn as_written(&self) -> String {
        match self {
            EventFilter::Exact(name) => name.clone(),
            EventFilter::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

/// The filters shared by the list and the export. Every field is optional; the
/// filters that are set must all match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Events that occurred at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events that occurred at or before this time.
    pub to: Option<DateTime<Utc>>,
    /// Event type, exact or by prefix.
    pub event: Option<EventFilter>,
    /// Actor id, or actor e-mail (case-insensitive).
    pub actor: Option<String>,
    /// Target type.
    pub target_type: Option<String>,
    /// Project id.
    pub project_id: Option<String>,
}

impl Filters {
    /// Applies one filter parameter; `Ok(false)` if `name` is not a filter.
    fn apply(&mut self, name: &str, value: &str) -> Result<bool, ParamError> {
        match name {
            "from" => self.from = Some(parse_time(name, value, Rounding::Up)?),
            "to" => self.to = Some(parse_time(name, value, Rounding::Down)?),
            "event" => self.event = Some(parse_event(value)?),
            "actor" => self.actor = Some(parse_text(name, value, MAX_ACTOR_BYTES)?),
            "target_type" => self.target_type = Some(parse_text(name, value, MAX_NAME_BYTES)?),
            "project_id" => self.project_id = Some(parse_text(name, value, MAX_NAME_BYTES)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks what single values cannot: the time range is not reversed.
    fn check(&self) -> Result<(), ParamError> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if to < from {
                return Err(ParamError::new(
                    "to",
                    format!(
                        "the range is empty: `to` ({}) is before `from` ({})",
                        format_time(to),
                        format_time(from)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The filters that are set, as a JSON object with the parameter names as keys
    /// (the `filters` of an `organization.audit.export_created` event). Times are
    /// normalised to RFC 3339 UTC.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        if let Some(from) = self.from {
            map.insert("from".into(), format_time(from).into());
        }
        if let Some(to) = self.to {
            map.insert("to".into(), format_time(to).into());
        }
        if let Some(event) = &self.event {
            map.insert("event".into(), event.as_written().into());
        }
        if let Some(actor) = &self.actor {
            map.insert("actor".into(), actor.clone().into());
        }
        if let Some(target_type) = &self.target_type {
            map.insert("target_type".into(), target_type.clone().into());
        }
        if let Some(project_id) = &self.project_id {
            map.insert("project_id".into(), project_id.clone().into());
        }
        serde_json::Value::Object(map)
    }
}

/// The position after the last event of a list page: its `(occurred_at, id)`. The next
/// page holds the events strictly older in that order, so events that arrive while a
/// client pages through never shift a page: none is lost, none repeats.
///
/// On the wire it is opaque: base64url of a version byte, the time in microseconds
/// since the epoch and the id (both big-endian). Anything that does not decode to that
/// is a `400` naming `cursor`. A hand-made cursor can only move the position inside the
/// caller's own organization, which the caller may read anyway, so it is not signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `occurred_at` of the last event returned, in microseconds since the epoch
    /// (PostgreSQL's precision, so the comparison is exact).
    pub occurred_at_micros: i64,
    /// Id of the last event returned.
    pub id: i64,
}

/// The cursor format's version byte.
const CURSOR_VERSION: u8 = 1;

/// Length of a decoded cursor: version, time, id.
const CURSOR_BYTES: usize = 17;

impl Cursor {
    /// The cursor after an event.
    pub fn after(occurred_at: DateTime<Utc>, id: i64) -> Cursor {
        Cursor {
            occurred_at_micros: occurred_at.timestamp_micros(),
            id,
        }
    }

    /// `occurred_at` as a time; `None` if out of chrono's range (never for a cursor
    /// made by [`Cursor::after`]).
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.occurred_at_micros)
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; CURSOR_BYTES];
        bytes[0] = CURSOR_VERSION;
        bytes[1..9].copy_from_slice(&self.occurred_at_micros.to_be_bytes());
        bytes[9..17].copy_from_slice(&self.id.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses the opaque text form.
    pub fn decode(text: &str) -> Result<Cursor, ParamError> {
        let invalid = || {
            ParamError::new(
                "cursor",
                "not a cursor returned by this API; pass `next_cursor` of the previous page unchanged",
            )
        };
        // 17 bytes are 23 base64 characters; refuse anything else before decoding.
        if text.len() != 23 {
            return Err(invalid());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid())?;
        let bytes: [u8; CURSOR_BYTES] = bytes.try_into().map_err(|_| invalid())?;
        if bytes[0] != CURSOR_VERSION {
            return Err(invalid());
        }
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&bytes[1..9]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[9..17]);
        let cursor = Cursor {
            occurred_at_micros: i64::from_be_bytes(micros),
            id: i64::from_be_bytes(id),
        };
        // A time chrono cannot represent cannot be sent to PostgreSQL either.
        cursor.occurred_at().ok_or_else(invalid)?;
        Ok(cursor)
    }
}

/// The parameters of one list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    /// Which events.
    pub filters: Filters,
    /// Events per page.
    pub limit: u32,
    /// Where the page starts; `None` for the newest events.
    pub cursor: Option<Cursor>,
}

impl ListParams {
    /// Validates `(name, value)` pairs (decoded). Unknown and repeated names are errors.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ListParams, ParamError> {
        let mut params = ListParams {
            filters: Filters::default(),
            limit: DEFAULT_LIMIT,
            cursor: None,
        };
        let mut seen = Seen::default();
        for (name, value) in pairs {
            seen.once(name, LIST_PARAMETERS)?;
            if params.filters.apply(name, value)? {
                continue;
            }
            match name {
                "limit" => params.limit = parse_limit(value)?,
                "cursor" => params.cursor = Some(Cursor::decode(value)?),
                _ => return Err(unknown(name, LIST_PARAMETERS)),
            }
        }
        params.filters.check()?;
        Ok(params)
    }

    /// Validates a raw (percent-encoded) query string.
    pub fn from_query(query: &str) -> Result<ListParams, ParamError> {
        let pairs = decode_query(query)?;
        ListParams::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

/// The parameters of one export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportParams {
    /// Which events.
    pub filters: Filters,
    /// NDJSON or CSV.
    pub format: ExportFormat,
}

impl ExportParams {
    /// Validates `(name, value)` pairs (decoded). Unknown and repeated names are errors.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ExportParams, ParamError> {
        let mut params = ExportParams {
            filters: Filters::default(),
            format: ExportFormat::Ndjson,
        };
        let mut seen = Seen::default();
        for (name, value) in pairs {
            seen.once(name, EXPORT_PARAMETERS)?;
            if params.filters.apply(name, value)? {
                continue;
            }
            match name {
                "format" => {
                    params.format = value.parse().map_err(|_| {
                        ParamError::new(
                            "format",
                            format!("{} is not a format; use ndjson or csv", quote(value)),
                        )
                    })?
                }
                _ => return Err(unknown(name, EXPORT_PARAMETERS)),
            }
        }
        params.filters.check()?;
        Ok(params)
    }

    /// Validates a raw (percent-encoded) query string.
    pub fn from_query(query: &str) -> Result<ExportParams, ParamError> {
        let pairs = decode_query(query)?;
        ExportParams::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

/// Names seen so far in one request.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    /// Refuses a name given twice (which of two values would win is a guess, and a
    /// guess widens or narrows an audit query silently). Unknown names are reported
    /// by the caller, after this check, so `x=1&x=2` says "unknown".
    fn once(&mut self, name: &str, known: &[&str]) -> Result<(), ParamError> {
        if !known.contains(&name) {
            return Err(unknown(name, known));
        }
        if self.0.iter().any(|seen| seen == name) {
            return Err(ParamError::new(
                name,
                format!("`{name}` is given more than once; give it at most once"),
            ));
        }
        self.0.push(name.to_owned());
        Ok(())
    }
}

fn unknown(name: &str, known: &[&str]) -> ParamError {
    ParamError::new(
        name,
        format!(
            "unknown parameter {}; accepted: {}",
            quote(name),
            known.join(", ")
        ),
    )
}

/// A value in a message: quoted, control characters escaped, long values cut, so that
/// an error cannot carry a large or terminal-hostile payload back.
fn quote(value: &str) -> String {
    const SHOWN: usize = 64;
    let mut shown: String = value.chars().take(SHOWN).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// Which way sub-microsecond digits go: PostgreSQL keeps microseconds, so a bound with
/// nanoseconds is moved to the microsecond that keeps its meaning.
#[derive(Clone, Copy)]
enum Rounding {
    /// `from`: the first microsecond at or after the given instant.
    Up,
    /// `to`: the last microsecond at or before the given instant.
    Down,
}

fn parse_time(name: &str, value: &str, rounding: Rounding) -> Result<DateTime<Utc>, ParamError> {
    let parsed = DateTime::parse_from_rfc3339(value).map_err(|_| {
        let mut message = format!(
            "{} is not an RFC 3339 time; use e.g. 2026-05-01T00:00:00Z or 2026-05-01T02:00:00+02:00",
            quote(value)
        );
        if value.contains(' ') {
            message.push_str(" (in a URL, `+` stands for a space: write the offset as %2B02:00, or use Z)");
        }
        ParamError::new(name, message)
    })?;
    let at = parsed.with_timezone(&Utc);
    let sub_micro = at.nanosecond() % 1_000;
    let at = match rounding {
        Rounding::Down => at - chrono::Duration::nanoseconds(i64::from(sub_micro)),
        Rounding::Up if sub_micro == 0 => at,
        Rounding::Up => at + chrono::Duration::nanoseconds(i64::from(1_000 - sub_micro)),
    };
    Ok(at)
}

/// RFC 3339 UTC with as many fractional digits as needed (up to microseconds).
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_event(value: &str) -> Result<EventFilter, ParamError> {
    parse_text("event", value, MAX_NAME_BYTES)?;
    match value.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') && prefix.len() > 1 && !prefix.contains('*') => {
            Ok(EventFilter::Prefix(prefix.to_owned()))
        }
        None if !value.contains('*') => Ok(EventFilter::Exact(value.to_owned())),
        _ => Err(ParamError::new(
            "event",
            format!(
                "{} is not an event type or prefix; use an exact type such as organization.user.invited, \
                 or a prefix ending in .* such as organization.user.*",
                quote(value)
            ),
        )),
    }
}

fn parse_text(name: &str, value: &str, max_bytes: usize) -> Result<String, ParamError> {
    if value.is_empty() {
        return Err(ParamError::new(
            name,
            format!("`{name}` is empty; leave it out to not filter on it"),
        ));
    }
    if value.len() > max_bytes {
        return Err(ParamError::new(
            name,
            format!("`{name}` is longer than {max_bytes} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ParamError::new(
            name,
            format!("`{name}` contains control characters"),
        ));
    }
    Ok(value.to_owned())
}

fn parse_limit(value: &str) -> Result<u32, ParamError> {
    let invalid = || {
        ParamError::new(
            "limit",
            format!(
                "{} is not a whole number from 1 to {MAX_LIMIT}",
                quote(value)
            ),
        )
    };
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(invalid)
}

/// Splits and percent-decodes a query string (`application/x-www-form-urlencoded`:
/// `+` is a space). Empty segments (`a=1&&b=2`, a trailing `&`) are skipped; a bad
/// escape or a value that is not UTF-8 is an error naming the parameter.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, ParamError> {
    let mut pairs = Vec::new();
    for segment in query.split('&').filter(|segment| !segment.is_empty()) {
        let (raw_name, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
        let name = percent_decode(raw_name).ok_or_else(|| {
            ParamError::new(
                raw_name,
                "the parameter name is not valid percent-encoded UTF-8",
            )
        })?;
        let value = percent_decode(raw_value).ok_or_else(|| {
            ParamError::new(&name, "the value is not valid percent-encoded UTF-8")
        })?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Decodes `%XX` escapes and `+`; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let high = hex_digit(*bytes.get(i + 1)?)?;
                let low = hex_digit(*bytes.get(i + 2)?)?;
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_written())
    }
}

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line, as in the file sink.
    Ndjson,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl ExportFormat {
    /// The parameter spelling (`ndjson`, `csv`), also the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Csv => "csv",
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "ndjson" => Ok(ExportFormat::Ndjson),
            "csv" => Ok(ExportFormat::Csv),
            _ => Err(()),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(query: &str) -> Result<ListParams, ParamError> {
        ListParams::from_query(query)
    }

    fn export(query: &str) -> Result<ExportParams, ParamError> {
        ExportParams::from_query(query)
    }

    fn rejected(result: Result<impl fmt::Debug, ParamError>, parameter: &str) -> String {
        let err = result.expect_err("must be rejected");
        assert_eq!(err.parameter, parameter, "{err}");
        err.message
    }

    #[test]
    fn defaults_without_parameters() {
        let params = list("").expect("empty query");
        assert_eq!(params.filters, Filters::default());
        assert_eq!(params.limit, DEFAULT_LIMIT);
        assert_eq!(params.cursor, None);
        assert_eq!(export("").expect("empty").format, ExportFormat::Ndjson);
    }

    #[test]
    fn every_filter_parses() {
        let params = list(
            "from=2026-05-01T00:00:00Z&to=2026-05-02T02:00:00%2B02:00&event=organization.user.*\
             &actor=Ops%40example.com&target_type=git_source&project_id=prj_1&limit=500",
        )
        .expect("valid");
        let f = &params.filters;
        assert_eq!(
            f.from.map(format_time).as_deref(),
            Some("2026-05-01T00:00:00Z")
        );
        assert_eq!(
            f.to.map(format_time).as_deref(),
            Some("2026-05-02T00:00:00Z")
        );
        assert_eq!(
            f.event,
            Some(EventFilter::Prefix("organization.user.".into()))
        );
        assert_eq!(f.actor.as_deref(), Some("Ops@example.com"));
        assert_eq!(f.target_type.as_deref(), Some("git_source"));
        assert_eq!(f.project_id.as_deref(), Some("prj_1"));
        assert_eq!(params.limit, 500);
        assert_eq!(
            f.to_json(),
            serde_json::json!({
                "from": "2026-05-01T00:00:00Z", "to": "2026-05-02T00:00:00Z",
                "event": "organization.user.*", "actor": "Ops@example.com",
                "target_type": "git_source", "project_id": "prj_1"
            })
        );
    }

    #[test]
    fn exact_event_types_keep_underscores_and_dots() {
        let params = list("event=organization.auth_settings.updated").expect("valid");
        assert_eq!(
            params.filters.event,
            Some(EventFilter::Exact(
                "organization.auth_settings.updated".into()
            ))
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        rejected(list("from=yesterday"), "from");
        rejected(list("to=2026-05-01"), "to");
        let message = rejected(list("from=2026-05-01T00:00:00+02:00"), "from");
        assert!(message.contains("%2B"), "{message}");
        rejected(
            list("from=2026-05-02T00:00:00Z&to=2026-05-01T00:00:00Z"),
            "to",
        );
        for bad in ["*", ".*", "organization.*.invited", "organization*", "a**"] {
            rejected(list(&format!("event={bad}")), "event");
        }
        rejected(list("event="), "event");
        rejected(list("actor"), "actor");
        rejected(list("actor=a%0Ab"), "actor");
        rejected(
            list(&format!("target_type={}", "x".repeat(256))),
            "target_type",
        );
        for bad in ["0", "501", "-1", "1.5", "ten", "", "99999999999999999999"] {
            rejected(list(&format!("limit={bad}")), "limit");
        }
        rejected(export("format=xml"), "format");
        rejected(export("format=NDJSON"), "format");
    }

    #[test]
    fn unknown_repeated_and_misplaced_parameters_are_refused() {
        let message = rejected(list("evnet=organization.user.invited"), "evnet");
        assert!(message.contains("accepted: from, to"), "{message}");
        rejected(list("event=a&event=b"), "event");
        rejected(list("format=csv"), "format");
        rejected(export("limit=10"), "limit");
        rejected(export("cursor=abc"), "cursor");
    }

    #[test]
    fn malformed_escapes_are_refused() {
        rejected(list("actor=%zz"), "actor");
        rejected(list("actor=%c3"), "actor");
        rejected(list("actor=%"), "actor");
    }

    #[test]
    fn plus_is_a_space_and_empty_segments_are_skipped() {
        let params = list("&actor=a+b&&").expect("valid");
        assert_eq!(params.filters.actor.as_deref(), Some("a b"));
    }

    #[test]
    fn sub_microsecond_bounds_round_inwards() {
        let params = list("from=2026-05-01T00:00:00.0000001Z&to=2026-05-01T00:00:00.0000019Z")
            .expect("valid");
        assert_eq!(
            params.filters.from.map(|t| t.timestamp_subsec_nanos()),
            Some(1_000)
        );
        assert_eq!(
            params.filters.to.map(|t| t.timestamp_subsec_nanos()),
            Some(1_000)
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp(1_778_577_243, 120_456_000).expect("in range");
        let cursor = Cursor::after(at, 1042);
        let text = cursor.encode();
        assert_eq!(Cursor::decode(&text), Ok(cursor));
        assert_eq!(cursor.occurred_at(), Some(at));
        assert_eq!(
            list(&format!("cursor={text}")).expect("valid").cursor,
            Some(cursor)
        );
        let mut tampered = text.clone().into_bytes();
        tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ASCII");
        rejected(list(&format!("cursor={tampered}")), "cursor");
        for bad in ["", "abc", "!!!!!!!!!!!!!!!!!!!!!!!", &"A".repeat(24)] {
            rejected(list(&format!("cursor={bad}")), "cursor");
        }
        // Version 1 but a time beyond chrono's range.
        let mut bytes = [0u8; CURSOR_BYTES];
        bytes[0] = CURSOR_VERSION;
        bytes[1..9].copy_from_slice(&i64::MAX.to_be_bytes());
        let huge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        rejected(list(&format!("cursor={huge}")), "cursor");
    }

    #[test]
    fn error_messages_do_not_echo_long_values() {
        let long = "y".repeat(5000);
        let message = rejected(list(&format!("from={long}")), "from");
        assert!(message.len() < 400, "{}", message.len());
    }
}
