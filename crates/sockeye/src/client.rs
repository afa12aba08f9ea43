//! The client: [`connect`] and [`ClientConfig`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use sockeye_proto::handshake::client::{Accepted, ClientRequest};
use sockeye_proto::handshake::HeadLimits;
use sockeye_proto::{Config, DeflateConfig, HandshakeError, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::Error;
#[cfg(feature = "rustls")]
use crate::tls::ClientTlsConfig;
use crate::tls::{Connector, MaybeTlsStream};
use crate::websocket::{Negotiated, WebSocket};

/// The most body bytes kept from a non-101 answer.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// [`ClientConfig::redirect`]: called with the URL a redirect leads to and the extra
/// headers the next request will carry.
pub type RedirectHook = Arc<dyn Fn(&str, &mut HeaderMap) + Send + Sync>;

/// [`ClientConfig::finish_request`]: called with the URL and the extra headers of each
/// request right before it is written.
pub type FinishRequest = Arc<dyn Fn(&str, &mut HeaderMap) + Send + Sync>;

/// How a client connects (`ws`'s client options).
#[derive(Clone)]
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
    /// uncompressed. Without the `deflate` feature nothing is offered.
    pub per_message_deflate: Option<DeflateConfig>,
    /// TLS for `wss://` URLs: trusted roots, a client certificate, or the dangerous
    /// opt-out of verification. Unused for `ws://`. Only with the `rustls` feature.
    #[cfg(feature = "rustls")]
    pub tls: ClientTlsConfig,
    /// Follow `3xx` answers that carry a `Location` (`ws`'s `followRedirects`; default
    /// false: a redirect is [`Error::UnexpectedResponse`]). Relative and absolute
    /// locations are followed; `http`/`https` map to `ws`/`wss`. On a redirect to another
    /// host (`host:port`, or socket path), or from `wss` to `ws`, the `Authorization`
    /// (including basic auth from the URL) and `Cookie` headers are dropped before the
    /// [`ClientConfig::redirect`] hook runs.
    pub follow_redirects: bool,
    /// The most redirects followed (`ws`'s `maxRedirects`, default 10); one more is
    /// [`Error::Redirect`] ("Maximum redirects exceeded").
    pub max_redirects: usize,
    /// Called before each redirected request with the new URL and the extra request
    /// headers it will carry (`ws`'s `redirect` event): it may inspect, drop or put back
    /// headers (e.g. `Authorization` for a host it trusts).
    pub redirect: Option<RedirectHook>,
    /// Called right before each request is written, with its URL and extra headers
    /// (`ws`'s `finishRequest`): the last chance to add or change headers.
    pub finish_request: Option<FinishRequest>,
    /// Bind the TCP socket to this local address before connecting (`localAddress`);
    /// only addresses of the same family are tried.
    pub local_address: Option<IpAddr>,
    /// Use only IPv4 or only IPv6 addresses of the host (`ws`'s `family: 4 | 6`).
    pub family: Option<AddressFamily>,
    /// Tunnel through an HTTP proxy: `http://[user:pass@]host:port`. The client sends
    /// `CONNECT host:port` (with `Proxy-Authorization: Basic` for the user info), expects
    /// a 2xx answer, then speaks TLS (for `wss://`) and WebSocket through the tunnel.
    /// Unused for `ws+unix:` URLs.
    pub proxy: Option<String>,
    /// WebSocket over HTTP/2 (RFC 8441): when [`crate::connect_maybe_tls_with`] speaks
    /// it (`mode`, default never) and the connection's windows. Several WebSockets share
    /// one connection through [`crate::http2::Http2Connection`]. Only with the `http2`
    /// feature.
    #[cfg(feature = "http2")]
    pub http2: crate::http2::Http2Config,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("ClientConfig");
        f.field("websocket", &self.websocket)
            .field("protocols", &self.protocols)
            .field("origin", &self.origin)
            .field("headers", &self.headers)
            .field("protocol_version", &self.protocol_version)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("head_limits", &self.head_limits)
            .field("per_message_deflate", &self.per_message_deflate);
        #[cfg(feature = "rustls")]
        f.field("tls", &self.tls);
        f.field("follow_redirects", &self.follow_redirects)
            .field("max_redirects", &self.max_redirects)
            .field("redirect", &self.redirect.is_some())
            .field("finish_request", &self.finish_request.is_some())
            .field("local_address", &self.local_address)
            .field("family", &self.family)
            .field("proxy", &self.proxy.as_ref().map(|_| "..."));
        #[cfg(feature = "http2")]
        f.field("http2", &self.http2);
        f.finish()
    }
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
            #[cfg(feature = "rustls")]
            tls: ClientTlsConfig::default(),
            follow_redirects: false,
            max_redirects: 10,
            redirect: None,
            finish_request: None,
            local_address: None,
            family: None,
            proxy: None,
            #[cfg(feature = "http2")]
            http2: crate::http2::Http2Config::default(),
        }
    }
}

/// A parsed `ws://`, `wss://` or `ws+unix:` URL.
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
    /// For `ws+unix:/path/to.sock:/request/path`: the Unix socket path (`host` is then
    /// `localhost` and `port` 0).
    pub unix_socket: Option<PathBuf>,
}

impl Target {
    /// Parses a WebSocket URL.
    ///
    /// `ws+unix:/path/to.sock:/request/path` (`ws`'s syntax) connects to a Unix socket;
    /// the request path defaults to `/`.
    ///
    /// # Errors
    /// [`Error::Url`] for a URL that is not `ws://` or `wss://` (or `http://`, `https://`)
    /// with a host, nor `ws+unix:` with a socket path, or that has a fragment.
    pub fn parse(url: &str) -> Result<Target, Error> {
        // `localhost:8080` parses as the scheme `localhost`, `127.0.0.1:8080` not at all:
        // name what is missing instead of either.
        if !url.contains("://") && !url.starts_with("ws+unix:") {
            return Err(Error::Url(format!(
                "{url}: no scheme: a WebSocket URL starts with ws:// or wss://, \
                 as in ws://{url}"
            )));
        }
        let parsed = url::Url::parse(url).map_err(|e| Error::Url(format!("{url}: {e}")))?;
        if parsed.fragment().is_some() {
            return Err(Error::Url(format!(
                "{url}: the URL contains a fragment identifier"
            )));
        }
        let (tls, default_port) = match parsed.scheme() {
            "ws" | "http" => (false, 80),
            "wss" | "https" => (true, 443),
            "ws+unix" => return Target::parse_unix(url, &parsed),
            other => {
                return Err(Error::Url(format!(
                    "{url}: the scheme must be ws, wss, http, https or ws+unix, not {other}"
                )))
            }
        };
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
            unix_socket: None,
        })
    }

    fn parse_unix(url: &str, parsed: &url::Url) -> Result<Target, Error> {
        let (socket, path) = match parsed.path().split_once(':') {
            Some((socket, path)) => (socket, path),
            None => (parsed.path(), ""),
        };
        let socket = percent_encoding::percent_decode_str(socket)
            .decode_utf8()
            .map_err(|_| Error::Url(format!("{url}: the socket path is not UTF-8")))?;
        if socket.is_empty() {
            return Err(Error::Url(format!("{url}: the URL's pathname is empty")));
        }
        let mut path = if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        if let Some(query) = parsed.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Target {
            tls: false,
            host: "localhost".to_owned(),
            port: 0,
            host_header: "localhost".to_owned(),
            path,
            authorization: None,
            unix_socket: Some(PathBuf::from(socket.into_owned())),
        })
    }

    /// What a redirect must stay on to keep credentials: the socket path, or host:port.
    pub(crate) fn origin_key(&self) -> String {
        match &self.unix_socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("{}:{}", self.host.to_ascii_lowercase(), self.port),
        }
    }
}

/// Connects to a `ws://` URL with the default settings.
///
/// Returns the open WebSocket and the server's 101 response (its headers, such as
/// `set-cookie`, stay readable). For `wss://` and `ws+unix:` use [`connect_maybe_tls`],
/// which takes any scheme.
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

/// Connects to a `ws://` URL with the given settings (redirects are followed only to
/// `ws://` URLs). See [`connect`].
///
/// # Errors
/// As [`connect`]; [`HandshakeError::Timeout`] after `handshake_timeout`;
/// [`Error::Redirect`] after too many redirects; [`Error::Proxy`] if the proxy refuses.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect_with(
    url: &str,
    config: ClientConfig,
) -> Result<(WebSocket<TcpStream>, Response<()>), Error> {
    connect_loop::<TcpStream>(url, &config).await
}

/// Connects to a `ws://` or `wss://` URL with the default settings (for `wss://`: the
/// `webpki-roots` CAs, no client certificate). `ws+unix:/path/to.sock:/request/path`
/// connects over a Unix socket.
///
/// # Errors
/// As [`connect`], but a `wss://` URL is an [`Error::Url`] only without the `rustls`
/// feature (which says so); a TLS failure, such as an untrusted certificate, is
/// [`Error::Tls`] with the [`rustls::Error`] (see [`crate::tls::rustls_error`]).
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect_maybe_tls(
    url: &str,
) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    connect_maybe_tls_with(url, ClientConfig::default()).await
}

/// Connects to a `ws://`, `wss://` or `ws+unix:` URL with the given settings (TLS from
/// [`ClientConfig::tls`]). For each request (the first and each redirect), the TCP
/// connect, the proxy tunnel and the TLS and WebSocket handshakes together are bounded by
/// `handshake_timeout`. See [`connect_maybe_tls`].
///
/// # Errors
/// As [`connect_maybe_tls`]; [`HandshakeError::Timeout`] after `handshake_timeout`;
/// [`Error::Redirect`] after too many redirects; [`Error::Proxy`] if the proxy refuses.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt.
pub async fn connect_maybe_tls_with(
    url: &str,
    config: ClientConfig,
) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    connect_loop::<MaybeTlsStream>(url, &config).await
}

/// A transport the client can open to a target.
trait Transport: AsyncRead + AsyncWrite + Unpin + Sized {
    async fn open(target: &Target, url: &str, config: &ClientConfig) -> Result<Self, Error>;

    /// Opens the transport and sends the request with these extra headers.
    async fn request(
        target: &Target,
        url: &str,
        config: &ClientConfig,
        headers: HeaderMap,
        follow_redirects: bool,
    ) -> Result<Outcome<Self>, Error> {
        let stream = Self::open(target, url, config).await?;
        exchange(stream, target, url, config, headers, follow_redirects).await
    }
}

impl Transport for TcpStream {
    async fn open(target: &Target, url: &str, config: &ClientConfig) -> Result<Self, Error> {
        if target.tls || target.unix_socket.is_some() {
            return Err(Error::Url(format!(
                "{url}: connect() speaks only ws://; use connect_maybe_tls() for wss:// and ws+unix:"
            )));
        }
        tcp(target, config).await
    }
}

impl Transport for MaybeTlsStream {
    async fn open(target: &Target, url: &str, config: &ClientConfig) -> Result<Self, Error> {
        open_transport(target, url, config, &[]).await
    }

    /// Over HTTP/2 as `config.http2.mode` says.
    #[cfg(feature = "http2")]
    async fn request(
        target: &Target,
        url: &str,
        config: &ClientConfig,
        headers: HeaderMap,
        follow_redirects: bool,
    ) -> Result<Outcome<Self>, Error> {
        if config.http2.mode == crate::http2::Http2Mode::Never {
            let stream = Self::open(target, url, config).await?;
            return exchange(stream, target, url, config, headers, follow_redirects).await;
        }
        let h2 =
            crate::http2::client_exchange(target, url, config, headers.clone(), follow_redirects);
        match h2.await? {
            Ok(outcome) => Ok(outcome),
            Err(stream) => exchange(stream, target, url, config, headers, follow_redirects).await,
        }
    }
}

/// The transport to `target`: a Unix socket, TCP (through the proxy, if any) and TLS for
/// `wss://`, offering `alpn` (none: no ALPN).
pub(crate) async fn open_transport(
    target: &Target,
    url: &str,
    config: &ClientConfig,
    alpn: &[&[u8]],
) -> Result<MaybeTlsStream, Error> {
    if let Some(path) = &target.unix_socket {
        #[cfg(unix)]
        return Ok(MaybeTlsStream::Unix(
            tokio::net::UnixStream::connect(path).await?,
        ));
        #[cfg(not(unix))]
        return Err(Error::Url(format!(
            "{}: ws+unix: URLs need Unix sockets",
            path.display()
        )));
    }
    // Checked before connecting: without the `rustls` feature this is Error::Url.
    let tls = if target.tls {
        Some(Connector::new(target, url, config)?.with_alpn(alpn))
    } else {
        None
    };
    let stream = tcp(target, config).await?;
    match tls {
        Some(connector) => connector.connect(stream).await,
        None => Ok(MaybeTlsStream::Plain(stream)),
    }
}

/// What one request ended with.
pub(crate) enum Outcome<S> {
    Open(WebSocket<S>, Response<()>),
    Redirect(String),
}

async fn connect_loop<S: Transport>(
    url: &str,
    config: &ClientConfig,
) -> Result<(WebSocket<S>, Response<()>), Error> {
    let first = Target::parse(url)?;
    let origin = first.origin_key();
    let origin_tls = first.tls;
    let mut headers = config.headers.clone();
    add_url_auth(&mut headers, &first)?;
    let mut target = first;
    let mut url = url.to_owned();
    let mut redirects = 0;
    loop {
        let mut request_headers = headers.clone();
        if let Some(hook) = &config.finish_request {
            hook(&url, &mut request_headers);
        }
        let outcome = with_timeout(
            config.handshake_timeout,
            S::request(
                &target,
                &url,
                config,
                request_headers,
                config.follow_redirects,
            ),
        )
        .await?;
        let location = match outcome {
            Outcome::Open(ws, response) => return Ok((ws, response)),
            Outcome::Redirect(location) => location,
        };
        redirects += 1;
        if redirects > config.max_redirects {
            return Err(Error::Redirect(format!(
                "Maximum redirects exceeded ({} followed, next: {location})",
                config.max_redirects
            )));
        }
        let next = resolve_location(&url, &location)?;
        let next_target = Target::parse(&next)?;
        let same_origin = next_target.origin_key() == origin;
        if !same_origin || (origin_tls && !next_target.tls) {
            headers.remove(http::header::AUTHORIZATION);
            headers.remove(http::header::COOKIE);
        }
        if same_origin {
            add_url_auth(&mut headers, &next_target)?;
        }
        if let Some(hook) = &config.redirect {
            hook(&next, &mut headers);
        }
        url = next;
        target = next_target;
    }
}

/// The absolute URL a `Location` points to, `http(s)` mapped to `ws(s)`.
fn resolve_location(base: &str, location: &str) -> Result<String, Error> {
    let invalid = || Error::Url(format!("Invalid URL: {location}"));
    let base = url::Url::parse(base).map_err(|_| invalid())?;
    let mut next = base.join(location).map_err(|_| invalid())?;
    let scheme = match next.scheme() {
        "http" => Some("ws"),
        "https" => Some("wss"),
        _ => None,
    };
    if let Some(scheme) = scheme {
        // Both are special schemes, so the change is allowed.
        next.set_scheme(scheme).map_err(|()| invalid())?;
    }
    next.set_fragment(None);
    Ok(next.into())
}

/// `Authorization: Basic` from the URL's user info, unless the headers carry one.
fn add_url_auth(headers: &mut HeaderMap, target: &Target) -> Result<(), Error> {
    if let Some(auth) = &target.authorization {
        if !headers.contains_key(http::header::AUTHORIZATION) {
            let value =
                HeaderValue::from_str(auth).map_err(|_| Error::Url("invalid user info".into()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
    }
    Ok(())
}

/// A TCP connection to the target, or to the proxy and through it to the target.
async fn tcp(target: &Target, config: &ClientConfig) -> Result<TcpStream, Error> {
    let stream = match &config.proxy {
        Some(proxy) => {
            let proxy = Proxy::parse(proxy)?;
            // An I/O error on the way to the proxy or in its CONNECT exchange is the
            // proxy's, not the target's: said so, with the proxy's address.
            let on_proxy = |e: Error| match e {
                Error::Io(io) => Error::Proxy(format!(
                    "cannot reach the proxy {}:{}: {io}",
                    proxy.host, proxy.port
                )),
                other => other,
            };
            let mut stream =
                tcp_connect(&proxy.host, proxy.port, config.local_address, config.family)
                    .await
                    .map_err(on_proxy)?;
            proxy.tunnel(&mut stream, target).await.map_err(on_proxy)?;
            stream
        }
        None => {
            tcp_connect(
                &target.host,
                target.port,
                config.local_address,
                config.family,
            )
            .await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to `host:port`, from `local` if given (each resolved address of its family
/// in turn).
/// An IP address family (`ws`'s `family` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressFamily {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

async fn tcp_connect(
    host: &str,
    port: u16,
    local: Option<IpAddr>,
    family: Option<AddressFamily>,
) -> Result<TcpStream, Error> {
    if local.is_none() && family.is_none() {
        return Ok(TcpStream::connect((host, port)).await?);
    }
    let wanted_v4 = match (family, local) {
        (Some(AddressFamily::V4), _) => Some(true),
        (Some(AddressFamily::V6), _) => Some(false),
        (None, Some(local)) => Some(local.is_ipv4()),
        (None, None) => None,
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        if wanted_v4.is_some_and(|v4| addr.is_ipv4() != v4) {
            continue;
        }
        let attempt = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(local) = local {
                socket.bind(SocketAddr::new(local, 0))?;
            }
            socket.connect(addr).await
        };
        match attempt.await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!(
                "{host}: no address of the requested family ({family:?}, local address {local:?})"
            ),
        )
    })))
}

/// An HTTP proxy for `CONNECT`.
struct Proxy {
    host: String,
    port: u16,
    authorization: Option<String>,
}

impl Proxy {
    fn parse(proxy: &str) -> Result<Proxy, Error> {
        let parsed =
            url::Url::parse(proxy).map_err(|e| Error::Url(format!("proxy {proxy}: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(Error::Url(format!(
                "proxy {proxy}: the scheme must be http, not {}",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| Error::Url(format!("proxy {proxy}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
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
        Ok(Proxy {
            host,
            port,
            authorization,
        })
    }

    /// Sends `CONNECT` and reads the answer head (byte by byte: nothing after it is
    /// consumed).
    async fn tunnel(&self, stream: &mut TcpStream, target: &Target) -> Result<(), Error> {
        let authority = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(128);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= 16 * 1024 {
                return Err(Error::Proxy("the proxy's answer head is too long".into()));
            }
            let mut byte = [0u8];
            if stream.read(&mut byte).await? == 0 {
                return Err(Error::Proxy(
                    "the proxy closed the connection before answering CONNECT".into(),
                ));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let status_line = head.lines().next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let status = parts.next().and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200..=299) if version.starts_with("HTTP/1.") => Ok(()),
            _ => Err(Error::Proxy(format!(
                "the proxy refused CONNECT {authority}: {}",
                status_line.trim()
            ))),
        }
    }
}

pub(crate) async fn with_timeout<T>(
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

/// Performs the client side of the opening handshake on an already connected transport
/// (no redirects: a `3xx` is [`Error::UnexpectedResponse`]). The `finish_request` hook
/// runs.
///
/// # Errors
/// As [`connect`].
pub async fn handshake<S>(
    io: S,
    target: &Target,
    url: &str,
    config: &ClientConfig,
) -> Result<(WebSocket<S>, Response<()>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let headers = request_headers(target, url, config)?;
    match exchange(io, target, url, config, headers, false).await? {
        Outcome::Open(ws, response) => Ok((ws, response)),
        Outcome::Redirect(_) => unreachable!("redirects are not followed here"),
    }
}

/// The extra headers of a request without redirects: the configured ones, basic auth
/// from the URL, then the `finish_request` hook.
pub(crate) fn request_headers(
    target: &Target,
    url: &str,
    config: &ClientConfig,
) -> Result<HeaderMap, Error> {
    let mut headers = config.headers.clone();
    add_url_auth(&mut headers, target)?;
    if let Some(hook) = &config.finish_request {
        hook(url, &mut headers);
    }
    Ok(headers)
}

/// Sends the request with these extra headers and reads the answer.
async fn exchange<S>(
    mut io: S,
    target: &Target,
    url: &str,
    config: &ClientConfig,
    headers: HeaderMap,
    follow_redirects: bool,
) -> Result<Outcome<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    if let Some(location) = redirect(&response, follow_redirects) {
        return Ok(Outcome::Redirect(location));
    }
    match expect.validate(response.clone()) {
        Ok(accepted) => Ok(opened(io, buf, url, config, accepted)),
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

/// Where a redirect response sends the client, when redirects are followed.
pub(crate) fn redirect(response: &Response<()>, follow_redirects: bool) -> Option<String> {
    if !follow_redirects || !response.status().is_redirection() {
        return None;
    }
    let location = response.headers().get(http::header::LOCATION)?;
    Some(String::from_utf8_lossy(location.as_bytes()).into_owned())
}

/// The client WebSocket on `io` once the server's answer to the handshake is accepted;
/// `read_buf` holds what was read past the answer.
pub(crate) fn opened<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    read_buf: BytesMut,
    url: &str,
    config: &ClientConfig,
    accepted: Accepted,
) -> Outcome<S> {
    let negotiated = Negotiated {
        protocol: accepted.protocol,
        url: Some(url.to_owned()),
        deflate: accepted.deflate.zip(config.per_message_deflate.clone()),
        span: None,
    };
    let ws = WebSocket::with_info(
        io,
        Role::Client,
        Arc::new(config.websocket.clone()),
        read_buf,
        negotiated,
    );
    Outcome::Open(ws, accepted.response)
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

    #[test]
    fn unix_urls() {
        let t = Target::parse("ws+unix:/tmp/s.sock:/chat?room=1").unwrap();
        assert_eq!(
            t.unix_socket.as_deref(),
            Some(std::path::Path::new("/tmp/s.sock"))
        );
        assert_eq!(
            (t.path.as_str(), t.host_header.as_str()),
            ("/chat?room=1", "localhost")
        );
        let t = Target::parse("ws+unix:/tmp/s.sock").unwrap();
        assert_eq!(t.path, "/");
        let t = Target::parse("ws+unix:///tmp/a%20b.sock:/x").unwrap();
        assert_eq!(
            t.unix_socket.as_deref(),
            Some(std::path::Path::new("/tmp/a b.sock"))
        );
        assert!(Target::parse("ws+unix:").is_err());
        assert_ne!(
            Target::parse("ws+unix:/a.sock").unwrap().origin_key(),
            Target::parse("ws+unix:/b.sock").unwrap().origin_key()
        );
    }

    #[test]
    fn redirect_locations() {
        let base = "ws://h:1/a/b?q";
        assert_eq!(resolve_location(base, "/x").unwrap(), "ws://h:1/x");
        assert_eq!(resolve_location(base, "c").unwrap(), "ws://h:1/a/c");
        assert_eq!(resolve_location(base, "http://o/p#f").unwrap(), "ws://o/p");
        assert_eq!(
            resolve_location(base, "https://o:8443/").unwrap(),
            "wss://o:8443/"
        );
        assert_eq!(resolve_location(base, "wss://o/").unwrap(), "wss://o/");
        assert!(resolve_location(base, "http://[bad").is_err());
        let key = |u: &str| Target::parse(u).unwrap().origin_key();
        assert_eq!(key("ws://H:80/"), key("http://h/x"));
        assert_ne!(key("ws://h:80/"), key("ws://h:81/"));
    }

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("http://u%3A:p@[::1]:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 3128));
        assert_eq!(p.authorization.as_deref(), Some("Basic dTo6cA=="));
        assert_eq!(Proxy::parse("http://proxy").unwrap().port, 80);
        assert!(Proxy::parse("https://proxy").is_err());
        assert!(Proxy::parse("proxy:80").is_err());
    }
}
