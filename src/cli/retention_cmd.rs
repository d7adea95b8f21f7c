//! `retention run [--dry-run] [--org SLUG]`: `audit.retention.cleanup` on demand.
//!
//! The same job the daemon runs on its schedule, under the same lock: next to a
//! running daemon (or another replica) that is cleaning up right now it reports that
//! it skipped. Prints a table per organization and the totals on stdout; on a
//! terminal a progress line on stderr shows long runs advancing. Ctrl-C stops the run
//! after the batch in progress (each batch is committed or not at all).

use std::io::IsTerminal as _;
use std::io::Write as _;

use chrono::{SecondsFormat, Utc};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::admin::{AuditRetention, OrgSlug};
use crate::retention::{
    self, OrganizationReport, Progress, RunHooks, RunOptions, RunOutcome, RunReport,
};

/// `retention …`
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Run audit.retention.cleanup once, now: delete expired audit events per
    /// organization, in batches, up to the batch cap.
    Run(RunArgs),
}

/// `retention run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Delete nothing: show per organization the effective retention, the cutoff and
    /// how many rows would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this organization (its slug).
    #[arg(long, value_name = "SLUG")]
    pub org: Option<String>,
}

/// `retention …`
pub async fn retention(settings: Settings, cmd: &RetentionCommand) -> anyhow::Result<i32> {
    match cmd {
        RetentionCommand::Run(args) => run(settings, args).await,
    }
}

async fn run(settings: Settings, args: &RunArgs) -> anyhow::Result<i32> {
    // Validated before connecting, so a typo fails fast even without a database.
    let org: Option<OrgSlug> = args.org.as_deref().map(str::parse).transpose()?;
    let pool = crate::db::pool(&settings.database).await?;

    let stop = CancellationToken::new();
    let on_interrupt = tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        }
    });
    let terminal = std::io::stderr().is_terminal();
    let show = |progress: &Progress| draw_progress(progress, args.dry_run);
    let hooks = RunHooks {
        stop: Some(&stop),
        progress: terminal.then_some(&show as &(dyn Fn(&Progress) + Send + Sync)),
    };
    let options = RunOptions {
        dry_run: args.dry_run,
        org,
    };
    let result =
        retention::run_once_with(&pool, &settings.retention, options, Utc::now(), hooks).await;
    on_interrupt.abort();
    if terminal {
        // Clear the progress line.
        eprint!("\r\x1b[K");
    }
    let report = result?;
    print!("{}", render(&report));
    std::io::stdout().flush()?;
    Ok(0)
}

fn draw_progress(progress: &Progress, dry_run: bool) {
    if dry_run {
        eprint!(
            "\r\x1b[KCounting: {}/{} organizations, {} rows to delete",
            progress.organizations_done, progress.organizations_total, progress.rows
        );
    } else {
        eprint!(
            "\r\x1b[KDeleting: batch {}/{}, {} rows, {}/{} organizations done",
            progress.batches,
            progress.max_batches,
            progress.rows,
            progress.organizations_done,
            progress.organizations_total
        );
    }
    let _ = std::io::stderr().flush();
}

/// The command's output: a table per organization, then the totals.
pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    if report.outcome == RunOutcome::Skipped {
        out.push_str(
            "Skipped: another runner holds the retention lock (the daemon or another replica is cleaning up right now). Nothing was deleted.\n",
        );
        return out;
    }
    out.push_str(&table(report));
    out.push('\n');
    for sink in &report.ignored_sinks {
        out.push_str(&format!(
            "Ignored the position of sink {sink:?}: it was recorded for another database cluster (stale after a restore).\n"
        ));
    }
    let processed = report.organizations_processed();
    let skipped = report.organizations_skipped();
    let held_back = report.held_back_rows();
    let cap = format!(
        "{} batches × {} rows",
        report.max_batches, report.batch_size
    );
    if report.dry_run {
        let to_delete = report.rows_to_delete();
        out.push_str(&format!(
            "Dry run, nothing deleted: {} would be deleted from {} ({} skipped: indefinite).\n",
            rows(to_delete),
            organizations(
                report
                    .organizations
                    .iter()
                    .filter(|org| org.rows_to_delete.unwrap_or(0) > 0)
                    .count()
            ),
            skipped
        ));
        let row_cap = report.row_cap();
        if to_delete > row_cap {
            out.push_str(&format!(
                "One run deletes at most {} ({cap}); about {} runs are needed.\n",
                rows(row_cap),
                to_delete.div_ceil(row_cap.max(1))
            ));
        }
    } else {
        out.push_str(&format!(
            "Deleted {} in {} from {} processed ({} skipped: indefinite) in {:.2} s.\n",
            rows(report.rows_deleted),
            plural(u64::from(report.batches), "batch", "batches"),
            organizations(processed),
            skipped,
            report.duration.as_secs_f64()
        ));
        if report.stopped_at_cap {
            out.push_str(&format!(
                "Stopped at the batch cap ({cap}): {} still {} expired rows; the next run continues with them.\n",
                organizations(report.organizations_pending()),
                if report.organizations_pending() == 1 { "has" } else { "have" }
            ));
        }
        if report.interrupted {
            out.push_str("Interrupted after the last committed batch; the next run continues.\n");
        }
    }
    if held_back > 0 {
        out.push_str(&format!(
            "{} expired but held back: file sink {:?} has not written them yet; they are deleted once it has.\n",
            rows(held_back),
            report.bounding_sink.as_deref().unwrap_or_default()
        ));
    }
    out
}

fn table(report: &RunReport) -> String {
    let count_header = if report.dry_run {
        "WOULD DELETE"
    } else {
        "DELETED"
    };
    let header = [
        "ORGANIZATION",
        "RETENTION",
        "CUTOFF (UTC)",
        count_header,
        "HELD BACK",
        "STATUS",
    ];
    // By slug for people; the report itself is in id (rotation) order.
    let mut organizations: Vec<&OrganizationReport> = report.organizations.iter().collect();
    organizations.sort_by(|a, b| a.slug.cmp(&b.slug));
    let rows: Vec<[String; 6]> = organizations
        .into_iter()
        .map(|org| {
            let count = if report.dry_run {
                org.rows_to_delete
            } else if org.effective_days.is_some() {
                Some(org.rows_deleted)
            } else {
                None
            };
            [
                org.slug.clone(),
                describe_retention(org),
                org.cutoff.map_or_else(
                    || "-".to_owned(),
                    |cutoff| cutoff.to_rfc3339_opts(SecondsFormat::Secs, true),
                ),
                count.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                org.rows_held_back
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                org.status.as_str().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Counts are right-aligned; the last column is not padded.
    let line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let cell = match i {
                3 | 4 => format!("{cell:>width$}"),
                5 => (*cell).to_owned(),
                _ => format!("{cell:<width$}"),
            };
            text.push_str(&cell);
            text.push_str(if i < 5 { "  " } else { "\n" });
        }
        text
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5],
        ]));
    }
    out
}

fn describe_retention(org: &OrganizationReport) -> String {
    let days = |n: u32| plural(u64::from(n), "day", "days");
    match (org.retention, org.effective_days) {
        (AuditRetention::Indefinite, _) | (_, None) => "indefinite".to_owned(),
        (AuditRetention::Inherit, Some(n)) => format!("{} (inherit)", days(n)),
        (AuditRetention::Days(_), Some(n)) => days(n),
    }
}

fn rows(n: u64) -> String {
    plural(n, "row", "rows")
}

fn organizations(n: usize) -> String {
    plural(
        u64::try_from(n).unwrap_or(u64::MAX),
        "organization",
        "organizations",
    )
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
