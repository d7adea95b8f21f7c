//! Response bodies and the JSON error shape.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};
use serde::Serialize;

/// Error a streamed body can end with (the connection is then closed mid-body, so the
/// client sees a truncated response rather than a wrong one).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: whole or streamed.
pub type Body = BoxBody<Bytes, BodyError>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    // Serializing our own response types cannot fail (no maps with non-string keys,
    // no failing Serialize impls); fall back to an empty object rather than panic.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
}

/// `{"error":{"code":…,"message":…}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                code,
                message,
                parameter: None,
            },
        },
    )
}

/// `{"error":{"code":…,"message":…,"parameter":…}}`, for a bad request parameter.
pub fn parameter_error(code: &str, message: &str, parameter: &str) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &ErrorBody {
            error: ErrorDetail {
                code,
                message,
                parameter: Some(parameter),
            },
        },
    )
}

/// `405` with the `Allow` header, for a known path asked with another method.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "only GET is allowed on this route",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}
