//! One global rate quota on one replica: each client key's [`Lease`], taken from the
//! [`Shared`] Redis through its circuit, with the `on_error` policy behind it. The request
//! path asks [`GlobalRate::check`] once per request.
//!
//! At most one take from Redis is out per key on a replica (the one that found the lease
//! empty, or a top-up before it is): a request that finds the lease empty while one is out
//! waits for it, bounded by `global.timeout`, instead of taking again. So a replica never
//! holds more than one batch, and the bound of [`super::lease`] holds. Top-ups and probes
//! run in the background: a request waits on Redis only when its key's lease is empty.
//!
//! Keys are bounded as locally: at most `max_keys` leases at once (idle ones are swept);
//! past that, new keys share one overflow lease, as they share one overflow bucket locally.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::degraded::{local_share, Call, OnError};
use super::lease::{batch, Gcra, Lease, Step};
use super::shared::{lock, Shared};
use super::store::state_key;
use crate::quota::{Key, RateDecision, RateLimit, RateSpec};

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Within the shared quota.
    Allowed,
    /// Over the shared quota: passes again after this long.
    Limited { retry_after: Duration },
    /// Redis could not decide; the policy let the request pass (`allow`, or within this
    /// replica's share).
    PolicyAllowed,
    /// Redis could not decide; over this replica's share (`local_share`).
    PolicyLimited { retry_after: Duration },
    /// Redis could not decide, and the policy is `deny`: try again after this long.
    Unavailable { retry_after: Duration },
}

struct KeyState {
    lease: Mutex<Lease>,
    /// Woken when the take that was out comes back.
    taken: Notify,
    /// The key of its state in Redis.
    state_key: String,
}

struct Inner {
    shared: Arc<Shared>,
    /// The route's name, or `service`: part of each state's key in Redis.
    scope: String,
    spec: RateSpec,
    gcra: Gcra,
    keys: DashMap<Key, Arc<KeyState>, foldhash::fast::RandomState>,
    /// `local_share`: the local quota enforced while Redis is gone, and the replica count
    /// it was made for (made again when the count changes).
    share: Mutex<Option<(u32, Arc<RateLimit>)>>,
}

/// A global rate quota's state on this replica. Cheap to clone.
#[derive(Clone)]
pub struct GlobalRate(Arc<Inner>);

/// The key untracked client keys share once `max_keys` leases are held.
const OVERFLOW: &[u8] = b"\xffoverflow";

impl GlobalRate {
    /// The global quota `spec` of `scope` (a route's name, or `service`).
    pub fn new(shared: Arc<Shared>, scope: &str, spec: &RateSpec) -> Self {
        let gcra = Gcra { interval: spec.emission_interval(), burst: spec.burst.get() };
        Self(Arc::new(Inner {
            shared,
            scope: scope.to_string(),
            spec: spec.clone(),
            gcra,
            keys: DashMap::default(),
            share: Mutex::new(None),
        }))
    }

    pub fn spec(&self) -> &RateSpec {
        &self.0.spec
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }

    /// Whether this is the state to keep for `spec` under `shared` after a reload.
    pub fn adopts(&self, shared: &Arc<Shared>, spec: &RateSpec) -> bool {
        Arc::ptr_eq(&self.0.shared, shared) && self.0.spec.same_limiter(spec)
    }

    fn state(&self, key: &[u8]) -> Arc<KeyState> {
        let inner = &self.0;
        if let Some(state) = inner.keys.get(key) {
            return state.clone();
        }
        let key = if inner.keys.len() >= inner.spec.max_keys.get() { OVERFLOW } else { key };
        let state = inner.keys.entry(Key::new(key)).or_insert_with(|| {
            Arc::new(KeyState {
                lease: Mutex::new(Lease::default()),
                taken: Notify::new(),
                state_key: state_key(&inner.shared.service, &inner.scope, key),
            })
        });
        state.clone()
    }

    /// The decision of the key's lease alone, at once: `Some` when the lease holds a token
    /// (a top-up may go out in the background) or a refusal, which is most requests;
    /// `None` when it is empty, and [`GlobalRate::check`] must wait for Redis.
    pub fn check_leased(&self, key: &[u8], now: Duration) -> Option<Outcome> {
        let state = self.0.keys.get(key)?.clone();
        let (step, back) = {
            let mut lease = lock(&state.lease);
            let back = lease.expire(now);
            if now >= lease.refused_until() && (lease.tokens() == 0 || now >= lease.expires()) {
                // Nothing to decide with here: `check` takes (or waits for the take out).
                drop(lease);
                self.give_back(&state, back);
                return None;
            }
            (lease.decide(now, batch(self.0.gcra.burst, self.0.shared.replicas())), back)
        };
        self.give_back(&state, back);
        match step {
            Step::Allowed { refill } => {
                if let Some(n) = refill {
                    self.top_up(state, n, now);
                }
                Some(Outcome::Allowed)
            }
            Step::Limited { retry_after } => Some(Outcome::Limited { retry_after }),
            Step::Take(_) | Step::Wait => unreachable!("a lease with a token or a refusal decides"),
        }
    }

    /// The decision for one request whose client key is `key`, at `now` on the engines'
    /// clock.
    pub async fn check(&self, key: &[u8], now: Duration) -> Outcome {
        let inner = &self.0;
        let state = self.state(key);
        let batch = batch(inner.gcra.burst, inner.shared.replicas());
        // Takes and waits until a decision, within one call's bound: a key so busy that its
        // leases are spent by others before this request gets one is refused for an interval.
        let mut deadline = None;
        loop {
            let notified = state.taken.notified();
            tokio::pin!(notified);
            let (step, back) = {
                let mut lease = lock(&state.lease);
                let back = lease.expire(now);
                let step = lease.decide(now, batch);
                if step == Step::Wait {
                    // Registered before the lease is let go, so that the take coming back
                    // after this wakes this request; only a request that waits registers.
                    notified.as_mut().enable();
                }
                (step, back)
            };
            self.give_back(&state, back);
            match step {
                Step::Allowed { refill } => {
                    if let Some(n) = refill {
                        self.top_up(state.clone(), n, now);
                    }
                    return Outcome::Allowed;
                }
                Step::Limited { retry_after } => return Outcome::Limited { retry_after },
                Step::Wait => {
                    let deadline =
                        *deadline.get_or_insert_with(|| tokio::time::Instant::now() + inner.shared.store.timeout());
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Outcome::Limited { retry_after: inner.gcra.interval };
                    }
                }
                Step::Take(n) => {
                    let call = inner.shared.call(now);
                    if call != Call::Make {
                        lock(&state.lease).failed();
                        if call == Call::Probe {
                            self.probe(state.clone(), now);
                        }
                        return self.policy(key, now);
                    }
                    let taken = inner.shared.store.take(&state.state_key, inner.gcra, n).await;
                    inner.shared.result(now, taken.as_ref().err());
                    match taken {
                        Ok(grant) => {
                            let back = lock(&state.lease).granted(now, grant);
                            state.taken.notify_waiters();
                            self.give_back(&state, back);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "global quota: redis call failed");
                            lock(&state.lease).failed();
                            state.taken.notify_waiters();
                            return self.policy(key, now);
                        }
                    }
                }
            }
        }
    }

    /// Tops the lease up in the background (unless Redis is known to be gone: then the
    /// lease runs down, and the policy decides once it is empty).
    fn top_up(&self, state: Arc<KeyState>, n: u32, now: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.0;
            if inner.shared.call(now) == Call::Skip {
                lock(&state.lease).failed();
                state.taken.notify_waiters();
                return;
            }
            let taken = inner.shared.store.take(&state.state_key, inner.gcra, n).await;
            inner.shared.result(now, taken.as_ref().err());
            match taken {
                Ok(grant) => {
                    let back = lock(&state.lease).granted(now, grant);
                    this.give_back(&state, back);
                }
                Err(_) => lock(&state.lease).failed(),
            }
            state.taken.notify_waiters();
        });
    }

    /// One call, in the background, to see whether Redis is back: what it takes is given
    /// back, as it admitted nothing.
    fn probe(&self, state: Arc<KeyState>, now: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.0;
            let taken = inner.shared.store.take(&state.state_key, inner.gcra, 1).await;
            inner.shared.result(now, taken.as_ref().err());
            if let Ok(grant) = taken {
                this.give_back(&state, grant.granted);
            }
        });
    }

    /// Gives back unspent tokens in the background.
    fn give_back(&self, state: &Arc<KeyState>, tokens: u32) {
        if tokens == 0 {
            return;
        }
        let (inner, state) = (self.0.clone(), state.clone());
        tokio::spawn(async move {
            let _ = inner.shared.store.give_back(&state.state_key, inner.gcra, tokens).await;
        });
    }

    fn policy(&self, key: &[u8], now: Duration) -> Outcome {
        match self.0.shared.on_error() {
            OnError::Allow => Outcome::PolicyAllowed,
            OnError::Deny => Outcome::Unavailable { retry_after: super::degraded::PROBE_EVERY },
            OnError::LocalShare => match self.share().check(key, now) {
                RateDecision::Allowed => Outcome::PolicyAllowed,
                RateDecision::Limited { retry_after } => Outcome::PolicyLimited { retry_after },
            },
        }
    }

    /// This replica's share of the quota: the rate and the burst over the replicas last
    /// counted, each at least 1.
    fn share(&self) -> Arc<RateLimit> {
        let inner = &self.0;
        let replicas = inner.shared.replicas();
        let mut share = lock(&inner.share);
        match &*share {
            Some((n, limit)) if *n == replicas => limit.clone(),
            _ => {
                let spec = &inner.spec;
                let part = |n: std::num::NonZeroU32| {
                    std::num::NonZeroU32::new(local_share(n.get(), replicas)).expect("at least 1")
                };
                let limit = Arc::new(RateLimit::new(RateSpec {
                    rate: part(spec.rate),
                    burst: part(spec.burst),
                    ..spec.clone()
                }));
                *share = Some((replicas, limit.clone()));
                limit
            }
        }
    }

    /// Forgets the keys whose lease holds nothing at `now`, giving back what expired leases
    /// had left: the table holds the keys that spend now, not every key ever seen. Returns
    /// how many went.
    pub fn sweep(&self, now: Duration) -> usize {
        let before = self.0.keys.len();
        self.0.keys.retain(|_, state| {
            let mut lease = lock(&state.lease);
            let back = lease.expire(now);
            self.give_back(state, back);
            !lease.idle(now)
        });
        if let Some((_, share)) = &*lock(&self.0.share) {
            share.sweep(now);
        }
        before.saturating_sub(self.0.keys.len())
    }

    /// Keys with a lease now.
    pub fn keys(&self) -> usize {
        self.0.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::shared::GlobalSettings;
    use super::super::store::tests::Redis;
    use super::*;
    use crate::quota::{Advertise, KeySpec, Mode, Scope};

    fn clock() -> Duration {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
    }

    fn spec(rate: u32, per: Duration, burst: u32) -> RateSpec {
        RateSpec {
            rate: NonZeroU32::new(rate).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
            key: KeySpec::ClientIp,
            mode: Mode::Enforce,
            max_keys: NonZeroUsize::new(100).unwrap(),
            advertise: Advertise::Refusals,
            scope: Scope::Global,
        }
    }

    fn shared(redis: &Redis, on_error: OnError, timeout: Duration) -> Arc<Shared> {
        let settings = GlobalSettings { redis: vec![redis.url.clone()], timeout, on_error };
        Shared::new(settings, "svc", crate::metrics::Metrics::new().global()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_replicas_share_one_quota_within_the_bound() {
        let redis = Redis::start();
        // 20 a second, burst 40: a batch of 3 for 3 replicas.
        let spec = spec(20, Duration::from_secs(1), 40);
        // a timeout no loaded test machine reaches: this test is of the bound
        let shared: Vec<Arc<Shared>> = (0..3).map(|_| shared(&redis, OnError::Deny, Duration::from_secs(1))).collect();
        for s in shared.iter().chain(&shared) {
            s.beat(clock()).await;
        }
        assert_eq!(shared[0].replicas(), 3, "counted by their heartbeats");
        let replicas: Vec<GlobalRate> = shared.iter().map(|s| GlobalRate::new(s.clone(), "r", &spec)).collect();
        let admitted = Arc::new(AtomicU32::new(0));
        let start = clock();
        let mut tasks = Vec::new();
        // 12 clients, most of them on the first replica, for about a second
        for client in 0..12 {
            let (replica, admitted) =
                (replicas[[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2][client]].clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                while clock() - start < Duration::from_secs(1) {
                    match replica.check(b"k", clock()).await {
                        Outcome::Allowed => drop(admitted.fetch_add(1, Ordering::Relaxed)),
                        Outcome::Limited { .. } => {}
                        other => panic!("redis is up: {other:?}"),
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
        let spec = spec(1000, Duration::from_secs(1), 100);
        let timeout = Duration::from_millis(100);
        let deny_shared = shared(&redis, OnError::Deny, timeout);
        let deny = GlobalRate::new(deny_shared.clone(), "r", &spec);
        // one in 10 s, burst 2 for this one: its share, as the only replica counted
        let share = GlobalRate::new(shared(&redis, OnError::LocalShare, timeout), "r", &spec_small());
        assert_eq!(deny.check(b"k", clock()).await, Outcome::Allowed);
        redis.kill();
        // found down: the policy, and the change to report
        let outcome = deny.check(b"other", clock()).await;
        assert!(matches!(outcome, Outcome::Unavailable { .. }), "{outcome:?}");
        assert!(deny.shared().degraded());
        assert_eq!(deny_shared.take_changes(), vec![super::super::degraded::Change::Degraded]);
        // from then on, no call on the request's way: at once
        let begun = std::time::Instant::now();
        for _ in 0..100 {
            assert!(matches!(deny.check(b"third", clock()).await, Outcome::Unavailable { .. }));
        }
        assert!(begun.elapsed() < Duration::from_millis(50), "{:?} for 100 decisions", begun.elapsed());
        // local_share: this replica's share (burst 2) decides
        let mut allowed = 0;
        for _ in 0..5 {
            match share.check(b"s", clock()).await {
                Outcome::PolicyAllowed => allowed += 1,
                Outcome::PolicyLimited { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(allowed, 2);
        // Redis comes back, empty and without its scripts: a background probe finds it, and
        // the shared state rules again within a probe period or two.
        redis.restart();
        let begun = std::time::Instant::now();
        while deny.shared().degraded() {
            // requests whose lease is empty are what probe
            let _ = deny.check(b"fresh", clock()).await;
            assert!(begun.elapsed() < Duration::from_secs(3), "still degraded after Redis came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(deny_shared.take_changes()[..], [super::super::degraded::Change::Recovered { .. }]));
        assert_eq!(deny.check(b"new", clock()).await, Outcome::Allowed, "from the shared state");
    }

    fn spec_small() -> RateSpec {
        spec(1, Duration::from_secs(10), 2)
    }

    #[tokio::test]
    async fn a_lease_decides_at_once_and_an_empty_one_says_so() {
        let redis = Redis::start();
        // burst 8, one replica: leases of 2
        let rate = GlobalRate::new(
            shared(&redis, OnError::Deny, Duration::from_secs(1)),
            "r",
            &spec(1, Duration::from_secs(60), 8),
        );
        let now = clock();
        assert_eq!(rate.check_leased(b"k", now), None, "no lease yet: Redis must be asked");
        assert_eq!(rate.check(b"k", now).await, Outcome::Allowed, "took 2, spent 1");
        assert_eq!(rate.check_leased(b"k", now), Some(Outcome::Allowed), "the second, from the lease");
        // a refusal kept is decided at once too
        let tight = GlobalRate::new(rate.shared().clone(), "t", &spec(1, Duration::from_secs(60), 1));
        assert_eq!(tight.check(b"k", now).await, Outcome::Allowed);
        assert!(matches!(tight.check(b"k", now).await, Outcome::Limited { .. }), "Redis refuses");
        assert!(matches!(tight.check_leased(b"k", now), Some(Outcome::Limited { .. })), "kept until its retry-after");
    }

    #[tokio::test]
    async fn past_max_keys_new_keys_share_one_lease() {
        let redis = Redis::start();
        let spec = RateSpec { max_keys: NonZeroUsize::new(2).unwrap(), ..spec(1, Duration::from_secs(60), 1) };
        let rate = GlobalRate::new(shared(&redis, OnError::Deny, Duration::from_secs(1)), "r", &spec);
        let now = clock();
        assert_eq!(rate.check(b"a", now).await, Outcome::Allowed);
        assert_eq!(rate.check(b"b", now).await, Outcome::Allowed);
        assert_eq!(rate.check(b"c", now).await, Outcome::Allowed, "the overflow lease's one token");
        assert!(matches!(rate.check(b"d", now).await, Outcome::Limited { .. }), "shares c's");
        assert_eq!(rate.keys(), 3);
    }
}
