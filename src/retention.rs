//! `audit.retention.cleanup` (SPEC §8, guarantee 5 of §7): deletes expired audit
//! events, per organization, in bounded batches.
//!
//! # What a run does
//!
//! 1. **Effective retention** per organization: its own number of days, `inherit` →
//!    `COMPARTMENT_AUDIT_RETENTION_DAYS`, or `indefinite` → skipped. Rows with
//!    `occurred_at < now - days` are expired (`now` is the run's start, injected).
//! 2. **One runner at a time.** A real run takes a connection *out of* the pool for
//!    its whole duration and holds a session-level advisory lock on it
//!    ([`db::RETENTION_LOCK_KEY`]); a second runner (another replica, or the CLI next
//!    to the daemon) fails `pg_try_advisory_lock`, logs that it skipped and reports
//!    [`RunOutcome::Skipped`]. The connection is closed at the end of the run, so the
//!    lock cannot leak through the pool, and a crashed runner's lock goes with its
//!    connection.
//! 3. **Never ahead of the sink.** Only rows with `(tx, id)` at or before the position
//!    of *every* file sink published in `audit_sink_positions` for this cluster
//!    (`pg_control_system().system_identifier`) are deleted. The bound is read inside
//!    each batch's `DELETE`, from the same snapshot as the rows. Positions recorded for
//!    another cluster (stale after a restore) are ignored with a warning. Expired rows
//!    held back this way are counted per organization, logged, and the run counts in
//!    `…_retention_held_back_total`.
//! 4. **Bounded batches.** Oldest first, at most `cleanup_batch_size` rows per batch,
//!    at most `cleanup_max_batches` batches that delete something per run; the run
//!    stops early when nothing is left. A batch is one call of the server-side
//!    function `audit_retention_delete_batch` (migration 0003): one statement, so one
//!    short transaction, and one round trip however many organizations it serves.
//!    Commits are asynchronous on the run's connection: a crash can only undo the
//!    last few batches, whose rows are still expired and go in the next run.
//! 5. **Fair sharing.** The organizations with expired rows form a queue in id order.
//!    A batch gives the organizations at the front, in order, a *turn* of at most
//!    `batch size / organizations waiting` rows (at least [`db::MIN_TURN_ROWS`]), their
//!    oldest; if every one had its turn and room is left, those with more fill it.
//!    An organization with more rows goes to the back and continues after its last
//!    deleted row on its next turn; one with none left leaves the queue; those the
//!    batch did not reach keep their place. So every organization with work is
//!    served every round however large the others are, and batches stay full (a run
//!    deletes exactly batch size × batch cap rows when that many have expired).
//!    Many small turns per batch also keep the batch's rows on few heap pages: a log
//!    interleaves organizations in time, so their oldest rows lie together.
//!    When a run stops with work left (batch cap, shutdown), the organization whose
//!    turn is next is recorded (`audit_retention_state`; written along with the next
//!    batch, and at the end of the run) and the next run — on any replica — starts
//!    the rotation there, as if the runs were one. A run limited to one organization
//!    (`--org`) leaves the recorded rotation alone.
//! 6. **Batches at once** (`cleanup_concurrency`, [`rotation`]). When the queue is
//!    long enough, up to `cleanup_concurrency - 1` more sessions are taken out of the
//!    pool for the run (closed afterwards, so their settings never reach the pool). The
//!    second one first counts, index-only, how many expired rows each organization has,
//!    up to a fair share of the run, while the locked session runs batches one at a
//!    time; then each free session takes its own front of the queue, the shortest one
//!    known (counts less what the run deleted since) to fill a batch with first turns.
//!    Without such a front a batch waits for those in flight, or runs alone with the
//!    whole queue, so every batch fills up as before and the cap holds to the row. An
//!    organization is never in two batches at once, so its rows still go oldest first.
//!    If a sink holds back any expired row the counts could overstate what may go, so
//!    nothing is counted and batches run one at a time. A failed batch lets the others
//!    in flight finish before the run reports the failure.
//!
//! A dry run ([`RunOptions::dry_run`]) takes no lock and deletes nothing: it counts,
//! per organization, the expired rows, those a sink holds back, and so the rows a run
//! would delete (before the batch cap).
//!
//! [`run_scheduler`] repeats [`run_once`] on `cleanup_cron` (UTC); a failing run is
//! logged and counted and never stops the scheduler.

mod report;
mod rotation;
mod scheduler;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SubsecRound as _, TimeDelta, Utc};
use deadpool_postgres::Pool;
use futures_util::future::OptionFuture;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::RetentionSettings;
use crate::db::admin::OrgSlug;
use crate::db::retention::{self as db, OrganizationRetention, SinkPosition};
use crate::db::DbError;
use crate::telemetry::retention as telemetry;

pub use report::{
    OrganizationReport, OrganizationStatus, Progress, RetentionError, RunOutcome, RunReport,
};
use rotation::{rotation_order, Prefix, Rotation, Served, Turn};
pub use scheduler::{run_scheduler, run_scheduler_with_clock, Clock, SystemClock};

/// How a run is asked to behave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Count what would be deleted, per organization, without deleting or locking.
    pub dry_run: bool,
    /// Only this organization (the CLI's `--org`); `None` for all of them.
    pub org: Option<OrgSlug>,
}

/// Optional observers and controls of a run (see [`run_once_with`]).
#[derive(Clone, Copy, Default)]
pub struct RunHooks<'a> {
    /// Checked between batches: once cancelled, the run commits nothing more and
    /// returns what it did (marked [`RunReport::interrupted`]). A batch in progress
    /// is always finished, never abandoned.
    pub stop: Option<&'a CancellationToken>,
    /// Called after every batch (and, in a dry run, after every organization counted),
    /// e.g. to draw a progress line on a terminal.
    pub progress: Option<&'a (dyn Fn(&Progress) + Send + Sync)>,
}

impl fmt::Debug for RunHooks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHooks")
            .field("stop", &self.stop)
            .field("progress", &self.progress.map(|_| "Fn(&Progress)"))
            .finish()
    }
}

/// Runs `audit.retention.cleanup` once, at time `now` (see the module documentation).
///
/// Logs one line and records the metrics for the run; a failure is returned *and*
/// already logged and counted.
pub async fn run_once(
    pool: &Pool,
    settings: &RetentionSettings,
    options: RunOptions,
    now: DateTime<Utc>,
) -> Result<RunReport, RetentionError> {
    run_once_with(pool, settings, options, now, RunHooks::default()).await
}

/// [`run_once`] with a stop token and a progress observer.
pub async fn run_once_with(
    pool: &Pool,
    settings: &RetentionSettings,
    options: RunOptions,
    now: DateTime<Utc>,
    hooks: RunHooks<'_>,
) -> Result<RunReport, RetentionError> {
    let started = Instant::now();
    // PostgreSQL keeps microseconds; cutting here makes the reported cutoffs the
    // ones the queries use.
    let now = now.trunc_subsecs(6);
    if options.dry_run {
        let report = dry_run(pool, settings, &options, now, hooks, started).await?;
        telemetry::dry_run_finished(&report.summary());
        return Ok(report);
    }
    let mut deleted_so_far = 0;
    match locked_run(
        pool,
        settings,
        &options,
        now,
        hooks,
        started,
        &mut deleted_so_far,
    )
    .await
    {
        Ok(Some(report)) => {
            let finished_at = now + TimeDelta::from_std(report.duration).unwrap_or_default();
            telemetry::run_finished(&report.summary(), finished_at);
            Ok(report)
        }
        Ok(None) => {
            telemetry::run_skipped();
            Ok(RunReport::skipped(now, started.elapsed(), settings))
        }
        // A mistyped `--org` is the caller's error, not a failed run.
        Err(err @ RetentionError::UnknownOrganization { .. }) => Err(err),
        Err(err) => {
            telemetry::run_failed(&err, started.elapsed(), deleted_so_far);
            Err(err)
        }
    }
}

/// An organization's cutoff: `now - days`, or `None` when that is before year 1 (no
/// event can be that old, and PostgreSQL's timestamp range ends not much earlier).
pub fn cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    let earliest = NaiveDate::from_ymd_opt(1, 1, 1)?
        .and_hms_opt(0, 0, 0)?
        .and_utc();
    now.checked_sub_signed(TimeDelta::try_days(i64::from(days))?)
        .filter(|cutoff| *cutoff >= earliest)
}

/// The per-organization starting point of a run: retention, cutoff, status.
fn plan(
    organizations: Vec<OrganizationRetention>,
    install_default_days: u32,
    now: DateTime<Utc>,
) -> Vec<OrganizationReport> {
    organizations
        .into_iter()
        .map(|org| {
            let effective_days = org.retention.effective_days(install_default_days);
            let cutoff = effective_days.and_then(|days| cutoff(now, days));
            OrganizationReport {
                id: org.id,
                slug: org.slug,
                retention: org.retention,
                effective_days,
                cutoff,
                status: if effective_days.is_some() {
                    OrganizationStatus::Clean
                } else {
                    OrganizationStatus::Indefinite
                },
                rows_deleted: 0,
                rows_to_delete: None,
                rows_held_back: None,
            }
        })
        .collect()
}

/// Reads the organizations (all, or `--org`) in id order.
async fn organizations(
    client: &impl tokio_postgres::GenericClient,
    options: &RunOptions,
) -> Result<Vec<OrganizationRetention>, RetentionError> {
    let slug = options.org.as_ref().map(OrgSlug::as_str);
    let mut organizations = db::organizations(client, slug).await?;
    if let (Some(slug), true) = (slug, organizations.is_empty()) {
        return Err(RetentionError::UnknownOrganization {
            slug: slug.to_owned(),
        });
    }
    // The rotation relies on id order; the query sorts, this makes it a guarantee.
    organizations.sort_by_key(|org| org.id);
    Ok(organizations)
}

/// The sink positions that bound deletion: those of this cluster. Warns about the
/// others. Returns the cluster id, the lowest position's sink and the ignored sinks.
async fn sink_positions(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(String, Option<String>, Vec<String>), RetentionError> {
    let system_identifier = db::system_identifier(client).await?;
    let (current, stale): (Vec<SinkPosition>, Vec<SinkPosition>) = db::sink_positions(client)
        .await?
        .into_iter()
        .partition(|position| position.system_identifier == system_identifier);
    for position in &stale {
        telemetry::position_ignored(
            &position.sink_id,
            &position.system_identifier,
            &system_identifier,
        );
    }
    let bounding = current
        .iter()
        .min_by_key(|position| position.bound())
        .map(|position| position.sink_id.clone());
    let ignored = stale.into_iter().map(|position| position.sink_id).collect();
    Ok((system_identifier, bounding, ignored))
}

/// Counts, per organization, what a run would delete. No lock, no writes.
async fn dry_run(
    pool: &Pool,
    settings: &RetentionSettings,
    options: &RunOptions,
    now: DateTime<Utc>,
    hooks: RunHooks<'_>,
    started: Instant,
) -> Result<RunReport, RetentionError> {
    let client = pool.get().await?;
    let client = &**client;
    let mut reports = plan(organizations(client, options).await?, settings.days, now);
    let (system_identifier, bounding_sink, ignored_sinks) = sink_positions(client).await?;
    let total = reports.iter().filter(|org| org.cutoff.is_some()).count();
    let mut done = 0;
    let mut rows = 0;
    for report in &mut reports {
        let Some(cutoff) = report.cutoff else {
            if report.effective_days.is_some() {
                // So long that nothing can be old enough.
                report.rows_to_delete = Some(0);
                report.rows_held_back = Some(0);
            }
            continue;
        };
        let count = db::count_expired(client, report.id, cutoff, &system_identifier).await?;
        let to_delete = count.expired.saturating_sub(count.held_back);
        report.rows_to_delete = Some(to_delete);
        report.rows_held_back = Some(count.held_back);
        if to_delete > 0 {
            report.status = OrganizationStatus::Pending;
        }
        done += 1;
        rows += to_delete;
        if let Some(progress) = hooks.progress {
            progress(&Progress {
                batches: 0,
                max_batches: settings.cleanup_max_batches,
                rows,
                organizations_done: done,
                organizations_total: total,
                batch_duration: Duration::ZERO,
            });
        }
    }
    Ok(RunReport {
        outcome: RunOutcome::Completed,
        dry_run: true,
        now,
        duration: started.elapsed(),
        rows_deleted: 0,
        batches: 0,
        sessions: 0,
        batch_size: settings.cleanup_batch_size,
        max_batches: settings.cleanup_max_batches,
        stopped_at_cap: false,
        interrupted: false,
        organizations: reports,
        bounding_sink,
        ignored_sinks,
    })
}

/// A real run: takes a dedicated connection and the lock, then deletes. `None` when
/// another runner holds the lock. `deleted_so_far` tracks committed deletions so a
/// failure can still count them.
async fn locked_run(
    pool: &Pool,
    settings: &RetentionSettings,
    options: &RunOptions,
    now: DateTime<Utc>,
    hooks: RunHooks<'_>,
    started: Instant,
    deleted_so_far: &mut u64,
) -> Result<Option<RunReport>, RetentionError> {
    // Out of the pool for good: the session lock below lives and dies with this
    // connection, which is closed when `client` is dropped, whatever happens.
    let client = deadpool_postgres::Object::take(pool.get().await?);
    if !db::try_lock(&*client).await? {
        return Ok(None);
    }
    let result = delete_expired(
        pool,
        &client,
        settings,
        options,
        now,
        hooks,
        started,
        deleted_so_far,
    )
    .await;
    // Closing the connection releases the lock too; unlocking first just makes the
    // release immediate and visible. A broken connection cannot unlock, and need not.
    if let Err(err) = db::unlock(&*client).await {
        tracing::debug!(error = %err, "Could not release the retention lock explicitly; closing the connection releases it");
    }
    result.map(Some)
}

/// A database session that runs batches: the locked connection, or one more taken
/// out of the pool for the run.
struct Worker<'a> {
    /// Its position among the run's sessions (0: the locked one).
    id: usize,
    client: &'a tokio_postgres::Client,
    statements: db::Statements,
}

impl Worker<'_> {
    /// Asynchronous commit for the whole (dedicated, never pooled) session: a batch
    /// does not wait for its WAL flush, which costs 3-10 ms on ordinary disks, more
    /// than the batch itself. The worst a server crash can do is undo the last few
    /// batches' deletions, and those rows are still expired: the next run deletes them
    /// again. Nothing depends on a deletion being durable, and the sink bound is
    /// checked by each DELETE itself.
    async fn start(id: usize, client: &tokio_postgres::Client) -> Result<Worker<'_>, DbError> {
        db::use_asynchronous_commit(client).await?;
        let statements = db::Statements::prepare(client).await?;
        Ok(Worker {
            id,
            client,
            statements,
        })
    }
}

/// Sessions taken out of the pool for the run beside the locked one (none when
/// `extra` is 0). Closed when dropped, so their session settings never reach the pool.
/// A connection the pool cannot give at once (all in use) only means fewer batches at
/// once: the run does not wait for the API's requests to finish.
async fn extra_sessions(pool: &Pool, extra: usize) -> Vec<deadpool_postgres::ClientWrapper> {
    let mut clients = Vec::with_capacity(extra);
    let mut timeouts = pool.timeouts();
    timeouts.wait = Some(Duration::ZERO);
    for _ in 0..extra {
        match pool.timeout_get(&timeouts).await {
            Ok(client) => clients.push(deadpool_postgres::Object::take(client)),
            Err(err) => {
                tracing::warn!(error = %err, sessions = clients.len() + 1, "Could not open another database session for the retention run; it runs fewer batches at once");
                break;
            }
        }
    }
    clients
}

/// Counts on `worker`, for each `(organization, cutoff)`, how many expired rows it
/// has, up to a fair share of the run's rows (at least a turn): what batches at once
/// may count on. The count reads an organization's newest expired rows first, so it
/// stops before the index entries of rows an earlier run deleted (its oldest), which
/// cost a table read each until vacuum removes them. With a sink bound
/// (`system_identifier`), only if no expired row is held back by it (such rows are
/// counted but may not be deleted); otherwise nothing is learned and batches run one
/// at a time.
async fn learn_expired_rows<'w, 'a>(
    worker: &'w Worker<'a>,
    targets: Vec<(Uuid, DateTime<Utc>)>,
    settings: &RetentionSettings,
    system_identifier: Option<&str>,
) -> (&'w Worker<'a>, Result<Vec<(Uuid, u64)>, DbError>) {
    let result = async {
        if let (Some(system_identifier), Some(latest)) = (
            system_identifier,
            targets.iter().map(|(_, cutoff)| *cutoff).max(),
        ) {
            if db::expired_rows_held_back(worker.client, latest, system_identifier).await? {
                return Ok(Vec::new());
            }
        }
        let batch_size = u64::from(settings.cleanup_batch_size);
        let organizations = u64::try_from(targets.len()).unwrap_or(u64::MAX).max(1);
        let fair_share =
            (batch_size * u64::from(settings.cleanup_max_batches)).div_ceil(organizations);
        let cap = fair_share
            .max(rotation::turn_rows(batch_size, targets.len()))
            .min(batch_size);
        db::organizations_with_expired_rows(worker.client, &targets, cap).await
    }
    .await;
    (worker, result)
}

/// One batch in flight.
struct BatchRun<'w, 'a> {
    worker: &'w Worker<'a>,
    prefix: Prefix,
    result: Result<db::BatchDeleted, DbError>,
    duration: Duration,
}

/// Runs one batch on `worker` (and records the rotation's resume point alongside,
/// in its own tiny transaction, when there is one to record).
async fn run_batch<'w, 'a>(
    worker: &'w Worker<'a>,
    prefix: Prefix,
    targets: Vec<db::BatchTarget>,
    resume: Option<Uuid>,
    system_identifier: &str,
    batch_size: u64,
    turn: u64,
) -> BatchRun<'w, 'a> {
    let started = Instant::now();
    let batch = worker.statements.delete_batch(
        worker.client,
        &targets,
        system_identifier,
        batch_size,
        turn,
    );
    let result = match resume {
        Some(next) => tokio::try_join!(
            worker.statements.set_resume_point(worker.client, next),
            batch
        )
        .map(|(_, batch)| batch),
        None => batch.await,
    };
    BatchRun {
        worker,
        prefix,
        result,
        duration: started.elapsed(),
    }
}

/// The batches of a real run: on the locked connection and, when the queue is long
/// enough to keep several batches full, on up to `cleanup_concurrency - 1` more
/// sessions at once.
#[allow(clippy::too_many_arguments)]
async fn delete_expired(
    pool: &Pool,
    client: &tokio_postgres::Client,
    settings: &RetentionSettings,
    options: &RunOptions,
    now: DateTime<Utc>,
    hooks: RunHooks<'_>,
    started: Instant,
    deleted_so_far: &mut u64,
) -> Result<RunReport, RetentionError> {
    let mut reports = plan(organizations(client, options).await?, settings.days, now);
    let (system_identifier, bounding_sink, ignored_sinks) = sink_positions(client).await?;
    let bounded = bounding_sink.is_some();
    // A run for one organization must not move everybody else's place in the rotation.
    let rotate = options.org.is_none();

    let targets: Vec<(Uuid, DateTime<Utc>)> = reports
        .iter()
        .filter_map(|org| org.cutoff.map(|cutoff| (org.id, cutoff)))
        .collect();
    let organizations_total = reports
        .iter()
        .filter(|org| org.effective_days.is_some())
        .count();
    let with_work: Vec<Uuid> = db::organizations_with_expired_rows(client, &targets, 1)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let resume_at = if rotate {
        db::resume_point(client).await?
    } else {
        None
    };
    let index_of: HashMap<Uuid, usize> = reports
        .iter()
        .enumerate()
        .map(|(index, org)| (org.id, index))
        .collect();
    let turns: Vec<Turn> = with_work
        .iter()
        .filter_map(|id| index_of.get(id))
        .map(|&index| Turn { index, after: None })
        .collect();
    for turn in &turns {
        reports[turn.index].status = OrganizationStatus::Pending;
    }
    // What the second session counts, if there is one (see `learn_expired_rows`).
    let pending: Vec<(Uuid, DateTime<Utc>)> = turns
        .iter()
        .filter_map(|turn| {
            let org = &reports[turn.index];
            org.cutoff.map(|cutoff| (org.id, cutoff))
        })
        .collect();
    let mut rotation = Rotation::new(rotation_order(
        turns,
        |turn| reports[turn.index].id,
        resume_at,
    ));
    let mut organizations_done = organizations_total.saturating_sub(rotation.len());

    let batch_size = u64::from(settings.cleanup_batch_size);
    let concurrency = usize::try_from(settings.cleanup_concurrency)
        .unwrap_or(1)
        .max(1);
    // More sessions only when the queue is long enough for several batches' first
    // turns.
    let first_turns =
        rotation::first_turns(batch_size, rotation::turn_rows(batch_size, rotation.len()));
    let extra = if concurrency > 1 && rotation.len() >= first_turns.saturating_mul(2) {
        concurrency - 1
    } else {
        0
    };
    let extra_clients = extra_sessions(pool, extra).await;
    let mut workers = vec![Worker::start(0, client).await?];
    for (n, extra_client) in extra_clients.iter().enumerate() {
        workers.push(Worker::start(n + 1, extra_client).await?);
    }
    let mut deleted_by = vec![false; workers.len()];

    let mut idle: Vec<&Worker<'_>> = workers.iter().rev().collect();
    // Batches at once must know how many rows each organization can give at least
    // (see rotation::Rotation::prefix_len): the second session counts them first,
    // while the first runs batches one at a time.
    let mut learning = std::pin::pin!(OptionFuture::from(if workers.len() > 1 {
        idle.retain(|worker| worker.id != 1);
        Some(learn_expired_rows(
            &workers[1],
            pending,
            settings,
            bounded.then_some(system_identifier.as_str()),
        ))
    } else {
        None
    }));
    let mut learned = workers.len() == 1;
    let mut in_flight = FuturesUnordered::new();
    let mut in_flight_organizations = 0;
    let mut rows_deleted = 0u64;
    let mut batches = 0u32;
    let mut failure: Option<RetentionError> = None;
    // Where the rotation stands after the last batch, recorded together with the
    // next batch (one round trip for both) or at the end of the run.
    let mut resume: Option<Uuid> = None;
    loop {
        let may_start = |rotation: &Rotation, in_flight: usize| {
            failure.is_none()
                && !rotation.is_empty()
                && !hooks.stop.is_some_and(CancellationToken::is_cancelled)
                && batches + u32::try_from(in_flight).unwrap_or(u32::MAX)
                    < settings.cleanup_max_batches
        };
        // Start batches while a session is free, the cap allows and work is queued.
        while may_start(&rotation, in_flight.len()) {
            if idle.is_empty() {
                break;
            }
            // Share the batch evenly between the organizations waiting, in turns of at
            // least MIN_TURN_ROWS: see audit_retention_delete_batch for why.
            let turn = rotation::turn_rows(batch_size, rotation.len() + in_flight_organizations);
            let alone = idle.len() == 1 && in_flight.is_empty();
            let Some(take) = rotation.prefix_len(batch_size, turn, alone, !in_flight.is_empty())
            else {
                break;
            };
            let Some(worker) = idle.pop() else {
                break;
            };
            let prefix = rotation.take_front(take);
            in_flight_organizations += prefix.len();
            let targets: Vec<db::BatchTarget> = prefix
                .iter()
                .filter_map(|(_, turn)| {
                    let org = &reports[turn.index];
                    // Only organizations with a cutoff were queued.
                    org.cutoff.map(|cutoff| db::BatchTarget {
                        organization_id: org.id,
                        cutoff,
                        after: turn.after,
                    })
                })
                .collect();
            let resume_now = if rotate { resume.take() } else { None };
            in_flight.push(run_batch(
                worker,
                prefix,
                targets,
                resume_now,
                &system_identifier,
                batch_size,
                turn,
            ));
        }
        // Nothing in flight and nothing more to start: done, without waiting for a
        // count still running (a shutdown must not wait for it).
        if in_flight.is_empty() && !may_start(&rotation, 0) {
            break;
        }
        let done = tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => done,
            Some((worker, counts)) = &mut learning, if !learned => {
                learned = true;
                idle.push(worker);
                match counts {
                    Ok(counts) => {
                        for (id, rows) in counts {
                            if let Some(&index) = index_of.get(&id) {
                                // Less what batches finished since deleted: a lower
                                // bound whether or not the count saw those rows.
                                rotation.learn(index, rows.saturating_sub(reports[index].rows_deleted));
                            }
                        }
                    }
                    Err(err) => {
                        failure.get_or_insert(err.into());
                    }
                }
                continue;
            }
            else => break,
        };
        let BatchRun {
            worker,
            prefix,
            result,
            duration: batch_duration,
        } = done;
        in_flight_organizations -= prefix.len();
        idle.push(worker);
        let batch = match result {
            Ok(batch) => batch,
            Err(err) => {
                // Let the batches in flight finish (and count) before reporting it.
                rotation.restore(prefix);
                failure.get_or_insert(err.into());
                continue;
            }
        };
        let batch_rows = batch.rows();
        telemetry::batch_finished(batch_duration, batch_rows);

        // An organization that lost rows and has more goes to the back (its turn is
        // over) and continues after its last row; one with nothing left is finished;
        // those the batch did not reach keep their places.
        let mut served: Vec<Served> = (0..prefix.len())
            .map(|i| {
                if i > batch.reached {
                    Served::NotReached
                } else {
                    Served::Done
                }
            })
            .collect();
        for target in &batch.deleted {
            let index = prefix[target.target].1.index;
            reports[index].rows_deleted += target.rows;
            rotation.forget(index, target.rows);
            if target.more {
                served[target.target] = Served::More { last: target.last };
            }
        }
        let finished = rotation.settle(prefix, &served);
        if batch_rows > 0 {
            deleted_by[worker.id] = true;
            batches += 1;
            rows_deleted += batch_rows;
            *deleted_so_far = rows_deleted;
        }
        if rotate {
            resume = rotation.front().map(|turn| reports[turn.index].id);
        }

        organizations_done += finished.len();
        for &index in &finished {
            reports[index].status = OrganizationStatus::Clean;
        }
        if bounded && failure.is_none() {
            if let Err(err) =
                count_held_back(worker.client, &mut reports, &finished, &system_identifier).await
            {
                failure.get_or_insert(err.into());
            }
        }
        if let Some(progress) = hooks.progress {
            progress(&Progress {
                batches,
                max_batches: settings.cleanup_max_batches,
                rows: rows_deleted,
                organizations_done,
                organizations_total,
                batch_duration,
            });
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    let stopped_at_cap = !rotation.is_empty() && batches >= settings.cleanup_max_batches;
    let interrupted = !rotation.is_empty() && !stopped_at_cap;
    if let Some(next) = resume {
        workers[0]
            .statements
            .set_resume_point(workers[0].client, next)
            .await?;
    }
    Ok(RunReport {
        outcome: RunOutcome::Completed,
        dry_run: false,
        now,
        duration: started.elapsed(),
        rows_deleted,
        batches,
        sessions: deleted_by.iter().filter(|used| **used).count(),
        batch_size: settings.cleanup_batch_size,
        max_batches: settings.cleanup_max_batches,
        stopped_at_cap,
        interrupted,
        organizations: reports,
        bounding_sink,
        ignored_sinks,
    })
}

/// Records, for organizations just finished, how many of their expired rows a sink
/// still holds back.
async fn count_held_back(
    client: &tokio_postgres::Client,
    reports: &mut [OrganizationReport],
    finished: &[usize],
    system_identifier: &str,
) -> Result<(), DbError> {
    let finished: Vec<(usize, DateTime<Utc>)> = finished
        .iter()
        .filter_map(|&index| reports[index].cutoff.map(|cutoff| (index, cutoff)))
        .collect();
    if finished.is_empty() {
        return Ok(());
    }
    let targets: Vec<(Uuid, DateTime<Utc>)> = finished
        .iter()
        .map(|&(index, cutoff)| (reports[index].id, cutoff))
        .collect();
    let held_back = db::count_held_back(client, &targets, system_identifier).await?;
    for ((index, _), rows) in finished.into_iter().zip(held_back) {
        reports[index].rows_held_back = Some(rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::admin::AuditRetention;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn cutoff_is_now_minus_whole_days() {
        let now = DateTime::parse_from_rfc3339("2026-05-12T03:00:00.123456Z")
            .expect("valid timestamp")
            .with_timezone(&Utc);
        assert_eq!(
            cutoff(now, 90),
            Some(
                DateTime::parse_from_rfc3339("2026-02-11T03:00:00.123456Z")
                    .expect("valid timestamp")
                    .with_timezone(&Utc)
            )
        );
        assert_eq!(cutoff(now, 1), Some(now - TimeDelta::days(1)));
        // Beyond year 1 (and PostgreSQL's range): nothing can be that old.
        assert_eq!(cutoff(now, u32::MAX), None);
    }

    #[test]
    fn plan_applies_inherit_days_and_indefinite() {
        let now = Utc::now().trunc_subsecs(6);
        let org = |n, retention| OrganizationRetention {
            id: id(n),
            slug: format!("org-{n}"),
            retention,
        };
        let reports = plan(
            vec![
                org(1, AuditRetention::Inherit),
                org(2, AuditRetention::Days(7)),
                org(3, AuditRetention::Indefinite),
            ],
            90,
            now,
        );
        assert_eq!(reports[0].effective_days, Some(90));
        assert_eq!(reports[0].cutoff, Some(now - TimeDelta::days(90)));
        assert_eq!(reports[1].effective_days, Some(7));
        assert_eq!(reports[1].cutoff, Some(now - TimeDelta::days(7)));
        assert_eq!(reports[2].effective_days, None);
        assert_eq!(reports[2].cutoff, None);
        assert_eq!(reports[2].status, OrganizationStatus::Indefinite);
    }
}
