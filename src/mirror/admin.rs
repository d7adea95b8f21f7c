//! `sink status` and `sink rebaseline`: the operator's view of the mirror's position.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::{Settings, StartFrom};
use crate::db::{self, cursor};
use crate::mirror::{sha256_hex, SinkState, STATE_VERSION};
use crate::sink::{FileSink, SinkOptions, SystemClock};

/// Arguments of `sink rebaseline`.
#[derive(Debug, Args)]
pub struct RebaselineArgs {
    /// Where to start: `now` (events committed from now on) or `beginning` (every retained event).
    #[arg(long, value_name = "now|beginning", default_value = "now")]
    pub start_from: String,
    /// Confirm: the daemon must be stopped, and events may be skipped or repeated across the change.
    #[arg(long)]
    pub yes: bool,
}

/// Prints every sink position published in the database, and the cluster identity.
pub async fn status(settings: &Settings) -> anyhow::Result<i32> {
    let pool = db::pool(&settings.database).await?;
    let client = pool.get().await.map_err(db::DbError::from)?;
    let system_identifier = cursor::system_identifier(&**client).await?;
    println!("database system identifier: {system_identifier}");
    let rows = client
        .query(
            "SELECT sink_id, system_identifier, tx::text, event_id, updated_at, \
                    extract(epoch FROM now() - updated_at)::bigint \
             FROM audit_sink_positions ORDER BY sink_id",
            &[],
        )
        .await
        .context("reading published sink positions")?;
    if rows.is_empty() {
        println!("no sink has published a position");
    }
    for row in rows {
        let sink_id: String = row.get(0);
        let sysid: String = row.get(1);
        let tx: String = row.get(2);
        let id: i64 = row.get(3);
        let updated: chrono::DateTime<chrono::Utc> = row.get(4);
        let age: i64 = row.get(5);
        let note = if sysid != system_identifier {
            " (recorded against another database cluster)"
        } else {
            ""
        };
        println!(
            "sink {sink_id:?}: tx {tx}, event id {id}, published {} ({age}s ago){note}",
            updated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(0)
}

/// Starts the sink's position afresh against the connected database.
pub async fn rebaseline(settings: &Settings, args: &RebaselineArgs) -> anyhow::Result<i32> {
    let start_from = match args.start_from.as_str() {
        "now" => StartFrom::Now,
        "beginning" => StartFrom::Beginning,
        other => anyhow::bail!("--start-from {other:?} is not valid: use now or beginning"),
    };
    if !args.yes {
        anyhow::bail!(
            "rebaseline discards the sink's position; stop the daemon first, then run it again with --yes"
        );
    }
    let pool = db::pool(&settings.database).await?;
    let client = pool.get().await.map_err(db::DbError::from)?;
    let found = super::identity::current(&**client).await?;
    let system_identifier = found.system_identifier.clone();
    let position = match start_from {
        StartFrom::Now => cursor::current_horizon(&**client).await?,
        StartFrom::Beginning => cursor::Position::BEGINNING,
    };

    let options = SinkOptions::from_settings(&settings.file_sink);
    let sink_id = settings.file_sink.sink_id.clone();
    let state_system_identifier = system_identifier.clone();
    let database = found.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // Opening takes the directory lock: this fails while a daemon runs on it.
        let (mut sink, recovery) = FileSink::open(options, Arc::new(SystemClock))?;
        let state = SinkState {
            version: STATE_VERSION,
            sink_id,
            system_identifier: state_system_identifier,
            baseline: position,
            baseline_last_line_sha256: recovery.last_line.as_deref().map(sha256_hex),
            database_oid: Some(database.database_oid),
            database_name: Some(database.database_name),
            timeline: Some(database.timeline),
            // Keeps the directory's identity in its sink group.
            instance: recovery
                .state
                .as_ref()
                .and_then(|s| serde_json::from_value::<SinkState>(s.clone()).ok())
                .and_then(|s| s.instance),
        };
        sink.write_state(&serde_json::to_value(&state)?)?;
        sink.close()?;
        Ok(())
    })
    .await??;
    cursor::reset_position(
        &**client,
        &settings.file_sink.sink_id,
        &system_identifier,
        position,
    )
    .await?;
    println!(
        "The sink now starts at {position} of database {:?} (oid {}) of cluster {system_identifier}; start the daemon to resume mirroring.",
        found.database_name, found.database_oid
    );
    Ok(0)
}
