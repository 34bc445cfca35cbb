//! Step 6 for a request that goes to the service over HTTP/2 (`upstream_protocol: http2`,
//! or `match_client` and an h2c client): the request rewritten by the same rules as for
//! HTTP/1.1 ([`upstream::h2_fields`]), sent on the worker's connection ([`super::h2client::H2Pool`]), and
//! its answer streamed back, trailers included. A path of its own, boxed by the caller, so
//! that none of its state is part of an HTTP/1.1 request's future.

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use http_body::Body as _;
use tokio::time::Instant;

use super::admit::Advertised;
use super::h1::{Fields, Framing};
use super::h2client::Failed;
use super::pool::Target;
use super::request::RequestFields;
use super::{grpc, respond, upstream, Guard, Peer, Proxy, ProxyBody, ProxyRequest, RequestBody};
use crate::snapshot::{RouteState, Snapshot};
use crate::upstream::breaker::Limit;

/// What the steps before it decided, for the answer.
pub struct Admitted<'a> {
    pub route: &'a RouteState,
    pub snapshot: &'a Arc<Snapshot>,
    pub advertised: [Option<Advertised>; 2],
    /// The client's connection closes after the answer (an HTTP/1.1 body left unread).
    pub close: bool,
}

impl Proxy {
    pub(super) async fn forward_h2(
        &self,
        req: ProxyRequest,
        peer: &Peer,
        (to, deadline): (Target<'_>, Instant),
        mut guard: Guard,
        call: Admitted<'_>,
    ) -> Response<ProxyBody> {
        let Admitted { route, snapshot, advertised, close } = call;
        // A gRPC call's deadline: the earlier of its `grpc-timeout` and the route's.
        let start = deadline - route.timeout;
        let deadline = grpc::timeout(&req.fields).map_or(deadline, |timeout| deadline.min(start + timeout));
        let (head, body) = request(req, peer, to.authority);
        let response = match self.h2.send(to, head, body, deadline).await {
            Ok(response) => response,
            Err(Failed::Overflow) => return super::overflow(&self.live, Limit::Connections, guard, close),
            Err(Failed::Io(e)) => return self.failed(e, route, snapshot, guard),
        };
        let (parts, body) = response.into_parts();
        // A gRPC call answered "trailers-only" has its status in its head.
        let grpc = grpc::status(&parts.headers);
        let failed = parts.status.is_server_error();
        self.live.health.answered(failed, snapshot.config.outlier_detection.as_ref(), || self.live.clock());
        if let Some(measure) = &mut guard.measure {
            measure.status = parts.status.as_u16();
            measure.grpc = grpc;
        }
        // The service's fields go on as h2 read them (its map: written from as they are, for
        // either protocol), with sluice's own beside them.
        let fields = route.advertised_policy.as_ref().map(|policy| {
            let mut fields = Fields::none();
            let scopes = [&*route.quotas.scope, &*snapshot.service.scope];
            respond::advertise(&mut fields, policy, scopes, &advertised);
            fields
        });
        let mut response = Response::new(ProxyBody::h2(body, fields, guard));
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers;
        response
    }
}

/// The request for the service: its fields by the proxy's rules, its authority the
/// client's `Host` (or HTTP/2 authority), else the service's.
fn request(req: ProxyRequest, peer: &Peer, service: &Authority) -> (Request<()>, RequestBody) {
    let ProxyRequest { method, uri, fields, body, .. } = req;
    let framing = match body.size_hint().exact() {
        _ if body.is_end_stream() => Framing::None,
        Some(len) => Framing::Length(len),
        None => Framing::Chunked,
    };
    let given = uri.authority().unwrap_or(service);
    let forward = upstream::Forward {
        host: given.as_str(),
        client: peer.forwarded_for.as_bytes(),
        upgrade: false,
        body: framing,
    };
    let (headers, host) = match fields {
        RequestFields::Map(map) => upstream::h2_fields_of_map(map, &forward),
        sent => upstream::h2_fields(|| sent.iter(), &forward),
    };
    let authority = host.and_then(|host| Authority::try_from(host.as_bytes()).ok()).unwrap_or_else(|| given.clone());
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = parts.path_and_query.or_else(|| Some(PathAndQuery::from_static("/")));
    let mut request = Request::new(());
    *request.method_mut() = method;
    // The path was read and normalized as valid, and the authority parsed: it builds.
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = headers;
    (request, body)
}
