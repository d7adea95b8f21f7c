//! The mirror's guarantees (SPEC §7.1–7.3, 7.6), each attacked with the real daemon
//! binary against a real PostgreSQL. The oracle is always the table itself once the
//! writers have stopped: rolled-back rows never exist there, and a commit whose
//! outcome a writer could not learn (connection lost during COMMIT) is judged by what
//! the database kept.

mod common;
mod support;

use std::time::Duration;

use rand::Rng;
use support::fsync_fault::FsyncFault;
use support::tmpfs::Tmpfs;
use support::writers::{self, Shapes, Writers};
use support::{
    compare_ids, read_sink_ids, read_sink_lines, wait_for, wait_for_lines, DaemonConfig,
};

/// Waits until the sink holds every committed id, then asserts exactly once.
async fn assert_sink_matches_table(url: &str, sink: &std::path::Path) {
    let committed = writers::committed_ids(url).await;
    // Wait for a snapshot that holds every committed id exactly once, not for a
    // count: a snapshot taken while a file is renamed or compressed can see its lines
    // twice, or not at all. A real gap or duplicate persists and fails after the wait.
    let exact = wait_for(Duration::from_secs(60), async || {
        let written = read_sink_ids(sink);
        let (missing, duplicated, unexpected) = compare_ids(&committed, &written);
        (missing.is_empty() && duplicated.is_empty() && unexpected.is_empty()).then_some(())
    })
    .await;
    if exact.is_some() {
        return;
    }
    let written = read_sink_ids(sink);
    let (missing, duplicated, unexpected) = compare_ids(&committed, &written);
    assert!(
        missing.is_empty(),
        "{} committed events missing from the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicated.is_empty(),
        "{} events written twice, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
    assert!(
        unexpected.is_empty(),
        "events in the sink that are not committed: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_committing_out_of_id_order_reach_the_sink_exactly_once() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "200")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );

    let writers = Writers::start(
        db.url(),
        org,
        8,
        Shapes {
            hold_open: 0.25,
            ..Shapes::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = writers.stop().await;
    assert!(
        stats.held_open.load(std::sync::atomic::Ordering::Relaxed) > 5,
        "the scenario held transactions open"
    );
    assert!(
        stats.rollbacks.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the scenario rolled back"
    );

    assert!(
        stats.out_of_order_commits() > 0,
        "transactions should have committed out of id order at least once (else this test proves nothing)"
    );
    assert_sink_matches_table(db.url(), &sink).await;
    let text = std::fs::read_to_string(sink.join("audit.ndjson")).unwrap_or_default();
    assert!(!text.contains("never-in-sink"), "a secret reached the sink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let config = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "25")
        .with("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "32K")
        // Many small files: keep them all, the oracle needs every line.
        .with("COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES", "100000");
    let writers = Writers::start(
        db.url(),
        org,
        4,
        Shapes {
            bulk: 0.3,
            ..Shapes::default()
        },
    );
    for _ in 0..8 {
        let daemon = config.spawn();
        let lifetime = rand::rng().random_range(150..1200);
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        daemon.kill();
    }
    writers.stop().await;
    let daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    assert_sink_matches_table(db.url(), &sink).await;
    let rotated = std::fs::read_dir(&sink)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        .count();
    assert!(rotated > 0, "kills should have met rotations too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_restart_and_terminated_backends_lose_nothing() {
    let pg = support::PrivatePostgres::start();
    let url = pg.create_migrated_database("mirror_restart");
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(&url, "acme-dev").await;
    let daemon = DaemonConfig::new(&url, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "50")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    // An audit insert cannot be prepared (the doorbell notifies), so two-phase
    // commit reaches the mirror as a held horizon: a transaction prepared when the
    // server goes down stays prepared across the restart until its writer commits it.
    {
        let mut client = common::connect(&url).await;
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             VALUES ($1, 'organization.user.invited', 'user', 'usr_2pc')",
            &[&org],
        )
        .await
        .unwrap();
        let err = tx
            .batch_execute("PREPARE TRANSACTION 'audit_insert'")
            .await
            .expect_err("an audit insert cannot be prepared");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
            "{err:?}"
        );
    }
    let writers = Writers::start(
        &url,
        org,
        4,
        Shapes {
            two_phase: 0.2,
            copy: 0.2,
            ..Shapes::default()
        },
    );

    // The listener's backend (and every other daemon backend) killed under it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    writers::execute(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name LIKE 'compartment-auditd%' AND pid <> pg_backend_pid()",
    )
    .await;
    let reconnected = wait_for(Duration::from_secs(20), async || {
        let (_, metrics) = daemon.get("/metrics")?;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("compartment_audit_listener_reconnects_total") && !l.ends_with(" 0")
            })
            .then_some(())
    })
    .await;
    assert!(
        reconnected.is_some(),
        "the terminated listener was not noticed: {}",
        daemon.log_text()
    );
    assert!(daemon.wait_ready(Duration::from_secs(30)).await);

    // The whole server restarted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop();
    let body = daemon.wait_not_ready(Duration::from_secs(30)).await;
    assert!(
        body.is_some(),
        "readiness stayed true while the database was down"
    );
    pg.restart();
    assert!(
        daemon.wait_ready(Duration::from_secs(60)).await,
        "not ready again: {}",
        daemon.log_text()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    let stats = writers.stop().await;
    assert!(stats.two_phase.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(stats.copies.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_sink_matches_table(&url, &sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_daemon_was_down_are_caught_up() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let config = DaemonConfig::new(db.url(), &sink, dir.path());

    // start_from = now (the default): what exists before the first start is skipped.
    insert_n(db.url(), org, 5).await;
    writers::wait_until_horizon_passes_all_rows(db.url()).await;
    let daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let before: Vec<i64> = writers::committed_ids(db.url()).await;
    insert_n(db.url(), org, 3).await;
    assert!(wait_for_lines(&sink, 3, Duration::from_secs(60)).await);
    assert_eq!(daemon.terminate().code(), Some(0));

    // Down: no notification reaches anyone.
    insert_n(db.url(), org, 7).await;
    let daemon = config.spawn();
    assert!(daemon.wait_ready(Duration::from_secs(30)).await);
    let all = writers::committed_ids(db.url()).await;
    let expected: Vec<i64> = all
        .iter()
        .copied()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(expected.len(), 10);
    assert!(wait_for_lines(&sink, 10, Duration::from_secs(60)).await);
    let (missing, duplicated, unexpected) = compare_ids(&expected, &read_sink_ids(&sink));
    assert!(
        missing.is_empty() && duplicated.is_empty() && unexpected.is_empty(),
        "{missing:?} {duplicated:?} {unexpected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_beginning_backfills_every_retained_event() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    insert_n(db.url(), org, 12).await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    assert_sink_matches_table(db.url(), &sink).await;
    let lines = read_sink_lines(&sink);
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[0]["organization"], "acme-dev");
    assert!(lines[0]["metadata"].get("password").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_exits_zero_with_every_line_whole() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let config = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "100");
    insert_n(db.url(), org, 20_000).await;
    let daemon = config.spawn();
    // Stop it while it is catching up.
    let started = wait_for(Duration::from_secs(30), async || {
        (!read_sink_ids(&sink).is_empty()).then_some(())
    })
    .await;
    assert!(
        started.is_some(),
        "never started writing: {}",
        daemon.log_text()
    );
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM must drain and exit 0");
    // read_sink_ids panics on a torn line: every acknowledged line is whole.
    let partial = read_sink_ids(&sink);
    assert!(!partial.is_empty());
    // And the published position never runs ahead of the file.
    let published = published_event_id(db.url()).await;
    assert!(
        published.is_some_and(|id| partial.contains(&id)),
        "published {published:?} is not a written line"
    );
    let daemon = config.spawn();
    assert!(daemon.wait_ready(Duration::from_secs(30)).await);
    assert_sink_matches_table(db.url(), &sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_each_failing_check_and_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    // Nothing listens on this port: the database is unreachable.
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/nowhere",
        support::free_port()
    );
    let daemon = DaemonConfig::new(&dead, &sink, dir.path()).spawn();
    let body = daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .expect("readyz answers 503");
    let report: serde_json::Value = serde_json::from_str(&body).expect("readyz answers JSON");
    assert_eq!(report["status"], "not_ready");
    for check in ["database", "listener", "mirror"] {
        assert_eq!(
            report["checks"][check]["status"], "failing",
            "{check} in {report}"
        );
        assert!(report["checks"][check]["message"].is_string());
    }
    assert!(
        !body.contains("postgres://"),
        "readiness must not print the database URL"
    );
    let (status, _) = daemon.get("/healthz").expect("healthz answers");
    assert_eq!(status, 200);
    let (status, _) = daemon.get("/nope").expect("404 answers");
    assert_eq!(status, 404);

    let (status, metrics) = daemon.get("/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    for name in [
        "compartment_audit_events_mirrored_total",
        "compartment_audit_listener_reconnects_total",
        "compartment_audit_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    if which("promtool") {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        support::capability::missing(
            "the promtool check",
            "promtool is not installed (scripts/test installs it)",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_database_halts_mirroring_until_rebaselined() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let config = DaemonConfig::new(db.url(), &sink, dir.path());
    let daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    insert_n(db.url(), org, 2).await;
    assert!(wait_for_lines(&sink, 2, Duration::from_secs(60)).await);
    assert_eq!(daemon.terminate().code(), Some(0));

    // Pretend the sink was set up against another cluster.
    let state_path = std::fs::read_dir(&sink)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("system_identifier")))
        .expect("the sink keeps a state file with the system identifier");
    let text = std::fs::read_to_string(&state_path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let path = find_key(&mut state, "system_identifier").expect("state has system_identifier");
    *path = serde_json::Value::String("1234567890".into());
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

    let daemon = config.spawn();
    // Not ready from the start ("not started yet"); then the identity check fails.
    let message = wait_for(Duration::from_secs(30), async || {
        let (status, body) = daemon.get("/readyz")?;
        let report: serde_json::Value = serde_json::from_str(&body).ok()?;
        let message = report["checks"]["mirror"]["message"].as_str()?.to_string();
        (status == 503 && message.contains("database cluster changed")).then_some(message)
    })
    .await
    .unwrap_or_else(|| panic!("no identity failure: {}", daemon.log_text()));
    assert!(
        message.contains("rebaseline"),
        "the failing check says what to do: {message}"
    );
    insert_n(db.url(), org, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_sink_ids(&sink).len(),
        2,
        "nothing is written while halted"
    );
    assert_eq!(daemon.terminate().code(), Some(0));

    let output = std::process::Command::new(support::bin())
        .env_clear()
        .env("COMPARTMENT_DATABASE_URL", db.url())
        .env("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "true")
        .env("COMPARTMENT_AUDIT_FILE_SINK_DIR", &sink)
        .args(["sink", "rebaseline", "--yes"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rebaseline: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready after rebaseline: {}",
        daemon.log_text()
    );
    insert_n(db.url(), org, 1).await;
    assert!(wait_for_lines(&sink, 3, Duration::from_secs(60)).await);
}

fn find_key<'a>(value: &'a mut serde_json::Value, key: &str) -> Option<&'a mut serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => {
            if map.contains_key(key) {
                return map.get_mut(key);
            }
            map.values_mut().find_map(|v| find_key(v, key))
        }
        _ => None,
    }
}

async fn insert_n(url: &str, org: uuid::Uuid, n: i32) {
    writers::execute(
        url,
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata) \
             SELECT '{org}', 'organization.user.invited', 'user', 'usr_' || g, \
                    jsonb_build_object('email', 'u' || g || '@example.com', 'password', 'hunter2') \
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
}

async fn published_event_id(url: &str) -> Option<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_opt("SELECT event_id FROM audit_sink_positions", &[])
        .await
        .ok()
        .flatten();
    driver.abort();
    row.map(|r| r.get(0))
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A test database with one organization, and a sink directory on a small tmpfs that
/// a test can fill and free.
struct FullDiskFixture {
    db: common::TestDb,
    // Before `dir`: fields drop in order, and the tmpfs is unmounted before its mount
    // point is removed.
    fs: Tmpfs,
    dir: tempfile::TempDir,
    sink: std::path::PathBuf,
    org: uuid::Uuid,
}

impl FullDiskFixture {
    /// `None` (the test is skipped, and says so) where this process may not mount a
    /// tmpfs.
    async fn new(size_bytes: u64) -> Option<FullDiskFixture> {
        let db = common::TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let fs = match Tmpfs::mount(&dir.path().join("mnt"), size_bytes) {
            Ok(fs) => fs,
            Err(why) => {
                support::capability::missing("a tmpfs for the full-disk test", &why);
                return None;
            }
        };
        let sink = fs.path().join("sink");
        let org = writers::create_org(db.url(), "acme-dev").await;
        Some(FullDiskFixture {
            db,
            fs,
            dir,
            sink,
            org,
        })
    }

    /// A daemon on the tmpfs sink that mirrors every event from the beginning.
    fn daemon(&self) -> DaemonConfig {
        DaemonConfig::new(self.db.url(), &self.sink, self.dir.path())
            .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
    }

    /// Frees the space; the daemon must become ready again and the sink hold every
    /// committed event once.
    async fn free_and_expect_everything(&self, daemon: &support::Daemon) {
        self.fs.free().unwrap();
        assert!(
            daemon.wait_ready(Duration::from_secs(60)).await,
            "not ready after freeing space: {}",
            daemon.log_text()
        );
        assert_sink_matches_table(self.db.url(), &self.sink).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// A read-only remount cannot be staged under a running daemon (Linux refuses it with
// EBUSY while a file is open for writing); ENOSPC exercises the same path: failed
// write → truncate to the batch start → not ready → retry.
async fn a_full_sink_disk_is_not_ready_keeps_its_position_and_resumes_without_loss() {
    let Some(t) = FullDiskFixture::new(256 * 1024).await else {
        return;
    };
    let daemon = t.daemon().spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    insert_n(t.db.url(), t.org, 10).await;
    assert!(wait_for_lines(&t.sink, 10, Duration::from_secs(60)).await);

    // Full: a filler takes every byte left.
    t.fs.fill().unwrap();
    insert_n(t.db.url(), t.org, 400).await;
    let body = daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .expect("not ready while the disk is full");
    assert!(body.contains("\"sink\":{\"status\":\"failing\""), "{body}");
    let written_while_full = read_sink_ids(&t.sink);
    let published = published_event_id(t.db.url())
        .await
        .expect("a published position");
    // Published at most once a second: still the baseline (id 0), or a written line.
    assert!(
        published == 0 || written_while_full.contains(&published),
        "the published position ran ahead of the file"
    );
    let (_, metrics) = daemon.get("/metrics").unwrap();
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("compartment_audit_sink_write_errors_total") && !l.ends_with(" 0")));

    // Space again: everything arrives, once.
    t.free_and_expect_everything(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Start-up must write too: a torn last line is kept aside in a fragment file before it
// is cut. With the disk full that write fails; the daemon must wait, not exit.
async fn a_full_disk_at_start_up_waits_not_ready_then_recovers_and_mirrors_everything() {
    let Some(t) = FullDiskFixture::new(256 * 1024).await else {
        return;
    };
    let daemon = t.daemon().spawn();
    insert_n(t.db.url(), t.org, 10).await;
    assert!(wait_for_lines(&t.sink, 10, Duration::from_secs(60)).await);
    assert!(daemon.terminate().success());

    // A crash mid-line left a torn tail; then the disk filled while the daemon was down.
    let torn = b"{\"id\":999999,\"event_type\":\"torn";
    let mut active = std::fs::OpenOptions::new()
        .append(true)
        .open(t.sink.join("audit.ndjson"))
        .unwrap();
    std::io::Write::write_all(&mut active, torn).unwrap();
    drop(active);
    insert_n(t.db.url(), t.org, 20).await;
    t.fs.fill().unwrap();

    let mut daemon = t.daemon().spawn();
    let body = daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no readiness answer: {}", daemon.log_text()));
    assert!(
        body.contains("\"sink\":{\"status\":\"failing\"") && body.contains("No space left"),
        "{body}"
    );
    // It keeps waiting (several retries), leaving no partial fragment per try.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(daemon.is_running(), "exited: {}", daemon.log_text());
    let fragments = || {
        std::fs::read_dir(&t.sink)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "fragment"))
            .collect::<Vec<_>>()
    };
    assert_eq!(fragments(), Vec::<std::path::PathBuf>::new());
    let (_, metrics) = daemon.get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "compartment_audit_sink_writable 0"),
        "{metrics}"
    );

    t.free_and_expect_everything(&daemon).await;
    let kept = fragments();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), torn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_after_crossing_a_rotation_is_resumed_not_resent() {
    let Some(t) = FullDiskFixture::new(512 * 1024).await else {
        return;
    };
    let daemon = t
        .daemon()
        .with("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "4K")
        .with("COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY", "1h")
        .with("COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES", "100000")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "300")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );

    // Leave room for a few 4K files: a 300-line batch (~100K) fills the rest of the
    // active file, rotates it (old enough, after the minimum age) and then runs out
    // of space in the new file.
    tokio::time::sleep(compartment_auditd::sink::ROTATE_MIN_AGE).await;
    t.fs.fill_leaving(24 * 1024).unwrap();
    insert_n(t.db.url(), t.org, 300).await;
    daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .expect("not ready once the disk is full");
    t.free_and_expect_everything(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_interval_is_not_turned_into_fsync_per_batch_by_a_trickle_of_commits() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_FSYNC", "interval")
        .with("COMPARTMENT_AUDIT_FILE_SINK_FSYNC_INTERVAL", "1h")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let fsyncs = "compartment_audit_sink_fsync_duration_seconds_count";
    let before = daemon.metric(fsyncs).unwrap_or(0.0);
    for n in 1..=8 {
        insert_n(db.url(), org, 1).await;
        assert!(wait_for_lines(&sink, n, Duration::from_secs(60)).await);
    }
    let after = daemon.metric(fsyncs).unwrap_or(0.0);
    assert!(
        after - before <= 1.0,
        "8 single-event batches under fsync=interval (1h) caused {} fsyncs",
        after - before
    );
    // Shutdown still makes everything durable.
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// A disk whose fsync fails (`EIO`) under a running daemon, with the data written since
/// the last good fsync lost (see `support/fsync_fault.c`): the daemon must report the
/// sink failing, never publish a position past what was durable, keep running, and once
/// fsync works again rewrite what was lost, so the sink ends up holding every committed
/// event exactly once and not a byte of the lost range. Returns how many rotated files
/// the sink holds.
/// `batches_after`: batches inserted once fsync works again, each after the active
/// file's minimum age for size rotation (a file created within a batch is not
/// rotated in it), so that a small `rotate_size` rotates once per batch.
async fn fsync_failure_loses_nothing(policy: &[(&str, &str)], batches_after: usize) -> usize {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let fault = FsyncFault::build(dir.path()).expect("building the fsync shim");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let mut config = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning");
    for (key, value) in fault.env("audit.ndjson") {
        config = config.with(&key, &value);
    }
    for (key, value) in policy {
        config = config.with(key, value);
    }
    let mut daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    insert_n(db.url(), org, 20).await;
    assert!(wait_for_lines(&sink, 20, Duration::from_secs(60)).await);
    let durable = read_sink_ids(&sink);
    // The position of the 20 durable lines is published (once a second at most).
    let published = wait_for(Duration::from_secs(30), async || {
        published_event_id(db.url())
            .await
            .filter(|id| durable.last() == Some(id))
    })
    .await;
    assert!(
        published.is_some(),
        "the position of the durable lines was not published"
    );

    fault.fail();
    for _ in 0..5 {
        insert_n(db.url(), org, 20).await;
    }
    let body = daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("still ready with fsync failing: {}", daemon.log_text()));
    assert!(
        body.contains("\"sink\":{\"status\":\"failing\"") && body.contains("Input/output error"),
        "{body}"
    );
    // Several retries, and several chances to publish a position: none may go past the
    // lines that were durable when fsync started failing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(daemon.is_running(), "exited: {}", daemon.log_text());
    let published = published_event_id(db.url())
        .await
        .expect("a published position");
    assert_eq!(
        Some(&published),
        durable.last(),
        "the published position moved while no fsync succeeded"
    );
    let failures = daemon
        .metric("compartment_audit_sink_write_errors_total{op=\"fsync\"}")
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "fsync failures not counted");
    assert!(
        daemon.log_text().contains("Input/output error"),
        "the failure is not in the log: {}",
        daemon.log_text()
    );

    fault.heal();
    assert!(
        daemon.wait_ready(Duration::from_secs(60)).await,
        "not ready after fsync works again: {}",
        daemon.log_text()
    );
    for _ in 0..batches_after {
        tokio::time::sleep(compartment_auditd::sink::ROTATE_MIN_AGE + Duration::from_millis(100))
            .await;
        insert_n(db.url(), org, 20).await;
        assert_sink_matches_table(db.url(), &sink).await;
    }
    assert_sink_matches_table(db.url(), &sink).await;
    let active = std::fs::read(sink.join("audit.ndjson")).unwrap();
    assert!(
        !active.contains(&0),
        "the active file kept bytes of the range the failed fsync lost"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
    std::fs::read_dir(&sink)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_is_not_acknowledged_and_the_lost_lines_are_rewritten() {
    fsync_failure_loses_nothing(&[], 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_under_the_interval_policy_and_rotations_loses_nothing() {
    // 4K files: the 100 events written while fsync fails (about 40K) want to rotate
    // several times, and a rotation begins with an fsync of the file it closes.
    let rotated = fsync_failure_loses_nothing(
        &[
            ("COMPARTMENT_AUDIT_FILE_SINK_FSYNC", "interval"),
            ("COMPARTMENT_AUDIT_FILE_SINK_FSYNC_INTERVAL", "200ms"),
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "4K"),
        ],
        4,
    )
    .await;
    assert!(
        rotated >= 5,
        "only {rotated} rotated files: the rotations were not tested"
    );
}
