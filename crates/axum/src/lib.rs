//! An [axum] extractor that upgrades requests to Sockeye WebSockets, in the shape of
//! axum's own `ws` extractor.
//!
//! [`WebSocketUpgrade`] accepts only valid WebSocket upgrade requests (RFC 6455 §4.2.1);
//! any other request is answered by its [`WebSocketUpgradeRejection`] (405, 400 or 426
//! with a one-line body). Set options with [`WebSocketUpgrade::config`] and
//! [`WebSocketUpgrade::protocols`], then return [`WebSocketUpgrade::on_upgrade`]'s
//! response; the callback runs in its own task with the open [`WebSocket`].
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
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/ws", get(ws));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! Only HTTP/1.1 upgrades are supported (not HTTP/2 extended CONNECT, RFC 8441).
//!
//! # Stability
//! Statuses are a contract; the `Display` texts and response bodies are not.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Request, StatusCode};
use hyper::upgrade::OnUpgrade;
use sockeye::ServerConfig;
use sockeye_hyper::{Handshake, UpgradeError};

/// The WebSocket [`WebSocketUpgrade::on_upgrade`] hands to its callback.
pub type WebSocket = sockeye_hyper::HyperWebSocket;

/// Extracts a WebSocket upgrade request; [`WebSocketUpgrade::on_upgrade`] answers it.
///
/// The [`ServerConfig`] applies when answering: its `path` (404) and `should_handle`
/// (400) are checked then, its `websocket` settings and `per_message_deflate` (off by
/// default, as `ws`) shape the connection, and its `handle_protocols` picks the
/// subprotocol (by default the client's first) unless [`WebSocketUpgrade::protocols`]
/// is set.
pub struct WebSocketUpgrade {
    handshake: Handshake,
    on_upgrade: OnUpgrade,
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
    /// the client's offers that is in this list, or none when no offer is.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.protocols = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// The subprotocols the client offered, in its order.
    pub fn requested_protocols(&self) -> &[String] {
        self.handshake.protocols()
    }

    /// The request (method, URI, version and headers).
    pub fn request(&self) -> &Request<()> {
        self.handshake.request()
    }

    /// Answers the request: the 101 response, after which `callback` runs in a new task
    /// with the open WebSocket; or, when the configuration refuses the request, the
    /// rejection's response.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
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
        match self.handshake.accept(&config, self.on_upgrade) {
            Ok((response, upgrade)) => {
                tokio::spawn(async move {
                    // The client may go away before the upgrade completes: nothing to run.
                    if let Ok(ws) = upgrade.await {
                        callback(ws).await;
                    }
                });
                response.map(Body::new)
            }
            Err(error) => WebSocketUpgradeRejection(error).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = parts.uri.clone();
        *head.version_mut() = parts.version;
        *head.headers_mut() = parts.headers.clone();
        let handshake = Handshake::validate(head).map_err(WebSocketUpgradeRejection)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(WebSocketUpgradeRejection(UpgradeError::NotUpgradable))?;
        Ok(WebSocketUpgrade {
            handshake,
            on_upgrade,
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

/// Why [`WebSocketUpgrade`] refused a request; as a response, its status (405, 400, 404
/// or 426) with a one-line plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSocketUpgradeRejection(UpgradeError);

impl WebSocketUpgradeRejection {
    /// The problem.
    pub fn error(&self) -> &UpgradeError {
        &self.0
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        self.0.response().map(Body::new)
    }
}

impl fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for WebSocketUpgradeRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
