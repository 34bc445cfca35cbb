//! The admin listener's guards, on routes made to misbehave: a panic, a slow call, calls
//! held past the concurrency limit, and the event stream past the request timeout.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::routing::{get, put};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::*;
use crate::metrics::Metrics;

const TOKEN: &str = "viewer-token-1234";

fn control(name: &str) -> Arc<Control> {
    let dir = std::env::temp_dir().join(format!("sluice-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin:\n  tokens:\n    - {{ name: v, role: viewer, token: {TOKEN} }}\n"
    );
    let live = Live::new(crate::config::parse(&text).unwrap(), Arc::new(Metrics::new()));
    let audit = Audit::open(&dir, prometheus::IntCounter::new("suppressed", "test").unwrap()).unwrap();
    let overlay = Overlay::open(&dir).unwrap();
    Control::new(live, Events::new(), Some(Arc::new(overlay)), Some(Arc::new(audit)))
}

async fn call(router: &Router, method: Method, path: &str) -> (StatusCode, HeaderMap, String) {
    let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn last_audited(control: &Control) -> Value {
    control.audit.as_ref().unwrap().tail(1).unwrap().pop().expect("an audit record")
}

#[tokio::test]
async fn a_call_that_panics_is_an_audited_500_and_the_listener_goes_on() {
    let control = control("panic");
    async fn boom() -> &'static str {
        panic!("boom")
    }
    let routes = Router::new().route("/v1/boom", get(boom));
    let router = guarded(routes, control.clone());

    let (status, headers, body) = call(&router, Method::GET, "/v1/boom").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(body.contains("the call failed inside sluice"), "{body}");
    let record = last_audited(&control);
    assert_eq!((record["action"].as_str(), record["status"].as_u64()), (Some("GET /v1/boom"), Some(500)), "{record}");

    let (status, _, _) = call(&router, Method::GET, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_call_slower_than_the_request_timeout_gets_an_audited_408() {
    let control = control("slow");
    let slow = || async {
        tokio::time::sleep(REQUEST_TIMEOUT * 3).await;
        "too late"
    };
    let router = guarded(Router::new().route("/v1/slow", put(slow)), control.clone());

    let started = tokio::time::Instant::now();
    let (status, headers, _) = call(&router, Method::PUT, "/v1/slow").await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
    let record = last_audited(&control);
    assert_eq!((record["action"].as_str(), record["status"].as_u64()), (Some("PUT /v1/slow"), Some(408)), "{record}");
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_flows_past_the_request_timeout() {
    let control = control("events");
    let router = router(control.clone());
    let request = Request::get("/v1/events").header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    let response = router.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    tokio::time::advance(REQUEST_TIMEOUT * 3).await;
    control.events.send(Event::new("late_event", json!({})));
    let mut seen = String::new();
    while !seen.contains("late_event") {
        let frame = body.frame().await.expect("the stream is still open").unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
}

/// What `/v1/hold` lets through once released, and how many calls are inside it.
struct Held {
    gate: Semaphore,
    inside: AtomicUsize,
}

#[tokio::test]
async fn calls_past_the_concurrency_limit_are_shed_at_once() {
    let control = control("shed");
    let held = Arc::new(Held { gate: Semaphore::new(0), inside: AtomicUsize::new(0) });
    let hold = {
        let held = held.clone();
        move || async move {
            held.inside.fetch_add(1, Ordering::SeqCst);
            let _pass = held.gate.acquire().await.unwrap();
            "released\n"
        }
    };
    let router = guarded(Router::new().route("/v1/hold", get(hold)), control.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve::serve(listener, router, control.live.clone(), "admin"));

    let ask = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let holders: Vec<_> = (0..serve::CONCURRENCY).map(|_| tokio::spawn(ask("/v1/hold"))).collect();
    while held.inside.load(Ordering::SeqCst) < serve::CONCURRENCY {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let open = control.live.metrics.connections.with_label_values(&["admin"]);
    assert_eq!(open.get(), serve::CONCURRENCY as i64, "sluice_connections{{listener=\"admin\"}}");

    let started = std::time::Instant::now();
    let shed = ask("/healthz").await;
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(shed.contains("retry-after: 1"), "{shed}");
    assert!(started.elapsed() < Duration::from_secs(1), "shed after {:?}", started.elapsed());

    held.gate.add_permits(serve::CONCURRENCY);
    for holder in holders {
        assert!(holder.await.unwrap().starts_with("HTTP/1.1 200"));
    }
    assert!(ask("/healthz").await.starts_with("HTTP/1.1 200"));
    while open.get() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.abort();
}
