//! How many replicas share the global quotas: each beats a heart into a sorted set in
//! Redis every [`HEARTBEAT_EVERY`], scored by the time on Redis's clock, and reads back how
//! many beat within [`FORGET_AFTER`]. A replica is counted by the others within 5 s of
//! starting (their next beat) and dropped within 30 s of stopping, `kill -9` included; one
//! that drains leaves at once. The count is what `on_error: local_share` divides the rate
//! by; the last one is kept while Redis is gone.

use std::time::Duration;

use redis::Script;

use super::store::{micros, Store, StoreError};

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

/// `beat(KEYS[1]; replica, forget_us[, now_us])` → the replicas that beat within
/// `forget_us`, this one included.
const BEAT: &str = r#"
local replica, forget = ARGV[1], tonumber(ARGV[2])
local now
if ARGV[3] then now = tonumber(ARGV[3]) else local t = redis.call('TIME'); now = t[1] * 1000000 + t[2] end
redis.call('ZADD', KEYS[1], string.format('%d', now), replica)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - forget))
redis.call('PEXPIREAT', KEYS[1], math.ceil((now + forget) / 1000))
return redis.call('ZCARD', KEYS[1])
"#;

/// The set of the replicas of `service`.
pub fn set_key(service: &str) -> String {
    format!("sluice:{{{service}}}:replicas")
}

/// The heartbeat over a [`Store`]'s connection.
#[derive(Clone)]
pub struct Replicas {
    store: Store,
    beat: Script,
    leave: Script,
}

impl Replicas {
    pub fn new(store: Store) -> Self {
        Self { store, beat: Script::new(BEAT), leave: Script::new("return redis.call('ZREM', KEYS[1], ARGV[1])") }
    }

    /// Beats `replica`'s heart in `service`'s set; the replicas counted now.
    pub async fn beat(&self, service: &str, replica: &str) -> Result<u32, StoreError> {
        self.beat_at(service, replica, None).await
    }

    /// Takes `replica` out of the set at once (a drain).
    pub async fn leave(&self, service: &str, replica: &str) -> Result<(), StoreError> {
        let _: i64 = self.store.call(self.leave.key(set_key(service)).arg(replica), None).await?;
        Ok(())
    }

    async fn beat_at(&self, service: &str, replica: &str, now: Option<Duration>) -> Result<u32, StoreError> {
        let mut call = self.beat.key(set_key(service));
        call.arg(replica).arg(micros(FORGET_AFTER));
        self.store.call(&mut call, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::{runtime, Redis};
    use super::*;

    #[test]
    fn replicas_are_counted_while_they_beat_and_forgotten_after() {
        let redis = Redis::start();
        runtime().block_on(async {
            let replicas = Replicas::new(Store::connect(&[&redis.url], Duration::from_secs(2)).await.unwrap());
            let t0 = Duration::from_secs(1_800_000_000);
            let at = |s: u64| Some(t0 + Duration::from_secs(s));
            assert_eq!(replicas.beat_at("claims", "a", at(0)).await.unwrap(), 1);
            assert_eq!(replicas.beat_at("claims", "b", at(1)).await.unwrap(), 2);
            assert_eq!(replicas.beat_at("claims", "c", at(2)).await.unwrap(), 3);
            assert_eq!(replicas.beat_at("other", "x", at(2)).await.unwrap(), 1, "one set per service");
            // c stops (kill -9): a and b go on beating; c is gone within 30 s
            assert_eq!(replicas.beat_at("claims", "a", at(25)).await.unwrap(), 3);
            assert_eq!(replicas.beat_at("claims", "b", at(31)).await.unwrap(), 3, "c beat at 2 s: still within 30 s");
            assert_eq!(replicas.beat_at("claims", "a", at(33)).await.unwrap(), 2);
            // b drains: it leaves at once
            replicas.leave("claims", "b").await.unwrap();
            assert_eq!(replicas.beat_at("claims", "a", at(34)).await.unwrap(), 1);
            assert_eq!(replicas.beat("live", "a").await.unwrap(), 1, "on Redis's own clock");
        });
    }
}
