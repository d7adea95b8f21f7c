//! What a retention run reports: its outcome, per-organization status and counts
//! ([`RunReport`], for the log line, the metrics, the CLI's table and JSON), progress
//! for displays, and [`RetentionError`]. The run itself is in the parent module.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::RetentionSettings;
use crate::db::admin::AuditRetention;
use crate::db::DbError;
use crate::telemetry::retention as telemetry;

/// Where a run is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Batches committed so far (always 0 in a dry run).
    pub batches: u32,
    /// The batch cap of the run.
    pub max_batches: u32,
    /// Rows deleted so far (a dry run: rows counted that would be deleted).
    pub rows: u64,
    /// Organizations finished (nothing left to delete, or counted in a dry run).
    pub organizations_done: usize,
    /// Organizations with a finite retention in the run.
    pub organizations_total: usize,
    /// How long the batch just committed took, `BEGIN` to `COMMIT` (zero in a dry run).
    pub batch_duration: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The run did its work (possibly stopped by the batch cap or a shutdown).
    Completed,
    /// Another runner held the retention lock; nothing was done.
    Skipped,
}

/// Where an organization stands after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrganizationStatus {
    /// Retention `indefinite`: never cleaned up.
    Indefinite,
    /// Nothing (more) that may be deleted now; rows a sink holds back may remain.
    Clean,
    /// Expired rows remain for the next run (the batch cap or a shutdown stopped this
    /// one; in a dry run: there is something to delete).
    Pending,
}

impl OrganizationStatus {
    /// A short word for tables and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OrganizationStatus::Indefinite => "skipped (indefinite)",
            OrganizationStatus::Clean => "clean",
            OrganizationStatus::Pending => "pending",
        }
    }
}

/// What a run did (or, dry, would do) for one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationReport {
    /// The organization's id.
    pub id: Uuid,
    /// Its slug.
    pub slug: String,
    /// Its setting.
    pub retention: AuditRetention,
    /// Its effective retention in days; `None` for `indefinite`.
    pub effective_days: Option<u32>,
    /// Rows with `occurred_at` before this are expired; `None` for `indefinite`
    /// (and for a retention so long that nothing can be older).
    pub cutoff: Option<DateTime<Utc>>,
    /// Where it stands after the run.
    pub status: OrganizationStatus,
    /// Rows deleted by this run (0 in a dry run).
    pub rows_deleted: u64,
    /// Dry run only: expired rows that a run may delete now (before the batch cap).
    pub rows_to_delete: Option<u64>,
    /// Expired rows a file sink has not written yet, when known: always in a dry
    /// run; in a real run for organizations finished while a sink position bounded
    /// deletion.
    pub rows_held_back: Option<u64>,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Completed or skipped.
    pub outcome: RunOutcome,
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// The time the cutoffs were computed from (microsecond precision).
    pub now: DateTime<Utc>,
    /// Wall time the run took.
    pub duration: Duration,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// Batch transactions that deleted rows.
    pub batches: u32,
    /// Database sessions that ran batches: more than one when batches ran at once
    /// (`retention.cleanup_concurrency`); 0 when nothing was deleted.
    pub sessions: usize,
    /// The batch size of the run.
    pub batch_size: u32,
    /// The batch cap of the run.
    pub max_batches: u32,
    /// The batch cap ended the run while organizations still had expired rows.
    pub stopped_at_cap: bool,
    /// A shutdown ended the run between batches.
    pub interrupted: bool,
    /// Per organization, in id order (only the `--org` one when restricted).
    pub organizations: Vec<OrganizationReport>,
    /// The sink whose published position bounded deletion at the start of the run
    /// (the lowest one), if any sink of this cluster publishes.
    pub bounding_sink: Option<String>,
    /// Sinks whose positions were ignored because they belong to another cluster.
    pub ignored_sinks: Vec<String>,
}

impl RunReport {
    pub(super) fn skipped(
        now: DateTime<Utc>,
        duration: Duration,
        settings: &RetentionSettings,
    ) -> Self {
        RunReport {
            outcome: RunOutcome::Skipped,
            dry_run: false,
            now,
            duration,
            rows_deleted: 0,
            batches: 0,
            sessions: 0,
            batch_size: settings.cleanup_batch_size,
            max_batches: settings.cleanup_max_batches,
            stopped_at_cap: false,
            interrupted: false,
            organizations: Vec::new(),
            bounding_sink: None,
            ignored_sinks: Vec::new(),
        }
    }

    /// What the metrics and logs say of this run.
    pub(super) fn summary(&self) -> telemetry::RunSummary<'_> {
        telemetry::RunSummary {
            rows_deleted: self.rows_deleted,
            rows_to_delete: self.rows_to_delete(),
            duration: self.duration,
            batches: self.batches,
            sessions: self.sessions,
            organizations_processed: self.organizations_processed(),
            organizations_skipped: self.organizations_skipped(),
            organizations_pending: self.organizations_pending(),
            held_back_rows: self.held_back_rows(),
            bounding_sink: self.bounding_sink.as_deref(),
            stopped_at_cap: self.stopped_at_cap,
            interrupted: self.interrupted,
        }
    }

    /// Organizations with a finite retention that the run considered.
    pub fn organizations_processed(&self) -> usize {
        self.organizations
            .iter()
            .filter(|org| org.status != OrganizationStatus::Indefinite)
            .count()
    }

    /// Organizations skipped because their retention is `indefinite`.
    pub fn organizations_skipped(&self) -> usize {
        self.organizations.len() - self.organizations_processed()
    }

    /// Organizations left with expired rows for the next run.
    pub fn organizations_pending(&self) -> usize {
        self.organizations
            .iter()
            .filter(|org| org.status == OrganizationStatus::Pending)
            .count()
    }

    /// Expired rows known to be held back by a sink position (see
    /// [`OrganizationReport::rows_held_back`]).
    pub fn held_back_rows(&self) -> u64 {
        self.organizations
            .iter()
            .filter_map(|org| org.rows_held_back)
            .sum()
    }

    /// Dry run: rows a run may delete now, over all organizations, before the cap.
    pub fn rows_to_delete(&self) -> u64 {
        self.organizations
            .iter()
            .filter_map(|org| org.rows_to_delete)
            .sum()
    }

    /// The most rows one run deletes: batch size × batch cap.
    pub fn row_cap(&self) -> u64 {
        u64::from(self.batch_size) * u64::from(self.max_batches)
    }
}

/// Why a run failed. Batches committed before the failure stay committed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// `--org` names no organization.
    #[error("organization {slug:?} does not exist")]
    UnknownOrganization {
        /// The slug.
        slug: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for RetentionError {
    fn from(err: tokio_postgres::Error) -> Self {
        RetentionError::Db(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for RetentionError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        RetentionError::Db(err.into())
    }
}
