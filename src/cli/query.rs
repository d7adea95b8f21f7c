//! `list` and `export`: the audit-event API's list and export from the command line,
//! with the same parameters ([`crate::filters`]), sanitizer, row cap and errors.
//!
//! - A bad parameter is reported like the API's `400`, naming the flag, with exit
//!   status 2 (a usage error, as clap's own).
//! - An export over the cap (`http.export_max_rows`) prints `audit_export_too_large`
//!   and exits 1 before anything is written: no file is created, stdout stays empty.
//! - `export --output FILE` writes to a temporary file in the same directory (owner-only,
//!   `0600`, since an export is audit data), fsyncs it, records the export, and only then
//!   renames it into place; on any failure or Ctrl-C the temporary file is removed and
//!   nothing is recorded. A terminal on stderr shows progress.
//! - Each completed export records `organization.audit.export_created` with actor type
//!   `system` and actor id `compartment-auditd-cli`.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use tokio::io::AsyncWriteExt as _;

use crate::config::Settings;
use crate::db::admin::CLI_ACTOR_ID;
use crate::db::query::{self, OrgRef};
use crate::event::SanitizedEvent;
use crate::export::{self, Export, ExportActor, ExportError, ExportFormat};
use crate::filters::{ExportParams, ListParams, ParamError};
use crate::sanitize::Sanitizer;

/// Exit status of a bad parameter (a usage error, like clap's).
pub const EX_USAGE: i32 = 2;

/// Exit status of an interrupted export (128 + SIGINT).
const EX_INTERRUPTED: i32 = 130;

/// The filters shared by `list` and `export` (the API's parameters of the same names).
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only events that occurred at or after this time (RFC 3339, e.g. 2026-05-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Only events that occurred at or before this time (RFC 3339, inclusive).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Only this event type, or a prefix ending in `.*` (e.g. organization.user.*).
    #[arg(long, value_name = "TYPE")]
    pub event: Option<String>,
    /// Only events by this actor: its id or e-mail address (case-insensitive).
    #[arg(long, value_name = "ID|EMAIL")]
    pub actor: Option<String>,
    /// Only events on targets of this type (e.g. git_source).
    #[arg(long, value_name = "TYPE")]
    pub target_type: Option<String>,
    /// Only events in this project.
    #[arg(long, value_name = "ID")]
    pub project_id: Option<String>,
}

impl FilterArgs {
    /// The flags that are set, as `(parameter, value)` pairs.
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("from", &self.from),
            ("to", &self.to),
            ("event", &self.event),
            ("actor", &self.actor),
            ("target_type", &self.target_type),
            ("project_id", &self.project_id),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|value| (name, value)))
        .collect()
    }
}

/// How `list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    /// Aligned columns for people.
    Table,
    /// The API's JSON: `{"events":[…],"next_cursor":…}`.
    Json,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
    /// Which events.
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Events per page, 1 to 500 (default 100).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub limit: Option<String>,
    /// Continue after a previous page: its `next_cursor`.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
    /// `ndjson` (one JSON object per line) or `csv`.
    #[arg(long, value_name = "ndjson|csv")]
    pub format: String,
    /// Where to write: a file (replaced only once the export is complete) or `-` for stdout.
    #[arg(long, value_name = "-|FILE")]
    pub output: PathBuf,
    /// Which events.
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// Prints a parameter error the way the API would, naming the flag.
fn usage_error(err: &ParamError) -> i32 {
    eprintln!(
        "compartment-auditd: invalid_parameter: --{}: {}",
        err.parameter.replace('_', "-"),
        err.message
    );
    EX_USAGE
}

async fn resolve_org(client: &deadpool_postgres::Object, slug: &str) -> anyhow::Result<OrgRef> {
    query::organization(&***client, slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("organization {slug:?} does not exist"))
}

/// `list`
pub async fn list(settings: Settings, args: &ListArgs) -> anyhow::Result<i32> {
    let mut pairs = args.filters.pairs();
    if let Some(limit) = &args.limit {
        pairs.push(("limit", limit));
    }
    if let Some(cursor) = &args.cursor {
        pairs.push(("cursor", cursor));
    }
    let params = match ListParams::from_pairs(pairs) {
        Ok(params) => params,
        Err(err) => return Ok(usage_error(&err)),
    };
    let pool = crate::db::pool(&settings.database).await?;
    let client = pool.get().await.map_err(crate::db::DbError::from)?;
    let org = resolve_org(&client, &args.org).await?;
    let page = export::list_page(&**client, &org, &params, &Sanitizer::new()).await?;
    let mut stdout = std::io::stdout().lock();
    match args.output {
        ListOutput::Json => {
            serde_json::to_writer(&mut stdout, &page)?;
            writeln!(stdout)?;
        }
        ListOutput::Table => {
            stdout.write_all(render_table(&page.events).as_bytes())?;
            if page.events.is_empty() {
                eprintln!("No events match.");
            }
            if let Some(cursor) = &page.next_cursor {
                eprintln!("More events: add --cursor {cursor}");
            }
        }
    }
    stdout.flush()?;
    Ok(0)
}

/// Aligned columns; control characters escaped so that an event cannot drive the
/// terminal.
fn render_table(events: &[SanitizedEvent]) -> String {
    const HEADER: [&str; 8] = [
        "OCCURRED_AT",
        "ID",
        "EVENT_TYPE",
        "ACTOR",
        "TARGET",
        "PROJECT",
        "STATUS",
        "METADATA",
    ];
    let rows: Vec<[String; 8]> = events
        .iter()
        .map(|event| {
            let target = match (&event.target.kind, &event.target.id) {
                (Some(kind), Some(id)) => format!("{kind}:{id}"),
                (Some(kind), None) => kind.clone(),
                (None, Some(id)) => id.clone(),
                (None, None) => "-".to_owned(),
            };
            [
                event
                    .occurred_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event.id.to_string(),
                event.event_type.clone(),
                event
                    .actor
                    .email
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", event.actor.kind, event.actor.id)),
                target,
                event.project_id.clone().unwrap_or_else(|| "-".to_owned()),
                event.status.clone(),
                serde_json::to_string(&event.metadata).unwrap_or_default(),
            ]
            .map(|cell| printable(&cell))
        })
        .collect();
    let mut widths = HEADER.map(|title| title.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(widths).enumerate() {
            if i + 1 == HEADER.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut HEADER.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `text` with control characters escaped (`\n`, `\u{1b}` …).
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `export`
pub async fn export(settings: Settings, args: &ExportArgs) -> anyhow::Result<i32> {
    let mut pairs = args.filters.pairs();
    pairs.push(("format", &args.format));
    let params = match ExportParams::from_pairs(pairs) {
        Ok(params) => params,
        Err(err) => return Ok(usage_error(&err)),
    };
    let target = if args.output.as_os_str() == "-" {
        Target::Stdout
    } else {
        // Checked up front: the export is recorded before the rename, which would fail.
        if args.output.is_dir() {
            anyhow::bail!(
                "--output {} is a directory; name a file in it",
                args.output.display()
            );
        }
        Target::File(args.output.clone())
    };
    let pool = crate::db::pool(&settings.database).await?;
    let mut client = pool.get().await.map_err(crate::db::DbError::from)?;
    let org = resolve_org(&client, &args.org).await?;
    let max_rows = settings.http.export_max_rows;
    let run = run_export(
        &mut client,
        &org,
        &params,
        max_rows,
        &target,
        Sanitizer::new(),
    );
    // Ctrl-C drops the export: the snapshot rolls back (nothing recorded) and the
    // temporary file's guard removes it.
    let outcome = tokio::select! {
        outcome = run => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("compartment-auditd: interrupted; nothing written, nothing recorded");
            return Ok(EX_INTERRUPTED);
        }
    };
    match outcome {
        Ok((events, event_id)) => {
            let place = match &target {
                Target::Stdout => "stdout".to_owned(),
                Target::File(path) => path.display().to_string(),
            };
            eprintln!(
                "Exported {events} event{} of {} as {} to {place}; recorded as audit event {event_id}.",
                if events == 1 { "" } else { "s" },
                org.slug,
                params.format
            );
            Ok(0)
        }
        Err(RunError::Export(ExportError::TooLarge { max_rows })) => {
            eprintln!(
                "compartment-auditd: {}: {}",
                export::TOO_LARGE_CODE,
                export::too_large_message(max_rows)
            );
            Ok(1)
        }
        Err(err) => Err(err.into()),
    }
}

/// Where an export goes.
enum Target {
    Stdout,
    File(PathBuf),
}

/// Why the command-line export failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("cannot write the export to {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs one export to `target`; returns the number of events and the id of the
/// `export_created` event.
async fn run_export(
    client: &mut deadpool_postgres::Object,
    org: &OrgRef,
    params: &ExportParams,
    max_rows: u64,
    target: &Target,
    sanitizer: Sanitizer,
) -> Result<(u64, i64), RunError> {
    let actor = ExportActor {
        actor_type: "system".to_owned(),
        actor_id: CLI_ACTOR_ID.to_owned(),
        actor_email: None,
    };
    let mut export = Export::start(
        client,
        org,
        &params.filters,
        params.format,
        max_rows,
        sanitizer,
    )
    .await?;
    match target {
        Target::Stdout => {
            while let Some(chunk) = export.next_chunk().await? {
                // A pipe may block for as long as its reader likes: off the async workers.
                tokio::task::spawn_blocking(move || {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&chunk)?;
                    stdout.flush()
                })
                .await
                .map_err(|err| ExportError::Worker(err.to_string()))?
                .map_err(io_error(Path::new("stdout")))?;
            }
            let events = export.exported();
            Ok((events, export.finish(&actor).await?))
        }
        Target::File(path) => {
            let mut temp = TempFile::create(path, params.format).await?;
            let progress = std::io::stderr().is_terminal();
            let total = export.total();
            while let Some(chunk) = export.next_chunk().await? {
                temp.file
                    .write_all(&chunk)
                    .await
                    .map_err(io_error(&temp.path))?;
                if progress {
                    eprint!("\rExporting audit events: {} / {total}", export.exported());
                }
            }
            if progress {
                eprintln!();
            }
            temp.file.flush().await.map_err(io_error(&temp.path))?;
            temp.file.sync_all().await.map_err(io_error(&temp.path))?;
            let events = export.exported();
            // Recorded before the file appears: an audit trail may over-report an
            // export whose rename then fails, but never misses one that landed.
            let event_id = export.finish(&actor).await?;
            temp.persist().await?;
            Ok((events, event_id))
        }
    }
}

/// A temporary file next to the export's destination, removed unless persisted.
struct TempFile {
    file: tokio::fs::File,
    path: PathBuf,
    destination: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// `.<name>.<random>.tmp` in the destination's directory, created exclusively, `0600`.
    async fn create(destination: &Path, format: ExportFormat) -> Result<TempFile, RunError> {
        let dir = match destination.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = destination
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("export.{format}"));
        let path = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(io_error(&path))?;
        Ok(TempFile {
            file,
            path,
            destination: destination.to_path_buf(),
            persisted: false,
        })
    }

    /// Renames the file into place and makes the rename durable.
    async fn persist(mut self) -> Result<(), RunError> {
        tokio::fs::rename(&self.path, &self.destination)
            .await
            .map_err(io_error(&self.destination))?;
        self.persisted = true;
        let dir = match self.destination.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // The data is already durable; a directory that cannot be fsync'd (some
        // network file systems) leaves only the rename at risk, so warn rather than fail.
        if let Err(err) = fsync_dir(&dir).await {
            eprintln!(
                "compartment-auditd: warning: cannot fsync {}: {err}",
                dir.display()
            );
        }
        Ok(())
    }
}

async fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
    }
}
