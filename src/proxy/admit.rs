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
    for (scope, quotas) in [(&*route.name, &route.quotas), ("service", &snapshot.service)] {
        check_rate(scope, quotas, headers, client_ip, &mut shadow_limited)?;
    }
    let route_slot = acquire(&route.name, &route.quotas, headers, client_ip)?;
    let service_slot = acquire("service", &snapshot.service, headers, client_ip)?;
    Ok(Admitted { permits: [route_slot, service_slot], shadow_limited })
}

fn check_rate(scope: &str, quotas: &Quotas, headers: &HeaderMap, ip: IpAddr, shadow: &mut bool) -> Result<(), Refusal> {
    let Some(quota) = &quotas.rate else { return Ok(()) };
    let spec = quota.limit.spec();
    match quota.limit.check(&key(&spec.key, headers, ip)) {
        RateDecision::Allowed { .. } => Ok(()),
        RateDecision::Limited { .. } if quota.mode == Mode::Shadow => {
            *shadow = true;
            Ok(())
        }
        RateDecision::Limited { retry_after } => Err(Refusal {
            scope: scope.to_string(),
            kind: RefusalKind::Rate { limit: spec.burst.get(), window: spec.refill_time(), retry_after },
        }),
    }
}

fn acquire(scope: &str, quotas: &Quotas, headers: &HeaderMap, ip: IpAddr) -> Result<Option<Permit>, Refusal> {
    let Some(concurrency) = &quotas.concurrency else { return Ok(None) };
    let key = key(concurrency.key_spec(), headers, ip);
    match concurrency.try_acquire(&key) {
        Some(permit) => Ok(Some(permit)),
        None => Err(Refusal { scope: scope.to_string(), kind: RefusalKind::Concurrency { max: concurrency.max() } }),
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
