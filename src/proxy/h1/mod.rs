//! HTTP/1.1 as bytes, both ways (RFC 9112): the request heads sluice reads from clients
//! and writes to the service, the response heads it parses from the service and writes to
//! clients, and the framing of bodies. No I/O here: [`super::front`] drives a client's
//! connection, [`super::conn`] one to the service.
//!
//! Bytes from a client are untrusted, so a request head is read strictly: one way to
//! frame its body or a 400, so that no two readers of it (sluice and the service) can
//! disagree on where it ends. What the service sends reaches the client re-framed, so
//! nothing in it can be read as a second response.
//!
//! One file a concern: [`request`] reads a client's request head, [`response`] reads the
//! service's response head and writes one to a client, [`body`] frames bodies (lengths and
//! the chunked codec); the fields of a head, and the few names sluice reads, are here.

mod body;
mod request;
mod response;
#[cfg(test)]
mod tests;

use std::io;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use body::{chunk_size_line, write_last_chunk, Decoder, Event};
pub use request::{parse_request, Refused, RequestHead};
pub use response::{parse_response, write_response_head, Head, Parsed};

/// The longest response head accepted, and the most fields in a head.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_FIELDS: usize = 100;
/// The longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// How a body is framed: a response's to the client, a request's to the service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body, and no framing field (1xx, 204; a request without a body).
    None,
    /// No body, but the framing fields the service sent describe the body a GET would
    /// have had (HEAD, 304): they are written as they are.
    AsSent,
    Length(u64),
    Chunked,
    /// The body ends when the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// The fields of a head as they came: the head's bytes, and the place of each field's
/// name and value in them. They are written on as these bytes (names in the sender's
/// case), and looked up by a pass that tells the few names sluice reads apart without
/// hashing ([`Known`]). A map is built only for hyper, which answers h2c clients
/// ([`Fields::into_map`]): building one hashes and checks every field, and was the
/// largest cost of a proxied request when every head had one.
#[derive(Debug)]
pub struct Fields {
    head: Bytes,
    places: Vec<(Range<usize>, Range<usize>)>,
    dated: bool,
}

impl Fields {
    /// Each field's name (in the sender's case) and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.places.iter().map(|(name, value)| (&self.head[name.clone()], &self.head[value.clone()]))
    }

    /// Adds fields after the sender's: `add` is given a writer of one field (its name, and
    /// its value as parts: visible ASCII, no line break). The head is copied once, with the
    /// new fields after it, so that they are fields like the others to every reader.
    pub fn add(&mut self, add: impl FnOnce(&mut dyn FnMut(&str, &[&[u8]]))) {
        let mut head = BytesMut::with_capacity(self.head.len() + 160);
        head.extend_from_slice(&self.head);
        let places = &mut self.places;
        add(&mut |name, value| {
            let start = head.len();
            head.extend_from_slice(name.as_bytes());
            let colon = head.len();
            head.extend_from_slice(b": ");
            for part in value {
                head.extend_from_slice(part);
            }
            places.push((start..colon, colon + 2..head.len()));
            head.extend_from_slice(b"\r\n");
        });
        self.head = head.freeze();
    }

    /// Whether one of them is `Date` (noted for a response only).
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// The first value of the field `name` (in any case), if any.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(field, _)| field.eq_ignore_ascii_case(name.as_bytes())).map(|(_, value)| value)
    }

    /// No fields: for sluice's own to be added to (an HTTP/2 service's answer, whose own
    /// are a map).
    pub fn none() -> Fields {
        Fields { head: Bytes::new(), places: Vec::new(), dated: false }
    }

    /// Appends them to `map`, each value a shared slice of the head.
    pub fn into_map(self, map: &mut HeaderMap) {
        map.reserve(self.places.len());
        for (name, value) in self.places {
            // httparse checked both as HTTP defines them, and so does `http`: neither fails.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(&self.head[name]), HeaderValue::from_maybe_shared(self.head.slice(value)))
            {
                map.append(name, value);
            }
        }
    }
}

/// The fields whose names sluice reads a head for, told apart without hashing.
#[derive(Clone, Copy, PartialEq)]
pub enum Known {
    Connection,
    ContentLength,
    Date,
    Expect,
    Host,
    KeepAlive,
    ProxyConnection,
    Te,
    TransferEncoding,
    Upgrade,
    XForwardedFor,
    XForwardedProto,
    Other,
}

impl Known {
    /// What `name`, a token as httparse checked it, is.
    pub fn of(name: &[u8]) -> Known {
        // In a token, `| 0x20` makes a letter lowercase, keeps `-`, and turns no other byte
        // into either: so one OR and compare a byte matches a lowercase name of letters
        // and dashes in any case, for a third of what `eq_ignore_ascii_case` costs.
        let is = |known: &str| name.iter().zip(known.as_bytes()).all(|(&byte, &known)| byte | 0x20 == known);
        // The length and first letter leave one name to compare, most often none.
        match (name.len(), name.first().map_or(0, u8::to_ascii_lowercase)) {
            (2, b't') if is("te") => Known::Te,
            (4, b'd') if is("date") => Known::Date,
            (4, b'h') if is("host") => Known::Host,
            (6, b'e') if is("expect") => Known::Expect,
            (7, b'u') if is("upgrade") => Known::Upgrade,
            (10, b'c') if is("connection") => Known::Connection,
            (10, b'k') if is("keep-alive") => Known::KeepAlive,
            (14, b'c') if is("content-length") => Known::ContentLength,
            (16, b'p') if is("proxy-connection") => Known::ProxyConnection,
            (17, b't') if is("transfer-encoding") => Known::TransferEncoding,
            (15, b'x') if is("x-forwarded-for") => Known::XForwardedFor,
            (17, b'x') if is("x-forwarded-proto") => Known::XForwardedProto,
            _ => Known::Other,
        }
    }
}

/// The place of `part`, a slice of `buf`, in it.
fn place(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// The options the `Connection` fields list (`close`, `keep-alive`, names of fields that
/// go no further), trimmed.
pub fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).into_iter().flat_map(|v| options(v.as_bytes()))
}

/// The options one `Connection` value lists.
pub fn options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether the last coding a `Transfer-Encoding` value lists is `chunked`.
fn last_coding_is_chunked(codings: &[u8]) -> bool {
    codings.rsplit(|&b| b == b',').next().is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The one length every Content-Length value (and list member) gives, or none.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<u64> {
    let mut length = None;
    for member in values.flat_map(options) {
        let n = decimal(member)?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// A length as RFC 9110 writes it: decimal digits only, no sign or spaces, at most 19 (so
/// it fits).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
