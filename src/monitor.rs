//! The SLA monitor: once a second, moves every route's recorded requests into its SLA
//! windows, publishes the figures as metrics, and turns breach changes into events; every
//! [`checkpoint::PERIOD`] it writes the windows to the state directory, so that a restart
//! starts from them ([`restore`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::overlay::write_atomically;
use crate::events::{Event, Events};
use crate::sla::checkpoint::{self, Checkpoint};
use crate::sla::Alert;
use crate::snapshot::Live;

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
                tracing::warn!(error = %e, "could not checkpoint the SLA windows");
            }
        }
    }
}

/// Writes every route's SLA windows to `dir` (a temp file, fsync, rename).
pub fn save(live: &Live, dir: &Path) -> std::io::Result<()> {
    let snapshot = live.load();
    let saved = Checkpoint::of(live.clock(), snapshot.routes.iter().map(|r| (&*r.name, &r.sla)));
    let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
    write_atomically(dir, checkpoint::FILE, &bytes)
}

/// Gives the live routes' SLIs the windows checkpointed in `dir`, where their SLA is the
/// same; returns how many SLIs took theirs.
pub fn restore(live: &Live, dir: &Path) -> usize {
    let bytes = match std::fs::read(dir.join(checkpoint::FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the SLA checkpoint: the windows start empty");
            return 0;
        }
    };
    let saved: Checkpoint = match serde_json::from_slice(&bytes) {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "the SLA checkpoint is unreadable: the windows start empty");
            return 0;
        }
    };
    let snapshot = live.load();
    let restored = saved.restore(live.clock(), snapshot.routes.iter().map(|r| (&*r.name, &r.sla)));
    let age = live.clock().saturating_sub(Duration::from_nanos(saved.saved_ns));
    tracing::info!(restored, age_seconds = age.as_secs(), "SLA windows restored from the checkpoint");
    restored
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
