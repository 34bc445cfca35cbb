//! The dashboard, opened in Debian's headless Chromium (driven by playwright-core, installed
//! by `.ci/test`): it renders every route, goes live on the event stream, and shows a quota
//! pushed through the API without a reload. The screenshot stays in
//! `target/test-artifacts/dashboard.png`.

mod support;

use std::process::Command;

use http::Request;
use support::*;

const REST: &str = r#"  tokens:
    - { name: graf, role: viewer, token: dashboard-viewer-token }
    - { name: ops, role: operator, token: dashboard-operator-token }
routes:
  - name: submit-claim
    match: { method: POST, path: /claims/submit }
    quota: { rate: 5, per: 1s, burst: 5, key: header:x-consumer-id }
    sla: { latency: { threshold: 200ms, objective: 99% }, availability: 99.9% }
  - name: claims
    match: { path: "/claims/*" }
    sla: { availability: 99% }
"#;

/// One browser at a time: the first test times requests, which a second Chromium would slow.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_renders_the_routes_and_follows_a_quota_change() {
    let _browser = BROWSER.lock().await;
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let client = client();
    for (i, path) in ["/claims/submit"; 8].iter().chain(&["/claims/1?status=503", "/claims/2"]).enumerate() {
        let method = if path.starts_with("/claims/submit") { "POST" } else { "GET" };
        let req =
            Request::builder().method(method).uri(sluice.url(path)).header("x-consumer-id", format!("c{}", i % 2));
        send(&client, req.body(empty()).unwrap()).await;
    }
    // Requests without the key's header: the offenders list names them `(no key)`.
    for _ in 0..3 {
        send(&client, Request::post(sluice.url("/claims/submit")).body(empty()).unwrap()).await;
    }
    // `claims` answers in about 15 ms: its percentiles lie in the (10 ms, 25 ms] bucket.
    for i in 0..20 {
        get(&client, &sluice.url(&format!("/claims/{i}?delay=15"))).await;
    }
    sluice.running().tick();
    // An event from before the page opens: it must be listed, in words, when it does.
    let push = Request::put(sluice.admin_url("/v1/routes/claims/sla"))
        .header("authorization", "Bearer dashboard-operator-token")
        .body(full(r#"{"availability": "99.5%"}"#))
        .unwrap();
    assert_eq!(send(&client, push).await.0.status(), 200);

    let page = sluice.admin_url("");
    let (response, body) = get(&client, &format!("{page}/")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = String::from_utf8_lossy(&body);
    for outside in ["<script src", "<link", "url(", "@import", "<img", "<iframe"] {
        assert!(!html.contains(outside), "the page loads nothing from elsewhere: {outside}");
    }

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("tests/dashboard/check.mjs")
            .args([&page, "dashboard-viewer-token", "dashboard-operator-token"])
            .arg(&screenshot)
            .args(["submit-claim", "claims", "unmatched"])
            .output()
            .expect("node runs tests/dashboard/check.mjs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the dashboard check failed (chromium and playwright-core come from .ci/test):\n{stdout}\n{stderr}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(seen["before"].as_str().unwrap().contains("quota 5 per 1s"), "{seen}");
    assert!(seen["after"].as_str().unwrap().contains("quota 4242 per 60s, burst 77"), "{seen}");
    let events = seen["events"].as_array().unwrap();
    let before_open = |e: &&serde_json::Value| {
        e["kind"] == "config_applied" && e["text"].as_str().unwrap().contains("v2 from api by ops")
    };
    assert!(events.iter().any(|e| before_open(&e)), "the push made before the page opened is listed: {seen}");
    assert!(events.iter().any(|e| e["kind"] == "quota_updated"), "{seen}");
    for event in events {
        assert!(!event["text"].as_str().unwrap().contains('{'), "events are shown in words, not JSON: {event}");
    }
    let claims = &seen["percentiles"]["claims"];
    let [p50, p90, p99] = ["p50", "p90", "p99"].map(|q| claims[q].as_f64().unwrap_or_else(|| panic!("{q}: {seen}")));
    assert!(p50 <= p90 && p90 <= p99, "{seen}");
    assert!((0.010..=0.025).contains(&p50) && (0.010..=0.025).contains(&p99), "{seen}");
    assert!(seen["offenders"].as_str().unwrap().contains("(no key)"), "{seen}");
    let png = std::fs::metadata(artifacts.join("dashboard.png")).expect("a screenshot");
    assert!(png.len() > 10_000, "a real screenshot, not an empty one");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_degraded_global_quota() {
    let _browser = BROWSER.lock().await;
    let upstream = Upstream::start().await;
    let mut redis = support::redis::Redis::start();
    let rest = format!(
        "  tokens:\n    - {{ name: graf, role: viewer, token: dashboard-viewer-token }}\nglobal: {{ redis: \"{}\", on_error: local_share }}\nroutes:\n  - name: shared\n    match: {{ path: \"/*\" }}\n    quota: {{ rate: 100, per: 1s, burst: 50, scope: global }}\n",
        redis.url()
    );
    let sluice = Sluice::start(&upstream, &rest).await;
    let client = client();
    assert_eq!(get(&client, &sluice.url("/x")).await.0.status(), 200);
    redis.kill();
    // The lease's tokens first, then Redis found gone: the local share decides.
    for _ in 0..20 {
        get(&client, &sluice.url("/x")).await;
    }
    assert!(sluice.running().snapshot().global.as_ref().unwrap().degraded());
    let page = sluice.admin_url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["tests/dashboard/global.mjs", &page, "dashboard-viewer-token", "shared"])
            .output()
            .expect("node runs tests/dashboard/global.mjs")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the dashboard check failed:\n{stdout}\n{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["degraded"], true, "{seen}");
    let banner = seen["banner"].as_str().unwrap();
    assert!(banner.contains("Redis unavailable") && banner.contains("on_error local_share decides"), "{seen}");
    assert!(seen["quota"].as_str().unwrap().contains("global quota 100 per 1s, burst 50"), "{seen}");
    let events = seen["events"].as_array().unwrap();
    let degraded = events.iter().find(|e| e["kind"] == "global_quota_degraded").expect("the event is listed");
    assert!(degraded["text"].as_str().unwrap().contains("on_error local_share decides"), "{seen}");
}
