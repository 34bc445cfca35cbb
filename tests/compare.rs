//! The load comparison harness (benches/compare.sh) runs end to end in its quick mode:
//! nginx, HAProxy and sluice in front of one backend, wrk against each, a report. This
//! proves the harness works; it judges no number (BENCHMARKS.md does, from a full run).

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
    for target in ["direct", "nginx", "haproxy", "sluice", "sluice-full", "sluice-429"] {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {target} |")));
        let row = row.unwrap_or_else(|| panic!("no row for {target} in:\n{stdout}"));
        let median: f64 = row.split('|').nth(2).unwrap().trim().replace(',', "").parse().unwrap();
        assert!(median > 0.0, "{row}");
    }
    assert!(stdout.contains("Quota + SLA cost (sluice-full vs sluice):"), "{stdout}");
    assert!(stdout.contains("429 path vs proxied path"), "{stdout}");
}
