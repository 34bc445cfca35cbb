//! The circuit breaker (`circuit_breaker: {max_requests, max_connections}`): past a cap,
//! a request gets 503 at once with `Retry-After` (origin `upstream_overflow`, counted
//! against availability), and the service never sees more than the cap, counted by the
//! service itself. And the service's name, resolved on `dns_refresh` rather than on each
//! connection (the pool's part, a name that resolves elsewhere, is src/proxy/pool/tests.rs).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A service that holds each request `hold` before answering it, and counts what it is
/// given at once: requests in flight and connections open, now and at their peak.
struct Held {
    addr: std::net::SocketAddr,
    requests: Arc<Peak>,
    connections: Arc<Peak>,
}

#[derive(Default)]
struct Peak {
    now: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

impl Peak {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        self.total.fetch_add(1, SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(SeqCst)
    }

    fn total(&self) -> usize {
        self.total.load(SeqCst)
    }
}

impl Held {
    async fn start(hold: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, connections) = (Arc::new(Peak::default()), Arc::new(Peak::default()));
        let (in_flight, open) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (in_flight, open) = (in_flight.clone(), open.clone());
                open.enter();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            in_flight.enter();
                            tokio::time::sleep(hold).await;
                            in_flight.leave();
                            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                                open.leave();
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    open.leave();
                });
            }
        });
        Self { addr, requests, connections }
    }
}

/// `n` GETs of `path` at once, each on a connection of its own: the status, `Retry-After`
/// and time of each.
async fn at_once(sluice: &Sluice, path: &str, n: usize) -> Vec<(u16, Option<String>, Duration)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = sluice.url(path);
            tokio::spawn(async move {
                let start = Instant::now();
                let (response, _) = get(&client(), &url).await;
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (response.status().as_u16(), retry_after, start.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

const TOKEN: &str = "breaker-viewer-token";
/// Right after the admin section that `config_text` opens.
const VIEWER: &str = "  tokens:\n    - { name: ops, role: viewer, token: breaker-viewer-token }\n";
const ROUTES: &str = "routes:\n  - name: api\n    match: { path: \"/*\" }\n    sla: { availability: 99.9% }\n";

fn refused(metrics: &Metrics, limit: &str) -> f64 {
    metrics.value("sluice_upstream_overflow_total", &format!("limit=\"{limit}\""))
}

#[tokio::test(flavor = "multi_thread")]
async fn max_requests_caps_what_the_service_has_in_flight_and_refuses_the_rest_at_once() {
    let service = Held::start(Duration::from_millis(400)).await;
    let sluice =
        Sluice::start_before(service.addr, &format!("{VIEWER}circuit_breaker: {{ max_requests: 5 }}\n{ROUTES}")).await;
    let answers = at_once(&sluice, "/x", 30).await;

    let ok = answers.iter().filter(|(status, ..)| *status == 200).count();
    let overflow: Vec<_> = answers.iter().filter(|(status, ..)| *status == 503).collect();
    assert_eq!(ok + overflow.len(), 30, "{answers:?}");
    assert!(service.requests.peak() <= 5, "the service had {} in flight", service.requests.peak());
    assert_eq!(service.requests.total(), ok, "every request the service saw was answered 200");
    assert!(ok >= 5 && overflow.len() >= 20, "{ok} answered, {} refused", overflow.len());
    for (_, retry_after, took) in &overflow {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(*took < Duration::from_millis(300), "a refusal took {took:?}: it waited for the service");
    }

    let metrics = sluice.scrape().await;
    assert_eq!(refused(&metrics, "max_requests"), overflow.len() as f64);
    assert_eq!(refused(&metrics, "max_connections"), 0.0);
    let by_origin = "code_class=\"5xx\",origin=\"upstream_overflow\",route=\"api\"";
    assert_eq!(metrics.value("sluice_requests_total", by_origin), overflow.len() as f64);
    let status = admin_status(&sluice).await;
    let breaker = &status["upstream"]["circuit_breaker"];
    assert_eq!(breaker["max_requests"], 5);
    assert_eq!(breaker["requests"], 0, "every place was given back: {breaker}");
    assert_eq!(breaker["refused"]["max_requests"], overflow.len());
    // Counted against availability: the service could not take them.
    let mut availability = serde_json::Value::Null;
    eventually("the SLI's counts in its window", Duration::from_secs(5), async || {
        availability = admin_status(&sluice).await["routes"][0]["sla"]["availability"].clone();
        availability["total"] == 30
    })
    .await;
    assert_eq!(availability["good"], ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_caps_the_connections_the_service_has_open() {
    let service = Held::start(Duration::from_millis(300)).await;
    let sluice =
        Sluice::start_before(service.addr, &format!("{VIEWER}circuit_breaker: {{ max_connections: 3 }}\n{ROUTES}"))
            .await;
    let answers = at_once(&sluice, "/x", 20).await;
    let ok = answers.iter().filter(|(status, ..)| *status == 200).count();
    let overflow = answers.iter().filter(|(status, retry_after, _)| *status == 503 && retry_after.is_some()).count();
    assert_eq!(ok + overflow, 20, "{answers:?}");
    assert!(service.connections.peak() <= 3, "the service had {} connections open", service.connections.peak());
    assert!(ok >= 3 && overflow >= 10, "{ok} answered, {overflow} refused");
    assert_eq!(refused(&sluice.scrape().await, "max_connections"), overflow as f64);

    // What follows, one request after another, is served under the cap, whichever worker
    // it lands on: a worker with no idle connection of its own closes another's to make
    // room. (The service may see that close a moment after the new connection, so its
    // count of open ones is not read here: sluice's own is.)
    for _ in 0..10 {
        assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 200);
    }
    assert_eq!(refused(&sluice.scrape().await, "max_connections"), overflow as f64, "none refused since");
    let status = admin_status(&sluice).await;
    let connections = status["upstream"]["circuit_breaker"]["connections"].as_u64().unwrap();
    assert!((1..=3).contains(&connections), "{} connections open to the service", connections);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_name_upstream_is_resolved_by_the_resolver_and_shown() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("dns");
    let path = dir.join("sluice.yaml");
    let text = config_text(upstream.addr, &format!("{VIEWER}dns_refresh: 1s\n{ROUTES}")).replace(
        &format!("upstream: http://{}", upstream.addr),
        &format!("upstream: http://localhost:{}", upstream.addr.port()),
    );
    assert!(text.contains("http://localhost:"));
    std::fs::write(&path, text).unwrap();
    let sluice = Sluice::start_with_file(path).await;
    assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 200);
    let mut addresses = serde_json::Value::Null;
    eventually("the resolver to publish localhost's addresses", Duration::from_secs(5), async || {
        addresses = admin_status(&sluice).await["upstream"]["addresses"].clone();
        addresses.is_array()
    })
    .await;
    let shown: Vec<&str> = addresses.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(shown.contains(&upstream.addr.to_string().as_str()), "localhost resolved to {shown:?}");
    for _ in 0..5 {
        assert_eq!(get(&client(), &sluice.url("/x")).await.0.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_and_dns_settings_are_checked() {
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    for (setting, path) in [
        ("circuit_breaker: {}", "circuit_breaker"),
        ("circuit_breaker: { max_requests: 0 }", "circuit_breaker.max_requests"),
        ("circuit_breaker: { max_connections: -1 }", "circuit_breaker.max_connections"),
        ("circuit_breaker: { max_pending: 9 }", "circuit_breaker.max_pending"),
        ("dns_refresh: 0s", "dns_refresh"),
        ("dns_refresh: 2h", "dns_refresh"),
        ("dns_refresh: soon", "dns_refresh"),
    ] {
        let text = config_text(upstream, &format!("{setting}\n{ROUTES}"));
        let errors = sluice::config::parse(&text).unwrap_err();
        assert!(errors.errors.iter().any(|e| e.path == path), "{setting}: {errors}");
    }
}

async fn admin_status(sluice: &Sluice) -> serde_json::Value {
    sluice.admin_json("/v1/status", TOKEN).await
}
