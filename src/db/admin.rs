//! Administration of the reference schema: organizations and their audit retention
//! setting, users, roles, API tokens — the library behind `org`, `user`, `role` and
//! `token` (SPEC §10) — plus [`token_lookup`], [`user_has_permission`] and
//! [`permitted_organizations`], which the `/v1` API authorizes with.
//!
//! Input is validated once, here at the edge ([`OrgSlug`], [`Email`], [`RoleName`],
//! [`AuditRetention`], permissions, durations), and every write that can conflict
//! relies on the database's unique constraints rather than a racy look-before-insert.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;
use crate::config::SecretString;

/// The permission that lets a user read an organization's audit log over `/v1`.
pub const PERMISSION_AUDIT_READ: &str = "organization.audit.read";

/// Every permission a role may list; anything else is rejected when a role is created.
pub const KNOWN_PERMISSIONS: &[&str] = &[PERMISSION_AUDIT_READ];

/// Name of the built-in role every organization gets (by a trigger on insert).
pub const ADMIN_ROLE: &str = "admin";

/// Prefix of every API token, so a leaked one is recognisable (secret scanners, the
/// sanitizer) and a string that is obviously not a token is refused without a query.
pub const TOKEN_PREFIX: &str = "cat_";

/// Random bytes in a token: 256 bits, far beyond guessing.
const TOKEN_RANDOM_BYTES: usize = 32;

/// `actor_id` of audit events written by the command line.
pub const CLI_ACTOR_ID: &str = "compartment-auditd-cli";

/// Event type recorded when an organization's settings change.
pub const SETTINGS_UPDATED_EVENT: &str = "organization.settings.updated";

/// Longest accepted retention in days (100 years): longer is what `indefinite` is for,
/// and `now() - days` must stay inside PostgreSQL's timestamp range.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// Longest token lifetime `--expires-in` accepts (100 years; omit it for no expiry).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(36_500 * 86_400);

/// A `last_used_at` older than this is refreshed by [`token_lookup`]; younger ones are
/// left alone so a busy client does not turn every request into a row update.
const LAST_USED_RESOLUTION: &str = "1 minute";

/// An administration failure: bad input, a conflict, something that does not exist,
/// or the database.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The organization slug is not a DNS-label-like name.
    #[error(
        "invalid organization slug {value:?}: use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit (e.g. acme-dev)"
    )]
    InvalidSlug {
        /// The rejected slug.
        value: String,
    },
    /// The organization name is empty or contains control characters.
    #[error(
        "invalid organization name {value:?}: use 1 to 200 characters, not blank, without control characters"
    )]
    InvalidName {
        /// The rejected name.
        value: String,
    },
    /// The e-mail address is not plausible.
    #[error(
        "invalid e-mail address {value:?}: expected local@domain without spaces, at most 254 characters"
    )]
    InvalidEmail {
        /// The rejected address.
        value: String,
    },
    /// The role name is empty, too long or contains control characters.
    #[error(
        "invalid role name {value:?}: use 1 to 63 characters, not blank, without control characters or surrounding spaces"
    )]
    InvalidRoleName {
        /// The rejected name.
        value: String,
    },
    /// A permission that no part of compartment-auditd knows.
    #[error("unknown permission {value:?}: known permissions are {}", KNOWN_PERMISSIONS.join(", "))]
    UnknownPermission {
        /// The rejected permission.
        value: String,
    },
    /// Not `inherit`, `indefinite` or a number of days in range.
    #[error(
        "invalid audit retention {value:?}: use inherit, indefinite, or a number of days from 1 to {MAX_RETENTION_DAYS}"
    )]
    InvalidRetention {
        /// The rejected value.
        value: String,
    },
    /// Not a positive duration like `30d`.
    #[error(
        "invalid duration {value:?}: use a number with a unit s, m, h, d or w (e.g. 30d, 12h, 1h30m), from 1s to 36500d"
    )]
    InvalidDuration {
        /// The rejected value.
        value: String,
    },
    /// Not a UUID.
    #[error(
        "invalid token id {value:?}: expected a UUID such as 7d9f4c2e-3b1a-4f7e-9c5d-2a8b6e0f1d34"
    )]
    InvalidTokenId {
        /// The rejected value.
        value: String,
    },
    /// The slug is taken.
    #[error("organization {slug:?} already exists")]
    DuplicateOrganization {
        /// The slug.
        slug: String,
    },
    /// The organization already has a user with this address (compared case-insensitively).
    #[error("organization {organization:?} already has a user with e-mail {email:?}")]
    DuplicateUser {
        /// The organization's slug.
        organization: String,
        /// The address.
        email: String,
    },
    /// The organization already has a role of this name (compared case-insensitively).
    #[error("organization {organization:?} already has a role named {name:?}")]
    DuplicateRole {
        /// The organization's slug.
        organization: String,
        /// The role name.
        name: String,
    },
    /// No organization has this slug.
    #[error("organization {slug:?} does not exist")]
    UnknownOrganization {
        /// The slug.
        slug: String,
    },
    /// The organization has no user with this address.
    #[error("organization {organization:?} has no user with e-mail {email:?}")]
    UnknownUser {
        /// The organization's slug.
        organization: String,
        /// The address.
        email: String,
    },
    /// The organization has no role of this name.
    #[error("organization {organization:?} has no role named {name:?}")]
    UnknownRole {
        /// The organization's slug.
        organization: String,
        /// The role name.
        name: String,
    },
    /// No token has this id.
    #[error("no API token has id {id}")]
    UnknownToken {
        /// The id.
        id: Uuid,
    },
    /// The operating system's random source failed (tokens are not made without it).
    #[error("cannot read the operating system's random source: {0}")]
    Random(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(err: tokio_postgres::Error) -> Self {
        AdminError::Db(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for AdminError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        AdminError::Db(err.into())
    }
}

/// Whether `err` is a unique violation of `constraint`.
fn violates(err: &tokio_postgres::Error, constraint: &str) -> bool {
    err.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && err.as_db_error().and_then(|db| db.constraint()) == Some(constraint)
}

/// A validated organization slug: 1–63 of `a-z`, `0-9`, `-`, starting and ending with a
/// letter or digit (a DNS label, so it fits in URLs, hostnames and argument lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSlug(String);

impl OrgSlug {
    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OrgSlug {
    type Err = AdminError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bytes = value.as_bytes();
        let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let valid = (1..=63).contains(&bytes.len())
            && bytes.iter().all(allowed)
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if valid {
            Ok(OrgSlug(value.to_owned()))
        } else {
            Err(AdminError::InvalidSlug {
                value: value.to_owned(),
            })
        }
    }
}

impl fmt::Display for OrgSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plausible e-mail address: `local@domain`, no whitespace or control characters,
/// at most 254 characters. Stored as given; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = AdminError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let valid = value.len() <= 254
            && !value.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(value.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if valid {
            Ok(Email(value.to_owned()))
        } else {
            Err(AdminError::InvalidEmail {
                value: value.to_owned(),
            })
        }
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated role name: 1–63 characters, no control characters, no surrounding spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoleName {
    type Err = AdminError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let valid = (1..=63).contains(&value.chars().count())
            && value.trim() == value
            && !value.chars().any(char::is_control);
        if valid {
            Ok(RoleName(value.to_owned()))
        } else {
            Err(AdminError::InvalidRoleName {
                value: value.to_owned(),
            })
        }
    }
}

/// Checks an organization display name: 1–200 characters, not blank, no control characters.
fn validate_org_name(value: &str) -> Result<(), AdminError> {
    let valid = (1..=200).contains(&value.chars().count())
        && !value.trim().is_empty()
        && !value.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(AdminError::InvalidName {
            value: value.to_owned(),
        })
    }
}

/// Checks that every permission is in [`KNOWN_PERMISSIONS`] and returns them without
/// duplicates, in the order given.
pub fn validate_permissions<S: AsRef<str>>(permissions: &[S]) -> Result<Vec<String>, AdminError> {
    let mut out: Vec<String> = Vec::with_capacity(permissions.len());
    for permission in permissions {
        let permission = permission.as_ref();
        if !KNOWN_PERMISSIONS.contains(&permission) {
            return Err(AdminError::UnknownPermission {
                value: permission.to_owned(),
            });
        }
        if !out.iter().any(|p| p == permission) {
            out.push(permission.to_owned());
        }
    }
    Ok(out)
}

/// Parses a token lifetime such as `30d`, `12h` or `1h30m`: the settings' duration
/// syntax ([`crate::config::units::parse_duration`]), whole seconds, from 1 s up to
/// [`MAX_TOKEN_LIFETIME`]. Unlike in the settings a bare number is refused:
/// `--expires-in 30` more likely means days than seconds.
pub fn parse_expires_in(value: &str) -> Result<Duration, AdminError> {
    let invalid = || AdminError::InvalidDuration {
        value: value.to_owned(),
    };
    if value.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let lifetime = crate::config::units::parse_duration(value).map_err(|_| invalid())?;
    // The expiry is computed in the database from whole seconds.
    let lifetime = Duration::from_secs(lifetime.as_secs());
    if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME {
        return Err(invalid());
    }
    Ok(lifetime)
}

/// An organization's audit retention setting (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRetention {
    /// Use the install default, `COMPARTMENT_AUDIT_RETENTION_DAYS`.
    Inherit,
    /// Keep events this many days (1 ..= [`MAX_RETENTION_DAYS`]).
    Days(u32),
    /// Never delete; retention cleanup skips the organization.
    Indefinite,
}

impl AuditRetention {
    /// Days after which events are deleted, or `None` for never.
    pub fn effective_days(self, install_default_days: u32) -> Option<u32> {
        match self {
            AuditRetention::Inherit => Some(install_default_days),
            AuditRetention::Days(days) => Some(days),
            AuditRetention::Indefinite => None,
        }
    }

    /// Reads the `organizations.audit_retention_mode` / `audit_retention_days` pair;
    /// `None` if it is inconsistent (the schema's CHECK constraints prevent that).
    pub fn from_columns(mode: &str, days: Option<i32>) -> Option<AuditRetention> {
        match (mode, days) {
            ("inherit", None) => Some(AuditRetention::Inherit),
            ("indefinite", None) => Some(AuditRetention::Indefinite),
            ("days", Some(days)) => u32::try_from(days)
                .ok()
                .filter(|days| *days >= 1)
                .map(AuditRetention::Days),
            _ => None,
        }
    }

    /// The column pair for `organizations`.
    pub fn to_columns(self) -> (&'static str, Option<i32>) {
        match self {
            AuditRetention::Inherit => ("inherit", None),
            // MAX_RETENTION_DAYS fits comfortably; saturate rather than wrap if a
            // caller built an out-of-range value by hand.
            AuditRetention::Days(days) => ("days", Some(i32::try_from(days).unwrap_or(i32::MAX))),
            AuditRetention::Indefinite => ("indefinite", None),
        }
    }

    /// The JSON form used in audit metadata: `"inherit"`, `"indefinite"` or a number of days.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            AuditRetention::Inherit => "inherit".into(),
            AuditRetention::Days(days) => days.into(),
            AuditRetention::Indefinite => "indefinite".into(),
        }
    }
}

impl FromStr for AuditRetention {
    type Err = AdminError;

    /// `inherit`, `indefinite`, or a number of days from 1 to [`MAX_RETENTION_DAYS`].
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "inherit" => Ok(AuditRetention::Inherit),
            "indefinite" => Ok(AuditRetention::Indefinite),
            _ if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => value
                .parse::<u32>()
                .ok()
                .filter(|days| (1..=MAX_RETENTION_DAYS).contains(days))
                .map(AuditRetention::Days)
                .ok_or_else(|| AdminError::InvalidRetention {
                    value: value.to_owned(),
                }),
            _ => Err(AdminError::InvalidRetention {
                value: value.to_owned(),
            }),
        }
    }
}

impl fmt::Display for AuditRetention {
    /// The command-line form: `inherit`, `indefinite` or the number of days.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditRetention::Inherit => f.write_str("inherit"),
            AuditRetention::Days(days) => write!(f, "{days}"),
            AuditRetention::Indefinite => f.write_str("indefinite"),
        }
    }
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Its id.
    pub id: Uuid,
    /// Its slug.
    pub slug: String,
    /// Its display name.
    pub name: String,
    /// Its audit retention setting.
    pub audit_retention: AuditRetention,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

const ORGANIZATION_COLUMNS: &str =
    "id, slug, name, audit_retention_mode, audit_retention_days, created_at";

impl Organization {
    fn from_row(row: &Row) -> Result<Organization, DbError> {
        let mode: String = row.try_get(3)?;
        let days: Option<i32> = row.try_get(4)?;
        let slug: String = row.try_get(1)?;
        let audit_retention = AuditRetention::from_columns(&mode, days).ok_or_else(|| {
            // Only reachable if the CHECK constraints were dropped: say so instead of
            // guessing a retention.
            DbError::Data {
                reason: format!(
                    "organization {slug:?} has an inconsistent audit retention ({mode:?}, {days:?})"
                ),
            }
        })?;
        Ok(Organization {
            id: row.try_get(0)?,
            slug,
            name: row.try_get(2)?,
            audit_retention,
            created_at: row.try_get(5)?,
        })
    }
}

/// A user of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: Uuid,
    /// Its organization.
    pub organization_id: Uuid,
    /// Its e-mail address.
    pub email: String,
    /// Names of the roles assigned when it was added.
    pub roles: Vec<String>,
}

/// A role of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Its id.
    pub id: Uuid,
    /// Its organization.
    pub organization_id: Uuid,
    /// Its name.
    pub name: String,
    /// Whether it is the built-in `admin` role.
    pub builtin: bool,
    /// The permissions it grants.
    pub permissions: Vec<String>,
}

/// A freshly created API token. The token itself exists only here: the database
/// keeps its SHA-256.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The token's id (for `token revoke`).
    pub id: Uuid,
    /// The token, to be shown once.
    pub token: SecretString,
    /// Its organization.
    pub organization_id: Uuid,
    /// The user it acts as.
    pub user_id: Uuid,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A live API token found by [`token_lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's id.
    pub id: Uuid,
    /// Its organization.
    pub organization_id: Uuid,
    /// Its organization's slug.
    pub organization_slug: String,
    /// The user it acts as.
    pub user_id: Uuid,
    /// That user's e-mail address (the actor of an export event).
    pub user_email: String,
    /// The stored SHA-256, for the caller's constant-time comparison with
    /// [`hash_token`] of the presented token.
    pub token_sha256: [u8; 32],
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The outcome of [`set_audit_retention`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionChange {
    /// The organization, with the new setting.
    pub organization: Organization,
    /// The setting before.
    pub from: AuditRetention,
    /// The setting now.
    pub to: AuditRetention,
    /// The `organization.settings.updated` event recorded, or `None` when the value
    /// was already set (nothing changed, nothing recorded).
    pub event_id: Option<i64>,
}

/// The outcome of [`revoke_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now.
    Revoked(DateTime<Utc>),
    /// It had been revoked before, at this time; nothing changed.
    AlreadyRevoked(DateTime<Utc>),
}

/// SHA-256 of a token, as stored in `api_tokens.token_sha256`.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Makes a new token: [`TOKEN_PREFIX`] and 32 bytes from the operating system's
/// CSPRNG, base64url without padding (47 characters in all).
fn generate_token() -> Result<SecretString, AdminError> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|err| AdminError::Random(err.to_string()))?;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 43);
    token.push_str(TOKEN_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
    Ok(SecretString::new(token))
}

/// Creates an organization (its built-in `admin` role comes with it). The name
/// defaults to the slug.
pub async fn create_organization(
    pool: &Pool,
    slug: &OrgSlug,
    name: Option<&str>,
) -> Result<Organization, AdminError> {
    let name = name.unwrap_or(slug.as_str());
    validate_org_name(name)?;
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO organizations (slug, name) VALUES ($1, $2) RETURNING {ORGANIZATION_COLUMNS}"
            ),
            &[&slug.as_str(), &name],
        )
        .await
        .map_err(|err| {
            if violates(&err, "organizations_slug_key") {
                AdminError::DuplicateOrganization {
                    slug: slug.to_string(),
                }
            } else {
                err.into()
            }
        })?;
    Ok(Organization::from_row(&row)?)
}

/// The organization with this slug.
pub async fn organization(pool: &Pool, slug: &str) -> Result<Organization, AdminError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {ORGANIZATION_COLUMNS} FROM organizations WHERE slug = $1"),
            &[&slug],
        )
        .await?
        .ok_or_else(|| AdminError::UnknownOrganization {
            slug: slug.to_owned(),
        })?;
    Ok(Organization::from_row(&row)?)
}

/// Sets an organization's audit retention. A change is recorded, in the same
/// transaction, as an `organization.settings.updated` event by the CLI actor with
/// `{"changed_fields":["audit_retention"],"audit_retention":{"from":…,"to":…}}`;
/// setting the current value again changes and records nothing.
pub async fn set_audit_retention(
    pool: &Pool,
    slug: &str,
    retention: AuditRetention,
) -> Result<RetentionChange, AdminError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // FOR UPDATE: two concurrent changes serialize, so each event's `from` is the
    // value the change really replaced.
    let row = tx
        .query_opt(
            &format!("SELECT {ORGANIZATION_COLUMNS} FROM organizations WHERE slug = $1 FOR UPDATE"),
            &[&slug],
        )
        .await?
        .ok_or_else(|| AdminError::UnknownOrganization {
            slug: slug.to_owned(),
        })?;
    let mut organization = Organization::from_row(&row)?;
    let from = organization.audit_retention;
    if from == retention {
        tx.commit().await?;
        return Ok(RetentionChange {
            organization,
            from,
            to: retention,
            event_id: None,
        });
    }
    let (mode, days) = retention.to_columns();
    tx.execute(
        "UPDATE organizations SET audit_retention_mode = $2, audit_retention_days = $3 WHERE id = $1",
        &[&organization.id, &mode, &days],
    )
    .await?;
    let metadata = serde_json::json!({
        "changed_fields": ["audit_retention"],
        "audit_retention": {"from": from.to_json(), "to": retention.to_json()},
    });
    let event = tx
        .query_one(
            "INSERT INTO audit_events
                 (organization_id, event_type, actor_type, actor_id, target_type, target_id, metadata)
             VALUES ($1, $2, 'system', $3, 'organization', $4, $5)
             RETURNING id",
            &[
                &organization.id,
                &SETTINGS_UPDATED_EVENT,
                &CLI_ACTOR_ID,
                &organization.id.to_string(),
                &metadata,
            ],
        )
        .await?;
    let event_id: i64 = event.try_get(0)?;
    tx.commit().await?;
    organization.audit_retention = retention;
    Ok(RetentionChange {
        organization,
        from,
        to: retention,
        event_id: Some(event_id),
    })
}

/// Adds a user to an organization and assigns it the named roles (case-insensitive;
/// `admin` is the built-in one). All or nothing: an unknown role adds no user.
pub async fn add_user<S: AsRef<str>>(
    pool: &Pool,
    org_slug: &str,
    email: &Email,
    roles: &[S],
) -> Result<User, AdminError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let organization_id: Uuid = tx
        .query_opt("SELECT id FROM organizations WHERE slug = $1", &[&org_slug])
        .await?
        .ok_or_else(|| AdminError::UnknownOrganization {
            slug: org_slug.to_owned(),
        })?
        .try_get(0)?;
    let user_id: Uuid = tx
        .query_one(
            "INSERT INTO users (organization_id, email) VALUES ($1, $2) RETURNING id",
            &[&organization_id, &email.as_str()],
        )
        .await
        .map_err(|err| {
            if violates(&err, "users_organization_email_key") {
                AdminError::DuplicateUser {
                    organization: org_slug.to_owned(),
                    email: email.to_string(),
                }
            } else {
                err.into()
            }
        })?
        .try_get(0)?;
    let mut assigned = Vec::with_capacity(roles.len());
    for role in roles {
        let role = role.as_ref();
        let row = tx
            .query_opt(
                "SELECT id, name FROM roles WHERE organization_id = $1 AND lower(name) = lower($2)",
                &[&organization_id, &role],
            )
            .await?
            .ok_or_else(|| AdminError::UnknownRole {
                organization: org_slug.to_owned(),
                name: role.to_owned(),
            })?;
        let role_id: Uuid = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        // A role named twice on the command line is assigned once.
        tx.execute(
            "INSERT INTO role_assignments (organization_id, role_id, user_id) VALUES ($1, $2, $3)
             ON CONFLICT (role_id, user_id) DO NOTHING",
            &[&organization_id, &role_id, &user_id],
        )
        .await?;
        if !assigned.contains(&name) {
            assigned.push(name);
        }
    }
    tx.commit().await?;
    Ok(User {
        id: user_id,
        organization_id,
        email: email.to_string(),
        roles: assigned,
    })
}

/// Creates a custom role. It grants exactly the permissions listed (none by default);
/// each must be in [`KNOWN_PERMISSIONS`].
pub async fn create_role<S: AsRef<str>>(
    pool: &Pool,
    org_slug: &str,
    name: &RoleName,
    permissions: &[S],
) -> Result<Role, AdminError> {
    let permissions = validate_permissions(permissions)?;
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "INSERT INTO roles (organization_id, name, permissions)
             SELECT id, $2, $3 FROM organizations WHERE slug = $1
             RETURNING id, organization_id",
            &[&org_slug, &name.as_str(), &permissions],
        )
        .await
        .map_err(|err| {
            if violates(&err, "roles_organization_name_key") {
                AdminError::DuplicateRole {
                    organization: org_slug.to_owned(),
                    name: name.as_str().to_owned(),
                }
            } else {
                err.into()
            }
        })?
        .ok_or_else(|| AdminError::UnknownOrganization {
            slug: org_slug.to_owned(),
        })?;
    Ok(Role {
        id: row.try_get(0)?,
        organization_id: row.try_get(1)?,
        name: name.as_str().to_owned(),
        builtin: false,
        permissions,
    })
}

/// Creates an API token for a user (found by e-mail, case-insensitively), optionally
/// expiring after `expires_in` (counted from the database's clock, like the check).
pub async fn create_token(
    pool: &Pool,
    org_slug: &str,
    email: &str,
    name: Option<&str>,
    expires_in: Option<Duration>,
) -> Result<NewToken, AdminError> {
    let expires_in_secs = match expires_in {
        Some(lifetime) if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME => {
            return Err(AdminError::InvalidDuration {
                value: format!("{}s", lifetime.as_secs()),
            });
        }
        // At most MAX_TOKEN_LIFETIME, so the seconds fit.
        Some(lifetime) => Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
        None => None,
    };
    let token = generate_token()?;
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT o.id, u.id
             FROM organizations o LEFT JOIN users u ON u.organization_id = o.id AND lower(u.email) = lower($2)
             WHERE o.slug = $1",
            &[&org_slug, &email],
        )
        .await?
        .ok_or_else(|| AdminError::UnknownOrganization {
            slug: org_slug.to_owned(),
        })?;
    let organization_id: Uuid = row.try_get(0)?;
    let user_id: Uuid =
        row.try_get::<_, Option<Uuid>>(1)?
            .ok_or_else(|| AdminError::UnknownUser {
                organization: org_slug.to_owned(),
                email: email.to_owned(),
            })?;
    let row = client
        .query_one(
            "INSERT INTO api_tokens (organization_id, user_id, token_sha256, name, expires_at)
             VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 second')
             RETURNING id, expires_at",
            &[
                &organization_id,
                &user_id,
                &hash_token(token.expose()).as_slice(),
                &name,
                &expires_in_secs,
            ],
        )
        .await?;
    Ok(NewToken {
        id: row.try_get(0)?,
        token,
        organization_id,
        user_id,
        expires_at: row.try_get(1)?,
    })
}

/// Revokes a token. Revoking a revoked token changes nothing and says so.
pub async fn revoke_token(pool: &Pool, id: Uuid) -> Result<Revocation, AdminError> {
    let client = pool.get().await?;
    if let Some(row) = client
        .query_opt(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
             RETURNING revoked_at",
            &[&id],
        )
        .await?
    {
        return Ok(Revocation::Revoked(row.try_get(0)?));
    }
    // A separate statement, so its snapshot includes a revocation that raced ours.
    let revoked_at: Option<DateTime<Utc>> = client
        .query_opt("SELECT revoked_at FROM api_tokens WHERE id = $1", &[&id])
        .await?
        .ok_or(AdminError::UnknownToken { id })?
        .try_get(0)?;
    revoked_at.map(Revocation::AlreadyRevoked).ok_or_else(|| {
        DbError::Data {
            reason: format!("API token {id} was neither live nor revoked"),
        }
        .into()
    })
}

/// Finds the live token (not revoked, not expired by the database's clock) whose
/// SHA-256 matches `token`, and records its use (`last_used_at`, refreshed at most
/// about once a minute). Strings without [`TOKEN_PREFIX`] are refused without a query.
///
/// The row is found through the unique index on the hash; the caller should still
/// compare [`TokenInfo::token_sha256`] with [`hash_token`]`(token)` in constant time.
pub async fn token_lookup(pool: &Pool, token: &str) -> Result<Option<TokenInfo>, DbError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let client = pool.get().await?;
    token_lookup_on(&**client, token).await
}

/// [`token_lookup`] on a connection the caller already holds (the API's session).
pub async fn token_lookup_on(
    client: &impl tokio_postgres::GenericClient,
    token: &str,
) -> Result<Option<TokenInfo>, DbError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = hash_token(token);
    let row = client
        .query_opt(
            &format!(
                "WITH live AS (
                     SELECT t.id, t.organization_id, o.slug, t.user_id, u.email, t.token_sha256,
                            t.expires_at, t.last_used_at
                     FROM api_tokens t
                     JOIN organizations o ON o.id = t.organization_id
                     JOIN users u ON u.id = t.user_id
                     WHERE t.token_sha256 = $1
                       AND t.revoked_at IS NULL
                       AND (t.expires_at IS NULL OR t.expires_at > now())
                 ), touched AS (
                     UPDATE api_tokens SET last_used_at = now()
                     FROM live
                     WHERE api_tokens.id = live.id
                       AND (live.last_used_at IS NULL
                            OR live.last_used_at < now() - interval '{LAST_USED_RESOLUTION}')
                 )
                 SELECT id, organization_id, slug, user_id, email, token_sha256, expires_at FROM live"
            ),
            &[&hash.as_slice()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.try_get(5)?;
    let token_sha256 = <[u8; 32]>::try_from(stored.as_slice()).map_err(|_| {
        // The CHECK constraint guarantees 32 bytes.
        DbError::Data {
            reason: "api_tokens.token_sha256 is not 32 bytes long".into(),
        }
    })?;
    Ok(Some(TokenInfo {
        id: row.try_get(0)?,
        organization_id: row.try_get(1)?,
        organization_slug: row.try_get(2)?,
        user_id: row.try_get(3)?,
        user_email: row.try_get(4)?,
        token_sha256,
        expires_at: row.try_get(6)?,
    }))
}

/// The organizations in which user `$1` holds permission `$2` through one of its role
/// assignments: the one permission rule of [`user_has_permission`] and
/// [`permitted_organizations`], so the two can never disagree.
const PERMITTED_ORGANIZATIONS: &str = "SELECT o.slug, o.name
     FROM role_assignments ra
     JOIN roles r ON r.id = ra.role_id
     JOIN organizations o ON o.id = ra.organization_id
     WHERE ra.user_id = $1 AND $2 = ANY (r.permissions)";

/// Whether the user holds `permission` in the organization `org_slug` through one of
/// its role assignments. A user of another organization, an unknown organization and
/// an unknown user all answer `false`.
pub async fn user_has_permission(
    pool: &Pool,
    user_id: Uuid,
    org_slug: &str,
    permission: &str,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    user_has_permission_on(&**client, user_id, org_slug, permission).await
}

/// [`user_has_permission`] on a connection the caller already holds.
pub async fn user_has_permission_on(
    client: &impl tokio_postgres::GenericClient,
    user_id: Uuid,
    org_slug: &str,
    permission: &str,
) -> Result<bool, DbError> {
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM ({PERMITTED_ORGANIZATIONS}) p WHERE p.slug = $3)"
            ),
            &[&user_id, &permission, &org_slug],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// An organization as a caller may see it: its handle and display name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrganizationName {
    /// Its slug.
    pub slug: String,
    /// Its display name.
    pub name: String,
}

/// The organizations in which the user holds `permission`, by slug. The reference
/// schema gives a user roles in its own organization only; Compartment's own schema
/// may let one user hold roles in several, and the same rule then lists them all.
pub async fn permitted_organizations(
    client: &impl tokio_postgres::GenericClient,
    user_id: Uuid,
    permission: &str,
) -> Result<Vec<OrganizationName>, DbError> {
    let rows = client
        .query(
            &format!("SELECT DISTINCT slug, name FROM ({PERMITTED_ORGANIZATIONS}) p ORDER BY slug"),
            &[&user_id, &permission],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok::<_, DbError>(OrganizationName {
                slug: row.try_get(0)?,
                name: row.try_get(1)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels() {
        for ok in ["a", "acme-dev", "0", "a1-b2", &"a".repeat(63)] {
            assert_eq!(ok.parse::<OrgSlug>().expect(ok).as_str(), ok);
        }
        for bad in [
            "",
            "Acme",
            "acme_dev",
            "-acme",
            "acme-",
            "acme dev",
            "acmé",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(bad.parse::<OrgSlug>(), Err(AdminError::InvalidSlug { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn retention_values_parse_strictly() {
        assert_eq!(
            "inherit".parse::<AuditRetention>().ok(),
            Some(AuditRetention::Inherit)
        );
        assert_eq!(
            "indefinite".parse::<AuditRetention>().ok(),
            Some(AuditRetention::Indefinite)
        );
        assert_eq!(
            "1".parse::<AuditRetention>().ok(),
            Some(AuditRetention::Days(1))
        );
        assert_eq!(
            "36500".parse::<AuditRetention>().ok(),
            Some(AuditRetention::Days(36_500))
        );
        for bad in [
            "0",
            "-1",
            "+5",
            "abc",
            "",
            "1.5",
            "36501",
            "99999999999",
            " 7",
            "Inherit",
        ] {
            let err = bad.parse::<AuditRetention>().expect_err(bad);
            assert!(
                matches!(err, AdminError::InvalidRetention { .. }),
                "{bad:?}"
            );
            assert!(err.to_string().contains("inherit, indefinite"), "{err}");
        }
    }

    #[test]
    fn retention_round_trips_through_columns_and_text() {
        for value in [
            AuditRetention::Inherit,
            AuditRetention::Days(365),
            AuditRetention::Indefinite,
        ] {
            let (mode, days) = value.to_columns();
            assert_eq!(AuditRetention::from_columns(mode, days), Some(value));
            assert_eq!(
                value.to_string().parse::<AuditRetention>().ok(),
                Some(value)
            );
        }
        assert_eq!(AuditRetention::from_columns("days", None), None);
        assert_eq!(AuditRetention::from_columns("days", Some(0)), None);
        assert_eq!(AuditRetention::from_columns("inherit", Some(3)), None);
    }

    #[test]
    fn effective_days_follow_the_setting() {
        assert_eq!(AuditRetention::Inherit.effective_days(90), Some(90));
        assert_eq!(AuditRetention::Days(7).effective_days(90), Some(7));
        assert_eq!(AuditRetention::Indefinite.effective_days(90), None);
    }

    #[test]
    fn expires_in_needs_a_unit_and_stays_in_range() {
        assert_eq!(
            parse_expires_in("30d").ok(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            parse_expires_in("12h").ok(),
            Some(Duration::from_secs(12 * 3_600))
        );
        assert_eq!(
            parse_expires_in("2w").ok(),
            Some(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(
            parse_expires_in("1h30m").ok(),
            Some(Duration::from_secs(5_400))
        );
        assert_eq!(
            parse_expires_in("1500ms").ok(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(parse_expires_in("36500d").ok(), Some(MAX_TOKEN_LIFETIME));
        for bad in [
            "",
            "30",
            "d",
            "0d",
            "500ms",
            "-1d",
            "1.5d",
            "30x",
            "36501d",
            "99999999999999999999d",
        ] {
            assert!(
                matches!(
                    parse_expires_in(bad),
                    Err(AdminError::InvalidDuration { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn emails_need_a_local_part_and_a_domain() {
        for ok in ["ops@example.com", "Ops.Team+audit@sub.example.org"] {
            assert!(ok.parse::<Email>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@",
            "o ps@example.com",
            "a@b@c",
        ] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn role_names_are_trimmed_and_bounded() {
        assert!("auditors".parse::<RoleName>().is_ok());
        assert!("Security Auditors".parse::<RoleName>().is_ok());
        for bad in [
            "",
            " ",
            " auditors",
            "auditors ",
            "a\u{7}b",
            &"r".repeat(64),
        ] {
            assert!(bad.parse::<RoleName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_known_permissions_pass_and_duplicates_fold() {
        assert_eq!(
            validate_permissions(&[PERMISSION_AUDIT_READ, PERMISSION_AUDIT_READ]).ok(),
            Some(vec![PERMISSION_AUDIT_READ.to_owned()])
        );
        let err = validate_permissions(&["organization.audit.write"]).expect_err("unknown");
        assert!(err.to_string().contains(PERMISSION_AUDIT_READ), "{err}");
    }

    #[test]
    fn tokens_are_prefixed_random_and_hash_to_32_bytes() {
        let a = generate_token().expect("OS random source");
        let b = generate_token().expect("OS random source");
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(hash_token(a.expose()), hash_token(a.expose()));
        assert_ne!(hash_token(a.expose()), hash_token(b.expose()));
        assert_eq!(format!("{a:?}"), "\"[REDACTED]\"");
    }
}
