//! Hot reload: a changed file is applied, a bad one refused while the old config keeps
//! serving, and quota state survives for quotas that did not change.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn write(path: &Path, upstream: std::net::SocketAddr, routes: &str) {
    std::fs::write(path, config_text(upstream, routes)).unwrap();
}

const TIGHT: &str = "routes:\n  - name: r\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 1 }\n";
const LOOSE: &str = "routes:\n  - name: r\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 100 }\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_is_applied_and_a_bad_one_refused() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("reload");
    let path = dir.join("sluice.yaml");
    write(&path, upstream.addr, TIGHT);
    let sluice = Sluice::start_with_file(path.clone()).await;
    let client = client();
    assert_eq!(get(&client, &sluice.url("/a")).await.0.status(), 200);
    assert_eq!(get(&client, &sluice.url("/a")).await.0.status(), 429);

    // A bad file: refused with its place; the tight quota still holds.
    std::fs::write(&path, config_text(upstream.addr, "routes:\n  - name: r\n    match: { path: nope }\n")).unwrap();
    let err = sluice.running().reload().err().expect("a bad config is refused");
    assert!(err.to_string().contains("sluice.yaml:9:20: routes[0].match.path"), "{err}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // the watcher has seen it too
    assert_eq!(sluice.running().snapshot().version, 1);
    assert_eq!(get(&client, &sluice.url("/a")).await.0.status(), 429);

    // A good file: picked up by the watcher, no signal needed.
    write(&path, upstream.addr, LOOSE);
    eventually("the loose quota", Duration::from_secs(5), async || sluice.running().snapshot().version > 1).await;
    assert_eq!(get(&client, &sluice.url("/a")).await.0.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_symlink_swap_is_seen() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("configmap");
    // The layout kubelet makes: file -> ..data/file, ..data -> a versioned directory.
    for (version, routes) in [("v1", TIGHT), ("v2", LOOSE)] {
        std::fs::create_dir(dir.join(version)).unwrap();
        write(&dir.join(version).join("sluice.yaml"), upstream.addr, routes);
    }
    std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sluice.yaml", dir.join("sluice.yaml")).unwrap();
    let sluice = Sluice::start_with_file(dir.join("sluice.yaml")).await;
    let client = client();
    get(&client, &sluice.url("/a")).await;
    assert_eq!(get(&client, &sluice.url("/a")).await.0.status(), 429);
    std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    eventually("the swapped config", Duration::from_secs(5), async || sluice.running().snapshot().version > 1).await;
    assert_eq!(get(&client, &sluice.url("/a")).await.0.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_quotas_keep_their_state_across_a_reload() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("keep");
    let path = dir.join("sluice.yaml");
    let before = "routes:\n  - name: kept\n    match: { path: /kept }\n    quota: { rate: 1, per: 1h, burst: 3 }\n    concurrency: { max: 1 }\n  - name: other\n    match: { path: \"/*\" }\n";
    write(&path, upstream.addr, before);
    let sluice = Sluice::start_with_file(path.clone()).await;
    let client = client();
    // Spend the burst, and hold the one concurrency slot with a slow request.
    assert_eq!(get(&client, &sluice.url("/kept")).await.0.status(), 200);
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), sluice.url("/kept?delay=1500"));
        async move { get(&client, &url).await.0.status() }
    });
    eventually("the slow request", Duration::from_secs(5), async || upstream.in_flight.load(Ordering::SeqCst) == 1)
        .await;

    // Change another route and the kept route's timeout; its quotas stay as they were.
    let after = "routes:\n  - name: kept\n    match: { path: /kept }\n    timeout: 10s\n    quota: { rate: 1, per: 1h, burst: 3 }\n    concurrency: { max: 1 }\n  - name: other\n    match: { path: \"/*\" }\n    quota: { rate: 5, per: 1s }\n";
    write(&path, upstream.addr, after);
    sluice.running().reload().unwrap();
    assert_eq!(
        sluice.running().snapshot().route("other").unwrap().quotas.rate.as_ref().unwrap().limit.spec().burst.get(),
        5
    );
    // The in-flight request still holds its slot: the third of the burst is refused by
    // concurrency (having spent its rate token).
    let (refused, _) = get(&client, &sluice.url("/kept")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["ratelimit-policy"], "\"kept-concurrency\";q=1;w=1");
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished on its snapshot");
    // The slot is free, but the burst of 3 is spent: the reload handed out no fresh one.
    let (refused, _) = get(&client, &sluice.url("/kept")).await;
    assert_eq!(refused.headers()["ratelimit-policy"], "\"kept\";q=3;w=10800");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_drops_no_connection_and_in_flight_requests_keep_their_config() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("inflight");
    let path = dir.join("sluice.yaml");
    write(&path, upstream.addr, "routes:\n  - name: r\n    match: { path: \"/*\" }\n    timeout: 5s\n");
    let sluice = Sluice::start_with_file(path.clone()).await;
    let client = client(); // one pooled keep-alive connection throughout
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), sluice.url("/slow?delay=800"));
        async move { get(&client, &url).await.0.status() }
    });
    eventually("the slow request", Duration::from_secs(5), async || upstream.in_flight.load(Ordering::SeqCst) == 1)
        .await;
    write(&path, upstream.addr, "routes:\n  - name: r\n    match: { path: \"/*\" }\n    timeout: 200ms\n");
    sluice.running().reload().unwrap();
    assert_eq!(slow.await.unwrap(), 200, "started under a 5s timeout, finished under it");
    assert_eq!(get(&client, &sluice.url("/slow?delay=800")).await.0.status(), 504);
    assert_eq!(get(&client, &sluice.url("/fast")).await.0.status(), 200);
}

const TOKENS: &str = "  tokens:\n    - { name: cp, role: admin, token: reload-admin-token }\n";

/// `GET` on the admin listener of `process` with the admin token: the JSON body.
async fn admin_get(process: &Process, path: &str) -> serde_json::Value {
    process.admin_json(path, "reload-admin-token").await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_version_moves_only_when_the_config_changes() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("versions");
    let path = dir.join("sluice.yaml");
    let text = config_text(upstream.addr, &format!("{TOKENS}{TIGHT}"));
    std::fs::write(&path, &text).unwrap();
    let process = Process::spawn(&path);
    assert_eq!(admin_get(&process, "/v1/config").await["version"], 1);
    // A SIGHUP, and a touch the watcher sees, with the file as it was: still version 1.
    // (The rewrite waits for the signal's read: a read in the middle of a write would see
    // a cut file, and be refused.)
    process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, &text).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(admin_get(&process, "/v1/config").await["version"], 1);
    // One edit, then a SIGHUP at once: the signal and the watcher both see it, and it makes
    // exactly one new version.
    std::fs::write(&path, text.replace("burst: 1 ", "burst: 2 ")).unwrap();
    process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let config = admin_get(&process, "/v1/config").await;
    assert_eq!((config["version"].as_u64(), config["routes"][0]["quota"]["burst"].as_u64()), (Some(2), Some(2)));
    // Counted: one success in all (the signal's or the watcher's, whichever came first),
    // and the no-op SIGHUP as unchanged.
    let metrics = String::from_utf8(get(&client(), &process.admin_url("/metrics")).await.1.to_vec()).unwrap();
    let count = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    let successes = ["file", "signal"]
        .map(|source| count(&format!("sluice_config_reloads_total{{result=\"success\",source=\"{source}\"}} ")));
    assert_eq!(successes.iter().sum::<f64>(), 1.0, "{metrics}");
    assert!(count("sluice_config_reloads_total{result=\"unchanged\",source=\"signal\"} ") >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_change_that_drops_pushes_says_so() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("dropped");
    let path = dir.join("sluice.yaml");
    let text = config_text(upstream.addr, &format!("{TOKENS}{TIGHT}"));
    std::fs::write(&path, &text).unwrap();
    let process = Process::spawn(&path);
    let push = http::Request::put(process.admin_url("/v1/routes/r/quota"))
        .header("authorization", "Bearer reload-admin-token")
        .body(full(r#"{"rate": 100, "per": "1m"}"#))
        .unwrap();
    assert_eq!(send(&client(), push).await.0.status(), 200);
    assert_eq!(admin_get(&process, "/v1/config").await["version"], 2);

    // The file changes (a new ConfigMap): it wins, and the push it drops is named.
    std::fs::write(&path, text.replace("burst: 1 ", "burst: 4 ")).unwrap();
    eventually("the new file", Duration::from_secs(5), async || {
        admin_get(&process, "/v1/config").await["version"] == 3
    })
    .await;
    let events = admin_get(&process, "/v1/events/recent").await;
    let applied =
        events["events"].as_array().unwrap().iter().rev().find(|e| e["type"] == "config_applied").unwrap().clone();
    assert_eq!(applied["trigger"], "file");
    assert_eq!(
        applied["dropped"],
        serde_json::json!([{ "principal": "cp", "action": "PUT /v1/routes/r/quota", "version": 2 }])
    );
    let warned = process.log().iter().any(|l| {
        l.contains("\"level\":\"WARN\"")
            && l.contains("PUT /v1/routes/r/quota by cp (version 2)")
            && l.contains("dropped")
    });
    assert!(warned, "a warning names the dropped push: {:?}", process.log());
    let records = admin_get(&process, "/v1/audit").await["records"].as_array().unwrap().clone();
    let last = records.last().unwrap();
    assert_eq!((last["principal"].as_str(), last["action"].as_str()), (Some("file"), Some("reload (file)")));
    assert_eq!((last["version_before"].as_u64(), last["version_after"].as_u64()), (Some(2), Some(3)));
    assert_eq!(last["change"]["dropped"][0]["action"], "PUT /v1/routes/r/quota");
    let file_sha = sluice::config::overlay::fingerprint(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(last["change"]["file_sha256"], file_sha.as_str());
}
