//! gRPC through sluice (`upstream_protocol`): a real gRPC server and client (Python
//! grpcio, from PyPI, installed by .ci/test; tests/grpc/echo.py) with sluice between them,
//! h2c on both sides: unary calls and all three kinds of streaming, trailers intact, and
//! the calls counted on their routes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// The gRPC service of tests/grpc/echo.py, on a port of its own.
struct Echo {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Echo {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .args(["tests/grpc/echo.py", "serve"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio (.ci/test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("echo.py said {line:?}: is grpcio installed?"));
        Self { child, addr: ([127, 0, 0, 1], port).into() }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls each of the service's methods through `target`: what the client saw.
fn call(target: std::net::SocketAddr) -> serde_json::Value {
    client_run("call", target)
}

/// tests/grpc/echo.py's client, in `mode`, against `target`: its JSON line.
fn client_run(mode: &str, target: std::net::SocketAddr) -> serde_json::Value {
    let out = Command::new("python3").args(["tests/grpc/echo.py", mode, &target.to_string()]).output().unwrap();
    assert!(out.status.success(), "the gRPC client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const ROUTES: &str = "routes:\n  - name: echo\n    match: { path: /echo.Echo/* }\n    sla: { availability: 99% }\n";

fn check_calls(seen: &serde_json::Value) {
    let kept = serde_json::json!({ "x-trailer": "kept" });
    assert_eq!(seen["unary"]["answer"], "hello", "{seen}");
    assert_eq!(seen["unary"]["code"], "OK");
    assert_eq!(seen["unary"]["trailers"], kept, "the trailers came through");
    assert_eq!(seen["failed"]["code"], "UNAVAILABLE", "{seen}");
    assert_eq!(seen["failed"]["details"], "the service failed it");
    // A call failed at once is answered "trailers-only" (one HEADERS frame), whose fields
    // grpcio shows as trailers, with the Date that sluice's HTTP/2 server adds as any
    // proxy may (RFC 9110 §6.6.1).
    let mut trailers_only = seen["failed"]["trailers"].clone();
    trailers_only.as_object_mut().unwrap().remove("date");
    assert_eq!(trailers_only, kept);
    let parts: Vec<String> = (0..5).map(|i| format!("part {i}")).collect();
    assert_eq!(seen["server_stream"]["answers"], serde_json::json!(parts));
    assert_eq!(seen["server_stream"]["trailers"], kept);
    assert_eq!(seen["client_stream"]["answer"], "a+b+c");
    assert_eq!(seen["bidi"]["answers"], serde_json::json!(["echo x", "echo y"]));
    assert_eq!(seen["bidi"]["trailers"], kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_of_every_kind_go_through_with_their_trailers() {
    let echo = Echo::start();
    assert_eq!(call(echo.addr)["unary"]["answer"], "hello", "the service answers on its own");
    let sluice = Sluice::start_before(echo.addr, &format!("upstream_protocol: http2\n{ROUTES}")).await;
    let seen = tokio::task::spawn_blocking({
        let addr = sluice.running().proxy_addr();
        move || call(addr)
    })
    .await
    .unwrap();
    check_calls(&seen);
    let metrics = sluice.scrape().await;
    let answered = metrics.value("sluice_requests_total", "code_class=\"2xx\",origin=\"upstream\",route=\"echo\"");
    assert_eq!(answered, 5.0, "five calls, each answered 200 by the service");
    // The calls by status: four OK, one UNAVAILABLE (in a trailers-only head), and that one
    // fails the availability SLI though its HTTP status was 200.
    assert_eq!(metrics.value("sluice_grpc_responses_total", "grpc_code=\"OK\",route=\"echo\""), 4.0);
    assert_eq!(metrics.value("sluice_grpc_responses_total", "grpc_code=\"UNAVAILABLE\",route=\"echo\""), 1.0);
    let compliance = "route=\"echo\",sli=\"availability\"";
    eventually("the SLI's window", Duration::from_secs(5), async || {
        sluice.scrape().await.get("sluice_sla_compliance_ratio", compliance) == Some(0.8)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_failures_says_which_statuses_fail_availability() {
    let echo = Echo::start();
    let viewer = "  tokens:\n    - { name: ops, role: viewer, token: grpc-viewer-token }\n";
    let config = format!("{viewer}upstream_protocol: http2\ngrpc_failures: [NOT_FOUND, 15]\n{ROUTES}");
    let sluice = Sluice::start_before(echo.addr, &config).await;
    let addr = sluice.running().proxy_addr();
    tokio::task::spawn_blocking(move || call(addr)).await.unwrap();
    // Five calls in the window, all good: UNAVAILABLE is not among the failures now.
    let availability = async || {
        let status = sluice.admin_json("/v1/status", "grpc-viewer-token").await;
        let sli = &status["routes"][0]["sla"]["availability"];
        (sli["total"].as_u64(), sli["good"].as_u64())
    };
    eventually("the SLI's window", Duration::from_secs(5), async || availability().await == (Some(5), Some(5))).await;
    let unavailable = "grpc_code=\"UNAVAILABLE\",route=\"echo\"";
    assert_eq!(sluice.scrape().await.value("sluice_grpc_responses_total", unavailable), 1.0);
    let bad = config_text(echo.addr, "grpc_failures: [UNAVAILABLE, TEAPOT]\n");
    let errors = sluice::config::parse(&bad).unwrap_err();
    assert!(errors.errors.iter().any(|e| e.path == "grpc_failures[1]"), "{errors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn match_client_sends_h2c_clients_as_h2c() {
    let echo = Echo::start();
    let sluice = Sluice::start_before(echo.addr, &format!("upstream_protocol: match_client\n{ROUTES}")).await;
    let addr = sluice.running().proxy_addr();
    let seen = tokio::task::spawn_blocking(move || call(addr)).await.unwrap();
    check_calls(&seen);
}

/// A service that speaks HTTP/1.1 and h2c on one port and answers each request with the
/// version it came in, a field and, when its body is chunked or HTTP/2, a trailer.
async fn versions() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    serve_versions(false).await
}

/// [`versions`], speaking h2c only when `h2_only`, as a gRPC server does; the count of
/// connections it accepted.
async fn serve_versions(h2_only: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let said = format!("{:?} {}", req.version(), req.headers().get("x-forwarded-for").is_some());
                    // `/sized`: a body of the length its head says, no trailers.
                    let sized = req.uri().path() == "/sized";
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-trailer", "kept".parse().unwrap());
                    let mut response = http::Response::builder().header("x-seen", "1");
                    if sized {
                        response = response.header("content-length", said.len());
                    }
                    let mut frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(said)))];
                    if !sized {
                        frames.push(Ok(Frame::trailers(trailers)));
                    }
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if h2_only {
                    builder = builder.http2_only();
                }
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_protocol_setting_speaks_to_the_service_as_it_says() {
    let (service, _) = versions().await;
    for (protocol, http1_goes, h2c_goes) in
        [("http1", "HTTP/1.1", "HTTP/1.1"), ("http2", "HTTP/2.0", "HTTP/2.0"), ("match_client", "HTTP/1.1", "HTTP/2.0")]
    {
        let sluice = Sluice::start_before(service, &format!("upstream_protocol: {protocol}\n{ROUTES}")).await;
        let (response, body) = get(&client(), &sluice.url("/x")).await;
        assert_eq!(
            (response.status().as_u16(), response.headers()["x-seen"].to_str().unwrap()),
            (200, "1"),
            "{protocol}"
        );
        assert_eq!(String::from_utf8_lossy(&body), format!("{http1_goes} true"), "{protocol}: an HTTP/1.1 client");
        // The service's length frames the body for an HTTP/1.1 client, whichever protocol
        // brought it: not chunks.
        let (response, body) = get(&client(), &sluice.url("/sized")).await;
        assert_eq!(String::from_utf8_lossy(&body), format!("{http1_goes} true"), "{protocol}");
        let length = response.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(length, Some(body.len().to_string()), "{protocol}: {:?}", response.headers());
        assert!(response.headers().get("transfer-encoding").is_none(), "{protocol}: {:?}", response.headers());
        let (response, body) = get(&h2_client(), &sluice.url("/x")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(String::from_utf8_lossy(&body), format!("{h2c_goes} true"), "{protocol}: an h2c client");
    }
    let text = config_text(service, &format!("upstream_protocol: http3\n{ROUTES}"));
    let errors = sluice::config::parse(&text).unwrap_err();
    assert!(errors.errors.iter().any(|e| e.path == "upstream_protocol"), "{errors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_services_answer_carries_the_quotas_fields_beside_its_own() {
    let (service, _) = versions().await;
    let routes = "routes:\n  - name: all\n    match: { path: /* }\n    quota: { rate: 100, per: 1s, burst: 100, advertise: always }\n";
    let sluice = Sluice::start_before(service, &format!("upstream_protocol: http2\n{routes}")).await;
    for (client, name) in [(client(), "HTTP/1.1"), (h2_client(), "h2c")] {
        let (response, body) = get(&client, &sluice.url("/x")).await;
        assert_eq!(String::from_utf8_lossy(&body), "HTTP/2.0 true", "{name}");
        let headers = response.headers();
        assert_eq!(headers["x-seen"], "1", "{name}: {headers:?}");
        assert!(headers["ratelimit"].to_str().unwrap().contains(";r="), "{name}: {headers:?}");
        assert!(headers.contains_key("ratelimit-policy"), "{name}: {headers:?}");
        assert_eq!(headers.get_all("date").iter().count(), 1, "{name}: {headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_to_the_service_multiplexes_one_connection_a_worker() {
    let (service, connections) = versions().await;
    let sluice = Sluice::start_before(service, &format!("upstream_protocol: http2\n{ROUTES}")).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let url = sluice.url("/x");
            tokio::spawn(async move { get(&client(), &url).await.0.status().as_u16() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let made = connections.load(Ordering::SeqCst);
    assert!((1..=2).contains(&made), "{made} connections to the service for 50 requests on 2 workers");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_check_speaks_h2c_to_an_http2_service() {
    let (service, connections) = serve_versions(true).await;
    let checked = "health_check: { path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_after: 1 }\n";
    let sluice = Sluice::start_before(service, &format!("upstream_protocol: http2\n{checked}{ROUTES}")).await;
    eventually("three checks", Duration::from_secs(5), async || connections.load(Ordering::SeqCst) >= 3).await;
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_upstream_healthy", ""), 1.0, "an h2c check passed where HTTP/1.1 would fail");
    assert_eq!(get(&client(), &sluice.admin_url("/readyz")).await.0.status(), 200);
    assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 200);
}

const LIMITED: &str = "routes:\n  - name: limited\n    match: { path: /echo.Echo/Limited }\n    quota: { rate: 1, per: 1h, burst: 1 }\n  \
     - name: echo\n    match: { path: /echo.Echo/* }\n    timeout: 10s\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_refusal_is_resource_exhausted_with_its_retry_after() {
    let echo = Echo::start();
    let sluice = Sluice::start_before(echo.addr, &format!("upstream_protocol: http2\n{LIMITED}")).await;
    let addr = sluice.running().proxy_addr();
    let seen = tokio::task::spawn_blocking(move || client_run("refusals", addr)).await.unwrap();
    assert_eq!(seen["first"], "one", "{seen}");
    let refused = &seen["refused"];
    assert_eq!(refused["code"], "RESOURCE_EXHAUSTED", "a quota's refusal, as the gRPC client reads it: {seen}");
    assert_eq!(refused["details"], "rate quota of limited exceeded");
    let retry_after: u64 = refused["trailers"]["retry-after"].as_str().unwrap().parse().unwrap();
    assert!(retry_after > 3000, "the quota refills in an hour: Retry-After {retry_after}");
    assert_eq!(refused["trailers"]["grpc-retry-pushback-ms"], (retry_after * 1000).to_string());
    assert!(refused["trailers"]["ratelimit"].as_str().unwrap().contains("\"limited\";r=0"), "{refused}");
    assert_eq!(seen["late"]["code"], "DEADLINE_EXCEEDED", "{seen}");
    assert_eq!(seen["unary"]["answer"], "hi");
    let metrics = sluice.scrape().await;
    let refusals = "code_class=\"4xx\",origin=\"quota\",route=\"limited\"";
    assert_eq!(metrics.value("sluice_requests_total", refusals), 1.0, "counted as the refusal it stands for");
    let exhausted = "grpc_code=\"RESOURCE_EXHAUSTED\",route=\"limited\"";
    assert_eq!(metrics.value("sluice_grpc_responses_total", exhausted), 1.0, "sluice's own status, counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_cannot_be_reached_is_unavailable_to_a_grpc_client() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed at once
    let sluice = Sluice::start_before(dead, &format!("upstream_protocol: http2\n{ROUTES}")).await;
    let addr = sluice.running().proxy_addr();
    let seen = tokio::task::spawn_blocking(move || client_run("refusals", addr)).await.unwrap();
    assert_eq!(seen["unary"]["code"], "UNAVAILABLE", "{seen}");
    assert_eq!(seen["unary"]["details"], "the service could not be reached");
}

/// A gRPC call as bytes: its 5-byte frame header (not compressed, the length) and message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_timeout_is_the_deadline_when_it_is_the_earlier() {
    let echo = Echo::start();
    let sluice = Sluice::start_before(echo.addr, &format!("upstream_protocol: http2\n{LIMITED}")).await;
    // A client that sends grpc-timeout and waits on its own for as long as it takes.
    let request = http::Request::post(sluice.url("/echo.Echo/Slow"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(full(grpc_frame(b"late")))
        .unwrap();
    let started = std::time::Instant::now();
    let (response, _) = send(&h2_client(), request).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(800), "answered after {took:?}");
    // Counted when the stream ends, which may be just after the client has its answer.
    let timeouts = "code_class=\"5xx\",origin=\"timeout\",route=\"echo\"";
    eventually("counted as sluice's timeout", Duration::from_secs(2), async || {
        sluice.scrape().await.value("sluice_requests_total", timeouts) == 1.0
    })
    .await;
    // Without grpc-timeout, the route's 10 s: the service's answer after 1 s comes through.
    let request = http::Request::post(sluice.url("/echo.Echo/Slow"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(grpc_frame(b"in time")))
        .unwrap();
    let (response, body) = send(&h2_client(), request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(&body[5..], b"in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_call_holds_its_concurrency_slot_until_it_ends() {
    use http_body_util::BodyExt;
    let echo = Echo::start();
    let routes = "routes:\n  - name: bidi\n    match: { path: /echo.Echo/Bidi }\n    concurrency: { max: 1 }\n";
    let sluice = Sluice::start_before(echo.addr, &format!("upstream_protocol: http2\n{routes}")).await;
    let call = |body: Body| {
        http::Request::post(sluice.url("/echo.Echo/Bidi"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap()
    };
    // A bidirectional call, left open: one message each way so far.
    let (mut tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>::new(4);
    let client = h2_client();
    let open = tokio::spawn({
        let client = client.clone();
        let request = call(body.boxed());
        async move { client.request(request).await.unwrap() }
    });
    tx.send_data(grpc_frame(b"x").into()).await.unwrap();
    let response = open.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut answer = response.into_body();
    let first = answer.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[5..], b"echo x", "the first answer streams back before the call ends");
    // While it is open, a second call is over the route's concurrency.
    let (second, _) = send(&h2_client(), call(full(grpc_frame(b"y")))).await;
    assert_eq!(second.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED while the stream holds the slot");
    // The first call ends (its request stream, then its answer with trailers): the slot is free.
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = answer.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    eventually("the slot to be given back", Duration::from_secs(2), async || {
        let (third, body) = send(&h2_client(), call(full(grpc_frame(b"z")))).await;
        third.headers().get("grpc-status").is_none() && body.ends_with(b"echo z")
    })
    .await;
}

/// An h2c-only service on `listener` until the task is aborted; its connections end with
/// it (each runs in `connections`, aborted when dropped).
async fn h2_service(listener: tokio::net::TcpListener) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        connections.spawn(async move {
            let service = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    "ok",
                ))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_restarts_gets_a_new_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tokio::spawn(h2_service(listener));
    let sluice = Sluice::start_before(addr, &format!("upstream_protocol: http2\n{ROUTES}")).await;
    for _ in 0..3 {
        assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 200);
    }
    // The service goes away with its connections, and comes back on the same port.
    service.abort();
    let _ = service.await;
    assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 502, "nothing listens");
    let service = tokio::spawn(h2_service(tokio::net::TcpListener::bind(addr).await.unwrap()));
    for _ in 0..5 {
        assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 200, "a new connection to the service");
    }
    service.abort();
}
