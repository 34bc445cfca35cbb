//! Local rate quota state that outlives a process: each rate quota's buckets as plain data,
//! written to `<state_dir>/quota.json` with the SLA windows (every
//! [`crate::sla::checkpoint::PERIOD`] and at drain, by [`crate::monitor`]) and taken back
//! at start by the quotas whose limiter (rate, period, burst, key) is the same, so that a
//! restart grants nobody a fresh burst. Buckets that are full again by then are left out,
//! as a sweep would drop them. A keyed quota's heaviest keys go with it
//! ([`super::OffendersState`]). A `kill -9` loses at most one period.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{RateLimit, RateState};

/// The checkpoint file, in `admin.state_dir`.
pub const FILE: &str = "quota.json";

/// Every local rate quota's state, by scope: `service`, or `route NAME`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// When it was made, on the engines' clock (nanoseconds since the Unix epoch).
    pub saved_ns: u64,
    pub rates: BTreeMap<String, RateState>,
}

impl Checkpoint {
    /// The state of `limits` (scope, limiter) at `now`.
    pub fn of<'a>(now: Duration, limits: impl Iterator<Item = (String, &'a RateLimit)>) -> Self {
        let rates = limits.map(|(scope, limit)| (scope, limit.export(now))).collect();
        Self { saved_ns: now.as_nanos() as u64, rates }
    }

    /// Gives each of `limits` the saved state of its scope, where the limiter is the same;
    /// returns how many took theirs.
    pub fn restore<'a>(&self, now: Duration, limits: impl Iterator<Item = (String, &'a RateLimit)>) -> usize {
        limits.filter(|(scope, limit)| self.rates.get(scope).is_some_and(|saved| limit.import(saved, now))).count()
    }
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroUsize};

    use super::*;
    use crate::quota::{Advertise, KeySpec, Mode, RateDecision, RateSpec, Scope};

    fn limit(burst: u32) -> RateLimit {
        RateLimit::new(RateSpec {
            rate: NonZeroU32::new(1).unwrap(),
            per: Duration::from_secs(60),
            burst: NonZeroU32::new(burst).unwrap(),
            key: KeySpec::ClientIp,
            mode: Mode::Enforce,
            max_keys: NonZeroUsize::new(100).unwrap(),
            advertise: Advertise::Refusals,
            scope: Scope::Local,
        })
    }

    const T0: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn a_spent_burst_is_still_spent_in_the_next_process_and_comes_back_on_time() {
        let before = limit(2);
        for _ in 0..2 {
            assert_eq!(before.check(b"10.0.0.1", T0), RateDecision::Allowed);
        }
        assert!(matches!(before.check(b"10.0.0.1", T0), RateDecision::Limited { .. }));
        assert_eq!(before.check(b"10.0.0.2", T0), RateDecision::Allowed);
        let saved = Checkpoint::of(T0, [("route a".to_string(), &before)].into_iter());
        let text = serde_json::to_string(&saved).unwrap();

        // Another process: the same quota, a fresh table, the saved state read back.
        let after = limit(2);
        let saved: Checkpoint = serde_json::from_str(&text).unwrap();
        let later = T0 + Duration::from_secs(1);
        assert_eq!(saved.restore(later, [("route a".to_string(), &after)].into_iter()), 1);
        let top = after.offenders().unwrap().top(later);
        assert_eq!(top, before.offenders().unwrap().top(later), "the heaviest keys");
        assert_eq!(top[0].key, b"10.0.0.1");
        assert!(matches!(after.check(b"10.0.0.1", later), RateDecision::Limited { .. }), "a fresh burst");
        assert_eq!(after.check(b"10.0.0.2", later), RateDecision::Allowed, "one of two left");
        assert!(matches!(after.check(b"10.0.0.2", later), RateDecision::Limited { .. }));
        // One request a minute comes back, as it would have in the first process.
        assert_eq!(after.check(b"10.0.0.1", T0 + Duration::from_secs(61)), RateDecision::Allowed);
    }

    #[test]
    fn a_changed_limiter_or_a_used_table_takes_nothing_and_full_buckets_are_left_out() {
        let before = limit(2);
        before.check(b"10.0.0.1", T0);
        let saved = Checkpoint::of(T0, [("route a".to_string(), &before)].into_iter());
        assert_eq!(saved.rates["route a"].keys.len(), 1);
        // A burst of 3 is another limiter; another scope's state is not this one's.
        assert_eq!(saved.restore(T0, [("route a".to_string(), &limit(3))].into_iter()), 0);
        assert_eq!(saved.restore(T0, [("route b".to_string(), &limit(2))].into_iter()), 0);
        // A table that decided already keeps what it has.
        let used = limit(2);
        used.check(b"10.0.0.9", T0);
        assert_eq!(saved.restore(T0, [("route a".to_string(), &used)].into_iter()), 0);
        // Two minutes on, the bucket is full again: nothing of it is kept.
        let late = T0 + Duration::from_secs(120);
        assert!(Checkpoint::of(late, [("route a".to_string(), &before)].into_iter()).rates["route a"].keys.is_empty());
        let fresh = limit(2);
        assert_eq!(saved.restore(late, [("route a".to_string(), &fresh)].into_iter()), 1);
        assert_eq!(fresh.keys(), 0);
    }
}
