//! The `/v1` audit-event API (SPEC §9).
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/orgs/{org}/audit/events` | `{"events":[…],"next_cursor":…}`, newest first |
//! | `GET /v1/orgs/{org}/audit/export` | the events as NDJSON or CSV, oldest first, streamed |
//! | `GET /v1/orgs` | `{"organizations":[{"slug":…,"name":…}]}`: those whose audit log the token may read |
//!
//! Parameters are in [`crate::filters`]. Every request is checked in this order, and
//! the first failure answers:
//!
//! 1. route (`404`) and method (`405`, only `GET`);
//! 2. query string length, `http.max_query_bytes` (`414 query_too_long`);
//! 3. requests in flight, `http.max_in_flight_requests` (`503 overloaded`), and failed
//!    authentications of the client's address, `http.max_auth_failures`
//!    (`429 too_many_auth_failures`, see [`crate::http::auth_limit`]), both with
//!    `Retry-After` and before any database work;
//! 4. bearer token (`401 unauthorized`) and permission (`403 forbidden`, also for an
//!    organization that does not exist), see [`crate::http::auth`];
//! 5. parameters (`400 invalid_parameter`, naming the parameter);
//! 6. export only: `http.max_concurrent_exports` (`429 too_many_exports`), then the
//!    row cap `http.export_max_rows` (`422 audit_export_too_large`), decided on a
//!    count before a single byte of the export is sent.
//!
//! Database work runs on the API's own pool ([`ApiPool`]), one session per request, so
//! the API can never take the mirror's connections; a request that is abandoned
//! mid-way (timeout, client gone) has its query cancelled on the server.
//!
//! An export runs in its own task, which holds one of the export permits, the
//! request's session and the snapshot transaction, and feeds the response body through a
//! small channel (so memory is bounded by a few chunks, whatever the export's size).
//! It must finish within `http.request_timeout` of the request's arrival; otherwise,
//! or if the database fails mid-way, the connection is cut before the end of the body
//! so that the client cannot mistake a partial export for a complete one. Once the
//! body has handed its last chunk to the connection, the export is recorded as
//! `organization.audit.export_created` (actor type `api_token`, actor id the token's
//! id, actor e-mail the token's user) and only then is the body ended; an export the
//! client abandons is not recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::net::IpAddr;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::HttpSettings;
use crate::db::api_session::{ApiPool, ApiSession};
use crate::db::query::{self, OrgRef};
use crate::export::{self, Export, ExportActor, ExportError, ExportFormat, ListPage};
use crate::filters::{self, ExportParams, Filters, ListParams, ParamError};
use crate::http::auth::{self, AuthError, Caller};
use crate::http::auth_limit::AuthLimiter;
use crate::http::response::{self, Body, BodyError};
use crate::sanitize::Sanitizer;
use crate::telemetry::api as telemetry;

/// Encoded chunks buffered between an export task and its response body; with
/// [`export::PAGE_ROWS`] events per chunk this bounds an export's memory.
const BUFFERED_CHUNKS: usize = 2;

/// Seconds a client refused for the concurrent export limit is told to wait.
const BUSY_RETRY_AFTER_SECS: &str = "5";

/// Seconds a client refused for the in-flight request limit is told to wait.
const OVERLOADED_RETRY_AFTER_SECS: &str = "1";

/// The address a request came from, put into its extensions by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// `actor_type` of exports made over HTTP.
pub const EXPORT_ACTOR_TYPE: &str = "api_token";

/// What the API needs: the database, the sink's sanitizer, the export permits and
/// the request limits.
#[derive(Debug)]
pub struct Api {
    /// The API's own connections, never the mirror's.
    pool: ApiPool,
    /// One permit per `/v1` request handled at a time (`http.max_in_flight_requests`).
    in_flight: Arc<Semaphore>,
    /// Failed authentications per client address (`http.max_auth_failures`).
    auth_limit: AuthLimiter,
    /// The same sanitizer as the file sink, so no surface shows more than the sink.
    sanitizer: Sanitizer,
    /// One permit per export streamed at a time (`http.max_concurrent_exports`).
    exports: Arc<Semaphore>,
    /// Row cap, query limit, request timeout.
    settings: HttpSettings,
}

impl Api {
    /// The API over `pool`, sanitizing with `sanitizer`, bounded by `settings`.
    pub fn new(pool: ApiPool, sanitizer: Sanitizer, settings: &HttpSettings) -> Api {
        Api {
            pool,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight_requests.max(1))),
            auth_limit: AuthLimiter::new(settings.max_auth_failures),
            sanitizer,
            exports: Arc::new(Semaphore::new(settings.max_concurrent_exports.max(1))),
            settings: settings.clone(),
        }
    }
}

/// Whether `path` belongs to the API (everything under `/v1`).
pub fn is_api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Events,
    Export,
    /// `GET /v1/orgs`: no organization in the path.
    Orgs,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Events => "events",
            Endpoint::Export => "export",
            Endpoint::Orgs => "orgs",
        }
    }
}

/// `/v1/orgs/{org}/audit/{events|export}` → the organization and the endpoint;
/// `/v1/orgs` → an empty organization and [`Endpoint::Orgs`].
fn parse_path(path: &str) -> Option<(&str, Endpoint)> {
    if path == "/v1/orgs" {
        return Some(("", Endpoint::Orgs));
    }
    let rest = path.strip_prefix("/v1/orgs/")?;
    let (org, endpoint) = rest.split_once('/')?;
    let endpoint = match endpoint {
        "audit/events" => Endpoint::Events,
        "audit/export" => Endpoint::Export,
        _ => return None,
    };
    (!org.is_empty()).then_some((org, endpoint))
}

/// Answers one `/v1` request.
pub async fn handle<B>(api: &Api, request: Request<B>) -> Response<Body> {
    // The export must end within the request timeout counted from here.
    let deadline = Instant::now() + api.settings.request_timeout;
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.0);
    let (parts, _body) = request.into_parts();
    let Some((org, endpoint)) = parse_path(parts.uri.path()) else {
        telemetry::request("other", 404);
        return response::error(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    let response = if parts.method != Method::GET {
        let mut response = response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is allowed on this route",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        response
    } else if parts.uri.query().map_or(0, str::len) > api.settings.max_query_bytes {
        response::error(
            StatusCode::URI_TOO_LONG,
            "query_too_long",
            &format!(
                "the query string is longer than {} bytes",
                api.settings.max_query_bytes
            ),
        )
    } else {
        let request = ApiRequest {
            org,
            endpoint,
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            client,
            deadline,
        };
        answer(api, request).await
    };
    telemetry::request(endpoint.label(), response.status().as_u16());
    no_store(response)
}

/// A `/v1` request that passed the route, method and query length checks.
struct ApiRequest<'a> {
    org: &'a str,
    endpoint: Endpoint,
    query: &'a str,
    headers: &'a hyper::HeaderMap,
    client: IpAddr,
    deadline: Instant,
}

/// The limits, then authentication and the endpoint, on one session of the API pool.
async fn answer(api: &Api, request: ApiRequest<'_>) -> Response<Body> {
    let Ok(in_flight) = api.in_flight.clone().try_acquire_owned() else {
        telemetry::overloaded();
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &format!(
                "{} API requests are already being handled; try again shortly",
                api.settings.max_in_flight_requests
            ),
            OVERLOADED_RETRY_AFTER_SECS,
        );
    };
    if let Err(wait) = api
        .auth_limit
        .check(request.client, std::time::Instant::now())
    {
        telemetry::rate_limited(request.client);
        return retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            "too many requests from this address failed to authenticate; try again later",
            &wait.as_secs().to_string(),
        );
    }
    let refused = |err: AuthError| {
        if err.is_unauthenticated() {
            api.auth_limit
                .charge(request.client, std::time::Instant::now());
        }
        err.into_response()
    };
    let token = match auth::bearer_token(request.headers) {
        Ok(token) => token,
        Err(err) => return refused(err),
    };
    let session = match api.pool.get().await {
        Ok(session) => session,
        Err(err) => return auth::database_error(&err),
    };
    if request.endpoint == Endpoint::Orgs {
        let response = match auth::authenticate(session.client(), token).await {
            Ok(caller) => organizations(&session, &caller, request.query).await,
            Err(err) => {
                session.release();
                return refused(err);
            }
        };
        session.release();
        return response;
    }
    let caller = match authorized(&session, token, request.org).await {
        Ok(caller) => caller,
        Err(err) => {
            session.release();
            return refused(err);
        }
    };
    match request.endpoint {
        Endpoint::Events => {
            let response = list(api, &session, request.org, request.query).await;
            session.release();
            response
        }
        Endpoint::Export => {
            let export = ExportRequest {
                org: request.org,
                query: request.query,
                caller,
                deadline: request.deadline,
            };
            self::export(api, session, in_flight, export).await
        }
        Endpoint::Orgs => unreachable!("answered above"),
    }
}

/// `GET /v1/orgs`: the organizations whose audit log the caller may read, by slug. An
/// empty list (not `403`) for a token that may read none: the token itself is valid.
async fn organizations(session: &ApiSession, caller: &Caller, query: &str) -> Response<Body> {
    match auth::readable_organizations(session.client(), caller).await {
        Err(err) => err.into_response(),
        Ok(_) if !query.is_empty() => match filters::decode_query(query) {
            Err(err) => invalid_parameter(&err),
            Ok(pairs) => response::parameter_error(
                "invalid_parameter",
                "GET /v1/orgs takes no parameters",
                pairs.first().map_or("", |(name, _)| name.as_str()),
            ),
        },
        Ok(organizations) => response::json(
            StatusCode::OK,
            &serde_json::json!({ "organizations": organizations }),
        ),
    }
}

async fn authorized(session: &ApiSession, token: &str, org: &str) -> Result<Caller, AuthError> {
    let caller = auth::authenticate(session.client(), token).await?;
    auth::authorize(session.client(), &caller, org).await?;
    Ok(caller)
}

/// A refusal the client may retry after `retry_after` seconds.
fn retry_later(status: StatusCode, code: &str, message: &str, retry_after: &str) -> Response<Body> {
    let mut response = response::error(status, code, message);
    if let Ok(value) = HeaderValue::from_str(retry_after) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Audit data must not linger in shared caches, and must not be sniffed into HTML.
fn no_store(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn invalid_parameter(err: &ParamError) -> Response<Body> {
    response::parameter_error("invalid_parameter", &err.message, &err.parameter)
}

/// `403`, for an organization that vanished between the permission check and the
/// query: the same answer as for one the caller may not read.
fn forbidden() -> Response<Body> {
    response::error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the API token does not grant organization.audit.read in this organization",
    )
}

/// `500` for a failure that is neither the client's nor the database's.
fn internal_error(route: &'static str, err: &ExportError) -> Response<Body> {
    telemetry::request_failed(route, err);
    response::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the request failed; the daemon's log has the details",
    )
}

async fn list(api: &Api, session: &ApiSession, org: &str, query: &str) -> Response<Body> {
    let params = match ListParams::from_query(query) {
        Ok(params) => params,
        Err(err) => return invalid_parameter(&err),
    };
    match list_page(api, session, org, &params).await {
        Ok(Some(page)) => response::json(StatusCode::OK, &page),
        Ok(None) => forbidden(),
        Err(ExportError::Db(err)) => auth::database_error(&err),
        Err(err) => internal_error("events", &err),
    }
}

/// One page, sanitized; `None` if the organization does not exist.
async fn list_page(
    api: &Api,
    session: &ApiSession,
    org: &str,
    params: &ListParams,
) -> Result<Option<ListPage>, ExportError> {
    let client = session.client();
    let Some(org) = query::organization(client, org).await? else {
        return Ok(None);
    };
    Ok(Some(
        export::list_page(client, &org, params, &api.sanitizer).await?,
    ))
}

/// Everything an export task needs, owned.
struct ExportJob {
    sanitizer: Sanitizer,
    org: String,
    filters: Filters,
    format: ExportFormat,
    max_rows: u64,
    actor: ExportActor,
    deadline: Instant,
}

/// An authorized export request.
struct ExportRequest<'a> {
    org: &'a str,
    query: &'a str,
    caller: Caller,
    deadline: Instant,
}

async fn export(
    api: &Api,
    session: ApiSession,
    in_flight: OwnedSemaphorePermit,
    request: ExportRequest<'_>,
) -> Response<Body> {
    let ExportRequest {
        org,
        query,
        caller,
        deadline,
    } = request;
    let params = match ExportParams::from_query(query) {
        Ok(params) => params,
        Err(err) => {
            session.release();
            return invalid_parameter(&err);
        }
    };
    let format = params.format;
    let Ok(permit) = api.exports.clone().try_acquire_owned() else {
        telemetry::export_busy(format.as_str());
        session.release();
        return retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_exports",
            &format!(
                "{} exports are already running; try again shortly",
                api.settings.max_concurrent_exports
            ),
            BUSY_RETRY_AFTER_SECS,
        );
    };
    let job = ExportJob {
        sanitizer: api.sanitizer.clone(),
        org: org.to_owned(),
        filters: params.filters,
        format,
        max_rows: api.settings.export_max_rows,
        actor: ExportActor {
            actor_type: EXPORT_ACTOR_TYPE.to_owned(),
            actor_id: caller.token_id.to_string(),
            actor_email: Some(caller.email),
        },
        deadline,
    };
    let (started_tx, started_rx) = oneshot::channel();
    let (chunks_tx, chunks_rx) = mpsc::channel(BUFFERED_CHUNKS);
    let permits = (permit, in_flight);
    tokio::spawn(run_export(job, session, permits, started_tx, chunks_tx));
    match started_rx.await {
        Ok(Ok(total)) => {
            let body = ExportBody {
                chunks: chunks_rx,
                ended: false,
            };
            let mut response = Response::new(body.boxed());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            let name = export::file_name(org, chrono::Utc::now(), format);
            if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            headers.insert("x-audit-event-count", HeaderValue::from(total));
            response
        }
        Ok(Err(ExportError::TooLarge { max_rows })) => response::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            export::TOO_LARGE_CODE,
            &export::too_large_message(max_rows),
        ),
        Ok(Err(ExportError::UnknownOrganization { .. })) => forbidden(),
        Ok(Err(ExportError::Db(err))) => auth::database_error(&err),
        Ok(Err(err)) => internal_error("export", &err),
        // The task ran out of time before it could start.
        Err(_) => response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long",
        ),
    }
}

/// What flows from an export task to its response body.
enum Message {
    /// Encoded events.
    Chunk(Bytes),
    /// Every chunk has been taken by the connection: say so and wait.
    Drained(oneshot::Sender<()>),
    /// Recorded: end the body.
    Done,
}

/// The body of an export response. It ends cleanly only on [`Message::Done`]; if the
/// task goes away without it, the body fails, which makes hyper cut the connection
/// instead of writing the final chunk, so a partial export never looks complete.
struct ExportBody {
    chunks: mpsc::Receiver<Message>,
    ended: bool,
}

impl hyper::body::Body for ExportBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Message::Chunk(bytes))) => {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Poll::Ready(Some(Message::Drained(ack))) => {
                    // Being polled again means hyper has taken every earlier chunk.
                    let _ = ack.send(());
                }
                Poll::Ready(Some(Message::Done)) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(
                        "the export was aborted before completion".into()
                    )));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// How an export task ended.
enum Outcome {
    /// Every chunk delivered and the export recorded.
    Completed { event_id: i64, events: u64 },
    /// The client went away (or the request gave up) first; nothing recorded.
    Cancelled { events: u64 },
}

/// The export task: start (reporting the count or the refusal on `started`), stream,
/// wait for the body to drain, record, end the body. `permits` (the export's and the
/// request's) are held until it ends.
async fn run_export(
    job: ExportJob,
    mut session: ApiSession,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    started: oneshot::Sender<Result<u64, ExportError>>,
    chunks: mpsc::Sender<Message>,
) {
    let _permits = permits;
    let _in_flight = telemetry::ExportInFlight::start();
    let began = Instant::now();
    let format = job.format.as_str();
    let mut started = Some(started);
    let outcome = tokio::time::timeout_at(
        job.deadline,
        stream(&job, &mut session, &mut started, &chunks),
    )
    .await;
    match &outcome {
        // Its statements ended (the snapshot's rollback is queued first if it did
        // not complete): the session can serve another request.
        Ok(_) => session.release(),
        // Out of time with a statement possibly running: cancel it, close it.
        Err(_) => drop(session),
    }
    match outcome {
        Ok(Ok(Outcome::Completed { event_id, events })) => telemetry::export_completed(
            &job.org,
            format,
            events,
            event_id,
            &job.actor.actor_id,
            began.elapsed(),
        ),
        Ok(Ok(Outcome::Cancelled { events })) => {
            telemetry::export_cancelled(&job.org, format, events)
        }
        Ok(Err(err)) => {
            match &err {
                ExportError::TooLarge { max_rows } => {
                    telemetry::export_too_large(&job.org, format, *max_rows)
                }
                other => telemetry::export_failed(&job.org, format, other),
            }
            if let Some(started) = started.take() {
                let _ = started.send(Err(err));
            }
        }
        Err(_) => telemetry::export_failed(
            &job.org,
            format,
            &"the export did not finish within http.request_timeout",
        ),
    }
    // Dropping `chunks` without `Done` (every path but completion) fails the body.
}

async fn stream(
    job: &ExportJob,
    session: &mut ApiSession,
    started: &mut Option<oneshot::Sender<Result<u64, ExportError>>>,
    chunks: &mpsc::Sender<Message>,
) -> Result<Outcome, ExportError> {
    let org: OrgRef = query::organization(session.client(), &job.org)
        .await?
        .ok_or_else(|| ExportError::UnknownOrganization {
            slug: job.org.clone(),
        })?;
    let mut export = Export::start(
        session,
        &org,
        &job.filters,
        job.format,
        job.max_rows,
        job.sanitizer.clone(),
    )
    .await?;
    let answered = started
        .take()
        .is_some_and(|started| started.send(Ok(export.total())).is_ok());
    if !answered {
        return Ok(Outcome::Cancelled { events: 0 });
    }
    while let Some(chunk) = export.next_chunk().await? {
        if chunks.send(Message::Chunk(chunk)).await.is_err() {
            return Ok(Outcome::Cancelled {
                events: export.exported(),
            });
        }
    }
    let (drained_tx, drained_rx) = oneshot::channel();
    if chunks.send(Message::Drained(drained_tx)).await.is_err() || drained_rx.await.is_err() {
        return Ok(Outcome::Cancelled {
            events: export.exported(),
        });
    }
    let events = export.exported();
    let event_id = export.finish(&job.actor).await?;
    // The body has drained, so there is room; if it is gone now the export was
    // still delivered in full and stays recorded.
    let _ = chunks.send(Message::Done).await;
    Ok(Outcome::Completed { event_id, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_endpoints() {
        assert_eq!(
            parse_path("/v1/orgs/acme-dev/audit/events"),
            Some(("acme-dev", Endpoint::Events))
        );
        assert_eq!(
            parse_path("/v1/orgs/acme-dev/audit/export"),
            Some(("acme-dev", Endpoint::Export))
        );
        assert_eq!(parse_path("/v1/orgs"), Some(("", Endpoint::Orgs)));
        for other in [
            "/v1",
            "/v1/",
            "/v1/orgs/",
            "/v1/orgs//audit/events",
            "/v1/orgs/acme-dev/audit/events/",
            "/v1/orgs/acme-dev/audit",
            "/v1/orgs/acme-dev/x/audit/events",
            "/v1/orgs/acme-dev/audit/exports",
        ] {
            assert_eq!(parse_path(other), None, "{other}");
        }
        assert!(is_api_path("/v1"));
        assert!(is_api_path("/v1/anything"));
        assert!(!is_api_path("/v10"));
    }
}
