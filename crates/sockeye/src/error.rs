//! Errors of the tokio layer.

use std::fmt;
use std::io;

use bytes::Bytes;
use sockeye_proto::{ApiMisuse, CloseFrame, HandshakeError};

/// Any error of a WebSocket, its handshake or its server.
///
/// `Display` names the cause in words, including the message of the error a variant wraps
/// (an I/O error's "Connection refused"); `source()` then gives only what that message
/// does not already say (the wrapped error's own source, if any), so a report that walks
/// the chain, such as anyhow's `{:#}`, names each cause once. The wording is not a
/// contract; [`Error::ws_code`], [`Error::close_code`] and the variants are.
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
    /// The HTTP proxy could not be reached, refused the `CONNECT` tunnel or did not
    /// answer it.
    Proxy(String),
    /// WebSocket over HTTP/2 (RFC 8441) failed: the server does not speak HTTP/2 or does
    /// not announce `SETTINGS_ENABLE_CONNECT_PROTOCOL` when HTTP/2 is required, or the
    /// HTTP/2 connection or stream failed (the h2 error in words).
    Http2(String),
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
            TlsError::Rustls(e) => describe_rustls(e, f),
            TlsError::InvalidConfig(why) => write!(f, "invalid TLS settings: {why}"),
        }
    }
}

/// The `Display` of a [`TlsError`] says what rustls refused in plain words, so
/// `source()` has nothing to add: the rustls error itself stays in
/// [`TlsError::Rustls`].
impl std::error::Error for TlsError {}

/// rustls's refusal in words a user can act on. rustls prints some causes as `Debug`
/// (`InvalidContentType`, `Other(OtherError(CaUsedAsEndEntity))`); the common ones are
/// described here, the rest fall back to rustls's own `Display`.
#[cfg(feature = "rustls")]
fn describe_rustls(e: &rustls::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use rustls::{AlertDescription, CertificateError};
    match e {
        // The first bytes were not a TLS record: a plain HTTP/WebSocket server answered
        // the ClientHello (or a plain client spoke to a TLS server).
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => f.write_str(
            "the peer does not speak TLS (a wss:// or https:// URL for a plain ws:// port?)",
        ),
        rustls::Error::InvalidCertificate(cert) => {
            f.write_str("the certificate was refused: ")?;
            match cert {
                CertificateError::UnknownIssuer => f.write_str(
                    "it is not signed by a trusted certificate authority (self-signed, \
                     or signed by a CA that is not among the trusted roots)",
                ),
                CertificateError::BadSignature => f.write_str("its signature is not valid"),
                CertificateError::Revoked => f.write_str("it is revoked"),
                CertificateError::Other(other) => match webpki_cause(other) {
                    Some(words) => f.write_str(words),
                    None => write!(f, "{}", other.0),
                },
                // rustls's own words name the names, dates and usages involved.
                other => write!(f, "{other}"),
            }
        }
        rustls::Error::AlertReceived(alert) => {
            f.write_str("the peer ended the TLS handshake: ")?;
            match alert {
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown => {
                    f.write_str("it does not accept this end's certificate")
                }
                AlertDescription::CertificateRequired => {
                    f.write_str("it requires a client certificate")
                }
                AlertDescription::HandshakeFailure => {
                    f.write_str("no TLS version or cipher suite in common")
                }
                AlertDescription::ProtocolVersion => f.write_str("no TLS version in common"),
                other => write!(f, "alert {other:?}"),
            }
        }
        rustls::Error::NoCertificatesPresented => {
            f.write_str("the peer sent no certificate, and one is required")
        }
        other => write!(f, "{other}"),
    }
}

/// The certificate-path errors of rustls's verifier (webpki), which print as `Debug`.
#[cfg(feature = "rustls")]
fn webpki_cause(other: &rustls::OtherError) -> Option<&'static str> {
    let cause = other.0.downcast_ref::<webpki::Error>()?;
    Some(match cause {
        webpki::Error::CaUsedAsEndEntity => {
            "it is a CA certificate presented as the peer's own (serve a certificate the CA \
             signed, not the CA itself)"
        }
        webpki::Error::EndEntityUsedAsCa => "a server certificate is used as a CA in the chain",
        webpki::Error::CertNotValidForName(_) => "it is not valid for this host name",
        webpki::Error::CertExpired { .. } => "it has expired",
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet",
        webpki::Error::UnknownIssuer => "it is not signed by a trusted certificate authority",
        _ => return None,
    })
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
            | Error::Http2(_)
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
            Error::Http2(why) => write!(f, "HTTP/2 failed: {why}"),
            Error::QueueFull => f.write_str("the send queue is full"),
            Error::HeartbeatTimeout => f.write_str("no answer to the heartbeat ping: peer gone"),
            Error::Closed(info) => match &info.received {
                Some(frame) => write!(f, "connection closed ({} {})", frame.code.0, frame.reason),
                None => f.write_str("connection closed"),
            },
        }
    }
}

/// `Display` already prints the wrapped error's message; `source()` continues the chain
/// below it (see [`Error`]).
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => e.source(),
            Error::Tls(e) => e.source(),
            Error::Protocol(e) => e.source(),
            Error::Misuse(e) => e.source(),
            Error::Handshake(e) => e.source(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and every source below it, as a report that walks the chain prints
    /// them (anyhow's `{:#}`).
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }

    #[test]
    fn a_wrapped_error_is_named_once_in_the_chain() {
        let refused = Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let text = chain(&refused);
        assert_eq!(text.matches("refused").count(), 1, "{text}");

        // An I/O error that wraps another: each message once, in order.
        let inner = Error::Url("ws://x/#f: the URL contains a fragment identifier".into());
        let wrapped = Error::Io(io::Error::other(inner));
        let text = chain(&wrapped);
        assert_eq!(text.matches("fragment").count(), 1, "{text}");
        assert!(text.starts_with("I/O error: invalid URL"), "{text}");
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn tls_refusals_are_described_in_words() {
        let plain = Error::Tls(TlsError::Rustls(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        assert!(chain(&plain).contains("does not speak TLS"), "{plain}");
        let ca = rustls::OtherError(std::sync::Arc::new(webpki::Error::CaUsedAsEndEntity));
        let ca = Error::Tls(TlsError::Rustls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(ca),
        )));
        let text = chain(&ca);
        assert!(text.contains("a CA certificate"), "{text}");
        assert!(!text.contains("CaUsedAsEndEntity"), "{text}");
    }
}
