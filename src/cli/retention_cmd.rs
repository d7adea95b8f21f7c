//! `retention run [--dry-run]`.

use clap::Subcommand;

use crate::config::Settings;

/// `retention …`
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {}

/// `retention …`
pub async fn retention(_settings: Settings, cmd: &RetentionCommand) -> anyhow::Result<i32> {
    match *cmd {}
}
