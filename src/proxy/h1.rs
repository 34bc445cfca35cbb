//! HTTP/1.1 as bytes, both ways (RFC 9112): the request heads sluice reads from clients
//! and writes to the service, the response heads it parses from the service and writes to
//! clients, and the framing of bodies. No I/O here: [`super::front`] drives a client's
//! connection, [`super::conn`] one to the service.
//!
//! Bytes from a client are untrusted, so a request head is read strictly: one way to
//! frame its body or a 400, so that no two readers of it (sluice and the service) can
//! disagree on where it ends. What the service sends reaches the client re-framed, so
//! nothing in it can be read as a second response.

use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// The longest response head accepted, and the most fields in a head.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_FIELDS: usize = 100;
/// The longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Writes each field as a `name: value` line (of a head, or of trailers).
pub fn write_fields(fields: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the end of a chunked body: the last (empty) chunk and the trailers.
pub fn write_last_chunk(trailers: &HeaderMap, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    write_fields(trailers, out);
    out.extend_from_slice(b"\r\n");
}

/// The line that starts a chunk of `len` bytes: its size in hex, CRLF.
pub fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, place) in out[..digits].iter_mut().enumerate() {
        *place = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    &out[..digits + 2]
}

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

/// Writes a response head: the status line, the service's `fields` if any, the `headers`
/// but the framing ones and `Connection`, then `framing`'s field, `connection` (`close`,
/// `keep-alive`, `upgrade`) if given, and `date` if no field is `Date`.
pub fn write_response_head(
    status: StatusCode,
    fields: Option<&Fields>,
    headers: &HeaderMap,
    framing: Framing,
    connection: Option<&str>,
    date: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    if let Some(fields) = fields {
        for (name, value) in fields.iter() {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        dated = fields.dated();
    }
    for (name, value) in headers {
        if name == header::CONNECTION
            || (framing != Framing::AsSent && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING))
        {
            continue;
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::AsSent | Framing::UntilClose => {}
    }
    if let Some(connection) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(connection.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head read from the service.
pub struct Head {
    pub status: StatusCode,
    /// The fields that go on to the client. Hop-by-hop fields are left out (RFC 9110
    /// §7.6.1), and so is `Content-Length` but where it describes a body that is not sent
    /// (HEAD, 304): the client's framing is sluice's own.
    pub fields: Fields,
    pub body: Decoder,
    /// The service will take another request on this connection after the body.
    pub keep_alive: bool,
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

/// What the start of `buf` holds.
pub enum Parsed {
    /// Not the whole head yet.
    Partial,
    /// A 1xx other than 101, already taken off `buf`: the real answer follows.
    Interim,
    Head(Head),
}

/// Parses the response head at the start of `buf` and takes it off. `request` is the
/// method the response answers (a HEAD response has no body whatever it says);
/// `upgrade`, whether the request asked to switch protocols.
pub fn parse_response(buf: &mut BytesMut, request: &Method, upgrade: bool) -> io::Result<Parsed> {
    // Uninitialized slots: zeroing a hundred of them would cost more than the parse.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let too_large = || invalid("response head too large");
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("too many fields in the response head")),
        Err(_) => return Err(invalid("malformed response head")),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| invalid("bad status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !upgrade {
        return Err(invalid("101 without an upgrade asked for"));
    }
    // A HEAD or 304 answer's length is the body's it stands for, sent as it came.
    let length_as_sent =
        (request == Method::HEAD && status != StatusCode::NO_CONTENT) || status == StatusCode::NOT_MODIFIED;

    // One pass: the fields the client gets, and those that frame the body and decide the
    // connection's reuse. A 101 keeps what belongs to the protocol switched to.
    let mut places = Vec::with_capacity(parsed.headers.len());
    let (mut dated, mut close, mut keep_alive_asked, mut names_fields) = (false, false, false, false);
    // The Content-Length values (the first, and whether there are more), and the last
    // Transfer-Encoding one.
    let (mut lengths, mut more_lengths, mut codings) = (None, false, None);
    for field in &*parsed.headers {
        let (name, value) = (field.name.as_bytes(), field.value);
        let passed = match Known::of(name) {
            Known::Connection => {
                for option in options(value) {
                    let (is_close, is_keep_alive) =
                        (option.eq_ignore_ascii_case(b"close"), option.eq_ignore_ascii_case(b"keep-alive"));
                    (close, keep_alive_asked) = (close | is_close, keep_alive_asked | is_keep_alive);
                    names_fields |= !is_close && !is_keep_alive;
                }
                false
            }
            Known::ContentLength => {
                more_lengths |= lengths.is_some();
                lengths = lengths.or(Some(value));
                length_as_sent
            }
            Known::TransferEncoding => {
                codings = Some(value);
                false
            }
            Known::KeepAlive | Known::ProxyConnection | Known::Upgrade => switching,
            // `TE: trailers` is how gRPC asks for trailers; any other TE is hop-by-hop.
            Known::Te => switching || value == b"trailers",
            Known::Date => {
                dated = true;
                true
            }
            Known::Host | Known::Expect | Known::XForwardedFor | Known::XForwardedProto | Known::Other => true,
        };
        if passed {
            places.push((place(buf, name), place(buf, value)));
        }
    }
    if names_fields && !switching {
        // Rare: `Connection` names fields that describe this connection only.
        let connection = parsed.headers.iter().filter(|f| Known::of(f.name.as_bytes()) == Known::Connection);
        let named: Vec<&[u8]> = connection.flat_map(|f| options(f.value)).collect();
        places.retain(|(name, _)| !named.iter().any(|n| n.eq_ignore_ascii_case(&buf[name.clone()])));
    }

    let version_11 = parsed.version != Some(0);
    let mut keep_alive = !close && (version_11 || keep_alive_asked);
    let body = if switching {
        keep_alive = false;
        Decoder::Done
    } else if request == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Decoder::Done
    } else if let Some(codings) = codings {
        // Transfer-Encoding overrides Content-Length, which is not passed on (RFC 9112
        // §6.3); a message that had both is not trusted with the next request.
        keep_alive &= lengths.is_none();
        if last_coding_is_chunked(codings) {
            Decoder::chunked()
        } else {
            keep_alive = false;
            Decoder::UntilClose
        }
    } else if let Some(first) = lengths {
        let length = if more_lengths {
            let fields = parsed.headers.iter().filter(|f| Known::of(f.name.as_bytes()) == Known::ContentLength);
            content_length(fields.map(|f| f.value))
        } else {
            content_length(std::iter::once(first))
        };
        Decoder::Length(length.ok_or_else(|| invalid("bad Content-Length"))?)
    } else {
        keep_alive = false;
        Decoder::UntilClose
    };

    let fields = Fields { head: buf.split_to(len).freeze(), places, dated };
    Ok(Parsed::Head(Head { status, fields, body, keep_alive }))
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

/// The framing of a response body, and where in it the reader is.
#[derive(Debug, PartialEq)]
pub enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the service closes the connection.
    UntilClose,
    Done,
}

/// Where in a chunked body the reader is: at a size line, in a chunk's data (this many
/// bytes left), at the CRLF after it, or at the trailers after the last chunk.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What [`Decoder::decode`] found.
#[derive(Debug)]
pub enum Event {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is over.
    End,
    /// More bytes are needed (what was taken so far is in the decoder's state).
    More,
}

impl Decoder {
    pub fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size)
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The bytes of body left, when they are known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body off the start of `buf`. `closed`: the service has
    /// closed the connection, so `buf` is all there will be.
    pub fn decode(&mut self, buf: &mut BytesMut, closed: bool) -> io::Result<Event> {
        loop {
            match self {
                Decoder::Done => return Ok(Event::End),
                Decoder::Length(0) => *self = Decoder::Done,
                Decoder::Length(left) => {
                    let Some(data) = take_data(buf, left, closed)? else { return Ok(Event::More) };
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Event::Data(data));
                }
                Decoder::UntilClose if !buf.is_empty() => return Ok(Event::Data(buf.split().freeze())),
                Decoder::UntilClose if closed => *self = Decoder::Done,
                Decoder::UntilClose => return Ok(Event::More),
                Decoder::Chunked(chunk) => match decode_chunked(chunk, buf, closed)? {
                    Some(Event::End) => *self = Decoder::Done,
                    Some(trailers @ Event::Trailers(_)) => {
                        *self = Decoder::Done;
                        return Ok(trailers);
                    }
                    Some(event) => return Ok(event),
                    None => {}
                },
            }
        }
    }
}

/// Up to `left` bytes of data off `buf`, counted off `left`; `None` if `buf` is empty
/// and more may come.
fn take_data(buf: &mut BytesMut, left: &mut u64, closed: bool) -> io::Result<Option<Bytes>> {
    if buf.is_empty() {
        return if closed { Err(truncated()) } else { Ok(None) };
    }
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    *left -= n as u64;
    Ok(Some(buf.split_to(n).freeze()))
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the service closed the connection mid-body")
}

/// One step of chunked decoding: an event to return, or `None` to go on (the state moved).
fn decode_chunked(chunk: &mut Chunk, buf: &mut BytesMut, closed: bool) -> io::Result<Option<Event>> {
    let more = |buf: &BytesMut, limit: usize| {
        if buf.len() > limit {
            Err(invalid("chunked framing line too long"))
        } else if closed {
            Err(truncated())
        } else {
            Ok(Some(Event::More))
        }
    };
    match chunk {
        Chunk::Size => {
            let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else { return more(buf, MAX_CHUNK_LINE) };
            if end > MAX_CHUNK_LINE {
                return Err(invalid("chunked framing line too long"));
            }
            let size = chunk_size(&buf[..end]).ok_or_else(|| invalid("bad chunk size"))?;
            let _ = buf.split_to(end + 2);
            *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            Ok(None)
        }
        Chunk::Data(left) => {
            let Some(data) = take_data(buf, left, closed)? else { return Ok(Some(Event::More)) };
            if *left == 0 {
                *chunk = Chunk::DataEnd;
            }
            Ok(Some(Event::Data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return more(buf, 2);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            let _ = buf.split_to(2);
            *chunk = Chunk::Size;
            Ok(None)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                return Ok(Some(Event::End));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid("bad trailer"))?;
                        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid("bad trailer"))?;
                        trailers.append(name, value);
                    }
                    let _ = buf.split_to(len); // with the empty line that ends the body
                    Ok(Some(Event::Trailers(trailers)))
                }
                Ok(httparse::Status::Partial) => more(buf, MAX_HEAD),
                Err(_) => Err(invalid("malformed trailers")),
            }
        }
    }
}

/// The size in a chunk-size line: hex digits, then nothing or extensions after `;`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str, method: Method) -> io::Result<Parsed> {
        parse_response(&mut BytesMut::from(text), &method, false)
    }

    fn head(text: &str) -> Head {
        head_of(text, Method::GET)
    }

    fn head_of(text: &str, method: Method) -> Head {
        match parse(text, method) {
            Ok(Parsed::Head(head)) => head,
            Ok(_) => panic!("not a whole head: {text:?}"),
            Err(e) => panic!("refused {text:?}: {e}"),
        }
    }

    /// The fields a client gets, as `name: value` lines.
    fn passed(head: &Head) -> Vec<String> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        head.fields.iter().map(|(name, value)| format!("{}: {}", text(name), text(value))).collect()
    }

    #[test]
    fn chunk_size_lines_are_hex() {
        let mut line = [0; 18];
        assert_eq!(chunk_size_line(0, &mut line), b"0\r\n");
        assert_eq!(chunk_size_line(255, &mut line), b"ff\r\n");
        assert_eq!(chunk_size_line(4096, &mut line), b"1000\r\n");
        assert_eq!(chunk_size_line(usize::MAX, &mut line), b"ffffffffffffffff\r\n");
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_with_its_fields() {
        let mut buf = BytesMut::from("HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\nabc");
        let Ok(Parsed::Head(head)) = parse_response(&mut buf, &Method::GET, false) else { panic!("no head") };
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(passed(&head), ["X-A: 1", "x-a: 2"]);
        assert_eq!((head.body, head.keep_alive), (Decoder::Length(3), true));
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn a_partial_head_waits_and_an_endless_one_is_refused() {
        assert!(matches!(parse("HTTP/1.1 200 OK\r\ncontent-len", Method::GET), Ok(Parsed::Partial)));
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(parse(&endless, Method::GET).is_err());
        assert!(parse("HTTP/1.1 2000 OK\r\n\r\n", Method::GET).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nbad field\r\n\r\n", Method::GET).is_err());
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), Method::GET).is_err());
    }

    #[test]
    fn interim_answers_are_skipped_and_101_needs_an_upgrade() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(parse_response(&mut buf, &Method::POST, false), Ok(Parsed::Interim)));
        let Ok(Parsed::Head(head)) = parse_response(&mut buf, &Method::POST, false) else { panic!("no head") };
        assert_eq!((head.status, head.body), (StatusCode::NO_CONTENT, Decoder::Done));
        let switch = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        assert!(parse(switch, Method::GET).is_err());
        let Ok(Parsed::Head(head)) = parse_response(&mut BytesMut::from(switch), &Method::GET, true) else {
            panic!("no head")
        };
        assert_eq!(passed(&head), ["upgrade: websocket"], "the front writes its own Connection");
        assert_eq!((head.body, head.keep_alive), (Decoder::Done, false));
    }

    #[test]
    fn the_body_framing_follows_rfc_9112() {
        let of = |text: &str| {
            let head = head(text);
            (head.body, head.keep_alive)
        };
        assert_eq!(of("HTTP/1.1 200 OK\r\n\r\n"), (Decoder::UntilClose, false));
        assert_eq!(of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), (Decoder::Done, true));
        assert_eq!(of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), (Decoder::chunked(), true));
        assert_eq!(of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), (Decoder::UntilClose, false));
        assert_eq!(of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"), (Decoder::chunked(), true));
        assert_eq!(
            of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"),
            (Decoder::Length(5), false)
        );
        assert_eq!(of("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"), (Decoder::Length(5), false));
        assert_eq!(
            of("HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: Keep-Alive\r\n\r\n"),
            (Decoder::Length(5), true)
        );
        // A HEAD answer has no body whatever its fields say.
        let head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD);
        assert_eq!(head.body, Decoder::Done);
        assert_eq!(passed(&head), ["content-length: 5"], "the length of the body a GET would get");
        let head = head_of("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", Method::HEAD);
        assert_eq!((passed(&head), head.body), (vec![], Decoder::Done), "a 204 has no length");
        let head = head_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", Method::GET);
        assert_eq!((passed(&head), head.body), (vec!["content-length: 5".to_string()], Decoder::Done));
    }

    #[test]
    fn hop_by_hop_fields_are_not_passed_on() {
        let head = head(
            "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Private\r\nx-private: 1\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nUpgrade: y\r\nTE: gzip\r\nDate: D\r\n\
             Content-Length: 2\r\nX-Empty:\r\n\r\n",
        );
        assert_eq!(passed(&head), ["Server: s", "Date: D", "X-Empty: "]);
        assert!(head.fields.dated());
        assert_eq!(passed(&self::head("HTTP/1.1 200 OK\r\nTE: trailers\r\n\r\n")), ["TE: trailers"]);
        // An h2c client gets them as a map, lowercase.
        let mut map = HeaderMap::new();
        head.fields.into_map(&mut map);
        let names: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server", "date", "x-empty"]);
    }

    #[test]
    fn conflicting_lengths_are_refused_and_transfer_encoding_wins() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n", Method::GET).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n", Method::GET).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n", Method::GET).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n", Method::GET).is_err());
        for same in ["content-length: 5\r\ncontent-length: 5, 5", "content-length: 5,5", "content-length:  5 "] {
            let same = head(&format!("HTTP/1.1 200 OK\r\n{same}\r\n\r\n"));
            assert_eq!(same.body, Decoder::Length(5));
            assert!(passed(&same).is_empty(), "the client's length is sluice's");
        }
        let both = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(passed(&both).is_empty(), "neither is passed on");
        assert_eq!((both.body, both.keep_alive), (Decoder::chunked(), false));
    }

    /// Feeds `wire` to a decoder in pieces of `step` bytes; the body, its trailers and
    /// what is left after it.
    fn decode_all(mut decoder: Decoder, wire: &[u8], step: usize, close: bool) -> io::Result<(Vec<u8>, HeaderMap)> {
        let (mut buf, mut body, mut trailers) = (BytesMut::new(), Vec::new(), HeaderMap::new());
        let mut pieces = wire.chunks(step.max(1));
        loop {
            match decoder.decode(&mut buf, false)? {
                Event::Data(data) => body.extend_from_slice(&data),
                Event::Trailers(t) => trailers = t,
                Event::End => {
                    assert!(buf.is_empty() && pieces.next().is_none(), "bytes left after the body");
                    return Ok((body, trailers));
                }
                Event::More => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None if close => match decoder.decode(&mut buf, true)? {
                        Event::End => return Ok((body, trailers)),
                        other => panic!("{other:?} after the close"),
                    },
                    None => panic!("wants more than the whole body"),
                },
            }
        }
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_whatever_the_pieces(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..6),
            step in 1usize..64,
            with_trailer in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            for chunk in &chunks {
                wire.extend_from_slice(format!("{:X};ext=1\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(if with_trailer { b"0\r\nx-sum: 7\r\n\r\n" } else { b"0\r\n\r\n" });
            let (body, trailers) = decode_all(Decoder::chunked(), &wire, step, false).unwrap();
            prop_assert_eq!(body, chunks.concat());
            prop_assert_eq!(trailers.get("x-sum").is_some(), with_trailer);
        }

        #[test]
        fn sized_and_close_delimited_bodies_decode_whatever_the_pieces(
            data in prop::collection::vec(any::<u8>(), 0..2000),
            step in 1usize..700,
        ) {
            let (body, _) = decode_all(Decoder::Length(data.len() as u64), &data, step, false).unwrap();
            prop_assert_eq!(&body, &data);
            let (body, _) = decode_all(Decoder::UntilClose, &data, step, true).unwrap();
            prop_assert_eq!(body, data);
        }
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for wire in [&b"zz\r\nab\r\n0\r\n\r\n"[..], b"2\r\nabc\r\n0\r\n\r\n", b"2 x\r\nab\r\n0\r\n\r\n", b"\r\n"] {
            assert!(decode_all(Decoder::chunked(), wire, 3, false).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(Decoder::chunked(), &endless, 1000, false).is_err());
    }

    #[test]
    fn a_close_mid_body_is_an_error() {
        let mut buf = BytesMut::from("ab");
        let mut sized = Decoder::Length(5);
        assert!(matches!(sized.decode(&mut buf, false), Ok(Event::Data(_))));
        assert_eq!(sized.decode(&mut buf, true).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut chunked = Decoder::chunked();
        assert_eq!(chunked.decode(&mut BytesMut::from("5\r\nab"), true).map(|_| ()).ok(), Some(()));
        assert!(chunked.decode(&mut BytesMut::new(), true).is_err());
    }

    fn request(text: &str) -> Result<Option<RequestHead>, Refused> {
        parse_request(&mut BytesMut::from(text), 8192)
    }

    #[test]
    fn a_request_head_is_taken_off_the_buffer_with_its_framing() {
        let mut buf = BytesMut::from("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabcGET");
        let head = parse_request(&mut buf, 8192).unwrap().unwrap();
        assert_eq!((&head.method, head.uri.to_string()), (&Method::POST, "/a?b=1".to_owned()));
        assert_eq!(head.fields.get("x-a"), Some(&b"1"[..]));
        assert_eq!((head.body, head.keep_alive, head.expect_continue), (Decoder::Length(3), true, false));
        assert_eq!(&buf[..], b"abcGET");

        let head = request("PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\nExpect: 100-Continue\r\n\r\n");
        let head = head.unwrap().unwrap();
        assert_eq!((head.body, head.expect_continue, head.trailers), (Decoder::chunked(), true, false));
        let head = request("GET / HTTP/1.1\r\nHost: x\r\nTE: gzip;q=0.5, Trailers\r\n\r\n").unwrap().unwrap();
        assert!(head.trailers);
        let head = request("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let head = head.unwrap().unwrap();
        assert_eq!((head.body, head.keep_alive), (Decoder::Done, false));
        assert!(request("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "a partial head waits");
    }

    #[test]
    fn an_upgrade_is_asked_by_both_fields_in_http_1_1() {
        let upgrade = |head: &str| request(head).unwrap().unwrap().upgrade;
        assert!(upgrade("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nupgrade: ws\r\n\r\n"));
        assert!(!upgrade("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: ws\r\n\r\n"), "not a connection option");
        assert!(!upgrade("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n"), "no protocol named");
        assert!(!upgrade("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"), "HTTP/1.0");
    }

    #[test]
    fn http10_keeps_the_connection_only_when_asked_and_needs_no_host() {
        let keep = |text: &str| request(text).unwrap().unwrap().keep_alive;
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"));
        assert!(!request("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap().expect_continue);
    }

    #[test]
    fn heads_that_could_be_read_two_ways_are_refused() {
        let status = |text: &str| request(text).map(|_| ()).map_err(|Refused(status, _)| status.as_u16());
        for (text, code) in [
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET x:1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/3\r\nHost: x\r\n\r\n", 505),
        ] {
            assert_eq!(status(text), Err(code), "{text:?}");
        }
        // The same length twice, in two fields, is one length.
        let head = request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().body, Decoder::Length(2));
    }

    #[test]
    fn heads_over_the_limit_are_431() {
        let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(request(&long).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(request(&endless).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(request(&many).unwrap_err().0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn response_heads_carry_sluices_framing_and_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let write = |headers: &HeaderMap, framing, connection| {
            let mut out = Vec::new();
            write_response_head(StatusCode::OK, None, headers, framing, connection, b"D", &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            write(&headers, Framing::Length(3), None),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            write(&headers, Framing::Chunked, Some("close")),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            write(&headers, Framing::AsSent, None),
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\nx-a: 1\r\ndate: D\r\n\r\n"
        );
        headers.insert(header::DATE, HeaderValue::from_static("Then"));
        assert!(write(&headers, Framing::None, None).ends_with("date: Then\r\n\r\n"), "a date that came is kept");

        // The service's fields go first, as they came; sluice's after them.
        let service = head("HTTP/1.1 200 OK\r\nServer: s\r\nDate: Then\r\nContent-Length: 1\r\n\r\n");
        let local = HeaderMap::from_iter([(header::CONNECTION, HeaderValue::from_static("close"))]);
        let mut out = Vec::new();
        write_response_head(StatusCode::OK, Some(&service.fields), &local, Framing::Length(1), None, b"D", &mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: Then\r\ncontent-length: 1\r\n\r\n");
    }
}
