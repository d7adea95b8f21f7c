//! Logging: the process-wide `tracing` subscriber, built from [`LogSettings`].
//!
//! Logs go to stderr (the journal or the container runtime collects them; stdout is
//! kept for command output such as `export --output -`), as human-readable text or as
//! one JSON object per line with the event's fields at the top level. The level is an
//! `EnvFilter` directive (`info`, `info,compartment_auditd=debug`) taken from
//! `log.level` / `COMPARTMENT_AUDIT_LOG_LEVEL` only, so one setting decides it; it can
//! be changed at run time with [`set_level`] (configuration reload), the format cannot.
//!
//! Whatever the level, the database driver and its pool are heard only at `warn` and
//! `error` ([`quiet_drivers`]): at `debug` and `trace`, `tokio_postgres` logs every
//! statement with its parameters (users' e-mail addresses, token hashes, audit
//! metadata), which must never reach a log.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings};

/// The installed subscriber's filter, so a reload can change the level.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// A logging problem at run time.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level is not a valid filter directive.
    #[error("log level {level:?} is not a valid filter: {reason}")]
    InvalidLevel {
        /// The rejected directive.
        level: String,
        /// Why it was rejected.
        reason: String,
    },
    /// [`init`] has not installed this module's subscriber.
    #[error("logging was not initialised by this module, so its level cannot be changed")]
    NotInstalled,
    /// The subscriber refused the new filter.
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Installs the global subscriber for `settings`. Returns `false`, changing nothing,
/// when a global subscriber is already installed (a second call, or a test harness).
pub fn init(settings: &LogSettings) -> bool {
    let (filter, handle) = reload::Layer::new(filter(&settings.level));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(quiet_drivers())
        .with(format_layer(
            settings.format,
            std::io::stderr,
            std::io::stderr().is_terminal(),
        ))
        .try_init()
        .is_ok();
    if installed {
        // Only the call that installed the subscriber gets here, so the cell is empty.
        let _ = FILTER.set(handle);
    }
    installed
}

/// Changes the level of the subscriber installed by [`init`].
pub fn set_level(level: &str) -> Result<(), LoggingError> {
    let new = EnvFilter::builder()
        .parse(level)
        .map_err(|err| LoggingError::InvalidLevel {
            level: level.to_owned(),
            reason: err.to_string(),
        })?;
    FILTER
        .get()
        .ok_or(LoggingError::NotInstalled)?
        .reload(new)
        .map_err(|err| LoggingError::Reload(err.to_string()))
}

/// A subscriber for `settings` that writes to `writer`, without installing it: the
/// same layers as [`init`], for tests and for scoped use with
/// `tracing::subscriber::with_default`.
pub fn subscriber<W>(settings: &LogSettings, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(filter(&settings.level))
        .with(quiet_drivers())
        .with(format_layer(settings.format, writer, false))
}

/// Log targets of the database driver and the pool (through the `log` bridge and
/// `tracing`), whose verbose events quote statements and their parameters.
const DRIVER_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "postgres_types",
    "deadpool",
];

/// Whether an event is one of the driver's above `warn`: dropped at every level.
fn is_quiet_driver_event(metadata: &Metadata<'_>) -> bool {
    *metadata.level() > Level::WARN
        && DRIVER_TARGETS.iter().any(|target| {
            metadata.target().strip_prefix(target).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with("::") || rest.starts_with('.')
            })
        })
}

/// A global filter, beside the configured level, that no `log.level` can widen: the
/// driver's and the pool's `info`, `debug` and `trace` events never get through.
fn quiet_drivers() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    filter_fn(|metadata| !is_quiet_driver_event(metadata))
}

/// The filter for a level. The level was validated when the settings were loaded; a
/// `LogSettings` built in code with a bad directive loses only that directive.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::builder().parse_lossy(level)
}

fn format_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
}
