//! Hostile input from the database side (issue 8, item 3), against the real daemon
//! binary and a real PostgreSQL: garbage notifications on the audit channel, and
//! `audit_events` rows with metadata no well-behaved producer writes (deep nesting,
//! huge strings, non-object JSON, SQL `NULL`, control characters, odd keys). Each row
//! must come out as exactly one whole, valid, sanitized line, and the daemon must go
//! on mirroring what follows.

/// How long lines may take to arrive: returns as soon as they do, but a transaction
/// held open anywhere in the shared test cluster (other tests' writers, exports)
/// holds the visibility horizon, and so the mirror, back meanwhile.
const LINES_WAIT: std::time::Duration = std::time::Duration::from_secs(150);

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use common::{NewEvent, TestDb, AUDIT_CHANNEL};
use support::{read_sink_ids, read_sink_lines, wait_for, wait_for_lines, Daemon, DaemonConfig};
use uuid::Uuid;

/// A sink that mirrors every retained event, with quick timers (see `DaemonConfig`).
async fn start_daemon(db: &TestDb, sink: &Path, logs: &Path) -> Daemon {
    let daemon = DaemonConfig::new(db.url(), sink, logs)
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "the daemon did not get ready: {}",
        daemon.log_text()
    );
    daemon
}

/// The listener's notification counter, once the daemon has served a value.
fn notifications(daemon: &Daemon) -> f64 {
    daemon
        .metric("compartment_audit_listener_notifications_total")
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_notifications_write_nothing_and_leave_the_doorbell_working() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = db.insert_org("acme-dev").await;
    let first = db
        .insert_event(&NewEvent::new(org, "organization.user.invited"))
        .await;
    let mut daemon = start_daemon(&db, &sink, dir.path()).await;
    assert!(wait_for_lines(&sink, 1, LINES_WAIT).await);
    let before = notifications(&daemon);

    // Payloads a confused or malicious client could send on the channel: the
    // notification is a doorbell only and its payload must never be interpreted.
    let client = db.connect().await;
    let long = "x".repeat(7_999); // PostgreSQL caps payloads just below 8000 bytes.
    let odd: [&str; 8] = [
        "garbage",
        r#"{"id": 999999, "event_type": "organization.user.invited"}"#,
        "'; DROP TABLE audit_events; --",
        "\u{1}\u{2}\u{7f}\u{1b}[2J",
        "é中文\u{202e}\u{feff}",
        "999999",
        "-----BEGIN RSA PRIVATE KEY-----",
        &long,
    ];
    for payload in odd {
        client
            .execute("SELECT pg_notify($1, $2)", &[&AUDIT_CHANNEL, &payload])
            .await
            .expect("notifying");
    }
    // A flood: distinct payloads are not folded, so this is 20,000 notifications in
    // one commit, plus 300 commits of one each.
    client
        .batch_execute(&format!(
            "SELECT pg_notify('{AUDIT_CHANNEL}', md5(i::text) || repeat('z', 900)) \
             FROM generate_series(1, 20000) AS i"
        ))
        .await
        .expect("flooding the channel");
    for i in 0..300 {
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&AUDIT_CHANNEL, &format!("flood {i}")],
            )
            .await
            .expect("notifying");
    }
    let sent = (odd.len() + 20_000 + 300) as f64;
    let received = wait_for(Duration::from_secs(60), async || {
        (notifications(&daemon) >= before + sent).then_some(())
    })
    .await;
    assert!(
        received.is_some(),
        "the daemon received {} of {sent} notifications",
        notifications(&daemon) - before
    );

    assert!(
        daemon.is_running(),
        "the daemon died: {}",
        daemon.log_text()
    );
    assert_eq!(daemon.get("/readyz").map(|(status, _)| status), Some(200));
    assert_eq!(
        read_sink_ids(&sink),
        vec![first],
        "a notification wrote a line"
    );

    // The doorbell still rings for real inserts.
    let second = db
        .insert_event(&NewEvent::new(org, "organization.user.removed"))
        .await;
    assert!(
        wait_for_lines(&sink, 2, LINES_WAIT).await,
        "an insert after the flood was not mirrored: {}",
        daemon.log_text()
    );
    assert_eq!(read_sink_ids(&sink), vec![first, second]);
    let log = daemon.log_text();
    assert!(
        !log.contains("DROP TABLE") && !log.contains("BEGIN RSA"),
        "a notification payload reached the log"
    );
}

/// An odd row: what it is, its event type and the SQL expression of its metadata.
struct OddRow {
    what: &'static str,
    event_type: &'static str,
    metadata_sql: String,
}

fn odd(what: &'static str, event_type: &'static str, metadata_sql: impl Into<String>) -> OddRow {
    OddRow {
        what,
        event_type,
        metadata_sql: metadata_sql.into(),
    }
}

/// A GitHub token shape; its body must never reach the sink.
const PLANTED_BODY: &str = "R7bq2VxL0pZ9kW3mN8cT4yH6jD1fS5aQeGu";

/// Metadata shapes the reference schema's CHECK would refuse but a producer's own
/// schema may allow, plus the deep, huge and odd ones that pass it.
fn odd_rows() -> Vec<OddRow> {
    let token = format!("ghp_{PLANTED_BODY}X");
    let control = serde_json::json!({
        "reason": "tab\there\u{1}\u{1f}\u{7f} line\u{2028}sep\u{2029} bom\u{feff} rtl\u{202e} max\u{10ffff} nonchar\u{fffe}",
        "user_id": "usr_\u{0301}combining",
        "email": "ünïcødé@exämple.com",
    });
    let odd_keys = serde_json::json!({
        "": "empty key",
        "reason\nwith newline": "x",
        "k".repeat(5000): "long key",
        "email": {"password": "hunter2", "nested": {"client_secret": "s3cr3t"}},
    });
    vec![
        odd(
            "array nested 10,000 levels under an allowed key",
            "organization.settings.updated",
            "('{\"changed_fields\":' || repeat('[', 10000) || repeat(']', 10000) || '}')::jsonb",
        ),
        odd(
            "object nested 10,000 levels under an allowed key",
            "organization.settings.updated",
            "('{\"changed_fields\":' || repeat('{\"k\":', 10000) || '1' || repeat('}', 10000) || '}')::jsonb",
        ),
        odd(
            "metadata itself an array nested 10,000 levels",
            "organization.settings.updated",
            "(repeat('[', 10000) || repeat(']', 10000))::jsonb",
        ),
        odd(
            "a secret inside a 6 MiB string",
            "organization.sso.oidc_provider.updated",
            format!(
                "jsonb_build_object('provider_name', 'start {token} ' || repeat('a', 6 * 1024 * 1024))"
            ),
        ),
        odd(
            "a 6 MiB string",
            "organization.user.removed",
            "jsonb_build_object('reason', repeat('é', 3 * 1024 * 1024))",
        ),
        odd(
            "a secret at depth 20",
            "organization.git_source.settings_changed",
            format!(
                "('{{\"changed_fields\":' || repeat('[', 20) || '\"{token}\"' || repeat(']', 20) || '}}')::jsonb"
            ),
        ),
        odd(
            "100,000 keys",
            "organization.role.updated",
            "jsonb_build_object('permissions', (SELECT jsonb_object_agg('p' || i, i) FROM generate_series(1, 100000) AS i))",
        ),
        odd("a JSON array", "organization.user.invited", "'[1, 2, 3]'::jsonb"),
        odd("a JSON string", "organization.user.invited", format!("'\"{token}\"'::jsonb")),
        odd("a JSON number", "organization.user.invited", "'42'::jsonb"),
        odd("a JSON null", "organization.user.invited", "'null'::jsonb"),
        odd("SQL NULL", "organization.user.invited", "NULL"),
        odd(
            "control characters and odd Unicode",
            "organization.user.removed",
            format!("'{}'::jsonb", control.to_string().replace('\'', "''")),
        ),
        odd(
            "odd and secret-named keys",
            "organization.user.removed",
            format!("'{}'::jsonb", odd_keys.to_string().replace('\'', "''")),
        ),
        odd(
            "an unknown event type with a secret in its metadata",
            "organization.unknown.thing",
            format!("jsonb_build_object('token', '{token}')"),
        ),
    ]
}

async fn insert_odd(client: &tokio_postgres::Client, org: Uuid, row: &OddRow) -> i64 {
    let sql = format!(
        "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata) \
         VALUES ($1, $2, 'user', 'usr_odd', {}) RETURNING id",
        row.metadata_sql
    );
    client
        .query_one(&sql, &[&org, &row.event_type])
        .await
        .unwrap_or_else(|err| panic!("inserting {}: {err}", row.what))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_odd_metadata_become_whole_sanitized_lines_and_mirroring_goes_on() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = db.insert_org("acme-dev").await;
    let client = db.connect().await;
    // The reference schema only takes objects; Compartment's own schema may be looser.
    client
        .batch_execute(
            "ALTER TABLE audit_events DROP CONSTRAINT audit_events_metadata_is_object; \
             ALTER TABLE audit_events ALTER COLUMN metadata DROP NOT NULL",
        )
        .await
        .expect("loosening the metadata column");
    // jsonb itself refuses NUL, so no row can carry one.
    assert!(client
        .execute("SELECT '\"a\\u0000b\"'::jsonb", &[])
        .await
        .is_err());

    let mut daemon = start_daemon(&db, &sink, dir.path()).await;
    let rows = odd_rows();
    let mut ids = Vec::new();
    for row in &rows {
        ids.push(insert_odd(&client, org, row).await);
    }
    // A plain event behind them: it arrives only if no odd row stopped the mirror.
    ids.push(
        db.insert_event(&NewEvent::new(org, "organization.user.invited"))
            .await,
    );

    assert!(
        wait_for_lines(&sink, ids.len(), LINES_WAIT).await,
        "the sink holds {:?}, not {:?} (horizon wait {:?} s); the daemon log:\n{}",
        read_sink_ids(&sink),
        ids,
        daemon.metric("compartment_audit_mirror_horizon_wait_seconds"),
        daemon.log_text()
    );
    assert!(
        daemon.is_running(),
        "the daemon died: {}",
        daemon.log_text()
    );
    assert_eq!(daemon.get("/readyz").map(|(status, _)| status), Some(200));

    let raw = std::fs::read(sink.join("audit.ndjson")).expect("reading the active file");
    let text = String::from_utf8(raw).expect("the sink is UTF-8");
    assert!(
        !text.contains(PLANTED_BODY),
        "a planted token reached the sink"
    );
    for forbidden in ["hunter2", "s3cr3t", "\"password\"", "client_secret"] {
        assert!(!text.contains(forbidden), "{forbidden} reached the sink");
    }
    for line in text.lines() {
        assert!(
            line.len() < 2 << 20,
            "a line of {} bytes: the sanitizer's bounds did not hold",
            line.len()
        );
    }
    let lines = read_sink_lines(&sink);
    let written: Vec<i64> = lines.iter().filter_map(|l| l["id"].as_i64()).collect();
    assert_eq!(written, ids, "every row exactly once, in commit order");
    for (line, row) in lines.iter().zip(&rows) {
        assert!(
            line["metadata"].is_object(),
            "{}: metadata is not an object: {}",
            row.what,
            line["metadata"]
        );
    }
    // Non-object metadata and unknown event types keep their core fields, lose metadata.
    for (line, row) in lines.iter().zip(&rows) {
        if row.what.starts_with("a JSON")
            || row.what == "SQL NULL"
            || row.what.starts_with("an unknown")
        {
            assert_eq!(line["metadata"], serde_json::json!({}), "{}", row.what);
            assert_eq!(line["actor"]["id"], "usr_odd", "{}", row.what);
        }
    }
}
