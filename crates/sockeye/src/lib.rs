//! Sockeye: a fast, complete WebSocket (RFC 6455) client and server for tokio, with the
//! feature set of Node's `ws`.
//!
//! - [`connect`] / [`connect_with`]: a `ws://` client; [`connect_maybe_tls`] /
//!   [`connect_maybe_tls_with`] also speak `wss://` (rustls, see [`tls`]) and `ws+unix:`.
//! - [`WebSocketServer`]: a server that listens, upgrades and tracks its clients;
//!   [`accept()`] upgrades any transport; [`WebSocketServer::bind_tls`] serves TLS.
//! - [`WebSocket`]: a `Stream` of [`Message`]s and a `Sink` of them, with `send*` methods
//!   on `&self` and [`WebSocket::split`] for a reader task and writer tasks.
//!
//! - [`Hub`]: pub/sub topics; a message published once to every subscribed connection,
//!   encoded (and compressed) once, with a byte budget per subscriber ([`hub`]);
//!   [`Broker`] carries it to other processes ([`broker`]).
//!
//! The protocol itself lives in [`sockeye_proto`], which does no I/O; this crate only
//! moves bytes between a transport and it.
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::Error> {
//! use futures_util::StreamExt;
//! let (mut ws, _response) = sockeye::connect("ws://127.0.0.1:8080/echo").await?;
//! ws.send_text("hello").await?;
//! if let Some(Ok(message)) = ws.next().await {
//!     println!("{message:?}");
//! }
//! ws.close(None).await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//! `deflate` and `rustls` are on by default; `http2` and `redis` are off.
//! - `deflate`: permessage-deflate (RFC 7692), with `flate2` (`sockeye-proto`'s feature of
//!   the same name). Without it, compression is never negotiated: a client offers nothing,
//!   a server declines every offer, and the connection runs uncompressed. The
//!   `per_message_deflate` settings stay, so code that sets them compiles either way.
//! - `rustls`: TLS with `rustls`, `tokio-rustls` and `webpki-roots`: `wss://` URLs,
//!   [`ClientConfig::tls`] and [`ClientTlsConfig`], [`WebSocketServer::bind_tls`],
//!   [`tls::server_config_from_pem`] and the other TLS helpers of [`tls`], and the
//!   re-export of [`rustls`]. Without it, none of these are compiled, and connecting to a
//!   `wss://` URL fails with [`Error::Url`] ("wss:// needs TLS support, which is not
//!   compiled in"). [`Error::Tls`] and the `Tls` variants of [`MaybeTlsStream`] and
//!   [`ServerStream`] stay, so matches compile either way; those variants then hold
//!   [`tls::NoTls`], which has no values. A server behind another TLS terminator, or
//!   [`accept_tls`] on a TLS stream of your own, needs no `rustls`.
//!
//! - `http2`: WebSockets over HTTP/2 (RFC 8441), with the `h2` crate: the client's
//!   `ClientConfig::http2` setting (never / if the server offers it / required) and
//!   `http2::Http2Connection`, which multiplexes WebSockets on one connection; servers
//!   answer extended CONNECT through the same handshake decision as HTTP/1.1 upgrades
//!   (`http2::serve_connection`; `WebSocketServer::bind_tls` offers `h2` and `http/1.1`
//!   in ALPN on one port). The WebSocket over a stream is the same [`WebSocket`] type.
//!   Without it, HTTP/1.1 only.
//!
//! - `redis`: the Redis brokers of `broker::redis` (PUB/SUB and Streams), with the
//!   `redis` crate on tokio, so that a [`Hub`] publish reaches the subscribers of every
//!   process. Without it, [`broker`] has the [`Broker`] trait and [`LocalBroker`].
//!
//! # Cancel safety
//! Receiving is cancel safe. A `send*` future queues its frame whole before it first
//! waits, so dropping it never tears a frame; the frame is written by the next operation.
//!
//! # Stability
//! The `ws_code()` and close codes of errors are a contract; `Display` texts are not.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// The docs link the TLS items, which a build without `rustls` does not have.
#![cfg_attr(not(feature = "rustls"), allow(rustdoc::broken_intra_doc_links))]

mod accept;
pub mod broker;
mod client;
mod error;
#[cfg(feature = "http2")]
pub mod http2;
pub mod hub;
pub mod metrics;
mod server;
mod stream;
pub mod tls;
mod websocket;

pub use accept::{
    accept, accept_tls, upgrade, verify_client, verify_client_async, HandleProtocols, HeadersHook,
    OnClientError, Rejection, ServerConfig, ShouldHandle, VerifyClient, VerifyInfo,
};
pub use broker::{Broker, BrokerError, BrokerEvent, LocalBroker, Published, StreamPosition};
pub use client::{
    connect, connect_maybe_tls, connect_maybe_tls_with, connect_with,
    handshake as client_handshake, AddressFamily, ClientConfig, FinishRequest, RedirectHook,
    Target,
};
pub use error::{CloseInfo, Error, TlsError};
pub use hub::{Hub, HubConfig, HubError, OverBudget, PublishReport};
pub use server::{Clients, ShutdownReport, WebSocketServer};
pub use stream::ByteStream;
#[cfg(feature = "rustls")]
pub use tls::ClientTlsConfig;
pub use tls::{MaybeTlsStream, ServerStream};
pub use websocket::{
    ReadyState, SendOptions, Sending, TrySend, WebSocket, WebSocketReader, WebSocketWriter,
};

#[cfg(feature = "rustls")]
pub use rustls;
pub use sockeye_proto as proto;
pub use sockeye_proto::handshake::HeadLimits;
pub use sockeye_proto::{
    CloseCode, CloseFrame, Config, DataKind, DeflateConfig, DeflateParams, Fragment, Heartbeat,
    MaskSource, Message, Role, Utf8Bytes,
};
