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
    let (mut lengths, mut lengths_differ, mut codings) = (None, false, Codings::default());
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
            Known::TransferEncoding => codings.add(value),
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
    let body = if codings.seen {
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if lengths.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        codings.framing()?;
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

/// What a request's `Transfer-Encoding` fields say, read as one list (RFC 9112 §6.1).
#[derive(Default)]
struct Codings {
    seen: bool,
    /// An element that is not a coding's name (`\xa0chunked`, `chunked;x=1`, an empty field).
    malformed: bool,
    chunked: u32,
    last_is_chunked: bool,
    other: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        let mut any = false;
        // Empty elements of a list are allowed and mean nothing (RFC 9110 §5.6.1).
        for element in value.split(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty()) {
            any = true;
            let name = element.split(|&b| b == b';').next().unwrap_or_default();
            if !is_token(trim_ows(name)) {
                self.malformed = true;
            } else if element.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
                self.last_is_chunked = true;
            } else if trim_ows(name).eq_ignore_ascii_case(b"chunked") {
                self.malformed = true; // chunked takes no parameters
            } else {
                self.other = true;
                self.last_is_chunked = false;
            }
        }
        self.malformed |= !any;
    }

    /// `Ok` for chunked alone. 400 for a malformed list, chunked twice, or a list that does
    /// not end in chunked (its end could not be found, RFC 9112 §6.3); 501 for a well-formed
    /// coding other than chunked before it, which sluice does not decode.
    fn framing(&self) -> Result<(), Refused> {
        if self.malformed {
            Err(bad("malformed Transfer-Encoding"))
        } else if self.chunked > 1 {
            Err(bad("chunked applied more than once"))
        } else if !self.last_is_chunked {
            Err(bad("a request's last transfer coding must be chunked"))
        } else if self.other {
            Err(Refused(StatusCode::NOT_IMPLEMENTED, "only the chunked transfer coding is served"))
        } else {
            Ok(())
        }
    }
}

/// Without the optional whitespace (space and tab only) around a list element.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A token of RFC 9110 §5.6.2: one or more tchar.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn bad(why: &'static str) -> Refused {
    Refused(StatusCode::BAD_REQUEST, why)
}
