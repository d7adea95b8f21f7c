//! Group commit under `fsync = always`: a batch's fsync runs while the next batch is
//! read and appended, instead of in front of it.
//!
//! [`Mirror::write`] appends with [`FileSink::append_unsynced`] and, when no fsync is
//! running, takes one out of the sink ([`FileSink::start_sync`]) and starts it on a
//! blocking thread ([`Syncing`]). Lines are visible in the file as soon as they are
//! appended; they count as durable — the position moves, is published, is recorded —
//! only once an fsync that started after them has succeeded ([`Mirror::finish_sync`]).
//! The next fsync then covers everything appended meanwhile, so a busy stream still
//! gets one fsync per batch, and a batch no longer waits for the previous one's. At
//! most one batch is appended beyond the running fsync; the next waits for it, which
//! bounds what is visible but not yet durable, and lets a hung disk stall the pipeline
//! (and readiness) as before.
//!
//! A failed fsync is applied by the sink (everything since the last good fsync is
//! taken back, see `crate::sink`); the mirror then resumes after the sink's last line,
//! exactly as after a failed synchronous fsync.
//!
//! [`FileSink::append_unsynced`]: crate::sink::FileSink::append_unsynced
//! [`FileSink::start_sync`]: crate::sink::FileSink::start_sync

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{lock, LoopState, Mirror, MirrorError, CHECK_SINK};
use crate::config::FsyncPolicy;
use crate::db::cursor::Position;
use crate::event::AuditEvent;
use crate::sink::{Appended, FileSink, SinkError, SyncRunner};
use crate::telemetry;

/// What completing an fsync gave: its result, then the next fsync to run.
type Completed = (
    Result<Appended, SinkError>,
    Result<Option<SyncRunner>, SinkError>,
);

/// Events appended, for the metrics recorded once they are durable: at once without
/// group commit, when their fsync completes with it.
#[derive(Debug, Default)]
pub(super) struct Unsynced {
    /// When each was committed (its `occurred_at`), for the lag histogram.
    occurred_at: Vec<DateTime<Utc>>,
    /// The last one's id.
    last_id: Option<i64>,
}

impl Unsynced {
    /// The events of a batch just appended.
    pub(super) fn of(events: &[AuditEvent]) -> Unsynced {
        Unsynced {
            occurred_at: events.iter().map(|e| e.occurred_at).collect(),
            last_id: events.last().map(|e| e.id),
        }
    }

    /// Adds the events of a later batch.
    pub(super) fn extend(&mut self, later: Unsynced) {
        self.occurred_at.extend(later.occurred_at);
        self.last_id = later.last_id.or(self.last_id);
    }

    /// Whether no event awaits an fsync that has not started yet.
    pub(super) fn is_empty(&self) -> bool {
        self.last_id.is_none()
    }

    /// Records them as durable now.
    pub(super) fn record(self) {
        let Some(last_id) = self.last_id else {
            return;
        };
        let now = Utc::now();
        let lags = self
            .occurred_at
            .iter()
            .map(|at| (now - *at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
        telemetry::mirror::batch_durable(self.occurred_at.len(), last_id, lags);
    }
}

/// An fsync running on a blocking thread.
#[derive(Debug)]
pub(super) struct Syncing {
    task: JoinHandle<()>,
    /// Notified when the fsync has finished (a permit, so a late waiter still wakes).
    pub(super) done: Arc<Notify>,
    /// The position it makes durable: everything appended when it started.
    target: Position,
    /// The events it makes durable.
    events: Unsynced,
}

impl Mirror {
    /// Whether appends leave their fsync to [`Self::start_sync`] (policy `always`).
    pub(super) fn group_commit(&self) -> bool {
        self.sink_settings.fsync == FsyncPolicy::Always
    }

    /// Starts `runner` (an fsync the sink handed out after an append) for everything
    /// appended up to `state.appended`.
    pub(super) fn start_sync(&self, state: &mut LoopState, runner: SyncRunner) {
        let done = Arc::new(Notify::new());
        let notify = Arc::clone(&done);
        let task = tokio::task::spawn_blocking(move || {
            runner.run();
            notify.notify_one();
        });
        state.syncing = Some(Syncing {
            task,
            done,
            target: state.appended,
            events: std::mem::take(&mut state.unsynced),
        });
    }

    /// Completes the running fsync if it has finished (or, with `wait`, once it has):
    /// moves the durable position, then starts the next fsync when more was appended
    /// meanwhile. Returns whether a failed fsync moved `state.appended` back (what was
    /// read after it is stale).
    pub(super) async fn finish_sync(
        &self,
        state: &mut LoopState,
        wait: bool,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<bool, MirrorError> {
        let Some(syncing) = state.syncing.take_if(|s| wait || s.task.is_finished()) else {
            return Ok(false);
        };
        // A panicked runner left no result; the sink then waits for nothing and
        // reports what is durable, which is all this needs.
        let _ = syncing.task.await;
        fn complete(sink: &mut FileSink) -> Completed {
            let completed = sink.complete_sync();
            // More appended meanwhile: its fsync starts at once.
            let next = match completed {
                Ok(_) => sink.start_sync(),
                Err(_) => Ok(None),
            };
            (completed, next)
        }
        // The fsync has finished, so completing it waits for nothing and, unless it
        // failed (then the sink reopens its file), touches no disk: done here when
        // the sink is free, on a blocking thread when an append holds it.
        let here = match self.sink.try_lock() {
            Ok(mut sink) => Some(complete(&mut sink)),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                Some(complete(&mut poisoned.into_inner()))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let completed = match here {
            Some(completed) => Ok(completed),
            None => {
                let sink = self.sink.clone();
                tokio::task::spawn_blocking(move || complete(&mut lock(&sink))).await
            }
        };
        let (completed, next) = match completed {
            Ok(pair) => pair,
            Err(err) => {
                telemetry::mirror::mirror_failed("sync", &err);
                return Ok(false);
            }
        };
        match completed {
            Ok(_) => {
                if syncing.target > state.durable {
                    state.durable = syncing.target;
                }
                state.last_sync = Instant::now();
                syncing.events.record();
                match next {
                    Ok(Some(runner)) => self.start_sync(state, runner),
                    Ok(None) => {}
                    Err(err) => return self.sync_failed(state, &err, shutdown).await,
                }
                Ok(false)
            }
            Err(err) => self.sync_failed(state, &err, shutdown).await,
        }
    }

    /// The policy is `always` but nothing runs although lines await their fsync (the
    /// sink had one outstanding when the last batch was appended): start it.
    pub(super) async fn ensure_sync(
        &self,
        state: &mut LoopState,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<bool, MirrorError> {
        if state.syncing.is_some() || state.durable == state.appended {
            return Ok(false);
        }
        let sink = self.sink.clone();
        match tokio::task::spawn_blocking(move || lock(&sink).start_sync()).await {
            Ok(Ok(Some(runner))) => {
                self.start_sync(state, runner);
                Ok(false)
            }
            Ok(Ok(None)) => Ok(false),
            Ok(Err(err)) => self.sync_failed(state, &err, shutdown).await,
            Err(err) => {
                telemetry::mirror::mirror_failed("sync", &err);
                Ok(false)
            }
        }
    }

    /// A batch appended under group commit: the sink handed out `runner` when no
    /// fsync was outstanding — so one the mirror still holds has been applied, and
    /// successfully (a failure fails the append) — or none while one runs.
    pub(super) fn appended(&self, state: &mut LoopState, runner: Option<SyncRunner>) {
        let Some(runner) = runner else {
            return;
        };
        if let Some(previous) = state.syncing.take() {
            if previous.target > state.durable {
                state.durable = previous.target;
            }
            state.last_sync = Instant::now();
            previous.events.record();
        }
        self.start_sync(state, runner);
    }

    /// After a failed fsync: the sink took back what it had not made durable; resume
    /// after its last line. Returns whether that moved `state.appended`.
    pub(super) async fn sync_failed(
        &self,
        state: &mut LoopState,
        err: &crate::sink::SinkError,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<bool, MirrorError> {
        telemetry::mirror::mirror_failed("sync", err);
        self.health.set_failing(CHECK_SINK, err.to_string());
        let before = state.appended;
        self.resume_after_sink_error(state, None, shutdown).await?;
        Ok(state.appended != before)
    }
}
