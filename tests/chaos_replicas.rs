//! Chaos with several replicas (issue 16): three daemons of one sink group on a
//! private PostgreSQL, writers committing throughout, and faults one after another at
//! random — the leader killed (restarted on its volume, or replaced by a new pod with
//! an empty directory), the leader paused past its lease and resumed, the leader
//! terminated and restarted (a rollout), PostgreSQL restarted. The oracle
//! (`support::replicas`) checks that the union of the directories holds every
//! committed event, that no directory holds one twice, that one directory grows at a
//! time, and that duplicates across replicas stay within the handover bound.
//!
//! In the suite this is the short form (20 s of faults). The long form is the same
//! code: `scripts/chaos --replicas 10m` (or `CHAOS_REPLICAS_DURATION=10m cargo test
//! --test chaos_replicas -- --nocapture`); `CHAOS_SEED` repeats a schedule.

mod common;
mod support;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use support::replicas::{stop_and_check, Group, LEASE_TIMEOUT};
use support::writers::{self, Shapes, Writers};
use support::PrivatePostgres;

fn duration_from_env() -> Duration {
    match std::env::var("CHAOS_REPLICAS_DURATION") {
        Ok(text) if !text.is_empty() => {
            let (n, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
            let n: u64 = n.parse().unwrap_or_else(|_| {
                panic!("CHAOS_REPLICAS_DURATION={text}: expected e.g. 90s, 10m, 2h")
            });
            match unit {
                "s" | "" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => panic!("CHAOS_REPLICAS_DURATION={text}: expected e.g. 90s, 10m, 2h"),
            }
        }
        _ => Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_group_under_chaos_writes_every_event_and_one_writer_at_a_time() {
    let duration = duration_from_env();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos-replicas: seed {seed} (CHAOS_SEED={seed} repeats this schedule), {duration:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let pg = PrivatePostgres::start();
    let url = pg.create_migrated_database("chaos_replicas");
    let root = tempfile::tempdir().unwrap();
    let org = writers::create_org(&url, "acme-chaos-replicas").await;
    let mut group = Group::new(&url, root.path());
    for name in ["replica-a", "replica-b", "replica-c"] {
        group.spawn(name);
    }
    let mut leader = group
        .wait_for_leader(None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no single leader\n{}", group.logs()));
    group.start_sampling();
    let started = Instant::now();
    let writers = Writers::start(&url, org, 3, Shapes::default());
    let mut faults: [usize; 5] = [0; 5];
    let mut takeovers = 0;
    let mut fresh = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2500))).await;
        let fault = rng.random_range(0..5);
        faults[fault] += 1;
        match fault {
            0 => {
                // SIGKILL, back on the same volume.
                group.kill(leader);
                group.restart(leader);
            }
            1 => {
                // SIGKILL, replaced by a new pod with an empty directory.
                group.kill(leader);
                fresh += 1;
                group.spawn(&format!("replica-new-{fresh}"));
            }
            2 => {
                // Frozen past the lease, then resumed.
                group.pause(leader);
                tokio::time::sleep(
                    LEASE_TIMEOUT + Duration::from_millis(rng.random_range(200..1500)),
                )
                .await;
                group.resume(leader);
            }
            3 => {
                // A rollout of one pod: SIGTERM, then the pod comes back.
                group.terminate_async(leader);
                let _ = group.reap(leader);
                group.restart(leader);
            }
            _ => {
                pg.restart();
            }
        }
        let next = group
            .wait_for_leader(None, LEASE_TIMEOUT + Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no single leader after fault {fault}\n{}", group.logs()));
        if next != leader || fault != 4 {
            takeovers += 1;
        }
        leader = next;
    }
    println!(
        "chaos-replicas: faults kill-restart {} / kill-replace {} / pause {} / sigterm {} / postgres-restart {}",
        faults[0], faults[1], faults[2], faults[3], faults[4]
    );
    stop_and_check(
        &mut group,
        writers,
        takeovers.max(1),
        started.elapsed().as_secs_f64(),
    )
    .await;
    assert_eq!(group.leaders().len(), 1, "{}", group.logs());
}
