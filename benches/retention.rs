//! Retention cleanup against one unbounded `DELETE`, on identical copies of one data set.
//!
//! `cargo bench --bench retention` builds, once, a database with `ROWS` expired audit
//! events spread over `ORGS` organizations (interleaved in time, as a real log is)
//! plus `FRESH` recent ones, then copies it with `CREATE DATABASE … TEMPLATE` for
//! each trial:
//!
//! - **unbounded**: `DELETE FROM audit_events WHERE occurred_at < cutoff`, one
//!   statement, one transaction;
//! - **retention**: `retention::run_once` with the default batch size, batch cap and
//!   concurrency, repeated until a run finds nothing left (so it includes each run's
//!   fixed cost);
//! - **one batch at a time**: the same with `cleanup_concurrency = 1`, for comparison.
//!
//! The trials alternate (unbounded, retention, one at a time, one at a time, retention,
//! unbounded, unbounded, retention, one at a time) so that no method always meets the
//! warmer cache or the quieter moment of a shared machine. It prints a table with the
//! rates, the time spent inside batch statements (summed over the sessions that ran
//! them: more than the trial's time when batches ran at once), the ratio
//! of the rates (requirement: retention ≥ 0.5 × unbounded), and the longest and 99th
//! percentile batch transaction (requirement: ≤ 250 ms at the default batch size); it
//! exits with status 1 if a requirement is not met.
//!
//! Environment: `COMPARTMENT_TEST_DATABASE_URL` (a role that may create databases;
//! default `postgres://postgres@127.0.0.1:5432/postgres`), and optionally
//! `RETENTION_BENCH_ROWS` (1000000), `RETENTION_BENCH_ORGS` (1000),
//! `RETENTION_BENCH_FRESH` (100000). Every database it creates is dropped (each copy
//! right after its trial); at the default size the template and one copy take about
//! 1 GB each, so the server needs about 3 GB of free disk with its WAL.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use compartment_auditd::config::Settings;
use compartment_auditd::db;
use compartment_auditd::retention::{self, Progress, RunHooks, RunOptions};
use std::sync::Mutex;
use tokio_postgres::NoTls;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn env_number(name: &str, default: i64) -> i64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {value:?}")),
        Err(_) => default,
    }
}

/// `url` with its database replaced (URL form `postgres://…/db?params`).
fn with_database(url: &str, dbname: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{dbname}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("cannot connect: {err}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Databases created by this run, dropped at the end.
struct Databases {
    server: String,
    names: Vec<String>,
}

impl Databases {
    async fn create(&mut self, name: &str, template: Option<&str>) -> String {
        let admin = connect(&self.server).await;
        let version: i32 = admin
            .query_one("SELECT current_setting('server_version_num')::integer", &[])
            .await
            .expect("server version")
            .get(0);
        // FILE_COPY (PostgreSQL 15+) copies the files instead of writing the whole
        // database through the WAL: far less disk for the copy.
        let strategy = if version >= 150_000 {
            " STRATEGY FILE_COPY"
        } else {
            ""
        };
        let sql = match template {
            Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}{strategy}"),
            None => format!("CREATE DATABASE {name}"),
        };
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        self.names.push(name.to_owned());
        // Copying writes the whole database through the WAL; without a checkpoint
        // here the next trial would pay for it.
        admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
        with_database(&self.server, name)
    }

    async fn drop_one(&mut self, name: &str) {
        let admin = connect(&self.server).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap_or_else(|err| panic!("drop {name}: {err}"));
        self.names.retain(|n| n != name);
    }

    async fn drop_all(&mut self) {
        let admin = connect(&self.server).await;
        for name in self.names.drain(..).rev() {
            if let Err(err) = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
            {
                eprintln!("warning: could not drop {name}: {err}");
            }
        }
    }
}

impl Drop for Databases {
    /// After a panic: drop what is left, on a thread with its own runtime (`Drop`
    /// cannot await, and may run on the main runtime's thread).
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut rest = Databases {
            server: self.server.clone(),
            names: std::mem::take(&mut self.names),
        };
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(rest.drop_all());
            }
        })
        .join();
    }
}

/// One trial's result.
struct Trial {
    method: &'static str,
    rows: u64,
    elapsed: Duration,
    batches: u32,
    runs: u32,
    batch_durations: Vec<Duration>,
}

impl Trial {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

async fn build_template(url: &str, rows: i64, orgs: i64, fresh: i64, now: DateTime<Utc>) {
    let settings = Settings::with_defaults(url);
    let pool = db::pool(&settings.database).await.expect("pool");
    db::migrate::run(&pool).await.expect("migrate");
    pool.close();
    let client = connect(url).await;
    client
        .execute(
            "INSERT INTO organizations (slug, name)
             SELECT 'org-' || n, 'Organization ' || n FROM generate_series(1, $1::bigint) AS n",
            &[&orgs],
        )
        .await
        .expect("insert organizations");
    // Expired rows from 200 to 100 days ago, fresh ones within the last 30 days; the
    // organization cycles with every row, so each organization's rows are spread
    // over the whole table, as in a real log. In time order, as a log is appended
    // (without ORDER BY the join's output order would scatter them over the table).
    let insert = "
        WITH o AS (SELECT row_number() OVER (ORDER BY id) - 1 AS n, id FROM organizations)
        INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type,
                                  actor_id, actor_email, target_type, target_id, metadata)
        SELECT o.id, $2::timestamptz + g * $3::interval, 'organization.user.invited', 'user',
               'usr_' || (g % 97), 'ops@example.com', 'user', 'usr_t' || g,
               '{\"email\": \"new@example.com\", \"role_ids\": [\"role_1\"], \"invited_via\": \"console\"}'
        FROM generate_series(1, $1::bigint) AS g
        JOIN o ON o.n = g % (SELECT count(*) FROM organizations)
        ORDER BY g";
    let interval = |span: TimeDelta, count: i64| {
        format!(
            "{} microseconds",
            span.num_microseconds().unwrap_or(0) / count.max(1)
        )
    };
    // The interval goes as text, cast in SQL.
    let prepared = client
        .prepare(&insert.replace("$3::interval", "$3::text::interval"))
        .await
        .expect("prepare insert");
    client
        .execute(
            &prepared,
            &[
                &rows,
                &(now - TimeDelta::days(200)),
                &interval(TimeDelta::days(100), rows),
            ],
        )
        .await
        .expect("insert expired events");
    client
        .execute(
            &prepared,
            &[
                &fresh,
                &(now - TimeDelta::days(30)),
                &interval(TimeDelta::days(29), fresh),
            ],
        )
        .await
        .expect("insert fresh events");
    // Separately: a multi-statement string is one implicit transaction, and VACUUM
    // refuses to run in one.
    client
        .batch_execute("VACUUM (ANALYZE) audit_events")
        .await
        .expect("vacuum");
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint");
}

async fn unbounded(url: &str, cutoff: DateTime<Utc>) -> Trial {
    let client = connect(url).await;
    // Audit rows are append-only (migration 0004); the owner may lift the guard for
    // its own session, which is what an operator's one-off DELETE would do.
    client
        .batch_execute("SET compartment_audit.retention_delete = on")
        .await
        .expect("lifting the delete guard");
    let started = Instant::now();
    let rows = client
        .execute(
            "DELETE FROM audit_events WHERE occurred_at < $1",
            &[&cutoff],
        )
        .await
        .expect("unbounded delete");
    let elapsed = started.elapsed();
    Trial {
        method: "unbounded DELETE",
        rows,
        elapsed,
        batches: 1,
        runs: 1,
        batch_durations: vec![elapsed],
    }
}

async fn batched(url: &str, now: DateTime<Utc>, one_at_a_time: bool) -> Trial {
    let mut settings = Settings::with_defaults(url);
    if one_at_a_time {
        settings.retention.cleanup_concurrency = 1;
    }
    let pool = db::pool(&settings.database).await.expect("pool");
    let durations = Mutex::new(Vec::new());
    let record = |progress: &Progress| {
        if let Ok(mut durations) = durations.lock() {
            durations.push(progress.batch_duration);
        }
    };
    let mut rows = 0;
    let mut batches = 0;
    let mut runs = 0;
    let started = Instant::now();
    loop {
        let hooks = RunHooks {
            stop: None,
            progress: Some(&record),
        };
        let report = retention::run_once_with(
            &pool,
            &settings.retention,
            RunOptions::default(),
            now,
            hooks,
        )
        .await
        .expect("retention run");
        runs += 1;
        rows += report.rows_deleted;
        batches += report.batches;
        if !report.stopped_at_cap {
            break;
        }
    }
    let elapsed = started.elapsed();
    pool.close();
    Trial {
        method: if one_at_a_time {
            "one batch at a time"
        } else {
            "retention (batched)"
        },
        rows,
        elapsed,
        batches,
        runs,
        batch_durations: durations.into_inner().unwrap_or_default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let server =
        std::env::var("COMPARTMENT_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.into());
    let rows = env_number("RETENTION_BENCH_ROWS", 1_000_000);
    let orgs = env_number("RETENTION_BENCH_ORGS", 1_000);
    let fresh = env_number("RETENTION_BENCH_FRESH", 100_000);
    let defaults = Settings::with_defaults(&server).retention;
    let now = Utc::now();
    let cutoff = now - TimeDelta::days(defaults.days.into());
    let tag = format!("{:08x}", rand::random::<u32>());
    let mut databases = Databases {
        server: server.clone(),
        names: Vec::new(),
    };

    let server_client = connect(&server).await;
    let mut facts = Vec::new();
    for setting in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
    ] {
        let row = server_client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .expect("SHOW");
        facts.push(format!("{setting}={}", row.get::<_, String>(0)));
    }

    let template = format!("auditd_bench_{tag}_template");
    eprintln!("Building {rows} expired + {fresh} fresh events over {orgs} organizations …");
    let built = Instant::now();
    let template_url = databases.create(&template, None).await;
    build_template(&template_url, rows, orgs, fresh, now).await;
    eprintln!("Built in {:.1} s.", built.elapsed().as_secs_f64());

    let mut trials = Vec::new();
    for (n, method) in [
        "unbounded",
        "retention",
        "serial",
        "serial",
        "retention",
        "unbounded",
        "unbounded",
        "retention",
        "serial",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("auditd_bench_{tag}_{n}");
        let url = databases.create(&name, Some(&template)).await;
        eprintln!("Trial {}: {method} …", n + 1);
        let trial = match method {
            "unbounded" => unbounded(&url, cutoff).await,
            "serial" => batched(&url, now, true).await,
            _ => batched(&url, now, false).await,
        };
        // One copy at a time: each is the size of the template.
        databases.drop_one(&name).await;
        assert_eq!(
            trial.rows, rows as u64,
            "{method} deleted {} rows, expected {rows}",
            trial.rows
        );
        trials.push(trial);
    }
    databases.drop_all().await;

    println!(
        "Retention benchmark: {rows} expired rows over {orgs} organizations (+{fresh} fresh), batch size {}, at most {} batches per run, {} at once",
        defaults.cleanup_batch_size, defaults.cleanup_max_batches, defaults.cleanup_concurrency
    );
    println!("PostgreSQL: {}", facts.join(", "));
    println!();
    println!(
        "{:<5}  {:<20}  {:>9}  {:>8}  {:>10}  {:>10}  {:>7}  {:>4}  {:>12}  {:>12}",
        "trial",
        "method",
        "rows",
        "seconds",
        "in batches",
        "rows/s",
        "batches",
        "runs",
        "p99 batch ms",
        "max batch ms"
    );
    for (n, trial) in trials.iter().enumerate() {
        let mut sorted = trial.batch_durations.clone();
        sorted.sort();
        println!(
            "{:<5}  {:<20}  {:>9}  {:>8.2}  {:>10.2}  {:>10.0}  {:>7}  {:>4}  {:>12}  {:>12}",
            n + 1,
            trial.method,
            trial.rows,
            trial.elapsed.as_secs_f64(),
            trial.batch_durations.iter().sum::<Duration>().as_secs_f64(),
            trial.rate(),
            trial.batches,
            trial.runs,
            ms(percentile(&sorted, 99.0)),
            ms(sorted.last().copied().unwrap_or_default()),
        );
    }
    let mean_rate = |method: &str| {
        let rates: Vec<f64> = trials
            .iter()
            .filter(|t| t.method.starts_with(method))
            .map(Trial::rate)
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let ratio = mean_rate("retention") / mean_rate("unbounded");
    let serial_ratio = mean_rate("one batch") / mean_rate("unbounded");
    let mut batch_durations: Vec<Duration> = trials
        .iter()
        .filter(|t| !t.method.starts_with("unbounded"))
        .flat_map(|t| t.batch_durations.iter().copied())
        .collect();
    batch_durations.sort();
    let max_batch = batch_durations.last().copied().unwrap_or_default();
    let p99_batch = percentile(&batch_durations, 99.0);
    println!();
    let ratio_ok = ratio >= 0.5;
    let batch_ok = max_batch <= Duration::from_millis(250);
    println!(
        "rate ratio (retention / unbounded, mean of trials): {ratio:.2}  (required >= 0.50: {})",
        if ratio_ok { "ok" } else { "FAILED" }
    );
    println!(
        "  with one batch at a time (cleanup_concurrency = 1): {serial_ratio:.2}  (for comparison)"
    );
    println!(
        "batch transactions: p99 {} ms, max {} ms  (required max <= 250 ms: {})",
        ms(p99_batch),
        ms(max_batch),
        if batch_ok { "ok" } else { "FAILED" }
    );
    if !(ratio_ok && batch_ok) {
        std::process::exit(1);
    }
}
