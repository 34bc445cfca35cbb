//! The load comparison harness (benches/compare.sh) runs end to end in its quick mode:
//! nginx, HAProxy and sluice in front of one backend (and, h2c to its h2c listener, each
//! as gRPC is proxied), wrk and h2load against each, open-loop
//! latency, CPU and memory figures, instructions per request under callgrind, a report.
//! This proves the harness works; it judges no number (BENCHMARKS.md does, from a full
//! run).

use std::process::Command;

#[test]
fn quick_comparison_runs_every_target_and_reports() {
    let out = Command::new("benches/compare.sh")
        .args(["--quick", "--sluice", env!("CARGO_BIN_EXE_sluice")])
        .output()
        .expect("benches/compare.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    // tables: HTTP/1.1 throughput, h2c throughput, h2c to an h2c service (the -h2 targets
    // and direct), open-loop latency at two rates (not for the 429 path), CPU and memory,
    // instructions (not for direct); a row per target in each
    let targets =
        ["direct", "nginx", "haproxy", "sluice", "sluice-full", "sluice-429", "sluice-local", "sluice-global"];
    for target in targets.into_iter().chain(["nginx-h2", "haproxy-h2", "sluice-h2"]) {
        let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&format!("| {target} |"))).collect();
        let expected = match target {
            "direct" => 6,
            "sluice-429" => 4,
            "nginx-h2" | "haproxy-h2" | "sluice-h2" => 1,
            _ => 6,
        };
        assert_eq!(rows.len(), expected, "{target} in:\n{stdout}");
        for row in rows {
            let first: f64 = row.split('|').nth(2).unwrap().trim().replace(',', "").parse().unwrap();
            assert!(first > 0.0, "{row}");
        }
    }
    // CPU s / M requests, its user and system parts, RSS idle MiB, KiB per connection
    let costs = |target: &str| -> Vec<f64> {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {target} |")) && l.contains(" MiB |")).unwrap();
        row.split('|').skip(2).take(5).map(|c| c.split_whitespace().next().unwrap().parse().unwrap()).collect()
    };
    let sluice = costs("sluice");
    assert!(sluice.iter().all(|&v| v > 0.0) && sluice[3] > 1.0, "{sluice:?}");
    assert!((sluice[1] + sluice[2] - sluice[0]).abs() <= 0.5 * sluice[0], "user + system near the total: {sluice:?}");
    assert!(stdout.contains("Quota + SLA cost (sluice-full vs sluice):"), "{stdout}");
    assert!(stdout.contains("429 path vs proxied path"), "{stdout}");
    // the global quota's row: Redis was called, and not once per request
    let global = stdout.lines().find(|l| l.starts_with("Global quota vs the same quota local")).expect("{stdout}");
    let per_1000: f64 =
        global.split("Redis calls per 1,000 requests: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(per_1000 > 0.0 && per_1000 < 100.0, "{global}");
    assert!(global.contains(", 0 failed)"), "{global}");
}
