//! The control API over the real admin listener: tokens and roles, ETag / If-Match, every
//! refusal's status with nothing changed, concurrent writers, pushes that are live when
//! their response returns, persistence across a restart, the audit log and its chain.

mod support;

use std::time::Duration;

use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-1234";
const OPERATOR: &str = "operator-token-1234";
const VIEWER: &str = "viewer-token-1234";

/// Continues the `admin:` block, then two routes.
const REST: &str = r#"  tokens:
    - { name: cp, role: admin, token: admin-token-1234 }
    - { name: ops, role: operator, token: operator-token-1234 }
    - { name: graf, role: viewer, token: viewer-token-1234 }
routes:
  - name: a
    match: { path: /a }
  - name: b
    match: { path: /b }
    quota: { rate: 1, per: 1h, burst: 1 }
"#;

struct Api {
    client: Client,
    base: String,
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    headers: http::HeaderMap,
    json: Value,
}

impl Api {
    fn new(sluice: &Sluice) -> Self {
        Self::new_at(sluice.admin_url(""))
    }

    fn new_at(base: String) -> Self {
        Self { client: client(), base }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        let req = req.header("content-type", "application/json").body(body.map_or_else(empty, full)).unwrap();
        let (response, bytes) = send(&self.client, req).await;
        Reply {
            status: response.status(),
            etag: response.headers().get("etag").map(|v| v.to_str().unwrap().to_string()),
            headers: response.headers().clone(),
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None, None).await
    }

    async fn put(&self, path: &str, token: &str, if_match: Option<&str>, body: &Value) -> Reply {
        self.call(Method::PUT, path, Some(token), if_match, Some(body.to_string().into_bytes())).await
    }

    async fn version(&self) -> u64 {
        self.get("/v1/config", VIEWER).await.json["version"].as_u64().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    let quota = json!({ "rate": 10, "per": "1s" });

    // No token, an unknown one, a malformed header: 401 with a challenge.
    for token in [None, Some("nope"), Some("")] {
        let reply = api.call(Method::GET, "/v1/config", token, None, None).await;
        assert_eq!(reply.status, 401, "{token:?}");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    // viewer < operator < admin
    for (token, read, quota_put, config_put) in
        [(VIEWER, 200, 403, 403), (OPERATOR, 200, 200, 403), (ADMIN, 200, 200, 428)]
    {
        assert_eq!(api.get("/v1/status", token).await.status, read, "{token} status");
        assert_eq!(api.put("/v1/routes/a/quota", token, None, &quota).await.status, quota_put, "{token} quota");
        assert_eq!(api.put("/v1/config", token, None, &json!({})).await.status, config_put, "{token} config");
    }
    // The probes and the metrics need no token.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(api.call(Method::GET, path, None, None, None).await.status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etag_flow_and_a_push_is_live_when_it_returns() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    let client = client();

    let current = api.get("/v1/config", ADMIN).await;
    assert_eq!((current.status, current.etag.as_deref()), (StatusCode::OK, Some("\"1\"")));
    assert_eq!(current.json["version"], 1);
    // literal tokens are never echoed
    assert!(!current.json.to_string().contains(ADMIN));

    let mut config = current.json.clone();
    config["routes"][0]["quota"] = json!({ "rate": 1, "per": "1h", "burst": 2 });
    assert_eq!(api.put("/v1/config", ADMIN, None, &config).await.status, 428);
    assert_eq!(api.put("/v1/config", ADMIN, Some("\"7\""), &config).await.status, 412);
    assert_eq!(api.version().await, 1, "refusals change nothing");

    let reply = api.put("/v1/config", ADMIN, Some("\"1\""), &config).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!((reply.json["version"].as_u64(), reply.etag.as_deref()), (Some(2), Some("\"2\"")));
    // live now: the new quota admits its burst of 2, then refuses
    let statuses: Vec<u16> = statuses(&client, &sluice.url("/a"), 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    // the old ETag is stale now
    assert_eq!(api.put("/v1/config", ADMIN, Some("\"1\""), &config).await.status, 412);
}

/// `n` GETs in a row; their statuses.
async fn statuses(client: &Client, url: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(get(client, url).await.0.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_calls_get_their_status_and_change_nothing() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);

    // malformed JSON: 400
    let reply = api.call(Method::PUT, "/v1/routes/a/quota", Some(OPERATOR), None, Some(b"{rate: ".to_vec())).await;
    assert_eq!(reply.status, 400);
    assert!(reply.json["detail"].as_str().unwrap().contains("malformed JSON"), "{}", reply.json);

    // every error, with its field path: 422
    let reply = api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 0, "per": "1y", "typo": 1 })).await;
    assert_eq!(reply.status, 422, "{}", reply.json);
    let paths: Vec<&str> =
        reply.json["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["routes[0].quota.per", "routes[0].quota.rate", "routes[0].quota.typo"], "every one");
    let reply = api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 0, "per": "1y" })).await;
    let paths: Vec<&str> =
        reply.json["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["routes[0].quota.per", "routes[0].quota.rate"]);

    // a whole config: errors placed in the body, by line and column
    let current = api.get("/v1/config", ADMIN).await.json;
    let mut bad = current.clone();
    bad["routes"][1]["match"]["path"] = json!("nope");
    let body = serde_json::to_string_pretty(&bad).unwrap();
    let reply = api.call(Method::PUT, "/v1/config", Some(ADMIN), Some("\"1\""), Some(body.into_bytes())).await;
    assert_eq!(reply.status, 422);
    let error = &reply.json["errors"][0];
    assert_eq!(error["path"], "routes[1].match.path");
    assert!(error["line"].as_u64().unwrap() > 1 && error["column"].as_u64().unwrap() > 1, "{error}");
    // the admin section is the file's
    let mut admin = current.clone();
    admin["admin"]["listen"] = json!("0.0.0.0:9999");
    let reply = api.put("/v1/config", ADMIN, Some("\"1\""), &admin).await;
    assert_eq!((reply.status.as_u16(), reply.json["errors"][0]["path"].as_str()), (422, Some("admin")));
    // a dry run says the same, and changes nothing either
    let reply =
        api.call(Method::POST, "/v1/config/validate", Some(VIEWER), None, Some(bad.to_string().into_bytes())).await;
    assert_eq!(reply.status, 422);
    let reply =
        api.call(Method::POST, "/v1/config/validate", Some(VIEWER), None, Some(current.to_string().into_bytes())).await;
    assert_eq!((reply.status.as_u16(), &reply.json), (200, &json!({ "valid": true })));

    // over 1 MiB: 413
    let huge = vec![b' '; (1 << 20) + 1];
    assert_eq!(api.call(Method::PUT, "/v1/quota", Some(OPERATOR), None, Some(huge)).await.status, 413);
    // unknown route: 404; unknown path: 404; wrong method: 405
    assert_eq!(api.put("/v1/routes/zzz/quota", OPERATOR, None, &json!({ "rate": 1, "per": "1s" })).await.status, 404);
    assert_eq!(api.get("/v1/nothing", ADMIN).await.status, 404);
    assert_eq!(api.call(Method::POST, "/v1/config", Some(ADMIN), None, None).await.status, 405);
    // stale If-Match on a route change: 412
    assert_eq!(
        api.put("/v1/routes/a/quota", OPERATOR, Some("\"9\""), &json!({ "rate": 1, "per": "1s" })).await.status,
        412
    );

    assert_eq!(api.version().await, 1, "nothing changed");
    let routes = sluice::config::parse(&config_text(upstream.addr, REST)).unwrap().raw.routes;
    assert_eq!(sluice.running().snapshot().config.raw.routes, routes);
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_concurrent_writers_exactly_one_wins() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    for round in 0..5 {
        let tag = format!("\"{}\"", api.version().await);
        let (first, second) = (json!({ "rate": 10 + round, "per": "1s" }), json!({ "rate": 20 + round, "per": "1s" }));
        let (one, two) = tokio::join!(
            api.put("/v1/routes/a/quota", OPERATOR, Some(&tag), &first),
            api.put("/v1/routes/a/quota", OPERATOR, Some(&tag), &second),
        );
        let mut statuses = [one.status.as_u16(), two.status.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 412], "round {round}");
    }
    assert_eq!(api.version().await, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_push_keeps_the_state_of_quotas_it_did_not_change() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    let client = client();
    assert_eq!(statuses(&client, &sluice.url("/b"), 2).await, [200, 429]);

    let mut events = sluice.running().events().subscribe();
    let reply = api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 1, "per": "1h", "burst": 1 })).await;
    assert_eq!(reply.status, 200);
    assert_eq!(statuses(&client, &sluice.url("/a"), 2).await, [200, 429]);
    // route b's bucket was not refilled by the push
    assert_eq!(statuses(&client, &sluice.url("/b"), 1).await, [429]);
    let kinds: Vec<String> =
        [events.recv().await.unwrap(), events.recv().await.unwrap()].iter().map(|e| e.kind().to_string()).collect();
    assert_eq!(kinds, ["config_applied", "quota_updated"]);

    // removing it lifts it
    let reply = api.call(Method::DELETE, "/v1/routes/a/quota", Some(OPERATOR), None, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(statuses(&client, &sluice.url("/a"), 3).await, [200, 200, 200]);
    // an SLA and the service-wide quota go the same way
    let sla = json!({ "latency": { "threshold": "250ms", "objective": "99%" }, "availability": "99.9%" });
    assert_eq!(api.put("/v1/routes/a/sla", OPERATOR, None, &sla).await.status, 200);
    assert_eq!(api.put("/v1/quota", OPERATOR, None, &json!({ "rate": 1, "per": "1h", "burst": 1 })).await.status, 200);
    assert_eq!(statuses(&client, &sluice.url("/a"), 2).await, [200, 429]);
    let routes = api.get("/v1/routes", VIEWER).await.json;
    assert_eq!(routes["routes"][0]["sla"]["latency"]["threshold"], "250ms");
    let status = api.get("/v1/status", VIEWER).await.json;
    assert_eq!(status["routes"][0]["sla"]["latency"]["objective"], 0.99);
    sluice.running().tick();
    let m = sluice.scrape().await;
    assert_eq!(m.get("sluice_sla_latency_threshold_seconds", "route=\"a\""), Some(0.25));
    // An SLA that drops its latency objective drops that SLI's series, threshold included.
    let sla = json!({ "availability": "99.9%" });
    assert_eq!(api.put("/v1/routes/a/sla", OPERATOR, None, &sla).await.status, 200);
    sluice.running().tick();
    let m = sluice.scrape().await;
    assert_eq!(m.get("sluice_sla_latency_threshold_seconds", "route=\"a\""), None);
    assert_eq!(m.get("sluice_sla_objective_ratio", "route=\"a\",sli=\"latency\""), None);
    assert_eq!(m.get("sluice_sla_objective_ratio", "route=\"a\",sli=\"availability\""), Some(0.999));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_decisions_and_top_offenders() {
    let upstream = Upstream::start().await;
    let rest = REST.replace(
        "quota: { rate: 1, per: 1h, burst: 1 }",
        "quota: { rate: 1, per: 1h, burst: 3, key: header:x-consumer }",
    );
    let sluice = Sluice::start(&upstream, &rest).await;
    let api = Api::new(&sluice);
    let client = client();
    for (consumer, n) in [("heavy", 8), ("light", 1)] {
        for _ in 0..n {
            send(&client, Request::get(sluice.url("/b")).header("x-consumer", consumer).body(empty()).unwrap()).await;
        }
    }
    let status = api.get("/v1/status", VIEWER).await.json;
    let b = &status["routes"][1];
    assert_eq!(b["name"], "b");
    assert_eq!(b["decisions"], json!({ "allowed": 4, "limited": 5, "shadow_limited": 0, "degraded_allowed": 0 }));
    let offenders = b["rate_quota"]["top_offenders"].as_array().unwrap();
    assert_eq!(offenders[0]["key"], "heavy", "{offenders:?}");
    assert_eq!(offenders[1]["key"], "light");
    assert!(offenders[0]["rate"].as_f64().unwrap() > offenders[1]["rate"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mutating_call_is_audited_without_its_token() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    let quota = json!({ "rate": 5, "per": "1s" });
    api.put("/v1/routes/a/quota", OPERATOR, None, &quota).await; // accepted
    api.put("/v1/routes/a/quota", VIEWER, None, &quota).await; // 403
    api.call(Method::PUT, "/v1/routes/a/quota", Some("stolen"), None, None).await; // 401
    api.call(Method::PUT, "/v1/quota", Some(OPERATOR), None, Some(b"{".to_vec())).await; // 400
    api.get("/v1/status", VIEWER).await; // a read: not audited

    let records = api.get("/v1/audit", VIEWER).await.json["records"].as_array().unwrap().clone();
    let summary: Vec<(Value, u64, u64, u64)> = records
        .iter()
        .map(|r| {
            (
                r["principal"].clone(),
                r["status"].as_u64().unwrap(),
                r["version_before"].as_u64().unwrap(),
                r["version_after"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(json!("ops"), 200, 1, 2), (json!("graf"), 403, 2, 2), (Value::Null, 401, 2, 2), (json!("ops"), 400, 2, 2)]
    );
    assert_eq!(records[0]["action"], "PUT /v1/routes/a/quota");
    assert_eq!(records[0]["result"], "accepted");
    assert!(records[0]["remote"].as_str().unwrap().starts_with("127.0.0.1:"));

    let state_dir = sluice.running().snapshot().config.admin.state_dir.clone();
    let log = state_dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [ADMIN, OPERATOR, VIEWER, "stolen"] {
        assert!(!text.contains(secret), "a token in the audit log");
    }
    let verify = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).args(["audit", "verify"]).arg(path).output().unwrap()
    };
    let ok = verify(&log);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok: 4 records\n");
    std::fs::write(&log, text.replacen("\"status\":403", "\"status\":200", 1)).unwrap();
    let broken = verify(&log);
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stderr).contains("audit.jsonl:3: "), "{broken:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_survives_a_restart_until_the_file_changes() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("persist");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config_text(upstream.addr, REST)).unwrap();
    let client = client();

    let sluice = Sluice::start_with_file(path.clone()).await;
    let api = Api::new(&sluice);
    let reply = api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 1, "per": "1h", "burst": 1 })).await;
    assert_eq!(reply.status, 200);
    // SIGHUP with the file unchanged keeps the push
    sluice.running().reload().unwrap();
    assert!(sluice.running().snapshot().config.raw.routes[0].quota.is_some());
    let mut sluice = sluice;
    sluice.running.take().unwrap().drain().await;

    // restarted over the same file: the push is back
    let sluice = Sluice::start_with_file(path.clone()).await;
    assert_eq!(statuses(&client, &sluice.url("/a"), 2).await, [200, 429]);
    // the file changes: it wins, and the push is gone for good
    let changed =
        std::fs::read_to_string(&path).unwrap().replace("rate: 1, per: 1h, burst: 1", "rate: 1, per: 1h, burst: 5");
    std::fs::write(&path, changed).unwrap();
    eventually("the file's config", Duration::from_secs(5), async || {
        sluice.running().snapshot().config.raw.routes[0].quota.is_none()
    })
    .await;
    let mut sluice = sluice;
    sluice.running.take().unwrap().drain().await;
    let sluice = Sluice::start_with_file(path).await;
    assert!(sluice.running().snapshot().config.raw.routes[0].quota.is_none());
}

/// Opens the event stream; the response body, to be read as it comes.
async fn event_stream(sluice: &Sluice, token: &str) -> hyper::body::Incoming {
    let req = Request::get(sluice.admin_url("/v1/events"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// Reads `body` until `done` holds for what was read, or `within` passes, or it ends.
async fn read_until(body: &mut hyper::body::Incoming, within: Duration, done: impl Fn(&str) -> bool) -> String {
    use http_body_util::BodyExt;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&text) {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            _ => break,
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_every_viewer() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("events");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config_text(upstream.addr, REST)).unwrap();
    let sluice = Sluice::start_with_file(path.clone()).await;
    let api = Api::new(&sluice);
    assert_eq!(api.call(Method::GET, "/v1/events", None, None, None).await.status, 401);
    let mut viewers = [event_stream(&sluice, VIEWER).await, event_stream(&sluice, ADMIN).await];

    assert_eq!(api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 1, "per": "1s" })).await.status, 200);
    assert_eq!(api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 0, "per": "1s" })).await.status, 422);
    std::fs::write(&path, config_text(upstream.addr, "routes: nope\n")).unwrap();
    assert!(sluice.running().reload().is_err());
    sluice.running().events().send(sluice::events::Event::new("sla_breached", json!({ "route": "a" })));
    for viewer in &mut viewers {
        let text = read_until(viewer, Duration::from_secs(5), |t| t.contains("event: sla_breached")).await;
        let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            kinds,
            ["config_applied", "quota_updated", "config_rejected", "config_rejected", "sla_breached"],
            "{text}"
        );
        let quota = text.lines().find(|l| l.contains("\"quota_updated\"")).unwrap();
        let quota: Value = serde_json::from_str(quota.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            (quota["route"].as_str(), quota["principal"].as_str(), quota["quota"]["rate"].as_u64()),
            (Some("a"), Some("ops"), Some(1))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_viewer_is_dropped_and_slows_nobody() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let mut slow = event_stream(&sluice, VIEWER).await;
    let mut fast = event_stream(&sluice, VIEWER).await;
    let reader = tokio::spawn(async move {
        // Counts events line by line as they come, keeping only the unfinished line.
        use http_body_util::BodyExt;
        let (mut bulk, mut partial) = (0, String::new());
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(20), fast.frame()).await {
            let Ok(data) = frame.into_data() else { continue };
            partial.push_str(&String::from_utf8_lossy(&data));
            let Some(end) = partial.rfind('\n') else { continue };
            for line in partial[..end].lines() {
                match line {
                    "event: bulk" => bulk += 1,
                    "event: end" | "event: dropped" => return (bulk, line.to_string()),
                    _ => {}
                }
            }
            partial.drain(..=end);
        }
        (bulk, "nothing".to_string())
    });
    // 2,000 events of 10 KB: 20 MB, more than the socket buffers of a viewer who reads
    // nothing, paced so that a viewer who reads keeps up.
    let events = sluice.running().events().clone();
    let pad = "x".repeat(10_000);
    let mut sending = Duration::ZERO;
    for i in 0..2_000 {
        let started = std::time::Instant::now();
        events.send(sluice::events::Event::new("bulk", json!({ "i": i, "pad": pad })));
        sending += started.elapsed();
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    events.send(sluice::events::Event::new("end", json!({})));
    assert!(sending < Duration::from_millis(500), "sending waited: {sending:?}");
    assert_eq!(reader.await.unwrap(), (2_000, "event: end".to_string()), "the viewer who reads gets everything");
    let text = read_until(&mut slow, Duration::from_secs(20), |t| t.contains("event: dropped")).await;
    assert!(text.contains("event: dropped"), "the slow viewer is told, then dropped");
    assert!(!text.contains("event: end"));
}

/// A free port on 127.0.0.1, for a process whose admin address the test must know.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_survives_kill_9_during_writes() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("kill9");
    let path = dir.join("sluice.yaml");
    let port = free_port();
    let text = config_text(upstream.addr, REST)
        .replace("  listen: 127.0.0.1:0\n  state_dir", &format!("  listen: 127.0.0.1:{port}\n  state_dir"));
    std::fs::write(&path, text).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let api = Api { client: client(), base: base.clone() };

    let mut process = Process::spawn(&path);
    // Pushes rates 1, 2, 3, ... as fast as they are accepted, until the process dies.
    let pusher = tokio::spawn(async move {
        let (mut confirmed, mut sent) = (0u64, 0u64);
        loop {
            sent += 1;
            let body = json!({ "rate": sent, "per": "1s" }).to_string().into_bytes();
            let req = Request::put(format!("{}/v1/routes/a/quota", api.base))
                .header("authorization", format!("Bearer {OPERATOR}"))
                .body(full(body))
                .unwrap();
            match api.client.request(req).await {
                Ok(response) if response.status() == 200 => confirmed = sent,
                Ok(response) => panic!("push refused: {}", response.status()),
                Err(_) => return (confirmed, sent),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    process.signal("KILL");
    assert_eq!(process.wait(Duration::from_secs(5)), None, "killed by a signal: no exit code");
    let (confirmed, sent) = pusher.await.unwrap();
    assert!(confirmed > 3, "pushes were being accepted: {confirmed}");

    let _restarted = Process::spawn(&path);
    let api = Api::new_at(base);
    let rate = api.get("/v1/config", VIEWER).await.json["routes"][0]["quota"]["rate"].as_u64().unwrap();
    assert!((confirmed..=sent).contains(&rate), "restored rate {rate}: confirmed {confirmed}, sent {sent}");
    // and the audit log's chain is whole, every confirmed push in it
    let config = api.get("/v1/config", VIEWER).await.json;
    let log = std::path::Path::new(config["admin"]["state_dir"].as_str().unwrap()).join("audit.jsonl");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).args(["audit", "verify"]).arg(&log).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records: u64 =
        stdout.trim().strip_prefix("ok: ").and_then(|s| s.strip_suffix(" records")).unwrap().parse().unwrap();
    assert!(records >= confirmed, "{records} records for {confirmed} accepted pushes");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_writable_state_dir_changes_are_refused() {
    let upstream = Upstream::start().await;
    // a file where the directory should be: it cannot be created
    let blocker = temp_dir("blocked").join("file");
    std::fs::write(&blocker, "").unwrap();
    let text = config_text(upstream.addr, REST);
    let text = text.replace("  state_dir: ", &format!("  state_dir: {}\n  #", blocker.join("state").display()));
    let config = sluice::config::parse(&text).unwrap();
    let running = sluice::server::start(config, None).await.unwrap();
    let api = Api::new_at(format!("http://{}", running.admin_addr()));
    let reply = api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 1, "per": "1s" })).await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert!(reply.json["detail"].as_str().unwrap().contains("state_dir"));
    assert_eq!(api.version().await, 1);
    assert_eq!(api.get("/v1/status", VIEWER).await.status, 200, "reads still work");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_get_returns_put_takes_back_as_a_no_op_and_changes_say_what_they_set() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);

    // GET -> PUT unchanged, with its ETag: accepted, and the version stays.
    let current = api.get("/v1/config", ADMIN).await;
    let tag = current.etag.clone().unwrap();
    let reply = api.put("/v1/config", ADMIN, Some(&tag), &current.json).await;
    assert_eq!((reply.status.as_u16(), &reply.json), (200, &json!({ "version": 1, "changed": false })));
    assert_eq!(reply.etag.as_deref(), Some("\"1\""));
    assert_eq!(api.version().await, 1);
    // A body of another version is stale, whatever If-Match says.
    let mut stale = current.json.clone();
    stale["version"] = json!(7);
    assert_eq!(api.put("/v1/config", ADMIN, Some(&tag), &stale).await.status, 412);

    // A real change moves it by one, and the audit record says what it set.
    let quota = json!({ "rate": 7, "per": "1m", "burst": 3 });
    let reply = api.put("/v1/routes/a/quota", OPERATOR, Some("\"1\""), &quota).await;
    assert_eq!((reply.status.as_u16(), &reply.json), (200, &json!({ "version": 2, "changed": true })));
    // The same push again changes nothing: no new version, no quota_updated.
    let mut stream = sluice.running().events().subscribe();
    let reply = api.put("/v1/routes/a/quota", OPERATOR, None, &quota).await;
    assert_eq!(reply.json, json!({ "version": 2, "changed": false }));
    assert!(stream.try_recv().is_err(), "a no-op announces nothing");
    let mut config = api.get("/v1/config", ADMIN).await.json;
    config["routes"][0]["timeout"] = json!("3s");
    assert_eq!(api.put("/v1/config", ADMIN, Some("\"2\""), &config).await.json["version"], 3);

    let records = api.get("/v1/audit", VIEWER).await.json["records"].as_array().unwrap().clone();
    let changes: Vec<&Value> = records.iter().map(|r| &r["change"]).collect();
    assert_eq!(changes[0], &json!({ "unchanged": true }));
    assert_eq!(changes[2]["route"], "a");
    assert_eq!(changes[2]["quota"], quota);
    let sha = changes[2]["config_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(changes[3], &json!({ "unchanged": true }));
    // A replaced config is named by the SHA-256 of what is now live, as GET shows it.
    let live = sluice.running().snapshot().config.raw.clone();
    let expected = sluice::config::reload::config_fingerprint(&live);
    assert_eq!(changes[4]["config_sha256"], expected.as_str());
    let text = std::fs::read_to_string(sluice.running().snapshot().config.admin.state_dir.join("audit.jsonl")).unwrap();
    assert!(!text.contains(ADMIN) && !text.contains(OPERATOR));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let client = client();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let req = Request::get(sluice.admin_url("/v1/status"))
            .header("authorization", format!("{scheme} {VIEWER}"))
            .body(empty())
            .unwrap();
        assert_eq!(send(&client, req).await.0.status(), 200, "{scheme}");
    }
    let req = Request::get(sluice.admin_url("/v1/status")).header("authorization", format!("Basic {VIEWER}"));
    assert_eq!(send(&client, req.body(empty()).unwrap()).await.0.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_tokens_cannot_fill_the_audit_log() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = std::sync::Arc::new(Api::new(&sluice));
    let calls = 10_000;
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                for i in 0..calls / 50 {
                    let token = format!("guess-{t}-{i}");
                    let reply = api.call(Method::PUT, "/v1/quota", Some(&token), None, Some(b"{}".to_vec())).await;
                    assert_eq!(reply.status, 401);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // One real change after the flood: the summary of what was left out comes before it.
    assert_eq!(api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": 5, "per": "1s" })).await.status, 200);
    let log = sluice.running().snapshot().config.admin.state_dir.join("audit.jsonl");
    let size = std::fs::metadata(&log).unwrap().len();
    // docs/control-api.md: 20 at once, then one a second, each about 250 bytes.
    assert!(size < 64 * 1024, "the audit log grew to {size} bytes");
    let records = api.get("/v1/audit?limit=10000", VIEWER).await.json["records"].as_array().unwrap().clone();
    let written = records.iter().filter(|r| r["status"] == 401 && r["action"] != "suppressed").count() as u64;
    let suppressed: u64 = records
        .iter()
        .filter(|r| r["action"] == "suppressed")
        .map(|r| r["change"]["suppressed"].as_u64().unwrap())
        .sum();
    assert_eq!(written + suppressed, calls, "every call is written or counted");
    assert!(suppressed > 9_000, "{suppressed}");
    let m = sluice.scrape().await;
    assert_eq!(m.value("sluice_audit_suppressed_total", "") as u64, suppressed);
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).args(["audit", "verify"]).arg(&log).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audit_log_missing_its_last_line_fails_verification() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    for rate in 1..=3 {
        assert_eq!(
            api.put("/v1/routes/a/quota", OPERATOR, None, &json!({ "rate": rate, "per": "1s" })).await.status,
            200
        );
    }
    let log = sluice.running().snapshot().config.admin.state_dir.join("audit.jsonl");
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).args(["audit", "verify"]).arg(&log).output().unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&verify().stdout), "ok: 3 records\n");
    let text = std::fs::read_to_string(&log).unwrap();
    let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, cut).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds 2 records, its head 3: records were removed from its end"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_lists_every_error_type_errors_included() {
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, REST).await;
    let api = Api::new(&sluice);
    let mut config = api.get("/v1/config", ADMIN).await.json;
    config["routes"][0]["quota"] = json!({ "rate": -5, "per": "1s" });
    config["routes"][0]["timeout"] = json!("soon");
    config["routes"][1]["sla"] =
        json!({ "latency": { "threshold": "20ms", "objective": 99.5 }, "availability": "120%" });
    let body = serde_json::to_string_pretty(&config).unwrap().into_bytes();
    let reply = api.call(Method::POST, "/v1/config/validate", Some(VIEWER), None, Some(body)).await;
    assert_eq!(reply.status, 422);
    let errors: Vec<(String, String)> = reply.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string()))
        .collect();
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["routes[0].quota.rate", "routes[0].timeout", "routes[1].sla.availability", "routes[1].sla.latency.objective"],
        "{errors:?}"
    );
    assert_eq!(errors[0].1, "must be a whole number of at least 1, got -5");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_request_head_on_the_admin_listener_is_closed_at_the_header_timeout() {
    use std::io::{Read, Write};
    let upstream = Upstream::start().await;
    let sluice = Sluice::start(&upstream, "limits: { header_read_timeout: 1s }\n").await;
    let admin = sluice.running().admin_addr();
    let started = std::time::Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half").unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map(|_| answer)
    })
    .await
    .unwrap();
    let waited = started.elapsed();
    assert!(closed.is_ok(), "the connection was not closed within 10 s: {closed:?}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "closed after {waited:?}");
    // A whole request is served as before.
    let (response, _) = get(&client(), &sluice.admin_url("/healthz")).await;
    assert_eq!(response.status(), 200);
}

/// With the admin listener's tracing on, a call is logged with its headers, and the token
/// is not among them.
#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_are_traced_without_their_token() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("trace");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config_text(upstream.addr, REST)).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env("SLUICE_LOG", "info,tower_http=debug").args(["--log-format", "json", "run", "--config"]).arg(&path);
    let process = Process::spawn_command(command);
    process.admin_json("/v1/status?traced=1", VIEWER).await;

    let traced = || process.log().into_iter().filter(|l| l.contains("traced=1")).collect::<Vec<_>>();
    eventually("the call's span is logged", Duration::from_secs(5), async || !traced().is_empty()).await;
    let lines = traced();
    assert!(lines.iter().any(|l| l.contains("authorization") && l.contains("Sensitive")), "{lines:#?}");
    assert!(!process.log().iter().any(|l| l.contains(VIEWER)), "the token is in the log");
}
