//! Start-up recovery (SPEC §6): torn tails, interrupted rotations and compressions,
//! the caller's state, and a real `SIGKILL` of a writing process. Crash states are
//! built on disk directly, as a crash would leave them.

mod sink_support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use compartment_auditd::sink::{FileSink, SinkError};
use sink_support::*;

/// A sink directory as it looks after `audit-20260512T091403Z.ndjson.gz` (ids 1–5)
/// was compressed; the second rotated name is returned for the test to use.
fn directory_with_one_compressed_file(dir: &Path) -> &'static str {
    fs::create_dir_all(dir).unwrap();
    write_gz(&dir.join("audit-20260512T091403Z.ndjson.gz"), &batch(1, 5));
    "audit-20260512T101403Z.ndjson"
}

#[test]
fn a_torn_tail_is_cut_off_and_kept_aside_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let clock = manual_clock();
    let (mut sink, _) = open(options(&dir), clock.clone());
    put(&mut sink, &batch(1, 10));
    drop(sink);
    // The crash: half of line 11 reached the disk.
    let torn = &line(11)[..200];
    fs::OpenOptions::new()
        .append(true)
        .open(dir.join("audit.ndjson"))
        .unwrap()
        .write_all(torn)
        .unwrap();

    let (mut sink, recovery) = open(options(&dir), clock);
    assert_eq!(recovery.torn_bytes, 200);
    let fragment = recovery.fragment.clone().expect("the fragment is kept");
    assert!(
        fragment.starts_with("torn-") && fragment.ends_with(".fragment"),
        "{fragment}"
    );
    assert_eq!(fs::read(dir.join(&fragment)).unwrap(), torn);
    assert_eq!(mode(&dir.join(&fragment)), 0o600);
    assert_eq!(recovery.last_line.as_deref().map(id_of), Some(10));

    // The mirror resumes after id 10: every event exactly once.
    put(&mut sink, &batch(11, 12));
    assert_eq!(ids(&everything(&dir)), (1..=12).collect::<Vec<_>>());
}

#[test]
fn a_torn_first_line_leaves_an_empty_file_and_the_last_line_comes_from_the_rotated_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    directory_with_one_compressed_file(&dir);
    fs::write(dir.join("audit.ndjson"), &line(6)[..100]).unwrap();

    let (_sink, recovery) = open(options(&dir), manual_clock());
    assert_eq!(recovery.torn_bytes, 100);
    assert!(fs::read(dir.join("audit.ndjson")).unwrap().is_empty());
    assert_eq!(recovery.last_line.as_deref().map(id_of), Some(5));
}

#[test]
fn the_last_line_comes_from_the_newest_rotated_file_plain_or_compressed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let plain = directory_with_one_compressed_file(&dir);
    fs::write(dir.join("audit.ndjson"), b"").unwrap();
    let (sink, recovery) = open(options(&dir), manual_clock());
    assert_eq!(
        recovery.last_line.as_deref().map(id_of),
        Some(5),
        "from the .gz"
    );
    drop(sink);

    fs::write(dir.join(plain), batch(6, 9)).unwrap();
    let (_sink, recovery) = open(options(&dir), manual_clock());
    assert_eq!(
        recovery.last_line.as_deref().map(id_of),
        Some(9),
        "from the plain file"
    );
    assert_eq!(recovery.pending_compressions, 1);
}

#[test]
fn a_crash_between_rename_and_compression_recovers_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let plain = directory_with_one_compressed_file(&dir);
    // Renamed, not yet compressed, and the crash came before the new audit.ndjson.
    fs::write(dir.join(plain), batch(6, 10)).unwrap();

    let clock = manual_clock();
    clock.advance(Duration::from_secs(7200));
    let mut opts = options(&dir);
    opts.compress_delay = Duration::ZERO;
    let (mut sink, recovery) = open(opts, clock);
    assert!(recovery.created_active);
    assert_eq!(recovery.pending_compressions, 1);
    assert_eq!(recovery.last_line.as_deref().map(id_of), Some(10));
    put(&mut sink, &batch(11, 15));
    wait_until("the pending file is compressed", || {
        plain_rotated(&dir).is_empty()
    });
    assert_eq!(gz_rotated(&dir).len(), 2);
    assert_eq!(ids(&everything(&dir)), (1..=15).collect::<Vec<_>>());
}

#[test]
fn a_crash_in_the_middle_of_compression_recovers_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let plain = directory_with_one_compressed_file(&dir);
    fs::write(dir.join(plain), batch(6, 10)).unwrap();
    // Half a gzip stream under the temp name, as a killed compressor leaves it.
    let half = tmp.path().join("half.gz");
    write_gz(&half, &batch(6, 10));
    let bytes = fs::read(&half).unwrap();
    fs::write(
        dir.join(format!(".{plain}.gz.tmp")),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    fs::write(dir.join("audit.ndjson"), batch(11, 12)).unwrap();

    let clock = manual_clock();
    clock.advance(Duration::from_secs(7200));
    let mut opts = options(&dir);
    opts.compress_delay = Duration::ZERO;
    let (mut sink, recovery) = open(opts, clock);
    assert_eq!(recovery.temp_files_removed, 1);
    assert_eq!(recovery.pending_compressions, 1);
    assert_eq!(recovery.last_line.as_deref().map(id_of), Some(12));
    put(&mut sink, &batch(13, 14));
    wait_until("the interrupted compression is redone", || {
        plain_rotated(&dir).is_empty()
    });
    assert!(!names(&dir).iter().any(|n| n.ends_with(".tmp")));
    assert_eq!(ids(&everything(&dir)), (1..=14).collect::<Vec<_>>());
}

#[test]
fn a_crash_after_the_gz_rename_keeps_one_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let plain = directory_with_one_compressed_file(&dir);
    // Complete .gz under its final name, plain file not yet removed.
    fs::write(dir.join(plain), batch(6, 10)).unwrap();
    write_gz(&dir.join(format!("{plain}.gz")), &batch(6, 10));

    let (_sink, recovery) = open(options(&dir), manual_clock());
    assert_eq!(recovery.compressions_resolved, 1);
    assert_eq!(recovery.pending_compressions, 0);
    assert!(!dir.join(plain).exists());
    assert_eq!(ids(&everything(&dir)), (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_damaged_gz_next_to_its_plain_file_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let plain = directory_with_one_compressed_file(&dir);
    fs::write(dir.join(plain), batch(6, 10)).unwrap();
    let gz = dir.join(format!("{plain}.gz"));
    write_gz(&gz, &batch(6, 10));
    let bytes = fs::read(&gz).unwrap();
    fs::write(&gz, &bytes[..bytes.len() - 9]).unwrap(); // lost its end

    let clock = manual_clock();
    clock.advance(Duration::from_secs(7200));
    let mut opts = options(&dir);
    opts.compress_delay = Duration::ZERO;
    let (_sink, recovery) = open(opts, clock);
    assert_eq!(recovery.compressions_resolved, 1);
    assert_eq!(
        recovery.pending_compressions, 1,
        "the plain file is compressed again"
    );
    wait_until("the file is compressed again", || {
        plain_rotated(&dir).is_empty()
    });
    assert_eq!(ids(&everything(&dir)), (1..=10).collect::<Vec<_>>());
}

#[test]
fn the_callers_state_round_trips_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let state = serde_json::json!({"system_identifier": "7345012345678901234", "baseline": {"tx": "812", "id": 41}});
    let (mut sink, recovery) = open(options(&dir), manual_clock());
    assert_eq!(recovery.state, None);
    sink.write_state(&serde_json::json!({"old": true})).unwrap();
    sink.write_state(&state).unwrap();
    drop(sink);
    assert_eq!(mode(&dir.join(".audit-state.json")), 0o600);
    // A state write interrupted by a crash leaves only its temp file behind.
    fs::write(dir.join(".audit-state.json.tmp"), b"{\"half").unwrap();

    let (_sink, recovery) = open(options(&dir), manual_clock());
    assert_eq!(recovery.state, Some(state));
    assert_eq!(recovery.temp_files_removed, 1);
}

#[test]
fn a_damaged_state_file_is_refused_rather_than_guessed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join(".audit-state.json"), b"{\"system_identifier\": ").unwrap();
    match FileSink::open(options(&dir), manual_clock()) {
        Err(SinkError::Corrupt { name, .. }) => assert_eq!(name, ".audit-state.json"),
        other => panic!("expected a corrupt-state error, got {other:?}"),
    }
}

/// Child half of the SIGKILL test: appends batches of 5 forever, printing the last
/// id of every batch acknowledged durable.
fn write_until_killed(dir: &Path) {
    let clock = manual_clock();
    let mut opts = options(dir);
    opts.rotate_size = 8 * 1024;
    opts.compress_delay = Duration::ZERO;
    opts.retention_files = 100_000;
    let (mut sink, recovery) = open(opts, clock.clone());
    let mut next = recovery.last_line.as_deref().map_or(1, |l| id_of(l) + 1);
    let mut out = std::io::stdout().lock();
    loop {
        if put(&mut sink, &batch(next, next + 4)) {
            writeln!(out, "acked {}", next + 4).unwrap();
            out.flush().unwrap();
        }
        next += 5;
        clock.advance(Duration::from_millis(250));
    }
}

#[test]
fn resumes_exactly_once_after_sigkill() {
    let dir = std::env::var_os("SINK_TEST_DIR").map(std::path::PathBuf::from);
    if in_child() {
        write_until_killed(&dir.expect("the parent passes the directory"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "resumes_exactly_once_after_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env("SINK_TEST_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = 0;
        let mut seen = 0;
        for l in BufReader::new(child.stdout.take().unwrap()).lines() {
            let l = l.unwrap();
            if let Some(id) = l.strip_prefix("acked ") {
                acked = id.parse().unwrap();
                seen += 1;
                if seen == 150 + round * 37 {
                    break;
                }
            }
        }
        // SIGKILL mid-stream: no chance to finish a batch, a rotation or a compression.
        child.kill().unwrap();
        child.wait().unwrap();

        let mut opts = options(&dir);
        opts.retention_files = 100_000;
        let (sink, recovery) = open(opts, manual_clock());
        let last = recovery.last_line.as_deref().map(id_of).unwrap();
        assert!(
            last >= acked,
            "acknowledged id {acked} lost, sink ends at {last}"
        );
        assert_ids(&everything(&dir), 1, last, &format!("after kill {round}"));
        drop(sink);
    }
}
