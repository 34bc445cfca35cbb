//! Quota engines: a rate quota (GCRA, governor) and a concurrency quota (exact in-flight
//! count), each for a whole route or per key. They know nothing of HTTP: the proxy turns
//! a request into a [`Key`] and a decision into a response. Time comes from a governor
//! [`Clock`](governor::clock::Clock), so tests drive it by hand.

mod concurrency;
mod key;
mod rate;

pub use concurrency::{Concurrency, ConcurrencySpec, Permit};
pub use key::{Key, KeySpec};
pub use rate::{Mode, RateDecision, RateLimit, RateSpec, DEFAULT_MAX_KEYS};
