//! SLA figures that mean what they say: windows that survive a restart (`kill -9` too, up
//! to one checkpoint period), and no breach from too few events.

mod support;

use std::time::Duration;

use support::*;

const TOKENS: &str = "  tokens:\n    - { name: graf, role: viewer, token: sla-viewer-token }\n";
const ROUTES: &str = "routes:\n  - name: api\n    match: { path: \"/*\" }\n    sla: { latency: { threshold: 100ms, objective: 99% }, availability: 99.9% }\n";

/// The `total` and `good` counts of route `api`'s availability SLI, from `/v1/status`.
async fn availability(process: &Process) -> (u64, u64) {
    let status = process.admin_json("/v1/status", "sla-viewer-token").await;
    let sli = &status["routes"][0]["sla"]["availability"];
    (sli["total"].as_u64().unwrap(), sli["good"].as_u64().unwrap())
}

async fn traffic(process: &Process, ok: usize, failed: usize) {
    let client = client();
    for i in 0..ok + failed {
        let status = if i < failed { 503 } else { 200 };
        let url = format!("http://{}/x?status={status}", process.addr);
        assert_eq!(get(&client, &url).await.0.status(), status);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sli_counts_survive_kill_9_and_a_restart() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("sla-restart");
    let path = dir.join("sluice.yaml");
    let text = config_text(upstream.addr, &format!("{TOKENS}{ROUTES}"));
    std::fs::write(&path, &text).unwrap();
    let state = sluice::config::load(&path).unwrap().admin.state_dir;
    let mut process = Process::spawn(&path);
    traffic(&process, 40, 10).await;
    eventually("the counts in the windows", Duration::from_secs(5), async || availability(&process).await == (50, 40))
        .await;
    // A checkpoint holding them (every 10 s), then kill -9: they come back.
    eventually("a checkpoint with the counts", Duration::from_secs(15), async || {
        std::fs::read_to_string(state.join("sla.json")).is_ok_and(|t| t.contains("[[") && t.contains(",40,50]"))
    })
    .await;
    process.signal("KILL");
    process.wait(Duration::from_secs(5));
    drop(process);
    let mut process = Process::spawn(&path);
    assert_eq!(availability(&process).await, (50, 40), "restored after kill -9");
    // A drain checkpoints what came since: a SIGTERM and a start lose nothing.
    traffic(&process, 5, 0).await;
    process.signal("TERM");
    assert_eq!(process.wait(Duration::from_secs(10)), Some(0));
    drop(process);
    let process = Process::spawn(&path);
    assert_eq!(availability(&process).await, (55, 45), "restored after a drain");
    // A changed SLA starts afresh.
    drop(process);
    std::fs::write(&path, text.replace("availability: 99.9% }", "availability: 99.9%, window: 7d }")).unwrap();
    let process = Process::spawn(&path);
    assert_eq!(availability(&process).await, (0, 0), "a 7-day window is not the 30-day one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_process_does_not_page_on_one_error_in_thirty() {
    let upstream = Upstream::start().await;
    let routes = "routes:\n  - name: api\n    match: { path: \"/*\" }\n    sla: { availability: 99.9% }\n";
    let sluice = Sluice::start(&upstream, routes).await;
    let mut stream = sluice.running().events().subscribe();
    let client = client();
    for i in 0..30 {
        let url = sluice.url(if i == 0 { "/x?status=503" } else { "/x" });
        get(&client, &url).await;
    }
    sluice.running().tick();
    let m = sluice.scrape().await;
    let burn = m.value("sluice_sla_burn_rate", "route=\"api\",sli=\"availability\",window=\"1h\"");
    assert!(burn > 14.4, "the burn rate is over the page threshold: {burn}");
    assert!(stream.try_recv().is_err(), "no sla_breached from 30 events (min_events 100)");
}
