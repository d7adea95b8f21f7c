//! `migrate`, `org`, `user`, `role` and `token`: administration of the reference schema.
//!
//! Values are taken as plain strings and validated by [`crate::db::admin`], so a bad
//! value is reported like every other failure (one line on stderr, exit status 1)
//! and never half-applied. Results go to stdout; `token create` prints the token and
//! nothing else there, so `TOKEN=$(compartment-auditd token create …)` just works.

use clap::{Args, Subcommand};
use uuid::Uuid;

use crate::config::Settings;
use crate::db::admin::{self, AuditRetention, Email, OrgSlug, Revocation, RoleName};
use crate::db::migrate;

/// `org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization (it gets the built-in `admin` role).
    Create(OrgCreateArgs),
    /// Read or change an organization's settings.
    #[command(subcommand)]
    Settings(OrgSettingsCommand),
}

/// `org create`
#[derive(Debug, Args)]
pub struct OrgCreateArgs {
    /// Slug: 1–63 lowercase letters, digits and hyphens, e.g. `acme-dev`.
    #[arg(long, value_name = "SLUG")]
    pub slug: String,
    /// Display name; defaults to the slug.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// `org settings …`
#[derive(Debug, Subcommand)]
pub enum OrgSettingsCommand {
    /// Print the organization's audit retention setting and its effective value.
    Get(OrgSettingsGetArgs),
    /// Change the organization's audit retention (recorded as an audit event).
    Set(OrgSettingsSetArgs),
}

/// `org settings get`
#[derive(Debug, Args)]
pub struct OrgSettingsGetArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
}

/// `org settings set`
#[derive(Debug, Args)]
pub struct OrgSettingsSetArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
    /// `inherit` (the install default, COMPARTMENT_AUDIT_RETENTION_DAYS), `indefinite`,
    /// or a number of days (1 or more).
    // Hyphen values allowed so that `-1` reaches validation and gets its clear error
    // instead of being read as an option.
    #[arg(
        long,
        value_name = "inherit|indefinite|DAYS",
        allow_hyphen_values = true
    )]
    pub audit_retention: String,
}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user to an organization, optionally with roles.
    Add(UserAddArgs),
}

/// `user add`
#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
    /// The user's e-mail address (unique per organization, case-insensitive).
    #[arg(long, value_name = "EMAIL")]
    pub email: String,
    /// Assign this role: `admin` (built in) or a custom role's name. Repeatable.
    #[arg(long = "role", value_name = "admin|NAME")]
    pub roles: Vec<String>,
}

/// `role …`
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create a custom role; it grants only the permissions listed.
    Create(RoleCreateArgs),
}

/// `role create`
#[derive(Debug, Args)]
pub struct RoleCreateArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
    /// The role's name (unique per organization, case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Grant this permission, e.g. `organization.audit.read`. Repeatable.
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a user; the token is printed once, only its SHA-256 is stored.
    Create(TokenCreateArgs),
    /// Revoke an API token.
    Revoke(TokenRevokeArgs),
}

/// `token create`
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The organization's slug.
    #[arg(long, value_name = "SLUG")]
    pub org: String,
    /// The e-mail address of the user the token acts as.
    #[arg(long, value_name = "EMAIL")]
    pub email: String,
    /// A label to recognise the token by.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Lifetime, e.g. `30d`, `12h`, `1h30m` (units s, m, h, d, w; at most 36500d).
    /// Default: no expiry.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
}

/// `token revoke`
#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id, as printed by `token create`.
    #[arg(long, value_name = "UUID")]
    pub id: String,
}

/// `migrate`
pub async fn migrate(settings: Settings) -> anyhow::Result<i32> {
    let pool = crate::db::pool(&settings.database).await?;
    let report = migrate::run(&pool).await?;
    for applied in &report.applied {
        println!("Applied migration {} ({}).", applied.version, applied.name);
    }
    let version = report
        .current_version
        .map_or_else(|| "none".to_owned(), |v| v.to_string());
    if report.applied.is_empty() {
        println!("Schema is up to date (version {version}).");
    } else {
        println!("Schema is at version {version}.");
    }
    if !report.unknown_versions.is_empty() {
        eprintln!(
            "compartment-auditd: warning: the database has migrations this binary does not know ({}); it is older than the schema",
            join(report.unknown_versions.iter().map(i64::to_string))
        );
    }
    Ok(0)
}

/// `org …`
pub async fn org(settings: Settings, cmd: &OrgCommand) -> anyhow::Result<i32> {
    match cmd {
        OrgCommand::Create(args) => {
            let slug: OrgSlug = args.slug.parse()?;
            let pool = crate::db::pool(&settings.database).await?;
            let org = admin::create_organization(&pool, &slug, args.name.as_deref()).await?;
            println!(
                "Created organization {} ({}) with the built-in {} role.",
                org.slug,
                org.id,
                admin::ADMIN_ROLE
            );
        }
        OrgCommand::Settings(OrgSettingsCommand::Get(args)) => {
            let pool = crate::db::pool(&settings.database).await?;
            let org = admin::organization(&pool, &args.org).await?;
            println!("organization: {}", org.slug);
            println!("audit_retention: {}", org.audit_retention);
            println!(
                "effective_retention: {}",
                describe_effective(org.audit_retention, settings.retention.days)
            );
        }
        OrgCommand::Settings(OrgSettingsCommand::Set(args)) => {
            let retention: AuditRetention = args.audit_retention.parse()?;
            let pool = crate::db::pool(&settings.database).await?;
            let change = admin::set_audit_retention(&pool, &args.org, retention).await?;
            let effective = describe_effective(change.to, settings.retention.days);
            match change.event_id {
                Some(event_id) => println!(
                    "Changed audit_retention of {} from {} to {} (effective: {effective}); recorded as audit event {event_id}.",
                    change.organization.slug, change.from, change.to
                ),
                None => println!(
                    "audit_retention of {} is already {} (effective: {effective}); nothing changed.",
                    change.organization.slug, change.to
                ),
            }
        }
    }
    Ok(0)
}

/// The effective retention in words, for `org settings`.
fn describe_effective(retention: AuditRetention, install_default_days: u32) -> String {
    match (retention, retention.effective_days(install_default_days)) {
        (_, None) => "indefinite (never cleaned up)".to_owned(),
        (AuditRetention::Inherit, Some(days)) => {
            format!("{days} days (install default, COMPARTMENT_AUDIT_RETENTION_DAYS)")
        }
        (_, Some(days)) => format!("{days} days"),
    }
}

/// `user …`
pub async fn user(settings: Settings, cmd: &UserCommand) -> anyhow::Result<i32> {
    match cmd {
        UserCommand::Add(args) => {
            let email: Email = args.email.parse()?;
            let pool = crate::db::pool(&settings.database).await?;
            let user = admin::add_user(&pool, &args.org, &email, &args.roles).await?;
            let roles = if user.roles.is_empty() {
                "no roles".to_owned()
            } else {
                format!("roles: {}", join(user.roles.iter().cloned()))
            };
            println!(
                "Added {} to {} ({}) with {roles}.",
                user.email, args.org, user.id
            );
        }
    }
    Ok(0)
}

/// `role …`
pub async fn role(settings: Settings, cmd: &RoleCommand) -> anyhow::Result<i32> {
    match cmd {
        RoleCommand::Create(args) => {
            let name: RoleName = args.name.parse()?;
            // Validated before connecting, so a typo fails fast even without a database.
            admin::validate_permissions(&args.permissions)?;
            let pool = crate::db::pool(&settings.database).await?;
            let role = admin::create_role(&pool, &args.org, &name, &args.permissions).await?;
            let permissions = if role.permissions.is_empty() {
                "no permissions".to_owned()
            } else {
                format!("permissions: {}", join(role.permissions.iter().cloned()))
            };
            println!(
                "Created role {} in {} ({}) with {permissions}.",
                role.name, args.org, role.id
            );
        }
    }
    Ok(0)
}

/// `token …`
pub async fn token(settings: Settings, cmd: &TokenCommand) -> anyhow::Result<i32> {
    match cmd {
        TokenCommand::Create(args) => {
            let expires_in = args
                .expires_in
                .as_deref()
                .map(admin::parse_expires_in)
                .transpose()?;
            let pool = crate::db::pool(&settings.database).await?;
            let token = admin::create_token(
                &pool,
                &args.org,
                &args.email,
                args.name.as_deref(),
                expires_in,
            )
            .await?;
            // The token alone on stdout (the only place it ever appears); everything
            // else on stderr.
            println!("{}", token.token.expose());
            let expiry = token.expires_at.map_or_else(
                || "never expires".to_owned(),
                |at| format!("expires {}", at.to_rfc3339()),
            );
            eprintln!(
                "Created API token {} for {} in {} ({expiry}). It is shown only once; only its SHA-256 is stored.",
                token.id, args.email, args.org
            );
        }
        TokenCommand::Revoke(args) => {
            let id: Uuid = args
                .id
                .parse()
                .map_err(|_| admin::AdminError::InvalidTokenId {
                    value: args.id.clone(),
                })?;
            let pool = crate::db::pool(&settings.database).await?;
            match admin::revoke_token(&pool, id).await? {
                Revocation::Revoked(at) => {
                    println!("Revoked API token {id} at {}.", at.to_rfc3339())
                }
                Revocation::AlreadyRevoked(at) => println!(
                    "API token {id} was already revoked at {}; nothing changed.",
                    at.to_rfc3339()
                ),
            }
        }
    }
    Ok(0)
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
