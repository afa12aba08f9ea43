//! The server side of the opening handshake (RFC 6455 §4.2).
//!
//! [`ServerHandshake`] reads the request head within a deadline and hands it to the
//! server's policy ([`super::policy`]), which decides between the 101 and a refusal.
//! Underneath: [`parse_request`] reads the HTTP head, [`Upgrade::validate`] checks it is
//! a valid WebSocket upgrade, [`Upgrade::accept`] writes a 101 response and [`reject`] an
//! error response.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};

use super::policy::{Decision, Refusal, ServerPolicy};
use super::{
    accept_key, check_version, header_has_token, parse_offers, push_headers, to_header_map,
    HeadLimits,
};
use crate::deflate::{self, DeflateConfig, DeflateParams};
use crate::error::HandshakeError;

/// Parses an HTTP/1.1 request head from the start of `buf`.
///
/// Returns the request and the length of its head, or `Ok(None)` if more bytes are
/// needed. Bytes after the head (a client that sent frames early) stay in `buf` for the
/// connection.
///
/// # Errors
/// [`HandshakeError::HeadersTooLarge`] once the head passes `limits` (also while it is
/// incomplete, so a slow endless request is cut off), and
/// [`HandshakeError::MalformedHttp`] for anything else that is not HTTP/1.1.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(Request<()>, usize)>, HandshakeError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(HandshakeError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge),
        Err(e) => return Err(HandshakeError::MalformedHttp(e.to_string())),
    };
    if len > limits.max_head_bytes {
        return Err(HandshakeError::HeadersTooLarge);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::MalformedHttp("expected HTTP/1.1".into()));
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HandshakeError::MalformedHttp("invalid method".into()))?;
    let uri: http::Uri = req
        .path
        .unwrap_or_default()
        .parse()
        .map_err(|_| HandshakeError::MalformedHttp("invalid request target".into()))?;
    let header_map = to_header_map(req.headers)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    *request.headers_mut() = header_map;
    Ok(Some((request, len)))
}

/// A request that passed validation: what the 101 response needs.
#[derive(Clone, Debug)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value for the client's key; `None` over HTTP/2, which
    /// has neither key nor accept (RFC 8441 §5).
    pub accept: Option<String>,
    /// The subprotocols the client offered, in its order.
    pub protocols: Vec<String>,
    /// The client's `Sec-WebSocket-Extensions` values, for negotiation.
    pub extensions: Vec<String>,
}

impl Upgrade {
    /// Checks that `request` is a WebSocket upgrade: an HTTP/1.1 upgrade (RFC 6455
    /// §4.2.1), or an HTTP/2 extended CONNECT ([`super::http2::validate_request`],
    /// RFC 8441).
    ///
    /// # Errors
    /// The [`HandshakeError`] naming the first problem; [`HandshakeError::status`] is the
    /// HTTP status to answer with.
    pub fn validate(request: &Request<()>) -> Result<Upgrade, HandshakeError> {
        if request.version() == http::Version::HTTP_2 {
            return super::http2::validate_request(request);
        }
        if request.method() != Method::GET {
            return Err(HandshakeError::MethodNotAllowed);
        }
        let headers = request.headers();
        if !headers.contains_key(http::header::HOST) {
            return Err(HandshakeError::InvalidHeader("Host"));
        }
        if !header_has_token(headers, "upgrade", "websocket") {
            return Err(HandshakeError::InvalidHeader("Upgrade"));
        }
        if !header_has_token(headers, "connection", "upgrade") {
            return Err(HandshakeError::InvalidHeader("Connection"));
        }
        check_version(headers)?;
        let key = headers
            .get(http::header::SEC_WEBSOCKET_KEY)
            .map(|v| v.as_bytes())
            .filter(|k| is_valid_key(k))
            .ok_or(HandshakeError::InvalidHeader("Sec-WebSocket-Key"))?;
        let (protocols, extensions) = parse_offers(headers)?;
        Ok(Upgrade {
            accept: Some(accept_key(key)),
            protocols,
            extensions,
        })
    }

    /// Negotiates permessage-deflate with the client's offers: the agreed parameters, or
    /// `None` when declined.
    ///
    /// # Errors
    /// `InvalidHeader("Sec-WebSocket-Extensions")` for a malformed offer (answered 400).
    pub fn negotiate_deflate(
        &self,
        config: &DeflateConfig,
    ) -> Result<Option<DeflateParams>, HandshakeError> {
        deflate::server_accept(config, self.extensions.iter().map(String::as_str))
    }

    /// The HTTP/1.1 101 response, with the chosen subprotocol and extra headers (an
    /// HTTP/2 upgrade is answered by its HTTP library, see
    /// [`super::policy::Accept::headers`]).
    pub fn accept(&self, protocol: Option<&str>, extra: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.extend_from_slice(self.accept.as_deref().unwrap_or_default().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(protocol) = protocol {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(protocol.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        push_headers(&mut out, extra);
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// The key must be base64 of 16 bytes (RFC 6455 §4.2.1 item 5): 22 characters and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// An error response with a plain-text body naming the problem, and `Connection: close`.
pub fn reject(status: StatusCode, reason: Option<&str>, extra: &HeaderMap, body: &str) -> Vec<u8> {
    let reason = reason.or(status.canonical_reason()).unwrap_or("Error");
    let mut out = Vec::with_capacity(128 + body.len());
    write_plain(&mut out, status, reason, extra, &format!("{body}\n"));
    out
}

/// The error response for a failed handshake: the status of `error`, its message as the
/// body, and `Sec-WebSocket-Version: 13` for a version mismatch (RFC 6455 §4.4). The same
/// as [`ServerPolicy::refuse`] without an `on_client_error` hook.
pub fn reject_error(error: &HandshakeError) -> Vec<u8> {
    Refusal::from(error.clone()).to_bytes()
}

/// Writes a `Connection: close` plain-text response with `body` as it is.
pub(super) fn write_plain(
    out: &mut impl BufMut,
    status: StatusCode,
    reason: &str,
    extra: &HeaderMap,
    body: &str,
) {
    out.put_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    out.put_slice(b"Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n");
    out.put_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    push_headers(out, extra);
    out.put_slice(b"\r\n");
    out.put_slice(body.as_bytes());
}

/// The first state of a server handshake: reading the request head (RFC 6455 §4.2.1)
/// within a deadline and [`HeadLimits`], without I/O. The front end reads into a buffer,
/// calls [`ServerHandshake::handle_read`] after each read until it yields a
/// [`Decision`], and calls [`ServerHandshake::handle_timeout`] once
/// [`ServerHandshake::poll_timeout`] has passed (408, `ws`'s `handshakeTimeout`), so a
/// silent or slow client (slowloris) is answered and dropped.
#[derive(Clone, Copy, Debug)]
pub struct ServerHandshake {
    deadline: Option<Instant>,
    limits: HeadLimits,
}

impl ServerHandshake {
    /// Starts reading at `now`; the head must be complete within `timeout`.
    pub fn new(now: Instant, timeout: Duration, limits: HeadLimits) -> ServerHandshake {
        ServerHandshake {
            deadline: now.checked_add(timeout),
            limits,
        }
    }

    /// When the request head is due (`None`: a timeout too large to represent, so never).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Looks for a complete request head at the start of `buf`: `None` while more bytes
    /// are needed; once it is there, removes it from `buf` (what follows stays: frames
    /// the client sent early) and returns `policy`'s decision on it. A head that is not
    /// HTTP/1.1 or exceeds the limits (also while incomplete) is refused at once.
    pub fn handle_read<'a>(
        &self,
        buf: &mut BytesMut,
        policy: ServerPolicy<'a>,
    ) -> Option<Decision<'a>> {
        match parse_request(buf, &self.limits) {
            Ok(Some((request, len))) => {
                buf.advance(len);
                Some(policy.decide(request))
            }
            Ok(None) => None,
            Err(error) => Some(Decision::Refuse(policy.refuse(error, None))),
        }
    }

    /// The 408 refusal once `now` is at or past the deadline; `None` before.
    pub fn handle_timeout(&self, now: Instant, policy: &ServerPolicy<'_>) -> Option<Refusal> {
        let due = self.deadline.is_some_and(|deadline| now >= deadline);
        due.then(|| policy.refuse(HandshakeError::Timeout, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    // RFC 6455 §1.2, §4.2.
    #[test]
    fn rfc_example_request() {
        let (req, len) = parse_request(RFC_REQUEST, &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, RFC_REQUEST.len());
        assert_eq!(req.uri().path(), "/chat");
        let up = Upgrade::validate(&req).unwrap();
        assert_eq!(up.accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(up.protocols, ["chat", "superchat"]);
        let resp = String::from_utf8(up.accept(Some("chat"), &HeaderMap::new())).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for cut in 0..RFC_REQUEST.len() {
            assert!(parse_request(&RFC_REQUEST[..cut], &HeadLimits::default())
                .unwrap()
                .is_none());
        }
    }

    fn validate(text: &str) -> Result<Upgrade, HandshakeError> {
        let (req, _) = parse_request(text.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap();
        Upgrade::validate(&req)
    }

    #[test]
    fn invalid_upgrades_name_the_problem() {
        let good = std::str::from_utf8(RFC_REQUEST).unwrap();
        let cases = [
            (good.replace("GET", "POST"), 405),
            (good.replace("Upgrade: websocket\r\n", ""), 400),
            (
                good.replace("Connection: Upgrade", "Connection: keep-alive"),
                400,
            ),
            (good.replace("Version: 13", "Version: 12"), 426),
            (good.replace("Sec-WebSocket-Version: 13\r\n", ""), 400),
            (good.replace("dGhlIHNhbXBsZSBub25jZQ==", "short=="), 400),
            (good.replace("Host: server.example.com\r\n", ""), 400),
            (good.replace("chat, superchat", "chat, chat"), 400),
        ];
        for (text, status) in cases {
            assert_eq!(validate(&text).unwrap_err().status(), status, "{text}");
        }
    }

    #[test]
    fn head_limits() {
        let limits = HeadLimits {
            max_headers: 4,
            max_head_bytes: 100,
        };
        assert_eq!(
            parse_request(RFC_REQUEST, &limits).unwrap_err(),
            HandshakeError::HeadersTooLarge
        );
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 200]].concat();
        assert_eq!(
            parse_request(&endless, &HeadLimits::default().with_bytes(100)).unwrap_err(),
            HandshakeError::HeadersTooLarge
        );
        assert!(matches!(
            parse_request(b"GARBAGE\x01\r\n\r\n", &HeadLimits::default()),
            Err(HandshakeError::MalformedHttp(_))
        ));
    }

    #[test]
    fn version_rejection_names_the_version() {
        let text = String::from_utf8(reject_error(&HandshakeError::UnsupportedVersion)).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("sec-websocket-version: 13\r\n"));
        assert!(text.ends_with("unsupported Sec-WebSocket-Version: expected 13\n"));
    }

    impl HeadLimits {
        fn with_bytes(mut self, n: usize) -> Self {
            self.max_head_bytes = n;
            self
        }
    }
}
