//! A sink belongs to one database of one cluster, on one line of history (issue 20,
//! A2 and A3). The cluster check (`system_identifier`) is in `tests/mirror.rs`; here:
//! another database of the same cluster is refused, an old state file without the
//! database and timeline is adopted, and a real failover to a promoted standby either
//! is followed (every mirrored event survived) or stops the mirror (the last mirrored
//! event was lost, and the new primary reissues transaction ids below the cursor).

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use support::PrivatePostgres;
use support::{read_sink_ids, wait_for, wait_for_lines, writers, Daemon, DaemonConfig};

const STATE_FILE: &str = ".audit-state.json";

/// Inserts `n` events of `org` in one committed statement.
async fn insert_n(url: &str, org: uuid::Uuid, n: i32) {
    writers::execute(
        url,
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             SELECT '{org}', 'organization.user.invited', 'user', 'usr_' || g \
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
}

fn read_state(sink: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(sink.join(STATE_FILE)).expect("the sink has a state file");
    serde_json::from_str(&text).expect("the state file is JSON")
}

async fn expect_lines(sink: &Path, n: usize, daemon: &Daemon) {
    assert!(
        wait_for_lines(sink, n, Duration::from_secs(30)).await,
        "expected {n} lines, the sink holds {:?}; log: {}",
        read_sink_ids(sink),
        daemon.log_text()
    );
}

/// Waits until `/readyz` fails with a `mirror` message containing `needle`.
async fn expect_halt(daemon: &Daemon, needle: &str) -> String {
    wait_for(Duration::from_secs(30), async || {
        let (status, body) = daemon.get("/readyz")?;
        let report: serde_json::Value = serde_json::from_str(&body).ok()?;
        let message = report["checks"]["mirror"]["message"].as_str()?.to_string();
        (status == 503 && message.contains(needle)).then_some(message)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no mirror failure containing {needle:?}: {:?}; log: {}",
            daemon.get("/readyz"),
            daemon.log_text()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_pointed_at_another_database_of_the_same_cluster_halts() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    insert_n(db.url(), org, 2).await;
    expect_lines(&sink, 2, &daemon).await;
    assert_eq!(daemon.terminate().code(), Some(0));
    let state = read_state(&sink);
    assert_eq!(state["database_name"], db.name(), "{state}");
    assert!(state["database_oid"].as_u64().is_some(), "{state}");

    // Same cluster, another database, whose table also has the last line's id.
    let other = common::TestDb::new().await;
    let other_org = writers::create_org(other.url(), "acme-dev").await;
    insert_n(other.url(), other_org, 3).await;
    let config = DaemonConfig::new(other.url(), &sink, dir.path());
    let daemon = config.spawn();
    let message = expect_halt(&daemon, "another database").await;
    assert!(
        message.contains(db.name()) && message.contains(other.name()),
        "the failure names both databases: {message}"
    );
    assert!(
        message.contains("rebaseline"),
        "it says what to do: {message}"
    );
    insert_n(other.url(), other_org, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_sink_ids(&sink),
        vec![1, 2],
        "nothing is written while halted"
    );
    assert_eq!(daemon.terminate().code(), Some(0));

    // A rebaseline against the new database records it.
    let output = std::process::Command::new(support::bin())
        .env_clear()
        .env("COMPARTMENT_DATABASE_URL", other.url())
        .env("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "true")
        .env("COMPARTMENT_AUDIT_FILE_SINK_DIR", &sink)
        .args(["sink", "rebaseline", "--yes", "--start-from", "beginning"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rebaseline: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(read_state(&sink)["database_name"], other.name());
    let daemon = config.spawn();
    expect_lines(&sink, 2 + 4, &daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_without_database_or_timeline_is_adopted() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let config = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning");
    let daemon = config.spawn();
    insert_n(db.url(), org, 2).await;
    expect_lines(&sink, 2, &daemon).await;
    assert_eq!(daemon.terminate().code(), Some(0));

    // The state file as an earlier version wrote it.
    let mut state = read_state(&sink);
    let map = state.as_object_mut().unwrap();
    for key in ["database_oid", "database_name", "timeline"] {
        map.remove(key);
    }
    std::fs::write(sink.join(STATE_FILE), serde_json::to_vec(&state).unwrap()).unwrap();

    let daemon = config.spawn();
    insert_n(db.url(), org, 1).await;
    expect_lines(&sink, 3, &daemon).await;
    let state = read_state(&sink);
    assert_eq!(state["database_name"], db.name(), "adopted: {state}");
    assert!(state["database_oid"].as_u64().is_some(), "adopted: {state}");
    assert!(state["timeline"].as_u64().is_some(), "adopted: {state}");
}

/// A primary with a streaming standby, and a URL that follows whichever accepts writes.
struct Pair {
    primary: PrivatePostgres,
    standby: PrivatePostgres,
    url: String,
    primary_url: String,
    standby_url: String,
}

impl Pair {
    fn start() -> Pair {
        let primary = PrivatePostgres::start();
        let primary_url = primary.create_migrated_database("audit");
        let standby = PrivatePostgres::standby_of(&primary);
        let url = format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/audit?target_session_attrs=read-write",
            primary.port, standby.port
        );
        let standby_url = standby.url("audit");
        Pair {
            primary,
            standby,
            url,
            primary_url,
            standby_url,
        }
    }

    /// Waits until the standby has replayed `n` events.
    async fn standby_has(&self, n: i64) {
        let replayed = wait_for(Duration::from_secs(30), async || {
            let count = self
                .standby
                .psql("audit", "SELECT count(*) FROM audit_events");
            (count == n.to_string()).then_some(())
        })
        .await;
        assert!(replayed.is_some(), "the standby did not replay {n} events");
    }

    /// Stops the primary as a crash would and promotes the standby.
    fn fail_over(&self) {
        self.primary.stop_immediate();
        self.standby.promote();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_the_last_mirrored_event_halts_the_mirror() {
    let pair = Pair::start();
    let org = writers::create_org(&pair.primary_url, "acme-dev").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let daemon = DaemonConfig::new(&pair.url, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    insert_n(&pair.primary_url, org, 2).await;
    expect_lines(&sink, 2, &daemon).await;
    pair.standby_has(2).await;

    // The standby falls behind: transaction ids and one event it never receives.
    pair.standby.stop();
    for _ in 0..20 {
        writers::execute(&pair.primary_url, "SELECT pg_current_xact_id()").await;
    }
    insert_n(&pair.primary_url, org, 1).await;
    expect_lines(&sink, 3, &daemon).await;
    // The primary is gone before the standby could catch up.
    pair.primary.stop_immediate();
    pair.standby.start_again();
    pair.fail_over();

    // The new primary hands out the ids the old one had passed.
    insert_n(&pair.standby_url, org, 1).await;
    let message = expect_halt(&daemon, "timeline").await;
    assert!(
        message.contains("rebaseline"),
        "it says what to do: {message}"
    );
    assert_eq!(
        read_sink_ids(&sink).len(),
        3,
        "nothing written after the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_kept_every_mirrored_event_is_followed() {
    let pair = Pair::start();
    let org = writers::create_org(&pair.primary_url, "acme-dev").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let daemon = DaemonConfig::new(&pair.url, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    insert_n(&pair.primary_url, org, 2).await;
    expect_lines(&sink, 2, &daemon).await;
    pair.standby_has(2).await;
    let before = read_state(&sink)["timeline"].as_u64();
    pair.fail_over();

    insert_n(&pair.standby_url, org, 2).await;
    expect_lines(&sink, 4, &daemon).await;
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    let after = wait_for(Duration::from_secs(30), async || {
        let timeline = read_state(&sink)["timeline"].as_u64();
        (timeline != before).then_some(timeline)
    })
    .await;
    assert_eq!(
        after.flatten().zip(before).map(|(a, b)| a > b),
        Some(true),
        "the state file follows the new timeline: {before:?} -> {after:?}"
    );
}
