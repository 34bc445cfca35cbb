//! The config exactly as written: serde types that mirror the YAML, unknown fields refused.
//! Scalars with units stay strings here; `validate` turns them into typed values, so
//! that every such error can be reported, not just the first.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number as it was written. It stays text here, so that `-5` or `lots` reaches
/// validation, which says what was expected, instead of ending the parse at the first one.
/// Written back, a number is a number again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count(pub String);

impl Count {
    pub fn new(n: u64) -> Self {
        Self(n.to_string())
    }

    /// The number, if the text is a whole number that fits in a u64.
    pub fn get(&self) -> Option<u64> {
        let text = self.0.trim();
        text.bytes().all(|b| b.is_ascii_digit()).then(|| text.parse().ok()).flatten()
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.get() {
            Some(n) => serializer.serialize_u64(n),
            None => serializer.serialize_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Count, E> {
                Ok(Count(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Count, E> {
                Ok(Count(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Count, E> {
                Ok(Count(v.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub service: String,
    pub listen: String,
    pub upstream: String,
    /// `http1`, `http2` (h2c to the service) or `match_client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<RawQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<RawConcurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<RawEvents>,
    /// Where the quotas with `scope: global` are kept, shared by every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<RawGlobal>,
    /// Active checks of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
    /// The service marked unhealthy by its answers: failures in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<RawOutlierDetection>,
    /// How often the service's host name is resolved again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<String>,
    /// The gRPC statuses from the service that fail the availability SLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_failures: Option<Vec<Count>>,
    /// Caps on what the service is given at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_after: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_after: Option<Count>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Count>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// One Redis URL, or a list of them: the seed nodes of a Redis Cluster.
    pub redis: Urls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
}

/// One URL or a list of them, as written; one is written back as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls(pub Vec<String>);

impl Serialize for Urls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0[..] {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> serde::de::Visitor<'de> for OneOrMany {
            type Value = Urls;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Redis URL, or a list of them (a Redis Cluster's nodes)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Urls, E> {
                Ok(Urls(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Urls, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(Urls(urls))
            }
        }
        deserializer.deserialize_any(OneOrMany)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// `http://` URL that SLA and config events are POSTed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<RawToken>,
    /// Where pushed config and the audit log are kept (default `/var/lib/sluice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// A literal token: allowed for local use, warned about, never echoed back.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
}

/// Server-wide protections. Every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time allowed for a request head (and for the first bytes of a connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    /// Largest request head, in bytes (431 beyond it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<Count>,
    /// Longest request target, in bytes (414 beyond it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uri_bytes: Option<Count>,
    /// Client connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Count>,
    /// The longest wait for the next bytes of a request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_read_timeout: Option<String>,
    /// How long a kept-alive connection may wait with no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// How long a response write may wait on a client that does not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<String>,
    /// How long a client connection may live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<String>,
    /// Timeout of routes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// After SIGTERM, how long sluice serves on while `/readyz` answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_delay: Option<String>,
    /// How long a binary upgrade's new process has to be serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub rate: Count,
    pub per: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Most keys tracked at once (default 100000); see docs/quotas.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<Count>,
    /// `refusals` (default): `RateLimit` fields on 429s only; `always`: on every response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// `local` (default): this replica counts alone; `global`: every replica, on Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    pub max: Count,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: RawMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<RawQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<RawConcurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<RawSla>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RawRetries>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSla {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<RawLatencySla>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Fewest events in a burn-rate window for it to raise a breach (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_events: Option<Count>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatencySla {
    pub threshold: String,
    pub objective: String,
}
