//! The mirror keeps its per-wake-up queries prepared on each pooled connection. The
//! application owns the schema and may alter `audit_events` while the daemon runs;
//! PostgreSQL then refuses the old prepared statement ("cached plan must not change
//! result type"), and the mirror must prepare it afresh rather than stall.

mod common;
mod support;

use std::time::Duration;

use support::writers;
use support::{read_sink_ids, wait_for, DaemonConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_type_changed_under_the_running_mirror_does_not_stall_it() {
    // Arrange: a running mirror whose statements are prepared (one event mirrored).
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let client = db.connect().await;
    let insert = async |status: &str| {
        client
            .execute(
                "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, status) \
                 VALUES ($1, 'organization.user.invited', 'user', 'usr_1', $2)",
                &[&org, &status],
            )
            .await
            .unwrap();
    };
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    insert("succeeded").await;
    let lines = async |n: usize| {
        wait_for(Duration::from_secs(20), async || {
            (read_sink_ids(&sink).len() >= n).then_some(())
        })
        .await
        .is_some()
    };
    assert!(lines(1).await, "not mirrored: {}", daemon.log_text());

    // Act: the application changes a column's type (text → varchar) while the daemon
    // runs, then writes more events.
    client
        .batch_execute("ALTER TABLE audit_events ALTER COLUMN status TYPE varchar(32)")
        .await
        .unwrap();
    insert("failed").await;
    insert("denied").await;

    // Assert: they reach the sink, once each.
    assert!(
        lines(3).await,
        "the mirror stalled after the schema change: {}",
        daemon.log_text()
    );
    let written = support::read_sink_lines(&sink);
    let statuses: Vec<&str> = written
        .iter()
        .map(|line| line["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "failed", "denied"]);
}
