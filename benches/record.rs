//! Recording one finished request, as the request path does when its body ends: the
//! route's counters, its duration histogram (with the SLA threshold as an edge) and both
//! SLIs. Run: `cargo bench --bench record`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::metrics::{Metrics, Origin};
use sluice::snapshot::Snapshot;

fn record(c: &mut Criterion) {
    let text = "service: bench\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nroutes:\n  - name: api\n    match: { path: /api }\n    sla:\n      latency: { threshold: 200ms, objective: 99% }\n      availability: 99.9%\n";
    let metrics = Metrics::new();
    let snapshot = Snapshot::build(sluice::config::parse(text).unwrap(), 1, None, &metrics);
    let route = &snapshot.routes[0];
    let mut i = 0u32;
    c.bench_function("record/histogram+counters+sla", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let duration = Duration::from_micros(u64::from(i % 300) * 1000);
            let status = if i.is_multiple_of(100) { 503 } else { 200 };
            route.metrics.inflight.inc();
            route.metrics.inflight.dec();
            route.metrics.finished(Origin::Upstream, black_box(status), black_box(duration));
            route.sla.record(duration, status >= 500);
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
