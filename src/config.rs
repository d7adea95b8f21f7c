//! Settings: defaults < TOML file < environment (SPEC §2).
//!
//! The environment names are part of the product's documentation and must work
//! exactly as written; see [`ENV_NAMES`]. Loading and validation live in
//! [`Settings::load`]; every failure is a [`ConfigError`] that names the key, the
//! value and what is accepted, and the binary exits with status 78 (`EX_CONFIG`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Exit status for bad configuration (`EX_CONFIG` from sysexits.h).
pub const EX_CONFIG: i32 = 78;

/// Default path of the optional configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/compartment/auditd.toml";

/// The effective settings of the daemon and the CLI.
#[derive(Debug, Clone)]
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
}

/// Database connection settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// PostgreSQL connection string; contains the password, so never print it raw.
    pub url: SecretString,
    /// Connections in the shared pool (the listener has its own).
    pub pool_size: usize,
    /// How long to wait for a new connection before calling the database unreachable.
    pub connect_timeout: Duration,
    /// TCP keepalive idle time, so a half-open connection is noticed in seconds, not hours.
    pub keepalive_idle: Duration,
}

/// File sink settings.
#[derive(Debug, Clone)]
pub struct FileSinkSettings {
    /// Mirror events to files at all; while false the directory is never touched.
    pub enabled: bool,
    /// The sink directory.
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
}

/// Mirror (database → sink) settings.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Install default, inherited by organizations set to `inherit`.
    pub days: u32,
    /// When the job runs (5-field cron, UTC).
    pub cleanup_cron: CronSchedule,
    /// Rows deleted per batch (one short transaction each).
    pub cleanup_batch_size: u32,
    /// Batches per run at most.
    pub cleanup_max_batches: u32,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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

/// Where a sink with no position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only events committed after the sink was first enabled.
    Now,
    /// Every retained event.
    Beginning,
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

/// A validated 5-field cron expression (UTC) with its source text.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as configured.
    pub source: String,
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

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[REDACTED]\"")
    }
}

/// A configuration problem: names the key, the value and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that is not accepted.
    #[error("{key} = {value:?} is not valid: {accepted}")]
    Invalid {
        /// TOML key (and environment variable, when it came from there).
        key: String,
        /// The offending value (redacted for secrets).
        value: String,
        /// What is accepted.
        accepted: String,
    },
}

impl Settings {
    /// Loads settings: defaults < config file < environment.
    pub fn load(_config_file: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        Err(ConfigError::Invalid {
            key: "config".into(),
            value: String::new(),
            accepted: "not implemented yet".into(),
        })
    }
}

impl Settings {
    /// The documented defaults (SPEC §2), with the given database URL.
    pub fn with_defaults(database_url: &str) -> Settings {
        Settings {
            database: DatabaseSettings {
                url: SecretString::new(database_url),
                pool_size: 8,
                connect_timeout: Duration::from_secs(5),
                keepalive_idle: Duration::from_secs(30),
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
                cleanup_cron: CronSchedule {
                    source: "0 3 * * *".into(),
                },
                cleanup_batch_size: 5000,
                cleanup_max_batches: 100,
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
        }
    }
}
