//! The server's side of the opening handshake on arbitrary bytes: `parse_request` then
//! `Upgrade::validate`. Accepted, or a documented `HandshakeError`; an accepted request
//! gets a 101 that a client offering the same key and protocols accepts, and a refused
//! one an error response with the error's status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::handshake::client::ClientRequest;
use sockeye_proto::handshake::server::{parse_request, reject_error, Upgrade};
use sockeye_proto::handshake::HeadLimits;
use sockeye_proto::http::HeaderMap;
use sockeye_proto::HandshakeError;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let (request, len) = match parse_request(data, &limits) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            assert!(data.len() <= limits.max_head_bytes);
            return;
        }
        Err(error) => {
            assert!(
                matches!(
                    error,
                    HandshakeError::HeadersTooLarge | HandshakeError::MalformedHttp(_)
                ),
                "undocumented parse error {error:?}"
            );
            check_rejection(&error);
            return;
        }
    };
    assert!(len <= data.len() && len <= limits.max_head_bytes);
    let upgrade = match Upgrade::validate(&request) {
        Ok(upgrade) => upgrade,
        Err(error) => {
            assert!(
                matches!(
                    error,
                    HandshakeError::MethodNotAllowed
                        | HandshakeError::InvalidHeader(_)
                        | HandshakeError::UnsupportedVersion
                ),
                "undocumented validation error {error:?}"
            );
            check_rejection(&error);
            return;
        }
    };

    // A client that sent this key and these protocols accepts our 101.
    let key = request.headers()["sec-websocket-key"].to_str().unwrap();
    let offer = ClientRequest {
        protocols: upgrade.protocols.clone(),
        ..Default::default()
    };
    let (_, expect) = offer.encode_with_key(key.to_owned());
    let chosen = upgrade.protocols.first().map(String::as_str);
    let response = upgrade.accept(chosen, &HeaderMap::new());
    let (parsed, head_len) = expect.parse(&response, &limits).unwrap().unwrap();
    assert_eq!(head_len, response.len());
    let accepted = expect.validate(parsed).expect("our own 101 is accepted");
    assert_eq!(accepted.protocol.as_deref(), chosen);
});

/// The error response parses as HTTP with the error's status.
fn check_rejection(error: &HandshakeError) {
    let response = reject_error(error);
    let (_, expect) = ClientRequest::default().encode_with_key("x".into());
    let (parsed, _) = expect
        .parse(&response, &HeadLimits::default())
        .expect("a well-formed error response")
        .expect("a complete head");
    assert_eq!(parsed.status().as_u16(), error.status());
}
