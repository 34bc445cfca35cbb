//! The lease engine of a global rate quota: pure, over an injected clock.
//!
//! Every replica of the service spends one shared GCRA state per (route, key), kept in
//! Redis and changed only by an atomic script on Redis's own clock ([`Shared`] is that
//! script's arithmetic, the model the Lua script must match). Asking Redis for every request
//! would put a network round trip on the request path, so a replica takes tokens in
//! batches, a *lease*: it debits `k` tokens from the shared state at once, spends them
//! locally, asks for the next batch in the background before it runs dry, and gives back
//! what it did not spend when the lease expires. A refusal is kept until its retry-after,
//! so a flooding key costs no call at all.
//!
//! **The bound.** The shared state admits at most the quota's envelope (`burst + rate ×
//! window`) over any window, and a replica spends only tokens it was granted. What a
//! replica spends in a window beyond what was granted in it was granted before, and is at
//! most what it held then: one batch. So across `N` replicas, over any window, at most
//! `burst + rate × window + N × k` are admitted, and over the long run no more than the
//! quota (tested by the property test below). [`batch`] makes `k` small where the quota is
//! small: 1, exact, when the burst is under `4 × N`.

use std::time::Duration;

/// The most tokens one lease takes. A lease is topped up when half of it is spent, so at a
/// high rate one call brings about half a batch: 128 requests, under 8 calls per 1,000.
pub const MAX_BATCH: u32 = 256;

/// How long leased tokens stay spendable; what is left then is given back.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// The shared GCRA state of one (route, key), as the Redis script keeps it: the theoretical
/// arrival time (TAT) of the next token, on the shared clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shared {
    pub tat: Duration,
}

/// What a take from the shared state granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted, at most those asked for.
    pub granted: u32,
    /// With none granted: the wait until one would be.
    pub retry_after: Duration,
    /// Tokens the shared state could still grant at once after this take.
    pub remaining: u32,
}

/// The arithmetic of a GCRA quota: one token per `interval`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval: Duration,
    pub burst: u32,
}

impl Gcra {
    /// How far the TAT may run ahead of now.
    fn tolerance(self) -> Duration {
        self.interval * self.burst
    }

    fn available(self, state: Shared, now: Duration) -> u32 {
        let ahead = state.tat.saturating_sub(now);
        let room = self.tolerance().saturating_sub(ahead);
        (room.as_nanos() / self.interval.as_nanos().max(1)).min(u32::MAX.into()) as u32
    }

    /// Takes up to `wanted` tokens at `now`: as many as the state can grant at once.
    pub fn take(self, state: &mut Shared, now: Duration, wanted: u32) -> Grant {
        let available = self.available(*state, now);
        let granted = available.min(wanted);
        if granted == 0 {
            let tat = state.tat.max(now);
            // The next token is there when the TAT is back within the tolerance.
            let retry_after = (tat + self.interval).saturating_sub(now + self.tolerance());
            return Grant { granted, retry_after, remaining: 0 };
        }
        state.tat = state.tat.max(now) + self.interval * granted;
        Grant { granted, retry_after: Duration::ZERO, remaining: available - granted }
    }

    /// Gives back `unspent` tokens at `now`: the TAT moves back, never before `now` (a
    /// full bucket stays full).
    pub fn give_back(self, state: &mut Shared, now: Duration, unspent: u32) {
        state.tat = state.tat.saturating_sub(self.interval * unspent).max(now.min(state.tat));
    }

    /// When the state is a full bucket again, and so can be forgotten (Redis's expiry).
    pub fn full_at(self, state: Shared) -> Duration {
        state.tat
    }
}

/// The batch one lease takes, for a quota of `burst` shared by `replicas`: small enough
/// that all replicas together hold at most a quarter of the burst (1, exact, for a burst
/// under `4 × replicas`), at most [`MAX_BATCH`].
pub fn batch(burst: u32, replicas: u32) -> u32 {
    (burst / (4 * replicas.max(1))).clamp(1, MAX_BATCH)
}

/// One replica's lease of one (route, key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// Leased tokens not spent yet.
    tokens: u32,
    /// When they stop being spendable (and what is left is given back).
    expires: Duration,
    /// A refusal kept until then: no call before it.
    refused_until: Duration,
    /// A take is out (the one that found the lease empty, or a top-up): at most one, so
    /// the lease never holds more than a batch.
    in_flight: bool,
}

/// What [`Lease::decide`] tells the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Admitted from the lease. With `refill`, ask for that many more in the background
    /// (the lease runs low; they top it up to one batch), and hand the grant to
    /// [`Lease::granted`].
    Allowed { refill: Option<u32> },
    /// Refused, as a cached refusal: passes again after this long.
    Limited { retry_after: Duration },
    /// Nothing leased: take this many from the shared state now, hand the grant to
    /// [`Lease::granted`] (or report [`Lease::failed`]), and decide again.
    Take(u32),
    /// Nothing leased, and a take is out: wait for it, then decide again.
    Wait,
}

impl Lease {
    /// The decision for one request at `now`, with leases of `batch` tokens.
    pub fn decide(&mut self, now: Duration, batch: u32) -> Step {
        if now < self.refused_until {
            return Step::Limited { retry_after: self.refused_until - now };
        }
        if self.tokens == 0 || now >= self.expires {
            if self.in_flight {
                return Step::Wait;
            }
            self.in_flight = true;
            return Step::Take(batch);
        }
        self.tokens -= 1;
        // Half a batch left: the lease is topped up to a batch before it runs out (never
        // more: a replica holds at most one batch).
        if self.tokens <= batch / 2 && !self.in_flight && batch > 1 {
            self.in_flight = true;
            return Step::Allowed { refill: Some(batch - self.tokens) };
        }
        Step::Allowed { refill: None }
    }

    /// What a take granted at `now`. A lease that expired before it gives back what it had
    /// left: returns that many, for the caller to give back to the shared state.
    pub fn granted(&mut self, now: Duration, grant: Grant) -> u32 {
        self.in_flight = false;
        let expired = self.expire(now);
        if grant.granted == 0 {
            // Nothing granted: refused until a token is there, unless what is left lasts.
            if self.tokens == 0 {
                self.refused_until = now + grant.retry_after;
            }
            return expired;
        }
        self.tokens += grant.granted;
        self.expires = now + LEASE_TTL;
        expired
    }

    /// The take that was out failed (or was not made): the next request may take again.
    pub fn failed(&mut self) {
        self.in_flight = false;
    }

    /// The tokens to give back at `now`, if the lease has expired; the lease is empty after.
    pub fn expire(&mut self, now: Duration) -> u32 {
        if now < self.expires || self.tokens == 0 {
            return 0;
        }
        std::mem::take(&mut self.tokens)
    }

    /// Whether the lease holds nothing at `now` (no token, no take out, no refusal kept):
    /// forgetting it loses nothing, as a new one starts from the shared state.
    pub fn idle(&self, now: Duration) -> bool {
        (self.tokens == 0 || now >= self.expires) && !self.in_flight && now >= self.refused_until
    }

    /// Leased tokens not spent yet.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// When the leased tokens stop being spendable.
    pub fn expires(&self) -> Duration {
        self.expires
    }

    /// Until when a refusal is kept.
    pub fn refused_until(&self) -> Duration {
        self.refused_until
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 10 a second, burst 5.
    const Q: Gcra = Gcra { interval: Duration::from_millis(100), burst: 5 };

    #[test]
    fn the_shared_state_grants_its_burst_then_one_per_interval() {
        let mut s = Shared::default();
        let now = ms(10_000);
        assert_eq!(Q.take(&mut s, now, 3), Grant { granted: 3, retry_after: Duration::ZERO, remaining: 2 });
        assert_eq!(Q.take(&mut s, now, 3), Grant { granted: 2, retry_after: Duration::ZERO, remaining: 0 });
        assert_eq!(Q.take(&mut s, now, 1), Grant { granted: 0, retry_after: ms(100), remaining: 0 });
        assert_eq!(Q.take(&mut s, now + ms(250), 5).granted, 2);
        // given back, they can be granted again; a full bucket stays full
        Q.give_back(&mut s, now + ms(250), 2);
        assert_eq!(Q.take(&mut s, now + ms(250), 5).granted, 2);
        let mut full = Shared { tat: now };
        Q.give_back(&mut full, now + ms(50), 3);
        assert_eq!(Q.take(&mut full, now + ms(50), 9).granted, 5);
    }

    #[test]
    fn batches_shrink_to_one_for_small_quotas() {
        assert_eq!(batch(5, 3), 1);
        assert_eq!(batch(100, 3), 8);
        assert_eq!(batch(100_000, 3), MAX_BATCH);
        assert_eq!(batch(7, 0), 1);
    }

    #[test]
    fn a_lease_spends_locally_refills_early_and_caches_a_refusal() {
        let mut lease = Lease::default();
        let now = ms(1_000);
        assert_eq!(lease.decide(now, 4), Step::Take(4));
        assert_eq!(lease.granted(now, Grant { granted: 4, retry_after: Duration::ZERO, remaining: 0 }), 0);
        assert_eq!(lease.decide(now, 4), Step::Allowed { refill: None });
        assert_eq!(lease.decide(now, 4), Step::Allowed { refill: Some(2) }, "half left: top up to a batch");
        assert_eq!(lease.decide(now, 4), Step::Allowed { refill: None }, "one refill at a time");
        // the refill comes back empty: what is left is spent, then refused until told
        assert_eq!(lease.granted(now, Grant { granted: 0, retry_after: ms(300), remaining: 0 }), 0);
        assert_eq!(lease.decide(now, 4), Step::Allowed { refill: Some(4) }, "the last one: a whole batch");
        assert_eq!(lease.decide(now, 4), Step::Wait, "empty while the top-up is out");
        lease.granted(now, Grant { granted: 0, retry_after: ms(300), remaining: 0 });
        assert_eq!(lease.decide(now + ms(100), 4), Step::Limited { retry_after: ms(200) });
        assert_eq!(lease.decide(now + ms(300), 4), Step::Take(4));
    }

    #[test]
    fn a_lease_is_idle_once_it_holds_nothing() {
        let mut lease = Lease::default();
        assert!(lease.idle(ms(0)));
        assert_eq!(lease.decide(ms(0), 4), Step::Take(4));
        assert!(!lease.idle(ms(0)), "a take is out");
        lease.granted(ms(0), Grant { granted: 2, retry_after: Duration::ZERO, remaining: 0 });
        assert!(!lease.idle(ms(10)), "it holds tokens");
        assert!(lease.idle(LEASE_TTL), "they expired: given back by whoever expires them");
        let mut refused = Lease::default();
        refused.decide(ms(0), 1);
        refused.granted(ms(0), Grant { granted: 0, retry_after: ms(500), remaining: 0 });
        assert!(!refused.idle(ms(100)) && refused.idle(ms(500)));
    }

    #[test]
    fn one_take_at_a_time_the_others_wait_for_it() {
        let mut lease = Lease::default();
        assert_eq!(lease.decide(ms(0), 4), Step::Take(4));
        assert_eq!(lease.decide(ms(0), 4), Step::Wait, "a take is out");
        lease.failed();
        assert_eq!(lease.decide(ms(0), 4), Step::Take(4), "it failed: the next one takes");
        lease.granted(ms(0), Grant { granted: 2, retry_after: Duration::ZERO, remaining: 0 });
        assert_eq!(lease.decide(ms(0), 4), Step::Allowed { refill: Some(3) });
        assert_eq!(lease.decide(ms(0), 4), Step::Allowed { refill: None });
        assert_eq!(lease.decide(ms(0), 4), Step::Wait, "empty, and the top-up is out");
    }

    #[test]
    fn unspent_tokens_go_back_when_the_lease_expires() {
        let mut lease = Lease::default();
        lease.granted(ms(0), Grant { granted: 8, retry_after: Duration::ZERO, remaining: 0 });
        assert_eq!(lease.decide(ms(10), 8), Step::Allowed { refill: None });
        assert_eq!(lease.expire(ms(500)), 0, "not yet");
        assert_eq!(lease.expire(LEASE_TTL), 7);
        assert_eq!(lease.tokens(), 0);
        assert_eq!(lease.decide(LEASE_TTL, 8), Step::Take(8));
    }

    /// N replicas over one shared state, each request at its time on one replica: every
    /// step as the proxy would run it, refills granted at once. Returns the admission times.
    fn simulate(q: Gcra, replicas: usize, requests: &[(u64, usize)], k: u32) -> Vec<Duration> {
        let mut shared = Shared::default();
        let mut leases = vec![Lease::default(); replicas];
        let mut admitted = Vec::new();
        for &(at, replica) in requests {
            let now = ms(at);
            let lease = &mut leases[replica % replicas];
            let back = lease.expire(now);
            q.give_back(&mut shared, now, back);
            loop {
                match lease.decide(now, k) {
                    Step::Allowed { refill } => {
                        admitted.push(now);
                        if let Some(n) = refill {
                            let grant = q.take(&mut shared, now, n);
                            let back = lease.granted(now, grant);
                            q.give_back(&mut shared, now, back);
                        }
                        break;
                    }
                    Step::Limited { .. } => break,
                    Step::Wait => unreachable!("every take here completes at once"),
                    Step::Take(n) => {
                        let grant = q.take(&mut shared, now, n);
                        let back = lease.granted(now, grant);
                        q.give_back(&mut shared, now, back);
                        if grant.granted == 0 {
                            break;
                        }
                    }
                }
            }
        }
        admitted
    }

    proptest! {
        /// Over every window, the replicas together admit at most the envelope
        /// (`burst + rate × window`) plus one batch each.
        #[test]
        fn admitted_stays_within_the_envelope_plus_a_batch_per_replica(
            interval_ms in 1u64..200,
            burst in 1u32..300,
            replicas in 1usize..5,
            // bursts of requests, and pauses long enough for a bucket to refill while a
            // replica still holds a lease
            gaps in proptest::collection::vec((prop_oneof![4 => 0u64..5, 1 => 0u64..1500], 0usize..5), 1..300),
        ) {
            let q = Gcra { interval: ms(interval_ms), burst };
            let k = batch(burst, replicas as u32);
            let mut at = 0;
            let requests: Vec<(u64, usize)> = gaps.iter().map(|&(gap, r)| { at += gap; (at, r) }).collect();
            let admitted = simulate(q, replicas, &requests, k);
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    let window = (*end - *start).as_secs_f64();
                    let envelope = burst as f64 + window / q.interval.as_secs_f64() + (replicas as u32 * k) as f64;
                    prop_assert!(count <= envelope + 1e-9, "{count} admitted in {window}s: envelope {envelope}");
                }
            }
        }
    }
}
