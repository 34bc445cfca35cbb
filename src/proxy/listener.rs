//! Accepting connections and serving them: HTTP/1.1 with [`front`], h2c (prior
//! knowledge) with hyper, told apart by the connection's first bytes; and the phases of a
//! drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{front, h2c, pool, Peer, Proxy, Tracker};
use crate::config::Limits;
use crate::metrics::Open;
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

/// Starts the data plane on `listener`: `workers` threads, each a current_thread runtime
/// (measured against one multi-thread runtime in BENCHMARKS.md). The first thread also
/// accepts, and deals the connections out to the workers in turn; a connection stays on its
/// worker, with its requests and that worker's own pool of upstream connections, so a
/// request never changes thread. Every worker stops accepting once the phase leaves
/// `Serving` (or its sender is dropped) and ends when its connections are closed; the
/// returned tracker goes idle when every worker has ended.
pub fn start(
    listener: std::net::TcpListener,
    workers: usize,
    live: Arc<Live>,
    requests: Arc<Tracker>,
    phase: watch::Receiver<Phase>,
) -> std::io::Result<Arc<Tracker>> {
    let running = Arc::new(Tracker::default());
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
    let mut listener = Some((listener, senders));
    let pools = pool::Shared::new(live.breaker.clone(), live.resolver.clone());
    for (i, incoming) in receivers.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (live, requests, phase, accept) = (live.clone(), requests.clone(), phase.clone(), listener.take());
        let pools = pools.clone();
        let alive = running.enter();
        std::thread::Builder::new().name(format!("sluice-worker-{i}")).spawn(move || {
            runtime.block_on(async move {
                if let Some((listener, workers)) = accept {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => drop(tokio::spawn(deal(listener, workers, live.clone(), phase.clone()))),
                        Err(e) => tracing::error!(error = %e, "cannot serve the listener"),
                    }
                }
                serve(incoming, Proxy::new(live.clone(), requests, pools), live, phase).await;
            });
            // The runtime goes first: the accepting task, and with it the listener, may
            // not have run since the phase changed.
            drop(runtime);
            drop(alive);
        })?;
    }
    Ok(running)
}

type Accepted = (std::net::TcpStream, SocketAddr, Open);

/// Accepts until the phase leaves `Serving`, handing each connection to the next worker.
/// Past `limits.max_connections` open at once, a new connection is closed as soon as it is
/// accepted (counted), so that the connections already open carry on.
async fn deal(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    live: Arc<Live>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut next = 0;
    let open = live.metrics.connections.with_label_values(&["proxy"]);
    let refused = live.metrics.connections_refused.with_label_values(&["max_connections"]);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted.and_then(|(stream, peer)| Ok((stream.into_std()?, peer))) {
                Ok((stream, peer)) => {
                    if open.get() >= live.load().config.limits.max_connections as i64 {
                        refused.inc();
                        drop(stream);
                        continue;
                    }
                    let _ = workers[next].send((stream, peer, Open::new(&open)));
                    next = (next + 1) % workers.len();
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut phase) => break,
        }
    }
}

/// Resolves when the phase leaves `Serving` or nobody can change it any more.
async fn stopped(phase: &mut watch::Receiver<Phase>) {
    drop(phase.wait_for(|p| *p != Phase::Serving).await);
}

/// One worker: serves the connections dealt to it until the dealer stops (the phase left
/// `Serving`), the ones dealt just before it stopped included (dropped, they were reset:
/// a client's failure at every drain and upgrade), then returns once every one of them is
/// closed.
async fn serve(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    proxy: Proxy,
    live: Arc<Live>,
    phase: watch::Receiver<Phase>,
) {
    let connections = Arc::new(Tracker::default());
    while let Some((stream, peer, counted)) = incoming.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a connection");
                continue;
            }
        };
        let limits = live.load().config.limits.clone();
        let open = connections.enter();
        let (proxy, phase) = (proxy.clone(), phase.clone());
        tokio::spawn(async move {
            connection(stream, peer, proxy, limits, phase).await;
            drop((open, counted));
        });
    }
    connections.idle().await;
}

/// The most response bytes the kernel keeps for a client without sending them
/// (`TCP_NOTSENT_LOWAT`): the socket takes more only below it. Bytes in flight are not
/// counted, so a fast client's throughput is untouched (bulk downloads cost the same CPU);
/// a client that opens no window makes the kernel hold this and one write for it, where
/// the socket's own buffer grew to 2.7 MiB each under the slow-read flood and the
/// machine's TCP memory ran short for every connection (BENCHMARKS.md, "Issue 20").
const NOTSENT_LOWAT: u32 = 512 * 1024;

/// What an HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxy: Proxy,
    limits: Limits,
    phase: watch::Receiver<Phase>,
) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    // Nothing is allocated for the connection until it sends something; what it sends
    // first tells HTTP/2 from HTTP/1.
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    if !matches!(tokio::time::timeout_at(deadline, stream.readable()).await, Ok(Ok(()))) {
        return;
    }
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, front::read(&mut stream, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        if !(buf.len() < PREFACE.len() && PREFACE.starts_with(&buf)) {
            break;
        }
    }
    let peer = Peer::new(peer);
    if buf.starts_with(PREFACE) {
        h2c::serve(h2c::Rewind::new(buf.freeze(), stream), peer, proxy, limits, phase).await;
    } else {
        front::serve(stream, buf, peer, proxy, limits, phase).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Every worker serves the connections dealt to it, and all of them end once the phase
    /// can no longer change. The service is unreachable, so each request gets a 502.
    #[tokio::test]
    async fn workers_share_the_connections_and_end_together() {
        let config = crate::config::parse("service: t\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\n").unwrap();
        let live = Live::new(config, Arc::new(crate::metrics::Metrics::new()));
        // 127.0.0.2: the other tests bind 127.0.0.1, and one of them may be given this
        // port once it is free, which would make the closed listener look open.
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (phase, watching) = watch::channel(Phase::Serving);
        let workers = start(listener, 3, live, Arc::new(Tracker::default()), watching).unwrap();
        assert_eq!(workers.in_flight(), 3);

        let statuses = tokio::task::spawn_blocking(move || {
            (0..6)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
                    let mut response = String::new();
                    s.read_to_string(&mut response).unwrap();
                    response.lines().next().unwrap_or_default().to_owned()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(statuses.iter().all(|s| s == "HTTP/1.1 502 Bad Gateway"), "{statuses:?}");

        drop(phase);
        tokio::time::timeout(Duration::from_secs(5), workers.idle()).await.expect("every worker ends");
        assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
    }
}
