//! Request bodies sent upstream, built so that a request whose connection could not be
//! made can be sent again to another endpoint with its body intact.
//!
//! The client's body is parked in a shared slot; an attempt only takes it out when the
//! upstream connection polls the first frame, which happens after the connection is
//! established. If connecting fails, the attempt is dropped without having polled and
//! the body is still in the slot for the next attempt. Once taken, it is never put back:
//! a request that was (even partly) sent is not retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The client's request body, shared between forwarding attempts.
pub struct RetryableBody(Option<Arc<Mutex<Option<Incoming>>>>);

impl RetryableBody {
    /// Wraps a client body. Bodies already at their end (most GETs) need no slot.
    pub fn new(body: Incoming) -> Self {
        if body.is_end_stream() {
            RetryableBody(None)
        } else {
            RetryableBody(Some(Arc::new(Mutex::new(Some(body)))))
        }
    }

    /// A body for the next attempt, or `None` if an earlier attempt already started
    /// sending the body, so the request must not be sent again.
    pub fn attempt(&self) -> Option<UpstreamBody> {
        match &self.0 {
            None => Some(UpstreamBody::Empty),
            Some(slot) => {
                let parked = slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some();
                parked.then(|| UpstreamBody::Parked(slot.clone()))
            }
        }
    }
}

/// The body of one forwarding attempt.
pub enum UpstreamBody {
    Empty,
    /// Not yet polled: the client body is still in the shared slot.
    Parked(Arc<Mutex<Option<Incoming>>>),
    /// Taken out of the slot and streaming.
    Streaming(Incoming),
}

impl UpstreamBody {
    fn with_parked<T>(slot: &Mutex<Option<Incoming>>, f: impl FnOnce(&Incoming) -> T) -> Option<T> {
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let UpstreamBody::Parked(slot) = this {
            let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            *this = match taken {
                Some(body) => UpstreamBody::Streaming(body),
                // Unreachable through `RetryableBody::attempt`, which only hands out
                // parked bodies while the slot is full; ending is the safe answer.
                None => UpstreamBody::Empty,
            };
        }
        match this {
            UpstreamBody::Streaming(body) => Pin::new(body).poll_frame(cx),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Parked(slot) => {
                Self::with_parked(slot, Body::is_end_stream).unwrap_or(true)
            }
            UpstreamBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Parked(slot) => {
                Self::with_parked(slot, Body::size_hint).unwrap_or_else(|| SizeHint::with_exact(0))
            }
            UpstreamBody::Streaming(body) => body.size_hint(),
        }
    }
}
