//! The client side of the opening handshake (RFC 6455 §4.1).
//!
//! [`ClientRequest::encode`] writes the upgrade request and returns an
//! [`ExpectResponse`], which parses and checks the server's answer.
//! [`ClientRequest::extended_connect`] is the same request in its HTTP/2 form (RFC 8441),
//! for an HTTP/2 library to send.

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use super::http2::{ConnectProtocol, WEBSOCKET_PROTOCOL};
use super::{accept_key, generate_key, header_has_token, to_header_map, HeadLimits};
use crate::deflate::{self, DeflateConfig, DeflateParams};
use crate::error::HandshakeError;

/// What the client asks for.
#[derive(Clone, Debug, Default)]
pub struct ClientRequest {
    /// The `Host` header value (`host[:port]`).
    pub host: String,
    /// The request target: path and query.
    pub path: String,
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Version`: 13 (default when 0) or 8.
    pub version: u8,
    /// Extra headers (authorization, cookies ...).
    pub headers: HeaderMap,
    /// permessage-deflate to offer (`None`: no compression). Without the `deflate` feature
    /// nothing is offered either way.
    pub deflate: Option<DeflateConfig>,
}

impl ClientRequest {
    /// Writes the request with a fresh key.
    pub fn encode(&self) -> (Vec<u8>, ExpectResponse) {
        self.encode_with_key(generate_key())
    }

    /// Writes the request with the given key (for tests and reproducible traces).
    pub fn encode_with_key(&self, key: String) -> (Vec<u8>, ExpectResponse) {
        let version = if self.version == 0 { 13 } else { self.version };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            format!("GET {} HTTP/1.1\r\nHost: {}\r\n", self.path, self.host).as_bytes(),
        );
        out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        out.extend_from_slice(
            format!("Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n").as_bytes(),
        );
        if !self.protocols.is_empty() {
            out.extend_from_slice(
                format!("Sec-WebSocket-Protocol: {}\r\n", self.protocols.join(",")).as_bytes(),
            );
        }
        if let Some(origin) = &self.origin {
            let name = if version == 8 {
                "Sec-WebSocket-Origin"
            } else {
                "Origin"
            };
            out.extend_from_slice(format!("{name}: {origin}\r\n").as_bytes());
        }
        // Without the `deflate` feature, nothing is offered and so nothing accepted.
        let deflate = self.deflate.as_ref().filter(|_| deflate::enabled());
        if let Some(deflate) = deflate {
            let offer = deflate::client_offer(deflate);
            out.extend_from_slice(format!("Sec-WebSocket-Extensions: {offer}\r\n").as_bytes());
        }
        super::push_headers(&mut out, &self.headers);
        out.extend_from_slice(b"\r\n");
        let expect = ExpectResponse {
            accept: Some(accept_key(key.as_bytes())),
            protocols: self.protocols.clone(),
            deflate: deflate.cloned(),
        };
        (out, expect)
    }

    /// The request as an HTTP/2 extended CONNECT (RFC 8441 §4-5): method CONNECT,
    /// `:protocol = websocket` (the [`ConnectProtocol`] extension, for the HTTP/2 library
    /// to send as the pseudo-header), `:scheme` `scheme`, `:authority` [`Self::host`] and
    /// `:path` [`Self::path`], with `Sec-WebSocket-Version`, the offered subprotocols and
    /// extensions, `Origin` and the extra headers; no `Upgrade`, `Connection` or key.
    /// The [`ExpectResponse`] then wants a 2xx instead of a 101.
    ///
    /// # Errors
    /// [`HandshakeError::MalformedHttp`] when the host, path or a header does not make a
    /// valid request.
    pub fn extended_connect(
        &self,
        scheme: &str,
    ) -> Result<(Request<()>, ExpectResponse), HandshakeError> {
        let invalid = |what: &str| HandshakeError::MalformedHttp(format!("invalid {what}"));
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(self.host.as_str())
            .path_and_query(self.path.as_str())
            .build()
            .map_err(|_| invalid("URL"))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        request
            .extensions_mut()
            .insert(ConnectProtocol(WEBSOCKET_PROTOCOL.to_owned()));
        let headers = request.headers_mut();
        let version = if self.version == 0 { 13 } else { self.version };
        headers.insert(
            http::header::SEC_WEBSOCKET_VERSION,
            u16::from(version).into(),
        );
        if !self.protocols.is_empty() {
            let list = HeaderValue::from_str(&self.protocols.join(","))
                .map_err(|_| invalid("Sec-WebSocket-Protocol"))?;
            headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, list);
        }
        if let Some(origin) = &self.origin {
            let value = HeaderValue::from_str(origin).map_err(|_| invalid("Origin"))?;
            headers.insert(http::header::ORIGIN, value);
        }
        let deflate = self.deflate.as_ref().filter(|_| deflate::enabled());
        if let Some(deflate) = deflate {
            let offer = HeaderValue::from_str(&deflate::client_offer(deflate))
                .map_err(|_| invalid("Sec-WebSocket-Extensions"))?;
            headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, offer);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        let expect = ExpectResponse {
            accept: None,
            protocols: self.protocols.clone(),
            deflate: deflate.cloned(),
        };
        Ok((request, expect))
    }
}

/// Waiting for the server's response to a request.
#[derive(Clone, Debug)]
pub struct ExpectResponse {
    /// The `Sec-WebSocket-Accept` wanted; `None` for an HTTP/2 extended CONNECT.
    accept: Option<String>,
    protocols: Vec<String>,
    deflate: Option<DeflateConfig>,
}

/// A response that completed the handshake.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The 101 response (its headers, e.g. `set-cookie`, stay readable).
    pub response: Response<()>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
    /// permessage-deflate as the server accepted it (`None`: declined or not offered).
    pub deflate: Option<DeflateParams>,
}

impl ExpectResponse {
    /// Parses a response head from the start of `buf`: the response and the length of its
    /// head, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`HandshakeError::HeadersTooLarge`] and [`HandshakeError::MalformedHttp`].
    pub fn parse(
        &self,
        buf: &[u8],
        limits: &HeadLimits,
    ) -> Result<Option<(Response<()>, usize)>, HandshakeError> {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
                return Err(HandshakeError::HeadersTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge),
            Err(e) => return Err(HandshakeError::MalformedHttp(e.to_string())),
        };
        let status = StatusCode::from_u16(resp.code.unwrap_or_default())
            .map_err(|_| HandshakeError::MalformedHttp("invalid status".into()))?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = to_header_map(resp.headers)?;
        Ok(Some((response, len)))
    }

    /// Checks a response (RFC 6455 §4.1, the client's requirements 1-6); to an HTTP/2
    /// extended CONNECT, a 2xx with no accept key (RFC 8441 §5).
    ///
    /// # Errors
    /// [`HandshakeError::UnexpectedStatus`] for anything but 101 (2xx over HTTP/2; the
    /// caller keeps the response and body for the user), and the header checks' errors.
    pub fn validate(&self, response: Response<()>) -> Result<Accepted, HandshakeError> {
        let headers = response.headers();
        match &self.accept {
            None if response.status().is_success() => {}
            None => return Err(HandshakeError::UnexpectedStatus(response.status().as_u16())),
            Some(_) if response.status() != StatusCode::SWITCHING_PROTOCOLS => {
                return Err(HandshakeError::UnexpectedStatus(response.status().as_u16()));
            }
            Some(accept) => {
                if !header_has_token(headers, "upgrade", "websocket") {
                    return Err(HandshakeError::InvalidHeader("Upgrade"));
                }
                if !header_has_token(headers, "connection", "upgrade") {
                    return Err(HandshakeError::InvalidHeader("Connection"));
                }
                match headers.get(http::header::SEC_WEBSOCKET_ACCEPT) {
                    Some(v) if v.as_bytes() == accept.as_bytes() => {}
                    _ => return Err(HandshakeError::AcceptMismatch),
                }
            }
        }
        let protocol = match headers.get(http::header::SEC_WEBSOCKET_PROTOCOL) {
            None if self.protocols.is_empty() => None,
            // ws: "Server sent no subprotocol" when some were offered.
            None => return Err(HandshakeError::InvalidSubprotocol),
            Some(v) => {
                let chosen = v.to_str().map_err(|_| HandshakeError::InvalidSubprotocol)?;
                if !self.protocols.iter().any(|p| p == chosen) {
                    return Err(HandshakeError::InvalidSubprotocol);
                }
                Some(chosen.to_owned())
            }
        };
        let answers = headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS);
        let deflate = match &self.deflate {
            _ if answers.iter().next().is_none() => None,
            None => return Err(HandshakeError::InvalidExtension),
            Some(config) => {
                let values: Result<Vec<&str>, _> = answers.iter().map(|v| v.to_str()).collect();
                let values = values
                    .map_err(|_| HandshakeError::InvalidHeader("Sec-WebSocket-Extensions"))?;
                deflate::client_accept(config, values)?
            }
        };
        Ok(Accepted {
            response,
            protocol,
            deflate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &[&str]) -> (String, ExpectResponse) {
        let req = ClientRequest {
            host: "server.example.com".into(),
            path: "/chat".into(),
            protocols: protocols.iter().map(|p| p.to_string()).collect(),
            origin: Some("http://example.com".into()),
            ..Default::default()
        };
        let (bytes, expect) = req.encode_with_key("dGhlIHNhbXBsZSBub25jZQ==".into());
        (String::from_utf8(bytes).unwrap(), expect)
    }

    fn respond(expect: &ExpectResponse, text: &str) -> Result<Accepted, HandshakeError> {
        let (resp, len) = expect
            .parse(text.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, text.len());
        expect.validate(resp)
    }

    const OK: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

    // RFC 6455 §1.2.
    #[test]
    fn rfc_example_roundtrip() {
        let (text, expect) = request(&["chat", "superchat"]);
        assert!(text.starts_with("GET /chat HTTP/1.1\r\nHost: server.example.com\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat,superchat\r\n"));
        assert!(text.contains("Origin: http://example.com\r\n"));
        let accepted = respond(
            &expect,
            &format!("{OK}Sec-WebSocket-Protocol: chat\r\n\r\n"),
        )
        .unwrap();
        assert_eq!(accepted.protocol.as_deref(), Some("chat"));
    }

    #[test]
    #[cfg(not(feature = "deflate"))]
    fn without_deflate_nothing_is_offered() {
        let req = ClientRequest {
            host: "h".into(),
            path: "/".into(),
            deflate: Some(DeflateConfig::default()),
            ..Default::default()
        };
        let (bytes, expect) = req.encode_with_key("dGhlIHNhbXBsZSBub25jZQ==".into());
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("Sec-WebSocket-Extensions"), "{text}");
        assert_eq!(
            respond(&expect, &format!("{OK}\r\n")).unwrap().deflate,
            None
        );
        assert_eq!(
            respond(
                &expect,
                &format!("{OK}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
            )
            .unwrap_err(),
            HandshakeError::InvalidExtension,
            "not offered"
        );
    }

    #[test]
    #[cfg(feature = "deflate")]
    fn deflate_offer_and_answer() {
        let req = ClientRequest {
            host: "h".into(),
            path: "/".into(),
            deflate: Some(DeflateConfig::default()),
            ..Default::default()
        };
        let (bytes, expect) = req.encode_with_key("dGhlIHNhbXBsZSBub25jZQ==".into());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            ),
            "{text}"
        );
        let accepted = respond(&expect, &format!("{OK}Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n")).unwrap();
        assert!(accepted.deflate.unwrap().server_no_context_takeover);
        assert_eq!(
            respond(&expect, &format!("{OK}\r\n")).unwrap().deflate,
            None,
            "declined"
        );
        assert_eq!(
            respond(
                &expect,
                &format!("{OK}Sec-WebSocket-Extensions: x-other\r\n\r\n")
            )
            .unwrap_err(),
            HandshakeError::InvalidExtension
        );
    }

    #[test]
    fn invalid_responses() {
        let (_, expect) = request(&[]);
        assert_eq!(
            respond(&expect, &format!("{OK}\r\n")).unwrap().protocol,
            None
        );
        let cases = [
            (
                "HTTP/1.1 200 OK\r\n\r\n".to_string(),
                HandshakeError::UnexpectedStatus(200),
            ),
            (
                OK.replace("s3pP", "AAAA") + "\r\n",
                HandshakeError::AcceptMismatch,
            ),
            (
                OK.replace("Upgrade: websocket\r\n", "") + "\r\n",
                HandshakeError::InvalidHeader("Upgrade"),
            ),
            (
                format!("{OK}Sec-WebSocket-Protocol: chat\r\n\r\n"),
                HandshakeError::InvalidSubprotocol,
            ),
            (
                format!("{OK}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
                HandshakeError::InvalidExtension,
            ),
        ];
        for (text, error) in cases {
            assert_eq!(respond(&expect, &text).unwrap_err(), error, "{text}");
        }
        let (_, expect) = request(&["chat"]);
        assert_eq!(
            respond(&expect, &format!("{OK}\r\n")).unwrap_err(),
            HandshakeError::InvalidSubprotocol
        );
        assert_eq!(
            respond(
                &expect,
                &format!("{OK}Sec-WebSocket-Protocol: other\r\n\r\n")
            )
            .unwrap_err(),
            HandshakeError::InvalidSubprotocol
        );
    }

    #[test]
    fn extended_connect_request_and_answer() {
        let req = ClientRequest {
            host: "example.com:8443".into(),
            path: "/chat?room=1".into(),
            protocols: vec!["chat".into(), "superchat".into()],
            origin: Some("https://example.com".into()),
            ..Default::default()
        };
        let (request, expect) = req.extended_connect("https").unwrap();
        assert_eq!(request.method(), Method::CONNECT);
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(request.uri(), "https://example.com:8443/chat?room=1");
        assert_eq!(
            request.extensions().get::<ConnectProtocol>(),
            Some(&ConnectProtocol("websocket".into()))
        );
        let headers = request.headers();
        assert_eq!(headers["sec-websocket-version"], "13");
        assert_eq!(headers["sec-websocket-protocol"], "chat,superchat");
        assert_eq!(headers["origin"], "https://example.com");
        for absent in ["upgrade", "connection", "sec-websocket-key", "host"] {
            assert!(!headers.contains_key(absent), "{absent}");
        }
        // The server's own policy accepts it.
        let upgrade = crate::handshake::server::Upgrade::validate(&request).unwrap();
        assert_eq!(upgrade.protocols, ["chat", "superchat"]);

        let answer = |status: u16, protocol: Option<&str>| {
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(protocol) = protocol {
                let value = HeaderValue::from_str(protocol).unwrap();
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", value);
            }
            expect.validate(response)
        };
        let accepted = answer(200, Some("superchat")).unwrap();
        assert_eq!(accepted.protocol.as_deref(), Some("superchat"));
        assert_eq!(
            answer(101, Some("chat")).unwrap_err(),
            HandshakeError::UnexpectedStatus(101)
        );
        assert_eq!(
            answer(404, None).unwrap_err(),
            HandshakeError::UnexpectedStatus(404)
        );
        assert_eq!(
            answer(200, Some("other")).unwrap_err(),
            HandshakeError::InvalidSubprotocol
        );
    }
}
