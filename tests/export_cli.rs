//! `compartment-auditd list` and `export`: the real binary against a fresh database,
//! with the same parameters, cap and errors as the HTTP API.

mod api_support;
mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use api_support::{create_org, export_events};
use chrono::{DateTime, TimeZone, Utc};
use common::{NewEvent, TestDb};
use serde_json::{json, Value};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, minute, 0)
        .single()
        .expect("valid time")
}

/// Every entry of a directory, by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("reading the directory")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn cli_export_over_the_cap_fails_like_the_api_and_leaves_no_file() {
    let db = TestDb::new().await;
    let org = create_org(&db, "acme-dev").await;
    db.insert_generated_events(org, "organization.group.updated", 10_000, at(0))
        .await;
    db.insert_event(&NewEvent::new(org, "organization.role.created").occurred_at(at(1)))
        .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("audit.ndjson");
    let out_text = out.to_str().expect("UTF-8 path");

    for format in ["ndjson", "csv"] {
        let (status, stdout, stderr) = db
            .cli(&[
                "export", "--org", "acme-dev", "--format", format, "--output", out_text,
            ])
            .await;
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("audit_export_too_large"), "{stderr}");
        assert!(stderr.contains("narrow the time range"), "{stderr}");
        assert!(stdout.is_empty());
        assert!(
            entries(dir.path()).is_empty(),
            "left behind: {:?}",
            entries(dir.path())
        );
    }

    // To stdout: refused before a single byte.
    let (status, stdout, stderr) = db
        .cli(&[
            "export", "--org", "acme-dev", "--format", "csv", "--output", "-",
        ])
        .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stdout.is_empty(),
        "something was streamed: {} bytes",
        stdout.len()
    );

    // An existing file is left as it was.
    std::fs::write(&out, "previous export\n").expect("writing");
    let (status, _, _) = db
        .cli(&[
            "export", "--org", "acme-dev", "--format", "ndjson", "--output", out_text,
        ])
        .await;
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&out).expect("reading"),
        "previous export\n"
    );
    assert_eq!(entries(dir.path()), ["audit.ndjson"]);
    assert!(export_events(&db, org).await.is_empty());

    // Exactly the cap passes: the filters leave the 10,000 generated events.
    let (status, _, stderr) = db
        .cli(&[
            "export",
            "--org",
            "acme-dev",
            "--format",
            "ndjson",
            "--output",
            out_text,
            "--to",
            "2026-05-01T12:00:00Z",
            "--actor",
            "usr_test",
            "--event",
            "organization.group.*",
        ])
        .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let text = std::fs::read_to_string(&out).expect("reading the export");
    assert_eq!(text.lines().count(), 10_000);
    assert_eq!(export_events(&db, org).await.len(), 1);
}

#[tokio::test]
async fn cli_exports_to_a_file_and_stdout_and_records_each() {
    let db = TestDb::new().await;
    let org = create_org(&db, "acme-dev").await;
    db.insert_events(&[
        NewEvent::new(org, "organization.user.invited")
            .occurred_at(at(1))
            .target("user", "=cmd|' /C calc'!A0")
            .metadata(json!({"email": "new@example.com", "invited_via": "console",
                             "password": "hunter2"})),
        NewEvent::new(org, "organization.role.created")
            .occurred_at(at(2))
            .metadata(json!({"role_name": "a, \"b\"\nc — é"})),
    ])
    .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("audit.csv");

    let (status, _, stderr) = db
        .cli(&[
            "export",
            "--org",
            "acme-dev",
            "--format",
            "csv",
            "--output",
            out.to_str().expect("UTF-8"),
        ])
        .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Exported 2 events"), "{stderr}");
    assert_eq!(
        entries(dir.path()),
        ["audit.csv"],
        "a temporary file was left"
    );
    let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let csv = std::fs::read_to_string(&out).expect("reading");
    assert!(csv.starts_with("id,occurred_at,organization_id,"));
    assert!(csv.contains("'=cmd|"), "{csv}");
    assert!(!csv.contains("hunter2"));

    let (status, stdout, stderr) = db
        .cli(&[
            "export", "--org", "acme-dev", "--format", "ndjson", "--output", "-",
        ])
        .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    // The two fixture events and the record of the CSV export, oldest first.
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["event_type"], "organization.audit.export_created");
    assert_eq!(
        lines[0]["metadata"],
        json!({"email": "new@example.com", "invited_via": "console"})
    );

    let recorded = export_events(&db, org).await;
    assert_eq!(
        recorded,
        vec![
            (
                "system".to_owned(),
                "compartment-auditd-cli".to_owned(),
                None,
                json!({"format": "csv", "event_count": 2, "filters": {}}),
            ),
            (
                "system".to_owned(),
                "compartment-auditd-cli".to_owned(),
                None,
                json!({"format": "ndjson", "event_count": 3, "filters": {}}),
            ),
        ]
    );
}

#[tokio::test]
async fn cli_list_filters_pages_and_prints_table_or_json() {
    let db = TestDb::new().await;
    let org = create_org(&db, "acme-dev").await;
    let other = create_org(&db, "other-org").await;
    let ids = db
        .insert_events(&[
            NewEvent::new(org, "organization.user.invited")
                .occurred_at(at(1))
                .target("user", "usr_\u{1b}[31mred"),
            NewEvent::new(org, "organization.user.removed").occurred_at(at(2)),
            NewEvent::new(org, "organization.role.created").occurred_at(at(3)),
            NewEvent::new(other, "organization.user.invited").occurred_at(at(4)),
        ])
        .await;

    let (status, stdout, stderr) = db
        .cli(&[
            "list",
            "--org",
            "acme-dev",
            "--event",
            "organization.user.*",
            "--limit",
            "1",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let page: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["events"][0]["id"], ids[1]);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (status, stdout, _) = db
        .cli(&[
            "list",
            "--org",
            "acme-dev",
            "--event",
            "organization.user.*",
            "--limit",
            "1",
            "--cursor",
            &cursor,
            "--output",
            "json",
        ])
        .await;
    assert_eq!(status.code(), Some(0));
    let page: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(page["events"][0]["id"], ids[0]);
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, stdout, stderr) = db.cli(&["list", "--org", "acme-dev"]).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("OCCURRED_AT"), "{stdout}");
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[1].contains("organization.role.created"));
    assert!(
        !stdout.contains('\u{1b}'),
        "a control character reached the terminal"
    );
    assert!(stdout.contains("usr_\\u{1b}[31mred"), "{stdout}");

    // Bad parameters: the API's message, naming the flag, usage exit status.
    for (args, flag) in [
        (&["--from", "yesterday"][..], "--from"),
        (&["--target-type", ""], "--target-type"),
        (&["--limit", "501"], "--limit"),
        (&["--limit", "-1"], "--limit"),
        (&["--event", "*"], "--event"),
        (&["--cursor", "nope"], "--cursor"),
    ] {
        let mut full = vec!["list", "--org", "acme-dev"];
        full.extend_from_slice(args);
        let (status, stdout, stderr) = db.cli(&full).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid_parameter"), "{stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(stdout.is_empty());
    }
    let (status, _, stderr) = db
        .cli(&[
            "export", "--org", "acme-dev", "--format", "xml", "--output", "-",
        ])
        .await;
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--format"), "{stderr}");

    let (status, _, stderr) = db.cli(&["list", "--org", "no-such-org"]).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("does not exist"), "{stderr}");
}
