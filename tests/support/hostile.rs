//! Helpers for the hostile-input tests (`tests/hostile*.rs`): a daemon start that is
//! expected to be refused, raw HTTP exchanges, and snapshots of foreign directory
//! entries. Included with `#[path]`, next to `mod support;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, free_port, DaemonConfig};

/// A daemon start that ended on its own.
pub struct Refusal {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it wrote to stderr (logs and the final error).
    pub stderr: String,
}

/// Starts `compartment-auditd run` like [`DaemonConfig::spawn`] and waits for it to
/// exit by itself; panics (after killing it) when it is still running after `timeout`.
pub fn start_refused(config: &DaemonConfig, timeout: Duration) -> Refusal {
    let mut command = Command::new(bin());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("COMPARTMENT_DATABASE_URL", &config.database_url)
        .env(
            "COMPARTMENT_AUDIT_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .envs(&config.env)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dir) = &config.sink_dir {
        command
            .env("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "true")
            .env("COMPARTMENT_AUDIT_FILE_SINK_DIR", dir);
    }
    let mut child = command.spawn().expect("the daemon starts");
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("waiting for the daemon") {
            Some(status) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Refusal { status, stderr };
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon kept running although it should have refused to start");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What a directory entry is, its mode and its contents (regular files and symlink
/// targets), to show that the daemon left it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySnapshot {
    /// `file`, `dir`, `symlink`, `fifo` or `other`.
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// File contents, or a symlink's target.
    pub content: Vec<u8>,
}

/// Snapshots of the named entries of `dir` (absent names are left out).
pub fn snapshot(dir: &Path, names: &[&str]) -> BTreeMap<String, EntrySnapshot> {
    let mut out = BTreeMap::new();
    for name in names {
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let file_type = meta.file_type();
        let (kind, content) = if file_type.is_symlink() {
            let target = std::fs::read_link(&path).expect("reading a symlink");
            ("symlink", target.into_os_string().into_encoded_bytes())
        } else if file_type.is_file() {
            ("file", std::fs::read(&path).expect("reading a file"))
        } else if file_type.is_dir() {
            ("dir", Vec::new())
        } else if file_type.is_fifo() {
            ("fifo", Vec::new())
        } else {
            ("other", Vec::new())
        };
        out.insert(
            (*name).to_owned(),
            EntrySnapshot {
                kind,
                mode: meta.mode() & 0o7777,
                content,
            },
        );
    }
    out
}

/// Permission bits of `path` (not following a symlink).
pub fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat of a sink path")
        .mode()
        & 0o7777
}

/// Sends `request` as raw bytes and reads until the server closes or `timeout` passes.
/// Returns the status code (if a response came) and the whole response text.
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> (Option<u16>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the daemon");
    stream
        .set_read_timeout(Some(timeout))
        .expect("setting a read timeout");
    // The server may answer and close before everything is sent (an oversized head).
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok());
    (status, text)
}
