//! The way to the service: a pooled keep-alive client, and the header rewriting of a
//! proxy (RFC 9110 §7.6): hop-by-hop fields removed, `X-Forwarded-For` appended,
//! `X-Forwarded-Proto` set, `Host` kept.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

pub type Client = HyperClient<HttpConnector, Incoming>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks to switch protocols (WebSocket and the like, HTTP/1 only).
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Turns the client's request into the request for the service, in place.
pub fn prepare(req: &mut Request<Incoming>, upstream: &Authority, client_ip: IpAddr, upgrade: bool) {
    // HTTP/2 carries the host in :authority; the service, spoken to in HTTP/1, needs Host.
    if !req.headers().contains_key(header::HOST) {
        if let Some(authority) = req.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.clone());
    parts.path_and_query = req.uri().path_and_query().cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are valid");
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    let upgrade_to = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    append_forwarded_for(headers, client_ip);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // hyper sends a GET whose length it does not know as bodiless unless told otherwise;
    // a chunked body from the client must reach the service whole.
    let body = req.body();
    if !body.is_end_stream() && body.size_hint().exact().is_none() {
        req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// Cleans the service's response for the client, in place.
pub fn clean_response<B>(response: &mut Response<B>) {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return; // Connection and Upgrade are the point of a 101.
    }
    remove_hop_by_hop(response.headers_mut());
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the fields that describe one connection, not the message: the fixed list and
/// every field the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    // `TE: trailers` is how gRPC asks for trailers; any other TE is hop-by-hop.
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: IpAddr) {
    let mut value = String::new();
    for previous in headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
        value.push_str(previous);
        value.push_str(", ");
    }
    value.push_str(&client_ip.to_string());
    headers.insert(X_FORWARDED_FOR, HeaderValue::try_from(value).expect("visible ASCII"));
}

/// Joins the client's and the service's upgraded connections until either side closes.
pub async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h);
        assert!(h.contains_key(header::TE));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["1.1.1.1, 2.2.2.2, 127.0.0.1"]);
    }
}
