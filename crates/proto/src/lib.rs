//! Sockeye's sans-I/O WebSocket protocol core (RFC 6455).
//!
//! This crate does no I/O: no sockets, no async, no `std::io`. Bytes go in, messages and
//! bytes to send come out, and time is passed in, so every behaviour (the close handshake
//! and its timeout included) is deterministic and testable without a network.
//!
//! ```text
//!            transport bytes                     your application
//!   read() ─────────────────► Connection ───────► Message (Text, Binary, Ping, Pong, Close)
//!   write() ◄───────────────── transmit ◄──────── send / ping / pong / close
//!                               ▲      │
//!              handle_timeout ──┘      └── poll_timeout, should_close_transport, is_finished
//! ```
//!
//! Modules: [`frame`] (header codec), [`mask`], [`utf8`] (incremental validation),
//! [`close`] (codes and frames), [`message`], [`connection`] (the state machine),
//! [`transmit`] (the queue of bytes to write), [`prepared`] (a frame encoded once for
//! many connections),
//! [`handshake`] (the HTTP/1.1 upgrade and its HTTP/2 form, RFC 8441, in both roles),
//! [`limits`] and [`error`].
//!
//! ```
//! use std::time::Instant;
//! use sockeye_proto::{Config, Connection, Message, Role};
//!
//! let mut client = Connection::new(Role::Client, Config::default());
//! let mut server = Connection::new(Role::Server, Config::default());
//! client.send_text("hello").unwrap();
//! let mut wire = client.transmit().take_all();
//! let message = server.read(&mut wire, Instant::now()).unwrap();
//! assert_eq!(message.unwrap().as_text(), Some("hello"));
//! ```
//!
//! # Features
//! - `deflate` (default): permessage-deflate (RFC 7692) with `flate2`, in [`deflate`].
//!   Without it, compression is never negotiated: a client offers nothing, a server
//!   declines every offer, and an RSV1 frame is a protocol error, as on any connection that
//!   did not negotiate the extension. [`DeflateConfig`] and the negotiation functions stay,
//!   so code that configures compression compiles either way; [`DeflateParams`] and
//!   [`Deflate`] then have no values.
//!
//! # Stability
//! Error codes (`ws_code`, `close_code`) are a contract; `Display` texts are not.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod manual;
pub mod mask;
pub mod message;
pub mod prepared;
pub mod transmit;
pub mod utf8;

pub use bytes;
pub use http;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Connection, DataKind, Role, State};
pub use deflate::{Deflate, DeflateConfig, DeflateParams, SharedDeflate};
pub use error::{ApiMisuse, Error, HandshakeError, InflateError, LimitError, ProtocolError};
pub use frame::{FrameHeader, OpCode};
pub use limits::{Config, Heartbeat, MaskGenerator, MaskSource, SendQueue, WhenFull};
pub use message::{Fragment, Message, Utf8Bytes};
pub use prepared::PreparedFrame;
pub use transmit::Transmit;
