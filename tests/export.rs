//! `GET /v1/orgs/{org}/audit/export` against the real daemon (in-process) and a fresh
//! database per test: the row cap, both formats read back by real parsers (CSV by
//! Python's `csv` module), formula neutralisation, the export_created record, and the
//! export limits (concurrency, request timeout, abandoned downloads).

mod api_support;
mod common;

use std::process::Command;
use std::time::Duration;

use api_support::{acme, export_events, Client, HttpResponse, Server};
use chrono::{DateTime, TimeZone, Utc};
use common::{NewEvent, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EXPORT: &str = "/v1/orgs/acme-dev/audit/export";

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, minute, 0)
        .single()
        .expect("valid time")
}

/// Reads a CSV text with Python's `csv` module; returns its rows.
fn python_csv_rows(csv: &[u8]) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("export.csv");
    std::fs::write(&path, csv).expect("writing the CSV");
    let output = Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys\n\
             with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
             \x20   rows = list(csv.reader(f, strict=True))\n\
             json.dump(rows, sys.stdout)",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "Python's csv module rejected the export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("Python printed JSON")
}

/// What a CSV cell must hold for a JSON value of the NDJSON export.
fn expected_cell(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match text.trim_start_matches('\'').chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text,
    }
}

fn ids(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .map(|line| line["id"].as_i64().expect("numeric id"))
        .collect()
}

#[tokio::test]
async fn exactly_the_cap_is_exported_and_one_more_is_refused_with_nothing_streamed() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    db.insert_generated_events(org, "organization.group.updated", 10_000, at(0))
        .await;
    db.insert_event(&NewEvent::new(org, "organization.role.created").occurred_at(at(1)))
        .await;
    let server = Server::start(&db, |_| {}).await;

    // 10,001 match: refused, for both formats, with nothing but the JSON error.
    for format in ["ndjson", "csv"] {
        let response = server
            .get(&format!("{EXPORT}?format={format}"), Some(&reader.token))
            .await;
        assert_eq!(response.status, 422, "{format}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("content-disposition"), None);
        let body = response.json();
        assert_eq!(body["error"]["code"], "audit_export_too_large");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.contains("10000"), "{message}");
        assert!(message.contains("narrow the time range"), "{message}");
        assert!(message.contains("event, actor or target type"), "{message}");
        assert!(!response.text().contains("organization.group.updated"));
    }
    assert!(
        export_events(&db, org).await.is_empty(),
        "a refused export was recorded"
    );

    // Exactly 10,000 match: exported whole, oldest first.
    let filter = "event=organization.group.updated";
    let ndjson = server
        .get(
            &format!("{EXPORT}?format=ndjson&{filter}"),
            Some(&reader.token),
        )
        .await;
    assert_eq!(ndjson.status, 200, "{}", ndjson.text());
    assert!(ndjson.complete, "the body did not end properly");
    assert_eq!(ndjson.header("x-audit-event-count"), Some("10000"));
    let lines = ndjson.ndjson();
    assert_eq!(lines.len(), 10_000);
    let ids = ids(&lines);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not oldest first");

    let csv = server
        .get(
            &format!("{EXPORT}?format=csv&{filter}"),
            Some(&reader.token),
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.complete);
    let rows = python_csv_rows(&csv.body);
    assert_eq!(rows.len(), 10_001, "header and 10,000 rows");

    let recorded = export_events(&db, org).await;
    assert_eq!(recorded.len(), 2);
    for ((_, _, _, metadata), format) in recorded.iter().zip(["ndjson", "csv"]) {
        assert_eq!(metadata["event_count"], 10_000);
        assert_eq!(metadata["format"], format);
    }
}

#[tokio::test]
async fn ndjson_lines_are_the_listed_events_oldest_first() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    let events: Vec<NewEvent> = (0..30)
        .map(|i| {
            NewEvent::new(org, "organization.group.membership_changed")
                .occurred_at(at(i % 7))
                .target("group", &format!("grp_{i}"))
                .metadata(
                    json!({"group_id": format!("grp_{i}"), "added_user_ids": ["u1", "u2"],
                                 "group_name": format!("team \"{i}\"\nline two")}),
                )
        })
        .collect();
    db.insert_events(&events).await;
    let server = Server::start(&db, |_| {}).await;
    let list = server
        .get(
            "/v1/orgs/acme-dev/audit/events?limit=500",
            Some(&reader.token),
        )
        .await;
    let mut listed = list.json()["events"].as_array().expect("events").clone();
    listed.reverse();
    let export = server.get(EXPORT, Some(&reader.token)).await;
    assert_eq!(export.status, 200);
    assert_eq!(export.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(export.ndjson(), listed);
}

#[tokio::test]
async fn csv_round_trips_through_a_real_csv_reader_with_formulas_neutralised() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    let tricky_names = [
        "comma, separated",
        "say \"hi\"",
        "line one\nline two\r\nline three",
        "Zürich — 東京 🚀 naïve",
        "=1+2",
        "",
    ];
    let payloads = [
        "=HYPERLINK(\"http://evil.example/\",\"click\")",
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "\t=1+1",
        "\r=1+1",
        "-5",
        "plain",
    ];
    let mut events = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let name = tricky_names[i % tricky_names.len()];
        events.push(
            NewEvent::new(org, "organization.group.updated")
                .occurred_at(at(i as u32))
                .actor("user", payload, Some(&format!("{payload}@example.com")))
                .target(payload, payload)
                .project(payload)
                .metadata(json!({"group_id": payload, "group_name": name,
                                 "changed_fields": [name, payload]})),
        );
    }
    db.insert_events(&events).await;
    let server = Server::start(&db, |_| {}).await;
    let bound = "to=2026-05-01T13:00:00Z";

    let csv = server
        .get(&format!("{EXPORT}?format=csv&{bound}"), Some(&reader.token))
        .await;
    assert_eq!(csv.status, 200, "{}", csv.text());
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let ndjson = server
        .get(
            &format!("{EXPORT}?format=ndjson&{bound}"),
            Some(&reader.token),
        )
        .await;
    let lines = ndjson.ndjson();
    assert_eq!(lines.len(), payloads.len());

    let rows = python_csv_rows(&csv.body);
    assert_eq!(
        rows[0],
        [
            "id",
            "occurred_at",
            "organization_id",
            "organization",
            "event_type",
            "actor_type",
            "actor_id",
            "actor_email",
            "target_type",
            "target_id",
            "project_id",
            "status",
            "metadata"
        ]
    );
    assert_eq!(rows.len(), lines.len() + 1);
    for (i, (row, line)) in rows[1..].iter().zip(&lines).enumerate() {
        let expected: Vec<String> = [
            &line["id"],
            &line["occurred_at"],
            &line["organization_id"],
            &line["organization"],
            &line["event_type"],
            &line["actor"]["type"],
            &line["actor"]["id"],
            &line["actor"]["email"],
            &line["target"]["type"],
            &line["target"]["id"],
            &line["project_id"],
            &line["status"],
        ]
        .into_iter()
        .map(expected_cell)
        .collect();
        assert_eq!(&row[..12], &expected[..], "row of event {}", line["id"]);
        // The metadata column is the sanitized metadata as JSON text; it survives
        // commas, quotes, newlines and non-ASCII byte for byte.
        let metadata: Value = serde_json::from_str(&row[12]).expect("metadata is JSON");
        assert_eq!(metadata, line["metadata"]);
        // …and equals what was stored, byte for byte.
        let name = tricky_names[i % tricky_names.len()];
        assert_eq!(metadata["group_name"], name);
        assert_eq!(metadata["changed_fields"], json!([name, payloads[i]]));
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "cell {cell:?} would run as a formula"
            );
        }
    }
    // The payloads did reach the export (neutralised, not dropped).
    let all: Vec<&String> = rows.iter().flatten().collect();
    assert!(all
        .iter()
        .any(|c| c.as_str() == "'=HYPERLINK(\"http://evil.example/\",\"click\")"));
    assert!(all.iter().any(|c| c.as_str() == "'-5"));
    let text = csv.text();
    for name in tricky_names.iter().filter(|n| !n.is_empty()) {
        let json_text = serde_json::to_string(name).expect("encodes");
        let csv_quoted = json_text.replace('"', "\"\"");
        assert!(
            text.contains(&csv_quoted),
            "{name:?} is not in the CSV as JSON text"
        );
    }
}

#[tokio::test]
async fn each_export_records_its_format_count_filters_and_caller() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    db.insert_events(&[
        NewEvent::new(org, "organization.user.invited")
            .occurred_at(at(1))
            .actor("user", "usr_a", Some("a@example.com"))
            .target("user", "usr_1")
            .project("prj_1"),
        NewEvent::new(org, "organization.user.removed")
            .occurred_at(at(2))
            .actor("user", "usr_a", Some("a@example.com"))
            .target("user", "usr_1")
            .project("prj_1"),
        NewEvent::new(org, "organization.role.created").occurred_at(at(3)),
    ])
    .await;
    let server = Server::start(&db, |_| {}).await;

    let filtered = server
        .get(
            &format!(
                "{EXPORT}?format=ndjson&from=2026-05-01T12:00:00Z&to=2026-05-01T14:30:00%2B02:00\
                 &event=organization.user.*&actor=A%40example.com&target_type=user&project_id=prj_1"
            ),
            Some(&reader.token),
        )
        .await;
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.ndjson().len(), 2);
    let disposition = filtered.header("content-disposition").expect("a file name");
    let name = disposition
        .strip_prefix("attachment; filename=\"audit-acme-dev-")
        .and_then(|rest| rest.strip_suffix(".ndjson\""))
        .unwrap_or_else(|| panic!("unexpected Content-Disposition: {disposition}"));
    assert!(
        DateTime::parse_from_str(&format!("{name} +0000"), "%Y%m%dT%H%M%SZ %z").is_ok(),
        "{name} is not a UTC stamp"
    );
    assert_eq!(filtered.header("cache-control"), Some("no-store"));

    let all = server
        .get(&format!("{EXPORT}?format=csv"), Some(&reader.token))
        .await;
    assert_eq!(all.status, 200);
    assert!(all
        .header("content-disposition")
        .is_some_and(|d| d.ends_with(".csv\"")));
    // Three fixture events and the first export's record.
    assert_eq!(python_csv_rows(&all.body).len(), 1 + 4);

    let recorded = export_events(&db, org).await;
    assert_eq!(
        recorded,
        vec![
            (
                "api_token".to_owned(),
                reader.token_id.to_string(),
                Some(reader.email.clone()),
                json!({"format": "ndjson", "event_count": 2, "filters": {
                    "from": "2026-05-01T12:00:00Z", "to": "2026-05-01T12:30:00Z",
                    "event": "organization.user.*", "actor": "A@example.com",
                    "target_type": "user", "project_id": "prj_1"}}),
            ),
            (
                "api_token".to_owned(),
                reader.token_id.to_string(),
                Some(reader.email.clone()),
                json!({"format": "csv", "event_count": 4, "filters": {}}),
            ),
        ]
    );
    // The record is itself an event the list shows, with its metadata allowlisted.
    let list = server
        .get(
            "/v1/orgs/acme-dev/audit/events?event=organization.audit.export_created",
            Some(&reader.token),
        )
        .await;
    let events = list.json()["events"].clone();
    assert_eq!(events[0]["actor"]["type"], "api_token");
    assert_eq!(events[0]["metadata"]["format"], "csv");
    assert_eq!(events[0]["metadata"]["event_count"], 4);
    assert_eq!(events[0]["target"]["type"], "organization");
}

/// Polls a zero-row export until the single export permit is free again; returns it.
async fn wait_for_free_permit(client: Client, token: &str) -> HttpResponse {
    let probe = format!("{EXPORT}?event=organization.no.such.event");
    let found = api_support_wait(Duration::from_secs(60), async || {
        let response = client.get(&probe, Some(token)).await;
        (response.status != 429).then_some(response)
    })
    .await;
    found.expect("the export permit was not released within 60 s")
}

async fn api_support_wait<T>(
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exports_are_bounded_with_a_429() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    db.insert_generated_events(org, "organization.group.updated", 10, at(0))
        .await;
    let server = Server::start(&db, |s| s.http.max_concurrent_exports = 1).await;

    // Hold the first export inside its count: a lock it has to wait for.
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("locking");
    let client = server.client();
    let token = reader.token.clone();
    let first = tokio::spawn(async move { client.get(EXPORT, Some(&token)).await });
    let waiting = api_support_wait(Duration::from_secs(30), async || {
        // Not on `locker`: inside its transaction pg_stat_activity is a snapshot
        // taken at first use and would never change.
        let row = db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        (row.get::<_, i64>(0) > 0).then_some(())
    })
    .await;
    assert!(
        waiting.is_some(),
        "the first export never reached the database"
    );

    let second = server.get(EXPORT, Some(&reader.token)).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.error_code(), "too_many_exports");
    assert_eq!(second.header("retry-after"), Some("5"));

    locker.batch_execute("ROLLBACK").await.expect("unlocking");
    let first = first.await.expect("the first request task");
    assert_eq!(first.status, 200);
    assert_eq!(first.ndjson().len(), 10);
    let third = server.get(EXPORT, Some(&reader.token)).await;
    assert_eq!(third.status, 200);
    assert_eq!(
        export_events(&db, org).await.len(),
        2,
        "the refused export was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_stuck_past_the_request_timeout_gets_503_and_frees_its_permit() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    let server = Server::start(&db, |s| {
        s.http.max_concurrent_exports = 1;
        s.http.request_timeout = Duration::from_secs(1);
    })
    .await;
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("locking");
    let response = server.get(EXPORT, Some(&reader.token)).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.error_code(), "timeout");
    locker.batch_execute("ROLLBACK").await.expect("unlocking");
    let next = wait_for_free_permit(server.client(), &reader.token).await;
    assert_eq!(next.status, 200);
    // Only the probe that got through is recorded.
    let recorded = export_events(&db, org).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].3["event_count"], 0);
}

/// Inserts `count` events with ~2 KiB of metadata each, in one statement.
async fn insert_bulky_events(db: &TestDb, org: uuid::Uuid, count: i64) {
    db.client()
        .await
        .execute(
            "INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type, actor_id, metadata)
             SELECT $1, $2, 'organization.group.updated', 'user', 'usr_test',
                    jsonb_build_object('group_id', 'grp_' || n, 'group_name', repeat('x', 2000))
             FROM generate_series(1, $3::bigint) AS n",
            &[&org, &at(0), &count],
        )
        .await
        .expect("inserting bulky events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_export_is_not_recorded() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    insert_bulky_events(&db, org, 10_000).await;
    let server = Server::start(&db, |s| s.http.max_concurrent_exports = 1).await;
    let client = server.client();

    // Read the head, then hang up: ~20 MiB were still to come.
    let mut stream = tokio::net::TcpStream::connect(client.addr)
        .await
        .expect("connecting");
    stream
        .write_all(client.head(EXPORT, &reader.token).as_bytes())
        .await
        .expect("sending");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .await
            .expect("reading the head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    drop(stream);

    let probe = wait_for_free_permit(client, &reader.token).await;
    assert_eq!(probe.status, 200);
    let recorded = export_events(&db, org).await;
    assert_eq!(
        recorded.len(),
        1,
        "the abandoned export was recorded: {recorded:?}"
    );
    assert_eq!(recorded[0].3["event_count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_outlives_the_request_timeout_is_cut_and_not_recorded() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    insert_bulky_events(&db, org, 10_000).await;
    let server = Server::start(&db, |s| {
        s.http.max_concurrent_exports = 1;
        s.http.request_timeout = Duration::from_secs(2);
    })
    .await;
    let client = server.client();

    // A client that reads the head and then stalls: ~20 MiB cannot fit in the socket
    // buffers, so the export cannot finish before its deadline.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(client.addr).await.expect("connecting");
    stream
        .write_all(client.head(EXPORT, &reader.token).as_bytes())
        .await
        .expect("sending");
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .await
            .expect("reading the head");
        raw.push(byte[0]);
    }
    // The permit comes back once the export task has given up at its deadline.
    let probe = wait_for_free_permit(client, &reader.token).await;
    assert_eq!(probe.status, 200);

    // Reading on, the client gets what was buffered and then a cut connection, never
    // the final chunk: the partial export cannot pass for a complete one.
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("the connection ends")
        .ok();
    let response = HttpResponse::parse(&raw);
    assert_eq!(response.status, 200);
    assert!(!response.complete, "a cut export ended like a complete one");
    assert!(response.body.len() < 20_000_000);
    let recorded = export_events(&db, org).await;
    assert_eq!(
        recorded.len(),
        1,
        "the cut export was recorded: {recorded:?}"
    );
    assert_eq!(recorded[0].3["event_count"], 0);
}
