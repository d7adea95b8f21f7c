//! Idle: what a daemon with nothing to do costs.
//!
//! Two daemons idle side by side on the same database: one with the default timers
//! (safety poll every 5 s, listener heartbeat every 15 s), one with both pushed out
//! to an hour, so that the difference is what those timers cost and the second
//! shows whatever is left (the database reachability check every 5 s, which is not
//! configurable, and anything that should not be there).

use std::time::{Duration, Instant};

use crate::daemon::{Daemon, DaemonSpec, ProcSample};
use crate::pg::BenchDatabase;
use crate::report::{mib, ratio, verdict, Table};
use crate::{progress, Context};

/// RSS the idle daemon must stay under.
const RSS_TARGET_KIB: u64 = 32 * 1024;

/// How long to let the daemons settle before measuring: start-up work done, and
/// tokio's idle blocking threads (kept alive 10 s) gone.
const SETTLE: Duration = Duration::from_secs(12);

/// Interval of the (fixed) database reachability check, see `daemon.rs`.
const DATABASE_CHECK: f64 = 5.0;

/// One idle daemon's configuration.
struct Variant {
    /// Row label.
    name: &'static str,
    /// Settings beyond the defaults.
    env: Vec<(&'static str, String)>,
    /// How often the mirror's own timers (safety poll, heartbeat) fire.
    firings_per_minute: f64,
}

/// Runs the scenario and prints its table.
pub async fn run(ctx: &Context, db: &BenchDatabase, window: Duration) -> anyhow::Result<()> {
    let variants = [
        Variant {
            name: "defaults (poll 5 s, heartbeat 15 s)",
            env: vec![],
            firings_per_minute: 60.0 / 5.0 + 60.0 / 15.0,
        },
        Variant {
            name: "poll and heartbeat 1 h (baseline)",
            env: vec![
                ("COMPARTMENT_AUDIT_MIRROR_POLL_INTERVAL", "1h".into()),
                ("COMPARTMENT_AUDIT_MIRROR_HEARTBEAT_INTERVAL", "1h".into()),
            ],
            firings_per_minute: 0.0,
        },
    ];
    let mut daemons = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        let dir = ctx.work.join(format!("idle-{i}"));
        std::fs::create_dir_all(&dir)?;
        let mut env = variant.env.clone();
        env.push(("COMPARTMENT_AUDIT_FILE_SINK_ID", format!("bench-idle-{i}")));
        let mut daemon = Daemon::spawn(DaemonSpec {
            bin: &ctx.bin,
            database_url: &db.url,
            sink_dir: &dir.join("sink"),
            log: dir.join("daemon.log"),
            overrides: &ctx.settings,
            env,
        })?;
        daemon.wait_ready(Duration::from_secs(30))?;
        daemons.push(daemon);
    }
    progress(format!(
        "Idle: settling {} s, then measuring {} s",
        SETTLE.as_secs(),
        window.as_secs()
    ));
    tokio::time::sleep(SETTLE).await;
    let start: Vec<ProcSample> = daemons
        .iter()
        .map(|d| ProcSample::read(d.pid()))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = started.elapsed().as_secs_f64();
    let end: Vec<ProcSample> = daemons
        .iter()
        .map(|d| ProcSample::read(d.pid()))
        .collect::<Result<_, _>>()?;
    for mut daemon in daemons {
        daemon.check_running()?;
        daemon.stop()?;
    }

    let mut table = Table::new(
        format!("Idle: {seconds:.0} s with nothing to do"),
        &[
            "daemon",
            "CPU ms (ticks)",
            "CPU ms (schedstat)",
            "CPU % of a core",
            "wake-ups/s",
            "timer firings/min",
            "RSS MiB",
            "peak RSS MiB",
            "threads",
            "CPU vs baseline",
        ],
    );
    let cpu_ms = |i: usize| end[i].cpu_ns.saturating_sub(start[i].cpu_ns) as f64 / 1e6;
    let baseline_cpu = cpu_ms(1).max(0.001);
    for (i, variant) in variants.iter().enumerate() {
        let ticks = end[i].cpu_ticks.saturating_sub(start[i].cpu_ticks);
        let switches = end[i]
            .context_switches
            .saturating_sub(start[i].context_switches);
        table.row(vec![
            variant.name.to_string(),
            format!("{}", ticks * 10),
            format!("{:.1}", cpu_ms(i)),
            format!("{:.3}", cpu_ms(i) / 1000.0 / seconds * 100.0),
            format!("{:.2}", switches as f64 / seconds),
            format!(
                "{:.0} + {:.0} db check",
                variant.firings_per_minute,
                60.0 / DATABASE_CHECK
            ),
            mib(end[i].rss_kib),
            mib(end[i].hwm_kib),
            end[i].threads.to_string(),
            ratio(cpu_ms(i) / baseline_cpu),
        ]);
    }
    let timer_cost = (cpu_ms(0) - cpu_ms(1)) / (variants[0].firings_per_minute * seconds / 60.0);
    let per_check = cpu_ms(1) / (seconds / DATABASE_CHECK);
    table.note(format!(
        "Cost per firing of the mirror's timers (poll: a batch read and a horizon query; heartbeat: \
         SELECT 1): {timer_cost:.2} ms; per database check (baseline ÷ checks): {per_check:.2} ms."
    ));
    // Nothing beyond the timers: the baseline daemon, whose only timer is the 5 s
    // database check, stays under 0.05% of a core, and neither wakes more than a
    // few times a second.
    let rate = |i: usize| {
        end[i]
            .context_switches
            .saturating_sub(start[i].context_switches) as f64
            / seconds
    };
    let quiet = cpu_ms(1) / 1000.0 / seconds < 0.0005 && rate(0) < 5.0 && rate(1) < 5.0;
    let small = end.iter().all(|s| s.hwm_kib < RSS_TARGET_KIB);
    table.note(format!(
        "Target \"no CPU beyond the safety timer\" (baseline < 0.05% of a core, < 5 wake-ups/s): {}. \
         Target \"RSS < 32 MiB\": {}.",
        verdict(quiet),
        verdict(small)
    ));
    table.print();
    Ok(())
}
