//! The request for the service, as a proxy rewrites it (RFC 9110 §7.6): hop-by-hop fields
//! left out (and every field `Connection` names), `X-Forwarded-For` appended,
//! `X-Forwarded-Proto` set, `Host` kept; and the tunnel of an upgraded connection. (The
//! response's hop-by-hop fields are left out as [`h1::parse_response`] reads it.)

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::h1::{self, Framing, Known};

/// What sluice sets in the request it forwards.
pub struct Forward<'a> {
    /// `Host` for a request that has none: its target's authority (HTTP/2), or the
    /// service's (HTTP/1.0; the config refuses a service URL with credentials in it).
    pub host: &'a str,
    /// The client's address, formatted once per connection.
    pub client: &'a [u8],
    /// The request switches protocols: its `Upgrade` goes on, with `Connection: upgrade`.
    pub upgrade: bool,
    /// How its body goes: `None` (no body), `Length` or `Chunked`.
    pub body: Framing,
}

/// Writes the head of the request for the service: the request line in origin form and
/// HTTP/1.1 (whatever the client spoke), the client's fields (each call of `fields` goes
/// over them) but those that describe its connection or that sluice sets, then sluice's
/// own. Written straight from the client's fields, with no map to edit: an edit of a map
/// hashes.
pub fn write_head<'a, I>(method: &Method, path: &str, fields: impl Fn() -> I, forward: &Forward, out: &mut Vec<u8>)
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let passed = pass_all(&fields, out);
    if !passed.host {
        field(b"host", forward.host.as_bytes(), out);
    }
    if let (true, Some(protocol)) = (forward.upgrade, passed.upgrade) {
        field(b"connection", b"upgrade", out);
        field(b"upgrade", protocol, out);
    }
    // The client is appended to the addresses a proxy before sluice sent.
    out.extend_from_slice(b"x-forwarded-for: ");
    if passed.forwarded_for {
        for (_, value) in fields().filter(|&(name, _)| Known::of(name) == Known::XForwardedFor) {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(forward.client);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    match forward.body {
        Framing::Length(len) => field(b"content-length", itoa::Buffer::new().format(len).as_bytes(), out),
        Framing::Chunked => field(b"transfer-encoding", b"chunked", out),
        // An empty body whose length the client gave keeps it: some services want a
        // length on every POST.
        _ if passed.length => field(b"content-length", b"0", out),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// The fields of the request for an HTTP/2 service, by the same rules as [`write_head`]'s:
/// its map, and the `Host` the client gave (the request's authority, as HTTP/2 carries it).
pub fn h2_fields<'a, I>(fields: impl Fn() -> I, forward: &Forward) -> (HeaderMap, Option<HeaderValue>)
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    // The fields that go on, written as for HTTP/1.1 (the same code: its inlining on the
    // HTTP/1.1 path is kept as it is), then read into the map.
    let mut out = Vec::with_capacity(512);
    let passed = pass_all(&fields, &mut out);
    let mut map = HeaderMap::with_capacity(16);
    let mut host = None;
    for line in out.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 2..]);
        // Checked as HTTP defines them when they were read: neither fails.
        let Ok(value) = HeaderValue::from_bytes(value) else { continue };
        if Known::of(name) == Known::Host {
            host.get_or_insert(value);
        } else if let Ok(name) = HeaderName::from_bytes(name) {
            map.append(name, value);
        }
    }
    let earlier = fields().filter(|&(name, _)| passed.forwarded_for && Known::of(name) == Known::XForwardedFor);
    forwarding(&mut map, earlier.map(|(_, value)| value), forward, passed.length);
    (map, host)
}

/// The fields of an h2c client's request for an HTTP/2 service, by the same rules: its map
/// goes on as it is (no copy), less `Host`, which is the authority. h2 refused the
/// hop-by-hop fields, and any `TE` but `trailers`, when it read the request: none is left
/// to take out.
pub fn h2_fields_of_map(mut map: HeaderMap, forward: &Forward) -> (HeaderMap, Option<HeaderValue>) {
    let host = map.remove(header::HOST);
    let length = map.remove(header::CONTENT_LENGTH).is_some();
    // Every value the client gave (`remove` would return only the first).
    let earlier: Vec<HeaderValue> = map.get_all(X_FORWARDED_FOR).iter().cloned().collect();
    forwarding(&mut map, earlier.iter().map(HeaderValue::as_bytes), forward, length);
    (map, host)
}

/// What the proxy adds to a request for an HTTP/2 service: `X-Forwarded-For` (the
/// `earlier` values and the client), `X-Forwarded-Proto`, and the body's length.
fn forwarding<'a>(map: &mut HeaderMap, earlier: impl Iterator<Item = &'a [u8]>, forward: &Forward, length: bool) {
    let mut forwarded_for = Vec::with_capacity(64);
    for value in earlier {
        forwarded_for.extend_from_slice(value);
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(forward.client);
    if let Ok(value) = HeaderValue::from_bytes(&forwarded_for) {
        map.insert(X_FORWARDED_FOR, value);
    }
    map.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match forward.body {
        Framing::Length(len) => drop(map.insert(header::CONTENT_LENGTH, HeaderValue::from(len))),
        Framing::Chunked => {}
        _ if length => drop(map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"))),
        _ => {}
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Writes the client's fields that go on to `out` (each call of `fields` goes over them),
/// and says what it saw: [`pass_fields`], and again without the fields `Connection` names
/// when it names any (rare).
#[inline(always)] // on the HTTP/1.1 path, as pass_fields is (BENCHMARKS.md, issue 23)
fn pass_all<'a, I>(fields: impl Fn() -> I, out: &mut Vec<u8>) -> Passed<'a>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let start = out.len();
    let passed = pass_fields(fields(), &[], out);
    if passed.names_fields {
        return pass_unnamed(fields, start, out);
    }
    passed
}

/// [`pass_all`]'s second pass, out of the common path: the fields written again from
/// `start`, without those `Connection` names.
#[cold]
#[inline(never)]
fn pass_unnamed<'a, I>(fields: impl Fn() -> I, start: usize, out: &mut Vec<u8>) -> Passed<'a>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    out.truncate(start);
    let connection = fields().filter(|&(name, _)| Known::of(name) == Known::Connection);
    let named: Vec<&[u8]> = connection.flat_map(|(_, value)| h1::options(value)).collect();
    pass_fields(fields(), &named, out)
}

/// What [`pass_fields`] saw.
#[derive(Default)]
struct Passed<'a> {
    host: bool,
    length: bool,
    forwarded_for: bool,
    /// The first `Upgrade` value.
    upgrade: Option<&'a [u8]>,
    /// `Connection` names fields other than itself (`close`, `keep-alive`).
    names_fields: bool,
}

/// Writes the fields that go on as they came, but those `named` in `Connection`.
fn pass_fields<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    named: &[&[u8]],
    out: &mut Vec<u8>,
) -> Passed<'a> {
    let mut passed = Passed::default();
    for (name, value) in fields {
        let known = Known::of(name);
        if known == Known::Upgrade && passed.upgrade.is_none() {
            passed.upgrade = Some(value);
        }
        if named.iter().any(|named| named.eq_ignore_ascii_case(name)) {
            continue;
        }
        let pass = match known {
            Known::Connection => {
                let own =
                    |option: &[u8]| option.eq_ignore_ascii_case(b"close") || option.eq_ignore_ascii_case(b"keep-alive");
                passed.names_fields |= h1::options(value).any(|option| !own(option));
                false
            }
            Known::Host => {
                passed.host = true;
                true
            }
            Known::ContentLength => {
                passed.length = true;
                false
            }
            Known::XForwardedFor => {
                passed.forwarded_for = true;
                false
            }
            // `TE: trailers` is how gRPC asks for trailers; any other TE is hop-by-hop.
            Known::Te => value == b"trailers",
            Known::KeepAlive
            | Known::ProxyConnection
            | Known::TransferEncoding
            | Known::Upgrade
            | Known::XForwardedProto => false,
            Known::Date | Known::Expect | Known::Other => true,
        };
        if pass {
            field(name, value, out);
        }
    }
    passed
}

#[inline(always)] // pass_fields is called from two places: kept inline in both (BENCHMARKS.md, issue 23)
fn field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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

    fn head(fields: &[(&str, &str)], forward: &Forward) -> String {
        let mut out = Vec::new();
        let each = || fields.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes()));
        write_head(&Method::GET, "/p?q", each, forward, &mut out);
        String::from_utf8(out).unwrap()
    }

    const PLAIN: Forward = Forward { host: "svc:80", client: b"127.0.0.1", upgrade: false, body: Framing::None };

    #[test]
    fn hop_by_hop_fields_go_and_sluices_are_set() {
        let fields = [
            ("Host", "example.test"),
            ("Connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "gzip"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "3"),
            ("X-Forwarded-Proto", "https"),
            ("Upgrade", "websocket"),
            ("X-Kept", "1"),
        ];
        let forward = Forward { body: Framing::Length(3), ..PLAIN };
        assert_eq!(
            head(&fields, &forward),
            "GET /p?q HTTP/1.1\r\nHost: example.test\r\nX-Kept: 1\r\nx-forwarded-for: 127.0.0.1\r\n\
             x-forwarded-proto: http\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            head(&[("te", "trailers")], &Forward { body: Framing::Chunked, ..PLAIN }),
            "GET /p?q HTTP/1.1\r\nte: trailers\r\nhost: svc:80\r\nx-forwarded-for: 127.0.0.1\r\n\
             x-forwarded-proto: http\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn an_http2_request_gets_the_same_rules_and_its_host_as_authority() {
        let fields = [
            ("Host", "example.test"),
            ("Connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("content-type", "application/grpc"),
        ];
        let each = || fields.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes()));
        let (map, host) = h2_fields(each, &Forward { body: Framing::Chunked, ..PLAIN });
        assert_eq!(host.unwrap(), "example.test");
        let mut names: Vec<_> = map.keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "te", "x-forwarded-for", "x-forwarded-proto"]);
        assert_eq!(map["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
        assert_eq!(map["te"], "trailers");
        let (map, host) = h2_fields(std::iter::empty, &Forward { body: Framing::Length(5), ..PLAIN });
        assert_eq!((host, &map["content-length"]), (None, &HeaderValue::from(5)));
    }

    #[test]
    fn an_h2c_clients_map_goes_on_by_the_same_rules() {
        let mut map = HeaderMap::new();
        for (name, value) in [
            ("host", "example.test"),
            ("te", "trailers"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("content-length", "5"),
            ("content-type", "application/grpc"),
        ] {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let (map, host) = h2_fields_of_map(map, &Forward { body: Framing::Length(5), ..PLAIN });
        assert_eq!(host.unwrap(), "example.test");
        let mut names: Vec<_> = map.keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "content-type", "te", "x-forwarded-for", "x-forwarded-proto"]);
        assert_eq!(map["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!((map["x-forwarded-proto"].as_bytes(), map["content-length"].as_bytes()), (&b"http"[..], &b"5"[..]));
        // No body, but a length given: 0, as over HTTP/1.1; none given, none sent.
        let given = HeaderMap::from_iter([(header::CONTENT_LENGTH, HeaderValue::from_static("0"))]);
        assert_eq!(h2_fields_of_map(given, &PLAIN).0["content-length"], "0");
        let (map, host) = h2_fields_of_map(HeaderMap::new(), &PLAIN);
        assert!(host.is_none() && !map.contains_key("content-length"));
        assert_eq!(map["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn forwarded_for_appends_and_an_upgrade_goes_on() {
        let fields = [("host", "h"), ("x-forwarded-for", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")];
        assert!(head(&fields, &PLAIN).contains("\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 127.0.0.1\r\n"));
        let fields = [("host", "h"), ("connection", "Upgrade"), ("upgrade", "websocket")];
        let upgraded = head(&fields, &Forward { upgrade: true, ..PLAIN });
        assert!(upgraded.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n"), "{upgraded}");
        assert!(!head(&fields, &PLAIN).contains("pgrade"), "an upgrade not taken goes no further");
        // An empty body keeps the length the client gave it.
        assert!(head(&[("host", "h"), ("content-length", "0")], &PLAIN).contains("\r\ncontent-length: 0\r\n"));
    }
}
