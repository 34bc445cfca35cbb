//! One keep-alive HTTP/1.1 connection to the service: it writes a request, reads the
//! response head, then yields the response body frame by frame as the client takes it.
//! Everything happens on the request's own task, with no task or channel per connection.
//! The bytes themselves are [`super::h1`]'s.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use http::Method;
use http_body::Body;
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::h1::{self, Decoder, Event, Framing, Head, Parsed};
use super::RequestBody;
use crate::upstream::breaker::Connection;
use crate::upstream::resolve;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much room a read gets to start with. It doubles while reads fill it (a large body),
/// up to `MAX_READ`, so a large body takes few system calls; a connection put back idle
/// starts over with a buffer of this size.
const READ_CHUNK: usize = 16 * 1024;
/// 64 KiB, not more: what a client that reads slowly can make sluice hold is about two of
/// these (the read being written, and the next), so 256 KiB let 300 slow readers grow the
/// process by 150 MiB (tests/floods.rs; BENCHMARKS.md, issue 20).
const MAX_READ: usize = 64 * 1024;

pub struct Conn {
    stream: TcpStream,
    /// Bytes read from the service and not yet taken.
    buf: BytesMut,
    /// The request head being written.
    out: Vec<u8>,
    /// The request body still being sent (the service may answer before it has all of it).
    upload: Option<Box<Upload>>,
    /// The room the next read gets (see [`READ_CHUNK`]).
    read_size: usize,
    /// The service closed its side, or stopped taking the request body.
    closed: bool,
    /// The generation of the service's addresses it was opened to (in `closed`'s padding).
    pub generation: u32,
    /// The timer of the route's timeout, the connection's for all its requests and moved
    /// on lazily (see [`Conn::poll_deadline`]).
    timer: Pin<Box<Sleep>>,
    /// Its place in the count of connections to the service (`circuit_breaker`).
    counted: Connection,
}

/// A request that did not get its answer.
pub struct Failure {
    pub error: io::Error,
    /// Nothing of it can have been acted on, so it may be sent again on another
    /// connection: an idempotent request without a body, on a connection that closed or
    /// was reset before a byte of answer came (the service closed it while it was idle).
    pub retryable: bool,
}

impl Conn {
    /// A new connection to `upstream`, for a request whose answer is due by `deadline`.
    /// An error of kind `TimedOut`: the deadline passed first.
    /// Connects to `addrs` in turn, as the service's name last resolved; to `upstream`
    /// itself (resolved now) without them.
    pub async fn open(
        upstream: &Authority,
        addrs: Option<&[std::net::SocketAddr]>,
        deadline: Instant,
        counted: Connection,
    ) -> io::Result<Conn> {
        let bound = Instant::now() + CONNECT_TIMEOUT;
        let stream = match tokio::time::timeout_at(deadline.min(bound), dial(upstream, addrs)).await {
            Ok(stream) => stream?,
            Err(_) if deadline <= bound => return Err(timed_out()),
            // Not the route's timeout: the service is unreachable (502).
            Err(_) => return Err(io::Error::new(io::ErrorKind::HostUnreachable, "no connection within 5 s")),
        };
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            upload: None,
            read_size: READ_CHUNK,
            closed: false,
            generation: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            counted,
        })
    }

    /// Whether an idle connection may still carry a request: the service has neither
    /// closed it nor sent anything unasked. Asks the socket only if its readiness changed
    /// since the last read, so a quiet connection costs no system call.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => {
                matches!(self.stream.try_read(&mut [0; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => false,
        }
    }

    /// Whether, its response body read to the end, the connection can carry another
    /// request: the request went whole and nothing unasked came after the response.
    pub fn is_reusable(&self) -> bool {
        !self.closed && self.upload.is_none() && self.buf.is_empty()
    }

    /// The room the next read gets.
    #[cfg(test)]
    pub fn read_size(&self) -> usize {
        self.read_size
    }

    /// Readies a reusable connection to wait in the pool: a buffer grown by a large body
    /// is let go.
    pub fn settle(&mut self) {
        if self.read_size > READ_CHUNK {
            self.read_size = READ_CHUNK;
            self.buf = BytesMut::with_capacity(READ_CHUNK);
        }
    }

    /// Sends a request (its head as `write_head` writes it, its body from `upload`) and
    /// reads the answer's head, by `deadline` (else an error of kind `TimedOut`). The body
    /// goes on being sent while the answer is awaited and, if the answer comes first,
    /// while its body is read: a service may answer before it has read the request (an
    /// echo, a 413).
    pub async fn exchange(
        &mut self,
        method: &Method,
        write_head: impl Fn(&mut Vec<u8>),
        upload: Option<Box<Upload>>,
        upgrade: bool,
        deadline: Instant,
    ) -> Result<Head, Failure> {
        let retryable = upload.is_none() && is_idempotent(method);
        self.out.clear();
        write_head(&mut self.out);
        self.upload = upload;
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline); // a route with a shorter timeout than the last
        }
        let mut written = 0;
        let exchanged = std::future::poll_fn(|cx| {
            while written < self.out.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.out[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_deadline(deadline, cx),
                }
            }
            self.poll_upload(cx)?;
            match self.poll_head(method, upgrade, cx) {
                Poll::Pending => self.poll_deadline(deadline, cx),
                done => done,
            }
        });
        exchanged.await.map_err(|error| {
            let retryable = retryable
                && self.buf.is_empty()
                && matches!(
                    error.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                );
            Failure { error, retryable }
        })
    }

    /// Pending until `deadline`, then the timeout's error. The connection's timer is not
    /// set anew for each request (a registration in tokio's timer wheel and a removal, 500
    /// instructions a request): one set for an earlier request is left to fire, and only
    /// then moved on to this one's deadline. `exchange` has made sure it is not later.
    fn poll_deadline<T>(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.timer.deadline() >= deadline {
                return Poll::Ready(Err(timed_out()));
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn poll_head(&mut self, method: &Method, upgrade: bool, cx: &mut Context<'_>) -> Poll<io::Result<Head>> {
        loop {
            match h1::parse_response(&mut self.buf, method, upgrade)? {
                Parsed::Head(head) => return Poll::Ready(Ok(head)),
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
            if ready!(self.poll_read(cx))? == 0 {
                let what = "the service closed the connection before answering";
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
            }
        }
    }

    /// The next frame of the response body that `decoder` frames.
    pub fn poll_body(&mut self, decoder: &mut Decoder, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Err(e) = self.poll_upload(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match decoder.decode(&mut self.buf, self.closed) {
                Ok(Event::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Event::Trailers(trailers)) => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(Event::End) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Event::More) => match ready!(self.poll_read(cx)) {
                    Ok(0) => self.closed = true,
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Room is made only when under half a read is left: reserving before every read
        // would re-allocate whenever the last head or body still shares the buffer.
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(pin!(self.stream.read_buf(&mut self.buf)).poll(cx))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Sends what it can of the request body. An error is the client's (its body broke
    /// off); a service that stops taking the body may still answer, so that only ends the
    /// upload and the connection's reuse.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(upload) = &mut self.upload else { return Ok(()) };
        match upload.poll_send(&mut self.stream, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.upload = None;
                Ok(())
            }
            Poll::Ready(Err(UploadError::Client(e))) => Err(e),
            Poll::Ready(Err(UploadError::Service(e))) => {
                tracing::debug!(error = %e, "the service stopped taking the request body");
                (self.upload, self.closed) = (None, true);
                Ok(())
            }
        }
    }

    /// The connection as a tunnel, after a `101`: the socket, and what the service sent
    /// after its head.
    pub fn into_tunnel(self) -> ((TcpStream, Bytes), Connection) {
        ((self.stream, self.buf.freeze()), self.counted)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the service did not answer in time")
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// A request body on its way to the service, framed as its fields say.
pub struct Upload {
    body: RequestBody,
    chunked: bool,
    /// Bytes taken from the body (and their framing), not yet written.
    pending: VecDeque<Bytes>,
    /// The body has ended; once `pending` is written, the upload is done.
    ended: bool,
    /// `limits.body_read_timeout`: the longest wait for the body's next bytes.
    patience: Duration,
    /// When the body last gave something (or the upload started).
    progress: Instant,
    /// Fires at the earliest time the body may be found stalled; made the first time the
    /// body has to be waited for, and moved on, not reset for every frame (a timer-wheel
    /// operation each), when the body has moved meanwhile.
    stall: Option<Pin<Box<Sleep>>>,
}

/// The client's part in a request that failed: the error of an exchange whose cause is the
/// client, not the service ([`client_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// No byte of the body came within `limits.body_read_timeout`.
    Stalled,
    /// The body broke off: the client hung up, or broke its framing.
    Broken,
}

impl std::fmt::Display for ClientFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stalled => "the request body stalled",
            Self::Broken => "the request body broke off",
        })
    }
}

impl std::error::Error for ClientFault {}

/// A TCP connection to the service, `TCP_NODELAY` set: to `addrs` in turn, as its name
/// last resolved, or to `upstream` itself (resolved now) without them. HTTP/1.1 and HTTP/2
/// connections are made alike.
pub async fn dial(upstream: &Authority, addrs: Option<&[std::net::SocketAddr]>) -> io::Result<TcpStream> {
    let stream = match addrs {
        Some(addrs) => TcpStream::connect(addrs).await?,
        None => TcpStream::connect(resolve::host_port(upstream)).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether `error` is the client's doing, and how.
pub fn client_fault(error: &io::Error) -> Option<ClientFault> {
    error.get_ref().and_then(|e| e.downcast_ref::<ClientFault>()).copied()
}

/// The client's body broke off (a request to an HTTP/2 service, whose body is read as it is sent).
pub fn client_broke() -> io::Error {
    fault(ClientFault::Broken)
}

fn fault(fault: ClientFault) -> io::Error {
    io::Error::other(fault)
}

enum UploadError {
    /// Reading the client's body failed: the client is gone or broke its framing.
    Client(io::Error),
    /// Writing to the service failed.
    Service(io::Error),
}

impl Upload {
    /// The upload of `body`, and how the request head frames it: not at all for an
    /// empty body, by its length if known, else chunked.
    pub fn new(body: RequestBody, patience: Duration) -> (Option<Box<Upload>>, Framing) {
        if body.is_end_stream() {
            return (None, Framing::None);
        }
        let (chunked, framing) = match body.size_hint().exact() {
            Some(len) => (false, Framing::Length(len)),
            None => (true, Framing::Chunked),
        };
        let progress = Instant::now();
        let upload = Upload { body, chunked, pending: VecDeque::new(), ended: false, patience, progress, stall: None };
        (Some(Box::new(upload)), framing)
    }

    /// Whether the body has given nothing for `patience`, as of the stall timer firing.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.progress + self.patience;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while stall.as_mut().poll(cx).is_ready() {
            let due = self.progress + self.patience;
            if Instant::now() >= due {
                return true;
            }
            stall.as_mut().reset(due);
        }
        false
    }

    fn poll_send(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), UploadError>> {
        loop {
            while !self.pending.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                for (slice, bytes) in slices.iter_mut().zip(&self.pending) {
                    *slice = IoSlice::new(bytes);
                }
                let count = self.pending.len().min(slices.len());
                let written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]));
                let mut n = written.map_err(UploadError::Service)?;
                if n == 0 {
                    return Poll::Ready(Err(UploadError::Service(io::ErrorKind::WriteZero.into())));
                }
                while n > 0 {
                    let front = self.pending.front_mut().expect("wrote no more than pending");
                    let taken = n.min(front.len());
                    front.advance(taken);
                    n -= taken;
                    if front.is_empty() {
                        self.pending.pop_front();
                    }
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            let polled = Pin::new(&mut self.body).poll_frame(cx);
            if polled.is_pending() {
                if self.stalled(cx) {
                    return Poll::Ready(Err(UploadError::Client(fault(ClientFault::Stalled))));
                }
                return Poll::Pending;
            }
            self.progress = Instant::now();
            let frame = match ready!(polled) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the request body broke off");
                    return Poll::Ready(Err(UploadError::Client(fault(ClientFault::Broken))));
                }
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if self.chunked => {
                    let mut line = [0u8; 18];
                    self.pending.push_back(Bytes::copy_from_slice(h1::chunk_size_line(data.len(), &mut line)));
                    self.pending.push_back(data);
                    self.pending.push_back(Bytes::from_static(b"\r\n"));
                }
                Ok(data) => self.pending.push_back(data),
                Err(frame) => {
                    // Trailers end the body; a sized body has no room for them.
                    let Ok(trailers) = frame.into_trailers() else { continue };
                    self.ended = true;
                    if self.chunked {
                        let mut end = Vec::new();
                        h1::write_last_chunk(&trailers, &mut end);
                        self.pending.push_back(end.into());
                    }
                }
            }
        }
    }
}
