//! The pool against real services on `127.0.0.1:0`.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::upstream::resolve;

fn pool() -> Arc<Pool> {
    Pool::new(Shared::new(Breaker::new(), Resolver::new()))
}

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
    read_whole(send_within(pool, upstream, Method::GET, timeout).await.expect("sent")).await
}

/// The answer's status and body, read to its end.
async fn read_whole((Head { status, mut body, .. }, mut lease): (Head, Lease)) -> (u16, Bytes, Lease) {
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
    let to = Target { authority: upstream, max_connections: None };
    pool.send(to, &method, write_head, None, false, deadline).await.map_err(|e| e.error)
}

#[tokio::test]
async fn a_connection_read_to_the_end_carries_the_next_request() {
    let (upstream, accepted) = service(false).await;
    let pool = pool();
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
    let pool = pool();
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
    let pool = pool();
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
    let pool = pool();
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
    let pool = pool();
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
    let pool = pool();
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
    let pool = pool();
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
    let pool = pool();
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
    assert!(send(&pool(), &upstream, Method::GET).await.is_err());
}

#[tokio::test]
async fn past_max_connections_a_request_is_refused_without_being_sent() {
    let (upstream, accepted) = service(false).await;
    let breaker = Breaker::new();
    let pool = Pool::new(Shared::new(breaker.clone(), Resolver::new()));
    let capped = Target { authority: &upstream, max_connections: Some(1) };
    let write_head = |out: &mut Vec<u8>| out.extend_from_slice(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n");
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(5);
    let (_, held) = pool.send(capped, &Method::GET, write_head, None, false, deadline()).await.ok().unwrap();
    let refused = pool.send(capped, &Method::GET, write_head, None, false, deadline()).await.err().unwrap();
    assert!(refused.overflow && !refused.connect, "{}", refused.error);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    drop(held); // closed: its place is free
    assert_eq!(breaker.counts().connections, 0);
    let (_, _, lease) = get(&pool, &upstream).await;
    lease.give_back();
    assert_eq!(breaker.counts().connections, 1, "an idle connection is still open, and counted");
    // The idle one carries the next request under the cap.
    assert!(pool.send(capped, &Method::GET, write_head, None, false, deadline()).await.is_ok());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn when_the_name_resolves_elsewhere_new_requests_go_there_and_old_connections_drain() {
    let (first, to_first) = service(false).await;
    let (second, to_second) = service(false).await;
    let addr = |a: &Authority| resolve::literal(a).unwrap();
    let name: Authority = "service.internal:80".parse().unwrap();
    let resolver = Resolver::new();
    resolver.publish(&name, vec![addr(&first)]);
    let pool = Pool::new(Shared::new(Breaker::new(), resolver.clone()));
    let (_, _, idle) = get(&pool, &name).await;
    let (_, _, busy) = get(&pool, &name).await; // a second connection, busy across the change
    idle.give_back();
    assert_eq!((to_first.load(Ordering::SeqCst), pool.idle_len()), (2, 1));

    assert!(resolver.publish(&name, vec![addr(&second)]).is_some());
    let (status, _, lease) = get(&pool, &name).await;
    assert_eq!(status, 200);
    assert_eq!(to_second.load(Ordering::SeqCst), 1, "a new request goes to the new address");
    assert_eq!(pool.idle_len(), 0, "the idle connection to the old one was closed");
    lease.give_back();
    busy.give_back();
    assert_eq!(pool.idle_len(), 1, "the busy one to the old address is closed when done, not pooled");
    get(&pool, &name).await.2.give_back();
    assert_eq!((to_first.load(Ordering::SeqCst), to_second.load(Ordering::SeqCst)), (2, 1));
}

#[tokio::test]
async fn a_pool_at_max_connections_closes_another_pools_idle_connection_to_make_room() {
    let (upstream, accepted) = service(false).await;
    let breaker = Breaker::new();
    let shared = Shared::new(breaker.clone(), Resolver::new());
    let (one, other) = (Pool::new(shared.clone()), Pool::new(shared));
    let capped = Target { authority: &upstream, max_connections: Some(1) };
    let write_head = |out: &mut Vec<u8>| out.extend_from_slice(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n");
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(5);
    let sent = other.send(capped, &Method::GET, write_head, None, false, deadline()).await;
    read_whole(sent.ok().unwrap()).await.2.give_back();
    assert_eq!((other.idle_len(), breaker.counts().connections), (1, 1));
    // The other worker's idle connection is closed; this one opens its own.
    let held = one.send(capped, &Method::GET, write_head, None, false, deadline()).await;
    assert!(held.is_ok());
    assert_eq!((other.idle_len(), accepted.load(Ordering::SeqCst)), (0, 2));
    assert_eq!(breaker.counts().connections, 1);
}
