//! Prometheus metrics: one registry, and per-route handles resolved when a config is
//! applied, so recording a request is a few atomic adds: no label lookup, no allocation,
//! no lock. Label values are bounded: route names from the config and fixed enums.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::sla::{Report, SliKind, Window};
use crate::upstream::breaker::Limit;
use process::Process;

pub mod grpc;
mod process;

/// The buckets of `sluice_request_duration_seconds`, before each route's SLA threshold is
/// added as an edge of its own.
pub const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Who made a response: the service, or sluice itself and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Upstream,
    Quota,
    Concurrency,
    Timeout,
    UpstreamError,
    /// Refused before routing: a malformed or too long request target (400, 414).
    Rejected,
    /// Refused because Redis could not decide a global quota, under `on_error: deny` (503).
    QuotaUnavailable,
    /// Refused at once while the service is held unhealthy (503): the service's failure.
    UpstreamUnhealthy,
    /// Refused at once past a cap of `circuit_breaker` (503): the service is behind.
    UpstreamOverflow,
    /// The client's failure: its request body stalled past `limits.body_read_timeout`
    /// (408) or broke off (400), or it did not read its response within
    /// `limits.write_timeout` (cut). Never the service's: out of the SLIs.
    Client,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Quota => "quota",
            Self::Concurrency => "concurrency",
            Self::Timeout => "timeout",
            Self::UpstreamError => "upstream_error",
            Self::Rejected => "rejected",
            Self::QuotaUnavailable => "quota_unavailable",
            Self::Client => "client",
            Self::UpstreamUnhealthy => "upstream_unhealthy",
            Self::UpstreamOverflow => "upstream_overflow",
        }
    }

    /// Whether the request's outcome is the service's: it reached the service, or was
    /// refused because the service is down (held unhealthy) or behind (the circuit
    /// breaker). Only those count in the SLIs and the duration histogram. A refusal by a
    /// quota is sluice doing its job, not a failure.
    pub fn reached_service(self) -> bool {
        matches!(
            self,
            Self::Upstream | Self::Timeout | Self::UpstreamError | Self::UpstreamUnhealthy | Self::UpstreamOverflow
        )
    }
}

/// The (origin, code class) pairs that can occur; one counter each, made up front.
pub const OUTCOMES: [(Origin, &str); 14] = [
    (Origin::Upstream, "1xx"),
    (Origin::Upstream, "2xx"),
    (Origin::Upstream, "3xx"),
    (Origin::Upstream, "4xx"),
    (Origin::Upstream, "5xx"),
    (Origin::Quota, "4xx"),
    (Origin::Concurrency, "4xx"),
    (Origin::Timeout, "5xx"),
    (Origin::UpstreamError, "5xx"),
    (Origin::Rejected, "4xx"),
    (Origin::QuotaUnavailable, "5xx"),
    (Origin::Client, "4xx"),
    (Origin::UpstreamUnhealthy, "5xx"),
    (Origin::UpstreamOverflow, "5xx"),
];

fn outcome(origin: Origin, status: u16) -> usize {
    match origin {
        Origin::Upstream => usize::from(status.clamp(100, 599) / 100 - 1),
        Origin::Quota => 5,
        Origin::Concurrency => 6,
        Origin::Timeout => 7,
        Origin::UpstreamError => 8,
        Origin::Rejected => 9,
        Origin::QuotaUnavailable => 10,
        Origin::Client => 11,
        Origin::UpstreamUnhealthy => 12,
        Origin::UpstreamOverflow => 13,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited,
    ShadowLimited,
    /// Let through by `global.on_error` while Redis could not decide a global quota.
    DegradedAllowed,
}

const DECISIONS: [&str; 4] = ["allowed", "limited", "shadow_limited", "degraded_allowed"];

/// What became of a retry, or of a failure that was not retried (`retries` on a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryResult {
    /// A retry was sent.
    Retried = 0,
    /// A request that failed got its answer on a retry.
    Succeeded,
    /// A failure `on` names went back as it was: every attempt was spent,
    AttemptsExhausted,
    /// the retry budget was,
    BudgetExhausted,
    /// or trying again was not safe (the method is not idempotent, or its body went).
    Unsafe,
}

const RETRY_RESULTS: [&str; 5] = ["retried", "succeeded", "attempts_exhausted", "budget_exhausted", "unsafe"];

impl RetryResult {
    pub const ALL: [RetryResult; 5] =
        [Self::Retried, Self::Succeeded, Self::AttemptsExhausted, Self::BudgetExhausted, Self::Unsafe];

    pub fn as_str(self) -> &'static str {
        RETRY_RESULTS[self as usize]
    }
}

/// The handles of one route.
pub struct RouteMetrics {
    requests: [IntCounter; OUTCOMES.len()],
    decisions: [IntCounter; DECISIONS.len()],
    retries: [IntCounter; RETRY_RESULTS.len()],
    pub inflight: IntGauge,
    duration: Histogram,
    /// gRPC calls by the status they ended with.
    pub grpc: grpc::Codes,
}

impl RouteMetrics {
    #[inline]
    pub fn decided(&self, decision: Decision) {
        self.decisions[decision as usize].inc();
    }

    /// Counts one finished request; requests that reached the service are timed too.
    #[inline]
    pub fn finished(&self, origin: Origin, status: u16, duration: Duration) {
        self.requests[outcome(origin, status)].inc();
        if origin.reached_service() {
            self.duration.observe(duration.as_secs_f64());
        }
    }

    #[cold]
    pub fn retry(&self, result: RetryResult) {
        self.retries[result as usize].inc();
    }

    /// The count of `result`, for `/v1/status`.
    pub fn retries(&self, result: RetryResult) -> u64 {
        self.retries[result as usize].get()
    }

    pub fn decisions(&self, decision: Decision) -> u64 {
        self.decisions[decision as usize].get()
    }

    /// The request duration histogram as it is now: each bucket's upper bound (seconds)
    /// and cumulative count, the `+Inf` bucket last.
    pub fn latency_buckets(&self) -> Vec<(f64, u64)> {
        use prometheus::core::Metric;
        let metric = self.duration.metric();
        let histogram = metric.get_histogram();
        let mut buckets: Vec<(f64, u64)> =
            histogram.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        buckets.push((f64::INFINITY, histogram.get_sample_count()));
        buckets
    }
}

/// Where a config came from, for `sluice_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The file changed (watched).
    File,
    /// SIGHUP.
    Signal,
    /// The control API.
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Signal => "signal",
            Self::Api => "api",
        }
    }
}

/// What became of a config offered after the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// It is live as this version.
    Applied(u64),
    /// It is the config already live: no new version.
    Unchanged,
    /// Refused: the previous config serves.
    Failed,
}

/// One client connection counted in `sluice_connections` until it is dropped.
pub struct Open(IntGauge);

impl Open {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    decisions: IntCounterVec,
    retries: IntCounterVec,
    grpc: IntCounterVec,
    inflight: IntGaugeVec,
    sla_objective: GaugeVec,
    sla_threshold: GaugeVec,
    sla_compliance: GaugeVec,
    sla_budget: GaugeVec,
    sla_burn: GaugeVec,
    pub config_version: IntGauge,
    /// 1 while the service is healthy, 0 while health checks or failed requests hold it
    /// down.
    pub upstream_healthy: IntGauge,
    /// Requests refused by the circuit breaker, by [`Limit`].
    upstream_overflow: [IntCounter; 2],
    /// Client connections open now, by listener (`proxy`, `admin`, `metrics`); see [`Open`].
    pub connections: IntGaugeVec,
    /// Client connections closed at once, by reason (`max_connections`).
    pub connections_refused: IntCounterVec,
    reloads: IntCounterVec,
    /// Unauthenticated control API calls left out of the audit log by its rate bound.
    pub audit_suppressed: prometheus::IntCounter,
    global: crate::quota::global::GlobalMetrics,
    last_reload_success: Gauge,
    /// Per route: its histogram (a collector of its own, so its buckets can hold its SLA
    /// threshold) and the buckets it was built with.
    histograms: Mutex<HashMap<String, (Vec<f64>, Histogram)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("registered once");
            vec
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let vec = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("registered once");
            vec
        };
        let requests = counter(
            "sluice_requests_total",
            "Requests answered, by route, status code class and who answered (origin).",
            &["route", "code_class", "origin"],
        );
        let decisions = counter(
            "sluice_quota_decisions_total",
            "Rate and concurrency quota decisions by route: allowed, limited (refused) or shadow_limited (a shadow quota would have refused).",
            &["route", "decision"],
        );
        let retries = counter(
            "sluice_upstream_retries_total",
            "Retries to the service by route and result: retried (a retry sent), succeeded (answered on a retry), and failures not retried: attempts_exhausted, budget_exhausted, unsafe (not idempotent, or its body went).",
            &["route", "result"],
        );
        let reloads = counter(
            "sluice_config_reloads_total",
            "Configs offered after the start, by source (file: the file changed; signal: SIGHUP; api: the control API) and result (success: a new version is live; unchanged: the same config, no new version; failure: refused, the previous config serves).",
            &["source", "result"],
        );
        let overflow = counter(
            "sluice_upstream_overflow_total",
            "Requests refused at once (503) by the circuit breaker, by the cap they met: max_requests (in flight to the service) or max_connections (open to it).",
            &["limit"],
        );
        let upstream_overflow = Limit::ALL.map(|limit| overflow.with_label_values(&[limit.as_str()]));
        let connections_refused = counter(
            "sluice_connections_refused_total",
            "Client connections closed as soon as they were accepted, by reason (max_connections: limits.max_connections were open).",
            &["reason"],
        );
        connections_refused.with_label_values(&["max_connections"]);
        let connections = IntGaugeVec::new(
            Opts::new("sluice_connections", "Client connections open now, by listener."),
            &["listener"],
        )
        .expect("valid metric");
        registry.register(Box::new(connections.clone())).expect("registered once");
        connections.with_label_values(&["proxy"]);
        connections.with_label_values(&["admin"]);
        let audit_suppressed = prometheus::IntCounter::new(
            "sluice_audit_suppressed_total",
            "Control API calls without a valid token that the audit log left out (it writes 20 at once, then one a second), each counted in its next `suppressed` record.",
        )
        .expect("valid metric");
        registry.register(Box::new(audit_suppressed.clone())).expect("registered once");
        let calls = counter(
            "sluice_global_quota_calls_total",
            "Calls to the Redis of the global quotas, by result: ok, error (Redis answered with an error or the connection failed) or timeout (slower than global.timeout).",
            &["result"],
        );
        let call_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_global_quota_call_duration_seconds",
                "Time of each call to the Redis of the global quotas, connecting included.",
            )
            .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1]),
        )
        .expect("valid metric");
        let degraded = IntGauge::new(
            "sluice_global_quota_degraded",
            "1 while Redis cannot decide the global quotas and global.on_error does; 0 while Redis does.",
        )
        .expect("valid metric");
        registry.register(Box::new(call_duration.clone())).expect("registered once");
        registry.register(Box::new(degraded.clone())).expect("registered once");
        let global = crate::quota::global::GlobalMetrics {
            calls: crate::quota::global::store::CallMetrics {
                ok: calls.with_label_values(&["ok"]),
                error: calls.with_label_values(&["error"]),
                timeout: calls.with_label_values(&["timeout"]),
                duration: call_duration,
            },
            degraded,
        };
        let grpc = grpc::register(&registry);
        let inflight =
            IntGaugeVec::new(Opts::new("sluice_inflight_requests", "Requests being served now, by route."), &["route"])
                .expect("valid metric");
        registry.register(Box::new(inflight.clone())).expect("registered once");
        let sli = ["route", "sli"];
        let sla_objective = gauge("sluice_sla_objective_ratio", "The SLA objective of each route's SLI.", &sli);
        let sla_threshold = gauge(
            "sluice_sla_latency_threshold_seconds",
            "The latency SLI's threshold: a request answered within it is good.",
            &["route"],
        );
        let sla_compliance = gauge(
            "sluice_sla_compliance_ratio",
            "Good requests over all requests within the SLA window (1 without traffic).",
            &sli,
        );
        let sla_budget = gauge(
            "sluice_sla_error_budget_remaining_ratio",
            "Share of the SLA window's error budget left: 1 untouched, 0 spent, below 0 overspent.",
            &sli,
        );
        let sla_burn = gauge(
            "sluice_sla_burn_rate",
            "Error ratio over the window divided by the error budget ratio: 1 spends the budget exactly over the SLA window.",
            &["route", "sli", "window"],
        );
        let config_version =
            IntGauge::new("sluice_config_version", "Version of the config being served.").expect("valid metric");
        let upstream_healthy = IntGauge::new(
            "sluice_upstream_healthy",
            "1 while the service is healthy; 0 while health_check or outlier_detection hold it unhealthy (requests get 503, /readyz 503).",
        )
        .expect("valid metric");
        upstream_healthy.set(1);
        let last_reload_success =
            Gauge::new("sluice_config_last_reload_success_timestamp_seconds", "Unix time of the last config applied.")
                .expect("valid metric");
        let build_info = IntGaugeVec::new(Opts::new("sluice_build_info", "The sluice build: always 1."), &["version"])
            .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(config_version.clone()) as Box<dyn Collector>,
            Box::new(upstream_healthy.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(build_info),
            Box::new(Process::new()),
        ] {
            registry.register(c).expect("registered once");
        }
        for source in [Source::File, Source::Signal, Source::Api] {
            for result in ["success", "unchanged", "failure"] {
                reloads.with_label_values(&[source.as_str(), result]);
            }
        }
        last_reload_success.set(unix_now());
        Self {
            registry,
            requests,
            decisions,
            retries,
            grpc,
            inflight,
            sla_objective,
            sla_threshold,
            sla_compliance,
            sla_budget,
            sla_burn,
            config_version,
            upstream_healthy,
            upstream_overflow,
            connections,
            connections_refused,
            reloads,
            audit_suppressed,
            global,
            last_reload_success,
            histograms: Mutex::new(HashMap::new()),
        }
    }

    /// The handles of route `name`, whose SLA latency threshold (if any) becomes a bucket
    /// edge. A route that keeps its name and buckets keeps its histogram across reloads.
    /// A request refused by the circuit breaker's `limit`.
    pub fn upstream_overflow(&self, limit: Limit) {
        self.upstream_overflow[limit as usize].inc();
    }

    /// The handles of the global quotas.
    pub fn global(&self) -> crate::quota::global::GlobalMetrics {
        self.global.clone()
    }

    pub fn route(&self, name: &str, threshold: Option<Duration>) -> Arc<RouteMetrics> {
        let mut buckets = DEFAULT_BUCKETS.to_vec();
        if let Some(t) = threshold {
            buckets.push(t.as_secs_f64());
            buckets.sort_by(f64::total_cmp);
            buckets.dedup();
        }
        let mut histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let duration = match histograms.get(name) {
            Some((b, histogram)) if *b == buckets => histogram.clone(),
            previous => {
                if let Some((_, old)) = previous {
                    let _ = self.registry.unregister(Box::new(old.clone()));
                }
                let opts = HistogramOpts::new(
                    "sluice_request_duration_seconds",
                    "Time from the request's head read to its response's last byte, for requests that reached the service; an edge at the route's SLA latency threshold.",
                )
                .const_label("route", name)
                .buckets(buckets.clone());
                let histogram = Histogram::with_opts(opts).expect("valid histogram");
                self.registry.register(Box::new(histogram.clone())).expect("one histogram per route");
                histograms.insert(name.to_string(), (buckets, histogram.clone()));
                histogram
            }
        };
        Arc::new(RouteMetrics {
            requests: OUTCOMES.map(|(origin, class)| self.requests.with_label_values(&[name, class, origin.as_str()])),
            decisions: DECISIONS.map(|d| self.decisions.with_label_values(&[name, d])),
            retries: RETRY_RESULTS.map(|r| self.retries.with_label_values(&[name, r])),
            inflight: self.inflight.with_label_values(&[name]),
            duration,
            grpc: grpc::Codes::new(self.grpc.clone(), name),
        })
    }

    /// Drops the series of routes that are gone from the config.
    pub fn retain_routes(&self, keep: &[&str]) {
        let mut histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = histograms.keys().filter(|n| !keep.contains(&n.as_str())).cloned().collect();
        for name in gone {
            if let Some((_, h)) = histograms.remove(&name) {
                let _ = self.registry.unregister(Box::new(h));
            }
            for (origin, class) in OUTCOMES {
                let _ = self.requests.remove_label_values(&[&name, class, origin.as_str()]);
            }
            for r in RETRY_RESULTS {
                let _ = self.retries.remove_label_values(&[&name, r]);
            }
            for d in DECISIONS {
                let _ = self.decisions.remove_label_values(&[&name, d]);
            }
            let _ = self.inflight.remove_label_values(&[&name]);
            grpc::Codes::forget(&self.grpc, &name);
            self.forget_sla(&name);
        }
    }

    /// Publishes one SLI's figures.
    pub fn sla(&self, route: &str, report: &Report) {
        let labels = [route, report.kind.as_str()];
        self.sla_objective.with_label_values(&labels).set(report.objective);
        if let Some(threshold) = report.threshold {
            self.sla_threshold.with_label_values(&[route]).set(threshold.as_secs_f64());
        }
        self.sla_compliance.with_label_values(&labels).set(report.compliance);
        self.sla_budget.with_label_values(&labels).set(report.budget_remaining);
        for (window, burn) in Window::ALL.iter().zip(report.burn) {
            self.sla_burn.with_label_values(&[route, report.kind.as_str(), window.as_str()]).set(burn);
        }
    }

    /// Drops a route's SLA series (its SLA was removed, or the route was).
    pub fn forget_sla(&self, route: &str) {
        for sli in [SliKind::Latency, SliKind::Availability] {
            self.forget_sli(route, sli);
        }
    }

    /// Drops the series of one SLI of a route (the SLA no longer has it).
    pub fn forget_sli(&self, route: &str, sli: SliKind) {
        if sli == SliKind::Latency {
            let _ = self.sla_threshold.remove_label_values(&[route]);
        }
        let labels = [route, sli.as_str()];
        let _ = self.sla_objective.remove_label_values(&labels);
        let _ = self.sla_compliance.remove_label_values(&labels);
        let _ = self.sla_budget.remove_label_values(&labels);
        for window in Window::ALL {
            let _ = self.sla_burn.remove_label_values(&[route, sli.as_str(), window.as_str()]);
        }
    }

    /// Counts a config offered after the start.
    pub fn reloaded(&self, source: Source, outcome: Reload) {
        let result = match outcome {
            Reload::Applied(version) => {
                self.config_version.set(version as i64);
                self.last_reload_success.set(unix_now());
                "success"
            }
            Reload::Unchanged => {
                self.last_reload_success.set(unix_now());
                "unchanged"
            }
            Reload::Failed => "failure",
        };
        self.reloads.with_label_values(&[source.as_str(), result]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
