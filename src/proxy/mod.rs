//! The data plane. One request, in order:
//!
//! 1. [`Proxy::handle`] loads the live snapshot once; the request finishes on it.
//! 2. The target is checked (414, 400) and normalized, and matched to a route.
//! 3. [`admit`] applies the route's quotas, then the service's (429); then, where one
//!    applies, [`global`] the quotas shared with every replica through Redis.
//! 4. [`upstream::write_head`] writes the request's head for the service; it goes out on
//!    one of the worker's [`pool`]ed connections under the route's timeout (504); failures are
//!    502s; [`send`] tries again what the route's `retries` allow. sluice speaks HTTP/1.1 to
//!    the service itself: [`conn`] drives the connection
//!    on the request's task, [`h1`] writes and parses the bytes.
//! 5. The response streams back in a [`ProxyBody`] that holds the request's [`Guard`]
//!    (concurrency slots, in-flight count, [`Measure`]) until its last byte or the client
//!    leaving; then the request is counted in the route's metrics and SLIs, and the
//!    connection to the service goes back to the pool if the body was read whole.
//!
//! [`listener`] accepts connections, on one worker thread per CPU, and serves each:
//! HTTP/1.1 with sluice's own [`front`] (which reads the request head and body, and
//! writes the response), h2c with hyper. Both hand [`Proxy::handle`] a [`ProxyRequest`]:
//! its fields the bytes they came as (HTTP/1.1) or hyper's map (h2c).

pub mod admit;
mod body;
mod conn;
#[cfg(test)]
mod differential;
mod front;
mod global;
mod grpc;
mod h1;
mod h2body;
mod h2c;
mod h2client;
mod h2forward;
pub mod listener;
mod pool;
mod request;
pub mod respond;
mod send;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONNECTION};
use http::{Response, StatusCode, Version};
use http_body::Body;

pub use body::{Guard, Measure, ProxyBody, RequestBody, Tracker};
pub use request::{ProxyRequest, RequestFields};

use crate::metrics::{Decision, Origin};
use crate::route::{self, BadPath};
use crate::snapshot::{Live, RouteState, Snapshot};
use crate::upstream::breaker::Limit;
use respond::RefusalKind;

/// The client at the other end of a connection, as each of its requests needs it.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The address as `X-Forwarded-For` carries it, formatted once per connection.
    forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let forwarded_for = HeaderValue::try_from(addr.ip().to_string()).expect("an address is visible ASCII");
        Self { addr, forwarded_for }
    }
}

/// The request path, shared by every connection.
#[derive(Clone)]
pub struct Proxy {
    live: Arc<Live>,
    pool: Arc<pool::Pool>,
    /// The worker's HTTP/2 connection to the service, for `upstream_protocol`.
    h2: Arc<h2client::H2Pool>,
    tracker: Arc<Tracker>,
}

impl Proxy {
    /// Must be called on the worker's runtime: its pool of upstream connections lives
    /// there.
    pub fn new(live: Arc<Live>, tracker: Arc<Tracker>, pools: Arc<pool::Shared>) -> Self {
        let h2 = Arc::new(h2client::H2Pool::new(pools.clone()));
        Self { live, pool: pool::Pool::new(pools), h2, tracker }
    }

    pub async fn handle(&self, req: ProxyRequest, peer: &Peer) -> Response<ProxyBody> {
        let http1 = req.version <= Version::HTTP_11;
        // A gRPC request (h2c only: an HTTP/1.1 one costs nothing here) gets sluice's own
        // answers as gRPC statuses, which its client can read.
        let grpc = !http1 && grpc::is_grpc(req.version, &req.fields);
        let mut response = self.serve(req, peer).await;
        if grpc && response.body().is_local() {
            response = grpc::reply(response);
        }
        if http1 && self.live.draining() {
            // Draining: each HTTP/1 connection closes after its current response.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    async fn serve(&self, req: ProxyRequest, peer: &Peer) -> Response<ProxyBody> {
        let start = Instant::now();
        let in_flight = self.tracker.enter();
        let snapshot = self.live.load();
        let limits = &snapshot.config.limits;
        // A body left unread must not be parsed as the next request: close instead.
        let close = req.version <= Version::HTTP_11 && !req.body.is_end_stream();

        let target_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        let path = if target_len > limits.max_uri_bytes {
            Err((StatusCode::URI_TOO_LONG, "request target too long", true))
        } else {
            route::normalize(req.uri.path()).map_err(|bad| match bad {
                BadPath::DotSegment => (StatusCode::BAD_REQUEST, "dot segments are not allowed in the path", close),
                BadPath::BadEscape => (StatusCode::BAD_REQUEST, "malformed percent-escape in the path", close),
            })
        };
        let index = match &path {
            Ok(path) => snapshot.find_index(&req.method, path),
            Err(_) => snapshot.routes.len(), // counted as `unmatched`
        };
        let mut guard = Guard {
            permits: [None, None],
            slots: None,
            sent: None,
            measure: Some(Measure::new(snapshot.clone(), index, start)),
            _in_flight: in_flight,
        };
        if let Err((status, detail, close)) = path {
            return local(respond::problem(status, detail, close), guard, Origin::Rejected);
        }
        let route = snapshot.route_at(index);
        if !self.live.health.healthy() {
            // Health checks or failed requests in a row hold the service down: refused at
            // once, before any quota is spent, instead of waiting to fail.
            return unhealthy(&self.live, &snapshot, guard, close);
        }

        // (In a block: what the quotas admitted is not kept across the wait for the service.)
        let advertised = {
            let fields = &req.fields;
            let mut admitted = match admit::admit(&snapshot, route, fields, peer.addr.ip(), self.live.at(start)) {
                Ok(admitted) => admitted,
                Err(refusal) => return refused(route, &refusal, guard, close),
            };
            if route.global {
                // Quotas shared with every replica, through Redis: after the local ones, so
                // a request they refuse spends nothing of the shared state. Most are decided
                // by this replica's leases at once; the rest wait for Redis in a boxed step
                // (what it holds while it waits would otherwise be part of every
                // connection's task, global quota or not).
                let now = self.live.at(start);
                admitted = match global::admit_leased(&snapshot, route, fields, peer.addr.ip(), now, admitted) {
                    Ok(global::Leased::Decided(admitted)) => admitted,
                    Ok(pending) => {
                        let step = global::admit(&snapshot, route, fields, peer.addr.ip(), now, pending);
                        match Box::pin(step).await {
                            Ok(admitted) => admitted,
                            Err(refusal) => return refused(route, &refusal, guard, close),
                        }
                    }
                    Err(refusal) => return refused(route, &refusal, guard, close),
                };
            }
            route.metrics.decided(admitted.decision());
            (guard.permits, guard.slots) = (admitted.permits, admitted.slots);
            admitted.advertised
        };
        let breaker = snapshot.config.circuit_breaker;
        if let Some(max) = breaker.and_then(|b| b.max_requests) {
            // The circuit breaker's cap on requests in flight to the service: past it,
            // refused at once rather than piled onto a service that is behind.
            match self.live.breaker.request(max) {
                Some(place) => guard.sent = Some(place),
                None => return overflow(&self.live, Limit::Requests, guard, close),
            }
        }

        let service = &snapshot.config.upstream;
        let to = pool::Target { authority: service, max_connections: breaker.and_then(|b| b.max_connections) };
        let deadline = tokio::time::Instant::from_std(start) + route.timeout; // from the request's start
        if snapshot.config.upstream_protocol.h2_for(req.version) {
            // HTTP/2 to the service (gRPC): a path of its own (`h2forward`), boxed so that
            // its state is no part of an HTTP/1.1 request's future.
            let call = h2forward::Admitted { route, snapshot: &snapshot, advertised, close };
            return Box::pin(self.forward_h2(req, peer, (to, deadline), guard, call)).await;
        }
        let upgrade = req.is_upgrade();
        let ProxyRequest { method, uri, fields, body, .. } = req;
        let (upload, framing) = conn::Upload::new(body, snapshot.config.limits.body_read_timeout);
        let forward = upstream::Forward {
            host: uri.authority().unwrap_or(service).as_str(),
            client: peer.forwarded_for.as_bytes(),
            upgrade,
            body: framing,
        };
        // Origin form, whatever form the client used (HTTP/2's is absolute).
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let write_head = |out: &mut Vec<u8>| upstream::write_head(&method, path, || fields.iter(), &forward, out);
        let mut tries = send::Tries::new(route, upload.is_some(), tokio::time::Instant::from_std(start), deadline);
        let mut upload = upload;
        let sent = loop {
            // Sent, and sent again as far as the route's `retries` allow.
            let try_deadline = tries.start_try();
            let sent = self.pool.send(to, &method, &write_head, upload.take(), upgrade, try_deadline).await;
            match tries.next(sent, route, &method, upgrade, (&self.live, &snapshot)) {
                send::Next::Done(sent) => break sent,
                send::Next::Again { upload: body, wait } => {
                    upload = body;
                    // Boxed: the wait is rare, and its timer would otherwise be part of every request's future.
                    Box::pin(tokio::time::sleep(wait)).await;
                }
            }
        };
        let (mut head, lease) = match sent {
            Ok(sent) => sent,
            Err(failed) if failed.overflow => return overflow(&self.live, Limit::Connections, guard, close),
            Err(failed) => return self.failed(failed.error, route, &snapshot, guard),
        };

        let failed = head.status.is_server_error();
        self.live.health.answered(failed, snapshot.config.outlier_detection.as_ref(), || self.live.clock());
        if let Some(measure) = &mut guard.measure {
            measure.status = head.status.as_u16();
        }
        if let Some(policy) = &route.advertised_policy {
            // Quotas with `advertise: always`: what is left, so clients can pace themselves.
            let scopes = [&*route.quotas.scope, &*snapshot.service.scope];
            respond::advertise(&mut head.fields, policy, scopes, &advertised);
        }
        let body = if upgrade && head.status == StatusCode::SWITCHING_PROTOCOLS {
            // The upgrade is measured as answered now; the tunnel holds the request's
            // slots for as long as it is open.
            guard.measure.take();
            ProxyBody::tunnel(lease.into_tunnel(), head.fields, guard)
        } else {
            ProxyBody::upstream(head.body, head.fields, guard, lease)
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        response
    }
}

impl Proxy {
    /// The answer to a request that got no answer's head from the service.
    #[cold]
    fn failed(&self, e: io::Error, route: &RouteState, snapshot: &Snapshot, guard: Guard) -> Response<ProxyBody> {
        if let Some(fault) = conn::client_fault(&e) {
            // The client's doing, not the service's: answered (if anyone is left to read
            // it), closed, and kept out of the service's SLIs.
            let response = match fault {
                conn::ClientFault::Stalled => respond::problem(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stalled past limits.body_read_timeout",
                    true,
                ),
                _ => respond::problem(StatusCode::BAD_REQUEST, "the request body broke off", true),
            };
            return local(response, guard, Origin::Client);
        }
        if e.kind() == io::ErrorKind::TimedOut {
            let response = respond::problem(StatusCode::GATEWAY_TIMEOUT, "the service did not answer in time", false);
            return local(response, guard, Origin::Timeout);
        }
        tracing::debug!(route = &*route.name, error = %e, "upstream request failed");
        self.live.health.answered(true, snapshot.config.outlier_detection.as_ref(), || self.live.clock());
        let response = respond::problem(StatusCode::BAD_GATEWAY, "the service could not be reached", false);
        local(response, guard, Origin::UpstreamError)
    }
}

/// 503 past a cap of the circuit breaker, counted: the service is given no more at once.
#[cold]
pub(super) fn overflow(live: &Live, limit: Limit, guard: Guard, close: bool) -> Response<ProxyBody> {
    live.breaker.tripped(limit);
    live.metrics.upstream_overflow(limit);
    let detail = match limit {
        Limit::Requests => "circuit_breaker.max_requests are in flight to the service",
        Limit::Connections => "circuit_breaker.max_connections are open to the service",
    };
    let mut response = respond::problem(StatusCode::SERVICE_UNAVAILABLE, detail, close);
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    local(response, guard, Origin::UpstreamOverflow)
}

/// The refusal of a quota, counted.
#[cold]
fn refused(route: &RouteState, refusal: &respond::Refusal, guard: Guard, close: bool) -> Response<ProxyBody> {
    route.metrics.decided(Decision::Limited);
    let origin = match refusal.kind {
        RefusalKind::Rate { .. } => Origin::Quota,
        RefusalKind::Concurrency { .. } => Origin::Concurrency,
        RefusalKind::Unavailable { .. } => Origin::QuotaUnavailable,
    };
    local(respond::refused(refusal, close), guard, origin)
}

/// 503 while the service is held unhealthy, with when to try again.
#[cold]
fn unhealthy(live: &Live, snapshot: &Snapshot, guard: Guard, close: bool) -> Response<ProxyBody> {
    let interval = snapshot.config.health_check.as_ref().map(|c| c.interval);
    let wait = live.health.retry_after(interval, live.clock());
    let mut response = respond::problem(StatusCode::SERVICE_UNAVAILABLE, "the service is unhealthy", close);
    response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
    local(response, guard, Origin::UpstreamUnhealthy)
}

/// A response sluice made itself, measured with `origin` when its body is sent.
fn local(mut response: Response<ProxyBody>, mut guard: Guard, origin: Origin) -> Response<ProxyBody> {
    if let Some(measure) = &mut guard.measure {
        measure.status = response.status().as_u16();
        measure.origin = origin;
    }
    response.body_mut().set_guard(guard);
    response
}
