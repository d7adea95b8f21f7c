//! The pipeline: doorbell → read batch → sanitize → append → fsync → advance.
//!
//! This is the one place that joins the database, the sanitizer and the sink.
//!
//! **Position.** The mirror's position `(tx, id)` lives with the files: it is the
//! position of the last whole line in the sink (looked up by its `id`), or the
//! baseline recorded in the sink's state file when the sink was first set up (or
//! re-baselined). Because it is derived from what is on disk, a crash at any point
//! resumes exactly after the last line written — nothing lost, nothing twice. The
//! position is also published to the database (at most every second; when the mirror
//! falls idle, as soon as that second is up; and on shutdown) so that retention never
//! deletes a row the sink has not written.
//!
//! **Identity.** The state file records the cluster's `system_identifier`, the
//! database (oid and name) and the timeline ([`identity`]). After a restore into a new
//! cluster, transaction ids restart and the stored position means nothing; in another
//! database of the cluster it names other rows; after a failover that lost the last
//! mirrored event, transaction ids below it are reissued. The mirror then stops with
//! a clear error (readiness fails) until an operator runs
//! `compartment-auditd sink rebaseline`. A new timeline whose server has the last
//! mirrored event is followed.
//!
//! **Reading.** Batches come in commit order from below the visibility horizon
//! ([`crate::db::cursor`]). While one batch is being written the next one is read, so
//! a catch-up keeps the database and the disk busy at the same time. When a read comes
//! back short the mirror waits for the doorbell, the safety timer, or — while rows
//! wait behind an open transaction — a short re-poll timer.

pub mod admin;
mod commit;
mod identity;
pub mod leader;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{FileSinkSettings, FsyncPolicy, MirrorSettings, Settings, StartFrom};
use crate::db::cursor::{self, Batch, Position};
use crate::db::lease::{self, Candidate, Published};
use crate::db::listener::Doorbell;
use crate::db::DbError;
use crate::health::Health;
use crate::sanitize::Sanitizer;
use crate::sink::{FileSink, Recovery, SinkError, SinkOptions};
use crate::telemetry;

use self::leader::{ElectionOptions, Fence, Leadership, Previous};

/// Readiness check names owned by the mirror.
pub const CHECK_SINK: &str = "sink";
/// Readiness check of the mirror loop itself (progress, identity).
pub const CHECK_MIRROR: &str = "mirror";

/// Where the mirror is, for the service manager (READY after catch-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Working out the position (or waiting for the database to do so).
    Starting,
    /// Reading full batches: behind the database.
    CatchingUp,
    /// A read came back short: everything committed below the horizon is written.
    CaughtUp,
    /// Stopped until an operator acts; the reason.
    Halted(String),
    /// Another replica of the sink group appends; this one waits to take over.
    Standby,
}

/// Rows waiting behind an open transaction this long no longer hold back READY.
const CAUGHT_UP_DESPITE_WAIT: Duration = Duration::from_secs(30);

/// During a catch-up, ask the service manager for more start time this often.
const EXTEND_START_EVERY: Duration = Duration::from_secs(10);

/// What one read may pull into memory (metadata bytes as received; the first row
/// always comes). With the batch being written and the next one read ahead, about
/// twice this is in flight at most, which keeps a catch-up's memory flat however large
/// the rows.
const MAX_BATCH_BYTES: i64 = 8 * 1024 * 1024;

/// How often the durable position is published to the database at most.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Version of the state file layout written by this build.
const STATE_VERSION: u32 = 1;

/// What the mirror keeps in the sink's state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkState {
    /// Layout version.
    pub version: u32,
    /// Name under which the position is published.
    pub sink_id: String,
    /// The PostgreSQL cluster these positions belong to.
    pub system_identifier: String,
    /// Where mirroring started (or was re-based): every row at or before it counts as handled.
    pub baseline: Position,
    /// SHA-256 of the sink's last line when the baseline was set; that line (from a
    /// previous database) is then not used to derive the position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_last_line_sha256: Option<String>,
    /// `pg_database.oid` of the database (absent in state files of older versions:
    /// adopted on the next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_oid: Option<u32>,
    /// The database's name (for messages; the oid is what is compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// The server's timeline the position was last confirmed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// This sink directory's identity in its sink group (the lease and the published
    /// position name it); set on the first start of a build that knows groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<uuid::Uuid>,
}

/// Why the mirror cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A database operation failed (usually transient).
    #[error(transparent)]
    Db(#[from] DbError),
    /// Could not get a pooled connection.
    #[error("cannot get a database connection: {0}")]
    Pool(String),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The sink's state file is unreadable.
    #[error("the sink state file is not valid: {0}")]
    BadState(String),
    /// The database was replaced since the sink's position was recorded.
    #[error(
        "the database cluster changed (system identifier {found}, the sink was set up against {expected}); \
         positions cannot be compared: stop the daemon, then run `compartment-auditd sink rebaseline`"
    )]
    IdentityChanged {
        /// Identifier in the state file.
        expected: String,
        /// Identifier of the connected cluster.
        found: String,
    },
    /// Another database of the same cluster than the one the sink was set up against.
    #[error(
        "the sink was set up against database {expected}, but is now connected to another database, {found}, \
         of the same cluster; positions cannot be compared: point the daemon back at {expected}, \
         or stop it and run `compartment-auditd sink rebaseline`"
    )]
    DatabaseChanged {
        /// The database in the state file.
        expected: String,
        /// The connected database.
        found: String,
    },
    /// The server changed timeline (failover, point-in-time recovery) and does not
    /// have the last mirrored event.
    #[error(
        "the database server changed timeline ({from} -> {to}: a failover or a point-in-time recovery) \
         and does not have the last mirrored event ({last_event}): transactions already mirrored were lost, \
         and the transaction ids they had can be given to new events, which would never be mirrored; \
         stop the daemon, keep the sink's files (they hold the lost events), then run \
         `compartment-auditd sink rebaseline`"
    )]
    TimelineChanged {
        /// The timeline in the state file.
        from: u32,
        /// The server's timeline now.
        to: u32,
        /// The last event written to the sink (`id N`, with its `tx` when known).
        last_event: String,
    },
    /// The last line in the sink names an event the database does not have.
    #[error(
        "the sink's last line is event {id}, which the database does not have and which is not the \
         published position; refusing to guess where to resume (run `compartment-auditd sink rebaseline` \
         if the database was replaced)"
    )]
    UnknownLastLine {
        /// The event id of the last line.
        id: i64,
    },
    /// The sink's last line is not a valid sink line.
    #[error("the sink's last line is not a valid audit line (no numeric \"id\")")]
    UnparsableLastLine,
    /// A blocking task panicked.
    #[error("the sink worker stopped unexpectedly: {0}")]
    Worker(String),
    /// After a failed write the sink's lines no longer match what the mirror knows
    /// it wrote durably; only a restart (which reads the files) can tell where to resume.
    #[error(
        "the sink directory changed under the daemon ({0}); restart the daemon to resume from its files"
    )]
    SinkChanged(String),
    /// The lease lapsed (or was lost): nothing may be appended now.
    #[error("this replica does not hold the sink group's lease right now")]
    NotLeader,
    /// Another replica took the lease over: a publication was refused.
    #[error("another replica took the sink group's lease over")]
    Superseded,
}

impl MirrorError {
    /// Errors that need an operator: retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MirrorError::IdentityChanged { .. }
                | MirrorError::DatabaseChanged { .. }
                | MirrorError::TimelineChanged { .. }
                | MirrorError::UnknownLastLine { .. }
                | MirrorError::UnparsableLastLine
                | MirrorError::BadState(_)
                | MirrorError::SinkChanged(_)
        )
    }
}

/// The running pipeline.
pub struct Mirror {
    /// Pooled connections for reads and position publishing.
    pool: Pool,
    /// Rung on notifications and reconnects.
    doorbell: Doorbell,
    /// The same sanitizer that serves the API.
    sanitizer: Sanitizer,
    /// Readiness checks.
    health: Arc<Health>,
    /// Read sizes and timers.
    settings: MirrorSettings,
    /// Sink settings (start position, fsync policy, sink id).
    sink_settings: FileSinkSettings,
    /// The sink; a std mutex because it is only locked inside blocking tasks.
    sink: Arc<Mutex<FileSink>>,
    /// Where the mirror is, for READY.
    phase: watch::Sender<Phase>,
    /// Reloaded settings, when the daemon reloads its configuration.
    reloads: Option<watch::Receiver<Arc<Settings>>>,
    /// While leading: the fence to check before appending, and the epoch to publish under.
    term: Option<Term>,
}

/// One leadership of the sink group, as the writing code needs it.
#[derive(Clone)]
struct Term {
    fence: Fence,
    epoch: i64,
    me: Candidate,
}

/// How a term ended.
enum TermEnd {
    /// Shutting down (the final position was published, if still leading).
    Shutdown(Option<Position>),
    /// Another replica took over: back to standby.
    Deposed,
}

impl Mirror {
    /// A mirror over an opened sink.
    pub fn new(
        pool: Pool,
        doorbell: Doorbell,
        sanitizer: Sanitizer,
        health: Arc<Health>,
        settings: MirrorSettings,
        sink_settings: FileSinkSettings,
        sink: FileSink,
    ) -> Self {
        // Opened means writable; a failed append or fsync flips it.
        health.set_ok(CHECK_SINK);
        health.register(CHECK_MIRROR, "the mirror has not started yet");
        Mirror {
            pool,
            doorbell,
            sanitizer,
            health,
            settings,
            sink_settings,
            sink: Arc::new(Mutex::new(sink)),
            phase: watch::Sender::new(Phase::Starting),
            reloads: None,
            term: None,
        }
    }

    /// Applies reloaded settings (batch size, timers, fsync policy, rotation and
    /// retention of files) between batches.
    pub fn with_reloads(mut self, reloads: watch::Receiver<Arc<Settings>>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// Takes reloaded settings, if any arrived since the last batch.
    async fn apply_reload(&mut self) {
        let Some(reloads) = self.reloads.as_mut() else {
            return;
        };
        if !reloads.has_changed().unwrap_or(false) {
            return;
        }
        let settings = reloads.borrow_and_update().clone();
        self.settings = settings.mirror.clone();
        self.sink_settings = settings.file_sink.clone();
        let options = SinkOptions::from_settings(&settings.file_sink);
        let sink = self.sink.clone();
        if let Err(err) =
            tokio::task::spawn_blocking(move || lock(&sink).reconfigure(options)).await
        {
            tracing::warn!(error = %err, "Cannot apply the reloaded sink settings");
        }
    }

    /// Follows the mirror's phase.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Runs until `shutdown`. The replica stands by until it wins its sink group's
    /// lease, then mirrors ([`Mirror::term`]) until it loses it or shuts down; on
    /// shutdown the leader finishes the batch in hand, fsyncs, publishes the position
    /// and hands the lease over. Transient failures are retried forever; a permanent
    /// one (replaced database) halts mirroring but keeps the process up, not ready,
    /// and hands the lease to a standby.
    pub async fn run(
        mut self,
        recovery: Recovery,
        shutdown: CancellationToken,
    ) -> Result<(), MirrorError> {
        let mut stored: Option<SinkState> = match &recovery.state {
            None => None,
            Some(value) => match serde_json::from_value(value.clone()) {
                Ok(state) => Some(state),
                Err(e) => {
                    let err = MirrorError::BadState(e.to_string());
                    return self.halt(err, &shutdown).await;
                }
            },
        };
        let me = Candidate {
            name: self.sink_settings.replica_name(),
            instance: uuid::Uuid::new_v4(),
            sink: stored
                .as_ref()
                .and_then(|s| s.instance)
                .unwrap_or_else(uuid::Uuid::new_v4),
        };
        let mut leadership = Leadership::start(
            self.pool.clone(),
            ElectionOptions {
                sink_id: self.sink_settings.sink_id.clone(),
                me: me.clone(),
                lease_timeout: self.sink_settings.lease_timeout,
                group_stall_after: self.sink_settings.group_stall_after,
            },
            self.health.clone(),
        );
        let mut last_line = recovery.last_line.clone();
        let mut ended: Option<i64> = None;
        loop {
            // The elector keeps the mirror check while this replica stands by.
            self.health.stop_beats(CHECK_MIRROR);
            let phase = &self.phase;
            let standby = || {
                phase.send_if_modified(|p| {
                    let changed = *p != Phase::Standby;
                    *p = Phase::Standby;
                    changed
                });
            };
            let Some((epoch, previous)) = leadership.wait_leader(ended, &shutdown, standby).await
            else {
                leadership.finish(None).await;
                return self.close().await;
            };
            if ended.is_some() {
                last_line = lock(&self.sink).last_line().map(<[u8]>::to_vec);
            }
            self.term = Some(Term {
                fence: leadership.fence().clone(),
                epoch,
                me: me.clone(),
            });
            let result = self
                .term(
                    &leadership,
                    &previous,
                    &mut stored,
                    last_line.clone(),
                    &shutdown,
                )
                .await;
            self.term = None;
            match result {
                Ok(TermEnd::Deposed) => {
                    tracing::info!(
                        epoch,
                        "Stopped appending: another replica leads the sink group now"
                    );
                    ended = Some(epoch);
                }
                Ok(TermEnd::Shutdown(published)) => {
                    leadership.finish(published).await;
                    return self.close().await;
                }
                Err(err) => {
                    // Let a healthy standby take over while this one waits for an operator.
                    leadership.finish(None).await;
                    return self.halt(err, &shutdown).await;
                }
            }
        }
    }

    /// One leadership: works out where to resume, then mirrors until the lease is
    /// lost (`Deposed`) or `shutdown`; a permanent error is returned.
    async fn term(
        &mut self,
        leadership: &Leadership,
        previous: &Previous,
        stored: &mut Option<SinkState>,
        last_line: Option<Vec<u8>>,
        shutdown: &CancellationToken,
    ) -> Result<TermEnd, MirrorError> {
        let shutdown = shutdown.clone();
        let epoch = self.term.as_ref().map_or(0, |t| t.epoch);
        // A loop iteration waits at most one poll interval; three without a beat means
        // it is stuck (a hung read or write), which readiness and the watchdog report.
        let stale_after = (self.settings.poll_interval * 3).max(Duration::from_secs(5));
        let mut backoff =
            crate::db::backoff::Backoff::new(Duration::from_millis(100), self.settings.max_backoff);

        // 1. Where to resume.
        let (position, sink_state) = loop {
            if !leadership.leads(epoch) {
                return Ok(TermEnd::Deposed);
            }
            match self.establish_position(stored, last_line.as_deref()).await {
                Ok(found) => break found,
                Err(MirrorError::Superseded) => return Ok(TermEnd::Deposed),
                Err(err) if err.is_permanent() => return Err(err),
                Err(err) => {
                    telemetry::mirror::mirror_failed("start", &err);
                    self.health.set_failing(
                        CHECK_MIRROR,
                        format!("cannot determine the position: {err}"),
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(TermEnd::Shutdown(None)),
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            }
        };
        // Lines up to the previous leader's appended position (at its last renewal)
        // are in its files too, unless it handed over cleanly.
        let rewrite_until = previous
            .appended
            .filter(|_| {
                !previous.released && previous.sink != self.term.as_ref().map(|t| t.me.sink)
            })
            .filter(|until| *until > position);
        if let Some(until) = rewrite_until {
            tracing::info!(
                from = %position,
                to = %until,
                previous = previous.name.as_deref().unwrap_or("unknown"),
                "Taking over: the previous leader had appended past the group's published position; \
                 those events are written again here (collectors deduplicate on id)"
            );
        }
        backoff.reset();
        tracing::info!(%position, "Mirroring audit events to the file sink");
        self.health.set_ok(CHECK_MIRROR);
        self.health.expect_beats(CHECK_MIRROR, stale_after);
        self.phase.send_replace(Phase::CatchingUp);
        let mut extended_at = Instant::now();

        // 2. The loop.
        let mut state = LoopState {
            appended: position,
            durable: position,
            published: position,
            published_at: Instant::now(),
            last_sync: Instant::now(),
            system_identifier: sink_state.system_identifier.clone(),
            sink_state,
            start: position,
            start_line: last_line,
            syncing: None,
            unsynced: commit::Unsynced::default(),
            held: None,
            stall_reported: false,
            rewrite_until,
            superseded: false,
        };
        let mut prefetched: Option<Batch> = None;
        while !shutdown.is_cancelled() && !state.superseded && leadership.leads(epoch) {
            self.health.beat(CHECK_MIRROR);
            self.apply_reload().await;
            // Group commit: a finished fsync moves the durable position.
            match self.finish_sync(&mut state, false, &shutdown).await {
                // A failed fsync took lines back: what was read after them is stale.
                Ok(true) => prefetched = None,
                Ok(false) => {}
                Err(err) => return Err(err),
            }
            let batch = match prefetched.take() {
                Some(batch) => batch,
                None => match self.read(state.appended).await {
                    Ok(batch) => batch,
                    Err(err) => {
                        telemetry::mirror::mirror_failed("read", &err);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                },
            };
            // Rows from another timeline (a promoted standby) are written only once the
            // last mirrored event is confirmed there.
            if let Some(timeline) = batch.timeline {
                if let Err(err) = self.follow_timeline(&mut state, timeline).await {
                    if err.is_permanent() {
                        return Err(err);
                    }
                    telemetry::mirror::mirror_failed("timeline", &err);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            }
            // Group commit keeps at most one batch appended beyond the running fsync:
            // the next waits for it, so a slow or hung disk holds the pipeline back
            // (and shows as a stall) instead of letting unsynced lines pile up.
            if state.syncing.is_some() && !state.unsynced.is_empty() && !batch.events.is_empty() {
                match self.finish_sync(&mut state, true, &shutdown).await {
                    // A failed fsync took lines back: this batch follows a gap.
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(err) => return Err(err),
                }
            }
            // A full batch means more is probably waiting: read it while this one is
            // written. (Whether a short one means "caught up" is decided in `idle`.)
            let full = batch.more;
            if full && extended_at.elapsed() >= EXTEND_START_EVERY {
                crate::service::extend_start_timeout(EXTEND_START_EVERY * 3);
                extended_at = Instant::now();
            }
            let Some(after) = batch.last_position() else {
                self.idle(&mut state, &shutdown).await?;
                continue;
            };
            let rewrites = state.rewrite_until.map_or(0, |until| {
                batch.positions.iter().filter(|p| **p <= until).count()
            });
            let (written, next) = if full {
                let (written, next) = tokio::join!(self.write(batch), self.read(after));
                (written, next.ok())
            } else {
                self.write_reading_ahead_on_ring(batch, after).await
            };
            match written {
                Ok(written) => {
                    backoff.reset();
                    if rewrites > 0 {
                        telemetry::leader::rewrites(rewrites as u64);
                    }
                    leadership.set_appended(after);
                    telemetry::mirror::mirror_recovered();
                    self.health.set_ok(CHECK_SINK);
                    state.appended = after;
                    state.unsynced.extend(written.unsynced);
                    self.appended(&mut state, written.runner);
                    if written.durable {
                        state.durable = after;
                        state.last_sync = Instant::now();
                    } else if self.sink_settings.fsync == FsyncPolicy::Never {
                        // Documented: with `never`, appended counts as durable.
                        state.durable = after;
                    }
                    let moved = match self.maybe_sync(&mut state, false, &shutdown).await {
                        Ok(moved) => moved,
                        Err(err) => return Err(err),
                    };
                    self.maybe_publish(&mut state, false).await;
                    // A failed fsync took lines back: what was read after them is stale.
                    prefetched = if moved { None } else { next };
                    // A short batch took everything readable: wait for the doorbell now
                    // rather than read again at once (an empty read per event when
                    // following live commits). A ring during the write left a permit,
                    // so nothing committed meanwhile waits longer.
                    if !full && !moved && prefetched.is_none() {
                        self.idle(&mut state, &shutdown).await?;
                    }
                }
                Err((MirrorError::NotLeader, batch)) => {
                    // Nothing of it was appended: the lease lapsed unrenewed (the
                    // database is slow or away). Keep it; append once renewed, or end
                    // the term when another replica took over.
                    prefetched = Some(batch);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                Err((err, batch)) => {
                    telemetry::mirror::mirror_failed("write", &err);
                    self.health.set_failing(CHECK_SINK, err.to_string());
                    prefetched = match self
                        .resume_after_sink_error(&mut state, Some(batch), &shutdown)
                        .await
                    {
                        Ok(rest) => rest,
                        Err(err) => return Err(err),
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }

        // 3. Drain: make what was appended durable and say so. (A failure here leaves
        // the sink's files as the position; the next start resumes from them.)
        let _ = self.maybe_sync(&mut state, true, &shutdown).await;
        self.maybe_publish(&mut state, true).await;
        if shutdown.is_cancelled() && !state.superseded {
            tracing::info!(position = %state.durable, "The mirror stopped");
            return Ok(TermEnd::Shutdown(
                (state.published == state.durable).then_some(state.published),
            ));
        }
        tracing::info!(position = %state.durable, appended = %state.appended, "The mirror stopped appending");
        Ok(TermEnd::Deposed)
    }

    /// Works out where to resume; see the module documentation. The position is the
    /// later of this directory's own (its last line, or its baseline) and the group's
    /// published position: a replica taking over starts after what the group has
    /// written, whatever its own files hold.
    async fn establish_position(
        &self,
        stored: &mut Option<SinkState>,
        last_line: Option<&[u8]>,
    ) -> Result<(Position, SinkState), MirrorError> {
        let term = self.term.clone().ok_or(MirrorError::NotLeader)?;
        let client = self.client().await?;
        let found = identity::current(&**client).await?;
        let system_identifier = found.system_identifier.clone();
        let sink_id = self.sink_settings.sink_id.clone();
        // Same cluster, same database (older state files adopt the current one).
        let checked = stored
            .as_ref()
            .map(|stored| identity::check(stored, &found))
            .transpose()?;
        let timeline_changed = checked
            .as_ref()
            .and_then(|s| s.timeline)
            .filter(|from| *from != found.timeline);
        let group = lease::group_position(&**client, &sink_id)
            .await?
            .filter(|g| g.system_identifier == system_identifier);
        let published_by_other = group
            .as_ref()
            .is_some_and(|g| g.sink_instance.is_some_and(|s| s != term.me.sink));

        let mut own = stored.as_ref().map(|s| s.baseline);
        let mut from_line = false;
        let mut back = false;
        if let Some(line) = last_line {
            let ignored = stored
                .as_ref()
                .and_then(|s| s.baseline_last_line_sha256.as_deref())
                .is_some_and(|hash| hash == sha256_hex(line));
            if !ignored {
                let id = line_id(line)?;
                let at = match cursor::position_of(&**client, id).await? {
                    Some(at) => Some(at),
                    // Retention may delete a row once its line is durable and
                    // published; then the published position is that very row, or
                    // (in a group) another replica has published past it since.
                    None => match &group {
                        Some(g) if g.position.id == id => Some(g.position),
                        Some(_) if published_by_other => None,
                        // After a failover, a lost event is the failover's doing.
                        _ => match timeline_changed {
                            Some(from) => {
                                return Err(MirrorError::TimelineChanged {
                                    from,
                                    to: found.timeline,
                                    last_event: format!("id {id}"),
                                })
                            }
                            None => return Err(MirrorError::UnknownLastLine { id }),
                        },
                    },
                };
                if let Some(at) = at {
                    from_line = own.is_none_or(|p| at > p);
                    own = Some(own.map_or(at, |p| p.max(at)));
                }
            }
        }

        let position = match (own, &group) {
            (Some(own), Some(g)) if g.position > own => {
                if published_by_other {
                    telemetry::leader::resumed_behind("takeover");
                    tracing::info!(
                        own = %own,
                        group = %g.position,
                        "Taking over the sink group: this directory's files end before the group's \
                         published position, which other replicas wrote; resuming after it"
                    );
                    g.position
                } else if from_line {
                    // Lines this directory had published are gone from it (a file
                    // removed, or the directory restored from an older backup): write
                    // them again from the database, and say that any retention has
                    // deleted since cannot come back.
                    telemetry::leader::resumed_behind("lines_lost");
                    tracing::error!(
                        own = %own,
                        published = %g.position,
                        "This sink directory's files end before the position it published: lines \
                         were lost from it (a file removed, or the directory restored from an older \
                         backup). Writing the events in between again from the database; any that \
                         retention has deleted since are gone from this directory for good (collect \
                         them from another copy)"
                    );
                    back = true;
                    own
                } else {
                    // Only the baseline is left (the state file kept, every log file
                    // gone): not back to the baseline, but after what was published.
                    telemetry::leader::resumed_behind("lines_lost");
                    tracing::error!(
                        baseline = %own,
                        published = %g.position,
                        "This sink directory's files end before the position it published: its log \
                         files were deleted and only the state file is left. Resuming after the \
                         published position; the events before it are not written here again"
                    );
                    g.position
                }
            }
            (Some(own), _) => own,
            (None, Some(g)) => {
                // A new directory (a new pod's emptyDir), or one lost or replaced:
                // resume from what the group published. Lines written but not yet
                // published come again.
                tracing::warn!(
                    position = %g.position,
                    "The sink directory has no position; resuming from the position the sink group \
                     last published (events written after that may appear twice)"
                );
                g.position
            }
            (None, None) => match self.sink_settings.start_from {
                StartFrom::Now => cursor::current_horizon(&**client).await?,
                StartFrom::Beginning => Position::BEGINNING,
            },
        };

        let mut state = checked.unwrap_or_else(|| SinkState {
            version: STATE_VERSION,
            sink_id: sink_id.clone(),
            system_identifier: system_identifier.clone(),
            baseline: position,
            baseline_last_line_sha256: None,
            database_oid: Some(found.database_oid),
            database_name: Some(found.database_name.clone()),
            timeline: Some(found.timeline),
            instance: None,
        });
        // This directory's identity in its sink group, kept from the first start of a
        // build that knows groups.
        state.instance.get_or_insert(term.me.sink);
        if let Some(from) = timeline_changed {
            identity::confirm_timeline(
                &**client,
                &sink_id,
                &system_identifier,
                position,
                from,
                found.timeline,
            )
            .await?;
            state.timeline = Some(found.timeline);
            telemetry::mirror::timeline_followed(from, found.timeline, position);
        }
        if stored.as_ref() != Some(&state) {
            self.write_state(&state).await?;
            *stored = Some(state.clone());
        }
        // Publish before the first read so retention cannot delete what we are about
        // to mirror.
        match lease::publish(
            &**client,
            &sink_id,
            &system_identifier,
            position,
            &term.me,
            term.epoch,
            back,
        )
        .await?
        {
            Published::Held => Ok((position, state)),
            Published::Superseded => Err(MirrorError::Superseded),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MirrorError> {
        self.pool
            .get()
            .await
            .map_err(|e| MirrorError::Db(DbError::from(e)))
    }

    async fn read(&self, after: Position) -> Result<Batch, MirrorError> {
        let client = self.client().await?;
        let limit = i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX);
        Ok(cursor::read_batch(&client, after, limit, MAX_BATCH_BYTES).await?)
    }

    /// Sanitizes, encodes and appends a batch off the async workers. Returns whether
    /// it is durable; on failure hands the batch back, and
    /// [`Mirror::resume_after_sink_error`] works out which part of it the sink kept.
    async fn write(&self, batch: Batch) -> Result<Written, (MirrorError, Batch)> {
        let sink = self.sink.clone();
        let sanitizer = self.sanitizer.clone();
        let group_commit = self.group_commit();
        let Some(term) = self.term.clone() else {
            return Err((MirrorError::NotLeader, batch));
        };
        let task = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::with_capacity(batch.events.len() * 512);
            for event in &batch.events {
                let (sanitized, report) = sanitizer.sanitize_event(event);
                telemetry::sanitize::record(&report);
                crate::event::encode_line(&sanitized, &mut lines);
            }
            let mut sink = lock(&sink);
            // The fence, as late as possible: right before the bytes go to the file.
            if term.fence.current() != Some(term.epoch) {
                drop(sink);
                return (None, batch);
            }
            let result = if group_commit {
                // The fsync runs outside the sink, while the next batch is read and
                // appended (see `commit`); one starts now unless one is running.
                sink.append_unsynced(&lines).and_then(|appended| {
                    let runner = if sink.sync_outstanding() {
                        None
                    } else {
                        sink.start_sync()?
                    };
                    Ok((appended, runner))
                })
            } else {
                sink.append(&lines).map(|appended| (appended, None))
            };
            drop(sink);
            (Some(result), batch)
        });
        let (result, batch) = match task.await {
            Ok((None, batch)) => return Err((MirrorError::NotLeader, batch)),
            Ok((Some(result), batch)) => (result, batch),
            Err(err) => {
                // The batch is gone with the panicked task; it is read again from the
                // sink's last line, as after any failed write.
                return Err((MirrorError::Worker(err.to_string()), Batch::default()));
            }
        };
        match result {
            Ok((appended, runner)) => {
                let events = commit::Unsynced::of(&batch.events);
                let unsynced = if group_commit {
                    // Counted once an fsync has made them durable.
                    events
                } else {
                    events.record();
                    commit::Unsynced::default()
                };
                Ok(Written {
                    durable: appended.durable,
                    runner,
                    unsynced,
                })
            }
            Err(err) => Err((MirrorError::Sink(err), batch)),
        }
    }

    /// Writes a short batch; if the doorbell rings meanwhile (a commit while this batch
    /// is sanitized, appended and fsync'd), reads the next batch at the same time
    /// instead of after, so that a commit arriving during an fsync waits for the longer
    /// of the two rather than both.
    async fn write_reading_ahead_on_ring(
        &self,
        batch: Batch,
        after: Position,
    ) -> (Result<Written, (MirrorError, Batch)>, Option<Batch>) {
        let write = self.write(batch);
        tokio::pin!(write);
        tokio::select! {
            biased;
            written = &mut write => (written, None),
            _ = self.doorbell.rings.notified() => {
                let (written, next) = tokio::join!(&mut write, self.read(after));
                (written, next.ok())
            }
        }
    }

    /// Waits for something to do: the doorbell, the safety timer, or a short re-poll
    /// while rows wait behind an open transaction.
    async fn idle(
        &self,
        state: &mut LoopState,
        shutdown: &CancellationToken,
    ) -> Result<(), MirrorError> {
        // Make appended lines durable once the interval policy says so (not on every
        // idle turn: under a trickle of commits that would fsync after every batch and
        // make `interval` behave like `always`). A failed fsync moves
        // `state.appended` back; the next read starts there.
        if self.maybe_sync(state, false, shutdown).await? {
            return Ok(());
        }
        // Publishing is a write transaction (a WAL flush) on the database. Under a
        // trickle of small commits the mirror runs dry after nearly every batch, so
        // publishing on every idle turn would add one commit per batch; keep to the
        // interval, and wake up when the pending position falls due.
        self.maybe_publish(state, false).await;
        let horizon = match self.client().await {
            Ok(client) => cursor::horizon_wait(&client, state.appended).await.ok(),
            Err(_) => None,
        };
        // The reissued transaction ids of a failover sort below the cursor, so no read
        // returns their rows: the idle turn watches the timeline too.
        if let Some(horizon) = horizon {
            match self.follow_timeline(state, horizon.timeline).await {
                Err(err) if err.is_permanent() => return Err(err),
                Err(err) => telemetry::mirror::mirror_failed("timeline", &err),
                Ok(()) => {}
            }
        }
        let wait = horizon.and_then(|h| h.wait);
        telemetry::mirror::horizon_wait(wait);
        self.watch_stall(state, wait.is_some());
        // Caught up: nothing readable is left and nothing waits behind an open
        // transaction — or something has waited so long (a long transaction elsewhere
        // in the cluster) that holding back readiness would help nobody.
        if *self.phase.borrow() == Phase::CatchingUp
            && wait.is_none_or(|w| w >= CAUGHT_UP_DESPITE_WAIT)
        {
            self.phase.send_replace(Phase::CaughtUp);
        }
        let timer = if wait.is_some() {
            self.settings.horizon_poll_interval
        } else {
            self.settings.poll_interval
        };
        // Zero when publishing just failed: retry on the next wake-up, never spin.
        let publish_due = (state.published != state.durable)
            .then(|| PUBLISH_INTERVAL.saturating_sub(state.published_at.elapsed()))
            .filter(|due| !due.is_zero());
        let timer = publish_due.map_or(timer, |due| timer.min(due));
        // Wake up when the pending fsync falls due (policy `interval`; under group
        // commit the running fsync's completion wakes us below).
        let sync_due = (!self.group_commit() && state.durable != state.appended).then(|| {
            self.sink_settings
                .fsync_interval
                .saturating_sub(state.last_sync.elapsed())
                .max(Duration::from_millis(1))
        });
        let timer = sync_due.map_or(timer, |due| timer.min(due));
        // Group commit: the running fsync finishing moves the durable position.
        let synced = state.syncing.as_ref().map(|s| Arc::clone(&s.done));
        let synced = async {
            match synced {
                Some(done) => done.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.doorbell.rings.notified() => {}
            _ = tokio::time::sleep(timer) => {}
            () = synced => {}
        }
        Ok(())
    }

    /// The server reports `timeline`: if the state file says another, confirms that
    /// the server has the last event written to the sink ([`identity::confirm_timeline`])
    /// and records the new timeline; a permanent error when it does not.
    async fn follow_timeline(
        &self,
        state: &mut LoopState,
        timeline: u32,
    ) -> Result<(), MirrorError> {
        let Some(from) = state.sink_state.timeline.filter(|from| *from != timeline) else {
            return Ok(());
        };
        let client = self.client().await?;
        identity::confirm_timeline(
            &**client,
            &self.sink_settings.sink_id,
            &state.system_identifier,
            state.appended,
            from,
            timeline,
        )
        .await?;
        let sink_state = SinkState {
            timeline: Some(timeline),
            ..state.sink_state.clone()
        };
        self.write_state(&sink_state).await?;
        state.sink_state = sink_state;
        telemetry::mirror::timeline_followed(from, timeline, state.appended);
        Ok(())
    }

    /// Marks the `mirror` check degraded (and says so in the log, once) while events
    /// have waited behind the horizon for `mirror.horizon_stall_warning` without the
    /// mirror moving; back to ok when nothing waits. Timed by the mirror's own clock
    /// from its first idle turn that found events waiting at this position, so a
    /// backdated `occurred_at` cannot fake a stall.
    fn watch_stall(&self, state: &mut LoopState, waiting: bool) {
        let stalled = if waiting {
            let since = match state.held {
                Some((since, at)) if at == state.appended => since,
                _ => {
                    let now = Instant::now();
                    state.held = Some((now, state.appended));
                    now
                }
            };
            Some(since.elapsed())
        } else {
            state.held = None;
            None
        };
        let limit = self.settings.horizon_stall_warning;
        match stalled.filter(|s| !limit.is_zero() && *s >= limit) {
            Some(stalled) => {
                if !state.stall_reported {
                    telemetry::mirror::horizon_stalled(stalled, state.appended);
                    state.stall_reported = true;
                }
                self.health.set_degraded(
                    CHECK_MIRROR,
                    format!(
                        "events have waited {}s behind an older open transaction in the cluster \
                         (look in pg_stat_activity, and in pg_prepared_xacts for a prepared transaction)",
                        stalled.as_secs()
                    ),
                );
            }
            None if state.stall_reported => {
                telemetry::mirror::horizon_released();
                state.stall_reported = false;
                self.health.set_ok(CHECK_MIRROR);
            }
            None => {}
        }
    }

    /// Fsyncs appended lines when the interval policy says so (or `force`). Returns
    /// whether a failed fsync moved `state.appended` back.
    async fn maybe_sync(
        &self,
        state: &mut LoopState,
        force: bool,
        shutdown: &CancellationToken,
    ) -> Result<bool, MirrorError> {
        // Group commit: the running fsync (waited for when forced), or one for lines
        // that have none yet. Forced, the synchronous fsync below covers the rest.
        if self.finish_sync(state, force, shutdown).await? {
            return Ok(true);
        }
        if self.group_commit() && !force {
            return self.ensure_sync(state, shutdown).await;
        }
        if state.durable == state.appended {
            return Ok(false);
        }
        let due = state.last_sync.elapsed() >= self.sink_settings.fsync_interval;
        if !(force || due) {
            return Ok(false);
        }
        let sink = self.sink.clone();
        match tokio::task::spawn_blocking(move || lock(&sink).sync()).await {
            Ok(Ok(())) => {
                state.durable = state.appended;
                state.last_sync = Instant::now();
                Ok(false)
            }
            Ok(Err(err)) => self.sync_failed(state, &err, shutdown).await,
            Err(err) => {
                telemetry::mirror::mirror_failed("sync", &err);
                Ok(false)
            }
        }
    }

    /// After a failed append or fsync the sink holds only whole lines and mirroring
    /// must resume right after the last of them ([`crate::sink`]): a batch that
    /// crossed a rotation keeps its first part (fsync'd in the rotated file), a failed
    /// fsync takes back everything since the last good one. Resuming from the
    /// position held before the failure would write the kept part twice, or skip the
    /// part taken back. Moves `state.appended` there and returns what of `batch` is
    /// still to be written (`None`: read again from the new position).
    ///
    /// Under group commit a running fsync is the sink's to settle now, and what it or
    /// a later one would have covered is durable only if the sink still holds it: the
    /// loop's record of both is dropped here.
    async fn resume_after_sink_error(
        &self,
        state: &mut LoopState,
        batch: Option<Batch>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Batch>, MirrorError> {
        state.syncing = None;
        state.unsynced = commit::Unsynced::default();
        let last = lock(&self.sink).last_line().map(<[u8]>::to_vec);
        let at = if last == state.start_line {
            // Nothing written since the start remains.
            state.start
        } else {
            let Some(line) = last else {
                // The sink had lines at the start and can only take back lines written
                // since: an empty sink now means it is not what we opened.
                return Err(MirrorError::SinkChanged(
                    "it holds no line, but held some at the start".into(),
                ));
            };
            let id = line_id(&line)?;
            if let Some(mut batch) = batch {
                if let Some(i) = batch.events.iter().position(|e| e.id == id) {
                    // Kept up to and including row `i`: write only the rest.
                    state.appended = batch.positions[i];
                    let rest = Batch {
                        events: batch.events.split_off(i + 1),
                        positions: batch.positions.split_off(i + 1),
                        more: batch.more,
                        timeline: batch.timeline,
                    };
                    return Ok((!rest.events.is_empty()).then_some(rest));
                }
                if id == state.appended.id {
                    // Nothing of the batch was kept: write it whole again.
                    return Ok(Some(batch));
                }
            }
            if id == state.appended.id {
                state.appended
            } else if id == state.durable.id {
                state.durable
            } else {
                match self.locate(id, shutdown).await? {
                    Some(at) => at,
                    None => return Ok(None), // Shutting down.
                }
            }
        };
        if at < state.durable {
            // Durable lines are never taken back.
            return Err(MirrorError::SinkChanged(format!(
                "its last line is at {at}, before the durable position {}",
                state.durable
            )));
        }
        state.appended = at;
        Ok(None)
    }

    /// The position of the sink line with event `id`, retried until the database
    /// answers (`None`: shutting down meanwhile).
    async fn locate(
        &self,
        id: i64,
        shutdown: &CancellationToken,
    ) -> Result<Option<Position>, MirrorError> {
        let mut backoff =
            crate::db::backoff::Backoff::new(Duration::from_millis(100), self.settings.max_backoff);
        loop {
            let found = match self.client().await {
                Ok(client) => cursor::position_of(&**client, id)
                    .await
                    .map_err(MirrorError::from),
                Err(err) => Err(err),
            };
            match found {
                Ok(Some(at)) => return Ok(Some(at)),
                Ok(None) => return Err(MirrorError::UnknownLastLine { id }),
                Err(err) => telemetry::mirror::mirror_failed("locate", &err),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Stops mirroring after an error that needs an operator; the process stays up,
    /// not ready, until shutdown.
    async fn halt(self, err: MirrorError, shutdown: &CancellationToken) -> Result<(), MirrorError> {
        telemetry::mirror::mirror_halted(&err);
        self.health.set_failing(CHECK_MIRROR, err.to_string());
        shutdown.cancelled().await;
        self.close().await
    }

    /// Publishes the durable position when it moved (at most every second unless `force`).
    async fn maybe_publish(&self, state: &mut LoopState, force: bool) {
        if state.published == state.durable {
            return;
        }
        if !force && state.published_at.elapsed() < PUBLISH_INTERVAL {
            return;
        }
        let Some(term) = self.term.clone() else {
            return;
        };
        let result = match self.client().await {
            Ok(client) => lease::publish(
                &**client,
                &self.sink_settings.sink_id,
                &state.system_identifier,
                state.durable,
                &term.me,
                term.epoch,
                false,
            )
            .await
            .map_err(MirrorError::from),
            Err(err) => Err(err),
        };
        match result {
            Ok(Published::Held) => {
                state.published = state.durable;
                state.published_at = Instant::now();
            }
            Ok(Published::Superseded) => {
                // Deposed: stop appending now, even before the elector notices.
                term.fence.revoke();
                state.superseded = true;
                tracing::warn!(
                    epoch = term.epoch,
                    "A publication was refused: another replica took the sink group's lease over"
                );
            }
            // Not fatal: retention merely stays further behind until the next try.
            Err(err) => tracing::warn!(error = %err, "Cannot publish the sink position"),
        }
    }

    async fn write_state(&self, state: &SinkState) -> Result<(), MirrorError> {
        let value =
            serde_json::to_value(state).map_err(|e| MirrorError::BadState(e.to_string()))?;
        let sink = self.sink.clone();
        tokio::task::spawn_blocking(move || lock(&sink).write_state(&value))
            .await
            .map_err(|e| MirrorError::Worker(e.to_string()))??;
        Ok(())
    }

    async fn close(self) -> Result<(), MirrorError> {
        let sink = self.sink;
        tokio::task::spawn_blocking(move || match Arc::try_unwrap(sink) {
            Ok(mutex) => mutex
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .close(),
            // Another holder (a worker still running) keeps it; it closes on drop.
            Err(_) => Ok(()),
        })
        .await
        .map_err(|e| MirrorError::Worker(e.to_string()))??;
        Ok(())
    }
}

/// What [`Mirror::write`] did.
struct Written {
    /// Everything appended so far is durable.
    durable: bool,
    /// Group commit: an fsync the sink handed out, to start now.
    runner: Option<crate::sink::SyncRunner>,
    /// Group commit: the batch's events, counted once durable (empty otherwise:
    /// already counted).
    unsynced: commit::Unsynced,
}

/// Positions of the running loop.
struct LoopState {
    /// After the last line appended.
    appended: Position,
    /// After the last line known to be on disk.
    durable: Position,
    /// Last position published to the database.
    published: Position,
    /// When it was published.
    published_at: Instant,
    /// When the sink was last fsync'd.
    last_sync: Instant,
    /// The cluster we mirror.
    system_identifier: String,
    /// What the state file holds (its timeline is updated after a confirmed failover).
    sink_state: SinkState,
    /// Where mirroring started, and the sink's last line then: resuming there is
    /// right when every line written since has been taken back.
    start: Position,
    /// See `start`.
    start_line: Option<Vec<u8>>,
    /// Group commit (`fsync = always`): the fsync running, if any.
    syncing: Option<commit::Syncing>,
    /// Group commit: events appended since the running fsync started.
    unsynced: commit::Unsynced,
    /// Events wait behind the horizon: since when (first seen at this position).
    held: Option<(Instant, Position)>,
    /// The stall past `mirror.horizon_stall_warning` was logged and marked degraded.
    stall_reported: bool,
    /// After a takeover: events up to here are in the previous leader's files too.
    rewrite_until: Option<Position>,
    /// A publication found the lease taken over.
    superseded: bool,
}

fn lock(sink: &Mutex<FileSink>) -> std::sync::MutexGuard<'_, FileSink> {
    // A panic while appending leaves the sink to its own recovery (it truncates to
    // the last whole batch on the next append), so a poisoned lock is still usable.
    sink.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `id` of a sink line.
pub fn line_id(line: &[u8]) -> Result<i64, MirrorError> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: i64,
    }
    serde_json::from_slice::<IdOnly>(line)
        .map(|l| l.id)
        .map_err(|_| MirrorError::UnparsableLastLine)
}

/// Hex SHA-256 of a line: the sink's, also used for its digests.
pub use crate::sink::integrity::format::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ids_come_from_the_line_and_garbage_is_refused() {
        assert_eq!(line_id(br#"{"id":42,"x":1}"#).unwrap(), 42);
        assert!(matches!(
            line_id(b"not json"),
            Err(MirrorError::UnparsableLastLine)
        ));
    }
}
