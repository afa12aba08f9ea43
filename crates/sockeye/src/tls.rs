//! TLS with rustls (the `ring` provider): `wss://` for the client, TLS for the server, and
//! the stream types that carry either plain TCP or TLS.
//!
//! TLS failures (an untrusted certificate, a refused client certificate, a peer that does
//! not speak TLS) are [`Error::Tls`] with the [`rustls::Error`] ([`TlsError::Rustls`];
//! [`rustls_error`] finds it). Settings that cannot be used, such as invalid PEM, are
//! [`TlsError::InvalidConfig`].
//!
//! # Without the `rustls` feature
//! Only the stream types are here: [`ClientTlsConfig`], [`server_config_from_pem`],
//! [`server_handshake`] and the other helpers are not compiled, nor is
//! [`WebSocketServer::bind_tls`](crate::WebSocketServer::bind_tls), and a `wss://` URL is
//! [`Error::Url`]. The `Tls` variants
//! of [`MaybeTlsStream`] and [`ServerStream`] stay, so matches on them compile either
//! way, but they hold [`NoTls`], which has no values: they never occur.

#[cfg(feature = "rustls")]
use std::fmt;
use std::io;
use std::pin::Pin;
#[cfg(feature = "rustls")]
use std::sync::Arc;
use std::task::{Context, Poll};

#[cfg(feature = "rustls")]
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
#[cfg(feature = "rustls")]
use rustls::crypto::CryptoProvider;
#[cfg(feature = "rustls")]
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "rustls")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
#[cfg(feature = "rustls")]
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::client::{ClientConfig, Target};
use crate::error::Error;
#[cfg(feature = "rustls")]
use crate::error::TlsError;

#[cfg(feature = "rustls")]
/// TLS settings of a client (`ws`'s `ca`, `cert`, `key` and `rejectUnauthorized` options).
///
/// By default the server's certificate is checked against the Mozilla roots of the
/// `webpki-roots` crate and no client certificate is sent.
#[derive(Clone, Default)]
pub struct ClientTlsConfig {
    /// Trust these CA certificates (PEM, one or more) instead of the default roots, as
    /// Node's `ca` option does.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain (PEM, leaf first), sent when the server asks; needs
    /// [`ClientTlsConfig::key_pem`].
    pub cert_pem: Option<Vec<u8>>,
    /// The private key of [`ClientTlsConfig::cert_pem`] (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Option<Vec<u8>>,
    /// Accept any server certificate, for any name, without checking it (`ws`'s
    /// `rejectUnauthorized: false`). The connection is encrypted but not authenticated:
    /// anyone on the path can read and change it. For tests only.
    pub dangerous_accept_any_certificate: bool,
    /// A complete rustls configuration, used as is instead of the fields above.
    pub rustls: Option<Arc<rustls::ClientConfig>>,
}

#[cfg(feature = "rustls")]
impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "..."))
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "..."))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field(
                "dangerous_accept_any_certificate",
                &self.dangerous_accept_any_certificate,
            )
            .field("rustls", &self.rustls.is_some())
            .finish()
    }
}

#[cfg(feature = "rustls")]
impl ClientTlsConfig {
    /// The rustls configuration these settings describe.
    ///
    /// # Errors
    /// [`Error::Tls`]: [`TlsError::InvalidConfig`] for PEM without a certificate or key,
    /// or a certificate without its key; [`TlsError::Rustls`] for a key that does not
    /// match.
    pub fn to_rustls(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        if let Some(config) = &self.rustls {
            return Ok(config.clone());
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_refused)?;
        let builder = if self.dangerous_accept_any_certificate {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        } else {
            let mut roots = RootCertStore::empty();
            match &self.ca_pem {
                Some(pem) => {
                    for cert in certificates(pem, "CA")? {
                        roots.add(cert).map_err(rustls_refused)?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&self.cert_pem, &self.key_pem) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert, "client")?, private_key(key)?)
                .map_err(rustls_refused)?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(invalid_config(
                    "a client certificate needs both cert_pem and key_pem",
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

#[cfg(feature = "rustls")]
/// A rustls server configuration from a certificate chain (PEM, leaf first) and its
/// private key (PEM), with no client authentication and ALPN `http/1.1`.
///
/// For client certificates, build the configuration with
/// [`rustls::ServerConfig::builder_with_provider`] and a
/// [`rustls::server::WebPkiClientVerifier`].
///
/// # Errors
/// [`Error::Tls`]: [`TlsError::InvalidConfig`] for PEM without a certificate or key,
/// [`TlsError::Rustls`] for a key that does not match the certificate.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_refused)?
        .with_no_client_auth()
        .with_single_cert(certificates(cert_pem, "server")?, private_key(key_pem)?)
        .map_err(rustls_refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(feature = "rustls")]
/// Performs the server side of a TLS handshake on an accepted connection, for servers
/// that read the request themselves before [`crate::upgrade`]. [`crate::WebSocketServer`]
/// does this itself when bound with TLS.
///
/// # Errors
/// [`Error::Tls`] when rustls refuses the client, [`Error::Io`] when the transport fails.
///
/// # Cancel safety
/// Not cancel safe: the connection is consumed.
pub async fn server_handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<ServerStream, Error> {
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await?;
    Ok(ServerStream::Tls(Box::new(tls)))
}

#[cfg(feature = "rustls")]
/// The crypto provider Sockeye builds its configurations with: rustls's `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(feature = "rustls")]
/// Parses every certificate of a PEM bundle.
///
/// # Errors
/// [`Error::Tls`] ([`TlsError::InvalidConfig`]) for invalid PEM or a bundle without a
/// certificate.
pub fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid_config(format!("{what} certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid_config(format!(
            "{what} certificate PEM: no CERTIFICATE section"
        )));
    }
    Ok(certs)
}

#[cfg(feature = "rustls")]
/// Parses the first private key of a PEM file.
///
/// # Errors
/// [`Error::Tls`] ([`TlsError::InvalidConfig`]) for invalid PEM or a file without a key.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid_config(format!("private key PEM: {e}")))
}

#[cfg(feature = "rustls")]
/// The rustls error behind a TLS failure, if `error` is one.
pub fn rustls_error(error: &Error) -> Option<&rustls::Error> {
    match error {
        Error::Tls(TlsError::Rustls(e)) => Some(e),
        _ => None,
    }
}

#[cfg(feature = "rustls")]
fn rustls_refused(e: rustls::Error) -> Error {
    Error::Tls(TlsError::Rustls(e))
}

#[cfg(feature = "rustls")]
fn invalid_config(why: impl Into<String>) -> Error {
    Error::Tls(TlsError::InvalidConfig(why.into()))
}

#[cfg(feature = "rustls")]
/// The SNI and certificate name for `host`: a DNS name or an IP address.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Url(format!("{host}: not a valid TLS server name: {e}")))
}

#[cfg(feature = "rustls")]
/// `dangerous_accept_any_certificate`: checks signatures (so the handshake is sound) but
/// not the certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

#[cfg(feature = "rustls")]
impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a client does to speak TLS on a connection to a `wss://` target: checked and
/// built before the TCP connection is made.
#[cfg(feature = "rustls")]
pub(crate) struct Connector(Arc<rustls::ClientConfig>, ServerName<'static>);

/// Without the `rustls` feature: no values.
#[cfg(not(feature = "rustls"))]
pub(crate) enum Connector {}

impl Connector {
    /// The TLS settings and server name for `target` (`url`'s).
    ///
    /// # Errors
    /// [`Error::Url`] for a host that is no TLS name, or, without the `rustls` feature,
    /// for any target; the errors of [`ClientTlsConfig::to_rustls`].
    #[cfg(feature = "rustls")]
    pub(crate) fn new(target: &Target, _url: &str, config: &ClientConfig) -> Result<Self, Error> {
        let name = server_name(&target.host)?;
        Ok(Connector(config.tls.to_rustls()?, name))
    }

    /// Without the `rustls` feature: [`Error::Url`], saying so.
    #[cfg(not(feature = "rustls"))]
    pub(crate) fn new(_target: &Target, url: &str, _config: &ClientConfig) -> Result<Self, Error> {
        Err(Error::Url(format!("{url}: {NO_TLS}")))
    }

    /// Offering these protocols in ALPN (none: the configured ones).
    #[cfg(feature = "rustls")]
    pub(crate) fn with_alpn(self, alpn: &[&[u8]]) -> Self {
        if alpn.is_empty() {
            return self;
        }
        let mut config = (*self.0).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Connector(Arc::new(config), self.1)
    }

    /// Without the `rustls` feature: no values.
    #[cfg(not(feature = "rustls"))]
    pub(crate) fn with_alpn(self, _alpn: &[&[u8]]) -> Self {
        match self {}
    }

    /// The TLS handshake over `stream`.
    pub(crate) async fn connect(self, stream: TcpStream) -> Result<MaybeTlsStream, Error> {
        #[cfg(feature = "rustls")]
        {
            let connector = tokio_rustls::TlsConnector::from(self.0);
            let tls = connector.connect(self.1, stream).await?;
            Ok(MaybeTlsStream::Tls(Box::new(tls)))
        }
        #[cfg(not(feature = "rustls"))]
        {
            let _ = stream;
            match self {}
        }
    }
}

/// What [`Error::Url`] says of a `wss://` URL without the `rustls` feature.
#[cfg(not(feature = "rustls"))]
pub(crate) const NO_TLS: &str =
    "wss:// needs TLS support, which is not compiled in (sockeye's `rustls` feature is off)";

/// The TLS stream of a `wss://` client connection: tokio-rustls's, or [`NoTls`] without
/// the `rustls` feature.
#[cfg(feature = "rustls")]
pub type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;
/// The TLS stream of a `wss://` client connection: tokio-rustls's, or [`NoTls`] without
/// the `rustls` feature.
#[cfg(not(feature = "rustls"))]
pub type ClientTlsStream = NoTls;

/// The TLS stream of a server connection: tokio-rustls's, or [`NoTls`] without the
/// `rustls` feature.
#[cfg(feature = "rustls")]
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;
/// The TLS stream of a server connection: tokio-rustls's, or [`NoTls`] without the
/// `rustls` feature.
#[cfg(not(feature = "rustls"))]
pub type ServerTlsStream = NoTls;

/// The TLS stream of a build without TLS support (the `rustls` feature off). It has no
/// values, so the `Tls` variants that hold it never occur; its methods cannot be called.
#[derive(Debug)]
pub enum NoTls {}

impl AsyncRead for NoTls {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match *self {}
    }
}

impl AsyncWrite for NoTls {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match *self {}
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }
}

/// What the server's accept loop names `tokio_rustls` without the `rustls` feature: an
/// acceptor with no values, so that loop compiles unchanged and never does TLS.
#[cfg(not(feature = "rustls"))]
pub(crate) mod no_rustls {
    use super::*;

    /// Has no values.
    #[derive(Clone)]
    pub(crate) enum TlsAcceptor {}

    impl TlsAcceptor {
        /// Cannot be called.
        pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<NoTls> {
            let _ = stream;
            match *self {}
        }
    }
}

/// A client transport: plain TCP (`ws://`), TLS over TCP (`wss://`) or a Unix socket
/// (`ws+unix:`).
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (never, without the `rustls` feature).
    Tls(Box<ClientTlsStream>),
    /// `ws+unix:`.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    /// A stream of an HTTP/2 connection (RFC 8441), over any of the others.
    #[cfg(feature = "http2")]
    Http2(Box<crate::http2::Http2Stream>),
}

/// A server transport: plain TCP, or TLS over TCP on a server bound with TLS, or a
/// stream of an HTTP/2 connection over either.
#[derive(Debug)]
pub enum ServerStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (never, without the `rustls` feature).
    Tls(Box<ServerTlsStream>),
    /// A stream of an HTTP/2 connection (RFC 8441): on a server bound with
    /// [`crate::WebSocketServer::bind_tls`], a connection that chose `h2` in ALPN or
    /// sent the HTTP/2 preface.
    #[cfg(feature = "http2")]
    Http2(Box<crate::http2::Http2Stream>),
}

impl MaybeTlsStream {
    /// The TCP stream underneath (`None` for a Unix socket and an HTTP/2 stream, which
    /// shares its connection).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTlsStream::Plain(s) => Some(s),
            #[cfg(feature = "rustls")]
            MaybeTlsStream::Tls(s) => Some(s.get_ref().0),
            #[cfg(not(feature = "rustls"))]
            MaybeTlsStream::Tls(s) => match **s {},
            #[cfg(unix)]
            MaybeTlsStream::Unix(_) => None,
            #[cfg(feature = "http2")]
            MaybeTlsStream::Http2(_) => None,
        }
    }

    /// The protocol the server chose in ALPN (TLS only).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            #[cfg(feature = "rustls")]
            MaybeTlsStream::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Whether this is a stream of an HTTP/2 connection (RFC 8441).
    pub fn is_http2(&self) -> bool {
        #[cfg(feature = "http2")]
        return matches!(self, MaybeTlsStream::Http2(_));
        #[cfg(not(feature = "http2"))]
        return false;
    }

    /// Whether this stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTlsStream::Tls(_))
    }

    /// Whether this stream is a Unix socket (`ws+unix:`).
    pub fn is_unix(&self) -> bool {
        #[cfg(unix)]
        return matches!(self, MaybeTlsStream::Unix(_));
        #[cfg(not(unix))]
        return false;
    }
}

impl ServerStream {
    /// The TCP stream underneath (`None` for an HTTP/2 stream, which shares its
    /// connection).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            ServerStream::Plain(s) => Some(s),
            #[cfg(feature = "rustls")]
            ServerStream::Tls(s) => Some(s.get_ref().0),
            #[cfg(not(feature = "rustls"))]
            ServerStream::Tls(s) => match **s {},
            #[cfg(feature = "http2")]
            ServerStream::Http2(_) => None,
        }
    }

    /// Whether this stream is TLS (an HTTP/2 stream: see [`ServerStream::is_http2`]).
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// Whether this is a stream of an HTTP/2 connection (RFC 8441).
    pub fn is_http2(&self) -> bool {
        #[cfg(feature = "http2")]
        return matches!(self, ServerStream::Http2(_));
        #[cfg(not(feature = "http2"))]
        return false;
    }

    /// The protocol the client and server agreed on in ALPN (TLS only).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            #[cfg(feature = "rustls")]
            ServerStream::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

macro_rules! impl_stream {
    ($ty:ident: $($(#[$attr:meta])* $variant:ident),*) => {
        impl AsyncRead for $ty {
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($(#[$attr])* $ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)*
                }
            }
        }

        impl AsyncWrite for $ty {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($(#[$attr])* $ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)*
                }
            }

            #[inline]
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($(#[$attr])* $ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)*
                }
            }

            #[inline]
            fn is_write_vectored(&self) -> bool {
                match self {
                    $($(#[$attr])* $ty::$variant(s) => s.is_write_vectored(),)*
                }
            }

            #[inline]
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($(#[$attr])* $ty::$variant(s) => Pin::new(s).poll_flush(cx),)*
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($(#[$attr])* $ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)*
                }
            }
        }
    };
}

impl_stream!(MaybeTlsStream: Plain, Tls, #[cfg(unix)] Unix, #[cfg(feature = "http2")] Http2);
impl_stream!(ServerStream: Plain, Tls, #[cfg(feature = "http2")] Http2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "rustls")]
    fn default_config_uses_webpki_roots() {
        let config = ClientTlsConfig::default().to_rustls().unwrap();
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    #[cfg(feature = "rustls")]
    fn bad_pem_is_an_invalid_config() {
        let mut config = ClientTlsConfig::default();
        config.ca_pem = Some(b"not pem".to_vec());
        match config.to_rustls() {
            Err(Error::Tls(TlsError::InvalidConfig(_))) => {}
            other => panic!("{other:?}"),
        }
        config.ca_pem = None;
        config.cert_pem = Some(Vec::new());
        assert!(config.to_rustls().is_err(), "a certificate without a key");
        assert!(server_config_from_pem(b"", b"").is_err());
    }

    #[test]
    fn streams_are_send_and_sync() {
        fn check<T: Send + Sync + Unpin>() {}
        check::<MaybeTlsStream>();
        check::<ServerStream>();
        check::<crate::WebSocket<MaybeTlsStream>>();
        check::<crate::WebSocketServer<ServerStream>>();
        check::<ClientTlsStream>();
        check::<ServerTlsStream>();
    }

    #[test]
    #[cfg(feature = "rustls")]
    fn server_names() {
        assert!(server_name("localhost").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("::1").is_ok());
    }
}
