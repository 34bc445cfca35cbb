//! HTTP/1.1 from clients, as sluice reads it itself: pipelining, keep-alive, HEAD,
//! framing it refuses before anything reaches the service, and refusals a client still
//! sending its body gets to read.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::*;

const ROUTES: &str = "routes:\n  - name: all\n    match: { path: \"/*\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let requests = "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n\
                    POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                    PUT /p3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n\
                    GET /p4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw(sluice.addr, requests.as_bytes(), Duration::from_secs(5));
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{answer}");
    assert!(answer.ends_with("hello from upstream"), "{answer}");
    let seen: Vec<_> = upstream.seen().into_iter().map(|s| (s.uri.to_string(), s.body)).collect();
    let expected = [("/p1", ""), ("/p2", "abc"), ("/p3", "de"), ("/p4", "")];
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for ((uri, body), (want_uri, want_body)) in seen.iter().zip(expected) {
        assert_eq!((uri.as_str(), &body[..]), (want_uri, want_body.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_or_malformed_heads_are_refused_and_nothing_is_smuggled() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \u{1}chunked\r\n\r\n", "400"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"),
        ("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", "400"),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", "400"),
    ];
    // A byte that is not UTF-8 (0xA0, no-break space in Latin-1) before or after the coding.
    let latin1 =
        |field: &[u8]| [&b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "[..], field, b"\r\n\r\n"].concat();
    let heads = cases.iter().map(|(head, status)| (head.as_bytes().to_vec(), *status));
    let heads = heads.chain([(latin1(b"\xa0chunked"), "400"), (latin1(b"chunked\xa0"), "400")]);
    for (bytes, status) in heads {
        let answer = raw(sluice.addr, &[&bytes[..], smuggled.as_bytes()].concat(), Duration::from_secs(5));
        let head = String::from_utf8_lossy(&bytes);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{head:?}: {answer}");
        let answers = answer.lines().filter(|line| line.starts_with("HTTP/1.1 ")).count();
        assert_eq!(answers, 1, "{head:?}: one answer, then the connection closes: {answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{head:?}: {answer}");
        assert!(answer.contains("application/problem+json"), "{head:?}: {answer}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http10_client_keeps_its_connection_only_when_it_asks() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let requests = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /c HTTP/1.0\r\n\r\n";
    let answer = raw(sluice.addr, requests.as_bytes(), Duration::from_secs(5));
    let answers: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "the connection closes after the second: {answer}");
    assert!(answers[0].contains("\r\nconnection: keep-alive\r\n"), "{answer}");
    assert!(answers[1].contains("\r\nconnection: close\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_answer_keeps_its_length_and_sends_no_body() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let requests = "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw(sluice.addr, requests.as_bytes(), Duration::from_secs(5));
    let (head, rest) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(head.contains("\r\ncontent-length: 19"), "the length a GET would have: {answer}");
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "no body after a HEAD answer: {answer}");
    assert!(rest.ends_with("hello from upstream"), "{answer}");
}

/// A refused request whose body is still coming: sluice sends the 429, closes its side,
/// and reads what keeps coming for a moment (up to a second, or 1 MiB) before it closes
/// the connection. Closing at once with the body unread would reset the connection: the
/// client's next writes would fail, and on a real network the reset can destroy the
/// answer before it is read.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_a_refused_body_reads_the_refusal() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: closed\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 1 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    get(&client(), &sluice.url("/spend")).await;
    let addr = sluice.addr;
    let (read, answer, sent) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let pieces = 256;
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", pieces * 1024);
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer).map(|_| ()).map_err(|e| e.kind());
        // The answer is read, and sluice has closed its side: the rest of the body still
        // goes out, slowly, without a reset.
        let sent = (0..pieces)
            .take_while(|_| {
                std::thread::sleep(Duration::from_micros(500));
                stream.write_all(&[b'x'; 1024]).is_ok()
            })
            .count();
        (read, String::from_utf8_lossy(&answer).into_owned(), sent)
    })
    .await
    .unwrap();
    assert_eq!(read, Ok(()), "the answer ends cleanly: {answer}");
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert_eq!(sent, 256, "the body was taken after the answer");
}

/// An upgrade asked with a body goes to the service as a plain request: after a `101`,
/// the rest of the body and the new protocol's bytes could not be told apart.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_with_a_body_is_forwarded_as_a_plain_request() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    let request = "POST /plain HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\nUpgrade: echo\r\n\
                   Content-Length: 3\r\n\r\nabc";
    let answer = raw(sluice.addr, request.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let seen = upstream.last();
    assert_eq!(&seen.body[..], b"abc");
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
}

/// A client that sent its whole body and then hangs up while the service works frees its
/// concurrency slot at once, as one whose request had no body does.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_after_its_body_frees_its_slot() {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: one\n    match: { path: \"/*\" }\n    concurrency: { max: 1 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let mut holder = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let request = "POST /hold?delay=10000 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    holder.write_all(request.as_bytes()).await.unwrap();
    eventually("the slow request", Duration::from_secs(5), async || upstream.in_flight.load(Ordering::SeqCst) == 1)
        .await;
    let client = client();
    assert_eq!(get(&client, &sluice.url("/second")).await.0.status(), 429);
    drop(holder);
    eventually("the slot of the client that left", Duration::from_secs(3), async || {
        get(&client, &sluice.url("/fast")).await.0.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_are_closed_at_once_while_the_open_ones_carry_on() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { max_connections: 3 }\n").await;
    let addr = sluice.addr;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut connection = Connection::open(addr).await;
        assert_eq!(connection.send(http::Method::GET, "/a").await.0, 200);
        open.push(connection);
    }
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_connections", "listener=\"proxy\""), 3.0);

    // A fourth is accepted by the kernel and closed by sluice without an answer.
    let refused = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = stream.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = Vec::new();
        let started = std::time::Instant::now();
        let read = stream.read_to_end(&mut answer);
        (read.is_ok() || started.elapsed() < Duration::from_secs(4), answer)
    })
    .await
    .unwrap();
    assert!(refused.0, "the refused connection was left open");
    assert!(refused.1.is_empty(), "{}", String::from_utf8_lossy(&refused.1));
    assert_eq!(sluice.scrape().await.value("sluice_connections_refused_total", "reason=\"max_connections\""), 1.0);

    // The open ones are served; once one closes, a new connection is served too.
    for connection in &mut open {
        assert_eq!(connection.send(http::Method::GET, "/c").await.0, 200);
    }
    drop(open.pop());
    eventually("the closed connection to be counted out", Duration::from_secs(5), async || {
        sluice.scrape().await.value("sluice_connections", "listener=\"proxy\"") == 2.0
    })
    .await;
    assert_eq!(Connection::open(addr).await.send(http::Method::GET, "/d").await.0, 200);
    assert!(!upstream.seen().iter().any(|s| s.uri.path() == "/b"));
}

/// Sends `bytes` on a new connection, then stops sending (or hangs up, with `close`); what
/// came back and when the connection was closed.
fn stall(addr: std::net::SocketAddr, bytes: &'static [u8], close: bool) -> (String, Duration) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    stream.write_all(bytes).unwrap();
    if close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_or_broken_body_is_the_clients_failure_not_the_services() {
    let upstream = Upstream::start().await;
    let config = "limits: { body_read_timeout: 1s }\nroutes:\n  - name: up\n    match: { path: \"/*\" }\n    \
                  concurrency: { max: 1 }\n    sla: { availability: 99%, min_events: 0 }\n";
    let sluice = Sluice::start(&upstream, config).await;
    let addr = sluice.addr;

    // 10 of 1,000 bytes, then nothing: 408 at the body timeout, and the connection closes.
    let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789";
    let (answer, waited) = tokio::task::spawn_blocking(move || stall(addr, head, false)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");

    // Its concurrency slot is free at once, and the SLI never saw it.
    let (response, _) = get(&client(), &sluice.url("/after")).await;
    assert_eq!(response.status(), 200);
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_requests_total", "route=\"up\",code_class=\"4xx\",origin=\"client\""), 1.0);
    assert_eq!(metrics.value("sluice_request_duration_seconds_count", "route=\"up\""), 1.0, "only /after");

    // A client that hangs up mid-body: the same origin, and the service's SLI untouched.
    let (answer, _) = tokio::task::spawn_blocking(move || stall(addr, head, true)).await.unwrap();
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400 "), "{answer}");
    eventually("the broken body to be counted", Duration::from_secs(5), async || {
        sluice.scrape().await.value("sluice_requests_total", "route=\"up\",code_class=\"4xx\",origin=\"client\"") == 2.0
    })
    .await;
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_request_duration_seconds_count", "route=\"up\""), 1.0);
    assert_eq!(
        metrics.value("sluice_requests_total", "route=\"up\",code_class=\"5xx\",origin=\"upstream_error\""),
        0.0
    );
    assert_eq!(metrics.value("sluice_requests_total", "route=\"up\",code_class=\"5xx\",origin=\"timeout\""), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_h2c_body_gets_408_on_its_stream() {
    use http_body_util::BodyExt;
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { body_read_timeout: 1s }\n").await;
    let (mut tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>::new(1);
    let request = http::Request::post(sluice.url("/upload")).body(body.boxed()).unwrap();
    tx.send_data(bytes::Bytes::from_static(b"0123456789")).await.unwrap();
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), h2_client().request(request)).await.unwrap().unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_requests_total", "route=\"unmatched\",code_class=\"4xx\",origin=\"client\""), 1.0);
    drop(tx);
}

#[tokio::test(flavor = "multi_thread")]
async fn kept_alive_connections_close_after_idle_timeout_http1_and_h2c() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { idle_timeout: 1s, header_read_timeout: 10s }\n").await;
    let addr = sluice.addr;

    // HTTP/1.1: a second request within the idle timeout is served; the connection closes
    // about one idle timeout after the last answer, long before the header timeout.
    let (answers, quiet) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        stream.write_all(request).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        stream.write_all(request).unwrap();
        let sent = std::time::Instant::now();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        (answer.matches("HTTP/1.1 200 ").count(), sent.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(answers, 2);
    assert!(quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(4), "closed after {quiet:?}");

    // h2c: the connection gets GOAWAY and ends once no stream has been active for 1s.
    let (mut sender, connection) = h2_connection(addr).await;
    let request = http::Request::get(sluice.url("/b")).body(empty()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let answered = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), connection).await;
    assert!(ended.is_ok(), "the h2c connection stayed open");
    let quiet = answered.elapsed();
    assert!(quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(4), "closed after {quiet:?}");
}

/// A write timeout of 1 s, and route `big` with an SLA that counts every request.
const WRITE_TIMEOUT_1S: &str = "limits: { write_timeout: 1s }\nroutes:\n  - name: big\n    match: { path: /big }\n    \
                                sla: { latency: { threshold: 10s, objective: 99% }, availability: 99%, min_events: 0 }\n";

/// After a cut at the write timeout: the service's stream (of `/big`) was let go, and the
/// request counted as the client's failure, not in the service's SLIs.
async fn cut_as_the_clients_failure(sluice: &Sluice, cut_before: u64) {
    use std::sync::atomic::Ordering;
    eventually("the service's stream to be cut", Duration::from_secs(5), async || {
        BIG_STREAMS_CUT.load(Ordering::SeqCst) > cut_before
    })
    .await;
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_requests_total", "route=\"big\",code_class=\"4xx\",origin=\"client\""), 1.0);
    assert_eq!(metrics.value("sluice_request_duration_seconds_count", "route=\"big\""), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_is_cut_at_write_timeout_and_the_service_let_go() {
    use std::sync::atomic::Ordering;
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, WRITE_TIMEOUT_1S).await;
    let addr = sluice.addr;
    let cut_before = BIG_STREAMS_CUT.load(Ordering::SeqCst);

    // 256 MiB asked for, none read for 4 s: far more than the socket buffers hold.
    let (read, closed) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /big?mb=256 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(4));
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0; 1 << 20];
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        (total, closed)
    })
    .await
    .unwrap();
    assert!(closed, "the connection was still open after {read} bytes");
    assert!(read < 256 << 20, "all {read} bytes came: nothing was cut");

    cut_as_the_clients_failure(&sluice, cut_before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_client_that_does_not_read_is_cut_at_write_timeout_and_the_service_let_go() {
    use std::sync::atomic::Ordering;
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, WRITE_TIMEOUT_1S).await;
    let cut_before = BIG_STREAMS_CUT.load(Ordering::SeqCst);

    // 256 MiB asked for; the head is read, the body never: the client's windows fill and
    // sluice's frames wait on it.
    let (mut sender, connection) = h2_connection(sluice.addr).await;
    let response = sender.send_request(http::Request::get("/big?mb=256").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), connection).await;
    assert!(ended.is_ok(), "the h2c connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(900), "cut after {:?}", started.elapsed());
    drop(response);

    cut_as_the_clients_failure(&sluice, cut_before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_connection_without_a_stream_is_closed_at_the_header_timeout() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { header_read_timeout: 1s, idle_timeout: 30s }\n").await;
    let addr = sluice.addr;
    let waited = tokio::task::spawn_blocking(move || {
        // The preface and an empty SETTINGS frame, then nothing.
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        assert!(read.is_ok() || read.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "closed after {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_h2c_head_gets_431_as_over_http1() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { max_header_bytes: 16384 }\n").await;
    let addr = sluice.addr;
    // A real HTTP/2 client (Python's h2, installed by .ci/test), which sends what it is told.
    let status = move |size: usize| {
        let out = std::process::Command::new("python3")
            .args(["tests/h2/oversized_head.py", "127.0.0.1", &addr.port().to_string(), &size.to_string()])
            .output()
            .expect("python3 with h2 (.ci/test installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (big, small) = tokio::task::spawn_blocking(move || (status(40_000), status(100))).await.unwrap();
    assert_eq!(big, "431");
    assert_eq!(small, "200");
    assert!(upstream.seen().iter().all(|s| s.headers.get("x-big").is_none_or(|v| v.len() == 100)));
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_connections_end_at_max_connection_age_between_requests() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { max_connection_age: 1s }\n").await;
    let addr = sluice.addr;

    // HTTP/1.1, a request every 100 ms: every answer is whole, and the first one past the
    // age says `Connection: close`.
    let mut connection = Connection::open(addr).await;
    let opened = std::time::Instant::now();
    let mut answered = 0;
    while connection.send(http::Method::GET, "/a").await.0 == 200 {
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if opened.elapsed() > Duration::from_secs(5) {
            panic!("the connection outlived its age");
        }
        if connection.closed() {
            break;
        }
    }
    assert!(opened.elapsed() >= Duration::from_millis(900), "closed after {:?}", opened.elapsed());
    assert!(answered >= 8, "{answered} answers");

    // h2c, a request every 100 ms: GOAWAY once the age is reached; every request answered.
    let (mut sender, conn) = h2_connection(addr).await;
    let opened = std::time::Instant::now();
    while !conn.is_finished() && opened.elapsed() < Duration::from_secs(5) {
        if sender.ready().await.is_err() {
            break;
        }
        let request = http::Request::get(sluice.url("/b")).body(empty()).unwrap();
        match sender.send_request(request).await {
            Ok(response) => assert_eq!(response.status(), 200),
            Err(e) => assert!(e.is_canceled() || e.is_closed(), "a request failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = opened.elapsed();
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(4),
        "the h2c connection ended after {ended:?}"
    );
}
