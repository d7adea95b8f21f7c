//! `config check`: validates the configuration without touching the database and
//! prints the effective settings as TOML, every key, the database password masked.
//!
//! Exit status 0 when valid, 78 (`EX_CONFIG`) with one message on stderr when not.
//! Warnings (unknown `COMPARTMENT_AUDIT_*` variables) go to stderr and do not fail it.

use std::path::Path;

use clap::Args;

use crate::config::{resolve_config_file, Settings};

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {}

/// Validates the configuration and prints the effective settings, secrets redacted.
pub fn check(config: Option<&Path>, _args: &CheckArgs) -> i32 {
    let file = match resolve_config_file(config) {
        Ok(file) => file,
        Err(err) => return super::config_error(&err),
    };
    let settings = match Settings::load(file.as_deref()) {
        Ok(settings) => settings,
        Err(err) => return super::config_error(&err),
    };
    for warning in &settings.warnings {
        eprintln!("compartment-auditd: warning: {warning}");
    }
    let source = match &file {
        Some(path) => format!("{} and the environment", path.display()),
        None => "defaults and the environment (no configuration file)".to_owned(),
    };
    print!(
        "# compartment-auditd: the configuration is valid.\n\
         # Effective settings from {source}; the database password is masked.\n\n{}",
        settings.to_toml_redacted()
    );
    0
}
