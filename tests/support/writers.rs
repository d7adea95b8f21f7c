//! Concurrent writers with varied transaction shapes, like Compartment's API under load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        Writers { stop, tasks, stats }
    }

    /// Stops the writers and waits for them.
    pub async fn stop(self) -> Arc<WriterStats> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        self.stats
    }
}

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
        while !stop.load(Ordering::SeqCst) {
            if one_transaction(w, &mut client, org_id, &shapes, &stats)
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
    client: &mut tokio_postgres::Client,
    org_id: uuid::Uuid,
    shapes: &Shapes,
    stats: &WriterStats,
) -> Result<(), tokio_postgres::Error> {
    let (hold, rollback, rows, savepoint) = {
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
        )
    };
    let mut tx = client.transaction().await?;
    let ids = insert(&tx, org_id, w, rows).await?;
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
