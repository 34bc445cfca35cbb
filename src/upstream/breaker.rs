//! The circuit breaker: caps on what the service is given at once, as Envoy's
//! `max_requests` and `max_connections`. Past a cap a request is refused at once (503,
//! origin `upstream_overflow`) instead of being piled onto a service that is already
//! behind; what it holds is given back when its guard drops.
//!
//! Counted across the process (every worker's pool) and across reloads: [`Breaker`] lives
//! as long as the process, the caps come from each request's snapshot. Requests in flight
//! are counted only while `max_requests` is set (two atomic operations a request);
//! connections always are (one each way per connection, which carries many requests), so
//! `/v1/status` shows them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// `circuit_breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Requests sent to the service and not yet answered in full (their response bodies
    /// included), at most.
    pub max_requests: Option<u32>,
    /// Connections open to the service, at most (health checks' own not counted).
    pub max_connections: Option<u32>,
}

/// Which cap refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests = 0,
    Connections = 1,
}

impl Limit {
    pub const ALL: [Limit; 2] = [Limit::Requests, Limit::Connections];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "max_requests",
            Self::Connections => "max_connections",
        }
    }
}

#[derive(Debug, Default)]
pub struct Breaker {
    requests: AtomicU32,
    connections: AtomicU32,
    /// Refusals, by [`Limit`].
    trips: [AtomicU64; 2],
}

/// What the breaker shows, for `/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Requests in flight to the service (counted while `max_requests` is set).
    pub requests: u32,
    pub connections: u32,
    pub trips: [u64; 2],
}

impl Breaker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A place among the requests in flight to the service, under `max`; `None` when
    /// `max` are in flight.
    pub fn request(self: &Arc<Self>, max: u32) -> Option<InFlight> {
        take(&self.requests, max).then(|| InFlight(self.clone()))
    }

    /// A place among the connections open to the service, under `max` if there is one;
    /// `None` when `max` are open.
    pub fn connection(self: &Arc<Self>, max: Option<u32>) -> Option<Connection> {
        match max {
            Some(max) if !take(&self.connections, max) => None,
            Some(_) => Some(Connection(self.clone())),
            None => {
                self.connections.fetch_add(1, Relaxed);
                Some(Connection(self.clone()))
            }
        }
    }

    /// A request refused by `limit`: counted.
    pub fn tripped(&self, limit: Limit) {
        self.trips[limit as usize].fetch_add(1, Relaxed);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Relaxed),
            connections: self.connections.load(Relaxed),
            trips: [self.trips[0].load(Relaxed), self.trips[1].load(Relaxed)],
        }
    }
}

/// One more of `count` if fewer than `max` are held.
fn take(count: &AtomicU32, max: u32) -> bool {
    count.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
}

/// A request in flight to the service: its place is given back when this drops.
#[derive(Debug)]
pub struct InFlight(Arc<Breaker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

/// A connection open to the service: its place is given back when this drops.
#[derive(Debug)]
pub struct Connection(Arc<Breaker>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_refuses_past_it_and_frees_a_place_when_one_ends() {
        let breaker = Breaker::new();
        let held: Vec<_> = (0..3).map(|_| breaker.request(3).expect("under the cap")).collect();
        assert!(breaker.request(3).is_none());
        assert!(breaker.request(3).is_none());
        breaker.tripped(Limit::Requests);
        assert_eq!(breaker.counts(), Counts { requests: 3, connections: 0, trips: [1, 0] });
        drop(held);
        let one = breaker.request(3);
        assert!(one.is_some());
        assert_eq!(breaker.counts().requests, 1);
        // A lower cap, as a reload may bring, refuses while more than it are held.
        let _two = breaker.request(2).unwrap();
        assert!(breaker.request(2).is_none());
    }

    #[test]
    fn connections_are_counted_with_or_without_a_cap() {
        let breaker = Breaker::new();
        let free: Vec<_> = (0..5).map(|_| breaker.connection(None).unwrap()).collect();
        assert_eq!(breaker.counts().connections, 5);
        assert!(breaker.connection(Some(5)).is_none(), "5 are open");
        drop(free);
        let capped = breaker.connection(Some(1)).unwrap();
        assert!(breaker.connection(Some(1)).is_none());
        drop(capped);
        breaker.tripped(Limit::Connections);
        assert_eq!(breaker.counts(), Counts { requests: 0, connections: 0, trips: [0, 1] });
    }

    #[test]
    fn the_cap_holds_across_threads() {
        let breaker = Breaker::new();
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (breaker, peak) = (breaker.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(held) = breaker.request(8) {
                            peak.fetch_max(breaker.counts().requests, Relaxed);
                            drop(held);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(peak.load(Relaxed) <= 8, "{} in flight under a cap of 8", peak.load(Relaxed));
        assert_eq!(breaker.counts().requests, 0);
    }
}
