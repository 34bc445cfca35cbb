//! Whether a try that failed is tried again (`retries` on a route): a pure decision over
//! what failed, how many tries went, whether trying again is safe, and the route's retry
//! budget. The sending, the backoff's sleep and the counting are the request path's
//! (`proxy::Proxy::serve`).
//!
//! The budget is tower's ([`TpsBudget`]): requests deposit, every retry withdraws, over a
//! 10 s window, so that retries stay within `budget` of the requests plus a floor of
//! [`FLOOR_PER_SECOND`]. Every [`DEPOSIT_EVERY`]th request deposits, for that many: a
//! deposit locks the budget and reads the clock, which per request cost 1.9 % of the
//! instructions of a request (BENCHMARKS.md, issue 22), and one counter per request does not. When the budget is spent, the failure goes back as it is: a
//! service that fails everything sees at most that much more traffic, never a multiple.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Retries a second every route may make whatever its traffic, so that a quiet route can
/// still retry a failure (tower's default floor).
pub const FLOOR_PER_SECOND: u32 = 10;
/// Requests a deposit stands for (see the module's doc).
pub const DEPOSIT_EVERY: u32 = 16;
/// The window over which the budget counts requests and retries.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// The first backoff's cap; each next one's doubles, up to [`MAX_BACKOFF`] (Envoy's 25 ms
/// and 250 ms). Each wait is a random fraction of its cap ("full jitter").
pub const BASE_BACKOFF: Duration = Duration::from_millis(25);
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// A route's `retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first one included.
    pub attempts: u32,
    pub on: RetryOn,
    /// Each try's bound, within the route's `timeout` (which bounds all tries together).
    pub per_try_timeout: Option<Duration>,
    /// Retries as a fraction of requests, over [`BUDGET_WINDOW`].
    pub budget: f64,
}

/// The failures `retries.on` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_error: bool,
    /// The connection closed (or a try passed `per_try_timeout`) before an answer's head.
    pub reset: bool,
    pub statuses: Vec<u16>,
}

/// How a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection to the service: nothing of the request left sluice.
    Connect,
    /// The request went (some of it at least) and no answer's head came back.
    Reset,
    /// The service answered with this status.
    Status(u16),
}

/// What a try that failed leads to. All but `Retry` return the failure as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    /// `on` does not name the failure: not counted.
    NotListed,
    /// Every attempt was spent.
    AttemptsSpent,
    /// Trying again could do what the client asked twice, or lacks its body.
    Unsafe,
    /// The retry budget is spent.
    BudgetSpent,
}

/// What of the request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeatable {
    /// The method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request has no body, or none of it was sent yet.
    pub body_at_hand: bool,
}

/// A route's policy and its budget.
pub struct Retries {
    pub policy: RetryPolicy,
    budget: TpsBudget,
    /// Requests started, of which every [`DEPOSIT_EVERY`]th deposits.
    started: AtomicU32,
}

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retries").field("policy", &self.policy).field("budget", &self.budget).finish()
    }
}

impl Retries {
    pub fn new(policy: RetryPolicy) -> Self {
        // A deposit is worth DEPOSIT_EVERY requests: the share of a retry each earns, times as many.
        let percent = policy.budget as f32 * DEPOSIT_EVERY as f32;
        let budget = TpsBudget::new(BUDGET_WINDOW, FLOOR_PER_SECOND, percent);
        Self { policy, budget, started: AtomicU32::new(0) }
    }

    /// A request starts: it earns the budget its share of a retry.
    #[inline]
    pub fn started(&self) {
        if self.started.fetch_add(1, Relaxed).is_multiple_of(DEPOSIT_EVERY) {
            self.budget.deposit();
        }
    }

    /// Whether a request whose try number `tried` (1 for the first) failed with `failure`
    /// is tried again. The budget is drawn on only for a retry that will be made.
    pub fn decide(&self, failure: Failure, tried: u32, request: Repeatable) -> Verdict {
        let on = &self.policy.on;
        let listed = match failure {
            Failure::Connect => on.connect_error,
            Failure::Reset => on.reset,
            Failure::Status(status) => on.statuses.contains(&status),
        };
        if !listed {
            return Verdict::NotListed;
        }
        if tried >= self.policy.attempts {
            return Verdict::AttemptsSpent;
        }
        // A connect error sent nothing: even a POST can go again, if its body is at hand.
        let safe = request.body_at_hand && (request.idempotent || failure == Failure::Connect);
        if !safe {
            return Verdict::Unsafe;
        }
        if !self.budget.withdraw() {
            return Verdict::BudgetSpent;
        }
        Verdict::Retry
    }
}

/// The wait before retry number `retry` (1 for the first), given `unit`, a random number in
/// `[0, 1)`: up to 25 ms before the first, doubling to at most 250 ms.
pub fn backoff(retry: u32, unit: f64) -> Duration {
    let cap = BASE_BACKOFF.saturating_mul(1 << retry.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, budget: f64) -> RetryPolicy {
        RetryPolicy {
            attempts,
            on: RetryOn { connect_error: true, reset: true, statuses: vec![503] },
            per_try_timeout: None,
            budget,
        }
    }

    const GET: Repeatable = Repeatable { idempotent: true, body_at_hand: true };

    #[test]
    fn only_the_failures_on_names_are_retried_and_only_as_often_as_attempts_allow() {
        let retries = Retries::new(policy(3, 0.2));
        assert_eq!(retries.decide(Failure::Status(502), 1, GET), Verdict::NotListed);
        assert_eq!(retries.decide(Failure::Status(503), 1, GET), Verdict::Retry);
        assert_eq!(retries.decide(Failure::Reset, 2, GET), Verdict::Retry);
        assert_eq!(retries.decide(Failure::Connect, 3, GET), Verdict::AttemptsSpent);
        let no_resets =
            Retries::new(RetryPolicy { on: RetryOn { reset: false, ..policy(3, 0.2).on }, ..policy(3, 0.2) });
        assert_eq!(no_resets.decide(Failure::Reset, 1, GET), Verdict::NotListed);
    }

    #[test]
    fn a_request_that_could_act_twice_or_lacks_its_body_is_not_retried() {
        let retries = Retries::new(policy(3, 0.2));
        let post = Repeatable { idempotent: false, body_at_hand: true };
        let sent_put = Repeatable { idempotent: true, body_at_hand: false };
        // A POST is tried again only when nothing of it reached the service.
        assert_eq!(retries.decide(Failure::Connect, 1, post), Verdict::Retry);
        assert_eq!(retries.decide(Failure::Reset, 1, post), Verdict::Unsafe);
        assert_eq!(retries.decide(Failure::Status(503), 1, post), Verdict::Unsafe);
        // A body that went is gone: nothing to send again.
        assert_eq!(retries.decide(Failure::Reset, 1, sent_put), Verdict::Unsafe);
    }

    #[test]
    fn the_budget_holds_retries_to_its_share_of_requests_plus_the_floor() {
        let retries = Retries::new(policy(5, 0.2));
        for _ in 0..1600 {
            retries.started();
        }
        let made = (0..1000).filter(|_| retries.decide(Failure::Status(503), 1, GET) == Verdict::Retry).count();
        // 20 % of 1,600, plus the floor: 10 a second over the 10 s window.
        let floor = (FLOOR_PER_SECOND * BUDGET_WINDOW.as_secs() as u32) as usize;
        assert_eq!(made, 320 + floor, "made {made} retries");
        assert_eq!(retries.decide(Failure::Status(503), 1, GET), Verdict::BudgetSpent);
        // Requests earn it back, a deposit every 16 of them: 16 make 3.2 retries.
        for _ in 0..16 {
            retries.started();
        }
        assert_eq!(retries.decide(Failure::Status(503), 1, GET), Verdict::Retry);
        assert_eq!(retries.decide(Failure::Status(503), 1, GET), Verdict::Retry);
    }

    #[test]
    fn backoff_grows_from_25ms_to_250ms_and_is_jittered() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(4, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(5, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(40, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(25));
        assert_eq!(backoff(3, 0.0), Duration::ZERO);
    }
}
