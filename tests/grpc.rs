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
    let out = Command::new("python3").args(["tests/grpc/echo.py", "call", &target.to_string()]).output().unwrap();
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
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-trailer", "kept".parse().unwrap());
                    let frames = [
                        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(said))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder().header("x-seen", "1").body(body).unwrap(),
                    )
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
        let (response, body) = get(&h2_client(), &sluice.url("/x")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(String::from_utf8_lossy(&body), format!("{h2c_goes} true"), "{protocol}: an h2c client");
    }
    let text = config_text(service, &format!("upstream_protocol: http3\n{ROUTES}"));
    let errors = sluice::config::parse(&text).unwrap_err();
    assert!(errors.errors.iter().any(|e| e.path == "upstream_protocol"), "{errors}");
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
