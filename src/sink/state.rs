//! Small durable files next to the data: the caller's state and the sink's record of
//! when the active file was opened.
//!
//! Both are replaced atomically: dot-prefixed temp file (`0600`), fsync, rename,
//! directory fsync. A crash leaves either the old or the new version, never half.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::dir::SinkDir;
use super::error::{SinkError, SinkOp};
use super::names::{self, ACTIVE_META, STATE};

/// Bookkeeping files are tiny; anything bigger is not ours.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// The sink's record of the active file (`.audit-active.json`), so that age-based
/// rotation counts from when the file was opened, also across restarts.
///
/// The inode ties the record to one file: after a crash between creating a new
/// `audit.ndjson` and recording it, a stale record is recognised and ignored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActiveMeta {
    /// Inode of `audit.ndjson` when the record was written.
    pub inode: u64,
    /// When that file was opened, milliseconds since the Unix epoch (from the sink's clock).
    pub opened_at_unix_ms: u64,
}

impl ActiveMeta {
    /// The record for `inode` opened at `at`.
    pub fn new(inode: u64, at: SystemTime) -> ActiveMeta {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ActiveMeta {
            inode,
            opened_at_unix_ms: ms,
        }
    }

    /// When the file was opened.
    pub fn opened_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.opened_at_unix_ms)
    }
}

/// Replaces `name` atomically with `contents` and makes it durable.
pub fn write_atomic(dir: &SinkDir, name: &str, contents: &[u8]) -> Result<(), SinkError> {
    let tmp = names::temp_name(name);
    // A temp left by an earlier failed attempt is ours and incomplete by definition.
    dir.unlink_if_exists(&tmp)?;
    let result = (|| {
        let mut file = dir.create_new(&tmp)?;
        file.write_all(contents)
            .map_err(|e| dir.err(SinkOp::State, &tmp, e))?;
        file.sync_all()
            .map_err(|e| dir.err(SinkOp::Fsync, &tmp, e))?;
        drop(file);
        dir.rename(&tmp, name, false)?;
        dir.sync()
    })();
    if result.is_err() {
        // Best effort: recovery removes it at the next start anyway.
        let _ = dir.unlink_if_exists(&tmp);
    }
    result
}

fn read_small(dir: &SinkDir, name: &str) -> Result<Option<Vec<u8>>, SinkError> {
    let Some(file) = dir.open_read_if_exists(name)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| dir.err(SinkOp::Read, name, e))?;
    if buf.len() as u64 > MAX_STATE_BYTES {
        return Err(SinkError::Corrupt {
            dir: dir.path().to_owned(),
            name: name.to_owned(),
            reason: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    Ok(Some(buf))
}

/// Reads the caller's state; a file that is not JSON is an error (it was written
/// atomically, so damage is not a crash artefact and must not be guessed around).
pub fn read_state(dir: &SinkDir) -> Result<Option<serde_json::Value>, SinkError> {
    let Some(bytes) = read_small(dir, STATE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SinkError::Corrupt {
            dir: dir.path().to_owned(),
            name: STATE.to_owned(),
            reason: format!("not valid JSON ({e})"),
        })
}

/// Writes the caller's state.
pub fn write_state(dir: &SinkDir, state: &serde_json::Value) -> Result<(), SinkError> {
    let mut bytes = serde_json::to_vec(state).map_err(SinkError::EncodeState)?;
    bytes.push(b'\n');
    write_atomic(dir, STATE, &bytes)
}

/// Reads the active-file record. A damaged record only costs an early or late
/// rotation, so it is reported as absent (with a warning) rather than as an error.
pub fn read_active_meta(dir: &SinkDir) -> Result<Option<ActiveMeta>, SinkError> {
    let Some(bytes) = read_small(dir, ACTIVE_META)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) => {
            tracing::warn!(
                dir = %dir.path().display(),
                file = ACTIVE_META,
                error = %e,
                "Ignoring a damaged sink bookkeeping file; the active file's age restarts now."
            );
            Ok(None)
        }
    }
}

/// Records when the active file was opened.
pub fn write_active_meta(dir: &SinkDir, meta: &ActiveMeta) -> Result<(), SinkError> {
    let bytes = serde_json::to_vec(meta).map_err(SinkError::EncodeState)?;
    write_atomic(dir, ACTIVE_META, &bytes)
}
