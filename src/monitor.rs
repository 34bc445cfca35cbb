//! The SLA monitor: once a second, moves every route's recorded requests into its SLA
//! windows, publishes the figures as metrics, and turns breach changes into events; every
//! [`checkpoint::PERIOD`] it writes the windows and the local rate quotas' buckets to the
//! state directory, so that a restart starts from them ([`restore`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::overlay::write_atomically;
use crate::events::{Event, Events};
use crate::quota::{checkpoint as quotas, RateLimit};
use crate::sla::checkpoint::{self, Checkpoint};
use crate::sla::Alert;
use crate::snapshot::{Live, Snapshot};

pub const TICK: Duration = Duration::from_secs(1);

/// Runs until the task is dropped; with `state_dir`, checkpoints the SLA windows there.
pub async fn run(live: Arc<Live>, events: Events, state_dir: Option<PathBuf>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = tokio::time::Instant::now();
    loop {
        interval.tick().await;
        tick(&live, &events);
        let Some(dir) = &state_dir else { continue };
        if last_checkpoint.elapsed() >= checkpoint::PERIOD {
            last_checkpoint = tokio::time::Instant::now();
            let (live, dir) = (live.clone(), dir.clone());
            let written = tokio::task::spawn_blocking(move || save(&live, &dir)).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(error = %e, "could not checkpoint the SLA windows and rate quotas");
            }
        }
    }
}

/// The state of the engines that outlives a process: every route's SLA windows and every
/// local rate quota's buckets, as plain data. Written to the state directory (for a
/// restart) and handed to the new process of an upgrade ([`crate::lifecycle`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub sla: Checkpoint,
    pub quota: quotas::Checkpoint,
}

impl Saved {
    /// The live state now (the SLA windows as of the last [`tick`]).
    pub fn of(live: &Live) -> Self {
        let (now, snapshot) = (live.clock(), live.load());
        Self {
            sla: Checkpoint::of(now, snapshot.routes.iter().map(|r| (&*r.name, &r.sla))),
            quota: quotas::Checkpoint::of(now, local_rates(&snapshot)),
        }
    }

    /// Gives the live routes' SLIs these windows, where their SLA is the same, and the
    /// local rate quotas their buckets, where the limiter is the same; returns how many SLIs
    /// and quotas took theirs. `from` says where the state came from, for the log.
    pub fn restore(&self, live: &Live, from: &str) -> (usize, usize) {
        let (now, snapshot) = (live.clock(), live.load());
        let slis = self.sla.restore(now, snapshot.routes.iter().map(|r| (&*r.name, &r.sla)));
        let rates = self.quota.restore(now, local_rates(&snapshot));
        let age = |saved_ns| now.saturating_sub(Duration::from_nanos(saved_ns)).as_millis() as u64;
        tracing::info!(slis, age_ms = age(self.sla.saved_ns), "SLA windows restored from {from}");
        tracing::info!(quotas = rates, age_ms = age(self.quota.saved_ns), "rate quotas restored from {from}");
        (slis, rates)
    }
}

/// Writes every route's SLA windows and every local rate quota's buckets to `dir` (each a
/// temp file, fsync, rename). A process that handed its state to a new one writes nothing:
/// the new one's is newer.
pub fn save(live: &Live, dir: &Path) -> std::io::Result<()> {
    if live.handed_over() {
        return Ok(());
    }
    let saved = Saved::of(live);
    write_atomically(dir, checkpoint::FILE, &serde_json::to_vec(&saved.sla).map_err(std::io::Error::other)?)?;
    write_atomically(dir, quotas::FILE, &serde_json::to_vec(&saved.quota).map_err(std::io::Error::other)?)
}

/// Restores the state checkpointed in `dir` ([`Saved::restore`]), what of it there is.
pub fn restore(live: &Live, dir: &Path) -> (usize, usize) {
    let sla = read(dir, checkpoint::FILE, "SLA windows");
    let quota = read(dir, quotas::FILE, "rate quotas");
    if sla.is_none() && quota.is_none() {
        return (0, 0);
    }
    Saved { sla: sla.unwrap_or_default(), quota: quota.unwrap_or_default() }.restore(live, "the checkpoint")
}

/// The checkpoint `file` in `dir`, if there is a readable one; `what` it holds, for the log.
fn read<T: serde::de::DeserializeOwned>(dir: &Path, file: &str, what: &str) -> Option<T> {
    let bytes = match std::fs::read(dir.join(file)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the checkpoint of the {what}: they start empty");
            return None;
        }
    };
    serde_json::from_slice(&bytes)
        .inspect_err(|e| tracing::warn!(error = %e, "the checkpoint of the {what} is unreadable: they start empty"))
        .ok()
}

/// The local rate quotas in force, by checkpoint scope: `service`, `route NAME`.
fn local_rates(snapshot: &Snapshot) -> impl Iterator<Item = (String, &RateLimit)> {
    let service = snapshot.service.rate.iter().map(|q| ("service".to_string(), &*q.limit));
    let routes =
        snapshot.routes.iter().filter_map(|r| r.quotas.rate.as_ref().map(|q| (format!("route {}", r.name), &*q.limit)));
    service.chain(routes)
}

/// One tick over the live snapshot's SLIs, publishing the figures it computed.
pub fn tick(live: &Live, events: &Events) {
    let now = live.clock();
    let snapshot = live.load();
    for route in &snapshot.routes {
        for sli in route.sla.slis() {
            let (report, alert) = sli.tick(now);
            live.metrics.sla(&route.name, &report);
            let Some(alert) = alert else { continue };
            let event = Event::sla(&snapshot.config.service, &route.name, &report, alert);
            match alert {
                Alert::Breached(_) => tracing::warn!(event = %event.to_json(), "sla_breached"),
                Alert::Recovered => tracing::info!(event = %event.to_json(), "sla_recovered"),
            }
            events.send(event);
        }
    }
}

/// Sets the SLA gauges from the windows as they are now, between ticks (at a scrape).
pub fn publish(live: &Live) {
    let now = live.clock();
    let snapshot = live.load();
    for route in &snapshot.routes {
        for sli in route.sla.slis() {
            live.metrics.sla(&route.name, &sli.report(now));
        }
    }
}
