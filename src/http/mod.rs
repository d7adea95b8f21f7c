//! HTTP: health, metrics and the `/v1` audit-event API (SPEC §9).
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `200 {"status":"ok"}` while the process runs |
//! | `GET /readyz` | `200` when every readiness check passes, else `503`; both with each check in JSON |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/orgs/{org}/audit/events` | the audit-event list ([`api`]) |
//! | `GET /v1/orgs/{org}/audit/export` | the audit-event export ([`api`]) |
//! | `GET /v1/orgs` | the organizations whose audit log the token may read ([`api`]) |
//! | `GET /`, `GET /orgs/{org}/audit`, `/assets/…` | the Audit logs page ([`console`]), unless `http.console_enabled` is off |
//! | anything else | `404` (`405` for a known path with another method), JSON error |
//!
//! Errors are `{"error":{"code":"…","message":"…"}}`. The server listens on loopback
//! by default; requests are bounded (head size, header read time, whole-request time,
//! concurrent connections) so that a slow or hostile client cannot pin it.

pub mod api;
pub mod auth;
pub mod auth_limit;
pub mod console;
pub mod response;
pub mod routes;
pub mod server;
pub mod stall;

pub use server::{serve, AppState};
