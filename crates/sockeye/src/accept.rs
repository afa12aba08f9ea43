//! The server side of the opening handshake over any transport: [`accept`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use sockeye_proto::handshake::server::{parse_request, reject_error, Upgrade};
use sockeye_proto::handshake::HeadLimits;
use sockeye_proto::{Config, DeflateConfig, DeflateParams, HandshakeError, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;
use crate::websocket::{Negotiated, WebSocket};

/// `ws`'s `shouldHandle`: whether to accept a request (false answers 400).
pub type ShouldHandle = Arc<dyn Fn(&Request<()>) -> bool + Send + Sync>;
/// `ws`'s `handleProtocols`: picks a subprotocol from the client's list, or none.
pub type HandleProtocols = Arc<dyn Fn(&[String], &Request<()>) -> Option<String> + Send + Sync>;

/// `ws`'s `headers` event: sees the request and can add or change headers of the 101
/// response before it is written (the status line and the handshake's own headers are
/// fixed).
pub type HeadersHook = Arc<dyn Fn(&mut HeaderMap, &Request<()>) + Send + Sync>;

/// `ws`'s `wsClientError`: called when an upgrade request fails the handshake checks
/// (or does not arrive in time), with the error and the request if one was read.
/// `Some((status, headers, body))` is written instead of the default response (the
/// error's 4xx with a one-line body), as `Connection: close` plain text with a newline
/// appended to `body`; `None` keeps the default. Failed handshakes are also logged (at
/// debug level) and counted ([`crate::WebSocketServer::failed_handshakes`]).
pub type OnClientError = Arc<
    dyn Fn(&HandshakeError, Option<&Request<()>>) -> Option<(StatusCode, HeaderMap, String)>
        + Send
        + Sync,
>;

/// What `verify_client` sees (`ws`'s `info`: `origin`, `req`, `secure`).
#[derive(Clone, Debug)]
pub struct VerifyInfo {
    /// The `Origin` header (or `Sec-WebSocket-Origin` from version-8 clients).
    pub origin: Option<String>,
    /// The upgrade request.
    pub request: Arc<Request<()>>,
    /// Whether the connection is TLS ([`accept_tls`]).
    pub secure: bool,
}

/// A refusal from `verify_client`: the status (default 401, as `ws`), an optional reason
/// phrase, and extra response headers such as `Retry-After`.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The reason phrase; the status's canonical one when `None`.
    pub reason: Option<String>,
    /// Extra headers of the response.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl Default for Rejection {
    fn default() -> Self {
        Rejection {
            status: http::StatusCode::UNAUTHORIZED,
            reason: None,
            headers: Vec::new(),
        }
    }
}

impl Rejection {
    /// A refusal with this status.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn status(status: u16) -> Rejection {
        Rejection {
            status: http::StatusCode::from_u16(status).expect("a valid status"),
            ..Default::default()
        }
    }

    /// With a reason phrase.
    pub fn reason(mut self, reason: impl Into<String>) -> Rejection {
        self.reason = Some(reason.into());
        self
    }

    /// With an extra header.
    ///
    /// # Panics
    /// If the name (lowercase, as HTTP/2 requires) or value is not a valid header.
    pub fn header(mut self, name: &'static str, value: &str) -> Rejection {
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers
            .push((http::HeaderName::from_static(name), value));
        self
    }
}

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

/// Performs the server side of the opening handshake on `io`: reads the upgrade request
/// (within `handshake_timeout` and `head_limits`), checks it, answers 101, and returns
/// the open WebSocket with the request. A bad request is answered with its 4xx status
/// and a one-line plain-text body, and returned as the error.
///
/// # Errors
/// [`Error::Handshake`] (see [`HandshakeError::status`]) or [`Error::Io`].
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
    let mut buf = BytesMut::with_capacity(1024);
    let head = tokio::time::timeout(
        config.handshake_timeout,
        read_request(&mut io, &mut buf, config),
    )
    .await;
    let result = match head {
        Ok(Ok((request, Ok(upgrade)))) => Ok((request, upgrade)),
        Ok(Ok((request, Err(e)))) => Err((Some(request), e)),
        Ok(Err(Error::Handshake(e))) => Err((None, e)),
        Ok(Err(other)) => return Err(other),
        Err(_elapsed) => Err((None, HandshakeError::Timeout)),
    };
    match result {
        Ok((request, upgrade)) => {
            respond(io, request, upgrade, buf, config, secure, websocket).await
        }
        Err((request, e)) => {
            reject(&mut io, &e, request.as_ref(), config).await;
            Err(Error::Handshake(e))
        }
    }
}

/// Upgrades a request whose head was already read by another HTTP server (`ws`'s
/// `handleUpgrade`): checks it as [`accept`] does and answers 101 or the error status.
/// `read_buf` holds bytes read past the head (`ws`'s `head`).
///
/// # Errors
/// As [`accept`].
pub async fn upgrade<S>(
    mut io: S,
    request: Request<()>,
    read_buf: BytesMut,
    config: &ServerConfig,
) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match check_request(&request, config) {
        Ok(upgrade) => respond(io, request, upgrade, read_buf, config, false, None).await,
        Err(e) => {
            reject(&mut io, &e, Some(&request), config).await;
            Err(Error::Handshake(e))
        }
    }
}

async fn respond<S>(
    mut io: S,
    request: Request<()>,
    (upgrade, deflate): (Upgrade, Option<DeflateParams>),
    read_buf: BytesMut,
    config: &ServerConfig,
    secure: bool,
    websocket: Option<&Arc<Config>>,
) -> Result<(WebSocket<S>, Request<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = request;
    if let Some(verify) = &config.verify_client {
        let headers = request.headers();
        let origin = headers
            .get(http::header::ORIGIN)
            .or_else(|| headers.get("sec-websocket-origin"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let shared = Arc::new(request);
        let info = VerifyInfo {
            origin,
            request: shared.clone(),
            secure,
        };
        let verdict = tokio::time::timeout(config.handshake_timeout, verify(info)).await;
        request = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
        let refusal = match verdict {
            Ok(Ok(())) => None,
            Ok(Err(refusal)) => Some(refusal),
            Err(_) => Some(Rejection::status(503).reason("Verification Timed Out")),
        };
        if let Some(refusal) = refusal {
            let body = refusal.reason.clone().unwrap_or_else(|| {
                refusal
                    .status
                    .canonical_reason()
                    .unwrap_or("Rejected")
                    .to_owned()
            });
            let headers: HeaderMap = refusal.headers.iter().cloned().collect();
            let response = sockeye_proto::handshake::server::reject(
                refusal.status,
                refusal.reason.as_deref(),
                &headers,
                &body,
            );
            write_refusal(&mut io, &response).await;
            return Err(Error::Handshake(HandshakeError::Rejected));
        }
    }
    let protocol = match &config.handle_protocols {
        Some(pick) if !upgrade.protocols.is_empty() => pick(&upgrade.protocols, &request),
        _ => upgrade.protocols.first().cloned(),
    };
    let mut headers = HeaderMap::new();
    if let Some(params) = &deflate {
        let value = HeaderValue::from_str(&params.header_value()).expect("tokens only");
        headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    if let Some(hook) = &config.headers_hook {
        hook(&mut headers, &request);
    }
    let response = upgrade.accept(protocol.as_deref(), &headers);
    io.write_all(&response).await?;
    let deflate = deflate.zip(config.per_message_deflate.clone());
    let negotiated = Negotiated {
        protocol,
        url: None,
        deflate,
    };
    let websocket = websocket.map_or_else(|| Arc::new(config.websocket.clone()), Arc::clone);
    let ws = WebSocket::with_info(io, Role::Server, websocket, read_buf, negotiated);
    Ok((ws, request))
}

/// Answers a failed handshake with its status and a one-line body, or with what
/// `on_client_error` returns; best effort and bounded, since the client may not read.
async fn reject<S: AsyncWrite + Unpin>(
    io: &mut S,
    error: &HandshakeError,
    request: Option<&Request<()>>,
    config: &ServerConfig,
) {
    let custom = config
        .on_client_error
        .as_ref()
        .and_then(|hook| hook(error, request));
    let response = match custom {
        Some((status, headers, body)) => {
            sockeye_proto::handshake::server::reject(status, None, &headers, &body)
        }
        None => reject_error(error),
    };
    write_refusal(io, &response).await;
}

/// Writes a refusal and closes; best effort and bounded, since the client may not read.
async fn write_refusal<S: AsyncWrite + Unpin>(io: &mut S, response: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(response).await?;
        io.shutdown().await
    })
    .await;
}

fn check_request(
    request: &Request<()>,
    config: &ServerConfig,
) -> Result<(Upgrade, Option<DeflateParams>), HandshakeError> {
    if let Some(path) = &config.path {
        if request.uri().path() != path {
            return Err(HandshakeError::NotFound);
        }
    }
    let upgrade = Upgrade::validate(request)?;
    if let Some(should_handle) = &config.should_handle {
        if !should_handle(request) {
            return Err(HandshakeError::Rejected);
        }
    }
    let deflate = match &config.per_message_deflate {
        Some(deflate) => upgrade.negotiate_deflate(deflate)?,
        None => None,
    };
    Ok((upgrade, deflate))
}

/// The request head and the outcome of its checks (the request is kept for
/// `on_client_error` when they fail).
type CheckedRequest = (
    Request<()>,
    Result<(Upgrade, Option<DeflateParams>), HandshakeError>,
);

async fn read_request<S>(
    io: &mut S,
    buf: &mut BytesMut,
    config: &ServerConfig,
) -> Result<CheckedRequest, Error>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((request, len)) = parse_request(buf, &config.head_limits)? {
            let _ = buf.split_to(len);
            let checked = check_request(&request, config);
            return Ok((request, checked));
        }
        buf.reserve(1024);
        if io.read_buf(buf).await? == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed during the opening handshake",
            )));
        }
    }
}
