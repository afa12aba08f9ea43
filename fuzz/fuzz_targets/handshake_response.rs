//! The client's side of the opening handshake on arbitrary bytes: `ExpectResponse::parse`
//! then `validate`. Accepted (a 101 with the right accept key and an offered protocol),
//! or a documented `HandshakeError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye_proto::handshake::client::ClientRequest;
use sockeye_proto::handshake::{accept_key, HeadLimits};
use sockeye_proto::HandshakeError;

/// The RFC 6455 §1.2 key; its accept value is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    for offered in [&[][..], &["chat", "superchat"]] {
        let request = ClientRequest {
            host: "server.example.com".into(),
            path: "/chat".into(),
            protocols: offered.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let (_, expect) = request.encode_with_key(KEY.into());
        let (response, len) = match expect.parse(data, &limits) {
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
                return;
            }
        };
        assert!(len <= data.len());
        let status = response.status().as_u16();
        let accept = response
            .headers()
            .get("sec-websocket-accept")
            .map(|v| v.as_bytes().to_vec());
        match expect.validate(response) {
            Ok(accepted) => {
                assert_eq!(status, 101);
                assert_eq!(
                    accept.as_deref(),
                    Some(accept_key(KEY.as_bytes()).as_bytes())
                );
                match accepted.protocol {
                    Some(p) => assert!(offered.contains(&p.as_str())),
                    None => assert!(offered.is_empty()),
                }
            }
            Err(HandshakeError::UnexpectedStatus(s)) => assert!(s == status && s != 101),
            Err(
                HandshakeError::InvalidHeader("Upgrade" | "Connection")
                | HandshakeError::AcceptMismatch
                | HandshakeError::InvalidSubprotocol
                | HandshakeError::InvalidExtension,
            ) => assert_eq!(status, 101),
            Err(error) => panic!("undocumented validation error {error:?}"),
        }
    }
});
