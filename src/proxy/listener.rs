//! Accepting connections and serving them: HTTP/1.1 with [`front`], h2c (prior
//! knowledge) with hyper, told apart by the connection's first bytes; and the phases of a
//! drain.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{front, Peer, Proxy, ProxyRequest, RequestBody, Tracker};
use crate::config::Limits;
use crate::snapshot::Live;

/// Where a drain stands. Connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new connections; HTTP/1 responses carry `Connection: close`; HTTP/2 gets GOAWAY.
    Draining,
    /// In-flight requests are done (or the deadline passed): close what is left.
    Closing,
}

/// Starts the data plane on `listener`: `workers` threads, each a current_thread runtime
/// (measured against one multi-thread runtime in BENCHMARKS.md). The first thread also
/// accepts, and deals the connections out to the workers in turn; a connection stays on its
/// worker, with its requests and that worker's own pool of upstream connections, so a
/// request never changes thread. Every worker stops accepting once the phase leaves
/// `Serving` (or its sender is dropped) and ends when its connections are closed; the
/// returned tracker goes idle when every worker has ended.
pub fn start(
    listener: std::net::TcpListener,
    workers: usize,
    live: Arc<Live>,
    requests: Arc<Tracker>,
    phase: watch::Receiver<Phase>,
) -> std::io::Result<Arc<Tracker>> {
    let running = Arc::new(Tracker::default());
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
    let mut listener = Some((listener, senders));
    for (i, incoming) in receivers.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (live, requests, phase, accept) = (live.clone(), requests.clone(), phase.clone(), listener.take());
        let alive = running.enter();
        std::thread::Builder::new().name(format!("sluice-worker-{i}")).spawn(move || {
            runtime.block_on(async move {
                if let Some((listener, workers)) = accept {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => drop(tokio::spawn(deal(listener, workers, live.clone(), phase.clone()))),
                        Err(e) => tracing::error!(error = %e, "cannot serve the listener"),
                    }
                }
                serve(incoming, Proxy::new(live.clone(), requests), live, phase).await;
            });
            // The runtime goes first: the accepting task, and with it the listener, may
            // not have run since the phase changed.
            drop(runtime);
            drop(alive);
        })?;
    }
    Ok(running)
}

type Accepted = (std::net::TcpStream, SocketAddr, Open);

/// One client connection counted open (`sluice_connections`) until it is dropped.
struct Open {
    count: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Accepts until the phase leaves `Serving`, handing each connection to the next worker.
/// Past `limits.max_connections` open at once, a new connection is closed as soon as it is
/// accepted (counted), so that the connections already open carry on.
async fn deal(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    live: Arc<Live>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut next = 0;
    let count = Arc::new(AtomicUsize::new(0));
    let gauge = live.metrics.connections.with_label_values(&["proxy"]);
    let refused = live.metrics.connections_refused.with_label_values(&["max_connections"]);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted.and_then(|(stream, peer)| Ok((stream.into_std()?, peer))) {
                Ok((stream, peer)) => {
                    if count.load(Ordering::Relaxed) >= live.load().config.limits.max_connections {
                        refused.inc();
                        drop(stream);
                        continue;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    gauge.inc();
                    let open = Open { count: count.clone(), gauge: gauge.clone() };
                    let _ = workers[next].send((stream, peer, open));
                    next = (next + 1) % workers.len();
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut phase) => break,
        }
    }
}

/// Resolves when the phase leaves `Serving` or nobody can change it any more.
async fn stopped(phase: &mut watch::Receiver<Phase>) {
    drop(phase.wait_for(|p| *p != Phase::Serving).await);
}

/// One worker: serves the connections dealt to it until the phase leaves `Serving`, then
/// returns once every one of them is closed.
async fn serve(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    proxy: Proxy,
    live: Arc<Live>,
    phase: watch::Receiver<Phase>,
) {
    let connections = Arc::new(Tracker::default());
    let mut stop = phase.clone();
    loop {
        tokio::select! {
            next = incoming.recv() => {
                let Some((stream, peer, counted)) = next else { break };
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot serve a connection");
                        continue;
                    }
                };
                let limits = live.load().config.limits.clone();
                let open = connections.enter();
                let (proxy, phase) = (proxy.clone(), phase.clone());
                tokio::spawn(async move {
                    connection(stream, peer, proxy, limits, phase).await;
                    drop((open, counted));
                });
            }
            _ = stopped(&mut stop) => break,
        }
    }
    connections.idle().await;
}

/// HTTP/2 settings, after Envoy's guide for an edge proxy and the h2 advisories:
/// 100 concurrent streams a connection (Envoy's edge figure; hyper's default is 200).
const H2_MAX_STREAMS: u32 = 100;
/// 64 KiB a stream and 1 MiB a connection of request body in flight (Envoy's edge figures;
/// hyper's are 1 MiB each): what a client can make sluice buffer before it reads.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes hyper queues a stream before it stops taking more (hyper's default).
const H2_SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may open and reset before sluice has accepted them (h2's default, the
/// bound on the "rapid reset" attack, CVE-2023-44487) and streams sluice itself may reset
/// for a client's protocol errors (h2's default, against floods that make the server do
/// the resetting), before the connection is closed with GOAWAY.
const H2_PENDING_RESETS: usize = 20;
const H2_ERROR_RESETS: usize = 1024;
/// A PING every 20 s, and the connection closed when one is not answered within 20 s.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// What an HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxy: Proxy,
    limits: Limits,
    phase: watch::Receiver<Phase>,
) {
    let _ = stream.set_nodelay(true);
    // Nothing is allocated for the connection until it sends something; what it sends
    // first tells HTTP/2 from HTTP/1.
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    if !matches!(tokio::time::timeout_at(deadline, stream.readable()).await, Ok(Ok(()))) {
        return;
    }
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, front::read(&mut stream, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        if !(buf.len() < PREFACE.len() && PREFACE.starts_with(&buf)) {
            break;
        }
    }
    let peer = Peer::new(peer);
    if buf.starts_with(PREFACE) {
        http2(Rewind { early: buf.freeze(), stream }, peer, proxy, limits, phase).await;
    } else {
        front::serve(stream, buf, peer, proxy, limits, phase).await;
    }
}

/// Serves h2c with hyper until the client or a drain ends the connection.
async fn http2(stream: Rewind, peer: Peer, proxy: Proxy, limits: Limits, mut phase: watch::Receiver<Phase>) {
    let addr = peer.addr;
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
            Ok::<_, Infallible>(response.map(|body| Counted { body, _stream: stream }))
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

/// The streams of one h2c connection: how many are active, and since when none is.
struct Activity {
    active: AtomicUsize,
    /// Streams begun, ever.
    streams: AtomicU64,
    /// When the last active stream ended (or the connection began), since `start`, in ms.
    quiet_since: AtomicU64,
    start: std::time::Instant,
}

impl Activity {
    fn new() -> Self {
        let start = std::time::Instant::now();
        Self { active: AtomicUsize::new(0), streams: AtomicU64::new(0), quiet_since: AtomicU64::new(0), start }
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
}

impl Drop for Active {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.quiet_since.store(now, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted active.
struct Counted<B> {
    body: B,
    _stream: Active,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose first bytes were read to tell its protocol: they are read again.
struct Rewind {
    early: Bytes,
    stream: TcpStream,
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Every worker serves the connections dealt to it, and all of them end once the phase
    /// can no longer change. The service is unreachable, so each request gets a 502.
    #[tokio::test]
    async fn workers_share_the_connections_and_end_together() {
        let config = crate::config::parse("service: t\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\n").unwrap();
        let live = Live::new(config, Arc::new(crate::metrics::Metrics::new()));
        // 127.0.0.2: the other tests bind 127.0.0.1, and one of them may be given this
        // port once it is free, which would make the closed listener look open.
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (phase, watching) = watch::channel(Phase::Serving);
        let workers = start(listener, 3, live, Arc::new(Tracker::default()), watching).unwrap();
        assert_eq!(workers.in_flight(), 3);

        let statuses = tokio::task::spawn_blocking(move || {
            (0..6)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
                    let mut response = String::new();
                    s.read_to_string(&mut response).unwrap();
                    response.lines().next().unwrap_or_default().to_owned()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(statuses.iter().all(|s| s == "HTTP/1.1 502 Bad Gateway"), "{statuses:?}");

        drop(phase);
        tokio::time::timeout(Duration::from_secs(5), workers.idle()).await.expect("every worker ends");
        assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
    }
}
