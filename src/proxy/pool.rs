//! Keep-alive HTTP/1.1 connections to the service, one pool per worker thread.
//!
//! A connection is taken for one request and given back when its response body has been
//! read to the end ([`Lease::give_back`]); one whose response was cut short, that the
//! service asked to close, or that was upgraded, is closed instead. The most recently used
//! connection goes out first, so a quiet pool lets its oldest connections age out after
//! [`IDLE_TIMEOUT`] (looked at on every give-back and every 15 s).
//!
//! The connections are sluice's own ([`Conn`]), driven by the request's task. hyper's
//! client ran a task per connection and handed each request, response and body chunk
//! across channels; replacing it took a fifth off sluice's instructions per request
//! (BENCHMARKS.md, session 6).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::Method;
use http_body::Frame;
use tokio::net::TcpStream;

use super::conn::{Conn, Upload};
use super::h1::{Decoder, Head};
use crate::upstream::breaker::{Breaker, Connection};
use crate::upstream::resolve::{Addresses, Resolver};

/// How long a connection may sit unused before the pool closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    shared: Arc<Shared>,
}

/// What every worker's pool shares.
pub struct Shared {
    /// The count of connections to the service.
    breaker: Arc<Breaker>,
    /// The service's addresses.
    resolver: Arc<Resolver>,
    /// Every pool, so that one that meets `max_connections` can close an idle connection
    /// of another's: the cap is the process's, the pools are the workers'.
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl Shared {
    pub fn new(breaker: Arc<Breaker>, resolver: Arc<Resolver>) -> Arc<Self> {
        Arc::new(Self { breaker, resolver, pools: Mutex::default() })
    }

    /// A place among the connections open to the service, under `max`: at the cap, with
    /// connections idle in pools other than `asking`'s, one of them is closed to make
    /// room. `None` (nothing counted yet) when there is none.
    pub fn connection(&self, max: Option<u32>, asking: Option<&Pool>) -> Option<Connection> {
        match self.breaker.connection(max) {
            Some(counted) => Some(counted),
            None if self.reclaim(asking) => self.breaker.connection(max),
            None => None,
        }
    }

    /// The generation of the service's addresses now.
    #[inline]
    pub fn generation(&self) -> u32 {
        self.resolver.generation()
    }

    /// Where a new connection to `authority` goes: the addresses its name last resolved to
    /// (`None`: a literal, or a name not resolved yet, looked up as it connects), and the
    /// generation of addresses that connection belongs to.
    pub fn destination(&self, authority: &Authority) -> (Option<Arc<Addresses>>, u32) {
        let generation = self.resolver.generation();
        let addresses = self.resolver.addresses(authority);
        let generation = addresses.as_ref().map_or(generation, |a| a.generation);
        (addresses, generation)
    }

    /// Closes the oldest idle connection of a pool other than `asking`, if there is one.
    fn reclaim(&self, asking: Option<&Pool>) -> bool {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let others =
            pools.iter().filter_map(Weak::upgrade).filter(|p| !asking.is_some_and(|asking| std::ptr::eq(&**p, asking)));
        for pool in others {
            let oldest = pool.idle.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
            if oldest.is_some() {
                return true; // dropped: closed, and its place given back
            }
        }
        false
    }
}

struct Idle {
    upstream: Authority,
    conn: Conn,
    since: Instant,
}

/// The service a request goes to, as the pool needs it.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub authority: &'a Authority,
    /// `circuit_breaker.max_connections`.
    pub max_connections: Option<u32>,
}

/// A request that got no answer's head.
pub struct SendError {
    pub error: io::Error,
    /// No connection could be made (an error of kind `TimedOut`: not by the deadline), so
    /// nothing of the request left sluice.
    pub connect: bool,
    /// The request's body, when none of it was sent: it may go again.
    pub upload: Option<Box<Upload>>,
    /// No connection was idle and `circuit_breaker.max_connections` were open: nothing
    /// was sent (503, not 502; never retried).
    pub overflow: bool,
}

/// A connection out of the pool for one request and its response.
pub struct Lease {
    pool: Arc<Pool>,
    upstream: Authority,
    conn: Conn,
    /// The service will take another request on it once the body is read.
    keep_alive: bool,
}

impl Lease {
    /// The next frame of the response body.
    pub fn poll_body(&mut self, body: &mut Decoder, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.conn.poll_body(body, cx)
    }

    /// The response was read to its end: the connection goes back to the pool if it can
    /// carry another request, and is closed if not.
    pub fn give_back(self) {
        let Lease { pool, upstream, mut conn, keep_alive } = self;
        // One to addresses the service's name no longer resolves to is closed.
        if !(keep_alive && conn.is_reusable() && conn.generation == pool.shared.generation()) {
            return;
        }
        conn.settle();
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        evict_expired(&mut idle, now);
        idle.push_back(Idle { upstream, conn, since: now });
    }

    /// The connection as a tunnel, after a `101`: the socket and what the service sent
    /// after its head, and its place in the count of connections to the service.
    pub fn into_tunnel(self) -> ((TcpStream, Bytes), Connection) {
        self.conn.into_tunnel()
    }
}

fn evict_expired(idle: &mut VecDeque<Idle>, now: Instant) {
    while idle.front().is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT) {
        idle.pop_front();
    }
}

impl Pool {
    /// A pool that also closes its idle connections on a timer, so a quiet sidecar holds
    /// none open past [`IDLE_TIMEOUT`]. Must be called inside a tokio runtime.
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        let pool = Arc::new(Self { idle: Mutex::default(), shared: shared.clone() });
        let mut pools = shared.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        drop(pools);
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends a request (its head as `write_head` writes it, its body from `upload`) to
    /// `to` on a pooled connection, or a new one, and reads the response head by
    /// `deadline` (else an error of kind `TimedOut`). The service may close an idle
    /// connection at any time: a request that a pooled connection failed before anything
    /// of it can have been acted on is sent again on the next.
    pub async fn send(
        self: &Arc<Self>,
        to: Target<'_>,
        method: &Method,
        write_head: impl Fn(&mut Vec<u8>),
        mut upload: Option<Box<Upload>>,
        upgrade: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(Head, Lease), SendError> {
        loop {
            let (mut conn, pooled) = match self.take(to.authority) {
                Some(conn) => (conn, true),
                // Boxed: connecting (and resolving) is rare, and its future would otherwise
                // make every request's future larger to move (530 instructions a request).
                None => match Box::pin(self.open(to, deadline)).await {
                    Ok(conn) => (conn, false),
                    Err(None) => return Err(SendError { error: overflowed(), connect: false, upload, overflow: true }),
                    Err(Some(error)) => return Err(SendError { error, connect: true, upload, overflow: false }),
                },
            };
            // Only a request without a body is tried again, so the upload is never needed twice.
            match conn.exchange(method, &write_head, upload.take(), upgrade, deadline).await {
                Ok(head) => {
                    let keep_alive = head.keep_alive;
                    let upstream = to.authority.clone();
                    let lease = Lease { pool: self.clone(), upstream, conn, keep_alive };
                    return Ok((head, lease));
                }
                Err(failure) if pooled && failure.retryable => {}
                Err(failure) => {
                    return Err(SendError { error: failure.error, connect: false, upload: None, overflow: false });
                }
            }
        }
    }

    /// A new connection to `to`, at the addresses its name last resolved to (their
    /// generation its own); `Err(None)` when `max_connections` are open.
    async fn open(&self, to: Target<'_>, deadline: tokio::time::Instant) -> Result<Conn, Option<io::Error>> {
        let shared = &self.shared;
        let counted = shared.connection(to.max_connections, Some(self)).ok_or(None)?;
        let (addresses, generation) = shared.destination(to.authority);
        let addrs = addresses.as_ref().map(|a| a.addrs.as_slice());
        let mut conn = Conn::open(to.authority, addrs, deadline, counted).await.map_err(Some)?;
        conn.generation = generation;
        Ok(conn)
    }

    /// The most recently used connection to `upstream` that is still open.
    fn take(&self, upstream: &Authority) -> Option<Conn> {
        let generation = self.shared.generation();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        evict_expired(&mut idle, Instant::now());
        while let Some(Idle { upstream: to, conn, .. }) = idle.pop_back() {
            // A connection to a service the config no longer names, or to addresses its
            // name no longer resolves to, is closed. (The same config text gives the same
            // bytes: no need for a case-blind comparison.)
            if to.as_str() == upstream.as_str() && conn.generation == generation && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn sweep_now(&self, now: Instant) {
        evict_expired(&mut self.idle.lock().unwrap_or_else(PoisonError::into_inner), now);
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// The read size of the idle connection that would go out next.
    #[cfg(test)]
    fn next_read_size(&self) -> Option<usize> {
        self.idle.lock().unwrap().back().map(|idle| idle.conn.read_size())
    }
}

fn overflowed() -> io::Error {
    io::Error::other("circuit_breaker.max_connections are open to the service")
}

async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 4);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_now(Instant::now());
    }
}

#[cfg(test)]
mod tests;
