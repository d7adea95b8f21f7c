//! Everything that speaks SQL: pool, migrations, listener (doorbell), cursor reads,
//! filtered queries, administration. Never files.

pub mod backoff;
pub mod cursor;
pub mod listener;

/// Placeholder until the db branch lands.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A query failed.
    #[error("{context}: {source}")]
    Query {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database answered something unexpected.
    #[error("unexpected answer from the database: {0}")]
    Unexpected(String),
}

impl DbError {
    /// Wraps a driver error with what was being done.
    pub fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        move |source| DbError::Query { context, source }
    }
}
