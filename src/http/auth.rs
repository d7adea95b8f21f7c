//! Access control of the `/v1` API.
//!
//! 1. [`authenticate`]: exactly one `Authorization: Bearer <token>` header; the token
//!    is looked up by its SHA-256 ([`admin::token_lookup_on`], which refuses revoked and
//!    expired tokens by the database's clock), and the stored hash is compared with
//!    ours in constant time before the token counts. Anything else is `401` with
//!    `WWW-Authenticate: Bearer`.
//! 2. [`authorize`]: the token's user must hold `organization.audit.read` in the
//!    organization of the URL through a role assignment
//!    ([`admin::user_has_permission_on`]). Otherwise `403` — the same answer, word for
//!    word, whether the organization exists or not, so the API cannot be used to
//!    probe for organization names.
//! 3. [`readable_organizations`]: the organizations in which the token's user holds
//!    that permission, by the same rule (`GET /v1/orgs`).
//!
//! The token never reaches a log line, a metric or an error; the token id may.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::db::admin::{self, OrganizationName, PERMISSION_AUDIT_READ};
use crate::db::DbError;
use crate::http::response::{self, Body};
use crate::telemetry::api::{self as telemetry, AuthFailure};

/// Longest token looked up; real ones are 47 characters, so anything far longer is
/// refused without hashing or a query.
const MAX_TOKEN_BYTES: usize = 256;

/// The `WWW-Authenticate` challenge of a request without credentials.
const CHALLENGE: &str = "Bearer realm=\"compartment-auditd\"";

/// The challenge of a request with unusable credentials (RFC 6750 §3.1).
const CHALLENGE_INVALID: &str = "Bearer realm=\"compartment-auditd\", error=\"invalid_token\"";

/// Who is calling: a live token and its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (safe to log; the export's actor).
    pub token_id: Uuid,
    /// The user the token acts as.
    pub user_id: Uuid,
    /// That user's e-mail address.
    pub email: String,
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing credentials")]
    Missing,
    /// Not exactly one `Authorization: Bearer <token>`.
    #[error("malformed credentials")]
    Malformed,
    /// The token is unknown, expired or revoked.
    #[error("invalid token")]
    Invalid,
    /// The caller may not read this organization's audit log (or it does not exist).
    #[error("forbidden")]
    Forbidden {
        /// The token, for the log line.
        token_id: Uuid,
    },
    /// The database could not answer.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AuthError {
    /// Whether the request failed to authenticate (a `401`), which counts against its
    /// address's failure limit; a `403` or a database failure does not.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing | AuthError::Malformed | AuthError::Invalid
        )
    }

    /// The response, with the metric and log line of the refusal.
    pub fn into_response(self) -> Response<Body> {
        let unauthorized = |reason, challenge: &'static str, message: &str| {
            telemetry::auth_refused(reason, None);
            let mut response = response::error(StatusCode::UNAUTHORIZED, "unauthorized", message);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        };
        match self {
            AuthError::Missing => unauthorized(
                AuthFailure::Missing,
                CHALLENGE,
                "an API token is required: send Authorization: Bearer <token>",
            ),
            AuthError::Malformed => unauthorized(
                AuthFailure::Malformed,
                CHALLENGE_INVALID,
                "the Authorization header must be exactly one Bearer <token>",
            ),
            AuthError::Invalid => unauthorized(
                AuthFailure::Invalid,
                CHALLENGE_INVALID,
                "the API token is not valid (unknown, expired or revoked)",
            ),
            AuthError::Forbidden { token_id } => {
                telemetry::auth_refused(AuthFailure::Forbidden, Some(token_id));
                response::error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the API token does not grant organization.audit.read in this organization",
                )
            }
            AuthError::Db(err) => database_error(&err),
        }
    }
}

/// `503` for a database that cannot be reached or a query that ran out of time
/// (`timeout`), `500` for anything else; the detail
/// goes to the log (database errors never carry row values), not to the client.
pub fn database_error(err: &DbError) -> Response<Body> {
    match err {
        // `http.statement_timeout` ended the query (or a cancel did).
        _ if err.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            telemetry::request_failed("v1", err);
            response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long",
            )
        }
        DbError::Connect(_) | DbError::Pool(_) => {
            telemetry::request_failed("v1", err);
            response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is not reachable; try again later",
            )
        }
        _ => {
            telemetry::request_failed("v1", err);
            response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request failed; the daemon's log has the details",
            )
        }
    }
}

/// The bearer token of `headers`, without looking it up. A token far longer than a
/// real one is refused here too, without hashing or a query.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid);
    }
    Ok(token)
}

/// Finds the live token `token` (from [`bearer_token`]).
pub async fn authenticate(
    client: &impl tokio_postgres::GenericClient,
    token: &str,
) -> Result<Caller, AuthError> {
    let info = admin::token_lookup_on(client, token)
        .await?
        .ok_or(AuthError::Invalid)?;
    // The row was found through an index on the hash; comparing the hashes again in
    // constant time means no code path branches on a partial match of secret bytes.
    let presented = admin::hash_token(token);
    if !bool::from(info.token_sha256.ct_eq(&presented)) {
        return Err(AuthError::Invalid);
    }
    Ok(Caller {
        token_id: info.id,
        user_id: info.user_id,
        email: info.user_email,
    })
}

/// Checks that `caller` may read the audit log of the organization `org_slug`.
pub async fn authorize(
    client: &impl tokio_postgres::GenericClient,
    caller: &Caller,
    org_slug: &str,
) -> Result<(), AuthError> {
    if admin::user_has_permission_on(client, caller.user_id, org_slug, PERMISSION_AUDIT_READ)
        .await?
    {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            token_id: caller.token_id,
        })
    }
}

/// The organizations whose audit log `caller` may read (the rule of [`authorize`]).
pub async fn readable_organizations(
    client: &impl tokio_postgres::GenericClient,
    caller: &Caller,
) -> Result<Vec<OrganizationName>, AuthError> {
    Ok(admin::permitted_organizations(client, caller.user_id, PERMISSION_AUDIT_READ).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        map
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(
            bearer_token(&headers(&["Bearer cat_abc"])).ok(),
            Some("cat_abc")
        );
        assert_eq!(
            bearer_token(&headers(&["bearer  cat_abc "])).ok(),
            Some("cat_abc")
        );
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(AuthError::Missing)
        ));
        for bad in [
            &["Basic dXNlcjpwYXNz"][..],
            &["Bearer"],
            &["Bearer "],
            &["cat_abc"],
            &["Bearer a b"],
            &["Bearer cat_a", "Bearer cat_b"],
        ] {
            assert!(
                matches!(bearer_token(&headers(bad)), Err(AuthError::Malformed)),
                "{bad:?}"
            );
        }
    }
}
