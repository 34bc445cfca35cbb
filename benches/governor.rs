//! A/B for issue 18's question: the local rate engine (`quota::RateLimit::check`, a
//! hand-written GCRA over a table of key fingerprints) against governor's GCRA over the
//! same table, with the same per-request work around it (the key's fingerprint, the
//! offenders' count). governor is given the table as its `StateStore` and the request's
//! `now` through its `Clock`, so only the GCRA step differs. Run:
//! `cargo bench --bench governor` (several times: the rounds of an interleaved A/B).

use std::cell::Cell;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use sluice::quota::{Advertise, KeySpec, Mode, Offenders, RateLimit, RateSpec, Scope};

/// Fingerprints are hashes already: used as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 fingerprints")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// sluice's table (a TAT per fingerprint), as governor's state store.
#[derive(Default)]
struct Table(DashMap<u64, AtomicU64, BuildHasherDefault<Identity>>);

impl StateStore for Table {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let replace = |cell: &AtomicU64| {
            let mut prev = cell.load(Ordering::Relaxed);
            loop {
                let (result, next) = f((prev != 0).then(|| Nanos::from(Duration::from_nanos(prev))))?;
                match cell.compare_exchange_weak(prev, next.as_u64(), Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return Ok(result),
                    Err(current) => prev = current,
                }
            }
        };
        if let Some(cell) = self.0.get(key) {
            return replace(&cell);
        }
        let cell = self.0.entry(*key).or_default();
        replace(&cell)
    }
}

type Governed = RateLimiter<u64, Table, EngineClock, NoOpMiddleware<Duration>>;

thread_local!(static NOW: Cell<Duration> = const { Cell::new(Duration::ZERO) });

/// The request's `now`, as the request path hands it to the engine.
struct EngineClock;

impl Clock for EngineClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        NOW.with(Cell::get)
    }
}

fn engines(c: &mut Criterion) {
    let spec = RateSpec {
        rate: NonZeroU32::new(1_000_000_000).unwrap(),
        per: Duration::from_secs(1),
        burst: NonZeroU32::new(1_000_000).unwrap(),
        key: KeySpec::Header(http::HeaderName::from_static("x-consumer-id")),
        mode: Mode::Enforce,
        max_keys: NonZeroUsize::new(200_000).unwrap(),
        advertise: Advertise::Refusals,
        scope: Scope::Local,
    };
    let quota = Quota::with_period(spec.emission_interval()).unwrap().allow_burst(spec.burst);
    let origin = Instant::now();
    for keys in [1, 100_000] {
        let keys: Vec<Vec<u8>> = (0..keys).map(|i| format!("consumer-{i:06}").into_bytes()).collect();
        let ours = RateLimit::new(spec.clone());
        NOW.with(|now| now.set(origin.elapsed()));
        let theirs: Governed = RateLimiter::new(quota, Table::default(), EngineClock);
        let (hasher, offenders) = (foldhash::fast::RandomState::default(), Offenders::default());
        let governed = |key: &[u8], now: Duration| {
            let fingerprint = hasher.hash_one(key);
            offenders.observe(key, fingerprint);
            NOW.with(|cell| cell.set(now));
            theirs.check_key(&fingerprint).is_ok()
        };
        for k in &keys {
            ours.check(k, origin.elapsed());
            governed(k, origin.elapsed());
        }
        let n = keys.len();
        let mut i = 0;
        c.bench_function(&format!("rate_engine/sluice/{n}_keys"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(ours.check(&keys[i], origin.elapsed()))
            })
        });
        c.bench_function(&format!("rate_engine/governor/{n}_keys"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(governed(&keys[i], origin.elapsed()))
            })
        });
        // Same answers: both admit everything here, and refuse alike past a burst.
        let tight = RateSpec { rate: NonZeroU32::new(10).unwrap(), burst: NonZeroU32::new(3).unwrap(), ..spec.clone() };
        let ours = RateLimit::new(tight.clone());
        let quota = Quota::with_period(tight.emission_interval()).unwrap().allow_burst(tight.burst);
        let theirs: Governed = RateLimiter::new(quota, Table::default(), EngineClock);
        let now = origin.elapsed() + Duration::from_secs(1);
        NOW.with(|cell| cell.set(now));
        let a: Vec<bool> = (0..5).map(|_| ours.check(b"k", now) == sluice::quota::RateDecision::Allowed).collect();
        let b: Vec<bool> = (0..5).map(|_| theirs.check_key(&1).is_ok()).collect();
        assert_eq!(a, b, "the two engines decide alike");
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
