//! Raw config → typed [`Config`]. Every check runs, so one pass reports every problem,
//! each with its field path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use http::Method;

use super::*;

mod upstream;
use crate::quota::global::{store::Store, GlobalSettings, OnError};
use crate::quota::{Advertise, ConcurrencySpec, KeySpec, Mode, RateSpec, Scope, DEFAULT_MAX_KEYS};
use crate::route::PathPattern;

type Errors = Vec<(String, String)>;

/// The route name that counts requests no route matched.
pub const UNMATCHED: &str = "unmatched";

pub fn validate(raw: RawConfig) -> Result<Config, Errors> {
    let mut v = Validator::default();
    if !is_name(&raw.service) {
        v.error("service", "must be 1-64 characters of letters, digits, `-`, `_` or `.`");
    }
    let listen = v.addr("listen", &raw.listen);
    let upstream = v.upstream("upstream", &raw.upstream);
    let upstream_protocol = match raw.upstream_protocol.as_deref() {
        Some(text) => v.check("upstream_protocol", UpstreamProtocol::parse(text)),
        None => Some(UpstreamProtocol::Http1),
    };
    let admin = v.admin(raw.admin.as_ref());
    let limits = v.limits(raw.limits.as_ref());
    let quota = raw.quota.as_ref().and_then(|q| v.quota("quota", q));
    let concurrency = raw.concurrency.as_ref().and_then(|c| v.concurrency("concurrency", c));
    let webhook = raw.events.as_ref().and_then(|e| e.webhook.as_ref()).and_then(|url| {
        let parsed = url.parse::<http::Uri>().map_err(|_| format!("`{url}` is not a URL")).and_then(|uri| {
            match (uri.scheme_str(), uri.authority()) {
                (Some("http"), Some(_)) => Ok(uri),
                _ => Err("must be an http:// URL with a host".to_string()),
            }
        });
        v.check("events.webhook", parsed)
    });
    let global = raw.global.as_ref().and_then(|g| v.global(g));
    let health_check = raw.health_check.as_ref().and_then(|h| v.health_check(h));
    let outlier_detection = raw.outlier_detection.as_ref().and_then(|o| v.outlier_detection(o));
    let circuit_breaker = raw.circuit_breaker.as_ref().and_then(|b| v.circuit_breaker(b));
    let dns_refresh = v.dns_refresh(raw.dns_refresh.as_deref());
    let grpc_failures = v.grpc_failures(raw.grpc_failures.as_deref());
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, route) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !is_name(&route.name) {
            v.error(format!("{at}.name"), "must be 1-64 characters of letters, digits, `-`, `_` or `.`");
        } else if route.name == UNMATCHED {
            v.error(format!("{at}.name"), "`unmatched` is reserved for requests that match no route");
        } else if !names.insert(route.name.as_str()) {
            v.error(format!("{at}.name"), format!("`{}` is already the name of an earlier route", route.name));
        }
        if let Some(r) = v.route(&at, route, limits.timeout) {
            routes.push(r);
        }
    }
    if raw.global.is_none() {
        // A global quota needs somewhere to be kept.
        let scoped = |quota: bool, concurrency: bool, at: &str| {
            let mut paths = Vec::new();
            if quota {
                paths.push(format!("{at}quota.scope"));
            }
            if concurrency {
                paths.push(format!("{at}concurrency.scope"));
            }
            paths
        };
        let global_rate = |q: &Option<RateSpec>| q.as_ref().is_some_and(|q| q.scope == Scope::Global);
        let global_slots = |c: &Option<ConcurrencySpec>| c.as_ref().is_some_and(|c| c.scope == Scope::Global);
        let mut paths = scoped(global_rate(&quota), global_slots(&concurrency), "");
        for (i, route) in routes.iter().enumerate() {
            paths.extend(scoped(global_rate(&route.quota), global_slots(&route.concurrency), &format!("routes[{i}].")));
        }
        for path in paths {
            v.error(path, "`global` needs the `global` section: global.redis, where the shared state is kept");
        }
    }
    if !v.errors.is_empty() {
        return Err(v.errors);
    }
    Ok(Config {
        service: raw.service.clone(),
        listen: listen.expect("no errors"),
        upstream: upstream.expect("no errors"),
        upstream_protocol: upstream_protocol.expect("no errors"),
        admin: admin.expect("no errors"),
        limits,
        quota,
        concurrency,
        routes,
        webhook,
        global,
        health_check,
        outlier_detection,
        circuit_breaker,
        dns_refresh: dns_refresh.expect("no errors"),
        grpc_failures,
        raw,
    })
}

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[derive(Default)]
struct Validator {
    errors: Errors,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push((path.into(), message.into()));
    }

    /// Records the error of `result` at `path`, if any.
    fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.error(path, e)).ok()
    }

    fn addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        let parsed = text
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{text}` is not an address: write IP:PORT, e.g. 0.0.0.0:8080"));
        self.check(path, parsed)
    }

    fn duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        let parsed = parse_duration(text).and_then(|d| {
            if d.is_zero() {
                Err("must be longer than zero".to_string())
            } else {
                Ok(d)
            }
        });
        self.check(path, parsed)
    }

    fn upstream(&mut self, path: &str, text: &str) -> Option<http::uri::Authority> {
        let parsed = (|| {
            let uri: http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
            if uri.scheme_str() != Some("http") {
                return Err("must be an http:// URL: sluice talks to its service in plain HTTP".to_string());
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err("must not have a path or query: requests keep their own".to_string());
            }
            // sluice would not send them, and a config is stored and audited: no secrets.
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err("must not carry credentials (user:password@)".to_string());
            }
            uri.authority().cloned().ok_or_else(|| "must name a host and port".to_string())
        })();
        self.check(path, parsed)
    }

    fn admin(&mut self, raw: Option<&RawAdmin>) -> Option<Admin> {
        let default = RawAdmin { listen: None, metrics_listen: None, tokens: Vec::new(), state_dir: None };
        let raw = raw.unwrap_or(&default);
        let listen = match &raw.listen {
            Some(text) => self.addr("admin.listen", text),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        };
        let metrics_listen = match &raw.metrics_listen {
            Some(text) => self.addr("admin.metrics_listen", text).map(Some),
            None => Some(None),
        };
        let mut names = HashSet::new();
        for (i, token) in raw.tokens.iter().enumerate() {
            let at = format!("admin.tokens[{i}]");
            if !is_name(&token.name) {
                self.error(format!("{at}.name"), "must be 1-64 characters of letters, digits, `-`, `_` or `.`");
            } else if !names.insert(token.name.as_str()) {
                self.error(format!("{at}.name"), format!("`{}` is already the name of another token", token.name));
            }
            if !matches!(token.role.as_str(), "viewer" | "operator" | "admin") {
                self.error(
                    format!("{at}.role"),
                    format!("`{}` is not a role: use viewer, operator or admin", token.role),
                );
            }
            let sources = [token.token_env.is_some(), token.token_file.is_some(), token.token.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                self.error(at, "give exactly one of token_env, token_file or token");
            }
        }
        let state_dir = match raw.state_dir.as_deref() {
            Some("") => {
                self.error("admin.state_dir", "must not be empty");
                None
            }
            Some(dir) => Some(dir.into()),
            None => Some(super::DEFAULT_STATE_DIR.into()),
        };
        Some(Admin { listen: listen?, metrics_listen: metrics_listen?, state_dir: state_dir? })
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else { return limits };
        let durations = [
            ("limits.header_read_timeout", &raw.header_read_timeout, &mut limits.header_read_timeout),
            ("limits.timeout", &raw.timeout, &mut limits.timeout),
            ("limits.drain_timeout", &raw.drain_timeout, &mut limits.drain_timeout),
            ("limits.body_read_timeout", &raw.body_read_timeout, &mut limits.body_read_timeout),
            ("limits.idle_timeout", &raw.idle_timeout, &mut limits.idle_timeout),
            ("limits.write_timeout", &raw.write_timeout, &mut limits.write_timeout),
            ("limits.upgrade_timeout", &raw.upgrade_timeout, &mut limits.upgrade_timeout),
        ];
        for (path, text, slot) in durations {
            if let Some(d) = text.as_deref().and_then(|t| self.duration(path, t)) {
                *slot = d;
            }
        }
        // The one duration that may be zero: no delay, the default.
        if let Some(text) = &raw.drain_delay {
            if let Some(d) = self.check("limits.drain_delay", parse_duration(text)) {
                limits.drain_delay = d;
            }
        }
        let sizes = [
            ("limits.max_header_bytes", &raw.max_header_bytes, 8192, &mut limits.max_header_bytes),
            ("limits.max_uri_bytes", &raw.max_uri_bytes, 256, &mut limits.max_uri_bytes),
        ];
        for (path, value, min, slot) in sizes {
            if let Some(n) = value.as_ref().and_then(|v| self.check(path, whole(v, min, 1 << 20, "bytes"))) {
                *slot = n as usize;
            }
        }
        if let Some(text) = &raw.max_connection_age {
            limits.max_connection_age = self.duration("limits.max_connection_age", text);
        }
        let path = "limits.max_connections";
        if let Some(n) =
            raw.max_connections.as_ref().and_then(|v| self.check(path, whole(v, 1, 1 << 24, "connections")))
        {
            limits.max_connections = n as usize;
        }
        limits
    }

    fn quota(&mut self, at: &str, raw: &RawQuota) -> Option<RateSpec> {
        let rate = self.check(&format!("{at}.rate"), nonzero_u32(&raw.rate));
        let per = self.duration(&format!("{at}.per"), &raw.per);
        let burst = match &raw.burst {
            Some(b) => self.check(&format!("{at}.burst"), nonzero_u32(b)),
            None => rate, // a quota without a burst may be spent at once, like a window
        };
        let key = match &raw.key {
            Some(k) => self.check(&format!("{at}.key"), KeySpec::parse(k)),
            None => Some(KeySpec::None),
        };
        let mode = match &raw.mode {
            Some(m) => self.check(&format!("{at}.mode"), Mode::parse(m)),
            None => Some(Mode::Enforce),
        };
        let max_keys = match &raw.max_keys {
            Some(n) => self
                .check(&format!("{at}.max_keys"), whole(n, 1, u32::MAX.into(), ""))
                .and_then(|n| NonZeroUsize::new(n as usize)),
            None => NonZeroUsize::new(DEFAULT_MAX_KEYS),
        };
        let advertise = match &raw.advertise {
            Some(a) => self.check(&format!("{at}.advertise"), Advertise::parse(a)),
            None => Some(Advertise::Refusals),
        };
        let scope = self.scope(at, raw.scope.as_deref());
        if scope == Some(Scope::Global) && advertise == Some(Advertise::Always) {
            self.error(
                format!("{at}.advertise"),
                "`always` is for local quotas: a global quota's left-over lives in Redis, so it advertises on refusals",
            );
        }
        let (rate, per) = (rate?, per?);
        if (per / rate.get()).is_zero() {
            self.error(format!("{at}.rate"), "is more than one request per nanosecond");
            return None;
        }
        if scope == Some(Scope::Global) && per / rate.get() < Duration::from_micros(1) {
            // The shared state is kept on Redis's clock, in microseconds.
            self.error(
                format!("{at}.rate"),
                "a global quota allows at most one request per microsecond (1000000 a second)",
            );
            return None;
        }
        let (burst, key, mode, max_keys, advertise, scope) = (burst?, key?, mode?, max_keys?, advertise?, scope?);
        Some(RateSpec { rate, per, burst, key, mode, max_keys, advertise, scope })
    }

    fn concurrency(&mut self, at: &str, raw: &RawConcurrency) -> Option<ConcurrencySpec> {
        let max = self.check(&format!("{at}.max"), nonzero_u32(&raw.max));
        let key = match &raw.key {
            Some(k) => self.check(&format!("{at}.key"), KeySpec::parse(k)),
            None => Some(KeySpec::None),
        };
        let scope = self.scope(at, raw.scope.as_deref());
        Some(ConcurrencySpec { max: max?, key: key?, scope: scope? })
    }

    fn scope(&mut self, at: &str, text: Option<&str>) -> Option<Scope> {
        match text {
            Some(s) => self.check(&format!("{at}.scope"), Scope::parse(s)),
            None => Some(Scope::Local),
        }
    }

    fn global(&mut self, raw: &RawGlobal) -> Option<GlobalSettings> {
        let timeout = match &raw.timeout {
            Some(t) => self.duration("global.timeout", t),
            None => Some(crate::quota::global::shared::DEFAULT_TIMEOUT),
        };
        let on_error = match &raw.on_error {
            Some(p) => self.check("global.on_error", OnError::parse(p)),
            None => Some(OnError::LocalShare),
        };
        let urls = &raw.redis.0;
        let redis = if urls.is_empty() {
            self.error("global.redis", "give a Redis URL, or a Redis Cluster's nodes");
            None
        } else if let Some(url) = urls.iter().find(|u| !u.starts_with("redis://") && !u.starts_with("redis+unix://")) {
            self.error(
                "global.redis",
                format!("`{url}` is not a Redis URL: write redis://HOST:PORT or redis+unix:///PATH"),
            );
            None
        } else if urls.iter().any(|u| u.contains('@')) {
            // A config is stored and audited: no secrets in it.
            self.error("global.redis", "must not carry credentials (user:password@)");
            None
        } else {
            // The client's own parser, so what is accepted here connects the same way.
            let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
            let parsed = Store::new(&refs, Duration::from_millis(20), None).map(|_| urls.clone());
            self.check("global.redis", parsed.map_err(|e| format!("{e}")))
        };
        Some(GlobalSettings { redis: redis?, timeout: timeout?, on_error: on_error? })
    }

    fn route(&mut self, at: &str, raw: &RawRoute, default_timeout: Duration) -> Option<Route> {
        let method = match &raw.matches.method {
            Some(m) => self.check(
                &format!("{at}.match.method"),
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Some(method)),
                    _ => Err(format!("`{m}` is not a method: write it in capitals, e.g. GET")),
                },
            ),
            None => Some(None),
        };
        let path = self.check(&format!("{at}.match.path"), PathPattern::parse(&raw.matches.path));
        let timeout = match &raw.timeout {
            Some(t) => self.duration(&format!("{at}.timeout"), t),
            None => Some(default_timeout),
        };
        let quota = match &raw.quota {
            Some(q) => self.quota(&format!("{at}.quota"), q).map(Some),
            None => Some(None),
        };
        let concurrency = match &raw.concurrency {
            Some(c) => self.concurrency(&format!("{at}.concurrency"), c).map(Some),
            None => Some(None),
        };
        let sla = match &raw.sla {
            Some(s) => self.sla(&format!("{at}.sla"), s).map(Some),
            None => Some(None),
        };
        let retries = match (&raw.retries, timeout) {
            (Some(r), Some(timeout)) => self.retries(&format!("{at}.retries"), r, timeout).map(Some),
            (Some(_), None) => None,
            (None, _) => Some(None),
        };
        Some(Route {
            name: raw.name.clone(),
            method: method?,
            path: path?,
            timeout: timeout?,
            quota: quota?,
            concurrency: concurrency?,
            sla: sla?,
            retries: retries?,
        })
    }

    fn sla(&mut self, at: &str, raw: &RawSla) -> Option<Sla> {
        let latency = match &raw.latency {
            Some(l) => {
                let threshold = self.duration(&format!("{at}.latency.threshold"), &l.threshold);
                let objective = self.check(&format!("{at}.latency.objective"), parse_ratio(&l.objective));
                // Not `?` here: that would return before the availability and window are checked.
                threshold.zip(objective).map(|(threshold, objective)| Some(LatencySla { threshold, objective }))
            }
            None => Some(None),
        };
        let availability = match &raw.availability {
            Some(a) => self.check(&format!("{at}.availability"), parse_ratio(a)).map(Some),
            None => Some(None),
        };
        let window = match &raw.window {
            Some(w) => self.duration(&format!("{at}.window"), w).and_then(|d| {
                // The window is kept in 720 buckets: an hour gives 5 s each.
                let long_enough = (d >= Duration::from_secs(3600)).then_some(d);
                self.check(&format!("{at}.window"), long_enough.ok_or_else(|| format!("`{w}` is shorter than 1h")))
            }),
            None => Some(Duration::from_secs(30 * 86400)),
        };
        let min_events = match &raw.min_events {
            Some(n) => self.check(&format!("{at}.min_events"), whole(n, 0, u32::MAX.into(), "events")),
            None => Some(DEFAULT_MIN_EVENTS),
        };
        let (latency, availability) = (latency?, availability?);
        if latency.is_none() && availability.is_none() {
            self.error(at, "give a latency objective, an availability objective, or both");
            return None;
        }
        Some(Sla { latency, availability, window: window?, min_events: min_events? })
    }
}

fn nonzero_u32(n: &Count) -> Result<NonZeroU32, String> {
    whole(n, 1, u32::MAX.into(), "").map(|n| NonZeroU32::new(n as u32).expect("at least 1"))
}

/// A whole number from `min` to `max` (in `unit`, if any), or what was expected instead.
fn whole(n: &Count, min: u64, max: u64, unit: &str) -> Result<u64, String> {
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    match n.get() {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) if v > max => Err(format!("must be at most {max}{unit}, got {v}")),
        _ => Err(format!("must be a whole number of at least {min}{unit}, got {n}")),
    }
}
