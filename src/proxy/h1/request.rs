//! A client's request head, read strictly: one way to frame its body, or a refusal.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{Method, StatusCode, Uri, Version};

use super::*;

/// A request head read from a client.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// All its fields, as they came.
    pub fields: Fields,
    /// `Length` or `Chunked`; `Done` when the request has no body.
    pub body: Decoder,
    /// The client will send another request on this connection after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The client takes trailers (`TE: trailers`) after a chunked response body.
    pub trailers: bool,
    /// The client asks to switch protocols: HTTP/1.1, an `Upgrade` field, and `upgrade`
    /// among the `Connection` options.
    pub upgrade: bool,
}

/// A request head that cannot be served: the status to answer with, and why. The
/// connection closes after the answer, since where the request ends is unknown.
#[derive(Debug, PartialEq)]
pub struct Refused(pub StatusCode, pub &'static str);

/// Parses the request head at the start of `buf` and takes it off; `None` until the whole
/// head is there. A head over `max_head` bytes is refused with 431.
pub fn parse_request(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, Refused> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let too_large = Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large");
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(too_large),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many fields in the request head"))
        }
        Err(httparse::Error::Version) => {
            return Err(Refused(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1 are served"))
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(|_| bad("bad method"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let target = parsed.path.unwrap_or_default();
    // Origin form, absolute form, or `*`; the authority form is CONNECT's, which a
    // reverse proxy does not serve.
    if !(target.starts_with('/') || target == "*" || target.contains("://")) {
        return Err(bad("the request target must be a path or an absolute URL"));
    }

    // One pass: each field's place, and those that frame the body or decide the
    // connection's reuse.
    let mut places = Vec::with_capacity(parsed.headers.len());
    let mut hosts = 0;
    let (mut lengths, mut lengths_differ, mut codings, mut more_codings) = (None, false, None, false);
    let (mut close, mut keep_alive_asked, mut expect_continue, mut trailers) = (false, false, false, false);
    let (mut upgrade_field, mut upgrade_asked) = (false, false);
    for field in &*parsed.headers {
        let (name, value) = (field.name.as_bytes(), field.value);
        match Known::of(name) {
            Known::Host => hosts += 1,
            Known::ContentLength => {
                lengths_differ |= lengths.is_some_and(|first| first != value);
                lengths = lengths.or(Some(value));
            }
            Known::TransferEncoding => {
                more_codings |= codings.is_some();
                codings = codings.or(Some(value));
            }
            Known::Connection => {
                for option in options(value) {
                    close |= option.eq_ignore_ascii_case(b"close");
                    keep_alive_asked |= option.eq_ignore_ascii_case(b"keep-alive");
                    upgrade_asked |= option.eq_ignore_ascii_case(b"upgrade");
                }
            }
            Known::Upgrade => upgrade_field = true,
            Known::Expect => expect_continue |= value.eq_ignore_ascii_case(b"100-continue"),
            Known::Te => {
                trailers |= options(value).any(|coding| {
                    let name = coding.split(|&b| b == b';').next().unwrap_or_default();
                    name.trim_ascii().eq_ignore_ascii_case(b"trailers")
                })
            }
            _ => {}
        }
        places.push((place(buf, name), place(buf, value)));
    }

    if version == Version::HTTP_11 && hosts != 1 {
        return Err(bad("an HTTP/1.1 request needs exactly one Host field"));
    }
    // One framing or none (RFC 9112 §6): a request with both, or a coding sluice does not
    // decode, could be read one way here and another by the service.
    let body = if let Some(codings) = codings {
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if lengths.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if more_codings || !codings.eq_ignore_ascii_case(b"chunked") {
            return Err(Refused(StatusCode::NOT_IMPLEMENTED, "only the chunked transfer coding is served"));
        }
        Decoder::chunked()
    } else if let Some(length) = lengths {
        // Each a plain number, the same in every field: a list, which the service might
        // read otherwise, is refused.
        match decimal(length).filter(|_| !lengths_differ).ok_or(bad("bad Content-Length"))? {
            0 => Decoder::Done,
            len => Decoder::Length(len),
        }
    } else {
        Decoder::Done
    };

    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_asked);
    let expect_continue = expect_continue && version == Version::HTTP_11;
    let upgrade = upgrade_field && upgrade_asked && version == Version::HTTP_11;
    let target = place(buf, target.as_bytes());
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad("bad request target"))?;
    let fields = Fields { head, places, dated: false };
    Ok(Some(RequestHead { method, uri, version, fields, body, keep_alive, expect_continue, trailers, upgrade }))
}

fn bad(why: &'static str) -> Refused {
    Refused(StatusCode::BAD_REQUEST, why)
}
