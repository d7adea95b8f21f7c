//! Concurrent writers with varied transaction shapes, like Compartment's API under load:
//! single rows, bulk statements, savepoints, rollbacks, transactions held open, `COPY`
//! and two-phase commit (`PREPARE TRANSACTION` … `COMMIT PREPARED`).
//!
//! A transaction that inserts audit events cannot be prepared: the reference schema's
//! doorbell trigger runs `pg_notify`, and PostgreSQL refuses to `PREPARE` a transaction
//! that notified. What two-phase commit does to the mirror is hold the horizon: a
//! prepared transaction keeps its transaction id (below later audit rows) without a
//! session in `pg_stat_activity`, across disconnects and server restarts, until it is
//! committed. So the two-phase writers prepare a transaction on a side table
//! ([`prepared_transaction`]) while the others commit audit events.
//!
//! The `COPY` and two-phase helpers ([`copy_events`], [`prepared_transaction`],
//! [`resolve_prepared`]) are shared with the chaos writers. Two-phase commit needs
//! `max_prepared_transactions > 0`, which [`super::PrivatePostgres`] sets and a stock
//! server does not: [`require_two_phase`] stops a test that asks for it elsewhere with a
//! clear message. Every writer commits the prepared transactions it left behind
//! whenever it (re)connects, and [`Writers::stop`] once more at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use rand::Rng;
use tokio_postgres::NoTls;

/// Counters of what the writers did (for the test's own sanity checks).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (as far as the writer knows).
    pub commits: AtomicU64,
    /// Transactions rolled back on purpose.
    pub rollbacks: AtomicU64,
    /// Transactions that were held open while others committed.
    pub held_open: AtomicU64,
    /// Side transactions committed with `PREPARE TRANSACTION` … `COMMIT PREPARED`.
    pub two_phase: AtomicU64,
    /// Transactions whose rows were inserted with `COPY … FROM STDIN`.
    pub copies: AtomicU64,
    /// Connection errors survived (database restarts, terminated backends).
    pub errors: AtomicU64,
    /// Committed transactions in commit order: (smallest id, largest id).
    pub commit_log: std::sync::Mutex<Vec<(i64, i64)>>,
}

impl WriterStats {
    /// Transactions that committed after another transaction with larger ids had
    /// committed — the case that defeats an `id > last_id` reader.
    pub fn out_of_order_commits(&self) -> usize {
        let log = self.commit_log.lock().unwrap_or_else(|e| e.into_inner());
        let mut highest = i64::MIN;
        let mut count = 0;
        for (min, max) in log.iter() {
            if *min < highest {
                count += 1;
            }
            highest = highest.max(*max);
        }
        count
    }
}

/// Background writers; stop them with [`Writers::stop`].
pub struct Writers {
    url: String,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What they did.
    pub stats: Arc<WriterStats>,
}

/// Transaction shapes, chosen at random per transaction.
#[derive(Debug, Clone, Copy)]
pub struct Shapes {
    /// Probability that a transaction is held open for a while before committing.
    pub hold_open: f64,
    /// Longest hold.
    pub max_hold: Duration,
    /// Probability of a rollback.
    pub rollback: f64,
    /// Probability of a bulk insert (many rows in one statement).
    pub bulk: f64,
    /// Rows in a bulk insert at most.
    pub max_bulk_rows: u32,
    /// Pause between transactions.
    pub pause: Duration,
    /// Probability that a transaction inserts with `COPY` instead of `INSERT`.
    pub copy: f64,
    /// Probability that a writer's next transaction is a prepared one on the side
    /// table, held up to `max_hold` (needs `max_prepared_transactions > 0`; see
    /// [`require_two_phase`]).
    pub two_phase: f64,
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            hold_open: 0.15,
            max_hold: Duration::from_millis(400),
            rollback: 0.1,
            bulk: 0.1,
            max_bulk_rows: 50,
            pause: Duration::from_millis(5),
            copy: 0.05,
            // Off by default: a stock server has max_prepared_transactions = 0.
            two_phase: 0.0,
        }
    }
}

impl Writers {
    /// Starts `n` writers inserting into organization `org_id` of `url`.
    pub fn start(url: &str, org_id: uuid::Uuid, n: usize, shapes: Shapes) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WriterStats::default());
        let tasks = (0..n)
            .map(|w| {
                let url = url.to_string();
                let stop = stop.clone();
                let stats = stats.clone();
                tokio::spawn(async move { writer(w, url, org_id, shapes, stop, stats).await })
            })
            .collect();
        Writers {
            url: url.to_string(),
            stop,
            tasks,
            stats,
        }
    }

    /// Stops the writers and waits for them; a writer that panicked (a test asking
    /// for two-phase commit from a server without it) fails the caller. Prepared
    /// transactions a writer could not end (its connection broke) are committed.
    pub async fn stop(self) -> Arc<WriterStats> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            if let Err(err) = task.await {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        }
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connecting to end the writers' prepared transactions");
        let driver = tokio::spawn(connection);
        resolve_prepared(&client, WRITER_GID_PREFIX)
            .await
            .expect("ending the writers' prepared transactions");
        driver.abort();
        self.stats
    }
}

/// Prefix of the two-phase transaction ids of [`Writers`].
const WRITER_GID_PREFIX: &str = "writer_";

async fn writer(
    w: usize,
    url: String,
    org_id: uuid::Uuid,
    shapes: Shapes,
    stop: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut client, connection)) = tokio_postgres::connect(&url, NoTls).await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let driver = tokio::spawn(connection);
        if shapes.two_phase > 0.0 {
            require_two_phase(&client).await;
            if create_prepared_table(&client).await.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                driver.abort();
                continue;
            }
        }
        // What an earlier connection of this writer prepared and could not end.
        if resolve_prepared(&client, &format!("{WRITER_GID_PREFIX}{w}_"))
            .await
            .is_err()
        {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            driver.abort();
            continue;
        }
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            if one_transaction(w, seq, &mut client, org_id, &shapes, &stats)
                .await
                .is_err()
            {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            tokio::time::sleep(shapes.pause).await;
        }
        driver.abort();
    }
}

async fn one_transaction(
    w: usize,
    seq: u64,
    client: &mut tokio_postgres::Client,
    org_id: uuid::Uuid,
    shapes: &Shapes,
    stats: &WriterStats,
) -> Result<(), tokio_postgres::Error> {
    let (hold, rollback, rows, savepoint, copy, two_phase) = {
        let mut rng = rand::rng();
        let hold = rng.random_bool(shapes.hold_open).then(|| {
            Duration::from_millis(rng.random_range(50..=shapes.max_hold.as_millis().max(51) as u64))
        });
        let rows = if rng.random_bool(shapes.bulk) {
            rng.random_range(2..=shapes.max_bulk_rows.max(2))
        } else {
            1
        };
        (
            hold,
            rng.random_bool(shapes.rollback),
            rows as i32,
            rng.random_bool(0.1),
            rng.random_bool(shapes.copy),
            rng.random_bool(shapes.two_phase),
        )
    };
    if two_phase {
        let gid = format!("{WRITER_GID_PREFIX}{w}_{seq}");
        prepared_transaction(client, &gid, hold.unwrap_or(shapes.max_hold)).await?;
        stats.two_phase.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let mut tx = client.transaction().await?;
    let ids = if copy {
        stats.copies.fetch_add(1, Ordering::Relaxed);
        copy_insert(&tx, org_id, w, seq, rows).await?
    } else {
        insert(&tx, org_id, w, rows).await?
    };
    if savepoint {
        // Rows inserted after a savepoint that is rolled back never commit.
        let sp = tx.savepoint("sp").await?;
        insert(&sp, org_id, w, 1).await?;
        sp.rollback().await?;
    }
    if let Some(hold) = hold {
        stats.held_open.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(hold).await;
    }
    if rollback {
        tx.rollback().await?;
        stats.rollbacks.fetch_add(1, Ordering::Relaxed);
    } else {
        tx.commit().await?;
        // The order in which commits return: close enough to commit order for what
        // the log proves (held transactions commit hundreds of ms after others).
        if let (Some(min), Some(max)) = (ids.iter().min(), ids.iter().max()) {
            let mut log = stats.commit_log.lock().unwrap_or_else(|e| e.into_inner());
            log.push((*min, *max));
        }
        stats.commits.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn insert(
    client: &impl tokio_postgres::GenericClient,
    org_id: uuid::Uuid,
    w: usize,
    rows: i32,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, actor_email, \
                                       target_type, target_id, metadata) \
             SELECT $1, 'organization.group.updated', 'user', $2, 'writer@example.com', 'group', 'grp_' || g, \
                    jsonb_build_object('group_id', 'grp_' || g, 'group_name', 'writers', \
                                       'changed_fields', jsonb_build_array('name'), 'password', 'never-in-sink') \
             FROM generate_series(1, $3) g \
             RETURNING id",
            &[&org_id, &format!("usr_writer_{w}"), &rows],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The same rows as [`insert`], through `COPY`; their ids are read back by their
/// `target_id`s (unique per writer and transaction).
async fn copy_insert(
    tx: &tokio_postgres::Transaction<'_>,
    org_id: uuid::Uuid,
    w: usize,
    seq: u64,
    rows: i32,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let targets: Vec<String> = (1..=rows).map(|g| format!("cp_{w}_{seq}_{g}")).collect();
    let now = chrono::Utc::now();
    let events: Vec<CopyEvent> = targets
        .iter()
        .map(|target| CopyEvent {
            organization_id: org_id,
            occurred_at: now,
            actor_id: format!("usr_writer_{w}"),
            target_id: target.clone(),
            metadata: serde_json::json!({
                "group_id": target, "group_name": "writers, \"copied\"\n",
                "changed_fields": ["name"], "password": "never-in-sink",
            }),
        })
        .collect();
    copy_events(tx, &events).await?;
    let rows = tx
        .query(
            "SELECT id FROM audit_events WHERE target_id = ANY($1) ORDER BY id",
            &[&targets],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// One `organization.group.updated` row for [`copy_events`].
#[derive(Debug, Clone)]
pub struct CopyEvent {
    /// Its organization.
    pub organization_id: uuid::Uuid,
    /// `occurred_at`.
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// `actor_id` (actor type `user`, e-mail `writer@example.com`).
    pub actor_id: String,
    /// `target_id` (target type `group`).
    pub target_id: String,
    /// `metadata`.
    pub metadata: serde_json::Value,
}

/// Inserts `events` with one `COPY audit_events … FROM STDIN (FORMAT csv)` in `tx`;
/// returns the rows copied.
pub async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[CopyEvent],
) -> Result<u64, tokio_postgres::Error> {
    fn field(out: &mut String, value: &str) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    }
    let mut data = String::new();
    for event in events {
        for (n, value) in [
            event.organization_id.to_string(),
            event.occurred_at.to_rfc3339(),
            "organization.group.updated".to_owned(),
            "user".to_owned(),
            event.actor_id.clone(),
            "writer@example.com".to_owned(),
            "group".to_owned(),
            event.target_id.clone(),
            event.metadata.to_string(),
        ]
        .iter()
        .enumerate()
        {
            if n > 0 {
                data.push(',');
            }
            field(&mut data, value);
        }
        data.push('\n');
    }
    let sink = tx
        .copy_in(
            "COPY audit_events (organization_id, occurred_at, event_type, actor_type, actor_id, \
                                actor_email, target_type, target_id, metadata) \
             FROM STDIN (FORMAT csv)",
        )
        .await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from(data)).await?;
    sink.as_mut().finish().await
}

/// The side table of [`prepared_transaction`].
pub const PREPARED_TABLE: &str = "writer_prepared";

/// Creates [`PREPARED_TABLE`] if it is missing (several writers may race to it).
pub async fn create_prepared_table(
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    match client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {PREPARED_TABLE} \
             (id bigserial PRIMARY KEY, gid text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .await
    {
        Err(err)
            if err.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || err.code() == Some(&SqlState::DUPLICATE_TABLE) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// A two-phase transaction on [`PREPARED_TABLE`] (which [`create_prepared_table`]
/// made): a row (which takes a transaction id), `PREPARE TRANSACTION gid`, `hold`
/// while prepared (the horizon stays below it meanwhile), `COMMIT PREPARED gid`. An
/// error after the `PREPARE` leaves it to [`resolve_prepared`].
pub async fn prepared_transaction(
    client: &mut tokio_postgres::Client,
    gid: &str,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        &format!("INSERT INTO {PREPARED_TABLE} (gid) VALUES ($1)"),
        &[&gid],
    )
    .await?;
    tx.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .await?;
    // The session is outside any transaction now; dropping `tx` only sends a
    // ROLLBACK that the server answers with a warning.
    drop(tx);
    tokio::time::sleep(hold).await;
    client
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
}

/// Commits every prepared transaction of this database whose id starts with
/// `prefix` (left behind by a broken connection); returns how many.
pub async fn resolve_prepared(
    client: &tokio_postgres::Client,
    prefix: &str,
) -> Result<usize, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT gid FROM pg_prepared_xacts \
             WHERE database = current_database() AND starts_with(gid, $1)",
            &[&prefix],
        )
        .await?;
    for row in &rows {
        let gid: String = row.get(0);
        // Another writer (or the driver) may have ended it meanwhile.
        if let Err(err) = client
            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .await
        {
            if err.code() != Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) {
                return Err(err);
            }
        }
    }
    Ok(rows.len())
}

/// Panics, saying what to do, unless the server allows prepared transactions.
pub async fn require_two_phase(client: &tokio_postgres::Client) {
    let row = client
        .query_one(
            "SELECT current_setting('max_prepared_transactions')::int",
            &[],
        )
        .await
        .expect("reading max_prepared_transactions");
    let max: i32 = row.get(0);
    assert!(
        max > 0,
        "two-phase commit writers need max_prepared_transactions > 0 (this server has {max}); \
         use support::PrivatePostgres, which sets it, or set it on the server and restart it"
    );
}

/// Every id in `audit_events`: after the writers stop, exactly the committed rows.
pub async fn committed_ids(url: &str) -> Vec<i64> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting to read committed ids");
    let driver = tokio::spawn(connection);
    let rows = client
        .query("SELECT id FROM audit_events ORDER BY id", &[])
        .await
        .expect("reading committed ids");
    driver.abort();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Creates an organization and returns its id.
pub async fn create_org(url: &str, slug: &str) -> uuid::Uuid {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting to create an organization");
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "INSERT INTO organizations (slug, name) VALUES ($1, $1) RETURNING id",
            &[&slug],
        )
        .await
        .expect("creating an organization");
    driver.abort();
    row.get(0)
}

/// Runs one SQL statement.
pub async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting");
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.expect("running SQL");
    driver.abort();
}

/// Waits until every transaction that wrote a row so far is below the cluster's
/// visibility horizon — the moment `start_from = now` (or a re-baseline) counts those
/// rows as "before now". Other tests' open transactions can hold the horizon back for
/// a while; this waits them out.
pub async fn wait_until_horizon_passes_all_rows(url: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting to watch the horizon");
    let driver = tokio::spawn(connection);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(max(tx) < pg_snapshot_xmin(pg_current_snapshot()), true) FROM audit_events",
                &[],
            )
            .await
            .expect("reading the horizon");
        if row.get::<_, bool>(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the horizon did not pass the rows within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.abort();
}
