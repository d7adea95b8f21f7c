//! The `/v1` API cannot starve the mirror (issue 20 B6): its own pool, a
//! `statement_timeout` on its sessions, abandoned queries cancelled, a failed-auth
//! limit per client address and a cap on requests in flight.
//!
//! API queries are made slow for certain, not by load: the test holds an `EXCLUSIVE`
//! lock on `api_tokens`, so every token lookup (which updates `last_used_at`) waits on
//! it for as long as the test wants, holding its connection (and, without
//! cancellation, keeping its query on the server after the request has given up).
//! Not `ACCESS EXCLUSIVE`: that one is WAL-logged, which takes a transaction id, and
//! an open transaction id holds the mirror back by design.

mod api_support;
mod common;
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api_support::{acme, Server};
use common::TestDb;
use support::{compare_ids, read_sink_ids, wait_for, DaemonConfig};

/// A token that looks real (so it is looked up) but is not.
const BAD_TOKEN: &str = "cat_0000000000000000000000000000000000000000000";

const EVENTS: &str = "/v1/orgs/acme-dev/audit/events";
const EXPORT: &str = "/v1/orgs/acme-dev/audit/export";

/// Holds `EXCLUSIVE` on `api_tokens` until dropped (the connection closes).
async fn lock_tokens(db: &TestDb) -> tokio_postgres::Client {
    let client = db.connect().await;
    client
        .batch_execute("BEGIN; LOCK TABLE api_tokens IN EXCLUSIVE MODE")
        .await
        .expect("locking api_tokens");
    client
}

/// Queries of this database waiting for the lock on `api_tokens`.
async fn queries_waiting_on_tokens(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND state = 'active' AND wait_event_type = 'Lock'
               AND query ILIKE '%api_tokens%'",
            &[],
        )
        .await
        .expect("reading pg_stat_activity")
        .get(0)
}

#[tokio::test]
async fn failed_authentications_beyond_the_limit_get_429_without_a_lookup() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |s| s.http.max_auth_failures = 3).await;

    // A client that succeeds is never limited.
    for _ in 0..5 {
        assert_eq!(server.get(EVENTS, Some(&reader.token)).await.status, 200);
    }
    for case in [Some(BAD_TOKEN), None, Some("not-a-cat-token")] {
        let response = server.get(EVENTS, case).await;
        assert_eq!(response.status, 401, "{case:?}: {}", response.text());
    }
    // With the lookups blocked by the lock, an answer proves none was made.
    let lock = lock_tokens(&db).await;
    for token in [BAD_TOKEN, reader.token.as_str()] {
        let response = server.get(EVENTS, Some(token)).await;
        assert_eq!(response.status, 429, "{}", response.text());
        assert_eq!(response.error_code(), "too_many_auth_failures");
        let wait: u64 = response
            .header("retry-after")
            .expect("a Retry-After header")
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    }
    drop(lock);
    server.stop().await;
}

/// `compartment_audit_api_queries_cancelled_total` of `server` (one process per
/// test under nextest, so only this test's requests count).
async fn cancelled_queries(server: &Server) -> f64 {
    let metrics = server.get("/metrics", None).await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("compartment_audit_api_queries_cancelled_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the cancelled-queries counter is exported")
}

#[tokio::test]
async fn requests_that_end_normally_give_their_session_back() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    db.insert_org("other").await;
    let server = Server::start(&db, |_| ()).await;
    for (path, token, status) in [
        (EVENTS, Some(reader.token.as_str()), 200),
        (EXPORT, Some(reader.token.as_str()), 200),
        (
            "/v1/orgs/acme-dev/audit/events?limit=0",
            Some(reader.token.as_str()),
            400,
        ),
        (
            "/v1/orgs/acme-dev/audit/export?format=xml",
            Some(reader.token.as_str()),
            400,
        ),
        (
            "/v1/orgs/other/audit/events",
            Some(reader.token.as_str()),
            403,
        ),
        (EVENTS, Some(BAD_TOKEN), 401),
    ] {
        let response = server.get(path, token).await;
        assert_eq!(response.status, status, "{path}: {}", response.text());
    }
    assert_eq!(cancelled_queries(&server).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_times_out_cancels_its_query_and_the_in_flight_cap_answers_503() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |s| {
        s.http.request_timeout = Duration::from_secs(3);
        // Only the cancel can end the query early.
        s.http.statement_timeout = Duration::from_secs(3600);
        s.http.max_in_flight_requests = 1;
    })
    .await;
    let lock = lock_tokens(&db).await;
    let observer = db.connect().await;

    let client = server.client();
    let token = reader.token.clone();
    let stuck = tokio::spawn(async move { client.get(EVENTS, Some(&token)).await });
    assert!(
        wait_for(Duration::from_secs(30), async || {
            (queries_waiting_on_tokens(&observer).await == 1).then_some(())
        })
        .await
        .is_some(),
        "the lookup never waited on the lock"
    );
    // The one request allowed in flight is taken: the next is refused at once.
    let refused = server.get(EXPORT, Some(&reader.token)).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.error_code(), "overloaded");
    assert!(refused.header("retry-after").is_some());

    let stuck = stuck.await.expect("the request task");
    assert_eq!(stuck.status, 503, "{}", stuck.text());
    assert_eq!(stuck.error_code(), "timeout");
    // The lock is still held: only a cancel ends the query now.
    assert!(
        wait_for(Duration::from_secs(30), async || {
            (queries_waiting_on_tokens(&observer).await == 0).then_some(())
        })
        .await
        .is_some(),
        "the query of the timed-out request is still running on the server"
    );
    assert!(cancelled_queries(&server).await >= 1.0);
    drop(lock);
    // A fresh session serves the next request.
    assert_eq!(server.get(EVENTS, Some(&reader.token)).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn api_sessions_run_with_the_statement_timeout() {
    let db = TestDb::new().await;
    let (_, reader) = acme(&db).await;
    let server = Server::start(&db, |s| {
        s.http.request_timeout = Duration::from_secs(3600);
        s.http.statement_timeout = Duration::from_millis(300);
    })
    .await;
    let lock = lock_tokens(&db).await;
    // Without the statement timeout this waits for the lock for an hour.
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        server.get(EVENTS, Some(&reader.token)),
    )
    .await
    .expect("the statement timeout ends the lookup");
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.error_code(), "timeout");
    drop(lock);
    assert_eq!(server.get(EVENTS, Some(&reader.token)).await.status, 200);
    server.stop().await;
}

/// How many of the flood's requests were answered.
#[derive(Default)]
struct FloodStats {
    answered: AtomicU64,
}

/// `connections` clients sending bad-token lists and exports of the real token in a
/// loop, one request per connection, until `stop`.
fn flood(
    port: u16,
    token: &str,
    connections: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = api_support::Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    };
    (0..connections)
        .map(|n| {
            let (stop, stats, token) = (stop.clone(), stats.clone(), token.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if n % 2 == 0 {
                        client.get(EVENTS, Some(BAD_TOKEN)).await;
                    } else {
                        client.get(EXPORT, Some(&token)).await;
                    }
                    stats.answered.fetch_add(1, Ordering::Relaxed);
                    // Enough to keep every connection busy without taking all the
                    // (shared, two-core) machine's CPU on refusals.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect()
}

/// Commits `n` events, one transaction each, and returns their ids.
async fn commit_events(client: &tokio_postgres::Client, org: uuid::Uuid, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let row = client
            .query_one(
                "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id)
                 VALUES ($1, 'organization.group.updated', 'user', 'usr_flood') RETURNING id",
                &[&org],
            )
            .await
            .expect("committing an event");
        ids.push(row.get(0));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_and_stuck_exports_does_not_starve_the_mirror() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sink = dir.path().join("sink");
    let (org, reader) = acme(&db).await;
    // The smallest shared pool: on a pool shared with the API, two stuck requests
    // are enough to take every connection the mirror has.
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_DATABASE_POOL_SIZE", "2")
        .with("COMPARTMENT_DATABASE_API_POOL_SIZE", "2")
        .with("COMPARTMENT_AUDIT_HTTP_REQUEST_TIMEOUT", "5s")
        // No failed-auth limit: every request of the flood reaches the database (the
        // limit has its own test), so only the separate pool protects the mirror.
        .with("COMPARTMENT_AUDIT_HTTP_MAX_AUTH_FAILURES", "1000000")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let writer = db.connect().await;
    let before = db
        .connect()
        .await
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .expect("counting")
        .get::<_, i64>(0) as usize;

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let clients = flood(daemon.port, &reader.token, 24, stop.clone(), stats.clone());

    // Unlocked, the flood is answered.
    let mut committed = commit_events(&writer, org, 20).await;
    assert!(
        wait_for(Duration::from_secs(60), async || {
            (stats.answered.load(Ordering::Relaxed) > 24).then_some(())
        })
        .await
        .is_some(),
        "the flood got no answers"
    );

    // Now every request that reaches the database is stuck on the lock, holding its
    // connection; the writers go on committing and the mirror must keep up.
    let lock = lock_tokens(&db).await;
    let observer = db.connect().await;
    assert!(
        wait_for(Duration::from_secs(30), async || {
            (queries_waiting_on_tokens(&observer).await > 0).then_some(())
        })
        .await
        .is_some(),
        "no request of the flood is stuck on the lock"
    );
    let answered_before = stats.answered.load(Ordering::Relaxed);
    for round in 0..4 {
        committed.extend(commit_events(&writer, org, 25).await);
        let expected = before + committed.len();
        let mirrored = wait_for(Duration::from_secs(60), async || {
            (read_sink_ids(&sink).len() >= expected).then_some(())
        })
        .await;
        assert!(
            mirrored.is_some(),
            "round {round}: {} of {expected} events mirrored while the API was flooded",
            read_sink_ids(&sink).len()
        );
        let ready = daemon.get("/readyz");
        assert!(
            matches!(ready, Some((200, _))),
            "round {round}: /readyz during the flood: {ready:?}"
        );
    }
    // The flood was going on all along (answered by limits and timeouts).
    assert!(
        wait_for(Duration::from_secs(60), async || {
            (stats.answered.load(Ordering::Relaxed) > answered_before).then_some(())
        })
        .await
        .is_some(),
        "the flood got no answer while the lock was held"
    );
    drop(lock);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a flood client");
    }

    // Nothing lost, nothing twice; the API serves again.
    let all = support::writers::committed_ids(db.url()).await;
    assert!(
        wait_for(Duration::from_secs(60), async || {
            (read_sink_ids(&sink).len() >= all.len()).then_some(())
        })
        .await
        .is_some(),
        "not every event was mirrored"
    );
    let (missing, duplicated, unexpected) = compare_ids(&all, &read_sink_ids(&sink));
    assert!(
        missing.is_empty() && duplicated.is_empty() && unexpected.is_empty(),
        "missing {missing:?}, duplicated {duplicated:?}, unexpected {unexpected:?}"
    );
    assert!(committed.iter().all(|id| all.contains(id)));
    assert!(daemon.wait_ready(Duration::from_secs(30)).await);
    daemon.terminate();
}
