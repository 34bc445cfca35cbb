//! The rate quota: GCRA (the generic cell rate algorithm), per key, in bounded memory.
//!
//! Memory: at most `max_keys` keys are tracked. Keys whose bucket is full again are
//! indistinguishable from new ones, so [`RateLimit::sweep`] drops them without granting
//! anyone extra burst. When the table is full of keys that are all still draining, a new
//! key shares one overflow bucket with every other untracked key: a flood of distinct keys
//! is throttled together instead of growing memory or resetting someone's bucket.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;

use super::offenders::OffendersState;
use super::{KeySpec, Offenders};

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

/// Which responses carry the quota's `RateLimit` and `RateLimit-Policy` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    /// Refusals (429) only.
    Refusals,
    /// Every response to a request the quota decided on, so clients can pace themselves.
    Always,
}

impl Advertise {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "refusals" => Ok(Self::Refusals),
            "always" => Ok(Self::Always),
            _ => Err(format!("`{text}` is not a choice: use refusals or always")),
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
    pub advertise: Advertise,
    pub scope: Scope,
}

/// Who a quota is counted by: this replica alone, or every replica of the service (on
/// Redis, `global`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Local,
    Global,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "local" => Ok(Self::Local),
            "global" => Ok(Self::Global),
            _ => Err(format!("`{text}` is not a scope: use local or global")),
        }
    }
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

    /// Whether limiter state built for `self` stays exact under `other`. The mode and what
    /// is advertised only decide what to do with a decision, so they change without a reset.
    pub fn same_limiter(&self, other: &RateSpec) -> bool {
        RateSpec { mode: other.mode, advertise: other.advertise, ..self.clone() } == *other
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

/// What a key has left after a decision, for the `RateLimit` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Requests it may still make at once.
    pub remaining: u32,
    /// Until its whole burst is back (refused: until it may pass again).
    pub full_in: Duration,
}

/// One rate quota's live state: a GCRA cell per key.
///
/// Each cell holds the key's theoretical arrival time (TAT), in nanoseconds since the
/// origin of the `now` the caller passes: the request path reads the clock once per
/// request, and tests pass any time they like.
///
/// The table is keyed by each key's 64-bit fingerprint (foldhash, seeded at random per
/// table), not by its bytes: an entry is 16 bytes, so 100k keys take 2 MB instead of 4, and
/// a lookup compares one word. With 100k keys, the one cache miss into the table is most of
/// a decision, and the smaller table made it 20% faster (BENCHMARKS.md). Two keys share a
/// bucket only if their fingerprints collide: about 3 in 10^10 for a full table of 100k,
/// and a client cannot aim for it without the table's seed.
pub struct RateLimit {
    spec: RateSpec,
    /// Nanoseconds one request's worth of quota takes to come back.
    interval: u64,
    /// How far ahead of `now` a TAT may run: `interval × burst`.
    tolerance: u64,
    /// The one cell of an unkeyed quota.
    whole: AtomicU64,
    keys: DashMap<u64, AtomicU64, BuildHasherDefault<Fingerprint>>,
    /// The seed of the fingerprints: random, and kept in a checkpoint, so that a restart
    /// finds each key's bucket again (see [`RateLimit::import`]).
    seed: AtomicU64,
    /// Shared by the new keys that find the table full.
    overflow: AtomicU64,
    /// The heaviest keys, when the quota is keyed.
    offenders: Option<Offenders>,
    evicted: AtomicU64,
    overflowed: AtomicU64,
}

impl RateLimit {
    pub fn new(spec: RateSpec) -> Self {
        let interval = nanos(spec.emission_interval()).max(1);
        let offenders = spec.key.is_keyed().then(Offenders::default);
        Self {
            tolerance: interval.saturating_mul(spec.burst.get().into()),
            interval,
            spec,
            whole: AtomicU64::new(0),
            keys: DashMap::default(),
            seed: AtomicU64::new(foldhash::fast::RandomState::default().hash_one(0x5eed_u64)),
            overflow: AtomicU64::new(0),
            offenders,
            evicted: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn spec(&self) -> &RateSpec {
        &self.spec
    }

    /// Takes one request's worth of quota for `key` at `now`, if there is any.
    #[inline]
    pub fn check(&self, key: &[u8], now: Duration) -> RateDecision {
        match self.decide(key, nanos(now)) {
            Ok(_) => RateDecision::Allowed,
            Err(retry_after) => RateDecision::Limited { retry_after },
        }
    }

    /// [`RateLimit::check`], and for an admitted request what is left: the requests the key
    /// may still make at once, and the time until its whole burst is back.
    #[inline]
    pub fn check_left(&self, key: &[u8], now: Duration) -> (RateDecision, Left) {
        let now = nanos(now);
        match self.decide(key, now) {
            Ok(tat) => {
                let ahead = tat.saturating_sub(now);
                let remaining = (self.tolerance.saturating_sub(ahead) / self.interval).min(u32::MAX.into()) as u32;
                (RateDecision::Allowed, Left { remaining, full_in: Duration::from_nanos(ahead) })
            }
            Err(retry_after) => (RateDecision::Limited { retry_after }, Left { remaining: 0, full_in: retry_after }),
        }
    }

    /// The key's new TAT if admitted, else the wait until it would be.
    #[inline]
    fn decide(&self, key: &[u8], now: u64) -> Result<u64, Duration> {
        let Some(offenders) = &self.offenders else { return self.take(&self.whole, now) };
        let fingerprint = foldhash::fast::FixedState::with_seed(self.seed.load(Relaxed)).hash_one(key);
        offenders.observe(key, fingerprint);
        if let Some(cell) = self.keys.get(&fingerprint) {
            return self.take(&cell, now);
        }
        self.decide_new(fingerprint, now)
    }

    /// A key not in the table. `len` visits every shard, but only on this path.
    #[cold]
    fn decide_new(&self, fingerprint: u64, now: u64) -> Result<u64, Duration> {
        if self.keys.len() >= self.spec.max_keys.get() {
            self.overflowed.fetch_add(1, Relaxed);
            return self.take(&self.overflow, now);
        }
        let cell = self.keys.entry(fingerprint).or_insert_with(|| AtomicU64::new(0));
        self.take(&cell, now)
    }

    /// GCRA: admit when the TAT pushed one interval on stays within `tolerance` of now.
    /// Returns the new TAT, or the wait until the request would be admitted.
    #[inline]
    fn take(&self, cell: &AtomicU64, now: u64) -> Result<u64, Duration> {
        let mut tat = cell.load(Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let limit = now.saturating_add(self.tolerance);
            if next > limit {
                return Err(Duration::from_nanos(next - limit));
            }
            match cell.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(next),
                Err(current) => tat = current,
            }
        }
    }

    /// Drops the keys whose bucket is full again at `now` (TAT not after it): such a key
    /// starts over exactly where it was. Returns how many went.
    pub fn sweep(&self, now: Duration) -> usize {
        let now = nanos(now);
        // Counted as they go: a key the request path adds meanwhile is not an eviction.
        let mut evicted = 0;
        self.keys.retain(|_, tat| {
            let keep = *tat.get_mut() > now;
            evicted += usize::from(!keep);
            keep
        });
        self.evicted.fetch_add(evicted as u64, Relaxed);
        evicted
    }

    /// The state worth keeping at `now`: the seed, and the cells whose bucket is not full
    /// again (a full one is a new key's).
    pub fn export(&self, now: Duration) -> RateState {
        let now = nanos(now);
        let draining = |tat: u64| (tat > now).then_some(tat);
        let mut keys: Vec<[u64; 2]> =
            self.keys.iter().filter_map(|e| draining(e.value().load(Relaxed)).map(|tat| [*e.key(), tat])).collect();
        keys.sort_unstable();
        RateState {
            limiter: self.identity(),
            seed: self.seed.load(Relaxed),
            whole: draining(self.whole.load(Relaxed)),
            overflow: draining(self.overflow.load(Relaxed)),
            keys,
            offenders: self.offenders.as_ref().map(Offenders::export),
        }
    }

    /// Takes `saved` (an [`export`](Self::export) of the same limiter, perhaps by another
    /// process) as this one's state, if this one has decided nothing yet; the cells that
    /// are full again by `now` are left out. Whether it was taken.
    pub fn import(&self, saved: &RateState, now: Duration) -> bool {
        let untouched = self.keys.is_empty() && self.whole.load(Relaxed) == 0 && self.overflow.load(Relaxed) == 0;
        if saved.limiter != self.identity() || !untouched {
            return false;
        }
        let now = nanos(now);
        self.seed.store(saved.seed, Relaxed);
        let draining = |tat: &u64| *tat > now;
        if let Some(tat) = saved.whole.filter(draining) {
            self.whole.store(tat, Relaxed);
        }
        if let Some(tat) = saved.overflow.filter(draining) {
            self.overflow.store(tat, Relaxed);
        }
        let room = self.spec.max_keys.get();
        for [fingerprint, tat] in saved.keys.iter().copied().filter(|[_, tat]| draining(tat)).take(room) {
            self.keys.insert(fingerprint, AtomicU64::new(tat));
        }
        if let (Some(offenders), Some(saved)) = (&self.offenders, &saved.offenders) {
            offenders.import(saved);
        }
        true
    }

    /// What makes two limiters' states interchangeable: the arithmetic and the key, not the
    /// mode or what responses advertise.
    fn identity(&self) -> String {
        let s = &self.spec;
        format!("rate {} per {}ns burst {} key {} max_keys {}", s.rate, s.per.as_nanos(), s.burst, s.key, s.max_keys)
    }

    /// The heaviest keys of a keyed quota.
    pub fn offenders(&self) -> Option<&Offenders> {
        self.offenders.as_ref()
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.keys.len()
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

/// A rate quota's state as plain data, for a checkpoint: TATs in nanoseconds on the
/// engines' clock (since the Unix epoch), so another process can take them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateState {
    pub limiter: String,
    pub seed: u64,
    pub whole: Option<u64>,
    pub overflow: Option<u64>,
    /// `[fingerprint, TAT]`.
    pub keys: Vec<[u64; 2]>,
    /// A keyed quota's heaviest keys (absent from checkpoints written before they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offenders: Option<OffendersState>,
}

/// The table's keys are fingerprints, already hashes: they are used as they are.
#[derive(Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 fingerprints are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Nanoseconds, saturating: u64 nanoseconds last 584 years.
fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
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
            advertise: Advertise::Refusals,
            scope: Scope::Local,
        }
    }

    fn key(n: u32) -> [u8; 4] {
        n.to_be_bytes()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How many requests `key` gets through at `now`, back to back.
    fn admitted_at_once(limit: &RateLimit, key: &[u8], now: Duration) -> usize {
        std::iter::from_fn(|| (limit.check(key, now) == RateDecision::Allowed).then_some(())).count()
    }

    #[test]
    fn burst_then_one_per_interval() {
        // 60 per minute, burst 3: one request back every second.
        let limit = RateLimit::new(spec(60, Duration::from_secs(60), 3, 10));
        let k = b"";
        for _ in 0..3 {
            assert_eq!(limit.check(k, ms(0)), RateDecision::Allowed);
        }
        assert_eq!(limit.check(k, ms(0)), RateDecision::Limited { retry_after: ms(1000) });
        assert_eq!(limit.check(k, ms(400)), RateDecision::Limited { retry_after: ms(600) });
        assert_eq!(limit.check(k, ms(1000)), RateDecision::Allowed);
        assert!(matches!(limit.check(k, ms(1000)), RateDecision::Limited { .. }));
        // After the whole refill time the full burst is back, and no more.
        assert_eq!(admitted_at_once(&limit, k, ms(4000)), 3);
    }

    #[test]
    fn what_is_left_counts_down_the_burst() {
        // 60 per minute, burst 3: one back every second.
        let limit = RateLimit::new(spec(60, Duration::from_secs(60), 3, 10));
        let left = |now| limit.check_left(b"k", now);
        assert_eq!(left(ms(0)), (RateDecision::Allowed, Left { remaining: 2, full_in: ms(1000) }));
        assert_eq!(left(ms(0)), (RateDecision::Allowed, Left { remaining: 1, full_in: ms(2000) }));
        assert_eq!(left(ms(0)), (RateDecision::Allowed, Left { remaining: 0, full_in: ms(3000) }));
        let refused = RateDecision::Limited { retry_after: ms(1000) };
        assert_eq!(left(ms(0)), (refused, Left { remaining: 0, full_in: ms(1000) }));
        // Half a second later, still none at once; a second later, one is back.
        assert_eq!(left(ms(1500)), (RateDecision::Allowed, Left { remaining: 0, full_in: ms(2500) }));
    }

    #[test]
    fn unkeyed_quota_is_one_bucket() {
        let limit = RateLimit::new(RateSpec { key: KeySpec::None, ..spec(1, Duration::from_secs(1), 2, 10) });
        assert_eq!(limit.check(b"a", ms(0)), RateDecision::Allowed);
        assert_eq!(limit.check(b"b", ms(0)), RateDecision::Allowed);
        assert!(matches!(limit.check(b"c", ms(0)), RateDecision::Limited { .. }));
        assert_eq!(limit.keys(), 0);
    }

    #[test]
    fn keys_are_independent() {
        let limit = RateLimit::new(spec(1, Duration::from_secs(1), 1, 10));
        assert!(matches!(limit.check(&key(1), ms(0)), RateDecision::Allowed));
        assert!(matches!(limit.check(&key(1), ms(0)), RateDecision::Limited { .. }));
        assert!(matches!(limit.check(&key(2), ms(0)), RateDecision::Allowed));
        assert_eq!(limit.keys(), 2);
    }

    #[test]
    fn sweep_evicts_only_full_buckets() {
        let limit = RateLimit::new(spec(1, Duration::from_secs(1), 2, 10));
        limit.check(&key(1), ms(0));
        limit.check(&key(1), ms(0)); // bucket empty: full again at 2 s
        limit.check(&key(2), ms(1500)); // full again at 2.5 s
        assert_eq!(limit.sweep(ms(1999)), 0);
        assert_eq!(limit.sweep(ms(2000)), 1);
        assert_eq!((limit.keys(), limit.evicted()), (1, 1));
        // the evicted key starts over exactly where it was: a full bucket, no more
        assert_eq!(admitted_at_once(&limit, &key(1), ms(2000)), 2);
        assert_eq!(admitted_at_once(&limit, &key(2), ms(2000)), 1);
    }

    #[test]
    fn key_flood_is_bounded_and_shares_the_overflow_bucket() {
        let limit = RateLimit::new(spec(1, Duration::from_secs(60), 1, 100));
        let allowed = (0..10_000).filter(|&n| limit.check(&key(n), ms(0)) == RateDecision::Allowed).count();
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

    #[test]
    fn exact_under_threads() {
        // burst 1000 at one instant: four threads racing take exactly 1000
        let limit = RateLimit::new(spec(1, Duration::from_secs(3600), 1000, 10));
        let allowed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if limit.check(b"k", ms(5)) == RateDecision::Allowed {
                            allowed.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 1000);
    }

    proptest! {
        /// Over any schedule of requests, what is admitted never exceeds
        /// `burst + rate × elapsed`, and a refusal's wait is at most one interval and not too short.
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
            let limit = RateLimit::new(s.clone());
            let mut elapsed = Duration::ZERO;
            let mut admitted = 0u64;
            for gap in gaps {
                elapsed += Duration::from_nanos(gap);
                match limit.check(b"", elapsed) {
                    RateDecision::Allowed => admitted += 1,
                    RateDecision::Limited { retry_after } => {
                        prop_assert!(retry_after > Duration::ZERO);
                        prop_assert!(retry_after <= s.emission_interval());
                        // and it is not too short: a nanosecond before it, still refused
                        let early = elapsed + retry_after - Duration::from_nanos(1);
                        let refused = matches!(limit.check(b"", early), RateDecision::Limited { .. });
                        prop_assert!(refused, "passed 1 ns before its retry_after of {retry_after:?}");
                    }
                }
                let bound = burst as f64 + elapsed.as_secs_f64() / s.emission_interval().as_secs_f64();
                prop_assert!(admitted as f64 <= bound + 1e-9, "admitted {admitted} > bound {bound}");
            }
        }
    }
}
