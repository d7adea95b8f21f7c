//! The chaos driver (issue 8, item 1): writers with varied transaction shapes against
//! a private PostgreSQL while the daemon, the database and the sink's disk are broken
//! again and again; then an oracle that checks the sink holds every committed event
//! exactly once and that every file in it is whole.
//!
//! One driver serves both forms: `tests/chaos.rs` runs it briefly in the suite (until
//! every fault kind has been injected [`ChaosOptions::min_faults`] times), and
//! `scripts/chaos` (or `CHAOS_DURATION=30m`) runs it for as long as asked.
//!
//! # Fault kinds
//!
//! Each kind has its own task and its own random pace, so kinds overlap in every
//! combination (a daemon killed while the database restarts and the disk is full…):
//!
//! | kind | what the harness does |
//! |---|---|
//! | `daemon_kill` | `SIGKILL` after a random lifetime, restart after a random pause (random batch size, fsync policy and compression delay per start) |
//! | `pg_restart` | stops PostgreSQL (`fast`, or `immediate` = crash + recovery), restarts it after a random downtime |
//! | `backend_terminate` | `pg_terminate_backend` on the daemon's sessions (all, the listener only, or the pool only) |
//! | `disk_full` | fills the tmpfs under the sink, frees it after a random time |
//! | `rotation` | small `ROTATE_SIZE` and a 2 s `ROTATE_INTERVAL`: counted as rotated files in the sink |
//! | `retention_run` | `compartment-auditd retention run` (when the build has it; the daemon's own cron runs every minute too) |
//!
//! A kind the machine cannot do (no tmpfs without root, no `retention run` in this
//! build) is skipped with the reason in the summary; under `CI=true` the run fails
//! instead (see [`super::capability`]).
//!
//! # The oracle
//!
//! The guarantee is "every committed, non-expired event exactly once", and "never
//! delete an event an enabled sink has not written". The daemon starts (and publishes
//! its position) before any writer, so no row may legitimately vanish unwritten. The
//! harness installs, in the test database only, a statement-level `AFTER DELETE`
//! trigger that logs every deleted row (id, `tx`, organization, `occurred_at`, time of
//! deletion) in the same transaction as the delete — so the log holds exactly the
//! deletions that committed — and a `BEFORE TRUNCATE` trigger that refuses to run.
//! Then, once the writers have stopped:
//!
//! - **committed** = ids in `audit_events` ∪ ids in the deletion log. Every one must
//!   be in the sink exactly once: a row retention deleted was expired *and* already
//!   written (else it is `missing`).
//! - **missing** = committed, not in the sink; **duplicated** = ids on more than one
//!   line; **not committed** = ids in the sink that were never committed (a rolled
//!   back row, a savepoint's discarded row).
//! - every deleted row was expired when deleted (its organization's days, or the
//!   install default for `inherit`) and none belonged to an `indefinite` organization;
//! - rows are also told apart by a token unique to the run (their `target_id`):
//!   after a PostgreSQL crash a sequence may hand out again values that only
//!   uncommitted transactions had seen. Every commit a writer saw acknowledged is in
//!   the table or the deletion log; no row of a transaction that never sent `COMMIT`
//!   (rollbacks, savepoints rolled back, failures before commit) exists in the table
//!   or the sink; every sink line carries the token of the committed row with its id.
//! - after every kill, the position the dead daemon published is not ahead of where
//!   the next one resumes from its files (durable before acknowledged).
//! - every file is whole: each `.gz` decodes completely, every file ends in `\n`,
//!   every line is JSON with a numeric `id`, a plain rotated file next to its `.gz`
//!   has the same content, every entry is owner-only and no symlink, and the secret
//!   the writers plant in every event's metadata appears nowhere.
//!
//! Commits whose outcome a writer could not learn (connection lost during `COMMIT`)
//! are judged by what the database kept, like everything else.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::tmpfs::Tmpfs;
use super::{bin, Daemon, DaemonConfig, PrivatePostgres};

/// Planted in every event's metadata under a secret-named key: the sanitizer must
/// drop it, so it must never appear in the sink.
pub const PLANTED_SECRET: &str = "chaos-planted-secret-8e1f0c";

/// The install default retention (`COMPARTMENT_AUDIT_RETENTION_DAYS`) in the scenario.
const INSTALL_RETENTION_DAYS: i32 = 30;

/// Oldest `occurred_at` the writers backdate events to, in days.
const MAX_BACKDATE_DAYS: f64 = 120.0;

// ---------------------------------------------------------------------------------
// Options

/// How long and how hard to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Seeds every random choice of the harness (fault order and timing, transaction
    /// shapes). Timing on a busy machine still varies, so a seed reproduces the
    /// schedule, not the exact interleaving.
    pub seed: u64,
    /// Inject faults at least this long…
    pub min_duration: Duration,
    /// …until every available kind reached `min_faults`, but never longer than this.
    pub max_duration: Duration,
    /// Injections of each available kind the run must reach.
    pub min_faults: u64,
    /// Concurrent writers.
    pub writers: usize,
    /// Size of the tmpfs under the sink.
    pub tmpfs_size: u64,
    /// How often progress is printed.
    pub progress_every: Duration,
    /// Fault pacing.
    pub pacing: Pacing,
    /// The daemon connects over TLS (`verify-full`, a server with `hostssl` lines
    /// only); the harness itself uses the server's Unix socket. `CHAOS_TLS=1`.
    pub tls: bool,
}

/// Random ranges, in milliseconds, that pace each fault kind.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// How long a daemon lives before it is killed.
    pub daemon_lifetime: Range<u64>,
    /// How long it stays dead.
    pub daemon_down: Range<u64>,
    /// Between PostgreSQL restarts.
    pub pg_gap: Range<u64>,
    /// How long PostgreSQL stays down.
    pub pg_down: Range<u64>,
    /// Between backend terminations.
    pub terminate_gap: Range<u64>,
    /// Between disk fills.
    pub disk_gap: Range<u64>,
    /// How long the disk stays full.
    pub disk_full_for: Range<u64>,
    /// Between retention runs.
    pub retention_gap: Range<u64>,
}

impl Default for Pacing {
    fn default() -> Self {
        // Dense enough for 50 of each kind in about a minute, sparse enough that the
        // daemon makes real progress between faults (a daemon lives ~1.4 s on average).
        Pacing {
            daemon_lifetime: 200..1_800,
            daemon_down: 0..300,
            pg_gap: 200..900,
            pg_down: 0..300,
            terminate_gap: 150..500,
            disk_gap: 200..800,
            disk_full_for: 100..1_000,
            retention_gap: 300..1_200,
        }
    }
}

impl ChaosOptions {
    /// The short form, changed by the environment:
    ///
    /// - `CHAOS_SEED=<u64>`: the seed (default: from the clock; always printed);
    /// - `CHAOS_DURATION=<duration>` (`30m`, `2h`): the long form, faults for exactly
    ///   that long;
    /// - `CHAOS_MIN_FAULTS=<n>`: injections required per kind (default 50);
    /// - `CHAOS_WRITERS=<n>`: concurrent writers (default 5);
    /// - `CHAOS_TMPFS_SIZE=<size>` (`512M`): the sink's tmpfs (default grows with the
    ///   duration).
    pub fn from_env() -> Result<ChaosOptions, String> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        }
        let seed = match var("CHAOS_SEED") {
            Some(text) => text
                .trim()
                .parse()
                .map_err(|e| format!("CHAOS_SEED={text:?}: {e}"))?,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed),
        };
        let (min_duration, max_duration, progress_every) = match var("CHAOS_DURATION") {
            Some(text) => {
                let d = compartment_auditd::config::units::parse_duration(&text)
                    .map_err(|e| format!("CHAOS_DURATION={text:?}: {e}"))?;
                (d, d, Duration::from_secs(60))
            }
            // Short form: at least 30 s of faults, done as soon as every kind has its
            // quota, and a hard cap that keeps the suite's test within its budget.
            None => (
                Duration::from_secs(30),
                Duration::from_secs(150),
                Duration::from_secs(15),
            ),
        };
        let min_faults = match var("CHAOS_MIN_FAULTS") {
            Some(text) => text
                .trim()
                .parse()
                .map_err(|e| format!("CHAOS_MIN_FAULTS={text:?}: {e}"))?,
            None => 50,
        };
        let writers = match var("CHAOS_WRITERS") {
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| format!("CHAOS_WRITERS={text:?}: expected 2 or more"))?,
            None => 5,
        };
        let tmpfs_size = match var("CHAOS_TMPFS_SIZE") {
            Some(text) => compartment_auditd::config::units::parse_size(&text)
                .map_err(|e| format!("CHAOS_TMPFS_SIZE={text:?}: {e}"))?,
            // The sink grows by well under 1 MiB per minute of chaos (compressed, but
            // a page per small file); the filler takes whatever is left, so a bigger
            // tmpfs only costs time per fill.
            None => {
                let minutes = max_duration.as_secs().div_ceil(60);
                (48 + 16 * minutes).min(8 * 1024) * 1024 * 1024
            }
        };
        Ok(ChaosOptions {
            seed,
            min_duration,
            max_duration,
            min_faults,
            writers,
            tmpfs_size,
            progress_every,
            pacing: Pacing::default(),
            tls: var("CHAOS_TLS").is_some_and(|v| v != "0"),
        })
    }
}

// ---------------------------------------------------------------------------------
// Fault kinds and their tally

/// What the harness breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `SIGKILL` the daemon and start it again.
    DaemonKill,
    /// Stop and start PostgreSQL (fast or immediate).
    PgRestart,
    /// `pg_terminate_backend` on the daemon's sessions.
    BackendTerminate,
    /// Fill the sink's filesystem, then free it.
    DiskFull,
    /// A rotation of the active file (forced by a small size and short interval).
    Rotation,
    /// `compartment-auditd retention run`.
    RetentionRun,
    /// Of those, runs that deleted rows on two database sessions at once.
    RetentionTwoSessions,
}

impl FaultKind {
    /// Every kind, in summary order.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::DaemonKill,
        FaultKind::PgRestart,
        FaultKind::BackendTerminate,
        FaultKind::DiskFull,
        FaultKind::Rotation,
        FaultKind::RetentionRun,
        FaultKind::RetentionTwoSessions,
    ];

    /// The name in the summary line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DaemonKill => "daemon_kill",
            FaultKind::PgRestart => "pg_restart",
            FaultKind::BackendTerminate => "backend_terminate",
            FaultKind::DiskFull => "disk_full",
            FaultKind::Rotation => "rotation",
            FaultKind::RetentionRun => "retention_run",
            FaultKind::RetentionTwoSessions => "retention_two_sessions",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Faults injected so far, per kind, and the kinds skipped (with why).
#[derive(Debug, Default)]
pub struct FaultTally {
    counts: [AtomicU64; 7],
    skipped: Mutex<HashMap<FaultKind, String>>,
}

impl FaultTally {
    fn add(&self, kind: FaultKind) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn set(&self, kind: FaultKind, n: u64) {
        self.counts[kind.index()].store(n, Ordering::Relaxed);
    }

    fn skip(&self, kind: FaultKind, why: String) {
        lock(&self.skipped).insert(kind, why);
    }

    /// Injections of `kind`.
    pub fn count(&self, kind: FaultKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Why `kind` was skipped, if it was.
    pub fn skipped(&self, kind: FaultKind) -> Option<String> {
        lock(&self.skipped).get(&kind).cloned()
    }

    /// `daemon_kill=61 pg_restart=52 … retention_run=skipped (why)`.
    pub fn render(&self) -> String {
        FaultKind::ALL
            .iter()
            .map(|kind| match self.skipped(*kind) {
                Some(why) => format!("{}=skipped ({why})", kind.name()),
                None => format!("{}={}", kind.name(), self.count(*kind)),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `daemon_kill=61 pg_restart=52 …`, skipped kinds left out (for progress lines).
    pub fn render_counts(&self) -> String {
        FaultKind::ALL
            .iter()
            .filter(|kind| self.skipped(**kind).is_none())
            .map(|kind| format!("{}={}", kind.name(), self.count(*kind)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn below(&self, min: u64) -> Vec<FaultKind> {
        FaultKind::ALL
            .iter()
            .copied()
            // How many runs put two batches at once is observed, not injected.
            .filter(|k| *k != FaultKind::RetentionTwoSessions)
            .filter(|k| self.skipped(*k).is_none() && self.count(*k) < min)
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking task is reported through its JoinHandle; its data is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------
// The report

/// What a run found.
#[derive(Debug)]
pub struct ChaosReport {
    /// The one summary line.
    pub summary: String,
    /// Every violated guarantee or harness failure; empty when the run passed.
    pub problems: Vec<String>,
    /// Where the logs and a copy of the sink were kept (only when there are problems).
    pub artifacts: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------
// The run

/// Organizations of the scenario and their retention (`None` = inherit).
const ORGS: [(&str, &str, Option<i32>); 4] = [
    ("chaos-short", "days", Some(1)),
    ("chaos-inherit", "inherit", None),
    ("chaos-long", "days", Some(3650)),
    ("chaos-forever", "indefinite", None),
];

/// Runs the whole scenario and judges it.
pub async fn run(options: ChaosOptions) -> ChaosReport {
    let started = Instant::now();
    let artifacts = tempfile::Builder::new()
        .prefix("auditd-chaos-")
        .tempdir()
        .expect("creating the artifact directory");
    let tally = Arc::new(FaultTally::default());
    let mut problems = Vec::new();

    // The sink on a small tmpfs when possible.
    let tmpfs = match Tmpfs::mount(&artifacts.path().join("mnt"), options.tmpfs_size) {
        Ok(tmpfs) => Some(Arc::new(tmpfs)),
        Err(why) => {
            super::capability::missing(
                "chaos: disk_full faults",
                &format!("cannot mount a tmpfs ({why})"),
            );
            tally.skip(FaultKind::DiskFull, format!("no tmpfs: {why}"));
            None
        }
    };
    let sink = match &tmpfs {
        Some(t) => t.path().join("sink"),
        None => artifacts.path().join("sink"),
    };
    if let Err(why) = retention_available() {
        super::capability::missing("chaos: retention_run faults", &why);
        tally.skip(FaultKind::RetentionTwoSessions, why.clone());
        tally.skip(FaultKind::RetentionRun, why);
    }

    let figures = scenario(
        &options,
        artifacts.path(),
        &sink,
        tmpfs.clone(),
        &tally,
        &mut problems,
    )
    .await;
    let summary = format!(
        "chaos summary: events committed {} / written {} / missing {} / duplicated {} \
         (written but never committed {}, deleted by retention {}); faults {}; elapsed {:.1}s; seed {}",
        figures.committed,
        figures.written,
        figures.missing,
        figures.duplicated,
        figures.not_committed,
        figures.deleted,
        tally.render(),
        started.elapsed().as_secs_f64(),
        options.seed,
    );

    // Keep the evidence of a failed run: the logs and the sink (copied off the
    // tmpfs, which goes away).
    if !problems.is_empty() && tmpfs.is_some() {
        let _ = Command::new("cp")
            .arg("-a")
            .arg(&sink)
            .arg(artifacts.path().join("sink-copy"))
            .status();
    }
    // Unmount before the directory holding the mount point is removed or kept.
    drop(tmpfs);
    let artifacts = if problems.is_empty() {
        None
    } else {
        Some(artifacts.keep())
    };
    ChaosReport {
        summary,
        problems,
        artifacts,
    }
}

/// The figures of the summary line.
#[derive(Debug, Default)]
struct Figures {
    committed: usize,
    written: usize,
    missing: usize,
    duplicated: usize,
    not_committed: usize,
    deleted: usize,
}

/// Sets up, breaks things until the quota is met, drains and judges.
async fn scenario(
    options: &ChaosOptions,
    artifacts: &Path,
    sink: &Path,
    tmpfs: Option<Arc<Tmpfs>>,
    tally: &Arc<FaultTally>,
    problems: &mut Vec<String>,
) -> Figures {
    let started = Instant::now();
    let log_dir = artifacts.join("logs");
    std::fs::create_dir_all(&log_dir).expect("creating the log directory");

    // A private server: restarting it must not disturb other tests.
    let tls = options.tls;
    let (pki, pg) = tokio::task::spawn_blocking(move || {
        if tls {
            let pki = super::tls::Pki::generate();
            let pg = super::tls::start_tls_postgres(&pki);
            (Some(pki), pg)
        } else {
            (None, PrivatePostgres::start())
        }
    })
    .await
    .expect("starting PostgreSQL");
    let pg = Arc::new(pg);
    let tcp_url = pg.create_migrated_database("chaos");
    // Over TLS only the daemon (and its CLI) use TCP; the harness uses the socket.
    let (url, server_url) = match &pki {
        Some(_) => (pg.socket_url("chaos"), pg.socket_url("postgres")),
        None => (tcp_url.clone(), pg.url("postgres")),
    };
    let orgs = setup_scenario(&url).await;

    let mut base = DaemonConfig::new(&url, sink, &log_dir);
    if let Some(pki) = &pki {
        base = base
            .with(
                "COMPARTMENT_DATABASE_URL",
                &format!("postgres://postgres@localhost:{}/chaos", pg.port),
            )
            .with("COMPARTMENT_DATABASE_SSLMODE", "verify-full")
            .with(
                "COMPARTMENT_DATABASE_SSLROOTCERT",
                &pki.path("ca.pem").display().to_string(),
            );
    }
    let base = base
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "64K")
        .with("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL", "2s")
        // The oracle needs every line: keep every rotated file.
        .with("COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES", "100000")
        .with("COMPARTMENT_AUDIT_MIRROR_HORIZON_POLL_INTERVAL", "100ms")
        .with(
            "COMPARTMENT_AUDIT_RETENTION_DAYS",
            &INSTALL_RETENTION_DAYS.to_string(),
        )
        // The daemon's own retention job joins in (once the build has one). Its runs
        // hardly ever put two batches at once (the summary's retention_two_sessions):
        // the writers keep adding backdated events the sink has not written yet, and
        // with such a row a run does one batch at a time.
        .with("COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON", "* * * * *")
        .with("COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE", "500")
        .with("COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES", "20");

    // The daemon first: once it has published its position, no row may vanish unwritten.
    let first = base.spawn();
    if !first.wait_ready(Duration::from_secs(60)).await {
        problems.push(format!(
            "the first daemon never became ready: {}",
            tail(&first.log_text(), 20)
        ));
        return Figures::default();
    }

    // The side table of the two-phase writers (audit inserts cannot be prepared).
    match connect(&url).await {
        Ok(client) => {
            if let Err(err) = super::writers::create_prepared_table(&client).await {
                problems.push(format!("cannot create the two-phase side table: {err}"));
            }
        }
        Err(err) => problems.push(format!("cannot connect to set up: {err}")),
    }
    let writers_stop = CancellationToken::new();
    let ledger = Arc::new(Ledger::default());
    let writer_tasks: Vec<_> = (0..options.writers)
        .map(|w| {
            tokio::spawn(writer(
                w,
                options.writers,
                url.clone(),
                orgs.clone(),
                StdRng::seed_from_u64(options.seed ^ (0x1000 + w as u64)),
                ledger.clone(),
                writers_stop.clone(),
            ))
        })
        .collect();

    let faults_stop = CancellationToken::new();
    let rng = |k: u64| StdRng::seed_from_u64(options.seed.wrapping_mul(31).wrapping_add(k));
    let supervisor = tokio::spawn(supervise_daemon(
        first,
        base.clone(),
        options.pacing.clone(),
        rng(1),
        tally.clone(),
        faults_stop.clone(),
    ));
    let mut fault_tasks = vec![
        tokio::spawn(restart_postgres(
            pg.clone(),
            options.pacing.clone(),
            rng(2),
            tally.clone(),
            faults_stop.clone(),
        )),
        tokio::spawn(terminate_backends(
            server_url.clone(),
            options.pacing.clone(),
            rng(3),
            tally.clone(),
            faults_stop.clone(),
        )),
        tokio::spawn(count_rotations(
            sink.to_owned(),
            tally.clone(),
            faults_stop.clone(),
        )),
    ];
    if let Some(tmpfs) = &tmpfs {
        fault_tasks.push(tokio::spawn(fill_disk(
            tmpfs.clone(),
            options.pacing.clone(),
            rng(4),
            tally.clone(),
            faults_stop.clone(),
        )));
    }
    if tally.skipped(FaultKind::RetentionRun).is_none() {
        fault_tasks.push(tokio::spawn(run_retention(
            base.clone(),
            options.pacing.clone(),
            rng(5),
            tally.clone(),
            faults_stop.clone(),
        )));
    }

    // Faults until the quota and the minimum time are reached (or the cap).
    let mut next_progress = options.progress_every;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = started.elapsed();
        let behind = tally.below(options.min_faults);
        if elapsed >= options.max_duration || (elapsed >= options.min_duration && behind.is_empty())
        {
            break;
        }
        if elapsed >= next_progress {
            next_progress += options.progress_every;
            println!(
                "chaos: {:>4.0}s  faults {}  commits {}",
                elapsed.as_secs_f64(),
                tally.render_counts(),
                ledger.commits.load(Ordering::Relaxed)
            );
        }
    }
    let fault_phase = started.elapsed();

    // Calm: every fault task ends with its fault undone (database up, disk free, a
    // daemon running).
    faults_stop.cancel();
    for task in fault_tasks {
        if let Err(err) = task.await.unwrap_or_else(|e| Err(format!("panicked: {e}"))) {
            problems.push(format!("a fault task failed: {err}"));
        }
    }
    let Supervised {
        daemon,
        unexpected: unexpected_exits,
        resumes,
    } = match supervisor.await {
        Ok(supervised) => supervised,
        Err(e) => {
            problems.push(format!("the daemon supervisor panicked: {e}"));
            Supervised {
                daemon: base.spawn(),
                unexpected: Vec::new(),
                resumes: Vec::new(),
            }
        }
    };
    for exit in &unexpected_exits {
        problems.push(format!("the daemon exited on its own: {exit}"));
    }
    writers_stop.cancel();
    for task in writer_tasks {
        let _ = task.await;
    }
    // Prepared transactions a writer could not end hold the horizon: end them.
    match connect(&url).await {
        Ok(client) => {
            if let Err(err) = super::writers::resolve_prepared(&client, GID_PREFIX).await {
                problems.push(format!(
                    "cannot end the writers' prepared transactions: {err}"
                ));
            }
        }
        Err(err) => problems.push(format!(
            "cannot connect to end prepared transactions: {err}"
        )),
    }
    let drain_started = Instant::now();

    // Drain: wait until the published position covers the last committed row.
    if let Err(why) = wait_caught_up(&url, Duration::from_secs(120)).await {
        problems.push(format!("the daemon did not catch up: {why}"));
    }
    let drain = drain_started.elapsed();
    let status = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .expect("terminating the daemon");
    if status.code() != Some(0) {
        problems.push(format!(
            "SIGTERM after the run: exit status {status}, expected 0"
        ));
    }

    // Judge.
    let truth = match read_truth(&url).await {
        Ok(truth) => truth,
        Err(err) => {
            problems.push(format!("cannot read the database after the run: {err}"));
            return Figures::default();
        }
    };
    let sink_dir = sink.to_owned();
    let inspection = tokio::task::spawn_blocking(move || inspect_sink(&sink_dir, PLANTED_SECRET))
        .await
        .expect("inspecting the sink");
    tally.set(FaultKind::Rotation, inspection.rotated as u64);
    problems.extend(inspection.problems.iter().cloned());
    let resumes_checked = check_resumes(&resumes, problems);
    let figures = judge(&truth, &inspection, &ledger, problems);
    for kind in tally.below(options.min_faults) {
        problems.push(format!(
            "only {} {} faults injected in {:.0}s; the run needs {}",
            tally.count(kind),
            kind.name(),
            fault_phase.as_secs_f64(),
            options.min_faults
        ));
    }
    println!(
        "chaos: faults for {:.0}s, caught up {:.1}s after; published position never ahead of the files \
         ({resumes_checked} kills checked); writers: {} commits acknowledged, {} rolled back, \
         {} savepoints rolled back, {} held open, {} bulk, {} copy, {} two-phase, {} outcome unknown, \
         {} connection errors; \
         sink: {} files, {} torn tails cut at start-up, {} temp files left, {:.1} MiB",
        fault_phase.as_secs_f64(),
        drain.as_secs_f64(),
        ledger.commits.load(Ordering::Relaxed),
        ledger.rollbacks.load(Ordering::Relaxed),
        ledger.savepoints.load(Ordering::Relaxed),
        ledger.held_open.load(Ordering::Relaxed),
        ledger.bulk.load(Ordering::Relaxed),
        ledger.copies.load(Ordering::Relaxed),
        ledger.two_phase.load(Ordering::Relaxed),
        ledger.unknown.load(Ordering::Relaxed),
        ledger.errors.load(Ordering::Relaxed),
        inspection.files,
        inspection.fragments,
        inspection.temp_files,
        inspection.bytes as f64 / (1024.0 * 1024.0),
    );
    figures
}

/// Whether this build has `retention run`.
fn retention_available() -> Result<(), String> {
    let output = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["retention", "run", "--help"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the binary: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err("`retention run` is not in this build".into())
    }
}

/// Organizations with every retention mode, and the deletion log.
async fn setup_scenario(url: &str) -> Vec<Uuid> {
    let client = connect(url)
        .await
        .expect("connecting to set up the scenario");
    let mut orgs = Vec::new();
    for (slug, mode, days) in ORGS {
        let row = client
            .query_one(
                "INSERT INTO organizations (slug, name, audit_retention_mode, audit_retention_days) \
                 VALUES ($1, $1, $2, $3) RETURNING id",
                &[&slug, &mode, &days],
            )
            .await
            .expect("creating an organization");
        orgs.push(row.get(0));
    }
    client
        .batch_execute(
            "CREATE TABLE chaos_deleted (
                 id bigint PRIMARY KEY,
                 tx xid8 NOT NULL,
                 target_id text,
                 organization_id uuid NOT NULL,
                 occurred_at timestamptz NOT NULL,
                 deleted_at timestamptz NOT NULL DEFAULT now()
             );
             CREATE FUNCTION chaos_log_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO chaos_deleted (id, tx, target_id, organization_id, occurred_at)
                 SELECT id, tx, target_id, organization_id, occurred_at FROM gone;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER chaos_log_deleted AFTER DELETE ON audit_events
                 REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
                 EXECUTE FUNCTION chaos_log_deleted();
             CREATE FUNCTION chaos_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION 'the chaos oracle cannot see through TRUNCATE';
             END $$;
             CREATE TRIGGER chaos_refuse_truncate BEFORE TRUNCATE ON audit_events
                 FOR EACH STATEMENT EXECUTE FUNCTION chaos_refuse_truncate();",
        )
        .await
        .expect("installing the deletion log");
    orgs
}

type Uuid = uuid::Uuid;

/// A dedicated connection, bounded in time (the server may be down).
async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Errors surface on the client side as a closed connection.
        let _ = connection.await;
    });
    Ok(client)
}

/// Sleeps `ms`; true when told to stop meanwhile.
async fn pause(ms: u64, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
    }
}

fn pick(rng: &mut StdRng, range: &Range<u64>) -> u64 {
    if range.is_empty() {
        range.start
    } else {
        rng.random_range(range.clone())
    }
}

// ---------------------------------------------------------------------------------
// Writers

/// What the writers learned about their transactions.
#[derive(Debug, Default)]
struct Ledger {
    /// Row tokens (`target_id`) of rows whose `COMMIT` was acknowledged.
    acked: Mutex<Vec<String>>,
    /// Row tokens of rows that cannot have committed: their transaction rolled back
    /// or failed before `COMMIT` was sent, or their savepoint was rolled back. Tokens,
    /// not ids: after a PostgreSQL crash a sequence hands out again the values that
    /// only uncommitted transactions had seen (their WAL was never flushed).
    never_committed: Mutex<Vec<String>>,
    commits: AtomicU64,
    rollbacks: AtomicU64,
    savepoints: AtomicU64,
    held_open: AtomicU64,
    bulk: AtomicU64,
    copies: AtomicU64,
    two_phase: AtomicU64,
    unknown: AtomicU64,
    errors: AtomicU64,
}

/// One transaction's plan.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One row.
    Single,
    /// Several single-row statements.
    Several(u32),
    /// One statement inserting thousands of rows.
    Bulk(i32),
    /// A few rows, then the transaction stays open for a while (holds the horizon).
    HeldOpen(i32, Duration),
    /// Rows, then `ROLLBACK`.
    Rollback(i32),
    /// Rows kept, then rows after a savepoint that is rolled back, then more kept.
    Savepoint(i32, i32),
    /// Rows inserted with `COPY … FROM STDIN`.
    Copy(i32),
    /// No audit row (a transaction that notified cannot be prepared): a prepared
    /// transaction on the side table, held this long (the horizon with it), then
    /// committed.
    TwoPhase(Duration),
}

/// Prefix of the chaos writers' two-phase transaction ids.
const GID_PREFIX: &str = "chaos_";

fn choose_shape(rng: &mut StdRng) -> Shape {
    match rng.random_range(0..1000) {
        0..550 => Shape::Single,
        550..700 => Shape::Several(rng.random_range(2..=20)),
        700..710 => Shape::Bulk(rng.random_range(500..=3000)),
        710..760 => Shape::HeldOpen(
            rng.random_range(1..=5),
            Duration::from_millis(rng.random_range(1_000..=4_000)),
        ),
        760..860 => Shape::Rollback(rng.random_range(1..=50)),
        860..900 => Shape::Copy(rng.random_range(1..=200)),
        900..920 => Shape::TwoPhase(Duration::from_millis(rng.random_range(0..=1_500))),
        _ => Shape::Savepoint(rng.random_range(1..=5), rng.random_range(1..=5)),
    }
}

/// A writer: its own rate (writer 0 as fast as it can, the last one slow), random
/// organizations, a quarter of its transactions backdated up to 120 days so retention
/// has work.
async fn writer(
    w: usize,
    writers: usize,
    url: String,
    orgs: Vec<Uuid>,
    mut rng: StdRng,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let mut stmt = 0u64;
    let pause_ms: Range<u64> = match w {
        0 => 0..2,
        w if w + 1 == writers => 150..600,
        _ => 5..40,
    };
    while !stop.is_cancelled() {
        let mut client = match connect(&url).await {
            Ok(client) => client,
            Err(_) => {
                ledger.errors.fetch_add(1, Ordering::Relaxed);
                if pause(50, &stop).await {
                    return;
                }
                continue;
            }
        };
        // What an earlier connection of this writer prepared and could not end.
        if super::writers::resolve_prepared(&client, &format!("{GID_PREFIX}w{w}_"))
            .await
            .is_err()
        {
            ledger.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        while !stop.is_cancelled() {
            let shape = choose_shape(&mut rng);
            let org = orgs[rng.random_range(0..orgs.len())];
            let backdate = if rng.random_bool(0.25) {
                MAX_BACKDATE_DAYS
            } else {
                0.0
            };
            if one_transaction(&mut client, &mut stmt, w, org, backdate, shape, &ledger)
                .await
                .is_err()
            {
                ledger.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if pause(pick(&mut rng, &pause_ms), &stop).await {
                return;
            }
        }
    }
}

/// Runs one transaction of `shape`, recording its rows in the ledger. `Err` means the
/// connection is unusable.
async fn one_transaction(
    client: &mut tokio_postgres::Client,
    stmt_counter: &mut u64,
    w: usize,
    org: Uuid,
    backdate: f64,
    shape: Shape,
    ledger: &Ledger,
) -> Result<(), tokio_postgres::Error> {
    if let Shape::TwoPhase(hold) = shape {
        *stmt_counter += 1;
        let gid = format!("{GID_PREFIX}w{w}_{}", *stmt_counter);
        super::writers::prepared_transaction(client, &gid, hold).await?;
        ledger.two_phase.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let mut stmt = *stmt_counter;
    let mut kept: Vec<String> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    // Everything before COMMIT: a failure here means nothing of it committed.
    let prepared: Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> = async {
        let mut tx = client.transaction().await?;
        match shape {
            Shape::Single => kept.extend(insert(&tx, &mut stmt, w, org, backdate, 1).await?),
            Shape::Several(n) => {
                for _ in 0..n {
                    kept.extend(insert(&tx, &mut stmt, w, org, backdate, 1).await?);
                }
            }
            Shape::Bulk(n) => {
                ledger.bulk.fetch_add(1, Ordering::Relaxed);
                kept.extend(insert(&tx, &mut stmt, w, org, backdate, n).await?);
            }
            Shape::HeldOpen(n, hold) => {
                kept.extend(insert(&tx, &mut stmt, w, org, backdate, n).await?);
                ledger.held_open.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
            }
            Shape::Rollback(n) => {
                dropped.extend(insert(&tx, &mut stmt, w, org, backdate, n).await?)
            }
            Shape::Copy(n) => {
                ledger.copies.fetch_add(1, Ordering::Relaxed);
                kept.extend(copy(&tx, &mut stmt, w, org, backdate, n).await?);
            }
            Shape::TwoPhase(_) => unreachable!("handled above"),
            Shape::Savepoint(a, b) => {
                kept.extend(insert(&tx, &mut stmt, w, org, backdate, a).await?);
                let sp = tx.savepoint("chaos_sp").await?;
                let discarded = insert(&sp, &mut stmt, w, org, backdate, b).await;
                if let Ok(ids) = &discarded {
                    dropped.extend(ids.iter().cloned());
                }
                discarded?;
                sp.rollback().await?;
                ledger.savepoints.fetch_add(1, Ordering::Relaxed);
                kept.extend(insert(&tx, &mut stmt, w, org, backdate, 1).await?);
            }
        }
        Ok(tx)
    }
    .await;
    *stmt_counter = stmt;
    let tx = match prepared {
        Ok(tx) => tx,
        Err(e) => {
            kept.extend(dropped);
            lock(&ledger.never_committed).extend(kept);
            return Err(e);
        }
    };
    lock(&ledger.never_committed).extend(dropped);
    if matches!(shape, Shape::Rollback(_)) {
        // Whatever ROLLBACK answers, nothing of this transaction commits.
        ledger.rollbacks.fetch_add(1, Ordering::Relaxed);
        return tx.rollback().await;
    }
    match tx.commit().await {
        Ok(()) => {
            ledger.commits.fetch_add(1, Ordering::Relaxed);
            lock(&ledger.acked).extend(kept);
            Ok(())
        }
        Err(e) => {
            // The COMMIT may or may not have happened: the table decides.
            ledger.unknown.fetch_add(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Inserts `n` rows with a plain `INSERT` naming the fixed columns; returns their
/// tokens: `target_id` = `w<writer>.<statement>.<row>`, unique for the whole run.
async fn insert(
    client: &impl tokio_postgres::GenericClient,
    stmt: &mut u64,
    w: usize,
    org: Uuid,
    backdate_days: f64,
    n: i32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    *stmt += 1;
    let rows = client
        .query(
            "INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type, actor_id, \
                                       actor_email, target_type, target_id, metadata) \
             SELECT $1, now() - ($2::float8 * random()) * interval '1 day', \
                    'organization.group.updated', 'user', $3, 'writer@example.com', 'group', $6 || g, \
                    jsonb_build_object('group_id', 'grp_' || g, 'group_name', 'chaos', \
                                       'changed_fields', jsonb_build_array('name'), 'password', $4::text) \
             FROM generate_series(1, $5::int) g \
             RETURNING target_id",
            &[
                &org,
                &backdate_days,
                &format!("usr_chaos_{w}"),
                &PLANTED_SECRET,
                &n,
                &format!("w{w}.{stmt}."),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Like [`insert`], through `COPY` (the writers' [`super::writers::copy_events`]).
async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: &mut u64,
    w: usize,
    org: Uuid,
    backdate_days: f64,
    n: i32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    *stmt += 1;
    let now = chrono::Utc::now();
    let events: Vec<super::writers::CopyEvent> = (1..=n)
        .map(|g| {
            let back = backdate_days * rand::random::<f64>() * 86_400.0;
            super::writers::CopyEvent {
                organization_id: org,
                occurred_at: now - chrono::Duration::milliseconds((back * 1000.0) as i64),
                actor_id: format!("usr_chaos_{w}"),
                target_id: format!("w{w}.{stmt}.{g}"),
                metadata: serde_json::json!({
                    "group_id": format!("grp_{g}"), "group_name": "chaos, \"copied\"",
                    "changed_fields": ["name"], "password": PLANTED_SECRET,
                }),
            }
        })
        .collect();
    super::writers::copy_events(tx, &events).await?;
    Ok(events.into_iter().map(|e| e.target_id).collect())
}

// ---------------------------------------------------------------------------------
// Fault tasks

/// Kills and restarts the daemon; also notices (and records) a daemon that exited on
/// its own, and starts it again as systemd would. Ends with a daemon running.
async fn supervise_daemon(
    first: Daemon,
    base: DaemonConfig,
    pacing: Pacing,
    mut rng: StdRng,
    tally: Arc<FaultTally>,
    stop: CancellationToken,
) -> Supervised {
    let mut daemon = first;
    let mut unexpected = Vec::new();
    let mut resumes = Vec::new();
    loop {
        let lifetime = Duration::from_millis(pick(&mut rng, &pacing.daemon_lifetime));
        let born = Instant::now();
        let mut exited = None;
        while born.elapsed() < lifetime && !stop.is_cancelled() {
            if let Some(status) = daemon.exit_status() {
                exited = Some(status);
                break;
            }
            if pause(50, &stop).await {
                break;
            }
        }
        if let Some(status) = exited.or_else(|| daemon.exit_status()) {
            unexpected.push(format!(
                "{status} after {:.1}s; log {}: {}",
                born.elapsed().as_secs_f64(),
                daemon.log.display(),
                tail(&daemon.log_text(), 5)
            ));
            // Like systemd's RestartSec: do not spin.
            tokio::time::sleep(Duration::from_millis(200)).await;
            daemon = spawn_varied(&base, &mut rng);
            continue;
        }
        if stop.is_cancelled() {
            return Supervised {
                daemon,
                unexpected,
                resumes,
            };
        }
        daemon.kill();
        tally.add(FaultKind::DaemonKill);
        // What the dead daemon had acknowledged (unknown while PostgreSQL is down).
        let published = published_position(&base.database_url).await;
        tokio::time::sleep(Duration::from_millis(pick(&mut rng, &pacing.daemon_down))).await;
        daemon = spawn_varied(&base, &mut rng);
        if let Some(published) = published {
            resumes.push((published, daemon.log.clone()));
        }
    }
}

/// What the daemon supervisor hands back.
struct Supervised {
    /// The daemon running now.
    daemon: Daemon,
    /// Exits nobody asked for.
    unexpected: Vec<String>,
    /// After each kill: the position the killed daemon had published, and the log of
    /// the daemon started next (which says where it resumed, derived from the files).
    resumes: Vec<((u64, i64), PathBuf)>,
}

/// The position published in `audit_sink_positions`, if the database answers.
async fn published_position(url: &str) -> Option<(u64, i64)> {
    let client = connect(url).await.ok()?;
    let row = client
        .query_opt(
            "SELECT tx::text, event_id FROM audit_sink_positions LIMIT 1",
            &[],
        )
        .await
        .ok()??;
    Some((row.get::<_, String>(0).parse().ok()?, row.get(1)))
}

/// §7.3, durable before acknowledged: a killed daemon's published position must
/// never be ahead of what its files hold, i.e. of where the next daemon resumes
/// (its log line `Mirroring audit events to the file sink position=(tx T, id I)`).
/// Returns how many kills were checked (a daemon killed before it logged its
/// position is not), pushing violations to `problems`.
fn check_resumes(resumes: &[((u64, i64), PathBuf)], problems: &mut Vec<String>) -> usize {
    let mut checked = 0;
    for (published, log) in resumes {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let Some(resumed) = text
            .lines()
            .find(|l| l.contains("Mirroring audit events to the file sink"))
            .and_then(|l| l.split_once("position=(tx "))
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(inner, _)| inner.split_once(", id "))
            .and_then(|(tx, id)| Some((tx.parse::<u64>().ok()?, id.parse::<i64>().ok()?)))
        else {
            continue;
        };
        checked += 1;
        if resumed < *published {
            problems.push(format!(
                "published position {published:?} was ahead of the files: the next daemon resumed at \
                 {resumed:?} ({})",
                log.display()
            ));
        }
    }
    checked
}

/// A daemon with a random batch size, fsync policy and compression delay: the
/// guarantees must hold for every setting.
fn spawn_varied(base: &DaemonConfig, rng: &mut StdRng) -> Daemon {
    let batch = [25, 200, 1000, 5000][rng.random_range(0..4)];
    let mut config = base
        .clone()
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", &batch.to_string())
        .with(
            "COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY",
            if rng.random_bool(0.7) { "0s" } else { "1s" },
        );
    if rng.random_bool(0.3) {
        config = config
            .with("COMPARTMENT_AUDIT_FILE_SINK_FSYNC", "interval")
            .with("COMPARTMENT_AUDIT_FILE_SINK_FSYNC_INTERVAL", "200ms");
    }
    config.spawn()
}

/// Restarts PostgreSQL: `fast` (sessions terminated, clean shutdown) or `immediate`
/// (a crash: recovery on start). Ends with the server up.
async fn restart_postgres(
    pg: Arc<PrivatePostgres>,
    pacing: Pacing,
    mut rng: StdRng,
    tally: Arc<FaultTally>,
    stop: CancellationToken,
) -> Result<(), String> {
    loop {
        if pause(pick(&mut rng, &pacing.pg_gap), &stop).await {
            return Ok(());
        }
        let immediate = rng.random_bool(0.5);
        let down = Duration::from_millis(pick(&mut rng, &pacing.pg_down));
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            if immediate {
                pg.stop_immediate();
            } else {
                pg.stop();
            }
            std::thread::sleep(down);
            pg.start_again();
        })
        .await
        .map_err(|e| format!("restarting PostgreSQL: {e}"))?;
        tally.add(FaultKind::PgRestart);
    }
}

/// Terminates the daemon's sessions: all of them, only the listener, or only the
/// pool's. Counted when at least one session was terminated.
async fn terminate_backends(
    url: String,
    pacing: Pacing,
    mut rng: StdRng,
    tally: Arc<FaultTally>,
    stop: CancellationToken,
) -> Result<(), String> {
    loop {
        if pause(pick(&mut rng, &pacing.terminate_gap), &stop).await {
            return Ok(());
        }
        let pattern = match rng.random_range(0..3) {
            0 => "compartment-auditd%",
            1 => "compartment-auditd-listener",
            _ => "compartment-auditd",
        };
        let Ok(client) = connect(&url).await else {
            continue; // The server is restarting.
        };
        let terminated = client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                 FROM pg_stat_activity WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(0);
        if terminated > 0 {
            tally.add(FaultKind::BackendTerminate);
        }
    }
}

/// Fills the sink's filesystem and frees it after a while. Ends with it free.
async fn fill_disk(
    tmpfs: Arc<Tmpfs>,
    pacing: Pacing,
    mut rng: StdRng,
    tally: Arc<FaultTally>,
    stop: CancellationToken,
) -> Result<(), String> {
    loop {
        if pause(pick(&mut rng, &pacing.disk_gap), &stop).await {
            return Ok(());
        }
        let t = tmpfs.clone();
        tokio::task::spawn_blocking(move || t.fill())
            .await
            .map_err(|e| format!("filling the disk: {e}"))?
            .map_err(|e| format!("filling the disk: {e}"))?;
        tally.add(FaultKind::DiskFull);
        // Held full even when asked to stop: the fault is undone below either way.
        let _ = pause(pick(&mut rng, &pacing.disk_full_for), &stop).await;
        tmpfs.free().map_err(|e| format!("freeing the disk: {e}"))?;
    }
}

/// Runs `compartment-auditd retention run` with the daemon's settings. Counted when it
/// succeeds (it fails while the database is down, as it should).
async fn run_retention(
    base: DaemonConfig,
    pacing: Pacing,
    mut rng: StdRng,
    tally: Arc<FaultTally>,
    stop: CancellationToken,
) -> Result<(), String> {
    loop {
        if pause(pick(&mut rng, &pacing.retention_gap), &stop).await {
            return Ok(());
        }
        let config = base.clone();
        let outcome = tokio::task::spawn_blocking(move || retention_once(&config))
            .await
            .map_err(|e| format!("running retention: {e}"))?;
        if let Some(log) = outcome {
            tally.add(FaultKind::RetentionRun);
            if log.contains("sessions=2") {
                tally.add(FaultKind::RetentionTwoSessions);
            }
        }
    }
}

/// The run's log when it succeeded.
fn retention_once(config: &DaemonConfig) -> Option<String> {
    let mut command = Command::new(bin());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("COMPARTMENT_DATABASE_URL", &config.database_url)
        .envs(&config.env)
        .args(["retention", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A few lines: the pipe never fills.
        .stderr(Stdio::piped());
    if let Some(dir) = &config.sink_dir {
        // The same configuration an operator's daemon has.
        command
            .env("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "true")
            .env("COMPARTMENT_AUDIT_FILE_SINK_DIR", dir);
    }
    let Ok(mut child) = command.spawn() else {
        return None;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                let mut log = String::new();
                let _ = child.stderr.take()?.read_to_string(&mut log);
                return Some(log);
            }
            Ok(Some(_)) => return None,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Keeps the rotation count current (rotated files are never deleted in this run).
async fn count_rotations(
    sink: PathBuf,
    tally: Arc<FaultTally>,
    stop: CancellationToken,
) -> Result<(), String> {
    loop {
        let n = rotated_bases(&sink).len();
        tally.set(FaultKind::Rotation, n as u64);
        if pause(1_000, &stop).await {
            return Ok(());
        }
    }
}

/// The distinct rotated files (`audit-X.ndjson` and `audit-X.ndjson.gz` are one).
fn rotated_bases(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("audit-"))
                .filter_map(|n| {
                    n.strip_suffix(".ndjson.gz")
                        .or_else(|| n.strip_suffix(".ndjson"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// The oracle

/// What the database says after the run.
struct Truth {
    /// Every committed row still in `audit_events`: id → row token (`target_id`).
    present: HashMap<i64, String>,
    /// Every row retention deleted: id → row token.
    deleted: HashMap<i64, String>,
    /// How many deleted rows were not expired, or belonged to an `indefinite`
    /// organization, and a few of them.
    deleted_early: (i64, Vec<String>),
}

/// Waits until the published position is at or after the last row in the table (in
/// commit order). Deleted rows are left out: one deleted before it was written can
/// never be reached (the oracle reports it missing), one deleted after was behind
/// the published position already.
async fn wait_caught_up(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no position read yet");
    while Instant::now() < deadline {
        if let Ok(client) = connect(url).await {
            let row = client
                .query_one(
                    "WITH last AS (SELECT tx, id FROM audit_events ORDER BY tx DESC, id DESC LIMIT 1) \
                 SELECT (SELECT tx::text FROM last), (SELECT id FROM last), \
                        (SELECT tx::text FROM audit_sink_positions LIMIT 1), \
                        (SELECT event_id FROM audit_sink_positions LIMIT 1)",
                    &[],
                )
                .await;
            if let Ok(row) = row {
                let parse = |v: Option<String>| v.and_then(|t| t.parse::<u64>().ok());
                let target = parse(row.get(0)).zip(row.get::<_, Option<i64>>(1));
                let at = parse(row.get(2)).zip(row.get::<_, Option<i64>>(3));
                match (target, at) {
                    (None, _) => return Ok(()),
                    (Some(target), Some(at)) if at >= target => return Ok(()),
                    (target, at) => last = format!("published {at:?}, last committed {target:?}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

async fn read_truth(url: &str) -> Result<Truth, String> {
    let client = connect(url).await?;
    let rows = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
            .collect::<HashMap<i64, String>>()
    };
    let present = client
        .query("SELECT id, target_id FROM audit_events", &[])
        .await
        .map(rows)
        .map_err(|e| e.to_string())?;
    let deleted = client
        .query("SELECT id, target_id FROM chaos_deleted", &[])
        .await
        .map(rows)
        .map_err(|e| e.to_string())?;
    let early = client
        .query(
            "SELECT d.id::text || ' (' || o.slug || ', occurred ' || d.occurred_at || ', deleted ' || d.deleted_at || ')', \
                    count(*) OVER () \
             FROM chaos_deleted d JOIN organizations o ON o.id = d.organization_id \
             WHERE o.audit_retention_mode = 'indefinite' \
                OR d.occurred_at >= d.deleted_at - make_interval(days => \
                       CASE o.audit_retention_mode WHEN 'days' THEN o.audit_retention_days ELSE $1 END) \
             ORDER BY d.id LIMIT 5",
            &[&INSTALL_RETENTION_DAYS],
        )
        .await
        .map_err(|e| e.to_string())?;
    let deleted_early = (
        early.first().map_or(0, |r| r.get::<_, i64>(1)),
        early.iter().map(|r| r.get(0)).collect(),
    );
    Ok(Truth {
        present,
        deleted,
        deleted_early,
    })
}

/// Compares the sink with the database and the writers' ledger; pushes every
/// violation to `problems`.
fn judge(
    truth: &Truth,
    sink: &SinkInspection,
    ledger: &Ledger,
    problems: &mut Vec<String>,
) -> Figures {
    let committed: HashMap<i64, &str> = truth
        .present
        .iter()
        .chain(truth.deleted.iter())
        .map(|(id, token)| (*id, token.as_str()))
        .collect();
    let mut counts: HashMap<i64, u32> = HashMap::with_capacity(sink.ids.len());
    let mut mismatched = Vec::new();
    for (id, token) in sink.ids.iter().zip(&sink.tokens) {
        *counts.entry(*id).or_default() += 1;
        if let Some(expected) = committed.get(id) {
            if token.as_deref() != Some(*expected) {
                mismatched.push(*id);
            }
        }
    }
    let mut missing: Vec<i64> = committed
        .keys()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    let mut duplicated: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let mut not_committed: Vec<i64> = counts
        .keys()
        .copied()
        .filter(|id| !committed.contains_key(id))
        .collect();
    missing.sort_unstable();
    duplicated.sort_unstable();
    not_committed.sort_unstable();
    let sample = |v: &[i64]| format!("{:?}", &v[..v.len().min(10)]);
    if !missing.is_empty() {
        problems.push(format!(
            "{} committed events missing from the sink, e.g. {}",
            missing.len(),
            sample(&missing)
        ));
    }
    if !duplicated.is_empty() {
        problems.push(format!(
            "{} events written more than once, e.g. {}",
            duplicated.len(),
            sample(&duplicated)
        ));
    }
    if !not_committed.is_empty() {
        problems.push(format!(
            "{} events in the sink were never committed, e.g. {}",
            not_committed.len(),
            sample(&not_committed)
        ));
    }
    let (early, examples) = &truth.deleted_early;
    if *early > 0 {
        problems.push(format!(
            "{early} events were deleted before they expired (or in an indefinite organization), e.g. {}",
            examples.join("; ")
        ));
    }
    if !mismatched.is_empty() {
        mismatched.sort_unstable();
        problems.push(format!(
            "{} lines carry an id whose committed row is a different one (wrong target_id), e.g. {}",
            mismatched.len(),
            sample(&mismatched)
        ));
    }
    let tokens: HashSet<&str> = committed.values().copied().collect();
    let acked = lock(&ledger.acked);
    let lost_acks: Vec<&String> = acked
        .iter()
        .filter(|t| !tokens.contains(t.as_str()))
        .collect();
    if !lost_acks.is_empty() {
        problems.push(format!(
            "{} rows of acknowledged commits are neither in the table nor in the deletion log, e.g. {:?}",
            lost_acks.len(),
            &lost_acks[..lost_acks.len().min(10)]
        ));
    }
    let never = lock(&ledger.never_committed);
    let sink_tokens: HashSet<&str> = sink.tokens.iter().flatten().map(String::as_str).collect();
    let resurrected: Vec<&String> = never
        .iter()
        .filter(|t| tokens.contains(t.as_str()) || sink_tokens.contains(t.as_str()))
        .collect();
    if !resurrected.is_empty() {
        problems.push(format!(
            "{} rows of rolled-back work exist in the table or the sink, e.g. {:?}",
            resurrected.len(),
            &resurrected[..resurrected.len().min(10)]
        ));
    }
    Figures {
        committed: committed.len(),
        written: sink.ids.len(),
        missing: missing.len(),
        duplicated: duplicated.len(),
        not_committed: not_committed.len(),
        deleted: truth.deleted.len(),
    }
}

/// Everything in a sink directory, checked file by file.
#[derive(Debug, Default)]
pub struct SinkInspection {
    /// The id of every line, oldest file first (a rotated file counted once even if
    /// both its plain and `.gz` forms exist).
    pub ids: Vec<i64>,
    /// The `target.id` of every line, parallel to `ids` (the chaos writers' row tokens).
    pub tokens: Vec<Option<String>>,
    /// Distinct rotated files.
    pub rotated: usize,
    /// Files holding lines (rotated and active).
    pub files: usize,
    /// `torn-*.fragment` files: torn tails cut off at start-up.
    pub fragments: usize,
    /// Temp files (`.…tmp`) left behind.
    pub temp_files: usize,
    /// Bytes of all files.
    pub bytes: u64,
    /// Everything wrong: a torn line, a bad gzip, an unparsable line, a loose mode,
    /// a symlink, a foreign file, a plain/gz pair that differ, the planted secret.
    pub problems: Vec<String>,
}

/// Reads and checks every file in `dir`; never panics on what it finds.
pub fn inspect_sink(dir: &Path, secret: &str) -> SinkInspection {
    use compartment_auditd::sink::{ACTIVE, ACTIVE_META, LOCK, STATE};
    let mut out = SinkInspection::default();
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o077 == 0 => {}
        Ok(meta) => out.problems.push(format!(
            "the sink directory is not an owner-only directory (mode {:o})",
            meta.permissions().mode()
        )),
        Err(e) => {
            out.problems
                .push(format!("cannot stat the sink directory: {e}"));
            return out;
        }
    }
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) => {
            out.problems.push(format!("cannot list the sink: {e}"));
            return out;
        }
    };
    names.sort();
    let mut rotated: Vec<String> = Vec::new();
    for name in &names {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                out.problems.push(format!("{name} is a symlink"))
            }
            Ok(meta) => {
                out.bytes += meta.len();
                if meta.permissions().mode() & 0o077 != 0 {
                    out.problems.push(format!(
                        "{name} is not owner-only (mode {:o})",
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
            Err(e) => out.problems.push(format!("cannot stat {name}: {e}")),
        }
        if name.starts_with("audit-") && (name.ends_with(".ndjson") || name.ends_with(".ndjson.gz"))
        {
            let base = name.trim_end_matches(".gz").to_owned();
            if rotated.last() != Some(&base) {
                rotated.push(base);
            }
        } else if name.starts_with("torn-") && name.ends_with(".fragment") {
            out.fragments += 1;
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            out.temp_files += 1;
        } else if ![ACTIVE, ACTIVE_META, LOCK, STATE].contains(&name.as_str()) {
            out.problems
                .push(format!("unexpected file {name} in the sink"));
        }
    }
    out.rotated = rotated.len();
    // Rotated names sort in time order; the active file is the newest.
    for base in rotated {
        let gz = dir.join(format!("{base}.gz"));
        let plain = dir.join(&base);
        let text = match std::fs::read(&gz) {
            Ok(raw) => match gunzip_whole(&raw) {
                Ok(text) => {
                    if let Ok(plain_text) = std::fs::read(&plain) {
                        if plain_text != text {
                            out.problems.push(format!(
                                "{base} and {base}.gz both exist with different content"
                            ));
                        }
                    }
                    text
                }
                Err(e) => {
                    out.problems
                        .push(format!("{base}.gz is not whole gzip: {e}"));
                    continue;
                }
            },
            Err(_) => match std::fs::read(&plain) {
                Ok(text) => text,
                Err(e) => {
                    out.problems.push(format!("cannot read {base}: {e}"));
                    continue;
                }
            },
        };
        read_lines(&base, &text, secret, &mut out);
    }
    match std::fs::read(dir.join(ACTIVE)) {
        Ok(text) => read_lines(ACTIVE, &text, secret, &mut out),
        Err(e) => out.problems.push(format!("cannot read {ACTIVE}: {e}")),
    }
    out
}

/// Decodes one gzip member and insists nothing follows it.
fn gunzip_whole(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut decoder = flate2::read::GzDecoder::new(raw);
    let mut text = Vec::new();
    decoder.read_to_end(&mut text).map_err(|e| e.to_string())?;
    let rest = decoder.into_inner();
    if !rest.is_empty() {
        return Err(format!("{} bytes after the gzip member", rest.len()));
    }
    Ok(text)
}

fn read_lines(name: &str, text: &[u8], secret: &str, out: &mut SinkInspection) {
    #[derive(serde::Deserialize)]
    struct Target {
        id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Line {
        id: i64,
        target: Option<Target>,
    }
    out.files += 1;
    if text.is_empty() {
        return;
    }
    if text.last() != Some(&b'\n') {
        out.problems.push(format!("{name} ends in a torn line"));
    }
    if memchr_str(text, secret.as_bytes()) {
        out.problems
            .push(format!("{name} contains the planted secret"));
    }
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(line) {
            Ok(l) => {
                out.ids.push(l.id);
                out.tokens.push(l.target.and_then(|t| t.id));
            }
            Err(e) => out
                .problems
                .push(format!("{name} line {}: not a sink line: {e}", n + 1)),
        }
    }
}

fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The last `n` lines of `text`, on one line.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
