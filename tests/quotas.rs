//! Quotas over the real listener: rate (whole route, keyed, shadow, service-wide),
//! concurrency, the 429 response, and the bound on keyed state.

mod support;

use sluice::metrics::Decision;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use support::*;

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_quota_refuses_past_the_burst_with_the_ratelimit_fields() {
    let upstream = Upstream::start().await;
    let routes =
        "routes:\n  - name: limited\n    match: { path: \"/*\" }\n    quota: { rate: 60, per: 1m, burst: 3 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &sluice.url("/x")).await.0.status(), 200);
    }
    let (refused, body) = get(&client, &sluice.url("/x")).await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-policy"], "\"limited\";q=3;w=3");
    assert_eq!(h["ratelimit"], "\"limited\";r=0;t=1");
    assert_eq!(h["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 3);
    // Retry-After is honest: after it, the next request passes.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(get(&client, &sluice.url("/x")).await.0.status(), 200);
    let m = &sluice.running().snapshot().routes[0].metrics;
    assert_eq!((m.decisions(Decision::Allowed), m.decisions(Decision::Limited)), (4, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_keys_have_their_own_buckets_and_no_header_shares_one() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: keyed\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 2, key: header:x-consumer-id }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let client = client();
    let request = |consumer: Option<&str>| {
        let mut builder = Request::get(sluice.url("/k"));
        if let Some(c) = consumer {
            builder = builder.header("x-consumer-id", c);
        }
        builder.body(empty()).unwrap()
    };
    for consumer in [Some("a"), Some("b"), None] {
        assert_eq!(send(&client, request(consumer)).await.0.status(), 200);
        assert_eq!(send(&client, request(consumer)).await.0.status(), 200);
        assert_eq!(send(&client, request(consumer)).await.0.status(), 429, "{consumer:?}");
    }
    // A field name matches in any case: consumer `c` has its own bucket (the bucket of
    // requests without the field is empty by now), and `a` is out of tokens.
    for (consumer, status) in [("c", "200"), ("a", "429")] {
        let request = format!("GET /k HTTP/1.1\r\nHost: x\r\nX-Consumer-ID: {consumer}\r\nConnection: close\r\n\r\n");
        let answer = raw(sluice.addr, request.as_bytes(), Duration::from_secs(5));
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{consumer}: {answer}");
    }
}

/// Connects from `source` (any 127.0.0.0/8 address is loopback) and sends one request.
async fn from_address(source: &str, target: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(target).await.unwrap();
    stream.write_all(b"GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn client_ip_keys_follow_the_peer_address() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: per-ip\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 1, key: client_ip }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    assert_eq!(status_of(&from_address("127.0.0.2", sluice.addr).await), "200");
    assert_eq!(status_of(&from_address("127.0.0.2", sluice.addr).await), "429");
    assert_eq!(status_of(&from_address("127.0.0.3", sluice.addr).await), "200");
    assert_eq!(upstream.last().headers["x-forwarded-for"], "127.0.0.3");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_counts_but_refuses_nothing() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: shadow\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 1, mode: shadow }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, &sluice.url("/s")).await.0.status(), 200);
    }
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 5);
    let m = &sluice.running().snapshot().routes[0].metrics;
    let decisions = [Decision::Allowed, Decision::ShadowLimited, Decision::Limited].map(|d| m.decisions(d));
    assert_eq!(decisions, [1, 4, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_quota_applies_on_top_and_is_not_spent_by_route_refusals() {
    let upstream = Upstream::start().await;
    let rest = "quota: { rate: 1, per: 1h, burst: 3 }\nroutes:\n  - name: tight\n    match: { path: /tight }\n    quota: { rate: 1, per: 1h, burst: 1 }\n  - name: open\n    match: { path: \"/*\" }\n";
    let sluice = Sluice::start(&upstream, rest).await;
    let client = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(&client, &sluice.url("/tight")).await.0.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 429, 429]);
    // The two route refusals spent nothing of the service's 3.
    assert_eq!(get(&client, &sluice.url("/open")).await.0.status(), 200);
    assert_eq!(get(&client, &sluice.url("/open")).await.0.status(), 200);
    let (refused, _) = get(&client, &sluice.url("/open")).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers()["ratelimit-policy"].to_str().unwrap().starts_with("\"service\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_is_exact_and_released_when_the_client_goes_away() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: slow\n    match: { path: \"/*\" }\n    concurrency: { max: 2 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    // Two clients hold a slot each, waiting on a slow upstream.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
        stream.write_all(b"GET /hold?delay=10000 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        holders.push(stream);
    }
    eventually("both slow requests", Duration::from_secs(5), async || upstream.in_flight.load(Ordering::SeqCst) == 2)
        .await;
    let client = client();
    let (refused, _) = get(&client, &sluice.url("/third")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["ratelimit-policy"], "\"slow-concurrency\";q=2;w=1");
    assert_eq!(refused.headers()["retry-after"], "1");
    // One client hangs up: its slot comes back though the upstream is still busy.
    drop(holders.pop());
    eventually("the slot of the client that left", Duration::from_secs(3), async || {
        get(&client, &sluice.url("/fast")).await.0.status() == 200
    })
    .await;
    let route = &sluice.running().snapshot().routes[0];
    assert_eq!(route.quotas.concurrency.as_ref().unwrap().in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_body_is_never_read_as_the_next_request() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: closed\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 1 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    get(&client(), &sluice.url("/spend")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
    let answer = raw(sluice.addr, request.as_bytes(), Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.to_lowercase().contains("connection: close"), "{answer}");
    assert!(upstream.seen().iter().all(|s| s.uri.path() != "/smuggled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_distinct_keys_stays_within_max_keys_and_is_swept() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: flood\n    match: { path: \"/*\" }\n    quota: { rate: 1000, per: 1s, burst: 1, key: header:x-k, max_keys: 50 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let client = client();
    for i in 0..400 {
        let req = Request::get(sluice.url("/f")).header("x-k", format!("key-{i}")).body(empty()).unwrap();
        send(&client, req).await;
    }
    let snapshot = sluice.running().snapshot();
    let limit = &snapshot.routes[0].quotas.rate.as_ref().unwrap().limit;
    assert!(limit.keys() <= 50, "{} keys tracked", limit.keys());
    // Each new key was either tracked (at most 50 at a time, room made only by sweeping
    // full buckets) or sent to the shared overflow bucket.
    let (overflowed, evicted) = (limit.overflowed(), limit.evicted());
    assert!(overflowed > 0 && overflowed + 50 + evicted >= 400, "overflowed {overflowed}, evicted {evicted}");
    // Fill the table up again: every bucket refills in 1 ms, and a full table is swept
    // within a tick (a table with room only every 10 s).
    let mut next = 400;
    while limit.keys() < 50 {
        let req = Request::get(sluice.url("/f")).header("x-k", format!("key-{next}")).body(empty()).unwrap();
        send(&client, req).await;
        next += 1;
    }
    eventually("the full table to be swept", Duration::from_secs(3), async || limit.keys() == 0).await;
    assert!(limit.evicted() >= 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn advertise_always_tells_admitted_requests_what_is_left() {
    let upstream = Upstream::start().await;
    let routes = "quota: { rate: 600, per: 1m, burst: 50, advertise: always }\nroutes:\n  - name: paced\n    match: { path: /paced }\n    quota: { rate: 60, per: 1m, burst: 3, advertise: always }\n  - name: quiet\n    match: { path: /quiet }\n    quota: { rate: 60, per: 1m, burst: 3 }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (response, _) = get(&client, &sluice.url("/paced")).await;
        assert_eq!(response.status(), 200);
        let h = response.headers();
        assert_eq!(h["ratelimit-policy"], "\"paced\";q=3;w=3, \"service\";q=50;w=5");
        seen.push(h["ratelimit"].to_str().unwrap().to_string());
    }
    assert_eq!(
        seen,
        [
            "\"paced\";r=2;t=1, \"service\";r=49;t=1",
            "\"paced\";r=1;t=2, \"service\";r=48;t=1",
            "\"paced\";r=0;t=3, \"service\";r=47;t=1",
        ]
    );
    // The refusal carries its own fields, as before.
    let (refused, _) = get(&client, &sluice.url("/paced")).await;
    assert_eq!(
        (refused.status().as_u16(), refused.headers()["ratelimit"].to_str().unwrap()),
        (429, "\"paced\";r=0;t=1")
    );
    // A quota that does not advertise adds nothing to a 200; the service-wide one still does.
    let (quiet, _) = get(&client, &sluice.url("/quiet")).await;
    assert_eq!(quiet.status(), 200);
    assert_eq!(quiet.headers()["ratelimit-policy"], "\"service\";q=50;w=5");
    // h2c clients get them too.
    let (h2, _) = get(&h2_client(), &sluice.url("/quiet")).await;
    assert_eq!((h2.version(), h2.status().as_u16()), (http::Version::HTTP_2, 200));
    assert_eq!(h2.headers()["ratelimit"], "\"service\";r=45;t=1");
    // Without any advertising quota, no fields at all.
    let plain = Sluice::start(
        &upstream,
        "routes:\n  - name: r\n    match: { path: \"/*\" }\n    quota: { rate: 60, per: 1m, burst: 3 }\n",
    )
    .await;
    let (response, _) = get(&client, &plain.url("/x")).await;
    assert!(!response.headers().contains_key("ratelimit") && !response.headers().contains_key("ratelimit-policy"));
}

/// A key that spent its burst is still limited after a drain and a restart, and after a
/// `kill -9` once a checkpoint holds it; a changed quota starts afresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_spent_burst_stays_spent_across_restarts() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("quota-restart");
    let path = dir.join("sluice.yaml");
    let routes =
        "routes:\n  - name: a\n    match: { path: /a }\n    quota: { rate: 1, per: 1h, burst: 2, key: client_ip }\n";
    let text = config_text(upstream.addr, routes);
    std::fs::write(&path, &text).unwrap();
    let state = sluice::config::load(&path).unwrap().admin.state_dir;
    let status = async |process: &Process| get(&client(), &format!("http://{}/a", process.addr)).await.0.status();

    let mut process = Process::spawn(&path);
    assert_eq!(status(&process).await, 200);
    // One of two left; a drain checkpoints it.
    process.signal("TERM");
    assert_eq!(process.wait(Duration::from_secs(10)), Some(0));
    drop(process);
    let mut process = Process::spawn(&path);
    assert_eq!(status(&process).await, 200, "the second of the burst");
    assert_eq!(status(&process).await, 429, "a restart granted a fresh burst");

    // kill -9 once a periodic checkpoint (every 10 s) has the spent burst.
    let before = std::fs::read_to_string(state.join("quota.json")).unwrap();
    eventually("a periodic checkpoint", Duration::from_secs(15), async || {
        std::fs::read_to_string(state.join("quota.json")).is_ok_and(|t| t != before)
    })
    .await;
    process.signal("KILL");
    process.wait(Duration::from_secs(5));
    drop(process);
    let process = Process::spawn(&path);
    assert_eq!(status(&process).await, 429, "kill -9 granted a fresh burst");

    // Another burst is another quota: its state starts empty.
    drop(process);
    std::fs::write(&path, text.replace("burst: 2", "burst: 3")).unwrap();
    let process = Process::spawn(&path);
    assert_eq!(status(&process).await, 200, "a changed quota kept the old one's state");
}
