//! Property tests of the sanitizer over random JSON metadata: it never panics, every
//! output is one valid JSON line, it is deterministic, no secret-named key survives,
//! and a planted secret never reaches the encoded line.

#[path = "sanitize_support/secrets.rs"]
mod secrets;

use chrono::{DateTime, Utc};
use compartment_auditd::event::{allowed_metadata_keys, encode_line, AuditEvent, CATALOG};
use compartment_auditd::sanitize::{is_secret_key_name, Sanitizer, TRUNCATED};
use proptest::prelude::*;
use proptest::test_runner::Config;
use secrets::{leaks, secret_samples};
use serde_json::{Map, Value};
use std::sync::OnceLock;
use uuid::Uuid;

/// Keys that exercise every rule: allowed ones, secret-named ones in several
/// spellings, diff-entry keys, and arbitrary text.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(all_allowed_keys()).prop_map(str::to_owned),
        2 => prop::sample::select(SECRET_KEYS).prop_map(str::to_owned),
        1 => prop::sample::select(&["field", "op", "from", "to", "sensitive", "fingerprint"][..])
            .prop_map(str::to_owned),
        2 => "[a-zA-Z_.-]{0,12}",
        1 => any::<String>(),
    ]
}

const SECRET_KEYS: &[&str] = &[
    "password",
    "clientSecret",
    "X-Api-Key",
    "private_key",
    "Set-Cookie",
    "authorization",
    "token",
    "webhook_secret",
    "headers",
    "payload",
    "env_file",
    "sessionId",
    "ciphertext",
    "credentials",
];

fn all_allowed_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = CATALOG
        .iter()
        .flat_map(|entry| entry.allowed_metadata_keys.iter().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => prop::sample::select(CATALOG).prop_map(|entry| entry.name.to_owned()),
        1 => prop::sample::select(&["organization.unknown.thing", "", "x"][..]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("https://github.com/acme/api.git?ref=main")),
        Just(Value::from(
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        )),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// One sanitizer for all cases: compiling its patterns dominates a debug-build case.
fn sanitizer() -> &'static Sanitizer {
    static SANITIZER: OnceLock<Sanitizer> = OnceLock::new();
    SANITIZER.get_or_init(Sanitizer::new)
}

fn raw_event(event_type: String, metadata: Value) -> AuditEvent {
    AuditEvent {
        id: 99,
        occurred_at: DateTime::<Utc>::from_timestamp(1_778_577_243, 0).expect("in range"),
        organization_id: Uuid::from_u128(42),
        organization: "acme-dev".into(),
        event_type,
        actor_type: "user".into(),
        actor_id: "usr_1".into(),
        actor_email: Some("ops@example.com".into()),
        target_type: Some("git_source".into()),
        target_id: Some("gs_1".into()),
        project_id: None,
        status: "failed".into(),
        metadata,
    }
}

fn encode(sanitizer: &Sanitizer, raw: &AuditEvent) -> Vec<u8> {
    let (sanitized, _) = sanitizer.sanitize_event(raw);
    let mut line = Vec::new();
    encode_line(&sanitized, &mut line);
    line
}

/// Every key below `metadata`'s top level (the top level is the allowlist's business).
fn nested_keys<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| nested_keys(item, out)),
        Value::Object(map) => {
            for (key, value) in map {
                out.push(key);
                nested_keys(value, out);
            }
        }
        _ => {}
    }
}

/// One step of the path from a top-level key down to a planted secret.
#[derive(Debug, Clone)]
enum Step {
    /// Into an object under this key, next to random siblings.
    Key(String, Map<String, Value>),
    /// Into an array at this position, after random items.
    Index(Vec<Value>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (key(), prop::collection::btree_map(key(), scalar(), 0..3))
            .prop_map(|(key, siblings)| Step::Key(key, siblings.into_iter().collect())),
        prop::collection::vec(scalar(), 0..3).prop_map(Step::Index),
    ]
}

/// Where in the event the secret goes.
#[derive(Debug, Clone)]
enum Place {
    /// As a value at the end of the path.
    Value,
    /// As an object key at the end of the path.
    Key,
    /// In a core field instead of the metadata.
    ActorId,
    ActorEmail,
    TargetId,
    ProjectId,
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        6 => Just(Place::Value),
        2 => Just(Place::Key),
        1 => Just(Place::ActorId),
        1 => Just(Place::ActorEmail),
        1 => Just(Place::TargetId),
        1 => Just(Place::ProjectId),
    ]
}

/// The top-level key a secret is planted under.
#[derive(Debug, Clone)]
enum TopKey {
    /// One of the event type's allowed keys (the interesting case).
    Allowed(prop::sample::Index),
    /// Any other key: secret-named or random.
    Other(String),
}

/// One of `event_type`'s allowed keys, if it is in the catalog.
fn allowed_key(event_type: &str, index: prop::sample::Index) -> Option<&'static str> {
    allowed_metadata_keys(event_type).map(|keys| *index.get(keys))
}

fn wrap(path: &[Step], leaf: Value) -> Value {
    path.iter().rev().fold(leaf, |inner, step| match step {
        Step::Key(key, siblings) => {
            let mut map = siblings.clone();
            map.insert(key.clone(), inner);
            Value::Object(map)
        }
        Step::Index(before) => {
            let mut items = before.clone();
            items.push(inner);
            Value::Array(items)
        }
    })
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn any_metadata_gives_one_valid_deterministic_line(
        event_type in event_type(),
        allowed in prop::collection::vec((any::<prop::sample::Index>(), json()), 0..6),
        extra in prop::collection::btree_map(key(), json(), 0..4),
        non_object in prop::option::weighted(0.2, json()),
    ) {
        let metadata = match non_object {
            Some(value) => value,
            None => {
                let mut map: Map<String, Value> = extra.into_iter().collect();
                for (index, value) in allowed {
                    if let Some(key) = allowed_key(&event_type, index) {
                        map.insert(key.to_owned(), value);
                    }
                }
                Value::Object(map)
            }
        };
        let sanitizer = sanitizer();
        let raw = raw_event(event_type, metadata);
        let line = encode(sanitizer, &raw);

        prop_assert_eq!(line.last(), Some(&b'\n'));
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let parsed: Value = serde_json::from_slice(&line).expect("one valid JSON object");
        let output = parsed["metadata"].as_object().expect("metadata is an object");
        let mut keys = Vec::new();
        for value in output.values() {
            nested_keys(value, &mut keys);
        }
        for key in keys {
            prop_assert!(key == TRUNCATED || !is_secret_key_name(key), "{} kept", key);
        }
        prop_assert_eq!(encode(sanitizer, &raw), line.clone());
        prop_assert_eq!(encode(&sanitizer.clone(), &raw), line);
    }

    #[test]
    fn a_planted_secret_never_reaches_the_line(
        event_type in event_type(),
        base in prop::collection::btree_map(key(), json(), 0..5),
        top_key in prop_oneof![
            4 => any::<prop::sample::Index>().prop_map(TopKey::Allowed),
            1 => prop::sample::select(SECRET_KEYS).prop_map(|key| TopKey::Other(key.to_owned())),
            1 => key().prop_map(TopKey::Other),
        ],
        path in prop::collection::vec(step(), 0..6),
        place in place(),
        sample_index in any::<prop::sample::Index>(),
        seed in 0usize..1000,
        prefix in prop_oneof![Just(String::new()), "[a-z]{1,8} "],
        suffix in prop_oneof![Just(String::new()), " [a-z]{1,8}"],
    ) {
        let samples = secret_samples(seed);
        let sample = sample_index.get(&samples);
        let secret = format!("{prefix}{}{suffix}", sample.value);

        let top_key = match top_key {
            TopKey::Allowed(index) => allowed_key(&event_type, index).unwrap_or("reason").to_owned(),
            TopKey::Other(key) => key,
        };
        let mut metadata: Map<String, Value> = base.into_iter().collect();
        let mut raw = raw_event(event_type, Value::Null);
        match place {
            Place::Value => {
                metadata.insert(top_key, wrap(&path, Value::String(secret)));
            }
            Place::Key => {
                let mut holder = Map::new();
                holder.insert(secret, Value::Bool(true));
                metadata.insert(top_key, wrap(&path, Value::Object(holder)));
            }
            Place::ActorId => raw.actor_id = secret,
            Place::ActorEmail => raw.actor_email = Some(secret),
            Place::TargetId => raw.target_id = Some(secret),
            Place::ProjectId => raw.project_id = Some(secret),
        }
        raw.metadata = Value::Object(metadata);

        let line = String::from_utf8(encode(sanitizer(), &raw)).expect("utf-8");
        prop_assert!(!leaks(&line, &sample.fragment), "{} leaked: {}", sample.name, line);
    }
}
