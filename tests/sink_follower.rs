//! Real followers (SPEC §12 "Collectors follow renames"), each run with the
//! configuration `docs/collectors.md` documents, must receive every line exactly once:
//!
//! - rsyslog `imfile` (inotify) through rotations and compressions of a live stream
//!   of small batches;
//! - rsyslog `imfile` and syslog-ng `file()` through at least 30 rotations while
//!   100-event batches larger than `rotate_size` arrive faster than one per file
//!   (issue 19: a file created, filled and renamed within one batch was never seen
//!   by a follower that opens the name after the rename).
//!
//! Under `CI=true` a missing follower fails the test. Elsewhere the small-batch test
//! follows with `tail -F` instead and the others say they were skipped.

mod sink_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compartment_auditd::sink::{SinkOptions, SystemClock, ROTATE_MIN_AGE};
use sink_support::*;

const DOC_SINK_DIR: &str = "/var/lib/compartment/audit-logs";
const DOC_OUTPUT: &str = "/var/log/compartment-audit.ndjson";

/// The documented configuration with the two documented paths replaced.
fn localised(marker: &str, sink_dir: &Path, output: &Path) -> String {
    let config = documented_block(marker)
        .replace(DOC_SINK_DIR, sink_dir.to_str().unwrap())
        .replace(DOC_OUTPUT, output.to_str().unwrap());
    assert!(
        config.contains(sink_dir.to_str().unwrap()) && config.contains(output.to_str().unwrap()),
        "the documented paths were not found in the block after {marker}"
    );
    config
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
    let config = localised("<!-- tested: rsyslog-imfile -->", sink_dir, output);
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

/// syslog-ng: installed (`/usr/sbin/syslog-ng`), or Debian's `syslog-ng-core` unpacked
/// beside an installed rsyslog (the two packages conflict) by `scripts/test` into
/// `$COMPARTMENT_SYSLOG_NG_ROOT`, default `~/.cache/compartment-auditd/syslog-ng-core`.
struct SyslogNg {
    binary: PathBuf,
    /// The unpacked package's root, when not installed.
    root: Option<PathBuf>,
}

fn find_syslog_ng() -> Option<SyslogNg> {
    let installed = PathBuf::from("/usr/sbin/syslog-ng");
    if installed.exists() {
        return Some(SyslogNg {
            binary: installed,
            root: None,
        });
    }
    let root = match std::env::var_os("COMPARTMENT_SYSLOG_NG_ROOT") {
        Some(r) => PathBuf::from(r),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            cache.join("compartment-auditd/syslog-ng-core")
        }
    };
    let binary = root.join("usr/sbin/syslog-ng");
    binary.exists().then_some(SyslogNg {
        binary,
        root: Some(root),
    })
}

impl SyslogNg {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if let Some(root) = &self.root {
            let lib = root.join("usr/lib/syslog-ng");
            cmd.env("LD_LIBRARY_PATH", &lib);
            let modules = fs::read_dir(&lib)
                .expect("the unpacked syslog-ng has its library directory")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.join("libaffile.so").exists())
                .expect("the unpacked syslog-ng has its modules (libaffile.so)");
            cmd.arg(format!("--module-path={}", modules.display()));
        }
        cmd
    }

    /// `3.38` from `Installer-Version: 3.38.1`: the configuration's `@version`.
    fn config_version(&self) -> String {
        let out = self
            .command()
            .arg("--version")
            .output()
            .expect("syslog-ng --version runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Installer-Version:"))
            .unwrap_or_else(|| panic!("syslog-ng --version names its version:\n{text}"))
            .trim();
        let mut parts = version.split('.');
        format!(
            "{}.{}",
            parts.next().unwrap_or("3"),
            parts.next().unwrap_or("0")
        )
    }

    /// A private instance: its own configuration, persist file, control socket and
    /// pid file in `work`, no capabilities, internal messages on stderr.
    fn start(&self, work: &Path, sink_dir: &Path, output: &Path) -> Follower {
        let config = localised("<!-- tested: syslog-ng-file -->", sink_dir, output);
        let conf = work.join("syslog-ng.conf");
        fs::write(
            &conf,
            format!("@version: {}\n{config}\n", self.config_version()),
        )
        .unwrap();
        let child = self
            .command()
            .args(["--foreground", "--stderr", "--no-caps"])
            .arg(format!("--cfgfile={}", conf.display()))
            .arg(format!(
                "--persist-file={}",
                work.join("syslog-ng.persist").display()
            ))
            .arg(format!(
                "--control={}",
                work.join("syslog-ng.ctl").display()
            ))
            .arg(format!(
                "--pidfile={}",
                work.join("syslog-ng.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("syslog-ng starts");
        Follower {
            child,
            name: "syslog-ng file()",
        }
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

/// Waits until `n` lines arrived, or until nothing arrived for `quiet` (then the
/// caller's exact comparison says what is missing).
fn wait_for_lines(output: &Path, n: usize, follower: &mut Follower, quiet: Duration) {
    let mut last = (0, Instant::now());
    loop {
        let got = ids(&received(output)).len();
        if got >= n {
            return;
        }
        if let Ok(Some(status)) = follower.child.try_wait() {
            panic!("{} exited with {status} after {got} lines", follower.name);
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > quiet {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rotated files by their plain name (a file being compressed counts once).
fn rotations(dir: &Path) -> usize {
    let mut plain: Vec<String> = rotated(dir)
        .into_iter()
        .map(|n| n.trim_end_matches(".gz").to_owned())
        .collect();
    plain.dedup();
    plain.len()
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
    wait_for_lines(&output, 3, &mut follower, Duration::from_secs(20));

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

    wait_for_lines(
        &output,
        total as usize,
        &mut follower,
        Duration::from_secs(20),
    );
    // A little longer, so that duplicates would have time to show up too.
    std::thread::sleep(Duration::from_millis(500));
    let rotations = rotations(&dir);
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

/// Batches of this many events (about 45 KB) …
const BURST_BATCH: u64 = 100;
/// … into files of 32 KiB, as in issue 19: every batch is larger than a file.
const BURST_ROTATE_SIZE: u64 = 32 * 1024;
/// Rotations the burst runs through at least.
const BURST_ROTATIONS: usize = 30;
/// Real time between batches: several batches arrive while one file is active.
const BURST_PAUSE: Duration = Duration::from_millis(100);

/// The sink as the daemon runs it, on the real clock (the follower's timing is real
/// too), with files kept plain for 5 s, so that compression happens while the
/// follower runs.
fn burst_options(dir: &Path) -> SinkOptions {
    let mut opts = options(dir);
    opts.rotate_size = BURST_ROTATE_SIZE;
    opts.rotate_min_age = ROTATE_MIN_AGE;
    opts.compress_delay = Duration::from_secs(5);
    opts.retention_files = 1000;
    opts
}

/// Writes 100-event batches every [`BURST_PAUSE`] until the sink has rotated
/// [`BURST_ROTATIONS`] times, and checks that `follower` received every line once.
fn burst(start: impl FnOnce(&Path, &Path) -> Follower) {
    let tmp = tempfile::tempdir().unwrap();
    // On tmpfs where there is one (an `emptyDir` with `medium: Memory`): an fsync
    // takes no time there, so nothing but the sink gives a new file time to be seen.
    let mem = Path::new("/dev/shm");
    let sink_tmp = if mem.is_dir() {
        tempfile::tempdir_in(mem).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let dir = sink_tmp.path().join("sink");
    let output = tmp.path().join("received.ndjson");
    let (mut sink, _) = open(burst_options(&dir), Arc::new(SystemClock));
    put(&mut sink, &batch(1, 3));
    let mut follower = start(&dir, &output);
    wait_for_lines(&output, 3, &mut follower, Duration::from_secs(20));

    assert!(
        batch(4, 3 + BURST_BATCH).len() as u64 > BURST_ROTATE_SIZE,
        "a batch is larger than a file"
    );
    let started = Instant::now();
    let mut next = 4;
    while rotations(&dir) < BURST_ROTATIONS {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "only {} rotations in 45 s",
            rotations(&dir)
        );
        put(&mut sink, &batch(next, next + BURST_BATCH - 1));
        next += BURST_BATCH;
        std::thread::sleep(BURST_PAUSE);
    }
    let total = next - 1;
    // Closing stops the compressor, so that the directory holds still for the
    // comparison below; the follower goes on reading.
    sink.close().unwrap();
    let batches = (total - 3) / BURST_BATCH;
    let rotations = rotations(&dir);

    wait_for_lines(
        &output,
        total as usize,
        &mut follower,
        Duration::from_secs(10),
    );
    // A little longer, so that duplicates would have time to show up too.
    std::thread::sleep(Duration::from_millis(500));
    assert_ids(&everything(&dir), 1, total, "the sink itself");
    assert_ids(&received(&output), 1, total, follower.name);
    println!(
        "{}: {total} lines in {batches} batches of {BURST_BATCH} through {rotations} rotations in {:.1} s",
        follower.name,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn rsyslog_receives_every_line_when_batches_are_larger_than_a_file() {
    let Some(rsyslogd) = find_rsyslogd() else {
        sink_support::capability::missing(
            "the rsyslog imfile follower",
            "rsyslogd not found (Debian package rsyslog; scripts/test installs it)",
        );
        return;
    };
    burst(|dir, output| {
        let work = output.with_file_name("rsyslog");
        fs::create_dir_all(&work).unwrap();
        start_rsyslogd(&rsyslogd, &work, dir, output)
    });
}

#[test]
fn syslog_ng_receives_every_line_when_batches_are_larger_than_a_file() {
    let Some(syslog_ng) = find_syslog_ng() else {
        sink_support::capability::missing(
            "the syslog-ng follower",
            "syslog-ng not found (Debian package syslog-ng-core; scripts/test unpacks it)",
        );
        return;
    };
    burst(|dir, output| {
        let work = output.with_file_name("syslog-ng");
        fs::create_dir_all(&work).unwrap();
        syslog_ng.start(&work, dir, output)
    });
}
