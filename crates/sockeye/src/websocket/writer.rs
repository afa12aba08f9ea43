//! [`WebSocketWriter`]: the sending handle of a connection. A
//! [`WebSocket`](super::WebSocket) derefs to its writer, so both send with the same
//! methods, written once here.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::Sink;
use sockeye_proto::{CloseFrame, DataKind, Message, Role};
use tokio::io::{AsyncRead, AsyncWrite};

use super::pump::{Held, Shared};
use super::{ReadyState, SendOptions, Sending, TrySend};
use crate::error::Error;

/// The sending half of a [`WebSocket`](super::WebSocket): what
/// [`WebSocket::split`](super::WebSocket::split) and
/// [`WebSocket::writer`](super::WebSocket::writer) hand out, and what a `WebSocket`
/// derefs to for its sending methods. Clone it to send from several tasks.
///
/// # Bounded sends
/// Every data send (`send`, `send_text`, `send_binary`, `send_frame`, `send_with`,
/// `try_send`, the `Sink`) applies the send queue's bound
/// ([`SendQueue`](sockeye_proto::SendQueue)): at or over `high_water`, `WhenFull::Wait`
/// holds the message in its future until the queue is below the mark, `Drop` discards
/// it (counted in [`Self::dropped_messages`]), `Close` closes with 1008. So sends that
/// are not awaited, or many writers at once, queue at most the mark and one message.
/// Control frames (ping, pong, close) are never held or dropped.
///
/// # Cancel safety
/// A `send*` future dropped before completion leaves its frame queued whole: it is
/// written by the next operation, never torn or duplicated. The exception is a send
/// held for room (the queue was full when it was called): dropped before it was
/// queued, it is not sent, as with a bounded channel's `send`.
pub struct WebSocketWriter<S> {
    pub(super) shared: Arc<Shared<S>>,
}

impl<S> Clone for WebSocketWriter<S> {
    fn clone(&self) -> Self {
        WebSocketWriter {
            shared: self.shared.clone(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketWriter<S> {
    /// Sends a message (text, binary, ping, pong or close): queues it at once and
    /// returns a future that completes when it is written to the transport. A
    /// `Bytes` payload of 64 KiB or more is written from without a copy (a client
    /// masks it in place when nothing else refers to it). While the send queue is at
    /// its high-water mark, a data message follows its `WhenFull` policy instead (see
    /// "Bounded sends" above): by default the future holds it and queues it once there
    /// is room.
    ///
    /// When nothing is queued before it and the transport has room, `send` (and
    /// `send_text`, `send_binary`, `send_frame`, `send_with`) also writes it at
    /// once, so the future usually has nothing left to do; what does not go out
    /// then is written as the future is polled.
    ///
    /// # Errors
    /// [`Error::Misuse`] for invalid arguments or a send after close;
    /// [`Error::Closed`] once the connection is over ([`Error::HeartbeatTimeout`] if
    /// the heartbeat ended it); [`Error::Io`] or [`Error::Tls`] if the transport fails.
    ///
    /// [`Error::QueueFull`] under `WhenFull::Close` when the queue is full.
    ///
    /// # Cancel safety
    /// The message is queued whole when `send` is called; if the future is dropped
    /// it is still written by the next operation, never torn or duplicated. A message
    /// held for room is queued only as the future is polled: dropped before, it is not
    /// sent.
    pub fn send(&self, message: impl Into<Message>) -> Sending<'_, S> {
        let message = message.into();
        if matches!(
            message,
            Message::Ping(_) | Message::Pong(_) | Message::Close(_)
        ) {
            // Control frames are never held back or dropped (at most 125 bytes each).
            let queued = self.shared.queue_and_write(|inner| inner.queue(message));
            return Sending::written(&self.shared, queued);
        }
        let bounded =
            self.shared
                .send_bounded(message, |inner, m| inner.send_message(m), Held::Message);
        Sending::bounded(&self.shared, bounded)
    }

    /// Sends a text message.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_text(&self, text: &str) -> Sending<'_, S> {
        self.send_frame(DataKind::Text, text.as_bytes(), true)
    }

    /// Sends a binary message.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_binary(&self, data: &[u8]) -> Sending<'_, S> {
        self.send_frame(DataKind::Binary, data, true)
    }

    /// Sends one frame of a message (`ws`'s `send(data, { fin })`): with `fin: false`
    /// the message continues with the next call; the first frame fixes its type.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_frame(&self, kind: DataKind, data: &[u8], fin: bool) -> Sending<'_, S> {
        self.send_with(
            kind,
            data,
            SendOptions {
                fin,
                compress: true,
            },
        )
    }

    /// Sends one frame with `ws`'s `send(data, { fin, compress })` options: with
    /// `compress: false` the message goes uncompressed even when permessage-deflate
    /// is negotiated (the first frame of a message decides for all of it).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_with(&self, kind: DataKind, data: &[u8], options: SendOptions) -> Sending<'_, S> {
        let SendOptions { fin, compress } = options;
        let bounded = self.shared.send_bounded(
            data,
            |inner, data| {
                inner.queue_and_write(|inner| inner.send_frame(kind, data, fin, compress))
            },
            |data| Held::Frame {
                kind,
                data: Bytes::copy_from_slice(data),
                fin,
                compress,
            },
        );
        Sending::bounded(&self.shared, bounded)
    }

    /// Sends a ping (at most 125 bytes).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn ping(&self, data: &[u8]) -> Sending<'_, S> {
        let queued = self.shared.with_conn(|conn| conn.ping(data));
        Sending::new(&self.shared, queued)
    }

    /// Sends a pong (at most 125 bytes).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn pong(&self, data: &[u8]) -> Sending<'_, S> {
        let queued = self.shared.with_conn(|conn| conn.pong(data));
        Sending::new(&self.shared, queued)
    }

    /// Starts the close handshake with a code and reason (`None`: a close frame with
    /// no status) and waits until the close frame is written. The peer's answer
    /// arrives through the reading side, which ends after it (or after
    /// `close_timeout`).
    ///
    /// # Errors
    /// [`Error::Misuse`]: `ApiMisuse::InvalidCloseCode` for a code that may not be
    /// sent (1005, 1006, 1015, < 1000 ...) and `ApiMisuse::CloseReasonTooLong` over
    /// 123 bytes.
    pub fn close(&self, frame: Option<CloseFrame>) -> Sending<'_, S> {
        let queued = self
            .shared
            .with_conn(|conn| conn.close(frame.as_ref(), Instant::now()));
        self.shared.wake_writers();
        Sending::new(&self.shared, queued)
    }

    /// Closes the transport at once, without a close handshake (`ws`'s `terminate()`).
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// The state, as `ws`'s `readyState`.
    pub fn ready_state(&self) -> ReadyState {
        self.shared.ready_state()
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.shared.info.agreed.as_ref()?.protocol.as_deref()
    }

    /// The extensions agreed in the handshake (`Sec-WebSocket-Extensions`), empty when
    /// none.
    pub fn extensions(&self) -> &str {
        self.shared
            .info
            .agreed
            .as_ref()
            .map_or("", |agreed| &agreed.extensions)
    }

    /// The URL a client connected to.
    pub fn url(&self) -> Option<&str> {
        self.shared.info.agreed.as_ref()?.url.as_deref()
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.shared.info.role
    }

    /// A process-unique id of this connection.
    pub fn id(&self) -> u64 {
        self.shared.info.id
    }

    /// Queues a message without waiting, under the send queue's policy. Under the high-water mark it is queued
    /// and the reading task writes it out; over it, the connection's
    /// [`WhenFull`](sockeye_proto::WhenFull) policy applies: `Wait` refuses with [`Error::QueueFull`] (await
    /// [`Self::drained`] and retry), `Drop` discards it ([`TrySend::Dropped`]),
    /// `Close` starts closing with 1008. Needs a task reading the connection.
    ///
    /// # Errors
    /// [`Error::QueueFull`], and as [`Self::send`].
    pub fn try_send(&self, message: impl Into<Message>) -> Result<TrySend, Error> {
        self.shared.try_queue(message.into())
    }

    /// Waits until the send queue is at or below its low-water mark, writing it out.
    ///
    /// # Errors
    /// [`Error::Io`] if the transport fails.
    pub async fn drained(&self) -> Result<(), Error> {
        poll_fn(|cx| self.shared.poll_drained(cx)).await
    }

    /// Attaches a value of type `T` to the connection, replacing (and returning) the
    /// previous one (per-connection user data, visible from every handle,
    /// e.g. the writers that `WebSocketServer::clients()` returns).
    pub fn insert_data<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.shared.lock().rare().data.insert(value)
    }

    /// A clone of the value of type `T` attached with [`Self::insert_data`].
    pub fn data<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        let inner = self.shared.lock();
        inner.rare.as_ref()?.data.get::<T>().cloned()
    }

    /// Messages `try_send` dropped under `WhenFull::Drop`.
    pub fn dropped_messages(&self) -> u64 {
        self.shared
            .lock()
            .rare
            .as_ref()
            .map_or(0, |rare| rare.dropped)
    }

    /// Stops reading from the transport (`ws`'s `pause()`): no message is delivered
    /// and, once the socket buffers fill, TCP pushes back on the peer. Sending still
    /// works. Note that automatic pongs and the close handshake wait too.
    pub fn pause(&self) {
        self.shared.lock().paused = true;
    }

    /// Reads again after [`Self::pause`] (`ws`'s `resume()`).
    pub fn resume(&self) {
        let mut inner = self.shared.lock();
        inner.paused = false;
        if let Some(waker) = inner.rare.as_mut().and_then(|r| r.resume_waker.take()) {
            waker.wake();
        }
    }

    /// Whether the connection is paused (`ws`'s `isPaused`).
    pub fn is_paused(&self) -> bool {
        self.shared.lock().paused
    }

    /// Bytes queued but not yet written to the transport, framing included (`ws`'s
    /// `bufferedAmount`).
    pub fn buffered_amount(&self) -> usize {
        self.shared.lock().conn.transmit_len()
    }

    /// Whether both handles belong to the same connection.
    pub fn same_connection(&self, other: &WebSocketWriter<S>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocketWriter<S> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.poll_ready(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.shared.queue(item)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let _ = self
            .shared
            .with_conn(|conn| conn.close(None, Instant::now()));
        self.shared.poll_flush(cx)
    }
}

impl<S> std::fmt::Debug for WebSocketWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketWriter")
            .field("id", &self.shared.info.id)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketWriter<S> {
    pub(crate) fn from_shared(shared: Arc<Shared<S>>) -> Self {
        WebSocketWriter { shared }
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared<S>> {
        Arc::downgrade(&self.shared)
    }

    pub(crate) fn is_open_or_closing(&self) -> bool {
        self.shared.is_open_or_closing()
    }
}
