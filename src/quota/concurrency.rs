//! The concurrency quota: at most `max` requests in flight, for the route or per key.
//! Exact: a slot is taken under a lock (or a CAS) and given back when the [`Permit`]
//! drops, which the proxy ties to the end of the response body or the client leaving.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::{Key, KeySpec, Scope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencySpec {
    pub max: NonZeroU32,
    pub key: KeySpec,
    pub scope: Scope,
}

/// In-flight counts. Keyed entries exist only while a request of that key is in flight,
/// so memory is bounded by the number of in-flight requests.
pub struct Concurrency {
    key: KeySpec,
    max: AtomicU32,
    whole: AtomicU32,
    keyed: DashMap<Key, u32, foldhash::fast::RandomState>,
}

/// One slot, given back on drop.
pub struct Permit {
    owner: Arc<Concurrency>,
    key: Option<Key>,
}

impl Concurrency {
    pub fn new(spec: &ConcurrencySpec) -> Arc<Self> {
        Arc::new(Self {
            key: spec.key.clone(),
            max: AtomicU32::new(spec.max.get()),
            whole: AtomicU32::new(0),
            keyed: DashMap::default(),
        })
    }

    /// Whether this state can serve `spec`: the counts are per key, so the key must match;
    /// `max` can change in place.
    pub fn adopt(&self, spec: &ConcurrencySpec) -> bool {
        if self.key != spec.key {
            return false;
        }
        self.max.store(spec.max.get(), Ordering::Relaxed);
        true
    }

    pub fn key_spec(&self) -> &KeySpec {
        &self.key
    }

    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// Takes a slot for `key`, or `None` when `max` are in flight.
    pub fn try_acquire(self: &Arc<Self>, key: &[u8]) -> Option<Permit> {
        let max = self.max();
        if !self.key.is_keyed() {
            self.whole.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
            return Some(Permit { owner: self.clone(), key: None });
        }
        let key = Key::new(key);
        let mut count = self.keyed.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(Permit { owner: self.clone(), key: Some(key) })
    }

    /// Requests in flight, in all keys.
    pub fn in_flight(&self) -> u32 {
        if self.key.is_keyed() {
            self.keyed.iter().map(|e| *e.value()).sum()
        } else {
            self.whole.load(Ordering::Acquire)
        }
    }

    /// Keys with a request in flight.
    pub fn keys(&self) -> usize {
        self.keyed.len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        match &self.key {
            None => {
                self.owner.whole.fetch_sub(1, Ordering::AcqRel);
            }
            Some(key) => {
                if let Some(mut count) = self.owner.keyed.get_mut(key) {
                    *count -= 1;
                }
                self.owner.keyed.remove_if(key, |_, count| *count == 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max: u32, key: KeySpec) -> ConcurrencySpec {
        ConcurrencySpec { max: NonZeroU32::new(max).unwrap(), key, scope: Scope::Local }
    }

    #[test]
    fn whole_route_is_exact() {
        let c = Concurrency::new(&spec(2, KeySpec::None));
        let a = c.try_acquire(b"").unwrap();
        let b = c.try_acquire(b"").unwrap();
        assert!(c.try_acquire(b"").is_none());
        drop(a);
        let _c = c.try_acquire(b"").unwrap();
        assert!(c.try_acquire(b"").is_none());
        drop(b);
        assert_eq!(c.in_flight(), 1);
    }

    #[test]
    fn keyed_counts_per_key_and_forgets_idle_keys() {
        let c = Concurrency::new(&spec(1, KeySpec::ClientIp));
        let p1 = c.try_acquire(b"a").unwrap();
        assert!(c.try_acquire(b"a").is_none());
        let p2 = c.try_acquire(b"b").unwrap();
        assert_eq!((c.in_flight(), c.keys()), (2, 2));
        drop(p1);
        drop(p2);
        assert_eq!((c.in_flight(), c.keys()), (0, 0));
    }

    #[test]
    fn adopt_changes_max_in_place() {
        let c = Concurrency::new(&spec(1, KeySpec::None));
        let _p = c.try_acquire(b"").unwrap();
        assert!(c.adopt(&spec(2, KeySpec::None)));
        let _q = c.try_acquire(b"").unwrap();
        assert!(c.try_acquire(b"").is_none());
        assert!(!c.adopt(&spec(2, KeySpec::ClientIp)));
    }

    #[test]
    fn exact_under_threads() {
        let c = Concurrency::new(&spec(3, KeySpec::None));
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (c, peak) = (c.clone(), peak.clone());
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = c.try_acquire(b"") {
                            peak.fetch_max(c.in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(c.in_flight(), 0);
    }
}
