//! Settings loading through the library: layering per documented name, value syntax,
//! origins named in errors, warnings, and the shipped example files.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use compartment_auditd::config::{
    key_for_env, ConfigError, ConfigWarning, CronSchedule, LogFormat, Settings, StartFrom,
    ENV_CONFIG, ENV_NAMES,
};

const BASE_URL: &str = "postgres://base@db.example/base";

/// A temporary TOML file holding `contents`.
fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("create a temporary file");
    file.write_all(contents.as_bytes())
        .expect("write the temporary file");
    file
}

fn load(file: Option<&Path>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_from(file, env.iter().copied())
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// One setting: its documented variable, its TOML key, a file value and an environment
/// value (both different from the default and from each other), and how to read it back.
struct Case {
    var: &'static str,
    key: &'static str,
    file: &'static str,
    file_expect: &'static str,
    env: &'static str,
    env_expect: &'static str,
    get: fn(&Settings) -> String,
}

fn dbg<T: std::fmt::Debug>(value: T) -> String {
    format!("{value:?}")
}

const CASES: &[Case] = &[
    Case {
        var: "COMPARTMENT_DATABASE_URL",
        key: "database.url",
        file: r#""postgres://file@db-file/x""#,
        file_expect: "postgres://file@db-file/x",
        env: "postgres://env@db-env/y",
        env_expect: "postgres://env@db-env/y",
        get: |s| s.database.url.expose().to_owned(),
    },
    Case {
        var: "COMPARTMENT_DATABASE_URL_FILE",
        key: "database.url_file",
        file: concat!(
            "\"",
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/database-url-a\""
        ),
        file_expect: "postgres://file@db-file/x",
        env: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/database-url-b"),
        env_expect: "postgres://env@db-env/y",
        get: |s| s.database.url.expose().to_owned(),
    },
    Case {
        var: "COMPARTMENT_DATABASE_PASSWORD_FILE",
        key: "database.password_file",
        file: r#""/run/secrets/db-a""#,
        file_expect: r#"Some("/run/secrets/db-a")"#,
        env: "/run/credentials/db-b",
        env_expect: r#"Some("/run/credentials/db-b")"#,
        get: |s| dbg(&s.database.password_file),
    },
    Case {
        var: "COMPARTMENT_DATABASE_SSLMODE",
        key: "database.tls.sslmode",
        file: r#""require""#,
        file_expect: "Some(Require)",
        env: "verify-full",
        env_expect: "Some(VerifyFull)",
        get: |s| dbg(s.database.tls.sslmode),
    },
    Case {
        var: "COMPARTMENT_DATABASE_SSLROOTCERT",
        key: "database.tls.sslrootcert",
        file: r#""system""#,
        file_expect: "Some(System)",
        env: "/etc/ssl/db-ca.pem",
        env_expect: r#"Some(File("/etc/ssl/db-ca.pem"))"#,
        get: |s| dbg(&s.database.tls.sslrootcert),
    },
    Case {
        var: "COMPARTMENT_DATABASE_SSLCERT",
        key: "database.tls.sslcert",
        file: r#""/etc/tls/a.crt""#,
        file_expect: r#"Some("/etc/tls/a.crt")"#,
        env: "/etc/tls/b.crt",
        env_expect: r#"Some("/etc/tls/b.crt")"#,
        get: |s| dbg(&s.database.tls.sslcert),
    },
    Case {
        var: "COMPARTMENT_DATABASE_SSLKEY",
        key: "database.tls.sslkey",
        file: r#""/etc/tls/a.key""#,
        file_expect: r#"Some("/etc/tls/a.key")"#,
        env: "/etc/tls/b.key",
        env_expect: r#"Some("/etc/tls/b.key")"#,
        get: |s| dbg(&s.database.tls.sslkey),
    },
    Case {
        var: "COMPARTMENT_DATABASE_POOL_SIZE",
        key: "database.pool_size",
        file: "16",
        file_expect: "16",
        env: "32",
        env_expect: "32",
        get: |s| dbg(s.database.pool_size),
    },
    Case {
        var: "COMPARTMENT_DATABASE_CONNECT_TIMEOUT",
        key: "database.connect_timeout",
        file: r#""10s""#,
        file_expect: "10s",
        env: "2500ms",
        env_expect: "2.5s",
        get: |s| dbg(s.database.connect_timeout),
    },
    Case {
        var: "COMPARTMENT_DATABASE_POOL_IDLE_TIMEOUT",
        key: "database.pool_idle_timeout",
        file: r#""5m""#,
        file_expect: "300s",
        env: "90",
        env_expect: "90s",
        get: |s| dbg(s.database.pool_idle_timeout),
    },
    Case {
        var: "COMPARTMENT_DATABASE_KEEPALIVE_IDLE",
        key: "database.keepalive_idle",
        file: "60",
        file_expect: "60s",
        env: "2m",
        env_expect: "120s",
        get: |s| dbg(s.database.keepalive_idle),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_ENABLED",
        key: "file_sink.enabled",
        file: "true",
        file_expect: "true",
        env: "no",
        env_expect: "false",
        get: |s| dbg(s.file_sink.enabled),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_DIR",
        key: "file_sink.dir",
        file: r#""/srv/audit-file""#,
        file_expect: r#""/srv/audit-file""#,
        env: "/srv/audit-env",
        env_expect: r#""/srv/audit-env""#,
        get: |s| dbg(&s.file_sink.dir),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL",
        key: "file_sink.rotate_interval",
        file: r#""6h""#,
        file_expect: "21600s",
        // A bare integer, as an env file would write it, is seconds.
        env: "3600",
        env_expect: "3600s",
        get: |s| dbg(s.file_sink.rotate_interval),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE",
        key: "file_sink.rotate_size",
        file: r#""128M""#,
        file_expect: "134217728",
        env: "1G",
        env_expect: "1073741824",
        get: |s| dbg(s.file_sink.rotate_size),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES",
        key: "file_sink.retention_files",
        file: "10",
        file_expect: "10",
        env: "5",
        env_expect: "5",
        get: |s| dbg(s.file_sink.retention_files),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_START_FROM",
        key: "file_sink.start_from",
        file: r#""beginning""#,
        file_expect: "Beginning",
        env: "now",
        env_expect: "Now",
        get: |s| dbg(s.file_sink.start_from),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_FSYNC",
        key: "file_sink.fsync",
        file: r#""interval""#,
        file_expect: "Interval",
        env: "never",
        env_expect: "Never",
        get: |s| dbg(s.file_sink.fsync),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_FSYNC_INTERVAL",
        key: "file_sink.fsync_interval",
        file: r#""250ms""#,
        file_expect: "250ms",
        env: "2s",
        env_expect: "2s",
        get: |s| dbg(s.file_sink.fsync_interval),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY",
        key: "file_sink.compress_delay",
        file: r#""0s""#,
        file_expect: "0ns",
        env: "5m",
        env_expect: "300s",
        get: |s| dbg(s.file_sink.compress_delay),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_ALLOW_GROUP_BITS",
        key: "file_sink.allow_group_bits",
        file: "true",
        file_expect: "true",
        env: "0",
        env_expect: "false",
        get: |s| dbg(s.file_sink.allow_group_bits),
    },
    Case {
        var: "COMPARTMENT_AUDIT_FILE_SINK_ID",
        key: "file_sink.id",
        file: r#""host-a""#,
        file_expect: "\"host-a\"",
        env: "host-b",
        env_expect: "\"host-b\"",
        get: |s| dbg(&s.file_sink.sink_id),
    },
    Case {
        var: "COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE",
        key: "mirror.batch_size",
        file: "500",
        file_expect: "500",
        env: "250",
        env_expect: "250",
        get: |s| dbg(s.mirror.batch_size),
    },
    Case {
        var: "COMPARTMENT_AUDIT_MIRROR_POLL_INTERVAL",
        key: "mirror.poll_interval",
        file: r#""1s""#,
        file_expect: "1s",
        env: "750ms",
        env_expect: "750ms",
        get: |s| dbg(s.mirror.poll_interval),
    },
    Case {
        var: "COMPARTMENT_AUDIT_MIRROR_HORIZON_POLL_INTERVAL",
        key: "mirror.horizon_poll_interval",
        file: r#""50ms""#,
        file_expect: "50ms",
        env: "20ms",
        env_expect: "20ms",
        get: |s| dbg(s.mirror.horizon_poll_interval),
    },
    Case {
        var: "COMPARTMENT_AUDIT_MIRROR_HEARTBEAT_INTERVAL",
        key: "mirror.heartbeat_interval",
        file: r#""30s""#,
        file_expect: "30s",
        env: "1m",
        env_expect: "60s",
        get: |s| dbg(s.mirror.heartbeat_interval),
    },
    Case {
        var: "COMPARTMENT_AUDIT_MIRROR_MAX_BACKOFF",
        key: "mirror.max_backoff",
        file: r#""1m""#,
        file_expect: "60s",
        env: "10s",
        env_expect: "10s",
        get: |s| dbg(s.mirror.max_backoff),
    },
    Case {
        var: "COMPARTMENT_AUDIT_RETENTION_DAYS",
        key: "retention.days",
        file: "30",
        file_expect: "30",
        env: "365",
        env_expect: "365",
        get: |s| dbg(s.retention.days),
    },
    Case {
        var: "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON",
        key: "retention.cleanup_cron",
        file: r#""30 4 * * 1""#,
        file_expect: "30 4 * * 1",
        env: "*/15 * * * *",
        env_expect: "*/15 * * * *",
        get: |s| s.retention.cleanup_cron.source.clone(),
    },
    Case {
        var: "COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE",
        key: "retention.cleanup_batch_size",
        file: "1000",
        file_expect: "1000",
        env: "2000",
        env_expect: "2000",
        get: |s| dbg(s.retention.cleanup_batch_size),
    },
    Case {
        var: "COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES",
        key: "retention.cleanup_max_batches",
        file: "10",
        file_expect: "10",
        env: "20",
        env_expect: "20",
        get: |s| dbg(s.retention.cleanup_max_batches),
    },
    Case {
        var: "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CONCURRENCY",
        key: "retention.cleanup_concurrency",
        file: "1",
        file_expect: "1",
        env: "3",
        env_expect: "3",
        get: |s| dbg(s.retention.cleanup_concurrency),
    },
    Case {
        var: "COMPARTMENT_AUDIT_HTTP_ADDR",
        key: "http.addr",
        file: r#""0.0.0.0:9000""#,
        file_expect: "0.0.0.0:9000",
        env: "[::1]:9465",
        env_expect: "[::1]:9465",
        get: |s| dbg(s.http.addr),
    },
    Case {
        var: "COMPARTMENT_AUDIT_HTTP_EXPORT_MAX_ROWS",
        key: "http.export_max_rows",
        file: "500",
        file_expect: "500",
        env: "2000",
        env_expect: "2000",
        get: |s| dbg(s.http.export_max_rows),
    },
    Case {
        var: "COMPARTMENT_AUDIT_HTTP_MAX_HEADER_BYTES",
        key: "http.max_header_bytes",
        file: r#""32K""#,
        file_expect: "32768",
        env: "64KiB",
        env_expect: "65536",
        get: |s| dbg(s.http.max_header_bytes),
    },
    Case {
        var: "COMPARTMENT_AUDIT_HTTP_MAX_QUERY_BYTES",
        key: "http.max_query_bytes",
        file: "1024",
        file_expect: "1024",
        env: "2K",
        env_expect: "2048",
        get: |s| dbg(s.http.max_query_bytes),
    },
    Case {
        var: "COMPARTMENT_AUDIT_HTTP_REQUEST_TIMEOUT",
        key: "http.request_timeout",
        file: r#""1m""#,
        file_expect: "60s",
        env: "10s",
        env_expect: "10s",
        get: |s| dbg(s.http.request_timeout),
    },
    Case {
        var: "COMPARTMENT_AUDIT_HTTP_MAX_CONCURRENT_EXPORTS",
        key: "http.max_concurrent_exports",
        file: "2",
        file_expect: "2",
        env: "8",
        env_expect: "8",
        get: |s| dbg(s.http.max_concurrent_exports),
    },
    Case {
        var: "COMPARTMENT_AUDIT_LOG_LEVEL",
        key: "log.level",
        file: r#""debug""#,
        file_expect: "debug",
        env: "warn,compartment_auditd=trace",
        env_expect: "warn,compartment_auditd=trace",
        get: |s| s.log.level.clone(),
    },
    Case {
        var: "COMPARTMENT_AUDIT_LOG_FORMAT",
        key: "log.format",
        file: r#""json""#,
        file_expect: "Json",
        env: "text",
        env_expect: "Text",
        get: |s| dbg(s.log.format),
    },
];

/// The file line setting a case's key: `[section]` then `field = value`.
fn file_for(case: &Case) -> String {
    let (section, field) = case.key.split_once('.').expect("section.field");
    format!("[{section}]\n{field} = {}\n", case.file)
}

/// The base environment of a case: the database URL, unless the case is about it.
fn base_env(case: &Case) -> Vec<(&'static str, &'static str)> {
    if case.key == "database.url" || case.key == "database.url_file" {
        Vec::new()
    } else {
        vec![("COMPARTMENT_DATABASE_URL", BASE_URL)]
    }
}

#[test]
fn the_cases_cover_every_documented_variable() {
    let covered: BTreeSet<&str> = CASES.iter().map(|c| c.var).collect();
    let documented: BTreeSet<&str> = ENV_NAMES.iter().map(|n| n.var).collect();
    assert_eq!(covered, documented);
    assert_eq!(covered.len(), CASES.len(), "a variable is listed twice");
    for case in CASES {
        assert_eq!(key_for_env(case.var), Some(case.key), "{}", case.var);
    }
}

#[test]
fn the_names_of_the_product_documentation_map_to_their_keys() {
    // SPEC §2, exactly as written in the product documentation.
    for (var, key) in [
        ("COMPARTMENT_DATABASE_URL", "database.url"),
        ("DATABASE_URL", "database.url"),
        ("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "file_sink.enabled"),
        ("COMPARTMENT_AUDIT_FILE_SINK_DIR", "file_sink.dir"),
        (
            "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL",
            "file_sink.rotate_interval",
        ),
        (
            "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE",
            "file_sink.rotate_size",
        ),
        (
            "COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES",
            "file_sink.retention_files",
        ),
        (
            "COMPARTMENT_AUDIT_FILE_SINK_START_FROM",
            "file_sink.start_from",
        ),
        ("COMPARTMENT_AUDIT_RETENTION_DAYS", "retention.days"),
        (
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON",
            "retention.cleanup_cron",
        ),
        (
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE",
            "retention.cleanup_batch_size",
        ),
        (
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES",
            "retention.cleanup_max_batches",
        ),
        (
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CONCURRENCY",
            "retention.cleanup_concurrency",
        ),
        ("COMPARTMENT_AUDIT_HTTP_ADDR", "http.addr"),
    ] {
        assert_eq!(key_for_env(var), Some(key), "{var}");
    }
}

#[test]
fn the_file_overrides_the_defaults_for_every_key() {
    for case in CASES {
        if case.key != "database.url" && case.key != "database.url_file" {
            let defaults = load(None, &base_env(case)).expect("defaults load");
            assert_ne!(
                (case.get)(&defaults),
                case.file_expect,
                "{}: the test's file value must differ from the default",
                case.key
            );
        }
        let file = toml_file(&file_for(case));
        let settings = load(Some(file.path()), &base_env(case))
            .unwrap_or_else(|err| panic!("{} = {} in the file: {err}", case.key, case.file));
        assert_eq!(
            (case.get)(&settings),
            case.file_expect,
            "{} = {} in the file",
            case.key,
            case.file
        );
    }
}

#[test]
fn each_documented_variable_overrides_the_file() {
    for case in CASES {
        assert_ne!(case.env_expect, case.file_expect, "{}", case.var);
        let file = toml_file(&file_for(case));
        let mut env = base_env(case);
        env.push((case.var, case.env));
        let settings = load(Some(file.path()), &env)
            .unwrap_or_else(|err| panic!("{}={}: {err}", case.var, case.env));
        assert_eq!(
            (case.get)(&settings),
            case.env_expect,
            "{}={} over {} = {} in the file",
            case.var,
            case.env,
            case.key,
            case.file
        );
    }
}

#[test]
fn each_documented_variable_works_without_a_file() {
    for case in CASES {
        let mut env = base_env(case);
        env.push((case.var, case.env));
        let settings =
            load(None, &env).unwrap_or_else(|err| panic!("{}={}: {err}", case.var, case.env));
        assert_eq!((case.get)(&settings), case.env_expect, "{}", case.var);
    }
}

#[test]
fn only_the_url_is_needed_and_everything_else_has_its_documented_default() {
    let settings = load(None, &[("COMPARTMENT_DATABASE_URL", BASE_URL)]).expect("loads");
    assert_eq!(settings, Settings::with_defaults(BASE_URL));
    assert!(!settings.file_sink.enabled);
    assert_eq!(
        settings.file_sink.dir,
        Path::new("/var/lib/compartment/audit-logs")
    );
    assert_eq!(
        settings.file_sink.rotate_interval,
        Duration::from_secs(86_400)
    );
    assert_eq!(settings.file_sink.rotate_size, 67_108_864);
    assert_eq!(settings.file_sink.retention_files, 30);
    assert_eq!(settings.file_sink.start_from, StartFrom::Now);
    assert_eq!(settings.retention.days, 90);
    assert_eq!(settings.retention.cleanup_cron.source, "0 3 * * *");
    assert_eq!(settings.retention.cleanup_batch_size, 5000);
    assert_eq!(settings.retention.cleanup_max_batches, 100);
    assert_eq!(settings.retention.cleanup_concurrency, 2);
    assert_eq!(settings.http.addr.to_string(), "127.0.0.1:9464");
    assert_eq!(settings.http.export_max_rows, 10_000);
    assert_eq!(settings.log.format, LogFormat::Text);
}

#[test]
fn database_url_is_a_lower_precedence_fallback() {
    let fallback = "postgres://fallback@db/x";
    let primary = "postgres://primary@db/x";
    let only_fallback = load(None, &[("DATABASE_URL", fallback)]).expect("loads");
    assert_eq!(only_fallback.database.url.expose(), fallback);

    let both = load(
        None,
        &[
            ("DATABASE_URL", fallback),
            ("COMPARTMENT_DATABASE_URL", primary),
        ],
    )
    .expect("loads");
    assert_eq!(both.database.url.expose(), primary);

    // Environment over file, for the fallback name too.
    let file = toml_file("[database]\nurl = \"postgres://file@db/x\"\n");
    let over_file = load(Some(file.path()), &[("DATABASE_URL", fallback)]).expect("loads");
    assert_eq!(over_file.database.url.expose(), fallback);
}

#[test]
fn documented_value_syntax_parses_to_the_right_values() {
    let settings = load(
        None,
        &[
            ("COMPARTMENT_DATABASE_URL", BASE_URL),
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "64M"),
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL", "1d"),
            ("COMPARTMENT_AUDIT_MIRROR_POLL_INTERVAL", "15m"),
            ("COMPARTMENT_AUDIT_MIRROR_MAX_BACKOFF", "3600"),
        ],
    )
    .expect("loads");
    assert_eq!(settings.file_sink.rotate_size, 67_108_864);
    assert_eq!(
        settings.file_sink.rotate_interval,
        Duration::from_secs(86_400)
    );
    assert_eq!(settings.mirror.poll_interval, Duration::from_secs(900));
    assert_eq!(settings.mirror.max_backoff, Duration::from_secs(3600));

    let file = toml_file("[file_sink]\nrotate_interval = 3600\nrotate_size = 4096\n");
    let settings = load(Some(file.path()), &[("COMPARTMENT_DATABASE_URL", BASE_URL)])
        .expect("integers in the file load");
    assert_eq!(
        settings.file_sink.rotate_interval,
        Duration::from_secs(3600)
    );
    assert_eq!(settings.file_sink.rotate_size, 4096);
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("a valid UTC time")
}

#[test]
fn the_default_cleanup_runs_daily_at_three_utc() {
    let cron = Settings::with_defaults(BASE_URL).retention.cleanup_cron;
    assert_eq!(
        cron.next_after(utc(2026, 5, 12, 9, 14, 3)),
        Some(utc(2026, 5, 13, 3, 0, 0))
    );
    assert_eq!(
        cron.next_after(utc(2026, 5, 12, 2, 59, 59)),
        Some(utc(2026, 5, 12, 3, 0, 0))
    );
    // Strictly after: a run that has just fired is not due again.
    assert_eq!(
        cron.next_after(utc(2026, 5, 12, 3, 0, 0)),
        Some(utc(2026, 5, 13, 3, 0, 0))
    );
    assert_eq!(
        cron.next_after(utc(2026, 12, 31, 23, 0, 0)),
        Some(utc(2027, 1, 1, 3, 0, 0))
    );
}

#[test]
fn cron_fields_mean_minute_hour_day_month_weekday() {
    let weekly = CronSchedule::parse("30 4 * * 1").expect("valid");
    // 2026-05-12 is a Tuesday; the next Monday is the 18th.
    assert_eq!(
        weekly.next_after(utc(2026, 5, 12, 9, 0, 0)),
        Some(utc(2026, 5, 18, 4, 30, 0))
    );
    let quarter = CronSchedule::parse("*/15 * * * *").expect("valid");
    assert_eq!(
        quarter.next_after(utc(2026, 5, 12, 10, 7, 30)),
        Some(utc(2026, 5, 12, 10, 15, 0))
    );
}

#[test]
fn cron_expressions_other_than_five_fields_are_refused() {
    for bad in [
        "0 0 3 * * *",
        "0 3 * *",
        "@daily",
        "",
        "61 * * * *",
        "0 25 * * *",
        "0 0 31 2 *",
        "0 3 * * * 2026",
    ] {
        assert!(CronSchedule::parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn empty_variables_count_as_unset() {
    let file = toml_file("[retention]\ndays = 30\n");
    let settings = load(
        Some(file.path()),
        &[
            ("COMPARTMENT_DATABASE_URL", BASE_URL),
            ("COMPARTMENT_AUDIT_RETENTION_DAYS", ""),
            ("COMPARTMENT_AUDIT_LOG_LEVEL", ""),
        ],
    )
    .expect("loads");
    assert_eq!(settings.retention.days, 30);
    assert_eq!(settings.log.level, "info");
}

#[test]
fn unknown_variables_of_our_namespace_are_warnings() {
    let settings = load(
        None,
        &[
            ("COMPARTMENT_DATABASE_URL", BASE_URL),
            ("COMPARTMENT_AUDIT_RETENTION_DAY", "30"),
            ("COMPARTMENT_AUDIT_CONFIG", "/etc/compartment/auditd.toml"),
            ("COMPARTMENT_API_TOKEN_TTL", "1h"),
            ("PATH", "/usr/bin"),
        ],
    )
    .expect("unknown variables are not fatal");
    assert_eq!(
        settings.warnings,
        vec![ConfigWarning::UnknownEnvironmentVariable {
            name: "COMPARTMENT_AUDIT_RETENTION_DAY".into(),
            suggestion: Some("COMPARTMENT_AUDIT_RETENTION_DAYS"),
        }]
    );
    assert_eq!(settings.retention.days, 90);
    let text = settings.warnings[0].to_string();
    assert!(text.contains("COMPARTMENT_AUDIT_RETENTION_DAY "), "{text}");
    assert!(
        text.contains("did you mean COMPARTMENT_AUDIT_RETENTION_DAYS"),
        "{text}"
    );
}

#[test]
fn errors_name_the_variable_when_the_value_came_from_the_environment() {
    let file = toml_file("[file_sink]\nrotate_size = \"1M\"\n");
    let err = load(
        Some(file.path()),
        &[
            ("COMPARTMENT_DATABASE_URL", BASE_URL),
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "64MB"),
        ],
    )
    .expect_err("64MB is ambiguous");
    let message = err.to_string();
    for expected in [
        "file_sink.rotate_size",
        "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE",
        "\"64MB\"",
        "64M",
        "KiB",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing from: {message}"
        );
    }
}

#[test]
fn errors_name_the_file_when_the_value_came_from_it() {
    let file = toml_file("[retention]\ndays = 0\n");
    let err =
        load(Some(file.path()), &[("COMPARTMENT_DATABASE_URL", BASE_URL)]).expect_err("zero days");
    let message = err.to_string();
    assert!(message.contains("retention.days"), "{message}");
    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("from 1 to 36500"), "{message}");
    assert!(
        !message.contains("COMPARTMENT_AUDIT_RETENTION_DAYS"),
        "{message}"
    );
}

#[test]
fn unknown_keys_and_sections_in_the_file_are_errors() {
    for (contents, expected) in [
        (
            "[file_sink]\nrotate_sise = \"1M\"\n",
            "file_sink.rotate_sise",
        ),
        ("[filesink]\nenabled = true\n", "filesink"),
        ("level = \"info\"\n", "level"),
        ("[log.extra]\nx = 1\n", "log.extra"),
    ] {
        let file = toml_file(contents);
        let err =
            load(Some(file.path()), &[("COMPARTMENT_DATABASE_URL", BASE_URL)]).expect_err(contents);
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, .. } if key == expected),
            "{contents:?}: {err}"
        );
    }
}

#[test]
fn a_section_that_is_not_a_table_is_an_error_even_when_the_environment_sets_it() {
    let file = toml_file("database = 5\n");
    let err = load(Some(file.path()), &[("COMPARTMENT_DATABASE_URL", BASE_URL)])
        .expect_err("not a table");
    assert!(
        matches!(&err, ConfigError::Structure { key, .. } if key == "database"),
        "{err}"
    );
}

#[test]
fn a_named_file_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("auditd.toml");
    let err =
        load(Some(&missing), &[("COMPARTMENT_DATABASE_URL", BASE_URL)]).expect_err("missing file");
    assert!(matches!(err, ConfigError::File { .. }), "{err}");
    assert!(err.to_string().contains(&missing.display().to_string()));
}

#[test]
fn a_syntax_error_names_the_line_without_quoting_it() {
    let file = toml_file("[database]\nurl = \"postgres://app:hunter2@db/x\n");
    let err = load(Some(file.path()), &[]).expect_err("unterminated string");
    let message = err.to_string();
    assert!(
        matches!(err, ConfigError::Syntax { line: 2, .. }),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn a_missing_database_url_names_both_the_variable_and_the_key() {
    let err = load(None, &[]).expect_err("no URL");
    let message = err.to_string();
    assert!(matches!(err, ConfigError::Missing { .. }));
    assert!(message.contains("COMPARTMENT_DATABASE_URL"), "{message}");
    assert!(message.contains("database.url"), "{message}");
}

#[test]
fn the_effective_settings_render_as_a_file_that_loads_back_to_them() {
    // Every key set to a non-default value in one file.
    let mut contents = String::new();
    for section in compartment_auditd::config::SECTIONS {
        contents.push_str(&format!("[{section}]\n"));
        // url_file would conflict with url: the file sets the URL directly.
        for case in CASES
            .iter()
            .filter(|c| c.key.starts_with(&format!("{section}.")) && c.key != "database.url_file")
        {
            let (_, field) = case.key.split_once('.').expect("section.field");
            contents.push_str(&format!("{field} = {}\n", case.file));
        }
    }
    let file = toml_file(&contents);
    let settings = load(Some(file.path()), &[]).expect("loads");
    let rendered = settings.to_toml_redacted();

    let table: toml::Table = rendered.parse().expect("valid TOML");
    for name in ENV_NAMES {
        if name.key == "database.url_file" {
            assert!(rendered.contains("# url_file is not set"), "{rendered}");
            continue;
        }
        assert!(
            lookup(&table, name.key).is_some(),
            "{} missing from:\n{rendered}",
            name.key
        );
    }
    let again = toml_file(&rendered);
    assert_eq!(load(Some(again.path()), &[]).expect("loads back"), settings);
}

/// The value at a dotted key (`database.tls.sslmode`).
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

#[test]
fn rendering_masks_the_database_password() {
    let settings = Settings::with_defaults("postgres://app:hunter2@db:5432/x");
    let rendered = settings.to_toml_redacted();
    assert!(!rendered.contains("hunter2"), "{rendered}");
    assert!(
        rendered.contains("postgres://app:****@db:5432/x"),
        "{rendered}"
    );
    assert!(!format!("{settings:?}").contains("hunter2"));
}

#[test]
fn the_example_file_documents_every_key_with_its_default() {
    let path = repo_file("config/auditd.toml");
    let settings = load(Some(&path), &[("COMPARTMENT_DATABASE_URL", BASE_URL)])
        .expect("config/auditd.toml loads");
    assert_eq!(settings, Settings::with_defaults(BASE_URL));

    let text = std::fs::read_to_string(&path).expect("read config/auditd.toml");
    let table: toml::Table = text.parse().expect("valid TOML");
    for name in ENV_NAMES {
        assert!(text.contains(name.var), "{} is not mentioned", name.var);
        let (section, field) = name.key.split_once('.').expect("section.field");
        if name.key == "database.url" {
            // Required and secret: documented, commented out.
            assert!(text.contains("# url = "), "database.url is not shown");
            continue;
        }
        if compartment_auditd::config::OPTIONAL_KEYS.contains(&name.key) {
            // No default: documented, commented out.
            let field = name.key.rsplit('.').next().unwrap_or_default();
            assert!(
                text.contains(&format!("# {field} = ")),
                "{} is not shown",
                name.key
            );
            continue;
        }
        assert!(
            table.get(section).and_then(|s| s.get(field)).is_some(),
            "{} is not set in config/auditd.toml",
            name.key
        );
    }
}

/// The commented-out assignments of config/auditd.env: `# NAME=value`, quotes removed.
fn example_env() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo_file("config/auditd.env")).expect("read config/auditd.env");
    text.lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(name, value)| (name.to_owned(), value.trim_matches('"').to_owned()))
        .collect()
}

#[test]
fn every_variable_of_the_example_env_file_maps_to_a_key() {
    let env = example_env();
    let names: BTreeSet<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
    for name in &names {
        assert!(
            key_for_env(name).is_some() || *name == ENV_CONFIG,
            "{name} in config/auditd.env is not a setting"
        );
    }
    for name in ENV_NAMES {
        assert!(
            names.contains(name.var),
            "{} is missing from config/auditd.env",
            name.var
        );
    }
}

#[test]
fn the_example_env_file_shows_the_defaults() {
    let env: Vec<(String, String)> = example_env()
        .into_iter()
        .filter(|(name, _)| name != ENV_CONFIG)
        .map(|(name, value)| {
            if name == "COMPARTMENT_DATABASE_URL" {
                (name, BASE_URL.to_owned())
            } else {
                (name, value)
            }
        })
        .collect();
    let settings = Settings::load_from(None, env).expect("the example values load");
    assert_eq!(settings, Settings::with_defaults(BASE_URL));
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
}
