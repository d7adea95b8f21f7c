//! TLS (issue 15): the daemon over `verify-full` TLS against the same daemon over
//! plaintext, on one private PostgreSQL instance that accepts both (a CA and a
//! server certificate for `localhost` made here with rcgen):
//!
//! - catch-up of a backlog (the catch-up scenario's measurement, defaults, rounds
//!   alternating plaintext and TLS): TLS throughput ÷ plaintext throughput, target
//!   ≥ 0.85;
//! - live: writers committing single-event transactions; commit → line visible in
//!   the sink (fsync per batch, so durable one fsync later) and the daemon's own
//!   `mirror_lag_seconds` p99 (transaction start → appended and fsync'd): TLS p99 ÷
//!   plaintext p99, target ≤ 1.2.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::catchup::{self, Sample, Variant};
use crate::daemon::{self, Daemon, DaemonSpec};
use crate::follow::{Follower, Format};
use crate::pg::{self, PrivatePostgres};
use crate::report::{ms, quantile, ratio, verdict, Table};
use crate::{data, live, progress, Context};

/// What to run.
pub struct Config {
    /// Events in the catch-up backlog.
    pub events: u64,
    /// Catch-up rounds per side; the best of each is compared.
    pub rounds: usize,
    /// How long the live writers write, per side.
    pub window: Duration,
    /// Concurrent live writers.
    pub writers: usize,
}

/// A CA, and a server certificate and key for `localhost` and `127.0.0.1` (PEM).
fn pki() -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "auditd bench CA");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

/// Runs the comparison and prints its table.
pub async fn run(ctx: &Context, config: &Config) -> anyhow::Result<()> {
    progress("TLS: starting a private PostgreSQL instance with ssl=on");
    let (ca, cert, key) = pki()?;
    let ca_file = ctx.work.join("tls-ca.pem");
    std::fs::write(&ca_file, ca)?;
    let server = PrivatePostgres::start_with_tls(Some((&cert, &key)))?;
    let url = server.create_database("bench_tls", &ctx.bin).await?;
    let client = pg::connect(&url).await?;
    data::prepare(&client).await?;
    progress(format!("TLS: loading {} events", config.events));
    data::load(&client, config.events).await?;

    let plain_url = format!("{url}?sslmode=disable");
    let tls_url = format!("postgres://postgres@localhost:{}/bench_tls", server.port);
    let tls_env: Vec<(&'static str, String)> = vec![
        ("COMPARTMENT_DATABASE_SSLMODE", "verify-full".into()),
        (
            "COMPARTMENT_DATABASE_SSLROOTCERT",
            ca_file.display().to_string(),
        ),
    ];

    // Catch-up, rounds alternating so that drift in the machine's load hits both.
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for round in 1..=config.rounds {
        for (side, url, env) in [
            ("plaintext", &plain_url, &[][..]),
            ("verify-full", &tls_url, &tls_env[..]),
        ] {
            let sample = catchup::mirror(
                ctx,
                url,
                &client,
                config.events,
                Variant::DEFAULT,
                round,
                env,
            )
            .await?;
            progress(format!(
                "TLS catch-up round {round}/{}: {side}: {:.2} s",
                config.rounds,
                sample.wall.as_secs_f64()
            ));
            if env.is_empty() {
                plain.push(sample);
            } else {
                tls.push(sample);
            }
        }
    }
    let best = |samples: &[Sample]| {
        samples
            .iter()
            .copied()
            .min_by_key(|s| s.wall)
            .expect("at least one round")
    };
    let (plain_best, tls_best) = (best(&plain), best(&tls));

    // Live, plaintext first.
    let mut lives = Vec::new();
    for (side, url, env) in [
        ("plaintext", &plain_url, &[][..]),
        ("verify-full", &tls_url, &tls_env[..]),
    ] {
        lives.push(live_once(ctx, config, side, url, &url_for_writers(url), env).await?);
    }
    drop(client);

    let mut table = Table::new(
        format!(
            "TLS (verify-full) vs plaintext: catch-up of {} events (best of {}), live {} writers for {} s",
            config.events,
            config.rounds,
            config.writers,
            config.window.as_secs()
        ),
        &[
            "connection",
            "catch-up s",
            "events/s",
            "throughput vs plaintext",
            "daemon CPU s",
            "server CPU s",
            "live events",
            "live p50 ms",
            "live p99 ms",
            "lag p99 bound",
            "p99 vs plaintext",
            "backends on TLS",
        ],
    );
    let plain_p99 = lives[0].p99;
    for (name, sample, live) in [
        ("plaintext (sslmode=disable)", plain_best, &lives[0]),
        ("TLS (sslmode=verify-full)", tls_best, &lives[1]),
    ] {
        let wall = sample.wall.as_secs_f64();
        table.row(vec![
            name.to_string(),
            format!("{wall:.2}"),
            format!("{:.0}", config.events as f64 / wall),
            ratio(plain_best.wall.as_secs_f64() / wall),
            format!("{:.2}", sample.client_cpu),
            format!("{:.2}", sample.server_cpu),
            live.events.to_string(),
            ms(live.p50),
            ms(live.p99),
            live.lag_p99
                .map_or("-".into(), |b| format!("≤ {} ms", ms(b))),
            ratio(live.p99 / plain_p99),
            live.ssl.clone(),
        ]);
    }
    let rounds = |samples: &[Sample]| {
        samples
            .iter()
            .map(|s| format!("{:.2}", s.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.note(format!(
        "All catch-up rounds: plaintext {} s; verify-full {} s. Live: commit → line visible \
         in the sink (fsync per batch); lag p99 bound from the daemon's mirror_lag_seconds \
         histogram (transaction start → appended and fsync'd).",
        rounds(&plain),
        rounds(&tls)
    ));
    let throughput = plain_best.wall.as_secs_f64() / tls_best.wall.as_secs_f64();
    let p99 = lives[1].p99 / plain_p99;
    table.note(format!(
        "Target \"catch-up with TLS ≥ 0.85× plaintext throughput\": {} ({throughput:.2}). \
         Target \"live p99 with TLS within 1.2× plaintext\": {} ({p99:.2}).",
        verdict(throughput >= 0.85),
        verdict(p99 <= 1.2)
    ));
    table.print();
    Ok(())
}

/// The writers always use plaintext: only the daemon's connection is compared.
fn url_for_writers(url: &str) -> String {
    url.split('?')
        .next()
        .unwrap_or(url)
        .replace("localhost", "127.0.0.1")
}

/// What one live run measured.
struct Live {
    events: usize,
    p50: f64,
    p99: f64,
    lag_p99: Option<f64>,
    /// `pg_stat_ssl` of the daemon's backends while it ran: "3/3".
    ssl: String,
}

async fn live_once(
    ctx: &Context,
    config: &Config,
    side: &str,
    url: &str,
    writer_url: &str,
    env: &[(&'static str, String)],
) -> anyhow::Result<Live> {
    progress(format!("TLS live: {side}, {} s", config.window.as_secs()));
    let dir = ctx.work.join(format!("tls-live-{side}"));
    std::fs::create_dir_all(&dir)?;
    let mut spec_env = vec![(
        "COMPARTMENT_AUDIT_FILE_SINK_ID",
        format!("bench-tls-live-{side}"),
    )];
    spec_env.extend(env.iter().cloned());
    let mut daemon = Daemon::spawn(DaemonSpec {
        bin: &ctx.bin,
        database_url: url,
        sink_dir: &dir.join("sink"),
        log: dir.join("daemon.log"),
        overrides: &ctx.settings,
        env: spec_env,
    })?;
    daemon.wait_ready(Duration::from_secs(30))?;
    let follower = Follower::spawn(dir.join("sink").join("audit.ndjson"), Format::Sink);
    let before = daemon.metrics().context("scraping /metrics")?;

    let committed = Arc::new(AtomicU64::new(0));
    let sequence = Arc::new(AtomicI64::new(1));
    let deadline = Instant::now() + config.window;
    let writers: Vec<_> = (0..config.writers)
        .map(|_| {
            let (url, committed, sequence) =
                (writer_url.to_string(), committed.clone(), sequence.clone());
            tokio::spawn(async move { live::writer(&url, deadline, &committed, &sequence).await })
        })
        .collect();
    // Halfway: which of the daemon's backends are on TLS.
    tokio::time::sleep(config.window / 2).await;
    let observer = pg::connect(writer_url).await?;
    let row = observer
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'compartment-auditd%'",
            &[],
        )
        .await?;
    let ssl = format!(
        "{}/{}",
        row.try_get::<_, i64>(0)?,
        row.try_get::<_, i64>(1)?
    );
    let mut commits = Vec::new();
    for writer in writers {
        commits.extend(writer.await.context("a writer panicked")??);
    }
    let total = commits.len() as u64;
    let stopped = Instant::now();
    while follower.seen() < total {
        if stopped.elapsed() > Duration::from_secs(120) {
            bail!("{side}: {} of {total} events after 120 s", follower.seen());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The last batch's fsync, for the histogram.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = daemon.metrics().context("scraping /metrics")?;
    daemon.stop()?;
    let seen = follower.finish();
    let latency = live::latencies(&commits, &seen);
    anyhow::ensure!(
        latency.missing == 0 && latency.duplicates == 0,
        "{side}: {} missing, {} duplicated",
        latency.missing,
        latency.duplicates
    );
    let lag = daemon::histogram_delta(&before, &after, "compartment_audit_mirror_lag_seconds");
    Ok(Live {
        events: latency.sorted.len(),
        p50: quantile(&latency.sorted, 0.5).unwrap_or(f64::NAN),
        p99: quantile(&latency.sorted, 0.99).unwrap_or(f64::NAN),
        lag_p99: daemon::histogram_quantile_bound(&lag, 0.99),
        ssl,
    })
}
