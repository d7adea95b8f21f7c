//! Start-up recovery (SPEC §6 "Restart after a crash"): bring the directory back to a
//! consistent state and find the last whole line written.
//!
//! Runs before the compressor starts and under the directory lock, so every temp
//! file found is a leftover, never one in use.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use flate2::read::MultiGzDecoder;
use rustix::fs::FileType;

use super::compress::{gz_matches_plain, read_full};
use super::dir::SinkDir;
use super::error::{SinkError, SinkOp};
use super::names::{self, classify, Owned, RotatedForm, RotatedKey, ACTIVE};
use super::state;

/// Backwards scans read this much at a time.
const TAIL_CHUNK: u64 = 64 * 1024;

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// The last whole line written in this sink directory, without its `\n`: from
    /// `audit.ndjson`, or when that is empty from the newest rotated file (plain or
    /// `.gz`). `None` when the directory holds no line at all.
    pub last_line: Option<Vec<u8>>,
    /// The caller's state from [`FileSink::write_state`](super::FileSink::write_state).
    pub state: Option<serde_json::Value>,
    /// Bytes of a torn last line cut from `audit.ndjson` (0 if it ended cleanly).
    pub torn_bytes: u64,
    /// Where the torn bytes were kept, owner-only (`torn-<stamp>.fragment`).
    pub fragment: Option<String>,
    /// Leftover temp files removed (interrupted compressions or state writes).
    pub temp_files_removed: usize,
    /// Rotated files found both plain and compressed (a crash between the `.gz`
    /// rename and the plain file's removal) and resolved.
    pub compressions_resolved: usize,
    /// Rotated files still waiting for compression; the compressor takes them over.
    pub pending_compressions: usize,
    /// Whether `audit.ndjson` had to be created.
    pub created_active: bool,
}

/// Directory facts the sink needs after recovery.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory {
    /// The newest rotated file's key, plain or compressed; new names sort after it.
    pub newest_rotated: Option<RotatedKey>,
}

/// Repairs the directory; the active file itself is repaired by [`repair_active`].
pub fn recover_directory(dir: &SinkDir, recovery: &mut Recovery) -> Result<Inventory, SinkError> {
    let mut plain = Vec::new();
    let mut gz = Vec::new();
    for entry in dir.list()? {
        let Some(owned) = classify(&entry.name) else {
            continue; // foreign: left alone
        };
        if owned == Owned::Temp {
            // Whatever it is (even a symlink), a temp name of ours is a leftover.
            dir.unlink(&entry.name)?;
            recovery.temp_files_removed += 1;
            tracing::info!(file = %entry.name, "Removed a leftover sink temp file.");
            continue;
        }
        if entry.file_type != FileType::RegularFile {
            return Err(if entry.file_type == FileType::Symlink {
                SinkError::Symlink {
                    dir: dir.path().to_owned(),
                    name: entry.name,
                }
            } else {
                SinkError::NotRegularFile {
                    dir: dir.path().to_owned(),
                    name: entry.name,
                }
            });
        }
        if let Some(st) = &entry.stat {
            if dir.too_loose(st.st_mode) {
                let f = dir.open_read(&entry.name)?;
                dir.tighten(&f, &entry.name)?;
                tracing::info!(file = %entry.name, "Made a sink file owner-only again.");
            }
        }
        if let Owned::Rotated(key, form) = owned {
            match form {
                RotatedForm::Plain => plain.push(key),
                RotatedForm::Gz => gz.push(key),
            }
        }
    }

    let both: Vec<RotatedKey> = plain.iter().filter(|k| gz.contains(k)).copied().collect();
    for key in both {
        // The .gz was fsync'd before its rename, so it should be complete; it is
        // checked anyway, because the plain file is the only other copy.
        if gz_matches_plain(dir, key)? {
            dir.unlink(&key.plain_name())?;
            plain.retain(|k| *k != key);
            tracing::info!(file = %key.gz_name(), "Finished an interrupted compression.");
        } else {
            dir.unlink(&key.gz_name())?;
            gz.retain(|k| *k != key);
            tracing::warn!(file = %key.gz_name(), "Removed a damaged compressed file; its plain file will be compressed again.");
        }
        recovery.compressions_resolved += 1;
    }
    if recovery.temp_files_removed + recovery.compressions_resolved > 0 {
        dir.sync()?;
    }
    recovery.pending_compressions = plain.len();
    Ok(Inventory {
        newest_rotated: plain.iter().chain(gz.iter()).max().copied(),
    })
}

/// Cuts a torn last line off `audit.ndjson` (kept aside in a fragment file) and
/// returns the last whole line.
pub fn repair_active(
    dir: &SinkDir,
    now: SystemTime,
    recovery: &mut Recovery,
) -> Result<Option<Vec<u8>>, SinkError> {
    let read = dir.open_read(ACTIVE)?;
    let len = read
        .metadata()
        .map_err(|e| dir.err(SinkOp::Read, ACTIVE, e))?
        .len();
    let cut = end_of_last_line(&read, len).map_err(|e| dir.err(SinkOp::Read, ACTIVE, e))?;
    if cut < len {
        let name = keep_fragment(dir, now, &read, cut, len - cut)?;
        let file = dir.open_append(ACTIVE)?;
        rustix::fs::ftruncate(&file, cut).map_err(|e| dir.err(SinkOp::Truncate, ACTIVE, e))?;
        rustix::fs::fdatasync(&file).map_err(|e| dir.err(SinkOp::Fsync, ACTIVE, e))?;
        tracing::warn!(
            file = ACTIVE,
            torn_bytes = len - cut,
            kept_in = %name,
            "Cut a torn last line off the active audit file."
        );
        recovery.torn_bytes = len - cut;
        recovery.fragment = Some(name);
    }
    last_line(&read, cut).map_err(|e| dir.err(SinkOp::Read, ACTIVE, e))
}

/// Copies `len` bytes from `offset` of `source` into a new fragment file. Streamed:
/// a file damaged badly enough to have no newline at all can be large.
fn keep_fragment(
    dir: &SinkDir,
    now: SystemTime,
    source: &File,
    offset: u64,
    len: u64,
) -> Result<String, SinkError> {
    let mut seq = 0;
    loop {
        let name = names::fragment_name(now, seq);
        match dir.create_new(&name) {
            Ok(mut f) => {
                let mut reader = source;
                let copied = reader
                    .seek(SeekFrom::Start(offset))
                    .and_then(|_| io::copy(&mut reader.take(len), &mut f))
                    .and_then(|_| f.sync_all());
                if let Err(e) = copied {
                    // A full disk: start-up is retried, and each try would otherwise
                    // leave one more partial fragment behind.
                    drop(f);
                    let _ = dir.unlink(&name);
                    return Err(dir.err(SinkOp::Write, &name, e));
                }
                dir.sync()?;
                return Ok(name);
            }
            Err(SinkError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists && seq < names::MAX_SEQ =>
            {
                seq += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The last whole line of the newest rotated file that has one.
pub fn last_line_of_rotated(dir: &SinkDir) -> Result<Option<Vec<u8>>, SinkError> {
    let mut rotated: Vec<(RotatedKey, RotatedForm, String)> = dir
        .list()?
        .into_iter()
        .filter(|e| e.file_type == FileType::RegularFile)
        .filter_map(|e| match classify(&e.name) {
            Some(Owned::Rotated(key, form)) => Some((key, form, e.name)),
            _ => None,
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, form, name) in rotated {
        let file = dir.open_read(&name)?;
        let line = match form {
            RotatedForm::Plain => {
                let len = file
                    .metadata()
                    .map_err(|e| dir.err(SinkOp::Read, &name, e))?
                    .len();
                let cut =
                    end_of_last_line(&file, len).map_err(|e| dir.err(SinkOp::Read, &name, e))?;
                last_line(&file, cut).map_err(|e| dir.err(SinkOp::Read, &name, e))?
            }
            RotatedForm::Gz => last_line_of_gz(file).map_err(|e| SinkError::Corrupt {
                dir: dir.path().to_owned(),
                name: name.clone(),
                reason: format!("cannot be decompressed ({e})"),
            })?,
        };
        if line.is_some() {
            return Ok(line);
        }
    }
    Ok(None)
}

fn last_line_of_gz(file: File) -> io::Result<Option<Vec<u8>>> {
    let mut decoder = MultiGzDecoder::new(file);
    let mut buf = vec![0u8; 1 << 20];
    // The current (possibly unfinished) line and the last complete one.
    let mut current: Vec<u8> = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    loop {
        let n = read_full(&mut decoder, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                let start = chunk[..end]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                if start == 0 {
                    current.extend_from_slice(&chunk[..end]);
                    last = Some(std::mem::take(&mut current));
                } else {
                    last = Some(chunk[start..end].to_vec());
                }
                current.clear();
                current.extend_from_slice(&chunk[end + 1..]);
            }
            None => current.extend_from_slice(chunk),
        }
    }
    Ok(last)
}

/// Offset just after the last `\n` in the first `len` bytes (0 if there is none).
fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; TAIL_CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(TAIL_CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + p as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The line that ends at `cut` (which is just after a `\n`), without the `\n`.
fn last_line(file: &File, cut: u64) -> io::Result<Option<Vec<u8>>> {
    if cut == 0 {
        return Ok(None);
    }
    let line_end = cut - 1;
    let start = end_of_last_line(file, line_end)?;
    let mut line = vec![0u8; (line_end - start) as usize];
    file.read_exact_at(&mut line, start)?;
    Ok(Some(line))
}

/// Reads the caller's state and the active-file record.
pub fn read_states(
    dir: &SinkDir,
) -> Result<(Option<serde_json::Value>, Option<state::ActiveMeta>), SinkError> {
    Ok((state::read_state(dir)?, state::read_active_meta(dir)?))
}
