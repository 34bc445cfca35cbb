//! Writing a response to an HTTP/1.1 client: its head, then its body as the service sends
//! it, gathered into few writes, each bounded by `limits.write_timeout`.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Sleep;

use super::{Shared, GATHER};
use crate::proxy::h1::{self, Framing};
use crate::proxy::ProxyBody;

/// What the request said about the answer it takes.
#[derive(Clone, Copy)]
pub(super) struct Asked {
    /// A `HEAD` request: the answer has no body.
    pub head: bool,
    pub version: Version,
    /// The client asked to keep the connection.
    pub keep_alive: bool,
    /// The client takes trailers after a chunked body.
    pub trailers: bool,
}

/// Sends `response` to a request that asked as `asked` says: whether the connection can
/// carry another request after it.
pub(super) async fn respond(
    writer: &mut OwnedWriteHalf,
    shared: &Shared,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    asked: Asked,
    patience: Duration,
) -> io::Result<bool> {
    let Asked { head: head_request, version, keep_alive, trailers } = asked;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut keep_alive =
        keep_alive && !h1::connection_options(&parts.headers).any(|o| o.eq_ignore_ascii_case(b"close"));
    let framing = if status.is_informational() || status == StatusCode::NO_CONTENT {
        Framing::None
    } else if head_request || status == StatusCode::NOT_MODIFIED {
        Framing::AsSent
    } else {
        match body.size_hint().exact() {
            Some(len) => Framing::Length(len),
            None if version == Version::HTTP_11 => Framing::Chunked,
            None => Framing::UntilClose,
        }
    };
    keep_alive &= framing != Framing::UntilClose;
    let connection = match (keep_alive, version) {
        (false, _) => Some("close"),
        (true, Version::HTTP_10) => Some("keep-alive"),
        (true, _) => None,
    };
    out.clear();
    // The service's fields are a temporary here: a local would be kept across the awaits
    // below, in every connection's task.
    h1::write_response_head(status, body.take_fields().as_ref(), &parts.headers, framing, connection, &date(), out);
    shared.answered.store(true, Ordering::Relaxed);
    let mut left = match framing {
        Framing::None | Framing::AsSent => {
            drop(body); // over: the request is measured now
            write_within(writer, out, patience).await?;
            return Ok(keep_alive);
        }
        Framing::Length(len) => len,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    let chunked = framing == Framing::Chunked;

    loop {
        // Frames that are ready are gathered; what is gathered is written before waiting.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let Some(frame) = next else {
            write_within(writer, out, patience).await.inspect_err(|_| body.client_failed())?;
            out.clear();
            continue;
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers end a chunked body, for a client that takes them; else they go.
                Err(frame) => {
                    if let (true, Ok(fields)) = (chunked && trailers, frame.into_trailers()) {
                        h1::write_last_chunk(&fields, out);
                        write_within(writer, out, patience).await.inspect_err(|_| body.client_failed())?;
                        return Ok(keep_alive);
                    }
                    continue;
                }
            },
            // The service's body broke off: the client sees the message cut short.
            Some(Err(e)) => return Err(e),
            None if chunked => {
                h1::write_last_chunk(&HeaderMap::new(), out);
                write_within(writer, out, patience).await.inspect_err(|_| body.client_failed())?;
                return Ok(keep_alive);
            }
            None if left == 0 || framing == Framing::UntilClose => {
                write_within(writer, out, patience).await.inspect_err(|_| body.client_failed())?;
                return Ok(keep_alive);
            }
            None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended short of its length")),
        };
        if data.is_empty() {
            continue;
        }
        if data.len() as u64 > left {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the body ran past its length"));
        }
        left -= data.len() as u64;
        if chunked {
            out.extend_from_slice(h1::chunk_size_line(data.len(), &mut [0; 18]));
        }
        if data.len() <= GATHER {
            out.extend_from_slice(&data);
        } else {
            write_within(writer, out, patience).await.inspect_err(|_| body.client_failed())?;
            out.clear();
            write_within(writer, &data, patience).await.inspect_err(|_| body.client_failed())?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= GATHER {
            write_within(writer, out, patience).await.inspect_err(|_| body.client_failed())?;
            out.clear();
        }
    }
}

/// Writes all of `bytes`, failing with `TimedOut` once the client has taken none of them
/// for `patience` (`limits.write_timeout`). The timer is made only when a write has to
/// wait, which most never do, and starts over whenever the client takes some.
async fn write_within(writer: &mut OwnedWriteHalf, mut bytes: &[u8], patience: Duration) -> io::Result<()> {
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    poll_fn(|cx| {
        while !bytes.is_empty() {
            match Pin::new(&mut *writer).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    bytes = &bytes[n..];
                    timer = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
                    if timer.as_mut().poll(cx).is_ready() {
                        // Closed with a reset, not a FIN behind what it did not read: the
                        // kernel would keep that queued, and memory, for as long as the
                        // client reads a byte now and then (it held 2 GiB of socket buffers
                        // under the slow-read flood).
                        let _ = writer.as_ref().set_zero_linger();
                        let why = "the client did not read its response within limits.write_timeout";
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// The `Date` field's value for now, formatted once a second per thread.
pub(super) fn date() -> [u8; 29] {
    thread_local!(static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) });
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [0; 29];
        text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
        cached.set((second, text));
        text
    })
}
