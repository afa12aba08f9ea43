//! Errors of the tokio layer.

use std::fmt;
use std::io;

use bytes::Bytes;
use sockeye_proto::{ApiMisuse, CloseFrame, HandshakeError};

/// Any error of a WebSocket, its handshake or its server.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    Io(io::Error),
    /// TLS failed: the handshake (an untrusted certificate, a name the certificate does
    /// not hold, a refused client certificate, a peer that does not speak TLS), a record
    /// after it, or the TLS settings themselves. There in every build; without the
    /// `rustls` feature nothing makes it (a `wss://` URL is [`Error::Url`]).
    Tls(TlsError),
    /// The peer broke the protocol or a limit; the connection sent the close code
    /// [`sockeye_proto::Error::close_code`] and is closed. See `ws_code()`.
    Protocol(sockeye_proto::Error),
    /// The caller used the API wrongly (a send after close, a control payload over 125
    /// bytes, a close code that may not be sent ...): nothing was sent, and the
    /// connection is as it was. Never caused by the peer.
    Misuse(ApiMisuse),
    /// The opening handshake failed.
    Handshake(HandshakeError),
    /// The server answered the upgrade with something other than 101 (`ws`'s
    /// `unexpected-response`): its status, headers and up to 64 KiB of body.
    UnexpectedResponse(Box<http::Response<Bytes>>),
    /// The URL is not a WebSocket URL this client can connect to.
    Url(String),
    /// Following redirects failed: more than `max_redirects` (`ws`'s "Maximum redirects
    /// exceeded").
    Redirect(String),
    /// The HTTP proxy refused the `CONNECT` tunnel or did not answer it.
    Proxy(String),
    /// The connection is closed; nothing more can be sent or received.
    Closed(CloseInfo),
    /// The send queue is over its high-water mark (`try_send` under `WhenFull::Wait` or
    /// `WhenFull::Close`).
    QueueFull,
    /// The heartbeat gave the peer up: nothing arrived within its timeout after a ping,
    /// and the transport was closed.
    HeartbeatTimeout,
}

/// Why TLS failed ([`Error::Tls`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused: in the handshake, on a record after it, or in building a
    /// configuration (a key that does not match its certificate). Only with the `rustls`
    /// feature (the enum is `non_exhaustive`, so matches compile either way).
    #[cfg(feature = "rustls")]
    Rustls(rustls::Error),
    /// The TLS settings cannot be used: PEM that does not parse or holds no certificate
    /// or key, or a client certificate without its key.
    InvalidConfig(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "rustls")]
            TlsError::Rustls(e) => fmt::Display::fmt(e, f),
            TlsError::InvalidConfig(why) => write!(f, "invalid TLS settings: {why}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "rustls")]
            TlsError::Rustls(e) => Some(e),
            TlsError::InvalidConfig(_) => None,
        }
    }
}

/// How a connection ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close frame received from the peer, if any (1006 when the transport ended
    /// without one).
    pub received: Option<CloseFrame>,
    /// Whether this end sent a close frame.
    pub sent: bool,
}

impl Error {
    /// The `ws` error code (`WS_ERR_*`) of a protocol or limit violation.
    pub fn ws_code(&self) -> Option<&'static str> {
        self.peer_violation()
            .and_then(sockeye_proto::Error::ws_code)
    }

    /// The close code this end sent because of this error; `None` for errors that sent
    /// none, such as [`Error::Misuse`].
    pub fn close_code(&self) -> Option<sockeye_proto::CloseCode> {
        self.peer_violation()
            .and_then(sockeye_proto::Error::close_code)
    }

    /// The protocol or limit violation behind this error, which alone has a `ws` code and
    /// a close code sent for it. An exhaustive match: a new variant must say whether it
    /// is one.
    fn peer_violation(&self) -> Option<&sockeye_proto::Error> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::Io(_)
            | Error::Tls(_)
            | Error::Misuse(_)
            | Error::Handshake(_)
            | Error::UnexpectedResponse(_)
            | Error::Url(_)
            | Error::Redirect(_)
            | Error::Proxy(_)
            | Error::Closed(_)
            | Error::QueueFull
            | Error::HeartbeatTimeout => None,
        }
    }

    /// The HTTP status of a failed handshake: the server's answer on a client, the status
    /// sent on a server.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::UnexpectedResponse(r) => Some(r.status().as_u16()),
            Error::Handshake(e) => Some(e.status()),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Tls(e) => write!(f, "TLS error: {e}"),
            Error::Protocol(e) => write!(f, "{e}"),
            Error::Misuse(e) => write!(f, "{e}"),
            Error::Handshake(e) => write!(f, "handshake failed: {e}"),
            Error::UnexpectedResponse(r) => {
                let status = r.status();
                write!(
                    f,
                    "unexpected server response: {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
            }
            Error::Url(why) => write!(f, "invalid URL: {why}"),
            Error::Redirect(why) => write!(f, "redirect failed: {why}"),
            Error::Proxy(why) => write!(f, "proxy failed: {why}"),
            Error::QueueFull => f.write_str("the send queue is full"),
            Error::HeartbeatTimeout => f.write_str("no answer to the heartbeat ping: peer gone"),
            Error::Closed(info) => match &info.received {
                Some(frame) => write!(f, "connection closed ({} {})", frame.code.0, frame.reason),
                None => f.write_str("connection closed"),
            },
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Tls(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Misuse(e) => Some(e),
            Error::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

/// For the byte-stream adapter ([`crate::ByteStream`]) only: I/O errors come back as they
/// were, anything else is wrapped with the [`Error`] as its source.
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(io) => io,
            other => io::Error::other(other),
        }
    }
}

/// An I/O error, or the TLS error it carries: tokio-rustls reports rustls's refusals as
/// I/O errors whose inner error is the [`rustls::Error`].
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        #[cfg(feature = "rustls")]
        return rustls_or_io(e);
        #[cfg(not(feature = "rustls"))]
        return Error::Io(e);
    }
}

/// [`Error::Tls`] for the `rustls::Error` inside `e`, else [`Error::Io`].
#[cfg(feature = "rustls")]
fn rustls_or_io(e: io::Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return Error::Io(e);
    }
    let kind = e.kind();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(tls)) => Error::Tls(TlsError::Rustls(*tls)),
        // Not reached: the inner error was checked to be a rustls::Error.
        Some(Err(other)) => Error::Io(io::Error::new(kind, other)),
        None => Error::Io(kind.into()),
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::Tls(e)
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}

impl From<sockeye_proto::Error> for Error {
    fn from(e: sockeye_proto::Error) -> Self {
        match e {
            sockeye_proto::Error::Handshake(h) => Error::Handshake(h),
            sockeye_proto::Error::Misuse(m) => Error::Misuse(m),
            other => Error::Protocol(other),
        }
    }
}
