//! The active file: append-only writes of whole lines, fsync, and the roll-back that
//! keeps a failed batch from leaving half a line behind.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Instant, SystemTime};

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use super::dir::SinkDir;
use super::error::{SinkError, SinkOp};
use super::names::ACTIVE;
use crate::telemetry::sink as metrics;

/// `audit.ndjson`, open append-only.
#[derive(Debug)]
pub struct ActiveFile {
    /// The open file. After a rename it is dropped at once: nothing is ever written
    /// to the old inode again.
    file: File,
    /// Bytes in the file (the sink is its only writer, so it need not ask the kernel).
    pub len: u64,
    /// Bytes known to be on disk: the length after the last successful fsync. A
    /// failed fsync cuts the file back to here.
    pub synced_len: u64,
    /// Inode, to tie the `.audit-active.json` record to this file.
    pub inode: u64,
    /// When the file was opened, by the sink's clock (age-based rotation).
    pub opened_at: SystemTime,
    /// This file was already the active file when the current batch began (false
    /// for a file created or reopened during the batch): only then may a size
    /// rotation rename it.
    pub before_batch: bool,
}

impl ActiveFile {
    /// Creates a new, empty `audit.ndjson` (`0600`, `O_EXCL`).
    pub fn create(dir: &SinkDir, now: SystemTime) -> Result<ActiveFile, SinkError> {
        let created = dir.create_new(ACTIVE)?;
        // Reopen append-only: O_APPEND is what makes every write land at the end,
        // whatever happened to the offset.
        drop(created);
        Self::open(dir, now)
    }

    /// Opens the existing `audit.ndjson`; its whole content counts as durable, which
    /// the caller makes true with [`sync_data`](Self::sync_data) when it matters.
    pub fn open(dir: &SinkDir, opened_at: SystemTime) -> Result<ActiveFile, SinkError> {
        let file = dir.open_append(ACTIVE)?;
        dir.tighten(&file, ACTIVE)?;
        let meta = file
            .metadata()
            .map_err(|e| dir.err(SinkOp::Open, ACTIVE, e))?;
        Ok(ActiveFile {
            file,
            len: meta.len(),
            synced_len: meta.len(),
            inode: meta.ino(),
            opened_at,
            before_batch: false,
        })
    }

    /// Appends `chunk` (whole lines) with one `write`.
    ///
    /// Space is reserved first (`fallocate`, keeping the size), so that on a full disk
    /// the batch fails before any byte of it becomes visible to a collector. If the
    /// write still fails, the caller rolls the file back with [`truncate`](Self::truncate).
    pub fn write(
        &mut self,
        dir: &SinkDir,
        chunk: &[u8],
        reserve: &mut bool,
    ) -> Result<(), SinkError> {
        if *reserve {
            match rustix::fs::fallocate(
                &self.file,
                FallocateFlags::KEEP_SIZE,
                self.len,
                chunk.len() as u64,
            ) {
                Ok(()) => {}
                // Filesystems without fallocate still get the truncate safety net.
                Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => *reserve = false,
                Err(e) => return Err(dir.err(SinkOp::Write, ACTIVE, e)),
            }
        }
        // write_all issues one write(2) for the chunk; it loops only if the kernel
        // accepts part of it, and then the rest follows immediately.
        let result = self.file.write_all(chunk);
        match result {
            Ok(()) => {
                self.len += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Some bytes may have landed; the caller cuts the file back.
                self.len = self
                    .file
                    .metadata()
                    .map_or(self.len + chunk.len() as u64, |m| m.len());
                Err(dir.err(SinkOp::Write, ACTIVE, e))
            }
        }
    }

    /// `fdatasync`: the file size is part of the data it flushes, which is all an
    /// append needs.
    pub fn sync_data(&mut self, dir: &SinkDir) -> Result<(), SinkError> {
        timed_fdatasync(&self.file).map_err(|e| dir.err(SinkOp::Fsync, ACTIVE, e))?;
        self.synced_len = self.len;
        Ok(())
    }

    /// A second descriptor of the same open file, for an fsync run outside the sink
    /// (it shares the file's write-back error state; see `deferred`).
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Cuts the file back to `len` bytes.
    pub fn truncate(&mut self, dir: &SinkDir, len: u64) -> Result<(), SinkError> {
        rustix::fs::ftruncate(&self.file, len).map_err(|e| dir.err(SinkOp::Truncate, ACTIVE, e))?;
        self.len = len;
        self.synced_len = self.synced_len.min(len);
        Ok(())
    }

    /// Age of the file at `now`; zero if the clock went backwards.
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        now.duration_since(self.opened_at).unwrap_or_default()
    }
}

/// `fdatasync`, its duration recorded in the fsync histogram. Through the C library
/// (the standard library's `sync_data`), not a raw system call, so that a test can put
/// a failing disk under the real binary with an `LD_PRELOAD` shim
/// (`tests/support/fsync_fault.c`).
pub fn timed_fdatasync(file: &File) -> std::io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    metrics::fsync_observed(started.elapsed());
    result
}
