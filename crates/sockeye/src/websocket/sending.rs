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
    /// What is not the common case, boxed: the future stays two words, so tasks that
    /// await sends stay small, and dropping it checks one word.
    rare: Option<Box<Rare>>,
}

/// A send refused at once, or held for room in the queue.
enum Rare {
    Refused(Error),
    Held(Option<Box<Held>>),
}

impl<'a, S> Sending<'a, S> {
    /// A frame queued (or refused), for the future to write.
    pub(super) fn new(shared: &'a Shared<S>, queued: Result<(), Error>) -> Self {
        Self::written(shared, queued.map(|()| false))
    }

    /// `queued`: whether the frame was queued, and then whether it is written already.
    #[inline]
    pub(super) fn written(shared: &'a Shared<S>, queued: Result<bool, Error>) -> Self {
        match queued {
            Ok(written) => Sending {
                shared: (!written).then_some(shared),
                rare: None,
            },
            Err(error) => Sending {
                shared: Some(shared),
                rare: Some(Box::new(Rare::Refused(error))),
            },
        }
    }

    /// What [`Shared::send_bounded`] did, for the future to finish.
    #[inline]
    pub(super) fn bounded(shared: &'a Shared<S>, bounded: Bounded) -> Self {
        match bounded {
            Bounded::Queued(queued) => Self::written(shared, queued),
            Bounded::Held(held) => Sending {
                shared: Some(shared),
                rare: Some(Box::new(Rare::Held(Some(held)))),
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Sending<'_, S> {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(shared) = this.shared else {
            return Poll::Ready(Ok(()));
        };
        if let Some(rare) = this.rare.as_deref_mut() {
            match rare {
                Rare::Refused(_) => {
                    let Some(Rare::Refused(error)) = this.rare.take().map(|rare| *rare) else {
                        unreachable!("matched above")
                    };
                    this.shared = None;
                    return Poll::Ready(Err(error));
                }
                Rare::Held(held) => match shared.poll_queue_held(held, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => {
                        this.rare = None;
                        match result {
                            Err(e) => {
                                this.shared = None;
                                return Poll::Ready(Err(e));
                            }
                            Ok(true) => {
                                this.shared = None;
                                return Poll::Ready(Ok(()));
                            }
                            Ok(false) => {}
                        }
                    }
                },
            }
        }
        shared.poll_flush(cx)
    }
}

impl<S> std::fmt::Debug for Sending<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Sending");
        match self.rare.as_deref() {
            Some(Rare::Refused(error)) => debug.field("refused", error),
            Some(Rare::Held(_)) => debug.field("held", &true),
            None => &mut debug,
        };
        debug.finish_non_exhaustive()
    }
}
