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

pub mod checkpoint;
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
pub const FAST: [(Window, Window, f64); 2] = [(Window::H1, Window::M5, 14.4), (Window::H6, Window::M30, 6.0)];
pub const SLOW: [(Window, Window, f64); 2] = [(Window::D1, Window::H2, 3.0), (Window::D3, Window::H6, 1.0)];

/// One SLI's figures at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kind: SliKind,
    pub objective: f64,
    /// The latency SLI's threshold; `None` for availability.
    pub threshold: Option<Duration>,
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
    /// Fewest events in a rule's long window for it to fire.
    min_events: u64,
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
    /// An SLI whose rules fire on any traffic; see [`Sli::with_min_events`].
    pub fn new(kind: SliKind, objective: f64, threshold: Option<Duration>, window: Duration) -> Self {
        Self {
            kind,
            window,
            threshold,
            pending: AtomicU64::new(0),
            state: Mutex::new(State { objective, min_events: 0, windows: Windows::new(window), breached: None }),
        }
    }

    /// A rule fires only when its long window holds at least `n` events: a handful of
    /// requests with one error is no evidence of a burn.
    pub fn with_min_events(self, n: u64) -> Self {
        self.lock().min_events = n;
        self
    }

    #[inline]
    pub fn record(&self, good: bool) {
        self.pending.fetch_add(ONE | u64::from(good), Relaxed);
    }

    /// Whether this state can serve an SLI defined by `threshold` and `window`: the counts
    /// stay true only if good and the window mean what they meant. The objective is only
    /// a yardstick, so it changes in place.
    fn adopt(&self, objective: f64, min_events: u64, threshold: Option<Duration>, window: Duration) -> bool {
        if self.threshold != threshold || self.window != window {
            return false;
        }
        let mut state = self.lock();
        state.objective = objective;
        state.min_events = min_events;
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
        let report = report(self, &state, now);
        let firing = firing(&state, &report, now);
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
        report(self, &self.lock(), now)
    }

    /// This SLI's state at `now`, for a checkpoint: what was recorded since the last tick
    /// is left for the tick.
    pub fn export(&self) -> checkpoint::SliState {
        let state = self.lock();
        checkpoint::SliState {
            kind: self.kind.as_str().into(),
            threshold_ns: self.threshold.map(|t| t.as_nanos() as u64),
            window_ns: self.window.as_nanos() as u64,
            breached: state.breached.map(|s| s.as_str().to_string()),
            rings: state.windows.export(),
        }
    }

    /// Takes the counts and breach state of a checkpoint made by an SLI of the same
    /// definition (kind, threshold, window); what has left the windows by `now` is
    /// dropped. False, and nothing taken, for another definition.
    pub fn import(&self, saved: &checkpoint::SliState, now: Duration) -> bool {
        let same = saved.kind == self.kind.as_str()
            && saved.threshold_ns == self.threshold.map(|t| t.as_nanos() as u64)
            && saved.window_ns == self.window.as_nanos() as u64;
        if !same {
            return false;
        }
        let mut state = self.lock();
        state.windows.import(now, &saved.rings);
        state.breached = match saved.breached.as_deref() {
            Some("fast") => Some(Severity::Fast),
            Some("slow") => Some(Severity::Slow),
            _ => None,
        };
        true
    }

    /// The memory of this SLI's windows, fixed when it is built.
    pub fn bytes(&self) -> usize {
        self.lock().windows.bytes()
    }
}

fn report(sli: &Sli, state: &State, now: Duration) -> Report {
    let allowed = 1.0 - state.objective;
    let counts = state.windows.over_sla_window(now);
    let error_ratio = |c: Counts| if c.total == 0 { 0.0 } else { c.bad() as f64 / c.total as f64 };
    Report {
        kind: sli.kind,
        objective: state.objective,
        threshold: sli.threshold,
        compliance: 1.0 - error_ratio(counts),
        budget_remaining: 1.0 - error_ratio(counts) / allowed,
        burn: Window::ALL.map(|w| error_ratio(state.windows.over(now, w)) / allowed),
        counts,
        breached: state.breached,
    }
}

/// The most severe rule pair that fires, if any. A rule whose long window holds fewer than
/// `min_events` events does not fire: its burn rate says too little.
fn firing(state: &State, report: &Report, now: Duration) -> Option<Severity> {
    let fires = |rules: &[(Window, Window, f64)]| {
        rules.iter().any(|&(long, short, factor)| {
            report.burn(long) > factor
                && report.burn(short) > factor
                && state.windows.over(now, long).total >= state.min_events
        })
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
        let sli = |kind, old: Option<&Arc<Sli>>, objective: f64, threshold: Option<Duration>| match old
            .filter(|s| s.adopt(objective, spec.min_events, threshold, spec.window))
        {
            Some(kept) => kept.clone(),
            None => Arc::new(Sli::new(kind, objective, threshold, spec.window).with_min_events(spec.min_events)),
        };
        let latency = spec
            .latency
            .as_ref()
            .map(|l| sli(SliKind::Latency, previous.and_then(|p| p.latency.as_ref()), l.objective, Some(l.threshold)));
        let availability = spec.availability.map(|objective| {
            sli(SliKind::Availability, previous.and_then(|p| p.availability.as_ref()), objective, None)
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
