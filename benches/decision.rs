//! The per-request decision: route match + quota check, with 1 and 100 routes and with
//! 1 and 100k keys; the rate engine alone; and a global quota's decision from its lease.
//! Run: `cargo bench --bench decision`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use sluice::proxy::admit::admit;
use sluice::proxy::RequestFields;
use sluice::snapshot::Snapshot;

/// `routes` routes with exact paths `/r0` … and a keyed quota that never refuses.
fn snapshot(routes: usize) -> Snapshot {
    let mut text = String::from("service: bench\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nroutes:\n");
    for i in 0..routes {
        text.push_str(&format!(
            "  - name: r{i}\n    match: {{ method: GET, path: /r{i} }}\n    quota: {{ rate: 1000000000, per: 1s, burst: 1000000, key: header:x-consumer-id, max_keys: 200000 }}\n"
        ));
    }
    Snapshot::build(sluice::config::parse(&text).unwrap(), 1, None, &sluice::metrics::Metrics::new())
}

/// The fields of request `i`, as an h2c request has them (a map from hyper): just
/// parsed, so in cache.
fn headers(i: usize) -> RequestFields {
    let mut h = HeaderMap::new();
    h.insert("x-consumer-id", HeaderValue::from_str(&format!("consumer-{i:06}")).unwrap());
    RequestFields::Map(h)
}

fn decision(c: &mut Criterion) {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The engines' clock. The request path reads it once per request, for its latency,
    // and hands that reading to the quotas: so here it is read with the headers.
    let origin = Instant::now();
    for routes in [1, 100] {
        let snapshot = snapshot(routes);
        let path = format!("/r{}", routes - 1); // the last route: the whole list is scanned
        for keys in [1, 100_000] {
            for i in 0..keys {
                let route = snapshot.find(&Method::GET, &path);
                admit(&snapshot, route, &headers(i), ip, origin.elapsed()).map_err(|_| ()).unwrap();
            }
            // Each request's headers are built outside the timing, 64 at a time, so they
            // are in cache as a request's are; the quota table (100k keys) is not.
            let mut i = 0;
            c.bench_function(&format!("decision/{routes}_routes/{keys}_keys"), |b| {
                b.iter_batched_ref(
                    || {
                        i = (i + 7919) % keys; // a prime stride: no two neighbours share a cache line
                        (headers(i), origin.elapsed())
                    },
                    |(h, now)| {
                        let route = snapshot.find(black_box(&Method::GET), black_box(&path));
                        black_box(admit(&snapshot, route, h, ip, *now).is_ok())
                    },
                    BatchSize::NumIterations(64),
                )
            });
        }
    }
}

criterion_group!(benches, decision);

/// The rate engine alone, keys already in hand: what the quota table costs by itself.
/// A quota keyed by `x-consumer-id` that never refuses at the benches' pace: `rate` a
/// second, a burst of a million, 200,000 keys at most.
fn keyed_spec(rate: u32, scope: sluice::quota::Scope) -> sluice::quota::RateSpec {
    use sluice::quota::{Advertise, KeySpec, Mode, RateSpec};
    use std::num::{NonZeroU32, NonZeroUsize};
    RateSpec {
        rate: NonZeroU32::new(rate).unwrap(),
        per: std::time::Duration::from_secs(1),
        burst: NonZeroU32::new(1_000_000).unwrap(),
        key: KeySpec::Header(http::HeaderName::from_static("x-consumer-id")),
        mode: Mode::Enforce,
        max_keys: NonZeroUsize::new(200_000).unwrap(),
        advertise: Advertise::Refusals,
        scope,
    }
}

fn rate_check(c: &mut Criterion) {
    use sluice::quota::{RateLimit, Scope};
    let spec = keyed_spec(1_000_000_000, Scope::Local);
    for keys in [1, 100_000] {
        let limit = RateLimit::new(spec.clone());
        let keys: Vec<Vec<u8>> = (0..keys).map(|i| format!("consumer-{i:06}").into_bytes()).collect();
        let origin = Instant::now();
        for k in &keys {
            limit.check(k, origin.elapsed());
        }
        let mut i = 0;
        c.bench_function(&format!("rate_check/{}_keys", keys.len()), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(limit.check(&keys[i], origin.elapsed()))
            })
        });
    }
}

/// A global rate quota's decision on a replica that holds a lease for the key: what a
/// request pays while Redis is off its path. Against a real redis-server (its own unix
/// socket); top-ups go out in the background, on the runtime's worker, as in sluice. Over
/// 1,000 keys, so that a key's lease is topped up long before it runs dry (one key at this
/// loop's pace, millions a second, would spend its batch faster than a round trip to Redis
/// brings the next, and the figure would be Redis's, not the lease's).
fn global_check(c: &mut Criterion) {
    use sluice::quota::global::{GlobalRate, GlobalSettings, OnError, Outcome, Shared};
    use sluice::quota::Scope;

    let dir = std::env::temp_dir().join(format!("sluice-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("redis.sock");
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
        .arg(&socket)
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server runs (.ci/test installs it)");
    while !socket.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let settings = GlobalSettings {
        redis: vec![format!("redis+unix://{}", socket.display())],
        timeout: std::time::Duration::from_secs(1),
        on_error: OnError::Deny,
    };
    let spec = keyed_spec(1_000_000, Scope::Global);
    let rate = runtime.block_on(async {
        let shared = Shared::new(settings, "bench", sluice::metrics::Metrics::new().global()).unwrap();
        GlobalRate::new(shared, "r", &spec)
    });
    let origin = std::time::Instant::now();
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("consumer-{i:06}").into_bytes()).collect();
    runtime.block_on(async {
        for k in &keys {
            assert_eq!(rate.check(k, origin.elapsed()).await, Outcome::Allowed);
            // each key's first lease
        }
    });
    let mut i = 0;
    c.bench_function("global_check/1000_keys_leased", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    i = (i + 1) % keys.len();
                    let outcome = rate.check(black_box(&keys[i]), origin.elapsed()).await;
                    assert_eq!(outcome, Outcome::Allowed);
                }
                start.elapsed()
            })
        })
    });
    drop(runtime);
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(engine, rate_check, global_check);
criterion_main!(benches, engine);
