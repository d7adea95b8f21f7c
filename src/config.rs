//! Settings: defaults < TOML file < environment (SPEC §2).
//!
//! The environment names are part of the product's documentation and must work
//! exactly as written; see [`ENV_NAMES`]. They are flat (`COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE`)
//! while the file is sectioned (`[file_sink] rotate_size`), and a section or key name may
//! itself contain `_`, so the mapping is an explicit table rather than figment's
//! `Env::split("_")`, which would turn that name into `file.sink.rotate.size`.
//!
//! Loading is [`Settings::load`] (process environment, `--config` or
//! [`DEFAULT_CONFIG_PATH`]) over [`Settings::load_from`] (an explicit file and
//! environment, for tests and reloads). Every failure is one [`ConfigError`] that names
//! the key, where the value came from (file or environment variable), the value
//! (redacted for the database URL) and what is accepted; the binary exits with status
//! 78 (`EX_CONFIG`). Value syntax (durations, sizes, booleans) is in [`units`].
//!
//! Empty environment variables count as unset, so that templated environment files
//! (`COMPARTMENT_AUDIT_LOG_LEVEL=${LOG_LEVEL}`) fall back to the file and the defaults.
//! `DATABASE_URL` is a fallback for `COMPARTMENT_DATABASE_URL`: it overrides the file,
//! `COMPARTMENT_DATABASE_URL` overrides it.

pub mod redact;
mod render;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::value::magic::Tagged;
use figment::value::{Dict, Map, Num, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Deserialize;

pub use redact::redact_database_url;

use crate::db::tls::{RootCert, SslMode};

/// Exit status for bad configuration (`EX_CONFIG` from sysexits.h).
pub const EX_CONFIG: i32 = 78;

/// Default path of the optional configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/compartment/auditd.toml";

/// Names the configuration file (read by the command line as `--config`).
pub const ENV_CONFIG: &str = "COMPARTMENT_AUDIT_CONFIG";
/// `database.url`.
pub const ENV_DATABASE_URL: &str = "COMPARTMENT_DATABASE_URL";
/// `database.url`, when `COMPARTMENT_DATABASE_URL` is not set.
pub const ENV_DATABASE_URL_FALLBACK: &str = "DATABASE_URL";
/// `database.url_file`: a file holding the connection string (a secret mount).
pub const ENV_DATABASE_URL_FILE: &str = "COMPARTMENT_DATABASE_URL_FILE";
/// `database.password_file`: a file holding the password, read for every connection.
pub const ENV_DATABASE_PASSWORD_FILE: &str = "COMPARTMENT_DATABASE_PASSWORD_FILE";
/// `database.tls.sslmode`.
pub const ENV_DATABASE_SSLMODE: &str = "COMPARTMENT_DATABASE_SSLMODE";
/// `database.tls.sslrootcert`.
pub const ENV_DATABASE_SSLROOTCERT: &str = "COMPARTMENT_DATABASE_SSLROOTCERT";
/// `database.tls.sslcert`.
pub const ENV_DATABASE_SSLCERT: &str = "COMPARTMENT_DATABASE_SSLCERT";
/// `database.tls.sslkey`.
pub const ENV_DATABASE_SSLKEY: &str = "COMPARTMENT_DATABASE_SSLKEY";
/// `database.pool_size`.
pub const ENV_DATABASE_POOL_SIZE: &str = "COMPARTMENT_DATABASE_POOL_SIZE";
/// `database.connect_timeout`.
pub const ENV_DATABASE_CONNECT_TIMEOUT: &str = "COMPARTMENT_DATABASE_CONNECT_TIMEOUT";
/// `database.pool_idle_timeout`.
pub const ENV_DATABASE_POOL_IDLE_TIMEOUT: &str = "COMPARTMENT_DATABASE_POOL_IDLE_TIMEOUT";
/// `database.keepalive_idle`.
pub const ENV_DATABASE_KEEPALIVE_IDLE: &str = "COMPARTMENT_DATABASE_KEEPALIVE_IDLE";
/// `file_sink.enabled`.
pub const ENV_FILE_SINK_ENABLED: &str = "COMPARTMENT_AUDIT_FILE_SINK_ENABLED";
/// `file_sink.dir`.
pub const ENV_FILE_SINK_DIR: &str = "COMPARTMENT_AUDIT_FILE_SINK_DIR";
/// `file_sink.rotate_interval`.
pub const ENV_FILE_SINK_ROTATE_INTERVAL: &str = "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL";
/// `file_sink.rotate_size`.
pub const ENV_FILE_SINK_ROTATE_SIZE: &str = "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE";
/// `file_sink.retention_files`.
pub const ENV_FILE_SINK_RETENTION_FILES: &str = "COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES";
/// `file_sink.start_from`.
pub const ENV_FILE_SINK_START_FROM: &str = "COMPARTMENT_AUDIT_FILE_SINK_START_FROM";
/// `file_sink.fsync`.
pub const ENV_FILE_SINK_FSYNC: &str = "COMPARTMENT_AUDIT_FILE_SINK_FSYNC";
/// `file_sink.fsync_interval`.
pub const ENV_FILE_SINK_FSYNC_INTERVAL: &str = "COMPARTMENT_AUDIT_FILE_SINK_FSYNC_INTERVAL";
/// `file_sink.compress_delay`.
pub const ENV_FILE_SINK_COMPRESS_DELAY: &str = "COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY";
/// `file_sink.id`.
pub const ENV_FILE_SINK_ID: &str = "COMPARTMENT_AUDIT_FILE_SINK_ID";
/// `file_sink.allow_group_bits`.
pub const ENV_FILE_SINK_ALLOW_GROUP_BITS: &str = "COMPARTMENT_AUDIT_FILE_SINK_ALLOW_GROUP_BITS";
/// `mirror.batch_size`.
pub const ENV_MIRROR_BATCH_SIZE: &str = "COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE";
/// `mirror.poll_interval`.
pub const ENV_MIRROR_POLL_INTERVAL: &str = "COMPARTMENT_AUDIT_MIRROR_POLL_INTERVAL";
/// `mirror.horizon_poll_interval`.
pub const ENV_MIRROR_HORIZON_POLL_INTERVAL: &str = "COMPARTMENT_AUDIT_MIRROR_HORIZON_POLL_INTERVAL";
/// `mirror.heartbeat_interval`.
pub const ENV_MIRROR_HEARTBEAT_INTERVAL: &str = "COMPARTMENT_AUDIT_MIRROR_HEARTBEAT_INTERVAL";
/// `mirror.max_backoff`.
pub const ENV_MIRROR_MAX_BACKOFF: &str = "COMPARTMENT_AUDIT_MIRROR_MAX_BACKOFF";
/// `retention.days`.
pub const ENV_RETENTION_DAYS: &str = "COMPARTMENT_AUDIT_RETENTION_DAYS";
/// `retention.cleanup_cron`.
pub const ENV_RETENTION_CLEANUP_CRON: &str = "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON";
/// `retention.cleanup_batch_size`.
pub const ENV_RETENTION_CLEANUP_BATCH_SIZE: &str = "COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE";
/// `retention.cleanup_max_batches`.
pub const ENV_RETENTION_CLEANUP_MAX_BATCHES: &str =
    "COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES";
/// `retention.cleanup_concurrency`.
pub const ENV_RETENTION_CLEANUP_CONCURRENCY: &str =
    "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CONCURRENCY";
/// `http.addr`.
pub const ENV_HTTP_ADDR: &str = "COMPARTMENT_AUDIT_HTTP_ADDR";
/// `http.export_max_rows`.
pub const ENV_HTTP_EXPORT_MAX_ROWS: &str = "COMPARTMENT_AUDIT_HTTP_EXPORT_MAX_ROWS";
/// `http.max_header_bytes`.
pub const ENV_HTTP_MAX_HEADER_BYTES: &str = "COMPARTMENT_AUDIT_HTTP_MAX_HEADER_BYTES";
/// `http.max_query_bytes`.
pub const ENV_HTTP_MAX_QUERY_BYTES: &str = "COMPARTMENT_AUDIT_HTTP_MAX_QUERY_BYTES";
/// `http.request_timeout`.
pub const ENV_HTTP_REQUEST_TIMEOUT: &str = "COMPARTMENT_AUDIT_HTTP_REQUEST_TIMEOUT";
/// `http.max_concurrent_exports`.
pub const ENV_HTTP_MAX_CONCURRENT_EXPORTS: &str = "COMPARTMENT_AUDIT_HTTP_MAX_CONCURRENT_EXPORTS";
/// `log.level`.
pub const ENV_LOG_LEVEL: &str = "COMPARTMENT_AUDIT_LOG_LEVEL";
/// `log.format`.
pub const ENV_LOG_FORMAT: &str = "COMPARTMENT_AUDIT_LOG_FORMAT";

/// Environment variables of this daemon's own namespace; an unknown one is reported as
/// a warning (a likely typo), not an error, because the product may share env files.
pub const ENV_PREFIX: &str = "COMPARTMENT_AUDIT_";

/// An environment variable and the setting it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvName {
    /// The variable, exactly as documented.
    pub var: &'static str,
    /// The TOML key, `section.field`.
    pub key: &'static str,
}

const fn env(var: &'static str, key: &'static str) -> EnvName {
    EnvName { var, key }
}

/// Every setting, in documentation order, with its primary environment variable.
pub const ENV_NAMES: &[EnvName] = &[
    env(ENV_DATABASE_URL, "database.url"),
    env(ENV_DATABASE_URL_FILE, "database.url_file"),
    env(ENV_DATABASE_PASSWORD_FILE, "database.password_file"),
    env(ENV_DATABASE_SSLMODE, "database.tls.sslmode"),
    env(ENV_DATABASE_SSLROOTCERT, "database.tls.sslrootcert"),
    env(ENV_DATABASE_SSLCERT, "database.tls.sslcert"),
    env(ENV_DATABASE_SSLKEY, "database.tls.sslkey"),
    env(ENV_DATABASE_POOL_SIZE, "database.pool_size"),
    env(ENV_DATABASE_CONNECT_TIMEOUT, "database.connect_timeout"),
    env(ENV_DATABASE_POOL_IDLE_TIMEOUT, "database.pool_idle_timeout"),
    env(ENV_DATABASE_KEEPALIVE_IDLE, "database.keepalive_idle"),
    env(ENV_FILE_SINK_ENABLED, "file_sink.enabled"),
    env(ENV_FILE_SINK_DIR, "file_sink.dir"),
    env(ENV_FILE_SINK_ROTATE_INTERVAL, "file_sink.rotate_interval"),
    env(ENV_FILE_SINK_ROTATE_SIZE, "file_sink.rotate_size"),
    env(ENV_FILE_SINK_RETENTION_FILES, "file_sink.retention_files"),
    env(ENV_FILE_SINK_START_FROM, "file_sink.start_from"),
    env(ENV_FILE_SINK_FSYNC, "file_sink.fsync"),
    env(ENV_FILE_SINK_FSYNC_INTERVAL, "file_sink.fsync_interval"),
    env(ENV_FILE_SINK_COMPRESS_DELAY, "file_sink.compress_delay"),
    env(ENV_FILE_SINK_ALLOW_GROUP_BITS, "file_sink.allow_group_bits"),
    env(ENV_FILE_SINK_ID, "file_sink.id"),
    env(ENV_MIRROR_BATCH_SIZE, "mirror.batch_size"),
    env(ENV_MIRROR_POLL_INTERVAL, "mirror.poll_interval"),
    env(
        ENV_MIRROR_HORIZON_POLL_INTERVAL,
        "mirror.horizon_poll_interval",
    ),
    env(ENV_MIRROR_HEARTBEAT_INTERVAL, "mirror.heartbeat_interval"),
    env(ENV_MIRROR_MAX_BACKOFF, "mirror.max_backoff"),
    env(ENV_RETENTION_DAYS, "retention.days"),
    env(ENV_RETENTION_CLEANUP_CRON, "retention.cleanup_cron"),
    env(
        ENV_RETENTION_CLEANUP_BATCH_SIZE,
        "retention.cleanup_batch_size",
    ),
    env(
        ENV_RETENTION_CLEANUP_MAX_BATCHES,
        "retention.cleanup_max_batches",
    ),
    env(
        ENV_RETENTION_CLEANUP_CONCURRENCY,
        "retention.cleanup_concurrency",
    ),
    env(ENV_HTTP_ADDR, "http.addr"),
    env(ENV_HTTP_EXPORT_MAX_ROWS, "http.export_max_rows"),
    env(ENV_HTTP_MAX_HEADER_BYTES, "http.max_header_bytes"),
    env(ENV_HTTP_MAX_QUERY_BYTES, "http.max_query_bytes"),
    env(ENV_HTTP_REQUEST_TIMEOUT, "http.request_timeout"),
    env(
        ENV_HTTP_MAX_CONCURRENT_EXPORTS,
        "http.max_concurrent_exports",
    ),
    env(ENV_LOG_LEVEL, "log.level"),
    env(ENV_LOG_FORMAT, "log.format"),
];

/// Settings without a default: unset unless given. `config check` and
/// config/auditd.toml show them commented out.
pub const OPTIONAL_KEYS: &[&str] = &[
    "database.url_file",
    "database.password_file",
    "database.tls.sslmode",
    "database.tls.sslrootcert",
    "database.tls.sslcert",
    "database.tls.sslkey",
];

/// Lower-precedence alternatives: used only when the primary variable is not set.
pub const ENV_FALLBACK_NAMES: &[EnvName] = &[env(ENV_DATABASE_URL_FALLBACK, "database.url")];

/// libpq's own variables, read (like libpq does) as defaults below the connection
/// string: a parameter in the URL, or an explicit setting, overrides them. They fill
/// [`DatabaseSettings::libpq_env`], not the settings of the same name.
pub const LIBPQ_ENV_NAMES: &[EnvName] = &[
    env("PGSSLMODE", "sslmode"),
    env("PGSSLROOTCERT", "sslrootcert"),
    env("PGSSLCERT", "sslcert"),
    env("PGSSLKEY", "sslkey"),
    env("PGPASSFILE", "passfile"),
];

/// The sections of the file, in documentation order.
pub const SECTIONS: &[&str] = &[
    "database",
    "file_sink",
    "mirror",
    "retention",
    "http",
    "log",
];

/// The TOML key an environment variable sets, if it is one of ours.
pub fn key_for_env(var: &str) -> Option<&'static str> {
    ENV_NAMES
        .iter()
        .chain(ENV_FALLBACK_NAMES)
        .find(|name| name.var == var)
        .map(|name| name.key)
}

/// The primary environment variable of a TOML key.
pub fn env_for_key(key: &str) -> Option<&'static str> {
    ENV_NAMES
        .iter()
        .find(|name| name.key == key)
        .map(|name| name.var)
}

/// The effective settings of the daemon and the CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where the audit events live.
    pub database: DatabaseSettings,
    /// The NDJSON file sink (SPEC §6).
    pub file_sink: FileSinkSettings,
    /// How the mirror reads from the database.
    pub mirror: MirrorSettings,
    /// `audit.retention.cleanup` (SPEC §8).
    pub retention: RetentionSettings,
    /// Health, metrics and the `/v1` API (SPEC §9).
    pub http: HttpSettings,
    /// Log level and format.
    pub log: LogSettings,
    /// Problems found while loading that did not stop it (unknown `COMPARTMENT_AUDIT_*`
    /// variables). Loading happens before logging is set up, so the caller logs them,
    /// e.g. with [`Settings::log_warnings`].
    pub warnings: Vec<ConfigWarning>,
}

/// Database connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// PostgreSQL connection string; contains the password, so never print it raw.
    pub url: SecretString,
    /// Connections in the shared pool (the listener has its own).
    pub pool_size: usize,
    /// How long to wait for a new connection before calling the database unreachable.
    pub connect_timeout: Duration,
    /// A pooled connection unused this long is closed: the pool shrinks back after a
    /// burst instead of holding its high-water mark of sessions forever.
    pub pool_idle_timeout: Duration,
    /// TCP keepalive idle time, so a half-open connection is noticed in seconds, not hours.
    pub keepalive_idle: Duration,
    /// The file `url` was read from, if it came from one (`database.url_file`).
    pub url_file: Option<PathBuf>,
    /// A file holding the password, read again for every new connection.
    pub password_file: Option<PathBuf>,
    /// `[database.tls]`: explicit TLS parameters; each overrides the same parameter in
    /// the URL.
    pub tls: TlsSettings,
    /// libpq's `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` and `PGPASSFILE`
    /// from the environment: defaults that the URL and `tls` override.
    pub libpq_env: LibpqEnvironment,
}

/// TLS parameters of the database connection, each unset unless given (see
/// [`crate::db::tls`] for their meaning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub sslmode: Option<SslMode>,
    /// `sslrootcert`: a PEM file, or `system`.
    pub sslrootcert: Option<RootCert>,
    /// `sslcert`: the client certificate.
    pub sslcert: Option<PathBuf>,
    /// `sslkey`: the client certificate's key.
    pub sslkey: Option<PathBuf>,
}

/// libpq's environment variables (see [`LIBPQ_ENV_NAMES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibpqEnvironment {
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`.
    pub tls: TlsSettings,
    /// `PGPASSFILE`.
    pub passfile: Option<PathBuf>,
}

/// File sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkSettings {
    /// Mirror events to files at all; while false the directory is never touched.
    pub enabled: bool,
    /// The sink directory (absolute).
    pub dir: PathBuf,
    /// Rotate when the active file is this old.
    pub rotate_interval: Duration,
    /// Rotate before the active file would pass this many bytes.
    pub rotate_size: u64,
    /// Rotated (gzip) files kept.
    pub retention_files: usize,
    /// Where a sink with no position starts.
    pub start_from: StartFrom,
    /// When appended lines are fsync'd.
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: at most this long between fsyncs.
    pub fsync_interval: Duration,
    /// Keep a just-rotated plain file this long before compressing it (delaycompress).
    pub compress_delay: Duration,
    /// Tolerate group permission bits on the directory (Kubernetes `fsGroup` volumes).
    pub allow_group_bits: bool,
    /// Name under which this sink publishes its position to the database (TOML key
    /// `id`), so that retention never deletes what it has not written; distinct per
    /// sink directory when several daemons mirror one database.
    pub sink_id: String,
}

/// Mirror (database → sink) settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSettings {
    /// Events read per batch.
    pub batch_size: usize,
    /// Safety timer: poll this often even without a notification.
    pub poll_interval: Duration,
    /// Re-poll this often while rows wait behind an open transaction.
    pub horizon_poll_interval: Duration,
    /// Heartbeat on the listener connection, to detect a half-open socket.
    pub heartbeat_interval: Duration,
    /// Longest reconnect backoff.
    pub max_backoff: Duration,
}

/// Retention cleanup settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSettings {
    /// Install default, inherited by organizations set to `inherit`.
    pub days: u32,
    /// When the job runs (5-field cron, UTC).
    pub cleanup_cron: CronSchedule,
    /// Rows deleted per batch (one short transaction each).
    pub cleanup_batch_size: u32,
    /// Batches per run at most.
    pub cleanup_max_batches: u32,
    /// Batches a run keeps in flight at once, each on a database session of its own.
    pub cleanup_concurrency: u32,
}

/// HTTP server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Listen address; loopback by default.
    pub addr: SocketAddr,
    /// Export row cap (`audit_export_too_large` above it).
    pub export_max_rows: u64,
    /// Largest accepted request head (request line + headers), in bytes.
    pub max_header_bytes: usize,
    /// Longest accepted query string, in bytes.
    pub max_query_bytes: usize,
    /// Whole-request timeout (also bounds slow clients).
    pub request_timeout: Duration,
    /// Exports streamed at the same time at most.
    pub max_concurrent_exports: usize,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `compartment_auditd=debug`.
    pub level: String,
    /// Human-readable text or JSON lines.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Where a sink with no position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only events committed after the sink was first enabled.
    Now,
    /// Every retained event.
    Beginning,
}

impl StartFrom {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StartFrom::Now => "now",
            StartFrom::Beginning => "beginning",
        }
    }
}

/// When the sink fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch (default): the position never runs ahead of the disk.
    Always,
    /// At most every `fsync_interval`.
    Interval,
    /// Leave it to the kernel.
    Never,
}

impl FsyncPolicy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// A validated 5-field cron expression (UTC) with its source text.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as configured (surrounding whitespace removed).
    pub source: String,
    /// The parsed schedule; private so that every `CronSchedule` has been validated.
    schedule: croner::Cron,
}

/// A cron expression that is not a valid 5-field schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCron(String);

impl CronSchedule {
    /// What an expression may look like, for error messages and documentation.
    pub const SYNTAX: &'static str = "a 5-field cron expression \"minute hour day-of-month month day-of-week\", evaluated in UTC, such as \"0 3 * * *\" (no seconds field, no @nicknames)";

    /// Parses a strict 5-field expression (minute hour day-of-month month
    /// day-of-week), evaluated in UTC. Seconds fields, years and `@daily`-style
    /// nicknames are refused, and so is a schedule that never fires (`0 0 31 2 *`).
    pub fn parse(expression: &str) -> Result<CronSchedule, InvalidCron> {
        let source = expression.trim();
        let fields = source.split_whitespace().count();
        if fields != 5 {
            return Err(InvalidCron(format!(
                "has {fields} field{}, not 5",
                if fields == 1 { "" } else { "s" }
            )));
        }
        if source.contains('@') {
            return Err(InvalidCron("@nicknames are not supported".into()));
        }
        let schedule = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(source)
            .map_err(|err| InvalidCron(err.to_string()))?;
        let parsed = CronSchedule {
            source: source.to_owned(),
            schedule,
        };
        // A fixed reference keeps parsing deterministic; any satisfiable five-field
        // schedule fires within a few years of any date.
        if parsed.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(InvalidCron("never fires".into()));
        }
        Ok(parsed)
    }

    /// The first time strictly after `after` at which the schedule fires, or `None` if
    /// it never does again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.find_next_occurrence(&after, false).ok()
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        // The schedule is a function of the source text.
        self.source == other.source
    }
}

impl Eq for CronSchedule {}

impl FromStr for CronSchedule {
    type Err = InvalidCron;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse(s)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A string that is never printed: `Debug` and `Display` show `[REDACTED]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[REDACTED]\"")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A configuration problem: names the key, the value and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that is not accepted.
    #[error("{key} = {value} is not valid: {accepted}")]
    Invalid {
        /// TOML key (and environment variable or file, naming where the value came from).
        key: String,
        /// The offending value as written (redacted for secrets).
        value: String,
        /// What is accepted.
        accepted: String,
    },
    /// A required setting has no value.
    #[error("{key} is required but not set: {hint}")]
    Missing {
        /// TOML key.
        key: String,
        /// Where it can be set.
        hint: String,
    },
    /// Two settings that exclude each other are both set (a value and its `_FILE`).
    #[error("{first} and {second} are both set: {hint}")]
    Conflict {
        /// The one setting (and where it was set).
        first: String,
        /// The other.
        second: String,
        /// Which one to keep.
        hint: String,
    },
    /// The file has a key or section this version does not know.
    #[error("unknown key {key} in {}: {accepted}", file.display())]
    UnknownKey {
        /// The unknown key, `section.field` (or a top-level name).
        key: String,
        /// The configuration file.
        file: PathBuf,
        /// The keys accepted at that place, and the closest match if there is one.
        accepted: String,
    },
    /// A part of the file has the wrong shape, e.g. a section that is not a table.
    #[error("{key} in {}: {message}", file.display())]
    Structure {
        /// Where in the file.
        key: String,
        /// The configuration file.
        file: PathBuf,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why (not found, permission denied, …).
        reason: String,
    },
    /// The configuration file is not valid TOML.
    #[error("the configuration file {} is not valid TOML: {message} at line {line}, column {column}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (without the quoted source line, which could hold a secret).
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
}

/// A problem found while loading that does not stop the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// A `COMPARTMENT_AUDIT_*` variable that is not a setting (likely a typo).
    UnknownEnvironmentVariable {
        /// The variable.
        name: String,
        /// The closest documented variable, if one is close.
        suggestion: Option<&'static str>,
    },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::UnknownEnvironmentVariable { name, suggestion } => {
                write!(f, "unknown environment variable {name} is ignored")?;
                if let Some(suggestion) = suggestion {
                    write!(f, " (did you mean {suggestion}?)")?;
                }
                Ok(())
            }
        }
    }
}

impl Settings {
    /// Loads settings from the process environment: defaults < config file <
    /// environment. The file is `config_file` (from `--config` or
    /// `COMPARTMENT_AUDIT_CONFIG`; an error if it is missing), else
    /// [`DEFAULT_CONFIG_PATH`] when it exists, else none.
    pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = resolve_config_file(config_file)?;
        let env = process_environment()?;
        Settings::load_from(file.as_deref(), env)
    }

    /// Loads settings from an explicit file (none: defaults and environment only) and
    /// environment, without looking at the process environment or the default path.
    pub fn load_from<I, K, V>(file: Option<&Path>, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let env = Environment::collect(env);
        let mut figment = Figment::new();
        if let Some(path) = file {
            let toml = TomlFile::read(path)?;
            // Check the file's shape on its own first: once merged, an environment value
            // would replace a malformed section (`database = 5`) and hide it.
            Figment::from(&toml)
                .extract::<RawSettings>()
                .map_err(|err| structure_error(err, file))?;
            figment = figment.merge(toml);
        }
        let figment = figment
            .merge(EnvProvider {
                names: ENV_FALLBACK_NAMES,
                values: env.fallback,
            })
            .merge(EnvProvider {
                names: ENV_NAMES,
                values: env.primary,
            });
        let raw: RawSettings = figment
            .extract()
            .map_err(|err| structure_error(err, file))?;
        let mut settings = Reader { figment: &figment }.apply(&raw)?;
        settings.database.libpq_env = libpq_environment(&env.libpq)?;
        settings.warnings = env.warnings;
        Ok(settings)
    }

    /// Logs [`Settings::warnings`], once logging is set up.
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            match warning {
                ConfigWarning::UnknownEnvironmentVariable { name, suggestion } => {
                    tracing::warn!(
                        variable = %name,
                        suggestion = suggestion.unwrap_or(""),
                        "Ignoring an unknown COMPARTMENT_AUDIT_ environment variable"
                    );
                }
            }
        }
    }

    /// The effective settings as a TOML document with every key, the database password
    /// redacted; loading it back gives the same settings (but for the password).
    pub fn to_toml_redacted(&self) -> String {
        render::to_toml_redacted(self)
    }
}

/// The default cleanup schedule: daily at 03:00 UTC.
pub const DEFAULT_CLEANUP_CRON: &str = "0 3 * * *";

impl Settings {
    /// The documented defaults (SPEC §2), with the given database URL.
    pub fn with_defaults(database_url: &str) -> Settings {
        Settings {
            database: DatabaseSettings {
                url: SecretString::new(database_url),
                pool_size: 8,
                connect_timeout: Duration::from_secs(5),
                pool_idle_timeout: Duration::from_secs(600),
                keepalive_idle: Duration::from_secs(30),
                url_file: None,
                password_file: None,
                tls: TlsSettings::default(),
                libpq_env: LibpqEnvironment::default(),
            },
            file_sink: FileSinkSettings {
                enabled: false,
                dir: PathBuf::from("/var/lib/compartment/audit-logs"),
                rotate_interval: Duration::from_secs(86_400),
                rotate_size: 64 * 1024 * 1024,
                retention_files: 30,
                start_from: StartFrom::Now,
                fsync: FsyncPolicy::Always,
                fsync_interval: Duration::from_secs(1),
                compress_delay: Duration::from_secs(30),
                allow_group_bits: false,
                sink_id: "default".into(),
            },
            mirror: MirrorSettings {
                batch_size: 1000,
                poll_interval: Duration::from_secs(5),
                horizon_poll_interval: Duration::from_millis(100),
                heartbeat_interval: Duration::from_secs(15),
                max_backoff: Duration::from_secs(30),
            },
            retention: RetentionSettings {
                days: 90,
                cleanup_cron: CronSchedule::parse(DEFAULT_CLEANUP_CRON)
                    .expect("the default schedule is a valid 5-field expression"),
                cleanup_batch_size: 5000,
                cleanup_max_batches: 100,
                cleanup_concurrency: 2,
            },
            http: HttpSettings {
                addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
                export_max_rows: 10_000,
                max_header_bytes: 16 * 1024,
                max_query_bytes: 4 * 1024,
                request_timeout: Duration::from_secs(30),
                max_concurrent_exports: 4,
            },
            log: LogSettings {
                level: "info".into(),
                format: LogFormat::Text,
            },
            warnings: Vec::new(),
        }
    }
}

/// The configuration file to read: the explicit one (which must exist), else
/// [`DEFAULT_CONFIG_PATH`] when it exists, else none.
pub fn resolve_config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = explicit {
        return Ok(Some(path.to_path_buf()));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    match std::fs::metadata(default) {
        Ok(_) => Ok(Some(default.to_path_buf())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // It may exist but we cannot tell: running without it could silently ignore the
        // operator's settings.
        Err(err) => Err(ConfigError::File {
            path: default.to_path_buf(),
            reason: err.to_string(),
        }),
    }
}

/// The process environment as UTF-8 pairs. Variables that are not ours are passed
/// through or skipped when they are not UTF-8; ours must be UTF-8.
fn process_environment() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => vars.push((name, value)),
            Err(value) => {
                if let Some(key) = key_for_env(&name) {
                    return Err(ConfigError::Invalid {
                        key: format!("{key} (environment variable {name})"),
                        value: display_text(key, &value.to_string_lossy()),
                        accepted: "the value must be valid UTF-8".into(),
                    });
                }
            }
        }
    }
    Ok(vars)
}

/// The environment split by what it sets.
struct Environment {
    /// Values of [`ENV_NAMES`]: (key, value).
    primary: Vec<(&'static str, String)>,
    /// Values of [`ENV_FALLBACK_NAMES`].
    fallback: Vec<(&'static str, String)>,
    /// Values of [`LIBPQ_ENV_NAMES`]: (variable, value).
    libpq: Vec<(&'static str, String)>,
    /// Unknown variables in our namespace.
    warnings: Vec<ConfigWarning>,
}

impl Environment {
    fn collect<I, K, V>(env: I) -> Environment
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut primary = BTreeMap::new();
        let mut fallback = BTreeMap::new();
        let mut libpq = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, value) in env {
            let (name, value) = (name.as_ref(), value.as_ref());
            if let Some(known) = ENV_NAMES.iter().find(|n| n.var == name) {
                if !value.is_empty() {
                    primary.insert(known.key, value.to_owned());
                }
            } else if let Some(known) = ENV_FALLBACK_NAMES.iter().find(|n| n.var == name) {
                if !value.is_empty() {
                    fallback.insert(known.key, value.to_owned());
                }
            } else if let Some(known) = LIBPQ_ENV_NAMES.iter().find(|n| n.var == name) {
                if !value.is_empty() {
                    libpq.insert(known.var, value.to_owned());
                }
            } else if name.starts_with(ENV_PREFIX) && name != ENV_CONFIG {
                warnings.push(ConfigWarning::UnknownEnvironmentVariable {
                    name: name.to_owned(),
                    suggestion: closest(name, ENV_NAMES.iter().map(|n| n.var)),
                });
            }
        }
        warnings.sort_by_key(ToString::to_string);
        Environment {
            primary: primary.into_iter().collect(),
            fallback: fallback.into_iter().collect(),
            libpq: libpq.into_iter().collect(),
            warnings,
        }
    }
}

/// Name of the figment provider of environment variables; its interpolater maps a key
/// back to the variable, so errors can name it.
const ENV_SOURCE: &str = "environment variable";

/// The environment as a figment provider, nested by the explicit key table.
struct EnvProvider {
    names: &'static [EnvName],
    values: Vec<(&'static str, String)>,
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        let names = self.names;
        Metadata::named(ENV_SOURCE).interpolater(move |_profile, keys| {
            let key = keys.join(".");
            names
                .iter()
                .find(|name| name.key == key)
                .map_or(key, |name| name.var.to_owned())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, value) in &self.values {
            if !key.contains('.') {
                return Err(figment::Error::from(format!(
                    "internal: key {key} has no section"
                )));
            }
            insert_nested(&mut root, key, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Inserts `value` at the dotted `key` (`database.tls.sslmode`), creating tables.
fn insert_nested(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

/// The configuration file as a figment provider whose metadata names the file.
struct TomlFile {
    path: PathBuf,
    contents: String,
}

impl TomlFile {
    fn read(path: &Path) -> Result<TomlFile, ConfigError> {
        let contents = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        // Parse once here for a precise syntax error; figment's own message quotes the
        // offending source line, which could be the one holding the database password.
        if let Err(err) = toml::from_str::<toml::Table>(&contents) {
            let offset = err.span().map_or(0, |span| span.start);
            let (line, column) = line_and_column(&contents, offset);
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                // One line, so that the error stays one message in a log.
                message: err
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
                line,
                column,
            });
        }
        Ok(TomlFile {
            path: path.to_path_buf(),
            contents,
        })
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("configuration file", Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.contents).data()
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// The file's shape: every key, each as a tagged raw value so that it can be parsed
/// with the documented syntax and its origin named. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    database: RawDatabase,
    file_sink: RawFileSink,
    mirror: RawMirror,
    retention: RawRetention,
    http: RawHttp,
    log: RawLog,
}

type RawValue = Option<Tagged<Value>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDatabase {
    url: RawValue,
    url_file: RawValue,
    password_file: RawValue,
    tls: RawTls,
    pool_size: RawValue,
    connect_timeout: RawValue,
    pool_idle_timeout: RawValue,
    keepalive_idle: RawValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawTls {
    sslmode: RawValue,
    sslrootcert: RawValue,
    sslcert: RawValue,
    sslkey: RawValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFileSink {
    enabled: RawValue,
    dir: RawValue,
    rotate_interval: RawValue,
    rotate_size: RawValue,
    retention_files: RawValue,
    start_from: RawValue,
    fsync: RawValue,
    fsync_interval: RawValue,
    compress_delay: RawValue,
    allow_group_bits: RawValue,
    id: RawValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMirror {
    batch_size: RawValue,
    poll_interval: RawValue,
    horizon_poll_interval: RawValue,
    heartbeat_interval: RawValue,
    max_backoff: RawValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRetention {
    days: RawValue,
    cleanup_cron: RawValue,
    cleanup_batch_size: RawValue,
    cleanup_max_batches: RawValue,
    cleanup_concurrency: RawValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHttp {
    addr: RawValue,
    export_max_rows: RawValue,
    max_header_bytes: RawValue,
    max_query_bytes: RawValue,
    request_timeout: RawValue,
    max_concurrent_exports: RawValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    level: RawValue,
    format: RawValue,
}

/// Turns a figment extraction error (the file's shape) into one clear message.
fn structure_error(err: figment::Error, file: Option<&Path>) -> ConfigError {
    // Only the file can contribute unknown keys or non-table sections: the environment
    // provider builds its dictionary from the key table.
    let file = file.map_or_else(|| PathBuf::from("<none>"), Path::to_path_buf);
    let err = err.into_iter().next().unwrap_or_else(|| {
        figment::Error::from("unknown error while reading the configuration".to_string())
    });
    let at = err.path.join(".");
    match &err.kind {
        Kind::UnknownField(field, expected) => {
            // The path ends with the unknown field itself; its parent is the section.
            let parent = match err.path.split_last() {
                Some((last, parent)) if last == field => parent.join("."),
                _ => at,
            };
            let at = parent;
            let (key, accepted) = if at.is_empty() {
                let mut accepted = format!(
                    "the accepted sections are {}",
                    SECTIONS
                        .iter()
                        .map(|s| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(known) = ENV_NAMES
                    .iter()
                    .find(|name| name.key.split_once('.').map(|(_, f)| f) == Some(field))
                {
                    let (section, _) = known.key.split_once('.').unwrap_or(("", ""));
                    accepted.push_str(&format!(" (did you mean {field} in [{section}]?)"));
                } else if let Some(suggestion) = closest(field, SECTIONS.iter().copied()) {
                    accepted.push_str(&format!(" (did you mean [{suggestion}]?)"));
                }
                (field.clone(), accepted)
            } else {
                let mut accepted =
                    format!("the accepted keys in [{at}] are {}", expected.join(", "));
                if let Some(suggestion) = closest(field, expected.iter().copied()) {
                    accepted.push_str(&format!(" (did you mean {suggestion}?)"));
                }
                (format!("{at}.{field}"), accepted)
            };
            ConfigError::UnknownKey {
                key,
                file,
                accepted,
            }
        }
        Kind::InvalidType(actual, _) if SECTIONS.contains(&at.as_str()) => ConfigError::Structure {
            key: at.clone(),
            file,
            message: format!("expected a [{at}] section (a table), found {actual}"),
        },
        kind => ConfigError::Structure {
            key: if at.is_empty() {
                "the top level".into()
            } else {
                at
            },
            file,
            message: kind.to_string(),
        },
    }
}

/// Where a value came from, to name it in errors.
enum Origin {
    Default,
    File(PathBuf),
    Env(String),
}

/// Parses the raw values onto the defaults, naming the key and origin of any bad value.
struct Reader<'a> {
    figment: &'a Figment,
}

/// Reads one field: `read!(reader, section_name, raw_section, field => target, parser)`.
/// The key is derived from the section and field names, so it cannot drift from the
/// file's layout.
macro_rules! read {
    ($reader:expr, $section:literal, $raw:expr, $field:ident => $target:expr, $parse:expr) => {
        $reader.set(
            &mut $target,
            concat!($section, ".", stringify!($field)),
            &$raw.$field,
            $parse,
        )?
    };
}

impl Reader<'_> {
    fn apply(&self, raw: &RawSettings) -> Result<Settings, ConfigError> {
        let mut s = Settings::with_defaults("");

        let mut url = None;
        let db = &raw.database;
        self.set(&mut url, "database.url", &db.url, |v| {
            parse_database_url(v).map(Some)
        })?;
        read!(self, "database", db, pool_size => s.database.pool_size, count(2, 1024));
        read!(self, "database", db, connect_timeout => s.database.connect_timeout,
            duration(ms(100), hours(1)));
        read!(self, "database", db, pool_idle_timeout => s.database.pool_idle_timeout,
            duration(secs(1), hours(24)));
        read!(self, "database", db, keepalive_idle => s.database.keepalive_idle,
            duration(secs(1), hours(2)));
        if db.url.is_some() && db.url_file.is_some() {
            return Err(self.conflict(
                ("database.url", db.url.as_ref()),
                ("database.url_file", db.url_file.as_ref()),
                "set the connection string in one of them only",
            ));
        }
        read!(self, "database", db, url_file => s.database.url_file, |v| {
            absolute_file(v).map(Some)
        });
        if let Some(path) = &s.database.url_file {
            let text = read_secret_file(path).map_err(|reason| {
                self.invalid(
                    "database.url_file",
                    db.url_file.as_ref(),
                    &format!("{:?}", path.display().to_string()),
                    reason,
                )
            })?;
            let parsed = parse_database_url(&Value::from(text)).map_err(|accepted| {
                self.invalid(
                    "database.url_file",
                    db.url_file.as_ref(),
                    &format!("the content of {:?}", path.display().to_string()),
                    accepted,
                )
            })?;
            url = Some(parsed);
        }
        read!(self, "database", db, password_file => s.database.password_file, |v| {
            absolute_file(v).map(Some)
        });
        if s.database.password_file.is_some()
            && url
                .as_ref()
                .is_some_and(|url| url_has_password(url.expose()))
        {
            let url_key = if db.url_file.is_some() {
                ("database.url_file", db.url_file.as_ref())
            } else {
                ("database.url", db.url.as_ref())
            };
            return Err(self.conflict(
                url_key,
                ("database.password_file", db.password_file.as_ref()),
                "the connection string holds a password and database.password_file names another; remove the password from the connection string or unset database.password_file",
            ));
        }
        let tls = &db.tls;
        read!(self, "database.tls", tls, sslmode => s.database.tls.sslmode, |v| {
            string(v, "a word").and_then(|t| SslMode::parse(&t)).map(Some)
        });
        read!(self, "database.tls", tls, sslrootcert => s.database.tls.sslrootcert, |v| {
            root_cert(v).map(Some)
        });
        read!(self, "database.tls", tls, sslcert => s.database.tls.sslcert, |v| {
            absolute_file(v).map(Some)
        });
        read!(self, "database.tls", tls, sslkey => s.database.tls.sslkey, |v| {
            absolute_file(v).map(Some)
        });
        s.database.url = url.ok_or_else(|| ConfigError::Missing {
            key: "database.url".into(),
            hint: format!(
                "set {ENV_DATABASE_URL} (or {ENV_DATABASE_URL_FALLBACK}) in the environment, \
                 or url in the [database] section of the configuration file, to a PostgreSQL \
                 connection string such as postgres://user:password@host:5432/dbname"
            ),
        })?;

        let fs = &raw.file_sink;
        read!(self, "file_sink", fs, enabled => s.file_sink.enabled, boolean);
        read!(self, "file_sink", fs, dir => s.file_sink.dir, absolute_path);
        read!(self, "file_sink", fs, rotate_interval => s.file_sink.rotate_interval,
            duration(secs(1), days(366)));
        read!(self, "file_sink", fs, rotate_size => s.file_sink.rotate_size,
            size(4 * 1024, 1024 * 1024 * 1024 * 1024));
        read!(self, "file_sink", fs, retention_files => s.file_sink.retention_files,
            count(1, 100_000));
        read!(self, "file_sink", fs, start_from => s.file_sink.start_from,
            choice(&[("now", StartFrom::Now), ("beginning", StartFrom::Beginning)]));
        read!(self, "file_sink", fs, fsync => s.file_sink.fsync, choice(&[
            ("always", FsyncPolicy::Always),
            ("interval", FsyncPolicy::Interval),
            ("never", FsyncPolicy::Never),
        ]));
        read!(self, "file_sink", fs, fsync_interval => s.file_sink.fsync_interval,
            duration(ms(10), hours(1)));
        read!(self, "file_sink", fs, compress_delay => s.file_sink.compress_delay,
            duration(Duration::ZERO, days(7)));
        read!(self, "file_sink", fs, allow_group_bits => s.file_sink.allow_group_bits, boolean);
        read!(self, "file_sink", fs, id => s.file_sink.sink_id, sink_id);

        let m = &raw.mirror;
        read!(self, "mirror", m, batch_size => s.mirror.batch_size, count(1, 100_000));
        read!(self, "mirror", m, poll_interval => s.mirror.poll_interval,
            duration(ms(10), hours(1)));
        read!(self, "mirror", m, horizon_poll_interval => s.mirror.horizon_poll_interval,
            duration(ms(10), secs(60)));
        read!(self, "mirror", m, heartbeat_interval => s.mirror.heartbeat_interval,
            duration(secs(1), hours(1)));
        read!(self, "mirror", m, max_backoff => s.mirror.max_backoff,
            duration(ms(100), hours(1)));

        let r = &raw.retention;
        read!(self, "retention", r, days => s.retention.days, count(1, 36_500));
        read!(self, "retention", r, cleanup_cron => s.retention.cleanup_cron, cron);
        read!(self, "retention", r, cleanup_batch_size => s.retention.cleanup_batch_size,
            count(1, 1_000_000));
        read!(self, "retention", r, cleanup_max_batches => s.retention.cleanup_max_batches,
            count(1, 1_000_000));
        read!(self, "retention", r, cleanup_concurrency => s.retention.cleanup_concurrency,
            count(1, 16));

        let h = &raw.http;
        read!(self, "http", h, addr => s.http.addr, socket_addr);
        read!(self, "http", h, export_max_rows => s.http.export_max_rows,
            count(1, 10_000_000));
        // hyper refuses a read buffer below 8 KiB, and the request head must fit in it.
        read!(self, "http", h, max_header_bytes => s.http.max_header_bytes,
            size(8 * 1024, 1024 * 1024));
        read!(self, "http", h, max_query_bytes => s.http.max_query_bytes,
            size(256, 1024 * 1024));
        read!(self, "http", h, request_timeout => s.http.request_timeout,
            duration(secs(1), hours(1)));
        read!(self, "http", h, max_concurrent_exports => s.http.max_concurrent_exports,
            count(1, 1024));
        if s.http.max_query_bytes > s.http.max_header_bytes {
            let raw = h.max_query_bytes.as_ref();
            return Err(self.invalid(
                "http.max_query_bytes",
                raw,
                &raw.map_or_else(
                    || units::format_size(s.http.max_query_bytes as u64),
                    |raw| display_value("http.max_query_bytes", raw),
                ),
                format!(
                    "the query string is part of the request head, so it must not exceed \
                     http.max_header_bytes ({})",
                    units::format_size(s.http.max_header_bytes as u64)
                ),
            ));
        }

        let l = &raw.log;
        read!(self, "log", l, level => s.log.level, log_level);
        read!(self, "log", l, format => s.log.format,
            choice(&[("text", LogFormat::Text), ("json", LogFormat::Json)]));

        Ok(s)
    }

    /// Parses `raw` (when set) into `target`.
    fn set<T>(
        &self,
        target: &mut T,
        key: &'static str,
        raw: &RawValue,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        let Some(tagged) = raw else {
            return Ok(());
        };
        match parse(tagged) {
            Ok(value) => {
                *target = value;
                Ok(())
            }
            Err(accepted) => {
                Err(self.invalid(key, Some(tagged), &display_value(key, tagged), accepted))
            }
        }
    }

    fn invalid(
        &self,
        key: &str,
        raw: Option<&Tagged<Value>>,
        value: &str,
        accepted: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: self.named(key, raw),
            value: value.to_owned(),
            accepted,
        }
    }

    /// `key (where it was set)`.
    fn named(&self, key: &str, raw: Option<&Tagged<Value>>) -> String {
        let origin = raw.map_or(Origin::Default, |tagged| self.origin(key, tagged));
        match origin {
            Origin::Default => format!("{key} (default)"),
            Origin::File(path) => format!("{key} (in {})", path.display()),
            Origin::Env(var) => format!("{key} (environment variable {var})"),
        }
    }

    fn conflict(
        &self,
        first: (&str, Option<&Tagged<Value>>),
        second: (&str, Option<&Tagged<Value>>),
        hint: &str,
    ) -> ConfigError {
        ConfigError::Conflict {
            first: self.named(first.0, first.1),
            second: self.named(second.0, second.1),
            hint: hint.to_owned(),
        }
    }

    fn origin(&self, key: &str, tagged: &Tagged<Value>) -> Origin {
        let Some(metadata) = self.figment.get_metadata(tagged.tag()) else {
            return Origin::Default;
        };
        if metadata.name == ENV_SOURCE {
            let keys: Vec<&str> = key.split('.').collect();
            return Origin::Env(metadata.interpolate(&Profile::Default, &keys));
        }
        match metadata.source.as_ref().and_then(Source::file_path) {
            Some(path) => Origin::File(path.to_path_buf()),
            None => Origin::Default,
        }
    }
}

/// A value as the operator wrote it, for error messages: strings quoted, numbers bare,
/// the database URL redacted.
fn display_value(key: &str, value: &Value) -> String {
    match value {
        Value::String(_, s) => display_text(key, s),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => display_num(*n),
        Value::Empty(..) => "an empty value".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "an array".into(),
    }
}

fn display_text(key: &str, text: &str) -> String {
    if key == "database.url" {
        format!("{:?}", redact_database_url(text))
    } else {
        format!("{text:?}")
    }
}

fn display_num(n: Num) -> String {
    if let Some(i) = n.to_i128() {
        i.to_string()
    } else if let Some(u) = n.to_u128() {
        u.to_string()
    } else if let Some(f) = n.to_f64() {
        f.to_string()
    } else {
        "a number".into()
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// An integer from `min` to `max`, written as a number or a string of digits (as it
/// comes from the environment).
fn count<T: TryFrom<u64>>(min: u64, max: u64) -> impl FnOnce(&Value) -> Result<T, String> {
    move |value| {
        let accepted = format!("expected an integer from {min} to {max}");
        let n: i128 = match value {
            Value::Num(_, n) => n
                .to_i128()
                .or_else(|| n.to_u128().and_then(|u| i128::try_from(u).ok()))
                .ok_or_else(|| format!("not an integer; {accepted}"))?,
            Value::String(_, s) => s
                .trim()
                .parse()
                .map_err(|_| format!("not an integer; {accepted}"))?,
            _ => return Err(accepted),
        };
        u64::try_from(n)
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or(accepted)
    }
}

/// A duration from `min` to `max` in the syntax of [`units::parse_duration`]; a bare
/// integer (TOML or environment) is seconds.
fn duration(min: Duration, max: Duration) -> impl FnOnce(&Value) -> Result<Duration, String> {
    move |value| {
        let accepted = format!(
            "expected a duration from {} to {}, written as {}",
            units::format_duration(min),
            units::format_duration(max),
            units::DURATION_SYNTAX
        );
        let parsed = match value {
            Value::String(_, s) => units::parse_duration(s),
            Value::Num(_, n) => n
                .to_u128_lossy()
                .and_then(|secs| u64::try_from(secs).ok())
                .map(Duration::from_secs)
                .ok_or_else(|| "not a whole, non-negative number of seconds".to_string()),
            _ => Err("not a duration".to_string()),
        };
        match parsed {
            Ok(d) if d >= min && d <= max => Ok(d),
            Ok(_) => Err(accepted),
            Err(reason) => Err(format!("{reason}; {accepted}")),
        }
    }
}

/// A size in bytes from `min` to `max` in the syntax of [`units::parse_size`].
fn size<T: TryFrom<u64>>(min: u64, max: u64) -> impl FnOnce(&Value) -> Result<T, String> {
    move |value| {
        let accepted = format!(
            "expected a size from {} to {}, written as {}",
            units::format_size(min),
            units::format_size(max),
            units::SIZE_SYNTAX
        );
        let parsed = match value {
            Value::String(_, s) => units::parse_size(s),
            Value::Num(_, n) => n
                .to_u128_lossy()
                .and_then(|bytes| u64::try_from(bytes).ok())
                .ok_or_else(|| "not a whole, non-negative number of bytes".to_string()),
            _ => Err("not a size".to_string()),
        };
        match parsed {
            Ok(bytes) if (min..=max).contains(&bytes) => T::try_from(bytes).map_err(|_| accepted),
            Ok(_) => Err(accepted),
            Err(reason) => Err(format!("{reason}; {accepted}")),
        }
    }
}

fn boolean(value: &Value) -> Result<bool, String> {
    let accepted = format!("expected {}", units::BOOL_SYNTAX);
    match value {
        Value::Bool(_, b) => Ok(*b),
        Value::String(_, s) => units::parse_bool(s).map_err(|_| accepted),
        _ => Err(accepted),
    }
}

fn string(value: &Value, what: &str) -> Result<String, String> {
    match value {
        Value::String(_, s) => Ok(s.clone()),
        _ => Err(format!("expected {what}")),
    }
}

/// One of a fixed set of words, any case.
fn choice<T: Copy>(
    options: &'static [(&'static str, T)],
) -> impl FnOnce(&Value) -> Result<T, String> {
    move |value| {
        let words: Vec<&str> = options.iter().map(|(word, _)| *word).collect();
        let accepted = format!("expected one of {}", words.join(", "));
        let text = string(value, &accepted)?;
        options
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(text.trim()))
            .map(|(_, option)| *option)
            .ok_or(accepted)
    }
}

fn sink_id(value: &Value) -> Result<String, String> {
    const ACCEPTED: &str =
        "expected 1 to 64 characters of letters, digits, '.', '_' or '-', such as default or host-a";
    let text = string(value, ACCEPTED)?;
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_string())
    } else {
        Err(ACCEPTED.into())
    }
}

fn absolute_path(value: &Value) -> Result<PathBuf, String> {
    const ACCEPTED: &str =
        "expected an absolute directory path such as /var/lib/compartment/audit-logs";
    let text = string(value, ACCEPTED)?;
    let path = PathBuf::from(text);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(ACCEPTED.into())
    }
}

fn socket_addr(value: &Value) -> Result<SocketAddr, String> {
    const ACCEPTED: &str = "expected an IP address and port such as 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464 (host names are not resolved)";
    string(value, ACCEPTED)?
        .trim()
        .parse()
        .map_err(|_| ACCEPTED.to_string())
}

fn cron(value: &Value) -> Result<CronSchedule, String> {
    let accepted = format!("expected {}", CronSchedule::SYNTAX);
    let text = string(value, &accepted)?;
    CronSchedule::parse(&text).map_err(|err| format!("{err}; {accepted}"))
}

fn log_level(value: &Value) -> Result<String, String> {
    const ACCEPTED: &str = "expected a log filter such as error, warn, info, debug, trace or \"info,compartment_auditd=debug\"";
    let text = string(value, ACCEPTED)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ACCEPTED.into());
    }
    // EnvFilter reads a bare word as a target enabled at every level, so a typo such
    // as "inf" would silently switch off every other log line: insist on a level or
    // an explicit `target=level`.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in text.split(',').map(str::trim) {
        let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive));
        if !is_level && !directive.contains('=') {
            return Err(format!(
                "{directive:?} is neither a level nor target=level; {ACCEPTED}"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|err| format!("{err}; {ACCEPTED}"))?;
    Ok(text.to_owned())
}

/// libpq's variables as [`LibpqEnvironment`]; a bad value names its variable.
fn libpq_environment(values: &[(&'static str, String)]) -> Result<LibpqEnvironment, ConfigError> {
    let mut env = LibpqEnvironment::default();
    for (var, value) in values {
        let invalid = |accepted: String| ConfigError::Invalid {
            key: format!("{var} (environment variable)"),
            value: format!("{value:?}"),
            accepted,
        };
        let text = Value::from(value.clone());
        match *var {
            "PGSSLMODE" => env.tls.sslmode = Some(SslMode::parse(value).map_err(invalid)?),
            "PGSSLROOTCERT" => env.tls.sslrootcert = Some(root_cert(&text).map_err(invalid)?),
            "PGSSLCERT" => env.tls.sslcert = Some(absolute_file(&text).map_err(invalid)?),
            "PGSSLKEY" => env.tls.sslkey = Some(absolute_file(&text).map_err(invalid)?),
            "PGPASSFILE" => env.passfile = Some(absolute_file(&text).map_err(invalid)?),
            _ => {}
        }
    }
    Ok(env)
}

fn absolute_file(value: &Value) -> Result<PathBuf, String> {
    const ACCEPTED: &str = "expected an absolute file path such as /etc/compartment/tls/ca.pem";
    let text = string(value, ACCEPTED)?;
    let path = PathBuf::from(text.trim());
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(ACCEPTED.into())
    }
}

fn root_cert(value: &Value) -> Result<RootCert, String> {
    const ACCEPTED: &str =
        "expected system (the operating system's trust store) or an absolute path to a PEM file of CA certificates";
    let text = string(value, ACCEPTED)?;
    match RootCert::parse(text.trim()) {
        RootCert::File(path) if !path.is_absolute() => Err(ACCEPTED.into()),
        root => Ok(root),
    }
}

/// A secret file's content, less one trailing newline (never shown in errors).
fn read_secret_file(path: &Path) -> Result<String, String> {
    crate::db::passfile::read_password_file(path).map_err(|err| err.reason)
}

/// Whether a connection string carries a password (user info or parameter).
fn url_has_password(text: &str) -> bool {
    let rest = crate::db::conninfo::split(text).rest;
    rest.parse::<tokio_postgres::Config>()
        .is_ok_and(|config| config.get_password().is_some())
}

fn parse_database_url(value: &Value) -> Result<SecretString, String> {
    const ACCEPTED: &str = "expected a PostgreSQL connection string: a URL such as postgres://user:password@host:5432/dbname, or key=value pairs such as \"host=db user=app dbname=compartment\"";
    let text = string(value, ACCEPTED)?;
    let conninfo = crate::db::conninfo::split(&text);
    if let Some(mode) = conninfo.get("sslmode") {
        SslMode::parse(mode).map_err(|accepted| format!("sslmode={mode}: {accepted}"))?;
    }
    let config: tokio_postgres::Config =
        conninfo
            .rest
            .parse()
            .map_err(|err: tokio_postgres::Error| {
                // The parser quotes the character it stumbled on, which may be part of the
                // password: keep only the part of its message before that.
                let mut message = err.to_string();
                if let Some(cause) = std::error::Error::source(&err) {
                    message = format!("{message}: {cause}");
                }
                let message = message
                    .split(" but got")
                    .next()
                    .unwrap_or("")
                    .trim_end_matches(':')
                    .to_owned();
                format!("{message}; {ACCEPTED}")
            })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(format!("it names no host; {ACCEPTED}"));
    }
    Ok(SecretString::new(text))
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a
/// plausible typo.
fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let threshold = (name.len() / 4).clamp(1, 4);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= threshold)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_one_primary_variable_and_a_known_section() {
        let mut keys = std::collections::HashSet::new();
        for name in ENV_NAMES {
            assert!(keys.insert(name.key), "{} listed twice", name.key);
            let (section, _) = name.key.split_once('.').expect("section.field");
            assert!(SECTIONS.contains(&section), "{}", name.key);
            assert_eq!(env_for_key(name.key), Some(name.var));
            assert_eq!(key_for_env(name.var), Some(name.key));
        }
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            closest(
                "COMPARTMENT_AUDIT_RETENTION_DAY",
                ENV_NAMES.iter().map(|n| n.var)
            ),
            Some(ENV_RETENTION_DAYS)
        );
        assert_eq!(
            closest("COMPARTMENT_AUDIT_COLOR", ENV_NAMES.iter().map(|n| n.var)),
            None
        );
        assert_eq!(
            closest("rotate_sise", ["rotate_size", "dir"]),
            Some("rotate_size")
        );
    }

    #[test]
    fn syntax_errors_point_at_line_and_column() {
        assert_eq!(line_and_column("a = 1\nb = ?", 10), (2, 5));
        assert_eq!(line_and_column("x", 0), (1, 1));
    }
}
