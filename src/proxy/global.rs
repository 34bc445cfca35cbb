//! The global quota step of the request path: the route's global quotas, then the
//! service's, shared with every replica through Redis. A rate quota spends this replica's
//! lease, so most requests make no call; a concurrency quota takes its slot in Redis. Rate
//! quotas come first, so a refused request never holds a slot. While Redis cannot decide,
//! `global.on_error` does (see [`crate::quota::global::degraded`]).

use std::net::IpAddr;
use std::time::Duration;

use super::admit::{key_of, Admitted};
use super::respond::{Refusal, RefusalKind};
use super::RequestFields;
use crate::quota::global::{Acquired, Outcome};
use crate::quota::Mode;
use crate::snapshot::{Quotas, RouteState, Snapshot};

/// Where [`admit_leased`] stopped: every global quota decided, or the first that needs
/// Redis (its scope's index) and what was admitted so far, for [`admit`] to go on from.
pub enum Leased {
    Decided(Admitted),
    Pending(Admitted, usize),
}

/// Decides the global rate quotas of a request from their leases alone, at once: most
/// requests stop here, with no wait and nothing boxed. A global concurrency quota, or a
/// lease that is empty, needs Redis: then [`admit`] goes on.
pub fn admit_leased(
    snapshot: &Snapshot,
    route: &RouteState,
    fields: &RequestFields,
    client_ip: IpAddr,
    now: Duration,
    mut admitted: Admitted,
) -> Result<Leased, Refusal> {
    let scopes = [&route.quotas, &snapshot.service];
    for (i, quotas) in scopes.into_iter().enumerate() {
        let Some((rate, mode)) = quotas.global.as_ref().and_then(|g| g.rate.as_ref()) else { continue };
        match rate.check_leased(key_of(&rate.spec().key, fields, client_ip).as_bytes(), now) {
            Some(outcome) => admitted.shadow_limited |= rate_outcome(quotas, outcome, *mode, &mut admitted.degraded)?,
            None => return Ok(Leased::Pending(admitted, i)),
        }
    }
    if scopes.iter().any(|q| q.global.as_ref().is_some_and(|g| g.concurrency.is_some())) {
        // every rate decided; the slots are Redis's
        return Ok(Leased::Pending(admitted, scopes.len()));
    }
    Ok(Leased::Decided(admitted))
}

/// Decides the global quotas of a request from scope `from` on (0 the route's, 1 the
/// service's), as [`admit_leased`] left them, asking Redis where it must; adds what the
/// request holds (slots, a local share's permits) to what was admitted.
pub async fn admit(
    snapshot: &Snapshot,
    route: &RouteState,
    fields: &RequestFields,
    client_ip: IpAddr,
    now: Duration,
    leased: Leased,
) -> Result<Admitted, Refusal> {
    let (mut admitted, from) = match leased {
        Leased::Decided(admitted) => return Ok(admitted),
        Leased::Pending(admitted, from) => (admitted, from),
    };
    let scopes = [&route.quotas, &snapshot.service];
    for quotas in scopes.into_iter().skip(from) {
        let Some((rate, mode)) = quotas.global.as_ref().and_then(|g| g.rate.as_ref()) else { continue };
        let outcome = rate.check(key_of(&rate.spec().key, fields, client_ip).as_bytes(), now).await;
        admitted.shadow_limited |= rate_outcome(quotas, outcome, *mode, &mut admitted.degraded)?;
    }
    for (i, quotas) in scopes.into_iter().enumerate() {
        let Some(concurrency) = quotas.global.as_ref().and_then(|g| g.concurrency.as_ref()) else { continue };
        let max = concurrency.spec().max.get();
        match concurrency.acquire(key_of(&concurrency.spec().key, fields, client_ip).as_bytes(), now).await {
            Acquired::Held(slot) => admitted.slots.get_or_insert_with(Default::default)[i] = Some(slot),
            Acquired::Full | Acquired::PolicyFull => {
                return Err(refusal(quotas, RefusalKind::Concurrency { max }));
            }
            Acquired::PolicyAllowed(permit) => {
                admitted.degraded = true;
                admitted.permits[i] = permit;
            }
            Acquired::Unavailable { retry_after } => {
                return Err(refusal(quotas, RefusalKind::Unavailable { retry_after }));
            }
        }
    }
    Ok(admitted)
}

/// What a global rate quota's outcome makes of the request: `Ok(true)` when a shadow quota
/// would have refused it; `degraded` set when the policy let it through.
fn rate_outcome(quotas: &Quotas, outcome: Outcome, mode: Mode, degraded: &mut bool) -> Result<bool, Refusal> {
    let refused = |kind| if mode == Mode::Shadow { Ok(true) } else { Err(refusal(quotas, kind)) };
    let rate = quotas.global.as_ref().and_then(|g| g.rate.as_ref());
    let spec = rate.map(|(rate, _)| rate.spec()).expect("a rate outcome comes from a rate quota");
    match outcome {
        Outcome::Allowed => Ok(false),
        Outcome::PolicyAllowed => {
            *degraded = true;
            Ok(false)
        }
        Outcome::Limited { retry_after } | Outcome::PolicyLimited { retry_after } => {
            refused(RefusalKind::Rate { limit: spec.burst.get(), window: spec.refill_time(), retry_after })
        }
        Outcome::Unavailable { retry_after } => refused(RefusalKind::Unavailable { retry_after }),
    }
}

#[cold]
fn refusal(quotas: &Quotas, kind: RefusalKind) -> Refusal {
    Refusal { scope: quotas.scope.clone(), kind }
}
