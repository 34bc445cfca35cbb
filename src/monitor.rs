//! The SLA monitor: once a second, moves every route's recorded requests into its SLA
//! windows, publishes the figures as metrics, and turns breach changes into events.

use std::sync::Arc;
use std::time::Duration;

use crate::events::{Event, Events};
use crate::sla::Alert;
use crate::snapshot::Live;

pub const TICK: Duration = Duration::from_secs(1);

/// Runs until the task is dropped.
pub async fn run(live: Arc<Live>, events: Events) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        tick(&live, &events);
    }
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
