//! [`WebSocketServer`]: listens, upgrades each connection in its own task (so a slow
//! client never holds up the others), and hands out open connections.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Request;
use sockeye_proto::{CloseCode, CloseFrame};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::accept::{accept, ServerConfig};
use crate::error::Error;
use crate::websocket::{Shared, WebSocket, WebSocketWriter};

/// How many upgraded connections may wait for [`WebSocketServer::accept`].
const ACCEPT_QUEUE: usize = 128;

/// What the accept loop hands to [`WebSocketServer::accept`].
type Accepted = Result<(WebSocket<TcpStream>, Request<()>), Error>;

/// A WebSocket server on a TCP port (`ws`'s `WebSocketServer`).
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
pub struct WebSocketServer {
    local_addr: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    clients: Clients,
    accept_task: JoinHandle<()>,
}

/// The set of open connections of a server (`ws`'s `server.clients`).
#[derive(Clone, Default)]
pub struct Clients {
    map: Arc<Mutex<HashMap<u64, Weak<Shared<TcpStream>>>>>,
}

impl Clients {
    fn insert(&self, ws: &WebSocket<TcpStream>) {
        let writer = ws.writer();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, weak| weak.upgrade().is_some_and(|s| s.is_open_or_closing()));
        map.insert(writer.id(), writer.downgrade());
    }

    /// Handles to every connection not yet closed, for broadcast.
    pub fn snapshot(&self) -> Vec<WebSocketWriter<TcpStream>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::with_capacity(map.len());
        map.retain(|_, weak| match weak.upgrade() {
            Some(shared) if shared.is_open_or_closing() => {
                live.push(WebSocketWriter::from_shared(shared));
                true
            }
            _ => false,
        });
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
}

/// What a graceful shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections that completed the close handshake (or closed) within the grace time.
    pub closed: usize,
    /// Connections terminated when the grace time ran out.
    pub terminated: usize,
}

impl WebSocketServer {
    /// Binds to `addr`, starts accepting, and returns once listening (`ws`'s `listening`).
    ///
    /// # Errors
    /// The bind or listen error.
    pub async fn bind(
        addr: impl tokio::net::ToSocketAddrs,
        config: ServerConfig,
    ) -> io::Result<Self> {
        let mut last_error = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match listen(addr, config.backlog) {
                Ok(listener) => return Ok(Self::from_listener(listener, config)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
    }

    /// Serves on an already bound listener.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Self {
        let local_addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let clients = Clients::default();
        let config = Arc::new(config);
        let accept_task = tokio::spawn(accept_loop(listener, config, tx, clients.clone()));
        WebSocketServer {
            local_addr,
            incoming: tokio::sync::Mutex::new(rx),
            clients,
            accept_task,
        }
    }

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
    pub async fn accept(&self) -> Option<Result<(WebSocket<TcpStream>, Request<()>), Error>> {
        self.incoming.lock().await.recv().await
    }

    /// The open connections (`ws`'s `server.clients`; empty without `client_tracking`).
    pub fn clients(&self) -> Vec<WebSocketWriter<TcpStream>> {
        self.clients.snapshot()
    }

    /// The client set itself, to keep for broadcast in other tasks.
    pub fn client_set(&self) -> Clients {
        self.clients.clone()
    }

    /// Stops accepting new connections; open ones are left alone (`ws`'s
    /// `server.close()`).
    pub fn close(&self) {
        self.accept_task.abort();
    }

    /// Stops accepting, sends 1001 (going away) to every open connection, waits up to
    /// `grace` for them to close, terminates the rest, and reports.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.close();
        let clients = self.clients.snapshot();
        let total = clients.len();
        let going_away = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
        for client in &clients {
            let _ = tokio::time::timeout(grace, client.close(Some(going_away.clone()))).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
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

impl Drop for WebSocketServer {
    fn drop(&mut self) {
        self.accept_task.abort();
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

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tx: mpsc::Sender<Accepted>,
    clients: Clients,
) {
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
        tokio::spawn(async move {
            match accept(stream, &config).await {
                Ok((ws, request)) => {
                    if config.client_tracking {
                        clients.insert(&ws);
                    }
                    let _ = tx.send(Ok((ws, request))).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "handshake failed"),
            }
        });
    }
}
