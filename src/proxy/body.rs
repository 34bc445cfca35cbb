//! The bodies of a request: the client's, as sluice reads it ([`RequestBody`]), and the
//! response's ([`ProxyBody`]): a small local body, or the upstream's body streamed
//! through. A response body carries the request's [`Guard`], which ends when the last
//! byte is sent or the client goes away: that is when the slots are given back and the
//! request is measured.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::front::ClientBody;
use super::h1::{Decoder, Fields};
use super::pool::Lease;
use crate::metrics::Origin;
use crate::quota::global::Slot;
use crate::quota::Permit;
use crate::snapshot::Snapshot;
use crate::upstream::breaker::Connection;

/// A request's body as it reaches the [`super::Proxy`].
pub enum RequestBody {
    /// No body (most requests): nothing to read or hand back.
    Empty,
    /// From an HTTP/1.1 connection, read by sluice.
    Client(ClientBody),
    /// From an HTTP/2 stream, read by hyper.
    Hyper(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(io::Error::other),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Hyper(body) => body.size_hint(),
        }
    }
}

/// A response's body; for an answer from the service, its fields too: they are bytes of
/// its head, which the client's connection writes as they are or (h2c) makes a map of.
pub struct ProxyBody {
    inner: Inner,
    guard: Option<Guard>,
    fields: Option<Fields>,
}

enum Inner {
    Local(Option<Bytes>),
    /// The service's body as its framing reads it off the connection it comes on, which
    /// is given back once the body is read whole.
    Upstream(Decoder, Option<Lease>),
    /// The answer was `101`: the connection to the service (until taken), and what it sent
    /// after its head, for the client's connection to be joined with; and its place in the
    /// count of connections to the service.
    Tunnel {
        service: Option<(TcpStream, Bytes)>,
        _counted: Connection,
    },
    /// An HTTP/2 service's body: its data and trailers.
    H2(super::h2body::Received),
}

impl ProxyBody {
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        Self { inner: Inner::Local(Some(bytes.into())), guard: None, fields: None }
    }

    pub fn upstream(body: Decoder, fields: Fields, guard: Guard, lease: Lease) -> Self {
        let mut lease = Some(lease);
        // A body that is over before it starts (HEAD, 204, 304, `Content-Length: 0`) is
        // not polled.
        if body.is_done() {
            give_back(&mut lease);
        }
        Self { inner: Inner::Upstream(body, lease), guard: Some(guard), fields: Some(fields) }
    }

    /// An HTTP/2 service's body, holding the request's guard until it ends.
    pub fn h2(body: super::h2body::Received, fields: Option<Fields>, guard: Guard) -> Self {
        Self { inner: Inner::H2(body), guard: Some(guard), fields }
    }

    /// The body of a `101`: the connection to the service, holding the request's slots.
    pub fn tunnel((service, counted): ((TcpStream, Bytes), Connection), fields: Fields, guard: Guard) -> Self {
        Self {
            inner: Inner::Tunnel { service: Some(service), _counted: counted },
            guard: Some(guard),
            fields: Some(fields),
        }
    }

    /// The `grpc-status` the call ended with, for its measurement.
    pub fn set_grpc(&mut self, code: u8) {
        if let Some(measure) = self.guard.as_mut().and_then(|g| g.measure.as_mut()) {
            measure.grpc = Some(code);
        }
    }

    /// Whether sluice made this body itself.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Inner::Local(_))
    }

    /// A local body's bytes, leaving it empty (its guard stays).
    pub fn take_local(&mut self) -> Option<Bytes> {
        match &mut self.inner {
            Inner::Local(bytes) => bytes.take(),
            _ => None,
        }
    }

    /// The service's fields, for the response head.
    pub fn take_fields(&mut self) -> Option<Fields> {
        self.fields.take()
    }

    /// The connection to the service, if this is the body of a `101`.
    pub fn take_tunnel(&mut self) -> Option<(TcpStream, Bytes)> {
        match &mut self.inner {
            Inner::Tunnel { service, .. } => service.take(),
            _ => None,
        }
    }

    /// What a local body holds, unsent.
    #[cfg(test)]
    pub fn local_bytes(self) -> Option<Bytes> {
        match self.inner {
            Inner::Local(bytes) => bytes,
            Inner::Upstream(..) | Inner::Tunnel { .. } | Inner::H2(_) => None,
        }
    }

    pub fn set_guard(&mut self, guard: Guard) {
        self.guard = Some(guard);
    }

    /// The client stopped taking this response (it did not read within
    /// `limits.write_timeout`, or hung up): the request is counted as the client's
    /// failure, never in the service's SLIs.
    pub fn client_failed(&mut self) {
        if let Some(measure) = self.guard.as_mut().and_then(|g| g.measure.as_mut()) {
            measure.origin = Origin::Client;
        }
    }
}

fn give_back(lease: &mut Option<Lease>) {
    if let Some(lease) = lease.take() {
        lease.give_back();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Local(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Inner::Upstream(body, slot) => match slot {
                None => None, // given back: the body was over
                Some(lease) => {
                    let frame = ready!(lease.poll_body(body, cx));
                    // Read to the end? hyper may not poll again after the last frame, so look now.
                    if body.is_done() {
                        give_back(slot);
                    }
                    frame
                }
            },
            Inner::Tunnel { .. } => None,
            Inner::H2(body) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(trailers) = frame.as_ref().and_then(|f| f.as_ref().ok()).and_then(Frame::trailers_ref) {
                    // A gRPC call's status comes in its trailers.
                    if let Some(code) = super::grpc::status(trailers) {
                        this.set_grpc(code);
                    }
                }
                frame
            }
        };
        if !matches!(frame, Some(Ok(_))) {
            // The end, or the upstream failed: the request is over either way.
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(bytes) => bytes.is_none(),
            Inner::Upstream(body, _) => body.is_done(),
            Inner::Tunnel { .. } => true,
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(body, _) => body.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
            Inner::Tunnel { .. } => SizeHint::with_exact(0),
            Inner::H2(body) => body.size_hint(),
        }
    }
}

/// Everything a request holds until it is over: its concurrency slots, its measurement
/// and its place in the in-flight count that a drain waits for. Dropped in field order:
/// the slots go back before the request is measured and counted out.
pub struct Guard {
    pub permits: [Option<Permit>; 2],
    /// Slots of global concurrency quotas (the route's, the service's), when any is held:
    /// boxed, so a request on a route without one carries a pointer's worth.
    pub slots: Option<Box<[Option<Slot>; 2]>>,
    /// Its place among the requests in flight to the service, under `circuit_breaker`.
    pub sent: Option<crate::upstream::breaker::InFlight>,
    pub measure: Option<Measure>,
    pub _in_flight: InFlight,
}

/// Measures one request when dropped: its duration, status and origin into the route's
/// metrics and, if it reached the service, its SLIs.
pub struct Measure {
    snapshot: Arc<Snapshot>,
    route: usize,
    start: Instant,
    pub status: u16,
    pub origin: Origin,
    /// The `grpc-status` a gRPC call ended with, the service's or sluice's.
    pub grpc: Option<u8>,
}

impl Measure {
    pub fn new(snapshot: Arc<Snapshot>, route: usize, start: Instant) -> Self {
        snapshot.route_at(route).metrics.inflight.inc();
        Self { snapshot, route, start, status: 0, origin: Origin::Upstream, grpc: None }
    }
}

impl Drop for Measure {
    fn drop(&mut self) {
        let duration = self.start.elapsed();
        let route = self.snapshot.route_at(self.route);
        route.metrics.inflight.dec();
        route.metrics.finished(self.origin, self.status, duration);
        if let Some(code) = self.grpc {
            route.metrics.grpc.count(code);
        }
        if self.origin.reached_service() {
            // A gRPC call fails with a status `grpc_failures` names, even under HTTP 200.
            let grpc_failed = self.grpc.is_some_and(|code| self.snapshot.config.grpc_failures.contains(code));
            let failed = self.origin != Origin::Upstream || self.status >= 500 || grpc_failed;
            route.sla.record(duration, failed);
        }
    }
}

/// Counts requests in flight, so a drain knows when they are done.
#[derive(Default)]
pub struct Tracker {
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct InFlight(Arc<Tracker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
