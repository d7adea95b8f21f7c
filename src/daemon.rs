//! The daemon: wires the mirror, the HTTP server and the background jobs together
//! under one shutdown token, so tests can drive the real thing in-process.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::db::api_session::ApiPool;
use crate::db::backoff::Backoff;
use crate::db::listener::{self, ListenerOptions};
use crate::health::Health;
use crate::http::api::Api;
use crate::http::{self, AppState};
use crate::mirror::{Mirror, MirrorError, Phase, CHECK_SINK};
use crate::retention;
use crate::sanitize::Sanitizer;
use crate::service;
use crate::sink::{FileSink, Recovery, SinkOptions, SystemClock};
use crate::telemetry;

/// Readiness check of database reachability.
pub const CHECK_DATABASE: &str = "database";
/// Readiness check of the LISTEN connection.
pub const CHECK_LISTENER: &str = "listener";

/// `application_name` of the dedicated LISTEN connection.
pub const LISTENER_APPLICATION_NAME: &str = "compartment-auditd-listener";

/// How often database reachability is checked.
const DATABASE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database settings are unusable.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A start-up task panicked.
    #[error("a start-up task failed: {0}")]
    Worker(String),
    /// The sink directory is unusable.
    #[error("the file sink cannot start: {0}")]
    Sink(#[from] crate::sink::SinkError),
}

/// Binds the HTTP listener (separately, so tests can bind port 0 and learn the port).
pub async fn bind(settings: &Settings) -> Result<TcpListener, StartError> {
    TcpListener::bind(settings.http.addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.http.addr,
            source,
        })
}

/// Runs the daemon until `shutdown` is cancelled, then drains: the mirror finishes its
/// batch and fsyncs, the HTTP server lets requests finish.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let reloads = watch::Sender::new(Arc::new(settings)).subscribe();
    run_with_reloads(reloads, listener, shutdown).await
}

/// Like [`run`], with settings that may be reloaded while running (see [`crate::reload`]).
pub async fn run_with_reloads(
    reloads: watch::Receiver<Arc<Settings>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let settings: Settings = (**reloads.borrow()).clone();
    telemetry::init();
    let health = Arc::new(Health::new());
    let pool = db::pool(&settings.database).await?;
    // One sanitizer for the sink, the list and exports: no surface shows more than another.
    let sanitizer = Sanitizer::new();

    let mut tasks = tokio::task::JoinSet::new();
    health.register(CHECK_DATABASE, "not checked yet");
    tasks.spawn(watch_database(
        pool.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    let mut mirror_task = None;
    if settings.file_sink.enabled {
        let mut listener_connector = db::connector(&settings.database)?;
        if listener_connector.config().get_application_name() == Some(db::APPLICATION_NAME) {
            // Distinct in pg_stat_activity: operators can tell the LISTEN connection apart.
            listener_connector.set_application_name(LISTENER_APPLICATION_NAME);
        }
        let start = MirrorStart {
            pool: pool.clone(),
            health: health.clone(),
            sanitizer: sanitizer.clone(),
            settings: settings.clone(),
            reloads: reloads.clone(),
            listener_connector,
        };
        // A refusal (a symlink, a foreign owner, a held lock, a damaged state file)
        // stops the start here, with its reason; a full or read-only disk does not:
        // the daemon serves readiness (not ready, saying why) and retries.
        let opened = match start.open_sink().await {
            Ok(opened) => Some(opened),
            Err(StartError::Sink(err)) if err.is_retryable() => {
                health.register(CHECK_SINK, &err.to_string());
                None
            }
            Err(err) => return Err(err),
        };
        mirror_task = Some(tokio::spawn(start.run(opened, shutdown.clone())));
    } else {
        tracing::info!("The file sink is disabled; its directory is left untouched");
        service::ready("Serving health, metrics and the audit API (file sink disabled)");
    }
    tasks.spawn(db::close_idle_connections(
        pool.clone(),
        settings.database.pool_idle_timeout,
        shutdown.clone(),
    ));
    tasks.spawn(service::watchdog(health.clone(), shutdown.clone()));
    tasks.spawn(schedule_retention(
        pool.clone(),
        reloads.clone(),
        shutdown.clone(),
    ));

    // The API's own connections: however many requests arrive, and however slow,
    // they never wait for or take one of `pool`'s (the mirror's, retention's and the
    // readiness check's).
    let api_pool = ApiPool::new(&settings.database, settings.http.statement_timeout).await?;
    tasks.spawn(db::close_idle_connections(
        api_pool.pool().clone(),
        settings.database.pool_idle_timeout,
        shutdown.clone(),
    ));
    let state = Arc::new(AppState {
        health: health.clone(),
        http: settings.http.clone(),
        api: Api::new(api_pool, sanitizer, &settings.http),
    });
    let http_shutdown = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(listener, state, http_shutdown.clone()));
    tracing::info!(addr = %settings.http.addr, "Serving health, metrics and the audit API");

    shutdown.cancelled().await;
    tracing::info!("Shutting down");
    service::stopping();
    if let Some(task) = mirror_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "The mirror stopped with an error"),
            Err(err) => tracing::error!(error = %err, "The mirror task failed"),
        }
    }
    // HTTP last, so readiness stays observable while draining.
    http_shutdown.cancel();
    let _ = http_task.await;
    tasks.shutdown().await;
    Ok(())
}

/// What the mirror needs once its sink is open.
struct MirrorStart {
    pool: deadpool_postgres::Pool,
    health: Arc<Health>,
    sanitizer: Sanitizer,
    settings: Settings,
    reloads: watch::Receiver<Arc<Settings>>,
    listener_connector: db::Connector,
}

impl MirrorStart {
    /// Opens the sink directory (blocking work: recovery reads and repairs files).
    async fn open_sink(&self) -> Result<(FileSink, Recovery), StartError> {
        let options = SinkOptions::from_settings(&self.settings.file_sink);
        tokio::task::spawn_blocking(move || FileSink::open(options, Arc::new(SystemClock)))
            .await
            .map_err(|e| StartError::Worker(e.to_string()))?
            .map_err(StartError::Sink)
    }

    /// Opens the sink if `opened` is `None` (retrying while the disk is full or
    /// read-only), then subscribes the doorbell and runs the mirror until `shutdown`.
    async fn run(
        self,
        opened: Option<(FileSink, Recovery)>,
        shutdown: CancellationToken,
    ) -> Result<(), MirrorError> {
        let opened = match opened {
            Some(opened) => Some(opened),
            None => self.wait_for_sink(&shutdown).await,
        };
        let Some((sink, recovery)) = opened else {
            return Ok(());
        };
        let MirrorStart {
            pool,
            health,
            sanitizer,
            settings,
            reloads,
            listener_connector,
            ..
        } = self;
        let doorbell = listener::spawn(
            listener_connector,
            ListenerOptions {
                heartbeat_interval: settings.mirror.heartbeat_interval,
                deadline: settings.database.connect_timeout,
                max_backoff: settings.mirror.max_backoff,
            },
            shutdown.clone(),
        );
        health.register(CHECK_LISTENER, "not subscribed yet");
        let watcher = tokio::spawn(watch_listener(
            doorbell.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        let mirror = Mirror::new(
            pool,
            doorbell,
            sanitizer,
            health,
            settings.mirror.clone(),
            settings.file_sink.clone(),
            sink,
        )
        .with_reloads(reloads);
        let ready = tokio::spawn(notify_ready(mirror.phase(), shutdown.clone()));
        let result = mirror.run(recovery, shutdown).await;
        watcher.abort();
        ready.abort();
        result
    }

    /// Retries opening the sink with backoff while the failure is the storage's;
    /// `None` on shutdown, or after a refusal (then the daemon idles, not ready,
    /// until an operator fixes the directory and restarts it).
    async fn wait_for_sink(&self, shutdown: &CancellationToken) -> Option<(FileSink, Recovery)> {
        let mut backoff = Backoff::new(Duration::from_secs(1), self.settings.mirror.max_backoff);
        // Not READY: the service is not up while it cannot write what it is for.
        // READY follows the catch-up once the sink opens ([`notify_ready`]); until
        // then this waits within systemd's start timeout.
        service::status("Waiting for the sink directory to become writable");
        loop {
            let delay = backoff.next_delay();
            tracing::warn!(
                dir = %self.settings.file_sink.dir.display(),
                retry_in = ?delay,
                "The file sink cannot open yet (see the error above); not ready until it does"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            match self.open_sink().await {
                Ok(opened) => {
                    tracing::info!("The file sink opened; mirroring starts");
                    return Some(opened);
                }
                Err(StartError::Sink(err)) if err.is_retryable() => {
                    self.health.set_failing(CHECK_SINK, err.to_string());
                }
                Err(err) => {
                    telemetry::mirror::mirror_halted(&err);
                    self.health.set_failing(CHECK_SINK, err.to_string());
                    service::status(&format!("Mirroring halted: {err}"));
                    shutdown.cancelled().await;
                    return None;
                }
            }
        }
    }
}

/// Tells the service manager READY once the mirror has caught up (or has halted and
/// waits for an operator: the service is up, `systemctl status` says why it idles).
async fn notify_ready(mut phase: watch::Receiver<Phase>, shutdown: CancellationToken) {
    let status = tokio::select! {
        _ = shutdown.cancelled() => return,
        seen = phase.wait_for(|p| matches!(p, Phase::CaughtUp | Phase::Halted(_) | Phase::Standby)) => match seen {
            Ok(p) => match &*p {
                Phase::Halted(reason) => format!("Mirroring halted: {reason}"),
                Phase::Standby => "Standing by: another replica of the sink group mirrors".to_string(),
                _ => "Caught up; mirroring audit events".to_string(),
            },
            Err(_) => return,
        },
    };
    service::ready(&status);
}

/// Runs `audit.retention.cleanup` on its schedule; when a reload changes the
/// retention settings, the scheduler restarts with them (a run in progress stops
/// between batches, each of which is its own transaction).
async fn schedule_retention(
    pool: deadpool_postgres::Pool,
    mut reloads: watch::Receiver<Arc<Settings>>,
    shutdown: CancellationToken,
) {
    loop {
        let settings = reloads.borrow_and_update().retention.clone();
        tracing::info!(cron = %settings.cleanup_cron.source, "Scheduling audit.retention.cleanup");
        let generation = shutdown.child_token();
        let mut scheduler = tokio::spawn(retention::run_scheduler(
            pool.clone(),
            settings.clone(),
            generation.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = scheduler.await;
                    return;
                }
                _ = &mut scheduler => return,
                changed = reloads.changed() => {
                    if changed.is_err() {
                        let _ = scheduler.await;
                        return;
                    }
                    let new = &reloads.borrow_and_update().retention;
                    if new.cleanup_cron.source != settings.cleanup_cron.source
                        || new.days != settings.days
                        || new.cleanup_batch_size != settings.cleanup_batch_size
                        || new.cleanup_max_batches != settings.cleanup_max_batches
                        || new.cleanup_concurrency != settings.cleanup_concurrency
                    {
                        break;
                    }
                }
            }
        }
        generation.cancel();
        let _ = scheduler.await;
    }
}

/// Keeps the database check current.
async fn watch_database(
    pool: deadpool_postgres::Pool,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    // The last failure logged, so that an outage (a refused certificate, a wrong
    // password) is logged once with its cause, and again when the cause changes.
    let mut logged: Option<String> = None;
    loop {
        match db::ping(&pool).await {
            Ok(()) => {
                if logged.take().is_some() {
                    tracing::info!("The database is reachable again");
                }
                health.set_ok(CHECK_DATABASE)
            }
            Err(err) => {
                let message = err.to_string();
                if logged.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "The database check failed; retrying");
                    logged = Some(message.clone());
                }
                health.set_failing(CHECK_DATABASE, message)
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(DATABASE_CHECK_INTERVAL) => {}
        }
    }
}

/// Mirrors the listener's state into its readiness check.
async fn watch_listener(
    doorbell: listener::Doorbell,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut subscribed = doorbell.subscribed.clone();
    loop {
        if *subscribed.borrow_and_update() {
            health.set_ok(CHECK_LISTENER);
        } else {
            let reason = doorbell
                .last_error
                .borrow()
                .clone()
                .unwrap_or_else(|| "not subscribed".to_string());
            health.set_failing(CHECK_LISTENER, reason);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = subscribed.changed() => if changed.is_err() { return },
        }
    }
}
