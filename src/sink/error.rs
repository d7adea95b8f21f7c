//! What can go wrong in the sink, one variant per kind of failure.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The step the sink was taking when an I/O call failed.
///
/// Also the source of the `op` label of `compartment_audit_sink_write_errors_total`
/// (see [`SinkOp::metric_label`]), so the set stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkOp {
    /// Creating, opening or hardening the sink directory.
    Directory,
    /// Taking the lock that keeps a second process out of the directory.
    Lock,
    /// Opening or creating a file.
    Open,
    /// Reading a file (recovery).
    Read,
    /// Appending a batch.
    Write,
    /// Cutting the active file back to its last good length.
    Truncate,
    /// Flushing a file or the directory to stable storage.
    Fsync,
    /// Renaming the active file away and creating a new one.
    Rotate,
    /// Gzipping a rotated file.
    Compress,
    /// Deleting an old rotated file or a stale temp file.
    Delete,
    /// Writing the caller's state file or the sink's own bookkeeping file.
    State,
}

impl SinkOp {
    /// The value of the `op` label on `…_sink_write_errors_total`: `write`, `fsync`,
    /// `rotate` or `compress`.
    pub fn metric_label(self) -> &'static str {
        match self {
            SinkOp::Fsync => "fsync",
            SinkOp::Rotate => "rotate",
            SinkOp::Compress | SinkOp::Delete => "compress",
            SinkOp::Directory
            | SinkOp::Lock
            | SinkOp::Open
            | SinkOp::Read
            | SinkOp::Write
            | SinkOp::Truncate
            | SinkOp::State => "write",
        }
    }
}

impl fmt::Display for SinkOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkOp::Directory => "prepare",
            SinkOp::Lock => "lock",
            SinkOp::Open => "open",
            SinkOp::Read => "read",
            SinkOp::Write => "write",
            SinkOp::Truncate => "truncate",
            SinkOp::Fsync => "fsync",
            SinkOp::Rotate => "rotate",
            SinkOp::Compress => "compress",
            SinkOp::Delete => "delete",
            SinkOp::State => "write state",
        })
    }
}

/// Why the sink directory itself was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirProblem {
    /// The path is a symbolic link; the sink never follows one.
    #[error("it is a symlink; point the setting at the real directory")]
    Symlink,
    /// The path exists but is not a directory.
    #[error("it is not a directory")]
    NotADirectory,
    /// Another (non-root) user owns it, so that user could read or swap the audit files.
    #[error("it is owned by uid {owner}, not by this process (uid {me}) or root")]
    ForeignOwner {
        /// Owner of the directory.
        owner: u32,
        /// Effective uid of this process.
        me: u32,
    },
    /// Anyone on the host could create or replace files in it.
    #[error("it is world-writable (mode {mode:04o}); remove the write bit for others")]
    WorldWritable {
        /// The directory's permission bits.
        mode: u32,
    },
    /// It is looser than owner-only and could not be tightened.
    #[error("its mode {mode:04o} could not be changed to {wanted:04o}: {source}")]
    CannotTighten {
        /// Current permission bits.
        mode: u32,
        /// Permission bits the sink needs.
        wanted: u32,
        /// Why `fchmod` failed.
        #[source]
        source: io::Error,
    },
    /// Creating, opening or inspecting it failed.
    #[error("{0}")]
    Io(#[source] io::Error),
}

/// A sink failure. Messages name the directory and the file, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink directory was refused (SPEC §12 "Directory hardening").
    #[error("The sink directory {path} cannot be used: {problem}")]
    Directory {
        /// The configured directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: DirProblem,
    },
    /// Another process (or another sink in this one) already writes to the directory.
    #[error("The sink directory {path} is in use by another process (its lock file is held)")]
    Locked {
        /// The configured directory.
        path: PathBuf,
    },
    /// A symlink sits where the sink expects one of its files; it is never followed.
    #[error("{name} in the sink directory {dir} is a symlink; the sink never follows symlinks, remove it")]
    Symlink {
        /// The sink directory.
        dir: PathBuf,
        /// The file name inside it.
        name: String,
    },
    /// Something other than a regular file sits where the sink expects one of its files.
    #[error("{name} in the sink directory {dir} is not a regular file")]
    NotRegularFile {
        /// The sink directory.
        dir: PathBuf,
        /// The file name inside it.
        name: String,
    },
    /// A system call failed.
    #[error("Could not {op} {name} in the sink directory {dir}: {source}")]
    Io {
        /// What the sink was doing.
        op: SinkOp,
        /// The sink directory.
        dir: PathBuf,
        /// The file the call was about (`.` for the directory itself).
        name: String,
        /// The error from the system.
        #[source]
        source: io::Error,
    },
    /// A batch did not consist of whole `\n`-terminated lines (a caller bug).
    #[error("A sink batch must consist of whole lines, each ending in a newline")]
    PartialLine,
    /// A file the sink relies on (its state, a rotated file) cannot be decoded.
    #[error("{name} in the sink directory {dir} is damaged: {reason}")]
    Corrupt {
        /// The sink directory.
        dir: PathBuf,
        /// The damaged file.
        name: String,
        /// What is wrong, without file contents.
        reason: String,
    },
    /// The caller's state could not be encoded as JSON.
    #[error("The sink state cannot be encoded: {0}")]
    EncodeState(#[source] serde_json::Error),
    /// The background compressor could not be started or died.
    #[error("The sink's background compressor failed: {0}")]
    Compressor(String),
}

impl SinkError {
    /// The step that failed, for the `op` label of the write-error metric and for
    /// readiness reports.
    pub fn op(&self) -> SinkOp {
        match self {
            SinkError::Directory { .. } => SinkOp::Directory,
            SinkError::Locked { .. } => SinkOp::Lock,
            SinkError::Symlink { .. } | SinkError::NotRegularFile { .. } => SinkOp::Open,
            SinkError::Io { op, .. } => *op,
            SinkError::PartialLine => SinkOp::Write,
            SinkError::Corrupt { .. } => SinkOp::Read,
            SinkError::EncodeState(_) => SinkOp::State,
            SinkError::Compressor(_) => SinkOp::Compress,
        }
    }

    /// Whether the failure came from the storage (a full or read-only disk, an I/O
    /// error, a directory that cannot be created yet) rather than from a refusal that
    /// needs an operator (a symlink, a foreign owner, a held lock, a damaged file).
    /// The daemon retries the first kind with backoff, not ready meanwhile.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SinkError::Io { .. }
                | SinkError::Directory {
                    problem: DirProblem::Io(_),
                    ..
                }
                | SinkError::Compressor(_)
        )
    }

    /// The kind of the underlying I/O error (`StorageFull`, `ReadOnlyFilesystem`, …),
    /// or `Other` when the failure is not an I/O error.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            SinkError::Io { source, .. } => source.kind(),
            SinkError::Directory {
                problem: DirProblem::Io(source) | DirProblem::CannotTighten { source, .. },
                ..
            } => source.kind(),
            _ => io::ErrorKind::Other,
        }
    }
}
