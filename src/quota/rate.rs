//! The rate quota: GCRA through governor, per key, in bounded memory.
//!
//! Memory: at most `max_keys` keys are tracked. Keys whose bucket is full again are
//! indistinguishable from new ones, so [`RateLimit::sweep`] drops them without granting
//! anyone extra burst. When the table is full of keys that are all still draining, a new
//! key shares one overflow bucket with every other untracked key: a flood of distinct keys
//! is throttled together instead of growing memory or resetting someone's bucket.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::{Key, KeySpec};

pub const DEFAULT_MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse what is over the quota.
    Enforce,
    /// Count what would be refused; refuse nothing.
    Shadow,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "enforce" => Ok(Self::Enforce),
            "shadow" => Ok(Self::Shadow),
            _ => Err(format!("`{text}` is not a mode: use enforce or shadow")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// A validated rate quota: `rate` requests per `per`, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSpec {
    pub rate: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
    pub key: KeySpec,
    pub mode: Mode,
    pub max_keys: NonZeroUsize,
}

impl RateSpec {
    /// The time one request's worth of quota takes to come back.
    pub fn emission_interval(&self) -> Duration {
        self.per / self.rate.get()
    }

    /// The time an empty bucket takes to fill: the window of `RateLimit-Policy`.
    pub fn refill_time(&self) -> Duration {
        self.emission_interval() * self.burst.get()
    }

    /// Whether limiter state built for `self` stays exact under `other`. The mode only
    /// decides what to do with a decision, so it can change without a reset.
    pub fn same_limiter(&self, other: &RateSpec) -> bool {
        RateSpec { mode: other.mode, ..self.clone() } == *other
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Over the quota; the same key passes again after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// The keyed state store with a cap and an overflow bucket.
///
/// The table hashes with foldhash, seeded at random per table: SipHash was a third of a
/// check. Keys come from clients, but a table holds at most `cap` of them, so a chosen
/// collision set can slow one route's lookups, never grow memory.
struct BoundedStore {
    map: DashMapStateStore<Key, foldhash::fast::RandomState>,
    overflow: InMemoryState,
    cap: usize,
    /// Shared with [`RateLimit`]: governor keeps its store private.
    overflowed: Arc<AtomicU64>,
}

impl StateStore for BoundedStore {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // A new key. `len` visits every shard, but only on this path.
        if self.map.len() >= self.cap {
            self.overflowed.fetch_add(1, Relaxed);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = self.map.entry(key.clone()).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }
}

/// One rate quota's live state.
pub struct RateLimit<C: Clock = DefaultClock> {
    spec: RateSpec,
    limiter: RateLimiter<Key, BoundedStore, C, NoOpMiddleware<C::Instant>>,
    evicted: AtomicU64,
    overflowed: Arc<AtomicU64>,
}

impl<C: Clock> RateLimit<C>
where
    C::Instant: Reference,
{
    pub fn new(spec: RateSpec, clock: C) -> Self {
        let quota = Quota::with_period(spec.emission_interval())
            .expect("validation keeps the emission interval above zero")
            .allow_burst(spec.burst);
        let overflowed = Arc::new(AtomicU64::new(0));
        let store = BoundedStore {
            map: DashMapStateStore::with_hasher(foldhash::fast::RandomState::default()),
            overflow: InMemoryState::default(),
            cap: spec.max_keys.get(),
            overflowed: overflowed.clone(),
        };
        let limiter = RateLimiter::new(quota, store, clock);
        Self { spec, limiter, evicted: AtomicU64::new(0), overflowed }
    }

    pub fn spec(&self) -> &RateSpec {
        &self.spec
    }

    /// Takes one request's worth of quota for `key`, if there is any.
    #[inline]
    pub fn check(&self, key: &Key) -> RateDecision {
        match self.limiter.check_key(key) {
            Ok(()) => RateDecision::Allowed,
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.limiter.clock().now());
                RateDecision::Limited { retry_after }
            }
        }
    }

    /// Drops the keys whose bucket is full again; returns how many went.
    pub fn sweep(&self) -> usize {
        let before = self.limiter.len();
        self.limiter.retain_recent();
        let evicted = before.saturating_sub(self.limiter.len());
        self.evicted.fetch_add(evicted as u64, Relaxed);
        evicted
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// Keys dropped by sweeps so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// Checks of new keys that found the table full and used the overflow bucket.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    use super::*;

    fn spec(rate: u32, per: Duration, burst: u32, max_keys: usize) -> RateSpec {
        RateSpec {
            rate: NonZeroU32::new(rate).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
            key: KeySpec::ClientIp,
            mode: Mode::Enforce,
            max_keys: NonZeroUsize::new(max_keys).unwrap(),
        }
    }

    fn key(n: u32) -> Key {
        Key::value(&n.to_be_bytes())
    }

    /// How many requests `key` gets through right now, back to back.
    fn admitted_at_once<C: Clock>(limit: &RateLimit<C>, key: &Key) -> usize
    where
        C::Instant: Reference,
    {
        std::iter::from_fn(|| (limit.check(key) == RateDecision::Allowed).then_some(())).count()
    }

    #[test]
    fn burst_then_one_per_interval() {
        // 60 per minute, burst 3: one request back every second.
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(spec(60, Duration::from_secs(60), 3, 10), clock.clone());
        let k = Key::Absent;
        for _ in 0..3 {
            assert_eq!(limit.check(&k), RateDecision::Allowed);
        }
        assert_eq!(limit.check(&k), RateDecision::Limited { retry_after: Duration::from_secs(1) });
        clock.advance(Duration::from_millis(400));
        assert_eq!(limit.check(&k), RateDecision::Limited { retry_after: Duration::from_millis(600) });
        clock.advance(Duration::from_millis(600));
        assert_eq!(limit.check(&k), RateDecision::Allowed);
        assert!(matches!(limit.check(&k), RateDecision::Limited { .. }));
        // After the whole refill time the full burst is back, and no more.
        clock.advance(Duration::from_secs(3));
        assert_eq!(admitted_at_once(&limit, &k), 3);
    }

    #[test]
    fn keys_are_independent() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(spec(1, Duration::from_secs(1), 1, 10), clock);
        assert!(matches!(limit.check(&key(1)), RateDecision::Allowed));
        assert!(matches!(limit.check(&key(1)), RateDecision::Limited { .. }));
        assert!(matches!(limit.check(&key(2)), RateDecision::Allowed));
        assert_eq!(limit.keys(), 2);
    }

    #[test]
    fn sweep_evicts_only_full_buckets() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(spec(1, Duration::from_secs(1), 2, 10), clock.clone());
        limit.check(&key(1));
        limit.check(&key(1)); // bucket empty: 2 s to fill
        clock.advance(Duration::from_millis(1500));
        limit.check(&key(2)); // 1 s to fill from now
        assert_eq!(limit.sweep(), 0);
        clock.advance(Duration::from_millis(500));
        // key 1 is full just now; governor keeps a key one interval past that, which
        // errs on the safe side (an early eviction would be a fresh burst)
        assert_eq!(limit.sweep(), 0);
        clock.advance(Duration::from_millis(1000));
        // key 1 has been full for an interval; key 2 only for half of one
        assert_eq!(limit.sweep(), 1);
        assert_eq!((limit.keys(), limit.evicted()), (1, 1));
        // the evicted key starts fresh, exactly as if it had stayed
        assert_eq!(admitted_at_once(&limit, &key(1)), 2);
    }

    #[test]
    fn key_flood_is_bounded_and_shares_the_overflow_bucket() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(spec(1, Duration::from_secs(60), 1, 100), clock);
        let mut allowed = 0;
        for n in 0..10_000 {
            if matches!(limit.check(&key(n)), RateDecision::Allowed) {
                allowed += 1;
            }
        }
        assert_eq!(limit.keys(), 100);
        // 100 tracked keys, then one shared bucket for the other 9,900.
        assert_eq!(allowed, 101);
        assert_eq!(limit.overflowed(), 9_900);
    }

    #[test]
    fn same_limiter_ignores_mode_only() {
        let a = spec(10, Duration::from_secs(1), 5, 10);
        assert!(a.same_limiter(&RateSpec { mode: Mode::Shadow, ..a.clone() }));
        assert!(!a.same_limiter(&RateSpec { burst: NonZeroU32::new(6).unwrap(), ..a.clone() }));
        assert!(!a.same_limiter(&RateSpec { key: KeySpec::None, ..a.clone() }));
    }

    proptest! {
        /// Over any schedule of requests, what is admitted never exceeds
        /// `burst + rate × elapsed`, and a full bucket admits exactly `burst` at once.
        #[test]
        fn admitted_never_exceeds_the_quota(
            rate in 1u32..1000,
            per_ms in 1u64..10_000,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
        ) {
            let per = Duration::from_millis(per_ms);
            let s = spec(rate, per, burst, 10);
            prop_assume!(s.emission_interval() > Duration::ZERO);
            let clock = FakeRelativeClock::default();
            let limit = RateLimit::new(s.clone(), clock.clone());
            let mut elapsed = Duration::ZERO;
            let mut admitted = 0u64;
            for gap in gaps {
                clock.advance(Duration::from_nanos(gap));
                elapsed += Duration::from_nanos(gap);
                match limit.check(&Key::Absent) {
                    RateDecision::Allowed => admitted += 1,
                    RateDecision::Limited { retry_after } => {
                        prop_assert!(retry_after > Duration::ZERO);
                        prop_assert!(retry_after <= s.emission_interval());
                    }
                }
                let bound = burst as f64 + elapsed.as_secs_f64() / s.emission_interval().as_secs_f64();
                prop_assert!(admitted as f64 <= bound + 1e-9, "admitted {admitted} > bound {bound}");
            }
        }
    }
}
