//! The SLA engine: each route's SLIs measured against their objectives over rolling
//! windows, with the error budget, burn rates and breach detection of the SRE workbook's
//! multi-window, multi-burn-rate alerts. Pure code over an injected clock: the caller
//! passes `now` (time since any fixed origin) to [`Sli::tick`] and [`Sli::report`].
//!
//! Requests are recorded with one relaxed atomic add into a pending count; a ticker moves
//! the pending counts into the windows once a second. A request is therefore placed in
//! time to within one tick, and the request path never takes a lock.
//!
//! Memory per SLI is fixed when it is built: 1,872 buckets of 24 bytes (44,928 bytes),
//! whatever the traffic; see [`Windows::bytes`].

mod window;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use window::{Counts, Window, Windows, WINDOW_BUCKETS};

use crate::config::Sla as SlaSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SliKind {
    /// Good: answered within the threshold.
    Latency,
    /// Good: not a 5xx, unreachable or timed-out upstream.
    Availability,
}

impl SliKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Availability => "availability",
        }
    }
}

/// Which burn-rate rule pair fired: the workbook's page (fast) or ticket (slow) alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fast,
    Slow,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Slow => "slow",
        }
    }
}

/// (long window, short window, burn-rate factor): both windows must burn faster than the
/// factor. The short window makes the alert stop soon after the burn does.
const FAST: [(Window, Window, f64); 2] = [(Window::H1, Window::M5, 14.4), (Window::H6, Window::M30, 6.0)];
const SLOW: [(Window, Window, f64); 2] = [(Window::D1, Window::H2, 3.0), (Window::D3, Window::H6, 1.0)];

/// One SLI's figures at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kind: SliKind,
    pub objective: f64,
    /// Good / total over the SLA window; 1 when there was no traffic.
    pub compliance: f64,
    /// 1 − bad / allowed bad over the SLA window: 1 untouched, 0 spent, below 0 overspent.
    pub budget_remaining: f64,
    /// Error ratio / (1 − objective), for each of [`Window::ALL`]; 0 without traffic.
    pub burn: [f64; 7],
    /// The SLA window's counts.
    pub counts: Counts,
    pub breached: Option<Severity>,
}

impl Report {
    pub fn burn(&self, window: Window) -> f64 {
        self.burn[Window::ALL.iter().position(|w| *w == window).expect("every window is in ALL")]
    }
}

/// A change of breach state, which the caller turns into an `sla_breached` or
/// `sla_recovered` event: breached when a rule starts to fire (and again if a slow burn
/// turns fast), recovered when none fires any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    Breached(Severity),
    Recovered,
}

struct State {
    objective: f64,
    windows: Windows,
    breached: Option<Severity>,
}

/// One SLI of one route.
pub struct Sli {
    kind: SliKind,
    window: Duration,
    /// Latency only: what counts as fast enough.
    threshold: Option<Duration>,
    /// Recorded since the last tick: total in the high 32 bits, good in the low 32, so one
    /// atomic add records a request and one swap takes a consistent pair.
    pending: AtomicU64,
    state: Mutex<State>,
}

const ONE: u64 = 1 << 32;

impl Sli {
    pub fn new(kind: SliKind, objective: f64, threshold: Option<Duration>, window: Duration) -> Self {
        Self {
            kind,
            window,
            threshold,
            pending: AtomicU64::new(0),
            state: Mutex::new(State { objective, windows: Windows::new(window), breached: None }),
        }
    }

    #[inline]
    pub fn record(&self, good: bool) {
        self.pending.fetch_add(ONE | u64::from(good), Relaxed);
    }

    /// Whether this state can serve an SLI defined by `threshold` and `window`: the counts
    /// stay true only if good and the window mean what they meant. The objective is only
    /// a yardstick, so it changes in place.
    fn adopt(&self, objective: f64, threshold: Option<Duration>, window: Duration) -> bool {
        if self.threshold != threshold || self.window != window {
            return false;
        }
        self.lock().objective = objective;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves what was recorded into the windows at `now`; returns the figures then (as
    /// judged before this tick's breach change) and whether the breach state changed.
    pub fn tick(&self, now: Duration) -> (Report, Option<Alert>) {
        let pending = self.pending.swap(0, Relaxed);
        let mut state = self.lock();
        state.windows.add(now, Counts { good: pending & (ONE - 1), total: pending >> 32 });
        let report = report(self.kind, &state, now);
        let firing = firing(&report);
        let alert = match (state.breached, firing) {
            // A slow burn turning fast is a new, more urgent breach; the way back is not.
            (None | Some(Severity::Slow), Some(Severity::Fast)) | (None, Some(Severity::Slow)) => {
                firing.map(Alert::Breached)
            }
            (Some(_), None) => Some(Alert::Recovered),
            _ => None,
        };
        state.breached = firing;
        (report, alert)
    }

    pub fn report(&self, now: Duration) -> Report {
        report(self.kind, &self.lock(), now)
    }

    /// The memory of this SLI's windows, fixed when it is built.
    pub fn bytes(&self) -> usize {
        self.lock().windows.bytes()
    }
}

fn report(kind: SliKind, state: &State, now: Duration) -> Report {
    let allowed = 1.0 - state.objective;
    let counts = state.windows.over_sla_window(now);
    let error_ratio = |c: Counts| if c.total == 0 { 0.0 } else { c.bad() as f64 / c.total as f64 };
    Report {
        kind,
        objective: state.objective,
        compliance: 1.0 - error_ratio(counts),
        budget_remaining: 1.0 - error_ratio(counts) / allowed,
        burn: Window::ALL.map(|w| error_ratio(state.windows.over(now, w)) / allowed),
        counts,
        breached: state.breached,
    }
}

/// The most severe rule pair that fires, if any.
fn firing(report: &Report) -> Option<Severity> {
    let fires = |rules: &[(Window, Window, f64)]| {
        rules.iter().any(|&(long, short, factor)| report.burn(long) > factor && report.burn(short) > factor)
    };
    if fires(&FAST) {
        Some(Severity::Fast)
    } else if fires(&SLOW) {
        Some(Severity::Slow)
    } else {
        None
    }
}

/// The SLIs of one route.
#[derive(Clone, Default)]
pub struct RouteSla {
    pub latency: Option<Arc<Sli>>,
    pub availability: Option<Arc<Sli>>,
}

impl RouteSla {
    /// The SLIs for `spec`, keeping from `previous` each SLI whose definition is unchanged.
    pub fn build(spec: Option<&SlaSpec>, previous: Option<&RouteSla>) -> Self {
        let Some(spec) = spec else { return Self::default() };
        let keep = |old: Option<&Arc<Sli>>, objective: f64, threshold: Option<Duration>| {
            old.filter(|s| s.adopt(objective, threshold, spec.window)).cloned()
        };
        let latency = spec.latency.as_ref().map(|l| {
            keep(previous.and_then(|p| p.latency.as_ref()), l.objective, Some(l.threshold))
                .unwrap_or_else(|| Arc::new(Sli::new(SliKind::Latency, l.objective, Some(l.threshold), spec.window)))
        });
        let availability = spec.availability.map(|objective| {
            keep(previous.and_then(|p| p.availability.as_ref()), objective, None)
                .unwrap_or_else(|| Arc::new(Sli::new(SliKind::Availability, objective, None, spec.window)))
        });
        Self { latency, availability }
    }

    /// Records one request that reached the service (quota refusals are not recorded).
    #[inline]
    pub fn record(&self, duration: Duration, failed: bool) {
        if let Some(sli) = &self.latency {
            sli.record(sli.threshold.is_some_and(|t| duration <= t));
        }
        if let Some(sli) = &self.availability {
            sli.record(!failed);
        }
    }

    pub fn slis(&self) -> impl Iterator<Item = &Arc<Sli>> {
        self.latency.iter().chain(&self.availability)
    }
}

#[cfg(test)]
mod tests;
