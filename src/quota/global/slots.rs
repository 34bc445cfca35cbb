//! Global concurrency slots, in Redis: at most `max` requests of a key in flight across all
//! replicas, exact.
//!
//! A key's slots are a sorted set: each member one request in flight (its replica and its
//! number there), scored by when its lease ends on Redis's clock. Taking a slot first drops
//! the members whose lease has ended, so a slot held by a replica that died is free again
//! after [`SLOT_LEASE`] at most, never held for ever; a request that lasts longer renews its
//! slot before then ([`RENEW_EVERY`]). The set expires with its last lease. Three scripts,
//! each atomic: take, renew, give back.

use std::time::Duration;

use redis::Script;

use super::store::{micros, Store, StoreError};

/// How long a slot stays held without a renewal: what a replica that dies holds it for.
pub const SLOT_LEASE: Duration = Duration::from_secs(10);

/// How often a request in flight renews its slot: well within the lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// `take(KEYS[1]; max, member, lease_us[, now_us])` → `{taken (1 or 0), held}`.
const TAKE: &str = r#"
local max, member, lease = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now
if ARGV[4] then now = tonumber(ARGV[4]) else local t = redis.call('TIME'); now = t[1] * 1000000 + t[2] end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local held = redis.call('ZCARD', KEYS[1])
if held >= max then return {0, held} end
redis.call('ZADD', KEYS[1], string.format('%d', now + lease), member)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last) / 1000))
return {1, held + 1}
"#;

/// `renew(KEYS[1]; member, lease_us[, now_us])` → 1, or 0 when the slot was lost (its lease
/// ended before the renewal).
const RENEW: &str = r#"
local member, lease = ARGV[1], tonumber(ARGV[2])
local now
if ARGV[3] then now = tonumber(ARGV[3]) else local t = redis.call('TIME'); now = t[1] * 1000000 + t[2] end
local ends = redis.call('ZSCORE', KEYS[1], member)
if not ends or tonumber(ends) <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + lease), member)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last) / 1000))
return 1
"#;

/// `give_back(KEYS[1]; member)` → 1 if it was held.
const GIVE_BACK: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

/// The slot scripts over a [`Store`]'s connection.
#[derive(Clone)]
pub struct Slots {
    store: Store,
    take: Script,
    renew: Script,
    give_back: Script,
}

/// A slot's name in its key's set: the replica and the request's number there.
pub fn member(replica: &str, request: u64) -> String {
    format!("{replica}:{request}")
}

impl Slots {
    pub fn new(store: Store) -> Self {
        Self { store, take: Script::new(TAKE), renew: Script::new(RENEW), give_back: Script::new(GIVE_BACK) }
    }

    /// Takes a slot of `key` for `member` if fewer than `max` are held: `Ok(true)` if taken.
    pub async fn take(&self, key: &str, max: u32, member: &str) -> Result<bool, StoreError> {
        self.take_at(key, max, member, None).await
    }

    /// Renews `member`'s slot; `Ok(false)` if it was lost.
    pub async fn renew(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        self.renew_at(key, member, None).await
    }

    /// Gives `member`'s slot back.
    pub async fn give_back(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let _: i64 = self.store.call(self.give_back.key(key).arg(member), None).await?;
        Ok(())
    }

    async fn take_at(&self, key: &str, max: u32, member: &str, now: Option<Duration>) -> Result<bool, StoreError> {
        let mut call = self.take.key(key);
        call.arg(max).arg(member).arg(micros(SLOT_LEASE));
        let (taken, _held): (i64, i64) = self.store.call(&mut call, now).await?;
        Ok(taken == 1)
    }

    async fn renew_at(&self, key: &str, member: &str, now: Option<Duration>) -> Result<bool, StoreError> {
        let mut call = self.renew.key(key);
        call.arg(member).arg(micros(SLOT_LEASE));
        let renewed: i64 = self.store.call(&mut call, now).await?;
        Ok(renewed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::{runtime, Redis};
    use super::*;

    #[test]
    fn at_most_max_are_held_and_a_dead_replicas_slot_frees_after_its_lease() {
        let redis = Redis::start();
        runtime().block_on(async {
            let slots = Slots::new(Store::connect(&[&redis.url], Duration::from_secs(2)).await.unwrap());
            let t0 = Duration::from_secs(1_800_000_000);
            let at = |s: u64| t0 + Duration::from_secs(s);
            // two replicas, max 2
            assert!(slots.take_at("k", 2, &member("a", 1), Some(at(0))).await.unwrap());
            assert!(slots.take_at("k", 2, &member("b", 1), Some(at(0))).await.unwrap());
            assert!(!slots.take_at("k", 2, &member("b", 2), Some(at(1))).await.unwrap(), "two held");
            // a gives its back: b's next one fits
            slots.give_back("k", &member("a", 1)).await.unwrap();
            assert!(slots.take_at("k", 2, &member("b", 2), Some(at(1))).await.unwrap());
            // b dies holding two. Its slots are held until their lease ends, then free.
            assert!(!slots.take_at("k", 2, &member("c", 1), Some(at(9))).await.unwrap());
            assert!(slots.take_at("k", 2, &member("c", 1), Some(at(11))).await.unwrap(), "b/1's lease ended at 10 s");
            // a long request renews: c's slot outlives its first lease
            assert!(slots.renew_at("k", &member("c", 1), Some(at(18))).await.unwrap());
            assert!(slots.take_at("k", 2, &member("d", 1), Some(at(25))).await.unwrap(), "c/1 and one free slot");
            assert!(!slots.take_at("k", 2, &member("d", 2), Some(at(25))).await.unwrap(), "c/1 renewed to 28 s");
            // a slot whose lease ended before its renewal is lost, and says so
            assert!(!slots.renew_at("k", &member("c", 1), Some(at(29))).await.unwrap());
            // on Redis's own clock: a fresh key
            assert!(slots.take("fresh", 1, &member("a", 9)).await.unwrap());
            assert!(!slots.take("fresh", 1, &member("b", 9)).await.unwrap());
            assert!(slots.renew("fresh", &member("a", 9)).await.unwrap());
        });
    }
}
