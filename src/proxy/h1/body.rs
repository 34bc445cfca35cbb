//! Bodies: writing chunk lines and trailers, and reading a response body by its framing
//! (a length, chunked, or until the service closes).

use std::io;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{invalid, MAX_CHUNK_LINE, MAX_FIELDS, MAX_HEAD};

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
