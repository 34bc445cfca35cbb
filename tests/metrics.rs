//! The metrics and SLA signals, end to end: a real upstream answering with chosen delays
//! and statuses, the real sluice, and `/metrics` scraped over HTTP.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const ROUTES: &str = "routes:
  - name: api
    match: { path: /api/* }
    timeout: 400ms
    sla:
      latency: { threshold: 100ms, objective: 99% }
      availability: 99%
  - name: limited
    match: { path: /limited }
    quota: { rate: 1, per: 1m, burst: 1 }
";

/// What the test sends to `api`, and what sluice must make of it.
async fn traffic(sluice: &Sluice) {
    let client = client();
    for (path, n, status) in [
        ("/api/fast", 5, 200),
        ("/api/err?status=503", 2, 503),
        ("/api/slow?delay=150", 3, 200),
        ("/api/hang?delay=1000", 1, 504),
        ("/limited", 1, 200),
        ("/limited", 2, 429),
        ("/elsewhere", 1, 200),
        ("/api/../limited", 1, 400),
    ] {
        for _ in 0..n {
            assert_eq!(get(&client, &sluice.url(path)).await.0.status(), status, "{path}");
        }
    }
}

#[tokio::test]
async fn scraped_metrics_match_what_was_sent() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    traffic(&sluice).await;
    let m = sluice.scrape().await;
    let requests = |route: &str, class: &str, origin: &str| {
        m.value("sluice_requests_total", &format!("route=\"{route}\",code_class=\"{class}\",origin=\"{origin}\""))
    };
    assert_eq!(requests("api", "2xx", "upstream"), 8.0);
    assert_eq!(requests("api", "5xx", "upstream"), 2.0);
    assert_eq!(requests("api", "5xx", "timeout"), 1.0);
    assert_eq!(requests("api", "5xx", "upstream_error"), 0.0);
    assert_eq!(requests("limited", "2xx", "upstream"), 1.0);
    assert_eq!(requests("limited", "4xx", "quota"), 2.0);
    assert_eq!(requests("unmatched", "2xx", "upstream"), 1.0);
    assert_eq!(requests("unmatched", "4xx", "rejected"), 1.0);
    let decisions =
        |route: &str, d: &str| m.value("sluice_quota_decisions_total", &format!("route=\"{route}\",decision=\"{d}\""));
    assert_eq!((decisions("limited", "allowed"), decisions("limited", "limited")), (1.0, 2.0));
    assert_eq!(m.value("sluice_inflight_requests", "route=\"api\""), 0.0);

    // The histogram: 7 answered within the 100 ms threshold (an edge of its own), the 3
    // slow ones within 250 ms, the timeout (400 ms) after that; quota refusals not at all.
    let bucket = |route: &str, le: &str| {
        m.value("sluice_request_duration_seconds_bucket", &format!("route=\"{route}\",le=\"{le}\""))
    };
    assert_eq!(bucket("api", "0.1"), 7.0);
    assert_eq!(bucket("api", "0.25"), 10.0);
    assert_eq!(bucket("api", "+Inf"), 11.0);
    assert_eq!(m.value("sluice_request_duration_seconds_count", "route=\"api\""), 11.0);
    assert_eq!(m.value("sluice_request_duration_seconds_count", "route=\"limited\""), 1.0);
    assert_eq!(m.get("sluice_request_duration_seconds_bucket", "route=\"limited\",le=\"0.1\""), Some(1.0));

    // sluice's own SLIs, once the monitor has ticked, equal what Prometheus would compute
    // from the histogram and the counters.
    sluice.running().tick();
    let m = sluice.scrape().await;
    let sla = |name: &str, sli: &str| m.value(name, &format!("route=\"api\",sli=\"{sli}\""));
    assert_eq!(sla("sluice_sla_compliance_ratio", "latency"), 7.0 / 11.0);
    assert_eq!(sla("sluice_sla_compliance_ratio", "latency"), bucket("api", "0.1") / bucket("api", "+Inf"));
    assert_eq!(sla("sluice_sla_compliance_ratio", "availability"), 8.0 / 11.0);
    assert_eq!(sla("sluice_sla_objective_ratio", "latency"), 0.99);
    let budget = sla("sluice_sla_error_budget_remaining_ratio", "availability");
    assert!((budget - (1.0 - (3.0 / 11.0) / 0.01)).abs() < 1e-9, "{budget}");
    let burn = m.value("sluice_sla_burn_rate", "route=\"api\",sli=\"availability\",window=\"5m\"");
    assert!((burn - (3.0 / 11.0) / 0.01).abs() < 1e-9, "{burn}");
    assert_eq!(m.get("sluice_sla_compliance_ratio", "route=\"limited\",sli=\"latency\""), None, "no SLA, no series");

    assert_eq!(m.value("sluice_config_version", ""), 1.0);
    assert_eq!(m.value("sluice_build_info", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), 1.0);
    assert!(m.value("process_resident_memory_bytes", "") > 1e6);
    assert!(m.value("process_open_fds", "") > 3.0);
    assert!(m.value("process_cpu_seconds_total", "") > 0.0);
}

/// `promtool check metrics` (from Debian's `prometheus`, which `.ci/test` installs).
fn promtool(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run .ci/test, which installs it (Debian package `prometheus`)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn promtool_finds_nothing_to_lint() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, ROUTES).await;
    traffic(&sluice).await;
    sluice.running().tick();
    let m = sluice.scrape().await;
    let (ok, output) = promtool(&m.0);
    assert!(ok && output.trim().is_empty(), "promtool check metrics:\n{output}");
    // And the check can fail: a counter without `_total` is linted.
    let (ok, output) = promtool("# HELP bad_counter A counter.\n# TYPE bad_counter counter\nbad_counter 1\n");
    assert!(!ok && output.contains("_total"), "{output}");
}

#[tokio::test]
async fn probes_and_the_metrics_listener() {
    let upstream = Upstream::start().await;
    // Continues the `admin:` block that the test config opens.
    let sluice = Sluice::start(&upstream, "  metrics_listen: 127.0.0.1:0\nroutes: []\n").await;
    let client = client();
    for url in [sluice.admin_url("/healthz"), sluice.admin_url("/readyz")] {
        assert_eq!(get(&client, &url).await.0.status(), 200, "{url}");
    }
    let metrics_addr = sluice.running().metrics_addr().expect("metrics_listen is bound");
    let (response, body) = get(&client, &format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(response.status(), 200);
    assert!(String::from_utf8_lossy(&body).contains("sluice_config_version 1"));
    assert_eq!(get(&client, &format!("http://{metrics_addr}/readyz")).await.0.status(), 200);
    assert_eq!(get(&client, &sluice.admin_url("/nope")).await.0.status(), 404);
}

#[tokio::test]
async fn reloads_are_counted_and_versioned() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("metrics-reload");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config_text(upstream.addr, ROUTES)).unwrap();
    let sluice = Sluice::start_with_file(path.clone()).await;
    std::fs::write(&path, config_text(upstream.addr, "routes: nope\n")).unwrap();
    assert!(sluice.running().reload().is_err());
    let m = sluice.scrape().await;
    assert_eq!(m.value("sluice_config_reloads_total", "source=\"signal\",result=\"failure\""), 1.0);
    assert_eq!(m.value("sluice_config_reloads_total", "source=\"signal\",result=\"success\""), 0.0);
    assert_eq!(m.value("sluice_config_version", ""), 1.0);

    // A good file: version 2. The `limited` route is gone, and so are its series.
    std::fs::write(
        &path,
        config_text(
            upstream.addr,
            &ROUTES.replace(
                "  - name: limited\n    match: { path: /limited }\n    quota: { rate: 1, per: 1m, burst: 1 }\n",
                "",
            ),
        ),
    )
    .unwrap();
    assert!(sluice.running().reload().is_ok());
    let m = sluice.scrape().await;
    assert_eq!(m.value("sluice_config_reloads_total", "source=\"signal\",result=\"success\""), 1.0);
    assert_eq!(m.value("sluice_config_version", ""), 2.0);
    // The same file again: counted, and no new version.
    assert_eq!(sluice.running().reload().unwrap().version, 2);
    let m = sluice.scrape().await;
    assert_eq!(m.value("sluice_config_reloads_total", "source=\"signal\",result=\"unchanged\""), 1.0);
    assert_eq!(m.value("sluice_config_version", ""), 2.0);
    assert!(m.value("sluice_config_last_reload_success_timestamp_seconds", "") > 1.7e9);
    assert!(!m.0.contains("route=\"limited\""), "{}", m.0);
    assert!(m.0.contains("route=\"api\""));
}

/// A webhook receiver that answers 500 to the first POST and 200 after, keeping bodies.
async fn webhook() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use std::sync::{Arc, Mutex};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let received = kept.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let received = received.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut received = received.lock().unwrap();
                    received.push(serde_json::from_slice(&body).unwrap());
                    let status = if received.len() == 1 { 500 } else { 200 };
                    Ok::<_, std::convert::Infallible>(hyper::Response::builder().status(status).body(empty()).unwrap())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (addr, received)
}

#[tokio::test]
async fn a_breach_is_an_event_on_the_stream_and_the_webhook() {
    let upstream = Upstream::start().await;
    let (hook, received) = webhook().await;
    let rest = format!(
        "events: {{ webhook: \"http://{hook}/sla\" }}\nroutes:\n  - name: api\n    match: {{ path: /api }}\n    sla: {{ availability: 99.9%, min_events: 10 }}\n"
    );
    let sluice = Sluice::start(&upstream, &rest).await;
    let mut stream = sluice.running().events().subscribe();
    let client = client();
    for _ in 0..20 {
        assert_eq!(get(&client, &sluice.url("/api?status=503")).await.0.status(), 503);
    }
    sluice.running().tick();
    let event = tokio::time::timeout(Duration::from_secs(5), stream.recv()).await.unwrap().unwrap();
    let event = event.json();
    assert_eq!(event["type"], "sla_breached");
    assert_eq!(
        (&event["service"], &event["route"], &event["sli"]),
        (&"test".into(), &"api".into(), &"availability".into())
    );
    assert_eq!(event["severity"], "fast");
    assert!((event["burn_rates"]["5m"].as_f64().unwrap() - 1000.0).abs() < 1e-6, "{event}");
    assert!((event["budget_remaining"].as_f64().unwrap() - (1.0 - 1000.0)).abs() < 1e-6, "{event}");
    // One event per breach: more ticks while it lasts raise nothing.
    sluice.running().tick();
    assert!(stream.try_recv().is_err());

    // The webhook answered 500 once; the same event came again after the backoff.
    eventually("the webhook gets the event again", Duration::from_secs(5), async || {
        received.lock().unwrap().len() == 2
    })
    .await;
    let received = received.lock().unwrap();
    assert_eq!(received[0], received[1]);
    for field in ["type", "time", "service", "route", "sli", "severity", "objective", "compliance"] {
        assert_eq!(received[0][field], event[field], "{field}");
    }
}
