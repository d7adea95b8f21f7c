//! `compartment-auditd config check`, the real binary in a controlled environment:
//! exit 0 and the effective settings when valid, exit 78 and one message naming the
//! key when not, and never the database password.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};

const PASSWORD: &str = "hunter2-s3cret";
const URL: &str = "postgres://auditd:hunter2-s3cret@db.internal:5432/compartment";
const EX_CONFIG: i32 = 78;

fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("create a temporary file");
    file.write_all(contents.as_bytes())
        .expect("write the temporary file");
    file
}

/// Runs `config check` with exactly `env` and the configuration file `file` (an
/// empty one when `None`, so that a file on this machine at the default path cannot
/// interfere).
fn check(env: &[(&str, &str)], file: Option<&str>) -> Output {
    let file = toml_file(file.unwrap_or(""));
    run(
        env,
        &[
            "--config",
            &file.path().display().to_string(),
            "config",
            "check",
        ],
    )
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compartment-auditd"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run compartment-auditd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_password(output: &Output) {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(!stdout.contains(PASSWORD), "password on stdout:\n{stdout}");
    assert!(!stderr.contains(PASSWORD), "password on stderr:\n{stderr}");
}

#[test]
fn a_valid_configuration_prints_every_key_and_exits_zero() {
    let output = check(&[("COMPARTMENT_DATABASE_URL", URL)], None);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    for name in compartment_auditd::config::ENV_NAMES {
        let (section, field) = name.key.rsplit_once('.').expect("section.field");
        assert!(
            stdout.contains(&format!("[{section}]\n")),
            "[{section}] missing:\n{stdout}"
        );
        let line = if compartment_auditd::config::OPTIONAL_KEYS.contains(&name.key) {
            format!("\n# {field} is not set")
        } else {
            format!("\n{field} = ")
        };
        assert!(stdout.contains(&line), "{} missing:\n{stdout}", name.key);
    }
    assert!(
        stdout.contains("url = \"postgres://auditd:****@db.internal:5432/compartment\""),
        "{stdout}"
    );
    assert!(stdout.contains("rotate_size = \"64M\""), "{stdout}");
    assert!(stdout.contains("cleanup_cron = \"0 3 * * *\""), "{stdout}");
    assert_no_password(&output);
}

#[test]
fn the_printed_settings_show_environment_overrides() {
    let output = check(
        &[
            ("COMPARTMENT_DATABASE_URL", URL),
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL", "3600"),
            ("COMPARTMENT_AUDIT_RETENTION_DAYS", "30"),
        ],
        Some("[retention]\ndays = 7\n[file_sink]\nrotate_size = \"1G\"\n"),
    );
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("rotate_interval = \"1h\""), "{stdout}");
    assert!(stdout.contains("rotate_size = \"1G\""), "{stdout}");
    assert!(stdout.contains("days = 30"), "{stdout}");
}

#[test]
fn a_key_value_connection_string_has_its_password_masked() {
    let url = format!("host=db.internal user=auditd password={PASSWORD} dbname=compartment");
    let output = check(&[("COMPARTMENT_DATABASE_URL", &url)], None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("password=****"));
    assert_no_password(&output);
}

#[test]
fn the_database_url_in_the_file_is_masked_too() {
    let output = check(&[], Some(&format!("[database]\nurl = \"{URL}\"\n")));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_no_password(&output);
}

/// A bad configuration: the environment and file, and what the message must contain.
struct Bad {
    what: &'static str,
    env: &'static [(&'static str, &'static str)],
    file: &'static str,
    expect: &'static [&'static str],
}

const BAD: &[Bad] = &[
    Bad {
        what: "bad duration",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL", "1 day")],
        file: "",
        expect: &[
            "file_sink.rotate_interval",
            "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_INTERVAL",
            "\"1 day\"",
            "15m",
        ],
    },
    Bad {
        what: "bad duration in the file",
        env: &[],
        file: "[mirror]\npoll_interval = \"5 minutes\"\n",
        expect: &[
            "mirror.poll_interval",
            "\"5 minutes\"",
            "ms, s, m, h, d or w",
        ],
    },
    Bad {
        what: "duration out of range",
        env: &[("COMPARTMENT_AUDIT_MIRROR_HORIZON_POLL_INTERVAL", "0")],
        file: "",
        expect: &[
            "mirror.horizon_poll_interval",
            "COMPARTMENT_AUDIT_MIRROR_HORIZON_POLL_INTERVAL",
            "from 10ms to 1m",
        ],
    },
    Bad {
        what: "bad size",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "64X")],
        file: "",
        expect: &[
            "file_sink.rotate_size",
            "COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE",
            "\"64X\"",
            "64M = 64 MiB",
        ],
    },
    Bad {
        what: "ambiguous decimal size",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "64MB")],
        file: "",
        expect: &["file_sink.rotate_size", "ambiguous"],
    },
    Bad {
        what: "size below the minimum",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE", "1K")],
        file: "",
        expect: &["file_sink.rotate_size", "from 4K"],
    },
    Bad {
        what: "6-field cron",
        env: &[("COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON", "0 0 3 * * *")],
        file: "",
        expect: &[
            "retention.cleanup_cron",
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CRON",
            "\"0 0 3 * * *\"",
            "6 fields",
            "5-field",
        ],
    },
    Bad {
        what: "invalid cron field",
        env: &[],
        file: "[retention]\ncleanup_cron = \"0 24 * * *\"\n",
        expect: &["retention.cleanup_cron", "\"0 24 * * *\""],
    },
    Bad {
        what: "negative count",
        env: &[("COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE", "-5")],
        file: "",
        expect: &[
            "retention.cleanup_batch_size",
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_BATCH_SIZE",
            "\"-5\"",
            "from 1 to",
        ],
    },
    Bad {
        what: "zero count",
        env: &[("COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES", "0")],
        file: "",
        expect: &[
            "retention.cleanup_max_batches",
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_MAX_BATCHES",
            "from 1 to",
        ],
    },
    Bad {
        what: "too many concurrent batches",
        env: &[("COMPARTMENT_AUDIT_RETENTION_CLEANUP_CONCURRENCY", "17")],
        file: "",
        expect: &[
            "retention.cleanup_concurrency",
            "COMPARTMENT_AUDIT_RETENTION_CLEANUP_CONCURRENCY",
            "from 1 to 16",
        ],
    },
    Bad {
        what: "zero days in the file",
        env: &[],
        file: "[retention]\ndays = 0\n",
        expect: &["retention.days", "= 0", "from 1 to 36500"],
    },
    Bad {
        what: "zero retention files",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES", "0")],
        file: "",
        expect: &[
            "file_sink.retention_files",
            "COMPARTMENT_AUDIT_FILE_SINK_RETENTION_FILES",
        ],
    },
    Bad {
        what: "pool too small",
        env: &[("COMPARTMENT_DATABASE_POOL_SIZE", "1")],
        file: "",
        expect: &[
            "database.pool_size",
            "COMPARTMENT_DATABASE_POOL_SIZE",
            "from 2 to",
        ],
    },
    Bad {
        what: "not a number",
        env: &[("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "lots")],
        file: "",
        expect: &[
            "mirror.batch_size",
            "COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE",
            "\"lots\"",
        ],
    },
    Bad {
        what: "bad bool",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "maybe")],
        file: "",
        expect: &[
            "file_sink.enabled",
            "COMPARTMENT_AUDIT_FILE_SINK_ENABLED",
            "\"maybe\"",
            "true or false",
        ],
    },
    Bad {
        what: "bad address",
        env: &[("COMPARTMENT_AUDIT_HTTP_ADDR", "localhost:9464")],
        file: "",
        expect: &[
            "http.addr",
            "COMPARTMENT_AUDIT_HTTP_ADDR",
            "\"localhost:9464\"",
            "127.0.0.1:9464",
        ],
    },
    Bad {
        what: "address without a port",
        env: &[],
        file: "[http]\naddr = \"0.0.0.0\"\n",
        expect: &["http.addr", "\"0.0.0.0\""],
    },
    Bad {
        what: "bad start_from",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "yesterday")],
        file: "",
        expect: &["file_sink.start_from", "now, beginning"],
    },
    Bad {
        what: "bad fsync policy",
        env: &[],
        file: "[file_sink]\nfsync = \"sometimes\"\n",
        expect: &["file_sink.fsync", "always, interval, never"],
    },
    Bad {
        what: "bad log format",
        env: &[("COMPARTMENT_AUDIT_LOG_FORMAT", "xml")],
        file: "",
        expect: &["log.format", "COMPARTMENT_AUDIT_LOG_FORMAT", "text, json"],
    },
    Bad {
        what: "bad log level",
        env: &[("COMPARTMENT_AUDIT_LOG_LEVEL", "loud")],
        file: "",
        expect: &["log.level", "COMPARTMENT_AUDIT_LOG_LEVEL", "\"loud\""],
    },
    Bad {
        what: "relative sink directory",
        env: &[("COMPARTMENT_AUDIT_FILE_SINK_DIR", "audit-logs")],
        file: "",
        expect: &["file_sink.dir", "absolute"],
    },
    Bad {
        what: "query limit above the header limit",
        env: &[("COMPARTMENT_AUDIT_HTTP_MAX_QUERY_BYTES", "32K")],
        file: "",
        expect: &["http.max_query_bytes", "http.max_header_bytes"],
    },
    Bad {
        what: "unknown file key",
        env: &[],
        file: "[file_sink]\nrotate_sise = \"64M\"\n",
        expect: &["file_sink.rotate_sise", "rotate_size"],
    },
    Bad {
        what: "unknown file section",
        env: &[],
        file: "[sink]\nenabled = true\n",
        expect: &["unknown key sink", "[file_sink]"],
    },
    Bad {
        what: "TOML syntax error",
        env: &[],
        file: "[retention\ndays = 3\n",
        expect: &["not valid TOML", "line 1"],
    },
];

#[test]
fn each_kind_of_bad_value_exits_78_naming_the_key() {
    for bad in BAD {
        let mut env = vec![("COMPARTMENT_DATABASE_URL", URL)];
        env.extend_from_slice(bad.env);
        let output = check(&env, Some(bad.file));
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(EX_CONFIG),
            "{}: {stderr}",
            bad.what
        );
        assert!(output.stdout.is_empty(), "{}: printed settings", bad.what);
        assert_eq!(
            stderr.lines().count(),
            1,
            "{}: not one message: {stderr}",
            bad.what
        );
        for expected in bad.expect {
            assert!(
                stderr.contains(expected),
                "{}: {expected:?} missing from: {stderr}",
                bad.what
            );
        }
        assert_no_password(&output);
    }
}

#[test]
fn a_missing_database_url_exits_78_naming_variable_and_key() {
    let output = check(&[], None);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains("COMPARTMENT_DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
}

#[test]
fn an_invalid_database_url_exits_78_without_showing_the_password() {
    for url in [
        format!("postgres://auditd:{PASSWORD}@db.internal:notaport/compartment"),
        format!("host=db.internal password={PASSWORD} dangling"),
        format!("user=auditd password={PASSWORD}"),
    ] {
        let output = check(&[("COMPARTMENT_DATABASE_URL", &url)], None);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(EX_CONFIG), "{url}: {stderr}");
        assert!(stderr.contains("database.url"), "{stderr}");
        assert!(stderr.contains("COMPARTMENT_DATABASE_URL"), "{stderr}");
        assert!(stderr.contains("****"), "{stderr}");
        assert_no_password(&output);
    }
}

#[test]
fn a_missing_named_configuration_file_exits_78() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("auditd.toml");
    let missing = missing.display().to_string();
    for output in [
        run(
            &[("COMPARTMENT_DATABASE_URL", URL)],
            &["--config", &missing, "config", "check"],
        ),
        run(
            &[
                ("COMPARTMENT_DATABASE_URL", URL),
                ("COMPARTMENT_AUDIT_CONFIG", &missing),
            ],
            &["config", "check"],
        ),
    ] {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(EX_CONFIG), "{stderr}");
        assert!(stderr.contains(&missing), "{stderr}");
    }
}

#[test]
fn the_configuration_file_can_be_named_by_the_environment() {
    let file = toml_file("[retention]\ndays = 45\n");
    let output = run(
        &[
            ("COMPARTMENT_DATABASE_URL", URL),
            (
                "COMPARTMENT_AUDIT_CONFIG",
                &file.path().display().to_string(),
            ),
        ],
        &["config", "check"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("days = 45"));
}

#[test]
fn unknown_variables_of_our_namespace_are_printed_as_warnings() {
    let output = check(
        &[
            ("COMPARTMENT_DATABASE_URL", URL),
            ("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZ", "1G"),
        ],
        None,
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(
        stderr.contains("COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZ "),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean COMPARTMENT_AUDIT_FILE_SINK_ROTATE_SIZE"),
        "{stderr}"
    );
    assert!(text(&output.stdout).contains("rotate_size = \"64M\""));
}

#[test]
fn other_commands_exit_78_on_bad_configuration_too() {
    let file = toml_file("");
    let output = run(
        &[
            ("COMPARTMENT_DATABASE_URL", URL),
            ("COMPARTMENT_AUDIT_RETENTION_DAYS", "0"),
        ],
        &["--config", &file.path().display().to_string(), "migrate"],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains("retention.days"), "{stderr}");
    assert_no_password(&output);
}

#[test]
fn the_example_configuration_file_checks_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/auditd.toml");
    let output = run(
        &[("COMPARTMENT_DATABASE_URL", URL)],
        &["--config", &path.display().to_string(), "config", "check"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
}
