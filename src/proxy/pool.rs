//! Keep-alive HTTP/1.1 connections to the service, one pool per worker thread.
//!
//! A connection is taken for one request and given back when its response body has been
//! read to the end ([`Lease::give_back`]); one whose response was cut short, or that was
//! upgraded, is closed instead. The most recently used connection goes out first, so a
//! quiet pool lets its oldest connections age out after [`IDLE_TIMEOUT`] (looked at on
//! every give-back and every 15 s).
//!
//! Built on hyper's connection-level client rather than hyper-util's pooled one: one
//! service per process needs no pool keyed by host, and the pooled client's checkout,
//! keyed map and hand-offs were a sixth of sluice's instructions per request
//! (BENCHMARKS.md, session 5).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a connection may sit unused before the pool closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    upstream: Authority,
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// A connection out of the pool for one request.
pub struct Lease {
    pool: Arc<Pool>,
    upstream: Authority,
    sender: SendRequest<Incoming>,
}

impl Lease {
    /// The response was read to its end: the connection can carry another request.
    pub fn give_back(self) {
        let Lease { pool, upstream, sender } = self;
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        evict_expired(&mut idle, now);
        idle.push_back(Idle { upstream, sender, since: now });
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

    /// Sends `req` (in origin form) to `upstream` on a pooled connection, or a new one.
    /// A pooled connection that turns out closed before the request was written to it is
    /// dropped and the request tried on the next: the service may close an idle
    /// connection at any time.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Authority,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), Error> {
        loop {
            let (mut sender, pooled) = match self.take(upstream).await {
                Some(sender) => (sender, true),
                None => (connect(upstream).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease { pool: self.clone(), upstream: upstream.clone(), sender };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if pooled => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used open connection to `upstream`, once it can take a request.
    async fn take(&self, upstream: &Authority) -> Option<SendRequest<Incoming>> {
        loop {
            let Idle { upstream: to, mut sender, .. } = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                evict_expired(&mut idle, Instant::now());
                idle.pop_back()?
            };
            // A connection to a service the config no longer names is closed. (The same
            // config text gives the same bytes: no need for a case-blind comparison.)
            if to.as_str() == upstream.as_str() && !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn sweep_now(&self, now: Instant) {
        evict_expired(&mut self.idle.lock().unwrap_or_else(PoisonError::into_inner), now);
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap().len()
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

/// Where to connect: the host as the resolver takes it (an IPv6 literal without its
/// brackets) and the port, 80 if the URL names none.
fn address(upstream: &Authority) -> (&str, u16) {
    let host = upstream.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host, upstream.port_u16().unwrap_or(80))
}

async fn connect(upstream: &Authority) -> Result<SendRequest<Incoming>, Error> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address(upstream)))
        .await
        .map_err(|_| "connect timed out")??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new().handshake::<_, Incoming>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A service that answers every request `ok`, counting the connections it accepts;
    /// with `close_after_one` it closes each connection after its first response without
    /// saying so, as a service whose idle timeout just ran out does.
    async fn service(close_after_one: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
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
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(ok).await.is_err() || close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    /// A request for the pool: `Incoming` bodies only come from hyper, so this one is a
    /// request received by a real hyper server (there is no other way to make one).
    async fn get(pool: &Arc<Pool>, upstream: &Authority) -> (u16, Bytes, Lease) {
        let (response, lease) = pool.send(upstream, request().await).await.expect("sent");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body, lease)
    }

    async fn request() -> Request<Incoming> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = std::sync::Mutex::new(Some(tx));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.lock().unwrap().take();
                async move {
                    let (parts, body) = req.into_parts();
                    let mut req = Request::from_parts(parts, body);
                    *req.uri_mut() = "/".parse().unwrap();
                    if let Some(tx) = tx {
                        let _ = tx.send(req);
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        let req = rx.await.unwrap();
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        req
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

    #[test]
    fn addresses_the_resolver_takes() {
        let address = |text: &str| {
            let authority: Authority = text.parse().unwrap();
            let (host, port) = super::address(&authority);
            (host.to_owned(), port)
        };
        assert_eq!(address("[::1]:8080"), ("::1".to_owned(), 8080));
        assert_eq!(address("service.internal"), ("service.internal".to_owned(), 80));
        assert_eq!(address("user:secret@10.0.0.7:9000"), ("10.0.0.7".to_owned(), 9000));
    }

    #[tokio::test]
    async fn a_service_that_cannot_be_reached_is_an_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream: Authority = unused.local_addr().unwrap().to_string().parse().unwrap();
        drop(unused);
        assert!(Pool::new().send(&upstream, request().await).await.is_err());
    }
}
