//! Configuration: YAML text → [`RawConfig`] (serde, unknown fields refused) → [`Config`]
//! (validated, typed), with every error placed at its line, column and field path.
//! [`reload`] watches the file and SIGHUP, and swaps the live [`crate::snapshot`].

pub mod overlay;
mod parse;
mod raw;
pub mod reload;
pub mod tokens;
mod units;
mod validate;

pub use validate::UNMATCHED;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;

pub use parse::{parse_document, place_all};
pub use raw::*;
pub use units::{format_duration, parse_duration, parse_ratio};

use crate::quota::{ConcurrencySpec, RateSpec};
use crate::route::PathPattern;

/// The default config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/sluice.yaml";

/// A validated config: every value typed, every invariant checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: String,
    pub listen: SocketAddr,
    pub upstream: http::uri::Authority,
    /// `upstream_protocol`: what sluice speaks to the service.
    pub upstream_protocol: UpstreamProtocol,
    pub admin: Admin,
    pub limits: Limits,
    pub quota: Option<RateSpec>,
    pub concurrency: Option<ConcurrencySpec>,
    pub routes: Vec<Route>,
    /// `events.webhook`: where events are POSTed, if anywhere.
    pub webhook: Option<http::Uri>,
    /// `global`: the Redis of the quotas with `scope: global`, if any.
    pub global: Option<crate::quota::global::GlobalSettings>,
    /// `health_check` and `outlier_detection`: what marks the service unhealthy.
    pub health_check: Option<crate::upstream::HealthCheck>,
    pub outlier_detection: Option<crate::upstream::OutlierDetection>,
    /// `dns_refresh`: how often a host name `upstream` is resolved again (5 s).
    pub dns_refresh: std::time::Duration,
    /// `grpc_failures`: the gRPC statuses from the service that fail availability.
    pub grpc_failures: GrpcCodes,
    /// `circuit_breaker`: caps on requests in flight and connections to the service.
    pub circuit_breaker: Option<crate::upstream::CircuitBreaker>,
    /// What was written, for the control API to show and edit.
    pub raw: RawConfig,
}

/// A set of gRPC status codes (0 to 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, DATA_LOSS:
    /// the service failed the call (not the caller: INVALID_ARGUMENT, NOT_FOUND, ...).
    pub const FAILURES: Self = Self::of(&[2, 4, 8, 13, 14, 15]);

    pub const fn of(codes: &[u8]) -> Self {
        let mut set = 0;
        let mut i = 0;
        while i < codes.len() {
            set |= 1 << codes[i];
            i += 1;
        }
        Self(set)
    }

    #[inline]
    pub fn contains(self, code: u8) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }
}

/// `upstream_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, whatever the client speaks.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), whatever the client speaks: gRPC services.
    Http2,
    /// What the client speaks: h2c clients' requests go out as h2c, HTTP/1.1 as HTTP/1.1.
    MatchClient,
}

impl UpstreamProtocol {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "http1" => Ok(Self::Http1),
            "http2" => Ok(Self::Http2),
            "match_client" => Ok(Self::MatchClient),
            other => Err(format!("`{other}` is not a protocol: write http1, http2 or match_client")),
        }
    }

    /// Whether a request the client sent as `version` goes to the service over HTTP/2.
    #[inline]
    pub fn h2_for(self, version: http::Version) -> bool {
        match self {
            Self::Http1 => false,
            Self::Http2 => true,
            Self::MatchClient => version == http::Version::HTTP_2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub state_dir: std::path::PathBuf,
}

/// Where pushed config and the audit log are kept when `admin.state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sluice";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub timeout: Duration,
    pub drain_timeout: Duration,
    /// After SIGTERM, how long sluice goes on serving while `/readyz` answers 503, before
    /// it drains.
    pub drain_delay: Duration,
    /// How long a binary upgrade's new process has to be serving, else it is killed and
    /// this process serves on.
    pub upgrade_timeout: Duration,
    /// Client connections open at once; past it new ones are closed at once, counted.
    pub max_connections: usize,
    /// The longest wait for the next bytes of a request body (408).
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection (HTTP/1.1 or h2c) may wait with no request.
    pub idle_timeout: Duration,
    /// How long a response write may wait on a client that does not read.
    pub write_timeout: Duration,
    /// How long a client connection may live; then it is closed between requests
    /// (HTTP/1.1: `Connection: close`; h2c: GOAWAY). None: for ever.
    pub max_connection_age: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            upgrade_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connection_age: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub method: Option<Method>,
    pub path: PathPattern,
    pub timeout: Duration,
    pub quota: Option<RateSpec>,
    pub concurrency: Option<ConcurrencySpec>,
    pub sla: Option<Sla>,
    pub retries: Option<crate::upstream::retry::RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sla {
    pub latency: Option<LatencySla>,
    pub availability: Option<f64>,
    pub window: Duration,
    /// Fewest events in a rule's long window for it to raise a breach.
    pub min_events: u64,
}

/// `sla.min_events` when not set: at 99.9 %, one error in 100 events is a burn rate of 10,
/// under the fast-burn threshold of 14.4, so no single error in a quiet window pages.
pub const DEFAULT_MIN_EVENTS: u64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct LatencySla {
    pub threshold: Duration,
    pub objective: f64,
}

/// One problem in a config, placed as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `routes[2].quota.per`; empty for the document as a whole.
    pub path: String,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config, with the file it came from, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: Option<String>,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &self.source {
                Some(source) => write!(f, "{source}:{error}")?,
                None => write!(f, "{error}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, |_| {})
}

/// Parses config text, lets `adjust` change it (the control API puts in the live `admin`
/// section), then validates it; errors are placed in `text`.
pub fn parse_with(text: &str, adjust: impl FnOnce(&mut RawConfig)) -> Result<Config, ConfigErrors> {
    parse::parse_document(text, &[], adjust)
}

/// Reads, parses and validates a config file; errors name the file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read(path)?;
    parse(&text).map_err(|e| ConfigErrors { source: Some(path.display().to_string()), ..e })
}

/// Reads a config file's text; the error names the file.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source: Some(path.display().to_string()),
        errors: vec![ConfigError { path: String::new(), line: None, column: None, message: e.to_string() }],
    })
}

/// Validates an already parsed config, as the control API receives it. Errors carry the
/// field path only.
pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigErrors> {
    validate::validate(raw).map_err(|errors| ConfigErrors {
        source: None,
        errors: errors
            .into_iter()
            .map(|(path, message)| ConfigError { path, line: None, column: None, message })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_are_valid() {
        for text in [include_str!("../../config/sluice.yaml"), include_str!("../../config/demo.yaml")] {
            parse(text).unwrap();
        }
    }

    #[test]
    fn the_design_example_is_valid() {
        let config = parse(
            r#"
service: claims
listen: 0.0.0.0:8080
upstream: http://127.0.0.1:8000
admin:
  listen: 127.0.0.1:9901
  metrics_listen: 0.0.0.0:9902
  tokens:
    - { name: control-plane, role: admin, token_env: SLUICE_ADMIN_TOKEN }
    - { name: grafana, role: viewer, token_file: /etc/sluice/viewer.token }
quota: { rate: 20000, per: 1m, burst: 500 }
routes:
  - name: submit-claim
    match: { method: POST, path: /claims/submit }
    timeout: 2s
    quota:
      rate: 5000
      per: 1m
      burst: 100
      key: header:x-consumer-id
      mode: enforce
    concurrency: { max: 5, key: header:x-user-id }
    sla:
      latency: { threshold: 200ms, objective: 99% }
      availability: 99.9%
      window: 30d
  - name: other
    match: { path: "/*" }
"#,
        )
        .unwrap();
        assert_eq!(config.routes.len(), 2);
        let quota = config.routes[0].quota.as_ref().unwrap();
        assert_eq!(quota.emission_interval(), Duration::from_millis(12));
        assert_eq!(config.routes[1].timeout, Duration::from_secs(30));
        assert_eq!(config.quota.as_ref().unwrap().burst.get(), 500);
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).err().map_or_else(Vec::new, |e| e.errors.iter().map(ToString::to_string).collect())
    }

    const HEAD: &str = "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\n";

    #[test]
    fn every_semantic_error_is_listed_with_its_place() {
        let text = format!(
            "{HEAD}routes:\n  - name: a\n    match: {{ path: nope }}\n    quota: {{ rate: 0, per: 1y }}\n  - name: a\n    match: {{ method: get, path: /x }}\n    timeout: fast\n"
        );
        assert_eq!(
            errors(&text),
            [
                "6:20: routes[0].match.path: `nope` must start with `/`",
                "7:20: routes[0].quota.rate: must be a whole number of at least 1, got 0",
                "7:28: routes[0].quota.per: `y` is not a duration unit: use ms, s, m, h or d",
                "8:11: routes[1].name: `a` is already the name of an earlier route",
                "9:22: routes[1].match.method: `get` is not a method: write it in capitals, e.g. GET",
                "10:14: routes[1].timeout: `fast` is not a duration: write e.g. `250ms`, `2s`, `1m`",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused_at_their_key() {
        let text =
            format!("{HEAD}routes:\n  - name: a\n    match: {{ path: /x }}\n    qouta: {{ rate: 1, per: 1s }}\n");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("7:5: routes[0].qouta: Unknown field `qouta`"), "{errors:?}");
    }

    #[test]
    fn type_and_syntax_errors_are_placed() {
        let text =
            format!("{HEAD}routes:\n  - name: a\n    match: {{ path: /x }}\n    quota: {{ rate: lots, per: 1s }}\n");
        assert_eq!(errors(&text), ["7:20: routes[0].quota.rate: must be a whole number of at least 1, got lots"]);
        let errors = errors("service: [unclosed\n");
        assert!(errors[0].starts_with("2:1: ") || errors[0].starts_with("1:"), "{errors:?}");
        assert!(parse(&format!("{HEAD}service: twice\n")).unwrap_err().errors[0].message.contains("duplicate key"));
    }

    #[test]
    fn every_error_is_listed_type_errors_included() {
        // A value of the wrong sign, an unknown field, a section of the wrong shape and a
        // bad objective beside a bad availability and window: all of them, in file order,
        // and not the `match` missing once its bad value was taken out.
        let text = format!(
            "{HEAD}routes:\n  - name: a\n    match: {{ path: /x }}\n    quota: {{ rate: -5, per: 1s }}\n  - name: b\n    match: {{ path: /b }}\n    qouta: 5\n  - name: c\n    match: /c\n  - name: d\n    match: {{ path: /d }}\n    sla: {{ latency: {{ threshold: 20ms, objective: 99.5 }}, availability: 120%, window: 10m }}\n"
        );
        assert_eq!(
            errors(&text),
            [
                "7:20: routes[0].quota.rate: must be a whole number of at least 1, got -5",
                "10:5: routes[1].qouta: Unknown field `qouta`, expected one of `name`, `match`, `timeout`, `quota`, `concurrency`, `sla`, or `retries`",
                "12:12: routes[2].match: invalid type: string \"/c\", expected a mapping of its fields",
                "15:51: routes[3].sla.latency.objective: `99.5` is not a percentage: write e.g. `99.9%`",
                "15:73: routes[3].sla.availability: `120%` must lie strictly between 0% and 100%",
                "15:87: routes[3].sla.window: `10m` is shorter than 1h",
            ]
        );
    }

    #[test]
    fn numbers_are_checked_with_what_was_expected() {
        let at = |quota: &str| {
            errors(&format!("{HEAD}routes:\n  - name: a\n    match: {{ path: /x }}\n    quota: {quota}\n"))
        };
        assert_eq!(
            at("{ rate: 0, per: 1s }"),
            ["7:20: routes[0].quota.rate: must be a whole number of at least 1, got 0"]
        );
        assert_eq!(
            at("{ rate: 1.5, per: 1s }"),
            ["7:20: routes[0].quota.rate: must be a whole number of at least 1, got 1.5"]
        );
        assert_eq!(
            at("{ rate: 99999999999, per: 1s }"),
            ["7:20: routes[0].quota.rate: must be at most 4294967295, got 99999999999"]
        );
        assert_eq!(at("{ rate: 5, per: 1s, burst: 10 }"), Vec::<String>::new());
    }

    #[test]
    fn sla_objectives_and_window_are_checked() {
        let text = format!(
            "{HEAD}routes:\n  - name: a\n    match: {{ path: /x }}\n    sla: {{ availability: 100%, window: 30m }}\n"
        );
        assert_eq!(
            errors(&text),
            [
                "7:26: routes[0].sla.availability: `100%` must lie strictly between 0% and 100%",
                "7:40: routes[0].sla.window: `30m` is shorter than 1h",
            ]
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let errors = errors("service: s\nlisten: 127.0.0.1:0\n");
        assert!(errors[0].contains("upstream"), "{errors:?}");
    }

    #[test]
    fn upstream_must_be_plain_http() {
        let https = errors("service: s\nlisten: 127.0.0.1:0\nupstream: https://x:1\n");
        assert_eq!(https, ["3:11: upstream: must be an http:// URL: sluice talks to its service in plain HTTP"]);
        let credentials = errors("service: s\nlisten: 127.0.0.1:0\nupstream: http://user:secret@x:1\n");
        assert_eq!(credentials, ["3:11: upstream: must not carry credentials (user:password@)"]);
    }

    #[test]
    fn raw_round_trips_through_json() {
        let config = parse(include_str!("../../config/demo.yaml")).unwrap();
        let json = serde_json::to_string(&config.raw).unwrap();
        let back: RawConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config.raw);
    }
}
