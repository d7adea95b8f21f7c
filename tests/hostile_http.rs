//! Hostile HTTP input (issue 8, item 3), against the real daemon binary: slow clients
//! (slowloris), malformed request lines and headers, oversized heads and queries,
//! percent-encoding that is broken or not UTF-8, path traversal attempts in `{org}`,
//! odd methods, and rows whose metadata no well-behaved producer writes. Each gets a
//! clear `4xx` (a JSON error wherever the request reached the daemon's routes, or a
//! closed connection for protocol-level garbage), never a `5xx`, and the daemon stays
//! ready and keeps serving everyone else.

mod api_support;
mod common;
#[path = "support/hostile.rs"]
mod hostile;
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestDb;
use hostile::raw_exchange;
use support::{Daemon, DaemonConfig};

const EVENTS: &str = "/v1/orgs/acme-dev/audit/events";
const EXPORT: &str = "/v1/orgs/acme-dev/audit/export";

/// The header read timeout the tests run with: short, so a cut is seen quickly.
const HEADER_TIMEOUT_SECS: u64 = 2;

/// The daemon with the file sink off (the API needs none) and short request limits.
async fn start(db: &TestDb, logs: &std::path::Path) -> Daemon {
    let mut config = DaemonConfig::new(db.url(), &logs.join("unused-sink"), logs)
        .with(
            "COMPARTMENT_AUDIT_HTTP_REQUEST_TIMEOUT",
            &format!("{HEADER_TIMEOUT_SECS}s"),
        )
        .with("COMPARTMENT_AUDIT_HTTP_MAX_QUERY_BYTES", "2K");
    config.sink_dir = None;
    let daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "the daemon did not get ready: {}",
        daemon.log_text()
    );
    daemon
}

/// One request with `Connection: close`: (status, body).
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (Option<u16>, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let (status, text) = raw_exchange(port, head.as_bytes(), Duration::from_secs(10));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `error.code` of a JSON error body; panics when the body is not one.
fn error_code(what: &str, body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|err| panic!("{what}: the body is not JSON ({err}): {body:?}"));
    let code = json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!code.is_empty(), "{what}: no error code in {body}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no error message in {body}"
    );
    code
}

/// The daemon is alive, ready, and answers a real request.
fn assert_still_serving(daemon: &mut Daemon, token: &str) {
    assert!(
        daemon.is_running(),
        "the daemon died: {}",
        daemon.log_text()
    );
    assert_eq!(daemon.get("/readyz").map(|(s, _)| s), Some(200));
    let auth = format!("Bearer {token}");
    let (status, body) = request(daemon.port, "GET", EVENTS, &[("Authorization", &auth)]);
    assert_eq!(
        status,
        Some(200),
        "a valid request after the attack: {body}"
    );
}

/// A slowloris client: sends a request head one byte per second and never finishes.
/// Returns how long the server let it trickle before closing the connection (`None`
/// when it was still open after `give_up`).
fn slowloris(port: u16, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("setting a read timeout");
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let trickle = head.iter().chain(std::iter::repeat(&b'a'));
    let mut buf = [0u8; 1024];
    for byte in trickle {
        if started.elapsed() > give_up {
            return None;
        }
        if stream.write_all(&[*byte]).is_err() {
            return Some(started.elapsed());
        }
        // Waits up to a second: the trickle rate, and the moment a close shows.
        match stream.read(&mut buf) {
            Ok(_) => return Some(started.elapsed()), // EOF, or an error response then EOF
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()), // reset
        }
    }
    unreachable!("the trickle is endless")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_by_the_header_timeout_while_others_are_served() {
    let db = TestDb::new().await;
    api_support::acme(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&db, dir.path()).await;
    let port = daemon.port;

    // Forty slow clients at once, each trickling one byte per second.
    let slow: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || slowloris(port, Duration::from_secs(20))))
        .collect();
    // Meanwhile everybody else is served promptly.
    let served_from = Instant::now();
    while served_from.elapsed() < Duration::from_secs(HEADER_TIMEOUT_SECS + 1) {
        let asked = Instant::now();
        assert_eq!(
            support::http_get(port, "/healthz").map(|(s, _)| s),
            Some(200),
            "a normal client was not served during the attack"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "a normal client waited {:?}",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for client in slow {
        let cut_after = client
            .join()
            .expect("a slow client thread")
            .expect("a slowloris client was still connected after 20 s");
        // Cut by the header read timeout (with a second of trickle granularity and
        // scheduling slack on a busy machine), not by anything that takes much longer.
        assert!(
            cut_after >= Duration::from_secs(HEADER_TIMEOUT_SECS - 1)
                && cut_after <= Duration::from_secs(HEADER_TIMEOUT_SECS + 6),
            "a slow head was cut after {cut_after:?}"
        );
    }
    assert_eq!(daemon.get("/readyz").map(|(s, _)| s), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_a_4xx_or_a_close_never_a_5xx() {
    let db = TestDb::new().await;
    let (_, reader) = api_support::acme(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(&db, dir.path()).await;
    let auth = format!("Bearer {}", reader.token);

    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("method only", b"GET\r\n\r\n".to_vec()),
        ("unknown version", b"GET /healthz HTTP/9.9\r\n\r\n".to_vec()),
        ("binary noise", b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec()),
        ("TLS hello on a plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        (
            "header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
        ),
        (
            "non-ASCII bytes in the path",
            b"GET /v1/orgs/acme-\xff\xfe/audit/events HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "invalid UTF-8 in the raw query",
            [
                format!("GET {EVENTS}?actor=").as_bytes(),
                b"\xff\xfe",
                format!(" HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n").as_bytes(),
            ]
            .concat(),
        ),
        (
            "a NUL byte in a header value",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
        ),
        (
            "a bad Content-Length",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
        (
            "Content-Length and chunked together (request smuggling)",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "a 64 KiB method",
            format!("{} / HTTP/1.1\r\nHost: x\r\n\r\n", "A".repeat(64 * 1024)).into_bytes(),
        ),
        (
            "a 1 MiB path",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20)).into_bytes(),
        ),
        (
            "a 1 MiB query",
            format!("GET {EVENTS}?actor={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20))
                .into_bytes(),
        ),
        (
            "a 100 KiB header",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(100 * 1024))
                .into_bytes(),
        ),
        (
            "500 headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
        ),
        (
            "a 100 KiB bearer token",
            format!(
                "GET {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                "t".repeat(100 * 1024)
            )
            .into_bytes(),
        ),
    ];
    for (what, bytes) in &cases {
        let started = Instant::now();
        let (status, text) = raw_exchange(daemon.port, bytes, Duration::from_secs(15));
        assert!(
            started.elapsed() < Duration::from_secs(HEADER_TIMEOUT_SECS + 8),
            "{what}: the connection stayed open for {:?}",
            started.elapsed()
        );
        if let Some(status) = status {
            // RFC 9112 §6.3: with both framing headers the server may go by the
            // chunked coding, but must close the connection after the response, so
            // nothing can be smuggled in behind it.
            let smuggling_closed = what.contains("smuggling")
                && text
                    .to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n");
            assert!(
                (400..500).contains(&status) || smuggling_closed,
                "{what}: answered {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        assert!(
            daemon.is_running(),
            "{what} killed the daemon: {}",
            daemon.log_text()
        );
    }
    assert_still_serving(&mut daemon, &reader.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_queries_and_methods_get_clear_json_errors() {
    let db = TestDb::new().await;
    let (_, reader) = api_support::acme(&db).await;
    // Another organization the reader must never see, whatever the path says.
    api_support::create_org(&db, "other-org").await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(&db, dir.path()).await;
    let port = daemon.port;
    let auth = format!("Bearer {}", reader.token);
    let authed = [("Authorization", auth.as_str())];

    // Path traversal and odd spellings of `{org}`: never another organization's
    // events, never a server error; a JSON 403 or 404.
    let long_org = format!("/v1/orgs/{}/audit/events", "o".repeat(4000));
    for path in [
        "/v1/orgs/..%2F..%2Fetc%2Fpasswd/audit/events",
        "/v1/orgs/..%2Fother-org/audit/events",
        "/v1/orgs/%2e%2e/audit/events",
        "/v1/orgs/acme-dev%00/audit/events",
        "/v1/orgs/acme-dev%2F..%2Fother-org/audit/events",
        "/v1/orgs/acme-dev/../other-org/audit/events",
        "/v1/orgs/../orgs/other-org/audit/events",
        "/v1/orgs/acme-dev/audit/../audit/events",
        "/v1/orgs/other-org/audit/events",
        "/v1/orgs/ACME-DEV/audit/events",
        "/v1/orgs/acme%2Ddev/audit/events",
        "/v1/orgs/%ZZ/audit/events",
        "/v1/orgs/%/audit/events",
        "/v1/orgs/%C3%A9/audit/export",
        "/v1/orgs/acme-dev;other-org/audit/events",
        &long_org,
    ] {
        let (status, body) = request(port, "GET", path, &authed);
        let status = status.unwrap_or_else(|| panic!("{path}: no answer"));
        assert!(
            status == 403 || status == 404,
            "{path}: answered {status}: {body}"
        );
        let code = error_code(path, &body);
        assert!(code == "forbidden" || code == "not_found", "{path}: {code}");
    }

    // Queries: broken or non-UTF-8 percent-encoding, NUL, controls: 400 naming the
    // parameter.
    for (query, parameter) in [
        ("actor=%FF%FE", "actor"),
        ("actor=%E2%82", "actor"),
        ("actor=%ZZ", "actor"),
        ("actor=%", "actor"),
        ("actor=%0", "actor"),
        ("event=%00", "event"),
        ("limit=1%00", "limit"),
        ("limit=%EF%BC%91", "limit"), // a full-width digit one
        ("from=2026-05-01T00:00:00Z%0A", "from"),
        ("%FF=1", "%FF"),
        ("cursor=..%2F..%2F", "cursor"),
        ("project_id=%0D%0AX-Injected:%201", "project_id"),
    ] {
        let (status, body) = request(port, "GET", &format!("{EVENTS}?{query}"), &authed);
        assert_eq!(status, Some(400), "?{query}: {body}");
        assert_eq!(error_code(query, &body), "invalid_parameter", "?{query}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["parameter"], parameter, "?{query}");
    }
    // A query past the limit: 414 with its own code (the head itself is within limits).
    let (status, body) = request(
        port,
        "GET",
        &format!("{EVENTS}?actor={}", "a".repeat(3000)),
        &authed,
    );
    assert_eq!(status, Some(414), "{body}");
    assert_eq!(error_code("long query", &body), "query_too_long");

    // Odd methods: 405 with Allow on the API and the health routes, as JSON.
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "get",
    ] {
        for path in [EVENTS, EXPORT, "/healthz", "/metrics"] {
            let (status, body) = request(port, method, path, &authed);
            assert_eq!(status, Some(405), "{method} {path}: {body}");
            assert_eq!(error_code(method, &body), "method_not_allowed");
        }
    }
    // HEAD on the API is not a GET: refused the same way (no body by definition).
    let (status, _) = request(port, "HEAD", EVENTS, &authed);
    assert_eq!(status, Some(405));
    // CONNECT in authority form is not a route at all.
    let (status, _) = raw_exchange(
        port,
        b"CONNECT 127.0.0.1:5432 HTTP/1.1\r\nHost: 127.0.0.1:5432\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(
        status.is_none_or(|s| (400..500).contains(&s)),
        "CONNECT: {status:?}"
    );

    // Credentials that are not a bearer token: 401 JSON.
    for value in [
        "Basic b3BzOnB3",
        "Bearer",
        "Bearer ",
        "bearer x",
        "Bearer a b",
    ] {
        let (status, body) = request(port, "GET", EVENTS, &[("Authorization", value)]);
        assert_eq!(status, Some(401), "{value}: {body}");
        error_code(value, &body);
    }
    assert_still_serving(&mut daemon, &reader.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_odd_metadata_are_listed_and_exported() {
    let db = TestDb::new().await;
    let (org, reader) = api_support::acme(&db).await;
    let client = db.connect().await;
    client
        .batch_execute(
            "ALTER TABLE audit_events DROP CONSTRAINT audit_events_metadata_is_object; \
             ALTER TABLE audit_events ALTER COLUMN metadata DROP NOT NULL",
        )
        .await
        .expect("loosening the metadata column");
    for metadata_sql in [
        "('{\"changed_fields\":' || repeat('[', 10000) || repeat(']', 10000) || '}')::jsonb",
        "(repeat('{\"k\":', 5000) || '1' || repeat('}', 5000))::jsonb",
        "NULL",
        "'\"a string\"'::jsonb",
        "jsonb_build_object('changed_fields', repeat('x', 4 * 1024 * 1024))",
    ] {
        client
            .execute(
                &format!(
                    "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata) \
                     VALUES ($1, 'organization.settings.updated', 'user', 'usr_odd', {metadata_sql})"
                ),
                &[&org],
            )
            .await
            .unwrap_or_else(|err| panic!("inserting {metadata_sql}: {err}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(&db, dir.path()).await;
    let auth = format!("Bearer {}", reader.token);
    let authed = [("Authorization", auth.as_str())];

    let (status, body) = request(daemon.port, "GET", EVENTS, &authed);
    assert_eq!(
        status,
        Some(200),
        "the list failed: {}",
        &body[..body.len().min(500)]
    );
    // Chunked or not, the JSON object is the part between the first `{` and last `}`.
    let json_text = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let list: serde_json::Value = serde_json::from_str(json_text).expect("the list is JSON");
    let events = list["events"].as_array().expect("events");
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e["metadata"].is_object()));

    for format in ["ndjson", "csv"] {
        let (status, body) = request(
            daemon.port,
            "GET",
            &format!("{EXPORT}?format={format}"),
            &authed,
        );
        assert_eq!(
            status,
            Some(200),
            "the {format} export failed: {}",
            &body[..body.len().min(500)]
        );
        assert!(
            body.matches("usr_odd").count() == 5,
            "{format}: not every row was exported"
        );
    }
    assert_still_serving(&mut daemon, &reader.token);
}
