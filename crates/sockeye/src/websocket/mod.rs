//! [`WebSocket`]: an open connection over any `AsyncRead + AsyncWrite`, as a `Stream` of
//! messages and a `Sink` of messages, with split halves for two tasks.
//!
//! The connection is a [`sockeye_proto::Connection`] and the transport behind one short
//! lock. Every operation polls the transport directly from the calling task; there is no
//! background task per connection. Reading drives the connection: automatic pongs, the
//! close handshake and its timeout progress while somebody polls the stream.
//!
//! Files: `pump` (the shared state, and driving the transport against the core),
//! `writer` (the sending handle, [`WebSocketWriter`], which a `WebSocket` derefs to),
//! `sending` (the future of a send), `wakers` (the tasks waiting on the transport) and
//! `read_pool` (the thread's spare read buffer), `fanout` (a connection's side of a
//! [`Hub`](crate::Hub) publish).

use std::future::poll_fn;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use sockeye_proto::{
    CloseFrame, Config, Connection, DataKind, Deflate, DeflateConfig, DeflateParams, Message, Role,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Error;

mod fanout;
mod pump;
mod read_pool;
mod sending;
mod wakers;
mod write_pool;
mod writer;

pub(crate) use pump::{EndHook, Shared};
pub use sending::Sending;
pub use writer::WebSocketWriter;

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
    /// The connection's span, made by a front end that knows the request
    /// ([`request_span`]); `None`: one is made here.
    pub(crate) span: Option<tracing::Span>,
}

/// The `tracing` span of a server connection upgraded from `request`: a `websocket`
/// span at debug level with the path and HTTP version; the rest of its fields (`id`,
/// `role`, `url`, `protocol`, `extensions`, and at the end `close_code` and
/// `closed_by`) are recorded as they are known. Disabled, and free, when no subscriber
/// wants it.
pub(crate) fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "websocket",
        id = tracing::field::Empty,
        role = tracing::field::Empty,
        path = %request.uri().path(),
        http = ?request.version(),
        url = tracing::field::Empty,
        protocol = tracing::field::Empty,
        extensions = tracing::field::Empty,
        close_code = tracing::field::Empty,
        closed_by = tracing::field::Empty,
    )
}

/// What [`WebSocketWriter::try_send`] did with a message.
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

/// An open WebSocket connection.
///
/// Receive with the [`Stream`] implementation (or [`WebSocket::recv`]); send with the
/// [`Sink`] implementation or the `send*` methods, which take `&self`. [`WebSocket::split`]
/// gives a reader and a cloneable writer for use from different tasks.
///
/// A `WebSocket` derefs to its [`WebSocketWriter`]: the sending methods (`send_text`,
/// `ping`, `try_send` ...) and the connection's facts (`ready_state`, `protocol`, `id`
/// ...) are the writer's, listed under "Methods from Deref". [`WebSocket::send`] and
/// [`WebSocket::close`] are repeated here so that they win over `SinkExt`'s methods of
/// the same names when `futures_util::SinkExt` is in scope.
///
/// # Cancel safety
/// A `send*` future dropped before completion leaves its frame queued whole: it is written
/// by the next operation, never torn or duplicated, and the other tasks waiting to send
/// still wake up as the transport drains. A send held because the send queue was full is
/// not sent if dropped before it was queued (see [`WebSocketWriter`], "Bounded sends").
/// `recv` is cancel safe.
pub struct WebSocket<S> {
    writer: WebSocketWriter<S>,
}

/// The receiving half of a split [`WebSocket`].
pub struct WebSocketReader<S> {
    shared: Arc<Shared<S>>,
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
            span: None,
        };
        Self::with_info(io, role, config.into(), read_buf, negotiated)
    }

    /// Wraps a server transport upgraded from `request` by another HTTP server (hyper,
    /// axum), as [`from_upgraded_with`](Self::from_upgraded_with) does; the connection's
    /// `websocket` tracing span also carries the request's path and HTTP version, as the
    /// connections of [`accept`](crate::accept) and
    /// [`WebSocketServer`](crate::WebSocketServer) do.
    pub fn from_request_upgraded<B>(
        io: S,
        config: impl Into<Arc<Config>>,
        read_buf: BytesMut,
        request: &http::Request<B>,
        protocol: Option<String>,
        deflate: Option<(DeflateParams, DeflateConfig)>,
    ) -> Self {
        let negotiated = Negotiated {
            protocol,
            url: None,
            deflate,
            span: Some(request_span(request)),
        };
        Self::with_info(io, Role::Server, config.into(), read_buf, negotiated)
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
        let span = negotiated.span.unwrap_or_else(|| {
            tracing::debug_span!(
                "websocket",
                id = tracing::field::Empty,
                role = tracing::field::Empty,
                path = tracing::field::Empty,
                http = tracing::field::Empty,
                url = tracing::field::Empty,
                protocol = tracing::field::Empty,
                extensions = tracing::field::Empty,
                close_code = tracing::field::Empty,
                closed_by = tracing::field::Empty,
            )
        });
        // Kept only when a subscriber is interested: an idle connection carries
        // nothing for it otherwise.
        let span = (!span.is_disabled()).then(|| {
            span.record("id", info.id);
            span.record(
                "role",
                if role == Role::Server {
                    "server"
                } else {
                    "client"
                },
            );
            if let Some(agreed) = &info.agreed {
                if let Some(url) = &agreed.url {
                    span.record("url", url.as_str());
                }
                if let Some(protocol) = &agreed.protocol {
                    span.record("protocol", protocol.as_str());
                }
                span.record("extensions", agreed.extensions.as_str());
            }
            tracing::debug!(parent: &span, "connection open");
            span
        });
        let shared = Shared::new(info, io, conn, read_buf, span);
        WebSocket {
            writer: WebSocketWriter::from_shared(Arc::new(shared)),
        }
    }

    /// Splits into a reader and a writer usable from different tasks at once.
    pub fn split(self) -> (WebSocketWriter<S>, WebSocketReader<S>) {
        let reader = WebSocketReader {
            shared: self.writer.shared.clone(),
        };
        (self.writer, reader)
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
        WebSocket { writer }
    }

    /// A cloneable sending handle that shares this connection.
    pub fn writer(&self) -> WebSocketWriter<S> {
        self.writer.clone()
    }

    /// Sends a message: [`WebSocketWriter::send`], here so that it is found before
    /// `SinkExt::send` when that trait is in scope.
    ///
    /// # Errors
    /// As [`WebSocketWriter::send`].
    ///
    /// # Cancel safety
    /// As [`WebSocketWriter::send`]: the message is queued whole when `send` is called,
    /// unless the send queue is full and it is held for room.
    pub fn send(&self, message: impl Into<Message>) -> Sending<'_, S> {
        self.writer.send(message)
    }

    /// Starts the close handshake: [`WebSocketWriter::close`], here so that it is found
    /// before `SinkExt::close` when that trait is in scope.
    ///
    /// # Errors
    /// As [`WebSocketWriter::close`].
    ///
    /// # Cancel safety
    /// As [`WebSocketWriter::close`]: the close frame is queued when `close` is called.
    pub fn close(&self, frame: Option<CloseFrame>) -> Sending<'_, S> {
        self.writer.close(frame)
    }

    /// Receives the next message or control frame; `None` once the connection is closed.
    ///
    /// A protocol violation by the peer is returned once as `Err`, then `None`. It is
    /// returned once the connection has ended: the close frame with its code is written,
    /// the transport shut down for writing, and what the peer still sends is read and
    /// discarded until its end of stream, or for at most `close_timeout`, as `ws` does
    /// (a transport closed with the peer's bytes unread would be reset, and the peer
    /// would lose the close frame). A transport that ends without a close frame gives
    /// `Err(Error::Closed)` with code 1006.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.writer.shared.poll_recv(cx)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    pub(crate) fn poll_recv_message(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        self.writer.shared.poll_recv(cx)
    }

    pub(crate) fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.writer.shared.poll_ready(cx)
    }

    pub(crate) fn poll_send_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.writer.shared.poll_flush(cx)
    }

    pub(crate) fn queue_frame(&self, kind: DataKind, data: &[u8]) -> Result<(), Error> {
        self.writer
            .shared
            .with_conn(|conn| conn.send(kind, data, true))
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

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketReader<S> {
    /// Receives the next message; see [`WebSocket::recv`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.shared.poll_recv(cx)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.writer.shared.poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketReader<S> {
    type Item = Result<Message, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.poll_recv(cx)
    }
}

impl<S> Deref for WebSocket<S> {
    type Target = WebSocketWriter<S>;

    fn deref(&self) -> &WebSocketWriter<S> {
        &self.writer
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.get_mut().writer).poll_ready(cx)
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        Pin::new(&mut self.get_mut().writer).start_send(item)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.get_mut().writer).poll_close(cx)
    }
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("id", &self.writer.shared.info.id)
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

#[cfg(test)]
mod tests {
    use super::{Message, Sending, WebSocket, WebSocketWriter};

    /// With `SinkExt` in scope, `send` and `close` on a `WebSocket` (through its writer)
    /// and on a writer are still the inherent methods, not `SinkExt`'s of the same name:
    /// the calls type-check as [`Sending`].
    #[allow(dead_code, unused_mut)]
    fn sink_ext_does_not_shadow_send_and_close(
        mut ws: WebSocket<tokio::net::TcpStream>,
        mut writer: WebSocketWriter<tokio::net::TcpStream>,
    ) {
        #[allow(unused_imports)] // In scope to show that it is not picked.
        use futures_util::SinkExt;
        fn sending<S>(_: Sending<'_, S>) {}
        sending(ws.send(Message::text("x")));
        sending(ws.close(None));
        sending(ws.send_text("x"));
        sending(writer.send(Message::text("x")));
        sending(writer.close(None));
    }

    /// The idle-memory budget (BENCHMARKS.md: at most 1 KiB per idle connection, with
    /// tokio's task and I/O registration): the shared state of a TCP connection, with
    /// the `Arc` counts, fits the allocator's 384-byte size class.
    #[test]
    fn shared_state_fits_its_size_class() {
        let size = std::mem::size_of::<super::Shared<tokio::net::TcpStream>>();
        assert!(size + 16 <= 384, "Shared<TcpStream> is {size} bytes");
    }
}
