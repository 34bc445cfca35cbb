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
