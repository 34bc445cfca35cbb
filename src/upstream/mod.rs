//! The service's health as the request path asks it: [`health`] is the pure state machine
//! (active checks and failed requests in a row), [`probe`] its I/O (the checks, and the
//! log, events and gauge of each change).

pub mod health;
pub mod probe;
pub mod retry;

pub use health::{Cause, Change, Health, HealthCheck, OutlierDetection};
