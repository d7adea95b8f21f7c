//! Rotation (SPEC §6): when the active file is old enough or the next batch would
//! pass the size limit, fsync it, rename it to the next `audit-<stamp>.ndjson`
//! (never replacing a file), create a new `audit.ndjson`, fsync the directory and
//! wake the compressor. Rename-then-create only: a collector that follows the name
//! keeps the renamed file open and drains it (SPEC §12).

use std::time::SystemTime;

use super::names::{RotatedKey, ACTIVE};
use super::{metrics, record_opened, ActiveFile, FileSink, RotationReason, SinkError};

impl FileSink {
    /// Rotates when the active file has reached `rotate_interval`. The mirror calls
    /// this on its timer so that an idle sink still rotates on time. Returns whether
    /// it rotated (which also made everything appended so far durable).
    pub fn rotate_if_due(&mut self) -> Result<bool, SinkError> {
        let now = self.clock.now();
        let result = self.ensure_active(now).and_then(|()| {
            self.nudge_if_due(now);
            self.rotate_if_due_at(now)
        });
        self.settle(result, now)
    }

    pub(super) fn rotate_if_due_at(&mut self, now: SystemTime) -> Result<bool, SinkError> {
        let interval = self.opts.rotate_interval;
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        if active.age(now) < interval {
            return Ok(false);
        }
        if active.len == 0 {
            // An empty file is not worth a rotated file: its age restarts instead.
            active.opened_at = now;
            record_opened(&self.dir, active);
            return Ok(false);
        }
        self.rotate(RotationReason::Time, now)?;
        Ok(true)
    }

    /// Rotates now (reason `manual`), unless the active file is empty.
    pub fn rotate_now(&mut self) -> Result<(), SinkError> {
        let now = self.clock.now();
        let result = self
            .ensure_active(now)
            .and_then(|()| self.rotate(RotationReason::Manual, now));
        self.settle(result, now)
    }

    /// fsync, rename `audit.ndjson` to the next rotated name (never replacing a
    /// file), create a new `audit.ndjson`, fsync the directory, wake the compressor.
    pub(super) fn rotate(
        &mut self,
        reason: RotationReason,
        now: SystemTime,
    ) -> Result<(), SinkError> {
        let len = self.active_file(now)?.len;
        if len == 0 {
            return Ok(());
        }
        self.sync_active(now)?;
        let mut key = match (RotatedKey::at(now), self.newest_rotated) {
            (k, Some(newest)) if k <= newest => newest.next(),
            (k, _) => k,
        };
        let mut attempts = 0;
        loop {
            match self.dir.rename(ACTIVE, &key.plain_name(), true) {
                Ok(()) => break,
                // A foreign file squats on the name: take the next one.
                Err(SinkError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists && attempts < 1000 =>
                {
                    attempts += 1;
                    key = key.next();
                }
                Err(e) if e.io_kind() == std::io::ErrorKind::NotFound => {
                    // Someone removed audit.ndjson while it was open, and what was
                    // written to it went with it. Start a new file rather than
                    // failing every rotation from now on.
                    tracing::error!(
                        file = ACTIVE,
                        "The active audit file was removed from outside; starting a new one."
                    );
                    self.active = None;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        // The old inode is never written again.
        self.active = None;
        self.newest_rotated = Some(key);
        self.dir_sync_pending = true;
        metrics::rotated(reason, &key.plain_name(), len);
        self.compress_due
            .push(key.time() + self.opts.compress_delay);
        if let Some(c) = &self.compressor {
            c.nudge();
        }

        let active = ActiveFile::create(&self.dir, now)?;
        self.active = Some(active);
        self.dir.sync()?;
        self.dir_sync_pending = false;
        if let Some(a) = &self.active {
            record_opened(&self.dir, a);
        }
        Ok(())
    }

    pub(super) fn nudge_if_due(&mut self, now: SystemTime) {
        let before = self.compress_due.len();
        self.compress_due.retain(|due| *due > now);
        if self.compress_due.len() != before {
            if let Some(c) = &self.compressor {
                c.nudge();
            }
        }
    }
}
