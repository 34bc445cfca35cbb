//! The shared state of global quotas, in Redis: the I/O edge of [`super::lease`].
//!
//! One key per (service, route, client key) holds a GCRA state, its TAT in microseconds on
//! Redis's own clock (`TIME`), so the replicas' clocks never enter into it. Two scripts
//! change it atomically, doing exactly [`Gcra::take`] and [`Gcra::give_back`] (a test
//! holds them to it); each key expires when its bucket would be full again, so idle keys
//! cost Redis nothing. The scripts are sent by their SHA-1 and loaded again when Redis
//! answers `NOSCRIPT` (after a restart). Every call is bounded by `timeout`: a Redis that is
//! slow or gone is an error the caller's policy decides on, never a wait.
//!
//! One URL is one Redis; several are the seed nodes of a Redis Cluster, where each call goes
//! to the node of its key's slot (every key is braced to one slot) and scripts are loaded on
//! every primary.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use sha2::{Digest, Sha256};

use super::lease::{Gcra, Grant};

/// `take(KEYS[1]; wanted, interval_us, burst[, now_us])` → `{granted, retry_after_us,
/// remaining}`. `now_us` is for tests only: without it, Redis's clock.
const TAKE: &str = r#"
local wanted, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now
if ARGV[4] then now = tonumber(ARGV[4]) else local t = redis.call('TIME'); now = t[1] * 1000000 + t[2] end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local tolerance = interval * burst
local available = math.floor(math.max(tolerance - math.max(tat - now, 0), 0) / interval)
local granted = math.min(available, wanted)
if granted == 0 then
  return {0, math.max(math.max(tat, now) + interval - (now + tolerance), 0), 0}
end
local next = math.max(tat, now) + interval * granted
redis.call('SET', KEYS[1], string.format('%d', next), 'PXAT', math.ceil(next / 1000))
return {granted, 0, available - granted}
"#;

/// `give_back(KEYS[1]; unspent, interval_us[, now_us])`: the TAT moves back, never before
/// now; a bucket full again is deleted.
const GIVE_BACK: &str = r#"
local unspent, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local now
if ARGV[3] then now = tonumber(ARGV[3]) else local t = redis.call('TIME'); now = t[1] * 1000000 + t[2] end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.max(tat - unspent * interval, math.min(now, tat))
if back <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%d', back), 'PXAT', math.ceil(back / 1000))
end
return 1
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// How the calls went, for `sluice_global_quota_calls_total{result}` and
/// `sluice_global_quota_call_duration_seconds`.
#[derive(Clone)]
pub struct CallMetrics {
    pub ok: IntCounter,
    pub error: IntCounter,
    pub timeout: IntCounter,
    pub duration: Histogram,
}

/// The Redis of `global.redis`, and the scripts. The connection is made on the first call
/// (and again after one fails), so sluice starts, with its `on_error` policy deciding,
/// while Redis is down.
#[derive(Clone)]
pub struct Store {
    client: Arc<Client>,
    con: Arc<tokio::sync::OnceCell<Connection>>,
    take: Script,
    give_back: Script,
    timeout: Duration,
    metrics: Option<CallMetrics>,
}

enum Client {
    One(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// One Redis, or a Redis Cluster.
#[derive(Clone)]
enum Connection {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis key of a global quota's state for one client key: the client key is hashed
/// (SHA-256, 16 bytes in hex), so any bytes make a short key and the same one on every
/// replica; the braces keep it on one Redis Cluster slot.
pub fn state_key(service: &str, route: &str, key: &[u8]) -> String {
    hashed_key(service, route, key, "gcra")
}

/// `sluice:{SERVICE:ROUTE:HASH}:KIND`: the braces keep every key of one (route, client key)
/// on one Redis Cluster slot.
pub fn hashed_key(service: &str, route: &str, key: &[u8], kind: &str) -> String {
    let digest = Sha256::digest(key);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sluice:{{{service}:{route}:{hex}}}:{kind}")
}

impl Store {
    /// The store of `urls`: one (`redis://HOST:PORT`, `redis+unix:///path`) is one Redis,
    /// several the seed nodes of a Redis Cluster. Every call is bounded by `timeout`. No
    /// I/O: the connection is made by the first call.
    pub fn new(urls: &[&str], timeout: Duration, metrics: Option<CallMetrics>) -> Result<Self, StoreError> {
        let client = match urls {
            [url] => Client::One(redis::Client::open(*url)?),
            seeds => Client::Cluster(Box::new(
                redis::cluster::ClusterClient::builder(seeds.iter().copied())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?,
            )),
        };
        let con = Arc::new(tokio::sync::OnceCell::new());
        let (take, give_back) = (Script::new(TAKE), Script::new(GIVE_BACK));
        Ok(Self { client: Arc::new(client), con, take, give_back, timeout, metrics })
    }

    /// A store already connected (tests).
    pub async fn connect(urls: &[&str], timeout: Duration) -> Result<Self, StoreError> {
        let store = Self::new(urls, timeout, None)?;
        store.connection().await?;
        Ok(store)
    }

    /// The connection, made now if there is none yet: bounded by the timeout.
    async fn connection(&self) -> Result<Connection, StoreError> {
        let timeout = self.timeout;
        let con = self
            .con
            .get_or_try_init(|| async {
                match &*self.client {
                    Client::One(client) => {
                        let config = redis::aio::ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(timeout))
                            .set_response_timeout(Some(timeout))
                            .set_number_of_retries(1);
                        let manager = client.get_connection_manager_with_config(config);
                        Ok::<_, StoreError>(Connection::One(bounded(timeout, manager).await?))
                    }
                    Client::Cluster(client) => {
                        Ok(Connection::Cluster(bounded(timeout, client.get_async_connection()).await?))
                    }
                }
            })
            .await?;
        Ok(con.clone())
    }

    /// The bound of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Takes up to `wanted` tokens of `gcra` from the state at `key`.
    pub async fn take(&self, key: &str, gcra: Gcra, wanted: u32) -> Result<Grant, StoreError> {
        self.take_at(key, gcra, wanted, None).await
    }

    /// Gives back `unspent` tokens to the state at `key`.
    pub async fn give_back(&self, key: &str, gcra: Gcra, unspent: u32) -> Result<(), StoreError> {
        self.give_back_at(key, gcra, unspent, None).await
    }

    async fn take_at(&self, key: &str, gcra: Gcra, wanted: u32, now: Option<Duration>) -> Result<Grant, StoreError> {
        let mut call = self.take.key(key);
        call.arg(wanted).arg(micros(gcra.interval)).arg(gcra.burst);
        let (granted, retry_after, remaining): (u32, u64, u32) = self.call(&mut call, now).await?;
        Ok(Grant { granted, retry_after: Duration::from_micros(retry_after), remaining })
    }

    async fn give_back_at(&self, key: &str, gcra: Gcra, unspent: u32, now: Option<Duration>) -> Result<(), StoreError> {
        let mut call = self.give_back.key(key);
        call.arg(unspent).arg(micros(gcra.interval));
        let _: i64 = self.call(&mut call, now).await?;
        Ok(())
    }

    /// Runs a script (sent by its SHA-1, loaded on `NOSCRIPT`), bounded by the timeout
    /// (connecting included), counted and timed. With `now` (tests only), the script's
    /// last argument is that time instead of Redis's clock: every script that reads the
    /// time takes it so.
    pub(super) async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        now: Option<Duration>,
    ) -> Result<T, StoreError> {
        if let Some(now) = now {
            invocation.arg(micros(now));
        }
        let start = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout, async {
            match self.connection().await? {
                Connection::One(mut con) => Ok(invocation.invoke_async(&mut con).await?),
                Connection::Cluster(mut con) => Ok(invocation.invoke_async(&mut con).await?),
            }
        })
        .await
        {
            // The client's own response timeout is the same bound.
            Ok(Err(StoreError::Redis(e))) if e.is_timeout() => Err(StoreError::Timeout(self.timeout)),
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        if let Some(metrics) = &self.metrics {
            metrics.duration.observe(start.elapsed().as_secs_f64());
            match &result {
                Ok(_) => metrics.ok.inc(),
                Err(StoreError::Timeout(_)) => metrics.timeout.inc(),
                Err(StoreError::Redis(_)) => metrics.error.inc(),
            }
        }
        result
    }
}

/// Microseconds, the scripts' unit (Redis's `TIME` is to the microsecond).
pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::process::{Child, Command, Stdio};

    use proptest::prelude::*;

    use super::super::lease::Shared;
    use super::*;

    /// A real redis-server on a unix socket of its own, no persistence; killed on drop.
    pub struct Redis {
        child: Child,
        pub url: String,
        dir: std::path::PathBuf,
    }

    impl Redis {
        /// A fresh directory of its own.
        fn dir() -> std::path::PathBuf {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("sluice-redis-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        }

        pub fn start() -> Self {
            let dir = Self::dir();
            let child = Self::serve(&dir);
            Self { child, url: format!("redis+unix://{}", dir.join("redis.sock").display()), dir }
        }

        /// A redis-server on `dir/redis.sock`, once it listens.
        fn serve(dir: &std::path::Path) -> Child {
            let socket = dir.join("redis.sock");
            let _ = std::fs::remove_file(&socket);
            let child = Command::new("redis-server")
                .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocketperm", "700"])
                .arg("--unixsocket")
                .arg(&socket)
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs (.ci/test installs Debian's redis-server)");
            let start = std::time::Instant::now();
            while !socket.exists() {
                assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            child
        }

        /// Kills the server (as a crash would), then, with `back`, starts a new one on the
        /// same socket: empty, its scripts gone.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        pub fn restart(&mut self) {
            self.kill();
            self.child = Self::serve(&self.dir);
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A Redis Cluster of three primaries on loopback (ports of their own, each with its
    /// bus port free too), no persistence; killed on drop.
    pub struct Cluster {
        nodes: Vec<Redis>,
        pub urls: Vec<String>,
    }

    impl Cluster {
        pub fn start() -> Self {
            let ports: Vec<u16> = std::iter::repeat_with(|| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = listener.local_addr().unwrap().port();
                let bus_free = port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
                bus_free.then_some(port)
            })
            .flatten()
            .take(3)
            .collect();
            let nodes: Vec<Redis> = ports
                .iter()
                .map(|port| {
                    let dir = Redis::dir();
                    let child = Command::new("redis-server")
                        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--cluster-enabled", "yes"])
                        .args(["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"])
                        .arg("--dir")
                        .arg(&dir)
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("redis-server runs (.ci/test installs Debian's redis-server)");
                    Redis { child, url: format!("redis://127.0.0.1:{port}"), dir }
                })
                .collect();
            let cli = |port: u16, args: &[&str]| {
                Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli runs")
            };
            for port in &ports {
                let start = std::time::Instant::now();
                while cli(*port, &["ping"]).stdout != b"PONG\n" {
                    assert!(start.elapsed() < Duration::from_secs(10), "a cluster node did not start");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let created = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addresses)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .expect("redis-cli runs");
            assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
            for port in &ports {
                let start = std::time::Instant::now();
                while !String::from_utf8_lossy(&cli(*port, &["cluster", "info"]).stdout).contains("cluster_state:ok") {
                    assert!(start.elapsed() < Duration::from_secs(20), "the cluster did not settle");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let urls = nodes.iter().map(|n| n.url.clone()).collect();
            Self { nodes, urls }
        }

        /// Runs `redis-cli ARGS` on every node; what each printed.
        pub fn on_every_node(&self, args: &[&str]) -> Vec<String> {
            let run = |node: &Redis| {
                let port = node.url.rsplit(':').next().unwrap();
                let out = Command::new("redis-cli").args(["-p", port]).args(args).output().unwrap();
                assert!(out.status.success());
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            self.nodes.iter().map(run).collect()
        }
    }

    #[test]
    fn a_redis_cluster_keeps_each_state_on_its_slot_and_reloads_scripts_everywhere() {
        let cluster = Cluster::start();
        runtime().block_on(async {
            let urls: Vec<&str> = cluster.urls.iter().map(String::as_str).collect();
            let store = Store::connect(&urls, Duration::from_secs(2)).await.unwrap();
            let gcra = Gcra { interval: Duration::from_millis(100), burst: 5 };
            let now = Duration::from_secs(1_800_000_000);
            // keys of many services land on all three primaries' slots
            let keys: Vec<String> = (0..30).map(|i| state_key(&format!("svc{i}"), "r", b"k")).collect();
            for key in &keys {
                assert_eq!(store.take_at(key, gcra, 3, Some(now)).await.unwrap().granted, 3, "{key}");
            }
            let sizes = cluster.on_every_node(&["dbsize"]);
            assert!(sizes.iter().all(|n| n.parse::<u32>().unwrap() > 0), "every primary holds some: {sizes:?}");
            cluster.on_every_node(&["script", "flush"]);
            for key in &keys {
                let grant = store.take_at(key, gcra, 3, Some(now)).await.unwrap();
                assert_eq!((grant.granted, grant.remaining), (2, 0), "{key}: its state, on its node");
            }
            store.give_back_at(&keys[0], gcra, 5, Some(now)).await.unwrap();
            assert_eq!(store.take_at(&keys[0], gcra, 9, Some(now)).await.unwrap().granted, 5);
        });
    }

    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn keys_are_short_stable_and_on_one_slot() {
        let a = state_key("claims", "submit", b"consumer-1");
        assert_eq!(a, state_key("claims", "submit", b"consumer-1"));
        assert_ne!(a, state_key("claims", "submit", b"consumer-2"));
        assert!(a.starts_with("sluice:{claims:submit:") && a.ends_with("}:gcra") && a.len() < 80, "{a}");
        assert!(state_key("s", "r", &[0xff; 4096]).len() < 80);
    }

    #[test]
    fn the_scripts_do_what_the_model_does_and_survive_a_script_flush() {
        let redis = Redis::start();
        runtime().block_on(async {
            let store = Store::connect(&[&redis.url], Duration::from_secs(2)).await.unwrap();
            let gcra = Gcra { interval: Duration::from_millis(100), burst: 5 };
            let now = Duration::from_secs(1_800_000_000);
            let grant = store.take_at("k", gcra, 3, Some(now)).await.unwrap();
            assert_eq!(grant, Grant { granted: 3, retry_after: Duration::ZERO, remaining: 2 });
            // Redis restarted, its scripts gone: loaded again on NOSCRIPT.
            let Connection::One(mut con) = store.connection().await.unwrap() else { unreachable!("one redis") };
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut con).await.unwrap();
            let grant = store.take_at("k", gcra, 3, Some(now)).await.unwrap();
            assert_eq!((grant.granted, grant.remaining), (2, 0));
            let refused = store.take_at("k", gcra, 1, Some(now)).await.unwrap();
            assert_eq!((refused.granted, refused.retry_after), (0, Duration::from_millis(100)));
            // The key expires when the bucket is full again: the TAT, 0.5 s ahead.
            let ttl: i64 = redis::cmd("PTTL").arg("k").query_async(&mut con).await.unwrap();
            assert!(ttl > 0, "an expiry is set: {ttl}");
            store.give_back_at("k", gcra, 5, Some(now)).await.unwrap();
            let exists: i64 = redis::cmd("EXISTS").arg("k").query_async(&mut con).await.unwrap();
            assert_eq!(exists, 0, "given all back: a full bucket, deleted");
            // On Redis's own clock too.
            assert_eq!(store.take("fresh", gcra, 9).await.unwrap().granted, 5);
        });
    }

    #[test]
    fn a_call_to_a_redis_that_is_gone_fails_within_the_timeout() {
        let redis = Redis::start();
        runtime().block_on(async {
            // The bound under test is the call's, not the connection's: on a busy machine
            // (CI) making the connection can take longer than 50 ms, so it is tried again.
            let store = Store::new(&[&redis.url], Duration::from_millis(50), None).unwrap();
            let mut tries = 1;
            while let Err(e) = store.connection().await {
                assert!(tries < 40, "no connection to a running redis in {tries} tries: {e}");
                tries += 1;
            }
            let gcra = Gcra { interval: Duration::from_millis(1), burst: 1 };
            drop(redis);
            let start = std::time::Instant::now();
            assert!(store.take("k", gcra, 1).await.is_err());
            assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The scripts and the model, given the same calls at the same times, answer the
        /// same.
        #[test]
        fn the_scripts_match_the_model(
            interval_us in 1u64..100_000,
            burst in 1u32..50,
            calls in proptest::collection::vec((0u64..200_000, 0u32..20, proptest::bool::ANY), 1..60),
        ) {
            let redis = Redis::start();
            let gcra = Gcra { interval: Duration::from_micros(interval_us), burst };
            let mut model = Shared::default();
            let mut now = Duration::from_secs(1_800_000_000);
            runtime().block_on(async {
                let store = Store::connect(&[&redis.url], Duration::from_secs(2)).await.unwrap();
                for (gap, n, give) in calls {
                    now += Duration::from_micros(gap);
                    if give {
                        gcra.give_back(&mut model, now, n);
                        store.give_back_at("k", gcra, n, Some(now)).await.unwrap();
                    } else {
                        let expected = gcra.take(&mut model, now, n);
                        let got = store.take_at("k", gcra, n, Some(now)).await.unwrap();
                        assert_eq!(got, expected, "take {n} at {now:?}");
                    }
                }
            });
        }
    }
}
