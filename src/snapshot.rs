//! The live config: a validated [`Config`] with the quota state built for it, swapped
//! atomically. A request loads the snapshot once and finishes on it; a new snapshot
//! takes over the limiter state of every quota that did not change, so a reload gives
//! nobody a fresh burst and drops no in-flight count.

use crate::upstream::retry::Retries;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::{Metrics, Reload, RouteMetrics, Source};
use crate::quota::global::{GlobalConcurrency, GlobalRate, Shared};
use crate::quota::{Advertise, Concurrency, ConcurrencySpec, Mode, RateLimit, RateSpec, Scope};
use crate::route::Matcher;
use crate::sla::RouteSla;

pub use crate::config::UNMATCHED;

/// A rate quota in force: shared state plus the mode it is applied in and what its
/// responses advertise (both may change without resetting the state).
#[derive(Clone)]
pub struct RateQuota {
    pub limit: Arc<RateLimit>,
    pub mode: Mode,
    pub advertise: Advertise,
}

/// The quotas of one scope: a route, or the whole service.
#[derive(Clone, Default)]
pub struct Quotas {
    /// The route's name or `service`: the policy name a refusal carries.
    pub scope: Arc<str>,
    pub rate: Option<RateQuota>,
    pub concurrency: Option<Arc<Concurrency>>,
    /// The quotas with `scope: global`, shared with every replica.
    pub global: Option<Arc<GlobalQuotas>>,
}

/// A scope's global quotas: a rate quota (in `mode`), a concurrency quota, or both.
pub struct GlobalQuotas {
    pub rate: Option<(GlobalRate, Mode)>,
    pub concurrency: Option<GlobalConcurrency>,
}

impl Quotas {
    fn build(
        scope: Arc<str>,
        rate: Option<&RateSpec>,
        concurrency: Option<&ConcurrencySpec>,
        previous: Option<&Quotas>,
        shared: Option<&Arc<Shared>>,
    ) -> Self {
        let global = |s: &&RateSpec| s.scope == Scope::Global;
        let global_rate = rate.filter(global).zip(shared).map(|(spec, shared)| {
            let kept = previous.and_then(|p| p.global.as_ref()).and_then(|g| g.rate.as_ref());
            let rate = match kept.filter(|(r, _)| r.adopts(shared, spec)) {
                Some((kept, _)) => kept.clone(),
                None => GlobalRate::new(shared.clone(), &scope, spec),
            };
            (rate, spec.mode)
        });
        let global_concurrency = concurrency.filter(|c| c.scope == Scope::Global).zip(shared).map(|(spec, shared)| {
            let kept = previous.and_then(|p| p.global.as_ref()).and_then(|g| g.concurrency.as_ref());
            match kept.filter(|c| c.adopts(shared, spec)) {
                Some(kept) => kept.clone(),
                None => GlobalConcurrency::new(shared.clone(), &scope, spec),
            }
        });
        let global = (global_rate.is_some() || global_concurrency.is_some())
            .then(|| Arc::new(GlobalQuotas { rate: global_rate, concurrency: global_concurrency }));
        let rate = rate.filter(|s| s.scope == Scope::Local);
        let concurrency = concurrency.filter(|c| c.scope == Scope::Local);
        let rate = rate.map(|spec| {
            let kept = previous.and_then(|p| p.rate.as_ref()).filter(|q| q.limit.spec().same_limiter(spec));
            RateQuota {
                limit: kept.map_or_else(|| Arc::new(RateLimit::new(spec.clone())), |q| q.limit.clone()),
                mode: spec.mode,
                advertise: spec.advertise,
            }
        });
        let concurrency =
            concurrency.map(|spec| match previous.and_then(|p| p.concurrency.as_ref()).filter(|c| c.adopt(spec)) {
                Some(kept) => kept.clone(),
                None => Concurrency::new(spec),
            });
        Self { scope, rate, concurrency, global }
    }
}

/// `"scope";q=BURST;w=SECONDS` for each rate quota of `quotas` (a route's, the service's)
/// that advertises, joined as a list; `None` when none does.
fn advertised_policy(quotas: [&Quotas; 2]) -> Option<http::HeaderValue> {
    let members: Vec<String> = quotas
        .iter()
        .filter_map(|q| {
            let rate = q.rate.as_ref().filter(|r| r.advertise == Advertise::Always)?;
            let spec = rate.limit.spec();
            let window = spec.refill_time();
            let seconds = window.as_secs() + u64::from(window.subsec_nanos() > 0);
            Some(format!("\"{}\";q={};w={}", q.scope, spec.burst, seconds.max(1)))
        })
        .collect();
    // Scope names are [A-Za-z0-9._-]: the value is visible ASCII.
    (!members.is_empty()).then(|| http::HeaderValue::try_from(members.join(", ")).expect("visible ASCII"))
}

/// One route as the request path sees it.
pub struct RouteState {
    pub name: Arc<str>,
    pub timeout: Duration,
    pub quotas: Quotas,
    pub sla: RouteSla,
    /// Resolved when the snapshot is built; kept across reloads by the registry.
    pub metrics: Arc<RouteMetrics>,
    /// The `RateLimit-Policy` value of admitted responses, when this route's rate quota or
    /// the service's advertises (`advertise: always`): the same for every request, so
    /// written once here.
    pub advertised_policy: Option<http::HeaderValue>,
    /// Whether a global quota (this route's or the service's) applies.
    pub global: bool,
    /// `retries`, with its budget (kept across reloads while the policy stays the same).
    pub retries: Option<Arc<Retries>>,
}

pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    pub matcher: Matcher,
    /// In config order, so a match index is a route index.
    pub routes: Vec<RouteState>,
    pub unmatched: RouteState,
    pub service: Quotas,
    /// What the global quotas share (Redis, its circuit, the replica count), when the
    /// config has a `global` section.
    pub global: Option<Arc<Shared>>,
}

impl Snapshot {
    /// Builds the state for `config`, adopting from `previous` what is still valid.
    pub fn build(config: Config, version: u64, previous: Option<&Snapshot>, metrics: &Metrics) -> Self {
        let matcher = Matcher::new(config.routes.iter().map(|r| (r.method.clone(), r.path.clone())).collect());
        let global = config.global.as_ref().and_then(|settings| {
            // The same section: the same Redis, circuit and leases.
            let kept = previous.and_then(|p| p.global.as_ref());
            match kept.filter(|g| g.settings == *settings && g.service == config.service) {
                Some(kept) => Some(kept.clone()),
                None => Shared::new(settings.clone(), &config.service, metrics.global())
                    .map_err(|e| tracing::error!(error = %e, "global quotas: cannot use global.redis"))
                    .ok(),
            }
        });
        let previous_service = previous.map(|p| &p.service);
        let service = Quotas::build(
            "service".into(),
            config.quota.as_ref(),
            config.concurrency.as_ref(),
            previous_service,
            global.as_ref(),
        );
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let before = previous.and_then(|p| p.route(&route.name));
                let name: Arc<str> = route.name.as_str().into();
                let quotas = before.map(|r| &r.quotas);
                let threshold = route.sla.as_ref().and_then(|s| s.latency.as_ref()).map(|l| l.threshold);
                let quotas = Quotas::build(
                    name.clone(),
                    route.quota.as_ref(),
                    route.concurrency.as_ref(),
                    quotas,
                    global.as_ref(),
                );
                RouteState {
                    advertised_policy: advertised_policy([&quotas, &service]),
                    global: quotas.global.is_some() || service.global.is_some(),
                    quotas,
                    sla: RouteSla::build(route.sla.as_ref(), before.map(|r| &r.sla)),
                    metrics: metrics.route(&name, threshold),
                    retries: route.retries.as_ref().map(|policy| {
                        let kept = before.and_then(|r| r.retries.as_ref()).filter(|r| r.policy == *policy);
                        kept.cloned().unwrap_or_else(|| Arc::new(Retries::new(policy.clone())))
                    }),
                    name,
                    timeout: route.timeout,
                }
            })
            .collect();
        let unmatched = RouteState {
            name: UNMATCHED.into(),
            timeout: config.limits.timeout,
            advertised_policy: advertised_policy([&Quotas::default(), &service]),
            global: service.global.is_some(),
            quotas: Quotas::default(),
            sla: RouteSla::default(),
            metrics: metrics.route(UNMATCHED, None),
            retries: None,
        };
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).chain([UNMATCHED]).collect();
        metrics.retain_routes(&names);
        for route in &config.routes {
            let sla = route.sla.as_ref();
            if sla.is_none_or(|s| s.latency.is_none()) {
                metrics.forget_sli(&route.name, crate::sla::SliKind::Latency);
            }
            if sla.is_none_or(|s| s.availability.is_none()) {
                metrics.forget_sli(&route.name, crate::sla::SliKind::Availability);
            }
        }
        Self { version, config: Arc::new(config), matcher, routes, unmatched, service, global }
    }

    pub fn route(&self, name: &str) -> Option<&RouteState> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// The route of a request, `unmatched` when none matches.
    #[inline]
    pub fn find(&self, method: &http::Method, path: &str) -> &RouteState {
        self.route_at(self.find_index(method, path))
    }

    /// The index of a request's route; `routes.len()` stands for `unmatched`.
    #[inline]
    pub fn find_index(&self, method: &http::Method, path: &str) -> usize {
        self.matcher.find(method, path).unwrap_or(self.routes.len())
    }

    #[inline]
    pub fn route_at(&self, index: usize) -> &RouteState {
        self.routes.get(index).unwrap_or(&self.unmatched)
    }

    /// Every rate quota in force, service-wide first.
    pub fn rate_limits(&self) -> impl Iterator<Item = (&str, &Arc<RateLimit>)> {
        let service = self.service.rate.as_ref().map(|q| ("service", &q.limit));
        service
            .into_iter()
            .chain(self.routes.iter().filter_map(|r| r.quotas.rate.as_ref().map(|q| (&*r.name, &q.limit))))
    }

    /// Every scope's global quotas, service-wide first.
    pub fn global_quotas(&self) -> impl Iterator<Item = (&str, &GlobalQuotas)> {
        let service = self.service.global.as_deref().map(|g| ("service", g));
        service.into_iter().chain(self.routes.iter().filter_map(|r| r.quotas.global.as_deref().map(|g| (&*r.name, g))))
    }

    /// The routes whose config differs between two snapshots, for the reload log.
    pub fn changed_routes(&self, previous: &Snapshot) -> Vec<String> {
        let before = &previous.config.raw.routes;
        let mut changed: Vec<String> =
            self.config.raw.routes.iter().filter(|r| !before.contains(r)).map(|r| r.name.clone()).collect();
        changed.extend(before.iter().filter(|r| self.route(&r.name).is_none()).map(|r| format!("-{}", r.name)));
        changed
    }
}

/// The one live snapshot and the way to change it.
pub struct Live {
    current: ArcSwap<Snapshot>,
    /// Serializes writers, so each new snapshot adopts from the one it replaces.
    apply_lock: Mutex<()>,
    /// One change at a time, from any source (a reload of the file, a push of the control
    /// API): each reads the live config and the pushed overlay and writes both under it, so
    /// a reload cannot fall between a push being kept and it going live.
    changes: Mutex<()>,
    next_version: AtomicU64,
    /// Counts every config offered, changed or not: token sources are read again on each.
    generation: AtomicU64,
    /// Set by SIGTERM: responses tell HTTP/1 clients to close.
    draining: AtomicBool,
    /// SIGTERM came: `/readyz` answers 503 while the drain delay lasts.
    unready: AtomicBool,
    /// A binary upgrade is under way, or done: changes are refused (the new process has
    /// read the config and the overlay already, and will not see them).
    held: AtomicBool,
    /// The new process of an upgrade took over: this one writes no checkpoint.
    handed_over: AtomicBool,
    /// Whether the service is healthy: outlives snapshots, as the service does.
    pub health: crate::upstream::Health,
    /// What the service is given at once, for `circuit_breaker`: outlives snapshots too.
    pub breaker: Arc<crate::upstream::Breaker>,
    /// The service's addresses, as its name last resolved (`dns_refresh`).
    pub resolver: Arc<crate::upstream::resolve::Resolver>,
    pub metrics: Arc<Metrics>,
    /// The engines' clock: `origin` (the wall clock at start, since the Unix epoch) plus
    /// the steady time since `started`. It never goes back within a process, and it lines
    /// up with the wall clock across restarts, so SLA windows checkpointed by one process
    /// mean the same times to the next.
    started: Instant,
    origin: Duration,
}

/// A config offered to [`Live::apply`], and what became of it.
pub struct Applied {
    /// The snapshot now live.
    pub snapshot: Arc<Snapshot>,
    /// The snapshot it replaced (the same one when nothing changed).
    pub previous: Arc<Snapshot>,
}

impl Applied {
    /// Whether a new version went live: false when the config was the live one already.
    pub fn changed(&self) -> bool {
        self.snapshot.version != self.previous.version
    }
}

impl Live {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::at_version(config, metrics, 1)
    }

    /// Starts with `config` as `version`: a process taking over from another carries its
    /// version on.
    pub fn at_version(config: Config, metrics: Arc<Metrics>, version: u64) -> Arc<Self> {
        metrics.config_version.set(version as i64);
        let origin = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Arc::new(Self {
            current: ArcSwap::from_pointee(Snapshot::build(config, version, None, &metrics)),
            apply_lock: Mutex::new(()),
            changes: Mutex::new(()),
            next_version: AtomicU64::new(version + 1),
            generation: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            unready: AtomicBool::new(false),
            held: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            health: crate::upstream::Health::default(),
            breaker: crate::upstream::Breaker::new(),
            resolver: crate::upstream::resolve::Resolver::new(),
            metrics,
            started: Instant::now(),
            origin,
        })
    }

    /// The engines' `now`. Quota and SLA state outlive snapshots, so every snapshot
    /// shares this clock.
    pub fn clock(&self) -> Duration {
        self.origin + self.started.elapsed()
    }

    /// `instant` on the engines' clock.
    #[inline]
    pub fn at(&self, instant: Instant) -> Duration {
        self.origin + instant.saturating_duration_since(self.started)
    }

    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Held by whoever changes the config (see the field): a reload, or a push.
    pub fn change_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many configs were offered so far, changed or not.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Makes `config` live as the next version, unless it is the live config already: then
    /// the version stays, so a controller's ETag stays valid until something changed.
    pub fn apply(&self, config: Config, source: Source) -> Applied {
        let _writer = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::Relaxed);
        let previous = self.current.load_full();
        if config.raw == previous.config.raw {
            self.metrics.reloaded(source, Reload::Unchanged);
            return Applied { snapshot: previous.clone(), previous };
        }
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(Snapshot::build(config, version, Some(&previous), &self.metrics));
        self.current.store(next.clone());
        self.metrics.reloaded(source, Reload::Applied(version));
        Applied { snapshot: next, previous }
    }

    /// Stops being ready (`/readyz` answers 503) without draining yet: the start of
    /// `limits.drain_delay`.
    pub fn stop_being_ready(&self) {
        self.unready.store(true, Ordering::Relaxed);
    }

    /// Ready while neither a drain nor its delay has begun.
    pub fn ready(&self) -> bool {
        !self.unready.load(Ordering::Relaxed) && !self.draining()
    }

    /// Refuses changes from now on (an upgrade begins); false if they were refused already
    /// (one upgrade at a time). A change under way finishes first.
    pub fn hold_changes(&self) -> bool {
        let _change = self.change_lock();
        !self.held.swap(true, Ordering::Relaxed)
    }

    /// Takes changes again: the upgrade failed.
    pub fn release_changes(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Whether changes are refused; read under [`Live::change_lock`].
    pub fn changes_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// The new process took over: changes stay refused and no checkpoint is written.
    pub fn hand_over(&self) {
        self.held.store(true, Ordering::Relaxed);
        self.handed_over.store(true, Ordering::Relaxed);
    }

    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Drops idle keys from the keyed rate quotas: every `interval`, and within a tick when a
/// quota's table is full; and turns their offenders' interval over. Runs until the task is
/// dropped.
pub async fn sweep_keys(live: Arc<Live>, interval: Duration) {
    let tick = Duration::from_millis(250).min(interval);
    let mut last_full_sweep = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let snapshot = live.load();
        let due = last_full_sweep.elapsed() >= interval;
        for (route, limit) in snapshot.rate_limits() {
            if let Some(offenders) = limit.offenders() {
                offenders.roll(live.clock());
            }
            if due || limit.keys() >= limit.spec().max_keys.get() {
                let evicted = limit.sweep(live.clock());
                if evicted > 0 {
                    tracing::debug!(route, evicted, keys = limit.keys(), "evicted idle quota keys");
                }
            }
        }
        for (route, global) in snapshot.global_quotas() {
            let Some((rate, _)) = &global.rate else { continue };
            if due || rate.keys() >= rate.spec().max_keys.get() {
                let forgotten = rate.sweep(live.clock());
                if forgotten > 0 {
                    tracing::debug!(route, forgotten, keys = rate.keys(), "forgot idle global quota leases");
                }
            }
        }
        if due {
            last_full_sweep = Instant::now();
        }
    }
}
