//! `json`/`jsonb` columns read with a bound on nesting.
//!
//! tokio-postgres parses JSON columns with serde_json, which refuses values nested
//! more than 128 levels. PostgreSQL stores far deeper ones (10,000 levels are fine for
//! `jsonb`), so a single such `audit_events.metadata` would fail every read of the
//! batch holding it: the mirror would retry that batch forever and the API would fail
//! every page that includes the row. [`BoundedJson`] reads the column's text instead
//! and replaces every container nested deeper than [`MAX_NESTING`] by
//! `"[TRUNCATED]"` before parsing, without recursion, so no depth can stop a read or
//! overflow a stack. The sanitizer cuts containers at a far smaller depth anyway, so
//! the cut never changes what is written.

use std::borrow::Cow;
use std::error::Error;

use serde_json::Value;
use tokio_postgres::types::{FromSql, Type};

use crate::sanitize::TRUNCATED;

/// Containers nested deeper than this are replaced by `"[TRUNCATED]"` before parsing:
/// below serde_json's own limit of 128, above the sanitizer's default `max_depth` (32).
pub const MAX_NESTING: usize = 100;

/// The `jsonb` binary format version this reader understands (PostgreSQL has only one).
const JSONB_VERSION: u8 = 1;

/// A `json` or `jsonb` column value, parsed with nesting bounded by [`MAX_NESTING`].
///
/// SQL `NULL` reads as JSON `null`: a producer's schema may allow it, and the sanitizer
/// turns any metadata that is not an object into `{}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundedJson(pub Value);

impl<'a> FromSql<'a> for BoundedJson {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((&JSONB_VERSION, text)) => text,
                Some((version, _)) => {
                    return Err(format!("unsupported jsonb format version {version}").into())
                }
                None => return Err("an empty jsonb value".into()),
            }
        } else {
            raw
        };
        let text = std::str::from_utf8(text)?;
        Ok(BoundedJson(parse_bounded(text)?))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(BoundedJson(Value::Null))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

/// Parses JSON text, replacing containers nested deeper than [`MAX_NESTING`] by
/// `"[TRUNCATED]"`.
pub fn parse_bounded(text: &str) -> Result<Value, serde_json::Error> {
    // Nesting deeper than the bound needs more opening brackets than the bound; counting
    // them (vectorised) is far cheaper than `cut_deep`'s walk, and almost every value
    // has few.
    let openings = text
        .as_bytes()
        .iter()
        .filter(|&&b| b == b'[' || b == b'{')
        .count();
    if openings <= MAX_NESTING {
        return serde_json::from_str(text);
    }
    serde_json::from_str(&cut_deep(text, MAX_NESTING))
}

/// `text` with every container at nesting level `max_nesting + 1` or deeper replaced
/// by the string `"[TRUNCATED]"`. Borrowed when nothing is that deep.
///
/// One pass over the bytes, no recursion. Only `"`, `\`, brackets and braces matter,
/// all ASCII, so every cut falls on a character boundary. Text that is not valid JSON
/// stays invalid and fails to parse afterwards.
fn cut_deep(text: &str, max_nesting: usize) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied_up_to = 0;
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at = end_of_string(bytes, at);
                continue;
            }
            b'[' | b'{' if depth == max_nesting => {
                let end = end_of_container(bytes, at);
                let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                out.push_str(&text[copied_up_to..at]);
                out.push('"');
                out.push_str(TRUNCATED);
                out.push('"');
                copied_up_to = end;
                at = end;
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    match out {
        Some(mut out) => {
            out.push_str(&text[copied_up_to..]);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(text),
    }
}

/// Index just past the string that starts with the `"` at `start` (or the end of the
/// text when it is unterminated).
fn end_of_string(bytes: &[u8], start: usize) -> usize {
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// Index just past the container that opens at `start` (or the end of the text when it
/// is unbalanced).
fn end_of_container(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut at = start;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at = end_of_string(bytes, at);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return at + 1;
                }
            }
            _ => {}
        }
        at += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested_arrays(levels: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(levels), "]".repeat(levels))
    }

    /// Nesting depth of a value, counting containers.
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn shallow_text_is_parsed_unchanged_and_not_copied() {
        let text = r#"{"a": [1, {"b": "[{\"]"}], "c": "}}}"}"#;
        assert!(matches!(cut_deep(text, MAX_NESTING), Cow::Borrowed(_)));
        assert_eq!(
            parse_bounded(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn containers_past_the_bound_become_the_marker() {
        let text = format!(
            r#"{{"keep": 1, "deep": {}, "after": "x"}}"#,
            nested_arrays(10_000, "7")
        );
        let value = parse_bounded(&text).unwrap();
        assert_eq!(value["keep"], 1);
        assert_eq!(value["after"], "x");
        assert_eq!(depth(&value), MAX_NESTING);
        let mut at = &value["deep"];
        for _ in 0..MAX_NESTING - 1 {
            at = &at[0];
        }
        assert_eq!(at, &json!(TRUNCATED));
    }

    #[test]
    fn exactly_the_bound_is_kept() {
        let text = nested_arrays(MAX_NESTING, "1");
        assert!(matches!(cut_deep(&text, MAX_NESTING), Cow::Borrowed(_)));
        assert_eq!(depth(&parse_bounded(&text).unwrap()), MAX_NESTING);
        let one_more = nested_arrays(MAX_NESTING + 1, "1");
        assert_eq!(depth(&parse_bounded(&one_more).unwrap()), MAX_NESTING);
    }

    #[test]
    fn brackets_and_escaped_quotes_inside_strings_do_not_count() {
        let inner = r#"{"s": "\"[[[[{{{{\\", "t": "]]]]"}"#;
        let text = nested_arrays(MAX_NESTING - 1, inner);
        let value = parse_bounded(&text).unwrap();
        let mut at = &value;
        for _ in 0..MAX_NESTING - 1 {
            at = &at[0];
        }
        assert_eq!(at["s"], "\"[[[[{{{{\\");
        assert_eq!(at["t"], "]]]]");
    }

    #[test]
    fn a_million_levels_neither_recurse_nor_fail() {
        let text = format!("{{\"k\": {}}}", nested_arrays(1_000_000, ""));
        assert_eq!(depth(&parse_bounded(&text).unwrap()), MAX_NESTING);
    }

    #[test]
    fn many_shallow_containers_take_the_walk_and_parse_the_same() {
        // More openings than the bound, none deep: the counting shortcut does not
        // apply, and the walk must change nothing.
        let text = format!("[{}]", vec![r#"{"a": [1]}"#; 3 * MAX_NESTING].join(", "));
        assert!(matches!(cut_deep(&text, MAX_NESTING), Cow::Borrowed(_)));
        assert_eq!(
            parse_bounded(&text).unwrap(),
            serde_json::from_str::<Value>(&text).unwrap()
        );
    }

    #[test]
    fn invalid_json_stays_an_error() {
        for text in ["", "{", "[1,", "{\"a\": }", &nested_arrays(200, "")[..350]] {
            assert!(parse_bounded(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn jsonb_and_json_wire_formats_and_null() {
        let mut jsonb = vec![JSONB_VERSION];
        jsonb.extend_from_slice(br#"{"a": 1}"#);
        assert_eq!(
            BoundedJson::from_sql(&Type::JSONB, &jsonb).unwrap().0,
            json!({"a": 1})
        );
        assert_eq!(
            BoundedJson::from_sql(&Type::JSON, br#"[true]"#).unwrap().0,
            json!([true])
        );
        assert!(BoundedJson::from_sql(&Type::JSONB, &[2, b'1']).is_err());
        assert!(BoundedJson::from_sql(&Type::JSONB, &[]).is_err());
        assert_eq!(
            BoundedJson::from_sql_null(&Type::JSONB).unwrap().0,
            Value::Null
        );
        assert!(BoundedJson::accepts(&Type::JSONB) && !BoundedJson::accepts(&Type::TEXT));
    }
}
