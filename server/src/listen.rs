//! Serving the router on a listener: what `axum::serve` does (TCP_NODELAY, the client's
//! address for the rate limits, upgrades for the agents' WebSockets, graceful shutdown), plus
//! the limits it lacks, so a client cannot hold a connection by going slow:
//!
//! - a new connection has `header_timeout_s` to deliver its first request's headers, first
//!   byte included, so connections that send nothing, or dribble their headers a byte at a
//!   time (slow-loris), are closed;
//! - each later request on the connection gets the same time for its headers (hyper's header
//!   read timeout), which also closes keep-alive connections idle that long;
//! - a body whose `Content-Length` is over `max_body_bytes` is refused with 413 from the
//!   header, after reading (and dropping) what arrives of it within 2 s, so a client still
//!   sending reads the answer, and one that never sends waits 2 s rather than forever;
//! - a path or query with a NUL character (`%00`) is refused with 400 before any handler binds
//!   it into a query (PostgreSQL cannot take a NUL in text; bodies are checked by `ApiJson`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
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
        discard(request.into_body()).await;
        let mut response = ApiError::PayloadTooLarge.into_response();
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Most of a refused body read (and dropped) before the 413 goes out.
const DISCARD_BYTES: usize = 16 << 20;
/// Longest wait for a refused body's bytes.
const DISCARD_WITHIN: Duration = Duration::from_secs(2);

/// Reads and drops what a client sends of a refused body, up to [`DISCARD_BYTES`] and for at
/// most [`DISCARD_WITHIN`]: a client still writing its body then reads the 413 instead of
/// hitting a reset connection, and a body that never comes costs at most that wait.
async fn discard(body: axum::body::Body) {
    let deadline = tokio::time::Instant::now() + DISCARD_WITHIN;
    let mut chunks = body.into_data_stream();
    let mut read = 0;
    while read < DISCARD_BYTES {
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            _ => return,
        }
    }
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
