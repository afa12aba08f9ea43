//! The pump: drives the transport against the protocol core. The connection's state
//! ([`Shared`], one lock around the [`Connection`] and the transport) is polled directly
//! by whichever task reads or writes; reading writes what is queued, answers pings,
//! runs the close handshake and the timers, and reports how the connection ended.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use sockeye_proto::{CloseCode, CloseFrame, Connection, DataKind, Message, State, WhenFull};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use super::wakers::Writers;
use super::{read_pool, write_pool};
use super::{Info, ReadyState, TrySend};
use crate::error::{CloseInfo, Error};
use crate::metrics;

/// At most this many slices per vectored write.
const MAX_WRITE_SLICES: usize = 32;

/// The largest single reservation for a frame's payload.
const MAX_READ_RESERVE: usize = 4 * 1024 * 1024;

/// Room reserved past the end of the frame in progress. The read that completes a
/// large frame then comes back shorter than the buffer, which tells tokio that the
/// socket is drained (it clears the readiness on a short read). Filled exactly, the
/// next read, after the reply, costs a system call that finds nothing (`EAGAIN`): one
/// more per large message.
const READ_SLACK: usize = 4 * 1024;

/// A data send held back while the send queue is full, queued when its future is
/// polled with room.
pub(crate) enum Held {
    /// A whole message, its payload handed over.
    Message(Message),
    /// One frame of a message, its payload copied (the caller lent it).
    Frame {
        kind: DataKind,
        data: Bytes,
        fin: bool,
        compress: bool,
    },
}

impl Held {
    fn queue<S: AsyncRead + AsyncWrite + Unpin>(self, inner: &mut Inner<S>) -> Result<(), Error> {
        match self {
            Held::Message(message) => inner.queue(message),
            Held::Frame {
                kind,
                data,
                fin,
                compress,
            } => inner.send_frame(kind, &data, fin, compress),
        }
    }
}

/// What [`Shared::send_bounded`] did: queued (whether written at once, or the error),
/// or held for the future to queue.
pub(crate) enum Bounded {
    Queued(Result<bool, Error>),
    Held(Box<Held>),
}

pub(crate) struct Shared<S> {
    pub(super) info: Info,
    pub(super) inner: Mutex<Inner<S>>,
}

pub(super) struct Inner<S> {
    /// The transport; `None` once closed or terminated.
    pub(super) io: Option<S>,
    pub(super) conn: Connection,
    pub(super) read_buf: BytesMut,
    /// `read_buf` was grown past [`SPARE_MAX`] (a large frame): free it when idle
    /// rather than keep it as the thread's spare.
    pub(super) read_buf_big: bool,
    /// The transport was shut down for writing (TCP FIN) by the closing.
    pub(super) write_shut: bool,
    /// Tasks waiting for the transmit buffer to drain, allocated when a write first
    /// has to wait.
    pub(super) writers: Option<Arc<Writers>>,
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    pub(super) ended: bool,
    /// The end was counted and logged ([`Inner::record_end`]).
    pub(super) end_recorded: bool,
    /// `pause()`d: the transport is not read until `resume()`.
    pub(super) paused: bool,
    /// Bytes went to the transport outside the transmit queue (a hub's write at publish
    /// time) and its flush did not complete (TLS holds records until the socket takes
    /// them): the reading task flushes it, even with nothing queued.
    pub(super) unflushed: bool,
    /// The reader parked on the transport, woken when `try_send` queues bytes for it to
    /// write.
    pub(super) reader_waker: Option<Waker>,
    /// State most connections never use, allocated on first use: every idle
    /// connection would carry it otherwise.
    pub(super) rare: Option<Box<Rare>>,
    /// This connection's part of the `sockeye_send_queue_bytes` gauge
    /// ([`Inner::count_queue`]).
    #[cfg(feature = "metrics")]
    pub(super) queue_counted: usize,
}

#[derive(Default)]
pub(super) struct Rare {
    /// The error that failed the connection, returned once by the stream.
    pub(super) failure: Option<Error>,
    /// The close frame received, or 1006 for an abnormal end.
    pub(super) received: Option<CloseFrame>,
    /// The reader parked by `pause()`, woken by `resume()`.
    pub(super) resume_waker: Option<Waker>,
    /// Messages dropped by `try_send` under `WhenFull::Drop`.
    pub(super) dropped: u64,
    /// Per-connection user data (`WebSocketWriter::insert_data`).
    pub(super) data: http::Extensions,
    /// The connection's `tracing` span, kept only when a subscriber is interested.
    pub(super) span: Option<tracing::Span>,
    /// Called once when the connection ends (`Shared::on_end`): a hub forgets the
    /// connection's subscriptions.
    pub(super) on_end: Vec<EndHook>,
}

/// What runs when a connection ends. It runs under the connection's lock, so it must not
/// lock another connection (a hub only records the id, for later).
pub(crate) type EndHook = Box<dyn FnOnce() + Send>;

impl<S> Shared<S> {
    /// The state of a connection whose opening handshake is done on `io`; `read_buf`
    /// holds the bytes read past the handshake.
    pub(super) fn new(
        info: Info,
        io: S,
        conn: Connection,
        read_buf: BytesMut,
        span: Option<tracing::Span>,
    ) -> Self {
        metrics::opened(info.role);
        let rare = span.map(|span| {
            Box::new(Rare {
                span: Some(span),
                ..Rare::default()
            })
        });
        let inner = Inner {
            io: Some(io),
            conn,
            read_buf,
            read_buf_big: false,
            write_shut: false,
            writers: None,
            timer: None,
            ended: false,
            end_recorded: false,
            paused: false,
            unflushed: false,
            reader_waker: None,
            rare,
            #[cfg(feature = "metrics")]
            queue_counted: 0,
        };
        Shared {
            info,
            inner: Mutex::new(inner),
        }
    }

    /// The connection's state, locked. A mutex without poisoning (`parking_lot`): a
    /// panic while holding the lock leaves plain data, to keep going with, and the lock
    /// and unlock are each one atomic instruction inline, with no check of a poison flag
    /// or of whether the thread is panicking.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner.lock()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    pub(super) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, sockeye_proto::Error>,
    ) -> Result<T, Error> {
        self.lock().with_conn(f)
    }

    pub(super) fn queue(&self, message: Message) -> Result<(), Error> {
        self.lock().queue(message)
    }

    /// Queues a frame with `queue` and, if nothing was queued before it, writes it at
    /// once (one attempt that waits for nothing): most sends then finish here, under the
    /// lock already held, and their future has nothing left to do. Returns whether it
    /// was all written.
    pub(super) fn queue_and_write(
        &self,
        queue: impl FnOnce(&mut Inner<S>) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let mut inner = self.lock();
        inner.queue_and_write(queue)
    }

    /// A data send of `send` under the send queue's bound: below the high-water mark it
    /// is queued and written at once when it can be by `send_now` (which returns whether
    /// it was all written); at or over it, the connection's [`WhenFull`] policy decides:
    /// `Wait` makes it [`Held`] with `hold`, for the [`Sending`](super::Sending) future to
    /// queue once there is room, `Drop` discards it and counts it, `Close` starts closing
    /// with 1008.
    #[inline]
    pub(super) fn send_bounded<T>(
        &self,
        send: T,
        send_now: impl FnOnce(&mut Inner<S>, T) -> Result<bool, Error>,
        hold: impl FnOnce(T) -> Held,
    ) -> Bounded {
        let mut inner = self.lock();
        let send_queue = inner.conn.config().send_queue;
        if inner.conn.transmit_len() < send_queue.high_water {
            return Bounded::Queued(send_now(&mut inner, send));
        }
        // Over the mark: a connection that is over refuses as an immediate send would.
        if let Err(e) = inner.with_conn(|_| Ok(())) {
            return Bounded::Queued(Err(e));
        }
        match send_queue.when_full {
            WhenFull::Wait => Bounded::Held(Box::new(hold(send))),
            WhenFull::Drop => {
                inner.rare().dropped += 1;
                metrics::send_dropped();
                Bounded::Queued(Ok(true))
            }
            WhenFull::Close => {
                inner.close_full();
                Bounded::Queued(Err(Error::QueueFull))
            }
        }
    }

    /// Queues a held send once the queue is under its high-water mark, writing the
    /// queue out meanwhile; then ready with whether it was written at once.
    pub(super) fn poll_queue_held(
        &self,
        held: &mut Option<Box<Held>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, Error>> {
        let mut inner = self.lock();
        let high_water = inner.conn.config().send_queue.high_water;
        std::task::ready!(inner.poll_queue_within(|len| len < high_water, cx))?;
        let held = held.take().expect("polled while held");
        Poll::Ready(inner.queue_and_write(|inner| held.queue(inner)))
    }

    pub(super) fn ready_state(&self) -> ReadyState {
        let inner = self.lock();
        if inner.io.is_none() {
            return ReadyState::Closed;
        }
        match inner.conn.state() {
            State::Open => ReadyState::Open,
            State::Closing => ReadyState::Closing,
            State::Closed => ReadyState::Closed,
        }
    }

    pub(super) fn terminate(&self) {
        let mut inner = self.lock();
        inner.conn.terminate();
        inner.io = None;
        Writers::wake_all(&inner.writers);
        // A reader parked on the transport would wait forever: its registration went
        // with the transport. Woken, it finds the connection aborted and ends.
        inner.wake_reader();
        inner.run_end_hooks();
    }

    /// Runs `hook` once when the connection ends (its stream finished, its transport
    /// failed, or `terminate`). Returns `false`, without keeping it, if the connection
    /// has ended already.
    pub(crate) fn on_end(&self, hook: EndHook) -> bool {
        let mut inner = self.lock();
        if inner.ended || inner.io.is_none() {
            return false;
        }
        inner.rare().on_end.push(hook);
        true
    }

    pub(super) fn wake_writers(&self) {
        Writers::wake_all(&self.lock().writers);
    }

    pub(super) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.lock();
        let flushed = inner.poll_flush_transmit(cx);
        if flushed.is_pending() && inner.conn.state() != State::Open {
            // Closing: close_timeout bounds this wait too, whether or not a task reads
            // (`close().await` toward a peer that does not read). The timer wakes every
            // waiting writer and the parked reader, if any: the timer keeps one waker,
            // and this task may give up waiting before the deadline.
            let fanout = Writers::park(&mut inner.writers, cx);
            if let Some(reader) = inner.reader_waker.clone() {
                Writers::park_waker(&mut inner.writers, &reader);
            }
            let _ = inner.poll_deadline(&mut Context::from_waker(&fanout));
            if inner.conn.should_abort_transport() {
                inner.io = None;
                // The reader (if any) finishes the stream.
                inner.wake_reader();
                Writers::wake_all(&inner.writers);
                let why = "the peer did not read what was left to send within close_timeout";
                let timed_out = io::Error::new(io::ErrorKind::TimedOut, why);
                return Poll::Ready(Err(inner.write_error(timed_out)));
            }
        }
        flushed.map_err(|e| inner.write_error(e))
    }

    pub(super) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.lock();
        if inner.conn.transmit_len() < inner.conn.config().send_queue.high_water {
            return Poll::Ready(Ok(()));
        }
        inner
            .poll_flush_transmit(cx)
            .map_err(|e| inner.write_error(e))
    }

    pub(super) fn try_queue(&self, message: Message) -> Result<TrySend, Error> {
        let mut inner = self.lock();
        let queue = inner.conn.config().send_queue;
        if inner.conn.transmit_len() >= queue.high_water {
            match queue.when_full {
                WhenFull::Wait => return Err(Error::QueueFull),
                WhenFull::Drop => {
                    inner.rare().dropped += 1;
                    metrics::send_dropped();
                    return Ok(TrySend::Dropped);
                }
                WhenFull::Close => {
                    inner.close_full();
                    return Err(Error::QueueFull);
                }
            }
        }
        inner.queue(message)?;
        // The reader task writes the queue out as it polls; wake it.
        inner.wake_reader();
        Ok(TrySend::Queued)
    }

    /// Ready once the queue is at or below the low-water mark.
    pub(super) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.lock();
        let low_water = inner.conn.config().send_queue.low_water;
        inner.poll_queue_within(|len| len <= low_water, cx)
    }

    pub(super) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let mut inner = self.lock();
        inner.poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    pub(crate) fn is_open_or_closing(&self) -> bool {
        matches!(self.ready_state(), ReadyState::Open | ReadyState::Closing)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    fn close_info(&self) -> CloseInfo {
        CloseInfo {
            received: self.rare.as_ref().and_then(|r| r.received.clone()),
            sent: self.conn.close_sent(),
        }
    }

    /// Why a connection that is over refuses to send: the heartbeat's expiry, as the
    /// reader was told, or that it closed.
    fn ended_error(&self) -> Error {
        if self.conn.heartbeat_expired() {
            Error::HeartbeatTimeout
        } else {
            Error::Closed(self.close_info())
        }
    }

    /// The error of a write that failed with `e`: [`Error::HeartbeatTimeout`] when the
    /// heartbeat gave the peer up (the transport was closed under the write), so that
    /// readers and writers see the same error for it; else `e`, or the TLS error it
    /// carries.
    fn write_error(&self, e: io::Error) -> Error {
        if self.conn.heartbeat_expired() {
            Error::HeartbeatTimeout
        } else {
            Error::from(e)
        }
    }

    /// Runs a command on the connection, unless it is over and its transport gone.
    /// Always inlined: on the path of every send, where a call costs more than the
    /// check.
    #[inline(always)]
    pub(super) fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T, sockeye_proto::Error>,
    ) -> Result<T, Error> {
        if (self.io.is_none() || self.ended) && self.conn.state() == State::Closed {
            return Err(self.ended_error());
        }
        let mid_frame = self.conn.is_mid_frame();
        let result = f(&mut self.conn).map_err(Error::from);
        self.count_queue();
        if mid_frame && !self.conn.is_mid_frame() {
            // A frame sent in pieces ended: the control frames held for it, and a close
            // of the transport that waited for it, are the reader task's to carry out.
            self.wake_reader();
        }
        result
    }

    /// Queues with `queue` and, if nothing was queued before it, writes at once; returns
    /// whether it was all written.
    #[inline]
    pub(super) fn queue_and_write(
        &mut self,
        queue: impl FnOnce(&mut Inner<S>) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let was_idle = self.conn.transmit().is_empty();
        queue(self)?;
        Ok(was_idle && self.try_write_now())
    }

    /// Writes the queue out until its length (framing included) `fits`; ready at once
    /// when it already does, or when a partial write brought it there.
    fn poll_queue_within(
        &mut self,
        fits: impl Fn(usize) -> bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            if fits(self.conn.transmit_len()) {
                return Poll::Ready(Ok(()));
            }
            match self.poll_flush_transmit(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.write_error(e))),
                Poll::Pending if fits(self.conn.transmit_len()) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// `WhenFull::Close`: the send queue is full, so the slow peer is closed with 1008.
    fn close_full(&mut self) {
        metrics::send_queue_full_close();
        let slow = CloseFrame::new(CloseCode::POLICY_VIOLATION, "send queue full");
        let _ = self.conn.close(Some(&slow), Instant::now());
        self.wake_reader();
    }

    /// Encodes one frame of a data message (`send_with`) into the transmit buffer.
    pub(super) fn send_frame(
        &mut self,
        kind: DataKind,
        data: &[u8],
        fin: bool,
        compress: bool,
    ) -> Result<(), Error> {
        self.with_conn(|conn| conn.send_with(kind, data, fin, compress))?;
        metrics::message_sent(data.len(), fin);
        Ok(())
    }

    /// Sends a message and, if nothing was queued before it, writes it at once, as
    /// [`Inner::queue_and_write`] does; returns whether it was all written. A small whole
    /// data message goes from the stack ([`Connection::try_send_now`]): the transmit
    /// buffer is left alone when the transport takes it all.
    #[inline]
    pub(super) fn send_message(&mut self, message: Message) -> Result<bool, Error> {
        if let Some(written) = self.try_send_now(&message) {
            return Ok(written);
        }
        self.queue_and_write(|inner| inner.queue(message))
    }

    /// [`Connection::try_send_now`] for a data message (or a piece that is a whole frame),
    /// with one write attempt that waits for nothing (as [`Inner::try_write_now`]):
    /// `Some(true)` when the transport took it all and flushed, `Some(false)` when the
    /// rest is queued for the send's future, `None` when it is not such a send (or a task
    /// waits to write, whose waker the transport holds): queue it.
    #[inline(always)]
    fn try_send_now(&mut self, message: &Message) -> Option<bool> {
        let (kind, data) = match message {
            Message::Text(text) => (DataKind::Text, text.as_bytes()),
            Message::UncheckedText(data) => (DataKind::Text, &data[..]),
            Message::Binary(data) => (DataKind::Binary, &data[..]),
            // A piece that is a whole frame: a whole message when none is in progress
            // (`Connection::try_send_now` checks), as `sockeye echo` relays one.
            Message::Fragment(piece) if piece.ends_message() => (piece.kind, &piece.data[..]),
            _ => return None,
        };
        if self.ended || Writers::any_waiting(&self.writers) {
            return None;
        }
        let io = self.io.as_mut()?;
        let mut cx = Context::from_waker(Waker::noop());
        let mut wrote = 0;
        let sent = self.conn.try_send_now(kind, data, |frame| {
            if let Poll::Ready(Ok(n)) = Pin::new(&mut *io).poll_write(&mut cx, frame) {
                wrote = n;
            }
            wrote
        });
        if !sent {
            return None;
        }
        let written = self.conn.transmit().is_empty();
        let done = written && matches!(Pin::new(io).poll_flush(&mut cx), Poll::Ready(Ok(())));
        // Written but not flushed (a TLS stream holding records): the send's future, or
        // else the reading task, flushes it.
        self.unflushed |= written && !done;
        metrics::written(wrote);
        #[cfg(feature = "metrics")]
        metrics::message_sent(data.len(), true);
        self.count_queue();
        Some(done)
    }

    /// Encodes a message into the transmit buffer.
    /// The payload is handed over: large ones are written from it without a copy.
    #[inline]
    pub(super) fn queue(&mut self, message: Message) -> Result<(), Error> {
        #[cfg(feature = "metrics")]
        let sent = match &message {
            Message::Text(text) => Some((text.len(), true)),
            Message::UncheckedText(data) | Message::Binary(data) => Some((data.len(), true)),
            Message::Fragment(fragment) => Some((fragment.data.len(), fragment.ends_message())),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
        };
        self.with_conn(
            #[inline(always)]
            |conn| match message {
                Message::Text(text) => {
                    write_pool::lend(conn.transmit(), text.len());
                    conn.send_bytes(DataKind::Text, text.into_bytes(), true, true)
                }
                Message::UncheckedText(data) => {
                    write_pool::lend(conn.transmit(), data.len());
                    conn.send_bytes(DataKind::Text, data, true, true)
                }
                Message::Binary(data) => {
                    write_pool::lend(conn.transmit(), data.len());
                    conn.send_bytes(DataKind::Binary, data, true, true)
                }
                Message::Ping(data) => conn.ping(&data),
                Message::Pong(data) => conn.pong(&data),
                Message::Close(frame) => conn.close(frame.as_ref(), Instant::now()),
                Message::Fragment(fragment) => conn.send_fragment(fragment, true),
            },
        )?;
        #[cfg(feature = "metrics")]
        if let Some((len, ends)) = sent {
            metrics::message_sent(len, ends);
        }
        Ok(())
    }

    /// Runs (and forgets) the hooks registered with `Shared::on_end`.
    pub(super) fn run_end_hooks(&mut self) {
        if let Some(rare) = self.rare.as_mut() {
            for hook in std::mem::take(&mut rare.on_end) {
                hook();
            }
        }
    }

    pub(super) fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// One attempt to write out all that is queued, with a waker that wakes nobody:
    /// true when it all went (and the transport flushed). Anything short of that (a
    /// partial write, `Pending`, an error) is left to [`Inner::poll_flush_transmit`],
    /// which the send's future runs with its task's waker, and which registers that
    /// waker in place of this one. Not tried while a task waits to write: the
    /// transport holds the waker for it, which this attempt would replace.
    #[inline(always)]
    pub(super) fn try_write_now(&mut self) -> bool {
        if Writers::any_waiting(&self.writers) {
            return false;
        }
        let Some(io) = self.io.as_mut() else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        let transmit = self.conn.transmit();
        let wrote = match poll_write_some(io, transmit, &mut cx) {
            Poll::Ready(Ok(n)) if n > 0 => {
                metrics::written(n);
                transmit.advance(n);
                true
            }
            _ => false,
        };
        let done = wrote
            && transmit.is_empty()
            && matches!(Pin::new(io).poll_flush(&mut cx), Poll::Ready(Ok(())));
        if done {
            // Written out: an idle connection holds no write buffer (beyond a small one).
            write_pool::release(transmit);
        }
        if wrote {
            self.count_queue();
        }
        done
    }

    /// Writes the transmit buffer out. Ready once it is empty and the transport flushed.
    #[inline(always)]
    pub(super) fn poll_flush_transmit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = self.write_transmit(cx);
        self.count_queue();
        flushed
    }

    /// Brings the `sockeye_send_queue_bytes` gauge up to this connection's queue (with
    /// the `metrics` feature; nothing without it). Called where bytes are queued or
    /// written; a path that changes the queue elsewhere is caught up by the next call.
    /// Once the end is recorded the connection's part is out of the gauge for good.
    #[inline(always)]
    pub(super) fn count_queue(&mut self) {
        #[cfg(feature = "metrics")]
        if !self.end_recorded {
            let now = self.conn.transmit_len();
            if now != self.queue_counted {
                metrics::send_queue(self.conn.role(), self.queue_counted, now);
                self.queue_counted = now;
            }
        }
    }

    fn write_transmit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            let empty = self.conn.transmit().is_empty();
            return Poll::Ready(if empty {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the connection is closed",
                ))
            });
        };
        let mut progress = false;
        // Once the task is parked: the waker of every waiting task, for the transport.
        let mut fanout: Option<Waker> = None;
        loop {
            let transmit = self.conn.transmit();
            if transmit.is_empty() {
                break;
            }
            let written = match &fanout {
                Some(waker) => poll_write_some(io, transmit, &mut Context::from_waker(waker)),
                None => poll_write_some(io, transmit, cx),
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    metrics::written(n);
                    transmit.advance(n);
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    Writers::wake_all(&self.writers);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending if fanout.is_some() => return Poll::Pending,
                Poll::Pending => {
                    if progress {
                        Writers::wake_all(&self.writers);
                    }
                    // Poll again with the waker of all writers, so that the transport
                    // remembers that one rather than this task's.
                    fanout = Some(Writers::park(&mut self.writers, cx));
                }
            }
        }
        let flushed = match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Pending => {
                // Wait for the flush the same way (a TLS stream may have to).
                let fanout = Writers::park(&mut self.writers, cx);
                Pin::new(&mut *io).poll_flush(&mut Context::from_waker(&fanout))
            }
            ready => ready,
        };
        match flushed {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        // Written out: an idle connection holds no write buffer (beyond a small one).
        self.unflushed = false;
        write_pool::release(self.conn.transmit());
        Writers::wake_all(&self.writers);
        Poll::Ready(Ok(()))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        // Bytes read do not move a deadline; what reads them (and the end of the stream)
        // may, so the timer is checked on entry and after anything but a plain read (which
        // stays in the inner loop).
        'checks: loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if self.paused {
                self.rare().resume_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let _ = self.poll_deadline(cx);
            if self.conn.should_abort_transport() {
                return self.poll_closing(cx);
            }
            // Pending control frames (pongs, pings, close replies) go out first, best effort.
            if let Poll::Ready(Err(e)) = self.poll_flush_pending(cx) {
                return Poll::Ready(Some(Err(self.end_with_io_error(e))));
            }
            // A peer that sends (pings) but does not read: stop reading until what is
            // queued for it drains, so automatic pongs cannot pile up without bound. The
            // flush above registered for the wakeup.
            if self.conn.should_pause_reading() {
                metrics::reads_paused();
                self.park_reader(cx);
                return Poll::Pending;
            }
            loop {
                if !self.conn.is_read_closed() && self.conn.wants_read(&self.read_buf) {
                    // The clock is read only when the read needs the time (not for a
                    // server's data frames without a heartbeat).
                    match self.conn.read_with(&mut self.read_buf, Instant::now) {
                        Ok(Some(message)) => return self.hand_out(message, cx),
                        Ok(None) => {}
                        Err(e) => {
                            metrics::protocol_error(e.close_code().map_or(1002, |code| code.0));
                            tracing::debug!(parent: &self.span(), error = %e, "failing the connection");
                            self.rare().failure = Some(Error::Protocol(e));
                            continue 'checks;
                        }
                    }
                }
                if self.conn.is_read_closed() {
                    return self.poll_closing(cx);
                }
                match self.poll_fill(cx) {
                    // Bytes read change none of the checks above (an incomplete
                    // frame queues nothing): read them at once.
                    Poll::Ready(Ok(n)) if n > 0 => continue,
                    Poll::Ready(Ok(_)) => continue 'checks,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Some(Err(self.end_with_io_error(e))))
                    }
                    Poll::Pending => {
                        // Arm the timer for the deadline the read may have started (the
                        // heartbeat's clock); if one already passed, act on it now.
                        if self.poll_deadline(cx) {
                            continue 'checks;
                        }
                        self.park_reader(cx);
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// A message read: recorded (a close frame, the metrics), answered at once (a pong, a
    /// close reply) and, on a server whose close handshake just ended, TCP closed now
    /// (RFC 6455 §7.1.1); then handed out. Always inlined: part of the read loop, on the
    /// path of every message.
    #[inline(always)]
    fn hand_out(
        &mut self,
        message: Message,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        match &message {
            Message::Close(frame) => {
                if frame.is_some() {
                    self.rare().received = frame.clone();
                }
            }
            Message::Text(text) => metrics::message_received(text.len(), true),
            Message::Binary(data) | Message::UncheckedText(data) => {
                metrics::message_received(data.len(), true);
            }
            Message::Fragment(piece) => {
                metrics::message_received(piece.data.len(), piece.ends_message());
            }
            Message::Ping(_) | Message::Pong(_) => {}
        }
        if let Poll::Ready(Err(e)) = self.poll_flush_pending(cx) {
            let _ = self.end_with_io_error(e);
        } else if self.conn.should_close_transport() && self.conn.transmit().is_empty() {
            if let Some(io) = self.io.as_mut() {
                if Pin::new(io).poll_shutdown(cx).is_ready() {
                    self.io = None;
                }
            }
        }
        Poll::Ready(Some(Ok(message)))
    }

    /// Writes queued bytes if there are any; `Ready(Ok)` also when nothing was queued.
    fn poll_flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.transmit().is_empty() && !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        self.poll_flush_transmit(cx)
    }

    /// Arms the timer for the connection's next deadline (close timeout, heartbeat) and
    /// hands the connection the time once it has passed. The timer is only moved
    /// earlier: traffic that pushes the heartbeat later costs no timer reset, and a timer
    /// that fires early just re-arms.
    #[inline]
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        // Most of the time (a server without a heartbeat, between close handshakes)
        // there is no deadline and no timer.
        if self.timer.is_none() && self.conn.poll_timeout().is_none() {
            return false;
        }
        self.poll_timer(cx)
    }

    /// [`Inner::poll_deadline`] when there is a deadline or a timer.
    #[inline(never)]
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let mut fired = false;
        loop {
            let Some(deadline) = self.conn.poll_timeout() else {
                self.timer = None;
                return fired;
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return fired;
            }
            fired = true;
            self.timer = None;
            self.conn.handle_timeout(Instant::now());
            if self.conn.heartbeat_expired() {
                metrics::heartbeat_timeout();
                self.rare().failure.get_or_insert(Error::HeartbeatTimeout);
            }
        }
    }

    /// Reads more bytes, and returns how many (0 at the end of the stream, which it
    /// tells the connection).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            self.conn.handle_eof(Instant::now());
            return Poll::Ready(Ok(0));
        };
        let want = self
            .conn
            .read_hint(&self.read_buf)
            .saturating_add(READ_SLACK)
            .clamp(read_pool::READ_CHUNK, MAX_READ_RESERVE);
        read_pool::reserve(&mut self.read_buf, &mut self.read_buf_big, want);
        let n = match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.read_buf) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.read_buf.is_empty() {
                    // Idle: hold no read buffer while waiting.
                    read_pool::release_idle(&mut self.read_buf, self.read_buf_big);
                }
                return Poll::Pending;
            }
        };
        metrics::read(n);
        if n == 0 {
            self.on_eof();
        }
        Poll::Ready(Ok(n))
    }

    /// The transport's end of stream: the connection is told, and an abnormal end (no
    /// close handshake) is recorded for the stream to report.
    #[cold]
    #[inline(never)]
    fn on_eof(&mut self) {
        if let Some(abnormal) = self.conn.handle_eof(Instant::now()) {
            let sent = self.conn.close_sent();
            let rare = self.rare();
            rare.received = Some(abnormal.clone());
            rare.failure.get_or_insert(Error::Closed(CloseInfo {
                received: Some(abnormal),
                sent,
            }));
        }
    }

    /// After the last frame: write what is queued, wait out the close handshake, close
    /// the transport (after a failure: shut it down for writing and read it to its end,
    /// discarding, so that the peer gets the close frame rather than a reset), then
    /// report the end.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        loop {
            if self.conn.should_abort_transport() {
                // Terminated (the heartbeat gave up), or what was left to write (or to
                // drain) outlived close_timeout: close now, without it. Tasks still
                // waiting for it to be written get an error.
                self.io = None;
                return self.finish();
            }
            if let Poll::Ready(Err(e)) = self.poll_flush_transmit(cx) {
                return Poll::Ready(Some(Err(self.end_with_io_error(e))));
            }
            if !self.conn.transmit().is_empty() {
                return Poll::Pending;
            }
            let draining = self.conn.should_drain();
            if self.conn.should_close_transport() && !self.write_shut {
                if let Some(io) = self.io.as_mut() {
                    match Pin::new(io).poll_shutdown(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if draining => {}
                        Poll::Ready(_) => self.io = None,
                    }
                }
                self.write_shut = true;
            }
            if self.conn.is_finished() || self.io.is_none() {
                self.io = None;
                return self.finish();
            }
            // A client waits for the server to close TCP, and a failed connection for the
            // peer's end of stream; both bounded by close_timeout.
            if self.poll_deadline(cx) {
                continue;
            }
            // Keep reading (and discarding) until end of stream.
            self.read_buf.clear();
            match self.poll_fill(cx) {
                Poll::Ready(Ok(_)) => self.read_buf.clear(),
                Poll::Ready(Err(_)) => {
                    self.io = None;
                    return self.finish();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn finish(&mut self) -> Poll<Option<Result<Message, Error>>> {
        self.ended = true;
        self.record_end();
        self.run_end_hooks();
        self.timer = None;
        self.read_buf = BytesMut::new();
        write_pool::release(self.conn.transmit());
        Writers::wake_all(&self.writers);
        Poll::Ready(self.rare.as_mut().and_then(|r| r.failure.take()).map(Err))
    }

    fn end_with_io_error(&mut self, e: io::Error) -> Error {
        self.conn.terminate();
        self.io = None;
        self.ended = true;
        self.record_end();
        self.run_end_hooks();
        Writers::wake_all(&self.writers);
        Error::from(e)
    }
}

impl<S> Inner<S> {
    /// The connection's span, or a disabled one.
    fn span(&self) -> tracing::Span {
        self.rare
            .as_ref()
            .and_then(|rare| rare.span.clone())
            .unwrap_or_else(tracing::Span::none)
    }

    /// Counts and logs the end of the connection, once: the close code received and who
    /// sent the first close frame.
    fn record_end(&mut self) {
        if std::mem::replace(&mut self.end_recorded, true) {
            return;
        }
        let code = self
            .rare
            .as_ref()
            .and_then(|r| r.received.as_ref())
            .map(|frame| frame.code.0);
        let abnormal = !self.conn.close_received();
        let by = match self.conn.closed_by_peer() {
            Some(true) => "peer",
            Some(false) => "local",
            None => "none",
        };
        metrics::closed(self.conn.role(), code, abnormal, by);
        #[cfg(feature = "metrics")]
        {
            metrics::send_queue(self.conn.role(), self.queue_counted, 0);
            self.queue_counted = 0;
        }
        let span = self.span();
        span.record("close_code", code);
        span.record("closed_by", by);
        tracing::debug!(
            parent: &span,
            close_code = code,
            closed_by = by,
            "connection ended"
        );
    }
}

/// A connection dropped before its stream ended (its handles all gone) is counted and
/// logged as ended here.
impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        self.record_end();
    }
}

/// Writes from the front of `transmit`: a referenced payload goes out with its header in
/// one vectored write.
fn poll_write_some<S: AsyncWrite + Unpin>(
    io: &mut S,
    transmit: &sockeye_proto::Transmit,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if transmit.is_segmented() && io.is_write_vectored() {
        let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
        let n = transmit.chunks_vectored(&mut slices);
        Pin::new(io).poll_write_vectored(cx, &slices[..n])
    } else {
        Pin::new(io).poll_write(cx, transmit.chunk())
    }
}
