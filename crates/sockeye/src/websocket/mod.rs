//! [`WebSocket`]: an open connection over any `AsyncRead + AsyncWrite`, as a `Stream` of
//! messages and a `Sink` of messages, with split halves for two tasks.
//!
//! The connection is a [`sockeye_proto::Connection`] and the transport behind one short
//! lock. Every operation polls the transport directly from the calling task; there is no
//! background task per connection. Reading drives the connection: automatic pongs, the
//! close handshake and its timeout progress while somebody polls the stream.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use sockeye_proto::{
    CloseCode, CloseFrame, Config, Connection, DataKind, Deflate, DeflateConfig, DeflateParams,
    Message, Role, State, WhenFull,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use crate::error::{CloseInfo, Error};

/// The smallest reservation of a connection's own read buffer: enough for many small
/// frames per system call. (Larger fresh buffers per read made glibc's heap fragment
/// around zlib's state: 300 KB per idle deflate connection, `bench/deflate_memory.sh`.)
const READ_CHUNK: usize = 8 * 1024;
/// The thread's spare read buffer: a 16 KiB message and its header in one read.
const SPARE_SIZE: usize = 64 * 1024;

/// The largest read buffer kept as a thread's spare.
const SPARE_MAX: usize = 256 * 1024;

thread_local! {
    /// One read buffer per thread, lent to whichever connection reads next: a busy
    /// connection reuses it without allocating, an idle one holds none (its buffer comes
    /// back here when a read finds nothing).
    /// (An `Option`, so that the slot is built at compile time: no lazy
    /// initialization to check on every read.)
    static SPARE_READ_BUF: std::cell::Cell<Option<BytesMut>> = const { std::cell::Cell::new(None) };
}

/// At most this many slices per vectored write.
const MAX_WRITE_SLICES: usize = 32;
/// The largest single reservation for a frame's payload.
const MAX_READ_RESERVE: usize = 4 * 1024 * 1024;

/// The connection state as `ws`'s `readyState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyState {
    /// The opening handshake is in progress (never seen on a [`WebSocket`], which exists
    /// only after the handshake).
    Connecting,
    /// Open: messages flow both ways.
    Open,
    /// A close frame was sent; waiting for the peer's.
    Closing,
    /// Closed.
    Closed,
}

/// Facts fixed at the handshake.
#[derive(Debug)]
struct Info {
    id: u64,
    role: Role,
    /// `None` when nothing was agreed (most server connections): no memory spent.
    agreed: Option<Box<Agreed>>,
}

/// What the handshake agreed, when anything.
#[derive(Debug)]
struct Agreed {
    protocol: Option<String>,
    extensions: String,
    url: Option<String>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the opening handshake agreed.
#[derive(Default)]
pub(crate) struct Negotiated {
    pub(crate) protocol: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) deflate: Option<(DeflateParams, DeflateConfig)>,
}

/// What [`WebSocket::try_send`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrySend {
    /// Queued for the transport.
    Queued,
    /// Dropped: the queue was full and the policy is `WhenFull::Drop`.
    Dropped,
}

/// Options of one send (`ws`'s `send(data, options)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOptions {
    /// The last frame of the message (`false` streams the message in several frames).
    pub fin: bool,
    /// Compress when permessage-deflate is negotiated and the message reaches the
    /// threshold (`false` sends this message uncompressed).
    pub compress: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            fin: true,
            compress: true,
        }
    }
}

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
    fn new(shared: &'a Shared<S>, queued: Result<(), Error>) -> Self {
        Self::written(shared, queued.map(|()| false))
    }

    /// `queued`: whether the frame was queued, and then whether it is written already.
    fn written(shared: &'a Shared<S>, queued: Result<bool, Error>) -> Self {
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

pub(crate) struct Shared<S> {
    info: Info,
    inner: Mutex<Inner<S>>,
}

struct Inner<S> {
    /// The transport; `None` once closed or terminated.
    io: Option<S>,
    conn: Connection,
    read_buf: BytesMut,
    /// `read_buf` was grown past [`SPARE_MAX`] (a large frame): free it when idle
    /// rather than keep it as the thread's spare.
    read_buf_big: bool,
    /// Tasks waiting for the transmit buffer to drain, allocated when a write first
    /// has to wait.
    writers: Option<Arc<Writers>>,
    timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
    /// `pause()`d: the transport is not read until `resume()`.
    paused: bool,
    /// The reader parked on the transport, woken when `try_send` queues bytes for it to
    /// write.
    reader_waker: Option<Waker>,
    /// State most connections never use, allocated on first use: every idle
    /// connection would carry it otherwise.
    rare: Option<Box<Rare>>,
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

/// The tasks waiting to write, behind one waker. A transport remembers only the waker of
/// the task that polled it last; given that task's, a task that stops waiting (its send
/// future dropped, say by a timeout) would take the wakeup with it and strand the
/// others. The transport gets this one instead, which wakes them all.
#[derive(Default)]
struct Writers(Mutex<Vec<Waker>>);

impl Writers {
    /// Adds the task to those waiting to write (allocating the list in `slot` on first
    /// use); returns the waker to give the transport instead of the task's own.
    fn park(slot: &mut Option<Arc<Writers>>, cx: &Context<'_>) -> Waker {
        Self::park_waker(slot, cx.waker())
    }

    /// [`Writers::park`] for a waker other than the polling task's.
    fn park_waker(slot: &mut Option<Arc<Writers>>, waker: &Waker) -> Waker {
        let writers = slot.get_or_insert_with(Default::default);
        {
            let mut wakers = writers.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(waker)) {
                wakers.push(waker.clone());
            }
        }
        Waker::from(Arc::clone(writers))
    }

    /// Whether a task waits to write now (`slot` allocated at the first that did).
    fn any_waiting(slot: &Option<Arc<Writers>>) -> bool {
        slot.as_ref().is_some_and(|writers| {
            !writers
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        })
    }

    /// Wakes every waiting task, if any ever waited.
    fn wake_all(slot: &Option<Arc<Writers>>) {
        if let Some(writers) = slot {
            std::task::Wake::wake_by_ref(writers);
        }
    }
}

impl std::task::Wake for Writers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }
}

#[derive(Default)]
struct Rare {
    /// The error that failed the connection, returned once by the stream.
    failure: Option<Error>,
    /// The close frame received, or 1006 for an abnormal end.
    received: Option<CloseFrame>,
    /// The reader parked by `pause()`, woken by `resume()`.
    resume_waker: Option<Waker>,
    /// Messages dropped by `try_send` under `WhenFull::Drop`.
    dropped: u64,
    /// Per-connection user data (S12).
    data: http::Extensions,
}

/// An open WebSocket connection.
///
/// Receive with the [`Stream`] implementation (or [`WebSocket::recv`]); send with the
/// [`Sink`] implementation or the `send*` methods, which take `&self`. [`WebSocket::split`]
/// gives a reader and a cloneable writer for use from different tasks.
///
/// # Cancel safety
/// A `send*` future dropped before completion leaves its frame queued whole: it is written
/// by the next operation, never torn or duplicated, and the other tasks waiting to send
/// still wake up as the transport drains. `recv` is cancel safe.
pub struct WebSocket<S> {
    shared: Arc<Shared<S>>,
}

/// The receiving half of a split [`WebSocket`].
pub struct WebSocketReader<S> {
    shared: Arc<Shared<S>>,
}

/// The sending half of a split [`WebSocket`]; clone it to send from several tasks.
pub struct WebSocketWriter<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for WebSocketWriter<S> {
    fn clone(&self) -> Self {
        WebSocketWriter {
            shared: self.shared.clone(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps a transport on which the opening handshake is done. `read_buf` holds bytes
    /// already read past the handshake.
    pub fn from_upgraded(
        io: S,
        role: Role,
        config: impl Into<Arc<Config>>,
        read_buf: BytesMut,
    ) -> Self {
        Self::with_info(io, role, config.into(), read_buf, Negotiated::default())
    }

    /// Wraps a transport upgraded by another HTTP server (hyper, axum), with what its
    /// opening handshake agreed: the subprotocol, and the permessage-deflate parameters
    /// (RFC 7692 §7) with this end's [`DeflateConfig`]. `read_buf` holds bytes already
    /// read past the handshake.
    pub fn from_upgraded_with(
        io: S,
        role: Role,
        config: impl Into<Arc<Config>>,
        read_buf: BytesMut,
        protocol: Option<String>,
        deflate: Option<(DeflateParams, DeflateConfig)>,
    ) -> Self {
        let negotiated = Negotiated {
            protocol,
            url: None,
            deflate,
        };
        Self::with_info(io, role, config.into(), read_buf, negotiated)
    }

    pub(crate) fn with_info(
        io: S,
        role: Role,
        config: Arc<Config>,
        read_buf: BytesMut,
        negotiated: Negotiated,
    ) -> Self {
        let mut conn = Connection::new(role, config);
        let mut extensions = String::new();
        if let Some((params, deflate_config)) = negotiated.deflate {
            extensions = params.header_value();
            conn = conn.with_deflate(Deflate::new(role, params, &deflate_config));
        }
        let agreed =
            (negotiated.protocol.is_some() || negotiated.url.is_some() || !extensions.is_empty())
                .then(|| {
                    Box::new(Agreed {
                        protocol: negotiated.protocol,
                        extensions,
                        url: negotiated.url,
                    })
                });
        let info = Info {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            role,
            agreed,
        };
        let inner = Inner {
            io: Some(io),
            conn,
            read_buf,
            read_buf_big: false,
            writers: None,
            timer: None,
            ended: false,
            paused: false,
            reader_waker: None,
            rare: None,
        };
        WebSocket {
            shared: Arc::new(Shared {
                info,
                inner: Mutex::new(inner),
            }),
        }
    }

    /// Splits into a reader and a writer usable from different tasks at once.
    pub fn split(self) -> (WebSocketWriter<S>, WebSocketReader<S>) {
        (
            WebSocketWriter {
                shared: self.shared.clone(),
            },
            WebSocketReader {
                shared: self.shared,
            },
        )
    }

    /// Joins halves split from the same connection.
    ///
    /// # Panics
    /// If the halves come from different connections.
    pub fn reunite(writer: WebSocketWriter<S>, reader: WebSocketReader<S>) -> Self {
        assert!(
            Arc::ptr_eq(&writer.shared, &reader.shared),
            "halves of different WebSockets"
        );
        WebSocket {
            shared: reader.shared,
        }
    }

    /// A cloneable sending handle that shares this connection.
    pub fn writer(&self) -> WebSocketWriter<S> {
        WebSocketWriter {
            shared: self.shared.clone(),
        }
    }

    /// Receives the next message or control frame; `None` once the connection is closed.
    ///
    /// A protocol violation by the peer is returned once as `Err` (the close frame with
    /// its code has been sent), then `None`. A transport that ends without a close frame
    /// gives `Err(Error::Closed)` with code 1006.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.shared.poll_recv(cx)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    pub(crate) fn poll_recv_message(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        self.shared.poll_recv(cx)
    }

    pub(crate) fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.poll_ready(cx)
    }

    pub(crate) fn poll_send_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.poll_flush(cx)
    }

    pub(crate) fn queue_frame(&self, kind: DataKind, data: &[u8]) -> Result<(), Error> {
        self.shared.with_conn(|conn| conn.send(kind, data, true))
    }

    /// Starts the close handshake (no status) unless already closing.
    pub(crate) fn queue_close(&self) {
        let _ = self
            .shared
            .with_conn(|conn| conn.close(None, Instant::now()));
    }

    /// A byte-stream view of this connection (`ws`'s `createWebSocketStream`).
    pub fn into_byte_stream(self) -> crate::stream::ByteStream<S> {
        crate::stream::ByteStream::new(self)
    }
}

macro_rules! sender_methods {
    () => {
        /// Sends a message (text, binary, ping, pong or close): queues it at once and
        /// returns a future that completes when it is written to the transport. A
        /// `Bytes` payload of 64 KiB or more is written from without a copy (a client
        /// masks it in place when nothing else refers to it).
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
        /// # Cancel safety
        /// The message is queued whole when `send` is called; if the future is dropped
        /// it is still written by the next operation, never torn or duplicated.
        pub fn send(&self, message: impl Into<Message>) -> Sending<'_, S> {
            let message = message.into();
            let queued = self.shared.queue_and_write(|inner| inner.queue(message));
            Sending::written(&self.shared, queued)
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
            let queued = self
                .shared
                .queue_and_write(|inner| inner.with_conn(|conn| conn.send(kind, data, fin)));
            Sending::written(&self.shared, queued)
        }

        /// Sends one frame with `ws`'s `send(data, { fin, compress })` options: with
        /// `compress: false` the message goes uncompressed even when permessage-deflate
        /// is negotiated (the first frame of a message decides for all of it).
        ///
        /// # Errors
        /// As [`Self::send`].
        pub fn send_with(
            &self,
            kind: DataKind,
            data: &[u8],
            options: SendOptions,
        ) -> Sending<'_, S> {
            let queued = self.shared.queue_and_write(|inner| {
                inner.with_conn(|conn| conn.send_with(kind, data, options.fin, options.compress))
            });
            Sending::written(&self.shared, queued)
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

        /// Queues a message without waiting (B2). Under the high-water mark it is queued
        /// and the reading task writes it out; over it, the connection's
        /// [`WhenFull`] policy applies: `Wait` refuses with [`Error::QueueFull`] (await
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
        /// previous one (S12: per-connection user data, visible from every handle,
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
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    sender_methods!();
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketWriter<S> {
    sender_methods!();

    /// Whether both handles belong to the same connection.
    pub fn same_connection(&self, other: &WebSocketWriter<S>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketReader<S> {
    /// Receives the next message; see [`WebSocket::recv`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.shared.poll_recv(cx)).await
    }
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock leaves plain data; keep going with it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, sockeye_proto::Error>,
    ) -> Result<T, Error> {
        self.lock().with_conn(f)
    }

    fn queue(&self, message: Message) -> Result<(), Error> {
        self.lock().queue(message)
    }

    /// Queues a frame with `queue` and, if nothing was queued before it, writes it at
    /// once (one attempt that waits for nothing): most sends then finish here, under the
    /// lock already held, and their future has nothing left to do. Returns whether it
    /// was all written.
    fn queue_and_write(
        &self,
        queue: impl FnOnce(&mut Inner<S>) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let mut inner = self.lock();
        let was_idle = inner.conn.transmit().is_empty();
        queue(&mut inner)?;
        Ok(was_idle && inner.try_write_now())
    }

    fn ready_state(&self) -> ReadyState {
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

    fn terminate(&self) {
        let mut inner = self.lock();
        inner.conn.terminate();
        inner.io = None;
        Writers::wake_all(&inner.writers);
    }

    fn wake_writers(&self) {
        Writers::wake_all(&self.lock().writers);
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
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

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.lock();
        if inner.conn.transmit_len() < inner.conn.config().send_queue.high_water {
            return Poll::Ready(Ok(()));
        }
        inner
            .poll_flush_transmit(cx)
            .map_err(|e| inner.write_error(e))
    }

    fn try_queue(&self, message: Message) -> Result<TrySend, Error> {
        let mut inner = self.lock();
        let queue = inner.conn.config().send_queue;
        if inner.conn.transmit_len() >= queue.high_water {
            match queue.when_full {
                WhenFull::Wait => return Err(Error::QueueFull),
                WhenFull::Drop => {
                    inner.rare().dropped += 1;
                    return Ok(TrySend::Dropped);
                }
                WhenFull::Close => {
                    let slow = CloseFrame::new(CloseCode::POLICY_VIOLATION, "send queue full");
                    let _ = inner.conn.close(Some(&slow), Instant::now());
                    inner.wake_reader();
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
    fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut inner = self.lock();
        loop {
            if inner.conn.transmit_len() <= inner.conn.config().send_queue.low_water {
                return Poll::Ready(Ok(()));
            }
            match inner.poll_flush_transmit(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(inner.write_error(e))),
                Poll::Pending => {
                    // Partly written: below the mark already?
                    if inner.conn.transmit_len() <= inner.conn.config().send_queue.low_water {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let mut inner = self.lock();
        inner.poll_recv(cx)
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
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T, sockeye_proto::Error>,
    ) -> Result<T, Error> {
        if (self.io.is_none() || self.ended) && self.conn.state() == State::Closed {
            return Err(self.ended_error());
        }
        let mid_frame = self.conn.is_mid_frame();
        let result = f(&mut self.conn).map_err(Error::from);
        if mid_frame && !self.conn.is_mid_frame() {
            // A frame sent in pieces ended: the control frames held for it, and a close
            // of the transport that waited for it, are the reader task's to carry out.
            self.wake_reader();
        }
        result
    }

    /// Encodes a message into the transmit buffer.
    /// The payload is handed over: large ones are written from it without a copy.
    fn queue(&mut self, message: Message) -> Result<(), Error> {
        self.with_conn(|conn| match message {
            Message::Text(text) => conn.send_bytes(DataKind::Text, text.into_bytes(), true, true),
            Message::UncheckedText(data) => conn.send_bytes(DataKind::Text, data, true, true),
            Message::Binary(data) => conn.send_bytes(DataKind::Binary, data, true, true),
            Message::Ping(data) => conn.ping(&data),
            Message::Pong(data) => conn.pong(&data),
            Message::Close(frame) => conn.close(frame.as_ref(), Instant::now()),
            Message::Fragment(fragment) => conn.send_fragment(fragment, true),
        })
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Remembers the reading task's waker, without a clone when it is the same task
    /// as last time.
    fn park_reader(&mut self, cx: &Context<'_>) {
        match &self.reader_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.reader_waker = Some(cx.waker().clone()),
        }
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
    }

    /// One attempt to write out all that is queued, with a waker that wakes nobody:
    /// true when it all went (and the transport flushed). Anything short of that (a
    /// partial write, `Pending`, an error) is left to [`Inner::poll_flush_transmit`],
    /// which the send's future runs with its task's waker, and which registers that
    /// waker in place of this one. Not tried while a task waits to write: the
    /// transport holds the waker for it, which this attempt would replace.
    fn try_write_now(&mut self) -> bool {
        if Writers::any_waiting(&self.writers) {
            return false;
        }
        let Some(io) = self.io.as_mut() else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        let transmit = self.conn.transmit();
        match poll_write_some(io, transmit, &mut cx) {
            Poll::Ready(Ok(n)) if n > 0 => transmit.advance(n),
            _ => return false,
        }
        if !transmit.is_empty() || !matches!(Pin::new(io).poll_flush(&mut cx), Poll::Ready(Ok(())))
        {
            return false;
        }
        // Written out: an idle connection holds no write buffer (beyond a small one).
        transmit.shrink();
        true
    }

    /// Writes the transmit buffer out. Ready once it is empty and the transport flushed.
    fn poll_flush_transmit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        self.conn.transmit().shrink();
        Writers::wake_all(&self.writers);
        Poll::Ready(Ok(()))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        // Bytes read do not move a deadline; what reads them (and the end of the stream)
        // may, so the timer is checked on entry and after anything but a plain read.
        let mut check_deadline = true;
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if self.paused {
                self.rare().resume_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if check_deadline {
                let _ = self.poll_deadline(cx);
            }
            check_deadline = true;
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
            let high_water = self.conn.config().send_queue.high_water;
            if self.conn.transmit_len() >= high_water && !self.conn.is_read_closed() {
                self.park_reader(cx);
                return Poll::Pending;
            }
            if !self.conn.is_read_closed() && self.conn.wants_read(&self.read_buf) {
                // The clock is read only when the read needs the time (not for a
                // server's data frames without a heartbeat).
                match self.conn.read_with(&mut self.read_buf, Instant::now) {
                    Ok(Some(message)) => {
                        if let Message::Close(frame) = &message {
                            if frame.is_some() {
                                self.rare().received = frame.clone();
                            }
                        }
                        // Answer at once (pong, close reply) and, on a server whose close
                        // handshake just ended, close TCP now (RFC 6455 §7.1.1).
                        if let Poll::Ready(Err(e)) = self.poll_flush_pending(cx) {
                            let _ = self.end_with_io_error(e);
                        } else if self.conn.should_close_transport()
                            && self.conn.transmit().is_empty()
                        {
                            if let Some(io) = self.io.as_mut() {
                                if Pin::new(io).poll_shutdown(cx).is_ready() {
                                    self.io = None;
                                }
                            }
                        }
                        return Poll::Ready(Some(Ok(message)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.rare().failure = Some(Error::Protocol(e));
                        continue;
                    }
                }
            }
            if self.conn.is_read_closed() {
                return self.poll_closing(cx);
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(n)) => {
                    check_deadline = n == 0;
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.end_with_io_error(e)))),
                Poll::Pending => {
                    // Arm the timer for the deadline the read may have started (the
                    // heartbeat's clock); if one already passed, act on it now.
                    if self.poll_deadline(cx) {
                        continue;
                    }
                    self.park_reader(cx);
                    return Poll::Pending;
                }
            }
        }
    }

    /// Writes queued bytes if there are any; `Ready(Ok)` also when nothing was queued.
    fn poll_flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.transmit().is_empty() {
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
            .clamp(READ_CHUNK, MAX_READ_RESERVE);
        if self.read_buf.is_empty() {
            // Borrow the thread's spare buffer rather than allocating one.
            if let Some(spare) = SPARE_READ_BUF.take() {
                if spare.capacity() > self.read_buf.capacity() {
                    self.read_buf = spare;
                    self.read_buf_big = false;
                } else {
                    // Ours is as large: leave the spare for the next connection.
                    SPARE_READ_BUF.set(Some(spare));
                }
            }
        }
        self.read_buf.reserve(want);
        if self.read_buf.capacity() > SPARE_MAX {
            self.read_buf_big = true;
        }
        let n = match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.read_buf) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.read_buf.is_empty() {
                    // Idle: hold no read buffer while waiting. The buffer goes back to
                    // the thread's spare slot when it is ours alone (no message still
                    // refers to it) and not grown for a large frame.
                    let mut buf = std::mem::take(&mut self.read_buf);
                    if !self.read_buf_big && buf.try_reclaim(READ_CHUNK) {
                        let slot = SPARE_READ_BUF.take();
                        if slot
                            .as_ref()
                            .is_some_and(|s| s.capacity() >= buf.capacity())
                        {
                            SPARE_READ_BUF.set(slot);
                        } else {
                            if buf.capacity() < SPARE_SIZE {
                                // The thread has no spare of full size: make this one.
                                buf.reserve(SPARE_SIZE);
                            }
                            SPARE_READ_BUF.set(Some(buf));
                        }
                    }
                }
                return Poll::Pending;
            }
        };
        if n == 0 {
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
        Poll::Ready(Ok(n))
    }

    /// After the last frame: write what is queued, wait out the close handshake, close
    /// the transport, then report the end.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        if self.conn.should_abort_transport() {
            // Terminated (the heartbeat gave up), or what was left to write outlived
            // close_timeout (a peer that does not read): close now, without it. Tasks
            // still waiting for it to be written get an error.
            self.io = None;
            return self.finish();
        }
        if let Poll::Ready(Err(e)) = self.poll_flush_transmit(cx) {
            return Poll::Ready(Some(Err(self.end_with_io_error(e))));
        }
        if !self.conn.transmit().is_empty() {
            return Poll::Pending;
        }
        if !self.conn.should_close_transport() {
            // A client waits for the server to close TCP, bounded by close_timeout.
            let _ = self.poll_deadline(cx);
            if self.conn.should_close_transport() {
                return self.poll_closing(cx);
            }
            // Keep reading (and discarding) until end of stream.
            self.read_buf.clear();
            return match self.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {
                    self.read_buf.clear();
                    self.poll_closing(cx)
                }
                Poll::Ready(Err(_)) => {
                    self.io = None;
                    self.finish()
                }
                Poll::Pending => Poll::Pending,
            };
        }
        if let Some(io) = self.io.as_mut() {
            match Pin::new(io).poll_shutdown(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => self.io = None,
            }
        }
        self.finish()
    }

    fn finish(&mut self) -> Poll<Option<Result<Message, Error>>> {
        self.ended = true;
        self.timer = None;
        self.read_buf = BytesMut::new();
        self.conn.transmit().shrink();
        Writers::wake_all(&self.writers);
        Poll::Ready(self.rare.as_mut().and_then(|r| r.failure.take()).map(Err))
    }

    fn end_with_io_error(&mut self, e: io::Error) -> Error {
        self.conn.terminate();
        self.io = None;
        self.ended = true;
        Writers::wake_all(&self.writers);
        Error::from(e)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketReader<S> {
    type Item = Result<Message, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.poll_recv(cx)
    }
}

macro_rules! impl_sink {
    ($ty:ident) => {
        impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for $ty<S> {
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
    };
}

impl_sink!(WebSocket);
impl_sink!(WebSocketWriter);

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("id", &self.shared.info.id)
            .finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WebSocketWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketWriter")
            .field("id", &self.shared.info.id)
            .finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WebSocketReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketReader")
            .field("id", &self.shared.info.id)
            .finish_non_exhaustive()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<WebSocket<tokio::net::TcpStream>>();
    check::<WebSocketReader<tokio::net::TcpStream>>();
    check::<WebSocketWriter<tokio::net::TcpStream>>();
    let _ = Bytes::new();
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shared<S> {
    pub(crate) fn is_open_or_closing(&self) -> bool {
        matches!(self.ready_state(), ReadyState::Open | ReadyState::Closing)
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
#[cfg(test)]
mod tests {
    /// The idle-memory budget (BENCHMARKS.md: at most 1 KiB per idle connection, with
    /// tokio's task and I/O registration): the shared state of a TCP connection, with
    /// the `Arc` counts, fits the allocator's 384-byte size class.
    #[test]
    fn shared_state_fits_its_size_class() {
        let size = std::mem::size_of::<super::Shared<tokio::net::TcpStream>>();
        assert!(size + 16 <= 384, "Shared<TcpStream> is {size} bytes");
    }
}
