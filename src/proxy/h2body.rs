//! The two bodies of a stream to an HTTP/2 service, driven with the `h2` crate on the
//! request's own task: the request's, sent as the service's window allows ([`send_body`]),
//! and the response's, read as the client takes it ([`Received`]), its window given back
//! as each frame is taken; trailers included. And the connection's PINGs ([`keep_alive`]).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};

use super::RequestBody;

/// Why a request body did not reach the service whole.
pub enum SendFailed {
    /// The client's body failed (it reset its stream, or hung up): the stream is reset.
    Client(io::Error),
    /// The service reset the stream or the connection went: its answer says the rest.
    Service,
}

/// Sends `body` on `stream` as the service's window allows, trailers included, and ends
/// the stream. Stops reading the client when the service resets the stream.
pub async fn send_body(mut body: RequestBody, mut stream: SendStream<Bytes>) -> Result<(), SendFailed> {
    loop {
        // The next frame, unless the service resets the stream meanwhile.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => stream.poll_reset(cx).map(|_| None),
        });
        let frame = match next.await {
            None => return Err(SendFailed::Service),
            Some(None) => return stream.send_data(Bytes::new(), true).map_err(|_| SendFailed::Service),
            Some(Some(Err(e))) => {
                stream.send_reset(Reason::CANCEL);
                return Err(SendFailed::Client(e));
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let end = body.is_end_stream();
                if data.is_empty() && end {
                    return stream.send_data(data, true).map_err(|_| SendFailed::Service);
                }
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(Ok(granted)) => granted.min(data.len()),
                        Some(Err(_)) | None => return Err(SendFailed::Service),
                    };
                    let last = end && granted == data.len();
                    stream.send_data(data.split_to(granted), last).map_err(|_| SendFailed::Service)?;
                }
                if end {
                    return Ok(()); // the last frame carried END_STREAM
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return stream.send_trailers(trailers).map_err(|_| SendFailed::Service);
                }
            }
        }
    }
}

/// The response body from the service.
pub struct Received {
    stream: RecvStream,
    /// Its DATA frames are over: trailers, if any, are next.
    data_over: bool,
    /// Bytes still to come, when its head said how many (h2 holds the service to it): an
    /// HTTP/1.1 client is sent a `Content-Length` rather than chunks.
    left: Option<u64>,
}

impl Received {
    /// The body of `stream`, whose head had `fields`.
    pub fn new(stream: RecvStream, fields: &HeaderMap) -> Self {
        let left = if stream.is_end_stream() {
            Some(0)
        } else {
            let length = fields.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
            length.and_then(|v| v.parse().ok())
        };
        Self { stream, data_over: false, left }
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        if !this.data_over {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the service may send as much again.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    this.left = this.left.map(|left| left.saturating_sub(data.len() as u64));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                None => this.data_over = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(io::Error::other(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.left.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// PINGs the service every `every`; resolves when one is not answered within as long. A failing
/// connection is its own task's to report.
pub async fn keep_alive(pings: Option<PingPong>, every: Duration) -> &'static str {
    let Some(mut pings) = pings else { return std::future::pending().await };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(every, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return "a PING was not answered in time",
        }
    }
}
