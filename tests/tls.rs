//! TLS and secret files against a real PostgreSQL that speaks TLS only (issue 15):
//! libpq's `sslmode` semantics, named causes for every refusal, client certificate
//! authentication, every backend of the daemon on TLS, CLI commands over TLS, and a
//! password file rotated while the daemon runs.
//!
//! The server is a private instance (`support::tls`) with a CA and certificates made
//! by the test, `ssl = on` and `hostssl` lines only; a plaintext connection over TCP
//! is refused by its `pg_hba.conf`, so anything that connects at all used TLS.

mod common;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use compartment_auditd::config::{DatabaseSettings, Settings};
use compartment_auditd::db::tls::{RootCert, SslMode};
use compartment_auditd::db::{self, DbError};
use support::tls::{install_server_cert, start_tls_postgres, Pki, CERT_USER, PASSWORD_USER};
use support::{DaemonConfig, PrivatePostgres};

/// Connects once as the daemon would; `Ok(ssl)` says whether the session is on TLS
/// (from `pg_stat_ssl`), `Err` is the error text an operator would read.
async fn try_connect(
    url: &str,
    adjust: impl FnOnce(&mut DatabaseSettings),
) -> Result<bool, String> {
    let mut settings = Settings::with_defaults(url).database;
    settings.connect_timeout = Duration::from_secs(5);
    adjust(&mut settings);
    let connector = db::connector(&settings).map_err(|err| err.to_string())?;
    let (client, connection) = connector
        .connect()
        .await
        .map_err(|err| DbError::Connect(err).to_string())?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|err| DbError::Query(err).to_string())?;
    driver.abort();
    Ok(row.get(0))
}

fn verify_full(pki: &Pki) -> impl FnOnce(&mut DatabaseSettings) + '_ {
    |db| {
        db.tls.sslmode = Some(SslMode::VerifyFull);
        db.tls.sslrootcert = Some(RootCert::File(pki.path("ca.pem")));
    }
}

fn expect_err(result: Result<bool, String>, cause: &str, what: &str) -> String {
    match result {
        Ok(ssl) => panic!("{what}: connected (ssl={ssl}), expected a refusal naming {cause:?}"),
        Err(text) => {
            assert!(
                text.contains(cause),
                "{what}: {text:?} does not name {cause:?}"
            );
            assert!(!text.contains("BEGIN"), "{what}: PEM content in {text:?}");
            text
        }
    }
}

async fn start_servers() -> (Pki, PrivatePostgres) {
    tokio::task::spawn_blocking(|| {
        let pki = Pki::generate();
        let pg = start_tls_postgres(&pki);
        (pki, pg)
    })
    .await
    .expect("starting the TLS server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_follow_libpq_and_each_refusal_names_its_cause() {
    let (pki, pg) = start_servers().await;
    let plain = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("starting a plaintext server");
    let port = pg.port;
    let localhost = format!("postgres://postgres@localhost:{port}/postgres");
    let loopback = pg.url("postgres");
    let ca = pki.path("ca.pem").display().to_string();

    // verify-full with the right CA, by name and by IP address (an IP SAN, no SNI),
    // from the URL and from the settings.
    assert_eq!(
        try_connect(
            &format!("{localhost}?sslmode=verify-full&sslrootcert={ca}"),
            |_| {}
        )
        .await,
        Ok(true)
    );
    assert_eq!(try_connect(&loopback, verify_full(&pki)).await, Ok(true));
    // An explicit setting overrides the URL's parameter: the URL's `disable` would be
    // refused by the hostssl-only server.
    expect_err(
        try_connect(&format!("{localhost}?sslmode=disable"), |_| {}).await,
        "no pg_hba.conf entry",
        "plaintext to a hostssl-only server",
    );
    assert_eq!(
        try_connect(&format!("{localhost}?sslmode=disable"), verify_full(&pki)).await,
        Ok(true)
    );
    // libpq's environment is below the URL.
    assert_eq!(
        try_connect(&format!("{localhost}?sslmode=require"), |db| {
            db.libpq_env.tls.sslmode = Some(SslMode::Disable)
        })
        .await,
        Ok(true)
    );

    // Wrong CA, wrong host name.
    expect_err(
        try_connect(&localhost, |db| {
            db.tls.sslmode = Some(SslMode::VerifyFull);
            db.tls.sslrootcert = Some(RootCert::File(pki.path("other-ca.pem")));
        })
        .await,
        "not signed by a trusted CA",
        "wrong CA",
    );
    let wrong_name = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslrootcert={ca}"
    );
    let text = expect_err(
        try_connect(&format!("{wrong_name} sslmode=verify-full"), |_| {}).await,
        "hostname mismatch",
        "wrong host name",
    );
    assert!(text.contains("wrong.example"), "{text}");
    // verify-ca checks the chain only.
    assert_eq!(
        try_connect(&format!("{wrong_name} sslmode=verify-ca"), |_| {}).await,
        Ok(true)
    );
    // require: no CA needed; with a root certificate it checks the chain (libpq).
    assert_eq!(
        try_connect(&format!("{localhost}?sslmode=require"), |_| {}).await,
        Ok(true)
    );
    expect_err(
        try_connect(&format!("{localhost}?sslmode=require"), |db| {
            db.tls.sslrootcert = Some(RootCert::File(pki.path("other-ca.pem")))
        })
        .await,
        "not signed by a trusted CA",
        "require with a root certificate",
    );
    // prefer and allow: TLS where the server has it, plaintext only where it has not.
    assert_eq!(
        try_connect(&localhost, |_| {}).await,
        Ok(true),
        "prefer is the default"
    );
    assert_eq!(
        try_connect(&format!("{localhost}?sslmode=allow"), |_| {}).await,
        Ok(true),
        "allow retries with TLS when plaintext is refused"
    );
    let plain_url = plain.url("postgres");
    assert_eq!(try_connect(&plain_url, |_| {}).await, Ok(false));
    assert_eq!(
        try_connect(&format!("{plain_url}?sslmode=allow"), |_| {}).await,
        Ok(false)
    );
    expect_err(
        try_connect(&format!("{plain_url}?sslmode=require"), |_| {}).await,
        "does not accept TLS",
        "require against a server without TLS",
    );

    // An expired server certificate.
    install_server_cert(&pki, &pg.data_dir(), "server-expired");
    pg.reload();
    let refused = support::wait_for(Duration::from_secs(10), async || {
        try_connect(&localhost, verify_full(&pki)).await.err()
    })
    .await
    .expect("the expired certificate is refused");
    assert!(refused.contains("has expired"), "{refused}");
    assert_eq!(
        try_connect(&format!("{localhost}?sslmode=require"), |_| {}).await,
        Ok(true),
        "require does not check the certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_and_loose_keys_are_refused() {
    let (pki, pg) = start_servers().await;
    let url = format!("postgres://{CERT_USER}@localhost:{}/postgres", pg.port);
    let with_cert = |name: &'static str| {
        let pki = &pki;
        move |db: &mut DatabaseSettings| {
            verify_full(pki)(db);
            db.tls.sslcert = Some(pki.path(&format!("{name}.crt")));
            db.tls.sslkey = Some(pki.path(&format!("{name}.key")));
        }
    };
    assert_eq!(try_connect(&url, with_cert("client")).await, Ok(true));
    expect_err(
        try_connect(&url, verify_full(&pki)).await,
        "certificate",
        "no client certificate",
    );
    expect_err(
        try_connect(&url, with_cert("client-other")).await,
        "rejected the client certificate",
        "a client certificate of another CA",
    );
    // The URL's parameters and libpq's environment work too.
    let cert = pki.path("client.crt").display().to_string();
    let key = pki.path("client.key").display().to_string();
    assert_eq!(
        try_connect(
            &format!("{url}?sslcert={cert}&sslkey={key}"),
            verify_full(&pki)
        )
        .await,
        Ok(true)
    );

    // A key others may read is refused before any connection, as libpq does.
    use std::os::unix::fs::PermissionsExt;
    let loose = tempfile::tempdir().expect("tempdir");
    let loose_key = loose.path().join("client.key");
    std::fs::copy(pki.path("client.key"), &loose_key).expect("copy");
    std::fs::set_permissions(&loose_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = expect_err(
        try_connect(&url, |db| {
            with_cert("client")(db);
            db.tls.sslkey = Some(loose_key.clone());
        })
        .await,
        "group or world access",
        "a world-readable key",
    );
    assert!(text.contains("0644"), "{text}");
}

/// `compartment-auditd ARGS` with `env` (nothing inherited but `PATH`).
fn cli(env: &[(&str, String)], args: &[&str]) -> (i32, String, String) {
    let output = Command::new(support::bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the CLI runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tls_env(pki: &Pki, url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("COMPARTMENT_DATABASE_URL", url.to_owned()),
        ("COMPARTMENT_DATABASE_SSLMODE", "verify-full".into()),
        (
            "COMPARTMENT_DATABASE_SSLROOTCERT",
            pki.path("ca.pem").display().to_string(),
        ),
    ]
}

async fn insert_events(url: &str, org: uuid::Uuid, n: usize) -> Vec<i64> {
    let client = common::connect(url).await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let event = common::NewEvent::new(org, "tls.test");
        ids.push(common::insert_event_with(&client, &event).await);
    }
    ids
}

async fn wait_for_sink(sink: &Path, expected: &[i64]) -> Vec<i64> {
    let expected_len = expected.len();
    support::wait_for(Duration::from_secs(30), async || {
        let ids = support::read_sink_ids(sink);
        (ids.len() >= expected_len).then_some(ids)
    })
    .await
    .unwrap_or_else(|| support::read_sink_ids(sink))
}

/// The daemon's sessions as `(application_name, ssl)`, read over the socket.
async fn daemon_sessions(socket_url: &str, user: &str) -> Vec<(String, bool)> {
    let client = common::connect(socket_url).await;
    client
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = $1 AND a.application_name LIKE 'compartment-auditd%' ORDER BY 1",
            &[&user],
        )
        .await
        .expect("reading sessions")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_the_cli_use_tls_for_every_connection() {
    let (pki, pg) = start_servers().await;
    pg.create_migrated_database("mirror");
    let daemon_url = format!("postgres://postgres@localhost:{}/mirror", pg.port);
    let socket = pg.socket_url("mirror");
    let env = tls_env(&pki, &daemon_url);

    // CLI commands over verify-full.
    let (code, _, stderr) = cli(&env, &["migrate"]);
    assert_eq!(code, 0, "migrate: {stderr}");
    let (code, stdout, stderr) = cli(&env, &["org", "create", "--slug", "acme-tls"]);
    assert_eq!(code, 0, "org create: {stderr}");
    assert!(
        stdout.contains("acme-tls") || !stdout.is_empty(),
        "{stdout}"
    );
    let (code, _, stderr) = cli(&env, &["retention", "run"]);
    assert_eq!(code, 0, "retention run: {stderr}");
    // A wrong CA on the CLI: the named cause on stderr, no certificate content.
    let wrong = vec![
        ("COMPARTMENT_DATABASE_URL", daemon_url.clone()),
        ("COMPARTMENT_DATABASE_SSLMODE", "verify-full".into()),
        (
            "COMPARTMENT_DATABASE_SSLROOTCERT",
            pki.path("other-ca.pem").display().to_string(),
        ),
    ];
    let (code, _, stderr) = cli(&wrong, &["retention", "run", "--dry-run"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not signed by a trusted CA"), "{stderr}");
    assert!(!stderr.contains("BEGIN"), "{stderr}");

    let org = support::writers::create_org(&socket, "acme-mirror").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("sink");
    let mut config = DaemonConfig::new(&daemon_url, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning");
    for (key, value) in &env {
        config = config.with(key, value);
    }
    let daemon = config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let ids = insert_events(&socket, org, 50).await;
    let written = wait_for_sink(&sink, &ids).await;
    assert_eq!(written, ids, "every event once, in order");

    // While it mirrors: every backend of the daemon (pool and listener) is on TLS.
    let more = tokio::spawn({
        let socket = socket.clone();
        async move { insert_events(&socket, org, 200).await }
    });
    let sessions = daemon_sessions(&socket, "postgres").await;
    let more = more.await.expect("writer");
    assert!(
        sessions
            .iter()
            .any(|(name, _)| name == "compartment-auditd-listener"),
        "{sessions:?}"
    );
    assert!(
        sessions
            .iter()
            .any(|(name, _)| name == "compartment-auditd"),
        "{sessions:?}"
    );
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");
    let all: Vec<i64> = ids.iter().chain(&more).copied().collect();
    assert_eq!(wait_for_sink(&sink, &all).await, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_a_tls_failure_and_recovers_without_a_restart() {
    let (pki, pg) = start_servers().await;
    pg.create_migrated_database("ready");
    let daemon_url = format!("postgres://postgres@localhost:{}/ready", pg.port);
    install_server_cert(&pki, &pg.data_dir(), "server-expired");
    pg.reload();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = DaemonConfig::new(&daemon_url, &dir.path().join("sink"), dir.path());
    for (key, value) in tls_env(&pki, &daemon_url) {
        config = config.with(key, &value);
    }
    let mut daemon = config.spawn();
    let body = support::wait_for(Duration::from_secs(20), async || {
        match daemon.get("/readyz") {
            Some((503, body)) if body.contains("has expired") => Some(body),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|| panic!("readyz never named the cause: {:?}", daemon.get("/readyz")));
    assert!(!body.contains("BEGIN"), "{body}");
    assert!(daemon.is_running());
    let logged = support::wait_for(Duration::from_secs(10), async || {
        daemon.log_text().contains("has expired").then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", daemon.log_text());

    install_server_cert(&pki, &pg.data_dir(), "server");
    pg.reload();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready after the certificate was fixed: {:?}",
        daemon.get("/readyz")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_is_used_by_the_next_reconnect() {
    let (pki, pg) = start_servers().await;
    pg.create_migrated_database("rotate");
    let socket = pg.socket_url("rotate");
    let daemon_url = format!("postgres://{PASSWORD_USER}@localhost:{}/rotate", pg.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir");
    let password_file = secrets.join("password");
    std::fs::write(&password_file, "first-secret\n").expect("write");

    let org = support::writers::create_org(&socket, "acme-rotate").await;
    let sink = dir.path().join("sink");
    let mut config = DaemonConfig::new(&daemon_url, &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with(
            "COMPARTMENT_DATABASE_PASSWORD_FILE",
            &password_file.display().to_string(),
        );
    for (key, value) in tls_env(&pki, &daemon_url) {
        config = config.with(key, &value);
    }
    let mut daemon = config.spawn();
    let pid = daemon.pid();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let first = insert_events(&socket, org, 20).await;
    assert_eq!(wait_for_sink(&sink, &first).await, first);

    // Rotate: the server's password, then the file (replaced, as a Secret update is),
    // then end every session of the daemon.
    support::writers::execute(
        &socket,
        &format!("ALTER ROLE {PASSWORD_USER} PASSWORD 'second-secret'"),
    )
    .await;
    let staged = secrets.join("password.new");
    std::fs::write(&staged, "second-secret\n").expect("write");
    std::fs::rename(&staged, &password_file).expect("rename");
    let during = insert_events(&socket, org, 10).await;
    support::writers::execute(
        &socket,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{PASSWORD_USER}'"
        ),
    )
    .await;
    let after = insert_events(&socket, org, 20).await;
    let all: Vec<i64> = first.iter().chain(&during).chain(&after).copied().collect();
    let written = wait_for_sink(&sink, &all).await;
    assert_eq!(
        written, all,
        "no event lost or repeated across the rotation"
    );
    assert!(daemon.is_running());
    assert_eq!(daemon.pid(), pid, "no restart");
    // The daemon is back on new sessions, over TLS, with the new password; the old
    // one no longer works.
    let sessions = support::wait_for(Duration::from_secs(20), async || {
        let sessions = daemon_sessions(&socket, PASSWORD_USER).await;
        (sessions.len() >= 2).then_some(sessions)
    })
    .await
    .expect("the daemon reconnected");
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");
    assert!(daemon.wait_ready(Duration::from_secs(20)).await);
    expect_err(
        try_connect(
            &format!("{daemon_url}?password=first-secret"),
            verify_full(&pki),
        )
        .await,
        "password authentication failed",
        "the old password",
    );
    assert!(
        !daemon.log_text().contains("second-secret") && !daemon.log_text().contains("first-secret"),
        "a password in the log"
    );
}

#[test]
fn a_value_and_its_file_both_set_is_a_configuration_error_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, "postgres://app:from-file@db.example/x\n").expect("write");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "hunter2\n").expect("write");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nnot really\n").expect("write");
    let url_file = url_file.display().to_string();
    let password_file = password_file.display().to_string();

    let (code, _, stderr) = cli(
        &[
            ("COMPARTMENT_DATABASE_URL", "postgres://db.example/x".into()),
            ("COMPARTMENT_DATABASE_URL_FILE", url_file.clone()),
        ],
        &["config", "check"],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("COMPARTMENT_DATABASE_URL)")
            && stderr.contains("COMPARTMENT_DATABASE_URL_FILE"),
        "{stderr}"
    );
    assert!(!stderr.contains("from-file"), "{stderr}");

    let (code, _, stderr) = cli(
        &[
            (
                "COMPARTMENT_DATABASE_URL",
                "postgres://app:inline@db.example/x".into(),
            ),
            ("COMPARTMENT_DATABASE_PASSWORD_FILE", password_file.clone()),
        ],
        &["config", "check"],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("COMPARTMENT_DATABASE_URL)")
            && stderr.contains("COMPARTMENT_DATABASE_PASSWORD_FILE"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("inline") && !stderr.contains("hunter2"),
        "{stderr}"
    );

    // One of each: valid; config check shows the paths, never the contents.
    let (code, stdout, stderr) = cli(
        &[
            ("COMPARTMENT_DATABASE_URL_FILE", url_file.clone()),
            ("COMPARTMENT_DATABASE_SSLMODE", "verify-full".into()),
            ("COMPARTMENT_DATABASE_SSLROOTCERT", ca.display().to_string()),
            ("PGSSLCERT", "/etc/pg/client.crt".into()),
        ],
        &["config", "check"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&url_file), "{stdout}");
    assert!(stdout.contains("sslmode = \"verify-full\""), "{stdout}");
    assert!(stdout.contains(&ca.display().to_string()), "{stdout}");
    assert!(stdout.contains("PGSSLCERT"), "{stdout}");
    assert!(
        !stdout.contains("from-file") && !stdout.contains("not really"),
        "{stdout}"
    );

    let (code, _, stderr) = cli(
        &[
            ("COMPARTMENT_DATABASE_URL", "postgres://db.example/x".into()),
            ("COMPARTMENT_DATABASE_SSLMODE", "verify_full".into()),
        ],
        &["config", "check"],
    );
    assert_eq!(code, 78);
    assert!(
        stderr.contains("COMPARTMENT_DATABASE_SSLMODE") && stderr.contains("verify-full"),
        "{stderr}"
    );
}
