//! The deployment assets of deploy/: the Kubernetes manifests (built by kustomize and
//! checked against the API schema), the rule file of `sluice rules` (current, tested by
//! promtool on synthetic series, and run by a real Prometheus scraping a real sluice, which
//! must agree with sluice's own engine), and the Grafana dashboard's queries (they parse and
//! name only what sluice exports). The tools come from .ci/test: kubectl, kubernetes-validate,
//! promtool and prometheus.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::redis::Redis;
use support::*;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Runs `command`, failing the test with its output unless it succeeds.
fn run(command: &mut Command) -> Output {
    let what = format!("{command:?}");
    let out =
        command.output().unwrap_or_else(|e| panic!("{what}: {e} (.ci/test installs the tools tests/deploy.rs needs)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `promtool check rules` on a rule file made of `exprs`, one recording rule each.
fn promtool_parses(exprs: &[String], dir: &Path) {
    let mut file = String::from("groups:\n  - name: queries\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        file.push_str(&format!("      - record: query:{i}\n        expr: {}\n", serde_json::to_string(expr).unwrap()));
    }
    let path = dir.join("queries.yaml");
    std::fs::write(&path, file).unwrap();
    run(Command::new("promtool").args(["check", "rules"]).arg(&path));
}

#[test]
fn kubernetes_manifests_build_and_validate_against_the_api_schema() {
    let out = temp_dir("manifests");
    let checked = run(Command::new("python3").arg("tests/deploy/manifests.py").arg("kubectl").arg(&out));
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(said.starts_with("ok: 15 objects"), "{said}");

    // The ConfigMaps hold the files beside their kustomizations, and sluice accepts them.
    for (built, source) in [
        ("base.sluice.yaml", "deploy/kubernetes/base/sluice.yaml"),
        ("overlays-example.sluice.yaml", "deploy/kubernetes/overlays/example/sluice.yaml"),
    ] {
        let text = std::fs::read_to_string(out.join(built)).unwrap();
        assert_eq!(text, std::fs::read_to_string(source).unwrap(), "{built}");
        let validated = run(sluice().args(["validate", "--config", source]));
        assert_eq!(String::from_utf8_lossy(&validated.stdout).trim(), "ok", "{source}");
        // The token is a file of the Secret's mount, absent here: a warning, not an error.
        assert!(String::from_utf8_lossy(&validated.stderr).contains("warning: "), "{source}");
    }

    // prometheus-adapter's queries parse, with its templates filled as it fills them.
    let queries: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter-queries.json")).unwrap()).unwrap();
    assert_eq!(queries.len(), 4);
    promtool_parses(&queries, &out);
}

#[test]
fn a_broken_manifest_fails_the_check() {
    // The checker itself must be able to fail: a copy of the tree with a misspelt field.
    let dir = temp_dir("broken-manifests");
    let tree = dir.join("deploy/kubernetes");
    run(Command::new("cp").arg("-r").arg("deploy").arg(&dir));
    std::fs::create_dir_all(dir.join("tests/deploy")).unwrap();
    for file in ["manifests.py", "servicemonitor.schema.json"] {
        std::fs::copy(Path::new("tests/deploy").join(file), dir.join("tests/deploy").join(file)).unwrap();
    }
    let deployment = tree.join("base/deployment.yaml");
    let text = std::fs::read_to_string(&deployment).unwrap();
    std::fs::write(&deployment, text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem")).unwrap();
    let out =
        Command::new("python3").arg(dir.join("tests/deploy/manifests.py")).arg("kubectl").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("readOnlyRootFilesytem"), "{said}");
}

#[test]
fn the_committed_rules_are_current_and_pass_promtool() {
    let generated = run(sluice().args(["rules", "--config", "config/sluice.yaml"]));
    let committed = std::fs::read_to_string("deploy/prometheus/rules.yaml").unwrap();
    assert!(
        String::from_utf8_lossy(&generated.stdout) == committed,
        "deploy/prometheus/rules.yaml is stale: regenerate it with \
         `sluice rules --config config/sluice.yaml > deploy/prometheus/rules.yaml`"
    );
    run(Command::new("promtool").args(["check", "rules", "deploy/prometheus/rules.yaml"]));
    let tested = run(Command::new("promtool").args(["test", "rules", "deploy/prometheus/rules.test.yaml"]));
    assert!(String::from_utf8_lossy(&tested.stdout).contains("SUCCESS"));

    // Every shape of SLA generates rules promtool accepts: the demo's routes have latency
    // only, both, thresholds in ms and a selector.
    let dir = temp_dir("rules");
    let demo = run(sluice().args(["rules", "--config", "config/demo.yaml", "--selector", r#"namespace="shop""#]));
    std::fs::write(dir.join("demo.yaml"), &demo.stdout).unwrap();
    run(Command::new("promtool").args(["check", "rules"]).arg(dir.join("demo.yaml")));
}

#[test]
fn sluice_rules_refuses_a_bad_config_or_selector() {
    let dir = temp_dir("rules-bad");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nroutes: 5\n").unwrap();
    let out = sluice().args(["rules", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes"), "{out:?}");
    assert!(out.stdout.is_empty());
    let out =
        sluice().args(["rules", "--config", "config/sluice.yaml", "--selector", "namespace=shop"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--selector"));
}

/// A config with every kind of metric sluice exports: SLAs, quotas, a global quota.
fn full_config(redis: &Redis) -> String {
    format!(
        "global: {{ redis: \"{}\", timeout: 1s }}\nroutes:\n  - name: api\n    match: {{ path: \"/*\" }}\n    \
         quota: {{ rate: 100000, per: 1s, burst: 100000, scope: global }}\n    concurrency: {{ max: 100 }}\n    \
         sla: {{ latency: {{ threshold: 50ms, objective: 99% }}, availability: 99%, min_events: 0 }}\n",
        redis.url()
    )
}

/// The metric names of a scrape, with a histogram's `_bucket`, `_sum` and `_count`.
fn names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The names a PromQL query uses that look like sluice's: outside strings, containing `sluice`.
fn used(expr: &str) -> BTreeSet<String> {
    let mut outside = String::new();
    let mut quoted = false;
    for c in expr.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted {
            outside.push(c);
        }
    }
    outside
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("sluice"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn grafana_queries_parse_and_use_only_what_sluice_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/sluice.json").unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(panel["type"] == "row" || !targets.is_empty(), "panel {} has no query", panel["title"]);
        exprs.extend(targets.iter().map(|t| t["expr"].as_str().unwrap().to_string()));
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(SELECTOR, LABEL): the selector is PromQL.
            let inner = query.strip_prefix("label_values(").and_then(|q| q.rsplit_once(',')).unwrap().0;
            exprs.push(inner.to_string());
        }
    }
    let exprs: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.replace("$namespace", ".*")
                .replace("$route", ".*")
                .replace("$job", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect();
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    assert!(exprs.iter().all(|e| !e.contains('$')), "a variable left unfilled");
    let dir = temp_dir("grafana");
    promtool_parses(&exprs, &dir);

    // Against a real scrape of a sluice with every kind of metric, and the names its rules record.
    let redis = Redis::start();
    let upstream = Upstream::start().await;
    let sluice_process = Sluice::start(&upstream, &full_config(&redis)).await;
    let (response, _) = get(&client(), &sluice_process.url("/x")).await;
    assert_eq!(response.status(), 200);
    let mut known = names(&sluice_process.scrape().await.0);
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, config_text(upstream.addr, &full_config(&redis))).unwrap();
    let rules = run(sluice().args(["rules", "--config"]).arg(&config));
    for line in String::from_utf8_lossy(&rules.stdout).lines() {
        if let Some(name) = line.trim().strip_prefix("- record: ") {
            known.insert(name.to_string());
        }
    }
    for expr in &exprs {
        for name in used(expr) {
            assert!(known.contains(&name), "{name} (in `{expr}`) is neither exported nor recorded");
        }
    }
    // The check reads names: one that does not exist is caught.
    assert!(!known.contains("sluice_requests") && used("rate(sluice_requests[1m])").contains("sluice_requests"));
}

/// A Prometheus server on a free port, scraping `target` every second and evaluating `rules`.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr, rules: &Path) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [{}]\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus, installed by .ci/test)");
        Self { child, addr }
    }

    /// The value of an instant query with one result, if it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let url = format!("http://{}/api/v1/query?query={}", self.addr, encode(query));
        let request = http::Request::get(url).body(empty()).unwrap();
        let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), client().request(request)).await else {
            return None;
        };
        let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query}: {result:?}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_computes_from_the_rules_what_the_engine_computes() {
    let upstream = Upstream::start().await;
    let rest = "routes:\n  - name: api\n    match: { path: \"/*\" }\n    \
                sla: { latency: { threshold: 50ms, objective: 99% }, availability: 99%, min_events: 0 }\n";
    let sluice_process = Sluice::start(&upstream, rest).await;
    let dir = temp_dir("prometheus");
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, config_text(upstream.addr, rest)).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, run(sluice().args(["rules", "--config"]).arg(&config)).stdout).unwrap();
    let admin = sluice_process.running().admin_addr();
    let prometheus = Prometheus::start(&dir, admin, &rules);

    // Traffic while Prometheus scrapes: of every 10 requests, one 500 and two slower than
    // the threshold, so the availability error ratio is 0.1 and the latency one 0.2.
    let client = client();
    let ratio = |sli: &str| format!("sluice:sli_error_ratio:rate5m{{route=\"api\",sli=\"{sli}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    loop {
        for i in 0..10 {
            let path = match i {
                0 => "/x?status=500",
                1 | 2 => "/x?delay=60",
                _ => "/x",
            };
            get(&client, &sluice_process.url(path)).await;
        }
        sent += 10;
        if sent >= 200 && prometheus.value(&ratio("availability")).await.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Prometheus never recorded {}", ratio("availability"));
    }
    // The engine's figures, as sluice exports them: burn rate x the budget ratio.
    let scrape = sluice_process.scrape().await;
    for (sli, budget, expected) in [("availability", 0.01, 0.1), ("latency", 0.01, 0.2)] {
        let engine =
            scrape.value("sluice_sla_burn_rate", &format!("route=\"api\",sli=\"{sli}\",window=\"5m\"")) * budget;
        // (A stalled machine can make a fast request slow, never a slow one fast.)
        assert!(
            engine > expected - 0.01 && engine < expected + 0.05,
            "{sli}: the engine says {engine}, sent {expected}"
        );
        // Prometheus scrapes and evaluates every second: a ratio recorded from a scrape
        // taken in the middle of the last requests is a second behind the engine's, so it
        // is read until a scrape after them has been evaluated (or 10 s have passed).
        let caught_up = std::time::Instant::now() + Duration::from_secs(10);
        let recorded = loop {
            let recorded = prometheus.value(&ratio(sli)).await.unwrap_or_else(|| panic!("{}", ratio(sli)));
            if (recorded - engine).abs() < 0.02 || std::time::Instant::now() > caught_up {
                break recorded;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!("{sli}: Prometheus's rules {recorded}, sluice's engine {engine}, after {sent} requests");
        assert!((recorded - engine).abs() < 0.02, "{sli}: Prometheus's rules say {recorded}, sluice's engine {engine}");
    }
}
