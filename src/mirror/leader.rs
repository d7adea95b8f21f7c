//! Leader election per sink group: at most one replica appends (docs/replicas.md).
//!
//! The elector runs beside the mirror. As a standby it reads the group's lease row
//! and takes the lease over once it has expired or was released (or is held for this
//! very sink directory: the directory lock proves the process that took it is gone).
//! As the leader it renews the lease every third of the lease timeout.
//!
//! **Fence.** Appending is allowed only while [`Fence::current`] says so: the epoch
//! won, and a local monotonic deadline that is the send time of the last successful
//! acquire or renew plus nine tenths of the lease timeout. The server set the expiry
//! to its own clock at *execution* of that statement plus the whole timeout, which is
//! later in real time, so a leader that is frozen, cut off or slow stops appending
//! before any standby may take over; a standby taking over needs the server to agree
//! the expiry has passed. Publications are conditional on the epoch in the database
//! as well ([`crate::db::lease::publish`]), so a deposed leader can never move the
//! group's position.
//!
//! Every statement is bounded by a client-side timeout; a connection whose statement
//! timed out is discarded (the statement may still have run: an acquire that did is
//! found on the next read as held by this process and adopted by renewing it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::cursor::Position;
use crate::db::lease::{self, Candidate, LeaseRow};
use crate::db::DbError;
use crate::health::Health;
use crate::telemetry;

/// Readiness check showing the role and the leader (always ok: a standby is ready).
pub const CHECK_LEADERSHIP: &str = "leadership";

/// How often a standby looks at the lease: a released lease is taken within this.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// How often the group's stall is checked.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the previous holder left, for a new leader's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    /// Its replica name.
    pub name: Option<String>,
    /// Its sink directory (this one's own when a restart took its lease back).
    pub sink: Option<uuid::Uuid>,
    /// It handed over on shutdown (everything it appended was published).
    pub released: bool,
    /// Its appended position at its last renewal.
    pub appended: Option<Position>,
}

/// This replica's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not known yet (the database has not answered).
    Unknown,
    /// Another replica leads (named, when known) or nobody does right now.
    Standby {
        /// The leader's replica name.
        leader: Option<String>,
    },
    /// This replica leads at `epoch`.
    Leader {
        /// The epoch won.
        epoch: i64,
        /// Who held the lease before.
        previous: Previous,
    },
}

/// May this process append now, and under which epoch.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    state: Arc<Mutex<Option<(i64, Instant)>>>,
}

impl Fence {
    /// The epoch under which appending is allowed right now, if any.
    pub fn current(&self) -> Option<i64> {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.and_then(|(epoch, until)| (Instant::now() < until).then_some(epoch))
    }

    fn grant(&self, epoch: i64, until: Instant) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some((epoch, until));
    }

    /// Forbids appending until the next grant.
    pub fn revoke(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn deadline(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(_, until)| until)
    }
}

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The group (`file_sink.id`).
    pub sink_id: String,
    /// Who this replica is.
    pub me: Candidate,
    /// Lease timeout: how long a standby waits after the last renewal.
    pub lease_timeout: Duration,
    /// A group position unmoved this long while events wait is reported.
    pub group_stall_after: Duration,
}

/// The running elector, as the mirror sees it.
pub struct Leadership {
    options: ElectionOptions,
    pool: Pool,
    fence: Fence,
    role: watch::Receiver<Role>,
    appended: Arc<Mutex<Option<Position>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts electing.
    pub fn start(pool: Pool, options: ElectionOptions, health: Arc<Health>) -> Leadership {
        let fence = Fence::default();
        let (role_tx, role) = watch::channel(Role::Unknown);
        let appended = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        health.set_ok(CHECK_LEADERSHIP);
        let elector = Elector {
            pool: pool.clone(),
            options: options.clone(),
            fence: fence.clone(),
            role: role_tx,
            appended: appended.clone(),
            health,
            stalled: false,
        };
        let task = tokio::spawn(elector.run(stop.clone()));
        Leadership {
            options,
            pool,
            fence,
            role,
            appended,
            stop,
            task,
        }
    }

    /// Who this replica is.
    pub fn me(&self) -> &Candidate {
        &self.options.me
    }

    /// The fence to check before every append.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Waits until this replica leads at an epoch after `ended` (the term that just
    /// ended), calling `standby` whenever it is found standing by; `None` on shutdown.
    pub async fn wait_leader(
        &mut self,
        ended: Option<i64>,
        shutdown: &CancellationToken,
        standby: impl Fn(),
    ) -> Option<(i64, Previous)> {
        let after = ended.unwrap_or(i64::MIN);
        loop {
            let role = self.role.borrow_and_update().clone();
            match role {
                Role::Leader { epoch, previous } if epoch > after => {
                    return Some((epoch, previous))
                }
                Role::Standby { .. } => standby(),
                _ => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = self.role.changed() => changed.ok()?,
            }
        }
    }

    /// Whether this replica still leads at `epoch` (its lease may have lapsed for a
    /// while without anybody taking it: then it still leads, but may not append).
    pub fn leads(&self, epoch: i64) -> bool {
        matches!(&*self.role.borrow(), Role::Leader { epoch: e, .. } if *e == epoch)
    }

    /// Records the appended position, reported with every renewal.
    pub fn set_appended(&self, at: Position) {
        *self.appended.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// Stops electing; a leader hands its lease over (after its final publication,
    /// `appended`), so a standby takes over at once instead of after the lease
    /// timeout. Without a final publication, the standby starts from the last one.
    pub async fn finish(self, appended: Option<Position>) {
        // Nothing is appended after this.
        self.fence.revoke();
        self.stop.cancel();
        let _ = self.task.await;
        let Role::Leader { epoch, .. } = self.role.borrow().clone() else {
            return;
        };
        let released = match tokio::time::timeout(statement_timeout(&self.options), async {
            let client = self.pool.get().await.map_err(DbError::from)?;
            lease::release(
                &**client,
                &self.options.sink_id,
                &self.options.me,
                epoch,
                appended,
            )
            .await
        })
        .await
        {
            Ok(Ok(released)) => released,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "Cannot hand the sink lease over; a standby takes over when it expires");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "Handing the sink lease over timed out; a standby takes over when it expires"
                );
                false
            }
        };
        telemetry::leader::role_changed(false, epoch);
        if released {
            tracing::info!(
                sink_id = %self.options.sink_id,
                replica = %self.options.me.name,
                epoch,
                role = "stopped",
                "Handed leadership of the sink group over"
            );
        }
    }
}

fn statement_timeout(options: &ElectionOptions) -> Duration {
    (options.lease_timeout / 3).max(Duration::from_millis(200))
}

/// The task behind [`Leadership`].
struct Elector {
    pool: Pool,
    options: ElectionOptions,
    fence: Fence,
    role: watch::Sender<Role>,
    appended: Arc<Mutex<Option<Position>>>,
    health: Arc<Health>,
    stalled: bool,
}

impl Elector {
    async fn run(mut self, stop: CancellationToken) {
        let mut stall_checked = Instant::now() - STALL_CHECK_EVERY;
        loop {
            let role = self.role.borrow().clone();
            let wait = match role {
                Role::Leader { epoch, .. } => self.renew(epoch).await,
                _ => self.stand_by().await,
            };
            if stall_checked.elapsed() >= STALL_CHECK_EVERY {
                stall_checked = Instant::now();
                self.check_stall().await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs one lease statement under the client-side timeout; a connection whose
    /// statement timed out is discarded, never reused.
    async fn with_client<T, F>(&self, f: F) -> Result<T, String>
    where
        F: for<'c> AsyncFnOnce(&'c tokio_postgres::Client) -> Result<T, DbError>,
    {
        let timeout = statement_timeout(&self.options);
        let client = match tokio::time::timeout(timeout, self.pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => return Err(DbError::from(err).to_string()),
            Err(_) => {
                return Err("no database connection within the lease statement timeout".into())
            }
        };
        match tokio::time::timeout(timeout, f(&**client)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => {
                let _ = deadpool_postgres::Object::take(client);
                Err("a lease statement timed out".into())
            }
        }
    }

    /// One standby turn: look, take over if free. Returns when to look again.
    async fn stand_by(&mut self) -> Duration {
        let sink_id = self.options.sink_id.clone();
        let row = match self
            .with_client(async |c| lease::read(c, &sink_id).await)
            .await
        {
            Ok(row) => row,
            Err(err) => {
                self.health
                    .set_ok_with(CHECK_LEADERSHIP, details("unknown", None, None, Some(&err)));
                self.health.set_failing(
                    super::CHECK_MIRROR,
                    format!("cannot read the sink group's lease: {err}"),
                );
                return STANDBY_POLL.max(self.options.lease_timeout / 10);
            }
        };
        telemetry::leader::lease_age(row.age);
        let me = self.options.me.clone();
        // Ours already: an acquire whose answer was lost, adopted by renewing it.
        if row.holder_instance == Some(me.instance) && !row.released {
            self.promote(&row, row.epoch, true).await;
            return Duration::ZERO;
        }
        if row.expired || row.holder_sink == Some(me.sink) {
            let sent = Instant::now();
            let ttl = self.options.lease_timeout;
            let seen = row.epoch;
            match self
                .with_client(async |c| lease::acquire(c, &sink_id, &me, seen, ttl).await)
                .await
            {
                Ok(Some(epoch)) => {
                    self.fence.grant(epoch, deadline(sent, ttl));
                    self.become_leader(&row, epoch);
                    return self.renew_every();
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "Cannot take the sink lease over; retrying")
                }
            }
        }
        let leader = (!row.expired).then(|| row.holder_name.clone()).flatten();
        self.set_standby(leader);
        // Standing by is ready: the standby serves the API and takes over when needed.
        self.health.set_ok(super::CHECK_MIRROR);
        STANDBY_POLL
    }

    /// Renews a lease found held by this process (adoption), then leads.
    async fn promote(&mut self, row: &LeaseRow, epoch: i64, adopt: bool) {
        let sent = Instant::now();
        if self.renew_statement(epoch).await == Some(true) {
            self.fence
                .grant(epoch, deadline(sent, self.options.lease_timeout));
            if adopt {
                self.become_leader(row, epoch);
            }
        }
    }

    fn become_leader(&mut self, row: &LeaseRow, epoch: i64) {
        let previous = Previous {
            name: row.holder_name.clone(),
            sink: row.holder_sink,
            released: row.released,
            appended: row.appended,
        };
        tracing::info!(
            sink_id = %self.options.sink_id,
            replica = %self.options.me.name,
            epoch,
            previous = previous.name.as_deref().unwrap_or("none"),
            previous_released = previous.released,
            role = "leader",
            "Became the leader of the sink group"
        );
        telemetry::leader::took_over(epoch);
        self.health.set_ok_with(
            CHECK_LEADERSHIP,
            details("leader", Some(&self.options.me.name), Some(epoch), None),
        );
        self.role.send_replace(Role::Leader { epoch, previous });
    }

    fn set_standby(&mut self, leader: Option<String>) {
        let was = self.role.borrow().clone();
        let changed = match &was {
            Role::Standby { leader: l } => *l != leader,
            _ => true,
        };
        if changed {
            if let Role::Leader { epoch, .. } = was {
                telemetry::leader::role_changed(false, epoch);
            }
            tracing::info!(
                sink_id = %self.options.sink_id,
                replica = %self.options.me.name,
                leader = leader.as_deref().unwrap_or("none"),
                role = "standby",
                "Standing by for the sink group"
            );
            self.health.set_ok_with(
                CHECK_LEADERSHIP,
                details("standby", leader.as_deref(), None, None),
            );
            self.role.send_replace(Role::Standby { leader });
        }
    }

    fn renew_every(&self) -> Duration {
        self.options.lease_timeout / 3
    }

    /// `Some(true)`: renewed; `Some(false)`: taken over; `None`: no answer.
    async fn renew_statement(&self, epoch: i64) -> Option<bool> {
        let sink_id = self.options.sink_id.clone();
        let me = self.options.me.clone();
        let ttl = self.options.lease_timeout;
        let appended = *self.appended.lock().unwrap_or_else(|e| e.into_inner());
        match self
            .with_client(async |c| lease::renew(c, &sink_id, &me, epoch, ttl, appended).await)
            .await
        {
            Ok(held) => Some(held),
            Err(err) => {
                tracing::warn!(error = %err, epoch, "Cannot renew the sink lease; retrying");
                None
            }
        }
    }

    /// One leader turn. Returns when to renew again.
    async fn renew(&mut self, epoch: i64) -> Duration {
        let sent = Instant::now();
        match self.renew_statement(epoch).await {
            Some(true) => {
                let was_lapsed = self.fence.current().is_none();
                self.fence
                    .grant(epoch, deadline(sent, self.options.lease_timeout));
                telemetry::leader::lease_age(Some(Duration::ZERO));
                if was_lapsed {
                    tracing::info!(epoch, "The sink lease is renewed again; appending resumes");
                }
                self.renew_every()
            }
            Some(false) => {
                self.fence.revoke();
                tracing::warn!(
                    sink_id = %self.options.sink_id,
                    replica = %self.options.me.name,
                    epoch,
                    "Lost leadership of the sink group: another replica took the lease over"
                );
                self.set_standby(None);
                STANDBY_POLL
            }
            None => {
                if self.fence.current().is_none()
                    && self
                        .fence
                        .deadline()
                        .is_some_and(|d| d.elapsed() < STANDBY_POLL)
                {
                    tracing::warn!(
                        epoch,
                        "The sink lease lapsed unrenewed; appending stops until it is renewed"
                    );
                }
                (self.options.lease_timeout / 10).max(Duration::from_millis(100))
            }
        }
    }

    /// Reports a group whose position has not moved while events wait.
    async fn check_stall(&mut self) {
        let sink_id = self.options.sink_id.clone();
        let Ok(stall) = self
            .with_client(async |c| lease::group_stall(c, &sink_id).await)
            .await
        else {
            return;
        };
        let stalled = stall.is_some_and(|s| s >= self.options.group_stall_after);
        telemetry::leader::group_stall(stall, stalled);
        if stalled && !self.stalled {
            tracing::warn!(
                sink_id = %self.options.sink_id,
                stalled_for = ?stall.unwrap_or_default(),
                "The sink group's published position has not moved while events wait; \
                 retention is held back until a leader writes them"
            );
        } else if !stalled && self.stalled {
            tracing::info!(sink_id = %self.options.sink_id, "The sink group's position moves again");
        }
        self.stalled = stalled;
    }
}

/// The local deadline for a lease whose statement was sent at `sent`.
fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.mul_f64(0.9)
}

fn details(
    role: &str,
    leader: Option<&str>,
    epoch: Option<i64>,
    error: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut out = vec![("role", role.to_string())];
    if let Some(leader) = leader {
        out.push(("leader", leader.to_string()));
    }
    if let Some(epoch) = epoch {
        out.push(("epoch", epoch.to_string()));
    }
    if let Some(error) = error {
        out.push(("error", error.to_string()));
    }
    out
}
