//! Step 6 of the request path: the tries of the request to the service. [`Tries`] decides,
//! between tries, whether the route's `retries` send it again ([`crate::upstream::retry`]
//! decides each); the sending and the backoff's wait stay in `Proxy::serve`'s own loop, as
//! a future nested in the request's would cost each poll (285 instructions a request).

use std::io;

use http::Method;
use tokio::time::Instant;

use super::conn::{self, Upload};
use super::h1::Head;
use super::pool::{Lease, SendError};
use crate::metrics::RetryResult;
use crate::snapshot::{Live, RouteState, Snapshot};
use crate::upstream::retry::{self, Failure, Repeatable, Retries, Verdict};

pub type Sent = Result<(Head, Lease), SendError>;

/// What follows a try.
#[allow(clippy::large_enum_variant)] // `Done` is every request's: boxed, it would allocate for each
pub enum Next {
    /// Its result is the request's.
    Done(Sent),
    /// Send it again after `wait`, with its body (if it has one).
    Again { upload: Option<Box<Upload>>, wait: std::time::Duration },
}

/// The tries of one request.
pub struct Tries<'a> {
    retries: Option<&'a Retries>,
    tried: u32,
    has_body: bool,
    start: Instant,
    /// The route's timeout, from the request's start: it bounds every try together.
    deadline: Instant,
    /// The bound of the try under way.
    try_deadline: Instant,
}

impl<'a> Tries<'a> {
    #[inline]
    pub fn new(route: &'a RouteState, has_body: bool, start: Instant, deadline: Instant) -> Self {
        let retries = route.retries.as_deref();
        if let Some(retries) = retries {
            retries.started();
        }
        Self { retries, tried: 0, has_body, start, deadline, try_deadline: deadline }
    }

    /// The next try's bound: `per_try_timeout` from now (the first, from the request's
    /// start: no clock read on the healthy path), within the route's timeout.
    #[inline]
    pub fn start_try(&mut self) -> Instant {
        self.tried += 1;
        if let Some(per_try) = self.retries.and_then(|r| r.policy.per_try_timeout) {
            let from = if self.tried == 1 { self.start } else { Instant::now() };
            self.try_deadline = self.deadline.min(from + per_try);
        }
        self.try_deadline
    }

    /// What follows the try that gave `sent`. Counts the retries; reports a failed try
    /// that is retried to the service's health (the last, as any request's, is the
    /// caller's to report).
    #[inline]
    pub fn next(&self, sent: Sent, route: &RouteState, method: &Method, upgrade: bool, at: (&Live, &Snapshot)) -> Next {
        match self.retries {
            None => Next::Done(sent),
            Some(retries) => self.decide(retries, sent, route, method, upgrade, at),
        }
    }

    fn decide(
        &self,
        retries: &Retries,
        sent: Sent,
        route: &RouteState,
        method: &Method,
        upgrade: bool,
        (live, snapshot): (&Live, &Snapshot),
    ) -> Next {
        let failure = match &sent {
            Ok((head, _)) if retries.policy.on.statuses.contains(&head.status.as_u16()) => {
                Failure::Status(head.status.as_u16())
            }
            Ok(_) => {
                if self.tried > 1 {
                    route.metrics.retry(RetryResult::Succeeded);
                }
                return Next::Done(sent);
            }
            // The circuit breaker's refusal: the service was not asked, nor is it again.
            Err(e) if e.overflow => return Next::Done(sent),
            Err(e) if e.connect => Failure::Connect,
            // The client's fault, or the route's timeout: no try can mend those.
            Err(e) if conn::client_fault(&e.error).is_some() => return Next::Done(sent),
            Err(e) if e.error.kind() == io::ErrorKind::TimedOut && self.try_deadline == self.deadline => {
                return Next::Done(sent);
            }
            // The connection closed, or this try passed `per_try_timeout`, before an answer.
            Err(_) => Failure::Reset,
        };
        let wait = retry::backoff(self.tried, fastrand::f64());
        if upgrade || Instant::now() + wait >= self.deadline {
            return Next::Done(sent); // a tunnel is not tried again, nor a try that could not end in time
        }
        let body_at_hand = !self.has_body || sent.as_ref().err().is_some_and(|e| e.upload.is_some());
        let request = Repeatable { idempotent: conn::is_idempotent(method), body_at_hand };
        let result = match retries.decide(failure, self.tried, request) {
            Verdict::Retry => RetryResult::Retried,
            Verdict::NotListed => return Next::Done(sent),
            Verdict::AttemptsSpent => RetryResult::AttemptsExhausted,
            Verdict::BudgetSpent => RetryResult::BudgetExhausted,
            Verdict::Unsafe => RetryResult::Unsafe,
        };
        route.metrics.retry(result);
        if result != RetryResult::Retried {
            return Next::Done(sent);
        }
        if !matches!(failure, Failure::Status(status) if status < 500) {
            // This try failed at the service: its health hears of it as of any request.
            live.health.answered(true, snapshot.config.outlier_detection.as_ref(), || live.clock());
        }
        // An answer to retry is dropped, its connection closed; a body not sent comes back.
        Next::Again { upload: sent.err().and_then(|e| e.upload), wait }
    }
}
