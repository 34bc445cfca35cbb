//! HTTP/2 (h2c, prior knowledge) to the service, for `upstream_protocol: http2` and, for
//! h2c clients, `match_client`: gRPC services speak nothing else. One connection per
//! worker, multiplexed, driven with the `h2` crate with every setting explicit: the
//! connection on a task of its own, each stream on its request's task (its bodies in
//! [`super::h2body`]), so that a request costs no task and no channel of its own.
//!
//! A connection that the service closed or that went away (GOAWAY) is replaced on the next
//! request; a request that found it closing before it was sent goes on the new one.
//! Connections count towards `circuit_breaker.max_connections` like HTTP/1.1 ones, and
//! follow the service's addresses as [`crate::upstream::resolve`] keeps them.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::Authority;
use http::{Request, Response};
use tokio::time::Instant;

use super::h2body::{keep_alive, send_body, Received, SendFailed};
use super::pool::{Shared, Target};
use super::RequestBody;

/// Settings, with their reasons (docs/config.md, "HTTP/2 to the service"):
/// 256 KiB a stream and 4 MiB a connection of response body in flight: what the service
/// may send ahead of the client reading it (hyper's defaults are 5 MiB each).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Request body bytes h2 queues a stream before it stops taking more from the client.
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
    made: AtomicU64,
    /// Held while a connection is made: the requests that find none wait for that one
    /// rather than each making its own.
    connecting: tokio::sync::Mutex<()>,
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Current {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    closed: Arc<AtomicBool>,
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

    /// Sends `head` and `body` to `to` and reads the response head by `deadline`. A body
    /// still being sent when the head comes goes on, on a task of its own, as the client
    /// sends it (a streaming call); one sent whole by then costs no task.
    pub async fn send(
        &self,
        to: Target<'_>,
        head: Request<()>,
        body: RequestBody,
        deadline: Instant,
    ) -> Result<Response<Received>, Failed> {
        let sent = async {
            let send = loop {
                let (current, fresh) = match self.usable(to.authority) {
                    Some(current) => (current, false),
                    None => {
                        let _connecting = self.connecting.lock().await;
                        match self.usable(to.authority) {
                            Some(made) => (made, false), // by the request that held the lock
                            None => (self.connect(to).await?, true),
                        }
                    }
                };
                match current.send.ready().await {
                    Ok(send) => break send,
                    // Closing, nothing of the request sent: again, on a new connection.
                    Err(_) if !fresh => self.forget(current.id),
                    Err(e) => {
                        self.forget(current.id);
                        return Err(Failed::Io(io::Error::new(io::ErrorKind::ConnectionReset, e)));
                    }
                }
            };
            exchange(send, head, body).await
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(result) => result,
            Err(_) => Err(Failed::Io(io::Error::new(io::ErrorKind::TimedOut, "the service did not answer in time"))),
        }
    }

    /// The connection, if it is open, to `authority`, and to the addresses its name
    /// resolves to now.
    fn usable(&self, authority: &Authority) -> Option<Current> {
        let generation = self.shared.generation();
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| {
                !c.closed.load(Ordering::Acquire)
                    && c.authority.as_str() == authority.as_str()
                    && c.generation == generation
            })
            .cloned()
    }

    /// Forgets connection `id`, found closing: the next request makes another.
    fn forget(&self, id: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }

    /// A new connection to `to`, the worker's from now on.
    async fn connect(&self, to: Target<'_>) -> Result<Current, Failed> {
        let counted = self.shared.connection(to.max_connections, None).ok_or(Failed::Overflow)?;
        let (addresses, generation) = self.shared.destination(to.authority);
        let connect = async {
            let stream = super::conn::dial(to.authority, addresses.as_ref().map(|a| a.addrs.as_slice())).await?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(16 * 1024)
                .max_send_buffer_size(SEND_BUFFER)
                .max_header_list_size(super::h1::MAX_HEAD as u32)
                .enable_push(false)
                .handshake::<_, Bytes>(stream)
                .await
                .map_err(io::Error::other)
        };
        let (send, mut conn) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => return Err(Failed::Io(e)),
            Err(_) => {
                return Err(Failed::Io(io::Error::new(io::ErrorKind::HostUnreachable, "no connection within 5 s")))
            }
        };
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            let pings = conn.ping_pong();
            let mut conn = pin!(conn);
            let ended_by = tokio::select! {
                result = conn.as_mut() => result.err().map(|e| e.to_string()),
                why = keep_alive(pings, PING_INTERVAL) => Some(why.to_string()),
            };
            ended.store(true, Ordering::Release);
            if let Some(why) = ended_by {
                tracing::debug!(error = %why, "HTTP/2 connection to the service ended");
            }
            drop(counted); // its place in the count of connections, for as long as it was open
        });
        let id = self.made.fetch_add(1, Ordering::Relaxed);
        let current = Current { send, closed, authority: to.authority.clone(), generation, id };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
        Ok(current)
    }
}

/// Sends one request on a ready connection and waits for its response head, sending its
/// body meanwhile.
async fn exchange(
    mut send: SendRequest<Bytes>,
    head: Request<()>,
    body: RequestBody,
) -> Result<Response<Received>, Failed> {
    use http_body::Body as _;
    let end = body.is_end_stream();
    let (mut response, stream) = send.send_request(head, end).map_err(|e| Failed::Io(io::Error::other(e)))?;
    let mut answer = None;
    if !end {
        let mut sending = Box::pin(send_body(body, stream));
        let first = poll_fn(|cx| {
            if let Poll::Ready(sent) = sending.as_mut().poll(cx) {
                return Poll::Ready(Err(sent));
            }
            Pin::new(&mut response).poll(cx).map(Ok)
        });
        match first.await {
            // Answered before the body was all sent (a streaming call): the rest goes on.
            Ok(head) => {
                answer = Some(head);
                drop(tokio::spawn(sending));
            }
            // The client's body failed: its own fault when it says which (an HTTP/1.1
            // body that stalled), else it broke off (an HTTP/2 stream reset).
            Err(Err(SendFailed::Client(e))) => {
                let e = if super::conn::client_fault(&e).is_some() { e } else { super::conn::client_broke() };
                return Err(Failed::Io(e));
            }
            Err(Ok(()) | Err(SendFailed::Service)) => {} // the answer says the rest
        }
    }
    let response = match answer {
        Some(head) => head,
        None => response.await,
    };
    let response = response.map_err(|e| Failed::Io(io::Error::other(e)))?;
    let (parts, stream) = response.into_parts();
    let body = Received::new(stream, &parts.headers);
    Ok(Response::from_parts(parts, body))
}
