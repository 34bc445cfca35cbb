//! SLA state that outlives a process: each route's SLIs as plain data, so that a restart
//! does not reset a 30-day window to "since start". The data is written to
//! `<state_dir>/sla.json` every [`PERIOD`] and at drain (by [`crate::monitor`]), and taken
//! back at start by the SLIs whose definition (kind, latency threshold, window) is the same;
//! what has left a window since is dropped as it would have been. A `kill -9` loses at most
//! one period.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RouteSla;

/// How often the SLA state is checkpointed.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The checkpoint file, in `admin.state_dir`.
pub const FILE: &str = "sla.json";

/// One SLI: its definition, its breach state and its rings' counted buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliState {
    pub kind: String,
    pub threshold_ns: Option<u64>,
    pub window_ns: u64,
    pub breached: Option<String>,
    /// `[bucket, good, total]` of the 10 s, 1 min and 10 min rings, then the SLA window's.
    pub rings: [Vec<[u64; 3]>; 4],
}

/// Every route's SLIs, by route name.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// When it was made, on the engines' clock (nanoseconds since the Unix epoch).
    pub saved_ns: u64,
    pub routes: BTreeMap<String, Vec<SliState>>,
}

impl Checkpoint {
    /// The state of `routes` (name, SLIs) at `now`.
    pub fn of<'a>(now: Duration, routes: impl Iterator<Item = (&'a str, &'a RouteSla)>) -> Self {
        let routes = routes
            .map(|(name, sla)| (name.to_string(), sla.slis().map(|sli| sli.export()).collect::<Vec<_>>()))
            .filter(|(_, slis)| !slis.is_empty())
            .collect();
        Self { saved_ns: now.as_nanos() as u64, routes }
    }

    /// Gives each SLI of `routes` the saved state of its route's SLI of the same definition;
    /// returns how many took one.
    pub fn restore<'a>(&self, now: Duration, routes: impl Iterator<Item = (&'a str, &'a RouteSla)>) -> usize {
        let mut restored = 0;
        for (name, sla) in routes {
            let Some(saved) = self.routes.get(name) else { continue };
            for sli in sla.slis() {
                restored += usize::from(saved.iter().any(|s| sli.import(s, now)));
            }
        }
        restored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LatencySla, Sla};
    use crate::sla::Window;

    const DAY: Duration = Duration::from_secs(86400);

    fn spec(threshold_ms: u64, window: Duration) -> Sla {
        Sla {
            latency: Some(LatencySla { threshold: Duration::from_millis(threshold_ms), objective: 0.99 }),
            availability: Some(0.999),
            window,
            min_events: 100,
        }
    }

    #[test]
    fn counts_survive_a_restart_for_an_unchanged_sla_only() {
        let start = Duration::from_secs(1_800_000_000); // the clock counts from the epoch
        let before = RouteSla::build(Some(&spec(200, 30 * DAY)), None);
        for _ in 0..90 {
            before.record(Duration::from_millis(100), false);
        }
        for _ in 0..10 {
            before.record(Duration::from_millis(300), true);
        }
        for sli in before.slis() {
            sli.tick(start);
        }
        let saved = Checkpoint::of(start, [("a", &before), ("b", &before)].into_iter());
        let json = serde_json::to_string(&saved).unwrap();
        let saved: Checkpoint = serde_json::from_str(&json).unwrap();

        // A minute later, a new process: the same SLA takes the counts, a changed one not.
        let later = start + Duration::from_secs(60);
        let same = RouteSla::build(Some(&spec(200, 30 * DAY)), None);
        let changed = RouteSla::build(Some(&spec(250, 30 * DAY)), None);
        let restored = saved.restore(later, [("a", &same), ("b", &changed)].into_iter());
        assert_eq!(restored, 3, "a: both SLIs; b: availability only (the latency threshold changed)");
        let latency = same.latency.as_ref().unwrap().report(later);
        assert_eq!((latency.counts.good, latency.counts.total), (90, 100));
        assert_eq!(same.availability.as_ref().unwrap().report(later).counts.bad(), 10);
        assert_eq!(changed.latency.as_ref().unwrap().report(later).counts.total, 0);
        assert_eq!(changed.availability.as_ref().unwrap().report(later).counts.total, 100);
        // The 5-minute window lets go of them as it would have; the SLA window keeps them.
        let hour = later + Duration::from_secs(3600);
        let report = same.availability.as_ref().unwrap().report(hour);
        assert_eq!((report.burn(Window::M5), report.counts.total), (0.0, 100));
        // Older than the window: gone.
        let report = same.availability.as_ref().unwrap().report(start + 31 * DAY);
        assert_eq!(report.counts.total, 0);
        let late = RouteSla::build(Some(&spec(200, 30 * DAY)), None);
        saved.restore(start + 31 * DAY, [("a", &late)].into_iter());
        assert_eq!(late.availability.as_ref().unwrap().report(start + 31 * DAY).counts.total, 0);
    }
}
