//! The effective settings as TOML, for `config check`.
//!
//! Every key is written, in documentation order and in the syntax the loader reads,
//! so the output is itself a valid configuration file (with the password masked).

use std::fmt::Write as _;
use std::time::Duration;

use super::units::{format_duration, format_size};
use super::{redact_database_url, Settings};

/// A TOML value, written by the `toml` crate so that quoting and escaping are right.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn duration(d: Duration) -> String {
    quoted(&format_duration(d))
}

fn size(bytes: u64) -> String {
    quoted(&format_size(bytes))
}

/// An optional path, [`UNSET`] when there is none.
fn path(path: Option<&std::path::Path>) -> String {
    path.map_or_else(|| UNSET.to_owned(), |p| quoted(&p.to_string_lossy()))
}

/// Written as a comment (`# key is not set`): the key has no value.
const UNSET: &str = "";

pub(super) fn to_toml_redacted(s: &Settings) -> String {
    let db = &s.database;
    let tls = &db.tls;
    // With url_file, the URL is not repeated: loading both would be a conflict.
    let url = if db.url_file.is_some() {
        UNSET.to_owned()
    } else {
        quoted(&redact_database_url(db.url.expose()))
    };
    let sections: [(&str, Vec<(&str, String)>); 8] = [
        (
            "database",
            vec![
                ("url", url),
                ("url_file", path(db.url_file.as_deref())),
                ("password_file", path(db.password_file.as_deref())),
                ("pool_size", s.database.pool_size.to_string()),
                ("connect_timeout", duration(s.database.connect_timeout)),
                ("pool_idle_timeout", duration(s.database.pool_idle_timeout)),
                ("keepalive_idle", duration(s.database.keepalive_idle)),
                ("api_pool_size", s.database.api_pool_size.to_string()),
            ],
        ),
        (
            "database.tls",
            vec![
                (
                    "sslmode",
                    tls.sslmode.map_or(UNSET.to_owned(), |m| quoted(m.as_str())),
                ),
                (
                    "sslrootcert",
                    tls.sslrootcert
                        .as_ref()
                        .map_or(UNSET.to_owned(), |r| quoted(&r.display())),
                ),
                ("sslcert", path(tls.sslcert.as_deref())),
                ("sslkey", path(tls.sslkey.as_deref())),
            ],
        ),
        ("", libpq_environment(s)),
        (
            "file_sink",
            vec![
                ("enabled", s.file_sink.enabled.to_string()),
                ("dir", quoted(&s.file_sink.dir.to_string_lossy())),
                ("rotate_interval", duration(s.file_sink.rotate_interval)),
                ("rotate_size", size(s.file_sink.rotate_size)),
                ("retention_files", s.file_sink.retention_files.to_string()),
                ("start_from", quoted(s.file_sink.start_from.as_str())),
                ("fsync", quoted(s.file_sink.fsync.as_str())),
                ("fsync_interval", duration(s.file_sink.fsync_interval)),
                ("compress_delay", duration(s.file_sink.compress_delay)),
                ("allow_group_bits", s.file_sink.allow_group_bits.to_string()),
                ("id", quoted(&s.file_sink.sink_id)),
                ("replica_name", quoted(&s.file_sink.replica_name)),
                ("lease_timeout", duration(s.file_sink.lease_timeout)),
                ("group_stall_after", duration(s.file_sink.group_stall_after)),
            ],
        ),
        (
            "mirror",
            vec![
                ("batch_size", s.mirror.batch_size.to_string()),
                ("poll_interval", duration(s.mirror.poll_interval)),
                (
                    "horizon_poll_interval",
                    duration(s.mirror.horizon_poll_interval),
                ),
                (
                    "horizon_stall_warning",
                    duration(s.mirror.horizon_stall_warning),
                ),
                ("heartbeat_interval", duration(s.mirror.heartbeat_interval)),
                ("max_backoff", duration(s.mirror.max_backoff)),
            ],
        ),
        (
            "retention",
            vec![
                ("days", s.retention.days.to_string()),
                ("cleanup_cron", quoted(&s.retention.cleanup_cron.source)),
                (
                    "cleanup_batch_size",
                    s.retention.cleanup_batch_size.to_string(),
                ),
                (
                    "cleanup_max_batches",
                    s.retention.cleanup_max_batches.to_string(),
                ),
                (
                    "cleanup_concurrency",
                    s.retention.cleanup_concurrency.to_string(),
                ),
            ],
        ),
        (
            "http",
            vec![
                ("addr", quoted(&s.http.addr.to_string())),
                ("export_max_rows", s.http.export_max_rows.to_string()),
                ("max_header_bytes", size(s.http.max_header_bytes as u64)),
                ("max_query_bytes", size(s.http.max_query_bytes as u64)),
                ("request_timeout", duration(s.http.request_timeout)),
                (
                    "max_concurrent_exports",
                    s.http.max_concurrent_exports.to_string(),
                ),
                ("statement_timeout", duration(s.http.statement_timeout)),
                ("max_auth_failures", s.http.max_auth_failures.to_string()),
                (
                    "max_in_flight_requests",
                    s.http.max_in_flight_requests.to_string(),
                ),
                ("console_enabled", s.http.console_enabled.to_string()),
            ],
        ),
        (
            "log",
            vec![
                ("level", quoted(&s.log.level)),
                ("format", quoted(s.log.format.as_str())),
            ],
        ),
    ];
    let mut out = String::new();
    for (i, (section, keys)) in sections.iter().enumerate() {
        if i > 0 && !keys.is_empty() {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        if section.is_empty() {
            // Comments only (libpq's environment).
            for (key, value) in keys {
                let _ = writeln!(out, "# {key} = {value}");
            }
            continue;
        }
        let _ = writeln!(out, "[{section}]");
        for (key, value) in keys {
            if value == UNSET {
                let _ = writeln!(out, "# {key} is not set");
            } else {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
    }
    out
}

/// libpq's variables in effect, as comments: they are defaults below the URL, not
/// settings, so they must not load back as settings.
fn libpq_environment(s: &Settings) -> Vec<(&'static str, String)> {
    let env = &s.database.libpq_env;
    let mut lines = Vec::new();
    if let Some(mode) = env.tls.sslmode {
        lines.push(("PGSSLMODE", quoted(mode.as_str())));
    }
    if let Some(root) = &env.tls.sslrootcert {
        lines.push(("PGSSLROOTCERT", quoted(&root.display())));
    }
    if let Some(cert) = &env.tls.sslcert {
        lines.push(("PGSSLCERT", quoted(&cert.to_string_lossy())));
    }
    if let Some(key) = &env.tls.sslkey {
        lines.push(("PGSSLKEY", quoted(&key.to_string_lossy())));
    }
    if let Some(file) = &env.passfile {
        lines.push(("PGPASSFILE", quoted(&file.to_string_lossy())));
    }
    if !lines.is_empty() {
        lines.insert(
            0,
            (
                "libpq environment (defaults below the URL and [database.tls])",
                "in effect".into(),
            ),
        );
    }
    lines
}
