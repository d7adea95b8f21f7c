//! Configuration reload: `SIGHUP`, or a change of the configuration file.
//!
//! The file is watched through its directory, because editors replace the file (a
//! new inode) and Kubernetes swaps a ConfigMap's `..data` symlink rather than writing
//! the file; events are debounced and a reload only happens when the file's content
//! changed. A new configuration is loaded exactly like at start (defaults < file <
//! environment) and validated whole; an invalid one is refused and the daemon keeps
//! running on its current settings (`compartment_audit_config_reloads_total{result="failure"}`).
//!
//! Reloadable: rotation thresholds, file retention, compression delay, fsync policy
//! (`file_sink.*` except `enabled`, `dir`, `id`, `start_from`, `allow_group_bits`),
//! mirror batch size and poll intervals, every `retention.*` setting, and `log.level`.
//! Everything else (database, HTTP, sink location and identity, log format, listener
//! timers) takes effect at the next start; a change to it is logged as such.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::service;
use crate::telemetry;

/// Quiet time after a file event before reloading (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Starts the reload task; the returned receiver always holds the settings in force.
pub fn spawn(
    config_file: Option<PathBuf>,
    initial: Settings,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<Settings>> {
    telemetry::config::init();
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(run(config_file, tx, shutdown));
    rx
}

async fn run(
    explicit: Option<PathBuf>,
    tx: watch::Sender<Arc<Settings>>,
    shutdown: CancellationToken,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot listen for SIGHUP; reload by signal is off");
            None
        }
    };
    let watched = crate::config::resolve_config_file(explicit.as_deref())
        .ok()
        .flatten();
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    // Kept alive for as long as the loop runs; dropping it stops watching.
    let _watcher = watched
        .as_deref()
        .and_then(|file| watch_file(file, events_tx));
    let mut last_hash = watched.as_deref().and_then(file_hash);

    loop {
        let by_signal = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async { match hangups.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => true,
            Some(()) = events.recv() => false,
        };
        if !by_signal {
            // Debounce: wait until the directory has been quiet for a moment.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    Some(()) = events.recv() => continue,
                }
            }
            let hash = watched.as_deref().and_then(file_hash);
            if hash == last_hash {
                continue;
            }
            last_hash = hash;
            tracing::info!("The configuration file changed; reloading");
        } else {
            tracing::info!("Received SIGHUP; reloading the configuration");
            last_hash = watched.as_deref().and_then(file_hash);
        }
        reload(explicit.as_deref(), &tx);
    }
}

/// Loads, validates and applies a new configuration.
pub fn reload(explicit: Option<&Path>, tx: &watch::Sender<Arc<Settings>>) {
    service::reloading();
    let current = tx.borrow().clone();
    match Settings::load(explicit) {
        Err(err) => {
            telemetry::config::reload_failed(&err);
            service::reloaded("Reload failed; running on the previous settings");
        }
        Ok(new) => {
            let (merged, changed, needs_restart) = merge(&current, new);
            if merged.log.level != current.log.level {
                if let Err(err) = telemetry::logging::set_level(&merged.log.level) {
                    tracing::warn!(error = %err, "Cannot change the log level");
                }
            }
            telemetry::config::reloaded(&changed, &needs_restart);
            tx.send_replace(Arc::new(merged));
            service::reloaded("Configuration reloaded");
        }
    }
}

/// Takes the reloadable settings from `new` and keeps the rest of `current`. Returns
/// the result, the reloadable keys that changed, and the others that changed.
pub fn merge(
    current: &Settings,
    new: Settings,
) -> (Settings, Vec<&'static str>, Vec<&'static str>) {
    let mut merged = current.clone();
    let mut changed = Vec::new();
    let mut needs_restart = Vec::new();

    macro_rules! reloadable {
        ($($section:ident . $field:ident => $key:literal),* $(,)?) => {$(
            if merged.$section.$field != new.$section.$field {
                merged.$section.$field = new.$section.$field.clone();
                changed.push($key);
            }
        )*};
    }
    macro_rules! restart_only {
        ($($section:ident . $field:ident => $key:literal),* $(,)?) => {$(
            if current.$section.$field != new.$section.$field {
                needs_restart.push($key);
            }
        )*};
    }

    reloadable!(
        file_sink.rotate_interval => "file_sink.rotate_interval",
        file_sink.rotate_size => "file_sink.rotate_size",
        file_sink.retention_files => "file_sink.retention_files",
        file_sink.fsync => "file_sink.fsync",
        file_sink.fsync_interval => "file_sink.fsync_interval",
        file_sink.compress_delay => "file_sink.compress_delay",
        mirror.batch_size => "mirror.batch_size",
        mirror.poll_interval => "mirror.poll_interval",
        mirror.horizon_poll_interval => "mirror.horizon_poll_interval",
        mirror.horizon_stall_warning => "mirror.horizon_stall_warning",
        retention.days => "retention.days",
        retention.cleanup_batch_size => "retention.cleanup_batch_size",
        retention.cleanup_max_batches => "retention.cleanup_max_batches",
        retention.cleanup_concurrency => "retention.cleanup_concurrency",
        log.level => "log.level",
    );
    if merged.retention.cleanup_cron.source != new.retention.cleanup_cron.source {
        merged.retention.cleanup_cron = new.retention.cleanup_cron.clone();
        changed.push("retention.cleanup_cron");
    }
    restart_only!(
        database.url => "database.url",
        database.url_file => "database.url_file",
        database.password_file => "database.password_file",
        database.tls => "database.tls",
        database.libpq_env => "the PGSSL*/PGPASSFILE environment",
        database.pool_size => "database.pool_size",
        database.connect_timeout => "database.connect_timeout",
        database.pool_idle_timeout => "database.pool_idle_timeout",
        database.keepalive_idle => "database.keepalive_idle",
        database.api_pool_size => "database.api_pool_size",
        file_sink.enabled => "file_sink.enabled",
        file_sink.dir => "file_sink.dir",
        file_sink.sink_id => "file_sink.id",
        file_sink.start_from => "file_sink.start_from",
        file_sink.allow_group_bits => "file_sink.allow_group_bits",
        mirror.heartbeat_interval => "mirror.heartbeat_interval",
        mirror.max_backoff => "mirror.max_backoff",
        http.addr => "http.addr",
        http.export_max_rows => "http.export_max_rows",
        http.max_header_bytes => "http.max_header_bytes",
        http.max_query_bytes => "http.max_query_bytes",
        http.request_timeout => "http.request_timeout",
        http.max_concurrent_exports => "http.max_concurrent_exports",
        http.statement_timeout => "http.statement_timeout",
        http.max_auth_failures => "http.max_auth_failures",
        http.max_in_flight_requests => "http.max_in_flight_requests",
        http.console_enabled => "http.console_enabled",
        log.format => "log.format",
    );
    merged.warnings = new.warnings;
    (merged, changed, needs_restart)
}

/// Watches the file's directory; any event in it is forwarded (the content hash
/// decides later whether the file really changed).
fn watch_file(
    file: &Path,
    events: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = events.send(());
            }
        },
    ) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "Cannot watch the configuration file; reload with SIGHUP");
            return None;
        }
    };
    if let Err(err) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %err, dir = %dir.display(), "Cannot watch the configuration directory; reload with SIGHUP");
        return None;
    }
    tracing::debug!(file = %file.display(), "Watching the configuration file");
    Some(watcher)
}

/// SHA-256 of the file's content (through symlinks: a ConfigMap's file is one).
fn file_hash(file: &Path) -> Option<[u8; 32]> {
    std::fs::read(file)
        .ok()
        .map(|bytes| Sha256::digest(&bytes).into())
}
