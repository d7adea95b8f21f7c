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

pub(super) fn to_toml_redacted(s: &Settings) -> String {
    let sections: [(&str, Vec<(&str, String)>); 6] = [
        (
            "database",
            vec![
                ("url", quoted(&redact_database_url(s.database.url.expose()))),
                ("pool_size", s.database.pool_size.to_string()),
                ("connect_timeout", duration(s.database.connect_timeout)),
                ("pool_idle_timeout", duration(s.database.pool_idle_timeout)),
                ("keepalive_idle", duration(s.database.keepalive_idle)),
            ],
        ),
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
        if i > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, "[{section}]");
        for (key, value) in keys {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    out
}
