//! fsync without holding the sink: the `always` policy's group commit.
//!
//! Under `fsync = always` a caller that appends with [`FileSink::append_unsynced`]
//! takes the fsync out of the sink with [`FileSink::start_sync`], runs it
//! ([`SyncRunner::run`]) on a thread of its own while it appends the next batch, and
//! hands the outcome back with [`FileSink::complete_sync`]. Lines appended meanwhile
//! are visible at once and become durable with the next fsync, which covers all of
//! them: one fsync per batch still, but a batch no longer waits for the previous
//! one's.
//!
//! Every durability decision stays inside the sink, under its lock:
//!
//! - At most one fsync is outstanding. Its result is applied exactly once, by
//!   whichever comes first: `complete_sync`, the next `start_sync`, or a sink
//!   operation that must not proceed before it (a rotation renames the file, the
//!   sink's own fsync on the same open file would not see an error the outstanding one
//!   already consumed, closing ends it all). Those wait for the runner, which never
//!   takes the sink's lock, so waiting cannot deadlock.
//! - The runner fsyncs a duplicate of the active file's descriptor, which shares the
//!   open file and so its write-back error state: an error since the last fsync is
//!   reported to the runner, and the sink applies it as after a failed fsync of its
//!   own — the descriptor is abandoned and the file cut back to the last durable
//!   length, taking back everything appended since (including what was appended while
//!   the fsync ran). The caller resumes after [`FileSink::last_line`].
//! - A success marks durable what the file held when the fsync started, never more.

use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex};

use super::error::{SinkError, SinkOp};
use super::writer::timed_fdatasync;
use super::{Appended, FileSink, ACTIVE};

/// Where the runner leaves its result.
#[derive(Debug, Default)]
struct Slot {
    result: Mutex<Option<io::Result<()>>>,
    done: Condvar,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<io::Result<()>>> {
        self.result
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The fsync a caller runs outside the sink (see the module documentation).
#[derive(Debug)]
pub struct SyncRunner {
    file: File,
    slot: Arc<Slot>,
}

impl SyncRunner {
    /// `fdatasync` of the active file as it was when the fsync was started. Blocks;
    /// run it off the async workers. Then call [`FileSink::complete_sync`].
    pub fn run(self) {
        let result = timed_fdatasync(&self.file);
        *self.slot.lock() = Some(result);
        self.slot.done.notify_all();
    }
}

/// The sink's record of the outstanding fsync.
#[derive(Debug)]
pub(super) struct Outstanding {
    slot: Arc<Slot>,
    /// The active file's inode and length when the fsync started.
    inode: u64,
    len: u64,
    /// The last whole line at that length.
    last_line: Option<Vec<u8>>,
}

impl FileSink {
    /// Starts an fsync of everything appended so far, to run outside the sink. `None`
    /// when everything is durable already, or when an fsync is still running (the
    /// caller starts the next one after completing it). Applies a finished one first.
    pub fn start_sync(&mut self) -> Result<Option<SyncRunner>, SinkError> {
        self.settle_outstanding(false)?;
        if self.outstanding.is_some() {
            return Ok(None);
        }
        let now = self.clock.now();
        let result = self.ensure_active(now).and_then(|()| {
            let dir = Arc::clone(&self.dir);
            let active = self.active_file(now)?;
            if active.synced_len == active.len {
                return Ok(None);
            }
            let file = active
                .try_clone_file()
                .map_err(|e| dir.err(SinkOp::Fsync, ACTIVE, e))?;
            Ok(Some((file, active.inode, active.len)))
        });
        let Some((file, inode, len)) = self.settle(result, now)? else {
            return Ok(None);
        };
        let slot = Arc::new(Slot::default());
        self.outstanding = Some(Outstanding {
            slot: Arc::clone(&slot),
            inode,
            len,
            last_line: self.last_line.clone(),
        });
        Ok(Some(SyncRunner { file, slot }))
    }

    /// Applies the result of the fsync the caller ran (see [`SyncRunner::run`]);
    /// returns whether everything appended is now durable. An error is the fsync's,
    /// already applied: what it did not make durable has been taken back.
    pub fn complete_sync(&mut self) -> Result<Appended, SinkError> {
        self.settle_outstanding(true)?;
        Ok(Appended {
            durable: self.is_durable(),
        })
    }

    /// Whether an fsync started with [`Self::start_sync`] has not been applied yet.
    pub fn sync_outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Applies the outstanding fsync's result if it has one (or, with `wait`, once it
    /// has). A failure is applied like a failed fsync of the sink's own, and returned.
    pub(super) fn settle_outstanding(&mut self, wait: bool) -> Result<(), SinkError> {
        let Some(outstanding) = self.outstanding.as_ref() else {
            return Ok(());
        };
        let result = {
            let mut guard = outstanding.slot.lock();
            if wait {
                while guard.is_none() {
                    guard = outstanding
                        .slot
                        .done
                        .wait(guard)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            guard.take()
        };
        let Some(result) = result else {
            return Ok(());
        };
        let Some(outstanding) = self.outstanding.take() else {
            return Ok(());
        };
        let now = self.clock.now();
        let same_file = self
            .active
            .as_ref()
            .is_some_and(|active| active.inode == outstanding.inode);
        match result {
            Ok(()) => {
                if let Some(active) = self.active.as_mut().filter(|_| same_file) {
                    // Only what the file held when the fsync started; a roll-back
                    // since may have made it shorter.
                    if outstanding.len > active.synced_len && outstanding.len <= active.len {
                        active.synced_len = outstanding.len;
                        self.synced_last_line = outstanding.last_line;
                    }
                    self.last_sync = now;
                }
                Ok(())
            }
            Err(source) => {
                let err = self.dir.err(SinkOp::Fsync, ACTIVE, source);
                if same_file {
                    self.abandon_unsynced(now);
                } else {
                    // Rotations and reopens wait for an outstanding fsync, so the file
                    // cannot have changed under it; should it have, say so loudly.
                    tracing::error!(error = %err, "An fsync of an audit file that is no longer active failed.");
                }
                let now = self.clock.now();
                self.settle(Err(err), now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::FsyncPolicy;
    use crate::sink::{SinkOptions, SystemClock};

    fn open(dir: &Path, rotate_size: u64) -> FileSink {
        let opts = SinkOptions {
            dir: dir.to_owned(),
            rotate_interval: Duration::from_secs(3600),
            rotate_size,
            rotate_min_age: Duration::ZERO,
            retention_files: 30,
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_secs(1),
            compress_delay: Duration::from_secs(3600),
            allow_group_bits: false,
        };
        FileSink::open(opts, Arc::new(SystemClock)).expect("open").0
    }

    fn line(id: u32) -> Vec<u8> {
        format!("{{\"id\":{id},\"pad\":\"{}\"}}\n", "x".repeat(100)).into_bytes()
    }

    fn active(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(ACTIVE)).expect("read the active file")
    }

    /// What the runner would leave after a failed `fdatasync`, without a failing disk.
    fn fail(runner: SyncRunner) {
        *runner.slot.lock() = Some(Err(io::Error::from_raw_os_error(5)));
        runner.slot.done.notify_all();
    }

    #[test]
    fn a_successful_fsync_makes_durable_what_was_appended_before_it_started() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut sink = open(tmp.path(), 1 << 20);
        assert!(!sink.append_unsynced(&line(1)).expect("append 1").durable);
        let runner = sink
            .start_sync()
            .expect("start")
            .expect("something to fsync");
        assert!(
            sink.start_sync().expect("start again").is_none(),
            "one at a time"
        );
        // Appended while the fsync runs: visible, not covered by it.
        assert!(!sink.append_unsynced(&line(2)).expect("append 2").durable);
        assert!(sink.sync_outstanding());
        runner.run();
        assert!(
            !sink.complete_sync().expect("complete").durable,
            "line 2 is not durable yet"
        );
        assert!(!sink.sync_outstanding());
        let next = sink.start_sync().expect("start").expect("line 2 to fsync");
        next.run();
        assert!(sink.complete_sync().expect("complete").durable);
        assert_eq!(active(tmp.path()), [line(1), line(2)].concat());
        assert!(
            sink.start_sync().expect("start").is_none(),
            "nothing left to fsync"
        );
    }

    #[test]
    fn a_failed_fsync_takes_back_everything_since_the_last_good_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut sink = open(tmp.path(), 1 << 20);
        assert!(sink.append(&line(1)).expect("append 1 (fsync'd)").durable);
        assert!(!sink.append_unsynced(&line(2)).expect("append 2").durable);
        let runner = sink.start_sync().expect("start").expect("line 2 to fsync");
        assert!(
            !sink
                .append_unsynced(&line(3))
                .expect("append 3 while the fsync runs")
                .durable
        );
        fail(runner);
        let err = sink.complete_sync().expect_err("the fsync failed");
        assert!(err.to_string().contains("fsync"), "{err}");
        // Lines 2 and 3 are taken back; the caller resumes after line 1.
        assert_eq!(sink.last_line(), Some(&line(1)[..line(1).len() - 1]));
        assert_eq!(active(tmp.path()), line(1));
        assert!(sink.append(&line(2)).expect("append 2 again").durable);
        assert_eq!(active(tmp.path()), [line(1), line(2)].concat());
    }

    #[test]
    fn an_append_after_a_failed_fsync_fails_rather_than_leave_a_gap() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut sink = open(tmp.path(), 1 << 20);
        assert!(!sink.append_unsynced(&line(1)).expect("append 1").durable);
        let runner = sink.start_sync().expect("start").expect("line 1 to fsync");
        fail(runner);
        // The caller has not completed the fsync yet and appends line 2: line 1 is
        // gone, so line 2 must not be written after it.
        sink.append_unsynced(&line(2))
            .expect_err("the failed fsync comes first");
        assert_eq!(sink.last_line(), None);
        assert!(active(tmp.path()).is_empty());
        assert!(!sink.sync_outstanding());
        assert!(sink.complete_sync().expect("nothing outstanding").durable);
    }

    #[test]
    fn a_rotation_waits_for_the_outstanding_fsync_and_applies_its_failure() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Two lines fit; the third rotates.
        let mut sink = open(tmp.path(), 2 * line(1).len() as u64 + 10);
        assert!(sink.append(&line(1)).expect("append 1").durable);
        assert!(!sink.append_unsynced(&line(2)).expect("append 2").durable);
        let runner = sink.start_sync().expect("start").expect("line 2 to fsync");
        let failing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fail(runner);
        });
        // Rotating would rename a file whose fsync failed: the append waits for it,
        // applies the failure and reports it instead.
        sink.append_unsynced(&line(3))
            .expect_err("the fsync failed");
        failing.join().expect("runner thread");
        assert_eq!(
            active(tmp.path()),
            line(1),
            "line 2 taken back, nothing rotated"
        );
        let runner = sink.start_sync().expect("start");
        assert!(runner.is_none(), "line 1 is durable");
        assert!(
            !sink
                .append_unsynced(&line(2))
                .expect("append 2 again")
                .durable
        );
        assert!(
            !sink
                .append_unsynced(&line(3))
                .expect("append 3: rotates")
                .durable
        );
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("audit-"))
            .collect();
        assert_eq!(names.len(), 1, "one rotated file: {names:?}");
        assert_eq!(
            std::fs::read(tmp.path().join(&names[0])).expect("rotated"),
            [line(1), line(2)].concat()
        );
        assert_eq!(active(tmp.path()), line(3));
    }
}
