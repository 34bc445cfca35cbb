//! HTTP/2 (h2c, prior knowledge) to the service, for `upstream_protocol: http2` and, for
//! h2c clients, `match_client`: gRPC services speak nothing else. One connection per
//! worker, multiplexed, made by hyper's client with every setting explicit; streams run on
//! the connection's own task (hyper's), bodies and trailers stream both ways as they come.
//!
//! A connection that the service closed or that went away (GOAWAY) is replaced on the next
//! request; a request the closing connection never took (hyper hands it back) goes on the
//! new one. Connections count towards `circuit_breaker.max_connections` like HTTP/1.1
//! ones, and follow the service's addresses as [`crate::upstream::resolve`] keeps them.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::pool::{Shared, Target};
use super::RequestBody;
use crate::upstream::resolve;

/// Settings, with their reasons (docs/config.md, "HTTP/2 to the service"):
/// 256 KiB a stream and 4 MiB a connection of response body in flight: what the service
/// may send ahead of the client reading it (hyper's defaults are 5 MiB each).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Request body bytes hyper queues a stream before it stops taking more from the client.
const SEND_BUFFER: usize = 64 * 1024;
/// A PING every 20 s, idle or not, and the connection closed when one is not answered
/// within 20 s: a service that went away without a FIN is noticed.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// The bound of connecting and of the HTTP/2 handshake, as for HTTP/1.1.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's connection to the service.
pub struct H2Pool {
    current: Mutex<Option<Current>>,
    /// Connections made so far.
    made: std::sync::atomic::AtomicU64,
    /// Held while a connection is made: the requests that find none wait for that one
    /// rather than each making its own.
    connecting: tokio::sync::Mutex<()>,
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Current {
    send: SendRequest<RequestBody>,
    authority: Authority,
    generation: u32,
    /// Which of the worker's connections it is, so that a request forgets only the one it
    /// found closed.
    id: u64,
}

/// A request that got no response head.
pub enum Failed {
    /// `circuit_breaker.max_connections` are open, and no pool has an idle one to close.
    Overflow,
    /// No connection (nothing of the request left sluice), or the deadline passed
    /// (`TimedOut`), or the request or its body failed: the error says which.
    Io(io::Error),
}

impl H2Pool {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { current: Mutex::new(None), made: Default::default(), connecting: tokio::sync::Mutex::new(()), shared }
    }

    /// Sends `req` to `to` and reads the response head by `deadline`.
    pub async fn send(
        &self,
        to: Target<'_>,
        mut req: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, Failed> {
        let sent = async {
            loop {
                let ((mut send, id), fresh) = match self.usable(to.authority) {
                    Some(current) => (current, false),
                    None => {
                        let _connecting = self.connecting.lock().await;
                        match self.usable(to.authority) {
                            Some(made) => (made, false), // by the request that held the lock
                            None => (self.connect(to).await?, true),
                        }
                    }
                };
                if send.ready().await.is_err() {
                    self.forget(id);
                    if fresh {
                        return Err(Failed::Io(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "the service closed the connection",
                        )));
                    }
                    continue;
                }
                match send.try_send_request(req).await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match e.take_message() {
                        // Never sent: the connection was closing. Again, on a new one.
                        Some(back) if !fresh => {
                            self.forget(id);
                            req = back;
                        }
                        _ => return Err(Failed::Io(sent_error(e.into_error()))),
                    },
                }
            }
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(result) => result,
            Err(_) => Err(Failed::Io(io::Error::new(io::ErrorKind::TimedOut, "the service did not answer in time"))),
        }
    }

    /// The connection, if it is open, to `authority`, and to the addresses its name
    /// resolves to now.
    fn usable(&self, authority: &Authority) -> Option<(SendRequest<RequestBody>, u64)> {
        let generation = self.shared.generation();
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| !c.send.is_closed() && c.authority.as_str() == authority.as_str() && c.generation == generation)
            .map(|c| (c.send.clone(), c.id))
    }

    /// Forgets connection `id`, found closing: the next request makes another.
    fn forget(&self, id: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }

    /// A new connection to `to`, the worker's from now on.
    async fn connect(&self, to: Target<'_>) -> Result<(SendRequest<RequestBody>, u64), Failed> {
        let counted = self.shared.connection(to.max_connections, None).ok_or(Failed::Overflow)?;
        let generation = self.shared.generation();
        let addresses = self.shared.addresses(to.authority);
        let connect = async {
            let stream = match &addresses {
                Some(addresses) => TcpStream::connect(addresses.addrs.as_slice()).await?,
                None => TcpStream::connect(resolve::host_port(to.authority)).await?,
            };
            stream.set_nodelay(true)?;
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new()) // without a timer the keep-alive pings panic
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(16 * 1024)
                .max_send_buf_size(SEND_BUFFER)
                .max_header_list_size(super::h1::MAX_HEAD as u32)
                .keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_INTERVAL)
                .keep_alive_while_idle(true)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>((send, conn))
        };
        let (send, conn) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => return Err(Failed::Io(e)),
            Err(_) => {
                return Err(Failed::Io(io::Error::new(io::ErrorKind::HostUnreachable, "no connection within 5 s")))
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection to the service ended");
            }
            drop(counted); // its place in the count of connections, for as long as it was open
        });
        let generation = addresses.as_ref().map_or(generation, |a| a.generation);
        let id = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let current = Current { send: send.clone(), authority: to.authority.clone(), generation, id };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(current);
        Ok((send, id))
    }
}

/// A request that failed once sent: the client's fault when its body failed (hyper's
/// "user" errors: sluice's request heads are valid by construction), else the service's.
fn sent_error(e: hyper::Error) -> io::Error {
    if e.is_user() {
        super::conn::client_broke()
    } else {
        io::Error::other(e)
    }
}
