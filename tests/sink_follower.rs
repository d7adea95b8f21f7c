//! A real follower (SPEC §12 "Collectors follow renames"): rsyslog `imfile`, run in
//! the foreground with the configuration documented in `docs/collectors.md`, follows
//! `audit.ndjson` through several rotations and compressions and must receive every
//! line exactly once. Without rsyslogd, `tail -F` stands in (and under `CI=true` the
//! test fails: the documented configuration would go untested).
//!
//! The sink's clock is manual (rotation by size, compression after a number of
//! batches); real time passes only because a real process reads the files.

mod sink_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sink_support::*;

const DOC_MARKER: &str = "<!-- tested: rsyslog-imfile -->";
const DOC_SINK_DIR: &str = "/var/lib/compartment/audit-logs";
const DOC_OUTPUT: &str = "/var/log/compartment-audit.ndjson";

/// The rsyslog configuration exactly as `docs/collectors.md` documents it.
fn documented_rsyslog_config() -> String {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/collectors.md"))
        .expect("docs/collectors.md exists");
    let after = doc
        .split_once(DOC_MARKER)
        .expect("the tested rsyslog block is marked in docs/collectors.md")
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

/// A follower process that is stopped when dropped.
struct Follower {
    child: Child,
    name: &'static str,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_rsyslogd() -> Option<PathBuf> {
    [
        "/usr/sbin/rsyslogd",
        "/sbin/rsyslogd",
        "/usr/local/sbin/rsyslogd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn start_rsyslogd(rsyslogd: &Path, work: &Path, sink_dir: &Path, output: &Path) -> Follower {
    let config = documented_rsyslog_config()
        .replace(DOC_SINK_DIR, sink_dir.to_str().unwrap())
        .replace(DOC_OUTPUT, output.to_str().unwrap());
    assert!(
        config.contains(sink_dir.to_str().unwrap()),
        "the documented path was not found"
    );
    let spool = work.join("spool");
    fs::create_dir_all(&spool).unwrap();
    let conf = work.join("rsyslog.conf");
    fs::write(
        &conf,
        format!("global(workDirectory=\"{}\")\n{config}\n", spool.display()),
    )
    .unwrap();
    let child = Command::new(rsyslogd)
        .arg("-n") // foreground
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(work.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rsyslogd starts");
    Follower {
        child,
        name: "rsyslogd imfile",
    }
}

fn start_tail(sink_dir: &Path, output: &Path) -> Follower {
    let out = fs::File::create(output).unwrap();
    let child = Command::new("tail")
        .args(["-n", "+1", "-F"])
        .arg(sink_dir.join("audit.ndjson"))
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("tail starts");
    Follower {
        child,
        name: "tail -F",
    }
}

fn received(output: &Path) -> Vec<u8> {
    let mut bytes = fs::read(output).unwrap_or_default();
    // Only whole lines count; the follower may be in the middle of writing one.
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    bytes.truncate(end);
    bytes
}

fn wait_for_lines(output: &Path, n: usize, follower: &mut Follower) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = ids(&received(output)).len();
        if got >= n {
            return;
        }
        if let Ok(Some(status)) = follower.child.try_wait() {
            panic!("{} exited with {status} after {got} lines", follower.name);
        }
        assert!(
            Instant::now() < deadline,
            "{} delivered {got} of {n} lines",
            follower.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_real_follower_receives_every_line_exactly_once_through_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("follower");
    fs::create_dir_all(&work).unwrap();
    let dir = tmp.path().join("sink");
    let output = work.join("received.ndjson");

    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.rotate_size = 16 * 1024; // about 35 lines per file
    opts.compress_delay = Duration::from_secs(3); // three batches below
    opts.retention_files = 100;
    let (mut sink, _) = open(opts, clock.clone());
    put(&mut sink, &batch(1, 3));

    let force_tail = std::env::var_os("SINK_TEST_FOLLOWER_TAIL").is_some();
    let mut follower = match find_rsyslogd().filter(|_| !force_tail) {
        Some(rsyslogd) => start_rsyslogd(&rsyslogd, &work, &dir, &output),
        None if force_tail => start_tail(&dir, &output),
        None => {
            // Then the documented rsyslog configuration goes untested.
            sink_support::capability::missing(
                "the rsyslog imfile follower",
                "rsyslogd not found (Debian package rsyslog); following with tail -F instead",
            );
            start_tail(&dir, &output)
        }
    };
    // Following from the first line proves the follower is running.
    wait_for_lines(&output, 3, &mut follower);

    let total: u64 = 600;
    let mut next = 4;
    let mut round = 0u64;
    while next <= total {
        let n = (2 + round % 6).min(total - next + 1);
        put(&mut sink, &batch(next, next + n - 1));
        next += n;
        round += 1;
        clock.advance(Duration::from_secs(1));
        // A live stream, not one burst: give the follower a moment between batches.
        std::thread::sleep(Duration::from_millis(5));
    }
    sink.sync().unwrap();

    wait_for_lines(&output, total as usize, &mut follower);
    // A little longer, so that duplicates would have time to show up too.
    std::thread::sleep(Duration::from_millis(500));
    let rotations = rotated(&dir).len();
    assert!(rotations >= 5, "only {rotations} rotations");
    assert!(
        !gz_rotated(&dir).is_empty(),
        "no file was compressed while the follower ran"
    );
    assert_ids(&received(&output), 1, total, follower.name);
    assert_ids(&everything(&dir), 1, total, "the sink itself");
    println!(
        "{}: {total} lines through {rotations} rotations",
        follower.name
    );
    sink.close().unwrap();
}
