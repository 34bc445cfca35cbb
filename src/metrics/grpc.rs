//! `sluice_grpc_responses_total{route,grpc_code}`: gRPC calls by the status they ended
//! with, the service's or sluice's own, as go-grpc-prometheus names its codes. A route's
//! series appear as its codes do (17 at most), so a route that carries no gRPC has none.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The codes of gRPC's status, by number (grpc/doc/statuscodes.md).
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The number of a code given by name or number, as a config writes it.
pub fn code(text: &str) -> Option<u8> {
    match text.parse::<u8>() {
        Ok(n) if usize::from(n) < CODES.len() => Some(n),
        Ok(_) => None,
        Err(_) => CODES.iter().position(|c| c.eq_ignore_ascii_case(text)).map(|n| n as u8),
    }
}

pub fn register(registry: &Registry) -> IntCounterVec {
    let vec = IntCounterVec::new(
        Opts::new(
            "sluice_grpc_responses_total",
            "gRPC calls by route and the status they ended with (grpc_code: OK, UNAVAILABLE, ...): the service's, or sluice's own answer.",
        ),
        &["route", "grpc_code"],
    )
    .expect("valid metric");
    registry.register(Box::new(vec.clone())).expect("registered once");
    vec
}

/// One route's counters, made as each code first ends a call.
pub struct Codes {
    vec: IntCounterVec,
    route: String,
    counters: [OnceLock<IntCounter>; 17],
}

impl Codes {
    pub fn new(vec: IntCounterVec, route: &str) -> Self {
        Self { vec, route: route.to_string(), counters: Default::default() }
    }

    /// A call that ended with `code` (a number past 16 counts as UNKNOWN).
    pub fn count(&self, code: u8) {
        let code = if usize::from(code) < CODES.len() { code } else { 2 };
        let at = usize::from(code);
        self.counters[at].get_or_init(|| self.vec.with_label_values(&[&self.route, CODES[at]])).inc();
    }

    /// Drops a gone route's series.
    pub fn forget(vec: &IntCounterVec, route: &str) {
        for code in CODES {
            let _ = vec.remove_label_values(&[route, code]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_name_or_number() {
        assert_eq!(code("UNAVAILABLE"), Some(14));
        assert_eq!(code("data_loss"), Some(15));
        assert_eq!(code("0"), Some(0));
        assert_eq!(code("16"), Some(16));
        assert_eq!(code("17"), None);
        assert_eq!(code("TEAPOT"), None);
    }

    #[test]
    fn a_routes_series_appear_as_its_codes_do() {
        let registry = Registry::new();
        let vec = register(&registry);
        let codes = Codes::new(vec.clone(), "api");
        let series = || {
            let mut text = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
            String::from_utf8(text).unwrap().lines().filter(|l| l.starts_with("sluice_grpc_responses_total{")).count()
        };
        assert_eq!(series(), 0, "no call yet, no series");
        codes.count(0);
        codes.count(14);
        codes.count(14);
        codes.count(99);
        assert_eq!(vec.with_label_values(&["api", "UNAVAILABLE"]).get(), 2);
        assert_eq!(vec.with_label_values(&["api", "UNKNOWN"]).get(), 1);
        assert_eq!(series(), 3);
    }
}
