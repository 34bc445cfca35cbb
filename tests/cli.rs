//! The binary: `validate`, `run` (exit codes, SIGHUP, SIGTERM drain), `demo`, and a
//! 1 GiB upload through the real process in bounded memory.

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::*;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn validate_says_ok_or_lists_every_error_with_its_place() {
    let ok = sluice().args(["validate", "--config", "config/sluice.yaml"]).output().unwrap();
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok");

    let dir = temp_dir("validate");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "service: s\nlisten: nowhere\nupstream: http://127.0.0.1:1\nroutes:\n  - name: a\n    match: { path: /a }\n    quota: { rate: 5, per: 1y }\n    sla: { availability: 120% }\n",
    )
    .unwrap();
    let out = sluice().args(["validate", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let file = bad.display().to_string();
    assert_eq!(
        lines,
        [
            format!("{file}:2:9: listen: `nowhere` is not an address: write IP:PORT, e.g. 0.0.0.0:8080"),
            format!("{file}:7:28: routes[0].quota.per: `y` is not a duration unit: use ms, s, m, h or d"),
            format!("{file}:8:26: routes[0].sla.availability: `120%` must lie strictly between 0% and 100%"),
        ]
    );
}

#[test]
fn run_exits_64_on_a_bad_config() {
    let dir = temp_dir("exit64");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "service: s\nlisten: 127.0.0.1:0\nupstream: ftp://x\nbogus: 1\n").unwrap();
    let out = sluice().args(["run", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    let missing = sluice().args(["run", "--config", "/nonexistent/sluice.yaml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_file() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("sighup");
    let path = dir.join("sluice.yaml");
    // Same length, same mtime: the file watcher cannot tell, so only SIGHUP applies it.
    let tight = config_text(
        upstream.addr,
        "routes:\n  - name: r\n    match: { path: \"/*\" }\n    quota: { rate: 1, per: 1h, burst: 1 }\n",
    );
    let loose = tight.replace("burst: 1 ", "burst: 9 ");
    assert_eq!(tight.len(), loose.len());
    std::fs::write(&path, &tight).unwrap();
    let process = Process::spawn(&path);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let client = client();
    let url = format!("http://{}/x", process.addr);
    get(&client, &url).await;
    assert_eq!(get(&client, &url).await.0.status(), 429);
    std::fs::write(&path, &loose).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&client, &url).await.0.status(), 429, "the watcher must not have seen it");
    process.signal("HUP");
    eventually("SIGHUP to reload", Duration::from_secs(5), async || get(&client, &url).await.0.status() == 200).await;
}

/// A signal sent the moment the process says it serves (systemd's `ExecReload` right after
/// `READY=1`) is answered, never the default action, which for SIGHUP and SIGUSR2 is to
/// die. Ten processes, each sent SIGHUP at once after its listening line.
#[tokio::test(flavor = "multi_thread")]
async fn a_signal_right_after_the_listening_line_is_answered_not_fatal() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("early-signal");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config_text(upstream.addr, "routes:\n  - name: r\n    match: { path: \"/*\" }\n")).unwrap();
    for round in 0..10 {
        let mut process = Process::spawn(&path);
        process.signal("HUP");
        let url = format!("http://{}/x", process.addr);
        assert_eq!(get(&client(), &url).await.0.status(), 200, "round {round}: the process died of a signal");
        process.signal("TERM");
        let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(10))).await.unwrap();
        assert_eq!(code, Some(0), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("sigterm");
    let path = dir.join("sluice.yaml");
    // On an address of its own: once the listener closes, a parallel test bound to
    // 127.0.0.1:0 could be handed the freed port, and this test's connect would succeed.
    let config = config_text(upstream.addr, "limits: { drain_timeout: 10s }\n");
    std::fs::write(&path, config.replacen("listen: 127.0.0.1:0", "listen: 127.0.0.3:0", 1)).unwrap();
    let mut process = Process::spawn(&path);
    let addr = process.addr;
    assert_eq!(addr.ip().to_string(), "127.0.0.3");
    let client = client();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &format!("http://{addr}/slow?delay=1500")).await }
    });
    let in_flight = &upstream.in_flight;
    eventually("the slow request", Duration::from_secs(5), async || {
        in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    process.signal("TERM");
    // New connections are refused soon; the request in flight still completes.
    eventually("the listener to close", Duration::from_secs(2), async || std::net::TcpStream::connect(addr).is_err())
        .await;
    let (response, body) = slow.await.unwrap();
    assert_eq!((response.status().as_u16(), &body[..]), (200, &b"hello from upstream"[..]));
    assert_eq!(response.headers()["connection"], "close");
    let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0));
}

/// `limits.drain_delay`: after SIGTERM, new connections are still accepted and served
/// while /readyz answers 503; then the drain. A second signal cuts the delay short.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_drain_delay_serves_unready_first_and_a_second_signal_cuts_it_short() {
    let upstream = Upstream::start().await;
    let dir = temp_dir("drain-delay");
    for (delay, second) in [("2s", None), ("30s", Some("INT"))] {
        let path = dir.join(format!("sluice-{delay}.yaml"));
        let config = config_text(upstream.addr, &format!("limits: {{ drain_delay: {delay}, drain_timeout: 5s }}\n"));
        // An address of its own, as above: the closed listener must stay closed.
        std::fs::write(&path, config.replacen("listen: 127.0.0.1:0", "listen: 127.0.0.4:0", 1)).unwrap();
        let mut process = Process::spawn(&path);
        let (addr, ready) = (process.addr, process.admin_url("/readyz"));
        assert_eq!(get(&client(), &ready).await.0.status(), 200);
        let signalled = std::time::Instant::now();
        process.signal("TERM");
        eventually("/readyz to answer 503", Duration::from_secs(1), async || {
            get(&client(), &ready).await.0.status() == 503
        })
        .await;
        match second {
            None => {
                // A new connection, during the delay: served.
                let (response, body) = get(&client(), &format!("http://{addr}/during")).await;
                assert_eq!((response.status().as_u16(), &body[..]), (200, &b"hello from upstream"[..]));
                assert!(signalled.elapsed() < Duration::from_millis(1500), "the check came too late to count");
            }
            Some(signal) => process.signal(signal),
        }
        let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(10))).await.unwrap();
        assert_eq!(code, Some(0), "drain_delay {delay}");
        let took = signalled.elapsed();
        match second {
            None => assert!(took >= Duration::from_secs(2), "exited {took:?} after SIGTERM, within the delay"),
            Some(_) => assert!(took < Duration::from_secs(5), "a second signal did not cut the 30 s delay: {took:?}"),
        }
        assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
    }
}

#[test]
fn demo_runs_on_its_own_and_shows_429s() {
    let out = sluice().args(["demo", "--duration", "4s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("proxy     http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("metrics   http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("dashboard http://127.0.0.1:") && stdout.contains("/#token=demo-"), "{stdout}");
    // Its own token comes from a file of its own: nothing to warn about.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("token"), "the demo warned about its token:\n{stderr}");
    let warnings = stderr.lines().filter(|l| l.contains("WARN"));
    assert!(warnings.clone().all(|l| l.contains("sla_breached")), "only its SLA may warn:\n{stderr}");
    let last = stdout.lines().last().unwrap();
    let number = |label: &str| -> u64 {
        let after = last.split(label).nth(1).unwrap();
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(number("sent") > 100, "{last}");
    assert!(number("ok") > 100, "{last}");
    assert!(number("429") > 0, "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_1_gib_upload_streams_through_in_bounded_memory() {
    const CHUNK: usize = 256 * 1024;
    const TOTAL: usize = 1 << 30;
    let upstream = Upstream::start().await;
    let dir = temp_dir("upload");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, config_text(upstream.addr, "")).unwrap();
    let process = Process::spawn(&path);
    let before = process.peak_rss_kib();
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Box<dyn std::error::Error + Send + Sync>>::new(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            tx.send_data(chunk.clone()).await.unwrap();
        }
    });
    let req = Request::post(format!("http://{}/sink", process.addr)).body(body.boxed()).unwrap();
    let response = client().request(req).await.unwrap();
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received, TOTAL.to_string());
    let peak = process.peak_rss_kib();
    assert!(peak < before + 32 * 1024, "peak RSS grew from {before} KiB to {peak} KiB for a 1 GiB body");
}

#[test]
fn validate_and_run_list_all_four_mistakes_of_a_file() {
    let dir = temp_dir("four");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nroutes:\n  - name: a\n    match: { path: /a }\n    quota: { rate: -5, per: 1m }\n    timout: 2s\n  - name: b\n    match: { path: /b }\n    sla: { latency: { threshold: 200ms, objective: 99 }, window: 1m }\n",
    )
    .unwrap();
    let file = bad.display().to_string();
    let expected = [
        format!("{file}:7:20: routes[0].quota.rate: must be a whole number of at least 1, got -5"),
        format!("{file}:8:5: routes[0].timout: Unknown field `timout`, expected one of `name`, `match`, `timeout`, `quota`, `concurrency`, `sla`, or `retries`"),
        format!("{file}:11:52: routes[1].sla.latency.objective: `99` is not a percentage: write e.g. `99.9%`"),
        format!("{file}:11:66: routes[1].sla.window: `1m` is shorter than 1h"),
    ];
    let out = sluice().args(["validate", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().collect::<Vec<_>>(), expected);
    let out = sluice().args(["run", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().collect::<Vec<_>>(), expected);
}

#[test]
fn a_token_that_cannot_be_read_stops_run_and_is_a_warning_to_validate() {
    let dir = temp_dir("tokens");
    let path = dir.join("sluice.yaml");
    let text = "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin:\n  listen: 127.0.0.1:0\n  tokens:\n    - { name: cp, role: admin, token_env: SLUICE_TEST_NEVER_SET }\n    - { name: graf, role: viewer, token_file: /nonexistent/viewer.token }\n";
    std::fs::write(&path, text).unwrap();
    let file = path.display().to_string();
    let run = sluice().args(["run", "--config"]).arg(&path).env_remove("SLUICE_TEST_NEVER_SET").output().unwrap();
    assert_eq!(run.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&run.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0],
        format!("{file}:7:43: admin.tokens[0].token_env: token `cp`: the variable `SLUICE_TEST_NEVER_SET` is not set")
    );
    assert!(
        lines[1].starts_with(&format!(
            "{file}:8:47: admin.tokens[1].token_file: token `graf`: cannot read `/nonexistent/viewer.token`"
        )),
        "{stderr}"
    );
    let validate =
        sluice().args(["validate", "--config"]).arg(&path).env_remove("SLUICE_TEST_NEVER_SET").output().unwrap();
    assert_eq!(validate.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&validate.stdout), "ok\n");
    let warnings = String::from_utf8_lossy(&validate.stderr);
    assert!(warnings.starts_with(&format!("warning: {file}:7:43: admin.tokens[0].token_env")), "{warnings}");
    assert_eq!(warnings.lines().count(), 2, "{warnings}");
    // With the secret in place, run starts.
    let ok = sluice().args(["validate", "--config"]).arg(&path).env("SLUICE_TEST_NEVER_SET", "x").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ok.stderr).lines().count(), 1, "only the missing file is left");
}

#[test]
fn logs_to_a_file_are_plain_and_json_logs_leave_out_absent_fields() {
    let dir = temp_dir("logs");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, format!("service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin:\n  listen: 127.0.0.1:0\n  state_dir: {}\n", dir.join("state").display())).unwrap();
    for format in ["human", "json"] {
        let log = dir.join(format!("{format}.log"));
        let mut child = sluice()
            .args(["--log-format", format, "run", "--config"])
            .arg(&path)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&log).unwrap().contains("sluice is serving") {
            assert!(start.elapsed() < Duration::from_secs(10), "sluice did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains('\u{1b}'), "escape codes in a log file:\n{text}");
        if format == "json" {
            let serving = text.lines().find(|l| l.contains("sluice is serving")).unwrap();
            let json: serde_json::Value = serde_json::from_str(serving).unwrap();
            assert!(json["fields"].get("metrics_addr").is_none(), "{serving}");
            assert!(!text.contains("\"None\""), "{text}");
        }
    }
}
