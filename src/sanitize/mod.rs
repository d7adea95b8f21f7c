//! Allowlists and the secret scrubber (SPEC §4).
//!
//! Pure: no I/O, no clock, no globals. The same sanitizer serves the file sink, the
//! list API and exports. Build one [`Sanitizer`] with [`Sanitizer::new`] at start-up
//! (it compiles its patterns once) and share it: it is `Send + Sync` and a clone is one
//! reference-count increment.
//!
//! [`Sanitizer::sanitize_event`] turns an [`AuditEvent`] into a [`SanitizedEvent`] and a
//! [`SanitizeReport`] of what it removed. The caller records the report in the
//! `…_sanitizer_dropped_keys_total` and `…_sanitizer_redacted_values_total` metrics under
//! [`SanitizeReport::metric_label`]; nothing here logs, and no removed value is kept.
//!
//! # Rules, in the order they apply
//!
//! 1. **Allowlist.** Only the top-level metadata keys that [`event::CATALOG`] lists for
//!    the event type are kept; every other key is dropped. An event type outside the
//!    catalog keeps its core fields and gets `{}`. Metadata that is not a JSON object
//!    (array, string, number, `null`) becomes `{}`. Each of these counts as dropped.
//! 2. **Secret-named keys are dropped at any depth** below an allowed key (see
//!    [`is_secret_key_name`]). A key is split into lowercase words at `_`, `-`, `.`,
//!    spaces and other punctuation and at camelCase boundaries (`clientSecret`,
//!    `X-Api-Key`, `APIKey`, `set.cookie` …). It is secret-named when one of its words
//!    is `header(s)`, `payload(s)`, `env`, `pwd`, `otp`, `jwt` or `archive`, or when its
//!    words written together contain `password`, `passwd`, `passphrase`, `secret`,
//!    `token`, `credential`, `cookie`, `authorization`, `ciphertext`, `plaintext`,
//!    `privatekey`, `apikey`, `accesskey`, `signingkey`, `encryptionkey`, `masterkey`,
//!    `accountkey`, `session`, `dotenv`, `envfile`, `envvar`, `environmentvariable` or
//!    `composefile`. A bare `key` is not secret-named: variable key names are
//!    allowed facts. Keys that are themselves secret-shaped, or longer than
//!    [`Limits::max_key_bytes`], are dropped too.
//! 3. **Secret-shaped strings become `"[REDACTED]"`** — the whole string, wherever the
//!    shape occurs in it, in metadata values, object keys and the core string fields
//!    (organization, event type, actor, target, project, status) alike. Shapes:
//!    PEM private key blocks (`-----BEGIN … PRIVATE KEY`, also without the end line)
//!    and PuTTY key files; JWTs; AWS access key ids (`AKIA`, `ASIA`, `ABIA`, `ACCA`);
//!    GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`), GitLab (`glpat-`
//!    and the other `gl…-` prefixes), Bitbucket (`ATBB`), Slack (`xoxb-`, `xoxp-` … , `xapp-`, and
//!    Slack and Discord webhook URLs), Google API keys (`AIza…`), Stripe (`sk_`/`rk_`
//!    `live`/`test`, `whsec_`), npm (`npm_`), SendGrid (`SG.`), Docker Hub (`dckr_pat_`),
//!    OpenAI-style `sk-…` keys; `Bearer <token>`; URLs with credentials
//!    (`scheme://user:pass@host`, or a long user name alone, which is how Git hosts
//!    take tokens); and any `name=value` or `name: value` whose name is secret-named by
//!    rule 2 (`password=…`, `Authorization: …`, `AccountKey=…`) or, in a query string
//!    (after `?`, `&`, `;` or `#`), also `sig`, `signature`, `code`, `key`, `otp`,
//!    `auth`, `pass`, `pwd`, `ticket` or `hmac`.
//! 4. **Diffs** (`diff`, a list of `{field, op, from, to}`): an entry is sensitive when
//!    it says `"sensitive": true`, when its field name is secret-named or names
//!    environment values (`env`, `variable(s)`, `var(s)`, `value(s)` …), or when its
//!    `from`/`to` is already `{"sensitive": true, …}`. A sensitive entry keeps its
//!    `from`/`to` only as `{"sensitive": true, "fingerprint": "sha256:…"}` when the
//!    producer already gave a fingerprint in that form, and omits them otherwise; the
//!    sanitizer never hashes a value itself (a hash of a low-entropy secret is the
//!    secret). Other entry keys and entries that are not objects are dropped; a
//!    `diff` that is not a list is dropped.
//! 5. **Issuance facts only.** `organization.user.password_reset_issued` keeps
//!    `user_id` only if it looks like an id, `email` only if it looks like an address,
//!    `issued_via` only if it is a short channel word (`email`, `console` …) and
//!    `expires_at` only if it is a timestamp; anything else (a reset URL, a token, an
//!    object) becomes `"[REDACTED]"`. `invited_via` of `organization.user.invited` is
//!    held to the same channel-word rule, since an invitation link is a credential too.
//!    A random token placed under `user_id` cannot be told from an id; it still passes
//!    rules 2 and 3.
//! 6. **Hostile input is bounded** by [`Limits`]: containers nested deeper than
//!    `max_depth` are replaced by `"[TRUNCATED]"`; strings longer than
//!    `max_string_bytes` keep a prefix followed by `[TRUNCATED]`; arrays and objects
//!    longer than `max_container_len` keep their first entries (objects in key order)
//!    followed by a `"[TRUNCATED]"` element or a `"[TRUNCATED]": true` entry; and once an
//!    event has used `max_nodes` values or `max_total_string_bytes` bytes of strings,
//!    the rest is cut the same way. Secret shapes are searched in the part of a string
//!    that is kept plus a margin, so a secret straddling the cut is still caught.
//!
//! The output is deterministic: the same event always gives the same bytes, because
//! top-level metadata keys follow the catalog's allowlist order and nested objects use
//! serde_json's sorted map.
//!
//! Known limits: key names are compared after Unicode lower-casing but without
//! look-alike folding (a Cyrillic `а` in `pаssword` is not caught by rule 2; rule 3
//! still checks its value); `user:pass@host` without a `scheme://` is not recognised,
//! because it cannot be told from `git@host:org/repo`.

use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::event::{self, Actor, AuditEvent, EventType, Metadata, SanitizedEvent, Target};

mod shapes;
use shapes::*;

/// What a secret-shaped string is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The marker for anything cut because of a [`Limits`] bound.
pub const TRUNCATED: &str = "[TRUNCATED]";

/// Bytes searched for secret shapes beyond the point where a long string is cut, so a
/// token that starts before the cut is recognised as a whole.
const SCAN_MARGIN: usize = 1024;

/// Longest string a strict field (rule 5) may hold; it also bounds the regex work.
const STRICT_FIELD_MAX_BYTES: usize = 320;

/// The keys of a diff entry that carry values (`sensitive` is handled on its own).
const DIFF_ENTRY_KEYS: &[&str] = &["field", "op", "from", "to"];

/// Depth of a diff entry's `from`/`to`: metadata (0) → `diff` (1) → entry (2) → value (3).
const DIFF_VALUE_DEPTH: usize = 3;

/// Bounds on what one event's metadata may make the sanitizer do and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Containers at this depth or deeper are replaced by `"[TRUNCATED]"` (the metadata
    /// object is depth 0, the values of its keys depth 1).
    pub max_depth: usize,
    /// Strings longer than this many bytes keep a prefix of it followed by `[TRUNCATED]`.
    pub max_string_bytes: usize,
    /// Object keys longer than this many bytes are dropped with their value.
    pub max_key_bytes: usize,
    /// Entries examined per array or object; the rest is cut with a marker.
    pub max_container_len: usize,
    /// Values (of any kind, at any depth) written per event; the rest is cut.
    pub max_nodes: usize,
    /// Bytes of strings and keys examined per event; the rest is cut.
    pub max_total_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_string_bytes: 8 * 1024,
            max_key_bytes: 256,
            max_container_len: 1024,
            max_nodes: 16 * 1024,
            max_total_string_bytes: 1024 * 1024,
        }
    }
}

/// What sanitizing one event removed; the caller turns it into metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SanitizeReport {
    /// The event's catalog entry name, or `None` for an unknown event type.
    pub catalog_event_type: Option<&'static str>,
    /// Metadata removed: keys not on the allowlist, secret-named or over-long keys, diff
    /// entries or entry keys outside the diff shape, and non-object metadata (one each).
    pub dropped_keys: u64,
    /// Values replaced or shortened by a marker: secret shapes, strict fields that did
    /// not pass, omitted sensitive diff values, and every truncation.
    pub redacted_values: u64,
    /// How many of `redacted_values` were truncations because of a [`Limits`] bound.
    pub truncated_values: u64,
    /// The stored metadata was not a JSON object and was replaced by `{}`.
    pub non_object_metadata: bool,
}

impl SanitizeReport {
    /// The event type was not in the catalog, so its metadata was dropped.
    pub fn unknown_event_type(&self) -> bool {
        self.catalog_event_type.is_none()
    }

    /// The bounded `event_type` metric label: the catalog name, or `unknown`.
    pub fn metric_label(&self) -> &'static str {
        self.catalog_event_type.unwrap_or(event::UNKNOWN_EVENT_TYPE)
    }
}

/// The allowlist and secret scrubber; see the module documentation for its rules.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    /// Compiled once and shared between clones and threads.
    inner: Arc<Patterns>,
}

/// The compiled patterns and the limits of one [`Sanitizer`].
#[derive(Debug)]
struct Patterns {
    /// Bounds applied to every event.
    limits: Limits,
    /// Token formats with a literal prefix; the regex engine scans for the prefixes first.
    shapes: Regex,
    /// The shortest string `shapes` can match: shorter strings skip it (most strings
    /// are ids and names shorter than any token).
    shapes_min_len: usize,
    /// `scheme://user:pass@` and `scheme://<long user>@`; run only on strings with `://`.
    url_credentials: Regex,
    /// Rule 5 shapes.
    channel_word: Regex,
    /// Rule 5 shapes.
    id: Regex,
    /// Rule 5 shapes.
    email: Regex,
    /// Rule 5 shapes.
    timestamp: Regex,
    /// A fingerprint a producer may give for a sensitive diff value.
    fingerprint: Regex,
}

/// The event whose metadata is held to rule 5.
const PASSWORD_RESET_ISSUED: &str = "organization.user.password_reset_issued";
/// The event whose `invited_via` is held to rule 5.
const USER_INVITED: &str = "organization.user.invited";

/// What a strict field (rule 5) must look like.
#[derive(Debug, Clone, Copy)]
enum FieldRule {
    /// A short channel word: letters, `_`, `-`, `.`; no digits, so no token passes.
    ChannelWord,
    /// An identifier or a number.
    Id,
    /// An email address.
    Email,
    /// An RFC 3339-like timestamp or a number (epoch).
    Timestamp,
}

fn field_rule(event_type: &str, key: &str) -> Option<FieldRule> {
    match (event_type, key) {
        (PASSWORD_RESET_ISSUED, "user_id") => Some(FieldRule::Id),
        (PASSWORD_RESET_ISSUED, "email") => Some(FieldRule::Email),
        (PASSWORD_RESET_ISSUED, "issued_via") => Some(FieldRule::ChannelWord),
        (PASSWORD_RESET_ISSUED, "expires_at") => Some(FieldRule::Timestamp),
        (USER_INVITED, "invited_via") => Some(FieldRule::ChannelWord),
        _ => None,
    }
}

/// The length in bytes of the shortest string `pattern` matches.
fn minimum_len(pattern: &str) -> usize {
    regex_syntax::parse(pattern)
        .unwrap_or_else(|err| panic!("built-in pattern {pattern:?} is invalid: {err}"))
        .properties()
        .minimum_len()
        .unwrap_or(0)
}

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern)
        .expect("the built-in sanitizer patterns are valid regular expressions (unit-tested)")
}

impl Default for Sanitizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sanitizer {
    /// A sanitizer with the default [`Limits`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A sanitizer with the given bounds on hostile input.
    pub fn with_limits(limits: Limits) -> Self {
        let shapes = SECRET_SHAPES
            .iter()
            .map(|shape| format!("(?:{shape})"))
            .collect::<Vec<_>>()
            .join("|");
        Self {
            inner: Arc::new(Patterns {
                limits,
                shapes_min_len: minimum_len(&shapes),
                shapes: compile(&shapes),
                url_credentials: compile(URL_CREDENTIALS),
                channel_word: compile(r"^[A-Za-z][A-Za-z_.-]{0,31}$"),
                id: compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"),
                email: compile(r"^[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$"),
                timestamp: compile(
                    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?(?:Z|z|[+-][0-9]{2}(?::?[0-9]{2})?)?$",
                ),
                fingerprint: compile(
                    r"^sha256:(?:[0-9a-f]{64}|[A-Za-z0-9+/]{43}=?|[A-Za-z0-9_-]{43})$",
                ),
            }),
        }
    }

    /// The bounds this sanitizer applies.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Whether `value` contains a secret shape (rule 3); such a string is written as
    /// `"[REDACTED]"`.
    pub fn is_secret_shaped(&self, value: &str) -> bool {
        self.inner.is_secret_shaped(value)
    }

    /// Applies every rule of the module documentation to one event.
    pub fn sanitize_event(&self, event: &AuditEvent) -> (SanitizedEvent, SanitizeReport) {
        let kind = event::lookup(&event.event_type);
        let mut walk = Walk::new(&self.inner, kind);
        let organization = walk.string(&event.organization);
        let event_type = match kind {
            // A catalog name is known to be clean; no need to scan it.
            Some(kind) => kind.name.to_owned(),
            None => walk.string(&event.event_type),
        };
        let actor = Actor {
            kind: walk.string(&event.actor_type),
            id: walk.string(&event.actor_id),
            email: event.actor_email.as_deref().map(|email| walk.string(email)),
        };
        let target = Target {
            kind: event.target_type.as_deref().map(|kind| walk.string(kind)),
            id: event.target_id.as_deref().map(|id| walk.string(id)),
        };
        let project_id = event.project_id.as_deref().map(|id| walk.string(id));
        let status = walk.string(&event.status);
        let metadata = walk.metadata(kind, &event.metadata);
        let sanitized = SanitizedEvent {
            id: event.id,
            occurred_at: event.occurred_at,
            organization_id: event.organization_id,
            organization,
            event_type,
            actor,
            target,
            project_id,
            status,
            metadata,
        };
        (sanitized, walk.report)
    }
}

impl Patterns {
    fn is_secret_shaped(&self, value: &str) -> bool {
        (value.len() >= self.shapes_min_len && self.shapes.is_match(value))
            || (value.contains("://") && self.url_credentials.is_match(value))
            || has_secret_assignment(value)
    }

    fn field_rule_regex(&self, rule: FieldRule) -> &Regex {
        match rule {
            FieldRule::ChannelWord => &self.channel_word,
            FieldRule::Id => &self.id,
            FieldRule::Email => &self.email,
            FieldRule::Timestamp => &self.timestamp,
        }
    }
}

/// Whether an object key is secret-named (rule 2 of the module documentation).
pub fn is_secret_key_name(name: &str) -> bool {
    let mut secret_word = false;
    let joined = joined_words(name, |word| {
        secret_word |= SECRET_NAME_WORDS.contains(&word);
    });
    secret_word || contains_secret_part(joined.as_bytes())
}

/// Whether `joined` contains one of [`SECRET_NAME_PARTS`].
///
/// Keys are short, so a scan that tries the parts only at positions holding one of
/// their first letters beats a substring search per part (which sets up a searcher
/// for each of them on every call).
fn contains_secret_part(joined: &[u8]) -> bool {
    joined.iter().enumerate().any(|(at, byte)| {
        SECRET_PART_FIRST_BYTES[usize::from(*byte)]
            && SECRET_NAME_PARTS
                .iter()
                .any(|part| joined[at..].starts_with(part.as_bytes()))
    })
}

/// `true` at each byte that starts one of [`SECRET_NAME_PARTS`].
const SECRET_PART_FIRST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut index = 0;
    while index < SECRET_NAME_PARTS.len() {
        table[SECRET_NAME_PARTS[index].as_bytes()[0] as usize] = true;
        index += 1;
    }
    table
};

/// A query-string parameter name that is secret-named: by rule 2 or by the extra
/// query words (`sig`, `code`, `key` …).
fn is_secret_query_name(name: &str) -> bool {
    let mut secret_word = false;
    joined_words(name, |word| {
        secret_word |= SECRET_QUERY_WORDS.contains(&word);
    });
    secret_word || is_secret_key_name(name)
}

/// A diff field whose values must not be written (rule 4).
fn is_sensitive_diff_field(field: &str) -> bool {
    let mut environment = false;
    joined_words(field, |word| {
        environment |= ENVIRONMENT_VALUE_WORDS.contains(&word);
    });
    environment || is_secret_key_name(field)
}

/// Splits `name` into lowercase words, calls `on_word` with each, and returns the
/// words written together.
///
/// Words end at any character that is not alphanumeric and at camelCase boundaries:
/// before an upper-case letter that follows a lower-case letter or a digit
/// (`clientSecret`), and before the last capital of an acronym followed by a
/// lower-case letter (`APIKey` → `api`, `key`). Digits stay with their word (`oauth2`).
fn joined_words(name: &str, mut on_word: impl FnMut(&str)) -> String {
    let mut joined = String::with_capacity(name.len());
    let mut word_start = 0;
    let mut previous: Option<char> = None;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if !c.is_alphanumeric() {
            if joined.len() > word_start {
                on_word(&joined[word_start..]);
            }
            word_start = joined.len();
            previous = None;
            continue;
        }
        if c.is_uppercase() {
            let boundary = match previous {
                Some(p) if p.is_lowercase() || p.is_numeric() => true,
                Some(p) if p.is_uppercase() => chars.peek().is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && joined.len() > word_start {
                on_word(&joined[word_start..]);
                word_start = joined.len();
            }
        }
        joined.extend(c.to_lowercase());
        previous = Some(c);
    }
    if joined.len() > word_start {
        on_word(&joined[word_start..]);
    }
    joined
}

/// Whether `value` contains `name=value` or `name: value` with a secret-named name
/// (`password=hunter2`, `Authorization: Basic …`, `…?sig=…`).
fn has_secret_assignment(value: &str) -> bool {
    let bytes = value.as_bytes();
    for (at, &separator) in bytes.iter().enumerate() {
        if separator != b'=' && separator != b':' {
            continue;
        }
        // The value must be non-empty; `scheme://` is not an assignment.
        let rest = &bytes[at + 1..];
        if separator == b':' && rest.starts_with(b"//") {
            continue;
        }
        let has_value = rest
            .iter()
            .find(|&&b| !matches!(b, b' ' | b'\t' | b'"' | b'\''))
            .is_some_and(|&b| !matches!(b, b'&' | b';' | b',' | b'\n' | b'\r' | b'#'));
        if !has_value {
            continue;
        }
        // The name: identifier bytes right before the separator, past quotes and blanks.
        let mut end = at;
        while end > 0 && matches!(bytes[end - 1], b' ' | b'\t' | b'"' | b'\'') {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && is_name_byte(bytes[start - 1]) {
            start -= 1;
        }
        // Every secret-named word has at least three letters; this skips the names
        // in timestamps (`2026-05-01T10:`), times and ports without classifying them.
        if bytes[start..end]
            .iter()
            .filter(|b| b.is_ascii_alphabetic())
            .count()
            < 3
        {
            continue;
        }
        // Only ASCII bytes were stepped over, so both ends are char boundaries.
        let Some(name) = value.get(start..end) else {
            continue;
        };
        let in_query = start > 0 && matches!(bytes[start - 1], b'?' | b'&' | b';' | b'#');
        if is_secret_key_name(name) || (in_query && is_secret_query_name(name)) {
            return true;
        }
    }
    false
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    // A UTF-8 character is at most 4 bytes, so a boundary is at most 3 bytes back.
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// The state of sanitizing one event: its report and what is left of its budgets.
struct Walk<'a> {
    /// Patterns and limits.
    patterns: &'a Patterns,
    /// What was removed so far.
    report: SanitizeReport,
    /// Values that may still be written (`Limits::max_nodes`).
    nodes_left: usize,
    /// String bytes that may still be examined (`Limits::max_total_string_bytes`).
    string_bytes_left: usize,
}

impl<'a> Walk<'a> {
    fn new(patterns: &'a Patterns, kind: Option<&'static EventType>) -> Self {
        Self {
            patterns,
            report: SanitizeReport {
                catalog_event_type: kind.map(|kind| kind.name),
                ..SanitizeReport::default()
            },
            nodes_left: patterns.limits.max_nodes,
            string_bytes_left: patterns.limits.max_total_string_bytes,
        }
    }

    fn limits(&self) -> &Limits {
        &self.patterns.limits
    }

    fn redacted(&mut self) -> Value {
        self.report.redacted_values += 1;
        Value::String(REDACTED.to_owned())
    }

    fn truncated(&mut self) -> Value {
        self.report.redacted_values += 1;
        self.report.truncated_values += 1;
        Value::String(TRUNCATED.to_owned())
    }

    /// Spends one value of the node budget; `false` when it is used up.
    fn take_node(&mut self) -> bool {
        if self.nodes_left == 0 {
            return false;
        }
        self.nodes_left -= 1;
        true
    }

    /// Rule 1: the allowlist, then each allowed value by its rule.
    fn metadata(&mut self, kind: Option<&'static EventType>, metadata: &Value) -> Metadata {
        let Value::Object(input) = metadata else {
            self.report.non_object_metadata = true;
            self.report.dropped_keys += 1;
            return Metadata::new();
        };
        let Some(kind) = kind else {
            self.report.dropped_keys += input.len() as u64;
            return Metadata::new();
        };
        let mut output = Metadata::new();
        let mut present = 0;
        // Looking the few allowed keys up, rather than walking the input, keeps the cost
        // independent of how many keys a hostile row carries.
        for &key in kind.allowed_metadata_keys {
            let Some(value) = input.get(key) else {
                continue;
            };
            present += 1;
            let sanitized = if key == "diff" {
                self.diff(value)
            } else if let Some(rule) = field_rule(kind.name, key) {
                Some(self.strict(rule, value))
            } else {
                Some(self.value(value, 1))
            };
            if let Some(sanitized) = sanitized {
                output.push(key, sanitized);
            }
        }
        self.report.dropped_keys += (input.len() - present) as u64;
        output
    }

    /// Rules 2, 3 and 6 for any value at `depth`.
    fn value(&mut self, value: &Value, depth: usize) -> Value {
        if !self.take_node() {
            return self.truncated();
        }
        match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
            Value::String(text) => Value::String(self.string(text)),
            Value::Array(_) | Value::Object(_) if depth >= self.limits().max_depth => {
                self.truncated()
            }
            Value::Array(items) => Value::Array(self.array(items, depth)),
            Value::Object(map) => Value::Object(self.object(map, depth)),
        }
    }

    fn array(&mut self, items: &[Value], depth: usize) -> Vec<Value> {
        let limit = self.limits().max_container_len;
        let mut output = Vec::with_capacity(items.len().min(limit));
        for (index, item) in items.iter().enumerate() {
            if index >= limit || self.nodes_left == 0 {
                output.push(self.truncated());
                break;
            }
            output.push(self.value(item, depth + 1));
        }
        output
    }

    fn object(&mut self, map: &Map<String, Value>, depth: usize) -> Map<String, Value> {
        let limit = self.limits().max_container_len;
        let mut output = Map::new();
        for (index, (key, value)) in map.iter().enumerate() {
            if index >= limit || self.nodes_left == 0 {
                self.report.redacted_values += 1;
                self.report.truncated_values += 1;
                output.insert(TRUNCATED.to_owned(), Value::Bool(true));
                break;
            }
            if !self.key_allowed(key) {
                self.report.dropped_keys += 1;
                continue;
            }
            let value = self.value(value, depth + 1);
            output.insert(key.clone(), value);
        }
        output
    }

    fn key_allowed(&mut self, key: &str) -> bool {
        if key.len() > self.limits().max_key_bytes || key.len() > self.string_bytes_left {
            return false;
        }
        self.string_bytes_left -= key.len();
        !is_secret_key_name(key) && !self.patterns.is_secret_shaped(key)
    }

    /// Rules 3 and 6 for one string (metadata value or core field).
    fn string(&mut self, text: &str) -> String {
        let keep = self.limits().max_string_bytes.min(self.string_bytes_left);
        if keep == 0 && !text.is_empty() {
            self.truncated();
            return TRUNCATED.to_owned();
        }
        let window = &text[..floor_char_boundary(text, keep.saturating_add(SCAN_MARGIN))];
        self.string_bytes_left = self.string_bytes_left.saturating_sub(window.len());
        if self.patterns.is_secret_shaped(window) {
            self.report.redacted_values += 1;
            return REDACTED.to_owned();
        }
        if text.len() <= keep {
            return text.to_owned();
        }
        self.truncated();
        let cut = floor_char_boundary(text, keep);
        let mut output = String::with_capacity(cut + TRUNCATED.len());
        output.push_str(&text[..cut]);
        output.push_str(TRUNCATED);
        output
    }

    /// Rule 5: a field that must have one narrow shape.
    fn strict(&mut self, rule: FieldRule, value: &Value) -> Value {
        if !self.take_node() {
            return self.truncated();
        }
        let passes = match value {
            Value::Null => true,
            Value::Number(_) => matches!(rule, FieldRule::Id | FieldRule::Timestamp),
            Value::String(text) => {
                text.len() <= STRICT_FIELD_MAX_BYTES
                    && self.patterns.field_rule_regex(rule).is_match(text)
                    && !self.patterns.is_secret_shaped(text)
            }
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => false,
        };
        if passes {
            value.clone()
        } else {
            self.redacted()
        }
    }

    /// Rule 4: a list of `{field, op, from, to}`.
    fn diff(&mut self, value: &Value) -> Option<Value> {
        let Value::Array(entries) = value else {
            self.report.dropped_keys += 1;
            return None;
        };
        if !self.take_node() {
            return Some(self.truncated());
        }
        let limit = self.limits().max_container_len;
        let mut output = Vec::with_capacity(entries.len().min(limit));
        for (index, entry) in entries.iter().enumerate() {
            if index >= limit || !self.take_node() {
                output.push(self.truncated());
                break;
            }
            match entry {
                Value::Object(entry) => output.push(Value::Object(self.diff_entry(entry))),
                _ => self.report.dropped_keys += 1,
            }
        }
        Some(Value::Array(output))
    }

    fn diff_entry(&mut self, entry: &Map<String, Value>) -> Map<String, Value> {
        let marked = matches!(entry.get("sensitive"), Some(Value::Bool(true)));
        let secret_field = entry
            .get("field")
            .and_then(Value::as_str)
            .is_some_and(is_sensitive_diff_field);
        let marked_value = ["from", "to"]
            .iter()
            .any(|side| entry.get(*side).is_some_and(is_marked_sensitive));
        let sensitive = marked || secret_field || marked_value;

        let mut output = Map::new();
        // Looking the known keys up, rather than walking the entry, keeps a hostile
        // entry with many keys as cheap as a normal one.
        let mut recognised = 0;
        for key in DIFF_ENTRY_KEYS {
            let Some(value) = entry.get(*key) else {
                continue;
            };
            recognised += 1;
            if sensitive && matches!(*key, "from" | "to") {
                match self.fingerprint_only(value) {
                    Some(fingerprint) => {
                        output.insert((*key).to_owned(), fingerprint);
                    }
                    None => self.report.redacted_values += 1,
                }
            } else {
                let value = self.value(value, DIFF_VALUE_DEPTH);
                output.insert((*key).to_owned(), value);
            }
        }
        // The flag is re-derived below, so a producer's non-boolean one cannot slip through.
        if matches!(entry.get("sensitive"), Some(Value::Bool(_))) {
            recognised += 1;
        }
        self.report.dropped_keys += (entry.len() - recognised) as u64;
        if sensitive {
            output.insert("sensitive".to_owned(), Value::Bool(true));
        } else if let Some(Value::Bool(flag)) = entry.get("sensitive") {
            output.insert("sensitive".to_owned(), Value::Bool(*flag));
        }
        output
    }

    /// `{"sensitive": true, "fingerprint": "sha256:…"}` rebuilt from a producer's value
    /// of that form (other keys are not copied), or `None`.
    fn fingerprint_only(&mut self, value: &Value) -> Option<Value> {
        let Value::Object(map) = value else {
            return None;
        };
        if !is_marked_sensitive(value) {
            return None;
        }
        let fingerprint = map.get("fingerprint")?.as_str()?;
        if !self.patterns.fingerprint.is_match(fingerprint) {
            return None;
        }
        let mut output = Map::new();
        output.insert("sensitive".to_owned(), Value::Bool(true));
        output.insert(
            "fingerprint".to_owned(),
            Value::String(fingerprint.to_owned()),
        );
        Some(Value::Object(output))
    }
}

fn is_marked_sensitive(value: &Value) -> bool {
    matches!(value.get("sensitive"), Some(Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for shape in SECRET_SHAPES {
            assert!(Regex::new(shape).is_ok(), "{shape}");
        }
        // Building the sanitizer compiles the rest.
        let _ = Sanitizer::new();
    }

    #[test]
    fn strings_shorter_than_any_shape_skip_the_scan_and_the_shortest_is_still_caught() {
        let sanitizer = Sanitizer::new();
        let min = sanitizer.inner.shapes_min_len;
        // The shortest shape is a Slack token (`xox?-` and 10 more); the skip must not
        // be longer than that, and must be in effect.
        assert!((8..=15).contains(&min), "minimum shape length {min}");
        assert!(sanitizer.is_secret_shaped("xoxb-0123456789"));
        assert!(!sanitizer.is_secret_shaped("xoxb-012345678"));
        for shape in SECRET_SHAPES {
            assert!(minimum_len(shape) >= min, "{shape}");
        }
    }

    #[test]
    fn words_split_at_punctuation_and_camel_case() {
        let words = |name: &str| {
            let mut words = Vec::new();
            joined_words(name, |w| words.push(w.to_owned()));
            words
        };
        assert_eq!(words("clientSecret"), ["client", "secret"]);
        assert_eq!(words("X-Api-Key"), ["x", "api", "key"]);
        assert_eq!(words("APIKey"), ["api", "key"]);
        assert_eq!(words("set.cookie"), ["set", "cookie"]);
        assert_eq!(words("oauth2Token"), ["oauth2", "token"]);
        assert_eq!(words("__private__key__"), ["private", "key"]);
        assert_eq!(words("HTTPHeaders"), ["http", "headers"]);
        assert!(words("").is_empty());
    }

    #[test]
    fn floor_char_boundary_never_splits_a_character() {
        let text = "aé€😀";
        for at in 0..=text.len() + 2 {
            let cut = floor_char_boundary(text, at);
            assert!(text.is_char_boundary(cut));
            assert!(cut <= at);
        }
    }
}
