//! The server's decision on an upgrade request: one policy that every front end applies,
//! whether it read the request itself (`sockeye::accept`, `sockeye::WebSocketServer`) or got it
//! from an HTTP server (`sockeye::upgrade`, `sockeye-hyper`, `sockeye-axum`).
//!
//! [`ServerPolicy::decide`] takes a parsed request and runs the checks in this order:
//!
//! 1. HTTP/1.1 (RFC 6455 §4.1), or HTTP/2 with RFC 8441's extended CONNECT (400
//!    otherwise);
//! 2. the path, when one is configured (404), before anything else about the request, so
//!    that a bad request to a path that is not served is a 404 everywhere;
//! 3. the upgrade itself (RFC 6455 §4.2.1): method (405), `Host`, `Upgrade`,
//!    `Connection`, `Sec-WebSocket-Version` (426 with `Sec-WebSocket-Version: 13`, §4.4),
//!    `Sec-WebSocket-Key`, `Sec-WebSocket-Protocol` (400); over HTTP/2 the method is
//!    CONNECT with `:protocol = websocket` and there is no `Upgrade`, `Connection` or key
//!    (RFC 8441 §5, [`super::http2`]);
//! 4. `should_handle` (400);
//! 5. the permessage-deflate offer, when deflate is enabled (RFC 7692 §5; 400 when
//!    malformed);
//! 6. `verify_client`, when configured: [`Decision::Verify`] hands the front end a
//!    [`VerifyInfo`] to run it with (it may be asynchronous) and takes the verdict back
//!    ([`Verify::verdict`]); a refusal carries its own status, reason and headers;
//! 7. the subprotocol: `handle_protocols`' choice, by default the client's first
//!    (RFC 6455 §4.2.2 step 5.5 / §11.3.4; 400 when the choice is not a token);
//! 8. the 101 response (RFC 6455 §4.2.2), or the 200 over HTTP/2 (RFC 8441 §5), to
//!    which `headers_hook` adds headers.
//!
//! A failed check becomes a [`Refusal`]: the error's status and a one-line plain-text
//! body, or what `on_client_error` returns instead. The outcome is `Result<Accept,
//! Refusal>`, and only this module makes either, so a front end cannot answer 101 without
//! going through every step.
//!
//! ```text
//! request --decide--> Decision::Refuse(Refusal) ----------------------> 4xx bytes/parts
//!                 \-> Decision::Verify(Verify) --verdict(..)--> Result<Accept, Refusal>
//!                 \-> Decision::Accept(Accept) ---------------------> 101 bytes/parts
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::BufMut;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Version};

use super::server::{write_plain, Upgrade};
use super::{is_token, push_headers};
use crate::deflate::{DeflateConfig, DeflateParams};
use crate::error::HandshakeError;

/// `ws`'s `shouldHandle`: whether to accept a request (false answers 400).
pub type ShouldHandle = Arc<dyn Fn(&Request<()>) -> bool + Send + Sync>;

/// `ws`'s `handleProtocols`: picks a subprotocol from the client's list (never empty
/// when called), or none.
pub type HandleProtocols = Arc<dyn Fn(&[String], &Request<()>) -> Option<String> + Send + Sync>;

/// `ws`'s `headers` event: sees the request and can add headers to the 101 response
/// before it is written. The status line and the handshake's own headers (`Upgrade`,
/// `Connection`, `Sec-WebSocket-Accept`, `Sec-WebSocket-Protocol`,
/// `Sec-WebSocket-Extensions`) are fixed: the hook's values for those are dropped, since
/// the connection runs with what was negotiated.
pub type HeadersHook = Arc<dyn Fn(&mut HeaderMap, &Request<()>) + Send + Sync>;

/// `ws`'s `wsClientError`: called when an upgrade request fails the handshake checks
/// (or does not arrive in time), with the error and the request if one was read.
/// `Some((status, headers, body))` is written instead of the default response (the
/// error's 4xx with a one-line body), as `Connection: close` plain text with a newline
/// appended to `body`; `None` keeps the default. A `verify_client` refusal is not a
/// failed check and does not come here (as in `ws`).
pub type OnClientError = Arc<
    dyn Fn(&HandshakeError, Option<&Request<()>>) -> Option<(StatusCode, HeaderMap, String)>
        + Send
        + Sync,
>;

/// What `verify_client` sees (`ws`'s `info`: `origin`, `req`, `secure`).
#[derive(Clone, Debug)]
pub struct VerifyInfo {
    /// The `Origin` header (or `Sec-WebSocket-Origin` from version-8 clients).
    pub origin: Option<String>,
    /// The upgrade request.
    pub request: Arc<Request<()>>,
    /// Whether the connection is TLS.
    pub secure: bool,
}

/// A refusal from `verify_client`: the status (default 401, as `ws`), an optional reason
/// phrase, and extra response headers such as `Retry-After`.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// The HTTP status.
    pub status: StatusCode,
    /// The reason phrase; the status's canonical one when `None`.
    pub reason: Option<String>,
    /// Extra headers of the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Default for Rejection {
    fn default() -> Self {
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            reason: None,
            headers: Vec::new(),
        }
    }
}

impl Rejection {
    /// A refusal with this status.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn status(status: u16) -> Rejection {
        Rejection {
            status: StatusCode::from_u16(status).expect("a valid status"),
            ..Default::default()
        }
    }

    /// With a reason phrase.
    pub fn reason(mut self, reason: impl Into<String>) -> Rejection {
        self.reason = Some(reason.into());
        self
    }

    /// With an extra header.
    ///
    /// # Panics
    /// If the name (lowercase, as HTTP/2 requires) or value is not a valid header.
    pub fn header(mut self, name: &'static str, value: &str) -> Rejection {
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.push((HeaderName::from_static(name), value));
        self
    }
}

/// The server's handshake policy, borrowed from a front end's configuration (in the
/// tokio library, `ServerConfig::policy`). Every field left at its default is a check
/// that does not run: `ServerPolicy::default()` accepts any valid upgrade with the
/// client's first subprotocol and no extension.
#[derive(Clone, Copy, Default)]
pub struct ServerPolicy<'a> {
    /// Serve only this path (`ws`'s `path`); others get 404.
    pub path: Option<&'a str>,
    /// `ws`'s `shouldHandle`.
    pub should_handle: Option<&'a ShouldHandle>,
    /// `ws`'s `handleProtocols`.
    pub handle_protocols: Option<&'a HandleProtocols>,
    /// permessage-deflate (RFC 7692); `Some` accepts the first acceptable offer.
    pub per_message_deflate: Option<&'a DeflateConfig>,
    /// Whether a `verify_client` step runs: [`ServerPolicy::decide`] then stops at
    /// [`Decision::Verify`] for its verdict.
    pub verify_client: bool,
    /// `ws`'s `headers` event.
    pub headers_hook: Option<&'a HeadersHook>,
    /// `ws`'s `wsClientError`.
    pub on_client_error: Option<&'a OnClientError>,
}

impl fmt::Debug for ServerPolicy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPolicy")
            .field("path", &self.path)
            .field("should_handle", &self.should_handle.is_some())
            .field("handle_protocols", &self.handle_protocols.is_some())
            .field("per_message_deflate", &self.per_message_deflate)
            .field("verify_client", &self.verify_client)
            .field("headers_hook", &self.headers_hook.is_some())
            .field("on_client_error", &self.on_client_error.is_some())
            .finish()
    }
}

impl<'a> ServerPolicy<'a> {
    /// Runs the checks on `request` up to `verify_client` (see the module docs for the
    /// order): a refusal, the verification step, or (with no `verify_client`) the 101.
    pub fn decide(self, request: Request<()>) -> Decision<'a> {
        let (upgrade, deflate) = match self.check(&request) {
            Ok(checked) => checked,
            Err(error) => return Decision::Refuse(self.refuse(error, Some(&request))),
        };
        let pending = Verify {
            policy: self,
            request: Arc::new(request),
            upgrade,
            deflate,
        };
        if self.verify_client {
            Decision::Verify(pending)
        } else {
            match pending.verdict(Ok(())) {
                Ok(accept) => Decision::Accept(accept),
                Err(refusal) => Decision::Refuse(refusal),
            }
        }
    }

    /// The answer to a failed handshake: what `on_client_error` returns, or by default the
    /// error's status with its message as a one-line body. `request` is `None` when the
    /// failure came before a request was read (malformed HTTP, a timeout).
    pub fn refuse(&self, error: HandshakeError, request: Option<&Request<()>>) -> Refusal {
        let custom = self.on_client_error.and_then(|hook| hook(&error, request));
        match custom {
            Some((status, headers, body)) => Refusal {
                error,
                status,
                reason: None,
                headers,
                body: body + "\n",
            },
            None => Refusal::from(error),
        }
    }

    /// Steps 1-5: the checks that need no verdict.
    fn check(
        &self,
        request: &Request<()>,
    ) -> Result<(Upgrade, Option<DeflateParams>), HandshakeError> {
        if request.version() != Version::HTTP_11 && request.version() != Version::HTTP_2 {
            return Err(HandshakeError::MalformedHttp("expected HTTP/1.1".into()));
        }
        if let Some(path) = self.path {
            if request.uri().path() != path {
                return Err(HandshakeError::NotFound);
            }
        }
        let upgrade = Upgrade::validate(request)?;
        if let Some(should_handle) = self.should_handle {
            if !should_handle(request) {
                return Err(HandshakeError::Rejected);
            }
        }
        let deflate = match self.per_message_deflate {
            Some(config) => upgrade.negotiate_deflate(config)?,
            None => None,
        };
        Ok((upgrade, deflate))
    }
}

/// Where [`ServerPolicy::decide`] stopped.
// Made and moved once per connection, so the variants are not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decision<'a> {
    /// Upgrade: write this 101.
    Accept(Accept),
    /// Run `verify_client` with [`Verify::info`] and pass its verdict to
    /// [`Verify::verdict`].
    Verify(Verify<'a>),
    /// Write this refusal and close.
    Refuse(Refusal),
}

/// A request that passed every check before `verify_client`, waiting for its verdict.
pub struct Verify<'a> {
    policy: ServerPolicy<'a>,
    request: Arc<Request<()>>,
    upgrade: Upgrade,
    deflate: Option<DeflateParams>,
}

impl fmt::Debug for Verify<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verify")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Verify<'_> {
    /// What `verify_client` sees: the request, its origin (`Origin`, or
    /// `Sec-WebSocket-Origin` from version-8 clients, RFC 6455 §10.2) and `secure`,
    /// whether the transport is TLS.
    pub fn info(&self, secure: bool) -> VerifyInfo {
        let headers = self.request.headers();
        let origin = headers
            .get(http::header::ORIGIN)
            .or_else(|| headers.get("sec-websocket-origin"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        VerifyInfo {
            origin,
            request: self.request.clone(),
            secure,
        }
    }

    /// Finishes the decision with `verify_client`'s verdict: a refusal becomes a
    /// [`Refusal`] with its status, reason phrase and headers (body: the reason phrase),
    /// not passed to `on_client_error`; an approval goes on to the subprotocol and the
    /// 101.
    ///
    /// # Errors
    /// The refusal to write: `verify_client`'s, or a 400 when `handle_protocols` picks a
    /// subprotocol that is not a token (RFC 6455 §4.1).
    // A refusal is made once per connection: not boxed.
    #[allow(clippy::result_large_err)]
    pub fn verdict(self, verdict: Result<(), Rejection>) -> Result<Accept, Refusal> {
        if let Err(rejection) = verdict {
            return Err(Refusal::from_rejection(rejection));
        }
        // `verify_client` may have kept its `VerifyInfo`: then the request is copied.
        let request = Arc::try_unwrap(self.request).unwrap_or_else(|shared| (*shared).clone());
        let offered = &self.upgrade.protocols;
        let protocol = match self.policy.handle_protocols {
            Some(pick) if !offered.is_empty() => pick(offered, &request),
            _ => offered.first().cloned(),
        };
        if protocol.as_deref().is_some_and(|p| !is_token(p)) {
            let error = HandshakeError::InvalidHeader("Sec-WebSocket-Protocol");
            return Err(self.policy.refuse(error, Some(&request)));
        }
        let extension = self.deflate.as_ref().map(|params| {
            HeaderValue::from_str(&params.header_value()).expect("deflate parameters are tokens")
        });
        let mut extra = HeaderMap::new();
        if let Some(value) = &extension {
            extra.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value.clone());
        }
        if let Some(hook) = self.policy.headers_hook {
            hook(&mut extra, &request);
        }
        for fixed in FIXED_HEADERS {
            extra.remove(fixed);
        }
        Ok(Accept {
            request,
            accept: self.upgrade.accept,
            protocol,
            deflate: self.deflate,
            extension,
            extra,
        })
    }
}

/// The 101's own headers, which `headers_hook` cannot change.
const FIXED_HEADERS: [HeaderName; 5] = [
    http::header::UPGRADE,
    http::header::CONNECTION,
    http::header::SEC_WEBSOCKET_ACCEPT,
    http::header::SEC_WEBSOCKET_PROTOCOL,
    http::header::SEC_WEBSOCKET_EXTENSIONS,
];

/// An accepted upgrade: the 101 response (RFC 6455 §4.2.2), or over HTTP/2 the 200
/// (RFC 8441 §5), the agreed subprotocol and permessage-deflate parameters, and the
/// request.
#[derive(Debug)]
pub struct Accept {
    request: Request<()>,
    /// `None` over HTTP/2.
    accept: Option<String>,
    protocol: Option<String>,
    deflate: Option<DeflateParams>,
    extension: Option<HeaderValue>,
    extra: HeaderMap,
}

impl Accept {
    /// The upgrade request.
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// The agreed subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The agreed permessage-deflate parameters.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }

    /// Whether the request came over HTTP/2 (RFC 8441's extended CONNECT).
    pub fn is_http2(&self) -> bool {
        self.accept.is_none()
    }

    /// The status to answer with: 101 Switching Protocols over HTTP/1.1, 200 over HTTP/2
    /// (RFC 8441 §5).
    pub fn status(&self) -> StatusCode {
        if self.is_http2() {
            StatusCode::OK
        } else {
            StatusCode::SWITCHING_PROTOCOLS
        }
    }

    /// The headers of the response in the order written: over HTTP/1.1 `Upgrade`,
    /// `Connection` and `Sec-WebSocket-Accept` (HTTP/2 has none of them), then
    /// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` when agreed, then those
    /// `headers_hook` added. For front ends that hand the response to an HTTP server
    /// (hyper), with [`Accept::status`].
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(5 + self.extra.len());
        if let Some(accept) = &self.accept {
            headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            );
            let accept = HeaderValue::from_str(accept).expect("base64 is a header value");
            headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = &self.protocol {
            let value = HeaderValue::from_str(protocol).expect("checked to be a token");
            headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        if let Some(value) = &self.extension {
            headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value.clone());
        }
        for (name, value) in &self.extra {
            headers.append(name, value.clone());
        }
        headers
    }

    /// Appends the whole HTTP/1.1 101 response to `out`, for front ends that write to the
    /// socket themselves (an HTTP/2 request is answered by its HTTP library, with
    /// [`Accept::status`] and [`Accept::headers`]).
    pub fn write_response(&self, out: &mut impl BufMut) {
        out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.put_slice(self.accept.as_deref().unwrap_or_default().as_bytes());
        out.put_slice(b"\r\n");
        if let Some(protocol) = &self.protocol {
            out.put_slice(b"Sec-WebSocket-Protocol: ");
            out.put_slice(protocol.as_bytes());
            out.put_slice(b"\r\n");
        }
        if let Some(value) = &self.extension {
            out.put_slice(b"Sec-WebSocket-Extensions: ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        push_headers(out, &self.extra);
        out.put_slice(b"\r\n");
    }

    /// The request, the subprotocol and the deflate parameters, to build the connection
    /// with once the 101 is written.
    pub fn into_parts(self) -> (Request<()>, Option<String>, Option<DeflateParams>) {
        (self.request, self.protocol, self.deflate)
    }
}

/// A refused handshake: why, and the response that says so (`Connection: close`, a
/// plain-text body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why: the failed check, [`HandshakeError::Rejected`] for a `verify_client` refusal.
    pub error: HandshakeError,
    /// The HTTP status.
    pub status: StatusCode,
    /// The reason phrase; the status's canonical one when `None`.
    pub reason: Option<String>,
    /// Headers besides `Connection`, `Content-Type` and `Content-Length`.
    pub headers: HeaderMap,
    /// The body, as sent (it ends with a newline).
    pub body: String,
}

impl From<HandshakeError> for Refusal {
    /// The default answer: the error's status and message, with `Upgrade: websocket` and
    /// `Sec-WebSocket-Version: 13` on a version mismatch (RFC 6455 §4.4; RFC 9110
    /// §15.5.22 requires `Upgrade` on a 426).
    fn from(error: HandshakeError) -> Refusal {
        let mut headers = HeaderMap::new();
        if matches!(error, HandshakeError::UnsupportedVersion) {
            headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                http::header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        Refusal {
            status: StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
            reason: None,
            headers,
            body: format!("{error}\n"),
            error,
        }
    }
}

impl Refusal {
    /// `verify_client`'s refusal: its status, reason and headers; the body is the reason
    /// phrase.
    fn from_rejection(rejection: Rejection) -> Refusal {
        let reason = rejection.reason;
        let phrase = reason
            .as_deref()
            .or(rejection.status.canonical_reason())
            .unwrap_or("Rejected");
        Refusal {
            error: HandshakeError::Rejected,
            status: rejection.status,
            body: format!("{phrase}\n"),
            reason,
            headers: rejection.headers.into_iter().collect(),
        }
    }

    /// The reason phrase of the status line.
    pub fn reason_phrase(&self) -> &str {
        self.reason
            .as_deref()
            .or(self.status.canonical_reason())
            .unwrap_or("Error")
    }

    /// Appends the whole response to `out`.
    pub fn write_response(&self, out: &mut impl BufMut) {
        let reason = self.reason_phrase();
        write_plain(out, self.status, reason, &self.headers, &self.body);
    }

    /// The whole response.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        self.write_response(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use bytes::BytesMut;

    use super::*;
    use crate::handshake::server::ServerHandshake;
    use crate::handshake::HeadLimits;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn request(path: &str) -> http::request::Builder {
        Request::get(path)
            .header("host", "example.com")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", KEY)
            .header("sec-websocket-version", "13")
    }

    fn good() -> Request<()> {
        request("/ws").body(()).unwrap()
    }

    fn accepted(decision: Decision<'_>) -> Accept {
        match decision {
            Decision::Accept(accept) => accept,
            other => panic!("expected a 101: {other:?}"),
        }
    }

    fn refused(decision: Decision<'_>) -> Refusal {
        match decision {
            Decision::Refuse(refusal) => refusal,
            other => panic!("expected a refusal: {other:?}"),
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    // ---- RFC 6455 §4.2.2: the 101 -------------------------------------------------------

    #[test]
    fn default_policy_accepts_with_the_clients_first_protocol() {
        let req = request("/any")
            .header("sec-websocket-protocol", "chat, superchat")
            .header("sec-websocket-extensions", "permessage-deflate")
            .body(())
            .unwrap();
        let accept = accepted(ServerPolicy::default().decide(req));
        assert_eq!(accept.protocol(), Some("chat"));
        assert!(
            accept.deflate().is_none(),
            "deflate is off unless configured"
        );
        let mut out = Vec::new();
        accept.write_response(&mut out);
        let out = text(&out);
        assert!(
            out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Protocol: chat\r\n"), "{out}");
        assert!(!out.contains("Extensions"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
        let headers = accept.headers();
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "Upgrade");
        assert_eq!(headers["sec-websocket-accept"], ACCEPT);
        assert_eq!(headers["sec-websocket-protocol"], "chat");
        let (request, protocol, deflate) = accept.into_parts();
        assert_eq!(request.uri().path(), "/any");
        assert_eq!((protocol.as_deref(), deflate), (Some("chat"), None));
    }

    // RFC 7692 §5: the offer accepted, the agreed parameters in the 101.
    #[test]
    #[cfg(feature = "deflate")]
    fn deflate_is_negotiated_when_enabled() {
        let config = DeflateConfig::default();
        let policy = ServerPolicy {
            per_message_deflate: Some(&config),
            ..ServerPolicy::default()
        };
        let req = request("/")
            .header(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            )
            .body(())
            .unwrap();
        let accept = accepted(policy.decide(req));
        let params = accept.deflate().expect("agreed");
        let value = params.header_value();
        assert!(value.starts_with("permessage-deflate"), "{value}");
        assert_eq!(accept.headers()["sec-websocket-extensions"], value.as_str());
        let mut out = Vec::new();
        accept.write_response(&mut out);
        assert!(text(&out).contains(&format!("Sec-WebSocket-Extensions: {value}\r\n")));

        // No offer: no extension; a malformed offer: 400.
        assert!(accepted(policy.decide(good())).deflate().is_none());
        let bad = request("/")
            .header("sec-websocket-extensions", "permessage-deflate; bogus=1")
            .body(())
            .unwrap();
        let refusal = refused(policy.decide(bad));
        assert_eq!(refusal.status, 400);
        assert_eq!(
            refusal.error,
            HandshakeError::InvalidHeader("Sec-WebSocket-Extensions")
        );
    }

    #[test]
    fn handle_protocols_picks_or_declines_and_is_not_asked_without_offers() {
        let asked = Arc::new(Mutex::new(0));
        let count = asked.clone();
        let pick: HandleProtocols = Arc::new(move |offered: &[String], _: &Request<()>| {
            *count.lock().unwrap() += 1;
            offered.last().cloned().filter(|p| p != "none")
        });
        let policy = ServerPolicy {
            handle_protocols: Some(&pick),
            ..ServerPolicy::default()
        };
        let offer = |list: &str| {
            request("/")
                .header("sec-websocket-protocol", list)
                .body(())
                .unwrap()
        };
        assert_eq!(accepted(policy.decide(offer("a, b"))).protocol(), Some("b"));
        assert_eq!(accepted(policy.decide(offer("a, none"))).protocol(), None);
        assert_eq!(accepted(policy.decide(good())).protocol(), None);
        assert_eq!(*asked.lock().unwrap(), 2, "not asked without offers");

        // A choice that is not a token would break the response: 400.
        let bad: HandleProtocols =
            Arc::new(|_: &[String], _: &Request<()>| Some("two words".to_owned()));
        let policy = ServerPolicy {
            handle_protocols: Some(&bad),
            ..ServerPolicy::default()
        };
        let refusal = refused(policy.decide(offer("a")));
        assert_eq!(
            refusal.error,
            HandshakeError::InvalidHeader("Sec-WebSocket-Protocol")
        );
    }

    #[test]
    fn headers_hook_adds_but_cannot_change_the_handshake_headers() {
        let hook: HeadersHook = Arc::new(|headers: &mut HeaderMap, request: &Request<()>| {
            let path = HeaderValue::from_str(request.uri().path()).unwrap();
            headers.insert("x-path", path);
            headers.insert("set-cookie", HeaderValue::from_static("a=1"));
            headers.insert("sec-websocket-accept", HeaderValue::from_static("forged"));
            headers.insert("upgrade", HeaderValue::from_static("h2c"));
        });
        let policy = ServerPolicy {
            headers_hook: Some(&hook),
            ..ServerPolicy::default()
        };
        let accept = accepted(policy.decide(good()));
        let headers = accept.headers();
        assert_eq!(headers["x-path"], "/ws");
        assert_eq!(headers["set-cookie"], "a=1");
        assert_eq!(headers["sec-websocket-accept"], ACCEPT);
        assert_eq!(headers.get_all("upgrade").iter().count(), 1);
        assert_eq!(headers["upgrade"], "websocket");
        let mut out = Vec::new();
        accept.write_response(&mut out);
        let out = text(&out);
        assert!(out.contains("x-path: /ws\r\n"), "{out}");
        assert!(!out.contains("forged") && !out.contains("h2c"), "{out}");
    }

    // ---- RFC 8441: the same decision on an HTTP/2 extended CONNECT ------------------------

    fn connect(path: &str) -> http::request::Builder {
        Request::connect(format!("https://example.com{path}"))
            .version(Version::HTTP_2)
            .extension(super::super::http2::ConnectProtocol("websocket".into()))
            .header("sec-websocket-version", "13")
    }

    #[test]
    fn http2_extended_connect_goes_through_the_same_policy() {
        let hook: HeadersHook = Arc::new(|headers: &mut HeaderMap, request: &Request<()>| {
            let version = format!("{:?}", request.version());
            headers.insert("x-version", HeaderValue::from_str(&version).unwrap());
            headers.insert("upgrade", HeaderValue::from_static("h2c"));
        });
        let policy = ServerPolicy {
            path: Some("/ws"),
            headers_hook: Some(&hook),
            verify_client: true,
            ..ServerPolicy::default()
        };
        let req = connect("/ws")
            .header("sec-websocket-protocol", "chat, superchat")
            .header("origin", "https://example.com")
            .body(())
            .unwrap();
        let Decision::Verify(verify) = policy.decide(req) else {
            panic!("verify_client is asked over HTTP/2 too");
        };
        assert_eq!(
            verify.info(true).origin.as_deref(),
            Some("https://example.com")
        );
        let accept = verify.verdict(Ok(())).unwrap();
        assert!(accept.is_http2());
        assert_eq!(accept.status(), StatusCode::OK);
        assert_eq!(accept.protocol(), Some("chat"));
        let headers = accept.headers();
        assert_eq!(headers["sec-websocket-protocol"], "chat");
        assert_eq!(headers["x-version"], "HTTP/2.0");
        for absent in ["upgrade", "connection", "sec-websocket-accept"] {
            assert!(!headers.contains_key(absent), "{absent}: {headers:?}");
        }

        // The path still comes first, and the refusals have their statuses.
        let refusal = refused(policy.decide(connect("/other").body(()).unwrap()));
        assert_eq!(refusal.status, 404);
        let plain = Request::connect("example.com:443")
            .version(Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let refusal = refused(ServerPolicy::default().decide(plain));
        assert_eq!(refusal.status, 400);
        assert_eq!(refusal.error, HandshakeError::InvalidHeader(":protocol"));
        let rejected = policy.decide(connect("/ws").body(()).unwrap());
        let Decision::Verify(verify) = rejected else {
            panic!("expected the verification step");
        };
        let refusal = verify.verdict(Err(Rejection::status(403))).unwrap_err();
        assert_eq!(refusal.status, 403);
    }

    #[test]
    #[cfg(feature = "deflate")]
    fn http2_negotiates_deflate() {
        let config = DeflateConfig::default();
        let policy = ServerPolicy {
            per_message_deflate: Some(&config),
            ..ServerPolicy::default()
        };
        let req = connect("/")
            .header("sec-websocket-extensions", "permessage-deflate")
            .body(())
            .unwrap();
        let accept = accepted(policy.decide(req));
        let value = accept.deflate().expect("agreed").header_value();
        assert_eq!(accept.headers()["sec-websocket-extensions"], value.as_str());
    }

    // ---- the order of the checks ----------------------------------------------------------

    #[test]
    fn http_1_1_is_required_first() {
        let mut req = request("/elsewhere").method("POST").body(()).unwrap();
        *req.version_mut() = Version::HTTP_10;
        let policy = ServerPolicy {
            path: Some("/ws"),
            ..ServerPolicy::default()
        };
        let refusal = refused(policy.decide(req));
        assert_eq!(refusal.status, 400);
        assert!(refusal.body.contains("HTTP/1.1"), "{refusal:?}");
    }

    #[test]
    fn path_is_checked_before_the_upgrade() {
        let policy = ServerPolicy {
            path: Some("/ws"),
            ..ServerPolicy::default()
        };
        // A bad request to another path: 404, not 405.
        let req = request("/other").method("POST").body(()).unwrap();
        let refusal = refused(policy.decide(req));
        assert_eq!(refusal.error, HandshakeError::NotFound);
        assert_eq!(refusal.status, 404);
        assert_eq!(refusal.body, "no WebSocket endpoint at this path\n");
        // The query string is not part of the path.
        let req = request("/ws?room=1").body(()).unwrap();
        accepted(policy.decide(req));
    }

    #[test]
    fn invalid_upgrades_are_refused_with_their_status() {
        let cases = [
            (request("/").method("POST").body(()).unwrap(), 405),
            (
                Request::get("/")
                    .header("host", "x")
                    .header("upgrade", "websocket")
                    .header("connection", "Upgrade")
                    .header("sec-websocket-version", "13")
                    .body(())
                    .unwrap(),
                400, // no key
            ),
            (
                Request::get("/")
                    .header("host", "x")
                    .header("upgrade", "websocket")
                    .header("connection", "Upgrade")
                    .header("sec-websocket-key", KEY)
                    .header("sec-websocket-version", "12")
                    .body(())
                    .unwrap(),
                426,
            ),
            (
                request("/")
                    .header("sec-websocket-protocol", "chat, chat")
                    .body(())
                    .unwrap(),
                400,
            ),
        ];
        for (req, status) in cases {
            let refusal = refused(ServerPolicy::default().decide(req));
            assert_eq!(refusal.status, status, "{refusal:?}");
            assert!(refusal.body.ends_with('\n'));
            assert_eq!(
                refusal.headers.contains_key("sec-websocket-version"),
                status == 426
            );
        }
    }

    // RFC 6455 §4.4, RFC 9110 §15.5.22.
    #[test]
    fn version_refusal_names_version_13_and_the_upgrade() {
        let refusal = Refusal::from(HandshakeError::UnsupportedVersion);
        let out = text(&refusal.to_bytes());
        assert!(
            out.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{out}"
        );
        assert!(out.contains("sec-websocket-version: 13\r\n"), "{out}");
        assert!(out.contains("upgrade: websocket\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        let length = format!("Content-Length: {}\r\n", refusal.body.len());
        assert!(out.contains(&length), "{out}");
        assert!(out.ends_with("\r\n\r\nunsupported Sec-WebSocket-Version: expected 13\n"));
    }

    #[test]
    fn should_handle_runs_after_validation() {
        let calls = Arc::new(Mutex::new(0));
        let count = calls.clone();
        let only_tokens: ShouldHandle = Arc::new(move |request: &Request<()>| {
            *count.lock().unwrap() += 1;
            request.headers().contains_key("x-token")
        });
        let policy = ServerPolicy {
            should_handle: Some(&only_tokens),
            ..ServerPolicy::default()
        };
        let refusal = refused(policy.decide(good()));
        assert_eq!(refusal.error, HandshakeError::Rejected);
        assert_eq!(refusal.status, 400);
        accepted(policy.decide(request("/").header("x-token", "1").body(()).unwrap()));
        let invalid = request("/").method("PUT").body(()).unwrap();
        assert_eq!(refused(policy.decide(invalid)).status, 405);
        assert_eq!(
            *calls.lock().unwrap(),
            2,
            "not asked about an invalid upgrade"
        );
    }

    // ---- verify_client ----------------------------------------------------------------------

    fn verifying() -> ServerPolicy<'static> {
        ServerPolicy {
            verify_client: true,
            ..ServerPolicy::default()
        }
    }

    #[test]
    fn verify_step_sees_origin_and_secure_and_its_approval_accepts() {
        let req = request("/ws")
            .header("origin", "https://good.example")
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        let Decision::Verify(verify) = verifying().decide(req) else {
            panic!("verify_client is a step of its own")
        };
        let info = verify.info(true);
        assert_eq!(info.origin.as_deref(), Some("https://good.example"));
        assert!(info.secure);
        assert_eq!(info.request.uri().path(), "/ws");
        // The verifier may keep its info: the request is still returned whole.
        let accept = verify.verdict(Ok(())).unwrap();
        assert_eq!(accept.protocol(), Some("chat"));
        assert_eq!(accept.request().uri().path(), "/ws");
        drop(info);

        // Version-8 clients send Sec-WebSocket-Origin.
        let req = request("/")
            .header("sec-websocket-origin", "http://old.example")
            .body(())
            .unwrap();
        let Decision::Verify(verify) = verifying().decide(req) else {
            panic!()
        };
        assert_eq!(
            verify.info(false).origin.as_deref(),
            Some("http://old.example")
        );
    }

    #[test]
    fn verify_refusal_carries_status_reason_and_headers_not_on_client_error() {
        let hook: OnClientError = Arc::new(|_: &HandshakeError, _: Option<&Request<()>>| {
            panic!("a verify_client refusal is not a failed check")
        });
        let policy = ServerPolicy {
            on_client_error: Some(&hook),
            ..verifying()
        };
        let Decision::Verify(verify) = policy.decide(good()) else {
            panic!()
        };
        let rejection = Rejection::status(403)
            .reason("Origin Not Allowed")
            .header("retry-after", "120");
        let refusal = verify.verdict(Err(rejection)).unwrap_err();
        assert_eq!(refusal.error, HandshakeError::Rejected);
        let out = text(&refusal.to_bytes());
        assert!(
            out.starts_with("HTTP/1.1 403 Origin Not Allowed\r\n"),
            "{out}"
        );
        assert!(out.contains("retry-after: 120\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nOrigin Not Allowed\n"), "{out}");

        // The default refusal: 401 with its canonical reason.
        let Decision::Verify(verify) = verifying().decide(good()) else {
            panic!()
        };
        let refusal = verify.verdict(Err(Rejection::default())).unwrap_err();
        assert_eq!(refusal.status, 401);
        assert_eq!(refusal.reason_phrase(), "Unauthorized");
        assert_eq!(refusal.body, "Unauthorized\n");
    }

    #[test]
    fn failed_checks_never_reach_verify() {
        let req = request("/").method("POST").body(()).unwrap();
        assert_eq!(refused(verifying().decide(req)).status, 405);
    }

    // ---- on_client_error --------------------------------------------------------------------

    #[test]
    fn on_client_error_replaces_the_default_or_keeps_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let hook: OnClientError = Arc::new(move |error: &HandshakeError, request| {
            log.lock()
                .unwrap()
                .push((error.status(), request.map(|r| r.uri().path().to_owned())));
            let custom = request.is_some_and(|r| r.headers().contains_key("x-custom"));
            custom.then(|| {
                let mut headers = HeaderMap::new();
                headers.insert("x-why", HeaderValue::from_static("custom"));
                (
                    StatusCode::IM_A_TEAPOT,
                    headers,
                    "no tea for you".to_owned(),
                )
            })
        });
        let policy = ServerPolicy {
            on_client_error: Some(&hook),
            ..ServerPolicy::default()
        };
        let req = request("/tea").method("POST").header("x-custom", "1");
        let refusal = refused(policy.decide(req.body(()).unwrap()));
        assert_eq!(refusal.error, HandshakeError::MethodNotAllowed);
        let out = text(&refusal.to_bytes());
        assert!(out.starts_with("HTTP/1.1 418 I'm a teapot\r\n"), "{out}");
        assert!(out.contains("x-why: custom\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nno tea for you\n"), "{out}");

        let req = request("/plain").method("POST").body(()).unwrap();
        assert_eq!(refused(policy.decide(req)).status, 405);
        let refusal = policy.refuse(HandshakeError::Timeout, None);
        assert_eq!(refusal, Refusal::from(HandshakeError::Timeout));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (405, Some("/tea".to_owned())),
                (405, Some("/plain".to_owned())),
                (408, None)
            ]
        );
    }

    // ---- reading the head: ServerHandshake --------------------------------------------------

    const HEAD: &str = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn reading_waits_for_the_whole_head_and_keeps_what_follows() {
        let now = Instant::now();
        let reading = ServerHandshake::new(now, Duration::from_secs(10), HeadLimits::default());
        assert_eq!(reading.poll_timeout(), Some(now + Duration::from_secs(10)));
        let mut buf = BytesMut::new();
        for byte in HEAD.bytes().take(HEAD.len() - 1) {
            buf.extend_from_slice(&[byte]);
            assert!(reading
                .handle_read(&mut buf, ServerPolicy::default())
                .is_none());
        }
        buf.extend_from_slice(b"\n\x81\x80early");
        let accept = accepted(
            reading
                .handle_read(&mut buf, ServerPolicy::default())
                .unwrap(),
        );
        assert_eq!(accept.request().uri().path(), "/chat");
        assert_eq!(&buf[..], b"\x81\x80early");
    }

    #[test]
    fn reading_refuses_malformed_and_oversized_heads_at_once() {
        let reading = ServerHandshake::new(
            Instant::now(),
            Duration::from_secs(10),
            HeadLimits::default(),
        );
        let mut buf = BytesMut::from(&b"\x16\x03\x01 hello\r\n\r\n"[..]);
        let refusal = refused(
            reading
                .handle_read(&mut buf, ServerPolicy::default())
                .unwrap(),
        );
        assert_eq!(refusal.status, 400);
        let limits = HeadLimits {
            max_head_bytes: 64,
            ..HeadLimits::default()
        };
        let reading = ServerHandshake::new(Instant::now(), Duration::from_secs(10), limits);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        buf.extend_from_slice(&[b'a'; 100]);
        let refusal = refused(
            reading
                .handle_read(&mut buf, ServerPolicy::default())
                .unwrap(),
        );
        assert_eq!(refusal.status, 431);
    }

    #[test]
    fn reading_times_out_with_408_at_the_deadline() {
        let now = Instant::now();
        let timeout = Duration::from_millis(500);
        let reading = ServerHandshake::new(now, timeout, HeadLimits::default());
        let policy = ServerPolicy::default();
        assert!(reading.handle_timeout(now, &policy).is_none());
        assert!(reading
            .handle_timeout(now + timeout - Duration::from_millis(1), &policy)
            .is_none());
        let refusal = reading.handle_timeout(now + timeout, &policy).unwrap();
        assert_eq!(refusal.error, HandshakeError::Timeout);
        assert_eq!(refusal.status, 408);
        assert!(text(&refusal.to_bytes()).starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        // A timeout beyond what an Instant holds: never due.
        let forever = ServerHandshake::new(now, Duration::MAX, HeadLimits::default());
        assert_eq!(forever.poll_timeout(), None);
        assert!(forever.handle_timeout(now + timeout, &policy).is_none());
    }
}
