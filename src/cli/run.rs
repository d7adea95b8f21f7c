//! `run` (the daemon) and `sink status|rebaseline`.

use std::path::PathBuf;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::daemon;
/// The mirror owns its arguments; the CLI depends on the mirror, not the reverse.
pub use crate::mirror::admin::RebaselineArgs;

/// `sink …`
#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Show every sink position published to the database (sink id, transaction,
    /// event id, when) and the database cluster's identity. It does not read the sink
    /// directory: the position in the sink's own state file is the daemon's to keep.
    Status,
    /// Start the sink's position afresh (after the database was replaced or restored).
    Rebaseline(RebaselineArgs),
    /// Write a new Ed25519 key for the sink's integrity digests (PKCS#8 PEM, 0600) and
    /// its public key; print the public key and its key id. Needs no database.
    Keygen(super::integrity_cmd::KeygenArgs),
}

/// `run`: `config_file` is the `--config` argument, re-read on reload.
pub async fn run(settings: Settings, config_file: Option<PathBuf>) -> anyhow::Result<i32> {
    let listener = daemon::bind(&settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    let reloads = crate::reload::spawn(config_file, settings, shutdown.clone());
    daemon::run_with_reloads(reloads, listener, shutdown).await?;
    Ok(0)
}

/// First SIGTERM/SIGINT: drain and exit 0. A second one: exit at once.
async fn handle_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "Cannot install signal handlers; SIGTERM will kill the daemon without draining"
        );
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        "Received a stop signal; finishing the current batch (send it again to exit at once)"
    );
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("Received a second stop signal; exiting without draining");
    std::process::exit(1);
}

/// `sink …`
pub async fn sink(settings: Settings, cmd: &SinkCommand) -> anyhow::Result<i32> {
    match cmd {
        SinkCommand::Status => crate::mirror::admin::status(&settings).await,
        SinkCommand::Rebaseline(args) => crate::mirror::admin::rebaseline(&settings, args).await,
        SinkCommand::Keygen(_) => unreachable!("handled before loading settings"),
    }
}
