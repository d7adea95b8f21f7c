//! Shared input builders for the fuzz targets: audit events with hostile metadata,
//! drawn from the fuzzer's bytes through `arbitrary::Unstructured`.
//!
//! The builders favour what the sanitizer cares about (catalog event types, allowed
//! and secret-named keys, diff entries, deep, long and wide values) but every choice
//! also has an arbitrary fallback, so the fuzzer is never confined to the hand-picked
//! shapes.
#![allow(dead_code)]

use arbitrary::{Result, Unstructured};
use chrono::{DateTime, Utc};
use compartment_auditd::event::{AuditEvent, CATALOG};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

/// Nesting the tree builder produces on its own (the "deep" node goes further).
const MAX_TREE_DEPTH: usize = 6;
/// Entries per generated container (the "wide" node goes further).
const MAX_CONTAINER: usize = 6;

/// Key names written like secrets in several spellings (rule 2 of the sanitizer).
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "clientSecret",
    "client_secret",
    "X-Api-Key",
    "apiKey",
    "private_key",
    "Set-Cookie",
    "authorization",
    "token",
    "access_token",
    "webhook_secret",
    "headers",
    "payload",
    "env",
    "env_file",
    "dotenv",
    "sessionId",
    "ciphertext",
    "plaintext",
    "credentials",
    "PASSWD",
    "jwt",
];

/// Keys of a diff entry, and the marker keys of sensitive values.
pub const DIFF_KEYS: &[&str] = &["field", "op", "from", "to", "sensitive", "fingerprint"];

/// Strings that steer into specific sanitizer rules.
const INTERESTING_STRINGS: &[&str] = &[
    "",
    "[REDACTED]",
    "[TRUNCATED]",
    "https://github.com/acme/api.git",
    "git@github.com:acme/api.git",
    "ssh://git@github.com/acme/api.git",
    "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "sha256:LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=",
    "2026-05-12T09:14:03.120Z",
    "email",
    "console",
    "usr_01HV6Y",
    "ops@example.com",
    "environment_variables",
    "DATABASE_URL",
    "update",
    "connect",
    "sync_auto_adoption",
    "-----BEGIN CERTIFICATE-----",
    "eyJ",
    "Bearer ",
    "password=",
    "?sig=",
    "://",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "\u{202e}",
    "\u{10ffff}",
];

/// A string: arbitrary text, an interesting one, or a few of them glued together.
pub fn string(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 | 1 => u.arbitrary::<String>()?,
        2 => (*u.choose(INTERESTING_STRINGS)?).to_owned(),
        3 => {
            let parts = u.int_in_range(1..=4)?;
            let mut out = String::new();
            for _ in 0..parts {
                if u.ratio(1, 2)? {
                    out.push_str(u.choose(INTERESTING_STRINGS)?);
                } else {
                    out.push_str(&u.arbitrary::<String>()?);
                }
            }
            out
        }
        4 => {
            // Long: past max_string_bytes (8 KiB) and the scan margin, sometimes.
            let unit = u.arbitrary::<String>()?;
            let unit = if unit.is_empty() {
                "a".to_owned()
            } else {
                unit
            };
            let times = u.int_in_range(1..=20_000usize)? / unit.len().max(1);
            unit.repeat(times.max(1))
        }
        _ => {
            let len = u.int_in_range(0..=64)?;
            (0..len)
                .map(|_| u.int_in_range(0x20u8..=0x7e).map(char::from))
                .collect::<Result<String>>()?
        }
    })
}

/// Every key some catalog entry allows, in no particular order.
fn any_allowed_key(u: &mut Unstructured) -> Result<&'static str> {
    let entry = u.choose(CATALOG)?;
    if entry.allowed_metadata_keys.is_empty() {
        return Ok("changed_fields");
    }
    Ok(*u.choose(entry.allowed_metadata_keys)?)
}

/// An object key: allowed for `allowed`, allowed somewhere, secret-named, a diff key,
/// or arbitrary.
pub fn key(u: &mut Unstructured, allowed: &[&'static str]) -> Result<String> {
    Ok(match u.int_in_range(0..=6)? {
        0 | 1 if !allowed.is_empty() => (*u.choose(allowed)?).to_owned(),
        0..=2 => any_allowed_key(u)?.to_owned(),
        3 => (*u.choose(SECRET_KEYS)?).to_owned(),
        4 => (*u.choose(DIFF_KEYS)?).to_owned(),
        _ => string(u)?,
    })
}

/// A JSON number, including extreme ones.
fn number(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=2)? {
        0 => Value::from(u.arbitrary::<i64>()?),
        1 => Value::from(u.arbitrary::<u64>()?),
        _ => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
    })
}

/// A JSON value tree with keys biased towards `allowed`.
pub fn value(u: &mut Unstructured, allowed: &[&'static str], depth: usize) -> Result<Value> {
    let top = if depth >= MAX_TREE_DEPTH { 4 } else { 9 };
    Ok(match u.int_in_range(0..=top)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 | 4 => Value::String(string(u)?),
        5 => {
            let len = u.int_in_range(0..=MAX_CONTAINER)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(value(u, allowed, depth + 1)?);
            }
            Value::Array(items)
        }
        6 | 7 => {
            let len = u.int_in_range(0..=MAX_CONTAINER)?;
            let mut map = Map::new();
            for _ in 0..len {
                let k = key(u, allowed)?;
                let v = value(u, allowed, depth + 1)?;
                map.insert(k, v);
            }
            Value::Object(map)
        }
        8 => diff(u)?,
        _ => match u.int_in_range(0..=1)? {
            // Deep: past max_depth (32), sometimes far past it.
            0 => {
                let levels = u.int_in_range(1..=600usize)?;
                let mut inner = value(u, allowed, MAX_TREE_DEPTH)?;
                let as_object = u.arbitrary::<bool>()?;
                for _ in 0..levels {
                    inner = if as_object {
                        let mut map = Map::new();
                        map.insert("k".to_owned(), inner);
                        Value::Object(map)
                    } else {
                        Value::Array(vec![inner])
                    };
                }
                inner
            }
            // Wide: past max_container_len (1024), sometimes.
            _ => {
                // A small element: the point is the count, not the bytes.
                let element = if u.arbitrary::<bool>()? {
                    number(u)?
                } else {
                    Value::from(u.arbitrary::<char>()?.to_string())
                };
                let count = u.int_in_range(0..=3000usize)?;
                if u.arbitrary::<bool>()? {
                    Value::Array(vec![element; count])
                } else {
                    Value::Object(
                        (0..count)
                            .map(|i| (format!("k{i}"), element.clone()))
                            .collect(),
                    )
                }
            }
        },
    })
}

/// A `diff` list of `{field, op, from, to, …}` entries (rule 4).
fn diff(u: &mut Unstructured) -> Result<Value> {
    let len = u.int_in_range(0..=4)?;
    let mut entries = Vec::with_capacity(len);
    for _ in 0..len {
        let mut entry = Map::new();
        for name in DIFF_KEYS {
            if u.ratio(2, 3)? {
                let v = match *name {
                    "sensitive" => Value::Bool(u.arbitrary()?),
                    "field" if u.ratio(1, 2)? => {
                        Value::from(*u.choose(&["env.API_KEY", "variables", "branch", "token"])?)
                    }
                    _ => value(u, &[], MAX_TREE_DEPTH - 1)?,
                };
                entry.insert((*name).to_owned(), v);
            }
        }
        entries.push(Value::Object(entry));
    }
    Ok(Value::Array(entries))
}

/// An event type: mostly from the catalog, sometimes arbitrary.
pub fn event_type(u: &mut Unstructured) -> Result<String> {
    if u.ratio(5, 6)? {
        Ok(u.choose(CATALOG)?.name.to_owned())
    } else {
        string(u)
    }
}

/// Metadata: an object of (mostly) allowed keys, any JSON value, or text parsed as JSON.
pub fn metadata(u: &mut Unstructured, event_type: &str) -> Result<Value> {
    let allowed = compartment_auditd::event::allowed_metadata_keys(event_type).unwrap_or(&[]);
    Ok(match u.int_in_range(0..=5)? {
        0..=3 => {
            let len = u.int_in_range(0..=8)?;
            let mut map = Map::new();
            for _ in 0..len {
                let k = key(u, allowed)?;
                let v = value(u, allowed, 1)?;
                map.insert(k, v);
            }
            Value::Object(map)
        }
        4 => value(u, allowed, 0)?,
        _ => {
            let text = u.arbitrary::<&str>()?;
            serde_json::from_str(text).unwrap_or(Value::Null)
        }
    })
}

fn optional_string(u: &mut Unstructured) -> Result<Option<String>> {
    if u.arbitrary()? {
        Ok(Some(string(u)?))
    } else {
        Ok(None)
    }
}

/// A whole event with hostile core fields and metadata.
pub fn event(u: &mut Unstructured) -> Result<AuditEvent> {
    let event_type = event_type(u)?;
    let metadata = metadata(u, &event_type)?;
    let secs = u.int_in_range(-62_135_596_800i64..=253_402_300_799)?;
    let nanos = u.int_in_range(0..=1_999_999_999u32)?;
    let occurred_at: DateTime<Utc> =
        DateTime::from_timestamp(secs, nanos).unwrap_or(DateTime::UNIX_EPOCH);
    Ok(AuditEvent {
        id: u.arbitrary()?,
        occurred_at,
        organization_id: Uuid::from_bytes(u.arbitrary()?),
        organization: string(u)?,
        event_type,
        actor_type: string(u)?,
        actor_id: string(u)?,
        actor_email: optional_string(u)?,
        target_type: optional_string(u)?,
        target_id: optional_string(u)?,
        project_id: optional_string(u)?,
        status: string(u)?,
        metadata,
    })
}

/// Whether any object key at any depth of `value` satisfies `bad`.
pub fn find_key<'v>(value: &'v Value, bad: &impl Fn(&str) -> bool) -> Option<&'v str> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if bad(k) {
                Some(k.as_str())
            } else {
                find_key(v, bad)
            }
        }),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, bad)),
        _ => None,
    }
}
