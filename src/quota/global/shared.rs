//! What every global quota of this replica shares: the Redis of `global.redis`, the circuit
//! in front of it, the `on_error` policy, the replica count of the heartbeats, and the
//! changes of the circuit waiting to be reported. One per `global` section: a reload that
//! leaves the section as it was keeps it (and so every lease).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Notify;

use super::degraded::{Call, Change, Circuit, OnError};
use super::replicas::Replicas;
use super::store::{CallMetrics, Store, StoreError};

/// The `global` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalSettings {
    /// One URL: one Redis; several: the seed nodes of a Redis Cluster.
    pub redis: Vec<String>,
    /// The bound of every Redis call.
    pub timeout: Duration,
    pub on_error: OnError,
}

/// `global.timeout` when not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

/// The handles the global quotas report through.
#[derive(Clone)]
pub struct GlobalMetrics {
    pub calls: CallMetrics,
    /// `sluice_global_quota_degraded`: 1 while the policy decides.
    pub degraded: IntGauge,
}

pub struct Shared {
    pub settings: GlobalSettings,
    pub service: String,
    /// This replica's name in the heartbeats and the slots: host, process and start.
    pub replica: String,
    pub store: Store,
    replicas_set: Replicas,
    circuit: Mutex<Circuit>,
    /// The replicas counted at the last heartbeat (1 until one answers).
    replicas: AtomicU32,
    /// Numbers this replica's requests that hold a global slot.
    next_request: AtomicU64,
    /// Changes of the circuit not reported yet, and a wake-up for the reporter.
    changes: Mutex<Vec<Change>>,
    last_error: Mutex<Option<String>>,
    pub changed: Notify,
    degraded: IntGauge,
}

impl Shared {
    /// The shared state of `settings` for `service`. No I/O: Redis is reached by the first
    /// call. Fails only on a URL the config's validation would have refused.
    pub fn new(settings: GlobalSettings, service: &str, metrics: GlobalMetrics) -> Result<Arc<Self>, StoreError> {
        let urls: Vec<&str> = settings.redis.iter().map(String::as_str).collect();
        let store = Store::new(&urls, settings.timeout, Some(metrics.calls))?;
        // A new circuit, closed until a call fails.
        metrics.degraded.set(0);
        Ok(Arc::new(Self {
            replicas_set: Replicas::new(store.clone()),
            store,
            settings,
            service: service.to_string(),
            replica: replica_name(),
            circuit: Mutex::new(Circuit::default()),
            replicas: AtomicU32::new(1),
            next_request: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            changed: Notify::new(),
            degraded: metrics.degraded,
        }))
    }

    pub fn on_error(&self) -> OnError {
        self.settings.on_error
    }

    /// Whether a request at `now` calls Redis (see [`Circuit::call`]).
    pub fn call(&self, now: Duration) -> Call {
        lock(&self.circuit).call(now)
    }

    /// A call's outcome at `now` (its error, if it failed): a change of the circuit is
    /// counted at once and queued for the reporter, with the error that opened it.
    pub fn result(&self, now: Duration, error: Option<&StoreError>) {
        let Some(change) = lock(&self.circuit).result(now, error.is_none()) else { return };
        if let Some(e) = error {
            *lock(&self.last_error) = Some(e.to_string());
        }
        self.degraded.set(i64::from(matches!(change, Change::Degraded)));
        lock(&self.changes).push(change);
        self.changed.notify_one();
    }

    /// The changes not reported yet, oldest first.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut *lock(&self.changes))
    }

    /// The error of the call that opened the circuit last.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Whether the policy decides now.
    pub fn degraded(&self) -> bool {
        lock(&self.circuit).degraded()
    }

    /// Since when (on the engines' clock) the policy decides, while it does.
    pub fn degraded_since(&self) -> Option<Duration> {
        lock(&self.circuit).since()
    }

    /// The replicas counted at the last heartbeat that was answered.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// A name for one request's slot, unique across the replicas.
    pub fn slot_member(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        super::slots::member(&self.replica, n)
    }

    /// Beats this replica's heart (through the circuit, as any call): the count it read
    /// is what `local_share` divides by from now.
    pub async fn beat(&self, now: Duration) {
        let beat = self.replicas_set.beat(&self.service, &self.replica).await;
        self.result(now, beat.as_ref().err());
        match beat {
            Ok(n) => self.replicas.store(n.max(1), Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "global quotas: heartbeat failed"),
        }
    }

    /// Takes this replica out of the count at once (a drain).
    pub async fn leave(&self) {
        if let Err(e) = self.replicas_set.leave(&self.service, &self.replica).await {
            tracing::debug!(error = %e, "global quotas: could not leave the replica set");
        }
    }
}

/// `HOST-PID-N`: the pod's name in Kubernetes, the process, and which `global` section of
/// it (a reload that changes the section makes a new one, and the old one leaves).
fn replica_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sluice".to_string());
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{:x}-{n}", host.trim(), std::process::id(), started.as_micros() & 0xff_ffff)
}

impl Drop for Shared {
    /// A `global` section replaced by a reload leaves the replica count at once, so the
    /// section that replaced it is not counted twice.
    fn drop(&mut self) {
        let (set, service, replica) = (self.replicas_set.clone(), self.service.clone(), self.replica.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = set.leave(&service, &replica).await;
            });
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
