//! A tail loop that notes when each event's line appears in a file, as a log
//! collector following the file would see it.
//!
//! It polls every millisecond (so a line is seen at most ~1 ms after its `write()`),
//! reads whatever was appended, and stamps every complete line with one
//! `Instant::now()`. It follows a rename-and-recreate of the path, as collectors do.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How an event id is found in a line.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// A sink line: `{"id":1042,…`.
    Sink,
    /// `pg_recvlogical` with wal2json `format-version=2`: one insert per line,
    /// `{"action":"I",…,"columns":[{"name":"id",…,"value":1042},…]}`.
    Wal2json,
}

impl Format {
    fn id(self, line: &[u8]) -> Option<i64> {
        match self {
            Format::Sink => {
                let rest = line.strip_prefix(b"{\"id\":")?;
                let end = rest.iter().position(|b| !b.is_ascii_digit())?;
                std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
            }
            Format::Wal2json => {
                let value: serde_json::Value = serde_json::from_slice(line).ok()?;
                if value["action"] != "I" {
                    return None;
                }
                value["columns"]
                    .as_array()?
                    .iter()
                    .find(|c| c["name"] == "id")?["value"]
                    .as_i64()
            }
        }
    }
}

/// A running follower.
pub struct Follower {
    stop: Arc<AtomicBool>,
    /// Lines with an id seen so far.
    seen: Arc<AtomicU64>,
    handle: JoinHandle<Vec<(i64, Instant)>>,
}

impl Follower {
    /// Follows `path` (which need not exist yet) from its start.
    pub fn spawn(path: PathBuf, format: Format) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let handle = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || follow(&path, format, &stop, &seen))
        };
        Follower { stop, seen, handle }
    }

    /// Events seen so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// The counter behind [`Follower::seen`], for another thread.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.seen.clone()
    }

    /// Stops after one last read; returns every `(id, first seen)`.
    pub fn finish(self) -> Vec<(i64, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn follow(
    path: &PathBuf,
    format: Format,
    stop: &AtomicBool,
    seen: &AtomicU64,
) -> Vec<(i64, Instant)> {
    let mut tail = Tail {
        format,
        seen,
        out: Vec::new(),
        pending: Vec::new(),
        buf: vec![0u8; 1 << 16],
    };
    let mut file: Option<(File, u64)> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if file.is_none() {
            file = File::open(path)
                .and_then(|f| Ok((f.metadata()?.ino(), f)))
                .ok()
                .map(|(ino, f)| (f, ino));
        }
        let Some((f, ino)) = file.as_mut() else {
            if stopping {
                return tail.out;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        if tail.drain(f) {
            continue;
        }
        if stopping {
            return tail.out;
        }
        // Drained. If the path now names a new file (rotation), finish the old one
        // (a write may have landed just before the rename) and switch.
        if std::fs::metadata(path).is_ok_and(|m| m.ino() != *ino) {
            tail.drain(f);
            tail.pending.clear();
            file = None;
            continue;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a follower has read.
struct Tail<'a> {
    format: Format,
    seen: &'a AtomicU64,
    out: Vec<(i64, Instant)>,
    /// Bytes of an incomplete last line.
    pending: Vec<u8>,
    buf: Vec<u8>,
}

impl Tail<'_> {
    /// Reads everything appended to `file`, stamps its complete lines; whether
    /// anything was read.
    fn drain(&mut self, file: &mut File) -> bool {
        let mut got = false;
        while let Ok(n @ 1..) = file.read(&mut self.buf) {
            got = true;
            self.pending.extend_from_slice(&self.buf[..n]);
        }
        if !got {
            return false;
        }
        let now = Instant::now();
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            if let Some(id) = self.format.id(&self.pending[start..start + end]) {
                self.out.push((id, now));
                self.seen.fetch_add(1, Ordering::Relaxed);
            }
            start += end + 1;
        }
        self.pending.drain(..start);
        true
    }
}
