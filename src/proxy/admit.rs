//! The quota step of the request path: the route's quotas, then the service's. A request
//! refused by its route never reaches (so never spends) the service-wide budget.

use std::net::IpAddr;
use std::time::Duration;

use super::respond::{whole_seconds, Refusal, RefusalKind};
use super::RequestFields;
use crate::metrics::Decision;
use crate::quota::global::Slot;
use crate::quota::{Advertise, KeySpec, Mode, Permit, RateDecision};
use crate::snapshot::{Quotas, RateQuota, RouteState, Snapshot};

/// The slots an admitted request holds, whether a shadow quota would have refused it, and
/// what the quotas that advertise (`advertise: always`) have left: the route's, the
/// service's.
pub struct Admitted {
    pub permits: [Option<Permit>; 2],
    pub shadow_limited: bool,
    pub advertised: [Option<Advertised>; 2],
    /// Slots of global concurrency quotas ([`super::global`]).
    pub slots: Option<Box<[Option<Slot>; 2]>>,
    /// Let through by `global.on_error` while Redis could not decide.
    pub degraded: bool,
}

impl Admitted {
    /// How the request is counted in `sluice_quota_decisions_total`.
    pub fn decision(&self) -> Decision {
        if self.shadow_limited {
            Decision::ShadowLimited
        } else if self.degraded {
            Decision::DegradedAllowed
        } else {
            Decision::Allowed
        }
    }
}

/// What a rate quota that advertises has left after admitting a request, for the
/// `RateLimit` field of its response: requests left at once, and whole seconds (rounded up)
/// until the key's burst is back. Small, as it is kept across the wait for the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised {
    pub remaining: u32,
    pub reset: u32,
}

/// `now` is the request's arrival on the clock of [`crate::snapshot::Live::clock`].
pub fn admit(
    snapshot: &Snapshot,
    route: &RouteState,
    fields: &RequestFields,
    client_ip: IpAddr,
    now: Duration,
) -> Result<Admitted, Refusal> {
    let mut shadow_limited = false;
    let mut advertised = [None, None];
    for (quotas, advertised) in [&route.quotas, &snapshot.service].into_iter().zip(&mut advertised) {
        shadow_limited |= check_rate(quotas, fields, client_ip, now, advertised)?;
    }
    let route_slot = acquire(&route.quotas, fields, client_ip)?;
    let service_slot = acquire(&snapshot.service, fields, client_ip)?;
    Ok(Admitted { permits: [route_slot, service_slot], shadow_limited, advertised, slots: None, degraded: false })
}

/// Takes from the rate quota of `quotas`; `Ok(true)` when a shadow quota would have refused.
/// A quota that advertises says in `advertised` what it has left.
#[inline]
fn check_rate(
    quotas: &Quotas,
    fields: &RequestFields,
    ip: IpAddr,
    now: Duration,
    advertised: &mut Option<Advertised>,
) -> Result<bool, Refusal> {
    let Some(quota) = &quotas.rate else { return Ok(false) };
    let key = &quota.limit.spec().key;
    let decision = if quota.advertise == Advertise::Always {
        advertise(quota, fields, ip, now, advertised)
    } else {
        with_key(key, fields, ip, |key| quota.limit.check(key, now))
    };
    match decision {
        RateDecision::Allowed => Ok(false),
        RateDecision::Limited { .. } if quota.mode == Mode::Shadow => Ok(true),
        RateDecision::Limited { retry_after } => Err(rate_refusal(quotas, retry_after)),
    }
}

/// The decision of a quota that advertises, noting what it has left.
#[inline(never)]
fn advertise(
    quota: &RateQuota,
    fields: &RequestFields,
    ip: IpAddr,
    now: Duration,
    advertised: &mut Option<Advertised>,
) -> RateDecision {
    let (decision, left) = with_key(&quota.limit.spec().key, fields, ip, |key| quota.limit.check_left(key, now));
    let reset = u32::try_from(whole_seconds(left.full_in)).unwrap_or(u32::MAX);
    *advertised = Some(Advertised { remaining: left.remaining, reset });
    decision
}

#[cold]
fn rate_refusal(quotas: &Quotas, retry_after: std::time::Duration) -> Refusal {
    let spec = quotas.rate.as_ref().map(|q| q.limit.spec()).expect("only a rate quota refuses by rate");
    Refusal {
        scope: quotas.scope.clone(),
        kind: RefusalKind::Rate { limit: spec.burst.get(), window: spec.refill_time(), retry_after },
    }
}

#[inline(always)]
fn acquire(quotas: &Quotas, fields: &RequestFields, ip: IpAddr) -> Result<Option<Permit>, Refusal> {
    let Some(concurrency) = &quotas.concurrency else { return Ok(None) };
    match with_key(concurrency.key_spec(), fields, ip, |key| concurrency.try_acquire(key)) {
        Some(permit) => Ok(Some(permit)),
        None => Err(Refusal { scope: quotas.scope.clone(), kind: RefusalKind::Concurrency { max: concurrency.max() } }),
    }
}

/// Calls `f` with the key of a request under `spec`, borrowed from the request: the
/// first value of the header (empty when absent), or the client address (an IPv4 client
/// seen through an IPv6 socket is its IPv4 address).
#[inline]
pub fn with_key<R>(spec: &KeySpec, fields: &RequestFields, client_ip: IpAddr, f: impl FnOnce(&[u8]) -> R) -> R {
    match spec {
        KeySpec::None => f(b""),
        KeySpec::ClientIp => match client_ip.to_canonical() {
            IpAddr::V4(ip) => f(&ip.octets()),
            IpAddr::V6(ip) => f(&ip.octets()),
        },
        KeySpec::Header(name) => f(fields.get(name).unwrap_or_default()),
    }
}

/// A request's key under `spec`, held for an `await`: [`with_key`]'s bytes, the client
/// address copied in place.
pub enum KeyOf<'a> {
    Borrowed(&'a [u8]),
    Ip { bytes: [u8; 16], len: u8 },
}

impl KeyOf<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Borrowed(bytes) => bytes,
            Self::Ip { bytes, len } => &bytes[..usize::from(*len)],
        }
    }
}

/// The key of a request under `spec`, as [`with_key`] finds it.
pub fn key_of<'a>(spec: &KeySpec, fields: &'a RequestFields, client_ip: IpAddr) -> KeyOf<'a> {
    match spec {
        KeySpec::None => KeyOf::Borrowed(b""),
        KeySpec::ClientIp => with_key(spec, fields, client_ip, |key| {
            let mut bytes = [0; 16];
            bytes[..key.len()].copy_from_slice(key);
            KeyOf::Ip { bytes, len: key.len() as u8 }
        }),
        KeySpec::Header(name) => KeyOf::Borrowed(fields.get(name).unwrap_or_default()),
    }
}
