//! A failing disk for the real daemon: `fsync_fault.c`, built here into an `LD_PRELOAD`
//! shim, makes `fsync`/`fdatasync` of the sink's active file fail with `EIO` while a
//! control file exists, and loses the data written since the file's last good fsync
//! (overwrites it with zeros), as the kernel may after a failed writeback.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shim, and the control file that switches the failure on and off.
pub struct FsyncFault {
    library: PathBuf,
    control: PathBuf,
}

impl FsyncFault {
    /// Builds the shim with the system C compiler into `scratch` (a directory the
    /// test owns). `Err` says why it could not.
    pub fn build(scratch: &Path) -> Result<FsyncFault, String> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fsync_fault.c");
        let library = scratch.join("fsync_fault.so");
        let output = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
            .map_err(|e| format!("cannot run cc: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cc failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(FsyncFault {
            library,
            control: scratch.join("fsync-fails"),
        })
    }

    /// The environment that loads the shim into a daemon and aims it at files named
    /// `name`.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "FSYNC_FAULT_CONTROL".into(),
                self.control.display().to_string(),
            ),
            ("FSYNC_FAULT_NAME".into(), name.into()),
        ]
    }

    /// From now on every fsync of the aimed-at files fails.
    pub fn fail(&self) {
        std::fs::write(&self.control, b"").expect("creating the control file");
    }

    /// From now on fsync works again.
    pub fn heal(&self) {
        std::fs::remove_file(&self.control).expect("removing the control file");
    }
}
