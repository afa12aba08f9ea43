//! The server side of the opening handshake over any transport: [`accept`], and the
//! tokio half of the server decision ([`ServerConfig::decide`]: the sans-I/O policy of
//! `sockeye_proto::handshake::policy` plus the awaited `verify_client`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::Request;
use sockeye_proto::handshake::policy::{Accept, Decision, Refusal, ServerPolicy};
use sockeye_proto::handshake::server::ServerHandshake;
use sockeye_proto::handshake::HeadLimits;
use sockeye_proto::{Config, DeflateConfig, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use sockeye_proto::handshake::policy::{
    HandleProtocols, HeadersHook, OnClientError, Rejection, ShouldHandle, VerifyInfo,
};

use crate::error::Error;
use crate::websocket::{Negotiated, WebSocket};

/// `ws`'s `verifyClient`, synchronous or asynchronous: decides after the request passed
/// the handshake checks, before the 101 is written. Build one with [`verify_client`] or
/// [`verify_client_async`].
pub type VerifyClient = Arc<
    dyn Fn(VerifyInfo) -> Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send>> + Send + Sync,
>;

/// A synchronous `verify_client`.
pub fn verify_client(
    f: impl Fn(&VerifyInfo) -> Result<(), Rejection> + Send + Sync + 'static,
) -> VerifyClient {
    Arc::new(move |info| {
        let verdict = f(&info);
        Box::pin(std::future::ready(verdict))
    })
}

/// An asynchronous `verify_client` (a database lookup, a token check ...). It runs within
/// the handshake timeout.
pub fn verify_client_async<F, Fut>(f: F) -> VerifyClient
where
    F: Fn(VerifyInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Rejection>> + Send + 'static,
{
    Arc::new(move |info| Box::pin(f(info)))
}

/// How a server accepts upgrades.
#[derive(Clone)]
pub struct ServerConfig {
    /// Settings of each accepted connection (`max_payload`, `skip_utf8_validation` ...).
    pub websocket: Config,
    /// Accept upgrades only on this path (`ws`'s `path`); others get 404. `None`: any.
    pub path: Option<String>,
    /// `ws`'s `shouldHandle`.
    pub should_handle: Option<ShouldHandle>,
    /// `ws`'s `handleProtocols`; by default the client's first subprotocol is chosen.
    pub handle_protocols: Option<HandleProtocols>,
    /// How long a client may take to send its upgrade request (default 10 s); a slower
    /// one is answered 408 and dropped.
    pub handshake_timeout: Duration,
    /// Limits on the request head (header count and bytes; 431 beyond).
    pub head_limits: HeadLimits,
    /// Keep the set of open connections for [`crate::WebSocketServer::clients`]
    /// (`ws`'s `clientTracking`, default on).
    pub client_tracking: bool,
    /// The listen backlog (default 511, as Node).
    pub backlog: u32,
    /// permessage-deflate (`ws`'s `perMessageDeflate`): off by default on a server, as
    /// in `ws`; `Some` accepts the first acceptable offer of each client.
    pub per_message_deflate: Option<DeflateConfig>,
    /// `ws`'s `verifyClient`: may refuse a valid upgrade with a status, reason phrase
    /// and headers.
    pub verify_client: Option<VerifyClient>,
    /// `ws`'s `headers` event: adds or changes headers of the 101 response.
    pub headers_hook: Option<HeadersHook>,
    /// `ws`'s `wsClientError`: a custom response to a failed handshake.
    pub on_client_error: Option<OnClientError>,
    /// WebSocket over HTTP/2 (RFC 8441) on servers that speak it
    /// (`WebSocketServer::bind_tls`, [`crate::http2::serve_connection`]): `mode` says
    /// whether TLS offers `h2` in ALPN (default [`crate::http2::Http2Mode::IfOffered`]:
    /// `h2` and `http/1.1`); the windows and stream limit. Only with the `http2` feature.
    #[cfg(feature = "http2")]
    pub http2: crate::http2::Http2Config,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            websocket: Config::default(),
            path: None,
            should_handle: None,
            handle_protocols: None,
            handshake_timeout: Duration::from_secs(10),
            head_limits: HeadLimits::default(),
            client_tracking: true,
            backlog: 511,
            per_message_deflate: None,
            verify_client: None,
            headers_hook: None,
            on_client_error: None,
            #[cfg(feature = "http2")]
            http2: crate::http2::Http2Config {
                mode: crate::http2::Http2Mode::IfOffered,
                ..Default::default()
            },
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("websocket", &self.websocket)
            .field("path", &self.path)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("head_limits", &self.head_limits)
            .field("client_tracking", &self.client_tracking)
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// The handshake policy this configuration describes, for the sans-I/O decision
    /// ([`ServerPolicy::decide`]); every front end (accept, upgrade, `sockeye-hyper`,
    /// `sockeye-axum`) decides through it.
    pub fn policy(&self) -> ServerPolicy<'_> {
        ServerPolicy {
            path: self.path.as_deref(),
            should_handle: self.should_handle.as_ref(),
            handle_protocols: self.handle_protocols.as_ref(),
            per_message_deflate: self.per_message_deflate.as_ref(),
            verify_client: self.verify_client.is_some(),
            headers_hook: self.headers_hook.as_ref(),
            on_client_error: self.on_client_error.as_ref(),
        }
    }

    /// The whole server decision on a request whose head is already read: the checks,
    /// `verify_client` (awaited), the subprotocol and the 101, or the refusal to answer
    /// with. `secure` tells `verify_client` whether the transport is TLS. For front ends
    /// that sit behind another HTTP server (`sockeye-hyper`, `sockeye-axum`).
    ///
    /// # Errors
    /// The [`Refusal`] to answer with (its `error` says why).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is written.
    #[allow(clippy::result_large_err)] // once per connection
    pub async fn decide(&self, request: Request<()>, secure: bool) -> Result<Accept, Refusal> {
        self.resolve(self.policy().decide(request), secure).await
    }

    /// Finishes `decision`: runs `verify_client` on [`Decision::Verify`] (an
    /// asynchronous one within `handshake_timeout`; one that takes longer is refused
    /// with 503 "Verification Timed Out").
    ///
    /// # Errors
    /// The [`Refusal`] to answer with.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is written.
    #[allow(clippy::result_large_err)] // once per connection
    pub async fn resolve(&self, decision: Decision<'_>, secure: bool) -> Result<Accept, Refusal> {
        let verify = match decision {
            Decision::Accept(accept) => return Ok(accept),
            Decision::Refuse(refusal) => return Err(refused(refusal)),
            Decision::Verify(verify) => verify,
        };
        let verdict = match &self.verify_client {
            Some(verify_client) => {
                let info = verify.info(secure);
                match tokio::time::timeout(self.handshake_timeout, verify_client(info)).await {
                    Ok(verdict) => verdict,
                    Err(_) => Err(Rejection::status(503).reason("Verification Timed Out")),
                }
            }
            // The policy asks for a verdict only when `verify_client` is set.
            None => Ok(()),
        };
        verify.verdict(verdict).map_err(refused)
    }
}

/// Counts and logs a refused upgrade request.
pub(crate) fn refused(refusal: Refusal) -> Refusal {
    crate::metrics::handshake_failed(refusal.status.as_u16());
    tracing::debug!(
        status = refusal.status.as_u16(),
        error = %refusal.error,
        "upgrade refused"
    );
    refusal
}

/// Performs the server side of the opening handshake on `io`: reads the upgrade request
/// (within `handshake_timeout` and `head_limits`, through the sans-I/O
/// [`ServerHandshake`]), decides on it ([`ServerConfig::decide`]: every check and hook in
/// one order), answers 101, and returns the open WebSocket with the request. A refused
/// request is answered (by default its 4xx status and a one-line plain-text body) and
/// returned as the error.
///
/// # Errors
/// [`Error::Handshake`] (see [`sockeye_proto::HandshakeError::status`]) or [`Error::Io`].
///
/// # Cancel safety
/// Not cancel safe: the transport is consumed.
pub async fn accept<S>(io: S, config: &ServerConfig) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_inner(io, config, false, None).await
}

/// [`accept`] on a transport that is TLS: the same, with `secure: true` for
/// `verify_client`.
///
/// # Errors
/// As [`accept`].
pub async fn accept_tls<S>(
    io: S,
    config: &ServerConfig,
) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_inner(io, config, true, None).await
}

/// `websocket`: the connection settings shared by all connections of a server (else
/// each connection gets its own copy of `config.websocket`).
pub(crate) async fn accept_inner<S>(
    mut io: S,
    config: &ServerConfig,
    secure: bool,
    websocket: Option<&Arc<Config>>,
) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let policy = config.policy();
    let reading =
        ServerHandshake::new(Instant::now(), config.handshake_timeout, config.head_limits);
    let mut buf = BytesMut::with_capacity(1024);
    let decision = loop {
        if let Some(decision) = reading.handle_read(&mut buf, policy) {
            break decision;
        }
        buf.reserve(1024);
        let read = match reading.poll_timeout() {
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await
            }
            None => Ok(io.read_buf(&mut buf).await),
        };
        match read {
            Ok(Ok(0)) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed during the opening handshake",
                )))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Error::Io(e)),
            // tokio's timers do not fire early, so this is the deadline; should the clock
            // disagree, the next round reads on until it does.
            Err(_elapsed) => {
                if let Some(refusal) = reading.handle_timeout(Instant::now(), &policy) {
                    break Decision::Refuse(refusal);
                }
            }
        }
    };
    let outcome = config.resolve(decision, secure).await;
    respond(io, outcome, buf, config, websocket).await
}

/// Upgrades a request whose head was already read by another HTTP server (`ws`'s
/// `handleUpgrade`): decides on it as [`accept`] does ([`ServerConfig::decide`]) and
/// answers 101 or the refusal. `read_buf` holds bytes read past the head (`ws`'s
/// `head`).
///
/// # Errors
/// As [`accept`].
///
/// # Cancel safety
/// Not cancel safe: the transport is consumed.
pub async fn upgrade<S>(
    io: S,
    request: Request<()>,
    read_buf: BytesMut,
    config: &ServerConfig,
) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = config.decide(request, false).await;
    respond(io, outcome, read_buf, config, None).await
}

/// Writes the 101 and opens the WebSocket, or writes the refusal and closes.
async fn respond<S>(
    mut io: S,
    outcome: Result<Accept, Refusal>,
    read_buf: BytesMut,
    config: &ServerConfig,
    websocket: Option<&Arc<Config>>,
) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accept = match outcome {
        Ok(accept) => accept,
        Err(refusal) => {
            write_refusal(&mut io, &refusal.to_bytes()).await;
            return Err(Error::Handshake(refusal.error));
        }
    };
    let mut response = Vec::with_capacity(256);
    accept.write_response(&mut response);
    io.write_all(&response).await?;
    let (request, protocol, deflate) = accept.into_parts();
    let negotiated = Negotiated {
        protocol,
        url: None,
        deflate: deflate.zip(config.per_message_deflate.clone()),
        span: Some(crate::websocket::request_span(&request)),
    };
    let websocket = websocket.map_or_else(|| Arc::new(config.websocket.clone()), Arc::clone);
    let ws = WebSocket::with_info(io, Role::Server, websocket, read_buf, negotiated);
    Ok((ws, request))
}

/// Writes a refusal and closes; best effort and bounded, since the client may not read.
pub(crate) async fn write_refusal<S: AsyncWrite + Unpin>(io: &mut S, response: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(response).await?;
        io.shutdown().await
    })
    .await;
}
