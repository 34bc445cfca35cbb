//! gRPC as the request path sees it (gRPC over HTTP/2, "PROTOCOL-HTTP2.md"): a request is
//! gRPC when it comes over HTTP/2 with `content-type: application/grpc*`; sluice's own
//! answers to it are gRPC statuses a client can read, not HTTP errors it sees as transport
//! failures; and its `grpc-timeout` bounds its wait for the service.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode, Version};

use super::{ProxyBody, RequestFields};

/// The gRPC status codes sluice answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Unknown = 2,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// How long a client's retry policy should wait (gRPC's A6 retry design).
const GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is gRPC: HTTP/2 (gRPC has no HTTP/1.1 form), and its content type
/// `application/grpc` or one of its subtypes. An HTTP/1.1 request costs one comparison.
#[inline]
pub fn is_grpc(version: Version, fields: &RequestFields) -> bool {
    version == Version::HTTP_2 && fields.get(&CONTENT_TYPE).is_some_and(|t| t.starts_with(b"application/grpc"))
}

/// The `grpc-status` of a head or trailers, if it has one (a number, as gRPC sends it).
pub fn status(fields: &http::HeaderMap) -> Option<u8> {
    fields.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// The status that stands for sluice's own answer `status`: a quota's refusal is
/// RESOURCE_EXHAUSTED, a service that cannot be reached or held down UNAVAILABLE, a
/// timeout DEADLINE_EXCEEDED, a request sluice refused as malformed INTERNAL (as gRPC's
/// HTTP mapping has 400).
pub fn code_of(status: StatusCode) -> Code {
    match status.as_u16() {
        429 => Code::ResourceExhausted,
        502 | 503 => Code::Unavailable,
        408 | 504 => Code::DeadlineExceeded,
        400 | 413 | 414 | 431 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// Sluice's own answer to a gRPC request, as gRPC says it: HTTP 200 and a
/// "Trailers-Only" response (one HEADERS frame, ending the stream) with `grpc-status` and
/// `grpc-message` (the problem's detail, percent-encoded). The `RateLimit` fields and
/// `Retry-After` stay, with `grpc-retry-pushback-ms` for gRPC's own retries. The request
/// is measured as the answer it stands for (its origin and HTTP status, already set).
pub fn reply(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    let code = code_of(response.status());
    response.body_mut().set_grpc(code as u8);
    let detail = response.body_mut().take_local().and_then(|body| {
        let problem: serde_json::Value = serde_json::from_slice(&body).ok()?;
        problem["detail"].as_str().map(percent_encode)
    });
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code as u8)));
    if let Some(message) = detail.and_then(|d| HeaderValue::try_from(d).ok()) {
        headers.insert(GRPC_MESSAGE, message);
    }
    let seconds = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(seconds) = seconds {
        headers.insert(GRPC_PUSHBACK, HeaderValue::from(seconds * 1000));
    }
    response
}

/// The request's `grpc-timeout`, if it has a valid one: 1 to 8 digits and a unit (`H`,
/// `M`, `S`, `m`, `u`, `n`).
pub fn timeout(fields: &RequestFields) -> Option<Duration> {
    let value = fields.get(&GRPC_TIMEOUT)?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &'static str)]) -> RequestFields {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        RequestFields::Map(map)
    }

    #[test]
    fn grpc_is_http2_with_a_grpc_content_type() {
        let grpc = fields(&[("content-type", "application/grpc+proto")]);
        assert!(is_grpc(Version::HTTP_2, &grpc));
        assert!(!is_grpc(Version::HTTP_11, &grpc), "gRPC has no HTTP/1.1 form");
        assert!(!is_grpc(Version::HTTP_2, &fields(&[("content-type", "application/json")])));
        assert!(!is_grpc(Version::HTTP_2, &fields(&[])));
    }

    #[test]
    fn grpc_timeout_reads_each_unit_and_refuses_the_rest() {
        let read = |value: &'static str| timeout(&fields(&[("grpc-timeout", value)]));
        assert_eq!(read("100m"), Some(Duration::from_millis(100)));
        assert_eq!(read("2S"), Some(Duration::from_secs(2)));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("250u"), Some(Duration::from_micros(250)));
        assert_eq!(read("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789m", "1.5S", "-1S", "10x"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_local_answer_becomes_a_grpc_status() {
        let mut refused =
            super::super::respond::problem(StatusCode::TOO_MANY_REQUESTS, "rate quota of r exceeded", false);
        refused.headers_mut().insert(RETRY_AFTER, HeaderValue::from(2));
        let reply = reply(refused);
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["grpc-status"], "8");
        assert_eq!(reply.headers()["grpc-message"], "rate quota of r exceeded");
        assert_eq!(reply.headers()["grpc-retry-pushback-ms"], "2000");
        assert_eq!(reply.headers()["retry-after"], "2");
        assert_eq!(reply.headers()["content-type"], "application/grpc");
        assert_eq!(reply.into_body().local_bytes(), None, "trailers only: no body");
        assert_eq!(code_of(StatusCode::GATEWAY_TIMEOUT), Code::DeadlineExceeded);
        assert_eq!(code_of(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
        assert_eq!(code_of(StatusCode::BAD_GATEWAY), Code::Unavailable);
        assert_eq!(percent_encode("100% sûr"), "100%25 s%C3%BBr");
    }
}
