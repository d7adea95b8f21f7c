//! Throughput of the mirror's hot path: sanitize + encode one event into a batch buffer.
//!
//! `cargo bench --bench sanitize` prints nanoseconds per event and line throughput for
//! a realistic mix of catalog events, for encoding alone, and for hostile rows. It is a
//! plain timing loop (no harness) so it runs on stable without extra crates.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::DateTime;
use compartment_auditd::event::{encode_line, AuditEvent, SanitizedEvent};
use compartment_auditd::sanitize::Sanitizer;
use serde_json::{json, Value};
use uuid::Uuid;

fn event(id: i64, event_type: &str, metadata: Value) -> AuditEvent {
    AuditEvent {
        id,
        occurred_at: DateTime::from_timestamp(1_778_577_243 + id, 120_000_000).expect("in range"),
        organization_id: Uuid::from_u128(0x8f0c_6f7e_3c1a_4b7e_9d2a_5e6f_7a8b_9c0d),
        organization: "acme-dev".into(),
        event_type: event_type.into(),
        actor_type: "user".into(),
        actor_id: format!("usr_01HZX3{id:08}"),
        actor_email: Some("ops@example.com".into()),
        target_type: Some("git_source".into()),
        target_id: Some(format!("gs_{id}")),
        project_id: (id % 3 == 0).then(|| format!("prj_{}", id % 17)),
        status: "succeeded".into(),
        metadata,
    }
}

/// A mix shaped like a busy organization's log.
fn realistic(count: i64) -> Vec<AuditEvent> {
    (0..count)
        .map(|id| match id % 6 {
            0 => event(
                id,
                "organization.git_source.sync_succeeded",
                json!({"git_source_id": "gs_1", "repository": "acme/api", "branch": "main",
                       "commit_id": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                       "trigger": "push", "duration_ms": 1834}),
            ),
            1 => event(
                id,
                "organization.git_source.push_received",
                json!({"git_source_id": "gs_1", "repository": "acme/api", "branch": "main",
                       "commit_id": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                       "headers": {"X-Hub-Signature-256": "sha256=abc"}}),
            ),
            2 => event(
                id,
                "organization.user.invited",
                json!({"email": "new@example.com", "role_ids": ["role_admin", "role_dev"],
                       "invited_via": "console"}),
            ),
            3 => event(
                id,
                "organization.git_source.settings_changed",
                json!({"git_source_id": "gs_1", "repository": "acme/api",
                       "changed_fields": ["branch", "webhook_secret"],
                       "diff": [
                           {"field": "branch", "op": "replace", "from": "main", "to": "release"},
                           {"field": "webhook_secret", "op": "replace",
                            "from": {"sensitive": true, "fingerprint": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"},
                            "to": {"sensitive": true, "fingerprint": "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"}}
                       ]}),
            ),
            4 => event(
                id,
                "organization.role.updated",
                json!({"role_id": "role_dev", "role_name": "Developers",
                       "permissions": ["project.deploy", "project.read", "organization.audit.read"],
                       "added_permissions": ["organization.audit.read"], "removed_permissions": []}),
            ),
            _ => event(
                id,
                "organization.audit.export_created",
                json!({"format": "ndjson", "event_count": 812,
                       "filters": {"from": "2026-05-01T00:00:00Z", "event": "organization.user.invited"}}),
            ),
        })
        .collect()
}

fn hostile(count: i64) -> Vec<AuditEvent> {
    let mut deep = json!("x");
    for _ in 0..100 {
        deep = json!({"a": deep, "password": "p"});
    }
    let wide: Vec<Value> = (0..2000).map(|i| json!(format!("user-{i}"))).collect();
    (0..count)
        .map(|id| {
            event(
                id,
                "organization.audit.export_created",
                json!({"filters": {"deep": deep, "wide": wide, "long": "y".repeat(64 * 1024)}}),
            )
        })
        .collect()
}

fn report(name: &str, events: usize, bytes: usize, elapsed: Duration) {
    let per_event = elapsed.as_nanos() as f64 / events as f64;
    let mib_per_s = bytes as f64 / elapsed.as_secs_f64() / (1024.0 * 1024.0);
    println!(
        "{name:<28} {events:>8} events  {per_event:>9.0} ns/event  {:>10.0} events/s  {mib_per_s:>7.1} MiB/s of lines",
        1e9 / per_event
    );
}

fn main() {
    let sanitizer = Sanitizer::new();
    let events = realistic(300_000);

    // Sanitize + encode, as the mirror does, into a batch buffer reused per 1,000 events.
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut bytes = 0;
    let started = Instant::now();
    for batch in events.chunks(1000) {
        buffer.clear();
        for raw in batch {
            let (sanitized, report) = sanitizer.sanitize_event(raw);
            black_box(report);
            encode_line(&sanitized, &mut buffer);
        }
        bytes += buffer.len();
        black_box(&buffer);
    }
    report("sanitize + encode", events.len(), bytes, started.elapsed());

    let sanitized: Vec<SanitizedEvent> = events
        .iter()
        .map(|raw| sanitizer.sanitize_event(raw).0)
        .collect();
    let started = Instant::now();
    bytes = 0;
    for batch in sanitized.chunks(1000) {
        buffer.clear();
        for event in batch {
            encode_line(event, &mut buffer);
        }
        bytes += buffer.len();
        black_box(&buffer);
    }
    report("encode only", sanitized.len(), bytes, started.elapsed());

    let started = Instant::now();
    for raw in &events {
        black_box(sanitizer.sanitize_event(raw));
    }
    report("sanitize only", events.len(), bytes, started.elapsed());

    let hostile = hostile(200);
    let started = Instant::now();
    bytes = 0;
    for raw in &hostile {
        buffer.clear();
        let (sanitized, _) = sanitizer.sanitize_event(raw);
        encode_line(&sanitized, &mut buffer);
        bytes += buffer.len();
    }
    report("hostile rows", hostile.len(), bytes, started.elapsed());
}
