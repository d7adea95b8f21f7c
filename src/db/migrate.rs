//! Versioned migrations of the reference schema (`migrations/*.sql`, embedded in the
//! binary).
//!
//! Each pending migration is applied in its own transaction together with its row in
//! `schema_migrations(version, name, checksum, applied_at)`, so a failure leaves the
//! schema at the last complete version. Every one of those transactions first takes a
//! transaction-scoped advisory lock: two processes migrating at once apply each
//! migration exactly once and both succeed, and the lock cannot outlive the
//! transaction (pooled connections never leak it). The checksum (SHA-256 of the SQL)
//! of every applied migration is compared with the embedded one; an edited, already
//! applied migration is an error, not something to paper over.

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

use super::DbError;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, strictly increasing in [`MIGRATIONS`]; the file name's numeric prefix.
    pub version: i64,
    /// Human-readable name; the rest of the file name.
    pub name: &'static str,
    /// The SQL, run as one simple-protocol batch.
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the SQL with line endings normalised, so a checkout that turned LF
    /// into CRLF does not look like an edited migration.
    pub fn checksum(&self) -> Vec<u8> {
        Sha256::digest(self.sql.replace("\r\n", "\n").as_bytes()).to_vec()
    }
}

/// Every migration, in the order it is applied. A test checks that this list and
/// the `migrations/` directory (`<version, 4 digits>_<name>.sql`) agree.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "organizations_and_access",
        sql: include_str!("../../migrations/0001_organizations_and_access.sql"),
    },
    Migration {
        version: 2,
        name: "audit_events",
        sql: include_str!("../../migrations/0002_audit_events.sql"),
    },
    Migration {
        version: 3,
        name: "retention_state",
        sql: include_str!("../../migrations/0003_retention_state.sql"),
    },
    Migration {
        version: 4,
        name: "audit_rows_immutable",
        sql: include_str!("../../migrations/0004_audit_rows_immutable.sql"),
    },
    Migration {
        version: 5,
        name: "sink_leases",
        sql: include_str!("../../migrations/0005_sink_leases.sql"),
    },
];

/// Advisory lock key serializing migrations across processes ("cad-migr" in ASCII,
/// chosen to stay clear of other applications' keys on a shared server).
pub const MIGRATION_LOCK_KEY: i64 = 0x6361_642d_6d69_6772;

const CREATE_SCHEMA_MIGRATIONS: &str = "
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version bigint PRIMARY KEY,
        name text NOT NULL,
        checksum bytea NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON TABLE schema_migrations IS
        'Migrations of the compartment-auditd reference schema applied to this database.';
";

/// A migration recorded in `schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version.
    pub version: i64,
    /// Its name.
    pub name: String,
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations this call applied, in order; empty when the schema was up to date
    /// (or another process applied them concurrently).
    pub applied: Vec<AppliedMigration>,
    /// The newest version recorded in the database afterwards.
    pub current_version: Option<i64>,
    /// Versions recorded in the database that this binary does not know: it is older
    /// than the schema (a rollback). Not an error, but worth a warning.
    pub unknown_versions: Vec<i64>,
}

/// A migration failure.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An applied migration differs from the one embedded in this binary.
    #[error(
        "migration {version} ({name}) was applied with a different checksum than the one in this binary: \
         the applied migration has been edited since; restore the original file or repair schema_migrations by hand"
    )]
    ChecksumMismatch {
        /// Its version.
        version: i64,
        /// Its name.
        name: &'static str,
    },
    /// A migration's SQL failed; nothing of it was kept.
    #[error("migration {version} ({name}) failed: {error}")]
    Failed {
        /// Its version.
        version: i64,
        /// Its name.
        name: &'static str,
        /// The database error (its text is part of this one's, so it is not a `source`).
        error: DbError,
    },
    /// Any other database problem (connection, lock, bookkeeping).
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(err: tokio_postgres::Error) -> Self {
        MigrateError::Db(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for MigrateError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        MigrateError::Db(err.into())
    }
}

/// Applies every pending migration from [`MIGRATIONS`] on a connection of `pool`.
pub async fn run(pool: &Pool) -> Result<MigrationReport, MigrateError> {
    let mut client = pool.get().await?;
    run_on(&mut client).await
}

/// Applies every pending migration from [`MIGRATIONS`] on `client`.
pub async fn run_on(client: &mut tokio_postgres::Client) -> Result<MigrationReport, MigrateError> {
    let mut report = MigrationReport::default();
    loop {
        let tx = client.transaction().await?;
        match apply_next(&tx, &mut report).await {
            Ok(applied) => {
                tx.commit().await.map_err(|err| match applied {
                    Some(migration) => MigrateError::Failed {
                        version: migration.version,
                        name: migration.name,
                        error: err.into(),
                    },
                    None => err.into(),
                })?;
                let Some(migration) = applied else {
                    return Ok(report);
                };
                report.applied.push(AppliedMigration {
                    version: migration.version,
                    name: migration.name.to_owned(),
                });
            }
            Err(err) => {
                // Roll back now rather than on drop: dropping only queues the ROLLBACK,
                // and until it runs the advisory lock blocks every other migrator.
                // Its own failure adds nothing to `err`.
                let _ = tx.rollback().await;
                return Err(err);
            }
        }
    }
}

/// In `tx`: takes the lock, verifies what is recorded, and applies the first pending
/// migration (returned), or returns `None` when there is none. Does not commit.
async fn apply_next(
    tx: &tokio_postgres::Transaction<'_>,
    report: &mut MigrationReport,
) -> Result<Option<&'static Migration>, MigrateError> {
    // Under the lock, READ COMMITTED gives every following statement a snapshot that
    // includes whatever a concurrent migrator committed before releasing it.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    // "already exists, skipping" and similar notices would reach the log as noise on
    // every run; warnings still come through.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.batch_execute(CREATE_SCHEMA_MIGRATIONS).await?;
    let rows = tx
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i64 = row.try_get(0)?;
        let checksum: Vec<u8> = row.try_get(1)?;
        applied.push((version, checksum));
    }
    let pending = check_applied(&applied, report)?;
    report.current_version = applied.last().map(|(version, _)| *version);
    let Some(migration) = pending else {
        return Ok(None);
    };
    tx.batch_execute(migration.sql)
        .await
        .map_err(|err| MigrateError::Failed {
            version: migration.version,
            name: migration.name,
            error: err.into(),
        })?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[&migration.version, &migration.name, &migration.checksum()],
    )
    .await?;
    report.current_version = Some(migration.version);
    Ok(Some(migration))
}

/// Verifies the recorded migrations against the embedded ones and returns the first
/// one still to apply. Unknown recorded versions are noted in `report`.
fn check_applied(
    applied: &[(i64, Vec<u8>)],
    report: &mut MigrationReport,
) -> Result<Option<&'static Migration>, MigrateError> {
    report.unknown_versions.clear();
    for (version, checksum) in applied {
        match MIGRATIONS.iter().find(|m| m.version == *version) {
            Some(migration) if migration.checksum() != *checksum => {
                return Err(MigrateError::ChecksumMismatch {
                    version: migration.version,
                    name: migration.name,
                });
            }
            Some(_) => {}
            None => report.unknown_versions.push(*version),
        }
    }
    Ok(MIGRATIONS
        .iter()
        .find(|m| !applied.iter().any(|(version, _)| *version == m.version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations/ exists in the source tree")
            .map(|entry| {
                entry
                    .expect("readable directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn versions_strictly_increase() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{pair:?}");
        }
    }

    #[test]
    fn checksum_ignores_line_endings_only() {
        let lf = Migration {
            version: 1,
            name: "x",
            sql: "SELECT 1;\nSELECT 2;\n",
        };
        let crlf = Migration {
            sql: "SELECT 1;\r\nSELECT 2;\r\n",
            ..lf
        };
        let edited = Migration {
            sql: "SELECT 1;\nSELECT 3;\n",
            ..lf
        };
        assert_eq!(lf.checksum(), crlf.checksum());
        assert_ne!(lf.checksum(), edited.checksum());
        assert_eq!(lf.checksum().len(), 32);
    }

    #[test]
    fn check_applied_finds_the_first_pending_and_unknown_versions() {
        let mut report = MigrationReport::default();
        let first = &MIGRATIONS[0];
        let applied = vec![(first.version, first.checksum()), (9999, vec![0; 32])];
        let pending = check_applied(&applied, &mut report).expect("checksums match");
        assert_eq!(
            pending.map(|m| m.version),
            MIGRATIONS.get(1).map(|m| m.version)
        );
        assert_eq!(report.unknown_versions, vec![9999]);
    }

    #[test]
    fn check_applied_rejects_an_edited_migration() {
        let mut report = MigrationReport::default();
        let applied = vec![(MIGRATIONS[0].version, vec![0; 32])];
        let err = check_applied(&applied, &mut report).expect_err("checksum differs");
        assert!(matches!(
            err,
            MigrateError::ChecksumMismatch { version: 1, .. }
        ));
    }
}
