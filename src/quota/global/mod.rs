//! Global quotas: quotas shared by every replica of the service (issue 18, in progress).
//!
//! [`lease`] is the engine of a global rate quota: a replica spends a shared GCRA state in
//! leased batches, so that the shared store is off the per-request path. [`store`] is that
//! store, in Redis or a Redis Cluster: the scripts that change the shared state, held to the
//! engine's arithmetic by a test against a real redis-server. [`slots`] are the global concurrency
//! quota's slots, leased so that a dead replica's are freed; [`replicas`] counts the
//! replicas by their heartbeats; [`degraded`] is the circuit and the `on_error` policy for a
//! Redis that is slow or gone; [`rate`] joins them for one global rate quota on one
//! replica. The request path's use of them is not built yet: no config can ask for
//! `scope: global` so far.

pub mod degraded;
pub mod lease;
pub mod rate;
pub mod replicas;
pub mod slots;
pub mod store;
