use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::{LatencySla, Sla as SlaSpec};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn availability(objective: f64) -> Sli {
    Sli::new(SliKind::Availability, objective, None, 30 * DAY)
}

fn record(sli: &Sli, good: u64, bad: u64) {
    (0..good).for_each(|_| sli.record(true));
    (0..bad).for_each(|_| sli.record(false));
}

#[test]
fn a_known_stream_gives_exact_figures() {
    let sli = availability(0.99);
    record(&sli, 990, 10);
    sli.tick(Duration::ZERO);
    record(&sli, 950, 50);
    sli.tick(10 * MIN);

    let r = sli.report(10 * MIN);
    assert_eq!(r.counts, Counts { good: 1940, total: 2000 });
    assert!(close(r.compliance, 0.97), "{r:?}");
    assert!(close(r.budget_remaining, 1.0 - 0.03 / 0.01), "{r:?}"); // overspent three times
    assert!(close(r.burn(Window::M5), 5.0), "{r:?}"); // only the second batch
    for w in [Window::M30, Window::H1, Window::H2, Window::H6, Window::D1, Window::D3] {
        assert!(close(r.burn(w), 3.0), "{w:?}: {r:?}");
    }

    // 69 min 55 s: the 1 h window (360 buckets of 10 s, the current one included) has
    // let go of t = 0 but not of t = 10 min; 30 min has let go of both.
    let r = sli.report(70 * MIN - Duration::from_secs(5));
    assert!(close(r.burn(Window::H1), 5.0), "{r:?}");
    assert!(close(r.burn(Window::M30), 0.0), "{r:?}");
    assert!(close(r.burn(Window::H2), 3.0), "{r:?}");
    // 31 days: the SLA window is empty again: compliant, budget untouched.
    let r = sli.report(31 * DAY);
    assert_eq!((r.counts.total, r.compliance, r.budget_remaining), (0, 1.0, 1.0));
}

#[test]
fn latency_is_good_up_to_and_including_the_threshold() {
    let spec = SlaSpec {
        latency: Some(LatencySla { threshold: Duration::from_millis(200), objective: 0.5 }),
        availability: Some(0.5),
        window: 30 * DAY,
        min_events: 100,
    };
    let sla = RouteSla::build(Some(&spec), None);
    sla.record(Duration::from_millis(100), false);
    sla.record(Duration::from_millis(200), false);
    sla.record(Duration::from_millis(200) + Duration::from_nanos(1), true);
    sla.record(Duration::from_secs(5), false);
    let [latency, availability] = [&sla.latency, &sla.availability].map(|s| s.as_ref().unwrap());
    latency.tick(Duration::ZERO);
    availability.tick(Duration::ZERO);
    assert_eq!(latency.report(Duration::ZERO).counts, Counts { good: 2, total: 4 });
    assert_eq!(availability.report(Duration::ZERO).counts, Counts { good: 3, total: 4 });
}

/// Steady traffic of `per_tick` requests every `step`, with `bad(t)` of them failing, for
/// `until`; returns every alert with the time it came.
fn run(
    sli: &Sli,
    step: Duration,
    until: Duration,
    per_tick: u64,
    bad: impl Fn(Duration) -> u64,
) -> Vec<(Duration, Alert, Report)> {
    let mut alerts = Vec::new();
    let mut now = Duration::ZERO;
    while now <= until {
        let b = bad(now);
        record(sli, per_tick - b, b);
        if let (report, Some(alert)) = sli.tick(now) {
            alerts.push((now, alert, report));
        }
        now += step;
    }
    alerts
}

#[test]
fn a_fast_burn_raises_one_breach_and_one_recovery() {
    // 99.9%: 10% errors burn the budget 100 times too fast, for 10 minutes after 3 good days.
    let sli = availability(0.999);
    let (start, end) = (3 * DAY, 3 * DAY + 10 * MIN);
    let alerts = run(&sli, Duration::from_secs(10), 4 * DAY, 100, |t| if t >= start && t < end { 10 } else { 0 });
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let (at, Alert::Breached(Severity::Fast), report) = &alerts[0] else { panic!("{alerts:?}") };
    // 14.4× over 1 h takes 14.4 / 100 h ≈ 8.6 min of burning.
    assert!(*at > start + 8 * MIN && *at < start + 9 * MIN, "{at:?}");
    assert!(report.burn(Window::M5) > 14.4 && report.budget_remaining < 1.0);
    let (at, Alert::Recovered, report) = &alerts[1] else { panic!("{alerts:?}") };
    // Recovered once the 5 m window is clean again.
    assert!(*at >= end + 4 * MIN && *at <= end + 5 * MIN, "{at:?}");
    assert_eq!(report.breached, Some(Severity::Fast), "the report is of the moment before it cleared");
}

#[test]
fn a_slow_burn_that_turns_fast_is_raised_again() {
    // The same burn after only 6 h of history: the 3 d / 6 h pair fires first (the 3 d
    // window holds only those 6 h), then the fast pair; one recovery when both stop.
    let sli = availability(0.999);
    let (start, end) = (6 * HOUR, 6 * HOUR + 10 * MIN);
    let alerts = run(&sli, Duration::from_secs(10), DAY, 100, |t| if t >= start && t < end { 10 } else { 0 });
    let kinds: Vec<_> = alerts
        .iter()
        .map(|(_, a, _)| match a {
            Alert::Breached(severity) => severity.as_str(),
            Alert::Recovered => "recovered",
        })
        .collect();
    assert_eq!(kinds, ["slow", "fast", "recovered"], "{alerts:?}");
    // Held by the 6 h window until the burn has left it.
    assert!(alerts[2].0 > end + 5 * HOUR && alerts[2].0 <= end + 6 * HOUR, "{alerts:?}");
}

#[test]
fn a_slow_burn_raises_one_breach_and_one_recovery() {
    // 99.9% with 0.5% errors: a 5× burn, too slow to page, for a day and a half after 3 good days.
    let sli = availability(0.999);
    let (start, end) = (3 * DAY, 3 * DAY + 36 * HOUR);
    let alerts = run(&sli, MIN, 7 * DAY, 1000, |t| if t >= start && t < end { 5 } else { 0 });
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let (at, Alert::Breached(Severity::Slow), _) = &alerts[0] else { panic!("{alerts:?}") };
    // 3× over 1 d (and 1× over 3 d) takes 3/5 of a day of burning: 14.4 h.
    assert!(*at > start + 14 * HOUR && *at < start + 15 * HOUR, "{at:?}");
    let (at, Alert::Recovered, _) = &alerts[1] else { panic!("{alerts:?}") };
    // The 2 h window drops below 3× after 48 min; the 6 h one below 1× after 4.8 h.
    assert!(*at > end + 4 * HOUR && *at <= end + 5 * HOUR, "{at:?}");
}

#[test]
fn memory_is_fixed_whatever_the_traffic() {
    let sli = availability(0.999);
    let before = sli.bytes();
    assert_eq!(before, 44_928, "the bound the module documents");
    // Ten million requests over four days, through every ring several times round.
    let mut now = Duration::ZERO;
    for i in 0..10_000u64 {
        record(&sli, 999, 1);
        if i % 50 == 0 {
            sli.tick(now);
        }
        now += Duration::from_secs(35);
    }
    sli.tick(now);
    assert_eq!(sli.bytes(), before);
    assert_eq!(sli.report(now).counts, Counts { good: 9_990_000, total: 10_000_000 });
    // all within 30 d
}

#[test]
fn a_reload_keeps_each_sli_whose_definition_did_not_change() {
    let spec = |threshold_ms: u64, objective: f64, window: Duration| SlaSpec {
        latency: Some(LatencySla { threshold: Duration::from_millis(threshold_ms), objective }),
        availability: Some(objective),
        window,
        min_events: 100,
    };
    let before = RouteSla::build(Some(&spec(200, 0.99, 30 * DAY)), None);
    before.record(Duration::from_millis(500), true);
    let ptr = |s: &Option<Arc<Sli>>| Arc::as_ptr(s.as_ref().unwrap());

    // A new objective: same state, measured against the new yardstick.
    let same = RouteSla::build(Some(&spec(200, 0.9, 30 * DAY)), Some(&before));
    assert_eq!(ptr(&same.latency), ptr(&before.latency));
    assert_eq!(ptr(&same.availability), ptr(&before.availability));
    let latency = same.latency.as_ref().unwrap();
    latency.tick(Duration::ZERO);
    let r = latency.report(Duration::ZERO);
    assert_eq!((r.objective, r.counts), (0.9, Counts { good: 0, total: 1 }));

    // A new threshold: latency starts over, availability keeps its counts.
    let moved = RouteSla::build(Some(&spec(300, 0.9, 30 * DAY)), Some(&same));
    assert_ne!(ptr(&moved.latency), ptr(&same.latency));
    assert_eq!(ptr(&moved.availability), ptr(&same.availability));
    // A new window: both start over.
    let rewindowed = RouteSla::build(Some(&spec(300, 0.9, 7 * DAY)), Some(&moved));
    assert_ne!(ptr(&rewindowed.availability), ptr(&moved.availability));
    // No SLA: nothing measured.
    assert!(RouteSla::build(None, Some(&rewindowed)).slis().next().is_none());
}

proptest! {
    /// Whatever the schedule, every window holds exactly the events of its buckets.
    #[test]
    fn windows_hold_exactly_the_events_of_their_buckets(
        events in proptest::collection::vec((0u64..400, 0u64..5, 0u64..5), 1..200),
    ) {
        let sli = availability(0.99);
        let mut log = Vec::new();
        let mut now = Duration::ZERO;
        for (gap_s, good, bad) in events {
            now += Duration::from_secs(gap_s);
            record(&sli, good, bad);
            sli.tick(now);
            log.push((now, good, bad));
        }
        let r = sli.report(now);
        for (window, bucket, k) in [(Window::M5, 10, 30), (Window::H2, 60, 120), (Window::D3, 600, 432)] {
            let current = now.as_secs() / bucket;
            let (good, total) = log
                .iter()
                .filter(|(t, ..)| t.as_secs() / bucket + k > current)
                .fold((0, 0), |(g, n), (_, good, bad)| (g + good, n + good + bad));
            let expected = if total == 0 { 0.0 } else { (total - good) as f64 / total as f64 / (1.0 - 0.99) };
            prop_assert!((r.burn(window) - expected).abs() < 1e-9, "{window:?}: {} vs {expected}", r.burn(window));
        }
    }
}

#[test]
fn a_breach_needs_min_events_in_the_long_window() {
    // A fresh process: 1 error in 30 requests burns 99.9% at 33×, over both fast windows.
    let quiet = availability(0.999).with_min_events(100);
    record(&quiet, 29, 1);
    let (report, alert) = quiet.tick(Duration::from_secs(1));
    assert!(report.burn(Window::H1) > 14.4 && report.burn(Window::M5) > 14.4, "{report:?}");
    assert_eq!((alert, report.breached), (None, None), "30 events are too few to page on");
    // The same error ratio over enough events does page.
    record(&quiet, 70 * 29, 70);
    let (_, alert) = quiet.tick(Duration::from_secs(2));
    assert_eq!(alert, Some(Alert::Breached(Severity::Fast)));
    // Without a minimum, the 30 would have paged at once.
    let eager = availability(0.999);
    record(&eager, 29, 1);
    assert_eq!(eager.tick(Duration::from_secs(1)).1, Some(Alert::Breached(Severity::Fast)));
}
