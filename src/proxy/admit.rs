//! The quota step of the request path: the route's quotas, then the service's. A request
//! refused by its route never reaches (so never spends) the service-wide budget.

use std::net::IpAddr;

use http::HeaderMap;

use super::respond::{Refusal, RefusalKind};
use crate::quota::{Key, KeySpec, Mode, Permit, RateDecision};
use crate::snapshot::{Quotas, RouteState, Snapshot};

/// The slots an admitted request holds, and whether a shadow quota would have refused it.
pub struct Admitted {
    pub permits: [Option<Permit>; 2],
    pub shadow_limited: bool,
}

pub fn admit(
    snapshot: &Snapshot,
    route: &RouteState,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<Admitted, Refusal> {
    let mut shadow_limited = false;
    for quotas in [&route.quotas, &snapshot.service] {
        shadow_limited |= check_rate(quotas, headers, client_ip)?;
    }
    let route_slot = acquire(&route.quotas, headers, client_ip)?;
    let service_slot = acquire(&snapshot.service, headers, client_ip)?;
    Ok(Admitted { permits: [route_slot, service_slot], shadow_limited })
}

/// Takes from the rate quota of `quotas`; `Ok(true)` when a shadow quota would have refused.
#[inline]
fn check_rate(quotas: &Quotas, headers: &HeaderMap, ip: IpAddr) -> Result<bool, Refusal> {
    let Some(quota) = &quotas.rate else { return Ok(false) };
    match quota.limit.check(&key(&quota.limit.spec().key, headers, ip)) {
        RateDecision::Allowed => Ok(false),
        RateDecision::Limited { .. } if quota.mode == Mode::Shadow => Ok(true),
        RateDecision::Limited { retry_after } => Err(rate_refusal(quotas, retry_after)),
    }
}

#[cold]
fn rate_refusal(quotas: &Quotas, retry_after: std::time::Duration) -> Refusal {
    let spec = quotas.rate.as_ref().map(|q| q.limit.spec()).expect("only a rate quota refuses by rate");
    Refusal {
        scope: quotas.scope.clone(),
        kind: RefusalKind::Rate { limit: spec.burst.get(), window: spec.refill_time(), retry_after },
    }
}

fn acquire(quotas: &Quotas, headers: &HeaderMap, ip: IpAddr) -> Result<Option<Permit>, Refusal> {
    let Some(concurrency) = &quotas.concurrency else { return Ok(None) };
    match concurrency.try_acquire(&key(concurrency.key_spec(), headers, ip)) {
        Some(permit) => Ok(Some(permit)),
        None => Err(Refusal { scope: quotas.scope.clone(), kind: RefusalKind::Concurrency { max: concurrency.max() } }),
    }
}

/// The key of a request under `spec`. Only the first value of a repeated header counts.
pub fn key(spec: &KeySpec, headers: &HeaderMap, client_ip: IpAddr) -> Key {
    match spec {
        KeySpec::None => Key::Absent,
        KeySpec::ClientIp => Key::Ip(client_ip),
        KeySpec::Header(name) => match headers.get(name) {
            Some(value) => Key::value(value.as_bytes()),
            None => Key::Absent,
        },
    }
}
