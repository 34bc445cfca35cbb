//! Wiring: bind the sockets, start the tasks, and take them down in order on a drain.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::overlay::{Overlay, Push};
use crate::config::reload::config_fingerprint;
use crate::config::{self, Config, ConfigErrors};
use crate::control::Audit;
use crate::events::{Events, Retry};
use crate::lifecycle::handoff::{Handed, Socket};
use crate::lifecycle::notify;
use crate::lifecycle::takeover::Takeover;
use crate::lifecycle::upgrade::{self, Executable, Successor};
use crate::metrics::{Metrics, Source};
use crate::monitor::Saved;
use crate::proxy::listener::{self, Phase};
use crate::proxy::Tracker;
use crate::snapshot::{self, Live, Snapshot};
use crate::{control, heartbeat, monitor};

/// How often the config file is polled for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How often idle quota keys are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the data plane: {0}")]
    Workers(std::io::Error),
    #[error("cannot take over from the running process: {0}")]
    Takeover(std::io::Error),
}

/// The listener for the configured `addr`: the one an upgrade handed over for it, else a
/// new one. A duplicate of it goes on `kept`, named `name`, for the next upgrade.
fn listen(
    addr: SocketAddr,
    name: &str,
    takeover: Option<&mut Takeover>,
    kept: &mut Vec<(Socket, OwnedFd)>,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind { addr, source };
    let listener = match takeover.and_then(|t| t.listener(addr)) {
        Some(handed) => handed,
        None => std::net::TcpListener::bind(addr).map_err(error)?,
    };
    listener.set_nonblocking(true).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    let kept_fd = listener.try_clone().map_err(error)?;
    kept.push((Socket { name: name.into(), configured: addr, bound }, kept_fd.into()));
    Ok((TcpListener::from_std(listener).map_err(error)?, bound))
}

/// A running sluice.
pub struct Running {
    live: Arc<Live>,
    tracker: Arc<Tracker>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    events: Events,
    reloader: Option<config::reload::Reloader>,
    phase: watch::Sender<Phase>,
    /// Idle once every data-plane worker has ended.
    workers: Arc<Tracker>,
    background: Vec<JoinHandle<()>>,
    /// Where the SLA windows are checkpointed (at drain too), if anywhere.
    state_dir: Option<PathBuf>,
    /// The admin and metrics listeners' tasks: an upgrade ends them at once.
    admin: Vec<JoinHandle<()>>,
    /// What an upgrade starts, and the listeners it hands over (duplicates of them).
    exe: Option<Executable>,
    sockets: Mutex<Vec<(Socket, OwnedFd)>>,
}

/// Binds the listeners of `config` and starts serving. With `config_path`, the file is
/// watched and reloaded. A config pushed through the control API over this same file
/// (kept in `admin.state_dir`) is restored in place of the file's.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let running = start_with(config, config_path, None).await?;
    notify::ready(false);
    Ok(running)
}

/// Starts as [`start`] does, but on the listeners and with the state of the process that
/// started this one for an upgrade; tells it once serving, or why not.
pub async fn take_over(
    config: Config,
    config_path: Option<PathBuf>,
    mut takeover: Takeover,
) -> Result<Running, StartError> {
    match start_with(config, config_path, Some(&mut takeover)).await {
        Ok(running) => {
            if let Err(e) = takeover.serving().await {
                // It is gone: this process serves alone, as it would have anyway.
                tracing::warn!(error = %e, "cannot tell the old process this one serves");
            }
            notify::ready(true);
            let (pid, from) = (std::process::id(), std::os::unix::process::parent_id());
            tracing::info!(pid, from, "upgrade: this process took over");
            Ok(running)
        }
        Err(e) => {
            takeover.failed(&e.to_string()).await;
            Err(e)
        }
    }
}

async fn start_with(
    config: Config,
    config_path: Option<PathBuf>,
    mut takeover: Option<&mut Takeover>,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let overlay = match Overlay::open(&config.admin.state_dir) {
        Ok(overlay) => Some(Arc::new(overlay)),
        Err(e) => {
            tracing::error!(error = %e, dir = %config.admin.state_dir.display(), "admin.state_dir is not writable: the control API will refuse changes");
            None
        }
    };
    let audit = overlay.as_ref().and_then(|o| match Audit::open(o.dir(), metrics.audit_suppressed.clone()) {
        Ok(audit) => Some(Arc::new(audit)),
        Err(e) => {
            tracing::error!(error = %e, dir = %o.dir().display(), "cannot open the audit log: changes will be refused");
            None
        }
    });
    let mut background = Vec::new();
    let events = match &config.webhook {
        Some(url) => {
            let (events, deliver) = Events::with_webhook(url.clone(), Retry::default());
            background.push(tokio::spawn(deliver));
            events
        }
        None => Events::new(),
    };
    let (config, dropped) = match &overlay {
        Some(overlay) => restore(overlay, config, config_path.as_deref()),
        None => (config, Vec::new()),
    };
    let mut sockets = Vec::new();
    let (listener, proxy_addr) = listen(config.listen, "proxy", takeover.as_deref_mut(), &mut sockets)?;
    let (admin, admin_addr) = listen(config.admin.listen, "admin", takeover.as_deref_mut(), &mut sockets)?;
    let metrics_listener = match config.admin.metrics_listen {
        Some(addr) => Some(listen(addr, "metrics", takeover.as_deref_mut(), &mut sockets)?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);

    // Where the SLA windows are checkpointed, when it is writable.
    let state_dir = overlay.as_ref().map(|o| o.dir().to_path_buf());
    let live = match takeover {
        Some(takeover) => {
            let handed = takeover.state().await.map_err(StartError::Takeover)?;
            // The same config keeps its version (and a controller's ETag); another is the next.
            let same = handed.config == config_fingerprint(&config.raw);
            let live = Live::at_version(config, metrics, handed.version + u64::from(!same));
            handed.saved.restore(&live, "the old process");
            live
        }
        None => {
            let live = Live::new(config, metrics);
            if let Some(dir) = &state_dir {
                monitor::restore(&live, dir);
            }
            live
        }
    };
    if !dropped.is_empty() {
        let file = config_path.as_deref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let snapshot = live.load();
        let sha256 = config::overlay::fingerprint(&file);
        config::reload::announce_file(&events, audit.as_deref(), &snapshot, 0, "start", &sha256, &dropped);
    }
    let tracker = Arc::new(Tracker::default());
    let (phase, watching) = watch::channel(Phase::Serving);
    let listener = listener.into_std().map_err(|source| StartError::Bind { addr: proxy_addr, source })?;
    let exe = Executable::of_this_process()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot tell this executable's path: SIGUSR2 cannot upgrade"))
        .ok();
    let workers =
        listener::start(listener, workers(), live.clone(), tracker.clone(), watching).map_err(StartError::Workers)?;
    background.push(tokio::spawn(snapshot::sweep_keys(live.clone(), SWEEP_INTERVAL)));
    background.push(tokio::spawn(monitor::run(live.clone(), events.clone(), state_dir.clone())));
    background.push(tokio::spawn(heartbeat::run(live.clone(), events.clone())));
    background.push(tokio::spawn(crate::upstream::probe::run(live.clone(), events.clone())));
    background.push(tokio::spawn(crate::upstream::resolve::run(live.clone())));
    let routers = [
        control::router(control::Control::new(live.clone(), events.clone(), overlay.clone(), audit.clone())),
        control::probes(live.clone()),
    ];
    let listeners = std::iter::once((admin, "admin")).chain(metrics_listener.map(|(l, _)| (l, "metrics")));
    let admin = listeners
        .zip(routers)
        .map(|((listener, name), router)| tokio::spawn(control::serve::serve(listener, router, live.clone(), name)))
        .collect();
    let reloader = config_path.map(|path| config::reload::Reloader {
        path,
        live: live.clone(),
        overlay: overlay.clone(),
        audit: audit.clone(),
        events: events.clone(),
    });
    if let Some(reloader) = &reloader {
        background.push(tokio::spawn(config::reload::watch(reloader.clone(), WATCH_INTERVAL)));
    }
    tracing::info!(%proxy_addr, %admin_addr, metrics_addr = metrics_addr.map(tracing::field::display), service = %live.load().config.service, pid = std::process::id(), "sluice is serving");
    Ok(Running {
        live,
        tracker,
        proxy_addr,
        admin_addr,
        metrics_addr,
        events,
        reloader,
        phase,
        workers,
        background,
        state_dir,
        admin,
        exe,
        sockets: Mutex::new(sockets),
    })
}

/// One data-plane worker per CPU this process may use (its affinity and cgroup quota).
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The config to start with: the one pushed over the file as it is now, if any, else the
/// file's (the `admin` section is always the file's); and the pushes dropped because the
/// file changed since they were made.
fn restore(overlay: &Overlay, file: Config, path: Option<&std::path::Path>) -> (Config, Vec<Push>) {
    let text = path.and_then(|p| std::fs::read_to_string(p).ok());
    let restored = overlay.start(text.as_deref());
    let Some(pushed) = restored.config else { return (file, restored.dropped) };
    match config::from_raw(config::RawConfig { admin: file.raw.admin.clone(), ..pushed }) {
        Ok(config) => (config, Vec::new()),
        Err(errors) => {
            tracing::error!(%errors, "the pushed config is no longer valid: using the file");
            (file, Vec::new())
        }
    }
}

impl Running {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `admin.metrics_listen`, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Ticks the SLA monitor now, as its timer does every second.
    pub fn tick(&self) {
        monitor::tick(&self.live, &self.events);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load()
    }

    /// Reloads the config file, as SIGHUP does.
    pub fn reload(&self) -> Result<Arc<Snapshot>, ConfigErrors> {
        match &self.reloader {
            Some(reloader) => reloader.reload(Source::Signal),
            None => Ok(self.live.load()),
        }
    }

    /// Upgrades to a new process started from this one's executable (SIGUSR2): on success
    /// the new process serves, this one's admin listeners are closed and it should drain;
    /// on failure nothing changed but the log.
    pub async fn upgrade(&self) -> Result<Successor, upgrade::Failed> {
        let Some(exe) = &self.exe else { return Err(upgrade::Failed::NoExecutable) };
        if !self.live.hold_changes() {
            return Err(upgrade::Failed::UnderWay);
        }
        let sockets = std::mem::take(&mut *self.sockets.lock().unwrap_or_else(|e| e.into_inner()));
        let hand = || {
            monitor::tick(&self.live, &self.events);
            let snapshot = self.live.load();
            let config = config_fingerprint(&snapshot.config.raw);
            Handed { version: snapshot.version, config, saved: Saved::of(&self.live) }
        };
        let deadline = self.live.load().config.limits.upgrade_timeout;
        let result = upgrade::upgrade(exe, &sockets, hand, deadline).await;
        match &result {
            Ok(_) => {
                self.live.hand_over();
                for task in &self.admin {
                    task.abort();
                }
            }
            Err(_) => {
                *self.sockets.lock().unwrap_or_else(|e| e.into_inner()) = sockets;
                self.live.release_changes();
                // A change of the file during the upgrade was left to the new process.
                if let Some(reloader) = &self.reloader {
                    let _ = reloader.reload(Source::File);
                }
            }
        }
        result
    }

    /// Stops accepting, lets in-flight requests finish within the drain deadline, then
    /// closes every connection.
    pub async fn drain(self) {
        if !self.live.handed_over() {
            notify::notify("STOPPING=1");
        }
        let deadline = tokio::time::Instant::now() + self.live.load().config.limits.drain_timeout;
        tracing::info!(in_flight = self.tracker.in_flight(), "draining");
        self.live.start_draining();
        // The other replicas' local shares grow at once, not after the heartbeat is forgotten.
        heartbeat::leave(&self.live).await;
        let _ = self.phase.send(Phase::Draining);
        if tokio::time::timeout_at(deadline, self.tracker.idle()).await.is_err() {
            tracing::warn!(in_flight = self.tracker.in_flight(), "drain deadline passed with requests in flight");
        }
        // A request that raced the drain on an idle keep-alive connection gets a moment to
        // arrive and be answered with `Connection: close`.
        let grace = tokio::time::Instant::now() + Duration::from_millis(200);
        tokio::time::sleep_until(grace.min(deadline)).await;
        let _ = self.phase.send(Phase::Closing);
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), self.workers.idle()).await;
        for task in self.background.iter().chain(&self.admin) {
            task.abort();
        }
        if let Some(dir) = &self.state_dir {
            // What the requests of the drain recorded goes in too.
            monitor::tick(&self.live, &self.events);
            if let Err(e) = monitor::save(&self.live, dir) {
                tracing::warn!(error = %e, "could not checkpoint the SLA windows and rate quotas");
            }
        }
        tracing::info!("drained");
    }
}

/// The signals [`run_until_signalled`] answers, taken before the process starts serving:
/// one that arrives while it starts (a reload right after systemd's `READY=1`, an upgrade
/// right after the listening line) waits for the loop instead of killing the process, as
/// SIGHUP's and SIGUSR2's default actions would.
pub struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    user2: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn take() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            user2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// Serves until SIGTERM or SIGINT, then drains after `limits.drain_delay` (a second
/// SIGTERM or SIGINT ends the delay). SIGHUP reloads the config file, delay or not.
/// SIGUSR2 upgrades the binary ([`Running::upgrade`]): drains at once once the new process
/// serves; a SIGTERM during an upgrade ends it (the new process is killed) and drains.
pub async fn run_until_signalled(running: Running, signals: Signals) -> std::io::Result<()> {
    let Signals { mut hangup, mut terminate, mut interrupt, mut user2 } = signals;
    let mut upgrading = None;
    let upgraded = loop {
        tokio::select! {
            _ = hangup.recv() => { let _ = running.reload(); }
            _ = terminate.recv() => break false,
            _ = interrupt.recv() => break false,
            _ = user2.recv() => match upgrading {
                Some(_) => tracing::warn!("SIGUSR2: an upgrade is under way already; this one is ignored"),
                None => {
                    tracing::info!("SIGUSR2: upgrading the binary");
                    upgrading = Some(Box::pin(running.upgrade()));
                }
            },
            result = async { upgrading.as_mut().expect("guarded").await }, if upgrading.is_some() => {
                upgrading = None;
                match result {
                    Ok(Successor { pid, took }) => {
                        tracing::info!(pid, took_ms = took.as_millis() as u64, "upgrade: the new process serves; draining");
                        break true;
                    }
                    Err(why) => tracing::error!(error = %why, "upgrade failed: this process serves on"),
                }
            }
        }
    };
    drop(upgrading);
    let delay = running.live.load().config.limits.drain_delay;
    if !upgraded && !delay.is_zero() {
        // Kubernetes sends SIGTERM while the endpoint still routes here: serve on, unready,
        // until the endpoint is gone.
        running.live.stop_being_ready();
        tracing::info!(delay = ?delay, "SIGTERM: serving for the drain delay, /readyz answers 503");
        let end = tokio::time::sleep(delay);
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut end => break,
                _ = hangup.recv() => { let _ = running.reload(); }
                _ = terminate.recv() => { tracing::info!("a second signal: the drain delay is cut short"); break }
                _ = interrupt.recv() => { tracing::info!("a second signal: the drain delay is cut short"); break }
            }
        }
    }
    running.drain().await;
    Ok(())
}
