//! Sockeye's integration tests: everything here runs over real loopback sockets.
//! One binary, one module per area.

mod support;

mod api;
mod client;
mod deflate;
mod frames;
mod handshake;
mod interop;
mod tls;
mod ws_errors;
