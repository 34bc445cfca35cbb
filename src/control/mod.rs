//! The admin listener: `/metrics`, `/healthz` and `/readyz` (also on `admin.metrics_listen`).
//! The authenticated control API joins this router with issue 4.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::snapshot::Live;

/// The endpoints that need no token: for Prometheus and the kubelet's probes.
pub fn probes(live: Arc<Live>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(live)
}

async fn metrics(State(live): State<Arc<Live>>) -> impl IntoResponse {
    // Publish the SLA figures as of this scrape, not of the last tick.
    crate::monitor::publish(&live);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], live.metrics.render())
}

/// Ready while serving; not ready once draining, so the endpoints controller takes the
/// pod out before its connections close.
async fn ready(State(live): State<Arc<Live>>) -> (StatusCode, &'static str) {
    if live.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
