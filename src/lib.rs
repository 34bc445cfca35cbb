//! sluice: a sidecar reverse proxy that enforces per-route quotas.
//!
//! Where things are:
//! - [`proxy`]: the request path, start at [`proxy::Proxy::handle`]; the listener in
//!   [`proxy::listener`], which hands HTTP/1.1 connections to `proxy::front`.
//! - [`route`]: matching a request to a route.
//! - [`quota`]: the rate (GCRA) and concurrency engines; no HTTP in there.
//!   [`quota::global`] shares them across replicas on Redis; [`heartbeat`] is its
//!   background (the replica count, Redis's health reported).
//! - [`config`]: YAML → validated [`config::Config`]; [`config::reload`] watches the file.
//! - [`snapshot`]: the live config with its quota, SLA and metric state, swapped
//!   atomically on reload.
//! - [`sla`]: SLIs over rolling windows, error budgets, burn rates, breach detection; no
//!   HTTP in there. [`monitor`] ticks it every second and raises [`events`].
//! - [`rules`]: `sluice rules`, the Prometheus rules that compute what [`sla`] computes.
//! - [`metrics`]: the Prometheus registry and the per-route handles the request path uses.
//! - [`control`]: the admin listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`server`]: binds the sockets, starts the tasks, drains on SIGTERM.
//! - [`demo`]: `sluice demo`, a built-in service with traffic.

pub mod config;
pub mod control;
pub mod demo;
pub mod events;
pub mod heartbeat;
pub mod lifecycle;
pub mod metrics;
pub mod monitor;
pub mod proxy;
pub mod quota;
pub mod route;
pub mod rules;
pub mod server;
pub mod sla;
pub mod snapshot;
pub mod upstream;
