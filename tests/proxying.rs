//! Proxying fidelity: what the client sends is what the service gets, and back.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use support::*;

const ROUTES: &str = "routes:\n  - name: slow\n    match: { path: /slow }\n    timeout: 300ms\n  - name: all\n    match: { path: \"/*\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn methods_targets_and_bodies_arrive_unchanged() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let client = client();
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        let body = format!("body of {method}");
        let req = Request::builder()
            .method(method.clone())
            .uri(sluice.url("/a/b%20c?x=1&y=%2F"))
            .header("x-custom", "value")
            .header("x-multi", "1")
            .header("cookie", "a=b")
            .body(full(body.clone()))
            .unwrap();
        let (response, bytes) = send(&client, req).await;
        assert_eq!(response.status(), 200);
        assert_eq!(bytes, "hello from upstream");
        let seen = upstream.last();
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri.to_string(), "/a/b%20c?x=1&y=%2F");
        assert_eq!(seen.headers["x-custom"], "value");
        assert_eq!(seen.headers["cookie"], "a=b");
        assert_eq!(seen.headers["host"], sluice.addr.to_string());
        assert_eq!(seen.body, body);
    }
    // HEAD has no body either way.
    let (response, bytes) = send(&client, Request::head(sluice.url("/h")).body(empty()).unwrap()).await;
    assert_eq!((response.status().as_u16(), bytes.len()), (200, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_and_sized_bodies_and_headers_in_and_out() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    // Sized body over raw HTTP/1.1, with hop-by-hop headers that must not pass.
    let request = "POST /sized HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: private\r\nKeep-Alive: timeout=5\r\nTE: gzip\r\nX-Forwarded-For: 10.9.8.7\r\n\r\nhelloGET /chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    let answer = raw(sluice.addr, request.as_bytes(), Duration::from_secs(5));
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    // The upstream's own hop-by-hop headers do not reach the client.
    assert!(answer.contains("x-upstream: yes"));
    assert!(!answer.contains("x-upstream-private"), "{answer}");
    assert!(!answer.to_lowercase().contains("keep-alive: timeout"), "{answer}");
    let seen = upstream.seen();
    let (sized, chunked) = (&seen[seen.len() - 2], &seen[seen.len() - 1]);
    assert_eq!(sized.body, "hello");
    assert_eq!(sized.headers["host"], "example.test");
    assert_eq!(sized.headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(sized.headers["x-forwarded-proto"], "http");
    for hop in ["x-hop", "keep-alive", "te", "connection"] {
        assert!(!sized.headers.contains_key(hop), "{hop} passed: {:?}", sized.headers);
    }
    assert_eq!(chunked.body, "abcdefg");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_to_the_service_carries_the_next_request_once_its_response_is_read() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    // One connection to sluice, so one worker and its pool.
    let mut client = Connection::open(sluice.addr).await;
    let connections = || upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
    // Sized, bodiless (HEAD, 204) and chunked responses all end the message cleanly.
    let (status, bytes) = client.send(Method::GET, "/a").await;
    assert_eq!((status.as_u16(), &bytes[..]), (200, &b"hello from upstream"[..]));
    assert_eq!(client.send(Method::HEAD, "/b").await, (http::StatusCode::OK, Bytes::new()));
    assert_eq!(client.send(Method::GET, "/c?status=204").await.0, 204);
    assert_eq!(client.send(Method::GET, "/stream?chunks=2&ms=1").await.1, "chunk 0\nchunk 1\n");
    assert_eq!(client.send(Method::GET, "/d").await.1, "hello from upstream");
    assert_eq!(connections(), 1, "every request went on the first connection");

    // A client that leaves mid-body: that connection to the service is mid-message and
    // must not carry another request. Those after it still get whole answers.
    let cut = raw(sluice.addr, b"GET /stream?chunks=100&ms=10 HTTP/1.1\r\nHost: t\r\n\r\n", Duration::from_millis(100));
    assert!(cut.contains("chunk 0"), "{cut}");
    for _ in 0..3 {
        assert_eq!(client.send(Method::GET, "/e").await.1, "hello from upstream");
    }
    assert_eq!(client.send(Method::GET, "/stream?chunks=3&ms=1").await.1, "chunk 0\nchunk 1\nchunk 2\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_host_names_the_service() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let answer = raw(sluice.addr, b"GET /old HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    // The version sluice speaks, as RFC 9110 §6.2 asks (and nginx does); an HTTP/1.0
    // client that did not ask to keep the connection is told it closes.
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.uri.to_string(), "/old");
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_both_ways() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let client = client();
    // Response: the first chunk arrives long before the last is sent.
    let start = Instant::now();
    let response =
        client.request(Request::get(sluice.url("/stream?chunks=4&ms=300")).body(empty()).unwrap()).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "chunk 0\n");
    assert!(start.elapsed() < Duration::from_millis(600), "first chunk took {:?}", start.elapsed());
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk 1\nchunk 2\nchunk 3\n");

    // Request: each chunk comes back through sluice before the next is sent.
    let (mut tx, request_body) =
        http_body_util::channel::Channel::<Bytes, Box<dyn std::error::Error + Send + Sync>>::new(1);
    let req = Request::post(sluice.url("/echo-body")).body(request_body.boxed()).unwrap();
    let response = client.request(req).await.unwrap();
    let mut echoed = response.into_body();
    for i in 0..3 {
        let chunk = Bytes::from(format!("part {i}"));
        tx.send_data(chunk.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), echoed.frame()).await.expect("echo streamed");
        assert_eq!(back.unwrap().unwrap().into_data().unwrap(), chunk);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_on_the_same_listener() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let client = h2_client();
    let req = Request::post(sluice.url("/over-h2?q=1")).header("x-h2", "yes").body(full("h2 body")).unwrap();
    let (response, bytes) = send(&client, req).await;
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!((response.status().as_u16(), &bytes[..]), (200, &b"hello from upstream"[..]));
    // The service's fields reach an h2c client too, less the hop-by-hop ones.
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert!(!response.headers().contains_key("x-upstream-private"), "{:?}", response.headers());
    let seen = upstream.last();
    assert_eq!(seen.uri.to_string(), "/over-h2?q=1");
    assert_eq!(seen.headers["x-h2"], "yes");
    assert_eq!(seen.headers["host"], sluice.addr.to_string());
    assert_eq!(seen.body, "h2 body");
    // A body of unknown length (HTTP/2 without Content-Length) goes to the service chunked.
    let (mut tx, streamed) =
        http_body_util::channel::Channel::<Bytes, Box<dyn std::error::Error + Send + Sync>>::new(2);
    tokio::spawn(async move {
        for part in ["one ", "two ", "three"] {
            tx.send_data(Bytes::from(part)).await.unwrap();
        }
    });
    let req = Request::post(sluice.url("/unsized")).body(streamed.boxed()).unwrap();
    assert_eq!(send(&client, req).await.0.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        (seen.headers["transfer-encoding"].to_str().unwrap(), &seen.body[..]),
        ("chunked", &b"one two three"[..])
    );
    assert!(!seen.headers.contains_key("content-length"));
    // Many streams at once on one connection.
    let all = (0..20).map(|i| {
        let client = client.clone();
        let url = sluice.url(&format!("/many/{i}"));
        async move { get(&client, &url).await.0.status() }
    });
    for status in futures_join_all(all).await {
        assert_eq!(status, 200);
    }
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_style_upgrade_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let mut stream = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    stream
        .write_all(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [&b"ping"[..], b"over the tunnel"] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_is_504_and_unreachable_is_502_with_problem_json() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let client = client();
    let start = Instant::now();
    let (response, body) = get(&client, &sluice.url("/slow?delay=2000")).await;
    assert_eq!(response.status(), 504);
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 504);

    // Nothing listens on the upstream port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let text = format!("service: t\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:{port}\n");
    let running = sluice::server::start(sluice::config::parse(&text).unwrap(), None).await.unwrap();
    let (response, body) = get(&client, &format!("http://{}/x", running.proxy_addr())).await;
    assert_eq!(response.status(), 502);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_are_refused_and_the_connection_closed() {
    let upstream = Upstream::start().await;
    let rest =
        format!("limits: {{ max_header_bytes: 8192, max_uri_bytes: 1024, header_read_timeout: 500ms }}\n{ROUTES}");
    let sluice = Sluice::start(&upstream, &rest).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let answer = raw(sluice.addr, long_uri.as_bytes(), Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "the connection must close after a 414");

    let big_header = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "b".repeat(20_000));
    let answer = raw(sluice.addr, big_header.as_bytes(), Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_silent_clients_are_cut_off() {
    let upstream = Upstream::start().await;
    let rest = format!("limits: {{ header_read_timeout: 300ms }}\n{ROUTES}");
    let sluice = Sluice::start(&upstream, &rest).await;
    // Connects and sends nothing: closed after the header timeout.
    let start = Instant::now();
    let answer = raw(sluice.addr, b"", Duration::from_secs(5));
    assert!(answer.is_empty());
    assert!(start.elapsed() < Duration::from_secs(2), "held for {:?}", start.elapsed());
    // Sends half a request head and stalls.
    let start = Instant::now();
    let answer = raw(sluice.addr, b"GET / HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(5));
    assert!(start.elapsed() < Duration::from_secs(2), "held for {:?}", start.elapsed());
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(upstream.seen().is_empty());
}

/// On a kept-alive connection each head has the whole header timeout from its first byte:
/// a request that took longer than the timeout leaves the next head its whole time, and an
/// idle connection is closed once it has waited `idle_timeout`, not before.
#[tokio::test(flavor = "multi_thread")]
async fn each_head_on_a_kept_connection_has_the_whole_header_timeout() {
    let upstream = Upstream::start().await;
    let rest = format!("limits: {{ header_read_timeout: 2s, idle_timeout: 2s }}\n{ROUTES}");
    let sluice = Sluice::start(&upstream, &rest).await;
    let addr = sluice.addr;
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Answered at 1.5 s; the next head is begun at 2.5 s (past 2 s from the first
        // head) and finished at 3 s (within 2 s of the first answer).
        stream.write_all(b"GET /first?delay=1500 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let answer = read_response(&mut stream);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        std::thread::sleep(Duration::from_secs(1));
        stream.write_all(b"GET /second HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stream.write_all(b"Host: x\r\n\r\n").unwrap();
        let answer = read_response(&mut stream);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Then idle: closed after idle_timeout, not before.
        let idle = Instant::now();
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "{}", String::from_utf8_lossy(&rest));
        let held = idle.elapsed();
        assert!(held >= Duration::from_millis(1900) && held < Duration::from_secs(5), "held for {held:?}");
    })
    .await
    .unwrap();
    assert_eq!(upstream.seen().len(), 2);
}

/// Reads one response with a `Content-Length` off `stream`.
fn read_response(stream: &mut std::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            return String::from_utf8_lossy(&out).into_owned(); // closed: what came, for the message
        }
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).into_owned();
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0usize);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_and_bad_escapes_are_refused() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    for target in ["/a/../slow", "/a/%2e%2e/slow", "/bad%zz"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(sluice.addr, request.as_bytes(), Duration::from_secs(3));
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    assert!(upstream.seen().is_empty());
}

/// What a service sends in each of these tests, by path.
fn unusual_answers(path: &str) -> (&'static [u8], bool) {
    match path {
        "/sized" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        // Both framings: Transfer-Encoding wins, and the Content-Length must not reach the client.
        "/both" => (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false),
        "/interim" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            false,
        ),
        // Bytes after the answer that nobody asked for: they must not answer the next request.
        "/extra" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale", false),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nthe whole body", true),
        "/two-lengths" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", false),
        "/not-http" => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", false),
        "/silent" => (b"", true),
        "/short" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
        // Switches, then speaks first: its first bytes arrive with the head.
        "/upgrade" => (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nhello after 101", true),
        // Answers at once, without reading the body.
        "/upload" => (b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\n\r\ntoo long", false),
        "/trailers" => (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 7\r\n\r\n", false),
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_framed_any_way_reach_the_client_whole_and_taint_no_later_answer() {
    let service = Scripted::start(unusual_answers).await;
    let sluice = Sluice::start_before(service.addr, ROUTES).await;
    let mut client = Connection::open(sluice.addr).await;
    let mut get = async |path: &str| {
        let (status, body) = client.send(Method::GET, path).await;
        (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
    };
    let ok = (200, "ok".to_owned());
    assert_eq!(get("/sized").await, ok);
    assert_eq!(get("/sized").await, ok);
    assert_eq!(service.connections(), 1, "kept alive");
    assert_eq!(get("/both").await, (200, "hello".to_owned()));
    assert_eq!(get("/interim").await, (200, "final".to_owned()));
    assert_eq!(service.connections(), 2, "a message with both framings is not trusted with the next request");
    assert_eq!(get("/extra").await, ok);
    assert_eq!(get("/sized").await, ok, "not the stale bytes");
    assert_eq!(service.connections(), 3);
    assert_eq!(get("/until-close").await, (200, "the whole body".to_owned()));
    assert_eq!(get("/sized").await, ok);
    assert_eq!(service.connections(), 4);
    // What the service sent right after its 101 head goes through the tunnel first.
    let switched = raw(
        sluice.addr,
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(switched.starts_with("HTTP/1.1 101") && switched.ends_with("\r\n\r\nhello after 101"), "{switched}");
    // A 101 nobody asked for is not passed on.
    assert_eq!(get("/upgrade").await.0, 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_answer_is_a_502_or_a_cut_response_and_the_next_is_served() {
    let service = Scripted::start(unusual_answers).await;
    let sluice = Sluice::start_before(service.addr, ROUTES).await;
    let mut client = Connection::open(sluice.addr).await;
    for path in ["/two-lengths", "/not-http", "/silent"] {
        assert_eq!(client.send(Method::GET, path).await.0, 502, "{path}");
    }
    // A body cut short after its head was passed on: the client's connection is closed,
    // so the client sees nothing or a short message (as far as hyper had flushed), never
    // a whole one.
    let start = Instant::now();
    let cut = raw(sluice.addr, b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n", Duration::from_secs(5));
    assert!(cut.is_empty() || (cut.starts_with("HTTP/1.1 200 OK") && cut.ends_with("\r\n\r\nabc")), "{cut}");
    assert!(start.elapsed() < Duration::from_secs(4), "the connection was left open");
    assert_eq!(client.send(Method::GET, "/sized").await, (http::StatusCode::OK, Bytes::from("ok")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_before_the_body_is_sent_reaches_the_client_and_the_connection_is_not_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = Scripted::start(unusual_answers).await;
    let sluice = Sluice::start_before(service.addr, ROUTES).await;
    // More body than the socket buffers hold, and a service that never reads it.
    const LEN: usize = 16 << 20;
    let stream = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {LEN}\r\n\r\n");
        write.write_all(head.as_bytes()).await.unwrap();
        let _ = write.write_all(&vec![b'x'; LEN]).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"too long") {
        let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await.expect("answered").unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 413"), "{}", String::from_utf8_lossy(&answer));
    // Connections are dealt to the workers in turn: one of these two is on the worker
    // (and its pool) that served the upload.
    for _ in 0..2 {
        let mut client = Connection::open(sluice.addr).await;
        assert_eq!(client.send(Method::GET, "/sized").await, (http::StatusCode::OK, Bytes::from("ok")));
    }
    let lines = service.request_lines.lock().unwrap().clone();
    assert_eq!(lines, ["POST /upload HTTP/1.1", "GET /sized HTTP/1.1", "GET /sized HTTP/1.1"]);
    assert_eq!(service.connections(), 3, "the connection with half a body on it was not reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_and_the_body_goes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let mut stream = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let head = "POST /expect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // The client waits for the go-ahead, as curl does, before sending its body.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async |stream: &mut tokio::net::TcpStream, answer: &mut Vec<u8>, buf: &mut [u8]| {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(answer));
        answer.extend_from_slice(&buf[..n]);
    };
    while !answer.ends_with(b"\r\n\r\n") {
        read(&mut stream, &mut answer, &mut buf).await;
    }
    assert!(answer.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", String::from_utf8_lossy(&answer));
    stream.write_all(b"hello").await.unwrap();
    answer.clear();
    while !answer.ends_with(b"hello from upstream") {
        read(&mut stream, &mut answer, &mut buf).await;
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(upstream.last().body, "hello");
}

/// Trailers reach an HTTP/1.1 client that says it takes them (`TE: trailers`), at the end
/// of a chunked body; one that does not say so gets the body without them.
#[tokio::test(flavor = "multi_thread")]
async fn trailers_reach_a_client_that_takes_them() {
    let service = Scripted::start(unusual_answers).await;
    let sluice = Sluice::start_before(service.addr, "").await;
    let asked = "GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n";
    let answer = raw(sluice.addr, asked.as_bytes(), Duration::from_secs(5));
    assert!(answer.contains("\r\ntransfer-encoding: chunked\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n2\r\nok\r\n0\r\nx-sum: 7\r\n\r\n"), "{answer}");
    let plain = "GET /trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw(sluice.addr, plain.as_bytes(), Duration::from_secs(5));
    assert!(answer.ends_with("\r\n\r\n2\r\nok\r\n0\r\n\r\n"), "{answer}");
}
