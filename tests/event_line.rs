//! The event catalog (SPEC §4) and the sink line format (SPEC §5).

use chrono::{DateTime, Utc};
use compartment_auditd::event::{
    self, allowed_metadata_keys, encode_line, metric_label, Actor, AuditEvent, Metadata,
    SanitizedEvent, Target, CATALOG, UNKNOWN_EVENT_TYPE,
};
use compartment_auditd::sanitize::{is_secret_key_name, Sanitizer};
use serde_json::json;
use uuid::Uuid;

/// SPEC §4's table, transcribed row by row with every variant spelled out, so that a
/// typo or a missing variant in the catalog fails here.
const SPEC_TABLE: &[(&[&str], &[&str])] = &[
    (
        &["organization.settings.updated"],
        &["changed_fields", "audit_retention"],
    ),
    (&["organization.auth_settings.updated"], &["changed_fields"]),
    (
        &[
            "organization.sso.oidc_provider.created",
            "organization.sso.oidc_provider.updated",
            "organization.sso.oidc_provider.deleted",
        ],
        &[
            "provider_id",
            "provider_name",
            "issuer",
            "client_id",
            "scopes",
            "changed_fields",
        ],
    ),
    (
        &["organization.user.invited"],
        &["email", "role_ids", "invited_via"],
    ),
    (
        &[
            "organization.user.removed",
            "organization.user.blocked",
            "organization.user.unblocked",
        ],
        &["user_id", "email", "reason"],
    ),
    (
        &["organization.user.password_reset_issued"],
        &["user_id", "email", "issued_via", "expires_at"],
    ),
    (
        &[
            "organization.role.created",
            "organization.role.updated",
            "organization.role.deleted",
        ],
        &[
            "role_id",
            "role_name",
            "permissions",
            "added_permissions",
            "removed_permissions",
        ],
    ),
    (
        &[
            "organization.group.created",
            "organization.group.updated",
            "organization.group.deleted",
        ],
        &["group_id", "group_name", "changed_fields"],
    ),
    (
        &["organization.group.membership_changed"],
        &[
            "group_id",
            "group_name",
            "added_user_ids",
            "removed_user_ids",
        ],
    ),
    (
        &[
            "organization.assignment.created",
            "organization.assignment.deleted",
        ],
        &[
            "assignment_id",
            "role_id",
            "subject_type",
            "subject_id",
            "scope_type",
            "scope_id",
        ],
    ),
    (
        &[
            "organization.git_source.connected",
            "organization.git_source.disconnected",
        ],
        &["git_source_id", "provider", "repository", "branch"],
    ),
    (
        &["organization.git_source.settings_changed"],
        &["git_source_id", "repository", "changed_fields", "diff"],
    ),
    (
        &[
            "organization.git_source.descriptor_included",
            "organization.git_source.descriptor_excluded",
        ],
        &["git_source_id", "repository", "branch", "descriptor_path"],
    ),
    (
        &[
            "organization.git_source.sync_requested",
            "organization.git_source.sync_succeeded",
            "organization.git_source.sync_failed",
        ],
        &[
            "git_source_id",
            "repository",
            "branch",
            "commit_id",
            "trigger",
            "error_code",
            "duration_ms",
        ],
    ),
    (
        &["organization.git_source.push_received"],
        &["git_source_id", "repository", "branch", "commit_id"],
    ),
    (
        &[
            "organization.git_source.auto_deploy_queued",
            "organization.git_source.auto_deploy_skipped",
        ],
        &[
            "git_source_id",
            "repository",
            "branch",
            "commit_id",
            "descriptor_path",
            "deployment_id",
            "skip_reason",
        ],
    ),
    (
        &["organization.git_source.binding_created"],
        &[
            "git_source_id",
            "repository",
            "descriptor_path",
            "project_id",
            "binding_id",
            "created_during",
        ],
    ),
    (
        &["organization.audit.export_created"],
        &["format", "event_count", "filters"],
    ),
];

#[test]
fn catalog_is_exactly_the_spec_table() {
    let mut expected: Vec<(&str, &[&str])> = SPEC_TABLE
        .iter()
        .flat_map(|(names, keys)| names.iter().map(move |name| (*name, *keys)))
        .collect();
    let mut actual: Vec<(&str, &[&str])> = CATALOG
        .iter()
        .map(|entry| (entry.name, entry.allowed_metadata_keys))
        .collect();
    expected.sort();
    actual.sort();
    assert_eq!(actual, expected);
    assert_eq!(CATALOG.len(), 32);
}

#[test]
fn catalog_names_are_unique_and_looked_up_exactly() {
    for (index, entry) in CATALOG.iter().enumerate() {
        assert!(
            CATALOG[..index]
                .iter()
                .all(|other| other.name != entry.name),
            "{} listed twice",
            entry.name
        );
        assert_eq!(
            allowed_metadata_keys(entry.name),
            Some(entry.allowed_metadata_keys)
        );
        assert_eq!(metric_label(entry.name), entry.name);
        assert_eq!(event::lookup(entry.name), Some(entry));
    }
    for unknown in [
        "",
        "organization.user",
        "Organization.User.Invited",
        "organization.user.invited ",
        "organization.user.invited.extra",
        "unknown",
    ] {
        assert_eq!(allowed_metadata_keys(unknown), None, "{unknown:?}");
        assert_eq!(metric_label(unknown), UNKNOWN_EVENT_TYPE);
    }
}

#[test]
fn no_allowed_key_is_secret_named() {
    for entry in CATALOG {
        for key in entry.allowed_metadata_keys {
            assert!(
                !is_secret_key_name(key),
                "{key} of {} would be dropped",
                entry.name
            );
        }
    }
    // Keys that appear inside allowed values: diffs, audit_retention, export filters.
    for key in [
        "field",
        "op",
        "from",
        "to",
        "sensitive",
        "fingerprint",
        "event",
        "actor",
        "target_type",
        "project_id",
        "key",
        "name",
        "type",
        "id",
    ] {
        assert!(!is_secret_key_name(key), "{key}");
    }
}

fn spec_example() -> AuditEvent {
    AuditEvent {
        id: 1042,
        occurred_at: "2026-05-12T09:14:03.120456Z"
            .parse::<DateTime<Utc>>()
            .expect("valid timestamp"),
        organization_id: Uuid::parse_str("8f0c6f7e-3c1a-4b7e-9d2a-5e6f7a8b9c0d")
            .expect("valid uuid"),
        organization: "acme-dev".into(),
        event_type: "organization.user.invited".into(),
        actor_type: "user".into(),
        actor_id: "usr_01HZX3".into(),
        actor_email: Some("ops@example.com".into()),
        target_type: Some("user".into()),
        target_id: Some("usr_01HZX4".into()),
        project_id: None,
        status: "succeeded".into(),
        metadata: json!({
            "email": "new@example.com",
            "role_ids": ["role_admin"],
            "invited_via": "console",
            "invite_url": "https://compartment.example.com/invite/abc",
        }),
    }
}

#[test]
fn spec_example_line_is_exact() {
    let (event, report) = Sanitizer::new().sanitize_event(&spec_example());
    let mut line = Vec::new();
    encode_line(&event, &mut line);
    let expected = concat!(
        r#"{"id":1042,"occurred_at":"2026-05-12T09:14:03.120Z","#,
        r#""organization_id":"8f0c6f7e-3c1a-4b7e-9d2a-5e6f7a8b9c0d","organization":"acme-dev","#,
        r#""event_type":"organization.user.invited","#,
        r#""actor":{"type":"user","id":"usr_01HZX3","email":"ops@example.com"},"#,
        r#""target":{"type":"user","id":"usr_01HZX4"},"project_id":null,"status":"succeeded","#,
        r#""metadata":{"email":"new@example.com","role_ids":["role_admin"],"invited_via":"console"}}"#,
        "\n"
    );
    assert_eq!(String::from_utf8(line).expect("utf-8"), expected);
    assert_eq!(report.dropped_keys, 1);
    assert_eq!(report.redacted_values, 0);
}

#[test]
fn absent_optional_fields_are_null_and_unknown_types_get_empty_metadata() {
    let mut raw = spec_example();
    raw.event_type = "organization.something.new".into();
    raw.actor_type = "system".into();
    raw.actor_email = None;
    raw.target_type = None;
    raw.target_id = None;
    raw.project_id = Some("prj_1".into());
    raw.occurred_at = "2026-01-02T03:04:05Z".parse().expect("valid timestamp");
    let (event, _) = Sanitizer::new().sanitize_event(&raw);
    let mut line = Vec::new();
    encode_line(&event, &mut line);
    let line = String::from_utf8(line).expect("utf-8");
    assert!(
        line.contains(r#""occurred_at":"2026-01-02T03:04:05.000Z""#),
        "{line}"
    );
    assert!(line.contains(r#""event_type":"organization.something.new""#));
    assert!(line.contains(r#""actor":{"type":"system","id":"usr_01HZX3","email":null}"#));
    assert!(line.contains(r#""target":{"type":null,"id":null},"project_id":"prj_1""#));
    assert!(line.ends_with("\"metadata\":{}}\n"), "{line}");
}

#[test]
fn control_characters_never_break_the_line() {
    let mut raw = spec_example();
    raw.organization = "acme\ndev\r\u{2028}\u{0}".into();
    raw.actor_email = Some("ops@example.com\n{\"id\":1}".into());
    raw.metadata = json!({"email": "a\nb@example.com", "role_ids": ["x\ny", "\u{7f}"]});
    let (event, _) = Sanitizer::new().sanitize_event(&raw);
    let mut line = Vec::new();
    encode_line(&event, &mut line);
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    assert!(!line.contains(&b'\r'));
    let parsed: serde_json::Value =
        serde_json::from_slice(&line[..line.len() - 1]).expect("one JSON object");
    assert_eq!(parsed["organization"], "acme\ndev\r\u{2028}\u{0}");
    assert_eq!(parsed["metadata"]["role_ids"][0], "x\ny");
}

#[test]
fn encode_line_appends_to_what_is_already_in_the_buffer() {
    let (event, _) = Sanitizer::new().sanitize_event(&spec_example());
    let mut one = Vec::new();
    encode_line(&event, &mut one);
    let mut batch = Vec::new();
    encode_line(&event, &mut batch);
    encode_line(&event, &mut batch);
    assert_eq!(batch.len(), 2 * one.len());
    assert_eq!(&batch[..one.len()], &one[..]);
    assert_eq!(&batch[one.len()..], &one[..]);
}

#[test]
fn top_level_fields_are_in_the_stable_order() {
    let (event, _) = Sanitizer::new().sanitize_event(&spec_example());
    let mut line = Vec::new();
    encode_line(&event, &mut line);
    let line = String::from_utf8(line).expect("utf-8");
    let positions: Vec<usize> = [
        "\"id\":",
        "\"occurred_at\":",
        "\"organization_id\":",
        "\"organization\":",
        "\"event_type\":",
        "\"actor\":",
        "\"target\":",
        "\"project_id\":",
        "\"status\":",
        "\"metadata\":",
    ]
    .iter()
    .map(|field| line.find(field).expect("field present"))
    .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{line}");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(256))]

    /// The hand-written timestamp formatter agrees with chrono's RFC 3339 millisecond
    /// form over the whole four-digit-year range.
    #[test]
    fn occurred_at_is_rfc3339_utc_with_milliseconds(
        secs in -62_167_219_200_i64..253_402_300_800,
        nanos in 0u32..1_000_000_000,
    ) {
        let at = DateTime::from_timestamp(secs, nanos).expect("in range");
        let event = SanitizedEvent {
            id: 1,
            occurred_at: at,
            organization_id: Uuid::nil(),
            organization: "acme-dev".into(),
            event_type: "organization.user.invited".into(),
            actor: Actor { kind: "system".into(), id: "system".into(), email: None },
            target: Target { kind: None, id: None },
            project_id: None,
            status: "succeeded".into(),
            metadata: Metadata::new(),
        };
        let mut line = Vec::new();
        encode_line(&event, &mut line);
        let parsed: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        let expected = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        proptest::prop_assert_eq!(parsed["occurred_at"].as_str(), Some(expected.as_str()));
        proptest::prop_assert_eq!(expected.len(), 24);
    }
}
