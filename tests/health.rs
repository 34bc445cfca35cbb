//! The service's health: active checks (`health_check`) and failed requests in a row
//! (`outlier_detection`) hold it unhealthy, and then `/readyz` answers 503, requests get
//! 503 at once with `Retry-After` (origin `upstream_unhealthy`), the gauge and an event say
//! so; until the checks pass again, or the ejection's time is up.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// The scripted service's `/healthz` answers 503 while this is set.
static DOWN: AtomicBool = AtomicBool::new(false);

fn service(path: &str) -> (&'static [u8], bool) {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const SICK: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
    const FAIL: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
    match path {
        "/healthz" if DOWN.load(Ordering::SeqCst) => (SICK, false),
        "/fail" => (FAIL, false),
        _ => (OK, false),
    }
}

async fn status(sluice: &Sluice, path: &str) -> (u16, Option<String>, Duration) {
    let sent = Instant::now();
    let (response, _) = get(&client(), &sluice.url(path)).await;
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), retry_after, sent.elapsed())
}

async fn ready(sluice: &Sluice) -> u16 {
    get(&client(), &sluice.admin_url("/readyz")).await.0.status().as_u16()
}

fn events(sluice: &Sluice, kind: &str) -> usize {
    sluice.running().events().recent().iter().filter(|e| e.kind() == kind).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_health_check_turns_readyz_and_requests_to_503_and_back() {
    let service = Scripted::start(service).await;
    let check =
        "health_check: { path: /healthz, interval: 100ms, timeout: 50ms, unhealthy_after: 3, healthy_after: 2 }\n";
    let sluice = Sluice::start_before(service.addr, check).await;
    eventually("a first check", Duration::from_secs(2), async || {
        service.request_lines.lock().unwrap().iter().any(|l| l.starts_with("GET /healthz"))
    })
    .await;
    assert_eq!(ready(&sluice).await, 200);
    assert_eq!(status(&sluice, "/x").await.0, 200);

    DOWN.store(true, Ordering::SeqCst);
    let down = Instant::now();
    eventually("/readyz to turn 503", Duration::from_secs(2), async || ready(&sluice).await == 503).await;
    let took = down.elapsed();
    // Three failed checks 100 ms apart: the third comes 200-300 ms after the service fell.
    assert!(took < Duration::from_millis(450), "unhealthy after {took:?}");
    let mut times = Vec::new();
    for _ in 0..20 {
        let (code, retry_after, took) = status(&sluice, "/x").await;
        assert_eq!((code, retry_after.as_deref()), (503, Some("1")));
        times.push(took);
    }
    times.sort();
    assert!(times[18] < Duration::from_millis(5), "refused in {times:?}");
    let metrics = sluice.scrape().await;
    assert_eq!(metrics.value("sluice_upstream_healthy", ""), 0.0);
    assert_eq!(
        metrics.value("sluice_requests_total", "code_class=\"5xx\",origin=\"upstream_unhealthy\",route=\"unmatched\""),
        20.0
    );
    eventually("the event", Duration::from_secs(1), async || events(&sluice, "upstream_unhealthy") == 1).await;

    DOWN.store(false, Ordering::SeqCst);
    eventually("/readyz to turn 200", Duration::from_secs(2), async || ready(&sluice).await == 200).await;
    assert_eq!(status(&sluice, "/x").await.0, 200);
    eventually("the event", Duration::from_secs(1), async || events(&sluice, "upstream_healthy") == 1).await;
    assert_eq!(sluice.scrape().await.value("sluice_upstream_healthy", ""), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_service_turns_readyz_to_503_within_unhealthy_after_intervals() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let check = "health_check: { path: /healthz, interval: 200ms, timeout: 100ms, unhealthy_after: 2 }\n";
    let started = Instant::now();
    let sluice = Sluice::start_before(dead, check).await;
    eventually("/readyz to turn 503", Duration::from_secs(2), async || ready(&sluice).await == 503).await;
    // The first check at start, the second 200 ms later.
    assert!(started.elapsed() < Duration::from_millis(400 + 150), "{:?}", started.elapsed());
    assert_eq!(status(&sluice, "/x").await.0, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_requests_in_a_row_eject_the_service_until_the_ejection_time_is_up() {
    let service = Scripted::start(service).await;
    let outlier = "outlier_detection: { consecutive_failures: 3, ejection_time: 1s }\n";
    let sluice = Sluice::start_before(service.addr, outlier).await;
    // Two failures, a success: the count starts again.
    for path in ["/fail", "/fail", "/x", "/fail", "/fail"] {
        assert_ne!(status(&sluice, path).await.0, 503);
    }
    assert_eq!(ready(&sluice).await, 200);
    assert_eq!(status(&sluice, "/fail").await.0, 500, "the third failure in a row is answered as it came");
    let ejected = Instant::now();
    let (code, retry_after, _) = status(&sluice, "/x").await;
    assert_eq!((code, retry_after.as_deref()), (503, Some("1")));
    assert_eq!(ready(&sluice).await, 503);
    let seen = service.request_lines.lock().unwrap().len();
    assert_eq!(status(&sluice, "/x").await.0, 503);
    assert_eq!(service.request_lines.lock().unwrap().len(), seen, "an ejected service got a request");
    eventually("the ejection's end", Duration::from_secs(3), async || ready(&sluice).await == 200).await;
    let took = ejected.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(1600), "ejected for {took:?}");
    assert_eq!(status(&sluice, "/x").await.0, 200);
    assert_eq!(events(&sluice, "upstream_unhealthy"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_settings_are_checked() {
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    for (bad, path) in [
        ("health_check: { path: healthz }\n", "health_check.path"),
        ("health_check: { path: /h, interval: 1s, timeout: 2s }\n", "health_check.timeout"),
        ("health_check: { path: /h, unhealthy_after: 0 }\n", "health_check.unhealthy_after"),
        ("outlier_detection: { consecutive_failures: 0 }\n", "outlier_detection.consecutive_failures"),
        ("outlier_detection: { ejection_time: 0s }\n", "outlier_detection.ejection_time"),
    ] {
        let errors = sluice::config::parse(&config_text(upstream, bad)).unwrap_err();
        assert!(errors.errors.iter().any(|e| e.path == path), "{bad}: {errors}");
    }
}
