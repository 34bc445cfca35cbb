//! The admin listener: the control API (`/v1`, bearer tokens with roles), and `/metrics`,
//! `/healthz`, `/readyz`, which need no token (also on `admin.metrics_listen`).
//!
//! Every mutating call goes through [`Control::change`]: one writer at a time checks
//! `If-Match`, validates the whole new config, persists it ([`Overlay`]) and swaps it in
//! with the same guarantees as a reload. The [`audit_calls`] layer records every mutating
//! call, accepted or refused, whatever refused it.

mod api;
pub mod audit;
mod auth;
pub mod changes;
mod problem;
pub mod serve;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use audit::Audit;
pub use auth::{Caller, Role};
pub use problem::Problem;

use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::config::overlay::{Overlay, Push};
use crate::config::reload::config_fingerprint;
use crate::config::Config;
use crate::events::{Event, Events};
use crate::metrics::{Reload, Source};
use crate::snapshot::{Live, Snapshot};

/// Request bodies larger than this get 413.
pub const MAX_BODY: usize = 1 << 20;

/// The longest a call may take, its body's reading included (408 after it). An event
/// stream is bounded only until its response head is out: its events flow for as long as
/// the viewer stays.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane's view of a running sluice.
pub struct Control {
    pub live: Arc<Live>,
    pub events: Events,
    tokens: auth::Tokens,
    /// Where accepted changes persist; without it, changes are refused (503).
    overlay: Option<Arc<Overlay>>,
    audit: Option<Arc<Audit>>,
}

/// What a mutating handler tells the audit layer: who, the versions around the change, and
/// what it changed.
#[derive(Clone)]
struct Audited {
    principal: String,
    before: u64,
    after: u64,
    change: Option<serde_json::Value>,
}

impl Control {
    /// The control API over `live`. Without an overlay and an audit log (`admin.state_dir`
    /// not writable), every change is refused.
    pub fn new(live: Arc<Live>, events: Events, overlay: Option<Arc<Overlay>>, audit: Option<Arc<Audit>>) -> Arc<Self> {
        Arc::new(Self { live, events, tokens: auth::Tokens::default(), overlay, audit })
    }

    /// The caller of a request, if it has at least `needed`.
    pub fn caller(&self, headers: &HeaderMap, needed: Role) -> Result<Caller, Problem> {
        let caller = self.authenticate(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))?;
        caller.require(needed)?;
        Ok(caller)
    }

    /// The principal of an `Authorization` value, with the token sources as last read.
    fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, auth::Denied> {
        self.tokens.authenticate(&self.live.load().config, self.live.generation(), authorization)
    }

    /// Applies the config `build` makes from the live snapshot, if `if_match` (an ETag) is
    /// the live version's; `required` makes `If-Match` mandatory (428 without it). The
    /// `admin` section always stays as the file has it. Returns the new snapshot once it
    /// is persisted and live.
    ///
    /// `action` names the call (`PUT /v1/routes/a/quota`); `set` says, for the audit record,
    /// what an accepted change sets (the values pushed).
    fn change(
        &self,
        caller: &Caller,
        action: &str,
        if_match: Option<&str>,
        required: bool,
        build: impl FnOnce(&Snapshot) -> Result<Config, Problem>,
        set: serde_json::Value,
    ) -> Result<(Arc<Snapshot>, Audited), Problem> {
        // One change at a time, file reloads included: `If-Match` is checked, the change
        // kept and applied under it.
        let _writer = self.live.change_lock();
        if self.live.changes_held() {
            let detail = "a binary upgrade is under way: the new process takes changes once it serves";
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).retry_after(1));
        }
        let current = self.live.load();
        match if_match {
            None if required => {
                return Err(Problem::new(
                    StatusCode::PRECONDITION_REQUIRED,
                    "send `If-Match` with the ETag of GET /v1/config",
                ))
            }
            Some(tag) if tag.trim() != etag(current.version) && tag.trim() != "*" => {
                return Err(Problem::new(
                    StatusCode::PRECONDITION_FAILED,
                    format!("the config is at version {}: read it again and retry", current.version),
                ))
            }
            _ => {}
        }
        let (Some(overlay), Some(_)) = (&self.overlay, &self.audit) else {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin.state_dir is not writable: a change could not survive a restart, so none is accepted",
            ));
        };
        let config = build(&current).inspect_err(|problem| {
            if let Some(errors) = &problem.errors {
                let service = &current.config.service;
                self.events.send(Event::config_rejected(service, "api", Some(&caller.name), errors));
                self.live.metrics.reloaded(Source::Api, Reload::Failed);
            }
        })?;
        let audited = |after: u64, change: serde_json::Value| Audited {
            principal: caller.name.clone(),
            before: current.version,
            after,
            change: Some(change),
        };
        if config.raw == current.config.raw {
            // The live config already: accepted, and nothing to persist or announce.
            self.live.apply(config, Source::Api);
            return Ok((current.clone(), audited(current.version, json!({ "unchanged": true }))));
        }
        let push = Push { principal: caller.name.clone(), action: action.to_string(), version: current.version + 1 };
        if let Err(e) = overlay.push(&config.raw, push) {
            tracing::error!(error = %e, "could not persist a change: refused");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the change could not be persisted: nothing changed",
            ));
        }
        let sha256 = config_fingerprint(&config.raw);
        let next = self.live.apply(config, Source::Api).snapshot;
        let changed = next.changed_routes(&current);
        tracing::info!(principal = %caller.name, version = next.version, changed = %changed.join(","), "config applied from the control API");
        self.events.send(Event::config_applied(&next.config.service, next.version, "api", Some(&caller.name)));
        let mut change = set;
        change["config_sha256"] = sha256.into();
        Ok((next.clone(), audited(next.version, change)))
    }
}

/// The ETag of a config version.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The endpoints that need no token: for Prometheus and the kubelet's probes.
pub fn probes(live: Arc<Live>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(live)
}

/// The whole admin listener: the control API and the probes.
pub fn router(control: Arc<Control>) -> Router {
    let api = api::routes().route("/v1/openapi.json", get(openapi)).route("/", get(dashboard));
    guarded(api, control)
}

/// `routes` under the admin listener's guards, from the inside out: the request timeout, a
/// panic made a 500, the audit of both and of every mutating call, the body limit, and
/// problem+json for what the framework refuses. The probes are merged in beside.
fn guarded(routes: Router<Arc<Control>>, control: Arc<Control>) -> Router {
    let api = routes
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such path: see /v1/openapi.json") })
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn_with_state(control.clone(), audit_calls))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(as_problem))
        .with_state(control.clone());
    api.merge(probes(control.live.clone()))
}

/// The dashboard: one page, everything inline, no data in it (it reads the API with the
/// token the person gives), and a policy that lets it talk to this origin only.
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        include_str!("dashboard.html"),
    )
}

/// The OpenAPI 3 document of this API; `tests/schemathesis.rs` holds the API to it.
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// Marks a response made from a panic, so that the audit layer records the call.
#[derive(Clone, Copy)]
struct Panicked;

/// A handler that panicked: 500, and the panic in the log (its message, which holds no
/// request data: handlers never format a token).
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    tracing::error!(panic = message, "an admin call panicked: answered 500");
    let mut response =
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the call failed inside sluice: see its log").into_response();
    response.extensions_mut().insert(Panicked);
    response
}

/// Refusals made by the framework (a body over the limit, a method the path does not have)
/// get a problem+json body too, keeping their headers (`Allow`).
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t == "application/problem+json");
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("the body is over {MAX_BODY} bytes"),
        StatusCode::METHOD_NOT_ALLOWED => "this path does not take this method: see the Allow header".to_string(),
        _ => status.canonical_reason().unwrap_or("refused").to_string(),
    };
    let problem = Problem::new(status, detail).into_response();
    let (fresh, body) = problem.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(fresh.headers);
    Response::from_parts(parts, body)
}

async fn metrics(State(live): State<Arc<Live>>) -> impl IntoResponse {
    // Publish the SLA figures as of this scrape, not of the last tick.
    crate::monitor::publish(&live);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], live.metrics.render())
}

/// Ready while serving; not ready from SIGTERM on (through `limits.drain_delay` and the
/// drain), so the endpoints controller takes the pod out before its connections close; nor
/// while the service is held unhealthy, so that traffic goes to replicas whose service is up.
async fn ready(State(live): State<Arc<Live>>) -> (StatusCode, &'static str) {
    if !live.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !live.health.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "the service is unhealthy\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Records every mutating call in the audit log, whatever answered it (the handler, an
/// extractor refusing a body, the request timeout), and any call that panicked; never a
/// token.
async fn audit_calls(State(control): State<Arc<Control>>, request: Request, next: Next) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || request.uri().path().ends_with("/validate");
    let action = format!("{} {}", request.method(), request.uri().path());
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(String::new, |c| c.0.to_string());
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let version = control.live.load().version;
    let response = next.run(request).await;
    if reads && response.extensions().get::<Panicked>().is_none() {
        return response;
    }
    let status = response.status().as_u16();
    let (record, authenticated) = match response.extensions().get::<Audited>() {
        Some(a) => {
            let record = audit::Record {
                principal: Some(a.principal.clone()),
                remote,
                action,
                version_before: a.before,
                version_after: a.after,
                status,
                change: a.change.clone(),
            };
            (record, true)
        }
        // Refused before the handler knew who called: name the token, if it is one.
        None => {
            let caller = control.authenticate(authorization.as_ref().map(|v| v.as_bytes())).ok();
            let authenticated = caller.is_some();
            let principal = caller.map(|c| c.name);
            let record = audit::Record {
                principal,
                remote,
                action,
                version_before: version,
                version_after: version,
                status,
                change: None,
            };
            (record, authenticated)
        }
    };
    let now = control.live.clock();
    // Synced to disk before the response goes out, off the async workers. Calls without a
    // valid token are written at a bounded rate, so that a flood of them cannot fill the disk.
    let appended = tokio::task::spawn_blocking(move || match &control.audit {
        Some(audit) if authenticated => audit.append(record),
        Some(audit) => audit.append_unauthenticated(record, now),
        None => Ok(()),
    })
    .await;
    if let Ok(Err(e)) = appended {
        tracing::error!(error = %e, "could not append to the audit log");
    }
    response
}

#[cfg(test)]
mod tests;
