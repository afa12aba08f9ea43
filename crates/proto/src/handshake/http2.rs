//! The opening handshake over HTTP/2 (RFC 8441, "Bootstrapping WebSockets with HTTP/2").
//!
//! Over HTTP/2 a WebSocket is one stream of a shared connection. The server announces
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`; the client opens a stream with an *extended
//! CONNECT*: method `CONNECT`, the pseudo-header `:protocol = websocket`, `:scheme`,
//! `:authority` and `:path` as for any request, and the same `Sec-WebSocket-Version`,
//! `Sec-WebSocket-Protocol`, `Sec-WebSocket-Extensions` and `Origin` headers as
//! HTTP/1.1. There is no `Upgrade`/`Connection`, no `Sec-WebSocket-Key` and no
//! `Sec-WebSocket-Accept` (RFC 8441 §5); the server accepts with a `200` instead of a
//! `101`, and the DATA frames of the stream carry the WebSocket frames from then on.
//!
//! HTTP libraries hand the `:protocol` pseudo-header over in their own type (hyper's and
//! h2's `ext::Protocol`); a front end puts its value into the request's extensions as a
//! [`ConnectProtocol`], and the same server decision as for HTTP/1.1
//! ([`super::policy::ServerPolicy::decide`]) then checks the request in its HTTP/2 form
//! ([`validate_request`]). [`super::client::ClientRequest::extended_connect`] builds the
//! client's request and checks the answer.

use http::{Method, Request};

use super::server::Upgrade;
use super::{check_version, parse_offers};
use crate::error::HandshakeError;

/// The value of the `:protocol` pseudo-header of an HTTP/2 extended CONNECT request
/// (RFC 8441 §4), as a request extension. Its absence on an HTTP/2 CONNECT means a
/// plain CONNECT (a proxy tunnel), which a WebSocket server refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectProtocol(pub String);

/// The `:protocol` value that asks for a WebSocket (RFC 8441 §4).
pub const WEBSOCKET_PROTOCOL: &str = "websocket";

/// Checks that an HTTP/2 `request` is a WebSocket extended CONNECT (RFC 8441 §4-5): the
/// method (405), `:protocol` (400 when absent or not `websocket`), `Sec-WebSocket-Version`
/// (426 when not 13, 400 when missing) and `Sec-WebSocket-Protocol` (400 when
/// malformed). The returned [`Upgrade`] has no accept key.
///
/// # Errors
/// The [`HandshakeError`] naming the first problem; [`HandshakeError::status`] is the
/// HTTP status to answer with.
pub fn validate_request(request: &Request<()>) -> Result<Upgrade, HandshakeError> {
    if request.method() != Method::CONNECT {
        return Err(HandshakeError::MethodNotAllowed);
    }
    match request.extensions().get::<ConnectProtocol>() {
        Some(ConnectProtocol(protocol)) if protocol.eq_ignore_ascii_case(WEBSOCKET_PROTOCOL) => {}
        _ => return Err(HandshakeError::InvalidHeader(":protocol")),
    }
    let headers = request.headers();
    check_version(headers)?;
    let (protocols, extensions) = parse_offers(headers)?;
    Ok(Upgrade {
        accept: None,
        protocols,
        extensions,
    })
}

#[cfg(test)]
mod tests {
    use http::Version;

    use super::*;

    fn connect() -> http::request::Builder {
        Request::connect("https://example.com/chat")
            .version(Version::HTTP_2)
            .extension(ConnectProtocol("websocket".into()))
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat, superchat")
    }

    #[test]
    fn extended_connect_is_an_upgrade_without_key() {
        let upgrade = validate_request(&connect().body(()).unwrap()).unwrap();
        assert_eq!(upgrade.accept, None);
        assert_eq!(upgrade.protocols, ["chat", "superchat"]);
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let plain_connect = Request::connect("example.com:443")
            .version(Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let wrong_protocol = connect()
            .extension(ConnectProtocol("webtransport".into()))
            .body(())
            .unwrap();
        let mut no_version = connect().body(()).unwrap();
        no_version.headers_mut().remove("sec-websocket-version");
        let mut old_version = connect().body(()).unwrap();
        old_version
            .headers_mut()
            .insert("sec-websocket-version", "8".parse().unwrap());
        let mut get = connect().body(()).unwrap();
        *get.method_mut() = Method::GET;
        let mut bad_list = connect().body(()).unwrap();
        bad_list
            .headers_mut()
            .insert("sec-websocket-protocol", "a,,b".parse().unwrap());
        let cases = [
            (plain_connect, 400),
            (wrong_protocol, 400),
            (no_version, 400),
            (old_version, 426),
            (get, 405),
            (bad_list, 400),
        ];
        for (request, status) in cases {
            let error = validate_request(&request).unwrap_err();
            assert_eq!(error.status(), status, "{request:?}");
        }
    }
}
