//! The hardened sink directory: every file operation goes through one directory
//! handle (`openat`, `renameat`, `unlinkat`), never through a path, and never follows
//! a symlink (SPEC §12 "Directory hardening").
//!
//! Working relative to a handle means that once the directory has been checked, a
//! later swap of the path (or of any parent) cannot redirect the sink's writes.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, CWD};
use rustix::io::Errno;

use super::error::{DirProblem, SinkError, SinkOp};

/// Owner-only: what every file the sink creates gets, whatever the umask.
const FILE_MODE: u32 = 0o600;
/// Owner-only directory.
const DIR_MODE: u32 = 0o700;

/// An entry of the directory listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name (entries whose names are not UTF-8 are never ours and are skipped).
    pub name: String,
    /// From `readdir`, or `lstat` when the filesystem does not report it.
    pub file_type: FileType,
    /// Permission bits and size; `None` when the entry vanished meanwhile.
    pub stat: Option<Stat>,
}

/// An open, checked sink directory.
#[derive(Debug)]
pub struct SinkDir {
    /// The directory itself, opened with `O_NOFOLLOW`; every operation is relative to it.
    fd: OwnedFd,
    /// The configured path, for error messages only.
    path: PathBuf,
    /// Whether group permission bits are tolerated (Kubernetes `fsGroup` volumes).
    allow_group_bits: bool,
}

impl SinkDir {
    /// Creates the directory if missing (`0700`), refuses it when it is a symlink,
    /// not a directory, owned by another non-root user or world-writable, and
    /// tightens it to `0700` otherwise (keeping group bits when `allow_group_bits`).
    pub fn open(path: &Path, allow_group_bits: bool) -> Result<SinkDir, SinkError> {
        // A trailing slash would make the kernel resolve a final symlink even with
        // O_NOFOLLOW, so the path is rebuilt from its components.
        let path: PathBuf = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        let refuse = |problem| SinkError::Directory {
            path: path.clone(),
            problem,
        };

        match rustix::fs::statat(CWD, &path, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {}
                FileType::Symlink => return Err(refuse(DirProblem::Symlink)),
                _ => return Err(refuse(DirProblem::NotADirectory)),
            },
            Err(Errno::NOENT) => create_dir(&path).map_err(|e| refuse(DirProblem::Io(e)))?,
            Err(e) => return Err(refuse(DirProblem::Io(e.into()))),
        }

        let fd = rustix::fs::openat(
            CWD,
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // Swapped for a symlink between the check and the open.
            Errno::LOOP => refuse(DirProblem::Symlink),
            Errno::NOTDIR => refuse(DirProblem::NotADirectory),
            e => refuse(DirProblem::Io(e.into())),
        })?;

        // From here on only the handle counts: the checks are about what was opened.
        let st = rustix::fs::fstat(&fd).map_err(|e| refuse(DirProblem::Io(e.into())))?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me && st.st_uid != 0 {
            return Err(refuse(DirProblem::ForeignOwner {
                owner: st.st_uid,
                me,
            }));
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o002 != 0 {
            return Err(refuse(DirProblem::WorldWritable { mode }));
        }
        let wanted = if allow_group_bits {
            // fsGroup volumes carry setgid and group rwx; keep them, drop the rest.
            DIR_MODE | (mode & 0o2070)
        } else {
            DIR_MODE
        };
        if mode != wanted {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(wanted)).map_err(|e| {
                refuse(DirProblem::CannotTighten {
                    mode,
                    wanted,
                    source: e.into(),
                })
            })?;
            tracing::info!(
                dir = %path.display(),
                from = format_args!("{mode:04o}"),
                to = format_args!("{wanted:04o}"),
                "Tightened the sink directory's permissions."
            );
        }

        Ok(SinkDir {
            fd,
            path,
            allow_group_bits,
        })
    }

    /// The configured path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Builds an I/O error about `name`, turning `ELOOP` from an `O_NOFOLLOW` open
    /// into the clear symlink refusal.
    pub fn err(&self, op: SinkOp, name: &str, e: impl Into<io::Error>) -> SinkError {
        let e: io::Error = e.into();
        if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
            return SinkError::Symlink {
                dir: self.path.clone(),
                name: name.to_owned(),
            };
        }
        SinkError::Io {
            op,
            dir: self.path.clone(),
            name: name.to_owned(),
            source: e,
        }
    }

    fn not_regular(&self, name: &str, file_type: FileType) -> SinkError {
        if file_type == FileType::Symlink {
            SinkError::Symlink {
                dir: self.path.clone(),
                name: name.to_owned(),
            }
        } else {
            SinkError::NotRegularFile {
                dir: self.path.clone(),
                name: name.to_owned(),
            }
        }
    }

    /// Creates a new file `0600` (whatever the umask); fails if the name exists in any
    /// form, including as a dangling symlink.
    pub fn create_new(&self, name: &str) -> Result<File, SinkError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| self.err(SinkOp::Open, name, e))?;
        // The umask may have removed bits from, or a permissive one left, the mode
        // given to open; fchmod sets it exactly.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))
            .map_err(|e| self.err(SinkOp::Open, name, e))?;
        Ok(File::from(fd))
    }

    /// Opens or creates a file for reading and writing, `0600` when created (the lock).
    pub fn open_or_create(&self, name: &str) -> Result<File, SinkError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| self.err(SinkOp::Open, name, e))?;
        self.check_regular(&fd, name)?;
        self.tighten(&fd, name)?;
        Ok(File::from(fd))
    }

    /// Opens an existing file append-only.
    pub fn open_append(&self, name: &str) -> Result<File, SinkError> {
        self.open_existing(name, OFlags::WRONLY | OFlags::APPEND)
    }

    /// Opens an existing file for reading.
    pub fn open_read(&self, name: &str) -> Result<File, SinkError> {
        self.open_existing(name, OFlags::RDONLY)
    }

    /// Opens an existing file for reading, or `None` if there is none.
    pub fn open_read_if_exists(&self, name: &str) -> Result<Option<File>, SinkError> {
        match self.open_read(name) {
            Ok(f) => Ok(Some(f)),
            Err(SinkError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn open_existing(&self, name: &str, access: OFlags) -> Result<File, SinkError> {
        // O_NONBLOCK: opening a FIFO planted under our name must not hang the sink;
        // it is refused just below. On regular files the flag has no effect.
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| self.err(SinkOp::Open, name, e))?;
        self.check_regular(&fd, name)?;
        Ok(File::from(fd))
    }

    fn check_regular(&self, fd: &OwnedFd, name: &str) -> Result<Stat, SinkError> {
        let st = rustix::fs::fstat(fd).map_err(|e| self.err(SinkOp::Open, name, e))?;
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type != FileType::RegularFile {
            return Err(self.not_regular(name, file_type));
        }
        Ok(st)
    }

    /// Makes an existing file of ours owner-only again (`0600`, or without the
    /// "other" bits when group bits are tolerated).
    pub fn tighten(&self, fd: &impl AsFd, name: &str) -> Result<(), SinkError> {
        let st = rustix::fs::fstat(fd).map_err(|e| self.err(SinkOp::Open, name, e))?;
        let mode = st.st_mode & 0o7777;
        let wanted = if self.allow_group_bits {
            mode & 0o660 | FILE_MODE
        } else {
            FILE_MODE
        };
        if mode != wanted {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(wanted))
                .map_err(|e| self.err(SinkOp::Open, name, e))?;
        }
        Ok(())
    }

    /// Whether a mode is looser than [`tighten`](Self::tighten) allows.
    pub fn too_loose(&self, mode: u32) -> bool {
        let allowed = if self.allow_group_bits {
            0o660
        } else {
            FILE_MODE
        };
        mode & 0o7777 & !allowed != 0
    }

    /// `lstat` of a name in the directory; `None` if it does not exist.
    pub fn lstat(&self, name: &str) -> Result<Option<Stat>, SinkError> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(SinkOp::Read, name, e)),
        }
    }

    /// Fails clearly when something other than a regular file (a symlink above all)
    /// sits under a name the sink is about to use.
    pub fn expect_regular_or_absent(&self, name: &str) -> Result<Option<Stat>, SinkError> {
        let Some(st) = self.lstat(name)? else {
            return Ok(None);
        };
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type != FileType::RegularFile {
            return Err(self.not_regular(name, file_type));
        }
        Ok(Some(st))
    }

    /// Renames within the directory. With `no_replace`, an existing target is an
    /// `AlreadyExists` error instead of being replaced.
    pub fn rename(&self, from: &str, to: &str, no_replace: bool) -> Result<(), SinkError> {
        let op = SinkOp::Rotate;
        if !no_replace {
            return rustix::fs::renameat(&self.fd, from, &self.fd, to)
                .map_err(|e| self.err(op, from, e));
        }
        match rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // Filesystems without RENAME_NOREPLACE (some network ones): check, then
            // rename. Only this process writes here (the lock), so nothing races us.
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
                if self.lstat(to)?.is_some() {
                    return Err(self.err(op, to, Errno::EXIST));
                }
                rustix::fs::renameat(&self.fd, from, &self.fd, to)
                    .map_err(|e| self.err(op, from, e))
            }
            Err(e) => Err(self.err(op, from, e)),
        }
    }

    /// Removes a file (a symlink itself, never its target).
    pub fn unlink(&self, name: &str) -> Result<(), SinkError> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| self.err(SinkOp::Delete, name, e))
    }

    /// Removes a file if it exists.
    pub fn unlink_if_exists(&self, name: &str) -> Result<bool, SinkError> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.err(SinkOp::Delete, name, e)),
        }
    }

    /// Makes renames, creations and removals in the directory durable.
    pub fn sync(&self) -> Result<(), SinkError> {
        rustix::fs::fsync(&self.fd).map_err(|e| self.err(SinkOp::Fsync, ".", e))
    }

    /// Lists the directory.
    pub fn list(&self) -> Result<Vec<Entry>, SinkError> {
        let io_err = |e: Errno| self.err(SinkOp::Read, ".", e);
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let Some(name) = OsStr::from_bytes(raw).to_str() else {
                continue;
            };
            let stat = self.lstat(name)?;
            let file_type = match (&stat, entry.file_type()) {
                (Some(st), _) => FileType::from_raw_mode(st.st_mode),
                (None, t) => t,
            };
            out.push(Entry {
                name: name.to_owned(),
                file_type,
                stat,
            });
        }
        Ok(out)
    }
}

fn create_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Missing parents are created owner-only too: nothing above the sink
        // directory needs to be reachable by anyone else.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)?;
    }
    match rustix::fs::mkdirat(CWD, path, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
