//! The service's response head: parsed in place (its fields stay bytes), and the head
//! written to a client with sluice's own framing.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{Method, StatusCode};

use super::*;

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
