//! One client's HTTP/1.1 connection: read a request head, hand the request to the
//! [`Proxy`], write its response, and go on while the connection is kept alive
//! (pipelined requests included). [`h1`] reads and writes the bytes.
//!
//! sluice serves HTTP/1.1 itself rather than with hyper: hyper's server was two thirds
//! of the instructions nginx spends on a whole request, and its buffers two thirds of an
//! idle connection's memory (BENCHMARKS.md, session 7). h2c is still hyper's
//! ([`super::listener`]).
//!
//! Responses are written by [`write`]. The socket is split: the connection writes
//! responses with one half; the other half, and the read buffer, go to the request's body
//! while the request is served (it reads the body as the service takes it), and come back
//! when the body is dropped.

use std::future::{pending, poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, Sleep};

use super::h1::{self, Decoder, Event, Framing, Refused, RequestHead};
use super::listener::Phase;
use super::{respond, upstream, Peer, Proxy, ProxyBody, ProxyRequest, RequestBody, RequestFields};
use crate::config::Limits;

mod write;
use write::{date, respond, Asked};

/// The room a read of a head gets: most heads fit, and a buffer this small comes from the
/// allocator's fast per-thread cache. A larger head takes more reads.
pub const READ_CHUNK: usize = 1024;
/// The room a read of a request body gets.
const BODY_READ: usize = 32 * 1024;
/// Body bytes up to this size are copied after the head (or the previous piece) and
/// written with it in one call; a larger piece is written as it is.
const GATHER: usize = 16 * 1024;

/// The reading half of a connection, with what was read and not yet taken.
struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

/// What a connection and the body of its current request share.
struct Shared {
    /// The body, dropped, leaves the reader here, with whether it was read to its end
    /// (if not, where the next request starts is unknown).
    returned: Mutex<Option<(Reader, bool)>>,
    /// The final response head is on its way: no `100 Continue` may be sent any more.
    answered: AtomicBool,
    /// Told when the reader is left in `returned`.
    back: Notify,
}

impl Shared {
    fn take_returned(&self) -> Option<(Reader, bool)> {
        self.returned.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Serves HTTP/1.1 on `stream` until the client closes it, it stays idle past the
/// header timeout, a response closes it, or the phase reaches `Closing` between
/// requests. `buf` holds what was already read.
pub async fn serve(
    stream: TcpStream,
    buf: BytesMut,
    peer: Peer,
    proxy: Proxy,
    limits: Limits,
    mut phase: watch::Receiver<Phase>,
) {
    let (half, mut writer) = stream.into_split();
    let mut reader = Reader { half, buf };
    let shared = Arc::new(Shared { returned: Mutex::new(None), answered: AtomicBool::new(false), back: Notify::new() });
    let mut out = Vec::new();
    // The header timeout's timer, one for the connection (see `read_head`).
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut kept_alive = false;
    let born = Instant::now();
    loop {
        let head = match read_head(&mut reader, &limits, kept_alive, &mut phase, timer.as_mut()).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(Refused(status, why)) => {
                tracing::debug!(peer = %peer.addr, status = status.as_u16(), why, "request refused");
                let refusal = respond::problem(status, why, true);
                let asked = Asked { head: false, version: Version::HTTP_11, keep_alive: false, trailers: false };
                let _ = respond(&mut writer, &shared, &mut out, refusal, asked, limits.write_timeout).await;
                return linger(writer, reader).await;
            }
        };
        let RequestHead { method, uri, version, fields, body, keep_alive, expect_continue, trailers, upgrade } = head;
        // Past limits.max_connection_age, this answer is the connection's last.
        let keep_alive = keep_alive && limits.max_connection_age.is_none_or(|age| born.elapsed() < age);
        let asked = Asked { head: method == Method::HEAD, version, keep_alive, trailers };

        // The reading half stays here for a request without a body; one with a body takes
        // it, and leaves it in `shared` when dropped (read whole or not).
        let (body, mut returned) = if body.is_done() {
            (RequestBody::Empty, Some((reader, true)))
        } else {
            shared.answered.store(false, Ordering::Relaxed);
            (RequestBody::Client(ClientBody::new(shared.clone(), reader, body, expect_continue)), None)
        };
        // Pinned where it is made, once: the request's future is large, and moving it (or
        // holding two) costs.
        let request = ProxyRequest { method, uri, version, fields: RequestFields::Sent(fields), body, upgrade };
        let mut handling = pin!(proxy.handle(request, &peer));
        // A client that hangs up while its request is served (once its body has gone
        // whole) frees what it holds.
        let mut response = loop {
            match &mut returned {
                Some((reader, true)) => tokio::select! {
                    biased;
                    response = &mut handling => break response,
                    () = hung_up(&mut reader.half) => return,
                },
                Some((_, false)) => break handling.as_mut().await,
                None => tokio::select! {
                    biased;
                    response = &mut handling => break response,
                    () = shared.back.notified() => returned = shared.take_returned(),
                },
            }
        };
        // Only the body of a `101` that switched protocols holds a tunnel.
        if let Some(service) = response.body_mut().take_tunnel() {
            // Only a request without a body is upgraded (`upstream::is_upgrade`).
            let Some((reader, true)) = returned else { return };
            return switch(reader, writer, out, response, service).await;
        }
        let keep = respond(&mut writer, &shared, &mut out, response, asked, limits.write_timeout).await;
        reader = match returned.or_else(|| shared.take_returned()) {
            Some((reader, true)) => reader,
            // The body was not read to its end: where the next request starts is unknown,
            // and the client may still be sending it.
            Some((reader, false)) => return linger(writer, reader).await,
            None => return,
        };
        if !keep.unwrap_or(false) {
            return;
        }
        if reader.buf.is_empty() {
            // An idle connection holds no buffer: the next read takes one once the client
            // sends (the memory per idle connection: BENCHMARKS.md, session 7).
            reader.buf = BytesMut::new();
        }
        if out.capacity() > GATHER * 2 {
            out = Vec::new();
        }
        kept_alive = true;
    }
}

/// Reads until a whole request head is in the buffer. `None`: the client closed the
/// connection, sent nothing more in time, or the phase reached `Closing`. In time: a
/// connection's first head within `header_read_timeout`; on a kept-alive connection, its
/// first byte within `idle_timeout`, then the rest of the head within
/// `header_read_timeout` of it.
///
/// `timer` is the connection's, re-armed lazily: a timer set for each head was a
/// registration in tokio's timer wheel and a removal per request (500 instructions of
/// 18,200). So a timer set for an earlier head is left to fire, and only then moved on,
/// never past one header timeout from now: it is never late, since it was set at most one
/// header timeout (the connection's, which does not change) after an earlier moment, and
/// every deadline is at least that far from a later one.
async fn read_head(
    reader: &mut Reader,
    limits: &Limits,
    kept_alive: bool,
    phase: &mut watch::Receiver<Phase>,
    mut timer: Pin<&mut Sleep>,
) -> Result<Option<RequestHead>, Refused> {
    let now = Instant::now();
    let mut deadline = match kept_alive && reader.buf.is_empty() {
        true => now + limits.idle_timeout,
        false => now + limits.header_read_timeout,
    };
    let mut waiting = kept_alive && reader.buf.is_empty();
    if timer.deadline() > deadline {
        // Only when idle_timeout is the shorter: then each wait sets the timer.
        timer.as_mut().reset(deadline);
    }
    let mut begun = false;
    loop {
        if let Some(head) = h1::parse_request(&mut reader.buf, limits.max_header_bytes)? {
            return Ok(Some(head));
        }
        if begun {
            // The next head has begun but is not whole: its header timeout runs from now.
            // (Read here, not at its first byte: a head that comes whole needs no clock.)
            deadline = Instant::now() + limits.header_read_timeout;
            begun = false;
        }
        tokio::select! {
            biased;
            read = read_when_ready(reader) => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) if waiting => (waiting, begun) = (false, true),
                Ok(_) => {}
            },
            () = timer.as_mut() => {
                let now = Instant::now();
                if now < deadline {
                    timer.as_mut().reset(deadline.min(now + limits.header_read_timeout));
                    continue;
                }
                return if reader.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Refused(StatusCode::REQUEST_TIMEOUT, "the request head did not arrive in time"))
                };
            }
            () = closing(phase) => return Ok(None),
        }
    }
}

/// Reads what the client sends, taking a buffer only once there is something to read.
async fn read_when_ready(reader: &mut Reader) -> io::Result<usize> {
    if reader.buf.capacity() == 0 {
        poll_fn(|cx| reader.half.as_ref().poll_read_ready(cx)).await?;
    }
    read(&mut reader.half, &mut reader.buf).await
}

async fn closing(phase: &mut watch::Receiver<Phase>) {
    // An error: nobody can change the phase any more, so the server is gone.
    let _ = phase.wait_for(|p| *p == Phase::Closing).await;
}

/// Resolves if the client closes the connection; pends for good once it sends anything
/// (the next request, pipelined), which stays unread until its turn.
async fn hung_up(half: &mut OwnedReadHalf) {
    match half.peek(&mut [0]).await {
        Ok(0) | Err(_) => {}
        Ok(_) => pending().await,
    }
}

/// Reads what `from` has into `buf`, with at least half a [`READ_CHUNK`] of room. A head
/// longer than that doubles the room, so a large one takes few reads and copies.
pub async fn read(from: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK.max(buf.len()));
    }
    from.read_buf(buf).await
}

/// After a `101`: the head goes out, and the connection becomes a tunnel to the service
/// (with what either side sent early), holding the request's slots until it closes.
async fn switch(
    reader: Reader,
    mut writer: OwnedWriteHalf,
    mut out: Vec<u8>,
    mut response: Response<ProxyBody>,
    service: (TcpStream, Bytes),
) {
    out.clear();
    let fields = response.body_mut().take_fields();
    let (status, headers) = (response.status(), response.headers());
    h1::write_response_head(status, fields.as_ref(), headers, Framing::None, Some("upgrade"), &date(), &mut out);
    drop(fields);
    if writer.write_all(&out).await.is_err() {
        return;
    }
    let Ok(client) = reader.half.reunite(writer) else { return };
    upstream::tunnel((client, reader.buf.freeze()), service).await;
    drop(response); // the slots go back
}

/// Closes a connection the client may still be sending on: closing at once, with its
/// bytes unread, would reset the connection and could destroy the response on its way.
/// So the sending side closes, and what comes is read and dropped, for a second at most.
async fn linger(mut writer: OwnedWriteHalf, mut reader: Reader) {
    let _ = writer.shutdown().await;
    let drained = async {
        let mut total = 0;
        while total < 1 << 20 {
            reader.buf.clear();
            match read(&mut reader.half, &mut reader.buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drained).await;
}

/// A request body read off the client's connection as the request is served.
pub struct ClientBody {
    shared: Arc<Shared>,
    /// Always here until the body is dropped.
    reader: Option<Reader>,
    decoder: Decoder,
    /// What is left to send of `100 Continue`, before the body is read.
    interim: &'static [u8],
    closed: bool,
}

impl ClientBody {
    fn new(shared: Arc<Shared>, reader: Reader, decoder: Decoder, expect_continue: bool) -> Self {
        let interim: &[u8] = if expect_continue { b"HTTP/1.1 100 Continue\r\n\r\n" } else { b"" };
        Self { shared, reader: Some(reader), decoder, interim, closed: false }
    }
}

/// Sends what is left of `interim` (`100 Continue`) on `socket`, unless the final
/// response got there first.
fn poll_interim(
    interim: &mut &[u8],
    shared: &Shared,
    socket: &TcpStream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !interim.is_empty() && !shared.answered.load(Ordering::Relaxed) {
        ready!(socket.poll_write_ready(cx))?;
        match socket.try_write(interim) {
            Ok(n) => *interim = &interim[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    *interim = b"";
    Poll::Ready(Ok(()))
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        let Some(Reader { half, buf }) = &mut this.reader else { return Poll::Ready(None) };
        if let Err(e) = ready!(poll_interim(&mut this.interim, &this.shared, half.as_ref(), cx)) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match this.decoder.decode(buf, this.closed) {
                Ok(Event::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Event::Trailers(trailers)) => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(Event::End) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Event::More) => {}
            }
            if buf.capacity() - buf.len() < BODY_READ / 2 {
                buf.reserve(BODY_READ);
            }
            let n = match ready!(pin!(half.read_buf(buf)).poll(cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            this.closed |= n == 0;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.remaining().map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            let whole = self.decoder.is_done();
            *self.shared.returned.lock().unwrap_or_else(PoisonError::into_inner) = Some((reader, whole));
            self.shared.back.notify_one();
        }
    }
}
