//! Global quotas: quotas shared by every replica of the service (issue 18, in progress).
//!
//! [`lease`] is the engine: a replica spends a shared GCRA state in leased batches, so that
//! the shared store (Redis) is off the per-request path. The store and the request path's
//! use of it are not built yet: no config can ask for `scope: global` so far.

pub mod lease;
