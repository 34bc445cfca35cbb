//! Whether the service is healthy, from two sources: active checks (`health_check`: a
//! probe every interval; `unhealthy_after` failures in a row mark it unhealthy,
//! `healthy_after` successes in a row healthy again) and the requests themselves
//! (`outlier_detection`: `consecutive_failures` connect errors, resets or 5xx answers in a
//! row mark it unhealthy, until the active check passes again or, with none configured,
//! until `ejection_time` has passed).
//!
//! A pure state machine over the caller's `now` (the engines' clock). The request path
//! reads [`Health::healthy`] (one atomic load) and reports each answer with
//! [`Health::answered`] (one load when nothing failed); the probing and the log, events and
//! metrics of a change are the caller's ([`super::probe`]).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// `health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// `outlier_detection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
}

/// Why the service is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The active check failed this many times in a row; the last failure's reason.
    Probes { failed: u32, last: String },
    /// This many requests in a row failed (connect error, reset or 5xx).
    Requests { failed: u32 },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Probes { failed, last } => write!(f, "{failed} health checks failed in a row (last: {last})"),
            Self::Requests { failed } => write!(f, "{failed} requests failed in a row"),
        }
    }
}

/// A change of health, for the log, the event and the gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unhealthy(Cause),
    Healthy,
}

/// How the service stands, for `/v1/status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub healthy: bool,
    /// Since when it has been as it is, on the engines' clock; `None` before any change.
    pub since: Option<Duration>,
    pub cause: Option<Cause>,
    /// Requests failed in a row now.
    pub failures: u32,
}

#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    /// Requests failed in a row.
    failures: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    since: Option<Duration>,
    cause: Option<Cause>,
    /// Probes failed and passed in a row.
    probes_failed: u32,
    probes_passed: u32,
    /// With no active check, when an ejection by requests ends.
    ejected_until: Option<Duration>,
    /// Changes not yet taken by [`Health::take_changes`].
    changes: Vec<Change>,
}

impl Default for Health {
    fn default() -> Self {
        Self { healthy: AtomicBool::new(true), failures: AtomicU32::new(0), state: Mutex::default() }
    }
}

impl Health {
    #[inline]
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// A request's outcome, `now` the time (asked for only when the service is marked
    /// unhealthy: a clock read per request costs): `failed` for a connect error, a reset or
    /// a 5xx from the service. With `outlier`, enough failures in a row mark the service
    /// unhealthy.
    #[inline]
    pub fn answered(&self, failed: bool, outlier: Option<&OutlierDetection>, now: impl FnOnce() -> Duration) {
        if !failed {
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Relaxed);
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if let Some(outlier) = outlier.filter(|o| failures >= o.consecutive_failures) {
            self.eject(failures, outlier, now());
        }
    }

    #[cold]
    fn eject(&self, failed: u32, outlier: &OutlierDetection, now: Duration) {
        let mut state = self.lock();
        if !self.healthy() {
            return;
        }
        state.ejected_until = Some(now + outlier.ejection_time);
        state.probes_passed = 0;
        self.set(&mut state, now, Some(Cause::Requests { failed }));
    }

    /// A probe's result at `now`.
    pub fn probed(&self, result: Result<(), String>, check: &HealthCheck, now: Duration) {
        let mut state = self.lock();
        match result {
            Ok(()) => {
                state.probes_failed = 0;
                state.probes_passed = state.probes_passed.saturating_add(1);
                if !self.healthy() && state.probes_passed >= check.healthy_after {
                    self.set(&mut state, now, None);
                }
            }
            Err(why) => {
                state.probes_passed = 0;
                state.probes_failed += 1;
                if self.healthy() && state.probes_failed >= check.unhealthy_after {
                    let cause = Cause::Probes { failed: state.probes_failed, last: why };
                    self.set(&mut state, now, Some(cause));
                }
            }
        }
    }

    /// Time passes: with no active check (`checked` false), an ejection by requests ends
    /// once its time is up. Called every second or so.
    pub fn tick(&self, checked: bool, now: Duration) {
        let mut state = self.lock();
        let over = state.ejected_until.is_some_and(|until| now >= until);
        if !self.healthy() && !checked && over {
            self.set(&mut state, now, None);
        }
    }

    /// The changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut self.lock().changes)
    }

    /// Seconds a refused request should wait: until the next probe (`interval`) or the
    /// ejection's end, at least one.
    pub fn retry_after(&self, interval: Option<Duration>, now: Duration) -> u32 {
        let state = self.lock();
        let wait = match (interval, state.ejected_until) {
            (Some(interval), _) => interval,
            (None, Some(until)) => until.saturating_sub(now),
            (None, None) => Duration::from_secs(1),
        };
        wait.as_secs_f64().ceil().max(1.0) as u32
    }

    pub fn report(&self) -> Report {
        let state = self.lock();
        Report {
            healthy: self.healthy(),
            since: state.since,
            cause: state.cause.clone(),
            failures: self.failures.load(Relaxed),
        }
    }

    fn set(&self, state: &mut State, now: Duration, cause: Option<Cause>) {
        self.healthy.store(cause.is_none(), Relaxed);
        if cause.is_none() {
            self.failures.store(0, Relaxed);
            state.ejected_until = None;
            state.probes_failed = 0;
        }
        state.since = Some(now);
        state.changes.push(cause.clone().map_or(Change::Healthy, Change::Unhealthy));
        state.cause = cause;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn check() -> HealthCheck {
        HealthCheck { path: "/healthz".into(), interval: 5 * S, timeout: S, unhealthy_after: 3, healthy_after: 2 }
    }

    fn outlier() -> OutlierDetection {
        OutlierDetection { consecutive_failures: 5, ejection_time: 30 * S }
    }

    #[test]
    fn probes_mark_it_unhealthy_after_three_failures_and_healthy_after_two_passes() {
        let h = Health::default();
        let c = check();
        h.probed(Err("refused".into()), &c, S);
        h.probed(Err("refused".into()), &c, 2 * S);
        h.probed(Ok(()), &c, 3 * S); // a pass in between starts the count again
        h.probed(Err("refused".into()), &c, 4 * S);
        h.probed(Err("refused".into()), &c, 5 * S);
        assert!(h.healthy());
        h.probed(Err("503".into()), &c, 6 * S);
        assert!(!h.healthy());
        let cause = Cause::Probes { failed: 3, last: "503".into() };
        assert_eq!(h.take_changes(), vec![Change::Unhealthy(cause.clone())]);
        assert_eq!(h.report(), Report { healthy: false, since: Some(6 * S), cause: Some(cause), failures: 0 });
        h.probed(Ok(()), &c, 7 * S);
        assert!(!h.healthy());
        h.probed(Ok(()), &c, 8 * S);
        assert!(h.healthy());
        assert_eq!(h.take_changes(), vec![Change::Healthy]);
        assert_eq!(h.report().since, Some(8 * S));
    }

    #[test]
    fn failed_requests_in_a_row_eject_it_until_the_ejection_time_is_up() {
        let h = Health::default();
        let o = outlier();
        for _ in 0..4 {
            h.answered(true, Some(&o), || S);
        }
        h.answered(false, Some(&o), || S); // a success starts the count again
        for _ in 0..4 {
            h.answered(true, Some(&o), || S);
        }
        assert!(h.healthy());
        h.answered(true, Some(&o), || 2 * S);
        assert!(!h.healthy());
        assert_eq!(h.take_changes(), vec![Change::Unhealthy(Cause::Requests { failed: 5 })]);
        assert_eq!(h.retry_after(None, 12 * S), 20);
        h.tick(false, 31 * S);
        assert!(!h.healthy(), "29 s of the 30");
        h.tick(false, 32 * S);
        assert!(h.healthy());
        assert_eq!(h.report().failures, 0);
        assert_eq!(h.take_changes(), vec![Change::Healthy]);
    }

    #[test]
    fn with_an_active_check_an_ejection_ends_only_when_the_probes_pass() {
        let h = Health::default();
        let (c, o) = (check(), outlier());
        for _ in 0..5 {
            h.answered(true, Some(&o), || S);
        }
        assert!(!h.healthy());
        h.tick(true, 100 * S);
        assert!(!h.healthy(), "time alone does not end it while probes can");
        assert_eq!(h.retry_after(Some(c.interval), 100 * S), 5);
        h.probed(Ok(()), &c, 101 * S);
        h.probed(Ok(()), &c, 106 * S);
        assert!(h.healthy());
    }

    #[test]
    fn without_outlier_detection_failures_are_counted_only() {
        let h = Health::default();
        for _ in 0..100 {
            h.answered(true, None, || S);
        }
        assert!(h.healthy());
        assert_eq!(h.report().failures, 100);
        assert!(h.take_changes().is_empty());
    }
}
