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

/// Decides the global quotas of a request that its local quotas admitted, adding what it
/// holds (slots, a local share's permits) to what they did.
pub async fn admit(
    snapshot: &Snapshot,
    route: &RouteState,
    fields: &RequestFields,
    client_ip: IpAddr,
    now: Duration,
    mut admitted: Admitted,
) -> Result<Admitted, Refusal> {
    let scopes = [&route.quotas, &snapshot.service];
    for quotas in scopes {
        let Some((rate, mode)) = quotas.global.as_ref().and_then(|g| g.rate.as_ref()) else { continue };
        let outcome = rate.check(key_of(&rate.spec().key, fields, client_ip).as_bytes(), now).await;
        let refused = |kind| if *mode == Mode::Shadow { Ok(true) } else { Err(refusal(quotas, kind)) };
        let spec = rate.spec();
        let over = |retry_after| RefusalKind::Rate { limit: spec.burst.get(), window: spec.refill_time(), retry_after };
        admitted.shadow_limited |= match outcome {
            Outcome::Allowed => false,
            Outcome::PolicyAllowed => {
                admitted.degraded = true;
                false
            }
            Outcome::Limited { retry_after } | Outcome::PolicyLimited { retry_after } => refused(over(retry_after))?,
            Outcome::Unavailable { retry_after } => refused(RefusalKind::Unavailable { retry_after })?,
        };
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

#[cold]
fn refusal(quotas: &Quotas, kind: RefusalKind) -> Refusal {
    Refusal { scope: quotas.scope.clone(), kind }
}
