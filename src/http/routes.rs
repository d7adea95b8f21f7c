//! Routing: health, readiness, metrics; `/v1` is handed to the API, the browser
//! page's routes to the console (unless `http.console_enabled` is off).

use hyper::{header, Method, Request, Response, StatusCode};

use crate::http::response::{self, Body};
use crate::http::server::AppState;
use crate::http::{api, console};
use crate::telemetry;

/// Answers one request.
pub async fn route<B>(state: &AppState, request: Request<B>) -> Response<Body> {
    if api::is_api_path(request.uri().path()) {
        return api::handle(&state.api, request).await;
    }
    if state.http.console_enabled && console::is_console_path(request.uri().path()) {
        return console::handle(&request);
    }
    let path = request.uri().path();
    let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
    if known && request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is allowed on this route",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => response::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let readiness = state.health.report();
            telemetry::mirror::ready(readiness.is_ready());
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response::json(status, &readiness)
        }
        "/metrics" => {
            let mut response = Response::new(response::full(telemetry::render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => response::error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}
