//! One global rate quota on one replica: each client key's [`Lease`], the [`Store`] they
//! are taken from, the [`Circuit`] in front of it and the `on_error` policy behind it. The
//! request path will ask [`GlobalRate::check`] once per request (not wired yet).
//!
//! At most one take from Redis is out per key on a replica (the one that found the lease
//! empty, or a top-up before it is): a request that finds the lease empty while one is out
//! waits for it, bounded by `global.timeout`, instead of taking again. So a replica never
//! holds more than one batch, and the bound of [`super::lease`] holds. Top-ups and probes
//! run in the background: a request waits on Redis only when its key's lease is empty.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::degraded::{Call, Change, Circuit, OnError};
use super::lease::{Gcra, Lease, Step};
use super::store::Store;
use crate::quota::{RateDecision, RateLimit};

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Over the global quota: passes again after this long.
    Limited {
        retry_after: Duration,
    },
    /// Redis could not decide; by the policy, the request passes (`allow`, or within this
    /// replica's share) or not (`deny`, or over its share: then after `retry_after`).
    Degraded {
        allowed: bool,
        retry_after: Duration,
    },
}

struct KeyState {
    lease: Mutex<Lease>,
    /// Woken when the take that was out comes back.
    taken: Notify,
}

struct Inner {
    store: Store,
    gcra: Gcra,
    batch: u32,
    on_error: OnError,
    /// `local_share`: this replica's share of the rate, enforced here while Redis is gone.
    share: Option<RateLimit>,
    keys: DashMap<String, Arc<KeyState>>,
    circuit: Mutex<Circuit>,
}

/// A global rate quota's state on this replica. Cheap to clone.
#[derive(Clone)]
pub struct GlobalRate(Arc<Inner>);

impl GlobalRate {
    /// `share` is the local quota `local_share` enforces (the rate over the replicas), if
    /// that is the policy.
    pub fn new(store: Store, gcra: Gcra, batch: u32, on_error: OnError, share: Option<RateLimit>) -> Self {
        let circuit = Mutex::new(Circuit::default());
        Self(Arc::new(Inner { store, gcra, batch, on_error, share, keys: DashMap::new(), circuit }))
    }

    /// The decision for one request whose client key is `key` (its bytes: the local share
    /// counts them), its state at `state_key` in Redis, at `now` on the engines' clock;
    /// and the change of the circuit this call made, if any, to log, count and send.
    pub async fn check(&self, state_key: &str, key: &[u8], now: Duration) -> (Outcome, Option<Change>) {
        let inner = &self.0;
        let state = match inner.keys.get(state_key) {
            Some(state) => state.clone(),
            None => inner.keys.entry(state_key.to_string()).or_default().clone(),
        };
        let mut change = None;
        // Takes and waits until a decision, within one call's bound: a key so busy that its
        // leases are spent by others before this request gets one is refused for an interval.
        let deadline = tokio::time::Instant::now() + inner.store.timeout();
        while tokio::time::Instant::now() < deadline {
            let notified = state.taken.notified();
            tokio::pin!(notified);
            let (step, back) = {
                let mut lease = lock(&state.lease);
                let back = lease.expire(now);
                let step = lease.decide(now, inner.batch);
                if step == Step::Wait {
                    // Registered before the lease is let go, so that the take coming back
                    // after this wakes this request; only a request that waits registers.
                    notified.as_mut().enable();
                }
                (step, back)
            };
            self.give_back(state_key, back);
            match step {
                Step::Allowed { refill } => {
                    if let Some(n) = refill {
                        self.top_up(state_key.to_string(), state.clone(), n, now);
                    }
                    return (Outcome::Allowed, change);
                }
                Step::Limited { retry_after } => return (Outcome::Limited { retry_after }, change),
                Step::Wait => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                Step::Take(n) => {
                    let call = lock(&inner.circuit).call(now);
                    if call != Call::Make {
                        lock(&state.lease).failed();
                        if call == Call::Probe {
                            self.probe(state_key.to_string(), now);
                        }
                        return (self.policy(key, now), change);
                    }
                    let taken = inner.store.take(state_key, inner.gcra, n).await;
                    change = lock(&inner.circuit).result(now, taken.is_ok()).or(change);
                    match taken {
                        Ok(grant) => {
                            let back = lock(&state.lease).granted(now, grant);
                            state.taken.notify_waiters();
                            self.give_back(state_key, back);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "global quota: redis call failed");
                            lock(&state.lease).failed();
                            state.taken.notify_waiters();
                            return (self.policy(key, now), change);
                        }
                    }
                }
            }
        }
        (Outcome::Limited { retry_after: inner.gcra.interval }, change)
    }

    /// Tops the lease up in the background.
    fn top_up(&self, state_key: String, state: Arc<KeyState>, n: u32, now: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.0;
            let taken = inner.store.take(&state_key, inner.gcra, n).await;
            lock(&inner.circuit).result(now, taken.is_ok());
            match taken {
                Ok(grant) => {
                    let back = lock(&state.lease).granted(now, grant);
                    this.give_back(&state_key, back);
                }
                Err(_) => lock(&state.lease).failed(),
            }
            state.taken.notify_waiters();
        });
    }

    /// One call, in the background, to see whether Redis is back: what it takes is given
    /// back, as it admitted nothing.
    fn probe(&self, state_key: String, now: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.0;
            let taken = inner.store.take(&state_key, inner.gcra, 1).await;
            lock(&inner.circuit).result(now, taken.is_ok());
            if let Ok(grant) = taken {
                this.give_back(&state_key, grant.granted);
            }
        });
    }

    /// Gives back unspent tokens in the background.
    fn give_back(&self, state_key: &str, tokens: u32) {
        if tokens == 0 {
            return;
        }
        let (inner, state_key) = (self.0.clone(), state_key.to_string());
        tokio::spawn(async move {
            let _ = inner.store.give_back(&state_key, inner.gcra, tokens).await;
        });
    }

    fn policy(&self, key: &[u8], now: Duration) -> Outcome {
        let inner = &self.0;
        match (inner.on_error, &inner.share) {
            (OnError::Deny, _) => Outcome::Degraded { allowed: false, retry_after: super::degraded::PROBE_EVERY },
            (OnError::LocalShare, Some(share)) => match share.check(key, now) {
                RateDecision::Allowed => Outcome::Degraded { allowed: true, retry_after: Duration::ZERO },
                RateDecision::Limited { retry_after } => Outcome::Degraded { allowed: false, retry_after },
            },
            (OnError::Allow | OnError::LocalShare, _) => {
                Outcome::Degraded { allowed: true, retry_after: Duration::ZERO }
            }
        }
    }

    /// Whether the policy decides now (`sluice_global_quota_degraded`).
    pub fn degraded(&self) -> bool {
        lock(&self.0.circuit).degraded()
    }

    /// Forgets the keys whose lease holds nothing at `now`, giving back what expired leases
    /// had left: the table holds the keys that spend now, not every key ever seen. Returns
    /// how many went.
    pub fn sweep(&self, now: Duration) -> usize {
        let before = self.0.keys.len();
        self.0.keys.retain(|state_key, state| {
            let mut lease = lock(&state.lease);
            let back = lease.expire(now);
            self.give_back(state_key, back);
            !lease.idle(now)
        });
        before.saturating_sub(self.0.keys.len())
    }

    /// Keys with a lease now.
    pub fn keys(&self) -> usize {
        self.0.keys.len()
    }
}

impl Default for KeyState {
    fn default() -> Self {
        Self { lease: Mutex::new(Lease::default()), taken: Notify::new() }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::lease::batch;
    use super::super::store::state_key;
    use super::super::store::tests::Redis;
    use super::*;
    use crate::quota::{Advertise, KeySpec, Mode, RateSpec};

    fn clock() -> Duration {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
    }

    async fn replica(redis: &Redis, gcra: Gcra, replicas: u32, on_error: OnError, timeout: Duration) -> GlobalRate {
        let store = Store::connect(&[&redis.url], timeout).await.unwrap();
        let share = RateLimit::new(RateSpec {
            rate: NonZeroU32::new(10).unwrap(),
            per: Duration::from_secs(1),
            burst: NonZeroU32::new(2).unwrap(),
            key: KeySpec::ClientIp,
            mode: Mode::Enforce,
            max_keys: NonZeroUsize::new(100).unwrap(),
            advertise: Advertise::Refusals,
        });
        GlobalRate::new(store, gcra, batch(gcra.burst, replicas), on_error, Some(share))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_replicas_share_one_quota_within_the_bound() {
        let redis = Redis::start();
        // 20 a second, burst 40: a batch of 3 for 3 replicas.
        let gcra = Gcra { interval: Duration::from_millis(50), burst: 40 };
        let replicas = [
            // a timeout no loaded test machine reaches: this test is of the bound
            replica(&redis, gcra, 3, OnError::Deny, Duration::from_secs(1)).await,
            replica(&redis, gcra, 3, OnError::Deny, Duration::from_secs(1)).await,
            replica(&redis, gcra, 3, OnError::Deny, Duration::from_secs(1)).await,
        ];
        let key = state_key("svc", "r", b"k");
        let admitted = Arc::new(AtomicU32::new(0));
        let start = clock();
        let mut tasks = Vec::new();
        // 12 clients, most of them on the first replica, for about a second
        for client in 0..12 {
            let (replica, key, admitted) =
                (replicas[[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2][client]].clone(), key.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                while clock() - start < Duration::from_secs(1) {
                    let (outcome, _) = replica.check(&key, b"k", clock()).await;
                    match outcome {
                        Outcome::Allowed => drop(admitted.fetch_add(1, Ordering::Relaxed)),
                        Outcome::Limited { .. } => {}
                        Outcome::Degraded { .. } => panic!("redis is up"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = (clock() - start).as_secs_f64();
        let admitted = admitted.load(Ordering::Relaxed) as f64;
        let envelope = 40.0 + elapsed * 20.0;
        assert!(admitted <= envelope + 3.0 * 3.0, "{admitted} admitted: envelope {envelope} + 3 × 3");
        assert!(admitted >= 0.8 * envelope, "{admitted} admitted: the shared quota is spent, envelope {envelope}");
        // Idle keys are forgotten, their unspent tokens given back.
        assert_eq!(replicas[0].keys(), 1);
        assert_eq!(replicas[0].sweep(clock() + super::super::lease::LEASE_TTL), 1);
        assert_eq!(replicas[0].keys(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_that_is_gone_gets_the_policy_at_once_and_rules_again_when_back() {
        let mut redis = Redis::start();
        let gcra = Gcra { interval: Duration::from_millis(1), burst: 100 };
        let timeout = Duration::from_millis(100);
        let deny = replica(&redis, gcra, 1, OnError::Deny, timeout).await;
        let share = replica(&redis, gcra, 1, OnError::LocalShare, timeout).await;
        let key = |k: &str| state_key("svc", "r", k.as_bytes());
        assert_eq!(deny.check(&key("k"), b"k", clock()).await.0, Outcome::Allowed);
        redis.kill();
        // found down: the policy, and the change to report
        let (outcome, change) = deny.check(&key("other"), b"other", clock()).await;
        assert!(matches!(outcome, Outcome::Degraded { allowed: false, .. }), "{outcome:?}");
        assert_eq!(change, Some(Change::Degraded));
        assert!(deny.degraded());
        // from then on, no call on the request's way: at once
        let begun = std::time::Instant::now();
        for _ in 0..100 {
            let (outcome, _) = deny.check(&key("third"), b"third", clock()).await;
            assert!(matches!(outcome, Outcome::Degraded { allowed: false, .. }));
        }
        assert!(begun.elapsed() < Duration::from_millis(50), "{:?} for 100 decisions", begun.elapsed());
        // local_share: this replica's share (burst 2) decides
        let mut allowed = 0;
        for _ in 0..5 {
            if let (Outcome::Degraded { allowed: true, .. }, _) = share.check(&key("s"), b"s", clock()).await {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 2);
        // Redis comes back, empty and without its scripts: a background probe finds it, and
        // the shared state rules again within a probe period or two.
        redis.restart();
        let begun = std::time::Instant::now();
        while deny.degraded() {
            // requests whose lease is empty are what probe
            let _ = deny.check(&key("fresh"), b"fresh", clock()).await;
            assert!(begun.elapsed() < Duration::from_secs(3), "still degraded after Redis came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(deny.check(&key("new"), b"new", clock()).await.0, Outcome::Allowed, "from the shared state");
    }
}
