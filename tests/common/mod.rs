//! Integration-test harness: a fresh, migrated PostgreSQL database per test.
//!
//! ```ignore
//! mod common;
//! use common::{NewEvent, TestDb};
//!
//! #[tokio::test]
//! async fn something() {
//!     let db = TestDb::new().await;              // auditd_test_<random>, migrated
//!     let org = db.insert_org("acme-dev").await;
//!     let id = db.insert_event(&NewEvent::new(org, "organization.user.invited")).await;
//!     let (status, stdout, stderr) = db.cli(&["org", "settings", "get", "--org", "acme-dev"]).await;
//! }                                              // database dropped here, even on panic
//! ```
//!
//! The server comes from `COMPARTMENT_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); its role must be allowed to create
//! databases. Helpers panic with a clear message on failure: they are test code.
// Every test binary compiles this module but uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use compartment_auditd::config::Settings;
use compartment_auditd::db;
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls, Notification};
use uuid::Uuid;

/// The server used when `COMPARTMENT_TEST_DATABASE_URL` is not set.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The notification channel of the `audit_events` insert trigger.
pub const AUDIT_CHANNEL: &str = "compartment_audit_events";

/// The URL of the server the test databases are created on.
pub fn server_url() -> String {
    std::env::var("COMPARTMENT_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.into())
}

/// `url` with its database name replaced by `dbname` (URL form only:
/// `postgres://user@host:port/db?params`).
pub fn with_database(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or_else(|| {
        panic!("COMPARTMENT_TEST_DATABASE_URL must be a postgres:// URL, not a key=value string")
    });
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{dbname}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Path of the `compartment-auditd` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_compartment-auditd"))
}

/// A `compartment-auditd` command with a controlled environment: nothing inherited
/// but `PATH`, the database URL set, stdin closed.
pub fn cli_command(database_url: &str) -> Command {
    let mut command = Command::new(bin());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("COMPARTMENT_DATABASE_URL", database_url)
        .stdin(Stdio::null());
    command
}

/// Runs `compartment-auditd ARGS…` (see [`cli_command`]) to completion and returns
/// its exit status, stdout and stderr. Blocks: from async code use [`TestDb::cli`].
pub fn run_cli(database_url: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let output = cli_command(database_url)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", bin().display()));
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Connects a dedicated client (not from the pool) to `url`; its connection is
/// driven by a spawned task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the test database server: {err}"));
    tokio::spawn(async move {
        // Errors surface on the client side as a closed connection.
        let _ = connection.await;
    });
    client
}

/// A fresh database, dropped (`WITH (FORCE)`) when this value is dropped — also when
/// the test panics.
pub struct TestDb {
    pool: Pool,
    url: String,
    settings: Settings,
    // Last field: dropped after the pool has been closed.
    guard: DropDatabase,
}

impl TestDb {
    /// Creates `auditd_test_<random>` and applies the migrations.
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        db::migrate::run(&db.pool)
            .await
            .unwrap_or_else(|err| panic!("migrating {} failed: {err}", db.name()));
        db
    }

    /// Creates `auditd_test_<random>` without running the migrations.
    pub async fn empty() -> TestDb {
        let server = server_url();
        let name = format!("auditd_test_{:016x}", rand::random::<u64>());
        connect(&server)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|err| panic!("cannot create database {name}: {err}"));
        // From here on the database is dropped whatever happens.
        let guard = DropDatabase {
            server_url: server.clone(),
            name,
        };
        let url = with_database(&server, &guard.name);
        let settings = Settings::with_defaults(&url);
        let pool = db::pool(&settings.database)
            .await
            .unwrap_or_else(|err| panic!("cannot build the pool: {err}"));
        TestDb {
            pool,
            url,
            settings,
            guard,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.guard.name
    }

    /// Connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The shared pool of this database (built by `compartment_auditd::db::pool`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `Settings::with_defaults(url)`.
    pub fn settings(&self) -> Settings {
        self.settings.clone()
    }

    /// A pooled connection.
    pub async fn client(&self) -> deadpool_postgres::Object {
        self.pool
            .get()
            .await
            .unwrap_or_else(|err| panic!("cannot get a pooled connection: {err}"))
    }

    /// A dedicated connection (for transactions held open across other work).
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Runs `compartment-auditd ARGS…` against this database (see [`run_cli`]).
    ///
    /// The process is waited for on a blocking thread, so the test's runtime keeps
    /// driving its own connections meanwhile: a queued ROLLBACK or a lock holder of
    /// the test must be able to make progress while the child waits for it.
    pub async fn cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let url = self.url.clone();
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&url, &args)
        })
        .await
        .expect("the CLI runner thread panicked")
    }

    /// Inserts an organization with a plain `INSERT` (name = slug), as Compartment's
    /// API would; the trigger adds its `admin` role.
    pub async fn insert_org(&self, slug: &str) -> Uuid {
        self.client()
            .await
            .query_one(
                "INSERT INTO organizations (slug, name) VALUES ($1, $1) RETURNING id",
                &[&slug],
            )
            .await
            .unwrap_or_else(|err| panic!("cannot insert organization {slug}: {err}"))
            .get(0)
    }

    /// Inserts one audit event with a plain `INSERT` naming the fixed columns, leaving
    /// `id`, `tx` (and `occurred_at` unless set) to their defaults. Returns its id.
    pub async fn insert_event(&self, event: &NewEvent) -> i64 {
        let client = self.client().await;
        insert_event_with(&**client, event).await
    }

    /// Inserts events one statement each, in one transaction; returns their ids.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Vec<i64> {
        let mut client = self.client().await;
        let tx = client
            .transaction()
            .await
            .unwrap_or_else(|err| panic!("cannot begin: {err}"));
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            ids.push(insert_event_with(&*tx, event).await);
        }
        tx.commit()
            .await
            .unwrap_or_else(|err| panic!("cannot commit: {err}"));
        ids
    }

    /// Inserts `count` events of `event_type` at `occurred_at` in one statement
    /// (`generate_series`), for volume tests; target ids are `t1`, `t2`, ….
    pub async fn insert_generated_events(
        &self,
        organization_id: Uuid,
        event_type: &str,
        count: i64,
        occurred_at: DateTime<Utc>,
    ) -> u64 {
        self.client()
            .await
            .execute(
                "INSERT INTO audit_events
                     (organization_id, occurred_at, event_type, actor_type, actor_id, target_type, target_id)
                 SELECT $1, $2, $3, 'user', 'usr_test', 'user', 't' || n
                 FROM generate_series(1, $4::bigint) AS n",
                &[&organization_id, &occurred_at, &event_type, &count],
            )
            .await
            .unwrap_or_else(|err| panic!("cannot insert {count} events: {err}"))
    }

    /// A dedicated connection that `LISTEN`s on `channel`, driven with `poll_message`
    /// so notifications are delivered (see [`Listener`]).
    pub async fn listen(&self, channel: &str) -> Listener {
        let (client, mut connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|err| panic!("cannot connect the listener: {err}"));
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(notification)) => {
                        if sender.send(notification).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .unwrap_or_else(|err| panic!("LISTEN {channel} failed: {err}"));
        Listener {
            _client: client,
            receiver,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Let go of pooled connections first; FORCE would end them anyway.
        self.pool.close();
    }
}

/// A `LISTEN`ing connection's notifications.
pub struct Listener {
    // Kept so the session (and its LISTEN) lives as long as the listener.
    _client: tokio_postgres::Client,
    receiver: mpsc::UnboundedReceiver<Notification>,
}

impl Listener {
    /// The next notification; panics after 10 s (a bound on a hang, not a timing
    /// assumption: callers wait for a notification they caused).
    pub async fn recv(&mut self) -> Notification {
        tokio::time::timeout(Duration::from_secs(10), self.receiver.recv())
            .await
            .expect("no notification within 10 s")
            .expect("the listener connection closed")
    }

    /// Notifications received until (and without) one with payload `fence`. Send the
    /// fence after the statements under test, from the same session, so everything
    /// they caused has arrived when it does — no sleeping.
    pub async fn recv_until(&mut self, fence: &str) -> Vec<Notification> {
        let mut received = Vec::new();
        loop {
            let notification = self.recv().await;
            if notification.payload() == fence {
                return received;
            }
            received.push(notification);
        }
    }
}

/// An audit event to insert; core fields default to a succeeded user action.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `organization_id`.
    pub organization_id: Uuid,
    /// `occurred_at`; `None` leaves the column default (`now()`).
    pub occurred_at: Option<DateTime<Utc>>,
    /// `event_type`.
    pub event_type: String,
    /// `actor_type`.
    pub actor_type: String,
    /// `actor_id`.
    pub actor_id: String,
    /// `actor_email`.
    pub actor_email: Option<String>,
    /// `target_type`.
    pub target_type: Option<String>,
    /// `target_id`.
    pub target_id: Option<String>,
    /// `project_id`.
    pub project_id: Option<String>,
    /// `status`: `succeeded`, `failed` or `denied`.
    pub status: String,
    /// `metadata`.
    pub metadata: serde_json::Value,
}

impl NewEvent {
    /// An event of `event_type` by user `usr_test` (`ops@example.com`), succeeded,
    /// no target, empty metadata, occurred now.
    pub fn new(organization_id: Uuid, event_type: &str) -> NewEvent {
        NewEvent {
            organization_id,
            occurred_at: None,
            event_type: event_type.into(),
            actor_type: "user".into(),
            actor_id: "usr_test".into(),
            actor_email: Some("ops@example.com".into()),
            target_type: None,
            target_id: None,
            project_id: None,
            status: "succeeded".into(),
            metadata: serde_json::json!({}),
        }
    }

    /// Sets `occurred_at`.
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> NewEvent {
        self.occurred_at = Some(at);
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor_type: &str, actor_id: &str, email: Option<&str>) -> NewEvent {
        self.actor_type = actor_type.into();
        self.actor_id = actor_id.into();
        self.actor_email = email.map(Into::into);
        self
    }

    /// Sets the target.
    pub fn target(mut self, target_type: &str, target_id: &str) -> NewEvent {
        self.target_type = Some(target_type.into());
        self.target_id = Some(target_id.into());
        self
    }

    /// Sets `project_id`.
    pub fn project(mut self, project_id: &str) -> NewEvent {
        self.project_id = Some(project_id.into());
        self
    }

    /// Sets `status`.
    pub fn status(mut self, status: &str) -> NewEvent {
        self.status = status.into();
        self
    }

    /// Sets `metadata`.
    pub fn metadata(mut self, metadata: serde_json::Value) -> NewEvent {
        self.metadata = metadata;
        self
    }
}

/// Inserts `event` on `client` (a client or a transaction); returns its id.
pub async fn insert_event_with<C: tokio_postgres::GenericClient>(
    client: &C,
    event: &NewEvent,
) -> i64 {
    let row = match event.occurred_at {
        Some(occurred_at) => {
            client
                .query_one(
                    "INSERT INTO audit_events (organization_id, occurred_at, event_type, actor_type, actor_id,
                         actor_email, target_type, target_id, project_id, status, metadata)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                    &[
                        &event.organization_id,
                        &occurred_at,
                        &event.event_type,
                        &event.actor_type,
                        &event.actor_id,
                        &event.actor_email,
                        &event.target_type,
                        &event.target_id,
                        &event.project_id,
                        &event.status,
                        &event.metadata,
                    ],
                )
                .await
        }
        None => {
            client
                .query_one(
                    "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id,
                         actor_email, target_type, target_id, project_id, status, metadata)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                    &[
                        &event.organization_id,
                        &event.event_type,
                        &event.actor_type,
                        &event.actor_id,
                        &event.actor_email,
                        &event.target_type,
                        &event.target_id,
                        &event.project_id,
                        &event.status,
                        &event.metadata,
                    ],
                )
                .await
        }
    };
    row.unwrap_or_else(|err| panic!("cannot insert event {}: {err}", event.event_type))
        .get(0)
}

/// Drops the database when dropped. `Drop` cannot be async and may run on a runtime
/// thread (or while unwinding from a panic), so the work happens on a fresh OS thread
/// with its own small runtime, which is joined.
struct DropDatabase {
    server_url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&server_url, NoTls)
                    .await
                    .map_err(|err| err.to_string())?;
                let driver = tokio::spawn(connection);
                let result = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|err| err.to_string());
                drop(client);
                let _ = driver.await;
                result
            })
        })
        .join();
        // Never panic here: a panic while unwinding aborts the whole test binary.
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("warning: could not drop test database {}: {err}", self.name),
            Err(_) => eprintln!(
                "warning: the thread dropping test database {} panicked",
                self.name
            ),
        }
    }
}
