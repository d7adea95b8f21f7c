//! `run` (the daemon) and `sink …`.

use clap::Subcommand;

use crate::config::Settings;

/// `sink …`
#[derive(Debug, Subcommand)]
pub enum SinkCommand {}

/// `run`
pub async fn run(_settings: Settings) -> anyhow::Result<i32> {
    anyhow::bail!("run is not implemented yet")
}

/// `sink …`
pub async fn sink(_settings: Settings, cmd: &SinkCommand) -> anyhow::Result<i32> {
    match *cmd {}
}
