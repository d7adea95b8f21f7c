//! How often the mirror publishes its position to the database (SPEC §12 "Position
//! lives with the files"): promptly enough for retention, but never one write
//! transaction per batch — under a trickle of single-event commits the mirror runs
//! dry after nearly every batch, and each publish is a commit (a WAL flush) on the
//! application's database.

mod common;
mod support;

use std::time::{Duration, Instant};

use support::writers;
use support::{read_sink_ids, wait_for, DaemonConfig};

/// Events committed one at a time, each mirrored before the next is committed.
const TRICKLE: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_commits_publishes_about_once_a_second_and_the_last_position_promptly() {
    // Arrange: every publish (insert or update of the position row) leaves a row in
    // publish_log.
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE publish_log (at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE FUNCTION log_publish() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO publish_log DEFAULT VALUES; RETURN NULL; END $$;
             CREATE TRIGGER log_publish AFTER INSERT OR UPDATE ON audit_sink_positions
                 FOR EACH ROW EXECUTE FUNCTION log_publish();",
        )
        .await
        .unwrap();
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    // The start publishes once (before the first read); not part of what is measured.
    let publishes = async || -> i64 {
        client
            .query_one("SELECT count(*) FROM publish_log", &[])
            .await
            .unwrap()
            .get(0)
    };
    assert!(
        wait_for(Duration::from_secs(10), async || (publishes().await >= 1)
            .then_some(()))
        .await
        .is_some(),
        "the start did not publish a position"
    );
    let before = publishes().await;

    // Act: single-event transactions, each mirrored (so the mirror falls idle) before
    // the next one commits.
    let started = Instant::now();
    let mut last_id = 0;
    for n in 1..=TRICKLE {
        last_id = client
            .query_one(
                "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
                 VALUES ($1, 'organization.user.invited', 'user', 'usr_1') RETURNING id",
                &[&org],
            )
            .await
            .unwrap()
            .get(0);
        let mirrored = wait_for(Duration::from_secs(10), async || {
            (read_sink_ids(&sink).len() >= n).then_some(())
        })
        .await;
        assert!(
            mirrored.is_some(),
            "event {n} was not mirrored: {}",
            daemon.log_text()
        );
    }

    // Assert: the last position is published soon after the mirror falls idle ...
    let published = wait_for(Duration::from_secs(10), async || {
        let row = client
            .query_opt("SELECT event_id FROM audit_sink_positions", &[])
            .await
            .unwrap()?;
        (row.get::<_, i64>(0) == last_id).then_some(())
    })
    .await;
    assert!(
        published.is_some(),
        "the last position ({last_id}) was not published"
    );
    // ... and publishing kept to about once a second instead of once per batch.
    let elapsed = started.elapsed();
    let during = publishes().await - before;
    let allowed = i64::try_from(elapsed.as_secs()).unwrap() + 2;
    assert!(
        during <= allowed,
        "{during} publishes for {TRICKLE} single-event batches in {elapsed:?} (at most {allowed} expected)"
    );
}

/// `sink status` reads the positions published to the database, not the sink
/// directory, and its help says so (it used to promise "the position on disk").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_status_shows_the_published_positions_as_its_help_says() {
    let (code, help, _) = common::run_cli(
        "postgres://unused@127.0.0.1/x",
        &["sink", "status", "--help"],
    );
    assert!(code.success());
    assert!(help.contains("published to the database"), "{help}");
    assert!(!help.contains("on disk"), "{help}");
    assert!(help.contains("does not read the sink directory"), "{help}");

    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_FILE_SINK_ID", "eu-1")
        .spawn();
    let id: i64 = db
        .connect()
        .await
        .query_one(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             VALUES ($1, 'organization.user.invited', 'user', 'usr_1') RETURNING id",
            &[&org],
        )
        .await
        .unwrap()
        .get(0);
    assert!(support::wait_for_lines(&sink, 1, Duration::from_secs(30)).await);
    assert!(daemon.terminate().success());
    // The directory is gone: what status prints can only come from the database.
    std::fs::remove_dir_all(&sink).unwrap();
    let (code, out, err) = common::run_cli(db.url(), &["sink", "status"]);
    assert!(code.success(), "{err}");
    assert!(out.contains("database system identifier:"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("sink \"eu-1\":") && l.contains(&format!("event id {id},"))),
        "{out}"
    );
}
