//! Config churn under load: file reloads (each a SIGHUP) and control-API pushes, one after
//! another, while wrk (HTTP/1.1, 100 connections) and h2load (h2c) load the real binary,
//! a fresh connection asks every 100 ms, and a final SIGTERM with `limits.drain_delay`
//! comes before the load ends. Nothing may fail: no socket error, no non-2xx answer, no
//! refused connection, and an unchanged quota keeps its state through every change.
//! (wrk and h2load: Debian's, installed by .ci/test.)

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use support::*;

const TOKEN: &str = "churn-admin-token";
const CHANGES: usize = 100;
const LOAD: Duration = Duration::from_secs(20);

/// Route a's quota never refuses: a second's worth of burst. (With a millisecond's worth,
/// as in the benches' single-worker configs, it refused 3 in 200,000 here: a worker that is
/// descheduled between reading the clock and taking the quota finds the other worker's
/// newer arrival times ahead of its own by more than the burst.)
fn config(upstream: std::net::SocketAddr, timeout_ms: usize) -> String {
    config_text(
        upstream,
        &format!(
            "  tokens:\n    - {{ name: cp, role: admin, token: {TOKEN} }}\nlimits: {{ drain_delay: 5s }}\nroutes:\n  \
             - name: a\n    match: {{ path: /a }}\n    quota: {{ rate: 1000000, per: 1s, burst: 1000000, key: client_ip }}\n  \
             - name: b\n    match: {{ path: /b }}\n    quota: {{ rate: 1, per: 1h, burst: 1 }}\n  \
             - name: c\n    match: {{ path: /c }}\n    timeout: {}ms\n",
            1000 + timeout_ms
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn config_churn_under_load_and_a_drain_lose_nothing() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("churn");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config(upstream.addr, 0)).unwrap();
    let mut process = Process::spawn(&path);
    let addr = process.addr;
    let url = |p: &str| format!("http://{addr}{p}");
    // Route b's quota is spent, and must stay spent: no change touches it.
    assert_eq!(get(&client(), &url("/b")).await.0.status(), 200);
    assert_eq!(get(&client(), &url("/b")).await.0.status(), 429);

    let started = Instant::now();
    let seconds = LOAD.as_secs().to_string();
    let wrk = Command::new("wrk")
        .args(["-t1", "-c100", "-d", &format!("{seconds}s"), &url("/a")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk (.ci/test installs it)");
    let h2load = Command::new("h2load")
        .args(["-c10", "-m10", "-D", &seconds, &url("/a")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("h2load (.ci/test installs nghttp2-client)");
    // A fresh connection every 100 ms, for as long as the load lasts.
    let asker = tokio::spawn(async move {
        let (mut asked, mut failed) = (0, Vec::new());
        while started.elapsed() < LOAD {
            let req = Request::get(format!("http://{addr}/a")).header("connection", "close");
            match client().request(req.body(empty()).unwrap()).await {
                Ok(response) if response.status() == 200 => {}
                Ok(response) => failed.push(format!("{}", response.status())),
                Err(e) => failed.push(format!("{e:?}")),
            }
            asked += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (asked, failed)
    });

    let version = async || process_version(&process).await;
    for i in 1..=CHANGES {
        // The file: route c's timeout changes; SIGHUP applies it (the watcher may first).
        let before = version().await;
        std::fs::write(&path, config(upstream.addr, i)).unwrap();
        process.signal("HUP");
        eventually("the file's change to be live", Duration::from_secs(5), async || version().await > before).await;
        // The control API: route a's quota, pushed over it.
        let body =
            format!("{{\"rate\": {}, \"per\": \"1s\", \"burst\": 1000000, \"key\": \"client_ip\"}}", 1_000_000 + i);
        let req = Request::put(process.admin_url("/v1/routes/a/quota"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(full(body))
            .unwrap();
        let (response, text) = send(&client(), req).await;
        assert_eq!(response.status(), 200, "push {i}: {}", String::from_utf8_lossy(&text));
    }
    let churned = started.elapsed();
    assert!(churned < LOAD - Duration::from_secs(3), "{CHANGES} changes took {churned:?}: longer than the load");
    assert_eq!(get(&client(), &url("/b")).await.0.status(), 429, "route b's spent quota was reset by a change");

    // SIGTERM while the load still runs: the drain delay outlasts it.
    tokio::time::sleep_until((started + LOAD - Duration::from_secs(2)).into()).await;
    let (_, body) = get(&client(), &process.admin_url("/metrics")).await;
    let answered: Vec<String> = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{") && l.contains("route=\"a\"") && !l.ends_with(" 0"))
        .map(String::from)
        .collect();
    process.signal("TERM");
    let wrk = tokio::task::spawn_blocking(move || wrk.wait_with_output().unwrap()).await.unwrap();
    let h2load = tokio::task::spawn_blocking(move || h2load.wait_with_output().unwrap()).await.unwrap();
    let (asked, failed) = asker.await.unwrap();
    let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(20))).await.unwrap();

    let wrk = String::from_utf8_lossy(&wrk.stdout).into_owned();
    eprintln!("wrk:\n{wrk}");
    assert!(!wrk.contains("Socket errors") && !wrk.contains("Non-2xx"), "wrk saw failures:\n{wrk}\n{answered:#?}");
    let requests: u64 =
        wrk.lines().find_map(|l| l.trim().split_once(" requests in").map(|(n, _)| n.parse().unwrap())).unwrap();
    assert!(requests > 10_000, "wrk sent only {requests}");
    let h2load = String::from_utf8_lossy(&h2load.stdout).into_owned();
    let summary = h2load.lines().find(|l| l.starts_with("requests:")).unwrap_or_default().to_string();
    eprintln!("h2load: {summary}");
    assert!(summary.contains(" 0 failed, 0 errored, 0 timeout"), "h2load saw failures:\n{h2load}");
    assert!(failed.is_empty(), "{} of {asked} fresh connections failed: {failed:?}", failed.len());
    // One every 100 ms plus its own time under the load: about 140-200 in 20 s.
    assert!(asked > 100, "only {asked} fresh connections asked");
    assert_eq!(code, Some(0));
}

/// The config version the process serves.
async fn process_version(process: &Process) -> f64 {
    let (_, body) = get(&client(), &process.admin_url("/metrics")).await;
    Metrics(String::from_utf8_lossy(&body).into_owned()).value("sluice_config_version", "")
}
