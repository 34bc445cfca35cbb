//! The request's header rewriting of a proxy (RFC 9110 §7.6): hop-by-hop fields removed,
//! `X-Forwarded-For` appended, `X-Forwarded-Proto` set, `Host` kept; and the tunnel of an
//! upgraded connection. (The response's hop-by-hop fields are left out as
//! [`h1::parse_response`] reads it.)

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::h1;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks to switch protocols (WebSocket and the like, HTTP/1 only).
/// One with a body is forwarded as a plain request (`Upgrade` removed): its body and the
/// new protocol's bytes would share the client's connection.
pub fn is_upgrade<B: http_body::Body>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.body().is_end_stream()
        && req.headers().contains_key(header::UPGRADE)
        && h1::connection_options(req.headers()).any(|option| option.eq_ignore_ascii_case(b"upgrade"))
}

/// Turns the client's request into the request for the service, in place.
pub fn prepare<B>(req: &mut Request<B>, upstream: &Authority, client: &HeaderValue, upgrade: bool) {
    // HTTP/2 carries the host in :authority; the service, spoken to in HTTP/1.1, needs
    // Host. A request with neither (HTTP/1.0) names the service itself (whose URL the
    // config refuses with credentials in it).
    if !req.headers().contains_key(header::HOST) {
        let authority = req.uri().authority().unwrap_or(upstream);
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    // The URI and version stay as they came: `h1::write_request_head` writes the request
    // line in origin form and HTTP/1.1 whatever the client spoke.

    let headers = req.headers_mut();
    let upgrade_to = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    append_forwarded_for(headers, client);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Removes the fields that describe one connection, not the message: the fixed list and
/// every field the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are here: most messages carry none or only
    // `Connection`, and a hashed removal of each absent name costs more than the pass.
    const FIXED: [HeaderName; 4] = [KEEP_ALIVE, PROXY_CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE];
    let (mut connection, mut fixed, mut te) = (false, [false; 4], false);
    for name in headers.keys() {
        connection |= name == header::CONNECTION;
        te |= name == header::TE;
        for (present, hop) in fixed.iter_mut().zip(&FIXED) {
            *present |= name == hop;
        }
    }
    if connection {
        // `close` and `keep-alive`, the usual options, name no field to look up (and
        // Keep-Alive is on the fixed list): then nothing is collected or allocated.
        let named: Vec<HeaderName> = h1::connection_options(headers)
            .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for (present, name) in fixed.into_iter().zip(FIXED) {
        if present {
            headers.remove(name);
        }
    }
    // `TE: trailers` is how gRPC asks for trailers; any other TE is hop-by-hop.
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// `client` is the client's address, formatted once per connection: with no proxy before
/// sluice, it is the whole value.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    }
    let mut value = String::new();
    for previous in headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
        value.push_str(previous);
        value.push_str(", ");
    }
    value.push_str(client.to_str().expect("an address is ASCII"));
    headers.insert(X_FORWARDED_FOR, HeaderValue::try_from(value).expect("visible ASCII"));
}

/// Joins the client's connection, after the `101`, and the service's, each with what
/// its side sent early (after its head), until either side closes.
pub async fn tunnel((mut client, client_early): (TcpStream, Bytes), (mut service, early): (TcpStream, Bytes)) {
    let joined = async {
        client.write_all(&early).await?;
        service.write_all(&client_early).await?;
        tokio::io::copy_bidirectional(&mut client, &mut service).await
    };
    if let Err(e) = joined.await {
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
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["1.1.1.1, 2.2.2.2, 127.0.0.1"]);
    }
}
