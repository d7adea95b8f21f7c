//! `config check`.

use std::path::Path;

use clap::Args;

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {}

/// Validates the configuration and prints the effective settings, secrets redacted.
pub fn check(_config: Option<&Path>, _args: &CheckArgs) -> i32 {
    eprintln!("compartment-auditd: config check is not implemented yet");
    1
}
