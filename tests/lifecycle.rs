//! A process's life under load. Config churn: file reloads (each a SIGHUP), control-API
//! pushes and binary upgrades (SIGUSR2), one after another, while wrk (HTTP/1.1, 100
//! connections) and h2load (h2c) load the real binary, a fresh connection asks every
//! 100 ms, and a final SIGTERM with `limits.drain_delay` comes before the load ends.
//! Nothing may fail: no socket error, no non-2xx answer, no refused connection, and an
//! unchanged quota keeps its state through every change and upgrade. (wrk and h2load:
//! Debian's, installed by .ci/test.) Then upgrades alone: what they hand over, and what a
//! failed one leaves.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use support::*;

const TOKEN: &str = "churn-admin-token";
const CHANGES: usize = 100;
/// h2load's run: the first half of the changes, before the upgrades.
const H2LOAD: Duration = Duration::from_secs(9);
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
    // h2load for the reloads and pushes: it never opens a new connection after a GOAWAY,
    // and counts each request it can no longer submit on one as failed, so the upgrades'
    // h2c load comes from hyper's client, which does as real clients do (h2c_load).
    let mut h2load = Some(
        Command::new("h2load")
            .args(["-c10", "-m10", "-D", &H2LOAD.as_secs().to_string(), &url("/a")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("h2load (.ci/test installs nghttp2-client)"),
    );
    let h2c = tokio::spawn(h2c_load(addr, started + LOAD));
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
    let mut upgrades = Vec::new();
    let mut h2load_said = Vec::new();
    for i in 1..=CHANGES {
        if i == CHANGES / 2 + 1 {
            assert!(started.elapsed() < H2LOAD, "half the changes took longer than h2load's run");
            let run = h2load.take().unwrap();
            h2load_said = tokio::task::spawn_blocking(move || run.wait_with_output().unwrap()).await.unwrap().stdout;
        }
        // The second half: 20 upgrades among the changes.
        if i > CHANGES / 2 && i % 5 % 3 == 0 {
            let (mark, asked) = (process.log_mark(), Instant::now());
            process.upgrade().await;
            let done = process.logged(mark, "upgrade: the new process serves; draining", Duration::from_secs(5)).await;
            upgrades.push((done["took_ms"].as_u64().unwrap(), asked.elapsed()));
        }
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
    let took: Vec<u64> = upgrades.iter().map(|(ms, _)| *ms).collect();
    eprintln!("{} upgrades took {took:?} ms (SIGUSR2 to the new process serving)", upgrades.len());
    assert!(churned < LOAD - Duration::from_secs(3), "{CHANGES} changes took {churned:?}: longer than the load");
    assert_eq!(upgrades.len(), 20);
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
    let (asked, failed) = asker.await.unwrap();
    let (h2c_answered, h2c_again, h2c_failed) = h2c.await.unwrap();
    let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(20))).await.unwrap();

    let wrk = String::from_utf8_lossy(&wrk.stdout).into_owned();
    eprintln!("wrk:\n{wrk}");
    assert!(!wrk.contains("Socket errors") && !wrk.contains("Non-2xx"), "wrk saw failures:\n{wrk}\n{answered:#?}");
    let requests: u64 =
        wrk.lines().find_map(|l| l.trim().split_once(" requests in").map(|(n, _)| n.parse().unwrap())).unwrap();
    assert!(requests > 10_000, "wrk sent only {requests}");
    let h2load = String::from_utf8_lossy(&h2load_said).into_owned();
    let summary = h2load.lines().find(|l| l.starts_with("requests:")).unwrap_or_default().to_string();
    eprintln!("h2load: {summary}");
    assert!(summary.contains(" 0 failed, 0 errored, 0 timeout"), "h2load saw failures:\n{h2load}");
    assert!(failed.is_empty(), "{} of {asked} fresh connections failed: {failed:?}", failed.len());
    eprintln!(
        "h2c (hyper): {h2c_answered} answered, {h2c_again} refused before they were sent and sent again, {} failed",
        h2c_failed.len()
    );
    assert!(
        h2c_failed.is_empty(),
        "{} h2c requests failed: {:?}",
        h2c_failed.len(),
        &h2c_failed[..h2c_failed.len().min(5)]
    );
    assert!(h2c_answered > 10_000, "only {h2c_answered} h2c requests answered");
    // One every 100 ms plus its own time under the load: about 140-200 in 20 s.
    assert!(asked > 100, "only {asked} fresh connections asked");
    assert_eq!(code, Some(0));
}

/// The config version the process serves.
async fn process_version(process: &Process) -> f64 {
    let (_, body) = get(&client(), &process.admin_url("/metrics")).await;
    Metrics(String::from_utf8_lossy(&body).into_owned()).value("sluice_config_version", "")
}

const UPGRADE_ROUTES: &str = "routes:\n  \
    - name: spent\n    match: { path: /spent }\n    quota: { rate: 1, per: 1h, burst: 2, key: client_ip }\n  \
    - name: other\n    match: { path: /other }\n  \
    - name: api\n    match: { path: \"/*\" }\n    sla: { availability: 99.9% }\n";

/// The `total` and `good` counts of route `api`'s availability SLI, from `/v1/status`.
async fn availability(process: &Process) -> (u64, u64) {
    let status = process.admin_json("/v1/status", TOKEN).await;
    let api = status["routes"].as_array().unwrap().iter().find(|r| r["name"] == "api").unwrap().clone();
    let sli = &api["sla"]["availability"];
    (sli["total"].as_u64().unwrap(), sli["good"].as_u64().unwrap())
}

async fn push_quota(process: &Process, route: &str, rate: usize) -> (http::Response<()>, String) {
    let body = format!("{{\"rate\": {rate}, \"per\": \"1s\", \"burst\": 1000000, \"key\": \"client_ip\"}}");
    let req = Request::put(process.admin_url(&format!("/v1/routes/{route}/quota")))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(body))
        .unwrap();
    let (response, text) = send(&client(), req).await;
    (response, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_hands_over_the_sockets_the_state_and_finishes_what_is_in_flight() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("upgrade");
    let path = dir.join("sluice.yaml");
    let tokens = format!("  tokens:\n    - {{ name: cp, role: admin, token: {TOKEN} }}\n");
    std::fs::write(&path, config_text(upstream.addr, &format!("{tokens}{UPGRADE_ROUTES}"))).unwrap();
    // systemd's notify socket, as a unit of Type=notify gives it.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let said = || {
        let mut buf = [0; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(["--log-format", "json", "run", "--config"]).arg(&path).env("NOTIFY_SOCKET", &notify_path);
    let mut process = Process::spawn_command(command);
    assert_eq!(said(), "READY=1");
    let old = process.pid();
    let addr = process.addr;
    let url = move |p: &str| format!("http://{addr}{p}");

    // State to hand over: a spent burst, SLI counts, a config version pushed to 2.
    for expected in [200, 200, 429] {
        assert_eq!(get(&client(), &url("/spent")).await.0.status(), expected);
    }
    for status in [200, 200, 200, 503] {
        assert_eq!(get(&client(), &url(&format!("/x?status={status}"))).await.0.status(), status);
    }
    assert_eq!(push_quota(&process, "other", 1000).await.0.status(), 200);
    eventually("the counts in the windows", Duration::from_secs(5), async || availability(&process).await == (4, 3))
        .await;
    // A request in flight across the upgrade, on a connection of the old process.
    let slow = url("/x?delay=2000");
    let in_flight = tokio::spawn(async move { get(&client(), &slow).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mark = process.log_mark();
    let new = process.upgrade().await;
    assert_ne!(new, old);
    assert_eq!(said(), format!("MAINPID={new}\nREADY=1"), "systemd is told the new main pid");
    let upgraded = process.logged(mark, "upgrade: the new process serves; draining", Duration::from_secs(1)).await;
    eprintln!("upgrade took {} ms", upgraded["took_ms"]);

    // The new process serves on the same sockets, with the old one's state.
    assert_eq!(get(&client(), &url("/spent")).await.0.status(), 429, "an upgrade granted a fresh burst");
    let status = process.admin_json("/v1/status", TOKEN).await;
    let spent = status["routes"].as_array().unwrap().iter().find(|r| r["name"] == "spent").unwrap().clone();
    let top = spent["rate_quota"]["top_offenders"].clone();
    assert_eq!(top[0]["key"], "127.0.0.1", "the heaviest keys were lost: {spent}");
    assert_eq!(process_version(&process).await, 2.0, "the same config keeps its version");
    let (total, good) = availability(&process).await;
    assert!(total >= 4 && good >= 3, "the SLI counts were lost: {total} total, {good} good");
    assert_eq!(get(&client(), &process.admin_url("/readyz")).await.0.status(), 200);
    // The old one finishes its request, then exits.
    let (response, _) = in_flight.await.unwrap();
    assert_eq!(response.status(), 200, "the request in flight across the upgrade");
    let code = tokio::task::spawn_blocking(move || {
        let code = process.child.wait().unwrap().code();
        (process, code)
    });
    let (process, code) = code.await.unwrap();
    assert_eq!(code, Some(0), "the old process drained and exited");
    assert!(alive(new));
    assert_eq!(get(&client(), &url("/other")).await.0.status(), 200, "the new process serves alone");
    assert_eq!(push_quota(&process, "other", 2000).await.0.status(), 200, "the new process takes changes");
}

/// Puts a script that never serves where `exe` was and sends SIGUSR2: the log's mark
/// before, and the new process's pid.
async fn upgrade_to_a_binary_that_hangs(process: &Process, exe: &std::path::Path) -> (usize, u32) {
    replace_binary(exe, "#!/bin/sh\nexec sleep 30\n");
    let mark = process.log_mark();
    process.signal("USR2");
    let starting = process.logged(mark, "upgrade: the new process is starting", Duration::from_secs(5)).await;
    (mark, starting["pid"].as_u64().unwrap() as u32)
}

/// A script where the sluice binary was: an upgrade starts it instead.
fn replace_binary(exe: &std::path::Path, script: &str) {
    let next = exe.with_extension("next");
    std::fs::write(&next, script).unwrap();
    std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&next, exe).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_that_fails_leaves_the_old_process_serving_and_taking_changes() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("upgrade-fails");
    let path = dir.join("sluice.yaml");
    let good = config_text(
        upstream.addr,
        &format!("  tokens:\n    - {{ name: cp, role: admin, token: {TOKEN} }}\nlimits: {{ upgrade_timeout: 1s }}\n{UPGRADE_ROUTES}"),
    );
    std::fs::write(&path, &good).unwrap();
    // The binary at a path of the test's own, so that it can be replaced.
    let exe = dir.join("sluice");
    std::fs::copy(env!("CARGO_BIN_EXE_sluice"), &exe).unwrap();
    let mut command = Command::new(&exe);
    command.args(["--log-format", "json", "run", "--config"]).arg(&path);
    let mut process = Process::spawn_command(command);
    let old = process.pid();
    let serving = async || get(&client(), &format!("http://{}/other", process.addr)).await.0.status() == 200;
    let failed = async |mark| {
        let fields = process.logged(mark, "upgrade failed: this process serves on", Duration::from_secs(10)).await;
        fields["error"].as_str().unwrap().to_string()
    };

    // A new config that is bad: the new process says why, and exits.
    std::fs::write(&path, good.replace("burst: 2", "burst: -2")).unwrap();
    let mark = process.log_mark();
    process.signal("USR2");
    let why = failed(mark).await;
    assert!(why.contains("refused to take over") && why.contains("routes[0].quota.burst"), "{why}");
    std::fs::write(&path, &good).unwrap();
    assert!(serving().await);
    assert_eq!(push_quota(&process, "other", 10).await.0.status(), 200, "changes are taken again");

    // A binary that exits at once.
    replace_binary(&exe, "#!/bin/sh\nexit 3\n");
    let mark = process.log_mark();
    process.signal("USR2");
    let why = failed(mark).await;
    assert!(why.contains("exited (exit status: 3)"), "{why}");
    assert!(serving().await);

    // A binary that never serves: killed at upgrade_timeout. Meanwhile changes wait (503
    // with Retry-After) and a second SIGUSR2 is ignored.
    let (mark, hung) = upgrade_to_a_binary_that_hangs(&process, &exe).await;
    process.signal("USR2");
    process.logged(mark, "SIGUSR2: an upgrade is under way already; this one is ignored", Duration::from_secs(5)).await;
    let (response, text) = push_quota(&process, "other", 20).await;
    assert_eq!(response.status(), 503, "{text}");
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(serving().await, "the old process serves during the upgrade");
    let why = failed(mark).await;
    assert!(why.contains("not serving within 1s"), "{why}");
    assert!(!alive(hung), "the new process that never served was not killed");
    assert!(serving().await);
    assert_eq!(push_quota(&process, "other", 30).await.0.status(), 200);
    assert_eq!(process.pid(), old);

    // The real binary again: the upgrade goes through.
    std::fs::copy(env!("CARGO_BIN_EXE_sluice"), dir.join("sluice.real")).unwrap();
    std::fs::rename(dir.join("sluice.real"), &exe).unwrap();
    assert_ne!(process.upgrade().await, old);
    assert!(serving().await);

    // A SIGTERM during an upgrade ends it: the new process is killed, the old one drains.
    let (_, hung) = upgrade_to_a_binary_that_hangs(&process, &exe).await;
    process.signal("TERM");
    assert_eq!(tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(10))).await.unwrap(), Some(0));
    eventually("the new process to be killed", Duration::from_secs(5), async || !alive(hung)).await;
}

/// h2c load as real clients make it: hyper's client, which opens a new connection after a
/// GOAWAY, and sends again a request that was never sent: the `GoAway` error of a stream
/// the server never took (RFC 9113 §8.7 makes it safe to retry, and gRPC's clients do so
/// on their own), and hyper-util's `Canceled` "connection closed", a request still queued
/// for a connection that closed (a fresh one whose first frame was the old process's
/// GOAWAY) before it became a stream. hyper-util re-sends the latter itself on a reused
/// connection, not on a fresh one, and leaves both to its caller. 10 connections, 10
/// requests in flight on each, until `end`; how many were answered 200, how many sent
/// again, and the failures.
async fn h2c_load(addr: std::net::SocketAddr, end: Instant) -> (u64, u64, Vec<String>) {
    let tasks: Vec<_> = (0..10)
        .flat_map(|_| {
            let client = h2_client();
            (0..10).map(move |_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let (mut answered, mut again, mut failed) = (0, 0, Vec::new());
                    let mut tries = 0;
                    while Instant::now() < end {
                        let req = Request::get(format!("http://{addr}/a")).body(empty()).unwrap();
                        match client.request(req).await {
                            Ok(response) if response.status() == 200 => {
                                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                                answered += 1;
                                tries = 0;
                            }
                            Ok(response) => failed.push(format!("{}", response.status())),
                            Err(e) => {
                                let refused = format!("{e:?}");
                                let never_sent = refused.contains("GoAway(") && refused.contains("NO_ERROR, Remote")
                                    || refused.contains("Canceled, \"connection closed\"");
                                if never_sent && tries < 3 {
                                    again += 1;
                                    tries += 1;
                                } else {
                                    failed.push(refused);
                                }
                            }
                        }
                    }
                    (answered, again, failed)
                })
            })
        })
        .collect();
    let (mut answered, mut again, mut failed) = (0, 0, Vec::new());
    for task in tasks {
        let (a, r, f) = task.await.unwrap();
        answered += a;
        again += r;
        failed.extend(f);
    }
    (answered, again, failed)
}
