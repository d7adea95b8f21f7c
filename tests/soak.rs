//! Soak (issue 8): one daemon under a steady mixed load — writers of every
//! transaction shape, a few `/metrics`, `/readyz` and `/healthz` requests per second,
//! and list/export calls on `/v1` when the build has them — while its resident
//! memory, open file descriptors and PostgreSQL sessions are sampled. They must stay
//! flat: a leak of any of them grows with the events handled, and fails here.
//!
//! In the suite it runs 2 minutes; `SOAK_DURATION=30m` (or `scripts/soak 30m`) runs
//! the same test by hand.
//!
//! "Flat", robustly (allocators and pools grow to a working set, then stay):
//! - the first `warm-up` (a tenth of the run, 20 s to 2 min) is excluded;
//! - **RSS**: the highest sample of the last third of the run is at most the highest
//!   of the first third after warm-up plus 8 MiB + 10 % — a leak of a few hundred
//!   bytes per event already exceeds that within the 2-minute form;
//! - **file descriptors** other than database sockets (the pool grows lazily up to
//!   its size, which is bounded below): never more than the warm-up's highest + 4 (a
//!   rotation briefly holds the rotated file, its `.gz` temp and a directory
//!   handle), and once idle again no more than idle before the load (the two
//!   counts are read a moment apart, so a connection being opened can show as a
//!   descriptor without its session yet: "no more", not "exactly");
//! - **PostgreSQL sessions**: never more than the pool size + 1 (the listener), and
//!   once idle again (the pool closes connections unused for [`POOL_IDLE_TIMEOUT`])
//!   no more than idle before the load: a connection that was checked out and never
//!   returned, or opened outside the pool and never closed, stays and fails this.
//!
//! The run also checks that the daemon stayed ready throughout, every HTTP request
//! got its expected answer, and every committed event was mirrored exactly once
//! (`compartment_audit_events_mirrored_total` equals the rows committed: the daemon
//! never restarted, so nothing was written twice).

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::writers::{self, Shapes, Writers};
use support::{wait_for, DaemonConfig};

/// The pool size the daemon runs with here (the default).
const POOL_SIZE: i64 = 8;
/// The daemon's `database.pool_idle_timeout` here: short, so that the idle checks
/// before and after the load see the pool shrunk to what an idle daemon uses.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// One sample of the daemon's resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    sessions: i64,
}

impl Sample {
    /// Descriptors other than the database sockets.
    fn other_fds(&self) -> u64 {
        self.fds
            .saturating_sub(u64::try_from(self.sessions).unwrap_or(0))
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} fds, {} PostgreSQL sessions",
            self.rss_kib as f64 / 1024.0,
            self.fds,
            self.sessions
        )
    }
}

/// Resident set size of `pid` in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The daemon's sessions in this database (pool and listener).
async fn sessions(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'compartment-auditd%'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .expect("counting the daemon's sessions")
}

async fn sample(pid: u32, client: &tokio_postgres::Client, started: Instant) -> Sample {
    Sample {
        at: started.elapsed(),
        rss_kib: rss_kib(pid).expect("the daemon is running"),
        fds: fds(pid).expect("the daemon is running"),
        sessions: sessions(client).await,
    }
}

/// How long and how often.
struct SoakOptions {
    duration: Duration,
    warm_up: Duration,
    every: Duration,
    print_every: Duration,
}

impl SoakOptions {
    fn from_env() -> SoakOptions {
        let duration = match std::env::var("SOAK_DURATION") {
            Ok(text) if !text.trim().is_empty() => {
                compartment_auditd::config::units::parse_duration(&text)
                    .unwrap_or_else(|e| panic!("SOAK_DURATION={text:?}: {e}"))
            }
            _ => Duration::from_secs(120),
        };
        SoakOptions {
            duration,
            warm_up: (duration / 10).clamp(Duration::from_secs(20), Duration::from_secs(120)),
            every: (duration / 60).clamp(Duration::from_secs(2), Duration::from_secs(30)),
            print_every: (duration / 10).max(Duration::from_secs(30)),
        }
    }
}

/// What the HTTP load saw.
#[derive(Default)]
struct HttpTally {
    requests: AtomicU64,
    not_ready: AtomicU64,
    api_calls: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

/// `GET path` with optional bearer token → (status, body); `None` when nothing answers.
fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A few requests per second on the operational routes, and list/export calls on the
/// API when it exists. Runs on its own thread (plain blocking sockets).
fn http_load(port: u16, token: Option<String>, stop: Arc<AtomicBool>, tally: Arc<HttpTally>) {
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let mut calls: Vec<(String, Option<&str>, &[u16])> = vec![
            ("/metrics".into(), None, &[200]),
            ("/readyz".into(), None, &[200, 503]),
        ];
        if round % 3 == 0 {
            calls.push(("/healthz".into(), None, &[200]));
        }
        if let Some(token) = token.as_deref() {
            calls.push((
                "/v1/orgs/acme-dev/audit/events?limit=100".into(),
                Some(token),
                &[200],
            ));
            if round % 5 == 0 {
                // Recent events only, so the export stays under the row cap; a 422
                // (too large) is a correct answer too.
                let from = (chrono::Utc::now() - chrono::Duration::seconds(5))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                calls.push((
                    format!("/v1/orgs/acme-dev/audit/export?format=ndjson&from={from}"),
                    Some(token),
                    &[200, 422],
                ));
            }
        }
        for (path, token, accepted) in calls {
            tally.requests.fetch_add(1, Ordering::Relaxed);
            if token.is_some() {
                tally.api_calls.fetch_add(1, Ordering::Relaxed);
            }
            match get(port, &path, token) {
                Some((503, _)) if path == "/readyz" => {
                    tally.not_ready.fetch_add(1, Ordering::Relaxed);
                }
                Some((status, _)) if accepted.contains(&status) => {}
                other => tally
                    .unexpected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{path}: {:?}", other.map(|(s, _)| s))),
            }
        }
        std::thread::sleep(Duration::from_millis(400));
    }
}

/// The value of an unlabelled counter in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rss_fds_and_sessions_stay_flat_under_steady_mixed_load() {
    let options = SoakOptions::from_env();
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        // Rotations, compressions and deletions of old files all through the run.
        .with("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "256K")
        .with("COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES", "3")
        .with("COMPARTMENT_DATABASE_POOL_SIZE", &POOL_SIZE.to_string())
        .with(
            "COMPARTMENT_DATABASE_POOL_IDLE_TIMEOUT",
            &format!("{}s", POOL_IDLE_TIMEOUT.as_secs()),
        )
        .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let pid = daemon.pid();
    let client = db.connect().await;

    // The /v1 API, when this build has it.
    let token = match daemon.get("/v1/orgs/acme-dev/audit/events") {
        Some((404, _)) => {
            support::capability::missing("soak: /v1 list and export calls", "the API answers 404");
            None
        }
        _ => {
            let (status, _, stderr) = db
                .cli(&[
                    "user",
                    "add",
                    "--org",
                    "acme-dev",
                    "--email",
                    "soak@example.com",
                    "--role",
                    "admin",
                ])
                .await;
            assert!(status.success(), "user add: {stderr}");
            let (status, stdout, stderr) = db
                .cli(&[
                    "token",
                    "create",
                    "--org",
                    "acme-dev",
                    "--email",
                    "soak@example.com",
                ])
                .await;
            assert!(status.success(), "token create: {stderr}");
            Some(stdout.trim().to_owned())
        }
    };

    // Connections opened by start-up (catch-up, the first checks) are closed once
    // they have been unused for the idle timeout.
    tokio::time::sleep(POOL_IDLE_TIMEOUT * 3).await;
    let started = Instant::now();
    let idle_before = sample(pid, &client, started).await;
    let writers = Writers::start(
        db.url(),
        org,
        3,
        Shapes {
            pause: Duration::from_millis(20),
            ..Shapes::default()
        },
    );
    let stop_http = Arc::new(AtomicBool::new(false));
    let http = Arc::new(HttpTally::default());
    let http_thread = {
        let (stop, tally, token) = (stop_http.clone(), http.clone(), token.clone());
        let port = daemon.port;
        std::thread::spawn(move || http_load(port, token, stop, tally))
    };

    let mut samples = Vec::new();
    let mut next_print = options.print_every;
    while started.elapsed() < options.duration {
        tokio::time::sleep(options.every).await;
        let s = sample(pid, &client, started).await;
        if s.at >= next_print {
            next_print += options.print_every;
            println!("soak: {:>5.0}s  {s}", s.at.as_secs_f64());
        }
        samples.push(s);
    }
    stop_http.store(true, Ordering::SeqCst);
    http_thread.join().expect("the HTTP load thread");
    let stats = writers.stop().await;

    // Every committed event mirrored, once.
    let committed = writers::committed_ids(db.url()).await.len() as f64;
    let mirrored = wait_for(Duration::from_secs(60), async || {
        let (_, text) = daemon.get("/metrics")?;
        let n = metric(&text, "compartment_audit_events_mirrored_total")?;
        (n >= committed).then_some(n)
    })
    .await;
    // Idle again: what the load held is released.
    let idle_after = wait_for(
        POOL_IDLE_TIMEOUT * 3 + Duration::from_secs(10),
        async || {
            let s = sample(pid, &client, started).await;
            (s.other_fds() <= idle_before.other_fds() && s.sessions <= idle_before.sessions)
                .then_some(s)
        },
    )
    .await;
    let idle_after = match idle_after {
        Some(s) => s,
        None => sample(pid, &client, started).await,
    };

    let after_warm_up: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at >= options.warm_up)
        .collect();
    let warm_up: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at < options.warm_up)
        .collect();
    assert!(
        after_warm_up.len() >= 6 && !warm_up.is_empty(),
        "too few samples: {} after warm-up, {} during",
        after_warm_up.len(),
        warm_up.len()
    );
    let start = after_warm_up[0];
    let end = *after_warm_up.last().expect("checked above");
    let third = after_warm_up.len() / 3;
    let early_rss = after_warm_up[..third]
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let late_rss = after_warm_up[after_warm_up.len() - third..]
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let warm_fds = warm_up.iter().map(Sample::other_fds).max().unwrap_or(0);
    let max_fds = after_warm_up
        .iter()
        .map(Sample::other_fds)
        .max()
        .unwrap_or(0);
    let max_sessions = samples.iter().map(|s| s.sessions).max().unwrap_or(0);
    let rss_slack = 8 * 1024 + early_rss / 10;

    println!(
        "soak figures: {:.0}s, {} commits, {} rolled back, {} mirrored, {} HTTP requests ({} /v1), \
         {} not-ready answers; idle before {idle_before}; start {start}; end {end}; idle after {idle_after}; \
         RSS highest early {:.1} MiB / late {:.1} MiB; non-database fds highest {max_fds}; sessions highest {max_sessions}",
        started.elapsed().as_secs_f64(),
        stats.commits.load(Ordering::Relaxed),
        stats.rollbacks.load(Ordering::Relaxed),
        mirrored.unwrap_or(-1.0),
        http.requests.load(Ordering::Relaxed),
        http.api_calls.load(Ordering::Relaxed),
        http.not_ready.load(Ordering::Relaxed),
        early_rss as f64 / 1024.0,
        late_rss as f64 / 1024.0,
    );

    let mut problems = Vec::new();
    if mirrored != Some(committed) {
        problems.push(format!(
            "mirrored {mirrored:?} events, {committed} committed (exactly once means equal)"
        ));
    }
    if late_rss > early_rss + rss_slack {
        problems.push(format!(
            "RSS grew: highest {late_rss} KiB in the last third, {early_rss} KiB in the first (slack {rss_slack} KiB)"
        ));
    }
    if max_fds > warm_fds + 4 {
        problems.push(format!(
            "file descriptors (not counting database sessions) grew: {max_fds} after warm-up, \
             at most {warm_fds} during it"
        ));
    }
    if idle_after.other_fds() > idle_before.other_fds() {
        problems.push(format!(
            "file descriptors (not counting database sessions) not back to idle: {} after the load, {} before",
            idle_after.other_fds(),
            idle_before.other_fds()
        ));
    }
    if max_sessions > POOL_SIZE + 1 {
        problems.push(format!(
            "{max_sessions} PostgreSQL sessions; the pool ({POOL_SIZE}) and the listener allow {}",
            POOL_SIZE + 1
        ));
    }
    if idle_after.sessions > idle_before.sessions {
        problems.push(format!(
            "PostgreSQL sessions not back to idle: {} after the load (and {:?} unused), {} before",
            idle_after.sessions,
            POOL_IDLE_TIMEOUT * 3,
            idle_before.sessions
        ));
    }
    if http.not_ready.load(Ordering::Relaxed) > 0 {
        problems.push(format!(
            "/readyz answered 503 {} times under a load the daemon should carry",
            http.not_ready.load(Ordering::Relaxed)
        ));
    }
    let unexpected = http
        .unexpected
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} unexpected HTTP answers, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(5)]
        ));
    }
    assert!(
        problems.is_empty(),
        "soak: {}\nlog: {}",
        problems.join("\n  - "),
        support::chaos::tail(&daemon.log_text(), 20)
    );
}
