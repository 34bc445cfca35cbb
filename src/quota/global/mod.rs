//! Global quotas: quotas shared by every replica of the service, on Redis.
//!
//! [`lease`] is the engine of a global rate quota: a replica spends a shared GCRA state in
//! leased batches, so that Redis is off the per-request path. [`store`] is that store, in
//! Redis or a Redis Cluster: the scripts that change the shared state, held to the engine's
//! arithmetic by a test against a real redis-server. [`slots`] are the global concurrency
//! quota's slots, leased so that a dead replica's are freed; [`replicas`] counts the
//! replicas by their heartbeats; [`degraded`] is the circuit and the `on_error` policy for a
//! Redis that is slow or gone. [`shared`] holds what every global quota of a replica shares
//! (the store, the circuit, the replica count); [`rate`] and [`concurrency`] are one global
//! quota each, as the request path asks them.

pub mod concurrency;
pub mod degraded;
pub mod lease;
pub mod rate;
pub mod replicas;
pub mod shared;
pub mod slots;
pub mod store;

pub use concurrency::{Acquired, GlobalConcurrency, Slot};
pub use degraded::OnError;
pub use rate::{GlobalRate, Outcome};
pub use shared::{GlobalMetrics, GlobalSettings, Shared};
