//! The command line (SPEC §10): one binary, one subcommand per job.
//!
//! This module only declares the commands and dispatches; each area's handlers live
//! in their own file: [`config_cmd`], [`admin`], [`run`], [`retention_cmd`], [`query`].

pub mod admin;
pub mod config_cmd;
pub mod integrity_cmd;
pub mod query;
pub mod retention_cmd;
pub mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, Settings, EX_CONFIG};

/// Exit status for a failure that is not a configuration error.
pub const EX_FAILURE: i32 = 1;

/// compartment-auditd: the audit-log sidecar of Compartment.
#[derive(Debug, Parser)]
#[command(name = "compartment-auditd", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Default: /etc/compartment/auditd.toml when it exists.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "COMPARTMENT_AUDIT_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: mirror, retention cleanup and HTTP.
    Run,
    /// Apply the reference schema's migrations (idempotent).
    Migrate,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List audit events of an organization, newest first.
    List(query::ListArgs),
    /// Export audit events of an organization (NDJSON or CSV), oldest first.
    Export(query::ExportArgs),
    /// Organizations and their settings.
    #[command(subcommand)]
    Org(admin::OrgCommand),
    /// Users of an organization.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Roles of an organization.
    #[command(subcommand)]
    Role(admin::RoleCommand),
    /// API tokens for the /v1 API.
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// The retention cleanup job, audit.retention.cleanup.
    #[command(subcommand)]
    Retention(retention_cmd::RetentionCommand),
    /// The file sink's position.
    #[command(subcommand)]
    Sink(run::SinkCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `compartment-auditd man-page > compartment-auditd.1`.
    ManPage,
}

/// `config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings, secrets redacted.
    Check(config_cmd::CheckArgs),
}

/// Arguments shared by commands that only need the database.
#[derive(Debug, Args)]
pub struct NoArgs {}

/// Runs the command line and returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match &cli.command {
        Command::Config(ConfigCommand::Check(args)) => {
            config_cmd::check(cli.config.as_deref(), args)
        }
        Command::Sink(run::SinkCommand::Keygen(args)) => integrity_cmd::keygen(args),
        // Generated from the CLI definition; they need no settings.
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                *shell,
                &mut command,
                "compartment-auditd",
                &mut std::io::stdout(),
            );
            0
        }
        Command::ManPage => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("compartment-auditd: cannot write the man page: {err}");
                    EX_FAILURE
                }
            }
        }
        command => {
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(settings) => settings,
                Err(err) => return config_error(&err),
            };
            // Logging depends on the settings, so warnings found while loading them are
            // logged only now.
            crate::telemetry::logging::init(&settings.log);
            settings.log_warnings();
            dispatch(command, settings, cli.config.clone())
        }
    }
}

/// Prints a configuration error and returns `EX_CONFIG`.
pub fn config_error(err: &ConfigError) -> i32 {
    eprintln!("compartment-auditd: configuration error: {err}");
    EX_CONFIG
}

fn dispatch(command: &Command, settings: Settings, config_file: Option<PathBuf>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("compartment-auditd: cannot start the async runtime: {err}");
            return EX_FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Run => run::run(settings, config_file).await,
            Command::Migrate => admin::migrate(settings).await,
            Command::Config(_) | Command::Completions { .. } | Command::ManPage => {
                unreachable!("handled before loading settings")
            }
            Command::List(args) => query::list(settings, args).await,
            Command::Export(args) => query::export(settings, args).await,
            Command::Org(cmd) => admin::org(settings, cmd).await,
            Command::User(cmd) => admin::user(settings, cmd).await,
            Command::Role(cmd) => admin::role(settings, cmd).await,
            Command::Token(cmd) => admin::token(settings, cmd).await,
            Command::Retention(cmd) => retention_cmd::retention(settings, cmd).await,
            Command::Sink(cmd) => run::sink(settings, cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("compartment-auditd: {}", describe(&err));
            EX_FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many messages already
/// include their cause's text, which `{:#}` would repeat.
fn describe(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("could not write x: {source}")]
    struct Inner {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let err = anyhow::Error::new(Inner { source: io }).context("the file sink cannot start");
        assert_eq!(
            describe(&err),
            "the file sink cannot start: could not write x: No space left on device"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let err = anyhow::anyhow!("connection refused").context("cannot reach the database");
        assert_eq!(
            describe(&err),
            "cannot reach the database: connection refused"
        );
    }
}
