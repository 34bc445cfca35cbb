//! The `/v1` endpoints. Handlers authenticate, then read the live snapshot or hand a change
//! to [`Control::change`]; bodies are JSON, errors problem+json.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{etag, Audited, Control, Problem, Role};
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::events::Event;
use crate::metrics::{Decision, RetryResult};
use crate::sla::{Report, Window};
use crate::snapshot::Snapshot;

type Ctl = State<Arc<Control>>;

pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/config/validate", post(validate))
        .route("/v1/routes", get(list_routes))
        .route("/v1/routes/{name}/quota", put(put_route_quota).delete(delete_route_quota))
        .route("/v1/routes/{name}/sla", put(put_route_sla).delete(delete_route_sla))
        .route("/v1/quota", put(put_service_quota).delete(delete_service_quota))
        .route("/v1/status", get(status))
        .route("/v1/audit", get(audit))
        .route("/v1/events", get(events))
        .route("/v1/events/recent", get(recent_events))
}

/// A JSON body, or 400 saying where it stops being JSON.
fn json_body(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers.get(header::IF_MATCH).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Runs [`Control::change`] off the async workers: it syncs files to disk.
async fn change(
    ctl: &Arc<Control>,
    caller: super::Caller,
    action: String,
    if_match: Option<String>,
    required: bool,
    build: impl FnOnce(&Snapshot) -> Result<Config, Problem> + Send + 'static,
    set: Value,
) -> Result<(Arc<Snapshot>, Audited), Problem> {
    let ctl = ctl.clone();
    tokio::task::spawn_blocking(move || ctl.change(&caller, &action, if_match.as_deref(), required, build, set))
        .await
        .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the change was interrupted: nothing changed"))?
}

/// A response to an accepted change: the version now live, as body and ETag, whether the
/// call changed anything, and what the audit layer records.
fn changed(snapshot: &Snapshot, audited: Audited) -> Response {
    let changed = audited.before != audited.after;
    let mut response = Json(json!({ "version": snapshot.version, "changed": changed })).into_response();
    response.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag(snapshot.version)).expect("digits"));
    response.extensions_mut().insert(audited);
    response
}

/// The effective config as `PUT /v1/config` takes it, with its `version` beside its fields.
async fn get_config(State(ctl): Ctl, headers: HeaderMap) -> Result<Response, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    let snapshot = ctl.live.load();
    let mut body = serde_json::to_value(&snapshot.config.raw).expect("a config serializes");
    body["version"] = snapshot.version.into();
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag(snapshot.version)).expect("digits"));
    Ok(response)
}

/// Parses a whole config sent as JSON (JSON is YAML, so errors are placed in the body with
/// line, column and field path), keeping the live `admin` section. The `version` that
/// `GET /v1/config` shows may be sent back: when `check_version`, it must be the live one.
fn whole_config(body: &[u8], current: &Snapshot, check_version: bool) -> Result<Config, Problem> {
    let value = json_body(body)?;
    let text = std::str::from_utf8(body).expect("JSON is UTF-8");
    if let Some(admin) = value.get("admin") {
        let live = serde_json::to_value(&current.config.raw.admin).unwrap_or(Value::Null);
        if *admin != live {
            return Err(Problem::invalid(one_error(
                "admin",
                "the admin section is set in the config file only: leave it out, or send it as GET /v1/config shows it",
            )));
        }
    }
    match value.get("version") {
        Some(v) if check_version && v.as_u64() != Some(current.version) => {
            return Err(Problem::new(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "the body is of version {v}, the config is at version {}: read it again and retry",
                    current.version
                ),
            ))
        }
        _ => {}
    }
    parse_with_live_admin(text, &["version"], current).map_err(Problem::invalid)
}

/// Parses a config, its `admin` section replaced with the live one and the top-level keys
/// in `ignore` left out.
fn parse_with_live_admin(text: &str, ignore: &[&str], current: &Snapshot) -> Result<Config, ConfigErrors> {
    config::parse_document(text, ignore, |raw| raw.admin = current.config.raw.admin.clone())
}

fn one_error(path: &str, message: &str) -> ConfigErrors {
    ConfigErrors {
        source: None,
        errors: vec![ConfigError { path: path.into(), line: None, column: None, message: message.into() }],
    }
}

async fn put_config(State(ctl): Ctl, headers: HeaderMap, body: Bytes) -> Result<Response, Problem> {
    let caller = ctl.caller(&headers, Role::Admin)?;
    let build = move |current: &Snapshot| whole_config(&body, current, true);
    let action = "PUT /v1/config".to_string();
    let (snapshot, audited) = change(&ctl, caller, action, if_match(&headers), true, build, json!({})).await?;
    Ok(changed(&snapshot, audited))
}

async fn validate(State(ctl): Ctl, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    whole_config(&body, &ctl.live.load(), false)?;
    Ok(Json(json!({ "valid": true })))
}

async fn list_routes(State(ctl): Ctl, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    let snapshot = ctl.live.load();
    Ok(Json(json!({ "version": snapshot.version, "routes": snapshot.config.raw.routes })))
}

/// Which part of the config a call changes.
#[derive(Clone, Copy)]
enum Part {
    RouteQuota,
    RouteSla,
    ServiceQuota,
}

impl Part {
    fn field(self) -> &'static str {
        match self {
            Self::RouteQuota | Self::ServiceQuota => "quota",
            Self::RouteSla => "sla",
        }
    }
}

/// Sets (`Some`) or removes (`None`) one part of the config, validating the whole result.
/// Errors name the field path in the config (`routes[2].quota.per`).
async fn set_part(
    ctl: Arc<Control>,
    headers: HeaderMap,
    route: Option<String>,
    part: Part,
    body: Option<Bytes>,
) -> Result<Response, Problem> {
    let caller = ctl.caller(&headers, Role::Operator)?;
    let value = body.as_deref().map(json_body).transpose()?;
    let scope = route.clone();
    let sent = value.clone();
    let build = move |current: &Snapshot| {
        let mut raw = serde_json::to_value(&current.config.raw).expect("a config serializes");
        let target = match &route {
            Some(name) => {
                let index = current.config.raw.routes.iter().position(|r| &r.name == name);
                let index =
                    index.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no route is named `{name}`")))?;
                &mut raw["routes"][index]
            }
            None => &mut raw,
        };
        let object = target.as_object_mut().expect("a route or the config is an object");
        match sent {
            Some(value) => object.insert(part.field().into(), value),
            None => object.remove(part.field()),
        };
        // Serialized, the admin section has lost its literal tokens: the live one goes back in.
        raw.as_object_mut().expect("the config is an object").remove("admin");
        // Through the YAML loader, so every error is found and named by its path; lines and
        // columns would point into this generated text, so they go.
        parse_with_live_admin(&raw.to_string(), &[], current).map_err(|e| {
            let errors = e.errors.into_iter().map(|e| ConfigError { line: None, column: None, ..e }).collect();
            Problem::invalid(ConfigErrors { source: None, errors })
        })
    };
    let action = match (&scope, body.is_some()) {
        (Some(name), true) => format!("PUT /v1/routes/{name}/{}", part.field()),
        (Some(name), false) => format!("DELETE /v1/routes/{name}/{}", part.field()),
        (None, true) => format!("PUT /v1/{}", part.field()),
        (None, false) => format!("DELETE /v1/{}", part.field()),
    };
    let set = json!({ "route": scope.as_deref().unwrap_or("service"), part.field(): value });
    let (snapshot, audited) = change(&ctl, caller, action, if_match(&headers), false, build, set).await?;
    if matches!(part, Part::RouteQuota | Part::ServiceQuota) && audited.before != audited.after {
        let scope = scope.as_deref().unwrap_or("service");
        ctl.events.send(Event::new(
            "quota_updated",
            json!({ "service": snapshot.config.service, "route": scope, "quota": value, "version": snapshot.version, "principal": audited.principal }),
        ));
    }
    Ok(changed(&snapshot, audited))
}

async fn put_route_quota(
    State(ctl): Ctl,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    set_part(ctl, headers, Some(name), Part::RouteQuota, Some(body)).await
}

async fn delete_route_quota(
    State(ctl): Ctl,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    set_part(ctl, headers, Some(name), Part::RouteQuota, None).await
}

async fn put_route_sla(
    State(ctl): Ctl,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    set_part(ctl, headers, Some(name), Part::RouteSla, Some(body)).await
}

async fn delete_route_sla(State(ctl): Ctl, Path(name): Path<String>, headers: HeaderMap) -> Result<Response, Problem> {
    set_part(ctl, headers, Some(name), Part::RouteSla, None).await
}

async fn put_service_quota(State(ctl): Ctl, headers: HeaderMap, body: Bytes) -> Result<Response, Problem> {
    set_part(ctl, headers, None, Part::ServiceQuota, Some(body)).await
}

async fn delete_service_quota(State(ctl): Ctl, headers: HeaderMap) -> Result<Response, Problem> {
    set_part(ctl, headers, None, Part::ServiceQuota, None).await
}

fn report(report: &Report) -> Value {
    let burn: serde_json::Map<String, Value> =
        Window::ALL.iter().zip(report.burn).map(|(w, b)| (w.as_str().to_string(), json!(b))).collect();
    json!({
        "objective": report.objective,
        "compliance": report.compliance,
        "budget_remaining": report.budget_remaining,
        "burn_rates": burn,
        "good": report.counts.good,
        "total": report.counts.total,
        "breached": report.breached.map(|s| s.as_str()),
    })
}

async fn status(State(ctl): Ctl, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    let snapshot = ctl.live.load();
    let now = ctl.live.clock();
    let routes: Vec<Value> = snapshot
        .routes
        .iter()
        .chain([&snapshot.unmatched])
        .map(|route| {
            let decisions = json!({
                "allowed": route.metrics.decisions(Decision::Allowed),
                "limited": route.metrics.decisions(Decision::Limited),
                "shadow_limited": route.metrics.decisions(Decision::ShadowLimited),
                "degraded_allowed": route.metrics.decisions(Decision::DegradedAllowed),
            });
            let rate = route.quotas.rate.as_ref().map(|q| {
                let limit = &q.limit;
                let offenders: Vec<Value> = limit
                    .offenders()
                    .map(|o| o.top(now))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| json!({ "key": limit.spec().key.show(&o.key), "rate": o.rate }))
                    .collect();
                json!({
                    "rate": limit.spec().rate.get(),
                    "per_seconds": limit.spec().per.as_secs_f64(),
                    "burst": limit.spec().burst.get(),
                    "key": limit.spec().key.to_string(),
                    "mode": q.mode.as_str(),
                    "keys": limit.keys(),
                    "top_offenders": offenders,
                })
            });
            let concurrency =
                route.quotas.concurrency.as_ref().map(|c| json!({ "max": c.max(), "in_flight": c.in_flight() }));
            let mut sla = serde_json::Map::new();
            for sli in route.sla.slis() {
                let r = sli.report(now);
                sla.insert(r.kind.as_str().into(), report(&r));
            }
            let threshold = snapshot.config.routes.iter().find(|r| r.name == *route.name).and_then(|r| r.sla.as_ref());
            let threshold = threshold.and_then(|s| s.latency.as_ref()).map(|l| l.threshold.as_secs_f64());
            if let (Some(latency), Some(threshold)) = (sla.get_mut("latency"), threshold) {
                latency["threshold_seconds"] = json!(threshold);
            }
            // For percentiles over any span: the page keeps samples and takes differences.
            let (le, counts): (Vec<Value>, Vec<u64>) = route
                .metrics
                .latency_buckets()
                .into_iter()
                .map(|(le, n)| (if le.is_finite() { json!(le) } else { json!("+Inf") }, n))
                .unzip();
            json!({
                "name": &*route.name,
                "in_flight": route.metrics.inflight.get(),
                "latency_histogram": { "le": le, "counts": counts },
                "decisions": decisions,
                "rate_quota": rate,
                "concurrency": concurrency,
                "global_quota": route.quotas.global.as_deref().map(global_quotas),
                "retries": route.retries.as_deref().map(|r| retries(r, &route.metrics)),
                "sla": sla,
            })
        })
        .collect();
    let global = snapshot.global.as_deref().map(|shared| {
        let since = shared.degraded_since();
        json!({
            "redis": if since.is_some() { "unavailable" } else { "available" },
            "nodes": shared.settings.redis.len(),
            "policy": shared.on_error().as_str(),
            "degraded": since.is_some(),
            "degraded_for_seconds": since.map(|s| now.saturating_sub(s).as_secs_f64()),
            "error": since.and_then(|_| shared.last_error()),
            "replicas": shared.replicas(),
            "service_quota": snapshot.service.global.as_deref().map(global_quotas),
        })
    });
    let health = ctl.live.health.report();
    let upstream = json!({
        "healthy": health.healthy,
        "for_seconds": health.since.map(|since| now.saturating_sub(since).as_secs_f64()),
        "cause": health.cause.map(|c| c.to_string()),
        "consecutive_failures": health.failures,
        "health_check": snapshot.config.health_check.as_ref().map(|c| c.path.clone()),
        "outlier_detection": snapshot.config.outlier_detection.is_some(),
        "addresses": ctl.live.resolver.resolved(&snapshot.config.upstream).map(|a| {
            a.addrs.iter().map(ToString::to_string).collect::<Vec<_>>()
        }),
        "circuit_breaker": circuit_breaker(snapshot.config.circuit_breaker, ctl.live.breaker.counts()),
    });
    Ok(Json(json!({
        "service": snapshot.config.service,
        "version": snapshot.version,
        "upstream": upstream,
        "global": global,
        "routes": routes,
    })))
}

/// A route's retries, as `/v1/status` shows them: the policy, and what became of them.
fn retries(retries: &crate::upstream::retry::Retries, metrics: &crate::metrics::RouteMetrics) -> Value {
    let policy = &retries.policy;
    let counts: serde_json::Map<String, Value> =
        RetryResult::ALL.iter().map(|r| (r.as_str().to_string(), json!(metrics.retries(*r)))).collect();
    json!({
        "attempts": policy.attempts,
        "per_try_timeout_seconds": policy.per_try_timeout.map(|t| t.as_secs_f64()),
        "budget_ratio": policy.budget,
        "results": counts,
    })
}

/// The circuit breaker's caps and counts, as `/v1/status` shows them: connections to the
/// service are always counted, requests in flight while `max_requests` is set.
fn circuit_breaker(caps: Option<crate::upstream::CircuitBreaker>, counts: crate::upstream::breaker::Counts) -> Value {
    use crate::upstream::breaker::Limit;
    let max_requests = caps.and_then(|c| c.max_requests);
    json!({
        "max_requests": max_requests,
        "max_connections": caps.and_then(|c| c.max_connections),
        "requests": max_requests.map(|_| counts.requests),
        "connections": counts.connections,
        "refused": { Limit::Requests.as_str(): counts.trips[0], Limit::Connections.as_str(): counts.trips[1] },
    })
}

/// A scope's global quotas, as `/v1/status` shows them.
fn global_quotas(global: &crate::snapshot::GlobalQuotas) -> Value {
    let rate = global.rate.as_ref().map(|(rate, mode)| {
        let spec = rate.spec();
        json!({
            "rate": spec.rate.get(),
            "per_seconds": spec.per.as_secs_f64(),
            "burst": spec.burst.get(),
            "key": spec.key.to_string(),
            "mode": mode.as_str(),
            "leases": rate.keys(),
        })
    });
    let concurrency =
        global.concurrency.as_ref().map(|c| json!({ "max": c.spec().max.get(), "key": c.spec().key.to_string() }));
    json!({ "rate": rate, "concurrency": concurrency })
}

/// Most records one `GET /v1/audit` returns.
const MAX_AUDIT_RECORDS: usize = 10_000;

async fn audit(State(ctl): Ctl, headers: HeaderMap, uri: axum::http::Uri) -> Result<Json<Value>, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    let mut limit = 100;
    for (name, value) in uri.query().unwrap_or("").split('&').filter_map(|p| p.split_once('=')) {
        if name == "limit" {
            limit = value.parse().ok().filter(|n| *n <= MAX_AUDIT_RECORDS).ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("`limit` must be a whole number up to {MAX_AUDIT_RECORDS}"),
                )
            })?;
        }
    }
    let Some(audit) = &ctl.audit else {
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "no audit log: admin.state_dir is not writable"));
    };
    let records = audit
        .tail(limit)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the audit log: {e}")))?;
    Ok(Json(json!({ "records": records })))
}

/// The last events (at most [`crate::events::RECENT`]), oldest first: what a viewer opening
/// now missed.
async fn recent_events(State(ctl): Ctl, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    let events: Vec<Value> = ctl.events.recent().iter().map(|e| e.json().clone()).collect();
    Ok(Json(json!({ "events": events })))
}

/// Server-Sent Events: every event from now on, to any number of viewers. A viewer that
/// falls more than the bus's capacity behind is told so and dropped: the senders (the
/// proxy's monitor, the control API) never wait for anyone.
async fn events(State(ctl): Ctl, headers: HeaderMap) -> Result<Response, Problem> {
    ctl.caller(&headers, Role::Viewer)?;
    let receiver = ctl.events.subscribe();
    let stream = futures_util::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(event) => {
                let sse = SseEvent::default().event(event.kind()).data(event.to_json());
                Some((Ok::<_, std::convert::Infallible>(sse), Some(receiver)))
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::info!(missed, "an event stream viewer fell behind: dropped");
                let sse = SseEvent::default().event("dropped").data(json!({ "missed": missed }).to_string());
                Some((Ok(sse), None))
            }
            Err(RecvError::Closed) => None,
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
