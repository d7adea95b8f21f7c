//! How one connection to PostgreSQL is made, for every connection the process opens:
//! the pool's (through deadpool's custom connect hook, [`deadpool_postgres::Connect`]),
//! the listener's, and so retention's extra sessions and every CLI command.
//!
//! A [`Connector`] is built once from [`DatabaseSettings`]: the URL without the libpq
//! parameters tokio-postgres does not know ([`super::conninfo`]), the TLS parameters
//! merged in libpq's order (explicit `database.tls.*` setting, else the URL, else
//! `PGSSL*`, else `prefer`) and turned into a rustls configuration ([`super::tls`]),
//! and where the password comes from. The password file (or `.pgpass`) is read again
//! for every new connection ([`super::passfile`]), so a rotated secret is used by the
//! next reconnect without rebuilding the pool or restarting.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::passfile::{self, PasswordFileError, PgpassKey};
use super::tls::{self, RootCert, SslMode, TlsOptions};
use crate::config::DatabaseSettings;

/// The stream of a connection (TLS or plaintext, as negotiated).
pub type PgStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connection's driver, as [`Connector::connect`] returns it.
pub type PgConnection = tokio_postgres::Connection<Socket, PgStream>;

/// Where the password of a new connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Password {
    /// In the connection string, or none at all.
    Given,
    /// `database.password_file`, read for each connection.
    File(PathBuf),
    /// A `.pgpass` file, looked up for each connection.
    Pgpass(PathBuf),
}

/// Makes connections that all behave the same; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    mode: SslMode,
    options: TlsOptions,
    tls: MakeRustlsConnect,
    password: Password,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: never print it.
        f.debug_struct("Connector")
            .field("tls", &self.options)
            .field("password", &self.password)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Builds the connector: `config` is the parsed URL with the connection settings
    /// applied ([`super::pg_config`]); `libpq` the parameters taken out of the URL.
    pub(super) fn new(
        mut config: tokio_postgres::Config,
        libpq: &super::conninfo::Conninfo,
        settings: &DatabaseSettings,
    ) -> Result<Connector, tls::TlsError> {
        let options = tls_options(libpq, settings)?;
        // libpq never uses TLS on a Unix socket, whatever sslmode says.
        let unix_only = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        let mode = if unix_only {
            SslMode::Disable
        } else {
            options.mode
        };
        // Only `hostaddr` given: TLS needs a name to verify (and tokio-postgres one to
        // start a handshake at all), so each address stands for its own name, to be
        // matched by an IP SAN under verify-full.
        if config.get_hosts().is_empty() {
            for addr in config.get_hostaddrs().to_vec() {
                config.host(addr.to_string());
            }
        }
        let client_config = tls::client_config(&options)?;
        let password = if let Some(file) = &settings.password_file {
            Password::File(file.clone())
        } else if config.get_password().is_some() {
            Password::Given
        } else {
            let file = libpq
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| settings.libpq_env.passfile.clone())
                .or_else(passfile::default_pgpass);
            file.map_or(Password::Given, Password::Pgpass)
        };
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Ok(Connector {
            config,
            mode,
            options,
            tls: MakeRustlsConnect::new(client_config),
            password,
        })
    }

    /// The connection configuration (without a password read from a file).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS parameters in effect.
    pub fn tls_options(&self) -> &TlsOptions {
        &self.options
    }

    /// The TLS connector, for a cancel request (`CancelToken::cancel_query`): it
    /// opens a connection of its own, which must use TLS when the session it
    /// cancels did (a `hostssl`-only server refuses a plaintext cancel).
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// Sets `application_name` of the connections this connector makes.
    pub fn set_application_name(&mut self, name: &str) {
        self.config.application_name(name);
    }

    /// Opens one connection: reads the password file, negotiates TLS as `sslmode`
    /// says, authenticates. The caller drives the returned connection.
    pub async fn connect(&self) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        use tokio_postgres::config::SslMode as Wire;
        let mut config = self.config.clone();
        let mut tls = Tls {
            inner: self.tls.clone(),
            failure: None,
        };
        match &self.password {
            Password::Given => {}
            Password::File(path) => match passfile::read_password_file(path) {
                Ok(password) => {
                    config.password(password);
                }
                // Reported through the connect, as a tokio-postgres error.
                Err(err) => tls.failure = Some(Arc::new(err)),
            },
            Password::Pgpass(file) => {
                if let Some(password) = passfile::lookup_pgpass(file, &self.pgpass_key()) {
                    config.password(password);
                }
            }
        }
        match self.mode {
            SslMode::Disable => config.ssl_mode(Wire::Disable),
            SslMode::Allow => {
                config.ssl_mode(Wire::Disable);
                match config.connect(tls.clone()).await {
                    // The server answered and refused plaintext: try TLS, as libpq.
                    Err(err) if err.as_db_error().is_some() => {}
                    result => return result,
                }
                config.ssl_mode(Wire::Require)
            }
            SslMode::Prefer => config.ssl_mode(Wire::Prefer),
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                config.ssl_mode(Wire::Require)
            }
        };
        config.connect(tls).await
    }

    /// What a `.pgpass` line must match: the first host (`localhost` for a socket,
    /// as libpq), its port, the database (the user name by default) and the user.
    fn pgpass_key(&self) -> PgpassKey {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            _ => "localhost".into(),
        };
        let user = self.config.get_user().unwrap_or_default().to_owned();
        PgpassKey {
            host,
            port: self.config.get_ports().first().copied().unwrap_or(5432),
            dbname: self
                .config
                .get_dbname()
                .map_or_else(|| user.clone(), str::to_owned),
            user,
        }
    }
}

/// The TLS parameters, each from the first place that sets it: the explicit setting
/// (`database.tls.*`), the URL, libpq's environment variable.
fn tls_options(
    libpq: &super::conninfo::Conninfo,
    settings: &DatabaseSettings,
) -> Result<TlsOptions, tls::TlsError> {
    let explicit = &settings.tls;
    let env = &settings.libpq_env.tls;
    let url_mode = match libpq.get("sslmode") {
        Some(text) => Some(SslMode::parse(text).map_err(tls::TlsError::Config)?),
        None => None,
    };
    let root_cert = explicit
        .sslrootcert
        .clone()
        .or_else(|| libpq.get("sslrootcert").map(RootCert::parse))
        .or_else(|| env.sslrootcert.clone());
    let mode = explicit.sslmode.or(url_mode).or(env.sslmode);
    // libpq: sslrootcert=system makes verify-full the default.
    let mode = mode.unwrap_or(if root_cert == Some(RootCert::System) {
        SslMode::VerifyFull
    } else {
        SslMode::Prefer
    });
    Ok(TlsOptions {
        mode,
        root_cert,
        cert: explicit
            .sslcert
            .clone()
            .or_else(|| libpq.get("sslcert").map(PathBuf::from))
            .or_else(|| env.sslcert.clone()),
        key: explicit
            .sslkey
            .clone()
            .or_else(|| libpq.get("sslkey").map(PathBuf::from))
            .or_else(|| env.sslkey.clone()),
    })
}

/// The pool's connect hook: every pooled connection is made by [`Connector::connect`].
impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _pg_config: &tokio_postgres::Config,
    ) -> Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
                > + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            let (client, connection) = Connector::connect(self).await?;
            let task = tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::warn!(error = %super::describe(&err), "Database connection error");
                }
            });
            Ok((client, task))
        })
    }
}

/// The rustls connector, carrying a password file error to the connect so that it
/// surfaces as the connection's error (deadpool's hook can only return a
/// `tokio_postgres::Error`).
#[derive(Clone)]
struct Tls {
    inner: MakeRustlsConnect,
    failure: Option<Arc<PasswordFileError>>,
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = PgStream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = Arc<PasswordFileError>;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        match <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(
            &mut self.inner,
            domain,
        ) {
            Ok(connect) => Ok(connect),
            Err(never) => match never {},
        }
    }
}

/// The named cause of a failed connect, if it is one this module or [`tls`] knows.
pub fn named_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(failure) = err.downcast_ref::<Arc<PasswordFileError>>() {
            return Some(failure.to_string());
        }
        current = err.source();
    }
    tls::named_cause(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn options(url: &str, settings: impl FnOnce(&mut DatabaseSettings)) -> TlsOptions {
        let mut db = Settings::with_defaults(url).database;
        settings(&mut db);
        tls_options(&super::super::conninfo::split(url), &db).expect("valid")
    }

    #[test]
    fn a_hostaddr_alone_is_also_the_name_tls_verifies() {
        let db = Settings::with_defaults("hostaddr=127.0.0.1 user=auditd dbname=x").database;
        let connector = crate::db::connector(&db).expect("valid");
        assert_eq!(
            connector.config().get_hosts(),
            &[Host::Tcp("127.0.0.1".into())]
        );
    }

    #[test]
    fn explicit_settings_override_the_url_which_overrides_the_environment() {
        let url = "postgres://db/x?sslmode=require&sslrootcert=/url-ca.pem";
        let from_url = options(url, |_| {});
        assert_eq!(from_url.mode, SslMode::Require);
        assert_eq!(
            from_url.root_cert,
            Some(RootCert::File("/url-ca.pem".into()))
        );
        let explicit = options(url, |db| {
            db.tls.sslmode = Some(SslMode::VerifyFull);
            db.tls.sslrootcert = Some(RootCert::File("/ca.pem".into()));
            db.libpq_env.tls.sslmode = Some(SslMode::Disable);
        });
        assert_eq!(explicit.mode, SslMode::VerifyFull);
        assert_eq!(explicit.root_cert, Some(RootCert::File("/ca.pem".into())));
        let env = options("postgres://db/x", |db| {
            db.libpq_env.tls.sslmode = Some(SslMode::Require);
            db.libpq_env.tls.sslcert = Some("/c.pem".into());
        });
        assert_eq!(env.mode, SslMode::Require);
        assert_eq!(env.cert, Some("/c.pem".into()));
        let under_url = options(url, |db| db.libpq_env.tls.sslmode = Some(SslMode::Disable));
        assert_eq!(
            under_url.mode,
            SslMode::Require,
            "the URL wins over PGSSLMODE"
        );
        assert_eq!(options("postgres://db/x", |_| {}).mode, SslMode::Prefer);
        let system = options("postgres://db/x?sslrootcert=system", |_| {});
        assert_eq!(
            system.mode,
            SslMode::VerifyFull,
            "system implies verify-full"
        );
    }
}
