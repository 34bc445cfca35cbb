//! The service's health as the request path asks it: [`health`] is the pure state machine
//! (active checks and failed requests in a row), [`probe`] its I/O (the checks, and the
//! log, events and gauge of each change); [`retry`] decides each retry, and [`breaker`]
//! caps what the service is given at once; [`resolve`] keeps the service's addresses.

pub mod breaker;
pub mod health;
pub mod probe;
pub mod resolve;
pub mod retry;

pub use breaker::{Breaker, CircuitBreaker};
pub use health::{Cause, Change, Health, HealthCheck, OutlierDetection};
