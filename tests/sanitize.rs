//! The sanitizer's rules (SPEC §4; `src/sanitize.rs` module documentation).

#[path = "sanitize_support/secrets.rs"]
mod secrets;

use chrono::{DateTime, Utc};
use compartment_auditd::event::{encode_line, AuditEvent, CATALOG, UNKNOWN_EVENT_TYPE};
use compartment_auditd::sanitize::{
    is_secret_key_name, Limits, SanitizeReport, Sanitizer, REDACTED, TRUNCATED,
};
use secrets::{leaks, secret_samples};
use serde_json::{json, Value};
use std::sync::OnceLock;
use uuid::Uuid;

fn event(event_type: &str, metadata: Value) -> AuditEvent {
    AuditEvent {
        id: 7,
        occurred_at: DateTime::<Utc>::from_timestamp(1_778_577_243, 120_000_000).expect("in range"),
        organization_id: Uuid::from_u128(0x8f0c_6f7e_3c1a_4b7e_9d2a_5e6f_7a8b_9c0d),
        organization: "acme-dev".into(),
        event_type: event_type.into(),
        actor_type: "user".into(),
        actor_id: "usr_01HZX3".into(),
        actor_email: Some("ops@example.com".into()),
        target_type: Some("user".into()),
        target_id: Some("usr_01HZX4".into()),
        project_id: None,
        status: "succeeded".into(),
        metadata,
    }
}

/// Sanitizes and encodes; returns the line (with its newline), its parsed metadata
/// and the report.
fn run_with(sanitizer: &Sanitizer, raw: &AuditEvent) -> (String, Value, SanitizeReport) {
    let (sanitized, report) = sanitizer.sanitize_event(raw);
    let mut line = Vec::new();
    encode_line(&sanitized, &mut line);
    let line = String::from_utf8(line).expect("utf-8");
    let parsed: Value = serde_json::from_str(line.trim_end_matches('\n')).expect("valid JSON");
    assert_eq!(parsed["metadata"], sanitized.metadata.to_json());
    (line, parsed["metadata"].clone(), report)
}

/// Runs with the default sanitizer, compiled once for the whole file (compiling the
/// patterns is most of a debug-build test's time).
fn run(event_type: &str, metadata: Value) -> (String, Value, SanitizeReport) {
    static DEFAULT: OnceLock<Sanitizer> = OnceLock::new();
    run_with(
        DEFAULT.get_or_init(Sanitizer::new),
        &event(event_type, metadata),
    )
}

/// A plausible value for each allowed key, valid under every rule.
fn sample_value(key: &str) -> Value {
    match key {
        "email" => json!("new.user+ops@example.com"),
        "expires_at" => json!("2026-05-12T10:14:03Z"),
        "issued_via" | "invited_via" => json!("console"),
        "audit_retention" => json!({"from": "inherit", "to": 365}),
        "event_count" | "duration_ms" => json!(1234),
        "commit_id" => json!("9fceb02d0ae598e95dc970b74767f19372d61af8"),
        "repository" => json!("acme/api"),
        "branch" => json!("main"),
        "descriptor_path" => json!("deploy/compartment.yaml"),
        "issuer" => json!("https://login.example.com/realms/acme"),
        "scopes" => json!(["openid", "email", "profile"]),
        "diff" => json!([
            {"field": "branch", "op": "replace", "from": "main", "to": "release"},
            {"field": "auto_deploy", "op": "replace", "from": false, "to": true},
        ]),
        "filters" => json!({"event": "organization.user.invited", "from": "2026-05-01T00:00:00Z"}),
        "changed_fields" => json!(["name", "client_secret", "password_policy"]),
        key if key.ends_with("_ids") || key.ends_with("permissions") => {
            json!([format!("{key}-1"), format!("{key}-2")])
        }
        key => json!(format!("{key}-value")),
    }
}

#[test]
fn every_catalog_type_keeps_its_allowed_keys_and_drops_others() {
    for entry in CATALOG {
        let mut metadata = serde_json::Map::new();
        for key in entry.allowed_metadata_keys {
            metadata.insert((*key).to_owned(), sample_value(key));
        }
        let expected = Value::Object(metadata.clone());
        metadata.insert("unlisted_key".into(), json!("should not pass"));
        metadata.insert("raw_request".into(), json!({"nested": true}));

        let (line, output, report) = run(entry.name, Value::Object(metadata));

        assert_eq!(output, expected, "{}", entry.name);
        assert_eq!(report.dropped_keys, 2, "{}", entry.name);
        assert_eq!(report.redacted_values, 0, "{}: {line}", entry.name);
        assert_eq!(report.metric_label(), entry.name);
        assert!(!report.unknown_event_type());
        assert!(!line.contains("unlisted_key") && !line.contains("raw_request"));
    }
}

#[test]
fn metadata_keeps_catalog_order_at_the_top_level() {
    let (line, _, _) = run(
        "organization.git_source.sync_failed",
        json!({"error_code": "E1", "branch": "main", "git_source_id": "gs_1"}),
    );
    assert!(
        line.contains(r#""metadata":{"git_source_id":"gs_1","branch":"main","error_code":"E1"}"#),
        "{line}"
    );
}

#[test]
fn secret_named_keys_are_recognised_in_every_spelling() {
    for key in [
        "password",
        "Password",
        "PASSWORD",
        "new_password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "clientSecret",
        "client-secret",
        "webhook_secret",
        "webhookSecret",
        "token",
        "accessToken",
        "refresh_token",
        "token_sha256",
        "authToken",
        "private_key",
        "privateKey",
        "PRIVATE-KEY",
        "authorization",
        "Proxy-Authorization",
        "cookie",
        "Set-Cookie",
        "set_cookie",
        "cookies",
        "ciphertext",
        "cipherText",
        "plaintext",
        "headers",
        "request_headers",
        "HTTPHeaders",
        "payload",
        "webhook_payload",
        "api_key",
        "apiKey",
        "APIKey",
        "X-Api-Key",
        "apikey",
        "access_key",
        "AWS_ACCESS_KEY_ID",
        "aws.secret_access_key",
        "credential",
        "credentials",
        "gitCredentials",
        "session",
        "session_id",
        "sessionId",
        "dotenv",
        "env_file",
        "envFile",
        "env",
        "env_vars",
        "environment_variables",
        "signing_key",
        "encryption_key",
        "account_key",
        "compose_file",
        "pwd",
        "otp",
        "jwt",
        "archive",
    ] {
        assert!(is_secret_key_name(key), "{key} should be secret-named");
    }
    for key in [
        "key",
        "keys",
        "variable_keys",
        "name",
        "client_id",
        "issuer",
        "fingerprint",
        "sensitive",
        "repository",
        "author",
        "environment",
        "provider",
        "description",
        "email",
        "from",
        "to",
    ] {
        assert!(!is_secret_key_name(key), "{key} should not be secret-named");
    }
}

#[test]
fn nested_secret_named_keys_are_dropped_at_any_depth() {
    for depth in [0, 1, 2, 5, 12, 25] {
        let mut inner = json!({
            "keep": "visible",
            "password": "hunter2-depth",
            "clientSecret": {"deeper": "s3cr3t-value"},
            "X-Api-Key": "k-123-value",
            "Set-Cookie": ["sid=abc-value"],
        });
        for level in 0..depth {
            inner = if level % 2 == 0 {
                json!({ "level": inner })
            } else {
                json!([inner])
            };
        }
        let (line, output, report) = run(
            "organization.audit.export_created",
            json!({"format": "ndjson", "filters": inner}),
        );
        assert_eq!(report.dropped_keys, 4, "depth {depth}: {line}");
        assert_eq!(report.redacted_values, 0, "depth {depth}");
        for value in [
            "hunter2-depth",
            "s3cr3t-value",
            "k-123-value",
            "sid=abc-value",
        ] {
            assert!(!line.contains(value), "depth {depth}: {line}");
        }
        assert!(
            line.contains(r#""keep":"visible""#),
            "depth {depth}: {line}"
        );
        assert_eq!(output["format"], "ndjson");
    }
}

#[test]
fn every_secret_shape_is_redacted_under_an_allowed_key() {
    let sanitizer = Sanitizer::new();
    for sample in secret_samples(3) {
        assert!(sanitizer.is_secret_shaped(&sample.value), "{}", sample.name);
        // Directly under an allowed key, inside a list, inside an object, and inside
        // ordinary text.
        let metadata = json!({
            "user_id": "usr_1",
            "email": "gone@example.com",
            "reason": sample.value,
        });
        let (line, output, report) =
            run_with(&sanitizer, &event("organization.user.removed", metadata));
        assert_eq!(output["reason"], REDACTED, "{}", sample.name);
        assert_eq!(report.redacted_values, 1, "{}", sample.name);
        assert!(!leaks(&line, &sample.fragment), "{}: {line}", sample.name);

        let text = format!("sync failed after login with {} (retrying)", sample.value);
        let metadata = json!({
            "permissions": ["organization.audit.read", sample.value],
            "role_name": text,
        });
        let (line, output, report) =
            run_with(&sanitizer, &event("organization.role.updated", metadata));
        assert_eq!(
            output["permissions"],
            json!(["organization.audit.read", REDACTED])
        );
        assert_eq!(output["role_name"], REDACTED, "{}", sample.name);
        assert_eq!(report.redacted_values, 2, "{}", sample.name);
        assert!(!leaks(&line, &sample.fragment), "{}: {line}", sample.name);

        let metadata = json!({"format": "csv", "filters": {"actor": {"note": [sample.value]}}});
        let (line, output, _) = run_with(
            &sanitizer,
            &event("organization.audit.export_created", metadata),
        );
        assert_eq!(output["filters"]["actor"]["note"][0], REDACTED);
        assert!(!leaks(&line, &sample.fragment), "{}: {line}", sample.name);
    }
}

#[test]
fn ordinary_values_are_not_mistaken_for_secrets() {
    let sanitizer = Sanitizer::new();
    for value in [
        "9fceb02d0ae598e95dc970b74767f19372d61af8",
        "8f0c6f7e-3c1a-4b7e-9d2a-5e6f7a8b9c0d",
        "https://github.com/acme/api.git",
        "https://gitlab.example.com/acme/platform/api/-/merge_requests/12?tab=diffs",
        "ssh://git@github.com/acme/api.git",
        "git@github.com:acme/api.git",
        "ops@example.com",
        "feature/token-refresh",
        "fix-password-reset-email",
        "deploy/compartment.yaml",
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "2026-05-12T09:14:03.120Z",
        "10:30",
        "client_secret",
        "password_policy",
        "usr_01HZX3KQ2MZ8V4E6",
        "role_admin",
        "organization.audit.read",
        "AKIA",
        "Bearer",
        "missing bearer token",
        "https://login.example.com/realms/acme",
        "https://example.com/search?q=tokens&page=2",
        "keyJohnDoe1234.example.com",
        "deploy/task-runner-configuration-for-production.yaml",
        "desk_test_abcdefghijklmnopqrstuvwxyz",
        "MSG.abcdefghijklmnopqrstu.abcdefghijklmnopqrstu",
        "xoxo-hugs-and-kisses-to-all",
        "a note: nothing secret here",
        "",
    ] {
        assert!(!sanitizer.is_secret_shaped(value), "{value:?} was redacted");
    }
}

#[test]
fn secret_shaped_and_over_long_keys_are_dropped() {
    let token = format!("ghp_{}", "a1B2c3D4e5".repeat(4));
    let long_key = "k".repeat(300);
    let (line, output, report) = run(
        "organization.audit.export_created",
        json!({"filters": {token.clone(): true, long_key.clone(): 1, "event": "x"}}),
    );
    assert_eq!(output["filters"], json!({"event": "x"}));
    assert_eq!(report.dropped_keys, 2);
    assert!(!line.contains(&token) && !line.contains(&long_key));
}

#[test]
fn core_fields_are_checked_for_secret_shapes() {
    let token = format!("ghs_{}", "Zy9Xw8Vu7T".repeat(4));
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJlc2lnbmF0dXJl";
    let mut raw = event("organization.user.invited", json!({}));
    raw.actor_type = "api_token".into();
    raw.actor_id = token.clone();
    raw.actor_email = Some(jwt.into());
    raw.target_id = Some(format!("https://x:{token}@example.com"));
    raw.project_id = Some("prj_42".into());
    let (line, _, report) = run_with(&Sanitizer::new(), &raw);
    assert!(!line.contains(&token) && !line.contains(jwt), "{line}");
    assert!(line.contains(r#""actor":{"type":"api_token","id":"[REDACTED]","email":"[REDACTED]"}"#));
    assert!(line.contains(r#""target":{"type":"user","id":"[REDACTED]"},"project_id":"prj_42""#));
    assert_eq!(report.redacted_values, 3);

    let mut raw = event(&format!("custom.{token}"), json!({"a": 1}));
    raw.organization = "acme-dev".into();
    let (line, _, report) = run_with(&Sanitizer::new(), &raw);
    assert!(line.contains(r#""event_type":"[REDACTED]""#), "{line}");
    assert!(report.unknown_event_type());
}

#[test]
fn password_reset_event_carries_issuance_facts_only() {
    let facts = json!({
        "user_id": "usr_01HZX4",
        "email": "someone@example.com",
        "issued_via": "email",
        "expires_at": "2026-05-12T10:14:03.120Z",
    });
    let (_, output, report) = run("organization.user.password_reset_issued", facts.clone());
    assert_eq!(output, facts);
    assert_eq!(report.redacted_values, 0);

    let reset_token = "Q7vXk2LpN9sRt4WzY8bC1dFg";
    let reset_url = format!("https://compartment.example.com/reset/{reset_token}");
    let reset_query = format!("https://compartment.example.com/reset?t={reset_token}");
    for hostile in [
        json!({"issued_via": reset_url}),
        json!({"issued_via": reset_query}),
        json!({"issued_via": reset_token}),
        json!({"issued_via": format!("email {reset_url}")}),
        json!({"issued_via": {"channel": "email", "link": reset_url}}),
        json!({"issued_via": ["email", reset_token]}),
        json!({"expires_at": reset_url}),
        json!({"expires_at": format!("2026-05-12 {reset_token}")}),
        json!({"email": format!("{reset_url}@example.com")}),
        json!({"email": reset_url}),
        json!({"user_id": reset_url}),
        json!({"user_id": {"id": "usr_1", "token": reset_token}}),
        json!({"reset_url": reset_url, "token": reset_token, "link": reset_url, "url": reset_url}),
    ] {
        let (line, output, report) =
            run("organization.user.password_reset_issued", hostile.clone());
        assert!(!line.contains(reset_token), "{hostile} leaked: {line}");
        assert!(!line.contains("/reset"), "{hostile} leaked: {line}");
        assert!(
            report.redacted_values + report.dropped_keys > 0,
            "{hostile} passed silently"
        );
        for value in output.as_object().expect("object").values() {
            assert_eq!(value, REDACTED, "{hostile}");
        }
    }
}

#[test]
fn invitation_link_never_passes_as_invited_via() {
    let link = "https://compartment.example.com/invite/Zq8Wm3Xr7Kp2Lt9V";
    let (line, output, report) = run(
        "organization.user.invited",
        json!({"email": "new@example.com", "invited_via": link, "role_ids": ["r1"]}),
    );
    assert_eq!(output["invited_via"], REDACTED);
    assert_eq!(report.redacted_values, 1);
    assert!(!line.contains("Zq8Wm3Xr7Kp2Lt9V"));
}

#[test]
fn unknown_event_types_keep_core_fields_and_get_empty_metadata() {
    let (line, output, report) = run(
        "organization.billing.plan_changed",
        json!({"plan": "pro", "email": "x@example.com", "changed_fields": ["plan"]}),
    );
    assert_eq!(output, json!({}));
    assert!(report.unknown_event_type());
    assert_eq!(report.metric_label(), UNKNOWN_EVENT_TYPE);
    assert_eq!(report.dropped_keys, 3);
    assert!(line.contains(r#""event_type":"organization.billing.plan_changed""#));
    assert!(line.contains(r#""actor":{"type":"user","id":"usr_01HZX3","email":"ops@example.com"}"#));
}

#[test]
fn non_object_metadata_becomes_an_empty_object() {
    for event_type in ["organization.user.invited", "not.in.catalog"] {
        for metadata in [
            json!(null),
            json!([{"email": "a@example.com"}]),
            json!("email=a@example.com"),
            json!(42),
            json!(true),
        ] {
            let (line, output, report) = run(event_type, metadata.clone());
            assert_eq!(output, json!({}), "{metadata}");
            assert!(report.non_object_metadata, "{metadata}");
            assert_eq!(report.dropped_keys, 1, "{metadata}");
            assert!(line.ends_with("\"metadata\":{}}\n"), "{line}");
        }
    }
}

#[test]
fn output_is_deterministic() {
    let metadata = json!({
        "git_source_id": "gs_1",
        "repository": "acme/api",
        "changed_fields": ["branch", "webhook_secret"],
        "diff": [
            {"to": {"z": 1, "a": [3, 2, 1], "m": {"y": null, "b": "x"}}, "field": "labels", "op": "replace"},
            {"field": "webhook_secret", "op": "replace", "from": "old", "to": "new"},
        ],
    });
    let raw = event("organization.git_source.settings_changed", metadata);
    let first = Sanitizer::new();
    let encode = |sanitizer: &Sanitizer| {
        let (sanitized, _) = sanitizer.sanitize_event(&raw);
        let mut line = Vec::new();
        encode_line(&sanitized, &mut line);
        line
    };
    let reference = encode(&first);
    assert_eq!(encode(&first), reference);
    assert_eq!(encode(&first.clone()), reference);
    assert_eq!(encode(&Sanitizer::new()), reference);
    let from_threads: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| encode(&first))).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread finished"))
            .collect()
    });
    assert!(from_threads.iter().all(|line| *line == reference));
    let text = String::from_utf8(reference).expect("utf-8");
    assert!(
        text.contains(
            r#"{"field":"labels","op":"replace","to":{"a":[3,2,1],"m":{"b":"x","y":null},"z":1}}"#
        ),
        "{text}"
    );
}

#[test]
fn sanitizer_is_cheap_to_share() {
    fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
    assert_shareable::<Sanitizer>();
}

const SETTINGS_CHANGED: &str = "organization.git_source.settings_changed";
const FINGERPRINT: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn diff_of(entries: Value) -> (String, Value, SanitizeReport) {
    let (line, output, report) = run(
        SETTINGS_CHANGED,
        json!({"git_source_id": "gs_1", "diff": entries}),
    );
    (line, output["diff"].clone(), report)
}

#[test]
fn diff_keeps_ordinary_changes() {
    let entries = json!([
        {"field": "branch", "op": "replace", "from": "main", "to": "release"},
        {"field": "auto_deploy", "op": "replace", "from": false, "to": true, "sensitive": false},
        {"field": "paths", "op": "add", "to": ["deploy/a.yaml"]},
    ]);
    let (_, diff, report) = diff_of(entries.clone());
    assert_eq!(diff, entries);
    assert_eq!(report.redacted_values + report.dropped_keys, 0);
}

#[test]
fn sensitive_diff_entries_keep_only_given_fingerprints() {
    let fingerprinted =
        json!({"sensitive": true, "fingerprint": FINGERPRINT, "raw": "hunter2-raw"});
    let (line, diff, report) = diff_of(json!([
        {"field": "variables.DATABASE_URL", "op": "replace", "from": fingerprinted, "to": fingerprinted},
        {"field": "deploy_key", "op": "replace", "sensitive": true, "from": "old-plain-value", "to": "new-plain-value"},
        {"field": "webhook_secret", "op": "replace", "from": "whs-old-value", "to": "whs-new-value"},
        {"field": "env.API_URL", "op": "add", "to": "https://internal.example.com"},
        {"field": "labels", "op": "replace", "to": {"sensitive": true, "fingerprint": "md5:abc"}},
        {"field": "labels", "op": "replace", "to": {"sensitive": true, "fingerprint": "sha256:short"}},
    ]));
    let expected_fingerprint = json!({"sensitive": true, "fingerprint": FINGERPRINT});
    assert_eq!(
        diff,
        json!([
            {"field": "variables.DATABASE_URL", "op": "replace", "from": expected_fingerprint, "to": expected_fingerprint, "sensitive": true},
            {"field": "deploy_key", "op": "replace", "sensitive": true},
            {"field": "webhook_secret", "op": "replace", "sensitive": true},
            {"field": "env.API_URL", "op": "add", "sensitive": true},
            {"field": "labels", "op": "replace", "sensitive": true},
            {"field": "labels", "op": "replace", "sensitive": true},
        ])
    );
    assert_eq!(report.redacted_values, 7);
    for value in [
        "hunter2-raw",
        "plain-value",
        "whs-",
        "internal.example.com",
        "md5:abc",
    ] {
        assert!(!line.contains(value), "{value}: {line}");
    }
}

#[test]
fn diff_outside_its_shape_is_dropped() {
    let (line, diff, report) = diff_of(json!([
        "password changed to hunter2-x",
        42,
        {"field": "branch", "op": "replace", "to": "main", "old_value": "hunter2-y", "sensitive": "yes"},
    ]));
    assert_eq!(
        diff,
        json!([{"field": "branch", "op": "replace", "to": "main"}])
    );
    assert_eq!(report.dropped_keys, 4);
    assert!(!line.contains("hunter2"));

    let (_, output, report) = run(
        SETTINGS_CHANGED,
        json!({"diff": {"field": "branch", "from": "a", "to": "b"}}),
    );
    assert_eq!(output, json!({}));
    assert_eq!(report.dropped_keys, 1);
}

#[test]
fn diff_values_are_scrubbed_like_any_other_value() {
    let token = format!("glpat-{}", "Ab3De6Gh9J".repeat(2));
    let (line, diff, _) = diff_of(json!([
        {"field": "clone_url", "op": "replace", "from": format!("https://oauth2:{token}@gitlab.example.com/a.git"),
         "to": {"url": "https://gitlab.example.com/a.git", "password": "p4ss-word"}},
    ]));
    assert_eq!(diff[0]["from"], REDACTED);
    assert_eq!(
        diff[0]["to"],
        json!({"url": "https://gitlab.example.com/a.git"})
    );
    assert!(!line.contains(&token) && !line.contains("p4ss-word"));
}

fn depth_of(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn deep_nesting_is_cut_at_the_depth_limit() {
    let mut deep = json!("bottom");
    for level in 0..200 {
        deep = if level % 2 == 0 {
            json!([deep])
        } else {
            json!({"n": deep})
        };
    }
    let (line, output, report) = run(
        "organization.audit.export_created",
        json!({"filters": deep}),
    );
    let limits = Limits::default();
    // metadata → filters → … : the output never nests deeper than the limit.
    assert!(
        depth_of(&output) <= limits.max_depth,
        "{}",
        depth_of(&output)
    );
    assert!(line.contains(TRUNCATED));
    assert!(!line.contains("bottom"));
    assert_eq!(report.truncated_values, 1);
}

#[test]
fn long_strings_are_truncated_on_a_character_boundary() {
    let limits = Limits {
        // Longer than every core field of `event`, and odd, so that the cut falls in
        // the middle of a two-byte `é`.
        max_string_bytes: 21,
        ..Limits::default()
    };
    let sanitizer = Sanitizer::with_limits(limits);
    let raw = event(
        "organization.user.removed",
        json!({"reason": "é".repeat(15), "user_id": "short"}),
    );
    let (_, output, report) = run_with(&sanitizer, &raw);
    assert_eq!(output["reason"], format!("{}{TRUNCATED}", "é".repeat(10)));
    assert_eq!(output["user_id"], "short");
    assert_eq!(report.truncated_values, 1);
    assert_eq!(report.redacted_values, 1);

    let (_, output, _) = run(
        "organization.user.removed",
        json!({"reason": "x".repeat(100_000)}),
    );
    let reason = output["reason"].as_str().expect("string");
    assert_eq!(
        reason.len(),
        Limits::default().max_string_bytes + TRUNCATED.len()
    );
    assert!(reason.ends_with(TRUNCATED));
}

#[test]
fn a_secret_cut_by_truncation_is_still_redacted() {
    let limits = Limits::default();
    for sample in secret_samples(11) {
        for offset in [1, 8, sample.value.len() / 2] {
            // Text, then a blank, then the secret, placed so that the cut falls inside it.
            let mut padding = "p".repeat(limits.max_string_bytes.saturating_sub(offset + 1));
            padding.push(' ');
            let value = format!("{padding}{}", sample.value);
            let (line, output, _) = run("organization.user.removed", json!({"reason": value}));
            assert_eq!(output["reason"], REDACTED, "{} at {offset}", sample.name);
            assert!(!leaks(&line, &sample.fragment));
        }
    }
    // A private key longer than the string limit is caught by its header.
    let key = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
        "QUJD".repeat(5000)
    );
    let (_, output, _) = run("organization.user.removed", json!({"reason": key}));
    assert_eq!(output["reason"], REDACTED);
}

#[test]
fn large_containers_are_cut_with_a_marker() {
    let limits = Limits {
        max_container_len: 3,
        ..Limits::default()
    };
    let sanitizer = Sanitizer::with_limits(limits);
    let raw = event(
        "organization.group.membership_changed",
        json!({
            "added_user_ids": ["u1", "u2", "u3", "u4", "u5"],
            "removed_user_ids": ["u6"],
            "group_name": {"a": 1, "b": 2, "c": 3, "d": 4},
        }),
    );
    let (_, output, report) = run_with(&sanitizer, &raw);
    assert_eq!(
        output["added_user_ids"],
        json!(["u1", "u2", "u3", TRUNCATED])
    );
    assert_eq!(output["removed_user_ids"], json!(["u6"]));
    assert_eq!(
        output["group_name"],
        json!({"a": 1, "b": 2, "c": 3, TRUNCATED: true})
    );
    assert_eq!(report.truncated_values, 2);
}

#[test]
fn per_event_budgets_bound_the_output() {
    // A wide hostile value: 24 arrays of 1,000 strings of 1 KiB each (24 MiB in).
    let wide: Vec<Value> = (0..24)
        .map(|i| json!(vec![format!("{i}-{}", "v".repeat(1024)); 1000]))
        .collect();
    let (line, _, report) = run(
        "organization.audit.export_created",
        json!({"filters": wide}),
    );
    let limits = Limits::default();
    assert!(
        line.len() < limits.max_total_string_bytes + 16 * limits.max_nodes,
        "{} bytes",
        line.len()
    );
    assert!(report.truncated_values > 0);

    let tiny = Sanitizer::with_limits(Limits {
        max_nodes: 5,
        ..Limits::default()
    });
    let raw = event(
        "organization.role.created",
        json!({"permissions": ["a", "b", "c", "d", "e", "f", "g"], "role_name": "r"}),
    );
    let (_, output, _) = run_with(&tiny, &raw);
    let kept = output["permissions"].as_array().expect("array");
    assert!(
        kept.len() <= 5 && kept.last() == Some(&json!(TRUNCATED)),
        "{output}"
    );
}

#[test]
fn zero_limits_do_not_panic() {
    let sanitizer = Sanitizer::with_limits(Limits {
        max_depth: 0,
        max_string_bytes: 0,
        max_key_bytes: 0,
        max_container_len: 0,
        max_nodes: 0,
        max_total_string_bytes: 0,
    });
    let raw = event(
        "organization.git_source.settings_changed",
        json!({"repository": "acme/api", "diff": [{"field": "a"}], "changed_fields": [[1]]}),
    );
    let (line, _, _) = run_with(&sanitizer, &raw);
    assert!(line.ends_with('\n'));
}
