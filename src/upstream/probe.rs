//! The active health check's I/O: a `GET` of `health_check.path` on a connection of its
//! own every `interval`, answered 2xx or 3xx within `timeout` to pass; and, every
//! [`TICK`], the changes of [`Health`] turned into a log line, an event and the
//! `sluice_upstream_healthy` gauge.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Change, HealthCheck};
use crate::events::{Event, Events};
use crate::snapshot::Live;

/// How often changes are published, and an ejection's end looked for.
pub const TICK: Duration = Duration::from_millis(250);

/// Runs until the task is dropped.
pub async fn run(live: Arc<Live>, events: Events) {
    let mut next_probe = tokio::time::Instant::now();
    loop {
        let snapshot = live.load();
        let check = snapshot.config.health_check.as_ref();
        match check {
            Some(check) if tokio::time::Instant::now() >= next_probe => {
                next_probe = tokio::time::Instant::now() + check.interval;
                let h2 = snapshot.config.upstream_protocol == crate::config::UpstreamProtocol::Http2;
                let result = probe(snapshot.config.upstream.as_str(), check, h2).await;
                if let Err(why) = &result {
                    tracing::debug!(%why, "health check failed");
                }
                live.health.probed(result, check, live.clock());
            }
            Some(_) => {}
            None => live.health.tick(false, live.clock()),
        }
        publish(&live, &events, &snapshot.config.service);
        let wake = tokio::time::Instant::now() + TICK;
        tokio::time::sleep_until(if check.is_some() { wake.min(next_probe) } else { wake }).await;
    }
}

/// One check of the service at `authority`, over HTTP/2 (h2c) when `h2` (an
/// `upstream_protocol: http2` service), else HTTP/1.1: `Ok` for a 2xx or 3xx within the
/// timeout.
pub async fn probe(authority: &str, check: &HealthCheck, h2: bool) -> Result<(), String> {
    let status = async {
        if h2 {
            status_h2(authority, &check.path).await
        } else {
            status_h1(authority, &check.path).await
        }
    };
    match tokio::time::timeout(check.timeout, status).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("answered {code}")),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// The status of `GET path` over HTTP/1.1, on a connection of its own.
async fn status_h1(authority: &str, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(authority).await.map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sluice-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    // The status line is all a check reads.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        match stream.read(&mut buf).await {
            Ok(0) => return Err("closed before a status line".to_string()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..head.iter().position(|&b| b == b'\n').unwrap_or(head.len())])
        .trim_end()
        .to_string();
    line.split(' ').nth(1).and_then(|code| code.parse::<u16>().ok()).ok_or(format!("not an HTTP status line: {line:?}"))
}

/// The status of `GET path` over h2c, on a connection of its own.
async fn status_h2(authority: &str, path: &str) -> Result<u16, String> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let stream = TcpStream::connect(authority).await.map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{authority}{path}"))
        .header(http::header::USER_AGENT, "sluice-health-check")
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let answered = send.send_request(request).await.map_err(|e| format!("HTTP/2 request: {e}"));
    conn.abort(); // the connection is the check's alone
    Ok(answered?.status().as_u16())
}

/// Logs each change of `health`, sends its event and sets the gauge.
fn publish(live: &Live, events: &Events, service: &str) {
    let health = &live.health;
    for change in health.take_changes() {
        let event = match &change {
            Change::Unhealthy(cause) => {
                tracing::warn!(%cause, "the service is unhealthy: requests get 503 and /readyz answers 503");
                Event::new("upstream_unhealthy", json!({ "service": service, "cause": cause.to_string() }))
            }
            Change::Healthy => {
                tracing::info!("the service is healthy again");
                Event::new("upstream_healthy", json!({ "service": service }))
            }
        };
        events.send(event);
    }
    live.metrics.upstream_healthy.set(i64::from(health.healthy()));
}
