//! The admin and metrics listeners' connections, with the bounds a hostile or broken
//! client meets there (tower and tower-http layers, not code of our own):
//! - the request head within the config's `limits.header_read_timeout`, read per connection
//!   so a reload changes it (axum's own `serve` sets none: half a head held a connection
//!   for ever);
//! - at most [`CONCURRENCY`] calls at once over the listener; past it a call is shed with
//!   503 at once rather than queued;
//! - a span per call (target `tower_http`, level debug) with its headers, `Authorization`
//!   shown as `Sensitive`.
//!
//! The request timeout and panics are the router's: they sit inside its audit layer, so
//! that what they answer is audited ([`super::router`]).

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{BoxError, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultMakeSpan, TraceLayer};

use super::Problem;
use crate::metrics::Open;
use crate::snapshot::Live;

/// Calls served at once on one admin listener. Every call but a change is a read of
/// memory, and changes are applied one at a time, so more would only queue; an event
/// stream holds a place only until its response head is out.
pub const CONCURRENCY: usize = 64;

/// Serves `router` on `listener` until the task is dropped; `name` is the listener's in
/// `sluice_connections` (`admin`, `metrics`).
pub async fn serve(listener: TcpListener, router: Router, live: Arc<Live>, name: &'static str) {
    let open = live.metrics.connections.with_label_values(&[name]);
    let service = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
        .layer(TraceLayer::new_for_http().make_span_with(DefaultMakeSpan::new().include_headers(true)))
        .layer(HandleErrorLayer::new(shed))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(CONCURRENCY))
        .service(router);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let timeout = live.load().config.limits.header_read_timeout;
        let service = service.clone().map_request(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let open = Open::new(&open);
        tokio::spawn(async move {
            let _open = open;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// A call past [`CONCURRENCY`]: refused at once (the only error the stack makes).
async fn shed(_: BoxError) -> impl IntoResponse {
    tracing::debug!("an admin call was shed: {CONCURRENCY} calls in progress");
    let detail = format!("{CONCURRENCY} calls are in progress on this listener: retry in a second");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).retry_after(1)
}
