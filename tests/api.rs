//! The `/v1` list API and access control, against the real daemon (in-process,
//! `daemon::run` on a port-0 listener) and a fresh database per test.

mod api_support;
mod common;
#[path = "sanitize_support/secrets.rs"]
mod secrets;

use std::collections::HashSet;
use std::time::Duration;

use api_support::{acme, create_org, create_role, reader, Server};
use chrono::{DateTime, TimeZone, Utc};
use common::{NewEvent, TestDb};
use serde_json::json;

const EVENTS: &str = "/v1/orgs/acme-dev/audit/events";
const EXPORT: &str = "/v1/orgs/acme-dev/audit/export";

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, minute, 0)
        .single()
        .expect("valid time")
}

fn rfc3339(minute: u32) -> String {
    at(minute).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Six events of acme-dev at minutes 1…6 and one of another organization; returns
/// their ids in that order (the other organization's last).
async fn filter_fixture(db: &TestDb, org: uuid::Uuid) -> Vec<i64> {
    let other = create_org(db, "other-org").await;
    let event = |minute, event_type: &str| NewEvent::new(org, event_type).occurred_at(at(minute));
    db.insert_events(&[
        event(1, "organization.user.invited")
            .actor("user", "usr_a", Some("a@example.com"))
            .target("user", "usr_new"),
        event(2, "organization.user.removed")
            .actor("user", "usr_b", Some("B@Example.com"))
            .target("user", "usr_old")
            .project("prj_1"),
        event(3, "organization.role.created")
            .actor("user", "usr_a", Some("a@example.com"))
            .target("role", "role_1")
            .project("prj_1"),
        event(4, "organization.git_source.connected")
            .actor("system", "svc_deployer", None)
            .target("git_source", "gs_1")
            .project("prj_2"),
        event(5, "organization.auth_settings.updated")
            .actor("user", "usr_b", Some("b@example.com"))
            .target("organization", "org"),
        // `_` must not act as a LIKE wildcard in the prefix filter below.
        event(6, "organization.authXsettings.updated").actor("user", "usr_c", None),
        NewEvent::new(other, "organization.user.invited")
            .occurred_at(at(3))
            .actor("user", "usr_a", Some("a@example.com"))
            .target("user", "usr_new")
            .project("prj_1"),
    ])
    .await
}

#[tokio::test]
async fn each_filter_alone_and_combined_selects_exactly_its_events() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    let ids = filter_fixture(&db, org).await;
    let server = Server::start(&db, |_| {}).await;
    let e = |n: usize| ids[n - 1];
    let cases: Vec<(String, Vec<i64>)> = vec![
        (String::new(), vec![e(6), e(5), e(4), e(3), e(2), e(1)]),
        (format!("from={}", rfc3339(3)), vec![e(6), e(5), e(4), e(3)]),
        (format!("to={}", rfc3339(3)), vec![e(3), e(2), e(1)]),
        (
            format!("from={}&to={}", rfc3339(2), rfc3339(4)),
            vec![e(4), e(3), e(2)],
        ),
        ("event=organization.user.invited".into(), vec![e(1)]),
        ("event=organization.user.*".into(), vec![e(2), e(1)]),
        ("event=organization.auth_settings.*".into(), vec![e(5)]),
        (
            "event=organization.*".into(),
            vec![e(6), e(5), e(4), e(3), e(2), e(1)],
        ),
        ("event=organization.user".into(), vec![]),
        ("actor=usr_a".into(), vec![e(3), e(1)]),
        ("actor=b%40example.com".into(), vec![e(5), e(2)]),
        ("actor=B%40EXAMPLE.COM".into(), vec![e(5), e(2)]),
        ("actor=svc_deployer".into(), vec![e(4)]),
        ("target_type=user".into(), vec![e(2), e(1)]),
        ("project_id=prj_1".into(), vec![e(3), e(2)]),
        ("project_id=prj_3".into(), vec![]),
        (
            "event=organization.user.*&actor=usr_b&project_id=prj_1".into(),
            vec![e(2)],
        ),
        (
            format!(
                "from={}&to={}&actor=a%40example.com&target_type=role",
                rfc3339(1),
                rfc3339(6)
            ),
            vec![e(3)],
        ),
        (
            format!("from={}&event=organization.user.*", rfc3339(2)),
            vec![e(2)],
        ),
    ];
    // Lists first: every export adds an export_created event (dated now), which
    // filters without an upper time bound would rightly match.
    for (query, expected) in &cases {
        let response = server
            .get(&format!("{EVENTS}?{query}"), Some(&reader.token))
            .await;
        assert_eq!(response.status, 200, "{query}: {}", response.text());
        assert_eq!(&response.event_ids(), expected, "list with {query:?}");
        assert_eq!(response.json()["next_cursor"], json!(null), "{query}");
    }
    // The export applies the same filters, oldest first.
    for (query, expected) in &cases {
        let response = server
            .get(&format!("{EXPORT}?{query}"), Some(&reader.token))
            .await;
        assert_eq!(response.status, 200, "{query}: {}", response.text());
        let exported: Vec<i64> = response
            .ndjson()
            .iter()
            .filter(|event| event["event_type"] != "organization.audit.export_created")
            .map(|event| event["id"].as_i64().expect("numeric id"))
            .collect();
        let mut oldest_first = expected.clone();
        oldest_first.reverse();
        assert_eq!(exported, oldest_first, "export with {query:?}");
    }
}

#[tokio::test]
async fn events_show_core_fields_and_only_allowlisted_metadata() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    let id = db
        .insert_event(
            &NewEvent::new(org, "organization.user.invited")
                .occurred_at(at(1))
                .actor("user", "usr_a", Some("a@example.com"))
                .target("user", "usr_new")
                .project("prj_1")
                .status("denied")
                .metadata(json!({"email": "new@example.com", "role_ids": ["role_1"],
                                 "invited_via": "console", "not_allowed": "x"})),
        )
        .await;
    let server = Server::start(&db, |_| {}).await;
    let response = server.get(EVENTS, Some(&reader.token)).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(
        response.json()["events"][0],
        json!({
            "id": id,
            "occurred_at": "2026-05-01T12:01:00.000Z",
            "organization_id": org,
            "organization": "acme-dev",
            "event_type": "organization.user.invited",
            "actor": {"type": "user", "id": "usr_a", "email": "a@example.com"},
            "target": {"type": "user", "id": "usr_new"},
            "project_id": "prj_1",
            "status": "denied",
            "metadata": {"email": "new@example.com", "role_ids": ["role_1"], "invited_via": "console"}
        })
    );
}

/// Walks every page; returns the ids in the order seen.
async fn walk(
    server: &Server,
    token: &str,
    limit: u32,
    mut between: impl AsyncFnMut(usize),
) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let path = match &cursor {
            Some(cursor) => format!("{EVENTS}?limit={limit}&cursor={cursor}"),
            None => format!("{EVENTS}?limit={limit}"),
        };
        let response = server.get(&path, Some(token)).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let ids = response.event_ids();
        assert!(ids.len() <= limit as usize);
        seen.extend(ids);
        match response.json()["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
        between(page).await;
    }
    unreachable!("the loop returns")
}

#[tokio::test]
async fn pagination_through_a_changing_table_loses_and_repeats_nothing() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    // 40 events over 20 distinct times: pairs share an occurred_at, so the id breaks
    // ties and a page boundary falls inside a pair.
    let originals: Vec<NewEvent> = (0..40)
        .map(|i| NewEvent::new(org, "organization.group.updated").occurred_at(at(10 + i / 2)))
        .collect();
    let original_ids = db.insert_events(&originals).await;
    let server = Server::start(&db, |_| {}).await;

    let mut arrived_older = Vec::new();
    let mut arrived_newer = Vec::new();
    let seen = walk(&server, &reader.token, 7, async |page| {
        // Between pages: newer events (above the walk, which it need not show), older
        // ones (below the walk, which it must show) and one at an already-passed time.
        let ids = db
            .insert_events(&[
                NewEvent::new(org, "organization.group.updated").occurred_at(at(59)),
                // Each older than everything so far, so always below the walk's position.
                NewEvent::new(org, "organization.group.updated")
                    .occurred_at(at(0) - chrono::Duration::minutes(page as i64 + 1)),
                NewEvent::new(org, "organization.group.updated").occurred_at(at(29)),
            ])
            .await;
        arrived_newer.push(ids[0]);
        arrived_older.push(ids[1]);
        arrived_newer.push(ids[2]);
    })
    .await;

    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event was repeated: {seen:?}");
    for id in &original_ids {
        assert!(unique.contains(id), "event {id} was lost");
    }
    for id in &arrived_older {
        assert!(
            unique.contains(id),
            "older event {id}, inserted during the walk, was lost"
        );
    }
    for id in &arrived_newer {
        assert!(
            !unique.contains(id),
            "event {id} newer than the walk's position appeared"
        );
    }
    // Newest first throughout: occurred_at descending, then id descending.
    let rows = db
        .client()
        .await
        .query(
            "SELECT id FROM audit_events WHERE id = ANY($1) ORDER BY occurred_at DESC, id DESC",
            &[&seen],
        )
        .await
        .expect("ordering the seen ids");
    let ordered: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(seen, ordered);
}

#[tokio::test]
async fn limit_defaults_to_100_and_is_bounded_by_500() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    db.insert_generated_events(org, "organization.group.updated", 501, at(0))
        .await;
    let server = Server::start(&db, |_| {}).await;

    let response = server.get(EVENTS, Some(&reader.token)).await;
    assert_eq!(response.event_ids().len(), 100);
    assert!(response.json()["next_cursor"].is_string());

    let response = server
        .get(&format!("{EVENTS}?limit=500"), Some(&reader.token))
        .await;
    assert_eq!(response.event_ids().len(), 500);
    let cursor = response.json()["next_cursor"]
        .as_str()
        .expect("one more event")
        .to_owned();
    let last = server
        .get(
            &format!("{EVENTS}?limit=500&cursor={cursor}"),
            Some(&reader.token),
        )
        .await;
    assert_eq!(last.event_ids().len(), 1);
    assert_eq!(last.json()["next_cursor"], json!(null));

    let response = server
        .get(&format!("{EVENTS}?limit=1"), Some(&reader.token))
        .await;
    assert_eq!(response.event_ids().len(), 1);

    for bad in ["0", "501", "-1", "abc", "1e3", ""] {
        let response = server
            .get(&format!("{EVENTS}?limit={bad}"), Some(&reader.token))
            .await;
        assert_eq!(response.status, 400, "limit={bad}");
        assert_eq!(
            response.json()["error"]["parameter"],
            "limit",
            "limit={bad}"
        );
    }
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |_| {}).await;
    let cursor_garbage = "AQAAAAAAAAAAAAAAAAAAAAAA"; // 24 characters: not a cursor
    let cases: &[(&str, &str, &str)] = &[
        (EVENTS, "from=yesterday", "from"),
        (EVENTS, "to=2026-05-01", "to"),
        (EVENTS, "from=2026-05-01T00:00:00+02:00", "from"),
        (
            EVENTS,
            "from=2026-05-02T00:00:00Z&to=2026-05-01T00:00:00Z",
            "to",
        ),
        (EVENTS, "event=*", "event"),
        (EVENTS, "event=organization.*.invited", "event"),
        (EVENTS, "actor=", "actor"),
        (EVENTS, "target_type=%0A", "target_type"),
        (EVENTS, "project_id=%ZZ", "project_id"),
        (EVENTS, "cursor=not-a-cursor", "cursor"),
        (EVENTS, &format!("cursor={cursor_garbage}"), "cursor"),
        (EVENTS, "limit=10&limit=20", "limit"),
        (EVENTS, "evnet=organization.user.invited", "evnet"),
        (EVENTS, "format=csv", "format"),
        (EXPORT, "format=xml", "format"),
        (EXPORT, "format=csv&format=ndjson", "format"),
        (EXPORT, "limit=10", "limit"),
        (EXPORT, "cursor=x", "cursor"),
        (EXPORT, "from=2026-13-01T00:00:00Z", "from"),
    ];
    for (route, query, parameter) in cases {
        let response = server
            .get(&format!("{route}?{query}"), Some(&reader.token))
            .await;
        assert_eq!(response.status, 400, "{route}?{query}: {}", response.text());
        let error = &response.json()["error"];
        assert_eq!(error["code"], "invalid_parameter", "{query}");
        assert_eq!(error["parameter"], *parameter, "{query}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{query}"
        );
    }
}

#[tokio::test]
async fn a_tampered_cursor_is_a_400_not_a_500() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    db.insert_generated_events(org, "organization.group.updated", 3, at(0))
        .await;
    let server = Server::start(&db, |_| {}).await;
    let response = server
        .get(&format!("{EVENTS}?limit=1"), Some(&reader.token))
        .await;
    let cursor = response.json()["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    // Flip each character in turn: every variant is either refused with 400 or a
    // valid position (a 200), never a server error.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..cursor.len() {
        let mut bytes = cursor.clone().into_bytes();
        let current = alphabet.find(bytes[i] as char).expect("base64url");
        bytes[i] = alphabet.as_bytes()[(current + 17) % alphabet.len()];
        let tampered = String::from_utf8(bytes).expect("ASCII");
        let response = server
            .get(&format!("{EVENTS}?cursor={tampered}"), Some(&reader.token))
            .await;
        assert!(
            response.status == 200 || response.status == 400,
            "cursor {tampered}: {} {}",
            response.status,
            response.text()
        );
        if response.status == 400 {
            assert_eq!(response.json()["error"]["parameter"], "cursor");
        }
    }
}

#[tokio::test]
async fn query_strings_longer_than_the_limit_are_refused() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |s| s.http.max_query_bytes = 256).await;
    let long = format!("{EVENTS}?actor={}", "x".repeat(300));
    let response = server.get(&long, Some(&reader.token)).await;
    assert_eq!(response.status, 414);
    assert_eq!(response.error_code(), "query_too_long");
    let fits = format!("{EVENTS}?actor={}", "x".repeat(200));
    assert_eq!(server.get(&fits, Some(&reader.token)).await.status, 200);
}

#[tokio::test]
async fn oversized_headers_are_refused_and_slow_heads_are_cut() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |s| {
        s.http.max_header_bytes = 8 * 1024;
        s.http.request_timeout = Duration::from_secs(1);
    })
    .await;
    let huge = "y".repeat(20 * 1024);
    let auth = format!("Bearer {}", reader.token);
    let response = server
        .request(
            "GET",
            EVENTS,
            &[("Authorization", &auth), ("X-Padding", &huge)],
        )
        .await;
    assert_eq!(response.status, 431, "{response:?}");

    // A head that never completes: the server closes the connection after the
    // header read timeout instead of waiting for ever.
    let started = std::time::Instant::now();
    let response = server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    assert_ne!(response.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the slow head was not cut: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unknown_routes_are_404_other_methods_405_and_health_stays_open() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |_| {}).await;
    for path in [
        "/v1",
        "/v1/",
        "/v1/orgs/acme-dev",
        "/v1/orgs/acme-dev/audit",
        "/v1/orgs/acme-dev/audit/events/",
        "/v1/orgs/acme-dev/audit/exports",
        "/v1/orgs//audit/events",
        "/v2/orgs/acme-dev/audit/events",
        "/nope",
    ] {
        for token in [None, Some(reader.token.as_str())] {
            let response = server.get(path, token).await;
            assert_eq!(response.status, 404, "{path}");
            assert_eq!(response.error_code(), "not_found", "{path}");
        }
    }
    let auth = format!("Bearer {}", reader.token);
    for route in [EVENTS, EXPORT] {
        let response = server
            .request(
                "POST",
                route,
                &[("Authorization", &auth), ("Content-Length", "0")],
            )
            .await;
        assert_eq!(response.status, 405, "{route}");
        assert_eq!(response.header("allow"), Some("GET"));
    }
    assert_eq!(server.get("/healthz", None).await.status, 200);
    let metrics = server.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .text()
        .contains("compartment_audit_api_requests_total"));
    assert!(metrics
        .text()
        .contains("compartment_audit_exports_in_flight"));
}

#[tokio::test]
async fn access_control_refuses_every_caller_without_the_permission() {
    let db = TestDb::new().await;
    let (_, admin) = acme(&db).await;
    create_org(&db, "other-org").await;
    let outsider = reader(&db, "other-org", "boss@other.example", &["admin"]).await;
    create_role(&db, "acme-dev", "viewers", &[]).await;
    create_role(&db, "acme-dev", "auditors", &["organization.audit.read"]).await;
    let viewer = reader(&db, "acme-dev", "viewer@example.com", &["viewers"]).await;
    let auditor = reader(&db, "acme-dev", "auditor@example.com", &["auditors"]).await;
    let nobody = reader(&db, "acme-dev", "nobody@example.com", &[]).await;
    let expired = reader(&db, "acme-dev", "expired@example.com", &["admin"]).await;
    db.client()
        .await
        .execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&expired.token_id],
        )
        .await
        .expect("expiring the token");
    let revoked = reader(&db, "acme-dev", "revoked@example.com", &["admin"]).await;
    compartment_auditd::db::admin::revoke_token(db.pool(), revoked.token_id)
        .await
        .expect("revoking");
    let server = Server::start(&db, |_| {}).await;

    for route in [EVENTS, EXPORT] {
        // 401: no valid token.
        let unauthorized: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("no header", vec![]),
            (
                "basic scheme",
                vec![("Authorization", "Basic b3BzOmh1bnRlcjI=".into())],
            ),
            ("no token", vec![("Authorization", "Bearer".into())]),
            ("no scheme", vec![("Authorization", admin.token.clone())]),
            (
                "two headers",
                vec![
                    ("Authorization", format!("Bearer {}", admin.token)),
                    ("Authorization", format!("Bearer {}", admin.token)),
                ],
            ),
            (
                "unknown token",
                vec![(
                    "Authorization",
                    "Bearer cat_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                )],
            ),
            (
                "not a token",
                vec![("Authorization", "Bearer hunter2".into())],
            ),
            (
                "tampered token",
                vec![("Authorization", format!("Bearer {}x", admin.token))],
            ),
            (
                "expired",
                vec![("Authorization", format!("Bearer {}", expired.token))],
            ),
            (
                "revoked",
                vec![("Authorization", format!("Bearer {}", revoked.token))],
            ),
        ];
        for (case, headers) in unauthorized {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let response = server.request("GET", route, &headers).await;
            assert_eq!(response.status, 401, "{route} {case}: {}", response.text());
            assert_eq!(response.error_code(), "unauthorized", "{case}");
            assert!(
                response
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{case}: {:?}",
                response.headers
            );
        }

        // 403: a valid token without the permission in this organization.
        let forbidden_body = server.get(route, Some(&outsider.token)).await;
        for (case, token) in [
            ("user of another organization", &outsider.token),
            ("custom role without the permission", &viewer.token),
            ("user without roles", &nobody.token),
        ] {
            let response = server.get(route, Some(token)).await;
            assert_eq!(response.status, 403, "{route} {case}");
            assert_eq!(response.error_code(), "forbidden", "{case}");
            assert_eq!(response.body, forbidden_body.body, "{case}");
        }
        // An organization that does not exist answers exactly like a forbidden one.
        let missing = route.replace("acme-dev", "no-such-org");
        let response = server.get(&missing, Some(&admin.token)).await;
        assert_eq!(response.status, 403, "{missing}");
        assert_eq!(response.body, forbidden_body.body);
        let invalid_slug = route.replace("acme-dev", "Not_A_Slug");
        assert_eq!(
            server.get(&invalid_slug, Some(&admin.token)).await.status,
            403
        );

        // 200: built-in admin and a custom role that lists the permission.
        for (case, token) in [
            ("built-in admin", &admin.token),
            ("custom role with it", &auditor.token),
        ] {
            let response = server.get(route, Some(token)).await;
            assert_eq!(response.status, 200, "{route} {case}: {}", response.text());
        }
    }
}

#[tokio::test]
async fn planted_secrets_never_appear_in_list_or_export_output() {
    let db = TestDb::new().await;
    let (org, reader) = acme(&db).await;
    let samples = secrets::secret_samples(3);
    let mut events = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        // Under allowlisted keys (values scrubbed), under secret-named keys (dropped at
        // any depth), in diffs, and in core fields.
        events.push(
            NewEvent::new(org, "organization.git_source.settings_changed")
                .occurred_at(at(i as u32 % 60))
                .target("git_source", &sample.value)
                .metadata(json!({
                    "git_source_id": sample.value,
                    "repository": format!("acme/app {}", sample.value),
                    "changed_fields": [sample.value, {"token": sample.value}],
                    "diff": [
                        {"field": "webhook_secret", "op": "replace", "from": sample.value, "to": sample.value},
                        {"field": "branch", "op": "replace", "from": "main", "to": sample.value}
                    ],
                    "client_secret": sample.value,
                })),
        );
        events.push(
            NewEvent::new(org, "organization.user.password_reset_issued")
                .occurred_at(at(i as u32 % 60))
                .metadata(json!({
                    "user_id": "usr_1", "email": "a@example.com",
                    "issued_via": sample.value, "expires_at": sample.value,
                    "reset_url": format!("https://app.example.com/reset?token={}", sample.value),
                })),
        );
    }
    db.insert_events(&events).await;
    let server = Server::start(&db, |_| {}).await;
    let outputs = [
        server
            .get(&format!("{EVENTS}?limit=500"), Some(&reader.token))
            .await,
        server
            .get(&format!("{EXPORT}?format=ndjson"), Some(&reader.token))
            .await,
        server
            .get(&format!("{EXPORT}?format=csv"), Some(&reader.token))
            .await,
    ];
    for output in &outputs {
        assert_eq!(output.status, 200, "{}", output.text());
        let text = output.text();
        assert!(text.contains("[REDACTED]"), "the fixture plants nothing?");
        for sample in &samples {
            assert!(
                !secrets::leaks(&text, &sample.fragment),
                "{} leaked into {}",
                sample.name,
                output.header("content-type").unwrap_or("?")
            );
        }
    }
}
