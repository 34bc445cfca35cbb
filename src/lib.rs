//! sluice: a sidecar reverse proxy that enforces per-route quotas.
//!
//! Where things are:
//! - [`proxy`]: the request path, start at [`proxy::Proxy::handle`]; the listener in
//!   [`proxy::listener`].
//! - [`route`]: matching a request to a route.
//! - [`quota`]: the rate (GCRA) and concurrency engines; no HTTP in there.
//! - [`config`]: YAML → validated [`config::Config`]; [`config::reload`] watches the file.
//! - [`snapshot`]: the live config with its quota state, swapped atomically on reload.
//! - [`server`]: binds the sockets, starts the tasks, drains on SIGTERM.
//! - [`demo`]: `sluice demo`, a built-in service with traffic.

pub mod config;
pub mod demo;
pub mod proxy;
pub mod quota;
pub mod route;
pub mod server;
pub mod sla;
pub mod snapshot;
