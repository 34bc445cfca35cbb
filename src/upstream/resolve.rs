//! The service's addresses. An upstream given by host name is resolved every
//! `dns_refresh` (the system resolver, as `getaddrinfo` gives no TTL) rather than on each
//! new connection; when the set of addresses changes, the generation moves on and the
//! pools drain the connections of the old one: idle ones are closed, busy ones finish
//! their request and are closed instead of going back to the pool.
//!
//! [`Resolver`] is the pure part: what was resolved for which authority, and whether a
//! resolution changed it. [`run`] is the I/O: the lookups, on the interval, and at once
//! when a connection finds the resolver behind the config (a reload named another
//! upstream).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use http::uri::Authority;
use tokio::sync::Notify;

use crate::snapshot::Live;

/// What an authority resolved to.
#[derive(Debug, PartialEq, Eq)]
pub struct Addresses {
    pub authority: Authority,
    /// In the resolver's order (RFC 6724's): a connection tries them in turn.
    pub addrs: Vec<SocketAddr>,
    pub generation: u32,
}

#[derive(Debug, Default)]
pub struct Resolver {
    generation: AtomicU32,
    current: Mutex<Option<Arc<Addresses>>>,
    /// A connection found the resolver behind the config.
    behind: Notify,
}

/// A change of the service's addresses, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub authority: Authority,
    pub from: Vec<SocketAddr>,
    pub to: Vec<SocketAddr>,
}

impl Resolver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The generation of the addresses: a pooled connection of an older one is not used
    /// again. One atomic load.
    #[inline]
    pub fn generation(&self) -> u32 {
        self.generation.load(Relaxed)
    }

    /// What `authority` resolved to, if it is the authority last resolved. `None` tells
    /// the caller to resolve it itself, and wakes [`run`] to catch up.
    pub fn addresses(&self, authority: &Authority) -> Option<Arc<Addresses>> {
        let resolved = self.resolved(authority);
        if resolved.is_none() {
            self.behind.notify_one();
        }
        resolved
    }

    /// What `authority` resolved to, if it is the authority last resolved (for
    /// `/v1/status`: without waking [`run`]).
    pub fn resolved(&self, authority: &Authority) -> Option<Arc<Addresses>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone();
        current.filter(|c| c.authority.as_str() == authority.as_str() && !c.addrs.is_empty())
    }

    /// Takes a resolution of `authority`. A different set of addresses (order aside), or
    /// another authority, is a new generation; a change of addresses of the same
    /// authority is returned for the log.
    pub fn publish(&self, authority: &Authority, addrs: Vec<SocketAddr>) -> Option<Change> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let same_authority = current.as_ref().is_some_and(|c| c.authority.as_str() == authority.as_str());
        let from = current.as_ref().filter(|_| same_authority).map(|c| c.addrs.clone()).unwrap_or_default();
        if same_authority && same_set(&from, &addrs) {
            return None;
        }
        let generation = self.generation.fetch_add(1, Relaxed).wrapping_add(1);
        *current = Some(Arc::new(Addresses { authority: authority.clone(), addrs: addrs.clone(), generation }));
        same_authority.then(|| Change { authority: authority.clone(), from, to: addrs })
    }
}

fn same_set(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    let sorted = |addrs: &[SocketAddr]| {
        let mut addrs = addrs.to_vec();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    };
    sorted(a) == sorted(b)
}

/// The address of an authority that names an IP: no lookup needed.
pub fn literal(authority: &Authority) -> Option<SocketAddr> {
    let (host, port) = host_port(authority);
    Some(SocketAddr::new(host.parse::<IpAddr>().ok()?, port))
}

/// Host and port, as the system resolver takes them: an IPv6 literal without its
/// brackets, and 80 when the URL names no port.
pub fn host_port(authority: &Authority) -> (&str, u16) {
    let host = authority.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host, authority.port_u16().unwrap_or(80))
}

/// Resolves the live config's upstream every `dns_refresh`, and at once when a connection
/// finds the resolver behind. Runs until the task is dropped.
pub async fn run(live: Arc<Live>) {
    let resolver = live.resolver.clone();
    loop {
        let snapshot = live.load();
        let authority = &snapshot.config.upstream;
        let resolved = match literal(authority) {
            Some(addr) => Ok(vec![addr]),
            None => tokio::net::lookup_host(host_port(authority)).await.map(Iterator::collect),
        };
        match resolved {
            Ok(addrs) if !Vec::is_empty(&addrs) => {
                if let Some(change) = resolver.publish(authority, addrs) {
                    tracing::info!(
                        upstream = %change.authority,
                        from = ?change.from,
                        to = ?change.to,
                        "the service's addresses changed: new connections go to the new ones, the old ones drain"
                    );
                }
            }
            Ok(_) => {
                tracing::warn!(upstream = %authority, "the service's name resolved to no address; the last addresses serve on")
            }
            Err(e) => {
                tracing::warn!(upstream = %authority, error = %e, "could not resolve the service's name; the last addresses serve on")
            }
        }
        let every = snapshot.config.dns_refresh;
        drop(snapshot);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = resolver.behind.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_new_set_of_addresses_is_a_new_generation_and_the_same_set_is_not() {
        let resolver = Resolver::new();
        let service: Authority = "service.internal:8080".parse().unwrap();
        assert_eq!(resolver.addresses(&service), None, "nothing resolved yet");
        assert_eq!(resolver.publish(&service, vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]), None);
        assert_eq!(resolver.generation(), 1);
        // The same addresses in another order: nothing changes.
        assert_eq!(resolver.publish(&service, vec![addr("10.0.0.2:8080"), addr("10.0.0.1:8080")]), None);
        assert_eq!(resolver.generation(), 1);
        assert_eq!(resolver.addresses(&service).unwrap().addrs, [addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]);
        let change = resolver.publish(&service, vec![addr("10.0.0.3:8080")]).expect("a change");
        assert_eq!(change.from, [addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]);
        assert_eq!(change.to, [addr("10.0.0.3:8080")]);
        assert_eq!(resolver.generation(), 2);
        let now = resolver.addresses(&service).unwrap();
        assert_eq!((now.generation, now.addrs.as_slice()), (2, [addr("10.0.0.3:8080")].as_slice()));
    }

    #[test]
    fn another_authority_is_a_new_generation_and_the_old_ones_addresses_are_not_used_for_it() {
        let resolver = Resolver::new();
        let (a, b): (Authority, Authority) = ("a.internal:80".parse().unwrap(), "b.internal:80".parse().unwrap());
        resolver.publish(&a, vec![addr("10.0.0.1:80")]);
        assert_eq!(resolver.addresses(&b), None, "b is not resolved yet: its caller resolves it");
        assert_eq!(resolver.publish(&b, vec![addr("10.0.0.9:80")]), None, "not a change of b's addresses");
        assert_eq!(resolver.generation(), 2);
        assert_eq!(resolver.addresses(&a), None);
    }

    #[test]
    fn literals_need_no_lookup() {
        let literal = |text: &str| literal(&text.parse().unwrap());
        assert_eq!(literal("127.0.0.1:9000"), Some(addr("127.0.0.1:9000")));
        assert_eq!(literal("[::1]:8080"), Some(addr("[::1]:8080")));
        assert_eq!(literal("10.0.0.7"), Some(addr("10.0.0.7:80")));
        assert_eq!(literal("service.internal:80"), None);
        let (v6, with_credentials): (Authority, Authority) =
            ("[::1]:8080".parse().unwrap(), "user:secret@10.0.0.7:9000".parse().unwrap());
        assert_eq!(host_port(&v6), ("::1", 8080));
        assert_eq!(host_port(&with_credentials), ("10.0.0.7", 9000));
    }
}
