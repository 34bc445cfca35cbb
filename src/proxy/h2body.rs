//! The two bodies of a stream to an HTTP/2 service, driven with the `h2` crate on the
//! request's own task: the request's, sent as the service's window allows
//! ([`send_body`]), and the response's, read as the client takes it ([`ServiceBody`]), its
//! window given back as each frame is taken, trailers included.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};

use super::RequestBody;

/// Why a request body did not reach the service whole.
pub enum SendFailed {
    /// The client's body failed (it reset its stream, or hung up): the stream is reset.
    Client(io::Error),
    /// The service reset the stream or the connection went: its answer says the rest.
    Service,
}

/// Sends `body` on `stream` as the service's window allows, trailers included, and ends the
/// stream.
pub async fn send_body(mut body: RequestBody, mut stream: SendStream<Bytes>) -> Result<(), SendFailed> {
    let mut body = Pin::new(&mut body);
    loop {
        let frame = match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => return stream.send_data(Bytes::new(), true).map_err(|_| SendFailed::Service),
            Some(Err(e)) => {
                stream.send_reset(Reason::CANCEL);
                return Err(SendFailed::Client(e));
            }
            Some(Ok(frame)) => frame,
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
pub struct ServiceBody {
    stream: RecvStream,
    /// Its DATA frames are over: trailers, if any, are next.
    data_over: bool,
}

impl ServiceBody {
    pub fn new(stream: RecvStream) -> Self {
        Self { stream, data_over: false }
    }
}

impl Body for ServiceBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        if !this.data_over {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the service may send as much again.
                    let _ = this.stream.flow_control().release_capacity(data.len());
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
        SizeHint::default()
    }
}
