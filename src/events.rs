//! Events (`sla_breached`, `sla_recovered`, and the config events of the control API):
//! broadcast to any number of in-process listeners (the event stream) and, when
//! `events.webhook` is set, POSTed to it through a bounded queue. Sending never waits:
//! a full queue drops the event and counts it, so no request is ever slowed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::config::ConfigErrors;
use crate::sla::{Alert, Report, Window};

/// One event, as JSON: `{"type": ..., "time": ..., ...fields}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event(Value);

impl Event {
    pub fn new(kind: &str, mut fields: Value) -> Self {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        if let Value::Object(map) = &mut fields {
            map.insert("type".into(), kind.into());
            map.insert("time".into(), time.into());
        }
        Self(fields)
    }

    pub fn sla(service: &str, route: &str, report: &Report, alert: Alert) -> Self {
        let fields = || {
            let burn: serde_json::Map<String, Value> =
                Window::ALL.iter().zip(report.burn).map(|(w, b)| (w.as_str().to_string(), json!(b))).collect();
            json!({
                "service": service,
                "route": route,
                "sli": report.kind.as_str(),
                "objective": report.objective,
                "compliance": report.compliance,
                "budget_remaining": report.budget_remaining,
                "burn_rates": burn,
            })
        };
        match alert {
            Alert::Breached(severity) => {
                let mut f = fields();
                f["severity"] = severity.as_str().into();
                Self::new("sla_breached", f)
            }
            Alert::Recovered => Self::new("sla_recovered", fields()),
        }
    }

    /// A config became live: from the file (`trigger` file or sighup) or the API (with the
    /// token's name that pushed it).
    pub fn config_applied(service: &str, version: u64, trigger: &str, principal: Option<&str>) -> Self {
        let mut fields = json!({ "service": service, "version": version, "trigger": trigger });
        if let Some(principal) = principal {
            fields["principal"] = principal.into();
        }
        Self::new("config_applied", fields)
    }

    /// A config was refused, with every error as `line:column: path: message`.
    pub fn config_rejected(service: &str, trigger: &str, principal: Option<&str>, errors: &ConfigErrors) -> Self {
        let errors: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
        let mut fields = json!({ "service": service, "trigger": trigger, "errors": errors });
        if let Some(principal) = principal {
            fields["principal"] = principal.into();
        }
        Self::new("config_rejected", fields)
    }

    /// The event with one more field.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        if let Value::Object(map) = &mut self.0 {
            map.insert(key.into(), value);
        }
        self
    }

    pub fn kind(&self) -> &str {
        self.0["type"].as_str().unwrap_or("")
    }

    pub fn json(&self) -> &Value {
        &self.0
    }

    pub fn to_json(&self) -> String {
        self.0.to_string()
    }
}

/// Where events go. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    bus: broadcast::Sender<Arc<Event>>,
    webhook: Option<mpsc::Sender<Arc<Event>>>,
    /// The last [`RECENT`] events, for a viewer that opens now (the dashboard).
    recent: Arc<Mutex<VecDeque<Arc<Event>>>>,
    pub dropped: Arc<AtomicU64>,
}

/// Events waiting for the webhook; more are dropped.
pub const WEBHOOK_QUEUE: usize = 1024;

/// Events kept for [`Events::recent`].
pub const RECENT: usize = 100;

impl Events {
    /// Without a webhook: the in-process stream only.
    pub fn new() -> Self {
        Self {
            bus: broadcast::channel(256).0,
            webhook: None,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
            dropped: Arc::default(),
        }
    }

    /// The last [`RECENT`] events, oldest first.
    pub fn recent(&self) -> Vec<Arc<Event>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// With a webhook, and the task that delivers to it (run it with `tokio::spawn`).
    pub fn with_webhook(url: Uri, retry: Retry) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
        let events = Self { webhook: Some(tx), ..Self::new() };
        (events, deliver(url, rx, retry))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bus.subscribe()
    }

    pub fn send(&self, event: Event) {
        let event = Arc::new(event);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.bus.send(event.clone()); // no listener is fine
        if let Some(webhook) = &self.webhook {
            if webhook.try_send(event).is_err() {
                self.dropped.fetch_add(1, Relaxed);
                tracing::warn!("webhook queue full: event dropped");
            }
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// Retry with exponential backoff: `attempts` in all, waiting `first`, then twice that…
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first: Duration,
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 6, first: Duration::from_millis(500), timeout: Duration::from_secs(5) }
    }
}

/// POSTs each event as JSON, in order, retrying 5xx answers and failures to connect.
async fn deliver(url: Uri, mut queue: mpsc::Receiver<Arc<Event>>, retry: Retry) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while let Some(event) = queue.recv().await {
        let body = Bytes::from(event.to_json());
        let mut wait = retry.first;
        for attempt in 1..=retry.attempts {
            let request = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .expect("a valid request");
            let outcome = tokio::time::timeout(retry.timeout, client.request(request)).await;
            let error = match outcome {
                Ok(Ok(response)) if !response.status().is_server_error() => {
                    if !response.status().is_success() {
                        tracing::warn!(status = %response.status(), kind = event.kind(), "webhook refused the event");
                    }
                    break;
                }
                Ok(Ok(response)) => format!("status {}", response.status()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            if attempt == retry.attempts {
                tracing::warn!(error, kind = event.kind(), "webhook delivery failed: event dropped");
            } else {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_webhook_queue_drops_and_counts_without_waiting() {
        // Nothing delivers: the queue fills, and every event after that is dropped at once.
        let (events, _deliver) = Events::with_webhook("http://127.0.0.1:1/".parse().unwrap(), Retry::default());
        let mut stream = events.subscribe();
        let start = std::time::Instant::now();
        for _ in 0..WEBHOOK_QUEUE + 10 {
            events.send(Event::new("config_applied", json!({})));
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(events.dropped.load(Relaxed), 10);
        // A listener that did not keep up loses the oldest events; the sender never waited.
        assert!(matches!(stream.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
        assert_eq!(stream.try_recv().unwrap().kind(), "config_applied");
    }

    #[test]
    fn the_last_hundred_events_are_kept_oldest_first() {
        let events = Events::new();
        for i in 0..RECENT + 5 {
            events.send(Event::new("quota_updated", json!({ "n": i })));
        }
        let recent = events.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!((recent[0].json()["n"].as_u64(), recent[RECENT - 1].json()["n"].as_u64()), (Some(5), Some(104)));
    }
}
