//! Keep-alive HTTP/1.1 connections to the service, one pool per worker thread.
//!
//! A connection is taken for one request and given back when its response body has been
//! read to the end ([`Lease::give_back`]); one whose response was cut short, that the
//! service asked to close, or that was upgraded, is closed instead. The most recently used
//! connection goes out first, so a quiet pool lets its oldest connections age out after
//! [`IDLE_TIMEOUT`] (looked at on every give-back and every 15 s).
//!
//! The connections are sluice's own ([`Conn`]), driven by the request's task. hyper's
//! client ran a task per connection and handed each request, response and body chunk
//! across channels; replacing it took a fifth off sluice's instructions per request
//! (BENCHMARKS.md, session 6).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::Method;
use http_body::Frame;
use tokio::net::TcpStream;

use super::conn::{Conn, Upload};
use super::h1::{Decoder, Head};

/// How long a connection may sit unused before the pool closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    upstream: Authority,
    conn: Conn,
    since: Instant,
}

/// A request that got no answer's head.
pub struct SendError {
    pub error: io::Error,
    /// No connection could be made (an error of kind `TimedOut`: not by the deadline), so
    /// nothing of the request left sluice.
    pub connect: bool,
    /// The request's body, when none of it was sent: it may go again.
    pub upload: Option<Box<Upload>>,
}

/// A connection out of the pool for one request and its response.
pub struct Lease {
    pool: Arc<Pool>,
    upstream: Authority,
    conn: Conn,
    /// The service will take another request on it once the body is read.
    keep_alive: bool,
}

impl Lease {
    /// The next frame of the response body.
    pub fn poll_body(&mut self, body: &mut Decoder, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.conn.poll_body(body, cx)
    }

    /// The response was read to its end: the connection goes back to the pool if it can
    /// carry another request, and is closed if not.
    pub fn give_back(self) {
        let Lease { pool, upstream, mut conn, keep_alive } = self;
        if !(keep_alive && conn.is_reusable()) {
            return;
        }
        conn.settle();
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        evict_expired(&mut idle, now);
        idle.push_back(Idle { upstream, conn, since: now });
    }

    /// The connection as a tunnel, after a `101`: the socket, and what the service sent
    /// after its head.
    pub fn into_tunnel(self) -> (TcpStream, Bytes) {
        self.conn.into_tunnel()
    }
}

fn evict_expired(idle: &mut VecDeque<Idle>, now: Instant) {
    while idle.front().is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT) {
        idle.pop_front();
    }
}

impl Pool {
    /// A pool that also closes its idle connections on a timer, so a quiet sidecar holds
    /// none open past [`IDLE_TIMEOUT`]. Must be called inside a tokio runtime.
    pub fn new() -> Arc<Self> {
        let pool = Arc::new(Self::default());
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends a request (its head as `write_head` writes it, its body from `upload`) to
    /// `upstream` on a pooled connection, or a new one, and reads the response head by
    /// `deadline` (else an error of kind `TimedOut`). The service may close an idle
    /// connection at any time: a request that a pooled connection failed before anything
    /// of it can have been acted on is sent again on the next.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Authority,
        method: &Method,
        write_head: impl Fn(&mut Vec<u8>),
        mut upload: Option<Box<Upload>>,
        upgrade: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(Head, Lease), SendError> {
        loop {
            let (mut conn, pooled) = match self.take(upstream) {
                Some(conn) => (conn, true),
                // Boxed: connecting (and resolving) is rare, and its future would otherwise
                // make every request's future larger to move (530 instructions a request).
                None => match Box::pin(Conn::open(upstream, deadline)).await {
                    Ok(conn) => (conn, false),
                    Err(error) => return Err(SendError { error, connect: true, upload }),
                },
            };
            // Only a request without a body is tried again, so the upload is never needed twice.
            match conn.exchange(method, &write_head, upload.take(), upgrade, deadline).await {
                Ok(head) => {
                    let keep_alive = head.keep_alive;
                    let lease = Lease { pool: self.clone(), upstream: upstream.clone(), conn, keep_alive };
                    return Ok((head, lease));
                }
                Err(failure) if pooled && failure.retryable => {}
                Err(failure) => return Err(SendError { error: failure.error, connect: false, upload: None }),
            }
        }
    }

    /// The most recently used connection to `upstream` that is still open.
    fn take(&self, upstream: &Authority) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        evict_expired(&mut idle, Instant::now());
        while let Some(Idle { upstream: to, conn, .. }) = idle.pop_back() {
            // A connection to a service the config no longer names is closed. (The same
            // config text gives the same bytes: no need for a case-blind comparison.)
            if to.as_str() == upstream.as_str() && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn sweep_now(&self, now: Instant) {
        evict_expired(&mut self.idle.lock().unwrap_or_else(PoisonError::into_inner), now);
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// The read size of the idle connection that would go out next.
    #[cfg(test)]
    fn next_read_size(&self) -> Option<usize> {
        self.idle.lock().unwrap().back().map(|idle| idle.conn.read_size())
    }
}

async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 4);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_now(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A service on a port of its own, serving each connection it accepts with `serve`;
    /// it counts the connections.
    async fn service_with<F, Fut>(serve: F) -> (Authority, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (authority, accepted)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A service that answers every request `ok`; with `close_after_one` it closes each
    /// connection after its first response without saying so, as a service whose idle
    /// timeout just ran out does.
    async fn service(close_after_one: bool) -> (Authority, Arc<AtomicUsize>) {
        service_with(move |mut stream| async move {
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if stream.write_all(OK).await.is_err() || close_after_one {
                        return;
                    }
                }
            }
        })
        .await
    }

    async fn get(pool: &Arc<Pool>, upstream: &Authority) -> (u16, Bytes, Lease) {
        get_within(pool, upstream, Duration::from_secs(5)).await
    }

    /// A GET answered within `timeout`, its body read.
    async fn get_within(pool: &Arc<Pool>, upstream: &Authority, timeout: Duration) -> (u16, Bytes, Lease) {
        let sent = send_within(pool, upstream, Method::GET, timeout).await;
        let (Head { status, mut body, .. }, mut lease) = sent.expect("sent");
        let mut bytes = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| lease.poll_body(&mut body, cx)).await {
            bytes.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        (status.as_u16(), Bytes::from(bytes), lease)
    }

    /// Sends a request without a body, answered within 5 s.
    async fn send(pool: &Arc<Pool>, upstream: &Authority, method: Method) -> io::Result<(Head, Lease)> {
        send_within(pool, upstream, method, Duration::from_secs(5)).await
    }

    async fn send_within(
        pool: &Arc<Pool>,
        upstream: &Authority,
        method: Method,
        timeout: Duration,
    ) -> io::Result<(Head, Lease)> {
        let head = format!("{method} / HTTP/1.1\r\nhost: test\r\n\r\n");
        let write_head = |out: &mut Vec<u8>| out.extend_from_slice(head.as_bytes());
        let deadline = tokio::time::Instant::now() + timeout;
        pool.send(upstream, &method, write_head, None, false, deadline).await.map_err(|e| e.error)
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_carries_the_next_request() {
        let (upstream, accepted) = service(false).await;
        let pool = Pool::new();
        for _ in 0..3 {
            let (status, body, lease) = get(&pool, &upstream).await;
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
            lease.give_back();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_connection_not_given_back_is_not_reused() {
        let (upstream, accepted) = service(false).await;
        let pool = Pool::new();
        for _ in 0..2 {
            let (_, _, lease) = get(&pool, &upstream).await;
            drop(lease); // the response was cut short, say
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_len(), 0);
    }

    #[tokio::test]
    async fn connections_the_service_closed_are_replaced_without_failing_a_request() {
        let (upstream, accepted) = service(true).await;
        let pool = Pool::new();
        for _ in 0..4 {
            let (status, _, lease) = get(&pool, &upstream).await;
            assert_eq!(status, 200);
            lease.give_back();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn idle_connections_age_out_and_a_new_upstream_gets_its_own() {
        let (first, _) = service(false).await;
        let (second, accepted) = service(false).await;
        let pool = Pool::new();
        get(&pool, &first).await.2.give_back();
        // The config now names another service: the idle connection to the first is not
        // used for it, and is closed.
        get(&pool, &second).await.2.give_back();
        assert_eq!((accepted.load(Ordering::SeqCst), pool.idle_len()), (1, 1));
        pool.sweep_now(Instant::now() + IDLE_TIMEOUT - Duration::from_secs(1));
        assert_eq!(pool.idle_len(), 1, "not idle long enough");
        pool.sweep_now(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.idle_len(), 0);
    }

    /// A service that answers the first request on each connection and closes the
    /// connection on reading the second, without answering: the request that raced the
    /// close of an idle connection.
    async fn closes_on_the_second() -> (Authority, Arc<AtomicUsize>) {
        service_with(|mut stream| async move {
            let mut chunk = [0u8; 1024];
            let _ = stream.read(&mut chunk).await;
            stream.write_all(OK).await.unwrap();
            let _ = stream.read(&mut chunk).await;
        })
        .await
    }

    #[tokio::test]
    async fn only_an_idempotent_request_is_sent_again_after_a_silent_close() {
        let (upstream, accepted) = closes_on_the_second().await;
        let pool = Pool::new();
        get(&pool, &upstream).await.2.give_back();
        // The pooled connection is open when taken; the service closes it on reading.
        let (status, body, lease) = get(&pool, &upstream).await;
        assert_eq!((status, &body[..]), (200, &b"ok"[..]), "a GET is sent again on a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        lease.give_back();
        let post = send(&pool, &upstream, Method::POST).await;
        assert!(post.is_err(), "a POST may have been acted on: not sent again");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_large_body_is_read_in_growing_reads_and_the_buffer_let_go_after() {
        const LEN: usize = 8 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await.unwrap();
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream.write_all(&vec![7u8; LEN]).await.unwrap();
            let _ = stream.read(&mut head).await; // keeps the connection open
        });
        let pool = Pool::new();
        let (Head { status, mut body, .. }, mut lease) = send(&pool, &upstream, Method::GET).await.unwrap();
        assert_eq!(status, 200);
        let (mut total, mut largest) = (0, 0);
        while let Some(frame) = std::future::poll_fn(|cx| lease.poll_body(&mut body, cx)).await {
            let data = frame.unwrap().into_data().unwrap();
            (total, largest) = (total + data.len(), largest.max(data.len()));
        }
        assert_eq!(total, LEN);
        assert!(largest > 16 * 1024, "reads never grew past the first size: {largest}");
        lease.give_back();
        assert_eq!(pool.next_read_size(), Some(16 * 1024), "the grown buffer is let go when idle");
    }

    /// A service that answers the first request on its connection at once and the second
    /// after 400 ms.
    async fn slow_on_the_second() -> (Authority, Arc<AtomicUsize>) {
        service_with(|mut stream| async move {
            let mut chunk = [0u8; 1024];
            for delay in [0, 400] {
                if stream.read(&mut chunk).await.unwrap_or(0) == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(delay)).await;
                stream.write_all(OK).await.unwrap();
            }
            let _ = stream.read(&mut chunk).await;
        })
        .await
    }

    /// The connection's timer is moved on lazily: a deadline of its last request, passed
    /// while it was idle, does not cut the next request short.
    #[tokio::test]
    async fn a_deadline_passed_while_idle_does_not_cut_the_next_request_short() {
        let (upstream, accepted) = slow_on_the_second().await;
        let pool = Pool::new();
        let (status, _, lease) = get_within(&pool, &upstream, Duration::from_millis(200)).await;
        assert_eq!(status, 200);
        lease.give_back();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _, _) = get_within(&pool, &upstream, Duration::from_secs(2)).await;
        assert_eq!(status, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// ... and a request with a shorter timeout than its connection's last gets its own.
    #[tokio::test]
    async fn a_shorter_deadline_than_the_last_requests_is_kept() {
        let (upstream, accepted) = slow_on_the_second().await;
        let pool = Pool::new();
        let (status, _, lease) = get_within(&pool, &upstream, Duration::from_secs(30)).await;
        assert_eq!(status, 200);
        lease.give_back();
        let start = Instant::now();
        let late = send_within(&pool, &upstream, Method::GET, Duration::from_millis(100)).await;
        assert_eq!(late.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert!(start.elapsed() < Duration::from_millis(350), "timed out after {:?}", start.elapsed());
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a timed-out request is not sent again");
    }

    #[tokio::test]
    async fn a_service_that_cannot_be_reached_is_an_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream: Authority = unused.local_addr().unwrap().to_string().parse().unwrap();
        drop(unused);
        assert!(send(&Pool::new(), &upstream, Method::GET).await.is_err());
    }
}
