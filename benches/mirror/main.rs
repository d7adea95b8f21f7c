//! End-to-end performance of the mirror (issue 4, "Performance"), against baselines
//! measured in the same run:
//!
//! 1. **catch-up** — a backlog of existing events mirrored to an empty sink
//!    (`start_from=beginning`, fsync per batch) vs `psql -c "COPY (SELECT
//!    row_to_json(e) …) TO STDOUT" > file` on the same database, for several batch
//!    sizes; peak RSS of the daemon;
//! 2. **live** — writers committing single-event transactions as fast as they can;
//!    the daemon side by side with `pg_recvlogical` + wal2json on a private
//!    PostgreSQL instance with `wal_level=logical`: throughput, backlog over time and
//!    commit-to-visible latency per event;
//! 3. **idle** — CPU and memory of a daemon with nothing to do, with the default
//!    timers and with its timers pushed out of the window;
//! 4. **tls** — catch-up and live latency of the daemon over `verify-full` TLS
//!    against plaintext, on one private instance with `ssl=on`.
//!
//! Run it through `scripts/bench-mirror` (release build, packages, PostgreSQL);
//! `--quick` for smaller sizes, `--help` for the knobs. Tables are printed as
//! markdown for docs/benchmarks.md; progress goes to stderr.

mod catchup;
mod daemon;
mod data;
mod follow;
mod idle;
mod live;
mod pg;
mod report;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

/// Command line of the benchmark.
#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmark of compartment-auditd's mirror")]
struct Options {
    /// Smaller sizes and shorter windows (about two minutes instead of about eight).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Catch-up: events in the backlog [default: 1000000, quick: 100000].
    #[arg(long)]
    events: Option<u64>,
    /// Catch-up: rounds; each variant's best round is reported [default: 3, quick: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Catch-up: daemon variants to try, `BATCH_SIZE[/FSYNC_POLICY]`
    /// [default: 1000,5000,10000,1000/interval; quick: 1000,5000,1000/interval].
    #[arg(long, value_delimiter = ',', value_parser = catchup::Variant::parse)]
    variants: Option<Vec<catchup::Variant>>,
    /// Live: how long the writers write, in seconds [default: 30, quick: 10].
    #[arg(long)]
    live_seconds: Option<u64>,
    /// Live: concurrent writers.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Idle: measuring window in seconds [default: 60, quick: 20].
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// The daemon binary [default: the one cargo built for this benchmark].
    #[arg(long, env = "COMPARTMENT_BENCH_BIN")]
    bin: Option<PathBuf>,
    /// Server on which the benchmark creates (and drops) its own database.
    #[arg(
        long,
        env = "COMPARTMENT_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    server: String,
    /// A setting for every daemon started, as an environment variable
    /// (`--set COMPARTMENT_AUDIT_FILE_SINK_FSYNC=interval`); repeatable. Applied after
    /// the scenario's own settings, so it wins.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Keep the working directory (daemon logs, sinks) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Mirror an existing backlog.
    Catchup,
    /// Keep up with live writers.
    Live,
    /// Do nothing, cheaply.
    Idle,
    /// TLS (verify-full) against plaintext.
    Tls,
}

/// What every scenario needs.
pub struct Context {
    /// The daemon binary (release build).
    pub bin: PathBuf,
    /// Scratch space: sinks, logs, the COPY output.
    pub work: PathBuf,
    /// `--set` settings for every daemon.
    pub settings: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if !key.starts_with("COMPARTMENT_") {
        return Err(format!("{key} is not a COMPARTMENT_… setting"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Progress on stderr.
pub fn progress(message: impl std::fmt::Display) {
    eprintln!("==> {message}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let run = |s| options.only.is_empty() || options.only.contains(&s);
    let bin = options
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_compartment-auditd")));
    anyhow::ensure!(bin.is_file(), "no daemon binary at {}", bin.display());
    if !bin.components().any(|c| c.as_os_str() == "release") {
        progress(format!(
            "WARNING: {} does not look like a release build; figures will be meaningless",
            bin.display()
        ));
    }
    let work = tempfile::Builder::new()
        .prefix("auditd-bench-")
        .tempdir()
        .context("creating the working directory")?;
    let ctx = Context {
        bin,
        work: work.path().to_path_buf(),
        settings: options.settings.clone(),
    };
    print_header(&options, &ctx);

    let result = scenarios(&options, &ctx, run).await;
    if options.keep {
        let kept = work.keep();
        progress(format!("Kept the working directory {}", kept.display()));
    }
    result
}

async fn scenarios(
    options: &Options,
    ctx: &Context,
    run: impl Fn(Scenario) -> bool,
) -> anyhow::Result<()> {
    let quick = options.quick;
    let needs_shared = run(Scenario::Catchup) || run(Scenario::Idle);
    let db = if needs_shared {
        let name = format!("compartment_bench_{}", std::process::id());
        progress(format!("Creating database {name}"));
        let db = pg::BenchDatabase::create(&options.server, &name, &ctx.bin).await?;
        data::prepare(&pg::connect(&db.url).await?).await?;
        Some(db)
    } else {
        None
    };

    let outcome = async {
        if let (true, Some(db)) = (run(Scenario::Catchup), &db) {
            let config = catchup::Config {
                events: options
                    .events
                    .unwrap_or(if quick { 100_000 } else { 1_000_000 }),
                rounds: options.rounds.unwrap_or(if quick { 1 } else { 3 }),
                variants: options.variants.clone().unwrap_or_else(|| {
                    let interval = catchup::Variant {
                        fsync: "interval",
                        ..catchup::Variant::DEFAULT
                    };
                    let sizes: &[usize] = if quick {
                        &[1000, 5000]
                    } else {
                        &[1000, 5000, 10_000]
                    };
                    sizes
                        .iter()
                        .map(|&batch_size| catchup::Variant {
                            batch_size,
                            ..catchup::Variant::DEFAULT
                        })
                        .chain([interval])
                        .collect()
                }),
            };
            catchup::run(ctx, db, &config).await?;
        }
        if run(Scenario::Live) {
            let config = live::Config {
                window: Duration::from_secs(options.live_seconds.unwrap_or(if quick {
                    10
                } else {
                    30
                })),
                writers: options.writers,
                fsync: if quick {
                    vec!["always"]
                } else {
                    vec!["always", "interval"]
                },
            };
            live::run(ctx, &config).await?;
        }
        if let (true, Some(db)) = (run(Scenario::Idle), &db) {
            let window =
                Duration::from_secs(options.idle_seconds.unwrap_or(if quick { 20 } else { 60 }));
            idle::run(ctx, db, window).await?;
        }
        if run(Scenario::Tls) {
            let config = tls::Config {
                events: options
                    .events
                    .unwrap_or(if quick { 100_000 } else { 1_000_000 }),
                rounds: options.rounds.unwrap_or(if quick { 1 } else { 3 }),
                window: Duration::from_secs(options.live_seconds.unwrap_or(if quick {
                    10
                } else {
                    30
                })),
                writers: options.writers,
            };
            tls::run(ctx, &config).await?;
        }
        anyhow::Ok(())
    }
    .await;

    if let Some(db) = db {
        progress(format!("Dropping database {}", db.name));
        db.drop_now().await?;
    }
    outcome
}

fn print_header(options: &Options, ctx: &Context) {
    let git = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("## compartment-auditd mirror benchmark");
    println!();
    println!(
        "- commit `{git}`, binary `{}`{}",
        ctx.bin.display(),
        if options.quick { ", --quick" } else { "" }
    );
    for (key, value) in &ctx.settings {
        println!("- every daemon: `{key}={value}`");
    }
    println!(
        "- {cpus} CPUs, load average at start {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "- started {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
}
