//! Live: writers commit single-event transactions as fast as they can; the daemon
//! and `pg_recvlogical` + wal2json follow the same table side by side, on a private
//! PostgreSQL instance with `wal_level=logical`.
//!
//! Latency is measured end to end in this process, with one clock: each writer notes
//! `Instant::now()` when its `INSERT … RETURNING id` (autocommit) returns, i.e. after
//! the commit; a tail loop per output file notes when that id's line appears
//! (visible to a collector). For the daemon, "visible" precedes "durable" by one
//! fsync: the daemon's own `mirror_lag_seconds` histogram (occurred_at, i.e.
//! transaction start, to fsync done: an upper bound of commit-to-durable) and its
//! fsync histogram are reported next to it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::daemon::{self, Daemon, DaemonSpec, ProcSample};
use crate::follow::{Follower, Format};
use crate::pg::{self, PrivatePostgres};
use crate::report::{ms, quantile, ratio, slope, verdict, Table};
use crate::{data, progress, Context};

/// p99 commit-to-durable latency the daemon must stay under.
const P99_TARGET: f64 = 0.050;

/// What to run.
pub struct Config {
    /// How long the writers write.
    pub window: Duration,
    /// Concurrent writers.
    pub writers: usize,
    /// The daemon's fsync policies to run with, one live run each (`always` is the
    /// default; `interval` comes closest to pg_recvlogical's own fsync every 10 s).
    pub fsync: Vec<&'static str>,
}

/// One point of the backlog time series.
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Seconds since the writers started.
    t: f64,
    /// Transactions committed so far (as far as the writers know).
    committed: u64,
    /// Events the daemon reports durable.
    durable: u64,
    /// Lines visible in the daemon's sink.
    sink: u64,
    /// Lines visible in pg_recvlogical's file.
    wal: u64,
}

/// Runs the scenario and prints its tables.
pub async fn run(ctx: &Context, config: &Config) -> anyhow::Result<()> {
    for fsync in &config.fsync {
        run_once(ctx, config, fsync).await?;
    }
    Ok(())
}

/// One live run on a fresh private instance, the daemon with fsync policy `fsync`.
async fn run_once(ctx: &Context, config: &Config, fsync: &str) -> anyhow::Result<()> {
    progress(format!(
        "Live (fsync {fsync}): starting a private PostgreSQL instance with wal_level=logical"
    ));
    let server = PrivatePostgres::start()?;
    let url = server.create_database("bench_live", &ctx.bin).await?;
    let client = pg::connect(&url).await?;
    data::prepare(&client).await?;
    let dir = ctx.work.join(format!("live-{fsync}"));
    std::fs::create_dir_all(&dir)?;

    // pg_recvlogical + wal2json, as its documentation suggests running it.
    let wal_file = dir.join("wal2json.ndjson");
    let status = Command::new("pg_recvlogical")
        .args([
            "-d",
            &url,
            "--slot",
            "bench_wal2json",
            "--create-slot",
            "-P",
            "wal2json",
        ])
        .stdin(Stdio::null())
        .status()
        .context("running pg_recvlogical --create-slot (is postgresql-15-wal2json installed?)")?;
    anyhow::ensure!(status.success(), "pg_recvlogical --create-slot failed");
    let mut recv = KillOnDrop(
        Command::new("pg_recvlogical")
            .args(["-d", &url, "--slot", "bench_wal2json", "--start", "-f"])
            .arg(&wal_file)
            .args([
                "-o",
                "format-version=2",
                "-o",
                "include-transaction=false",
                "-o",
                "add-tables=public.audit_events",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pg_recvlogical.log"))?)
            .spawn()
            .context("starting pg_recvlogical")?,
    );

    // The daemon with every default (start_from=now, batch 1000, fsync per batch).
    let mut daemon = Daemon::spawn(DaemonSpec {
        bin: &ctx.bin,
        database_url: &url,
        sink_dir: &dir.join("sink"),
        log: dir.join("daemon.log"),
        overrides: &ctx.settings,
        env: vec![("COMPARTMENT_AUDIT_FILE_SINK_FSYNC", fsync.to_string())],
    })?;
    daemon.wait_ready(Duration::from_secs(30))?;
    wait_streaming(&client, &mut recv.0).await?;

    let sink_follower = Follower::spawn(dir.join("sink").join("audit.ndjson"), Format::Sink);
    let wal_follower = Follower::spawn(wal_file.clone(), Format::Wal2json);
    let before = daemon.metrics().context("scraping /metrics")?;
    let cost_before = costs(&client, daemon.pid(), recv.0.id()).await?;

    progress(format!(
        "Live: {} writers for {} s",
        config.writers,
        config.window.as_secs()
    ));
    let committed = Arc::new(AtomicU64::new(0));
    let sequence = Arc::new(AtomicI64::new(1));
    let started = Instant::now();
    let deadline = started + config.window;
    let writers: Vec<_> = (0..config.writers)
        .map(|_| {
            let url = url.clone();
            let committed = committed.clone();
            let sequence = sequence.clone();
            tokio::spawn(async move { writer(&url, deadline, &committed, &sequence).await })
        })
        .collect();

    // Sample the backlog on a plain thread: scraping /metrics blocks.
    let port = daemon.port;
    let seen_sink = sink_follower.counter();
    let seen_wal = wal_follower.counter();
    let sampler_committed = committed.clone();
    let sampler = tokio::task::spawn_blocking(move || {
        let mut points = Vec::new();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            let durable = daemon::metrics(port)
                .and_then(|m| m.get("compartment_audit_events_mirrored_total"))
                .unwrap_or(0.0) as u64;
            points.push(Point {
                t: started.elapsed().as_secs_f64(),
                committed: sampler_committed.load(Ordering::Relaxed),
                durable,
                sink: seen_sink.load(Ordering::Relaxed),
                wal: seen_wal.load(Ordering::Relaxed),
            });
        }
        points
    });

    let mut commits = Vec::new();
    for writer in writers {
        commits.extend(writer.await.context("a writer panicked")??);
    }
    let stopped = Instant::now();
    let points = sampler.await.context("the sampler panicked")?;
    let total = commits.len() as u64;
    let window = stopped.duration_since(started).as_secs_f64();
    progress(format!(
        "Live: {total} events committed in {window:.1} s; waiting for both to finish"
    ));

    // Drain: how long after the last commit each consumer has everything.
    let mut drained_sink = None;
    let mut drained_wal = None;
    let mut drained_durable = None;
    while drained_sink.is_none() || drained_wal.is_none() || drained_durable.is_none() {
        let now = stopped.elapsed();
        if drained_sink.is_none() && sink_follower.seen() >= total {
            drained_sink = Some(now);
        }
        if drained_wal.is_none() && wal_follower.seen() >= total {
            drained_wal = Some(now);
        }
        if drained_durable.is_none()
            && daemon
                .metrics()
                .and_then(|m| m.get("compartment_audit_events_mirrored_total"))
                .is_some_and(|n| n >= total as f64)
        {
            drained_durable = Some(now);
        }
        if now > Duration::from_secs(120) {
            bail!(
                "not everything arrived within 120 s of the last commit: sink {} / wal2json {} of {total}",
                sink_follower.seen(),
                wal_follower.seen()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = daemon.metrics().context("scraping /metrics")?;
    let cost_after = costs(&client, daemon.pid(), recv.0.id()).await?;
    daemon.stop()?;
    drop(recv);
    let sink_seen = sink_follower.finish();
    let wal_seen = wal_follower.finish();

    // Per-event latency.
    let sink_latency = latencies(&commits, &sink_seen);
    let wal_latency = latencies(&commits, &wal_seen);

    let mut table = Table::new(
        format!(
            "Live, daemon fsync {fsync}: {} writers, single-event transactions, {window:.0} s — commit → line visible in the file",
            config.writers
        ),
        &[
            "consumer",
            "events",
            "events/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "missing",
            "dup",
            "drain s",
            "p99 vs wal2json",
        ],
    );
    let wal_p99 = quantile(&wal_latency.sorted, 0.99).unwrap_or(f64::NAN);
    let daemon_label = format!(
        "compartment-auditd ({}{})",
        if fsync == "always" {
            "defaults: fsync per batch"
        } else if fsync == "interval" {
            "fsync every 1 s"
        } else {
            "fsync never"
        },
        if ctx.settings.is_empty() {
            ""
        } else {
            ", --set"
        }
    );
    let lat_row = |name: &str, l: &Latency, drained: Option<Duration>| {
        let q = |p| quantile(&l.sorted, p).map_or("-".into(), ms);
        vec![
            name.to_string(),
            l.sorted.len().to_string(),
            format!("{:.0}", l.in_window(stopped) as f64 / window),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            q(1.0),
            l.missing.to_string(),
            l.duplicates.to_string(),
            drained.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
            ratio(quantile(&l.sorted, 0.99).unwrap_or(f64::NAN) / wal_p99),
        ]
    };
    table.row(lat_row(
        "pg_recvlogical + wal2json (baseline)",
        &wal_latency,
        drained_wal,
    ));
    table.row(lat_row(&daemon_label, &sink_latency, drained_sink));
    let lag = daemon::histogram_delta(&before, &after, "compartment_audit_mirror_lag_seconds");
    let fsync_durations = daemon::histogram_delta(
        &before,
        &after,
        "compartment_audit_sink_fsync_duration_seconds",
    );
    let lag_p99 = daemon::histogram_quantile_bound(&lag, 0.99);
    let lag_within = daemon::histogram_fraction_at_most(&lag, P99_TARGET);
    let fsync_p99 = daemon::histogram_quantile_bound(&fsync_durations, 0.99);
    let bound = |b: Option<f64>| b.map_or("-".into(), |b| format!("≤ {} ms", ms(b)));
    table.note(format!(
        "events/s: events visible before the writers stopped ÷ window; committed {:.0}/s. \
         drain: from the last commit until the consumer had every event \
         (daemon, by events_mirrored_total: {}).",
        total as f64 / window,
        drained_durable.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
    ));
    let counter = |m: &daemon::Metrics, name: &str| m.get(name).unwrap_or(0.0);
    let batches = counter(&after, "compartment_audit_mirror_batches_total")
        - counter(&before, "compartment_audit_mirror_batches_total");
    let notifications = counter(&after, "compartment_audit_listener_notifications_total")
        - counter(&before, "compartment_audit_listener_notifications_total");
    table.note(format!(
        "Daemon: {batches:.0} batches ({:.2} events per batch), {notifications:.0} notifications.",
        total as f64 / batches.max(1.0)
    ));
    table.note(format!(
        "Daemon's own histograms over the window: mirror_lag_seconds (transaction start → batch appended{}) \
         p99 {}, {:.2}% within 50 ms; sink_fsync_duration_seconds p99 {}.",
        if fsync == "always" { " and fsync'd" } else { ", not yet fsync'd" },
        bound(lag_p99),
        lag_within.unwrap_or(0.0) * 100.0,
        bound(fsync_p99)
    ));
    let sink_p99 = quantile(&sink_latency.sorted, 0.99).unwrap_or(f64::INFINITY);
    let durable_p99_ok = lag_p99.is_some_and(|b| b <= P99_TARGET);
    let durable_verdict = if fsync == "always" {
        verdict(sink_p99 < P99_TARGET && durable_p99_ok)
    } else {
        "not applicable (lines become durable within the fsync interval)"
    };
    table.note(format!(
        "Target \"p99 commit-to-durable < 50 ms\": {durable_verdict} (visible p99 {} ms; lag histogram p99 bound {}). \
         Target \"latency no worse than wal2json\" (p99 visible): {}.",
        ms(sink_p99),
        bound(lag_p99),
        verdict(sink_p99 <= wal_p99)
    ));
    table.print();

    backlog_table(&points, window, total, fsync).print();
    cost_table(&cost_before, &cost_after, total, fsync).print();
    Ok(())
}

/// One writer: `INSERT … RETURNING id` in autocommit, as fast as it can, until
/// `deadline`; returns `(id, commit returned)` per event.
pub(crate) async fn writer(
    url: &str,
    deadline: Instant,
    committed: &AtomicU64,
    sequence: &AtomicI64,
) -> anyhow::Result<Vec<(i64, Instant)>> {
    let client = pg::connect(&format!("{url}?application_name=bench-writer")).await?;
    let insert = client.prepare(data::INSERT_ONE).await?;
    let mut out = Vec::with_capacity(100_000);
    while Instant::now() < deadline {
        let g = sequence.fetch_add(1, Ordering::Relaxed);
        let row = client.query_one(&insert, &[&g]).await?;
        let at = Instant::now();
        out.push((row.try_get(0)?, at));
        committed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(out)
}

/// Waits until pg_recvlogical's walsender streams.
async fn wait_streaming(client: &tokio_postgres::Client, recv: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = recv.try_wait()? {
            bail!("pg_recvlogical exited: {status}");
        }
        let streaming: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await?
            .try_get(0)?;
        if streaming > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pg_recvlogical did not start streaming within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Latencies of one consumer.
pub(crate) struct Latency {
    /// Seconds from commit to visible, sorted; may dip below zero by scheduling
    /// noise (a line can be seen before the writer task notes its commit).
    pub(crate) sorted: Vec<f64>,
    /// Seen-at of every event, to count what arrived inside the window.
    seen_at: Vec<Instant>,
    /// Committed events never seen.
    pub(crate) missing: usize,
    /// Events seen more than once.
    pub(crate) duplicates: usize,
}

impl Latency {
    fn in_window(&self, stopped: Instant) -> usize {
        self.seen_at.iter().filter(|at| **at <= stopped).count()
    }
}

pub(crate) fn latencies(commits: &[(i64, Instant)], seen: &[(i64, Instant)]) -> Latency {
    let mut first: HashMap<i64, Instant> = HashMap::with_capacity(seen.len());
    let mut duplicates = 0;
    for (id, at) in seen {
        if first.insert(*id, *at).is_some() {
            duplicates += 1;
        }
    }
    let mut sorted = Vec::with_capacity(commits.len());
    let mut seen_at = Vec::with_capacity(commits.len());
    let mut missing = 0;
    for (id, committed) in commits {
        match first.get(id) {
            Some(at) => {
                let latency = if at >= committed {
                    at.duration_since(*committed).as_secs_f64()
                } else {
                    -committed.duration_since(*at).as_secs_f64()
                };
                sorted.push(latency);
                seen_at.push(*at);
            }
            None => missing += 1,
        }
    }
    sorted.sort_by(f64::total_cmp);
    Latency {
        sorted,
        seen_at,
        missing,
        duplicates,
    }
}

/// Does the backlog (committed − delivered) grow over the window?
fn backlog_table(points: &[Point], window: f64, total: u64, fsync: &str) -> Table {
    let rate = total as f64 / window;
    let mut table = Table::new(
        format!("Live, daemon fsync {fsync}: backlog (committed − delivered) sampled every 250 ms"),
        &[
            "consumer",
            "mean, 1st third",
            "mean, last third",
            "max",
            "trend events/s",
            "trend ÷ commit rate",
            "keeps up",
        ],
    );
    let third = (points.len() / 3).max(1);
    let mut add = |name: &str, delivered: fn(&Point) -> u64| {
        let backlog: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.t, p.committed.saturating_sub(delivered(p)) as f64))
            .collect();
        let mean = |s: &[(f64, f64)]| s.iter().map(|p| p.1).sum::<f64>() / s.len().max(1) as f64;
        let first = mean(&backlog[..third.min(backlog.len())]);
        let last = mean(&backlog[backlog.len().saturating_sub(third)..]);
        let max = backlog.iter().map(|p| p.1).fold(0.0, f64::max);
        let trend = slope(&backlog).unwrap_or(0.0);
        // Keeping up: the backlog does not trend upwards by more than 1% of the
        // commit rate (noise on a shared machine) and its end is not far above its
        // start.
        let keeps_up = trend <= 0.01 * rate && last <= first.max(1.0) * 2.0 + 0.05 * rate;
        table.row(vec![
            name.to_string(),
            format!("{first:.1}"),
            format!("{last:.1}"),
            format!("{max:.0}"),
            format!("{trend:+.2}"),
            format!("{:+.3}%", trend / rate * 100.0),
            verdict(keeps_up).to_string(),
        ]);
    };
    add("pg_recvlogical + wal2json (visible)", |p| p.wal);
    add("compartment-auditd (visible)", |p| p.sink);
    add("compartment-auditd (events_mirrored_total)", |p| p.durable);
    table.note(format!(
        "Commit rate {rate:.0} events/s. Keeps up: trend ≤ 1% of the commit rate and the last third's \
         mean backlog at most twice the first third's (plus 50 ms of commits)."
    ));
    table
}

/// CPU used by each side, client and server processes, per 1,000 events.
#[derive(Debug, Default, Clone)]
struct Costs {
    /// (label, pid) → CPU ticks.
    ticks: HashMap<(&'static str, u32), u64>,
}

async fn costs(client: &tokio_postgres::Client, daemon: u32, recv: u32) -> anyhow::Result<Costs> {
    let mut out = Costs::default();
    let mut add = |label, pid| {
        if let Ok(s) = ProcSample::read(pid) {
            out.ticks.insert((label, pid), s.cpu_ticks);
        }
    };
    add("daemon", daemon);
    add("recv", recv);
    for row in client
        .query(
            "SELECT pid, coalesce(application_name, ''), backend_type FROM pg_stat_activity \
             WHERE datname = current_database()",
            &[],
        )
        .await?
    {
        let pid: i32 = row.try_get(0)?;
        let app: String = row.try_get(1)?;
        let kind: String = row.try_get(2)?;
        let label = if kind == "walsender" {
            "recv-server"
        } else if app.starts_with("compartment-auditd") {
            "daemon-server"
        } else {
            continue;
        };
        add(label, u32::try_from(pid)?);
    }
    Ok(out)
}

fn cost_table(before: &Costs, after: &Costs, events: u64, fsync: &str) -> Table {
    let used = |label: &str| -> f64 {
        after
            .ticks
            .iter()
            .filter(|((l, _), _)| *l == label)
            .map(|(key, t)| t.saturating_sub(before.ticks.get(key).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / 100.0
    };
    let mut table = Table::new(
        format!(
            "Live, daemon fsync {fsync}: CPU seconds over the window (client process + its PostgreSQL backends)"
        ),
        &[
            "consumer",
            "client CPU s",
            "server CPU s",
            "total",
            "ms per 1,000 events",
        ],
    );
    let mut add = |name: &str, client: f64, server: f64| {
        table.row(vec![
            name.to_string(),
            format!("{client:.2}"),
            format!("{server:.2}"),
            format!("{:.2}", client + server),
            format!(
                "{:.1}",
                (client + server) * 1000.0 / (events as f64 / 1000.0)
            ),
        ]);
    };
    add(
        "pg_recvlogical + wal2json (walsender)",
        used("recv"),
        used("recv-server"),
    );
    add(
        "compartment-auditd (pool + listener backends)",
        used("daemon"),
        used("daemon-server"),
    );
    table.note("CPU from /proc/PID/stat (10 ms ticks); PostgreSQL backends found through pg_stat_activity.");
    table
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
