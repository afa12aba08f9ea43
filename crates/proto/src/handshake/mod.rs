//! The opening handshake (RFC 6455 §4): building and validating the HTTP/1.1 upgrade
//! request and response. [`server`] reads requests and writes responses, [`policy`] is
//! the server's decision on a request (every check and hook, in one order); [`client`]
//! writes requests and reads responses. All only parse and produce bytes. [`http2`] is
//! the same handshake in its HTTP/2 form (RFC 8441's extended CONNECT), decided by the
//! same policy.

pub mod client;
pub mod http2;
pub mod policy;
pub mod server;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::HeaderMap;
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;

/// The GUID appended to the key to compute the accept value (RFC 6455 §1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits on the HTTP head of a handshake, against oversized or endless requests.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// The most header lines (default 64); more is answered with 431.
    pub max_headers: usize,
    /// The most bytes of request line plus headers (default 16 KiB, as Node's
    /// `maxHeaderSize`); more is answered with 431.
    pub max_head_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_headers: 64,
            max_head_bytes: 16 * 1024,
        }
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2 step 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// A fresh random `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn generate_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

/// Whether the comma-separated token list in the headers named `name` contains `token`
/// (case-insensitive), as for `Connection: keep-alive, Upgrade`.
pub(crate) fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks `Sec-WebSocket-Version` of an upgrade request (HTTP/1.1 or an HTTP/2 extended
/// CONNECT): 13, else [`HandshakeError::UnsupportedVersion`] (426), or missing (400).
pub(crate) fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    match headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
    {
        Some(b"13") => Ok(()),
        Some(_) => Err(HandshakeError::UnsupportedVersion),
        None => Err(HandshakeError::InvalidHeader("Sec-WebSocket-Version")),
    }
}

/// What an upgrade request offers: its subprotocols ([`parse_protocols`]) and its
/// `Sec-WebSocket-Extensions` values, as sent.
pub(crate) fn parse_offers(
    headers: &HeaderMap,
) -> Result<(Vec<String>, Vec<String>), HandshakeError> {
    let protocols = parse_protocols(headers)?;
    let extensions = headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| HandshakeError::InvalidHeader("Sec-WebSocket-Extensions"))?;
    Ok((protocols, extensions))
}

/// Parses a `Sec-WebSocket-Protocol` list the way `ws` does: tokens separated by commas
/// and optional spaces; an empty item, a character outside the token set, or a duplicate
/// is an error.
pub fn parse_protocols(headers: &HeaderMap) -> Result<Vec<String>, HandshakeError> {
    let invalid = HandshakeError::InvalidHeader("Sec-WebSocket-Protocol");
    let mut protocols: Vec<String> = Vec::new();
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value.to_str().map_err(|_| invalid.clone())?;
        for item in value.split(',') {
            let item = item.trim_matches(|c| c == ' ' || c == '\t');
            if !is_token(item) || protocols.iter().any(|p| p == item) {
                return Err(invalid);
            }
            protocols.push(item.to_owned());
        }
    }
    Ok(protocols)
}

/// An HTTP token (RFC 9110 §5.6.2).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn push_headers(out: &mut impl bytes::BufMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

fn to_header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, HandshakeError> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            HandshakeError::MalformedHttp(format!("invalid header name {:?}", h.name))
        })?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(|_| {
            HandshakeError::MalformedHttp(format!("invalid value of header {}", h.name))
        })?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6455 §1.3 example.
    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn generated_keys_are_16_bytes_and_fresh() {
        let a = generate_key();
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        assert_ne!(a, generate_key());
    }

    #[test]
    fn protocol_lists() {
        let mut h = HeaderMap::new();
        h.append("sec-websocket-protocol", "chat, superchat".parse().unwrap());
        h.append("sec-websocket-protocol", "v3".parse().unwrap());
        assert_eq!(parse_protocols(&h).unwrap(), ["chat", "superchat", "v3"]);
        for bad in ["a,,b", "a, a", "a b", "", "a;b"] {
            let mut h = HeaderMap::new();
            h.append("sec-websocket-protocol", bad.parse().unwrap());
            assert!(parse_protocols(&h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_lists() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive, Upgrade".parse().unwrap());
        assert!(header_has_token(&h, "connection", "upgrade"));
        assert!(!header_has_token(&h, "connection", "close"));
    }
}
