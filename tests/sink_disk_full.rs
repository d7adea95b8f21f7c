//! A full disk or a failed write (SPEC §12 "Disk full"): no partial line is ever
//! left, the sink reports not writable, and writing resumes once space returns.

mod sink_support;

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use compartment_auditd::sink::FileSink;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use sink_support::*;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root".into());
        }
        fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open in a failed test must not keep the mount around.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem with one file until it is full.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the tmpfs failed: {e}"),
        }
    }
}

fn active(sink_dir: &Path) -> Vec<u8> {
    fs::read(sink_dir.join("audit.ndjson")).unwrap()
}

/// A sample of the metrics registry; counters only grow, so comparing two samples
/// holds even while other tests in the same process write too.
fn metric(name_and_labels: &str) -> f64 {
    compartment_auditd::telemetry::render()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const WRITE_ERRORS: &str = "compartment_audit_sink_write_errors_total{op=\"write\"} ";

fn next_after(sink: &FileSink) -> u64 {
    sink.last_line().map_or(1, |l| id_of(l) + 1)
}

#[test]
fn a_full_disk_leaves_no_partial_line_and_writing_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let _tmpfs = match Tmpfs::mount(&mnt, "1m") {
        Ok(m) => m,
        Err(why) => {
            sink_support::capability::missing("a small tmpfs for the full-disk test", &why);
            return;
        }
    };
    let dir = mnt.join("sink");
    let (mut sink, _) = open(options(&dir), manual_clock());
    put(&mut sink, &batch(1, 10));
    let before = active(&dir);

    fill(&mnt.join("filler"));
    let errors_before = metric(WRITE_ERRORS);
    for _ in 0..2 {
        let err = sink.append(&batch(11, 30)).unwrap_err();
        assert_eq!(err.io_kind(), ErrorKind::StorageFull, "{err}");
        assert_eq!(active(&dir), before, "a partial batch was left behind");
        let health = sink.health();
        assert!(!health.writable);
        assert_eq!(
            health.last_error.map(|f| f.kind),
            Some(ErrorKind::StorageFull)
        );
        assert_eq!(sink.last_line().map(id_of), Some(10));
    }
    assert!(
        metric(WRITE_ERRORS) >= errors_before + 2.0,
        "write errors are counted"
    );

    fs::remove_file(mnt.join("filler")).unwrap();
    let resume = next_after(&sink);
    put(&mut sink, &batch(resume, 30));
    assert!(sink.health().writable);
    assert_ids(&everything(&dir), 1, 30, "after the disk had space again");
    drop(sink);
}

#[test]
fn a_full_disk_in_the_middle_of_a_rotating_batch_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let _tmpfs = match Tmpfs::mount(&mnt, "1m") {
        Ok(m) => m,
        Err(why) => {
            sink_support::capability::missing("a small tmpfs for the full-disk test", &why);
            return;
        }
    };
    let dir = mnt.join("sink");
    let mut opts = options(&dir);
    opts.rotate_size = 8 * 1024;
    let (mut sink, _) = open(opts, manual_clock());
    put(&mut sink, &batch(1, 15)); // about 6.6 KiB: the next batch crosses the limit

    fill(&mnt.join("filler"));
    // The first part of the batch fits in the page the file already has; after the
    // rotation the new file needs space that is not there.
    let err = sink.append(&batch(16, 40)).unwrap_err();
    assert_eq!(err.io_kind(), ErrorKind::StorageFull, "{err}");
    let resume = next_after(&sink);
    assert!(
        resume > 16,
        "expected part of the batch to be kept, resume at {resume}"
    );
    assert_ids(&everything(&dir), 1, resume - 1, "while full");

    fs::remove_file(mnt.join("filler")).unwrap();
    // The caller resumes after the sink's last line, as the mirror does.
    put(&mut sink, &batch(resume, 40));
    assert_ids(&everything(&dir), 1, 40, "after the disk had space again");
    drop(sink);
}

#[test]
fn a_write_that_fails_half_way_is_rolled_back_to_the_last_whole_line() {
    if !in_child() {
        // SIGXFSZ would kill the process at the file size limit; ignored, the write
        // fails with EFBIG instead — after the kernel accepted part of it.
        run_child(
            "a_write_that_fails_half_way_is_rolled_back_to_the_last_whole_line",
            &[],
            Some("trap '' XFSZ"),
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let (mut sink, _) = open(options(&dir), manual_clock());
    put(&mut sink, &batch(1, 5));
    let before = active(&dir);

    let saved = getrlimit(Resource::Fsize);
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(before.len() as u64 + 1000),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let err = sink.append(&batch(6, 15)).unwrap_err();
    assert_eq!(err.io_kind(), ErrorKind::FileTooLarge, "{err}");
    assert_eq!(
        active(&dir),
        before,
        "the accepted part of the batch was not taken back"
    );
    assert!(!sink.health().writable);
    assert_eq!(sink.last_line().map(id_of), Some(5));

    setrlimit(Resource::Fsize, saved).unwrap();
    put(&mut sink, &batch(6, 15));
    assert!(sink.health().writable);
    assert_ids(&everything(&dir), 1, 15, "after the limit was lifted");
}
