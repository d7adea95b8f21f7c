//! Everything that speaks SQL: pool, migrations, listener (doorbell), cursor reads,
//! filtered queries, administration. Never files.
//!
//! - [`pool`] builds the shared `deadpool` pool every component borrows connections
//!   from; [`connector`] is the one place that turns [`DatabaseSettings`] into a
//!   [`Connector`], which makes every connection (TLS, password files), so the
//!   mirror's dedicated `LISTEN` connection (which must not come from the pool)
//!   connects exactly like the pool does.
//! - [`connect`], [`tls`], [`conninfo`] and [`passfile`]: how one connection is made,
//!   with libpq's `sslmode` semantics and secrets read from files.
//! - [`migrate`] applies the reference schema's versioned migrations.
//! - [`query`] holds the filtered reads of the list and the export.
//! - [`json`] reads `json`/`jsonb` columns with a bound on nesting, so one deeply
//!   nested metadata value cannot fail the reads of every batch or page holding it.
//! - [`admin`] holds the administration functions behind `org`, `user`, `role` and
//!   `token`, plus the token lookup and permission check used by the `/v1` API.
//! - [`retention`] holds the queries of `audit.retention.cleanup`: organizations'
//!   retention, sink positions, the job's lock and resume point, the batch `DELETE`.

pub mod admin;
pub mod backoff;
pub mod connect;
pub mod conninfo;
pub mod cursor;
pub mod json;
pub mod listener;
pub mod migrate;
pub mod passfile;
pub mod query;
pub mod retention;
pub mod tls;

use std::time::Duration;

use deadpool::managed::QueueMode;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

pub use connect::Connector;

use crate::config::DatabaseSettings;

/// `application_name` reported to PostgreSQL (visible in `pg_stat_activity`) unless
/// the connection string sets its own.
pub const APPLICATION_NAME: &str = "compartment-auditd";

/// Unanswered keepalive probes before the kernel declares the peer dead.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Time between unanswered keepalive probes, derived from the configured idle time so
/// that one setting tunes dead-peer detection: a third of the idle time, at least 1 s.
pub fn keepalive_interval(settings: &DatabaseSettings) -> Duration {
    (settings.keepalive_idle / 3).max(Duration::from_secs(1))
}

/// How long sent data may stay unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`). Without it a write to a silently vanished server is retried
/// for ~15 minutes regardless of keepalives; matching it to the keepalive budget
/// (idle + interval × retries) makes both paths give up at the same time.
pub fn tcp_user_timeout(settings: &DatabaseSettings) -> Duration {
    settings.keepalive_idle + keepalive_interval(settings) * KEEPALIVE_RETRIES
}

/// A database failure. The texts never contain the connection string or the password,
/// and server messages are reduced to severity, message and SQLSTATE: the `DETAIL`
/// part can quote row values (audit metadata) and is deliberately left out.
///
/// Each text is complete on its own (it includes the cause), so callers can log it
/// with `%err` without walking a `source()` chain.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string cannot be parsed or is incomplete.
    #[error("the database URL is not valid: {reason}")]
    InvalidUrl {
        /// What is wrong, without the URL itself (it may contain the password).
        reason: String,
    },
    /// The TLS settings cannot be used (a missing CA, a key others can read, …).
    #[error("the database TLS settings are not usable: {0}")]
    Tls(#[from] tls::TlsError),
    /// No connection could be established.
    #[error("cannot connect to the database: {}", describe(.0))]
    Connect(tokio_postgres::Error),
    /// The pool could not hand out a connection (timeout, closed pool).
    #[error("no database connection available: {0}")]
    Pool(String),
    /// A statement failed.
    #[error("database query failed: {}", describe(.0))]
    Query(tokio_postgres::Error),
    /// The database holds a value the schema's constraints should have prevented.
    #[error("unexpected data in the database: {reason}")]
    Data {
        /// What is wrong (no row values beyond identifiers).
        reason: String,
    },
}

impl DbError {
    /// The SQLSTATE of a failed statement, if the server reported one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Connect(err) | DbError::Query(err) => err.code(),
            _ => None,
        }
    }

    /// The constraint a failed statement violated, if the server named one.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            DbError::Connect(err) | DbError::Query(err) => {
                err.as_db_error().and_then(|db| db.constraint())
            }
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(err: tokio_postgres::Error) -> Self {
        DbError::Query(err)
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(err) => DbError::Connect(err),
            other => DbError::Pool(other.to_string()),
        }
    }
}

/// One line for a `tokio_postgres::Error`: the server's severity, message and SQLSTATE
/// for database errors; the named cause of a TLS or password file failure; otherwise
/// the error and its causes (I/O errors, timeouts).
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(cause) = connect::named_cause(err) {
        return cause;
    }
    if let Some(db) = err.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses the configured URL (without the libpq parameters [`conninfo`] takes out)
/// and applies the connection settings: `application_name` (unless the URL sets
/// one), connect timeout, TCP keepalives and `TCP_USER_TIMEOUT`.
pub fn pg_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, DbError> {
    pg_config_of(&conninfo::split(settings.url.expose()), settings)
}

/// The [`Connector`] every connection of the process is made with: used by [`pool`]
/// and by anything that needs a dedicated connection (the mirror's listener), so all
/// connections behave the same.
pub fn connector(settings: &DatabaseSettings) -> Result<Connector, DbError> {
    let info = conninfo::split(settings.url.expose());
    let config = pg_config_of(&info, settings)?;
    Ok(Connector::new(config, &info, settings)?)
}

fn pg_config_of(
    info: &conninfo::Conninfo,
    settings: &DatabaseSettings,
) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config =
        info.rest.parse().map_err(|err: tokio_postgres::Error| {
            // The key=value parser quotes the character it stumbled on ("expected
            // `=` but got `x`"), which may belong to the password: cut it off.
            // Everything else it says names options, never values.
            let text = describe(&err);
            let reason = text.split(" but got").next().unwrap_or_default().to_owned();
            DbError::InvalidUrl { reason }
        })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(DbError::InvalidUrl {
            reason: "no host given (e.g. postgres://user@db.example:5432/compartment)".into(),
        });
    }
    if config
        .get_hosts()
        .iter()
        .any(|host| matches!(host, Host::Tcp(name) if name.is_empty()))
    {
        return Err(DbError::InvalidUrl {
            reason: "empty host name".into(),
        });
    }
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    config
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .keepalives_idle(settings.keepalive_idle)
        .keepalives_interval(keepalive_interval(settings))
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(tcp_user_timeout(settings));
    Ok(config)
}

/// Builds the shared connection pool (`pool_size` connections at most), each
/// connection made by [`connector`]'s [`Connector`] (deadpool's connect hook).
///
/// It does not connect: connections are made on first use and replaced when they
/// break, so the daemon can start while the database is down and become ready when
/// it comes back. Waiting for a free connection, making a new one and checking a
/// returned one are each bounded by `connect_timeout`, so a saturated pool or an
/// unreachable server surfaces as an error instead of a hang.
pub async fn pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let connector = connector(settings)?;
    let manager = Manager::from_connect(
        connector.config().clone(),
        connector,
        ManagerConfig {
            // `Fast` trusts a connection whose task is still alive; keepalives and the
            // user timeout close half-open ones, which `Fast` then notices.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        // Hand out the most recently used connection, so that connections beyond
        // what the load needs stay unused and [`close_idle_connections`] closes them.
        .queue_mode(QueueMode::Lifo)
        .build()
        .map_err(|err| DbError::Pool(err.to_string()))
}

/// Closes pooled connections unused for `idle_timeout`, checking every
/// `idle_timeout / 2` (at most every 30 s), until `shutdown`. The pool grows to the
/// largest concurrency it has seen; without this it would keep that many sessions
/// open on the server for good.
pub async fn close_idle_connections(
    pool: Pool,
    idle_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let every = (idle_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let closed = pool.retain(|_, metrics| metrics.last_used() < idle_timeout);
        if !closed.removed.is_empty() {
            tracing::debug!(
                closed = closed.removed.len(),
                kept = closed.retained,
                "Closed idle database connections"
            );
        }
    }
}

/// One round trip on a pooled connection: is the database reachable right now?
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings(url: &str) -> DatabaseSettings {
        Settings::with_defaults(url).database
    }

    #[test]
    fn pg_config_applies_connection_settings() {
        let db = settings("postgres://auditd:hunter2@db.example:6543/compartment");
        let config = pg_config(&db).expect("valid URL");
        assert_eq!(config.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(config.get_connect_timeout(), Some(&db.connect_timeout));
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(60))
        );
        assert_eq!(config.get_ports(), &[6543]);
        assert_eq!(config.get_dbname(), Some("compartment"));
    }

    #[test]
    fn pg_config_keeps_an_explicit_application_name() {
        let config = pg_config(&settings(
            "postgres://auditd@db.example/compartment?application_name=auditd-eu",
        ))
        .expect("valid URL");
        assert_eq!(config.get_application_name(), Some("auditd-eu"));
    }

    #[test]
    fn keepalive_interval_never_drops_below_one_second() {
        let mut db = settings("postgres://db.example/x");
        db.keepalive_idle = Duration::from_secs(1);
        assert_eq!(keepalive_interval(&db), Duration::from_secs(1));
        assert_eq!(tcp_user_timeout(&db), Duration::from_secs(4));
    }

    #[test]
    fn invalid_urls_are_reported_without_the_password() {
        for url in [
            "postgres://auditd:hunter2@db.example:notaport/compartment",
            "postgres://auditd:hunter2@db.example/compartment?bogus_option=hunter2",
            "postgres://auditd:hunter2@/compartment",
            "host=db.example password=hunter2 user h",
        ] {
            let err = pg_config(&settings(url)).expect_err(url);
            let text = err.to_string();
            assert!(matches!(err, DbError::InvalidUrl { .. }), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
            assert!(!text.contains("but got"), "{url}: {text}");
        }
    }

    #[test]
    fn every_sslmode_and_the_libpq_file_parameters_are_accepted() {
        for mode in tls::SslMode::ALL {
            let url = format!(
                "postgres://auditd:hunter2@db.example/compartment?sslmode={mode}&sslrootcert=system&application_name=x"
            );
            let config = pg_config(&settings(&url)).expect(&url);
            assert_eq!(config.get_application_name(), Some("x"));
        }
        let err = connector(&settings("postgres://db.example/x?sslmode=verify-ca"))
            .expect_err("verify-ca needs a CA");
        assert!(
            matches!(err, DbError::Tls(tls::TlsError::NoRootCert(_))),
            "{err}"
        );
        let connector = connector(&settings("postgres://db.example/x?sslmode=require"))
            .expect("require needs no CA");
        assert_eq!(connector.tls_options().mode, tls::SslMode::Require);
    }

    #[test]
    fn unix_socket_urls_are_accepted() {
        let config = pg_config(&settings("postgresql:///compartment?host=/run/postgresql"))
            .expect("socket directory is a host");
        assert_eq!(config.get_dbname(), Some("compartment"));
    }
}
