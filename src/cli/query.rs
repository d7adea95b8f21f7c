//! `list` and `export`.

use clap::Args;

use crate::config::Settings;

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {}

/// `list`
pub async fn list(_settings: Settings, _args: &ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("list is not implemented yet")
}

/// `export`
pub async fn export(_settings: Settings, _args: &ExportArgs) -> anyhow::Result<i32> {
    anyhow::bail!("export is not implemented yet")
}
