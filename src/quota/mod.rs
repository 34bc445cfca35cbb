//! Quota engines: a rate quota (GCRA) and a concurrency quota (exact in-flight count),
//! each for a whole route or per key. They know nothing of HTTP: the proxy hands them a
//! request's key as bytes and the time, and turns a decision into a response. Time is a
//! parameter, so tests drive it exactly.

pub mod checkpoint;
mod concurrency;
pub mod global;
mod key;
mod offenders;
mod rate;

pub use concurrency::{Concurrency, ConcurrencySpec, Permit};
pub use key::{Key, KeySpec, INLINE};
pub use offenders::{Offender, Offenders, OffendersState};
pub use rate::{Advertise, Left, Mode, RateDecision, RateLimit, RateSpec, RateState, Scope, DEFAULT_MAX_KEYS};
