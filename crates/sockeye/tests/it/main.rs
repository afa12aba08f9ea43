//! Sockeye's integration tests: everything here runs over real loopback sockets.
//! One binary, one module per area.

mod support;

mod api;
mod client;
#[cfg(feature = "deflate")]
mod deflate;
mod faults;
mod features;
mod frames;
mod handshake;
mod hub;
mod interop;
mod observability;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "rustls")]
mod tls;
mod ws_errors;
