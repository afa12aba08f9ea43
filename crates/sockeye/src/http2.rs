//! WebSockets over HTTP/2 (RFC 8441): a WebSocket as one stream of a shared HTTP/2
//! connection, opened with an extended CONNECT (`:protocol = websocket`) and accepted
//! with a `200`. Browsers use it when the server announces
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
//!
//! - [`Http2Stream`]: one such stream as `AsyncRead + AsyncWrite`, so that the
//!   [`WebSocket`] over it is the same type with the same API, limits, deflate and close
//!   handshake (which ends the stream with `END_STREAM`). Its backpressure is HTTP/2
//!   flow control: data is acknowledged (the window reopened) only as the WebSocket
//!   reads it, so a reader that stops reading stops its own stream; writes wait for
//!   window.
//! - [`Http2Connection`]: the client side, an HTTP/2 connection to one origin on which
//!   [`Http2Connection::websocket`] opens as many WebSockets as the server allows, each
//!   closed on its own. [`crate::connect_maybe_tls_with`] uses it as
//!   [`ClientConfig::http2`] says ([`Http2Mode`]).
//! - [`serve_connection`]: the server side, an HTTP/2 connection whose extended CONNECT
//!   requests go through the same decision as HTTP/1.1 upgrades
//!   ([`ServerConfig::decide`]); `WebSocketServer::bind_tls` uses it for connections
//!   that choose `h2` in ALPN or send the HTTP/2 preface.
//!
//! The handshake itself is sans-I/O, in `sockeye_proto::handshake::http2`; the h2 crate
//! does the HTTP/2 framing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use sockeye_proto::handshake::client::ClientRequest;
use sockeye_proto::handshake::http2::ConnectProtocol;
use sockeye_proto::{HandshakeError, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::accept::ServerConfig;
use crate::client::{ClientConfig, Target};
use crate::error::Error;
use crate::tls::{MaybeTlsStream, ServerStream};
use crate::websocket::{Negotiated, WebSocket};

/// The most body bytes kept from a refusal (a non-2xx answer).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// When a client speaks HTTP/2 ([`ClientConfig::http2`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Http2Mode {
    /// Only HTTP/1.1 (the default).
    #[default]
    Never,
    /// HTTP/2 when the server offers it: over TLS, `h2` first in ALPN, and a WebSocket
    /// stream if the server then announces `SETTINGS_ENABLE_CONNECT_PROTOCOL` (else a new
    /// HTTP/1.1 connection); over plain TCP, HTTP/1.1 (there is no offer to see).
    IfOffered,
    /// Only HTTP/2: over TLS, `h2` alone in ALPN; over plain TCP or a Unix socket, HTTP/2
    /// with prior knowledge (h2c). A server that does not speak it, or does not announce
    /// the extended CONNECT, is [`Error::Http2`].
    Required,
}

/// HTTP/2 settings of a client or server, with [`Http2Mode`] for when to use it.
///
/// Flow control is per stream and per connection: data a WebSocket has not read yet
/// holds window of both. A stalled reader therefore stops its own stream at
/// `stream_window` bytes, and the other streams of the connection keep going until
/// stalled streams hold `connection_window` (by default 64 streams' worth).
#[derive(Clone, Copy, Debug)]
pub struct Http2Config {
    /// When to speak HTTP/2 (default [`Http2Mode::Never`] on a client; on a server, see
    /// `WebSocketServer::bind_tls`).
    pub mode: Http2Mode,
    /// The receive window of each stream, the most unread bytes a peer may send on it
    /// (default 256 KiB).
    pub stream_window: u32,
    /// The receive window of the connection, over all its streams (default 16 MiB).
    pub connection_window: u32,
    /// The most streams (WebSockets) the peer may have open at once on a connection this
    /// side accepts (default 100).
    pub max_concurrent_streams: u32,
    /// The most bytes of a header block (default 16 KiB, as `HeadLimits`).
    pub max_header_list_size: u32,
    /// The most bytes queued for sending on one stream beyond its window (default
    /// 400 KiB).
    pub max_send_buffer: usize,
    /// Once this side has ended a stream (after the close handshake), how long the peer
    /// has to end its side before the stream is reset (default 5 s). Until then what it
    /// sends is read and dropped, so that the close frame it is still reading is not
    /// lost to a reset, as a TCP server lingers before closing.
    pub linger: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            mode: Http2Mode::Never,
            stream_window: 256 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            max_send_buffer: 400 * 1024,
            linger: Duration::from_secs(5),
        }
    }
}

/// One HTTP/2 stream as a byte stream: the DATA frames of an accepted extended CONNECT.
///
/// Reading returns the stream's data and acknowledges it to the peer as it is read
/// (flow control); its end (`END_STREAM`, or a reset with `NO_ERROR`/`CANCEL`) reads as
/// end of file, another reset as [`io::ErrorKind::ConnectionReset`]. A write sends as
/// much as the window allows and waits for window otherwise. `shutdown` ends the stream
/// (`END_STREAM`). Dropped after `shutdown`, it lingers (see [`Http2Config::linger`])
/// for the peer's end of the stream; dropped before, it resets the stream (`CANCEL`).
pub struct Http2Stream {
    send: h2::SendStream<Bytes>,
    /// `None` only once dropped.
    recv: Option<h2::RecvStream>,
    /// Received and not yet read.
    chunk: Bytes,
    ended: bool,
    linger: Duration,
}

impl Http2Stream {
    /// A stream from its two halves, lingering as long as [`Http2Config::linger`] says.
    pub fn new(
        send: h2::SendStream<Bytes>,
        recv: h2::RecvStream,
        config: &Http2Config,
    ) -> Http2Stream {
        Http2Stream {
            send,
            recv: Some(recv),
            chunk: Bytes::new(),
            ended: false,
            linger: config.linger,
        }
    }

    /// The stream's id on its connection.
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }
}

impl std::fmt::Debug for Http2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Stream")
            .field("stream_id", &self.stream_id())
            .finish_non_exhaustive()
    }
}

/// An h2 error as an I/O error: a reset by the peer is `ConnectionReset`.
fn io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = if error.is_reset() || error.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, error)
}

impl AsyncRead for Http2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while this.chunk.is_empty() {
            match ready!(recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.chunk = data,
                Some(Err(error)) => {
                    return Poll::Ready(match error.reason() {
                        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => Ok(()),
                        _ => Err(io_error(error)),
                    });
                }
            }
        }
        let n = this.chunk.len().min(buf.remaining());
        buf.put_slice(&this.chunk[..n]);
        this.chunk.advance(n);
        // Reopen the window only for what the reader took.
        let _ = recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Http2Stream {
    fn drop(&mut self) {
        let Some(mut recv) = self.recv.take() else {
            return;
        };
        if !self.ended || recv.is_end_stream() {
            return;
        }
        // This side is done; wait for the peer's END_STREAM (bounded), dropping its data.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let linger = self.linger;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(linger, async {
                while let Some(Ok(data)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(data.len());
                }
            })
            .await;
        });
    }
}

impl AsyncWrite for Http2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                let data = Bytes::copy_from_slice(&buf[..n]);
                self.send.send_data(data, false).map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what h2 has queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            // Fails only on a stream that is already reset or closed: nothing to end.
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// An h2 error in words.
fn h2_failed(error: h2::Error) -> Error {
    if error.is_io() {
        if let Some(io) = error.into_io() {
            return Error::Io(io);
        }
        return Error::Http2("I/O error".into());
    }
    Error::Http2(error.to_string())
}

/// A client's HTTP/2 connection to one origin, on which WebSockets are opened as
/// streams ([`Http2Connection::websocket`]). Clones share the connection; it closes
/// once every clone and every WebSocket on it is dropped.
#[derive(Clone)]
pub struct Http2Connection {
    send: h2::client::SendRequest<Bytes>,
    scheme: &'static str,
    authority: String,
    origin: String,
}

impl std::fmt::Debug for Http2Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Connection")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Http2Connection {
    /// Connects to the origin of `url` (`ws://`, `wss://` or `ws+unix:`) and speaks
    /// HTTP/2: over TLS with `h2` in ALPN, else with prior knowledge (h2c). The TCP
    /// connect, proxy tunnel, TLS and HTTP/2 handshakes are bounded by
    /// `config.handshake_timeout`; `config.http2` gives the windows (its `mode` is not
    /// consulted: this is HTTP/2).
    ///
    /// # Errors
    /// [`Error::Url`], [`Error::Io`], [`Error::Tls`]; [`Error::Http2`] when the server
    /// does not choose `h2` or does not announce `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the connection.
    pub async fn connect(url: &str, config: &ClientConfig) -> Result<Http2Connection, Error> {
        let target = Target::parse(url)?;
        crate::client::with_timeout(config.handshake_timeout, async {
            let io = crate::client::open_transport(&target, url, config, &[b"h2"]).await?;
            if target.tls && io.alpn_protocol() != Some(b"h2") {
                return Err(Error::Http2(format!("{url}: the server did not choose h2")));
            }
            Http2Connection::handshake(io, &target, config)
                .await?
                .ok_or_else(|| not_announced(url))
        })
        .await
    }

    /// The HTTP/2 handshake on `io`; `None` when the server does not announce the
    /// extended CONNECT. Waits for the server's settings: the answer to a PING comes
    /// after them.
    pub(crate) async fn handshake<I>(
        io: I,
        target: &Target,
        config: &ClientConfig,
    ) -> Result<Option<Http2Connection>, Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let settings = &config.http2;
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer)
            // No server push, and no stream the server would open.
            .enable_push(false)
            .max_concurrent_streams(0)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(h2_failed)?;
        let mut ping = connection
            .ping_pong()
            .ok_or_else(|| Error::Http2("no PING handle".into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/2 connection ended");
            }
        });
        ping.ping(h2::Ping::opaque()).await.map_err(h2_failed)?;
        if !send.is_extended_connect_protocol_enabled() {
            return Ok(None);
        }
        Ok(Some(Http2Connection {
            send,
            scheme: if target.tls { "https" } else { "http" },
            authority: target.host_header.clone(),
            origin: target.origin_key(),
        }))
    }

    /// Opens a WebSocket to `url` (of this connection's origin) as a new stream: the
    /// same request as over HTTP/1.1 (`config`'s subprotocols, origin, headers, deflate,
    /// `finish_request` hook) as an extended CONNECT, bounded by `handshake_timeout`. A
    /// refusal is [`Error::UnexpectedResponse`] with its status, headers and up to 64 KiB
    /// of body; redirects are not followed.
    ///
    /// # Errors
    /// [`Error::Url`] for another origin; [`Error::Http2`] when the stream cannot be
    /// opened (the connection is gone, or the server refused the stream); the handshake
    /// errors of [`crate::connect_with`].
    ///
    /// # Cancel safety
    /// Dropping the future resets the stream.
    pub async fn websocket(
        &self,
        url: &str,
        config: &ClientConfig,
    ) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
        let target = Target::parse(url)?;
        if target.origin_key() != self.origin {
            return Err(Error::Url(format!(
                "{url}: not the origin of this HTTP/2 connection ({})",
                self.authority
            )));
        }
        let headers = crate::client::request_headers(&target, url, config)?;
        crate::client::with_timeout(config.handshake_timeout, async {
            match self.open(&target, url, config, headers, false).await? {
                crate::client::Outcome::Open(ws, response) => Ok((ws, response)),
                crate::client::Outcome::Redirect(_) => unreachable!("redirects not followed"),
            }
        })
        .await
    }

    /// Sends the extended CONNECT and reads the answer.
    pub(crate) async fn open(
        &self,
        target: &Target,
        url: &str,
        config: &ClientConfig,
        headers: HeaderMap,
        follow_redirects: bool,
    ) -> Result<crate::client::Outcome<MaybeTlsStream>, Error> {
        let request = ClientRequest {
            host: self.authority.clone(),
            path: target.path.clone(),
            protocols: config.protocols.clone(),
            origin: config.origin.clone(),
            version: config.protocol_version,
            headers,
            deflate: config.per_message_deflate.clone(),
        };
        let (mut request, expect) = request.extended_connect(self.scheme)?;
        if let Some(ConnectProtocol(protocol)) = request.extensions_mut().remove() {
            let protocol = h2::ext::Protocol::from(protocol.as_str());
            request.extensions_mut().insert(protocol);
        }
        let mut send = self.send.clone().ready().await.map_err(h2_failed)?;
        let (response, send_stream) = send.send_request(request, false).map_err(h2_failed)?;
        let response = response.await.map_err(h2_failed)?;
        let (parts, recv) = response.into_parts();
        let head = Response::from_parts(parts, ());
        if let Some(location) = crate::client::redirect(&head, follow_redirects) {
            return Ok(crate::client::Outcome::Redirect(location));
        }
        match expect.validate(head.clone()) {
            Ok(accepted) => {
                let stream = Http2Stream::new(send_stream, recv, &config.http2);
                let io = MaybeTlsStream::Http2(Box::new(stream));
                Ok(crate::client::opened(
                    io,
                    BytesMut::new(),
                    url,
                    config,
                    accepted,
                ))
            }
            Err(HandshakeError::UnexpectedStatus(_)) => {
                let body = read_body(recv).await;
                let (parts, ()) = head.into_parts();
                Err(Error::UnexpectedResponse(Box::new(Response::from_parts(
                    parts, body,
                ))))
            }
            Err(error) => Err(Error::Handshake(error)),
        }
    }
}

fn not_announced(url: &str) -> Error {
    Error::Http2(format!(
        "{url}: the server does not announce SETTINGS_ENABLE_CONNECT_PROTOCOL (no WebSockets over HTTP/2)"
    ))
}

/// A refusal's body: at most [`MAX_ERROR_BODY`] bytes within 2 s.
async fn read_body(mut recv: h2::RecvStream) -> Bytes {
    let mut body = BytesMut::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while body.len() < MAX_ERROR_BODY {
            match recv.data().await {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    body.extend_from_slice(&data);
                }
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    body.truncate(MAX_ERROR_BODY);
    body.freeze()
}

/// The client's request over HTTP/2, as [`ClientConfig::http2`] says: the outcome of
/// the extended CONNECT, or (`Err`) the transport to speak HTTP/1.1 on when the mode and
/// the server lead there.
pub(crate) async fn client_exchange(
    target: &Target,
    url: &str,
    config: &ClientConfig,
    headers: HeaderMap,
    follow_redirects: bool,
) -> Result<Result<crate::client::Outcome<MaybeTlsStream>, MaybeTlsStream>, Error> {
    let mode = config.http2.mode;
    let alpn: &[&[u8]] = match mode {
        Http2Mode::Required => &[b"h2"],
        _ => &[b"h2", b"http/1.1"],
    };
    let io = crate::client::open_transport(target, url, config, alpn).await?;
    let speaks_h2 = if target.tls {
        io.alpn_protocol() == Some(b"h2")
    } else {
        mode == Http2Mode::Required
    };
    if !speaks_h2 {
        if mode == Http2Mode::Required {
            return Err(Error::Http2(format!("{url}: the server did not choose h2")));
        }
        return Ok(Err(io));
    }
    match Http2Connection::handshake(io, target, config).await? {
        Some(connection) => connection
            .open(target, url, config, headers, follow_redirects)
            .await
            .map(Ok),
        None if mode == Http2Mode::Required => Err(not_announced(url)),
        // HTTP/2 without WebSockets: HTTP/1.1 on a new connection.
        None => {
            let io = crate::client::open_transport(target, url, config, &[b"http/1.1"]).await?;
            Ok(Err(io))
        }
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection starts with the HTTP/2 preface, looking without reading.
/// Waits for as many bytes as tell it from an HTTP/1.1 request line.
pub(crate) async fn peek_preface(tcp: &tokio::net::TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 || !PREFACE.starts_with(&buf[..n]) {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface: `peek` returns at once while no more has come (the
        // caller bounds the wait with the handshake timeout).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `tls` with ALPN as `mode` says: `h2` and `http/1.1` for `IfOffered`, `h2` alone for
/// `Required`, as it was for `Never` (what `WebSocketServer::bind_tls` does to its TLS
/// settings; for servers that do their own TLS handshake and then call
/// [`serve_connection`] when `h2` was chosen). Only with the `rustls` feature.
#[cfg(feature = "rustls")]
pub fn offer_in_alpn(tls: Arc<rustls::ServerConfig>, mode: Http2Mode) -> Arc<rustls::ServerConfig> {
    let alpn: &[&[u8]] = match mode {
        Http2Mode::Never => return tls,
        Http2Mode::IfOffered => &[b"h2", b"http/1.1"],
        Http2Mode::Required => &[b"h2"],
    };
    let mut tls = Arc::unwrap_or_clone(tls);
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(tls)
}

/// What [`serve_connection`] does with each accepted WebSocket (in a task of its own).
pub type OnWebSocket<S> = Arc<dyn Fn(WebSocket<S>, Request<()>) -> BoxFuture + Send + Sync>;

/// A boxed future of [`OnWebSocket`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The answer to a request that is not a CONNECT (a page, a file): `None` leaves it to
/// the WebSocket decision, which refuses it (405).
pub type OnRequest = Arc<dyn Fn(&Request<()>) -> Option<Response<Bytes>> + Send + Sync>;

/// What [`serve_connection`] does with the requests of an HTTP/2 connection.
pub struct Http2Service<S> {
    /// Each accepted WebSocket, with its request.
    pub on_websocket: OnWebSocket<S>,
    /// Requests that are not a CONNECT; `None`: all are refused as the WebSocket
    /// decision says.
    pub on_request: Option<OnRequest>,
}

impl<S> Clone for Http2Service<S> {
    fn clone(&self) -> Self {
        Http2Service {
            on_websocket: self.on_websocket.clone(),
            on_request: self.on_request.clone(),
        }
    }
}

impl<S> Http2Service<S> {
    /// WebSockets only.
    pub fn websockets(on_websocket: OnWebSocket<S>) -> Self {
        Http2Service {
            on_websocket,
            on_request: None,
        }
    }
}

/// Serves an HTTP/2 connection (after the TLS handshake chose `h2`, or with prior
/// knowledge): announces `SETTINGS_ENABLE_CONNECT_PROTOCOL`, decides on each extended
/// CONNECT with [`ServerConfig::decide`] (the decision HTTP/1.1 upgrades take, with
/// `secure` for `verify_client`), answers `200` and hands the [`WebSocket`] over the
/// stream (a [`ServerStream::Http2`]) to `service.on_websocket` with the request, or
/// answers the refusal with its status, headers and body. Other requests go to
/// `service.on_request`, if any. Each stream runs in a task of its own; returns when
/// the connection ends, and dropping the future closes it.
///
/// # Errors
/// [`Error::Http2`] or [`Error::Io`] when the connection fails (the HTTP/2 preface is
/// not there, a protocol error); [`HandshakeError::Timeout`] when the preface does not
/// come within `handshake_timeout`.
pub async fn serve_connection<I>(
    io: I,
    config: Arc<ServerConfig>,
    secure: bool,
    service: Http2Service<ServerStream>,
) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let wrap = |stream| Some(ServerStream::Http2(Box::new(stream)));
    serve_connection_as(io, config, secure, wrap, service).await
}

/// [`serve_connection`] handing out each stream as `T` (`wrap`; a stream it gives `None`
/// for is reset).
pub(crate) async fn serve_connection_as<I, T>(
    io: I,
    config: Arc<ServerConfig>,
    secure: bool,
    wrap: fn(Http2Stream) -> Option<T>,
    service: Http2Service<T>,
) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &config.http2;
    let handshake = h2::server::Builder::new()
        .enable_connect_protocol()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(settings.max_send_buffer)
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::time::timeout(config.handshake_timeout, handshake)
        .await
        .map_err(|_| Error::Handshake(HandshakeError::Timeout))?
        .map_err(h2_failed)?;
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = accepted.map_err(h2_failed)?;
        let config = config.clone();
        let service = service.clone();
        tokio::spawn(async move {
            serve_stream(request, respond, &config, secure, wrap, service).await;
        });
    }
    Ok(())
}

/// Decides on one stream's request and answers it.
async fn serve_stream<T>(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    config: &ServerConfig,
    secure: bool,
    wrap: fn(Http2Stream) -> Option<T>,
    service: Http2Service<T>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut parts, recv) = request.into_parts();
    if let Some(protocol) = parts.extensions.remove::<h2::ext::Protocol>() {
        let value = ConnectProtocol(protocol.as_str().to_owned());
        parts.extensions.insert(value);
    }
    let head = Request::from_parts(parts, ());
    if head.method() != http::Method::CONNECT {
        if let Some(response) = service.on_request.as_ref().and_then(|f| f(&head)) {
            let (parts, body) = response.into_parts();
            let mut head = Response::from_parts(parts, ());
            head.headers_mut()
                .insert(http::header::CONTENT_LENGTH, body.len().into());
            if let Ok(mut send) = respond.send_response(head, body.is_empty()) {
                if !body.is_empty() {
                    let _ = send.send_data(body, true);
                }
            }
            return;
        }
    }
    let span = crate::websocket::request_span(&head);
    // `verify_client` runs within `handshake_timeout` (503 beyond); the rest is not I/O.
    let outcome = config.decide(head, secure).await;
    match outcome {
        Ok(accept) => {
            let mut response = Response::new(());
            *response.status_mut() = accept.status();
            *response.headers_mut() = accept.headers();
            let send = match respond.send_response(response, false) {
                Ok(send) => send,
                Err(error) => {
                    tracing::debug!(%error, "the stream ended before the 200");
                    return;
                }
            };
            let (request, protocol, deflate) = accept.into_parts();
            let negotiated = Negotiated {
                protocol,
                url: None,
                deflate: deflate.zip(config.per_message_deflate.clone()),
                span: Some(span),
            };
            let Some(stream) = wrap(Http2Stream::new(send, recv, &config.http2)) else {
                return;
            };
            let ws = WebSocket::with_info(
                stream,
                Role::Server,
                Arc::new(config.websocket.clone()),
                BytesMut::new(),
                negotiated,
            );
            (service.on_websocket)(ws, request).await;
        }
        Err(refusal) => {
            let mut response = Response::new(());
            *response.status_mut() = refusal.status;
            let headers = response.headers_mut();
            for (name, value) in &refusal.headers {
                // HTTP/2 has no connection-specific headers (RFC 9113 §8.2.2).
                if name != http::header::UPGRADE && name != http::header::CONNECTION {
                    headers.append(name, value.clone());
                }
            }
            let text = http::HeaderValue::from_static("text/plain; charset=utf-8");
            headers.insert(http::header::CONTENT_TYPE, text);
            headers.insert(http::header::CONTENT_LENGTH, refusal.body.len().into());
            if refusal.status == StatusCode::OK {
                // A refusal is never a 200: that would open the stream.
                return respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(Bytes::from(refusal.body), true);
            }
        }
    }
}
