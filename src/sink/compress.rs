//! Background compression of rotated files, and file retention.
//!
//! One thread, off the write path: it shares nothing with the writer but the
//! directory handle and a small control block that is locked only to read or set
//! flags, so appends never wait for a compression (SPEC §12 "Collectors follow
//! renames"). Its work list is the directory itself — every plain rotated file is
//! due `compress_delay` after the time in its name — so a restart needs no queue.
//!
//! Per file: gzip to `.audit-<stamp>.ndjson.gz.tmp` (`0600`), fsync, rename to
//! `audit-<stamp>.ndjson.gz`, fsync the directory, remove the plain file. A `.gz`
//! therefore only ever appears complete under its final name.

use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};

use super::dir::SinkDir;
use super::error::{SinkError, SinkOp};
use super::names::{classify, Owned, RotatedForm, RotatedKey};
use super::{Clock, SinkFailure};
use crate::telemetry::sink as metrics;

/// Longest sleep between looks at the clock: bounds the lag after a clock jump (or a
/// manual clock in tests) without costing anything measurable.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Read size while compressing.
const CHUNK: usize = 1 << 20;
/// The `gzip -6` default: the balance of speed and size operators expect.
const LEVEL: u32 = 6;
/// Longest pause after failures before trying again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The compressor's nice value: the lowest priority. Compression is deferred work
/// whose only cost when it lags is disk space; when CPU is short, the writer (whose
/// fsync acknowledges events) must win. Measured in `benches/sink.rs`.
const NICE: i32 = 19;

/// What the compressor needs to know.
#[derive(Clone)]
pub struct CompressorConfig {
    /// Wait this long after rotation (by the clock) before compressing.
    pub delay: Duration,
    /// Keep this many `.gz` files.
    pub retention_files: usize,
}

#[derive(Default)]
struct Control {
    /// Finish the file in hand, then exit.
    stop: bool,
    /// Something changed (a rotation, the clock passed a due time): look again now.
    nudged: bool,
}

struct Shared {
    control: Mutex<Control>,
    /// Delay and retention count; replaced on a configuration reload.
    config: Mutex<CompressorConfig>,
    wake: Condvar,
    /// The last compression or retention failure, cleared by the next success.
    failure: Mutex<Option<SinkFailure>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are plain flags that a panic cannot leave half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Handle on the compressor thread.
pub struct Compressor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Compressor {
    /// Starts the thread.
    pub fn spawn(
        dir: Arc<SinkDir>,
        clock: Arc<dyn Clock>,
        config: CompressorConfig,
    ) -> Result<Compressor, SinkError> {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                stop: false,
                // Files left plain by an earlier run may already be due.
                nudged: true,
            }),
            wake: Condvar::new(),
            failure: Mutex::new(None),
            config: Mutex::new(config),
        });
        let worker = Worker {
            dir,
            clock,
            shared: Arc::clone(&shared),
        };
        let thread = std::thread::Builder::new()
            .name("sink-compressor".into())
            .spawn(move || worker.run())
            .map_err(|e| SinkError::Compressor(format!("cannot start its thread: {e}")))?;
        Ok(Compressor {
            shared,
            thread: Some(thread),
        })
    }

    /// Replaces the delay and retention count (configuration reload), then looks
    /// at the directory again.
    pub fn reconfigure(&self, config: CompressorConfig) {
        *lock(&self.shared.config) = config;
        self.nudge();
    }

    /// Asks the compressor to look at the directory now.
    pub fn nudge(&self) {
        lock(&self.shared.control).nudged = true;
        self.shared.wake.notify_one();
    }

    /// The last compression failure, if the most recent attempt failed.
    pub fn failure(&self) -> Option<SinkFailure> {
        lock(&self.shared.failure).clone()
    }

    /// Stops the thread once the file in hand is finished.
    pub fn stop(mut self) -> Result<(), SinkError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), SinkError> {
        lock(&self.shared.control).stop = true;
        self.shared.wake.notify_one();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| SinkError::Compressor("its thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::error!(error = %e, "The sink compressor ended abnormally.");
        }
    }
}

struct Worker {
    dir: Arc<SinkDir>,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
}

/// How a pass over the directory ended.
enum PassEnd {
    /// Nothing left to do until this moment (or until nudged, when `None`).
    Idle(Option<SystemTime>),
    /// Stop was requested.
    Stopped,
}

impl Worker {
    fn run(self) {
        // On Linux the nice value is per thread, and `None` means the calling one.
        if let Err(e) = rustix::process::setpriority_process(None, NICE) {
            tracing::debug!(error = %e, "Could not lower the sink compressor's CPU priority.");
        }
        let mut failures: u32 = 0;
        loop {
            {
                let mut control = lock(&self.shared.control);
                if control.stop {
                    return;
                }
                control.nudged = false;
            }
            let wait = match self.pass() {
                Ok(PassEnd::Stopped) => return,
                Ok(PassEnd::Idle(next_due)) => {
                    failures = 0;
                    *lock(&self.shared.failure) = None;
                    next_due.map(|due| {
                        due.duration_since(self.clock.now())
                            .unwrap_or_default()
                            .min(MAX_IDLE)
                    })
                }
                Err(e) => {
                    metrics::compression_failed(&e);
                    *lock(&self.shared.failure) =
                        Some(SinkFailure::from_error(&e, self.clock.now()));
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
                    Some(backoff)
                }
            };
            let mut control = lock(&self.shared.control);
            while !control.stop && !control.nudged {
                match wait {
                    None => {
                        control = self
                            .shared
                            .wake
                            .wait(control)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    Some(d) => {
                        let (c, timeout) = self
                            .shared
                            .wake
                            .wait_timeout(control, d)
                            .unwrap_or_else(PoisonError::into_inner);
                        control = c;
                        if timeout.timed_out() {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn stop_requested(&self) -> bool {
        lock(&self.shared.control).stop
    }

    /// Compresses every due plain file (oldest first), then applies retention.
    fn pass(&self) -> Result<PassEnd, SinkError> {
        let now = self.clock.now();
        // A copy: a reload during the pass applies to the next one.
        let config = lock(&self.shared.config).clone();
        let (plain, mut gz) = rotated_files(&self.dir)?;
        let mut next_due: Option<SystemTime> = None;
        let mut changed = false;
        let mut result = Ok(());
        for key in plain {
            let due = key.time() + config.delay;
            if now < due {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                continue;
            }
            if self.stop_requested() {
                return Ok(PassEnd::Stopped);
            }
            // Retention would delete this file's .gz at once: skip the work.
            let newer_gz = gz.iter().filter(|k| **k > key).count();
            if newer_gz >= config.retention_files {
                self.dir.unlink(&key.plain_name())?;
                metrics::file_deleted(&key.plain_name());
                changed = true;
                continue;
            }
            match compress(&self.dir, key) {
                Ok(()) => {
                    gz.push(key);
                    changed = true;
                }
                Err(e) => {
                    // Retention below still runs; the error is reported after it.
                    result = Err(e);
                    break;
                }
            }
        }
        gz.sort_unstable();
        let excess = gz.len().saturating_sub(config.retention_files);
        for key in &gz[..excess] {
            self.dir.unlink(&key.gz_name())?;
            metrics::file_deleted(&key.gz_name());
            changed = true;
        }
        if changed {
            self.dir.sync()?;
        }
        result.map(|()| PassEnd::Idle(next_due))
    }
}

/// The rotated files in the directory, plain and compressed, each sorted oldest first.
pub fn rotated_files(dir: &SinkDir) -> Result<(Vec<RotatedKey>, Vec<RotatedKey>), SinkError> {
    let mut plain = Vec::new();
    let mut gz = Vec::new();
    for entry in dir.list()? {
        if entry.file_type != rustix::fs::FileType::RegularFile {
            continue;
        }
        match classify(&entry.name) {
            Some(Owned::Rotated(key, RotatedForm::Plain)) => plain.push(key),
            Some(Owned::Rotated(key, RotatedForm::Gz)) => gz.push(key),
            _ => {}
        }
    }
    plain.sort_unstable();
    gz.sort_unstable();
    Ok((plain, gz))
}

/// Compresses one rotated file and removes the plain one.
pub fn compress(dir: &SinkDir, key: RotatedKey) -> Result<(), SinkError> {
    let started = Instant::now();
    let plain_name = key.plain_name();
    let tmp = key.gz_temp_name();
    let gz_name = key.gz_name();
    let (plain_bytes, gz_bytes) = match write_gz(dir, &plain_name, &tmp) {
        Ok(sizes) => sizes,
        Err(e) => {
            let _ = dir.unlink_if_exists(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = dir.rename(&tmp, &gz_name, true) {
        let _ = dir.unlink_if_exists(&tmp);
        return Err(e);
    }
    // The .gz must be durable under its name before the only other copy goes.
    dir.sync()?;
    dir.unlink(&plain_name)?;
    metrics::compressed(&gz_name, plain_bytes, gz_bytes, started.elapsed());
    Ok(())
}

fn write_gz(dir: &SinkDir, plain_name: &str, tmp: &str) -> Result<(u64, u64), SinkError> {
    let cerr = |name: &str, e: io::Error| dir.err(SinkOp::Compress, name, e);
    let mut src = dir.open_read(plain_name)?;
    // A stale temp can only be from a crash or an earlier failure: it is ours.
    dir.unlink_if_exists(tmp)?;
    let out = dir.create_new(tmp)?;
    let mut encoder = GzBuilder::new()
        .filename(plain_name)
        .write(out, Compression::new(LEVEL));
    let mut buf = vec![0u8; CHUNK];
    let mut plain_bytes = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(cerr(plain_name, e)),
        };
        encoder.write_all(&buf[..n]).map_err(|e| cerr(tmp, e))?;
        plain_bytes += n as u64;
    }
    let out = encoder.finish().map_err(|e| cerr(tmp, e))?;
    out.sync_all().map_err(|e| dir.err(SinkOp::Fsync, tmp, e))?;
    let gz_bytes = out.metadata().map_or(0, |m| m.len());
    Ok((plain_bytes, gz_bytes))
}

/// Whether a `.gz` decompresses to exactly the plain file's content (recovery of a
/// crash between the rename of the `.gz` and the removal of the plain file).
pub fn gz_matches_plain(dir: &SinkDir, key: RotatedKey) -> Result<bool, SinkError> {
    let plain_name = key.plain_name();
    let gz_name = key.gz_name();
    let mut plain = dir.open_read(&plain_name)?;
    let mut gz = MultiGzDecoder::new(dir.open_read(&gz_name)?);
    let mut a = vec![0u8; CHUNK];
    let mut b = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut plain, &mut a).map_err(|e| dir.err(SinkOp::Read, &plain_name, e))?;
        let m = match read_full(&mut gz, &mut b[..n.max(1)]) {
            Ok(m) => m,
            // A damaged .gz simply does not match.
            Err(_) => return Ok(false),
        };
        if n == 0 {
            return Ok(m == 0);
        }
        if a[..n] != b[..m] {
            return Ok(false);
        }
    }
}

/// Reads until `buf` is full or the input ends.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
