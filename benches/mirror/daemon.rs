//! The daemon under test as a child process, its `/metrics`, and what `/proc` says
//! about it.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How to start one daemon.
pub struct DaemonSpec<'a> {
    /// The release binary.
    pub bin: &'a Path,
    /// Database URL.
    pub database_url: &'a str,
    /// Sink directory (the sink is enabled).
    pub sink_dir: &'a Path,
    /// Where its log goes.
    pub log: PathBuf,
    /// Settings beyond the defaults, as environment variables.
    pub env: Vec<(&'static str, String)>,
    /// Settings from the command line (`--set`), applied last.
    pub overrides: &'a [(String, String)],
}

/// A running `compartment-auditd run`; killed when dropped (use [`Daemon::stop`]).
pub struct Daemon {
    child: Child,
    /// Its HTTP port on loopback.
    pub port: u16,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with the documented defaults plus `spec.env`.
    pub fn spawn(spec: DaemonSpec<'_>) -> anyhow::Result<Daemon> {
        let port = crate::free_port()?;
        let log = std::fs::File::create(&spec.log)
            .with_context(|| format!("creating {}", spec.log.display()))?;
        let child = Command::new(spec.bin)
            // Nothing from the caller's environment may change the settings measured.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("COMPARTMENT_DATABASE_URL", spec.database_url)
            .env("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "true")
            .env("COMPARTMENT_AUDIT_FILE_SINK_DIR", spec.sink_dir)
            .env("COMPARTMENT_AUDIT_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("COMPARTMENT_AUDIT_LOG_LEVEL", "info")
            .envs(spec.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(spec.overrides.iter().map(|(k, v)| (k, v)))
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        Ok(Daemon {
            child,
            port,
            log: spec.log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if the daemon has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the daemon exited ({status}); end of its log:\n{}",
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Parsed `/metrics`, or `None` while nothing answers.
    pub fn metrics(&self) -> Option<Metrics> {
        metrics(self.port)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if let Some((200, _)) = http_get(self.port, "/readyz") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the daemon did not become ready within {timeout:?}; end of its log:\n{}",
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (drain: finish the batch, fsync, exit 0) and wait.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to the daemon")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the daemon did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only reached when stop() was not (an error path): never leave it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Parsed `/metrics` of the daemon on `port`, or `None` while nothing answers.
pub fn metrics(port: u16) -> Option<Metrics> {
    let (status, body) = http_get(port, "/metrics")?;
    (status == 200).then(|| Metrics::parse(&body))
}

/// A minimal HTTP/1.0 GET on loopback: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Samples of a Prometheus text exposition, keyed by `name{labels}` as written.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses the text format (comments skipped; labels kept verbatim in the key).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// One sample, e.g. `compartment_audit_events_mirrored_total`.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.samples.get(key).copied()
    }

    /// A histogram's cumulative buckets `(le, count)`, `+Inf` last.
    pub fn buckets(&self, histogram: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{histogram}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(key, value)| {
                let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// The observations a histogram gained between two scrapes, as cumulative buckets.
pub fn histogram_delta(before: &Metrics, after: &Metrics, histogram: &str) -> Vec<(f64, f64)> {
    let earlier = before.buckets(histogram);
    after
        .buckets(histogram)
        .into_iter()
        .map(|(le, count)| {
            let was = earlier
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - was)
        })
        .collect()
}

/// The smallest bucket bound that holds at least `quantile` of the observations
/// (an upper bound for that quantile), and the fraction at or below `bound`.
pub fn histogram_quantile_bound(buckets: &[(f64, f64)], quantile: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= quantile * total)
        .map(|(le, _)| *le)
}

/// Fraction of a histogram's observations at or below bucket bound `le`.
pub fn histogram_fraction_at_most(buckets: &[(f64, f64)], le: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let at = buckets.iter().find(|(l, _)| *l == le)?.1;
    Some(at / total)
}

/// What `/proc` says about a process (all its threads).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, in clock ticks (`USER_HZ`, 100 per second on Linux).
    pub cpu_ticks: u64,
    /// Time on a CPU in nanoseconds, summed over the live threads'
    /// `/proc/PID/task/TID/schedstat`: finer than ticks, but threads that have exited
    /// are not in it (the tick count includes them).
    pub cpu_ns: u64,
    /// Voluntary + involuntary context switches summed over the live threads: wake-ups.
    pub context_switches: u64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcSample {
    /// Reads `/proc/PID/{stat,status}` and every thread's `status` and `schedstat`.
    pub fn read(pid: u32) -> anyhow::Result<ProcSample> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let cpu_ticks = cpu_ticks(pid).context("reading /proc/PID/stat")?;
        let status =
            std::fs::read_to_string(proc.join("status")).context("reading /proc/PID/status")?;
        let kib = |name: &str| status_field(&status, name).unwrap_or(0);
        let mut context_switches = 0;
        let mut cpu_ns = 0;
        if let Ok(tasks) = std::fs::read_dir(proc.join("task")) {
            for task in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(task.path().join("status")) {
                    context_switches += status_field(&text, "voluntary_ctxt_switches").unwrap_or(0)
                        + status_field(&text, "nonvoluntary_ctxt_switches").unwrap_or(0);
                }
                cpu_ns += std::fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(ProcSample {
            cpu_ticks,
            cpu_ns,
            context_switches,
            rss_kib: kib("VmRSS"),
            hwm_kib: kib("VmHWM"),
            threads: kib("Threads"),
        })
    }
}

/// utime + stime of a process (all its threads, also those that have exited), in
/// clock ticks (`USER_HZ`, 100 per second on Linux); `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses: state
    // is field 3, utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(field(14)? + field(15)?)
}

/// Seconds from clock ticks.
pub fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

/// A numeric `Name:  value [kB]` field of a `/proc` status file.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
