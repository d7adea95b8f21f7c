//! The `/v1` API's own connections, so that no request, however slow or numerous, can
//! take a connection the mirror, retention or `/readyz` needs.
//!
//! - [`ApiPool`] is a second pool, built by [`super::pool`] exactly like the shared one
//!   (same connection settings) but with `database.api_pool_size` connections.
//! - Each of its sessions runs with `statement_timeout = http.statement_timeout`, set
//!   once when the connection is new, so a query stuck on a lock or a huge scan ends
//!   on the server even if nobody is waiting for it any more.
//! - [`ApiSession`] is a connection checked out for one request. A request that ends
//!   normally hands it back with [`ApiSession::release`]; one whose future is dropped
//!   instead (the request timed out, the client went away) may have left a query
//!   running: the session then cancels it on the server and closes the connection,
//!   which never goes back to the pool (a late cancel can then never hit the next
//!   request's query).

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};

use super::{pool, Connector, DbError, APPLICATION_NAME};
use crate::config::DatabaseSettings;

/// `application_name` of the API's sessions (unless the URL sets its own), so that
/// `pg_stat_activity` tells them from the mirror's.
pub const API_APPLICATION_NAME: &str = "compartment-auditd-api";

/// The API's connection pool.
#[derive(Debug, Clone)]
pub struct ApiPool {
    pool: Pool,
    /// `SET` on every new session.
    session_setup: String,
    /// The TLS connector of the pool's connections: a cancel request travels on a
    /// connection of its own, with TLS when the session had it.
    connector: Connector,
}

impl ApiPool {
    /// Builds the pool (`api_pool_size` connections at most; it does not connect yet).
    pub async fn new(
        settings: &DatabaseSettings,
        statement_timeout: Duration,
    ) -> Result<ApiPool, DbError> {
        let mut sized = settings.clone();
        sized.pool_size = settings.api_pool_size;
        let pool = pool(&sized).await?;
        let mut session_setup = format!(
            "SET statement_timeout = {}",
            statement_timeout.as_millis().max(1)
        );
        if super::pg_config(settings)?.get_application_name() == Some(APPLICATION_NAME) {
            session_setup.push_str(&format!(
                "; SET application_name = '{API_APPLICATION_NAME}'"
            ));
        }
        Ok(ApiPool {
            pool,
            session_setup,
            connector: super::connector(settings)?,
        })
    }

    /// The underlying pool (for idle-connection cleanup).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A session for one request, its `statement_timeout` in force.
    pub async fn get(&self) -> Result<ApiSession, DbError> {
        let object = self.pool.get().await?;
        // A connection is new when it has never been recycled: set it up once. One
        // that fails the setup is closed, never returned without its timeout.
        if Object::metrics(&object).recycle_count == 0 {
            if let Err(err) = object.batch_execute(&self.session_setup).await {
                drop(Object::take(object));
                return Err(DbError::Query(err));
            }
        }
        Ok(ApiSession {
            object: Some(object),
            connector: self.connector.clone(),
        })
    }
}

/// A connection checked out for one request; see the module documentation.
#[derive(Debug)]
pub struct ApiSession {
    object: Option<Object>,
    /// For the cancel request of an abandoned query.
    connector: Connector,
}

impl ApiSession {
    /// The connection, for queries.
    pub fn client(&self) -> &tokio_postgres::Client {
        self
    }

    /// The request is done with the connection and left no query running: back to
    /// the pool.
    pub fn release(mut self) {
        self.object = None;
    }
}

impl Deref for ApiSession {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.object
            .as_ref()
            .expect("the object is only taken by release and drop")
    }
}

impl DerefMut for ApiSession {
    fn deref_mut(&mut self) -> &mut Object {
        self.object
            .as_mut()
            .expect("the object is only taken by release and drop")
    }
}

impl Drop for ApiSession {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        // Abandoned mid-request: out of the pool for good, and whatever it was running
        // is cancelled on the server.
        let client = Object::take(object);
        let cancel = client.cancel_token();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tls = self.connector.tls();
        runtime.spawn(async move {
            // The cancel request travels on a connection of its own, with the same
            // socket settings as the session, over TLS when the session used it.
            if let Err(err) = cancel.cancel_query(tls).await {
                tracing::debug!(error = %err, "Could not cancel an abandoned API query");
            }
            drop(client);
            crate::telemetry::api::query_cancelled();
        });
    }
}
