//! Several replicas, one sink group (issue 16, docs/replicas.md): real daemon
//! processes sharing one database and `file_sink.id`, each with its own directory,
//! while writers commit. Whatever happens to the leader (SIGKILL, SIGSTOP past its
//! lease, SIGTERM in a rolling update, its sessions terminated, a PostgreSQL restart),
//! the union of the directories holds every committed event, one directory grows at a
//! time, duplicates across directories come only in a run at a handover, and exactly
//! one replica leads afterwards.

mod common;
mod support;

use std::time::{Duration, Instant};

use support::replicas::{dir_bytes, stop_and_check, Group, LEASE_TIMEOUT};
use support::writers::{self, Shapes, Writers};
use support::PrivatePostgres;

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_survive_repeated_sigkill_of_the_leader() {
    let db = common::TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let org = writers::create_org(db.url(), "acme-replicas").await;
    let mut group = Group::new(db.url(), root.path());
    for name in ["replica-a", "replica-b", "replica-c"] {
        group.spawn(name);
    }
    let first = group
        .wait_for_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no single leader\n{}", group.logs()));
    group.start_sampling();
    let started = Instant::now();
    let writers = Writers::start(db.url(), org, 3, Shapes::default());
    let mut leader = first;
    let mut takeovers = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed_at = Instant::now();
        group.kill(leader);
        let next = group
            .wait_for_leader(Some(leader), LEASE_TIMEOUT + Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no standby took over\n{}", group.logs()));
        takeovers.push(killed_at.elapsed());
        // The pod comes back with its volume and stands by.
        group.restart(leader);
        leader = next;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "replicas: takeover after SIGKILL took {takeovers:?} (lease timeout {LEASE_TIMEOUT:?})"
    );
    let union = stop_and_check(
        &mut group,
        writers,
        takeovers.len(),
        started.elapsed().as_secs_f64(),
    )
    .await;
    // The three processes that died mid-term left lines nobody published; the new
    // leaders wrote those again (seen in their rewrites metric, counted here).
    let _ = union;
    assert_eq!(group.leaders().len(), 1, "{}", group.logs());
    // Every change of role is in the logs.
    let logs: String = (0..group.replicas.len()).map(|i| group.log(i)).collect();
    assert!(
        count(&logs, "Became the leader of the sink group") >= 1,
        "{logs}"
    );
    assert!(
        count(&logs, "Standing by for the sink group") >= 2,
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_writes_nothing_after_the_takeover_and_stands_by() {
    let db = common::TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let org = writers::create_org(db.url(), "acme-paused").await;
    let mut group = Group::new(db.url(), root.path());
    group.spawn("replica-a");
    group.spawn("replica-b");
    let leader = group
        .wait_for_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no single leader\n{}", group.logs()));
    group.start_sampling();
    let started = Instant::now();
    let writers = Writers::start(db.url(), org, 3, Shapes::default());
    tokio::time::sleep(Duration::from_secs(1)).await;

    group.pause(leader);
    let next = group
        .wait_for_leader(Some(leader), LEASE_TIMEOUT + Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no standby took over from the paused leader\n{}",
                group.logs()
            )
        });
    let frozen = dir_bytes(&group.replicas[leader].dir);
    let new_before = dir_bytes(&group.replicas[next].dir);
    tokio::time::sleep(Duration::from_secs(1)).await;
    group.resume(leader);
    // Long enough for the resumed process to try appending, renew, and learn it lost.
    tokio::time::sleep(LEASE_TIMEOUT).await;
    assert_eq!(
        dir_bytes(&group.replicas[leader].dir),
        frozen,
        "the resumed old leader appended after the takeover\n{}",
        group.logs()
    );
    assert!(
        dir_bytes(&group.replicas[next].dir) > new_before,
        "the new leader did not write"
    );
    assert_eq!(group.leaders(), vec![next], "{}", group.logs());
    let log = group.log(leader);
    assert!(
        log.contains("another replica took the lease over")
            || log.contains("another replica took the sink group's lease over"),
        "the resumed leader does not say it lost the lease:\n{log}"
    );
    assert!(log.contains("Standing by for the sink group"), "{log}");
    stop_and_check(&mut group, writers, 1, started.elapsed().as_secs_f64()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_hands_over_on_sigterm_without_waiting_for_the_lease() {
    let db = common::TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let org = writers::create_org(db.url(), "acme-rollout").await;
    let mut group = Group::new(db.url(), root.path());
    group.spawn("pod-0");
    let mut leader = group
        .wait_for_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no leader\n{}", group.logs()));
    group.start_sampling();
    let started = Instant::now();
    let writers = Writers::start(db.url(), org, 3, Shapes::default());
    let mut handovers = Vec::new();
    for round in 1..=3 {
        // A new pod (a fresh emptyDir) comes up and stands by, then the old one goes.
        let new = group.spawn(&format!("pod-{round}"));
        let daemon = group.replicas[new].daemon.as_ref().unwrap();
        assert!(
            daemon.wait_ready(Duration::from_secs(30)).await,
            "{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let t0 = Instant::now();
        group.terminate_async(leader);
        let next = group
            .wait_for_leader(Some(leader), Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("nobody took over after SIGTERM\n{}", group.logs()));
        handovers.push(t0.elapsed());
        let status = group.reap(leader).expect("it was running");
        assert!(status.success(), "SIGTERM exit {status:?}");
        assert_eq!(next, new, "the only standby is the new pod");
        leader = next;
    }
    println!("replicas: SIGTERM hand-over took {handovers:?} (lease timeout {LEASE_TIMEOUT:?})");
    for took in &handovers {
        assert!(
            *took < LEASE_TIMEOUT,
            "a hand-over took {took:?}: it waited for the lease to expire\n{}",
            group.logs()
        );
    }
    let union = stop_and_check(
        &mut group,
        writers,
        handovers.len(),
        started.elapsed().as_secs_f64(),
    )
    .await;
    // A clean hand-over publishes the final position first: nothing is written twice.
    assert_eq!(union.duplicated_across, 0, "{}", group.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_sessions_and_a_postgres_restart_leave_one_leader_and_lose_nothing() {
    let pg = PrivatePostgres::start();
    let url = pg.create_migrated_database("replicas");
    let root = tempfile::tempdir().unwrap();
    let org = writers::create_org(&url, "acme-pg").await;
    let mut group = Group::new(&url, root.path());
    for name in ["replica-a", "replica-b", "replica-c"] {
        group.spawn(name);
    }
    group
        .wait_for_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no single leader\n{}", group.logs()));
    group.start_sampling();
    let started = Instant::now();
    let writers = Writers::start(&url, org, 3, Shapes::default());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every daemon session (the leader's among them), lease and pool alike.
    writers::execute(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name LIKE 'compartment-auditd%' AND pid <> pg_backend_pid()",
    )
    .await;
    group
        .wait_for_leader(None, LEASE_TIMEOUT + Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no single leader after the sessions were terminated\n{}",
                group.logs()
            )
        });
    tokio::time::sleep(Duration::from_secs(1)).await;

    pg.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    group
        .wait_for_leader(None, LEASE_TIMEOUT + Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no single leader after the restart\n{}", group.logs()));
    // And it stays one.
    for _ in 0..10 {
        assert_eq!(group.leaders().len(), 1, "{}", group.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_and_check(&mut group, writers, 2, started.elapsed().as_secs_f64()).await;
}

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

/// Issue 20 A4: a directory whose files end before the position it published itself
/// (its log files deleted with the state file kept, or the directory restored from an
/// older backup) resumes after the published position, not from its baseline or its
/// old last line, and says so in the log and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_behind_its_own_published_position_resumes_after_it_and_reports_the_loss() {
    let db = common::TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let org = writers::create_org(db.url(), "acme-a4").await;
    let mut group = Group::new(db.url(), root.path());
    let i = group.spawn("solo");
    let dir = group.replicas[i].dir.clone();
    assert!(
        group.replicas[i]
            .daemon
            .as_ref()
            .unwrap()
            .wait_ready(Duration::from_secs(30))
            .await
    );

    insert_n(db.url(), org, 10).await;
    assert!(support::wait_for_lines(&dir, 10, Duration::from_secs(30)).await);
    // A backup of the directory now, with ten lines.
    let backup = root.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::copy(entry.path(), backup.join(entry.file_name())).unwrap();
    }
    insert_n(db.url(), org, 10).await;
    assert!(support::wait_for_lines(&dir, 20, Duration::from_secs(30)).await);
    assert!(group.reap(i).unwrap().success());
    let written = support::read_sink_ids(&dir);

    // Restored from the older backup: lines 11-20 are gone from the directory.
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
    }
    for entry in std::fs::read_dir(&backup).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    group.restart(i);
    let daemon = group.replicas[i].daemon.as_ref().unwrap();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    insert_n(db.url(), org, 5).await;
    assert!(
        support::wait_for_lines(&dir, 25, Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    let ids = support::read_sink_ids(&dir);
    assert_eq!(ids[..20], written[..], "the lost lines come back, once");
    assert!(
        daemon
            .log_text()
            .contains("files end before the position it published"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        daemon.metric("compartment_audit_mirror_resumed_behind_group_total{reason=\"lines_lost\"}"),
        Some(1.0)
    );
    assert!(group.reap(i).unwrap().success());

    // The state file kept, every log file deleted: not back to the baseline either.
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name() != ".audit-state.json" && entry.file_name() != ".audit.lock" {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    group.restart(i);
    let daemon = group.replicas[i].daemon.as_ref().unwrap();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    insert_n(db.url(), org, 3).await;
    assert!(
        support::wait_for_lines(&dir, 3, Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    let after = support::read_sink_ids(&dir);
    assert!(after[0] > ids[24], "rewound to the baseline: {after:?}");
    assert_eq!(
        daemon.metric("compartment_audit_mirror_resumed_behind_group_total{reason=\"lines_lost\"}"),
        Some(1.0)
    );
}
