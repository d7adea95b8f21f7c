//! Shared helpers for the sink tests (`mod sink_support;` in each `tests/sink_*.rs`).
#![allow(dead_code)] // each test file uses a different subset

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use compartment_auditd::config::FsyncPolicy;
use compartment_auditd::sink::{Clock, FileSink, ManualClock, Recovery, SinkOptions};
use flate2::read::MultiGzDecoder;

#[path = "../support/capability.rs"]
pub mod capability;

/// Set in a re-executed test binary: the test runs its child half.
pub const CHILD_ENV: &str = "COMPARTMENT_SINK_TEST_CHILD";

/// 2026-05-12T09:14:03Z, a fixed start for manual clocks.
pub fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_778_577_243)
}

/// A manual clock at [`start`].
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start()))
}

/// Test defaults: big limits, nothing rotates or compresses unless a test says so.
pub fn options(dir: &Path) -> SinkOptions {
    SinkOptions {
        dir: dir.to_owned(),
        rotate_interval: Duration::from_secs(3600),
        rotate_size: 64 << 20,
        // The batch-boundary rule only: most tests do not move their manual clock.
        // The tests of the minimum age, and the follower tests, set it.
        rotate_min_age: Duration::ZERO,
        retention_files: 30,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_secs(1),
        compress_delay: Duration::from_secs(3600),
        allow_group_bits: false,
    }
}

/// Opens a sink, failing the test with the error's message.
pub fn open(opts: SinkOptions, clock: Arc<dyn Clock>) -> (FileSink, Recovery) {
    match FileSink::open(opts, clock) {
        Ok(r) => r,
        Err(e) => panic!("opening the sink failed: {e}"),
    }
}

/// A realistic sink line (about 450 bytes) for event `id`, with its `\n`.
pub fn line(id: u64) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"id":{id},"occurred_at":"2026-05-12T09:14:{s:02}.{ms:03}Z","#,
            r#""organization_id":"0b9f7c1e-2d7a-4c1e-9a55-{org:012x}","organization":"acme-dev","#,
            r#""event_type":"organization.user.invited","actor":{{"type":"user","id":"usr_{a:016x}","email":"ops@example.com"}},"#,
            r#""target":{{"type":"user","id":"usr_{t:016x}"}},"project_id":null,"status":"succeeded","#,
            r#""metadata":{{"email":"new-{id}@example.com","role_ids":["role_{r:012x}"],"invited_via":"console"}}}}"#,
            "\n"
        ),
        id = id,
        s = id % 60,
        ms = id % 1000,
        org = id % 7,
        a = id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        t = id.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
        r = id % 13,
    )
    .into_bytes()
}

/// Lines for ids `from..=to`.
pub fn batch(from: u64, to: u64) -> Vec<u8> {
    (from..=to).flat_map(line).collect()
}

/// The `id` of every line, in order; panics on a line that is not a sink line.
pub fn ids(bytes: &[u8]) -> Vec<u64> {
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "content does not end with a newline"
    );
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(id_of)
        .collect()
}

/// The `id` of one line.
pub fn id_of(line: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(line)));
    v["id"].as_u64().expect("every sink line has a numeric id")
}

/// Names in the directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("test directory is readable")
        .map(|e| {
            e.expect("test directory is readable")
                .file_name()
                .into_string()
                .expect("test file names are UTF-8")
        })
        .collect();
    names.sort();
    names
}

/// Rotated file names (plain and `.gz`, exactly the sink's pattern), sorted by name.
pub fn rotated(dir: &Path) -> Vec<String> {
    let pattern = regex::Regex::new(r"^audit-[0-9]{8}T[0-9]{6}Z(_[0-9]{3})?\.ndjson(\.gz)?$")
        .expect("the pattern is valid");
    names(dir)
        .into_iter()
        .filter(|n| pattern.is_match(n))
        .collect()
}

/// Plain rotated files still waiting for compression.
pub fn plain_rotated(dir: &Path) -> Vec<String> {
    rotated(dir)
        .into_iter()
        .filter(|n| n.ends_with(".ndjson"))
        .collect()
}

/// Compressed rotated files.
pub fn gz_rotated(dir: &Path) -> Vec<String> {
    rotated(dir)
        .into_iter()
        .filter(|n| n.ends_with(".gz"))
        .collect()
}

/// Decompresses a `.gz`, failing the test if it is not valid gzip.
pub fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(fs::File::open(path).expect("gz file opens"))
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{} is not valid gzip: {e}", path.display()));
    out
}

/// Contents of a rotated file, decompressed if needed.
pub fn rotated_content(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    if name.ends_with(".gz") {
        gunzip(&path)
    } else {
        fs::read(&path).expect("rotated file reads")
    }
}

/// Everything in the sink in order: rotated files by name, then `audit.ndjson`.
pub fn everything(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for name in rotated(dir) {
        out.extend(rotated_content(dir, &name));
    }
    match fs::read(dir.join("audit.ndjson")) {
        Ok(active) => out.extend(active),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("audit.ndjson cannot be read: {e}"),
    }
    out
}

/// Waits (real time, bounded) for the background compressor to reach a state.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Permission bits of a path (not following a final symlink).
pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("path exists")
        .permissions()
        .mode()
        & 0o7777
}

/// Re-runs the test `name` of this test binary in a child process with `env` set,
/// optionally through `sh -c '<prefix>; exec "$0" "$@"'` (e.g. to ignore a signal).
pub fn run_child(name: &str, env: &[(&str, &str)], sh_prefix: Option<&str>) -> Output {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let args = [name, "--exact", "--nocapture", "--test-threads=1"];
    let mut cmd = match sh_prefix {
        Some(prefix) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                .arg(&exe)
                .args(args);
            c
        }
        None => {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        }
    };
    cmd.env(CHILD_ENV, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs again as a child");
    assert!(
        out.status.success(),
        "child test {name} failed:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child test {name} did not run:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Whether this process is the child half of a test.
pub fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Writes a `.gz` of `content` (what a finished compression leaves).
pub fn write_gz(path: &Path, content: &[u8]) {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        fs::File::create(path).expect("gz file is created"),
        flate2::Compression::default(),
    );
    enc.write_all(content).expect("gz is written");
    enc.finish().expect("gz is finished");
}

/// Appends and expects success; returns whether the batch is durable.
pub fn put(sink: &mut FileSink, lines: &[u8]) -> bool {
    match sink.append(lines) {
        Ok(a) => a.durable,
        Err(e) => panic!("append failed: {e}"),
    }
}

/// Asserts that `content` holds exactly the ids `from..=to`, in order, and says
/// where it does not (the full lists are too long to read).
pub fn assert_ids(content: &[u8], from: u64, to: u64, context: &str) {
    let got = ids(content);
    let want: Vec<u64> = (from..=to).collect();
    if got == want {
        return;
    }
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    panic!(
        "{context}: expected ids {from}..={to} ({} lines), got {} lines from {:?} to {:?}; first difference at index {:?} (got {:?}, want {:?})",
        want.len(),
        got.len(),
        got.first(),
        got.last(),
        first_bad,
        first_bad.map(|i| got[i]),
        first_bad.map(|i| want[i]),
    );
}

/// The code block that follows `marker` in `docs/collectors.md`, exactly as written.
pub fn documented_block(marker: &str) -> String {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/collectors.md"))
        .expect("docs/collectors.md exists");
    let after = doc
        .split_once(marker)
        .unwrap_or_else(|| panic!("{marker} marks a block in docs/collectors.md"))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```")
        .and_then(|b| b.split_once('\n'))
        .expect("a code block follows the marker")
        .1;
    let end = block.find("\n```").expect("the code block is closed");
    block[..end].to_owned()
}
