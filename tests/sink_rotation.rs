//! Rotation by size and age, compression, retention and fsync policies of the file
//! sink. Time is a manual clock; only the background compressor is waited for.

mod sink_support;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use compartment_auditd::config::FsyncPolicy;
use compartment_auditd::sink::{SinkError, SystemClock};
use sink_support::*;

#[test]
fn rotates_before_the_size_limit_at_line_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.rotate_size = 4096;
    let (mut sink, _) = open(opts, clock.clone());

    let mut next = 1;
    for round in 0..40u64 {
        let n = 1 + round % 5; // batches of 1 to 5 lines, so they straddle the limit
        assert!(put(&mut sink, &batch(next, next + n - 1)));
        next += n;
        clock.advance(Duration::from_millis(300));
        for name in rotated(&dir) {
            let content = fs::read(dir.join(&name)).unwrap();
            assert!(content.len() <= 4096, "{name} has {} bytes", content.len());
            assert!(content.ends_with(b"\n"), "{name} ends inside a line");
        }
        assert!(fs::metadata(dir.join("audit.ndjson")).unwrap().len() <= 4096);
    }

    let files = rotated(&dir);
    assert!(files.len() >= 10, "expected many rotations, got {files:?}");
    // Full files: the next line (about 450 bytes) would not have fitted.
    for name in &files {
        let len = fs::metadata(dir.join(name)).unwrap().len();
        assert!(len > 4096 - 500, "{name} was rotated early at {len} bytes");
    }
    assert_eq!(ids(&everything(&dir)), (1..next).collect::<Vec<_>>());
}

#[test]
fn a_line_larger_than_the_limit_goes_whole_into_a_file_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.rotate_size = 1000;
    let (mut sink, _) = open(opts, clock.clone());

    let small = line(1);
    let mut big = line(2);
    big.truncate(big.len() - 3); // drop `}}\n` to pad the metadata
    big.extend_from_slice(format!(r#","note":"{}"}}}}"#, "x".repeat(3000)).as_bytes());
    big.push(b'\n');
    let tail = line(3);

    put(&mut sink, &small);
    put(&mut sink, &big);
    put(&mut sink, &tail);

    let files = rotated(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(fs::read(dir.join(&files[0])).unwrap(), small);
    assert_eq!(fs::read(dir.join(&files[1])).unwrap(), big);
    assert_eq!(fs::read(dir.join("audit.ndjson")).unwrap(), tail);

    // In one batch, what follows the large line stays with it: the file that the
    // batch created is not rotated within the batch.
    let mut both = big.clone();
    both.extend_from_slice(&line(4));
    put(&mut sink, &both);
    let files = rotated(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(fs::read(dir.join(&files[2])).unwrap(), tail);
    assert_eq!(fs::read(dir.join("audit.ndjson")).unwrap(), both);
}

/// Issue 19: a batch whose remainder would fill a new file too must not create and
/// rename that file within the batch (a follower that opens the name after the
/// creation would never see it). Every file a batch rotates held lines of an
/// earlier batch, and a file passes the limit by one batch at most.
#[test]
fn no_file_is_created_and_rotated_within_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.rotate_size = 4096;
    opts.retention_files = 1000;
    let (mut sink, _) = open(opts, clock.clone());

    let mut next = 1;
    let mut largest_batch = 0;
    let mut seen = 0;
    for round in 0..60u64 {
        // 1 to 29 lines (450 B to 13 KB): many batches larger than a file.
        let n = 1 + (round * 7) % 29;
        let lines = batch(next, next + n - 1);
        largest_batch = largest_batch.max(lines.len() as u64);
        put(&mut sink, &lines);
        let files = rotated(&dir);
        for name in &files[seen..] {
            let content = fs::read(dir.join(name)).unwrap();
            let first = ids(&content)[0];
            assert!(
                first < next,
                "{name} was created and rotated by the batch starting at id {next}"
            );
            assert!(
                content.len() as u64 <= 4096 + largest_batch,
                "{name} has {} bytes, more than the limit plus one batch",
                content.len()
            );
        }
        seen = files.len();
        next += n;
        clock.advance(Duration::from_millis(100));
    }
    assert!(seen >= 30, "only {seen} rotations");
    assert_eq!(ids(&everything(&dir)), (1..next).collect::<Vec<_>>());
}

/// A new file takes whole batches until it is `rotate_min_age` old, however far
/// past the limit; the first batch after that rotates it.
#[test]
fn a_new_file_is_not_rotated_by_size_before_its_minimum_age() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.rotate_size = 4096;
    opts.rotate_min_age = Duration::from_secs(1);
    let (mut sink, _) = open(opts, clock.clone());

    // Batches of 5 lines (about 2.2 KB) every 300 ms: a file is 1 s old at its
    // fifth batch (0, 0.3, 0.6, 0.9 s take four), which rotates it.
    let mut next = 1;
    for _ in 0..20 {
        put(&mut sink, &batch(next, next + 4));
        next += 5;
        clock.advance(Duration::from_millis(300));
    }
    let files = rotated(&dir);
    assert_eq!(files.len(), 4, "{files:?}");
    for name in &files {
        let got = ids(&fs::read(dir.join(name)).unwrap());
        // Four batches: 0-0.9 s of the file's life, then the fifth rotated it.
        assert_eq!(got.len(), 20, "{name} holds {got:?}");
    }
    assert_eq!(ids(&everything(&dir)), (1..next).collect::<Vec<_>>());
}

#[test]
fn the_daemon_waits_a_second_before_rotating_a_new_file_by_size() {
    let settings = compartment_auditd::config::Settings::with_defaults("postgres://localhost/x");
    let opts = compartment_auditd::sink::SinkOptions::from_settings(&settings.file_sink);
    assert_eq!(
        opts.rotate_min_age,
        compartment_auditd::sink::ROTATE_MIN_AGE
    );
    assert_eq!(opts.rotate_min_age, Duration::from_secs(1));
}

#[test]
fn rotates_by_age_with_an_injected_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir); // interval: 1 h
    opts.compress_delay = Duration::from_secs(7 * 86_400); // keep files plain to look at
    let (mut sink, _) = open(opts, clock.clone());

    put(&mut sink, &line(1));
    clock.advance(Duration::from_secs(3599));
    put(&mut sink, &line(2));
    assert!(rotated(&dir).is_empty(), "rotated before the interval");

    clock.advance(Duration::from_secs(1));
    put(&mut sink, &line(3));
    // Named after the rotation time: 09:14:03 + 1 h.
    assert_eq!(rotated(&dir), ["audit-20260512T101403Z.ndjson"]);
    assert_eq!(
        ids(&fs::read(dir.join("audit-20260512T101403Z.ndjson")).unwrap()),
        [1, 2]
    );
    assert_eq!(ids(&fs::read(dir.join("audit.ndjson")).unwrap()), [3]);

    // An idle sink rotates on the caller's timer too.
    clock.advance(Duration::from_secs(1800));
    assert!(!sink.rotate_if_due().unwrap());
    clock.advance(Duration::from_secs(1800));
    assert!(sink.rotate_if_due().unwrap());
    assert_eq!(rotated(&dir).len(), 2);
    // An empty active file is not rotated, only its age restarts.
    clock.advance(Duration::from_secs(7200));
    assert!(!sink.rotate_if_due().unwrap());
    assert_eq!(rotated(&dir).len(), 2);
}

#[test]
fn the_active_files_age_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let (mut sink, _) = open(options(&dir), clock.clone());
    put(&mut sink, &line(1));
    sink.close().unwrap();

    clock.advance(Duration::from_secs(2400));
    let (mut sink, _) = open(options(&dir), clock.clone());
    assert!(!sink.rotate_if_due().unwrap(), "40 min old, interval 1 h");
    put(&mut sink, &line(2));
    sink.close().unwrap();

    clock.advance(Duration::from_secs(1200));
    let (mut sink, _) = open(options(&dir), clock.clone());
    assert!(
        sink.rotate_if_due().unwrap(),
        "60 min old across two restarts"
    );
    assert_eq!(ids(&rotated_content(&dir, &rotated(&dir)[0])), [1, 2]);
}

#[test]
fn compressed_files_are_valid_gzip_of_exactly_what_was_written_across_many_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.rotate_size = 2048;
    opts.compress_delay = Duration::ZERO;
    opts.retention_files = 1000;
    let (mut sink, _) = open(opts, clock.clone());

    let mut next = 1;
    for round in 0..120u64 {
        let n = 1 + round % 7;
        put(&mut sink, &batch(next, next + n - 1));
        next += n;
        // Several rotations fall into the same second: the collision suffixes.
        if round % 3 == 0 {
            clock.advance(Duration::from_secs(1));
        }
    }
    wait_until("every rotated file is compressed", || {
        plain_rotated(&dir).is_empty()
    });

    let gz = gz_rotated(&dir);
    assert!(gz.len() > 100, "expected many rotations, got {}", gz.len());
    assert!(
        gz.iter().any(|n| n.contains("Z_001.")),
        "no collision suffix in {gz:?}"
    );
    let mut previous_last = 0;
    for name in &gz {
        let content = gunzip(&dir.join(name));
        let file_ids = ids(&content);
        assert!(!file_ids.is_empty(), "{name} is empty");
        assert_eq!(
            file_ids[0],
            previous_last + 1,
            "{name} does not continue the previous file"
        );
        previous_last = *file_ids.last().unwrap();
    }
    assert_eq!(ids(&everything(&dir)), (1..next).collect::<Vec<_>>());
    assert!(
        !names(&dir).iter().any(|n| n.ends_with(".tmp")),
        "temp files left behind"
    );
    sink.close().unwrap();
}

#[test]
fn keeps_only_the_newest_compressed_files_and_their_names_sort_in_time_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.compress_delay = Duration::ZERO;
    opts.retention_files = 3;
    let (mut sink, _) = open(opts, clock.clone());

    // Steps of 0 s (collisions), seconds, hours and days between rotations.
    let steps = [0, 1, 0, 0, 59, 3600, 0, 86_400, 1, 0];
    for (i, step) in steps.iter().enumerate() {
        let id = i as u64 + 1;
        put(&mut sink, &line(id));
        sink.rotate_now().unwrap();
        clock.advance(Duration::from_secs(*step));
    }
    wait_until("retention leaves three compressed files", || {
        plain_rotated(&dir).is_empty() && gz_rotated(&dir).len() == 3
    });

    let gz = gz_rotated(&dir); // sorted by name
    let kept: Vec<u64> = gz
        .iter()
        .flat_map(|n| ids(&rotated_content(&dir, n)))
        .collect();
    assert_eq!(
        kept,
        [8, 9, 10],
        "name order must be write order, newest kept: {gz:?}"
    );
    sink.close().unwrap();
}

#[test]
fn compression_waits_for_the_configured_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.compress_delay = Duration::from_secs(60);
    let (mut sink, _) = open(opts, clock.clone());

    put(&mut sink, &line(1));
    sink.rotate_now().unwrap();
    let first = plain_rotated(&dir);
    clock.advance(Duration::from_secs(30));
    put(&mut sink, &line(2));
    sink.rotate_now().unwrap();
    let second: Vec<String> = plain_rotated(&dir)
        .into_iter()
        .filter(|n| !first.contains(n))
        .collect();
    assert_eq!((first.len(), second.len()), (1, 1));

    // 70 s after the first rotation, 40 s after the second.
    clock.advance(Duration::from_secs(40));
    sink.sync().unwrap(); // any call lets the sink notice the due time
    let first_gz = format!("{}.gz", first[0]);
    wait_until("the first file is compressed", || {
        dir.join(&first_gz).exists() && !dir.join(&first[0]).exists()
    });
    // The compressor looked at the directory at 70 s; the second file was not due.
    assert!(dir.join(&second[0]).exists());
    assert!(!dir.join(format!("{}.gz", second[0])).exists());

    clock.advance(Duration::from_secs(20));
    sink.sync().unwrap();
    wait_until("the second file is compressed", || {
        plain_rotated(&dir).is_empty()
    });
    assert_eq!(ids(&everything(&dir)), [1, 2]);
}

#[test]
fn reports_durability_per_fsync_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = manual_clock();

    let mut opts = options(&tmp.path().join("interval"));
    opts.fsync = FsyncPolicy::Interval;
    opts.fsync_interval = Duration::from_secs(1);
    let (mut sink, _) = open(opts, clock.clone());
    assert!(!sink.append(&line(1)).unwrap().durable);
    clock.advance(Duration::from_millis(999));
    assert!(!sink.append(&line(2)).unwrap().durable);
    clock.advance(Duration::from_millis(1));
    assert!(
        sink.append(&line(3)).unwrap().durable,
        "the interval has passed"
    );
    assert!(!sink.append(&line(4)).unwrap().durable);
    sink.sync().unwrap();
    assert!(
        sink.append(b"").unwrap().durable,
        "sync made everything durable"
    );
    assert!(!sink.append(&line(5)).unwrap().durable);
    sink.rotate_now().unwrap();
    assert!(sink.append(b"").unwrap().durable, "rotation fsyncs");

    let mut opts = options(&tmp.path().join("always"));
    opts.fsync = FsyncPolicy::Always;
    let (mut sink, _) = open(opts, clock.clone());
    assert!(sink.append(&line(1)).unwrap().durable);

    let mut opts = options(&tmp.path().join("never"));
    opts.fsync = FsyncPolicy::Never;
    let (mut sink, _) = open(opts, clock);
    assert!(
        sink.append(&line(1)).unwrap().durable,
        "never: written counts"
    );
}

#[test]
fn refuses_a_batch_that_does_not_end_in_a_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let (mut sink, _) = open(options(&dir), manual_clock());
    let mut b = batch(1, 2);
    b.pop();
    assert!(matches!(sink.append(&b), Err(SinkError::PartialLine)));
    assert!(fs::read(dir.join("audit.ndjson")).unwrap().is_empty());
    assert!(sink.health().writable, "a caller bug is not a disk problem");
}

#[test]
fn last_line_follows_appends_and_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let (mut sink, recovery) = open(options(&dir), clock.clone());
    assert_eq!(recovery.last_line, None);
    assert_eq!(sink.last_line(), None);
    put(&mut sink, &batch(1, 3));
    assert_eq!(sink.last_line().map(id_of), Some(3));
    sink.rotate_now().unwrap();
    assert_eq!(sink.last_line().map(id_of), Some(3));
    sink.close().unwrap();

    let (sink, recovery) = open(options(&dir), Arc::new(SystemClock));
    assert_eq!(
        recovery.last_line.as_deref().map(id_of),
        Some(3),
        "from the rotated file"
    );
    assert_eq!(sink.last_line().map(id_of), Some(3));
    drop(sink);
}

#[test]
fn names_stay_in_write_order_when_the_clock_steps_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let (mut sink, _) = open(options(&dir), clock.clone());
    put(&mut sink, &line(1));
    sink.rotate_now().unwrap();
    clock.set(start() - Duration::from_secs(3600)); // NTP stepped the clock back
    put(&mut sink, &line(2));
    sink.rotate_now().unwrap();
    sink.close().unwrap();

    // Also across a restart, which learns the newest name from the directory.
    let (mut sink, _) = open(options(&dir), clock.clone());
    put(&mut sink, &line(3));
    sink.rotate_now().unwrap();

    let files = rotated(&dir);
    assert_eq!(
        files,
        [
            "audit-20260512T091403Z.ndjson",
            "audit-20260512T091403Z_001.ndjson",
            "audit-20260512T091403Z_002.ndjson"
        ]
    );
    let order: Vec<u64> = files
        .iter()
        .flat_map(|n| ids(&rotated_content(&dir, n)))
        .collect();
    assert_eq!(order, [1, 2, 3]);
}
