//! h2c (HTTP/2 with prior knowledge) client connections: served by hyper with every
//! setting explicit, plus the bounds hyper lacks: the handshake, an idle connection, a
//! connection's age, and a client that stops taking its responses.

use std::convert::Infallible;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use http_body::Body as _;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::listener::Phase;
use super::{Peer, Proxy, ProxyBody, ProxyRequest, RequestBody};
use crate::config::Limits;

/// HTTP/2 settings, after Envoy's guide for an edge proxy and the h2 advisories:
/// 100 concurrent streams a connection (Envoy's edge figure; hyper's default is 200).
const H2_MAX_STREAMS: u32 = 100;
/// 64 KiB a stream and 1 MiB a connection of request body in flight (Envoy's edge figures;
/// hyper's are 1 MiB each): what a client can make sluice buffer before it reads.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes hyper queues a stream before it stops taking more, beyond the one read
/// of the service it holds: one frame. hyper's default (400 KiB) let a client that opens
/// its windows wide and reads nothing hold 46 MiB a connection; this holds 9.
const H2_SEND_BUFFER: usize = 16 * 1024;
/// Streams a client may open and reset before sluice has accepted them (h2's default, the
/// bound on the "rapid reset" attack, CVE-2023-44487) and streams sluice itself may reset
/// for a client's protocol errors (h2's default, against floods that make the server do
/// the resetting), before the connection is closed with GOAWAY.
const H2_PENDING_RESETS: usize = 20;
const H2_ERROR_RESETS: usize = 1024;
/// A PING every 20 s, and the connection closed when one is not answered within 20 s.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Serves h2c with hyper until the client, a drain or a bound ends the connection.
pub(super) async fn serve(stream: Rewind, peer: Peer, proxy: Proxy, limits: Limits, mut phase: watch::Receiver<Phase>) {
    let addr = peer.addr;
    let reset = stream.reset.clone();
    let activity = Arc::new(Activity::new());
    let streams = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (proxy, peer) = (proxy.clone(), peer.clone());
        let stream = Active::new(streams.clone());
        // Boxed: the request's future is about 2 KB, and hyper moves it more than once.
        Box::pin(async move {
            let mut response = proxy.handle(ProxyRequest::from(req.map(RequestBody::Hyper)), &peer).await;
            // hyper writes a response's fields from its map.
            if let Some(fields) = response.body_mut().take_fields() {
                fields.into_map(response.headers_mut());
            }
            // The stream is active until hyper drops its body: sent whole, or reset.
            Ok::<_, Infallible>(response.map(|body| Counted { body, stream, handed: false, over: false }))
        })
    });
    // Every setting explicit, with its reason: docs/config.md, "HTTP/2".
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new()) // without a timer the keep-alive pings panic
        .max_header_list_size(limits.max_header_bytes as u32) // larger heads get 431, as over HTTP/1.1
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(16 * 1024)
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_pending_accept_reset_streams(H2_PENDING_RESETS)
        .max_local_error_reset_streams(H2_ERROR_RESETS)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_INTERVAL)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    // The first stream must come within the header timeout, as a first HTTP/1.1 head
    // must: that bounds the handshake too (hyper does not).
    let mut idle = pin!(tokio::time::sleep(limits.header_read_timeout.min(limits.idle_timeout)));
    let mut age = limits.max_connection_age.map(|age| Box::pin(tokio::time::sleep(age)));
    let mut stall = pin!(tokio::time::sleep(limits.write_timeout));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
                return;
            }
            // No first stream within the header timeout: closed. No stream for
            // idle_timeout since the last: GOAWAY, as for a drain.
            () = idle.as_mut(), if !shutting_down => {
                let now = tokio::time::Instant::now();
                let age = activity.start.elapsed();
                match (activity.streams.load(Ordering::Acquire), activity.idle_for()) {
                    (0, _) if age >= limits.header_read_timeout => {
                        tracing::debug!(peer = %addr, "no HTTP/2 stream within the header timeout");
                        return;
                    }
                    (0, _) => idle.as_mut().reset(now + (limits.header_read_timeout - age)),
                    (_, Some(quiet)) if quiet >= limits.idle_timeout => {
                        conn.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                    (_, quiet) => idle.as_mut().reset(now + (limits.idle_timeout - quiet.unwrap_or_default())),
                }
            }
            // Response bytes waiting on the client, and none taken for write_timeout:
            // closed, draining or not. Its streams' bodies are dropped, the services'
            // connections with them, and the requests counted as the client's failures.
            () = stall.as_mut() => {
                let now = tokio::time::Instant::now();
                match activity.stalled_for() {
                    Some(stalled) if stalled >= limits.write_timeout => {
                        tracing::debug!(peer = %addr, "the h2c client took no response bytes within the write timeout: closed");
                        reset.store(true, Ordering::Relaxed);
                        return;
                    }
                    stalled => stall.as_mut().reset(now + (limits.write_timeout - stalled.unwrap_or_default())),
                }
            }
            // Old enough: GOAWAY, so that the client reconnects (to another replica, perhaps).
            () = aged(&mut age), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            // Draining or closing: GOAWAY, then in-flight streams finish.
            _ = phase.changed(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// Resolves when the connection reaches `limits.max_connection_age`; never without one.
async fn aged(age: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match age {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The streams of one h2c connection: how many are active, and since when none is; how
/// many have a response frame out that hyper has not come back for (it waits for the
/// client's window or the socket), and since when none of them moved.
struct Activity {
    active: AtomicUsize,
    /// Streams begun, ever.
    streams: AtomicU64,
    /// When the last active stream ended (or the connection began), since `start`, in ms.
    quiet_since: AtomicU64,
    handed: AtomicUsize,
    /// When a frame was last handed to hyper or taken by it, since `start`, in ms.
    moved: AtomicU64,
    start: std::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            streams: AtomicU64::new(0),
            quiet_since: AtomicU64::new(0),
            handed: AtomicUsize::new(0),
            moved: AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// How long response frames have waited on the client with none taken; `None` while
    /// no frame waits.
    fn stalled_for(&self) -> Option<Duration> {
        if self.handed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = Duration::from_millis(self.moved.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(since))
    }

    /// How long no stream has been active; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.quiet_since.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(since))
    }
}

/// One active stream, until dropped.
struct Active(Arc<Activity>);

impl Active {
    fn new(activity: Arc<Activity>) -> Self {
        activity.streams.fetch_add(1, Ordering::AcqRel);
        activity.active.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }

    /// A frame of this stream's response is handed to hyper (`true`) or hyper came back
    /// for the next (`false`).
    fn handed(&self, out: bool) {
        let activity = &self.0;
        if out {
            activity.handed.fetch_add(1, Ordering::AcqRel);
        } else {
            activity.handed.fetch_sub(1, Ordering::AcqRel);
        }
        activity.moved.store(activity.now_ms(), Ordering::Release);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.quiet_since.store(self.0.now_ms(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted active, and whether a frame of it waits
/// on the client.
struct Counted {
    body: ProxyBody,
    stream: Active,
    /// A frame is out and hyper has not come back for the next.
    handed: bool,
    /// The body ended, or failed of itself.
    over: bool,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.handed) {
            this.stream.handed(false);
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) => {
                this.handed = true;
                this.stream.handed(true);
            }
            None | Some(Err(_)) => this.over = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Counted {
    /// hyper drops a body before its end only when the stream is gone: reset by the
    /// client, its connection closed or cut. That is the client's failure, as a hang-up
    /// mid-response is over HTTP/1.1, never the service's.
    fn drop(&mut self) {
        if self.handed {
            self.stream.handed(false);
        }
        if !self.over && !self.body.is_end_stream() {
            self.body.client_failed();
        }
    }
}

/// A connection whose first bytes were read to tell its protocol: they are read again.
pub(super) struct Rewind {
    early: Bytes,
    stream: TcpStream,
    /// Close with a reset, dropping what the client has not read (see `write_within`).
    reset: Arc<AtomicBool>,
}

impl Rewind {
    pub(super) fn new(early: Bytes, stream: TcpStream) -> Self {
        Self { early, stream, reset: Arc::default() }
    }
}

impl Drop for Rewind {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.early.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.early.len().min(buf.remaining());
        buf.put_slice(&self.early[..n]);
        self.early.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
