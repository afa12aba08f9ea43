//! One connection's side of a [`Hub`](crate::Hub) publish: the budget check, the choice
//! of the frame (shared, or encoded for this connection alone), and a write that never
//! waits.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use sockeye_proto::{CloseFrame, PreparedFrame, Role, State};
use tokio::io::{AsyncRead, AsyncWrite};

use super::pump::{EndHook, Shared};
use super::wakers::Writers;
use crate::hub::{Frames, HubConfig, Outcome, Publication, Subscriber};

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Subscriber for Weak<Shared<S>> {
    fn deliver(
        &self,
        publication: &Publication,
        frames: &mut Frames,
        config: &HubConfig,
    ) -> Outcome {
        match self.upgrade() {
            Some(shared) => shared.deliver(publication, frames, config),
            None => Outcome::Gone,
        }
    }

    fn on_end(&self, hook: EndHook) -> bool {
        self.upgrade().is_some_and(|shared| shared.on_end(hook))
    }
}

/// How a connection takes a published message.
enum Encoding<'a> {
    /// The shared frame: uncompressed, or compressed once for every connection with the
    /// same settings.
    Prepared(&'a PreparedFrame),
    /// Encoded by the connection itself: a client (which masks each frame), or a
    /// compressor that keeps context between messages.
    Own,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    /// Queues a published message under the hub's byte budget, and writes it at once if
    /// the transport takes it without waiting; what it does not take, the task reading the
    /// connection writes.
    fn deliver(
        &self,
        publication: &Publication,
        frames: &mut Frames,
        config: &HubConfig,
    ) -> Outcome {
        let mut inner = self.lock();
        if inner.ended
            || inner.io.is_none()
            || inner.conn.state() != State::Open
            || inner.conn.close_sent()
        {
            return Outcome::Closed;
        }
        if inner.conn.is_mid_message() {
            // The application is streaming a fragmented message on this connection: a
            // whole message cannot go in between (RFC 6455 §5.4).
            return Outcome::Dropped;
        }
        let len = publication.payload.len();
        let encoding = match (inner.conn.role(), inner.conn.deflate()) {
            (Role::Client, _) => Encoding::Own,
            (Role::Server, Some(deflate)) if deflate.should_compress(len) => {
                match deflate.shared() {
                    Some(shared) => Encoding::Prepared(frames.deflated(publication, shared)),
                    None => Encoding::Own,
                }
            }
            (Role::Server, _) => Encoding::Prepared(frames.plain(publication)),
        };
        // A connection with nothing queued always takes the message, whatever its size:
        // the budget bounds what piles up behind a reader that does not keep up.
        let queued = inner.conn.transmit_len();
        let size = match &encoding {
            Encoding::Prepared(frame) => frame.len(),
            Encoding::Own => len,
        };
        if queued > 0 && queued.saturating_add(size) > config.max_buffered {
            let Some(code) = config.over_budget.close_code() else {
                return Outcome::Dropped;
            };
            let slow = CloseFrame::new(code, "subscriber too slow");
            let _ = inner.conn.close(Some(&slow), Instant::now());
            inner.wake_reader();
            return Outcome::CutOff;
        }
        let queued = match encoding {
            Encoding::Prepared(frame) => {
                let inner = &mut *inner;
                let may_write = !Writers::any_waiting(&inner.writers);
                let io = &mut inner.io;
                let mut wrote = false;
                let queued = inner.conn.send_prepared(frame, |frame| match io.as_mut() {
                    Some(io) if may_write => {
                        let n = write_through(io, frame);
                        wrote = n > 0;
                        n
                    }
                    _ => 0,
                });
                if wrote && !flushed(io) {
                    inner.unflushed = true;
                    inner.wake_reader();
                }
                queued
            }
            Encoding::Own => {
                let was_idle = inner.conn.transmit().is_empty();
                let payload = publication.payload.clone();
                let queued = inner.conn.send_bytes(publication.kind, payload, true, true);
                if queued.is_ok() && was_idle && !inner.try_write_now() {
                    // Not all written, or not flushed (TLS): the reader finishes it.
                    inner.unflushed = true;
                    inner.wake_reader();
                }
                queued
            }
        };
        if queued.is_err() {
            // Checked above (open, not mid-message); nothing else refuses a whole
            // message.
            return Outcome::Dropped;
        }
        inner.count_queue();
        if !inner.conn.transmit().is_empty() {
            // The reading task writes the rest.
            inner.wake_reader();
        }
        Outcome::Delivered
    }
}

/// Writes as much of `frame` as the transport takes without waiting: one vectored write
/// of header and payload (only the header, where writes are not vectored).
fn write_through<S: AsyncWrite + Unpin>(io: &mut S, frame: &PreparedFrame) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let written = if io.is_write_vectored() {
        let slices = [IoSlice::new(frame.header()), IoSlice::new(frame.payload())];
        Pin::new(io).poll_write_vectored(&mut cx, &slices)
    } else {
        Pin::new(io).poll_write(&mut cx, frame.header())
    };
    match written {
        Poll::Ready(Ok(n)) => n,
        _ => 0,
    }
}

/// Whether the transport's flush completes without waiting (at once on TCP; TLS may
/// still hold records the socket did not take).
fn flushed<S: AsyncWrite + Unpin>(io: &mut Option<S>) -> bool {
    let Some(io) = io.as_mut() else {
        return true;
    };
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(io).poll_flush(&mut cx), Poll::Ready(Ok(())))
}
