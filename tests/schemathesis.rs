//! schemathesis (PyPI; `.ci/test` installs it) runs against the live control API from its
//! OpenAPI document: generated and mutated calls to every operation, checked against the
//! document (statuses, content types, bodies, headers) and for server errors. Settings and
//! why: tests/schemathesis.toml.

mod support;

use std::process::Command;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_api_matches_its_openapi_document() {
    let upstream = Upstream::start().await;
    let rest = r#"  tokens:
    - { name: cp, role: admin, token: schemathesis-admin-token }
routes:
  - name: a
    match: { path: /a }
    quota: { rate: 10, per: 1s, key: header:x-k }
    sla: { latency: { threshold: 100ms, objective: 99% }, availability: 99% }
"#;
    let sluice = Sluice::start(&upstream, rest).await;
    let schema = sluice.admin_url("/v1/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("st")
            .args(["--config-file", "tests/schemathesis.toml", "run", &schema])
            .args(["-H", "Authorization: Bearer schemathesis-admin-token"])
            // An event stream never ends: tests/control.rs covers it.
            .args(["--exclude-path", "/v1/events", "--max-examples", "25", "--request-timeout", "10"])
            .output()
            .expect("schemathesis is not installed: run .ci/test, which installs it (PyPI schemathesis)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("passed") && !stdout.contains("failed"), "{stdout}");
}
