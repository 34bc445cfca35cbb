//! `sluice demo`: a built-in service with a realistic latency spread and a few errors,
//! sluice in front of it on `config/demo.yaml`, and traffic that runs into the quotas.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::server::{self, StartError};

pub const CONFIG: &str = include_str!("../config/demo.yaml");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the embedded demo config is invalid: {0}")]
    Config(#[from] crate::config::ConfigErrors),
}

/// A random token for one demo run: 128 bits from the standard library's per-process
/// random hash keys.
fn demo_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("demo-{:016x}{:016x}", word(), word())
}

/// Runs the demo until Ctrl-C, or for `duration`.
pub async fn run(duration: Option<Duration>) -> Result<(), DemoError> {
    let service = TcpListener::bind("127.0.0.1:0").await?;
    let service_addr = service.local_addr()?;
    tokio::spawn(serve_service(service));

    let mut config = crate::config::parse(CONFIG)?;
    config.upstream = service_addr.to_string().parse().expect("an address is an authority");
    // The demo's ports when free, any free port otherwise.
    if std::net::TcpListener::bind(config.listen).is_err() {
        config.listen.set_port(0);
    }
    if std::net::TcpListener::bind(config.admin.listen).is_err() {
        config.admin.listen.set_port(0);
    }
    // A state directory of its own: what is pushed to one demo stays with that demo.
    config.admin.state_dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
    // A token made for this run only, for the dashboard and the control API.
    let token = demo_token();
    let admin = config.raw.admin.get_or_insert_with(|| crate::config::RawAdmin {
        listen: None,
        metrics_listen: None,
        tokens: Vec::new(),
        state_dir: None,
    });
    // In a file of the demo's own state directory, as a deployment mounts a secret: a token
    // written into the config would be warned about.
    let token_file = config.admin.state_dir.join("demo.token");
    write_secret(&token_file, &token)?;
    admin.tokens.push(crate::config::RawToken {
        name: "demo".into(),
        role: "admin".into(),
        token_env: None,
        token_file: Some(token_file.display().to_string()),
        token: None,
    });
    let running = server::start(config, None).await?;
    let proxy = running.proxy_addr();
    println!("sluice demo");
    println!("  proxy     http://{proxy}/  (try: curl -i http://{proxy}/claims/42)");
    println!("  service   http://{service_addr}/  (the built-in upstream)");
    let admin = running.admin_addr();
    println!("  dashboard http://{admin}/#token={token}");
    println!("  metrics   http://{admin}/metrics  (Prometheus text: requests, latency, SLA)");
    println!("  control   curl -H 'Authorization: Bearer {token}' http://{admin}/v1/status");
    println!("  traffic   POST /claims/submit, GET /claims/{{id}}, GET /search/*: watch the 429s below");
    println!("Ctrl-C stops.");

    let stats = Arc::new(Stats::default());
    let traffic = tokio::spawn(generate(proxy, stats.clone()));
    let report = tokio::spawn(report(stats.clone()));
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => tokio::signal::ctrl_c().await?,
    }
    traffic.abort();
    report.abort();
    print_stats(&stats);
    running.drain().await;
    Ok(())
}

/// Writes `secret` to `path`, readable by this user only.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(secret.as_bytes())
}

/// A tiny xorshift generator: the demo needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }

    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn serve_service(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move { Ok::<_, Infallible>(answer(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Latency: mostly 5-40 ms with a long tail (about 2% take 150-450 ms); about 1.5% fail.
async fn answer(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut rng = Rng::seeded();
    let (tail, roll) = (rng.unit(), rng.unit());
    let millis = if tail < 0.02 { 150.0 + 300.0 * rng.unit() } else { 5.0 - 12.0 * (1.0 - rng.unit()).ln() };
    tokio::time::sleep(Duration::from_micros((millis * 1000.0) as u64)).await;
    let _ = req.into_body().collect().await;
    let status = if roll < 0.01 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if roll < 0.015 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response = Response::new(Full::new(Bytes::from(format!("{{\"status\":{}}}", status.as_u16()))));
    *response.status_mut() = status;
    response
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    limited: AtomicU64,
    failed: AtomicU64,
}

async fn generate(proxy: SocketAddr, stats: Arc<Stats>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut rng = Rng::seeded();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let pick = rng.unit();
        let (method, path, consumer) = if pick < 0.4 {
            // consumer-1 sends about 28/s, far over its 10/s quota on submit-claim
            let consumer = if rng.unit() < 0.7 { "consumer-1" } else { "consumer-2" };
            (Method::POST, "/claims/submit".to_string(), consumer)
        } else if pick < 0.85 {
            (Method::GET, format!("/claims/{}", (rng.unit() * 1000.0) as u32), "consumer-2")
        } else {
            (Method::GET, "/search/claims?q=open".to_string(), "consumer-3")
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{proxy}{path}"))
            .header("x-consumer-id", consumer)
            .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))
            .expect("valid request");
        let (client, stats) = (client.clone(), stats.clone());
        tokio::spawn(async move {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            let counter = match client.request(request).await {
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => &stats.limited,
                Ok(r) if r.status().is_success() => &stats.ok,
                _ => &stats.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

async fn report(stats: Arc<Stats>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        print_stats(&stats);
    }
}

fn print_stats(stats: &Stats) {
    println!(
        "sent {:>6}  ok {:>6}  429 {:>6}  errors {:>4}",
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.limited.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
}
