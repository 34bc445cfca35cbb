//! Every response sluice makes itself: problem+json bodies (RFC 9457), and for refusals
//! the `Retry-After`, `RateLimit-Policy` and `RateLimit` fields of the IETF httpapi
//! ratelimit-headers draft.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ProxyBody;

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
}

/// Whole seconds, rounded up, at least 1: a client that waits this long will pass.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub fn refused(refusal: &Refusal, close: bool) -> Response<ProxyBody> {
    let scope = &refusal.scope;
    let (name, quota, window, retry_after, detail) = match &refusal.kind {
        RefusalKind::Rate { limit, window, retry_after } => (
            scope.to_string(),
            *limit,
            whole_seconds(*window).max(1),
            whole_seconds(*retry_after).max(1),
            format!("rate quota of {scope} exceeded"),
        ),
        RefusalKind::Concurrency { max } => {
            (format!("{scope}-concurrency"), *max, 1, 1, format!("{max} requests of {scope} are already in flight"))
        }
    };
    let mut response = problem(StatusCode::TOO_MANY_REQUESTS, &detail, close);
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    headers.insert("ratelimit-policy", header(format!("\"{name}\";q={quota};w={window}")));
    headers.insert("ratelimit", header(format!("\"{name}\";r=0;t={retry_after}")));
    response
}

/// A problem+json response. `close` asks an HTTP/1 client to close the connection, for
/// refusals whose request body was not read.
pub fn problem(status: StatusCode, detail: &str, close: bool) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(ProxyBody::local(body.to_string()));
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
    }
}
