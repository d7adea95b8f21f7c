//! Support for tests that drive the real daemon binary: a private PostgreSQL server
//! (so a test may restart it without disturbing others), the daemon as a child
//! process, a minimal HTTP client, and a reader for everything in a sink directory.
#![allow(dead_code)]

pub mod capability;
pub mod chaos;
pub mod fsync_fault;
pub mod replicas;
pub mod tls;
pub mod tmpfs;
pub mod writers;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding port 0 on loopback works")
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// Private PostgreSQL

/// A PostgreSQL server of its own, in a temporary directory, on a free port.
pub struct PrivatePostgres {
    /// Data directory and socket directory live here.
    dir: tempfile::TempDir,
    /// Where it listens.
    pub port: u16,
    bin: PathBuf,
    /// Extra server options (`-c name=value`), kept across restarts.
    options: Vec<String>,
}

fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries are installed under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version is installed")
        .join("bin")
}

fn as_postgres(program: &Path) -> Command {
    // initdb and postgres refuse to run as root.
    if rustix::process::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A temporary directory the server's user owns.
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("auditd-pg-")
        .tempdir()
        .expect("creating a temporary directory");
    if rustix::process::geteuid().is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown runs");
        assert!(status.success());
    }
    dir
}

impl PrivatePostgres {
    /// Creates and starts a fresh cluster with trust authentication.
    pub fn start() -> PrivatePostgres {
        PrivatePostgres::start_with(&[])
    }

    /// Like [`Self::start`], with extra server settings (`name=value`, e.g.
    /// `wal_level=logical`), kept across restarts.
    pub fn start_with(settings: &[&str]) -> PrivatePostgres {
        PrivatePostgres::start_configured(settings, |_| {})
    }

    /// Like [`Self::start_with`], with `configure` run on the data directory after
    /// `initdb` and before the first start (to add TLS files, `pg_hba.conf` lines,
    /// `postgresql.conf` settings). What it writes is then given to the server's user.
    pub fn start_configured(settings: &[&str], configure: impl FnOnce(&Path)) -> PrivatePostgres {
        let dir = private_dir();
        let bin = pg_bin();
        let data = dir.path().join("data");
        let output = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        configure(&data);
        if rustix::process::geteuid().is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .expect("chown runs");
            assert!(status.success());
        }
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
            bin,
            options: settings.iter().map(|s| format!("-c {s}")).collect(),
        };
        pg.start_server();
        pg
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started and in recovery.
    pub fn standby_of(primary: &PrivatePostgres) -> PrivatePostgres {
        let dir = private_dir();
        let data = dir.path().join("data");
        let output = as_postgres(&primary.bin.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--no-sync",
            ])
            // An immediate checkpoint: the default (spread) one can take minutes.
            .args(["--checkpoint", "fast"])
            .args(["-p", &primary.port.to_string(), "-D"])
            .arg(&data)
            .output()
            .expect("pg_basebackup runs");
        assert!(
            output.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let standby = PrivatePostgres {
            dir,
            port: free_port(),
            bin: primary.bin.clone(),
            options: primary.options.clone(),
        };
        standby.start_server();
        standby
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        let output = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("promote")
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs SQL with `psql` on database `name` (stops at the first error) and returns
    /// its unaligned output.
    pub fn psql(&self, name: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .arg(self.url(name))
            .args(["-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data()
    }

    /// Makes the server re-read its configuration files (and TLS files).
    pub fn reload(&self) {
        let output = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.data())
            .arg("reload")
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl reload failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// URL of database `name` over the server's Unix socket (no TLS, `local` lines).
    pub fn socket_url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@/{name}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_server(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100 \
             -c max_prepared_transactions=32",
            self.port,
            self.dir.path().display()
        );
        for option in &self.options {
            options.push(' ');
            options.push_str(option);
        }
        let output = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("start")
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the server (fast mode: terminates sessions).
    pub fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }

    /// Stops the server the way a crash would (immediate mode: no shutdown
    /// checkpoint, crash recovery on the next start).
    pub fn stop_immediate(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }

    /// Starts the server again after [`Self::stop`] or [`Self::stop_immediate`].
    pub fn start_again(&self) {
        self.start_server();
    }

    /// Stops and starts the server again.
    pub fn restart(&self) {
        self.stop();
        self.start_server();
    }

    /// URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a database and migrates it with the real binary.
    pub fn create_migrated_database(&self, name: &str) -> String {
        let status = Command::new("psql")
            .arg(self.url("postgres"))
            .args(["-qAt", "-c", &format!("CREATE DATABASE {name}")])
            .status()
            .expect("psql runs");
        assert!(status.success());
        let url = self.url(name);
        let output = Command::new(bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("COMPARTMENT_DATABASE_URL", &url)
            .arg("migrate")
            .output()
            .expect("migrate runs");
        assert!(
            output.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        url
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}

// ---------------------------------------------------------------------------------
// The daemon

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_compartment-auditd"))
}

/// A running `compartment-auditd run`.
pub struct Daemon {
    child: Child,
    /// Its HTTP port.
    pub port: u16,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// Settings for starting a daemon.
#[derive(Clone)]
pub struct DaemonConfig {
    /// Database URL.
    pub database_url: String,
    /// Sink directory (enabled when set).
    pub sink_dir: Option<PathBuf>,
    /// Extra environment.
    pub env: HashMap<String, String>,
    /// Directory for logs.
    pub log_dir: PathBuf,
    /// `--config PATH`, when set.
    pub config_file: Option<PathBuf>,
}

impl DaemonConfig {
    /// A daemon on `database_url` mirroring into `sink_dir`, logs in `log_dir`.
    pub fn new(database_url: &str, sink_dir: &Path, log_dir: &Path) -> Self {
        let mut env = HashMap::new();
        // Quick timers so tests do not wait on defaults meant for production.
        env.insert("COMPARTMENT_AUDIT_MIRROR_POLL_INTERVAL".into(), "1s".into());
        env.insert(
            "COMPARTMENT_AUDIT_MIRROR_HEARTBEAT_INTERVAL".into(),
            "1s".into(),
        );
        env.insert("COMPARTMENT_AUDIT_MIRROR_MAX_BACKOFF".into(), "1s".into());
        env.insert("COMPARTMENT_DATABASE_CONNECT_TIMEOUT".into(), "2s".into());
        env.insert(
            "COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY".into(),
            "0s".into(),
        );
        DaemonConfig {
            database_url: database_url.to_string(),
            sink_dir: Some(sink_dir.to_path_buf()),
            env,
            log_dir: log_dir.to_path_buf(),
            config_file: None,
        }
    }

    /// Sets an environment variable.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Starts the daemon.
    pub fn spawn(&self) -> Daemon {
        let port = free_port();
        let log = self.log_dir.join(format!("daemon-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the daemon log");
        let mut command = Command::new(bin());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("COMPARTMENT_DATABASE_URL", &self.database_url)
            .env("COMPARTMENT_AUDIT_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .envs(&self.env);
        if let Some(file) = &self.config_file {
            command.arg("--config").arg(file);
        }
        command
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(dir) = &self.sink_dir {
            command
                .env("COMPARTMENT_AUDIT_FILE_SINK_ENABLED", "true")
                .env("COMPARTMENT_AUDIT_FILE_SINK_DIR", dir);
        }
        let child = command.spawn().expect("the daemon starts");
        Daemon { child, port, log }
    }
}

impl Daemon {
    /// `GET path` → (status, body); `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let port = self.port;
        wait_for(timeout, async || match http_get(port, "/readyz") {
            Some((200, _)) => Some(()),
            _ => None,
        })
        .await
        .is_some()
    }

    /// Waits until `/readyz` says not ready.
    pub async fn wait_not_ready(&self, timeout: Duration) -> Option<String> {
        let port = self.port;
        wait_for(timeout, async || match http_get(port, "/readyz") {
            Some((503, body)) => Some(body),
            _ => None,
        })
        .await
    }

    /// Sends SIGHUP (reload).
    pub fn hangup(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
    }

    /// The value of a metric series (`name{labels}` exactly as rendered), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.child.wait().expect("waiting for the daemon")
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its process id (for `/proc/PID/…` and `pg_stat_activity` checks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (reaps it).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET on loopback.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

// ---------------------------------------------------------------------------------
// Reading a sink directory

/// Every line in a sink directory, oldest file first: rotated `.gz`, rotated plain,
/// then the active file. Panics on a torn line or an unreadable gzip: both are bugs.
pub fn read_sink_lines(dir: &Path) -> Vec<serde_json::Value> {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("audit-")
                        && (name.ends_with(".ndjson") || name.ends_with(".ndjson.gz"))
                })
                .collect()
        })
        .unwrap_or_default();
    // Names sort in time order; a plain file and its .gz never both count (the sink
    // removes the plain one only after the .gz is complete, so prefer the .gz).
    rotated.sort();
    rotated.dedup_by(|b, a| {
        let a = a.to_string_lossy();
        let b = b.to_string_lossy();
        a.trim_end_matches(".gz") == b.trim_end_matches(".gz")
    });
    let mut files = rotated;
    files.push(dir.join("audit.ndjson"));
    let mut lines = Vec::new();
    for file in files {
        let Ok(raw) = std::fs::read(&file) else {
            continue;
        };
        let text = if file.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("{} is not valid gzip: {e}", file.display()));
            out
        } else {
            raw
        };
        if !text.is_empty() {
            assert_eq!(
                text.last(),
                Some(&b'\n'),
                "{} ends in a torn line",
                file.display()
            );
        }
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines.push(
                serde_json::from_slice(line)
                    .unwrap_or_else(|e| panic!("bad line in {}: {e}", file.display())),
            );
        }
    }
    lines
}

/// Waits until the sink directory holds exactly `n` lines; false on timeout.
pub async fn wait_for_lines(dir: &Path, n: usize, timeout: Duration) -> bool {
    wait_for(timeout, async || {
        (read_sink_ids(dir).len() == n).then_some(())
    })
    .await
    .is_some()
}

/// The ids in a sink directory, in file order.
pub fn read_sink_ids(dir: &Path) -> Vec<i64> {
    read_sink_lines(dir)
        .iter()
        .map(|l| l["id"].as_i64().expect("every line has a numeric id"))
        .collect()
}

/// Compares committed ids with the ids in a sink; returns (missing, duplicated, unexpected).
pub fn compare_ids(committed: &[i64], written: &[i64]) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for id in written {
        *counts.entry(*id).or_default() += 1;
    }
    let committed_set: std::collections::HashSet<i64> = committed.iter().copied().collect();
    let mut missing: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    let mut duplicated: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let mut unexpected: Vec<i64> = counts
        .keys()
        .copied()
        .filter(|id| !committed_set.contains(id))
        .collect();
    missing.sort();
    duplicated.sort();
    unexpected.sort();
    (missing, duplicated, unexpected)
}
