//! The sanitizer over arbitrary events (SPEC §4): it never panics, the encoded line is
//! exactly one valid JSON object terminated by `\n`, the output is deterministic, no
//! secret-named key survives at any depth, an unknown event type gets `{}`, and a
//! secret planted by this target (one of the fixed secret shapes, wrapped in
//! fuzzer-chosen text, at a fuzzer-chosen place: a core field, a metadata value at any
//! path, or an object key) never reaches the line.
#![cfg_attr(fuzzing, no_main)]

mod common;

#[allow(dead_code)]
#[path = "../../tests/sanitize_support/secrets.rs"]
mod secrets;

use arbitrary::{Result, Unstructured};
use compartment_auditd::event::{encode_line, lookup, AuditEvent};
use compartment_auditd::sanitize::{is_secret_key_name, Sanitizer};
#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::sync::OnceLock;

fn sanitizer() -> &'static Sanitizer {
    static SANITIZER: OnceLock<Sanitizer> = OnceLock::new();
    SANITIZER.get_or_init(Sanitizer::new)
}

/// Where a planted secret goes.
#[derive(Debug)]
enum Place {
    /// One of the core string fields, by index.
    Core(u8),
    /// A metadata value at the end of `path`.
    Value(Vec<Step>),
    /// An object key at the end of `path`.
    Key(Vec<Step>),
}

/// One step into the metadata tree.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(u8),
}

/// Text around a planted secret. The separator keeps the shape a shape: a JWT glued
/// to a preceding letter (`xeyJ…`) is, by the sanitizer's documented word-boundary
/// rule, not a JWT.
const SEPARATORS: &[&str] = &[
    " ", "\n", "\t", ", ", "; ", "(", ")", "\"", "'", "<", ">", " | ",
];

struct Plant {
    value: String,
    fragment: String,
    name: &'static str,
    place: Place,
}

fn plant(u: &mut Unstructured, event_type: &str) -> Result<Plant> {
    let seed = u.int_in_range(0..=61usize)?;
    let samples = secrets::secret_samples(seed);
    let sample = u.choose(&samples)?.clone();
    let mut value = String::new();
    if u.arbitrary()? {
        value.push_str(&common::string(u)?);
        value.push_str(u.choose(SEPARATORS)?);
    }
    value.push_str(&sample.value);
    if u.arbitrary()? {
        value.push_str(u.choose(SEPARATORS)?);
        value.push_str(&common::string(u)?);
    }
    let allowed = compartment_auditd::event::allowed_metadata_keys(event_type).unwrap_or(&[]);
    let mut path = Vec::new();
    let steps = u.int_in_range(0..=5)?;
    for depth in 0..steps {
        if depth > 0 && u.ratio(1, 3)? {
            path.push(Step::Index(u.arbitrary()?));
        } else {
            path.push(Step::Key(common::key(u, allowed)?));
        }
    }
    let place = match u.int_in_range(0..=5)? {
        0 => Place::Core(u.arbitrary()?),
        1 => Place::Key(path),
        _ => Place::Value(path),
    };
    Ok(Plant {
        value,
        fragment: sample.fragment,
        name: sample.name,
        place,
    })
}

/// Walks (and builds) `path` in `root` and returns the value at its end.
fn walk<'v>(root: &'v mut Value, path: &[Step]) -> &'v mut Value {
    let mut at = root;
    for step in path {
        at = match step {
            Step::Key(key) => {
                if !at.is_object() {
                    *at = Value::Object(Map::new());
                }
                let Value::Object(map) = at else {
                    unreachable!("made an object just above")
                };
                map.entry(key.clone()).or_insert(Value::Null)
            }
            Step::Index(index) => {
                if !at.is_array() {
                    *at = Value::Array(Vec::new());
                }
                let Value::Array(items) = at else {
                    unreachable!("made an array just above")
                };
                if items.is_empty() {
                    items.push(Value::Null);
                }
                let index = usize::from(*index) % items.len();
                &mut items[index]
            }
        };
    }
    at
}

fn apply(event: &mut AuditEvent, plant: &Plant) {
    match &plant.place {
        Place::Core(index) => {
            let field = match index % 9 {
                0 => &mut event.organization,
                1 => &mut event.event_type,
                2 => &mut event.actor_type,
                3 => &mut event.actor_id,
                4 => event.actor_email.get_or_insert_with(String::new),
                5 => event.target_type.get_or_insert_with(String::new),
                6 => event.target_id.get_or_insert_with(String::new),
                7 => event.project_id.get_or_insert_with(String::new),
                _ => &mut event.status,
            };
            *field = plant.value.clone();
        }
        Place::Value(path) => *walk(&mut event.metadata, path) = Value::from(plant.value.clone()),
        Place::Key(path) => {
            let at = walk(&mut event.metadata, path);
            if !at.is_object() {
                *at = Value::Object(Map::new());
            }
            if let Value::Object(map) = at {
                map.insert(plant.value.clone(), Value::from("x"));
            }
        }
    }
}

/// Every string the fuzzer itself wrote into the event, so that a fragment it built on
/// its own (comparison tracing can teach it one) is not mistaken for a leak.
fn fuzzer_text(event: &AuditEvent) -> String {
    let mut text = serde_json::to_string(&event.metadata).unwrap_or_default();
    for field in [
        Some(&event.organization),
        Some(&event.event_type),
        Some(&event.actor_type),
        Some(&event.actor_id),
        event.actor_email.as_ref(),
        event.target_type.as_ref(),
        event.target_id.as_ref(),
        event.project_id.as_ref(),
        Some(&event.status),
    ]
    .into_iter()
    .flatten()
    {
        text.push('\n');
        text.push_str(field);
    }
    text
}

fn line_of(event: &AuditEvent) -> Vec<u8> {
    let (sanitized, _report) = sanitizer().sanitize_event(event);
    let mut line = Vec::new();
    encode_line(&sanitized, &mut line);
    line
}

fn check(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut event = common::event(&mut u)?;
    let plant = if u.ratio(3, 4)? {
        Some(plant(&mut u, &event.event_type.clone())?)
    } else {
        None
    };
    let mut unplanted_text = fuzzer_text(&event);
    if let Some(plant) = &plant {
        // The wrapping text is the fuzzer's too.
        unplanted_text.push('\n');
        unplanted_text.push_str(&plant.value.replace(&plant.fragment, "\u{0}"));
        apply(&mut event, plant);
    }

    let line = line_of(&event);
    assert_eq!(
        line.last(),
        Some(&b'\n'),
        "the line is not newline-terminated"
    );
    assert_eq!(
        line.iter().filter(|b| **b == b'\n').count(),
        1,
        "the encoding holds a raw newline besides the terminator"
    );
    let text = std::str::from_utf8(&line).expect("the line is UTF-8");
    let parsed: Value = serde_json::from_str(text).expect("the line is valid JSON");
    let object = parsed.as_object().expect("the line is a JSON object");
    assert_eq!(object.get("id").and_then(Value::as_i64), Some(event.id));
    let metadata = object
        .get("metadata")
        .and_then(Value::as_object)
        .expect("metadata is an object");
    if lookup(&event.event_type).is_none() {
        assert!(metadata.is_empty(), "an unknown event type kept metadata");
    }
    let metadata = Value::Object(metadata.clone());
    if let Some(key) = common::find_key(&metadata, &is_secret_key_name) {
        panic!("a secret-named key survived: {key:?}");
    }
    assert_eq!(line, line_of(&event), "sanitizing is not deterministic");

    if let Some(plant) = &plant {
        if !secrets::leaks(&unplanted_text, &plant.fragment) {
            assert!(
                !secrets::leaks(text, &plant.fragment),
                "planted secret ({}) leaked at {:?}: {text}",
                plant.name,
                plant.place
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
});
