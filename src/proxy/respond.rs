//! Every response sluice makes itself: problem+json bodies (RFC 9457), and for refusals
//! the `Retry-After`, `RateLimit-Policy` and `RateLimit` fields of the IETF httpapi
//! ratelimit-headers draft.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::admit::Advertised;
use super::body::ProxyBody;
use super::h1::Fields;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Why a request was refused by a quota.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `route name` or `service`; the policy name in the headers.
    pub scope: Arc<str>,
    pub kind: RefusalKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RefusalKind {
    /// Over a rate quota: `limit` requests at once, refilled in `window`.
    Rate { limit: u32, window: Duration, retry_after: Duration },
    /// `max` requests of this key are in flight.
    Concurrency { max: u32 },
    /// A global quota that Redis could not decide, under `on_error: deny`: try again
    /// after `retry_after`.
    Unavailable { retry_after: Duration },
}

/// Whole seconds, rounded up, at least 1: a client that waits this long will pass.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

// A refusal is what protects the service under a flood, so it is built by hand: no
// formatting machinery, no JSON tree (BENCHMARKS.md, session 5).
pub fn refused(refusal: &Refusal, close: bool) -> Response<ProxyBody> {
    let scope: &str = &refusal.scope;
    if let RefusalKind::Unavailable { retry_after } = refusal.kind {
        return unavailable(scope, retry_after, close);
    }
    let mut detail = String::with_capacity(64);
    // The policy is named after the scope, with `-concurrency` for a concurrency quota.
    let (suffix, quota, window, retry_after) = match &refusal.kind {
        RefusalKind::Rate { limit, window, retry_after } => {
            detail.extend(["rate quota of ", scope, " exceeded"]);
            ("", *limit, whole_seconds(*window).max(1), whole_seconds(*retry_after).max(1))
        }
        RefusalKind::Concurrency { max } => {
            detail.extend([itoa::Buffer::new().format(*max), " requests of ", scope, " are already in flight"]);
            ("-concurrency", *max, 1, 1)
        }
        RefusalKind::Unavailable { .. } => unreachable!("answered above"),
    };
    let mut response = problem(StatusCode::TOO_MANY_REQUESTS, &detail, close);
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    let policy = |parameters: &[&str]| {
        let mut value = String::with_capacity(64);
        value.extend(["\"", scope, suffix, "\""]);
        value.extend(parameters.iter().copied());
        header(value)
    };
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    headers.insert(RATELIMIT_POLICY, policy(&[";q=", a.format(quota), ";w=", b.format(window)]));
    headers.insert(RATELIMIT, policy(&[";r=0;t=", a.format(retry_after)]));
    response
}

/// Adds the `RateLimit-Policy` and `RateLimit` fields of the quotas that advertise
/// (`advertise: always`) to the service's response to an admitted request: `policy` is the
/// route's (built with the snapshot), and `RateLimit` lists what each quota has left, named
/// by its scope (`scopes[i]` for `advertised[i]`). They go with the service's fields, as
/// bytes: no header map is built for them.
#[cold]
pub fn advertise(fields: &mut Fields, policy: &HeaderValue, scopes: [&str; 2], advertised: &[Option<Advertised>; 2]) {
    let mut numbers = [itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new()];
    let [a, b, c, d] = &mut numbers;
    let mut state: [&[u8]; 14] = [b""; 14];
    let mut n = 0;
    for ((scope, quota), (remaining, reset)) in scopes.iter().zip(advertised).zip([(a, b), (c, d)]) {
        let Some(quota) = quota else { continue };
        let separator: &[u8] = if n == 0 { b"" } else { b", " };
        let member = [
            separator,
            b"\"",
            scope.as_bytes(),
            b"\";r=",
            remaining.format(quota.remaining).as_bytes(),
            b";t=",
            reset.format(quota.reset).as_bytes(),
        ];
        state[n..n + member.len()].copy_from_slice(&member);
        n += member.len();
    }
    fields.add(|field| {
        field("ratelimit-policy", &[policy.as_bytes()]);
        field("ratelimit", &state[..n]);
    });
}

/// 503 for a global quota of `scope` that Redis could not decide (`on_error: deny`).
#[cold]
fn unavailable(scope: &str, retry_after: Duration, close: bool) -> Response<ProxyBody> {
    let detail = format!("the global quota of {scope} cannot be decided now: its store is unavailable");
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, &detail, close);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry_after).max(1)));
    response
}

/// A problem+json response. `close` asks an HTTP/1 client to close the connection, for
/// refusals whose request body was not read.
pub fn problem(status: StatusCode, detail: &str, close: bool) -> Response<ProxyBody> {
    // Members in name order, as serde_json writes an object.
    let mut body = Vec::with_capacity(96 + detail.len());
    body.extend_from_slice(b"{\"detail\":");
    serde_json::to_writer(&mut body, detail).expect("a string serializes");
    body.extend_from_slice(b",\"status\":");
    body.extend_from_slice(status.as_str().as_bytes());
    body.extend_from_slice(b",\"title\":");
    serde_json::to_writer(&mut body, status.canonical_reason().unwrap_or("")).expect("a string serializes");
    body.extend_from_slice(b",\"type\":\"about:blank\"}");
    let mut response = Response::new(ProxyBody::local(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if close {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn header(value: String) -> HeaderValue {
    // Scope names are validated to [A-Za-z0-9._-], so the value is always visible ASCII.
    HeaderValue::try_from(value).expect("visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }

    #[test]
    fn rate_refusal_headers() {
        let refusal = Refusal {
            scope: "submit".into(),
            kind: RefusalKind::Rate {
                limit: 10,
                window: Duration::from_millis(1500),
                retry_after: Duration::from_millis(150),
            },
        };
        let response = refused(&refusal, true);
        let h = response.headers();
        assert_eq!(response.status(), 429);
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["ratelimit-policy"], "\"submit\";q=10;w=2");
        assert_eq!(h["ratelimit"], "\"submit\";r=0;t=1");
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(h["connection"], "close");
        let body = response.into_body().local_bytes().expect("a local body");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expected = serde_json::json!({
            "type": "about:blank", "title": "Too Many Requests", "status": 429,
            "detail": "rate quota of submit exceeded",
        });
        assert_eq!(json, expected);
        assert_eq!(body, expected.to_string(), "members in name order");
    }

    #[test]
    fn an_admitted_request_is_told_what_is_left() {
        use super::super::h1;
        let fields = || {
            let mut buf = bytes::BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Service: yes\r\nContent-Length: 0\r\n\r\n"[..]);
            match h1::parse_response(&mut buf, &http::Method::GET, false).unwrap() {
                h1::Parsed::Head(head) => head.fields,
                _ => panic!("a whole head"),
            }
        };
        let quota = |remaining, reset| Advertised { remaining, reset };
        let policy = HeaderValue::from_static("\"submit\";q=100;w=60");
        let list = |f: &Fields| {
            f.iter()
                .map(|(n, v)| format!("{}: {}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
                .collect::<Vec<_>>()
        };

        let mut one = fields();
        advertise(&mut one, &policy, ["submit", "service"], &[Some(quota(99, 1)), None]);
        let expected = ["X-Service: yes", "ratelimit-policy: \"submit\";q=100;w=60", "ratelimit: \"submit\";r=99;t=1"];
        assert_eq!(list(&one)[list(&one).len() - 3..], expected);
        let mut two = fields();
        advertise(&mut two, &policy, ["submit", "service"], &[Some(quota(7, 0)), Some(quota(3, 2))]);
        assert_eq!(two.get("ratelimit"), Some(&b"\"submit\";r=7;t=0, \"service\";r=3;t=2"[..]));
        // For an h2c client they become map entries like the service's own.
        let mut map = http::HeaderMap::new();
        two.into_map(&mut map);
        assert_eq!(map["ratelimit"], "\"submit\";r=7;t=0, \"service\";r=3;t=2");
        assert_eq!(map["ratelimit-policy"], "\"submit\";q=100;w=60");
        assert_eq!(map["x-service"], "yes");
    }

    #[test]
    fn concurrency_refusal_headers_and_an_escaped_detail() {
        let refusal = Refusal { scope: "service".into(), kind: RefusalKind::Concurrency { max: 20 } };
        let response = refused(&refusal, false);
        let h = response.headers();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["ratelimit-policy"], "\"service-concurrency\";q=20;w=1");
        assert_eq!(h["ratelimit"], "\"service-concurrency\";r=0;t=1");
        assert!(!h.contains_key("connection"));
        let body = response.into_body().local_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["detail"], "20 requests of service are already in flight");

        let body = problem(StatusCode::BAD_REQUEST, "a \"quoted\"\n\\ detail", false).into_body();
        let json: serde_json::Value = serde_json::from_slice(&body.local_bytes().unwrap()).unwrap();
        assert_eq!(json["detail"], "a \"quoted\"\n\\ detail");
        assert_eq!(json["status"], 400);
        assert_eq!(json["title"], "Bad Request");
    }
}
