//! Databases for the benchmark: its own database on the shared server (created and
//! dropped here, nothing else touched), and a private PostgreSQL instance with
//! `wal_level=logical` for the `pg_recvlogical` comparison (the shared server is
//! never reconfigured).

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio_postgres::{Client, NoTls};

/// Connects and drives the connection on the runtime.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; an error then is expected.
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let start = url
        .find("://")
        .context("the server URL must look like postgres://user@host:port/database")?
        + 3;
    let rest = &url[start..];
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    Ok(format!("{}/{name}{query}", &url[..start + authority_len]))
}

/// A database of the benchmark's own, dropped again by [`BenchDatabase::drop_now`].
pub struct BenchDatabase {
    /// URL of the server's maintenance database (`postgres`), for CREATE/DROP.
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl BenchDatabase {
    /// Creates `name` on the server of `server_url` (dropping a leftover of a
    /// previous, interrupted run of this same benchmark first) and migrates it with
    /// the daemon binary.
    pub async fn create(server_url: &str, name: &str, bin: &Path) -> anyhow::Result<Self> {
        let admin_url = with_database(server_url, "postgres")?;
        let admin = connect(&admin_url).await?;
        // Two statements: several in one string would run as one transaction, which
        // DROP/CREATE DATABASE refuse.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping a leftover database {name}"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = with_database(server_url, name)?;
        migrate(bin, &url)?;
        Ok(BenchDatabase {
            admin_url,
            name: name.to_string(),
            url,
        })
    }

    /// Drops the database.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping database {}", self.name))
    }
}

/// Runs `compartment-auditd migrate` against `url`.
pub fn migrate(bin: &Path, url: &str) -> anyhow::Result<()> {
    let output = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("COMPARTMENT_DATABASE_URL", url)
        .env("COMPARTMENT_AUDIT_LOG_LEVEL", "warn")
        .arg("migrate")
        .stdin(Stdio::null())
        .output()
        .context("running compartment-auditd migrate")?;
    if !output.status.success() {
        bail!(
            "compartment-auditd migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A PostgreSQL instance of the benchmark's own, in a temporary directory, with
/// logical decoding enabled. Stopped (immediate) when dropped.
pub struct PrivatePostgres {
    /// Data and socket directory; owned by `postgres` when we run as root.
    dir: tempfile::TempDir,
    /// The server binaries (`initdb`, `pg_ctl`).
    bin: PathBuf,
    /// Where it listens on loopback.
    pub port: u16,
}

impl PrivatePostgres {
    /// `initdb` (trust authentication) and start with `wal_level=logical`.
    ///
    /// Durability settings stay at PostgreSQL's defaults (`fsync=on`,
    /// `synchronous_commit=on`): the live scenario measures commits as an installation
    /// would see them.
    pub fn start() -> anyhow::Result<Self> {
        PrivatePostgres::start_with_tls(None)
    }

    /// Like [`Self::start`], with `ssl = on` and `(certificate, key)` (PEM) as the
    /// server's certificate when given. Plaintext connections stay allowed (the
    /// `host` lines of `initdb`), so one instance serves both sides of a comparison.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("auditd-bench-pg-")
            .tempdir()
            .context("creating the private PostgreSQL directory")?;
        if is_root() {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()))?;
        }
        let bin = server_binaries()?;
        let data = dir.path().join("data");
        run(as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data))?;
        let port = crate::free_port()?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
             -c max_wal_senders=4 -c max_replication_slots=4 -c max_connections=50 \
             -c output_plugin_libraries=wal2json",
            dir.path().display()
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::write(data.join("server.crt"), cert)?;
            std::fs::write(data.join("server.key"), key)?;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )?;
            if is_root() {
                run(Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join("server.crt"))
                    .arg(data.join("server.key")))?;
            }
            options.push_str(" -c ssl=on");
        }
        run(as_postgres(&bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.path().join("server.log"))
            .arg("start"))?;
        Ok(PrivatePostgres { dir, bin, port })
    }

    /// URL of database `name` on this instance.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates and migrates a database.
    pub async fn create_database(&self, name: &str, bin: &Path) -> anyhow::Result<String> {
        let admin = connect(&self.url("postgres")).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .context("creating the live database")?;
        let url = self.url(name);
        migrate(bin, &url)?;
        Ok(url)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `initdb` and `postgres` refuse to run as root: run them as `postgres`.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The newest installed server version's binaries (Debian layout).
pub fn server_binaries() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .context("PostgreSQL server binaries are expected under /usr/lib/postgresql")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server version under /usr/lib/postgresql")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
