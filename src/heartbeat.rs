//! The global quotas' background: this replica's heartbeat in Redis (the replica count that
//! `on_error: local_share` divides by), and the reports of Redis's health. When the circuit
//! in front of Redis opens or closes, that is logged, sent as an event
//! (`global_quota_degraded`, `global_quota_recovered`) and already counted
//! (`sluice_global_quota_degraded`). At a drain, the replica leaves the count at once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::events::{Event, Events};
use crate::quota::global::degraded::{Change, PROBE_EVERY};
use crate::quota::global::replicas::HEARTBEAT_EVERY;
use crate::quota::global::Shared;
use crate::snapshot::Live;

/// Beats every [`HEARTBEAT_EVERY`] ([`PROBE_EVERY`] while Redis is down) and reports changes
/// as they come, until aborted.
pub async fn run(live: Arc<Live>, events: Events) {
    let mut last_beat: Option<tokio::time::Instant> = None;
    let mut beating: Option<Arc<Shared>> = None;
    loop {
        let Some(shared) = live.load().global.clone() else {
            // No global quotas (yet): look again after a reload might have brought some.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if !beating.as_ref().is_some_and(|b| Arc::ptr_eq(b, &shared)) {
            // A new `global` section: counted (and its replica count read) at once.
            last_beat = None;
            beating = Some(shared.clone());
        }
        // While Redis is down the heartbeat is also the probe of a replica with no traffic,
        // so the circuit closes within a second of Redis answering either way.
        let every = if shared.degraded() { PROBE_EVERY } else { HEARTBEAT_EVERY };
        let now = tokio::time::Instant::now();
        let mut next_beat = last_beat.map_or(now, |last| last + every);
        if now >= next_beat {
            shared.beat(live.clock()).await;
            let beaten = tokio::time::Instant::now();
            (last_beat, next_beat) = (Some(beaten), beaten + every);
        }
        report(&shared, &events);
        // Woken by a change of the circuit (which may bring the next beat nearer); a reload
        // that replaced the section is seen at the next beat or within a second.
        let wait = next_beat.min(tokio::time::Instant::now() + Duration::from_secs(1));
        let _ = tokio::time::timeout_at(wait, shared.changed.notified()).await;
        report(&shared, &events);
    }
}

fn report(shared: &Shared, events: &Events) {
    let policy = shared.on_error().as_str();
    for change in shared.take_changes() {
        match change {
            Change::Degraded => {
                let error = shared.last_error().unwrap_or_default();
                let redis = shared.settings.redis.join(",");
                tracing::warn!(policy, %redis, %error, "global quotas: Redis is unavailable; on_error decides");
                let fields = json!({ "service": shared.service, "policy": policy, "error": error });
                events.send(Event::new("global_quota_degraded", fields));
            }
            Change::Recovered { down } => {
                let down = down.as_secs_f64();
                tracing::info!(down_seconds = down, "global quotas: Redis is back; the shared state decides again");
                events.send(Event::new(
                    "global_quota_recovered",
                    json!({ "service": shared.service, "policy": policy, "down_seconds": down }),
                ));
            }
        }
    }
}

/// Takes this replica out of the count (a drain), bounded by the call's timeout.
pub async fn leave(live: &Live) {
    if let Some(shared) = live.load().global.clone() {
        shared.leave().await;
    }
}
