//! A sink directory tampered with between runs (issue 8, item 3), against the real
//! daemon binary: its files replaced by a symlink or a FIFO, modes loosened, foreign
//! entries added, a rotated `.gz` truncated, the state file deleted, damaged or
//! replaced. Each must end in a clear refusal, a tightening, being ignored, or a
//! recovery — never a followed symlink, and no event lost or written twice where
//! recovery is possible.

/// How long lines may take to arrive: returns as soon as they do, but a transaction
/// held open anywhere in the shared test cluster (other tests' writers, exports)
/// holds the visibility horizon, and so the mirror, back meanwhile.
const LINES_WAIT: std::time::Duration = std::time::Duration::from_secs(150);

mod common;
#[path = "support/hostile.rs"]
mod hostile;
mod support;

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{NewEvent, TestDb};
use hostile::{mode_of, snapshot, start_refused};
use support::{compare_ids, read_sink_ids, wait_for_lines, DaemonConfig};
use tempfile::TempDir;
use uuid::Uuid;

const ACTIVE: &str = "audit.ndjson";
const STATE: &str = ".audit-state.json";

/// A database with events, a sink that mirrored them, and the stopped daemon's config.
struct Stopped {
    db: TestDb,
    org: Uuid,
    dir: TempDir,
    sink: PathBuf,
    config: DaemonConfig,
}

impl Stopped {
    /// Mirrors `events` events, then stops the daemon cleanly.
    async fn new(events: usize, extra_env: &[(&str, &str)]) -> Stopped {
        let db = TestDb::new().await;
        let org = db.insert_org("acme-dev").await;
        let dir = tempfile::tempdir().unwrap();
        let sink = dir.path().join("sink");
        let mut config = DaemonConfig::new(db.url(), &sink, dir.path())
            .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning");
        for (key, value) in extra_env {
            config = config.with(key, value);
        }
        let stopped = Stopped {
            db,
            org,
            dir,
            sink,
            config,
        };
        stopped.insert(events).await;
        stopped.run_until(events).await;
        stopped
    }

    async fn insert(&self, n: usize) {
        for i in 0..n {
            let event = NewEvent::new(self.org, "organization.user.removed")
                .metadata(serde_json::json!({"user_id": format!("usr_{i}"), "reason": "left"}));
            self.db.insert_event(&event).await;
        }
    }

    /// Starts the daemon, waits until the sink holds `lines` lines, stops it (SIGTERM).
    async fn run_until(&self, lines: usize) {
        let daemon = self.config.spawn();
        assert!(
            daemon.wait_ready(Duration::from_secs(30)).await,
            "the daemon did not get ready: {}",
            daemon.log_text()
        );
        assert!(
            wait_for_lines(&self.sink, lines, LINES_WAIT).await,
            "the sink holds {} lines, not {lines}: {}",
            read_sink_ids(&self.sink).len(),
            daemon.log_text()
        );
        assert!(
            daemon.terminate().success(),
            "the daemon did not drain cleanly"
        );
    }

    async fn committed(&self) -> Vec<i64> {
        let client = self.db.connect().await;
        client
            .query("SELECT id FROM audit_events ORDER BY id", &[])
            .await
            .expect("reading the ids")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Every committed event is in the sink exactly once.
    async fn assert_exactly_once(&self) {
        let committed = self.committed().await;
        let (missing, duplicated, unexpected) = compare_ids(&committed, &read_sink_ids(&self.sink));
        assert!(missing.is_empty(), "missing from the sink: {missing:?}");
        assert!(duplicated.is_empty(), "written twice: {duplicated:?}");
        assert!(unexpected.is_empty(), "never committed: {unexpected:?}");
    }

    /// A file outside the sink that a planted symlink points at.
    fn victim(&self) -> PathBuf {
        let victim = self.dir.path().join("victim.txt");
        if !victim.exists() {
            std::fs::write(&victim, b"not the sink's\n").unwrap();
        }
        victim
    }
}

fn victim_untouched(victim: &Path) {
    assert_eq!(
        std::fs::read(victim).unwrap(),
        b"not the sink's\n",
        "the daemon wrote through a symlink"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_file_replaced_by_a_symlink_or_fifo_is_refused_and_never_followed() {
    let s = Stopped::new(3, &[]).await;
    let victim = s.victim();
    let active = s.sink.join(ACTIVE);
    let kept = s.dir.path().join("kept.ndjson");
    std::fs::rename(&active, &kept).unwrap();
    symlink(&victim, &active).unwrap();
    s.insert(2).await;

    let refusal = start_refused(&s.config, Duration::from_secs(30));
    assert!(!refusal.status.success());
    assert!(
        refusal.stderr.contains("audit.ndjson") && refusal.stderr.contains("symlink"),
        "the refusal does not say what is wrong: {}",
        refusal.stderr
    );
    victim_untouched(&victim);
    assert!(std::fs::symlink_metadata(&active)
        .unwrap()
        .file_type()
        .is_symlink());

    // A FIFO under the name must not hang the start either.
    std::fs::remove_file(&active).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &active,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let refusal = start_refused(&s.config, Duration::from_secs(30));
    assert!(!refusal.status.success());
    assert!(
        refusal.stderr.contains("not a regular file"),
        "the refusal does not say what is wrong: {}",
        refusal.stderr
    );

    // The operator puts the file back: mirroring resumes after its last line.
    std::fs::remove_file(&active).unwrap();
    std::fs::rename(&kept, &active).unwrap();
    s.run_until(5).await;
    s.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loosened_modes_are_tightened_and_a_world_writable_directory_is_refused() {
    let s = Stopped::new(3, &[]).await;

    // Group and other read bits: tightened at start, files too.
    std::fs::set_permissions(&s.sink, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.sink.join(ACTIVE), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(s.sink.join(STATE), PermissionsExt::from_mode(0o666)).unwrap();
    s.insert(1).await;
    s.run_until(4).await;
    assert_eq!(mode_of(&s.sink), 0o700);
    assert_eq!(mode_of(&s.sink.join(ACTIVE)), 0o600);
    assert_eq!(mode_of(&s.sink.join(STATE)), 0o600);

    // World-writable: anyone may have planted anything, so it is refused as it is.
    std::fs::set_permissions(&s.sink, PermissionsExt::from_mode(0o777)).unwrap();
    s.insert(1).await;
    let refusal = start_refused(&s.config, Duration::from_secs(30));
    assert!(!refusal.status.success());
    assert!(
        refusal.stderr.contains("world-writable"),
        "the refusal does not say what is wrong: {}",
        refusal.stderr
    );
    assert_eq!(mode_of(&s.sink), 0o777, "a refused directory was changed");

    std::fs::set_permissions(&s.sink, PermissionsExt::from_mode(0o700)).unwrap();
    s.run_until(5).await;
    s.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entries_are_left_alone_through_rotation_compression_and_file_retention() {
    // Small files, so the next run rotates, compresses and applies file retention
    // with the foreign entries around.
    let s = Stopped::new(
        3,
        &[
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "4K"),
            ("COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES", "2"),
        ],
    )
    .await;
    let victim = s.victim();
    let foreign = [
        "notes.txt",
        ".hidden",
        "audit-backup.ndjson",
        "audit-20260101T000000Z.ndjson.bak",
        "audit-2026.ndjson.gz",
        "audit-20260101T000000Z.ndjson.gz.part",
        "archive",
        "link-to-victim",
        "pipe",
    ];
    std::fs::write(s.sink.join("notes.txt"), b"operator notes\n").unwrap();
    std::fs::write(s.sink.join(".hidden"), b"x").unwrap();
    // Look-alikes of the sink's names. Those the test's own sink reader picks up
    // hold no lines; the sink itself must not read, move or delete any of them.
    std::fs::write(s.sink.join("audit-backup.ndjson"), b"").unwrap();
    std::fs::write(s.sink.join("audit-20260101T000000Z.ndjson.bak"), b"bak").unwrap();
    let empty_gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())
        .finish()
        .unwrap();
    std::fs::write(s.sink.join("audit-2026.ndjson.gz"), empty_gz).unwrap();
    std::fs::write(
        s.sink.join("audit-20260101T000000Z.ndjson.gz.part"),
        b"not gzip",
    )
    .unwrap();
    std::fs::set_permissions(s.sink.join("notes.txt"), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::create_dir(s.sink.join("archive")).unwrap();
    std::fs::write(s.sink.join("archive").join("old.ndjson"), b"{}\n").unwrap();
    symlink(&victim, s.sink.join("link-to-victim")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.sink.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let before = snapshot(&s.sink, &foreign);
    assert_eq!(before.len(), foreign.len());

    s.insert(20).await;
    let daemon = s.config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    // A file is rotated by size at most once per batch and once it is a second
    // old: three more batches, a second apart, rotate three times.
    for _ in 0..3 {
        tokio::time::sleep(compartment_auditd::sink::ROTATE_MIN_AGE).await;
        s.insert(20).await;
    }
    let committed = s.committed().await;
    let last = *committed.last().unwrap();
    let arrived = support::wait_for(LINES_WAIT, async || {
        (read_sink_ids(&s.sink).last() == Some(&last)).then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "the last event did not arrive: {}",
        daemon.log_text()
    );
    // Compression and file retention run in the background: let them settle.
    let count_rotated = |suffix: &str| {
        std::fs::read_dir(&s.sink)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("audit-")
                    && name.ends_with(suffix)
                    && !foreign.contains(&name.as_str())
            })
            .count()
    };
    let _ = support::wait_for(LINES_WAIT, async || {
        (count_rotated(".ndjson.gz") == 2 && count_rotated(".ndjson") == 0).then_some(())
    })
    .await;
    assert!(daemon.terminate().success());
    let written = read_sink_ids(&s.sink);
    let rotated = count_rotated(".ndjson.gz");
    assert_eq!(
        rotated, 2,
        "file retention keeps exactly two compressed files"
    );

    assert_eq!(
        snapshot(&s.sink, &foreign),
        before,
        "a foreign entry was changed"
    );
    victim_untouched(&victim);
    // Retention removed the oldest files: what is left is the newest events, each once.
    assert!(written.len() < committed.len(), "nothing was rotated away");
    assert_eq!(
        written,
        committed[committed.len() - written.len()..].to_vec()
    );
}

/// Creates what a rotation plus compression leaves: the active file's lines in a new
/// `.gz` (named after every existing one) and an empty active file.
fn rotate_by_hand(sink: &Path) -> PathBuf {
    let active = sink.join(ACTIVE);
    let lines = std::fs::read(&active).unwrap();
    assert!(!lines.is_empty());
    let gz = sink.join("audit-20991231T235959Z.ndjson.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&lines).unwrap();
    std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    std::fs::set_permissions(&gz, PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&active, b"").unwrap();
    gz
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_newest_gzip_is_refused_and_its_events_come_back_once_removed() {
    let s = Stopped::new(3, &[]).await;
    // Two generations: lines 1–3 rotated by hand into an older file, 4–5 written on.
    let older = rotate_by_hand(&s.sink);
    std::fs::rename(&older, s.sink.join("audit-20980101T000000Z.ndjson.gz")).unwrap();
    s.insert(2).await;
    s.run_until(5).await;
    let newest = rotate_by_hand(&s.sink);
    let packed = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &packed[..packed.len() / 2]).unwrap();
    s.insert(1).await;

    // The active file is empty, so the position would come from the damaged file.
    let refusal = start_refused(&s.config, Duration::from_secs(30));
    assert!(!refusal.status.success());
    assert!(
        refusal.stderr.contains("audit-20991231T235959Z.ndjson.gz")
            && refusal.stderr.contains("damaged"),
        "the refusal does not name the damaged file: {}",
        refusal.stderr
    );

    // The operator removes it: the events it held are mirrored again, from after the
    // older file's last line, and none twice.
    std::fs::remove_file(&newest).unwrap();
    s.run_until(6).await;
    s.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_older_gzip_is_left_alone_while_the_active_file_has_the_position() {
    let s = Stopped::new(3, &[]).await;
    let gz = rotate_by_hand(&s.sink);
    s.insert(2).await;
    s.run_until(5).await;
    let mut packed = std::fs::read(&gz).unwrap();
    let middle = packed.len() / 2;
    packed[middle] ^= 0xff;
    std::fs::write(&gz, &packed).unwrap();
    s.insert(2).await;

    let daemon = s.config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    let active_ids = || -> Vec<i64> {
        std::fs::read_to_string(s.sink.join(ACTIVE))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };
    let arrived =
        support::wait_for(LINES_WAIT, async || (active_ids().len() == 4).then_some(())).await;
    assert!(arrived.is_some(), "{}", daemon.log_text());
    assert!(daemon.terminate().success());
    assert_eq!(
        std::fs::read(&gz).unwrap(),
        packed,
        "the damaged file was changed"
    );
    let committed = s.committed().await;
    assert_eq!(active_ids(), committed[3..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_file_is_rebuilt_and_a_damaged_or_linked_one_is_refused() {
    let s = Stopped::new(3, &[]).await;
    let state = s.sink.join(STATE);

    // Deleted: the position comes from the last line, the file is written again.
    std::fs::remove_file(&state).unwrap();
    s.insert(1).await;
    s.run_until(4).await;
    assert!(state.exists(), "the state file was not rebuilt");
    s.assert_exactly_once().await;

    // Garbage: refused with the file named, nothing written.
    let good = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"\x00\xffnot json{{").unwrap();
    s.insert(1).await;
    let before = std::fs::read(s.sink.join(ACTIVE)).unwrap();
    let refusal = start_refused(&s.config, Duration::from_secs(30));
    assert!(!refusal.status.success());
    assert!(
        refusal.stderr.contains(STATE) && refusal.stderr.contains("damaged"),
        "the refusal does not name the damaged state file: {}",
        refusal.stderr
    );
    assert_eq!(std::fs::read(s.sink.join(ACTIVE)).unwrap(), before);

    // A symlink in its place: refused, its target untouched.
    let victim = s.victim();
    std::fs::remove_file(&state).unwrap();
    symlink(&victim, &state).unwrap();
    let refusal = start_refused(&s.config, Duration::from_secs(30));
    assert!(!refusal.status.success());
    assert!(
        refusal.stderr.contains(STATE) && refusal.stderr.contains("symlink"),
        "{}",
        refusal.stderr
    );
    victim_untouched(&victim);

    // Damaged bookkeeping of the active file's age only costs that age: not refused.
    std::fs::remove_file(&state).unwrap();
    std::fs::write(&state, &good).unwrap();
    std::fs::set_permissions(&state, PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(s.sink.join(".audit-active.json"), b"garbage").unwrap();
    s.run_until(5).await;
    s.assert_exactly_once().await;
}
