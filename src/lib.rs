//! compartment-auditd: the audit-log sidecar of Compartment.
//!
//! The daemon is a small pipeline plus two services around it:
//!
//! - [`db`] speaks SQL: the connection pool, migrations of the reference schema,
//!   the `LISTEN` doorbell, gap-free cursor reads and the filtered queries of the API.
//! - [`event`] is the audit event and its NDJSON line; [`sanitize`] applies the
//!   per-event-type metadata allowlist and scrubs anything shaped like a secret.
//! - [`sink`] is the rotating, owner-only NDJSON file directory; it knows bytes and
//!   files only.
//! - [`mirror`] is the one place that joins them: doorbell → read batch → sanitize →
//!   append → fsync → advance position.
//! - [`retention`] runs `audit.retention.cleanup` on its cron schedule.
//! - [`filters`] parses and validates the list and export parameters, once for HTTP
//!   and the command line; [`export`] encodes list and export responses (NDJSON, CSV)
//!   under the row cap.
//! - [`http`] serves `/healthz`, `/readyz`, `/metrics`, `/v1` and the Audit logs page
//!   in the browser (`/orgs/{org}/audit`, [`http::console`]).
//! - [`config`] loads settings (defaults < file < environment); [`telemetry`] owns
//!   every metric; [`cli`] is the command line; [`secret_file`] is the permission rule
//!   for private key files.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod event;
pub mod export;
pub mod filters;
pub mod health;
pub mod http;
pub mod mirror;
pub mod reload;
pub mod retention;
pub mod sanitize;
pub mod secret_file;
pub mod service;
pub mod sink;
pub mod telemetry;
