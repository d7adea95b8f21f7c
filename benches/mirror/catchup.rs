//! Catch-up: a backlog of existing events mirrored to an empty sink, against `psql`
//! running `COPY (SELECT row_to_json(e) …) TO STDOUT` into a file on the same database.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use crate::daemon::{cpu_ticks, ticks_to_seconds, Daemon, DaemonSpec, ProcSample};
use crate::pg::{self, BenchDatabase};
use crate::report::{mib, ratio, verdict, Table};
use crate::{data, progress, Context};

/// Peak RSS the daemon must stay under while catching up.
const RSS_TARGET_KIB: u64 = 64 * 1024;

/// What to run.
pub struct Config {
    /// Events in the backlog.
    pub events: u64,
    /// Rounds; the best of each variant is reported.
    pub rounds: usize,
    /// Daemon configurations to try; the first should be the defaults.
    pub variants: Vec<Variant>,
}

/// A daemon configuration for the catch-up: batch size and fsync policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// `mirror.batch_size`.
    pub batch_size: usize,
    /// `file_sink.fsync`: `always` (the default), `interval` or `never`.
    pub fsync: &'static str,
}

impl Variant {
    /// The shipped defaults.
    pub const DEFAULT: Variant = Variant {
        batch_size: 1000,
        fsync: "always",
    };

    /// `SIZE` or `SIZE/POLICY`, e.g. `5000` or `1000/interval`.
    pub fn parse(text: &str) -> Result<Variant, String> {
        let (size, fsync) = text.split_once('/').unwrap_or((text, "always"));
        let batch_size = size
            .parse()
            .map_err(|_| format!("{size:?} is not a batch size"))?;
        let fsync = ["always", "interval", "never"]
            .into_iter()
            .find(|p| *p == fsync)
            .ok_or_else(|| format!("{fsync:?} is not an fsync policy (always, interval, never)"))?;
        Ok(Variant { batch_size, fsync })
    }

    fn label(&self) -> String {
        let fsync = match self.fsync {
            "always" => "fsync per batch".to_string(),
            "interval" => "fsync every 1 s".to_string(),
            other => format!("fsync {other}"),
        };
        let default = if *self == Variant::DEFAULT {
            " (defaults)"
        } else {
            ""
        };
        format!(
            "compartment-auditd, batch {}, {fsync}{default}",
            self.batch_size
        )
    }

    fn slug(&self) -> String {
        format!("{}-{}", self.batch_size, self.fsync)
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// From start until every event is out.
    pub(crate) wall: Duration,
    /// CPU seconds of the client process (psql or the daemon).
    pub(crate) client_cpu: f64,
    /// CPU seconds of the PostgreSQL backends serving it.
    pub(crate) server_cpu: f64,
    /// Peak RSS (daemon), KiB.
    hwm_kib: Option<u64>,
    /// Bytes written.
    bytes: u64,
}

/// Runs the scenario and prints its table.
pub async fn run(ctx: &Context, db: &BenchDatabase, config: &Config) -> anyhow::Result<()> {
    let client = pg::connect(&db.url).await?;
    progress(format!("Catch-up: loading {} events", config.events));
    let started = Instant::now();
    data::load(&client, config.events).await?;
    progress(format!(
        "Loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // Both contenders read a warm table: one unmeasured COPY fills the caches.
    progress("Catch-up: warming up (one unmeasured COPY)");
    copy(ctx, db, config.events)?;

    let mut copies = Vec::new();
    let mut mirrors: Vec<Vec<Sample>> = vec![Vec::new(); config.variants.len()];
    for round in 1..=config.rounds {
        let sample = copy(ctx, db, config.events)?;
        progress(format!(
            "Catch-up round {round}/{}: COPY {:.2} s",
            config.rounds,
            sample.wall.as_secs_f64()
        ));
        copies.push(sample);
        for (i, variant) in config.variants.iter().enumerate() {
            let sample = mirror(ctx, &db.url, &client, config.events, *variant, round, &[]).await?;
            progress(format!(
                "Catch-up round {round}/{}: {}: {:.2} s, peak RSS {} MiB",
                config.rounds,
                variant.label(),
                sample.wall.as_secs_f64(),
                mib(sample.hwm_kib.unwrap_or(0))
            ));
            mirrors[i].push(sample);
        }
    }

    let best = |samples: &[Sample]| {
        samples
            .iter()
            .copied()
            .min_by_key(|s| s.wall)
            .expect("every variant ran at least one round")
    };
    let baseline = best(&copies);
    let mut table = Table::new(
        format!(
            "Catch-up: {} existing events to an empty sink (best of {})",
            config.events, config.rounds
        ),
        &[
            "contender",
            "wall s",
            "events/s",
            "MiB/s written",
            "avg line B",
            "time vs COPY",
            "client CPU s",
            "server CPU s",
            "total CPU s",
            "peak RSS MiB",
        ],
    );
    let row = |name: String, s: Sample, worst_hwm: Option<u64>| {
        let wall = s.wall.as_secs_f64();
        vec![
            name,
            format!("{wall:.2}"),
            format!("{:.0}", config.events as f64 / wall),
            format!("{:.1}", s.bytes as f64 / wall / (1024.0 * 1024.0)),
            format!("{:.0}", s.bytes as f64 / config.events as f64),
            ratio(wall / baseline.wall.as_secs_f64()),
            format!("{:.2}", s.client_cpu),
            format!("{:.2}", s.server_cpu),
            format!("{:.2}", s.client_cpu + s.server_cpu),
            worst_hwm.map_or("-".into(), mib),
        ]
    };
    table.row(row(
        "psql COPY row_to_json > file (baseline)".into(),
        baseline,
        None,
    ));
    // The targets are judged on the shipped defaults; the other variants show what
    // changing them would buy.
    let mut default_fast = None;
    let mut default_small = None;
    for (variant, samples) in config.variants.iter().zip(&mirrors) {
        let s = best(samples);
        let worst_hwm = samples.iter().filter_map(|s| s.hwm_kib).max();
        if *variant == Variant::DEFAULT {
            default_fast = Some(s.wall <= baseline.wall);
            default_small = worst_hwm.map(|h| h < RSS_TARGET_KIB);
        }
        table.row(row(variant.label(), s, worst_hwm));
    }
    let rounds = |samples: &[Sample]| {
        samples
            .iter()
            .map(|s| format!("{:.2}", s.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.note(
        "Wall time: psql from start to exit; the daemon from start until `events_mirrored_total` reaches the count. \
         CPU from /proc/PID/stat of the client and of its PostgreSQL backend(s), of the best round. \
         Peak RSS: the largest `VmHWM` of any round."
            .to_string(),
    );
    table.note(format!("All rounds, COPY: {} s", rounds(&copies)));
    for (variant, samples) in config.variants.iter().zip(&mirrors) {
        table.note(format!(
            "All rounds, batch {} / fsync {}: {} s",
            variant.batch_size,
            variant.fsync,
            rounds(samples)
        ));
    }
    let judged =
        |v: Option<bool>| v.map_or("not measured (defaults not among the variants)", verdict);
    table.note(format!(
        "Target \"at least as fast as COPY\" (defaults): {}. Target \"peak RSS < 64 MiB\" (defaults): {}.",
        judged(default_fast),
        judged(default_small)
    ));
    table.print();
    Ok(())
}

/// `psql -c "COPY (SELECT row_to_json(e) FROM audit_events e ORDER BY tx, id) TO STDOUT" > file`
fn copy(ctx: &Context, db: &BenchDatabase, events: u64) -> anyhow::Result<Sample> {
    let path = ctx.work.join("copy.ndjson");
    let out = std::fs::File::create(&path).context("creating the COPY output file")?;
    let started = Instant::now();
    let mut psql = Command::new("psql")
        .arg(&db.url)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "COPY (SELECT row_to_json(e) FROM audit_events e ORDER BY tx, id) TO STDOUT",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .spawn()
        .context("running psql")?;
    // The CPU of psql and of its backend, read until each is gone (5 ms resolution).
    let (mut client_ticks, mut server_ticks, mut backend) = (0, 0, None);
    let status = loop {
        if let Some(ticks) = cpu_ticks(psql.id()) {
            client_ticks = ticks;
        }
        if backend.is_none() {
            backend = find_copy_backend(&db.name);
        }
        if let Some(ticks) = backend.and_then(cpu_ticks) {
            server_ticks = ticks;
        }
        if let Some(status) = psql.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed();
    ensure!(status.success(), "psql COPY failed: {status}");
    let (lines, bytes) = count_lines(&path, false)?;
    ensure!(
        lines == events,
        "COPY wrote {lines} lines, expected {events}"
    );
    std::fs::remove_file(&path)?;
    Ok(Sample {
        wall,
        client_cpu: ticks_to_seconds(client_ticks),
        server_cpu: ticks_to_seconds(server_ticks),
        hwm_kib: None,
        bytes,
    })
}

/// The backend running our COPY, by its process title
/// (`postgres: [CLUSTER: ]USER DATABASE HOST(PORT) COPY`): only the benchmark uses
/// its database.
fn find_copy_backend(database: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let title = std::fs::read(entry.path().join("cmdline")).ok()?;
            let title = String::from_utf8_lossy(&title);
            let mut words = title.split(['\0', ' ']).filter(|w| !w.is_empty());
            (words.next() == Some("postgres:")
                && words.clone().any(|w| w == database)
                && words.any(|w| w == "COPY"))
            .then_some(pid)
        })
}

/// The daemon from start until `events_mirrored_total` reaches `events`, with
/// `extra` settings (the TLS comparison's).
pub(crate) async fn mirror(
    ctx: &Context,
    url: &str,
    client: &tokio_postgres::Client,
    events: u64,
    variant: Variant,
    round: usize,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Sample> {
    let tag = if extra.is_empty() { "" } else { "-tls" };
    let dir = ctx
        .work
        .join(format!("catchup-{}{tag}-r{round}", variant.slug()));
    std::fs::create_dir_all(&dir)?;
    let sink = dir.join("sink");
    // A sink id of its own: a new sink must not resume from another run's position.
    let sink_id = format!("bench-catchup-{}{tag}-{round}", variant.slug());
    let started = Instant::now();
    let mut env = vec![
        ("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning".into()),
        ("COMPARTMENT_AUDIT_FILE_SINK_ID", sink_id.clone()),
        (
            "COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE",
            variant.batch_size.to_string(),
        ),
        (
            "COMPARTMENT_AUDIT_FILE_SINK_FSYNC",
            variant.fsync.to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    let mut daemon = Daemon::spawn(DaemonSpec {
        bin: &ctx.bin,
        database_url: url,
        sink_dir: &sink,
        log: dir.join("daemon.log"),
        overrides: &ctx.settings,
        env,
    })?;
    let timeout = Duration::from_secs(600);
    let (wall, proc) = loop {
        daemon.check_running()?;
        let done = daemon
            .metrics()
            .and_then(|m| m.get("compartment_audit_events_mirrored_total"))
            .is_some_and(|n| n >= events as f64);
        if done {
            let wall = started.elapsed();
            break (wall, ProcSample::read(daemon.pid())?);
        }
        if started.elapsed() > timeout {
            bail!("the daemon did not mirror {events} events within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The daemon's backends (pool and listener) live as long as it does.
    let mut server_ticks = 0;
    for row in client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'compartment-auditd%'",
            &[],
        )
        .await?
    {
        let pid: i32 = row.try_get(0)?;
        server_ticks += u32::try_from(pid).ok().and_then(cpu_ticks).unwrap_or(0);
    }
    daemon.stop()?;
    let (lines, bytes) = count_sink(&sink)?;
    ensure!(
        lines == events,
        "the sink holds {lines} lines, expected {events} (see {})",
        dir.display()
    );
    std::fs::remove_dir_all(&dir)?;
    client
        .execute(
            "DELETE FROM audit_sink_positions WHERE sink_id = $1",
            &[&sink_id],
        )
        .await?;
    Ok(Sample {
        wall,
        client_cpu: ticks_to_seconds(proc.cpu_ticks),
        server_cpu: ticks_to_seconds(server_ticks),
        hwm_kib: Some(proc.hwm_kib),
        bytes,
    })
}

/// Lines and bytes (uncompressed) in a sink directory: rotated files (plain or
/// gzip, whichever is complete) and the active file.
fn count_sink(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("audit") && (n.ends_with(".ndjson") || n.ends_with(".ndjson.gz")))
        .collect();
    names.sort();
    let (mut lines, mut bytes) = (0, 0);
    for name in &names {
        // A rotated file and its finished .gz may both exist for a moment: count one.
        if !name.ends_with(".gz") && names.contains(&format!("{name}.gz")) {
            continue;
        }
        let (l, b) = count_lines(&dir.join(name), name.ends_with(".gz"))?;
        lines += l;
        bytes += b;
    }
    Ok((lines, bytes))
}

/// Newlines and bytes in a file, decompressing gzip.
fn count_lines(path: &Path, gzip: bool) -> anyhow::Result<(u64, u64)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(file)
    };
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((lines, bytes));
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}
