//! The NDJSON file sink (SPEC §6): an owner-only directory with one active file,
//! `audit.ndjson`, rotated by age or size, rotated files gzip-compressed in the
//! background and a bounded number of them kept.
//!
//! The sink knows bytes, lines and files — never the database or HTTP — and it is
//! synchronous: the async mirror drives it from a blocking thread.
//!
//! | file | what |
//! |---|---|
//! | `audit.ndjson` | the active file; collectors follow it |
//! | `audit-<yyyymmddThhmmssZ>[_NNN].ndjson` | just rotated, compressed after `compress_delay` |
//! | `audit-<yyyymmddThhmmssZ>[_NNN].ndjson.gz` | rotated and compressed; the newest `retention_files` are kept |
//! | `.audit-state.json` | the caller's durable state ([`FileSink::write_state`]) |
//! | `.audit-active.json` | when `audit.ndjson` was opened, so age rotation survives restarts |
//! | `.audit.lock` | `flock`ed while a sink has the directory open |
//! | `.…tmp` | a compression or state write in progress |
//! | `torn-<stamp>.fragment` | a torn last line cut off at start-up, kept for inspection |
//!
//! Anything else in the directory is foreign and left alone.
//!
//! One job per file: `dir` hardens the directory and does every file operation
//! through its handle; `writer` appends to the active file and rolls a failed
//! write back; `rotate` renames; `compress` is the background thread with file
//! retention; `recover` repairs the directory at start; `state` keeps the small
//! durable files; `names` says which names are the sink's. This file holds the
//! public types and [`FileSink`]'s write path.
//!
//! # Acknowledgement, and what to do after an error
//!
//! [`FileSink::append`] writes a batch and returns [`Appended::durable`]: whether
//! everything appended so far is durable under the fsync policy — fsync'd under
//! `always` and `interval`, written under `never`. A successful [`FileSink::sync`],
//! [`FileSink::rotate_now`] or rotating [`FileSink::rotate_if_due`] makes everything
//! appended so far durable too. Only then may the caller move its position.
//!
//! After any error the sink holds only whole lines, and [`FileSink::last_line`] is
//! the last of them — the same rule as [`Recovery::last_line`] at start-up: resume
//! after it. A failed write takes back only the failed part of the batch (a batch
//! that crossed a rotation keeps its first part, fsync'd in the rotated file); a
//! failed fsync takes back everything since the last successful one, because the
//! kernel may have dropped those pages, and the file is reopened, never fsync'd
//! again through the same descriptor.
//!
//! Rotation always fsyncs the file before renaming it, also under `never`.

mod compress;
mod deferred;
mod dir;
mod error;
pub mod integrity;
mod names;
mod recover;
mod rotate;
mod state;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

pub use deferred::SyncRunner;
pub use error::{DirProblem, SinkError, SinkOp};
pub use names::{ACTIVE, ACTIVE_META, LOCK, STATE};
pub use recover::Recovery;

use compress::{Compressor, CompressorConfig};
use dir::SinkDir;
use names::RotatedKey;
use state::ActiveMeta;
use writer::ActiveFile;

use crate::config::{FileSinkSettings, FsyncPolicy};
use crate::telemetry::sink as metrics;

/// How long a new `audit.ndjson` stays the active file at least before a size
/// rotation may rename it: one second, twice the poll interval of the documented
/// polling followers (syslog-ng `file()` with `follow-freq(0.5)`, Vector with
/// `glob_minimum_cooldown_ms = 500`). Followers on inotify (rsyslog `imfile`,
/// Fluent Bit `tail`) open a new file within milliseconds of its creation; a
/// follower that opens the name only after the file was renamed again never sees it
/// (issue 19). Until then the file takes whole batches, so it may pass
/// `rotate_size` by one batch plus what arrives in that second.
pub const ROTATE_MIN_AGE: Duration = Duration::from_secs(1);

/// How the sink behaves; see [`SinkOptions::from_settings`].
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The sink directory.
    pub dir: PathBuf,
    /// Rotate when the active file has been open this long (by the sink's clock).
    pub rotate_interval: Duration,
    /// Rotate before the active file would pass this many bytes, once the file is
    /// eligible (see [`ROTATE_MIN_AGE`]).
    pub rotate_size: u64,
    /// A file is rotated by size only once it has been the active file across a
    /// batch boundary and for at least this long; [`ROTATE_MIN_AGE`] in the daemon.
    pub rotate_min_age: Duration,
    /// Compressed rotated files kept; older ones are deleted.
    pub retention_files: usize,
    /// When appended lines are fsync'd.
    pub fsync: FsyncPolicy,
    /// With [`FsyncPolicy::Interval`]: an append fsyncs when the last fsync is at
    /// least this old (the caller's timer calls [`FileSink::sync`] in between).
    pub fsync_interval: Duration,
    /// Keep a just-rotated file plain this long before compressing it, so a slow or
    /// restarting collector can finish reading it (logrotate's `delaycompress`).
    pub compress_delay: Duration,
    /// Tolerate (and keep) group permission bits on the directory and its files,
    /// for Kubernetes `fsGroup` volumes.
    pub allow_group_bits: bool,
}

impl SinkOptions {
    /// The sink part of the daemon's settings.
    pub fn from_settings(s: &FileSinkSettings) -> Self {
        SinkOptions {
            dir: s.dir.clone(),
            rotate_interval: s.rotate_interval,
            rotate_size: s.rotate_size,
            rotate_min_age: ROTATE_MIN_AGE,
            retention_files: s.retention_files,
            fsync: s.fsync,
            fsync_interval: s.fsync_interval,
            compress_delay: s.compress_delay,
            allow_group_bits: s.allow_group_bits,
        }
    }
}

/// Where the sink gets the time: rotation age, rotated names, compression delay and
/// the fsync interval. Injected so tests move time instead of sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told, for tests and demos.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }

    /// Sets the clock to `to` (also backwards).
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why the active file was rotated (the `reason` label of the rotation metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// The next batch would have passed `rotate_size`.
    Size,
    /// The active file reached `rotate_interval`.
    Time,
    /// [`FileSink::rotate_now`].
    Manual,
}

impl RotationReason {
    /// `size`, `time` or `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationReason::Size => "size",
            RotationReason::Time => "time",
            RotationReason::Manual => "manual",
        }
    }
}

/// The outcome of a successful [`FileSink::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the caller may only advance its position once `durable` is true"]
pub struct Appended {
    /// Everything appended so far is durable under the fsync policy: fsync'd (always;
    /// interval once due; any batch that crossed a rotation), or written to the
    /// kernel under `never`, where the operator chose not to wait for the disk.
    pub durable: bool,
}

/// A failure as readiness and logs report it: no file contents, no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkFailure {
    /// The step that failed.
    pub op: SinkOp,
    /// The I/O error kind (`StorageFull`, `ReadOnlyFilesystem`, …).
    pub kind: std::io::ErrorKind,
    /// The error message (names the directory and file).
    pub message: String,
    /// When it happened, by the sink's clock.
    pub at: SystemTime,
}

impl SinkFailure {
    fn from_error(e: &SinkError, at: SystemTime) -> Self {
        SinkFailure {
            op: e.op(),
            kind: e.io_kind(),
            message: e.to_string(),
            at,
        }
    }
}

/// The sink's health, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkHealth {
    /// The last write-path operation succeeded (false from a failed append, sync,
    /// rotation or state write until the next success).
    pub writable: bool,
    /// The failure that made it unwritable.
    pub last_error: Option<SinkFailure>,
    /// The last compression or retention failure, while it persists. Compression is
    /// retried in the background and does not affect `writable`.
    pub compressor_error: Option<SinkFailure>,
}

/// The open sink directory. See the [module documentation](self).
pub struct FileSink {
    /// As given to [`FileSink::open`].
    opts: SinkOptions,
    /// Injected time source.
    clock: Arc<dyn Clock>,
    /// The hardened directory handle, shared with the compressor thread.
    dir: Arc<SinkDir>,
    /// Held (`flock`) for the sink's lifetime: two writers would interleave lines.
    _lock: File,
    /// `None` after a failed rotation or a failed fsync: the next call reopens.
    active: Option<ActiveFile>,
    /// After a failed fsync (or a failed roll-back) the file must be cut back to this
    /// length on reopen: bytes past it may not be what is on disk.
    truncate_on_reopen: Option<u64>,
    /// A rename or create was not yet made durable by a directory fsync.
    dir_sync_pending: bool,
    /// The last whole line the sink holds (see [`FileSink::last_line`]).
    last_line: Option<Vec<u8>>,
    /// The last whole line known to be on disk: what `last_line` falls back to when
    /// a failed fsync takes back the unsynced tail.
    synced_last_line: Option<Vec<u8>>,
    /// When the active file was last fsync'd (interval policy).
    last_sync: SystemTime,
    /// Newest rotated name in the directory; new names sort after it, even if the
    /// clock steps back.
    newest_rotated: Option<RotatedKey>,
    /// When just-rotated files become due for compression; the compressor is nudged
    /// when the clock passes one, so it need not poll.
    compress_due: Vec<SystemTime>,
    /// Whether `fallocate` works on this filesystem.
    reserve: bool,
    /// Why the sink is not writable, if it is not.
    last_error: Option<SinkFailure>,
    /// The background compressor.
    compressor: Option<Compressor>,
    /// An fsync running outside the sink ([`FileSink::start_sync`]).
    outstanding: Option<deferred::Outstanding>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.opts.dir)
            .field("active_len", &self.active.as_ref().map(|a| a.len))
            .field("writable", &self.last_error.is_none())
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Creates and hardens the directory, takes its lock, recovers (torn tail, temp
    /// files, half-done compressions) and starts the background compressor.
    ///
    /// Refusals ([`SinkError::Directory`], [`SinkError::Symlink`],
    /// [`SinkError::Locked`], …) need an operator; I/O errors (a full disk) may be
    /// retried.
    pub fn open(
        opts: SinkOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(FileSink, Recovery), SinkError> {
        let opened = Self::open_and_recover(opts, clock);
        if let Err(e) = &opened {
            if e.is_retryable() {
                metrics::write_failed(e);
                metrics::set_writable(false);
            }
        }
        opened
    }

    fn open_and_recover(
        opts: SinkOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(FileSink, Recovery), SinkError> {
        let dir = Arc::new(SinkDir::open(&opts.dir, opts.allow_group_bits)?);
        let lock = dir.open_or_create(LOCK)?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(SinkError::Locked {
                    path: dir.path().to_owned(),
                })
            }
            Err(e) => return Err(dir.err(SinkOp::Lock, LOCK, e)),
        }
        for name in [ACTIVE, ACTIVE_META, STATE] {
            dir.expect_regular_or_absent(name)?;
        }

        let mut recovery = Recovery::default();
        let inventory = recover::recover_directory(&dir, &mut recovery)?;
        let (caller_state, meta) = recover::read_states(&dir)?;
        recovery.state = caller_state;

        let now = clock.now();
        let active_last_line = if dir.lstat(ACTIVE)?.is_some() {
            recover::repair_active(&dir, now, &mut recovery)?
        } else {
            ActiveFile::create(&dir, now)?;
            dir.sync()?;
            recovery.created_active = true;
            None
        };
        let mut active = ActiveFile::open(&dir, now)?;
        // Whatever an earlier run left unsynced is made durable now, so that
        // everything in the file may count as acknowledged.
        active.sync_data(&dir)?;
        match meta.filter(|m| m.inode == active.inode) {
            Some(m) => active.opened_at = m.opened_at(),
            None => record_opened(&dir, &active),
        }

        recovery.last_line = match active_last_line {
            Some(line) => Some(line),
            None => recover::last_line_of_rotated(&dir)?,
        };

        let compressor = Compressor::spawn(
            Arc::clone(&dir),
            Arc::clone(&clock),
            CompressorConfig {
                delay: opts.compress_delay,
                retention_files: opts.retention_files,
            },
        )?;
        metrics::set_writable(true);
        tracing::info!(
            dir = %dir.path().display(),
            torn_bytes = recovery.torn_bytes,
            temp_files_removed = recovery.temp_files_removed,
            compressions_resolved = recovery.compressions_resolved,
            pending_compressions = recovery.pending_compressions,
            "Opened the audit file sink."
        );
        let sink = FileSink {
            opts,
            clock,
            dir,
            _lock: lock,
            active: Some(active),
            truncate_on_reopen: None,
            dir_sync_pending: false,
            last_line: recovery.last_line.clone(),
            synced_last_line: recovery.last_line.clone(),
            last_sync: now,
            newest_rotated: inventory.newest_rotated,
            compress_due: Vec::new(),
            reserve: true,
            last_error: None,
            outstanding: None,
            compressor: Some(compressor),
        };
        Ok((sink, recovery))
    }

    /// Appends whole `\n`-terminated lines.
    ///
    /// Rotates first when due (age), or when the batch would pass `rotate_size` — then
    /// the batch is split at a line boundary and continues in the new file; a single
    /// line larger than `rotate_size` goes whole into a file of its own. A file is
    /// rotated by size only once it was already the active file when a batch began
    /// and is [`SinkOptions::rotate_min_age`] old: a file created during this batch,
    /// or younger, takes the batch whole, so that a follower has time to open it
    /// before it is renamed (no file is created and rotated within one batch). One
    /// `write` per file per batch; fsync per policy.
    ///
    /// On error nothing of the failed part is left (no half line), the error is
    /// returned and the sink reports not writable; resume after [`Self::last_line`].
    pub fn append(&mut self, lines: &[u8]) -> Result<Appended, SinkError> {
        self.append_with(lines, false)
    }

    /// [`Self::append`], except that under `fsync = always` the fsync is left to the
    /// caller: [`Self::start_sync`] and [`Self::complete_sync`] (group commit; see
    /// `deferred`). Rotations still fsync the file they close.
    pub fn append_unsynced(&mut self, lines: &[u8]) -> Result<Appended, SinkError> {
        self.append_with(lines, true)
    }

    fn append_with(&mut self, lines: &[u8], defer: bool) -> Result<Appended, SinkError> {
        if lines.is_empty() {
            return Ok(Appended {
                durable: self.is_durable(),
            });
        }
        if lines.last() != Some(&b'\n') {
            return Err(SinkError::PartialLine);
        }
        // An fsync that failed meanwhile took lines back: this batch would follow a
        // gap. The caller resumes after `last_line` instead.
        self.settle_outstanding(false)?;
        let now = self.clock.now();
        let result = self.append_at(lines, now, defer);
        self.settle(result, now)
    }

    fn append_at(
        &mut self,
        lines: &[u8],
        now: SystemTime,
        defer: bool,
    ) -> Result<Appended, SinkError> {
        // The batch boundary: a file that is active now was there before this batch.
        if let Some(active) = self.active.as_mut() {
            active.before_batch = true;
        }
        self.ensure_active(now)?;
        self.nudge_if_due(now);
        self.rotate_if_due_at(now)?;
        let mut rest = lines;
        let mut rotated = false;
        let rotate_size = self.opts.rotate_size;
        let min_age = self.opts.rotate_min_age;
        while !rest.is_empty() {
            let active = self.active_file(now)?;
            let room = rotate_size.saturating_sub(active.len);
            let eligible = active.before_batch && active.age(now) >= min_age;
            let take = if !eligible || rest.len() as u64 <= room {
                rest.len()
            } else {
                // `room` < rest.len() here, so the conversion cannot truncate.
                let window = &rest[..usize::try_from(room).unwrap_or(rest.len())];
                match window.iter().rposition(|&b| b == b'\n') {
                    Some(p) => p + 1,
                    // Nothing fits: a fresh file takes the next line whole, however long.
                    None if active.len == 0 => first_line_len(rest),
                    None => 0,
                }
            };
            if take == 0 {
                self.rotate(RotationReason::Size, now)?;
                rotated = true;
                continue;
            }
            let (chunk, remaining) = rest.split_at(take);
            self.write_chunk(chunk)?;
            rest = remaining;
        }
        let sync_now = match self.opts.fsync {
            FsyncPolicy::Always => !defer,
            FsyncPolicy::Interval => {
                rotated
                    || now
                        .duration_since(self.last_sync)
                        .map_or(true, |d| d >= self.opts.fsync_interval)
            }
            FsyncPolicy::Never => false,
        };
        if sync_now {
            self.sync_active(now)?;
        }
        Ok(Appended {
            durable: self.is_durable(),
        })
    }

    /// Writes one chunk into the active file, or takes it back entirely.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        let now = self.clock.now();
        let dir = Arc::clone(&self.dir);
        let mut reserve = self.reserve;
        let active = self.active_file(now)?;
        let before = active.len;
        let result = active.write(&dir, chunk, &mut reserve);
        self.reserve = reserve;
        match result {
            Ok(()) => {
                metrics::written(chunk.len(), count_lines(chunk));
                self.last_line = Some(last_line_of(chunk).to_vec());
                Ok(())
            }
            Err(e) => {
                self.roll_back(before);
                Err(e)
            }
        }
    }

    /// Cuts the active file back to `len` after a failed write.
    fn roll_back(&mut self, len: u64) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.len == len {
            return;
        }
        if let Err(e) = active.truncate(&self.dir, len) {
            tracing::error!(error = %e, "Could not take back a failed write; will retry on reopen.");
            self.active = None;
            self.truncate_on_reopen = Some(len);
        }
    }

    /// fsync of the active file. On failure the descriptor is never fsync'd again
    /// (the kernel may have dropped the dirty pages and cleared the error): the file
    /// is reopened and cut back to the last durable length.
    fn sync_active(&mut self, now: SystemTime) -> Result<(), SinkError> {
        // An outstanding fsync of the same open file may have consumed an error this
        // one would not see: apply its result first.
        self.settle_outstanding(true)?;
        let dir = Arc::clone(&self.dir);
        let active = self.active_file(now)?;
        if active.synced_len == active.len {
            self.last_sync = now;
            return Ok(());
        }
        match active.sync_data(&dir) {
            Ok(()) => {
                self.last_sync = now;
                self.synced_last_line.clone_from(&self.last_line);
                Ok(())
            }
            Err(e) => {
                self.abandon_unsynced(now);
                Err(e)
            }
        }
    }

    /// After a failed fsync: the descriptor is never fsync'd again; the file is
    /// reopened and cut back to its last durable length, and `last_line` falls back
    /// to the last line on disk.
    fn abandon_unsynced(&mut self, now: SystemTime) {
        let Some(active) = self.active.take() else {
            return;
        };
        self.truncate_on_reopen = Some(active.synced_len);
        self.last_line.clone_from(&self.synced_last_line);
        if let Err(reopen) = self.ensure_active(now) {
            tracing::warn!(error = %reopen, "Could not reopen the active audit file yet.");
        }
    }

    /// Reopens (or creates) the active file after a failure.
    fn ensure_active(&mut self, now: SystemTime) -> Result<(), SinkError> {
        if self.dir_sync_pending {
            self.dir.sync()?;
            self.dir_sync_pending = false;
        }
        if self.active.is_some() {
            return Ok(());
        }
        let exists = self.dir.expect_regular_or_absent(ACTIVE)?.is_some();
        let mut active = if exists {
            ActiveFile::open(&self.dir, now)?
        } else {
            let a = ActiveFile::create(&self.dir, now)?;
            self.dir.sync()?;
            record_opened(&self.dir, &a);
            a
        };
        if let Some(len) = self.truncate_on_reopen {
            if active.len > len {
                active.truncate(&self.dir, len)?;
            }
            // The cut itself must reach the disk before anything is written after it.
            active.sync_data(&self.dir)?;
            self.truncate_on_reopen = None;
        }
        if exists {
            if let Ok(Some(meta)) = state::read_active_meta(&self.dir) {
                if meta.inode == active.inode {
                    active.opened_at = meta.opened_at();
                }
            }
        }
        self.active = Some(active);
        Ok(())
    }

    fn active_file(&mut self, now: SystemTime) -> Result<&mut ActiveFile, SinkError> {
        if self.active.is_none() {
            self.ensure_active(now)?;
        }
        self.active.as_mut().ok_or_else(|| SinkError::Io {
            op: SinkOp::Open,
            dir: self.opts.dir.clone(),
            name: ACTIVE.to_owned(),
            source: std::io::Error::other("the active file is not open"),
        })
    }

    /// Whether everything appended is durable as the policy defines it.
    fn is_durable(&self) -> bool {
        if self.truncate_on_reopen.is_some() {
            return false;
        }
        match self.opts.fsync {
            // The operator chose not to wait for the disk: written counts.
            FsyncPolicy::Never => true,
            FsyncPolicy::Always | FsyncPolicy::Interval => {
                self.active.as_ref().is_none_or(|a| a.synced_len == a.len)
            }
        }
    }

    /// fsyncs whatever was appended (the interval policy's timer, shutdown).
    pub fn sync(&mut self) -> Result<(), SinkError> {
        let now = self.clock.now();
        let result = self.ensure_active(now).and_then(|()| {
            self.nudge_if_due(now);
            self.sync_active(now)
        });
        self.settle(result, now)
    }

    /// Stores the caller's state durably (`.audit-state.json`, `0600`): temp file,
    /// fsync, rename, directory fsync. [`Recovery::state`] returns it at the next open.
    pub fn write_state(&mut self, state: &serde_json::Value) -> Result<(), SinkError> {
        let now = self.clock.now();
        let result = state::write_state(&self.dir, state);
        self.settle(result, now)
    }

    /// Applies reloaded settings: rotation thresholds, fsync policy, compression delay
    /// and file retention take effect from the next append. The directory and its
    /// group-bits policy belong to the open directory handle and stay as they are.
    pub fn reconfigure(&mut self, opts: SinkOptions) {
        if let Some(compressor) = &self.compressor {
            compressor.reconfigure(CompressorConfig {
                delay: opts.compress_delay,
                retention_files: opts.retention_files,
            });
        }
        self.opts = SinkOptions {
            dir: self.opts.dir.clone(),
            allow_group_bits: self.opts.allow_group_bits,
            ..opts
        };
    }

    /// The last whole line the sink holds, without its `\n`: where to resume after an
    /// error. After recovery it equals [`Recovery::last_line`].
    pub fn last_line(&self) -> Option<&[u8]> {
        self.last_line.as_deref()
    }

    /// Health for readiness: writable, or the last error.
    pub fn health(&self) -> SinkHealth {
        SinkHealth {
            writable: self.last_error.is_none(),
            last_error: self.last_error.clone(),
            compressor_error: self.compressor.as_ref().and_then(Compressor::failure),
        }
    }

    /// fsyncs what was appended, then stops the compressor after it finishes the
    /// file in hand. Files not yet compressed are picked up at the next open.
    pub fn close(mut self) -> Result<(), SinkError> {
        let synced = self.sync();
        let stopped = match self.compressor.take() {
            Some(c) => c.stop(),
            None => Ok(()),
        };
        synced.and(stopped)
    }

    /// Records the outcome of a write-path call in health and metrics.
    fn settle<T>(&mut self, result: Result<T, SinkError>, now: SystemTime) -> Result<T, SinkError> {
        match &result {
            Ok(_) => {
                if self.last_error.take().is_some() {
                    metrics::set_writable(true);
                    tracing::info!(dir = %self.dir.path().display(), "The audit file sink is writable again.");
                }
            }
            Err(e) => {
                metrics::write_failed(e);
                metrics::set_writable(false);
                self.last_error = Some(SinkFailure::from_error(e, now));
            }
        }
        result
    }
}

/// Records when the active file was opened; a failure only costs the age across a
/// restart, so it is logged, not returned.
fn record_opened(dir: &SinkDir, active: &ActiveFile) {
    if let Err(e) = state::write_active_meta(dir, &ActiveMeta::new(active.inode, active.opened_at))
    {
        tracing::warn!(error = %e, "Could not record when the active audit file was opened.");
    }
}

/// Newlines in a chunk, for the lines metric. Counted per 255 bytes into a `u8`
/// (which cannot overflow there) because that form vectorises: the plain
/// `filter().count()` cost a quarter of a batch's time on a fast disk.
fn count_lines(chunk: &[u8]) -> usize {
    chunk
        .chunks(255)
        .map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'))))
        .sum()
}

/// Length of the first line including its `\n` (the whole input if it has none).
fn first_line_len(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |p| p + 1)
}

/// The last line of a chunk that ends with `\n`, without the `\n`.
fn last_line_of(chunk: &[u8]) -> &[u8] {
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    &body[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<FileSink>();
    }

    #[test]
    fn line_helpers() {
        assert_eq!(count_lines(b"a\nbb\n"), 2);
        assert_eq!(count_lines(&[b'\n'; 1000]), 1000);
        assert_eq!(count_lines(&[b'x'; 1000]), 0);
        assert_eq!(first_line_len(b"a\nbb\n"), 2);
        assert_eq!(last_line_of(b"a\nbb\n"), b"bb");
        assert_eq!(last_line_of(b"only\n"), b"only");
    }
}
