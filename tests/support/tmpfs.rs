//! A small tmpfs mounted by a test (needs root), so the test can fill the disk under
//! the sink and free it again. Unmounted (lazily) when dropped.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the file that takes up the free space; outside any sink directory.
const FILLER: &str = "chaos-filler";

/// A mounted tmpfs.
pub struct Tmpfs {
    /// The mount point.
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` at `path` (created if missing). `Err` says why
    /// not (not root, no `mount`, not permitted in this container) so the caller can
    /// skip what needs it with a message.
    pub fn mount(path: &Path, size_bytes: u64) -> Result<Tmpfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root".into());
        }
        fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes still free for an unprivileged writer.
    pub fn available(&self) -> u64 {
        rustix::fs::statvfs(&self.path)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0)
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        rustix::fs::statvfs(&self.path)
            .map(|s| (s.f_blocks.saturating_sub(s.f_bfree)).saturating_mul(s.f_frsize))
            .unwrap_or(0)
    }

    /// Takes up every free byte with a filler file, so the next write anywhere on the
    /// filesystem fails with `ENOSPC`. Returns how many bytes the filler holds.
    pub fn fill(&self) -> std::io::Result<u64> {
        let path = self.path.join(FILLER);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        // Reserve the bulk in one call (no copying), then top up page by page: the
        // sink may have written in between, and statvfs rounds.
        let free = self.available();
        let start = file.metadata()?.len();
        if free > 0 {
            let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), start, free);
        }
        let page = [0u8; 4096];
        loop {
            match file.write(&page) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => return Err(e),
            }
        }
        Ok(file.metadata()?.len())
    }

    /// Like [`Self::fill`], then gives `keep` bytes back: writes fit until they
    /// amount to about that much.
    pub fn fill_leaving(&self, keep: u64) -> std::io::Result<()> {
        let len = self.fill()?;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join(FILLER))?;
        file.set_len(len.saturating_sub(keep))?;
        file.sync_all()
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) -> std::io::Result<()> {
        match fs::remove_file(self.path.join(FILLER)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding a file open must not keep the mount around.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
