//! The checks of the settings about the service itself: `health_check`,
//! `outlier_detection`, `circuit_breaker`, and each route's `retries`.

use std::time::Duration;

use super::*;
use crate::upstream::retry::{RetryOn, RetryPolicy};
use crate::upstream::{CircuitBreaker, HealthCheck, OutlierDetection};

impl Validator {
    pub(super) fn health_check(&mut self, raw: &RawHealthCheck) -> Option<HealthCheck> {
        let path = if raw.path.starts_with('/') && raw.path.parse::<http::uri::PathAndQuery>().is_ok() {
            Some(raw.path.clone())
        } else {
            self.error("health_check.path", format!("`{}` is not a path: write one like /healthz", raw.path));
            None
        };
        let mut duration = |path: &str, text: &Option<String>, default: u64| match text {
            Some(t) => self.duration(path, t),
            None => Some(Duration::from_secs(default)),
        };
        let interval = duration("health_check.interval", &raw.interval, 5);
        let timeout = duration("health_check.timeout", &raw.timeout, 1);
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                self.error("health_check.timeout", "must not be longer than health_check.interval");
            }
        }
        let mut count = |path: &str, n: &Option<Count>, default: u64| match n {
            Some(n) => self.check(path, whole(n, 1, 100, "")),
            None => Some(default),
        };
        let unhealthy_after = count("health_check.unhealthy_after", &raw.unhealthy_after, 3);
        let healthy_after = count("health_check.healthy_after", &raw.healthy_after, 2);
        Some(HealthCheck {
            path: path?,
            interval: interval?,
            timeout: timeout?,
            unhealthy_after: unhealthy_after? as u32,
            healthy_after: healthy_after? as u32,
        })
    }

    pub(super) fn outlier_detection(&mut self, raw: &RawOutlierDetection) -> Option<OutlierDetection> {
        let consecutive_failures = match &raw.consecutive_failures {
            Some(n) => self.check("outlier_detection.consecutive_failures", whole(n, 1, 1000, "")),
            None => Some(5),
        };
        let ejection_time = match &raw.ejection_time {
            Some(t) => self.duration("outlier_detection.ejection_time", t),
            None => Some(Duration::from_secs(30)),
        };
        Some(OutlierDetection { consecutive_failures: consecutive_failures? as u32, ejection_time: ejection_time? })
    }

    pub(super) fn circuit_breaker(&mut self, raw: &RawCircuitBreaker) -> Option<CircuitBreaker> {
        if raw.max_requests.is_none() && raw.max_connections.is_none() {
            self.error("circuit_breaker", "give max_requests, max_connections or both");
            return None;
        }
        let mut cap = |path: &str, n: &Option<Count>| match n {
            Some(n) => self.check(path, whole(n, 1, 1_000_000, "")).map(|n| Some(n as u32)),
            None => Some(None),
        };
        let max_requests = cap("circuit_breaker.max_requests", &raw.max_requests);
        let max_connections = cap("circuit_breaker.max_connections", &raw.max_connections);
        Some(CircuitBreaker { max_requests: max_requests?, max_connections: max_connections? })
    }

    pub(super) fn grpc_failures(&mut self, raw: Option<&[Count]>) -> GrpcCodes {
        let Some(raw) = raw else { return GrpcCodes::FAILURES };
        let mut codes = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            match crate::metrics::grpc::code(text.0.trim()) {
                Some(code) => codes.push(code),
                None => self.error(
                    format!("grpc_failures[{i}]"),
                    format!("`{}` is not a gRPC status: write its name (UNAVAILABLE) or number (0 to 16)", text.0),
                ),
            }
        }
        GrpcCodes::of(&codes)
    }

    pub(super) fn dns_refresh(&mut self, raw: Option<&str>) -> Option<Duration> {
        let Some(text) = raw else { return Some(Duration::from_secs(5)) };
        let every = self.duration("dns_refresh", text)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&every) {
            self.error("dns_refresh", format!("must be from 1s to 1h, got {text}"));
            return None;
        }
        Some(every)
    }

    pub(super) fn retries(&mut self, at: &str, raw: &RawRetries, timeout: Duration) -> Option<RetryPolicy> {
        let attempts = match &raw.attempts {
            Some(n) => self.check(&format!("{at}.attempts"), whole(n, 1, 10, "")),
            None => Some(2),
        };
        let mut on = RetryOn::default();
        let mut on_ok = true;
        let default_on = ["connect_error".to_string(), "reset".to_string()];
        for (i, condition) in raw.on.as_deref().unwrap_or(&default_on).iter().enumerate() {
            match condition.as_str() {
                "connect_error" => on.connect_error = true,
                "reset" => on.reset = true,
                code => match code.parse::<u16>() {
                    Ok(status) if code.len() == 3 && (400..=599).contains(&status) => on.statuses.push(status),
                    _ => {
                        let message = format!(
                            "`{code}` is not a condition: write connect_error, reset, or a status from 400 to 599 in quotes (\"503\")"
                        );
                        self.error(format!("{at}.on[{i}]"), message);
                        on_ok = false;
                    }
                },
            }
        }
        let per_try_timeout = match &raw.per_try_timeout {
            Some(t) => {
                let path = format!("{at}.per_try_timeout");
                self.duration(&path, t).and_then(|d| {
                    let within = (d <= timeout).then_some(Some(d));
                    self.check(&path, within.ok_or_else(|| format!("`{t}` is longer than the route's timeout")))
                })
            }
            None => Some(None),
        };
        let budget = match &raw.budget {
            Some(b) => self.check(&format!("{at}.budget"), parse_ratio(b)),
            None => Some(0.2),
        };
        on_ok.then_some(())?;
        Some(RetryPolicy { attempts: attempts? as u32, on, per_try_timeout: per_try_timeout?, budget: budget? })
    }
}
