//! Serving the router on a listener: what `axum::serve` does (TCP_NODELAY, the client's
//! address for the rate limits, upgrades for the agents' WebSockets, graceful shutdown), plus
//! the limits it lacks, so a client cannot hold a connection by going slow:
//!
//! - a new connection has `header_timeout_s` to deliver its first request's headers, first
//!   byte included, so connections that send nothing, or dribble their headers a byte at a
//!   time (slow-loris), are closed;
//! - each later request on the connection gets the same time for its headers (hyper's header
//!   read timeout), which also closes keep-alive connections idle that long;
//! - a body whose `Content-Length` is over `max_body_bytes` is refused with 413 at once, from
//!   the header, instead of after waiting for bytes that may never come;
//! - a path or query with a NUL character (`%00`) is refused with 400 before any handler binds
//!   it into a query (PostgreSQL cannot take a NUL in text; bodies are checked by `ApiJson`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt as _;

use crate::error::ApiError;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the open connections to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Frames and responses are small; without TCP_NODELAY, Nagle's algorithm meets delayed
        // ACKs and adds ~40 ms to a round trip.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let first_request = Arc::new(Notify::new());
        let seen = Arc::clone(&first_request);
        let service = app.clone().map_request(move |mut request: Request<_>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            seen.notify_one();
            request
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::pin!(connection);
            // Until a first request's headers are in, hyper may still be reading the protocol
            // preface, where its own header timer does not run yet.
            let headers_in = tokio::time::timeout(header_timeout, first_request.notified());
            let ended = tokio::select! {
                ended = &mut connection => ended,
                headers = headers_in => {
                    if headers.is_err() {
                        tracing::debug!(%remote, "no request headers in time; closing the connection");
                        return;
                    }
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Middleware: refuses a body declared larger than `max_body_bytes` before reading any of it.
pub(crate) async fn refuse_declared_oversize(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        return ApiError::PayloadTooLarge.into_response();
    }
    next.run(request).await
}

/// Middleware: refuses a path or query holding a NUL character (`%00`, in any case), naming
/// the query parameter at fault.
pub(crate) async fn refuse_nul_in_uri(request: Request, next: Next) -> Response {
    let nul = |part: &str| part.as_bytes().windows(3).any(|w| w == b"%00");
    let uri = request.uri();
    let at = if nul(uri.path()) {
        Some(("the path".to_owned(), None))
    } else {
        uri.query()
            .unwrap_or_default()
            .split('&')
            .find(|p| nul(p))
            .map(|pair| {
                let name = pair.split('=').next().unwrap_or_default().to_owned();
                (format!("query parameter `{name}`"), Some(name))
            })
    };
    if let Some((at, param)) = at {
        return ApiError::BadParam {
            code: "invalid_character",
            message: format!("{at} contains a NUL character (%00), which no text may"),
            param,
        }
        .into_response();
    }
    next.run(request).await
}
