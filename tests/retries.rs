//! A route's `retries`: a try that met a reset, a connect error or a status `on` names is
//! tried again, when that is safe, within `attempts`, each try within `per_try_timeout`
//! and all within the route's `timeout`, and never past the retry budget: counted by the
//! scripted service itself.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request};
use support::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
/// No answer at all, the connection closed: a reset before a head, to sluice.
const RESET: (&[u8], bool) = (b"", true);
/// No answer, the connection left open: the service hangs.
const HANG: (&[u8], bool) = (b"", false);

static FIRST_RESET: AtomicUsize = AtomicUsize::new(0);
static FIRST_HANG: AtomicUsize = AtomicUsize::new(0);
static FLAKY: AtomicUsize = AtomicUsize::new(0);

fn service(path: &str) -> (&'static [u8], bool) {
    match path {
        "/reset-first" if FIRST_RESET.fetch_add(1, Ordering::SeqCst) == 0 => RESET,
        "/reset" => RESET,
        "/hang-first" if FIRST_HANG.fetch_add(1, Ordering::SeqCst) == 0 => HANG,
        "/hang" => HANG,
        // Every other request is a 503.
        "/flaky" if FLAKY.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) => (BUSY, false),
        _ => (OK, false),
    }
}

fn route(name: &str, path: &str, timeout: &str, retries: &str) -> String {
    format!("  - name: {name}\n    match: {{ path: {path} }}\n    timeout: {timeout}\n    retries: {retries}\n")
}

fn lines_for(service: &Scripted, path: &str) -> usize {
    service.request_lines.lock().unwrap().iter().filter(|l| l.split(' ').nth(1) == Some(path)).count()
}

fn retries(metrics: &Metrics, route: &str, result: &str) -> f64 {
    metrics.value("sluice_upstream_retries_total", &format!("result=\"{result}\",route=\"{route}\""))
}

async fn post(sluice: &Sluice, path: &str) -> u16 {
    let request = Request::builder()
        .method(Method::POST)
        .uri(sluice.url(path))
        .header("content-type", "text/plain")
        .body(full("a claim"))
        .unwrap();
    send(&client(), request).await.0.status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_is_retried_for_a_get_but_a_post_whose_body_went_is_not() {
    let service = Scripted::start(service).await;
    let on = "{ attempts: 2, on: [connect_error, reset] }";
    let routes =
        format!("routes:\n{}{}", route("first", "/reset-first", "2s", on), route("always", "/reset", "2s", on));
    let sluice = Sluice::start_before(service.addr, &routes).await;

    let (response, body) = get(&client(), &sluice.url("/reset-first")).await;
    assert_eq!((response.status().as_u16(), &body[..]), (200, &b"ok"[..]));
    assert_eq!(lines_for(&service, "/reset-first"), 2, "the reset try and its retry");

    assert_eq!(post(&sluice, "/reset").await, 502);
    assert_eq!(lines_for(&service, "/reset"), 1, "a POST that went was sent again");
    // A GET that meets a reset every time: two attempts, then the 502. (Three requests
    // when its first try took a pooled connection: the pool sends a request that met a
    // connection closed while idle once more, on a new one, before it counts as a try.)
    assert_eq!(get(&client(), &sluice.url("/reset")).await.0.status(), 502);
    let tries = lines_for(&service, "/reset") - 1;
    assert!(tries == 2 || tries == 3, "{tries} requests for two attempts");

    let metrics = sluice.scrape().await;
    assert_eq!(retries(&metrics, "first", "retried"), 1.0);
    assert_eq!(retries(&metrics, "first", "succeeded"), 1.0);
    assert_eq!(retries(&metrics, "always", "unsafe"), 1.0);
    assert_eq!(retries(&metrics, "always", "retried"), 1.0);
    assert_eq!(retries(&metrics, "always", "attempts_exhausted"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_is_retried_on_a_connect_error_for_nothing_of_it_went() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let routes = format!("routes:\n{}", route("submit", "/submit", "2s", "{ attempts: 3, on: [connect_error] }"));
    let sluice = Sluice::start_before(dead, &routes).await;
    assert_eq!(post(&sluice, "/submit").await, 502);
    let metrics = sluice.scrape().await;
    assert_eq!(retries(&metrics, "submit", "retried"), 2.0);
    assert_eq!(retries(&metrics, "submit", "attempts_exhausted"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_try_is_bounded_by_per_try_timeout_and_all_of_them_by_the_route_timeout() {
    let service = Scripted::start(service).await;
    let on = "{ attempts: 3, on: [reset], per_try_timeout: 200ms }";
    let routes =
        format!("routes:\n{}{}", route("first", "/hang-first", "2s", on), route("always", "/hang", "500ms", on));
    let sluice = Sluice::start_before(service.addr, &routes).await;

    let sent = Instant::now();
    assert_eq!(get(&client(), &sluice.url("/hang-first")).await.0.status(), 200);
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(600), "answered in {took:?}");
    assert_eq!(lines_for(&service, "/hang-first"), 2);

    // Tries at 0 and about 200 ms, and a third cut short by the route's 500 ms (or none,
    // when its backoff would end past it): 504 by 500 ms, never later.
    let sent = Instant::now();
    assert_eq!(get(&client(), &sluice.url("/hang")).await.0.status(), 504);
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(700), "504 after {took:?}");
    assert!(lines_for(&service, "/hang") >= 2, "{} tries", lines_for(&service, "/hang"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_of_a_service_that_fails_half_the_time_stay_within_the_budget() {
    let service = Scripted::start(service).await;
    let routes = format!("routes:\n{}", route("flaky", "/flaky", "2s", "{ attempts: 3, on: [\"503\"], budget: 20% }"));
    let viewer = "  tokens:\n    - { name: ops, role: viewer, token: retries-viewer-token }\n";
    let sluice = Sluice::start_before(service.addr, &format!("{viewer}{routes}")).await;
    let requests = 2000;
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut load = Vec::new();
    for _ in 0..20 {
        let (client, url, answered) = (client(), sluice.url("/flaky"), answered.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..requests / 20 {
                let status = get(&client, &url).await.0.status().as_u16();
                assert!(status == 200 || status == 503, "{status}");
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for task in load {
        task.await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the budget's window is 10 s: the bound below needs the load within it"
    );
    assert_eq!(answered.load(Ordering::SeqCst), requests);
    // What the service saw beyond the requests: the retries. Without a budget, about every
    // 503 would be retried, and every other try is one: some 2,000.
    let retried = lines_for(&service, "/flaky") - requests;
    let bound = requests / 5 + 100; // 20 %, plus the floor: 10 a second over the 10 s window
    assert!(retried <= bound && retried >= requests / 5, "{retried} retries for {requests} requests (bound {bound})");
    let metrics = sluice.scrape().await;
    assert_eq!(retries(&metrics, "flaky", "retried"), retried as f64);
    assert!(retries(&metrics, "flaky", "budget_exhausted") > 0.0);
    // /v1/status shows the policy and the same counts.
    let status = sluice.admin_json("/v1/status", "retries-viewer-token").await;
    let shown = &status["routes"][0]["retries"];
    assert_eq!((shown["attempts"].as_u64(), shown["budget_ratio"].as_f64()), (Some(3), Some(0.2)), "{shown}");
    assert_eq!(shown["results"]["retried"], retried);
    assert_eq!(shown["results"]["budget_exhausted"].as_f64(), Some(retries(&metrics, "flaky", "budget_exhausted")));
    assert!(status["routes"][1]["retries"].is_null(), "route unmatched has no retries");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_settings_are_checked() {
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    for (retries, path) in [
        ("{ attempts: 0 }", "routes[0].retries.attempts"),
        ("{ attempts: 11 }", "routes[0].retries.attempts"),
        ("{ on: [reset, teapot] }", "routes[0].retries.on[1]"),
        ("{ on: [\"200\"] }", "routes[0].retries.on[0]"),
        ("{ per_try_timeout: 3s }", "routes[0].retries.per_try_timeout"),
        ("{ budget: 120% }", "routes[0].retries.budget"),
        ("{ budget: 20 }", "routes[0].retries.budget"),
        ("{ tries: 2 }", "routes[0].retries.tries"),
    ] {
        let text = config_text(upstream, &format!("routes:\n{}", route("r", "/r", "2s", retries)));
        let errors = sluice::config::parse(&text).unwrap_err();
        assert!(errors.errors.iter().any(|e| e.path == path), "{retries}: {errors}");
    }
}
