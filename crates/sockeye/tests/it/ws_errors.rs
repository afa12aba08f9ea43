//! Every `ws` error code, provoked by a raw peer over real loopback sockets. For each case:
//! (a) the error the Sockeye side's stream yields (`ws_code()`, `close_code()` and the
//! exact core error), (b) the close frame that reaches the wire (opcode 8, the 2-byte
//! code, masked only from a client), (c) the Sockeye side then closes TCP (clean EOF).

use std::time::Duration;

use futures_util::StreamExt;
use sockeye::proto::handshake::accept_key;
use sockeye::proto::{Error as ProtoError, LimitError, ProtocolError};
use sockeye::{ClientConfig, CloseCode, Config, Message, ReadyState, ServerConfig, WebSocket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    accept_one, client_frame, frame, raw_client, read_head, read_wire_frame, server, within, STEP,
};

/// How long the Sockeye side may take to close TCP after its close frame.
const EOF_WAIT: Duration = Duration::from_secs(3);

/// 2^53 - 1: the largest 64-bit payload length `ws` accepts.
const MAX_SAFE_LEN: u64 = (1 << 53) - 1;

/// A masked frame with any RSV bits.
fn masked(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, rsv, opcode, Some([0x12, 0x34, 0x56, 0x78]), payload)
}

/// An unmasked frame, as a server sends it.
fn plain(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, rsv, opcode, None, payload)
}

/// A FIN binary frame header with a 64-bit length and no payload.
fn header64(len: u64, mask: bool) -> Vec<u8> {
    let mut out = vec![0x82, if mask { 0x80 | 127 } else { 127 }];
    out.extend_from_slice(&len.to_be_bytes());
    if mask {
        out.extend_from_slice(&[1, 2, 3, 4]);
    }
    out
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// The first `n` bytes of a frame: its header and part of its payload.
fn prefix(mut frame: Vec<u8>, n: usize) -> Vec<u8> {
    frame.truncate(n);
    frame
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason);
    out
}

struct Case {
    name: &'static str,
    config: Config,
    /// The bytes the raw peer sends after the handshake.
    wire: Vec<u8>,
    error: ProtoError,
    ws_code: &'static str,
    close: u16,
}

fn case(
    name: &'static str,
    wire: Vec<u8>,
    error: impl Into<ProtoError>,
    ws_code: &'static str,
    close: u16,
) -> Case {
    Case {
        name,
        config: Config::default(),
        wire,
        error: error.into(),
        ws_code,
        close,
    }
}

impl Case {
    fn with(mut self, configure: impl FnOnce(&mut Config)) -> Case {
        configure(&mut self.config);
        self
    }
}

/// (b) and (c): the raw peer receives exactly one close frame with `code` and no reason,
/// then end of stream; it then closes its side too, as a peer does (the Sockeye side
/// reads on to that end before it reports the failure: a transport closed with the
/// peer's bytes unread would be reset, and the close frame lost).
async fn expect_close_then_eof(raw: &mut TcpStream, code: u16, from_client: bool, name: &str) {
    let f = read_wire_frame(raw).await;
    assert_eq!(
        f.opcode, 8,
        "{name}: a close frame, got opcode {}",
        f.opcode
    );
    assert!(f.fin && f.rsv == 0, "{name}: FIN set, RSV clear");
    assert_eq!(
        f.masked, from_client,
        "{name}: only client frames are masked"
    );
    assert_eq!(f.payload, code.to_be_bytes(), "{name}: close payload");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(EOF_WAIT, raw.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{name}: TCP still open {EOF_WAIT:?} after the close frame"))
        .unwrap_or_else(|e| panic!("{name}: no clean EOF: {e}"));
    assert_eq!(n, 0, "{name}: bytes after the close frame: {rest:?}");
    let _ = raw.shutdown().await;
}

/// (a): the stream yields the error once, then ends.
async fn expect_failure<S>(
    ws: &mut WebSocket<S>,
    error: &ProtoError,
    ws_code: &str,
    close: u16,
    name: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let err = match within(name, ws.next()).await {
        Some(Err(err)) => err,
        Some(Ok(message)) => panic!("{name}: a message instead of an error: {message:?}"),
        None => panic!("{name}: the stream ended without an error"),
    };
    match &err {
        sockeye::Error::Protocol(e) => assert_eq!(e, error, "{name}"),
        other => panic!("{name}: not a protocol error: {other:?}"),
    }
    assert_eq!(err.ws_code(), Some(ws_code), "{name}: ws_code");
    assert_eq!(
        err.close_code(),
        Some(CloseCode(close)),
        "{name}: close_code"
    );
    assert!(
        within(name, ws.next()).await.is_none(),
        "{name}: the stream ends after the error"
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed, "{name}");
}

/// Raw client -> Sockeye server: `wire` is sent, then (a), (b), (c); the stream is read
/// while the raw peer reads, as a peer's reading drives the connection.
async fn run_server_case(c: &Case) {
    let server = server(ServerConfig {
        websocket: c.config.clone(),
        ..ServerConfig::default()
    })
    .await;
    let mut raw = within("raw client handshake", raw_client(server.local_addr(), "/")).await;
    let mut ws = accept_one(&server).await;
    within("raw write", raw.write_all(&c.wire)).await.unwrap();
    tokio::join!(
        expect_close_then_eof(&mut raw, c.close, false, c.name),
        expect_failure(&mut ws, &c.error, c.ws_code, c.close, c.name)
    );
}

/// A Sockeye client connected to a hand-written server; returns both ends.
async fn client_and_raw_server(config: Config) -> (WebSocket<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let client = tokio::spawn(async move {
        let config = ClientConfig {
            websocket: config,
            handshake_timeout: Some(STEP),
            ..ClientConfig::default()
        };
        sockeye::connect_with(&url, config).await
    });
    let (mut raw, _) = within("accept", listener.accept()).await.unwrap();
    let head = read_head(&mut raw).await;
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    let key = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        })
        .expect("Sec-WebSocket-Key");
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    );
    within("101", raw.write_all(response.as_bytes()))
        .await
        .unwrap();
    let (ws, _response) = within("client handshake", client)
        .await
        .unwrap()
        .expect("client handshake");
    (ws, raw)
}

/// Raw server -> Sockeye client: `wire` is sent, then (a), (b) with a masked close frame,
/// and (c).
async fn run_client_case(c: &Case) {
    let (mut ws, mut raw) = client_and_raw_server(c.config.clone()).await;
    within("raw write", raw.write_all(&c.wire)).await.unwrap();
    tokio::join!(
        expect_close_then_eof(&mut raw, c.close, true, c.name),
        expect_failure(&mut ws, &c.error, c.ws_code, c.close, c.name)
    );
}

#[tokio::test]
async fn server_fails_the_connection_for_every_ws_error_code() {
    use LimitError::*;
    use ProtocolError::*;
    #[rustfmt::skip]
    let cases = [
        // WS_ERR_UNEXPECTED_RSV_2_3
        case("RSV2 set", masked(true, 0b010, 1, b"hi"), UnexpectedRsv23, "WS_ERR_UNEXPECTED_RSV_2_3", 1002),
        case("RSV3 set", masked(true, 0b001, 2, b"hi"), UnexpectedRsv23, "WS_ERR_UNEXPECTED_RSV_2_3", 1002),
        case("RSV3 on a ping", masked(true, 0b001, 9, b""), UnexpectedRsv23, "WS_ERR_UNEXPECTED_RSV_2_3", 1002),
        // WS_ERR_UNEXPECTED_RSV_1 (no extension negotiated)
        case("RSV1 set", masked(true, 0b100, 1, b"hi"), UnexpectedRsv1, "WS_ERR_UNEXPECTED_RSV_1", 1002),
        // WS_ERR_INVALID_OPCODE
        case("reserved data opcode 3", masked(true, 0, 3, b"x"), InvalidOpcode(3), "WS_ERR_INVALID_OPCODE", 1002),
        case("reserved control opcode 0xB", masked(true, 0, 0xB, b""), InvalidOpcode(0xB), "WS_ERR_INVALID_OPCODE", 1002),
        case("continuation with nothing to continue", client_frame(true, 0, b"x"), InvalidOpcode(0), "WS_ERR_INVALID_OPCODE", 1002),
        case(
            "new text frame inside a fragmented message",
            concat(&[client_frame(false, 1, b"a"), client_frame(true, 1, b"b")]),
            InvalidOpcode(1), "WS_ERR_INVALID_OPCODE", 1002,
        ),
        case(
            "new binary frame inside a fragmented message",
            concat(&[client_frame(false, 2, b"a"), client_frame(true, 2, b"b")]),
            InvalidOpcode(2), "WS_ERR_INVALID_OPCODE", 1002,
        ),
        // WS_ERR_EXPECTED_FIN
        case("ping without FIN", client_frame(false, 9, b""), ExpectedFin, "WS_ERR_EXPECTED_FIN", 1002),
        case("close without FIN", client_frame(false, 8, &close_payload(1000, b"")), ExpectedFin, "WS_ERR_EXPECTED_FIN", 1002),
        // WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH
        case("ping of 126 bytes", client_frame(true, 9, &[0; 126]), InvalidControlPayloadLength, "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH", 1002),
        case("close with a 1-byte payload", client_frame(true, 8, &[0x03]), InvalidControlPayloadLength, "WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH", 1002),
        // WS_ERR_EXPECTED_MASK
        case("unmasked text frame", plain(true, 0, 1, b"hi"), ExpectedMask, "WS_ERR_EXPECTED_MASK", 1002),
        case("unmasked ping", plain(true, 0, 9, b""), ExpectedMask, "WS_ERR_EXPECTED_MASK", 1002),
        // WS_ERR_INVALID_CLOSE_CODE
        case("close code 999", client_frame(true, 8, &close_payload(999, b"")), InvalidCloseCode(999), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("close code 1004", client_frame(true, 8, &close_payload(1004, b"")), InvalidCloseCode(1004), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("close code 1005", client_frame(true, 8, &close_payload(1005, b"")), InvalidCloseCode(1005), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("close code 1006", client_frame(true, 8, &close_payload(1006, b"")), InvalidCloseCode(1006), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("close code 1015", client_frame(true, 8, &close_payload(1015, b"")), InvalidCloseCode(1015), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("close code 2999", client_frame(true, 8, &close_payload(2999, b"")), InvalidCloseCode(2999), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("close code 5000", client_frame(true, 8, &close_payload(5000, b"")), InvalidCloseCode(5000), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        // WS_ERR_INVALID_UTF8
        case("text message not UTF-8", client_frame(true, 1, &[b'a', 0xff, b'b']), InvalidUtf8, "WS_ERR_INVALID_UTF8", 1007),
        case("text message ending mid-character", client_frame(true, 1, &[0xe2, 0x82]), InvalidUtf8, "WS_ERR_INVALID_UTF8", 1007),
        case(
            "invalid UTF-8 across fragments",
            concat(&[client_frame(false, 1, &[0xe2, 0x82]), client_frame(true, 0, &[0x28])]),
            InvalidUtf8, "WS_ERR_INVALID_UTF8", 1007,
        ),
        case(
            "invalid UTF-8 in a frame not yet complete",
            prefix(client_frame(true, 1, &[0xff; 100]), 2 + 4 + 5),
            InvalidUtf8, "WS_ERR_INVALID_UTF8", 1007,
        ),
        case("close reason not UTF-8", client_frame(true, 8, &close_payload(1000, &[b'o', 0xff])), InvalidUtf8, "WS_ERR_INVALID_UTF8", 1007),
        // WS_ERR_UNSUPPORTED_MESSAGE_LENGTH
        case("single frame over max_payload", client_frame(true, 2, &[0; 17]), MessageTooLarge, "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH", 1009)
            .with(|c| c.max_payload = 16),
        case(
            "fragments adding up over max_payload",
            concat(&[client_frame(false, 2, &[0; 10]), client_frame(true, 0, &[0; 10])]),
            MessageTooLarge, "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH", 1009,
        )
        .with(|c| c.max_payload = 16),
        case(
            "text fragments adding up over max_payload",
            concat(&[client_frame(false, 1, b"12345678"), client_frame(false, 0, b"12345678"), client_frame(true, 0, b"1")]),
            MessageTooLarge, "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH", 1009,
        )
        .with(|c| c.max_payload = 16),
        case(
            "max_payload exceeded, header alone",
            prefix(client_frame(true, 2, &[0; 1 << 16]), 2 + 8 + 4),
            MessageTooLarge, "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH", 1009,
        )
        .with(|c| c.max_payload = 1024),
        // WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH
        case("64-bit length 2^53", header64(MAX_SAFE_LEN + 1, true), FrameLengthUnsupported, "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH", 1009),
        case("64-bit length with the high bit set", header64(u64::MAX, true), FrameLengthUnsupported, "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH", 1009),
        // WS_ERR_TOO_MANY_BUFFERED_PARTS
        case(
            "4 fragments with max_fragments 3",
            concat(&[client_frame(false, 1, b"a"), client_frame(false, 0, b"b"), client_frame(false, 0, b"c"), client_frame(true, 0, b"d")]),
            TooManyParts, "WS_ERR_TOO_MANY_BUFFERED_PARTS", 1008,
        )
        .with(|c| c.max_fragments = 3),
        case(
            "empty fragments count too",
            concat(&[client_frame(false, 2, b""), client_frame(false, 0, b""), client_frame(false, 0, b"")]),
            TooManyParts, "WS_ERR_TOO_MANY_BUFFERED_PARTS", 1008,
        )
        .with(|c| c.max_fragments = 2),
    ];
    for c in &cases {
        run_server_case(c).await;
    }
}

/// The 64-bit length is judged from the header alone: no payload byte (and, for the
/// shortest variant, not even the mask key) is ever sent, yet the close frame comes.
/// `max_payload` is 0 (no limit), so only the 2^53 - 1 rule can reject these.
#[tokio::test]
async fn big_length_is_rejected_from_the_header_alone() {
    #[rustfmt::skip]
    let cases = [
        ("2^53, header with its mask key", header64(MAX_SAFE_LEN + 1, true)),
        ("2^53, header without its mask key yet", prefix(header64(MAX_SAFE_LEN + 1, true), 10)),
        ("2^64 - 1, header with its mask key", header64(u64::MAX, true)),
    ];
    for (name, wire) in cases {
        let error = LimitError::FrameLengthUnsupported;
        let ws_code = "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH";
        let c = case(name, wire, error, ws_code, 1009).with(|c| c.max_payload = 0);
        run_server_case(&c).await;
    }
}

/// Limits are inclusive: a 64-bit length of 2^53 - 1 passes the length rule (and fails
/// only `max_payload`); a message of exactly `max_payload` bytes in exactly
/// `max_fragments` frames is delivered, and one fragment more fails.
#[tokio::test]
async fn limits_are_inclusive() {
    let c = case(
        "64-bit length 2^53 - 1 against max_payload",
        header64(MAX_SAFE_LEN, true),
        LimitError::MessageTooLarge,
        "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH",
        1009,
    );
    run_server_case(&c).await;

    let config = Config {
        max_payload: 16,
        max_fragments: 3,
        ..Config::default()
    };
    let server = server(ServerConfig {
        websocket: config,
        ..ServerConfig::default()
    })
    .await;
    let mut raw = within("raw client handshake", raw_client(server.local_addr(), "/")).await;
    let mut ws = accept_one(&server).await;
    let at_limit = concat(&[
        client_frame(false, 1, b"123456"),
        client_frame(false, 0, b"12345"),
        client_frame(true, 0, b"12345"),
    ]);
    within("raw write", raw.write_all(&at_limit)).await.unwrap();
    match within("message at the limits", ws.next()).await {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "1234561234512345"),
        other => panic!("expected the 16-byte, 3-fragment text: {other:?}"),
    }
    let one_more = concat(&[
        client_frame(false, 1, b"a"),
        client_frame(false, 0, b"b"),
        client_frame(false, 0, b"c"),
        client_frame(true, 0, b"d"),
    ]);
    within("raw write", raw.write_all(&one_more)).await.unwrap();
    let name = "a 4th fragment after a delivered message";
    let error = LimitError::TooManyParts.into();
    tokio::join!(
        expect_close_then_eof(&mut raw, 1008, false, name),
        expect_failure(
            &mut ws,
            &error,
            "WS_ERR_TOO_MANY_BUFFERED_PARTS",
            1008,
            name
        )
    );
}

/// Client role: a raw server breaks the protocol; the Sockeye client fails the
/// connection with a masked close frame and closes TCP.
#[tokio::test]
async fn client_fails_the_connection() {
    use ProtocolError::*;
    #[rustfmt::skip]
    let cases = [
        case("masked text frame from the server", masked(true, 0, 1, b"hi"), UnexpectedMask, "WS_ERR_UNEXPECTED_MASK", 1002),
        case("masked ping from the server", masked(true, 0, 9, b""), UnexpectedMask, "WS_ERR_UNEXPECTED_MASK", 1002),
        case("RSV2 from the server", plain(true, 0b010, 1, b"hi"), UnexpectedRsv23, "WS_ERR_UNEXPECTED_RSV_2_3", 1002),
        case("close code 1005 from the server", plain(true, 0, 8, &close_payload(1005, b"")), InvalidCloseCode(1005), "WS_ERR_INVALID_CLOSE_CODE", 1002),
        case("text not UTF-8 from the server", plain(true, 0, 1, &[0xc0, 0x80]), InvalidUtf8, "WS_ERR_INVALID_UTF8", 1007),
        case(
            "64-bit length 2^53 from the server, header alone",
            header64(MAX_SAFE_LEN + 1, false),
            LimitError::FrameLengthUnsupported, "WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH", 1009,
        ),
    ];
    for c in &cases {
        run_client_case(c).await;
    }
}
