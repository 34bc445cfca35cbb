//! Test support: a real upstream and the real sluice on 127.0.0.1:0, and clients.
#![allow(dead_code)]

pub mod redis;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP server standing in for the service. What it does depends on the path:
/// - `/stream?chunks=N&ms=M`: N chunks, M ms apart
/// - `/echo-body`: streams the request body back as it arrives
/// - `/sink`: reads the body and answers with its length (nothing recorded)
/// - `/upgrade`: 101, then echoes bytes on the upgraded connection
/// - anything else: records the request; `?status=N` and `?delay=MS` shape the answer
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Self {
            addr,
            seen: Default::default(),
            in_flight: Default::default(),
            hits: Default::default(),
            connections: Default::default(),
        };
        let (seen, in_flight, hits) = (upstream.seen.clone(), upstream.in_flight.clone(), upstream.hits.clone());
        let connections = upstream.connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let (seen, in_flight, hits) = (seen.clone(), in_flight.clone(), hits.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (seen, in_flight, hits) = (seen.clone(), in_flight.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            let response = answer(req, seen).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }
}

/// Streams of `/big` that their reader left before the end.
pub static BIG_STREAMS_CUT: AtomicU64 = AtomicU64::new(0);

fn query(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

async fn answer(mut req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Response<Body> {
    match req.uri().path() {
        "/stream" => {
            let (chunks, ms) = (query(&req, "chunks").unwrap_or(3), query(&req, "ms").unwrap_or(100));
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                for i in 0..chunks {
                    if tx.send_data(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            });
            Response::new(body.map_err(|e| match e {}).boxed())
        }
        "/big" => {
            // `mb` MiB in 64 KiB chunks, as fast as they are taken; counts in
            // BIG_STREAMS_CUT a stream whose reader went away before its end.
            let mb = query(&req, "mb").unwrap_or(1);
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..mb * 16 {
                    if tx.send_data(chunk.clone()).await.is_err() {
                        BIG_STREAMS_CUT.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-length", (mb * 1024 * 1024).to_string())
                .body(body.map_err(|e| match e {}).boxed())
                .unwrap()
        }
        "/echo-body" => Response::new(req.into_body().map_err(Into::into).boxed()),
        "/sink" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len() as u64;
                }
            }
            Response::new(full(total.to_string()))
        }
        "/upgrade" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(empty())
                .unwrap()
        }
        _ => {
            let status = query(&req, "status").unwrap_or(200) as u16;
            let delay = query(&req, "delay").unwrap_or(0);
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            seen.lock().unwrap().push(Seen {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
            });
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Response::builder()
                .status(status)
                .header("x-upstream", "yes")
                .header("connection", "x-upstream-private")
                .header("x-upstream-private", "secret")
                .header("keep-alive", "timeout=5")
                .body(full("hello from upstream"))
                .unwrap()
        }
    }
}

/// Writes a config whose `upstream` and `listen` point at the test's servers, with a state
/// directory of its own. `rest` may continue the `admin:` block.
pub fn config_text(upstream: SocketAddr, rest: &str) -> String {
    let state = temp_dir("state");
    format!(
        "service: test\nlisten: 127.0.0.1:0\nupstream: http://{upstream}\nadmin:\n  listen: 127.0.0.1:0\n  state_dir: {}\n{rest}",
        state.display()
    )
}

/// The real sluice, in this process.
pub struct Sluice {
    pub addr: SocketAddr,
    pub running: Option<sluice::server::Running>,
}

impl Sluice {
    pub async fn start(upstream: &Upstream, rest: &str) -> Self {
        Self::start_before(upstream.addr, rest).await
    }

    /// In front of the service at `service`.
    pub async fn start_before(service: SocketAddr, rest: &str) -> Self {
        let config = sluice::config::parse(&config_text(service, rest)).expect("valid test config");
        let running = sluice::server::start(config, None).await.unwrap();
        Self { addr: running.proxy_addr(), running: Some(running) }
    }

    /// With a config file that is watched, as `sluice run` does.
    pub async fn start_with_file(path: PathBuf) -> Self {
        let config = sluice::config::load(&path).expect("valid test config");
        let running = sluice::server::start(config, Some(path)).await.unwrap();
        Self { addr: running.proxy_addr(), running: Some(running) }
    }

    pub fn running(&self) -> &sluice::server::Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().admin_addr())
    }

    /// `GET path` on the admin listener with `token`: the JSON body of a 200.
    pub async fn admin_json(&self, path: &str, token: &str) -> serde_json::Value {
        admin_json(self.admin_url(path), token).await
    }

    /// `GET /metrics` on the admin listener, as Prometheus scrapes it.
    pub async fn scrape(&self) -> Metrics {
        let (response, body) = get(&client(), &self.admin_url("/metrics")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        Metrics(String::from_utf8(body.to_vec()).unwrap())
    }
}

/// A scraped exposition.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name{labels}`, labels written as in the exposition
    /// (`route="a",sli="latency"`) in any order; `None` when there is no such sample.
    pub fn get(&self, name: &str, labels: &str) -> Option<f64> {
        let mut wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        wanted.sort_unstable();
        self.0.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, have) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let mut have: Vec<&str> = have.split(',').filter(|l| !l.is_empty()).collect();
            have.sort_unstable();
            (n == name && have == wanted).then(|| value.parse().unwrap())
        })
    }

    /// Like [`Metrics::get`], failing the test when the sample is missing.
    pub fn value(&self, name: &str, labels: &str) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{}", self.0))
    }
}

pub type Client = HyperClient<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> Client {
    HyperClient::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client {
    HyperClient::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub async fn get(client: &Client, url: &str) -> (Response<()>, Bytes) {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

pub async fn send(client: &Client, req: Request<Body>) -> (Response<()>, Bytes) {
    let response = client.request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), bytes)
}

/// One HTTP/1.1 connection to `addr`, kept: every request sent on it goes on the same
/// connection (a pooled client may open another while the first is still being put back).
pub struct Connection(hyper::client::conn::http1::SendRequest<Body>);

impl Connection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self(sender)
    }

    /// Whether the connection has been closed (by sluice, say).
    pub fn closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Sends `method path` with a Host header; returns the status and the whole body.
    pub async fn send(&mut self, method: http::Method, path: &str) -> (StatusCode, Bytes) {
        self.0.ready().await.expect("the connection is open");
        let req = Request::builder().method(method).uri(path).header("host", "test").body(empty()).unwrap();
        let response = self.0.send_request(req).await.expect("response");
        let status = response.status();
        (status, response.into_body().collect().await.expect("body").to_bytes())
    }
}

/// One h2c (prior knowledge) connection to `addr`: its sender, and its task, which ends
/// when the connection does.
pub async fn h2_connection(
    addr: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Body>, tokio::task::JoinHandle<hyper::Result<()>>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("an h2c handshake");
    (sender, tokio::spawn(connection))
}

/// A service that answers in raw bytes, as a broken or unusual one might: for each
/// request head it reads (it never reads a body), `answer(path)` gives the bytes to write
/// and whether to close the connection after them. It counts the connections it accepts
/// and keeps the request lines it read.
pub struct Scripted {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub request_lines: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    pub async fn start(answer: fn(&str) -> (&'static [u8], bool)) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let request_lines = Arc::new(Mutex::new(Vec::new()));
        let (counter, lines) = (connections.clone(), request_lines.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let lines = lines.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let line = head.lines().next().unwrap_or("").to_owned();
                            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                            lines.lock().unwrap().push(line);
                            let (bytes, close) = answer(&path);
                            if stream.write_all(bytes).await.is_err() || close {
                                return;
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self { addr, connections, request_lines }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it or
/// `wait` passes; returns everything read.
pub fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `condition` until it holds; fails the test if it still does not after `within`.
pub async fn eventually(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The sluice binary, started on a config file; its proxy and admin addresses are read from
/// its log.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The process serving now: the child, or the last one a binary upgrade started.
    pid: std::sync::atomic::AtomicU32,
    /// Its log lines, and those of the processes it started by binary upgrades (they write
    /// to the same stderr): its own, not those of another test's processes.
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(config: &std::path::Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(["--log-format", "json", "run", "--config"]).arg(config);
        Self::spawn_command(command)
    }

    /// `command` runs sluice (`--log-format json run ...`), perhaps through another program.
    pub fn spawn_command(mut command: Command) -> Self {
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let fields = &json["fields"];
                if let (Some(proxy), Some(admin)) = (fields["proxy_addr"].as_str(), fields["admin_addr"].as_str()) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((proxy.parse::<SocketAddr>().unwrap(), admin.parse::<SocketAddr>().unwrap()));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (addr, admin) = rx.recv_timeout(Duration::from_secs(10)).expect("sluice started");
        let pid = child.id().into();
        Self { child, addr, admin, pid, log }
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Its log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many log lines it wrote so far: a mark for [`Process::logged`].
    pub fn log_mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits up to `within` for a JSON log line after `mark` whose message is `message`;
    /// its fields.
    pub async fn logged(&self, mark: usize, message: &str, within: Duration) -> serde_json::Value {
        let mut found = None;
        eventually(&format!("the log line {message:?}"), within, async || {
            found = self.log_after(mark, message).into_iter().next();
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// The `fields` of its JSON log lines from the `seen`th on whose message is `message`.
    pub fn log_after(&self, seen: usize, message: &str) -> Vec<serde_json::Value> {
        self.log.lock().unwrap()[seen..]
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|json| json["fields"]["message"] == message)
            .map(|json| json["fields"].clone())
            .collect()
    }

    /// Sends SIGUSR2 and waits for the new process to take over; then signals go to it.
    /// Its pid.
    pub async fn upgrade(&self) -> u32 {
        let old = self.pid();
        let seen = self.log_mark();
        self.signal("USR2");
        let mut new = None;
        eventually("the new process to take over", Duration::from_secs(10), async || {
            new = self
                .log_after(seen, "upgrade: this process took over")
                .into_iter()
                .find(|fields| fields["from"].as_u64() == Some(u64::from(old)))
                .and_then(|fields| fields["pid"].as_u64());
            new.is_some()
        })
        .await;
        let new = new.unwrap() as u32;
        self.pid.store(new, std::sync::atomic::Ordering::Relaxed);
        new
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `GET path` on the admin listener with `token`: the JSON body of a 200.
    pub async fn admin_json(&self, path: &str, token: &str) -> serde_json::Value {
        admin_json(self.admin_url(path), token).await
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process serving now to exit; its exit code (0 for one that a binary
    /// upgrade started: not this process's child, its code cannot be read).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.pid() != self.child.id() {
                if !alive(self.pid()) {
                    return Some(0);
                }
            } else if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.pid() != self.child.id() && alive(self.pid()) {
            let _ = Command::new("kill").arg("-KILL").arg(self.pid().to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` runs (neither gone nor a zombie waiting for its parent).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// `GET url` of an admin listener with `token`: the JSON body of a 200.
pub async fn admin_json(url: String, token: &str) -> serde_json::Value {
    let req = Request::get(&url).header("authorization", format!("Bearer {token}"));
    let (response, body) = send(&client(), req.body(empty()).unwrap()).await;
    assert_eq!(response.status(), 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}
