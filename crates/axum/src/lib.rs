//! An [axum] extractor that upgrades requests to Sockeye WebSockets, in the shape of
//! axum's own `ws` extractor.
//!
//! [`WebSocketUpgrade`] takes any request; set options with [`WebSocketUpgrade::config`]
//! and [`WebSocketUpgrade::protocols`], then return what [`WebSocketUpgrade::on_upgrade`]
//! resolves to. That decides on the request with the server policy every Sockeye front
//! end shares (`sockeye::ServerConfig::decide`: path, validation, `should_handle`,
//! `verify_client`, `handle_protocols`, `per_message_deflate`, `headers_hook`,
//! `on_client_error`) and answers with the 101 (200 over HTTP/2), after which the
//! callback runs in its own task with the open [`WebSocket`], or with the refusal (the
//! same status line, headers and body as `sockeye::accept` writes).
//!
//! ```no_run
//! use axum::response::Response;
//! use axum::routing::get;
//! use axum::Router;
//! use futures_util::StreamExt;
//! use sockeye_axum::WebSocketUpgrade;
//!
//! async fn ws(upgrade: WebSocketUpgrade) -> Response {
//!     upgrade.protocols(["chat"]).on_upgrade(|mut ws| async move {
//!         while let Some(Ok(message)) = ws.next().await {
//!             if message.is_text() || message.is_binary() {
//!                 let _ = ws.send(message).await;
//!             }
//!         }
//!     })
//!     .await
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/ws", get(ws));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # HTTP/2 (RFC 8441)
//! Over HTTP/2 a WebSocket is opened by an extended CONNECT (`:protocol = websocket`)
//! instead of a GET, decided by the same policy and answered `200`; the callback gets the
//! same [`WebSocket`]. Route it with `any(..)` (or `on(MethodFilter::GET.or(
//! MethodFilter::CONNECT), ..)`) rather than `get(..)`, and serve HTTP/2 with the
//! extended CONNECT protocol enabled: `axum::serve` does so with axum's `http2` feature
//! (h2c with prior knowledge; behind TLS, hyper's `http2::Builder::enable_connect_protocol`).
//!
//! # Features
//! - `deflate` (default): permessage-deflate, as `sockeye`'s feature of that name. Without
//!   it, offers are declined and connections run uncompressed.
//!
//! `sockeye`'s `rustls` feature is not needed (TLS, if any, is axum's), so this crate
//! does not turn it on.
//!
//! # Stability
//! Statuses are a contract; the `Display` texts and response bodies are not.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::Response;
use http::request::Parts;
use http::Request;
use hyper::upgrade::OnUpgrade;
use sockeye::ServerConfig;
use sockeye_hyper::Handshake;

/// The WebSocket [`WebSocketUpgrade::on_upgrade`] hands to its callback.
pub type WebSocket = sockeye_hyper::HyperWebSocket;

/// Extracts an upgrade request; [`WebSocketUpgrade::on_upgrade`] answers it.
///
/// Extraction never fails: the request is checked only in
/// [`WebSocketUpgrade::on_upgrade`], once the [`ServerConfig`] is known, so that every
/// check runs in the order of the shared server policy (the path before the rest, as in
/// `sockeye::accept`). The config's `websocket` settings and `per_message_deflate` (off
/// by default, as `ws`) shape the connection; its `handle_protocols` picks the
/// subprotocol (by default the client's first) unless [`WebSocketUpgrade::protocols`]
/// is set.
pub struct WebSocketUpgrade {
    handshake: Handshake,
    config: ServerConfig,
    protocols: Option<Vec<String>>,
}

impl WebSocketUpgrade {
    /// Uses `config` for this connection instead of [`ServerConfig::default`].
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The subprotocols this server speaks, by preference: the answer names the first of
    /// the client's offers that is in this list, or none when no offer is. This is the
    /// config's `handle_protocols`, set for this request.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.protocols = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the connection is TLS, as `verify_client` sees it (default `false`).
    pub fn secure(mut self, secure: bool) -> Self {
        self.handshake = self.handshake.secure(secure);
        self
    }

    /// The subprotocols the client offered, in its order; empty when the header is
    /// malformed (which [`WebSocketUpgrade::on_upgrade`] refuses).
    pub fn requested_protocols(&self) -> Vec<String> {
        self.handshake.protocols()
    }

    /// The request (method, URI, version and headers).
    pub fn request(&self) -> &Request<()> {
        self.handshake.request()
    }

    /// Decides on the request (`sockeye::ServerConfig::decide`, `verify_client`
    /// awaited) and answers it: the 101 response (200 over HTTP/2), after which `callback` runs in a new
    /// task with the open WebSocket; or the refusal's response.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the connection's upgrade.
    pub async fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut config = self.config;
        if let Some(supported) = self.protocols {
            config.handle_protocols = Some(Arc::new(move |offered: &[String], _: &_| {
                offered.iter().find(|p| supported.contains(p)).cloned()
            }));
        }
        match self.handshake.accept(&config).await {
            Ok((response, upgrade)) => {
                tokio::spawn(async move {
                    // The client may go away before the upgrade completes: nothing to run.
                    if let Ok(ws) = upgrade.await {
                        callback(ws).await;
                    }
                });
                response.map(Body::new)
            }
            Err(error) => error.response().map(Body::new),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let head = sockeye_hyper::parts_head(parts);
        let on_upgrade = parts.extensions.remove::<OnUpgrade>();
        Ok(WebSocketUpgrade {
            handshake: Handshake::from_head(head, on_upgrade),
            config: ServerConfig::default(),
            protocols: None,
        })
    }
}

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("handshake", &self.handshake)
            .field("config", &self.config)
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}
