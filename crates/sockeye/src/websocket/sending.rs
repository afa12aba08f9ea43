//! [`Sending`]: the future of a send. Its frame is queued before it is first polled
//! (or, while the send queue is over its high-water mark, held until there is room);
//! the future writes the queue out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use super::pump::{Bounded, Held, Shared};
use crate::error::Error;

/// The future of a send: it completes once the transport has taken the frame (or with
/// the error that refused it). The frame is queued when the send is called, unless the
/// send queue is at its high-water mark and the policy is `WhenFull::Wait`: then the
/// future holds the message and queues it once the queue is below the mark.
#[must_use = "await the future: it writes the frame out, and a send held for room is queued only as it is polled"]
pub struct Sending<'a, S> {
    /// The connection to write out; `None` when the send was written out at once.
    shared: Option<&'a Shared<S>>,
    /// Boxed, as is `held`: the future stays three words, so tasks that await sends
    /// stay small.
    refused: Option<Box<Error>>,
    /// A send waiting for room in the queue.
    held: Option<Box<Held>>,
}

impl<'a, S> Sending<'a, S> {
    /// A frame queued (or refused), for the future to write.
    pub(super) fn new(shared: &'a Shared<S>, queued: Result<(), Error>) -> Self {
        Self::written(shared, queued.map(|()| false))
    }

    /// `queued`: whether the frame was queued, and then whether it is written already.
    pub(super) fn written(shared: &'a Shared<S>, queued: Result<bool, Error>) -> Self {
        match queued {
            Ok(written) => Sending {
                shared: (!written).then_some(shared),
                refused: None,
                held: None,
            },
            Err(error) => Sending {
                shared: Some(shared),
                refused: Some(Box::new(error)),
                held: None,
            },
        }
    }

    /// What [`Shared::send_bounded`] did, for the future to finish.
    pub(super) fn bounded(shared: &'a Shared<S>, bounded: Bounded) -> Self {
        match bounded {
            Bounded::Queued(queued) => Self::written(shared, queued),
            Bounded::Held(held) => Sending {
                shared: Some(shared),
                refused: None,
                held: Some(held),
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Sending<'_, S> {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(error) = this.refused.take() {
            return Poll::Ready(Err(*error));
        }
        let Some(shared) = this.shared else {
            return Poll::Ready(Ok(()));
        };
        if this.held.is_some() {
            match shared.poll_queue_held(&mut this.held, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(true)) => {
                    this.shared = None;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(false)) => {}
            }
        }
        shared.poll_flush(cx)
    }
}

impl<S> std::fmt::Debug for Sending<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending")
            .field("refused", &self.refused)
            .field("held", &self.held.is_some())
            .finish_non_exhaustive()
    }
}
