//! The client: [`connect`] and [`ClientConfig`].

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use sockeye_proto::handshake::client::ClientRequest;
use sockeye_proto::handshake::HeadLimits;
use sockeye_proto::{Config, DeflateConfig, HandshakeError, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;
use crate::tls::{ClientTlsConfig, MaybeTlsStream};
use crate::websocket::{Negotiated, WebSocket};

/// The most body bytes kept from a non-101 answer.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How a client connects (`ws`'s client options).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Settings of the connection (`max_payload`, `skip_utf8_validation`,
    /// `generate_mask` ...).
    pub websocket: Config,
    /// Subprotocols to offer (`ws`'s `protocols`).
    pub protocols: Vec<String>,
    /// The `Origin` header (`ws`'s `origin`).
    pub origin: Option<String>,
    /// Extra request headers (`ws`'s `headers`).
    pub headers: HeaderMap,
    /// `Sec-WebSocket-Version`: 13 (default) or 8 (`ws`'s `protocolVersion`).
    pub protocol_version: u8,
    /// The longest the TCP connect and handshake may take (`ws`'s `handshakeTimeout`);
    /// `None` (the default, as `ws`) waits as long as the OS does.
    pub handshake_timeout: Option<Duration>,
    /// Limits on the response head.
    pub head_limits: HeadLimits,
    /// permessage-deflate to offer (`ws`'s `perMessageDeflate`): on by default, as in
    /// `ws`; `None` offers no compression. If the server declines, the connection works
    /// uncompressed.
    pub per_message_deflate: Option<DeflateConfig>,
    /// TLS for `wss://` URLs: trusted roots, a client certificate, or the dangerous
    /// opt-out of verification. Unused for `ws://`.
    pub tls: ClientTlsConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            websocket: Config::default(),
            protocols: Vec::new(),
            origin: None,
            headers: HeaderMap::new(),
            protocol_version: 13,
            handshake_timeout: None,
            head_limits: HeadLimits::default(),
            per_message_deflate: Some(DeflateConfig::default()),
            tls: ClientTlsConfig::default(),
        }
    }
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// Whether the URL asks for TLS (`wss://`, `https://`).
    pub tls: bool,
    /// The host to connect to, and for TLS the server name sent (SNI) and checked
    /// against the certificate.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// The `Host` header.
    pub host_header: String,
    /// Path and query.
    pub path: String,
    /// `Authorization: Basic ...` from the URL's user info.
    pub authorization: Option<String>,
}

impl Target {
    /// Parses a WebSocket URL.
    ///
    /// # Errors
    /// [`Error::Url`] for a URL that is not `ws://` or `wss://` (or `http://`, `https://`)
    /// with a host, or that has a fragment.
    pub fn parse(url: &str) -> Result<Target, Error> {
        let parsed = url::Url::parse(url).map_err(|e| Error::Url(format!("{url}: {e}")))?;
        let (tls, default_port) = match parsed.scheme() {
            "ws" | "http" => (false, 80),
            "wss" | "https" => (true, 443),
            other => {
                return Err(Error::Url(format!(
                    "{url}: the scheme must be ws or wss, not {other}"
                )))
            }
        };
        if parsed.fragment().is_some() {
            return Err(Error::Url(format!(
                "{url}: the URL contains a fragment identifier"
            )));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| Error::Url(format!("{url}: no host")))?;
        let port = parsed.port().unwrap_or(default_port);
        let host_header = match parsed.port() {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        let mut path = parsed.path().to_owned();
        if path.is_empty() {
            path.push('/');
        }
        if let Some(query) = parsed.query() {
            path.push('?');
            path.push_str(query);
        }
        let authorization = if !parsed.username().is_empty() || parsed.password().is_some() {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(parsed.username());
            let pass = decode(parsed.password().unwrap_or(""));
            Some(format!("Basic {}", BASE64.encode(format!("{user}:{pass}"))))
        } else {
            None
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Target {
            tls,
            host,
            port,
            host_header,
            path,
            authorization,
        })
    }
}

/// Connects to a `ws://` URL with the default settings.
///
/// Returns the open WebSocket and the server's 101 response (its headers, such as
/// `set-cookie`, stay readable). For `wss://` use [`connect_maybe_tls`], which takes
/// either scheme.
///
/// # Errors
/// [`Error::Url`] (also for a `wss://` URL), [`Error::Io`], [`Error::Handshake`] and, for
/// an answer other than 101, [`Error::UnexpectedResponse`] with its status, headers and
/// body.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect(url: &str) -> Result<(WebSocket<TcpStream>, Response<()>), Error> {
    connect_with(url, ClientConfig::default()).await
}

/// Connects to a `ws://` URL with the given settings. See [`connect`].
///
/// # Errors
/// As [`connect`]; [`HandshakeError::Timeout`] after `handshake_timeout`.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect_with(
    url: &str,
    config: ClientConfig,
) -> Result<(WebSocket<TcpStream>, Response<()>), Error> {
    let target = Target::parse(url)?;
    if target.tls {
        return Err(Error::Url(format!(
            "{url}: connect() speaks only ws://; use connect_maybe_tls() for wss://"
        )));
    }
    with_timeout(config.handshake_timeout, async {
        let stream = tcp(&target).await?;
        handshake(stream, &target, url, &config).await
    })
    .await
}

/// Connects to a `ws://` or `wss://` URL with the default settings (for `wss://`: the
/// `webpki-roots` CAs, no client certificate).
///
/// # Errors
/// As [`connect`]; a TLS failure, such as an untrusted certificate, is [`Error::Io`] whose
/// inner error is the [`rustls::Error`] (see [`crate::tls::rustls_error`]).
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect_maybe_tls(
    url: &str,
) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    connect_maybe_tls_with(url, ClientConfig::default()).await
}

/// Connects to a `ws://` or `wss://` URL with the given settings (TLS from
/// [`ClientConfig::tls`]). The TCP connect and the TLS and WebSocket handshakes together
/// are bounded by `handshake_timeout`. See [`connect_maybe_tls`].
///
/// # Errors
/// As [`connect_maybe_tls`]; [`HandshakeError::Timeout`] after `handshake_timeout`.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect_maybe_tls_with(
    url: &str,
    config: ClientConfig,
) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    let target = Target::parse(url)?;
    let tls = if target.tls {
        let name = crate::tls::server_name(&target.host)?;
        Some((config.tls.to_rustls()?, name))
    } else {
        None
    };
    with_timeout(config.handshake_timeout, async {
        let stream = tcp(&target).await?;
        let stream = match tls {
            Some((tls, name)) => {
                let connector = tokio_rustls::TlsConnector::from(tls);
                MaybeTlsStream::Tls(Box::new(connector.connect(name, stream).await?))
            }
            None => MaybeTlsStream::Plain(stream),
        };
        handshake(stream, &target, url, &config).await
    })
    .await
}

async fn tcp(target: &Target) -> Result<TcpStream, Error> {
    let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn with_timeout<T>(
    limit: Option<Duration>,
    attempt: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or(Err(Error::Handshake(HandshakeError::Timeout))),
        None => attempt.await,
    }
}

/// Performs the client side of the opening handshake on an already connected transport.
///
/// # Errors
/// As [`connect`].
pub async fn handshake<S>(
    mut io: S,
    target: &Target,
    url: &str,
    config: &ClientConfig,
) -> Result<(WebSocket<S>, Response<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut headers = config.headers.clone();
    if let Some(auth) = &target.authorization {
        if !headers.contains_key(http::header::AUTHORIZATION) {
            let value =
                HeaderValue::from_str(auth).map_err(|_| Error::Url("invalid user info".into()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
    }
    let request = ClientRequest {
        host: target.host_header.clone(),
        path: target.path.clone(),
        protocols: config.protocols.clone(),
        origin: config.origin.clone(),
        version: config.protocol_version,
        headers,
        deflate: config.per_message_deflate.clone(),
    };
    let (bytes, expect) = request.encode();
    io.write_all(&bytes).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let (response, len) = loop {
        if let Some(parsed) = expect.parse(&buf, &config.head_limits)? {
            break parsed;
        }
        buf.reserve(1024);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection during the opening handshake",
            )));
        }
    };
    let _ = buf.split_to(len);
    match expect.validate(response.clone()) {
        Ok(accepted) => {
            let negotiated = Negotiated {
                protocol: accepted.protocol,
                url: Some(url.to_owned()),
                deflate: accepted.deflate.zip(config.per_message_deflate.clone()),
            };
            let ws =
                WebSocket::with_info(io, Role::Client, config.websocket.clone(), buf, negotiated);
            Ok((ws, accepted.response))
        }
        Err(HandshakeError::UnexpectedStatus(_)) => {
            let body = read_body(&mut io, buf, response.headers()).await;
            let (parts, ()) = response.into_parts();
            Err(Error::UnexpectedResponse(Box::new(Response::from_parts(
                parts, body,
            ))))
        }
        Err(e) => Err(Error::Handshake(e)),
    }
}

/// Reads an error response's body: `Content-Length` bytes or until EOF, at most
/// [`MAX_ERROR_BODY`] and 2 s.
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    mut buf: BytesMut,
    headers: &HeaderMap,
) -> Bytes {
    let wanted = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_ERROR_BODY)
        .min(MAX_ERROR_BODY);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while buf.len() < wanted {
            buf.reserve(wanted - buf.len());
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    buf.truncate(wanted);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let t = Target::parse("ws://example.com").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.host_header.as_str(),
                t.path.as_str()
            ),
            ("example.com", 80, "example.com", "/")
        );
        let t = Target::parse("ws://127.0.0.1:9001/runCase?case=1&agent=x").unwrap();
        assert_eq!(
            (t.port, t.host_header.as_str(), t.path.as_str()),
            (9001, "127.0.0.1:9001", "/runCase?case=1&agent=x")
        );
        let t = Target::parse("ws://[::1]:80/").unwrap();
        assert_eq!((t.host.as_str(), t.host_header.as_str()), ("::1", "[::1]"));
        let t = Target::parse("ws://user:p%40ss@h/").unwrap();
        assert_eq!(t.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        assert!(!t.tls);
        let t = Target::parse("wss://example.com/a?b").unwrap();
        assert_eq!(
            (t.tls, t.port, t.host_header.as_str(), t.path.as_str()),
            (true, 443, "example.com", "/a?b")
        );
        let t = Target::parse("wss://localhost:8443/x").unwrap();
        assert_eq!(
            (t.tls, t.port, t.host.as_str(), t.host_header.as_str()),
            (true, 8443, "localhost", "localhost:8443")
        );
        let t = Target::parse("wss://localhost:443/").unwrap();
        assert_eq!(t.host_header, "localhost");
        assert!(Target::parse("ftp://h/").is_err());
        assert!(Target::parse("ws://h/#frag").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
