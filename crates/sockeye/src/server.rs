//! [`WebSocketServer`]: listens, upgrades each connection in its own task (so a slow
//! client never holds up the others), and hands out open connections.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Request;
use sockeye_proto::{CloseCode, CloseFrame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::accept::{accept_inner, ServerConfig};
use crate::error::Error;
#[cfg(not(feature = "rustls"))]
use crate::tls::no_rustls as tokio_rustls;
use crate::tls::ServerStream;
use crate::websocket::{Shared, WebSocket, WebSocketWriter};

/// How many upgraded connections may wait for [`WebSocketServer::accept`].
const ACCEPT_QUEUE: usize = 128;

/// What the accept loop hands to [`WebSocketServer::accept`].
type Accepted<S> = Result<(WebSocket<S>, Request<()>), Error>;

/// A WebSocket server on a TCP port (`ws`'s `WebSocketServer`).
///
/// [`WebSocketServer::bind`] serves plain TCP and hands out `WebSocket<TcpStream>`;
/// [`WebSocketServer::bind_tls`] serves TLS (or, given `None`, plain TCP) and hands out
/// `WebSocket<ServerStream>`, so one type covers both.
///
/// ```no_run
/// # async fn run() -> Result<(), sockeye::Error> {
/// use futures_util::StreamExt;
/// let server = sockeye::WebSocketServer::bind("127.0.0.1:8080", Default::default()).await?;
/// while let Some(Ok((mut ws, _request))) = server.accept().await {
///     tokio::spawn(async move {
///         while let Some(Ok(message)) = ws.next().await {
///             if message.is_text() || message.is_binary() {
///                 let _ = ws.send(message).await;
///             }
///         }
///     });
/// }
/// # Ok(()) }
/// ```
pub struct WebSocketServer<S = TcpStream> {
    local_addr: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Accepted<S>>>,
    clients: Clients<S>,
    accept_task: JoinHandle<()>,
    failed_handshakes: Arc<AtomicU64>,
}

/// The set of open connections of a server (`ws`'s `server.clients`).
pub struct Clients<S = TcpStream> {
    map: Arc<Mutex<ClientMap<S>>>,
}

/// The connections by id, the entries of closed ones swept out now and then.
struct ClientMap<S> {
    map: HashMap<u64, Weak<Shared<S>>>,
    /// [`ClientMap::insert`] sweeps at this many entries: twice the live ones after the
    /// last sweep, so that sweeps cost O(1) per insert (one at every insert made
    /// accepting N connections cost O(N^2), a lock of every connection's state each).
    sweep_at: usize,
}

/// The fewest entries at which [`ClientMap::insert`] sweeps.
const MIN_SWEEP: usize = 64;

impl<S> Default for ClientMap<S> {
    fn default() -> Self {
        ClientMap {
            map: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientMap<S> {
    /// Adds a connection, after sweeping closed ones out if the map has grown to
    /// `sweep_at`; returns whether it swept.
    fn insert(&mut self, id: u64, shared: Weak<Shared<S>>) -> bool {
        let sweep = self.map.len() >= self.sweep_at;
        if sweep {
            self.map
                .retain(|_, weak| weak.upgrade().is_some_and(|s| s.is_open_or_closing()));
            self.swept();
        }
        self.map.insert(id, shared);
        sweep
    }

    /// The map holds live connections only: the next sweep is due at twice as many.
    fn swept(&mut self) {
        self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
    }
}

impl<S> Clone for Clients<S> {
    fn clone(&self) -> Self {
        Clients {
            map: self.map.clone(),
        }
    }
}

impl<S> Default for Clients<S> {
    fn default() -> Self {
        Clients {
            map: Arc::new(Mutex::new(ClientMap::default())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Clients<S> {
    /// Tracks `ws` (held weakly: the set keeps no connection open) until it closes. A
    /// [`WebSocketServer`] tracks what it accepts; a front end that upgrades connections
    /// itself ([`crate::upgrade`], [`crate::accept`]) tracks them here, for
    /// [`Clients::snapshot`] and [`Clients::shutdown`].
    pub fn insert(&self, ws: &WebSocket<S>) {
        let writer = ws.writer();
        let mut clients = self.map.lock().unwrap_or_else(|p| p.into_inner());
        clients.insert(writer.id(), writer.downgrade());
    }

    /// Handles to every connection not yet closed, for broadcast.
    pub fn snapshot(&self) -> Vec<WebSocketWriter<S>> {
        let mut clients = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::with_capacity(clients.map.len());
        clients.map.retain(|_, weak| match weak.upgrade() {
            Some(shared) if shared.is_open_or_closing() => {
                live.push(WebSocketWriter::from_shared(shared));
                true
            }
            _ => false,
        });
        clients.swept();
        live
    }

    /// How many connections are not yet closed.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends 1001 (going away) to every open connection, waits up to `grace` for them to
    /// close, terminates the rest, and reports. Connections tracked after the call
    /// starts are not included: stop accepting first.
    ///
    /// The connections are closed side by side, under one deadline: a peer that does
    /// not read (its close frame stuck behind a full send queue) or does not answer
    /// holds up only itself, and the whole takes at most `grace` and a few milliseconds,
    /// however many connections there are.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let clients = self.snapshot();
        let total = clients.len();
        let deadline = tokio::time::Instant::now() + grace;
        let going_away = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
        // Each close future writes its own connection's queue; polled together, every
        // close frame goes out as soon as its transport takes it.
        let closes = clients
            .iter()
            .map(|client| client.close(Some(going_away.clone())));
        let _ = tokio::time::timeout_at(deadline, futures_util::future::join_all(closes)).await;
        while tokio::time::Instant::now() < deadline
            && clients.iter().any(|c| c.is_open_or_closing())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut terminated = 0;
        for client in &clients {
            if client.is_open_or_closing() {
                client.terminate();
                terminated += 1;
            }
        }
        ShutdownReport {
            closed: total - terminated,
            terminated,
        }
    }
}

/// What a graceful shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections that completed the close handshake (or closed) within the grace time.
    pub closed: usize,
    /// Connections terminated when the grace time ran out.
    pub terminated: usize,
}

impl WebSocketServer<TcpStream> {
    /// Binds to `addr`, starts accepting, and returns once listening (`ws`'s `listening`).
    ///
    /// # Errors
    /// The bind or listen error.
    pub async fn bind(
        addr: impl tokio::net::ToSocketAddrs,
        config: ServerConfig,
    ) -> io::Result<Self> {
        let listener = bind_listener(addr, config.backlog).await?;
        Ok(Self::from_listener(listener, config))
    }

    /// Serves on an already bound listener.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Self {
        serve(listener, config, None)
    }
}

#[cfg(feature = "rustls")]
impl WebSocketServer<ServerStream> {
    /// Binds to `addr` and serves TLS with `tls` (see
    /// [`crate::tls::server_config_from_pem`]); `None` serves plain TCP with the same
    /// stream type. Each connection completes its TLS handshake, then its WebSocket
    /// handshake, in its own task, each within `config.handshake_timeout`; a connection
    /// that fails either is dropped (and logged), not returned. Only with the `rustls`
    /// feature.
    ///
    /// With the `http2` feature, HTTP/1.1 and HTTP/2 share the port, as
    /// `config.http2.mode` says: by default (`Http2Mode::IfOffered`) TLS
    /// offers `h2` and `http/1.1` in ALPN, and a plain connection that starts with the
    /// HTTP/2 preface is served as HTTP/2 (h2c with prior knowledge); `Required` offers
    /// only `h2` and drops connections that do not speak it; `Never` leaves ALPN as
    /// `tls` has it and serves HTTP/1.1 only. Each WebSocket an HTTP/2 connection opens
    /// (an extended CONNECT, decided as an HTTP/1.1 upgrade is) comes out of
    /// [`WebSocketServer::accept`] as a `ServerStream::Http2`.
    ///
    /// # Errors
    /// The bind or listen error.
    pub async fn bind_tls(
        addr: impl tokio::net::ToSocketAddrs,
        config: ServerConfig,
        tls: impl Into<Option<Arc<rustls::ServerConfig>>>,
    ) -> io::Result<Self> {
        let listener = bind_listener(addr, config.backlog).await?;
        Ok(Self::from_listener_tls(listener, config, tls))
    }

    /// Serves TLS (or, given `None`, plain TCP) on an already bound listener. See
    /// [`WebSocketServer::bind_tls`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn from_listener_tls(
        listener: TcpListener,
        config: ServerConfig,
        tls: impl Into<Option<Arc<rustls::ServerConfig>>>,
    ) -> Self {
        let tls = tls.into();
        #[cfg(feature = "http2")]
        let tls = tls.map(|tls| crate::http2::offer_in_alpn(tls, config.http2.mode));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        serve(listener, config, acceptor)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketServer<S> {
    /// The bound address (`ws`'s `server.address()`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next upgraded connection with its request (`ws`'s `connection` event).
    /// Failed handshakes are answered and logged, not returned. `None` after
    /// [`WebSocketServer::close`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn accept(&self) -> Option<Result<(WebSocket<S>, Request<()>), Error>> {
        self.incoming.lock().await.recv().await
    }

    /// The open connections (`ws`'s `server.clients`; empty without `client_tracking`).
    pub fn clients(&self) -> Vec<WebSocketWriter<S>> {
        self.clients.snapshot()
    }

    /// How many connections failed their TLS or WebSocket handshake so far (each is
    /// also logged at debug level; see `ServerConfig::on_client_error`).
    pub fn failed_handshakes(&self) -> u64 {
        self.failed_handshakes.load(Ordering::Relaxed)
    }

    /// The client set itself, to keep for broadcast in other tasks.
    pub fn client_set(&self) -> Clients<S> {
        self.clients.clone()
    }

    /// Stops accepting new connections; open ones are left alone (`ws`'s
    /// `server.close()`).
    pub fn close(&self) {
        self.accept_task.abort();
    }

    /// Stops accepting, sends 1001 (going away) to every open connection, waits up to
    /// `grace` for them to close, terminates the rest, and reports.
    ///
    /// The connections are closed side by side, under one deadline: a peer that does
    /// not read (its close frame stuck behind a full send queue) or does not answer
    /// holds up only itself, and the whole takes at most `grace` and a few milliseconds,
    /// however many connections there are.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.close();
        self.clients.shutdown(grace).await
    }
}

impl<S> Drop for WebSocketServer<S> {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Starts the accept loop of a server.
fn serve<S: Transport>(
    listener: TcpListener,
    config: ServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> WebSocketServer<S> {
    let local_addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let clients = Clients::default();
    let config = Arc::new(config);
    let failed = Arc::new(AtomicU64::new(0));
    let accept_task = tokio::spawn(accept_loop(
        listener,
        config,
        tls,
        tx,
        clients.clone(),
        failed.clone(),
    ));
    WebSocketServer {
        local_addr,
        incoming: tokio::sync::Mutex::new(rx),
        clients,
        accept_task,
        failed_handshakes: failed,
    }
}

async fn bind_listener(
    addr: impl tokio::net::ToSocketAddrs,
    backlog: u32,
) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match listen(addr, backlog) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
}

/// A server's transport, made from an accepted TCP connection.
pub(crate) trait Transport:
    AsyncRead + AsyncWrite + Unpin + Send + Sync + Sized + 'static
{
    /// Wraps `stream`, performing the TLS handshake when `tls` is set.
    fn from_tcp(
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> impl std::future::Future<Output = io::Result<Self>> + Send;

    /// Whether the transport is TLS (`secure` for `verify_client`).
    fn is_tls(&self) -> bool;

    /// Whether the connection speaks HTTP/2, as `config.http2` allows: `h2` chosen in
    /// ALPN, or the HTTP/2 preface on plain TCP.
    #[cfg(feature = "http2")]
    fn speaks_http2(
        &self,
        config: &ServerConfig,
    ) -> impl std::future::Future<Output = io::Result<bool>> + Send;

    /// A stream of an HTTP/2 connection as this transport (`None`: it cannot be one).
    #[cfg(feature = "http2")]
    fn from_http2(stream: crate::http2::Http2Stream) -> Option<Self>;
}

impl Transport for TcpStream {
    async fn from_tcp(
        stream: TcpStream,
        _tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<Self> {
        Ok(stream)
    }

    fn is_tls(&self) -> bool {
        false
    }

    /// `bind` hands out `WebSocket<TcpStream>`: HTTP/1.1 only.
    #[cfg(feature = "http2")]
    async fn speaks_http2(&self, _config: &ServerConfig) -> io::Result<bool> {
        Ok(false)
    }

    #[cfg(feature = "http2")]
    fn from_http2(_stream: crate::http2::Http2Stream) -> Option<Self> {
        None
    }
}

impl Transport for ServerStream {
    async fn from_tcp(
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<Self> {
        match tls {
            Some(acceptor) => Ok(ServerStream::Tls(Box::new(acceptor.accept(stream).await?))),
            None => Ok(ServerStream::Plain(stream)),
        }
    }

    fn is_tls(&self) -> bool {
        ServerStream::is_tls(self)
    }

    #[cfg(feature = "http2")]
    async fn speaks_http2(&self, config: &ServerConfig) -> io::Result<bool> {
        use crate::http2::Http2Mode;
        if config.http2.mode == Http2Mode::Never {
            return Ok(false);
        }
        match self {
            ServerStream::Plain(tcp) => crate::http2::peek_preface(tcp).await,
            _ => Ok(self.alpn_protocol() == Some(b"h2")),
        }
    }

    #[cfg(feature = "http2")]
    fn from_http2(stream: crate::http2::Http2Stream) -> Option<Self> {
        Some(ServerStream::Http2(Box::new(stream)))
    }
}

fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn accept_loop<S: Transport>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Accepted<S>>,
    clients: Clients<S>,
    failed: Arc<AtomicU64>,
) {
    // One copy of the connection settings for all connections.
    let websocket = Arc::new(config.websocket.clone());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = config.clone();
        let tx = tx.clone();
        let clients = clients.clone();
        let tls = tls.clone();
        let failed = failed.clone();
        let websocket = websocket.clone();
        // The handshake runs in a span with the peer's address, which the connection's
        // own span (made on upgrade) then has as its parent.
        let span = tracing::debug_span!("accepted", %peer);
        let handshake = async move {
            let fail = || failed.fetch_add(1, Ordering::Relaxed);
            let tls_handshake = S::from_tcp(stream, tls);
            let io = match tokio::time::timeout(config.handshake_timeout, tls_handshake).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    fail();
                    return tracing::debug!(error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    fail();
                    return tracing::debug!("TLS handshake timed out");
                }
            };
            let secure = io.is_tls();
            #[cfg(feature = "http2")]
            {
                let http2 =
                    tokio::time::timeout(config.handshake_timeout, io.speaks_http2(&config));
                match http2.await {
                    Ok(Ok(true)) => {
                        let on_websocket = accepted_http2(tx, clients, config.clone());
                        let served = crate::http2::serve_connection_as(
                            io,
                            config,
                            secure,
                            S::from_http2,
                            on_websocket,
                        );
                        if let Err(e) = served.await {
                            tracing::debug!(error = %e, "HTTP/2 connection failed");
                        }
                        return;
                    }
                    Ok(Ok(false)) if config.http2.mode == crate::http2::Http2Mode::Required => {
                        fail();
                        return tracing::debug!("not HTTP/2, which the server requires");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        fail();
                        return tracing::debug!(error = %e, "reading the preface failed");
                    }
                    // Nothing came in time: the 408 an HTTP/1.1 request would get.
                    Err(_) => {
                        fail();
                        let timeout = sockeye_proto::HandshakeError::Timeout;
                        let refusal = crate::accept::refused(config.policy().refuse(timeout, None));
                        let mut io = io;
                        crate::accept::write_refusal(&mut io, &refusal.to_bytes()).await;
                        return;
                    }
                }
            }
            let upgraded = accept_inner(io, &config, secure, Some(&websocket)).await;
            match upgraded {
                Ok((ws, request)) => {
                    if config.client_tracking {
                        clients.insert(&ws);
                    }
                    let _ = tx.send(Ok((ws, request))).await;
                }
                Err(e) => {
                    fail();
                    // A refusal was logged with its status where it was decided.
                    if !matches!(e, Error::Handshake(_)) {
                        tracing::debug!(error = %e, "handshake failed");
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(handshake, span));
    }
}

/// What an HTTP/2 connection of the server does with each WebSocket it accepts: tracks
/// it and hands it to [`WebSocketServer::accept`].
#[cfg(feature = "http2")]
fn accepted_http2<S: Transport>(
    tx: mpsc::Sender<Accepted<S>>,
    clients: Clients<S>,
    config: Arc<ServerConfig>,
) -> crate::http2::Http2Service<S> {
    crate::http2::Http2Service::websockets(Arc::new(move |ws, request| {
        if config.client_tracking {
            clients.insert(&ws);
        }
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(Ok((ws, request))).await;
        })
    }))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use sockeye_proto::{Config, Role};
    use tokio::io::DuplexStream;

    use super::*;

    fn open() -> WebSocket<DuplexStream> {
        let (io, _peer) = tokio::io::duplex(64);
        WebSocket::from_upgraded(io, Role::Server, Config::default(), BytesMut::new())
    }

    /// Accepting N connections sweeps (locks every connection's state) O(log N) times,
    /// not at every insert: O(N) in all rather than O(N^2).
    #[tokio::test]
    async fn inserts_sweep_rarely() {
        let mut map = ClientMap::default();
        let live: Vec<_> = (0..1000).map(|_| open()).collect();
        let sweeps = live
            .iter()
            .filter(|ws| map.insert(ws.writer().id(), ws.writer().downgrade()))
            .count();
        // At 64, 128, 256 and 512 entries.
        assert_eq!(sweeps, 4);
        assert_eq!(map.map.len(), live.len());
    }

    /// Closed connections are swept out often enough that the map stays within twice
    /// the live connections (and a constant).
    #[tokio::test]
    async fn closed_connections_are_swept_out() {
        let clients = Clients::default();
        let live: Vec<_> = (0..10).map(|_| open()).collect();
        for ws in &live {
            clients.insert(ws);
        }
        for _ in 0..1000 {
            let ws = open();
            clients.insert(&ws);
            ws.writer().terminate();
            let entries = clients.map.lock().unwrap().map.len();
            assert!(entries <= 2 * live.len() + MIN_SWEEP, "{entries} entries");
        }
        assert_eq!(clients.len(), live.len());
        assert_eq!(clients.map.lock().unwrap().map.len(), live.len());
    }
}
