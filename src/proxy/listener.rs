//! Accepting connections and serving HTTP/1.1 and h2c (prior knowledge) on them, with the
//! bounds hyper does not set by itself, and the phases of a drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Proxy, Tracker};
use crate::config::Limits;
use crate::snapshot::Live;

/// Where a drain stands. Connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new connections; HTTP/1 responses carry `Connection: close`; HTTP/2 gets GOAWAY.
    Draining,
    /// In-flight requests are done (or the deadline passed): close what is left.
    Closing,
}

/// Accepts until the phase leaves `Serving`, then returns once every connection is closed.
pub async fn serve(listener: TcpListener, proxy: Proxy, live: Arc<Live>, phase: watch::Receiver<Phase>) {
    let connections = Arc::new(Tracker::default());
    let mut stop = phase.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let limits = live.load().config.limits.clone();
                    let open = connections.enter();
                    let (proxy, phase) = (proxy.clone(), phase.clone());
                    tokio::spawn(async move {
                        connection(stream, peer, proxy, limits, phase).await;
                        drop(open);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { drop(stop.wait_for(|p| *p != Phase::Serving).await) } => break,
        }
    }
    drop(listener);
    connections.idle().await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Proxy,
    limits: Limits,
    mut phase: watch::Receiver<Phase>,
) {
    let _ = stream.set_nodelay(true);
    // hyper sets no timeout before it knows the protocol: a client that connects and
    // sends nothing would hold this task forever.
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }

    let http2 = Arc::new(AtomicBool::new(false));
    let seen_http2 = http2.clone();
    let service = service_fn(move |req| {
        if req.version() == http::Version::HTTP_2 {
            seen_http2.store(true, Ordering::Relaxed);
        }
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new()) // without a timer hyper drops the header timeout
        .header_read_timeout(limits.header_read_timeout) // also the keep-alive idle timeout
        .max_buf_size(limits.max_header_bytes); // a larger head gets 431
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed(), if !shutting_down => {
                let now = if changed.is_ok() { *phase.borrow() } else { Phase::Closing };
                // HTTP/1 connections close themselves after a `Connection: close`
                // response; closing an idle one now would race the client's next request.
                if now == Phase::Closing || (now == Phase::Draining && http2.load(Ordering::Relaxed)) {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}
