//! [`Sending`]: the future of a send, which has its frame queued before it is first
//! polled and only writes the queue out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use super::pump::Shared;
use crate::error::Error;

/// The future of a send: the frame is queued already; it completes once the transport
/// has taken it (or with the error that refused it).
#[must_use = "the frame is queued; await the future to learn that it was written"]
pub struct Sending<'a, S> {
    /// The connection to write out; `None` when the send was written out at once.
    shared: Option<&'a Shared<S>>,
    /// Boxed: the future stays two words, so tasks that await sends stay small.
    refused: Option<Box<Error>>,
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
            },
            Err(error) => Sending {
                shared: Some(shared),
                refused: Some(Box::new(error)),
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Sending<'_, S> {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(error) = self.refused.take() {
            return Poll::Ready(Err(*error));
        }
        match self.shared {
            Some(shared) => shared.poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<S> std::fmt::Debug for Sending<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}
