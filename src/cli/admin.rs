//! `migrate`, `org`, `user`, `role` and `token`: administration of the reference schema.

use clap::Subcommand;

use crate::config::Settings;

/// `org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {}

/// `role …`
#[derive(Debug, Subcommand)]
pub enum RoleCommand {}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {}

/// `migrate`
pub async fn migrate(_settings: Settings) -> anyhow::Result<i32> {
    anyhow::bail!("migrate is not implemented yet")
}

/// `org …`
pub async fn org(_settings: Settings, cmd: &OrgCommand) -> anyhow::Result<i32> {
    match *cmd {}
}

/// `user …`
pub async fn user(_settings: Settings, cmd: &UserCommand) -> anyhow::Result<i32> {
    match *cmd {}
}

/// `role …`
pub async fn role(_settings: Settings, cmd: &RoleCommand) -> anyhow::Result<i32> {
    match *cmd {}
}

/// `token …`
pub async fn token(_settings: Settings, cmd: &TokenCommand) -> anyhow::Result<i32> {
    match *cmd {}
}
