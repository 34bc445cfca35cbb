//! Step 6 of the request path: the request to the service, and the route's `retries`
//! (decided by [`crate::upstream::retry`]). With none, this is one call to the pool.

use std::io;

use http::Method;
use tokio::time::Instant;

use super::conn::{self, Upload};
use super::h1::Head;
use super::pool::{Lease, SendError};
use super::Proxy;
use crate::metrics::RetryResult;
use crate::snapshot::{RouteState, Snapshot};
use crate::upstream::retry::{self, Failure, Repeatable, Verdict};

/// What [`Proxy::send`] needs of the request, besides its head and body.
pub struct Send<'a> {
    pub snapshot: &'a Snapshot,
    pub route: &'a RouteState,
    pub method: &'a Method,
    pub upgrade: bool,
    /// The route's timeout, from the request's start: it bounds every try together.
    pub deadline: Instant,
}

impl Proxy {
    /// Sends the request to the service and reads its answer's head, trying again as the
    /// route's `retries` allow. Each try's outcome is reported to the service's health.
    pub(super) async fn send(
        &self,
        to: Send<'_>,
        write_head: impl Fn(&mut Vec<u8>),
        mut upload: Option<Box<Upload>>,
    ) -> Result<(Head, Lease), SendError> {
        let Send { snapshot, route, method, upgrade, deadline } = to;
        let service = &snapshot.config.upstream;
        let Some(retries) = route.retries.as_deref() else {
            return self.pool.send(service, method, &write_head, upload, upgrade, deadline).await;
        };
        retries.started();
        let has_body = upload.is_some();
        let mut tried = 0;
        loop {
            tried += 1;
            let try_deadline = match retries.policy.per_try_timeout {
                Some(per_try) => deadline.min(Instant::now() + per_try),
                None => deadline,
            };
            let sent = self.pool.send(service, method, &write_head, upload.take(), upgrade, try_deadline).await;
            let failure = match &sent {
                Ok((head, _)) if retries.policy.on.statuses.contains(&head.status.as_u16()) => {
                    Failure::Status(head.status.as_u16())
                }
                Ok(_) => {
                    if tried > 1 {
                        route.metrics.retry(RetryResult::Succeeded);
                    }
                    return sent;
                }
                Err(e) if e.connect => Failure::Connect,
                // The client's fault, or the route's timeout: no try can mend those.
                Err(e) if conn::client_fault(&e.error).is_some() => return sent,
                Err(e) if e.error.kind() == io::ErrorKind::TimedOut && try_deadline == deadline => return sent,
                // The connection closed, or this try passed `per_try_timeout`, before an answer.
                Err(_) => Failure::Reset,
            };
            let wait = retry::backoff(tried, fastrand::f64());
            if upgrade || Instant::now() + wait >= deadline {
                return sent; // a tunnel is not tried again, nor a try that could not end in time
            }
            let body_at_hand = !has_body || sent.as_ref().err().is_some_and(|e| e.upload.is_some());
            let request = Repeatable { idempotent: conn::is_idempotent(method), body_at_hand };
            let result = match retries.decide(failure, tried, request) {
                Verdict::Retry => RetryResult::Retried,
                Verdict::NotListed => return sent,
                Verdict::AttemptsSpent => RetryResult::AttemptsExhausted,
                Verdict::BudgetSpent => RetryResult::BudgetExhausted,
                Verdict::Unsafe => RetryResult::Unsafe,
            };
            route.metrics.retry(result);
            if result != RetryResult::Retried {
                return sent;
            }
            if !matches!(failure, Failure::Status(status) if status < 500) {
                // This try failed at the service: its health hears of it as of any request.
                self.live.health.answered(true, snapshot.config.outlier_detection.as_ref(), self.live.clock());
            }
            upload = sent.err().and_then(|e| e.upload); // an answer to retry is dropped, its connection closed
                                                        // Boxed: the wait is rare, and its timer would otherwise be part of every request's future.
            Box::pin(tokio::time::sleep(wait)).await;
        }
    }
}
