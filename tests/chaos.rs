//! Chaos (issue 8): SPEC §7.1 gap-free, §7.2 exactly once, §7.3 durable before
//! acknowledged, §7.5 retention never deletes what the sink has not written, and
//! §7.6 loses nothing — all at once, under every fault the harness can inject. The
//! driver and its oracle are in `support/chaos.rs`.
//!
//! In the suite this is the short form: faults until every kind has been injected 50
//! times (at least 30 s, at most about 2 minutes). The long form is the same code:
//! `scripts/chaos 30m` (or `CHAOS_DURATION=30m cargo test --test chaos -- --nocapture`).
//! `CHAOS_SEED` repeats a run's schedule; the seed is in the summary line.

mod common;
mod support;

use std::time::Duration;

use support::chaos::{self, ChaosOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_event_reaches_the_sink_exactly_once_under_chaos() {
    let options = ChaosOptions::from_env().unwrap_or_else(|why| panic!("{why}"));
    println!(
        "chaos: seed {} (CHAOS_SEED={} repeats this schedule)",
        options.seed, options.seed
    );
    let report = chaos::run(options).await;
    println!("{}", report.summary);
    if !report.problems.is_empty() {
        let kept = report
            .artifacts
            .as_ref()
            .map(|p| format!("\nlogs and a copy of the sink are kept in {}", p.display()))
            .unwrap_or_default();
        panic!(
            "{} problem(s):\n  - {}{kept}",
            report.problems.len(),
            report.problems.join("\n  - ")
        );
    }
}

/// The same over TLS (issue 15), shorter: the daemon connects with `verify-full` to a
/// server that accepts TLS only, through PostgreSQL restarts, terminated backends and
/// every other fault. The long form: `CHAOS_TLS=1 scripts/chaos 30m`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_event_reaches_the_sink_exactly_once_under_chaos_over_tls() {
    let mut options = ChaosOptions::from_env().unwrap_or_else(|why| panic!("{why}"));
    options.tls = true;
    if std::env::var_os("CHAOS_DURATION").is_none() {
        options.min_duration = Duration::from_secs(10);
        options.max_duration = Duration::from_secs(60);
        options.min_faults = options.min_faults.min(10);
    }
    println!("chaos over TLS: seed {}", options.seed);
    let report = chaos::run(options).await;
    println!("{}", report.summary);
    assert!(
        report.problems.is_empty(),
        "{} problem(s):\n  - {}\nartifacts: {:?}",
        report.problems.len(),
        report.problems.join("\n  - "),
        report.artifacts
    );
}

/// Found by the chaos run (seed 1795891318089917583): a batch that crosses a rotation
/// keeps its first part in the rotated file when the new file cannot be written; the
/// mirror then retried the whole batch from its old position and wrote that part
/// twice. Pinned down here without randomness: the first part fits in the page the
/// active file already has, the new file after the rotation needs a page the full
/// tmpfs does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_by_a_rotation_when_the_disk_fills_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = match support::tmpfs::Tmpfs::mount(&dir.path().join("mnt"), 4 * 1024 * 1024) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            support::capability::missing("a small tmpfs for the full-disk test", &why);
            return;
        }
    };
    let db = common::TestDb::new().await;
    let sink = tmpfs.path().join("sink");
    let org = support::writers::create_org(db.url(), "acme-dev").await;
    let daemon = support::DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "8K")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "1000")
        // Compression would free space (the plain file goes) and blur the scenario.
        .with("COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY", "1h")
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );

    // Lines one by one until the active file has a second page with room left.
    let active = sink.join("audit.ndjson");
    let mut written = 0;
    while std::fs::metadata(&active).map_or(0, |m| m.len()) <= 4096 + 512 {
        insert(db.url(), org, 1).await;
        written += 1;
        let seen = support::wait_for(Duration::from_secs(20), async || {
            (support::read_sink_ids(&sink).len() == written).then_some(())
        })
        .await;
        assert!(seen.is_some(), "not mirrored: {}", daemon.log_text());
    }
    let before = std::fs::metadata(&active).unwrap().len();
    assert!(
        before < 8192 - 1024,
        "the first part must fit: {before} bytes"
    );

    // Old enough to be rotated by size (the daemon's minimum age).
    tokio::time::sleep(compartment_auditd::sink::ROTATE_MIN_AGE).await;
    tmpfs.fill().unwrap();
    // One transaction, one batch: its first lines fit before the rotation.
    insert(db.url(), org, 40).await;
    let failing = daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .expect("the full disk makes the daemon not ready");
    assert!(failing.contains("sink"), "{failing}");
    tmpfs.free().unwrap();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready again: {}",
        daemon.log_text()
    );

    let committed = support::writers::committed_ids(db.url()).await;
    let caught_up = support::wait_for(Duration::from_secs(30), async || {
        (support::read_sink_ids(&sink).len() >= committed.len()).then_some(())
    })
    .await;
    let ids = support::read_sink_ids(&sink);
    let (missing, duplicated, unexpected) = support::compare_ids(&committed, &ids);
    assert!(
        missing.is_empty() && duplicated.is_empty() && unexpected.is_empty(),
        "missing {missing:?}, duplicated {duplicated:?}, unexpected {unexpected:?} \
         (caught up: {})",
        caught_up.is_some()
    );
    assert!(
        std::fs::read_dir(&sink)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("audit-")),
        "the batch crossed a rotation"
    );
}

async fn insert(url: &str, org: uuid::Uuid, n: i32) {
    support::writers::execute(
        url,
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata) \
             SELECT '{org}', 'organization.user.invited', 'user', 'usr_' || g, \
                    jsonb_build_object('email', 'u' || g || '@example.com') \
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
}
