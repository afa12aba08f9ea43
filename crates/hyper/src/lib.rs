//! Serve Sockeye WebSockets from a [hyper] 1.x server: `ws`'s `noServer` mode and
//! `handleUpgrade`.
//!
//! Your hyper service sees every request. For a WebSocket one, [`upgrade`] checks it
//! (RFC 6455 §4.2.1) against a [`ServerConfig`] (`path`, `should_handle`,
//! `handle_protocols`, `per_message_deflate`) and gives back the `101 Switching Protocols`
//! response to return, with a [`UpgradeFut`] that resolves to the open
//! [`sockeye::WebSocket`] once hyper has sent that response. A request that is not a valid
//! upgrade gives an [`UpgradeError`], whose [`UpgradeError::response`] is the 4xx answer.
//!
//! ```text
//! hyper request --upgrade()--> 101 response ---> returned to hyper
//!                          \-> UpgradeFut   ---> spawn: .await -> WebSocket
//! ```
//!
//! The connection must be served with upgrades enabled
//! (`http1::Builder::serve_connection(..).with_upgrades()`).
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
//!     match sockeye_hyper::upgrade(&mut request, &ServerConfig::default()) {
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
//! # Stability
//! Statuses are a contract; the `Display` texts and response bodies are not.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Empty, Full};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sockeye::{Config, DeflateConfig, DeflateParams, Role, ServerConfig, WebSocket};
use sockeye_proto::handshake::server::Upgrade;
use sockeye_proto::HandshakeError;

/// The WebSocket an upgraded hyper connection becomes.
pub type HyperWebSocket = WebSocket<TokioIo<Upgraded>>;

/// Upgrades a hyper request to a WebSocket (`ws`'s `handleUpgrade`).
///
/// Checks, in this order: that the request is a WebSocket upgrade over HTTP/1.1 (405,
/// 400, 426) that hyper can hand over (426), the path (`config.path`, 404),
/// `config.should_handle` (400), and the `Sec-WebSocket-Extensions` offer when
/// `config.per_message_deflate` is set (400). The subprotocol is
/// `config.handle_protocols`' choice, by default the client's first.
///
/// Return the response to hyper and await the future (typically in a spawned task); it
/// completes once hyper has written the response and handed over the connection.
///
/// # Errors
/// The [`UpgradeError`] naming the first problem; answer with
/// [`UpgradeError::response`].
pub fn upgrade<B>(
    request: &mut Request<B>,
    config: &ServerConfig,
) -> Result<(Response<Empty<Bytes>>, UpgradeFut), UpgradeError> {
    let handshake = Handshake::validate(request_head(request))?;
    if request.extensions().get::<OnUpgrade>().is_none() {
        return Err(UpgradeError::NotUpgradable);
    }
    handshake.accept(config, hyper::upgrade::on(request))
}

/// A copy of a request's method, URI, version and headers, as [`Handshake::validate`],
/// `should_handle` and `handle_protocols` take it.
pub fn request_head<B>(request: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    head
}

/// A request that is a valid WebSocket upgrade, not yet checked against a
/// [`ServerConfig`]: the two steps of [`upgrade`], for frameworks that learn the
/// configuration after looking at the request (`sockeye-axum`).
#[derive(Debug)]
pub struct Handshake {
    head: Request<()>,
    upgrade: Upgrade,
}

impl Handshake {
    /// Checks that `head` is a WebSocket upgrade over HTTP/1.1 (RFC 6455 §4.2.1).
    ///
    /// # Errors
    /// [`UpgradeError::Handshake`] with the first problem.
    pub fn validate(head: Request<()>) -> Result<Handshake, UpgradeError> {
        if head.version() != Version::HTTP_11 {
            let why = "expected HTTP/1.1".to_owned();
            return Err(HandshakeError::MalformedHttp(why).into());
        }
        let upgrade = Upgrade::validate(&head)?;
        Ok(Handshake { head, upgrade })
    }

    /// The request.
    pub fn request(&self) -> &Request<()> {
        &self.head
    }

    /// The subprotocols the client offered, in its order.
    pub fn protocols(&self) -> &[String] {
        &self.upgrade.protocols
    }

    /// Checks the request against `config` (path, `should_handle`, permessage-deflate
    /// offer), picks the subprotocol, and returns the 101 response with the future of the
    /// WebSocket that `on_upgrade` becomes.
    ///
    /// # Errors
    /// [`UpgradeError::Handshake`]: `NotFound` (404) for another path, `Rejected` (400)
    /// when `should_handle` declines, `InvalidHeader` (400) for a malformed extension
    /// offer or a subprotocol from `handle_protocols` that is not a header value.
    pub fn accept(
        self,
        config: &ServerConfig,
        on_upgrade: OnUpgrade,
    ) -> Result<(Response<Empty<Bytes>>, UpgradeFut), UpgradeError> {
        if let Some(path) = &config.path {
            if self.head.uri().path() != path {
                return Err(HandshakeError::NotFound.into());
            }
        }
        if let Some(should_handle) = &config.should_handle {
            if !should_handle(&self.head) {
                return Err(HandshakeError::Rejected.into());
            }
        }
        let deflate = match &config.per_message_deflate {
            Some(deflate) => self.upgrade.negotiate_deflate(deflate)?,
            None => None,
        };
        let protocol = match &config.handle_protocols {
            Some(pick) if !self.upgrade.protocols.is_empty() => {
                pick(&self.upgrade.protocols, &self.head)
            }
            _ => self.upgrade.protocols.first().cloned(),
        };
        let response = switching_protocols(&self.upgrade, protocol.as_deref(), deflate.as_ref())?;
        let future = UpgradeFut {
            on_upgrade,
            parts: Some(Parts {
                websocket: config.websocket.clone(),
                protocol,
                deflate: deflate.zip(config.per_message_deflate.clone()),
            }),
        };
        Ok((response, future))
    }
}

/// The 101 response (RFC 6455 §4.2.2).
fn switching_protocols(
    upgrade: &Upgrade,
    protocol: Option<&str>,
    deflate: Option<&DeflateParams>,
) -> Result<Response<Empty<Bytes>>, UpgradeError> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = HeaderValue::from_str(&upgrade.accept).expect("base64 is a header value");
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        // `handle_protocols` may return anything; refuse what cannot be a header.
        let value = HeaderValue::from_str(protocol)
            .map_err(|_| HandshakeError::InvalidHeader("Sec-WebSocket-Protocol"))?;
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    if let Some(params) = deflate {
        let value = HeaderValue::from_str(&params.header_value()).expect("tokens only");
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    Ok(response)
}

/// What the WebSocket is built with once the connection is handed over.
struct Parts {
    websocket: Config,
    protocol: Option<String>,
    deflate: Option<(DeflateParams, DeflateConfig)>,
}

/// Resolves to the WebSocket once hyper has sent the 101 response and handed over the
/// connection.
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
        Poll::Ready(Ok(WebSocket::from_upgraded_with(
            TokioIo::new(upgraded),
            Role::Server,
            parts.websocket,
            BytesMut::new(),
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

/// Why a request was not upgraded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The request is not an acceptable WebSocket upgrade; see
    /// [`HandshakeError::status`].
    Handshake(HandshakeError),
    /// hyper cannot hand over this connection (no `OnUpgrade` in the request's
    /// extensions) (426).
    NotUpgradable,
}

impl UpgradeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        let code = match self {
            UpgradeError::Handshake(e) => e.status(),
            UpgradeError::NotUpgradable => 426,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
    }

    /// The answer to the request: [`UpgradeError::status`], a one-line plain-text body
    /// naming the problem and `Connection: close`; a 426 also carries `Upgrade: websocket`
    /// and `Sec-WebSocket-Version: 13` (RFC 6455 §4.4).
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let text = HeaderValue::from_static("text/plain; charset=utf-8");
        headers.insert(header::CONTENT_TYPE, text);
        if self.status() == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::Handshake(e) => fmt::Display::fmt(e, f),
            UpgradeError::NotUpgradable => f.write_str("the connection cannot be upgraded"),
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpgradeError::Handshake(e) => Some(e),
            UpgradeError::NotUpgradable => None,
        }
    }
}

impl From<HandshakeError> for UpgradeError {
    fn from(e: HandshakeError) -> Self {
        UpgradeError::Handshake(e)
    }
}

#[cfg(test)]
mod tests {
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

    // RFC 6455 §4.2.2: the accept key of the RFC's example.
    #[test]
    fn accept_response() {
        let handshake = Handshake::validate(request()).unwrap();
        assert_eq!(handshake.protocols(), ["chat", "superchat"]);
        let (response, _) = handshake
            .accept(
                &ServerConfig::default(),
                hyper::upgrade::on(Request::new(())),
            )
            .unwrap();
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
        let error = upgrade(&mut req, &ServerConfig::default()).unwrap_err();
        assert_eq!(error, UpgradeError::NotUpgradable);
        let response = error.response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()["sec-websocket-version"], "13");
    }

    #[test]
    fn config_checks() {
        let mut config = ServerConfig::default();
        config.path = Some("/other".into());
        let error = Handshake::validate(request())
            .unwrap()
            .accept(&config, hyper::upgrade::on(Request::new(())))
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::NOT_FOUND);

        let mut config = ServerConfig::default();
        config.should_handle = Some(std::sync::Arc::new(|_| false));
        let error = Handshake::validate(request())
            .unwrap()
            .accept(&config, hyper::upgrade::on(Request::new(())))
            .unwrap_err();
        assert_eq!(error, UpgradeError::Handshake(HandshakeError::Rejected));

        let mut http10 = request();
        *http10.version_mut() = Version::HTTP_10;
        let error = Handshake::validate(http10).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}
