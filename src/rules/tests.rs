use super::*;

fn config(text: &str) -> Config {
    crate::config::parse(text).expect("a valid config")
}

const BASE: &str = "service: app\nlisten: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\n";

#[test]
fn every_sli_of_every_route_with_an_sla_gets_its_windows_and_both_alerts() {
    let text = format!(
        "{BASE}routes:\n  - name: a\n    match: {{ path: /a }}\n    sla: {{ latency: {{ threshold: 300ms, objective: 99% }}, availability: 99.9% }}\n  \
         - name: b\n    match: {{ path: /b }}\n    sla: {{ availability: 99.5%, min_events: 0 }}\n  \
         - name: c\n    match: {{ path: /c }}\n"
    );
    let rules = render(&config(&text), &Options::default());
    for window in Window::ALL {
        let name = format!("record: sluice:sli_error_ratio:rate{}", window.as_str());
        assert_eq!(rules.matches(&name).count(), 3, "{name}: a/latency, a/availability, b/availability");
    }
    assert_eq!(rules.matches("alert: SluiceErrorBudgetFastBurn").count(), 3);
    assert_eq!(rules.matches("alert: SluiceErrorBudgetSlowBurn").count(), 3);
    assert!(!rules.contains("route=\"c\""), "a route without an SLA gets no rules");
    // The latency SLI reads the bucket at its threshold; the budget is 1 - objective.
    assert!(rules.contains(r#"sluice_request_duration_seconds_bucket{route="a",le=~"0\\.3"}[5m]"#), "{rules}");
    assert!(rules.contains("> (14.4 * 0.01)") && rules.contains("> (14.4 * 0.001)") && rules.contains("> (1 * 0.005)"));
    // min_events: 100 by default, 0 leaves the guard out.
    assert!(rules.contains(r#"sluice:sli_events:increase1h{service="app",route="a"} >= 100"#));
    assert!(!rules.contains(r#"sluice:sli_events:increase1h{service="app",route="b"}"#));
    assert!(rules.contains(
        r#"origin=~"upstream|timeout|upstream_error|upstream_unhealthy|upstream_overflow",code_class="5xx""#
    ));
    assert!(rules.contains("objective: \"99.5%\"") && rules.contains("severity: \"ticket\""));
}

#[test]
fn a_selector_reaches_every_series_and_a_whole_second_threshold_matches_both_spellings() {
    let text = format!(
        "{BASE}routes:\n  - name: a\n    match: {{ path: /a }}\n    sla: {{ latency: {{ threshold: 1s, objective: 99% }} }}\n"
    );
    let options =
        Options { selector: Some(r#"namespace="shop","#.into()), runbook_url: Some("https://runbooks/x".into()) };
    let rules = render(&config(&text), &options);
    assert!(rules.contains(r#"_bucket{namespace="shop",route="a",le=~"1|1\\.0"}"#), "{rules}");
    assert!(rules.contains(r#"_count{namespace="shop",route="a"}"#));
    assert!(rules.contains("runbook_url: \"https://runbooks/x\""));
}

#[test]
fn selectors_are_checked() {
    for good in [r#"namespace="shop""#, r#"a="x", b!~"y|z""#, r#"job=~"a\"b""#, " "] {
        assert_eq!(check_selector(good), Ok(()), "{good}");
    }
    for bad in [r#"namespace=shop"#, r#"1a="x""#, r#"a="x" b="y""#, r#"a="x"#, r#"a=="x""#, "{a=\"x\"}"] {
        assert!(check_selector(bad).is_err(), "{bad}");
    }
}

#[test]
fn numbers_are_written_short() {
    assert_eq!(number(1.0 - 0.999), "0.001");
    assert_eq!(number(14.4), "14.4");
    assert_eq!(number(6.0), "6");
    assert_eq!(percent(0.999), "99.9%");
}

#[test]
fn a_config_without_an_sla_gets_an_empty_rule_file() {
    let text = format!("{BASE}routes:\n  - name: a\n    match: {{ path: /a }}\n");
    assert!(render(&config(&text), &Options::default()).ends_with("groups: []\n"));
}
