//! The response body sluice sends: a small local body, or the upstream's body streamed
//! through with the request's [`Guard`], which ends when the last byte is sent or the
//! client goes away.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::quota::Permit;

pub enum ProxyBody {
    Local(Option<Bytes>),
    Upstream { body: Incoming, guard: Option<Guard> },
}

impl ProxyBody {
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        Self::Local(Some(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream { body, guard } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    // The end, or the upstream failed: the request is over either way.
                    guard.take();
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Local(bytes) => bytes.is_none(),
            Self::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Local(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// Everything a request holds until it is over: its concurrency slots and its place in
/// the in-flight count that a drain waits for.
pub struct Guard {
    pub permits: [Option<Permit>; 2],
    pub _in_flight: InFlight,
}

/// Counts requests in flight, so a drain knows when they are done.
#[derive(Default)]
pub struct Tracker {
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct InFlight(Arc<Tracker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
