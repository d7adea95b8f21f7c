//! The HTTP server: accept loop, per-connection limits, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;
use crate::health::Health;
use crate::http::api::{Api, ClientAddr};
use crate::http::response;
use crate::http::routes;
use crate::http::stall::WriteDeadline;

/// Most connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 512;

/// Everything a request handler may read.
#[derive(Debug)]
pub struct AppState {
    /// Readiness checks.
    pub health: Arc<Health>,
    /// Request limits.
    pub http: HttpSettings,
    /// The `/v1` audit-event API.
    pub api: Api,
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish (for at most the request timeout).
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let request_timeout = state.http.request_timeout;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "Cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service_state = state.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let state = service_state.clone();
            request.extensions_mut().insert(ClientAddr(peer.ip()));
            async move {
                let answer =
                    tokio::time::timeout(request_timeout, routes::route(&state, request)).await;
                Ok::<_, std::convert::Infallible>(answer.unwrap_or_else(|_| {
                    response::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "the request took too long",
                    )
                }))
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(request_timeout.min(Duration::from_secs(10)))
            .max_buf_size(state.http.max_header_bytes.max(8192))
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(WriteDeadline::new(stream, request_timeout)),
                service,
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(request_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at shutdown were cut");
    }
}
