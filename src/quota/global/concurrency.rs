//! One global concurrency quota on one replica: a [`Slot`] in Redis for each request in
//! flight ([`super::slots`]), renewed while the request lasts and given back when it ends,
//! with the circuit and the `on_error` policy of [`Shared`] in front. Exact while Redis
//! answers: every request takes its slot there (a concurrency slot cannot be leased ahead,
//! as a rate token can).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::degraded::{Call, OnError, PROBE_EVERY};
use super::shared::{lock, Shared};
use super::slots::{Slots, RENEW_EVERY};
use super::store::hashed_key;
use crate::quota::{Concurrency, ConcurrencySpec, Permit};

/// What one request gets.
pub enum Acquired {
    /// A slot, held until dropped.
    Held(Slot),
    /// `max` requests of the key are in flight across the replicas.
    Full,
    /// Redis could not decide; the policy let the request pass, with this replica's share
    /// of the slots held locally under `local_share`.
    PolicyAllowed(Option<Permit>),
    /// Redis could not decide; this replica's share of the slots is in use.
    PolicyFull,
    /// Redis could not decide, and the policy is `deny`: try again after this long.
    Unavailable { retry_after: Duration },
}

struct Inner {
    shared: Arc<Shared>,
    scope: String,
    spec: ConcurrencySpec,
    slots: Slots,
    /// `local_share`: the slots this replica may hold while Redis is gone, and the replica
    /// count they were made for.
    share: Mutex<Option<(u32, Arc<Concurrency>)>>,
}

/// A global concurrency quota's state on this replica. Cheap to clone.
#[derive(Clone)]
pub struct GlobalConcurrency(Arc<Inner>);

impl GlobalConcurrency {
    pub fn new(shared: Arc<Shared>, scope: &str, spec: &ConcurrencySpec) -> Self {
        let slots = Slots::new(shared.store.clone());
        Self(Arc::new(Inner { shared, scope: scope.to_string(), spec: spec.clone(), slots, share: Mutex::new(None) }))
    }

    pub fn spec(&self) -> &ConcurrencySpec {
        &self.0.spec
    }

    /// Whether this is the state to keep for `spec` under `shared` after a reload.
    pub fn adopts(&self, shared: &Arc<Shared>, spec: &ConcurrencySpec) -> bool {
        Arc::ptr_eq(&self.0.shared, shared) && self.0.spec == *spec
    }

    /// A slot for one request whose client key is `key`, at `now` on the engines' clock.
    pub async fn acquire(&self, key: &[u8], now: Duration) -> Acquired {
        let inner = &self.0;
        match inner.shared.call(now) {
            Call::Make => {}
            Call::Probe => {
                let shared = inner.shared.clone();
                tokio::spawn(async move { shared.beat(now).await });
                return self.policy(key);
            }
            Call::Skip => return self.policy(key),
        }
        let slot_key = hashed_key(&inner.shared.service, &inner.scope, key, "slots");
        let member = inner.shared.slot_member();
        let taken = inner.slots.take(&slot_key, inner.spec.max.get(), &member).await;
        inner.shared.result(now, taken.as_ref().err());
        match taken {
            Ok(true) => Acquired::Held(Slot::hold(self.clone(), slot_key, member)),
            Ok(false) => Acquired::Full,
            Err(e) => {
                tracing::debug!(error = %e, "global concurrency: redis call failed");
                self.policy(key)
            }
        }
    }

    fn policy(&self, key: &[u8]) -> Acquired {
        let inner = &self.0;
        match inner.shared.on_error() {
            OnError::Allow => Acquired::PolicyAllowed(None),
            OnError::Deny => Acquired::Unavailable { retry_after: PROBE_EVERY },
            OnError::LocalShare => match self.share().try_acquire(key) {
                Some(permit) => Acquired::PolicyAllowed(Some(permit)),
                None => Acquired::PolicyFull,
            },
        }
    }

    /// This replica's share of the slots: `max` over the replicas last counted, at least 1.
    fn share(&self) -> Arc<Concurrency> {
        let inner = &self.0;
        let replicas = inner.shared.replicas();
        let mut share = lock(&inner.share);
        if let Some((n, local)) = &*share {
            if *n == replicas {
                return local.clone();
            }
        }
        let max = super::degraded::local_share(inner.spec.max.get(), replicas);
        let spec = ConcurrencySpec { max: std::num::NonZeroU32::new(max).expect("at least 1"), ..inner.spec.clone() };
        let local = match &*share {
            // the same table, so requests in flight keep counting
            Some((_, local)) if local.adopt(&spec) => local.clone(),
            _ => Concurrency::new(&spec),
        };
        *share = Some((replicas, local.clone()));
        local
    }
}

/// A request's slot of a global concurrency quota: renewed every [`RENEW_EVERY`] while it
/// is held, given back when dropped.
pub struct Slot {
    owner: GlobalConcurrency,
    key: String,
    member: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Slot {
    fn hold(owner: GlobalConcurrency, key: String, member: String) -> Self {
        let renewal = {
            let (slots, key, member) = (owner.0.slots.clone(), key.clone(), member.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
                loop {
                    every.tick().await;
                    match slots.renew(&key, &member).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(slot = %member, "global concurrency: a slot's lease ended before its renewal");
                            return;
                        }
                        // Redis is gone: the slot will have ended by the time it is back
                        Err(e) => tracing::debug!(error = %e, "global concurrency: renewal failed"),
                    }
                }
            })
        };
        Self { owner, key, member, renewal }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.renewal.abort();
        let (owner, key, member) =
            (self.owner.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.member));
        // Off the runtime (a process ending), the slot's lease frees it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = owner.0.slots.give_back(&key, &member).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::super::shared::GlobalSettings;
    use super::super::store::tests::Redis;
    use super::*;
    use crate::quota::{KeySpec, Scope};

    fn clock() -> Duration {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
    }

    fn replica(redis: &Redis, on_error: OnError) -> GlobalConcurrency {
        let settings = GlobalSettings { redis: vec![redis.url.clone()], timeout: Duration::from_millis(200), on_error };
        let shared = Shared::new(settings, "svc", crate::metrics::Metrics::new().global()).unwrap();
        let spec = ConcurrencySpec { max: NonZeroU32::new(2).unwrap(), key: KeySpec::ClientIp, scope: Scope::Global };
        GlobalConcurrency::new(shared, "jobs", &spec)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_hold_at_most_max_and_a_dropped_slot_is_given_back() {
        let redis = Redis::start();
        let (a, b) = (replica(&redis, OnError::Deny), replica(&redis, OnError::Deny));
        let first = a.acquire(b"u", clock()).await;
        let second = b.acquire(b"u", clock()).await;
        assert!(matches!((&first, &second), (Acquired::Held(_), Acquired::Held(_))));
        assert!(matches!(a.acquire(b"u", clock()).await, Acquired::Full), "two in flight across the replicas");
        assert!(matches!(b.acquire(b"other", clock()).await, Acquired::Held(_)), "per key");
        drop(first);
        let start = std::time::Instant::now();
        let third = loop {
            if let Acquired::Held(slot) = b.acquire(b"u", clock()).await {
                break slot;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "the dropped slot is given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        drop((second, third));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_that_is_gone_gets_the_policy() {
        let mut redis = Redis::start();
        let (deny, share) = (replica(&redis, OnError::Deny), replica(&redis, OnError::LocalShare));
        redis.kill();
        assert!(matches!(deny.acquire(b"u", clock()).await, Acquired::Unavailable { .. }));
        // local_share, one replica counted: its share is the whole max, held locally
        let held: Vec<Acquired> = [(); 3].iter().map(|_| share.policy(b"u")).collect();
        assert!(matches!(
            held[..],
            [Acquired::PolicyAllowed(Some(_)), Acquired::PolicyAllowed(Some(_)), Acquired::PolicyFull]
        ));
        drop(held);
        assert!(matches!(share.policy(b"u"), Acquired::PolicyAllowed(Some(_))), "given back when dropped");
    }
}
