//! Serve Sockeye WebSockets from a [hyper] 1.x server: `ws`'s `noServer` mode and
//! `handleUpgrade`.
//!
//! Your hyper service sees every request. For a WebSocket one, [`upgrade`] decides on
//! it with the same server policy as `sockeye::accept` ([`ServerConfig::decide`]: path,
//! validation, `should_handle`, `verify_client`, `handle_protocols`,
//! `per_message_deflate`, `headers_hook`, `on_client_error`) and gives back the
//! `101 Switching Protocols` response to return, with an [`UpgradeFut`] that resolves to
//! the open [`sockeye::WebSocket`] once hyper has sent that response. A refused request
//! gives an [`UpgradeError`], whose [`UpgradeError::response`] is the answer: the same
//! status line, headers and body `sockeye::accept` writes.
//!
//! ```text
//! hyper request --upgrade().await--> 101 response ---> returned to hyper
//!                                \-> UpgradeFut   ---> spawn: .await -> WebSocket
//! ```
//!
//! The connection must be served with upgrades enabled
//! (`http1::Builder::serve_connection(..).with_upgrades()`).
//!
//! # HTTP/2 (RFC 8441)
//! Browsers open WebSockets as streams of an HTTP/2 connection when the server announces
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`: serve HTTP/2 with
//! `http2::Builder::enable_connect_protocol()` (or hyper-util's `auto::Builder` with
//! `.http2().enable_connect_protocol()`). The same [`upgrade`] then takes an extended
//! CONNECT (`:protocol = websocket`, read from [`hyper::ext::Protocol`]) through the same
//! decision, and the response it gives is the `200` that opens the stream; the
//! WebSocket is the same [`HyperWebSocket`], its frames carried in the stream's DATA
//! frames, with HTTP/2 flow control as its backpressure. Its close handshake ends the
//! stream (`END_STREAM`). `request.version()` tells the two apart in every hook.
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use futures_util::StreamExt;
//! use http_body_util::Full;
//! use hyper::{Request, Response};
//! use sockeye::ServerConfig;
//!
//! async fn handle(mut request: Request<hyper::body::Incoming>)
//!     -> Result<Response<Full<Bytes>>, Infallible>
//! {
//!     match sockeye_hyper::upgrade(&mut request, &ServerConfig::default()).await {
//!         Ok((response, upgrade)) => {
//!             tokio::spawn(async move {
//!                 let Ok(mut ws) = upgrade.await else { return };
//!                 while let Some(Ok(message)) = ws.next().await {
//!                     if message.is_text() || message.is_binary() {
//!                         let _ = ws.send(message).await;
//!                     }
//!                 }
//!             });
//!             Ok(response.map(|_| Full::default()))
//!         }
//!         Err(error) => Ok(error.response()),
//!     }
//! }
//! ```
//!
//! See `examples/echo.rs` (`cargo run -p sockeye-hyper --example hyper_echo`) for the
//! whole server.
//!
//! # Features
//! - `deflate` (default): permessage-deflate, as `sockeye`'s feature of that name. Without
//!   it, offers are declined and connections run uncompressed.
//!
//! `sockeye`'s `rustls` feature is not needed (TLS, if any, is hyper's), so this crate
//! does not turn it on.
//!
//! # Stability
//! Statuses are a contract; the `Display` texts and response bodies are not.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::ext::{Protocol, ReasonPhrase};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sockeye::{Config, DeflateConfig, DeflateParams, ServerConfig, WebSocket};
use sockeye_proto::handshake::http2::ConnectProtocol;
use sockeye_proto::handshake::parse_protocols;
use sockeye_proto::handshake::policy::Refusal;
use sockeye_proto::HandshakeError;

/// The WebSocket an upgraded hyper connection becomes.
pub type HyperWebSocket = WebSocket<TokioIo<Upgraded>>;

/// Upgrades a hyper request to a WebSocket (`ws`'s `handleUpgrade`).
///
/// Decides with [`ServerConfig::decide`], the server policy every Sockeye front end
/// shares: the path (404), the upgrade itself (405, 400, 426; over HTTP/2 an extended
/// CONNECT with `:protocol = websocket`), `should_handle` (400), the
/// permessage-deflate offer (400), `verify_client` (awaited; its refusal), the
/// subprotocol (`handle_protocols`, by default the client's first) and `headers_hook`;
/// a failed check is answered as `on_client_error` says. An accepted request that hyper
/// cannot hand over (no `OnUpgrade` in its extensions) is 426. `verify_client` sees
/// `secure: false`; use [`Handshake::secure`] behind TLS.
///
/// Return the response (101, or 200 over HTTP/2) to hyper and await the future
/// (typically in a spawned task); it completes once hyper has written the response and
/// handed over the connection (over HTTP/2, the stream).
///
/// # Errors
/// The [`UpgradeError`] to answer with ([`UpgradeError::response`]).
///
/// # Cancel safety
/// Cancel safe: the request's `OnUpgrade` is taken out of it, and dropping the future
/// drops it (the request is then no longer upgradable).
pub async fn upgrade<B>(
    request: &mut Request<B>,
    config: &ServerConfig,
) -> Result<(Response<Empty<Bytes>>, UpgradeFut), UpgradeError> {
    Handshake::new(request).accept(config).await
}

/// A copy of a request's method, URI, version and headers, as the server policy,
/// `should_handle` and `handle_protocols` take it; an HTTP/2 request's `:protocol`
/// ([`hyper::ext::Protocol`]) comes along as a [`ConnectProtocol`] extension.
pub fn request_head<B>(request: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    copy_protocol(request.extensions(), &mut head);
    head
}

/// [`request_head`] from the parts of a request (as frameworks' extractors see it).
pub fn parts_head(parts: &http::request::Parts) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    copy_protocol(&parts.extensions, &mut head);
    head
}

/// The `:protocol` of an HTTP/2 extended CONNECT, as the server policy reads it.
fn copy_protocol(extensions: &http::Extensions, head: &mut Request<()>) {
    if let Some(protocol) = extensions.get::<Protocol>() {
        let value = ConnectProtocol(protocol.as_str().to_owned());
        head.extensions_mut().insert(value);
    }
}

/// An upgrade request taken from hyper, not yet decided on: the two steps of
/// [`upgrade`], for frameworks that learn the configuration after looking at the request
/// (`sockeye-axum`). Nothing is checked until [`Handshake::accept`], so that every check
/// runs in the policy's order once the configuration is known.
#[derive(Debug)]
pub struct Handshake {
    head: Request<()>,
    on_upgrade: Option<OnUpgrade>,
    secure: bool,
}

impl Handshake {
    /// Takes the head of `request` and its `OnUpgrade` (hyper's handle on the
    /// connection, from its extensions).
    pub fn new<B>(request: &mut Request<B>) -> Handshake {
        let on_upgrade = request.extensions_mut().remove::<OnUpgrade>();
        Handshake::from_head(request_head(request), on_upgrade)
    }

    /// A handshake from a request head and the `OnUpgrade` taken from its extensions
    /// (`None`: the connection cannot be upgraded, answered 426 if the request is
    /// otherwise accepted).
    pub fn from_head(head: Request<()>, on_upgrade: Option<OnUpgrade>) -> Handshake {
        Handshake {
            head,
            on_upgrade,
            secure: false,
        }
    }

    /// Whether the connection is TLS, as `verify_client` sees it (default `false`).
    pub fn secure(mut self, secure: bool) -> Handshake {
        self.secure = secure;
        self
    }

    /// The request.
    pub fn request(&self) -> &Request<()> {
        &self.head
    }

    /// The subprotocols the client offered, in its order; empty when the
    /// `Sec-WebSocket-Protocol` header is malformed (which [`Handshake::accept`] refuses).
    pub fn protocols(&self) -> Vec<String> {
        parse_protocols(self.head.headers()).unwrap_or_default()
    }

    /// Decides on the request with `config` ([`ServerConfig::decide`], see [`upgrade`])
    /// and returns the response (101, or 200 over HTTP/2) with the future of the
    /// WebSocket.
    ///
    /// # Errors
    /// The [`UpgradeError`] to answer with.
    ///
    /// # Cancel safety
    /// Cancel safe; dropping the future drops the connection's `OnUpgrade`.
    pub async fn accept(
        self,
        config: &ServerConfig,
    ) -> Result<(Response<Empty<Bytes>>, UpgradeFut), UpgradeError> {
        let accept = config
            .decide(self.head, self.secure)
            .await
            .map_err(UpgradeError::Refused)?;
        let on_upgrade = self.on_upgrade.ok_or(UpgradeError::NotUpgradable)?;
        let mut response = Response::new(Empty::new());
        *response.status_mut() = accept.status();
        *response.headers_mut() = accept.headers();
        let (request, protocol, deflate) = accept.into_parts();
        let future = UpgradeFut {
            on_upgrade,
            parts: Some(Parts {
                request,
                websocket: config.websocket.clone(),
                protocol,
                deflate: deflate.zip(config.per_message_deflate.clone()),
            }),
        };
        Ok((response, future))
    }
}

/// What the WebSocket is built with once the connection is handed over.
struct Parts {
    /// The request's head: its path and version go in the connection's span.
    request: Request<()>,
    websocket: Config,
    protocol: Option<String>,
    deflate: Option<(DeflateParams, DeflateConfig)>,
}

/// Resolves to the WebSocket once hyper has sent the 101 (or HTTP/2 200) response and
/// handed over the connection (or stream).
///
/// # Errors
/// The [`hyper::Error`] of a connection that was not upgraded (it closed first, it is
/// not served `with_upgrades()`, or the response returned was not the 101).
///
/// # Cancel safety
/// Dropping it drops the connection.
#[must_use = "the WebSocket exists only once this future is awaited"]
pub struct UpgradeFut {
    on_upgrade: OnUpgrade,
    parts: Option<Parts>,
}

impl Future for UpgradeFut {
    type Output = Result<HyperWebSocket, hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded = ready!(Pin::new(&mut self.on_upgrade).poll(cx))?;
        let parts = self
            .parts
            .take()
            .expect("UpgradeFut polled after completion");
        // hyper's `Upgraded` replays the bytes it read past the request itself.
        Poll::Ready(Ok(WebSocket::from_request_upgraded(
            TokioIo::new(upgraded),
            parts.websocket,
            BytesMut::new(),
            &parts.request,
            parts.protocol,
            parts.deflate,
        )))
    }
}

impl fmt::Debug for UpgradeFut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeFut").finish_non_exhaustive()
    }
}

/// Why a request was not upgraded, with the answer to give.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The server policy refused the request: a failed check ([`Refusal::error`]), with
    /// its default answer or `on_client_error`'s, or a `verify_client` refusal
    /// ([`HandshakeError::Rejected`]) with its status, reason phrase and headers.
    Refused(Refusal),
    /// hyper cannot hand over this connection (no `OnUpgrade` in the request's
    /// extensions) (426).
    NotUpgradable,
}

impl UpgradeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            UpgradeError::Refused(refusal) => refusal.status,
            UpgradeError::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// The handshake error, for a refusal.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match self {
            UpgradeError::Refused(refusal) => Some(&refusal.error),
            UpgradeError::NotUpgradable => None,
        }
    }

    /// The answer to the request, as `sockeye::accept` writes it: the refusal's status
    /// and reason phrase, `Connection: close`, a plain-text body and the refusal's
    /// headers (`Sec-WebSocket-Version: 13` and `Upgrade: websocket` on a 426, RFC 6455
    /// §4.4). Over HTTP/2, hyper leaves out what that protocol does not have (the reason
    /// phrase and the connection-specific `Connection` and `Upgrade`).
    pub fn response(&self) -> Response<Full<Bytes>> {
        let refusal = match self {
            UpgradeError::Refused(refusal) => refusal.clone(),
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            UpgradeError::NotUpgradable => Refusal {
                error: HandshakeError::Rejected,
                status: StatusCode::UPGRADE_REQUIRED,
                reason: None,
                headers: [
                    (header::UPGRADE, HeaderValue::from_static("websocket")),
                    (
                        header::SEC_WEBSOCKET_VERSION,
                        HeaderValue::from_static("13"),
                    ),
                ]
                .into_iter()
                .collect(),
                body: format!("{self}\n"),
            },
        };
        let mut response = Response::new(Full::new(Bytes::from(refusal.body)));
        *response.status_mut() = refusal.status;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let text = HeaderValue::from_static("text/plain; charset=utf-8");
        headers.insert(header::CONTENT_TYPE, text);
        for (name, value) in &refusal.headers {
            headers.append(name, value.clone());
        }
        if let Some(reason) = refusal.reason {
            // A phrase hyper cannot write (a control character) keeps the canonical one.
            if let Ok(phrase) = ReasonPhrase::try_from(reason.into_bytes()) {
                response.extensions_mut().insert(phrase);
            }
        }
        response
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::Refused(refusal) => fmt::Display::fmt(&refusal.error, f),
            UpgradeError::NotUpgradable => f.write_str("the connection cannot be upgraded"),
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpgradeError::Refused(refusal) => Some(&refusal.error),
            UpgradeError::NotUpgradable => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn request() -> Request<()> {
        Request::get("/ws")
            .header("host", "example.com")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat, superchat")
            .body(())
            .unwrap()
    }

    fn upgradable() -> Handshake {
        Handshake::from_head(request(), Some(hyper::upgrade::on(Request::new(()))))
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    // RFC 6455 §4.2.2: the accept key of the RFC's example.
    #[test]
    fn accept_response() {
        let handshake = upgradable();
        assert_eq!(handshake.protocols(), ["chat", "superchat"]);
        let (response, _) = block_on(handshake.accept(&ServerConfig::default())).unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers();
        assert_eq!(
            headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(headers["sec-websocket-protocol"], "chat");
        assert!(!headers.contains_key("sec-websocket-extensions"));
    }

    #[test]
    fn no_upgrade_extension_is_426() {
        let mut req = request();
        let error = block_on(upgrade(&mut req, &ServerConfig::default())).unwrap_err();
        assert_eq!(error, UpgradeError::NotUpgradable);
        let response = error.response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()["sec-websocket-version"], "13");
        assert_eq!(response.headers()["upgrade"], "websocket");
    }

    #[test]
    fn config_checks() {
        let mut config = ServerConfig::default();
        config.path = Some("/other".into());
        let error = block_on(upgradable().accept(&config)).unwrap_err();
        assert_eq!(error.status(), StatusCode::NOT_FOUND);

        let mut config = ServerConfig::default();
        config.should_handle = Some(Arc::new(|_| false));
        let error = block_on(upgradable().accept(&config)).unwrap_err();
        assert_eq!(error.handshake_error(), Some(&HandshakeError::Rejected));

        let mut http10 = request();
        *http10.version_mut() = http::Version::HTTP_10;
        let handshake = Handshake::from_head(http10, None);
        let error = block_on(handshake.accept(&ServerConfig::default())).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn refusal_response_keeps_reason_headers_and_body() {
        let mut config = ServerConfig::default();
        config.verify_client = Some(sockeye::verify_client(|_| {
            Err(sockeye::Rejection::status(403)
                .reason("Origin Not Allowed")
                .header("retry-after", "120"))
        }));
        let error = block_on(upgradable().accept(&config)).unwrap_err();
        let response = error.response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let phrase = response.extensions().get::<ReasonPhrase>().unwrap();
        assert_eq!(phrase.as_bytes(), b"Origin Not Allowed");
        assert_eq!(response.headers()["retry-after"], "120");
        assert_eq!(response.headers()["connection"], "close");
    }
}
